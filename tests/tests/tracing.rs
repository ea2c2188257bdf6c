//! One trace follows a transaction from the client through the coordinator into each
//! participant (docs/design.md, "Tracing").
//!
//! The test process is the client and hosts the two participants (SDK servers over
//! durable no-op resources); its spans go to an in-memory exporter. The coordinator
//! is three real `ratify node` processes exporting their spans over OTLP/gRPC to a
//! collector this test serves. The checks:
//! - the participants' prepare and commit spans carry the client's trace id;
//! - each of them is the child of a coordinator `branch_call` span (its parent id is
//!   a span the coordinator exported, not one of this process), so the trace id
//!   crossed the coordinator rather than leaking inside the test process;
//! - the coordinator's spans carry the gtrid and xid as attributes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use ratify_devkit::noop::NoopResource;
use ratify_participant_sdk::client::{BeginOptions, Outcome};
use ratify_tests::{serve, TestCluster};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A span the coordinator exported, as the collector received it.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace collector that keeps what it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attributes = s
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                            Value::IntValue(v) => Some((kv.key.clone(), v.to_string())),
                            _ => None,
                        })
                        .collect();
                    spans.push(Exported {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The value of `key` among a local span's attributes.
fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// This process's spans, kept in memory (one subscriber for every test here).
fn local_spans() -> InMemorySpanExporter {
    static LOCAL: OnceLock<InMemorySpanExporter> = OnceLock::new();
    LOCAL
        .get_or_init(|| {
            let local = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(local.clone())
                .build();
            tracing_subscriber::registry()
                .with(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer("test"))
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                )
                .init();
            local
        })
        .clone()
}

/// Begins and commits a transaction over `a` and `b` inside a root span of this
/// process; returns its gtrid and the span's trace id.
async fn traced_transfer(c: &TestCluster, a: &str, b: &str) -> anyhow::Result<(String, TraceId)> {
    let checkout = tracing::info_span!("checkout");
    let trace_id = checkout.context().span().span_context().trace_id();
    anyhow::ensure!(trace_id != TraceId::INVALID, "the test's layer traces");
    let gtrid = async {
        let begun = c
            .client
            .begin(BeginOptions {
                timeout: Duration::from_secs(10),
                branches: vec![
                    (a.to_string(), "alpha".into()),
                    (b.to_string(), "beta".into()),
                ],
                ..BeginOptions::default()
            })
            .await?;
        let decision = c.client.commit(&begun.gtrid).await?;
        anyhow::ensure!(
            decision.outcome == Outcome::Committed,
            "not committed: {decision:?}"
        );
        anyhow::Ok(begun.gtrid)
    }
    .instrument(checkout)
    .await?;
    Ok((gtrid, trace_id))
}

/// The participants' finished spans of `gtrid`, once both commits have ended.
async fn participant_spans(
    local: &InMemorySpanExporter,
    gtrid: &str,
) -> anyhow::Result<Vec<SpanData>> {
    let mut waited = Duration::ZERO;
    loop {
        let ours: Vec<SpanData> = local
            .get_finished_spans()?
            .into_iter()
            .filter(|s| s.name == "participant" && attr(s, "gtrid").as_deref() == Some(gtrid))
            .collect();
        let commits = ours
            .iter()
            .filter(|s| attr(s, "op").as_deref() == Some("commit"))
            .count();
        if commits >= 2 || waited > Duration::from_secs(15) {
            return Ok(ours);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

/// A coordinator that exports nothing (the default: no OpenTelemetry spans of its
/// own) still passes the client's trace id on to every participant call, each with
/// a span id of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_the_client_trace_still_reaches_the_participants() -> anyhow::Result<()> {
    let local = local_spans();
    let c = TestCluster::start(&[]).await?;
    c.leader().await?;
    let dir = c.dir.path();
    let a = serve(
        "alpha",
        Arc::new(NoopResource::open(dir.join("alpha"))?),
        c.client.clone(),
    )
    .await?;
    let b = serve(
        "beta",
        Arc::new(NoopResource::open(dir.join("beta"))?),
        c.client.clone(),
    )
    .await?;
    let (gtrid, trace_id) = traced_transfer(&c, &a.endpoint, &b.endpoint).await?;
    let ours = participant_spans(&local, &gtrid).await?;
    let local_ids: Vec<_> = local
        .get_finished_spans()?
        .iter()
        .map(|s| s.span_context.span_id())
        .collect();
    let mut parents = Vec::new();
    for op in ["prepare", "commit"] {
        let calls: Vec<&SpanData> = ours
            .iter()
            .filter(|s| attr(s, "op").as_deref() == Some(op))
            .collect();
        assert_eq!(calls.len(), 2, "one {op} span per participant: {ours:#?}");
        for s in calls {
            assert_eq!(
                s.span_context.trace_id(),
                trace_id,
                "{op} span in the client's trace"
            );
            assert!(
                !local_ids.contains(&s.parent_span_id),
                "the {op} span's parent came from the coordinator, not this process"
            );
            parents.push(s.parent_span_id);
        }
    }
    parents.sort_by_key(|p| p.to_bytes());
    parents.dedup();
    assert_eq!(parents.len(), 4, "each call has a span id of its own");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_reaches_every_participant_call_through_the_coordinator(
) -> anyhow::Result<()> {
    let local = local_spans();

    // The coordinator's spans: to this collector, exported every 100 ms.
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let c = TestCluster::start(&["--otlp-endpoint", &otlp]).await?;
    c.leader().await?;

    let a = serve(
        "alpha",
        Arc::new(NoopResource::open(c.dir.path().join("alpha"))?),
        c.client.clone(),
    )
    .await?;
    let b = serve(
        "beta",
        Arc::new(NoopResource::open(c.dir.path().join("beta"))?),
        c.client.clone(),
    )
    .await?;

    let (gtrid, trace_id) = traced_transfer(&c, &a.endpoint, &b.endpoint).await?;
    let participant = participant_spans(&local, &gtrid).await?;
    // The coordinator's export follows within its batch delay.
    let mut waited = Duration::ZERO;
    let coordinator = loop {
        let coordinator = collector
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let exported_commits = coordinator
            .iter()
            .filter(|s| {
                s.name == "branch_call"
                    && s.attributes.get("op").map(String::as_str) == Some("commit")
                    && s.attributes.get("gtrid") == Some(&gtrid)
            })
            .count();
        if exported_commits >= 2 || waited > Duration::from_secs(15) {
            break coordinator;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    };

    let ours: Vec<&SpanData> = participant
        .iter()
        .filter(|s| attr(s, "gtrid").as_deref() == Some(gtrid.as_str()))
        .collect();
    for op in ["prepare", "commit"] {
        let calls: Vec<&&SpanData> = ours
            .iter()
            .filter(|s| attr(s, "op").as_deref() == Some(op))
            .collect();
        assert_eq!(
            calls.len(),
            2,
            "one {op} span per participant: {participant:#?}"
        );
        for s in calls {
            assert_eq!(
                s.span_context.trace_id(),
                trace_id,
                "the participant's {op} span is in the client's trace"
            );
            // Its parent is a span the coordinator exported for this very call.
            let parent = coordinator
                .iter()
                .find(|e| e.span_id == s.parent_span_id.to_bytes().to_vec())
                .with_context(|| {
                    format!("the parent of the {op} span is no coordinator span: {coordinator:#?}")
                })?;
            assert_eq!(parent.name, "branch_call");
            assert_eq!(parent.attributes.get("op").map(String::as_str), Some(op));
            assert_eq!(parent.trace_id, trace_id.to_bytes().to_vec());
            assert_eq!(parent.attributes.get("gtrid"), Some(&gtrid));
            assert_eq!(
                parent.attributes.get("xid"),
                attr(s, "xid").as_ref(),
                "coordinator and participant name the same xid"
            );
        }
    }
    // The coordinator's transaction span (the Commit call) is in the trace too.
    assert!(
        coordinator.iter().any(|e| e.name == "transaction"
            && e.trace_id == trace_id.to_bytes().to_vec()
            && e.attributes.get("op").map(String::as_str) == Some("commit")
            && e.attributes.get("gtrid") == Some(&gtrid)),
        "no transaction span for the commit: {coordinator:#?}"
    );
    Ok(())
}
