//! Process-wide logging and tracing set-up (docs/design.md, "Tracing" and "Logs").
//!
//! One call, [`init`], installs:
//! - the log output on stderr, as text or as one JSON object per line (for log
//!   shippers), filtered by `RUST_LOG` or the caller's default. INFO holds what a
//!   person reads (start, leadership, recovery summaries); routine per-transaction
//!   events are DEBUG.
//! - when spans are exported over OTLP/gRPC (an endpoint is given; default off) or
//!   `RATIFY_TRACE_SPANS=on`, an OpenTelemetry layer: every span of a transaction
//!   and of a branch call is an OpenTelemetry span, a child of the client's
//!   `traceparent`, and its context travels with each participant call. The layer
//!   sees spans at INFO and above of Ratify's own crates, whatever the log filter
//!   says, so quiet logs do not break a trace. Without the layer the client's trace
//!   id is still passed on to the participants (`ratify_proto::trace`), at no cost
//!   but a header.

use std::io::IsTerminal;
use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `spans`).
    Json,
}

/// What [`init`] sets up.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Log filter when `RUST_LOG` is unset (e.g. `warn`, `info`).
    pub default_filter: String,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// OTLP/gRPC collector to export spans to (e.g. `http://127.0.0.1:4317`); none:
    /// spans are not exported.
    pub otlp_endpoint: Option<String>,
    /// Build OpenTelemetry spans even when none are exported (for an in-process
    /// exporter); implied by `otlp_endpoint`.
    pub trace_spans: bool,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is installed already.
    #[error("logging is set up already: {0}")]
    AlreadySet(String),
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("cannot export traces to {endpoint}: {detail}")]
    Otlp {
        /// The endpoint asked for.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// `RATIFY_LOG_FORMAT` names no format.
    #[error("RATIFY_LOG_FORMAT={0:?}: expected \"text\" or \"json\"")]
    BadFormat(String),
    /// The exporter's runtime could not start.
    #[error("cannot start the trace exporter: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Keeps the tracer provider (and the exporter's runtime) alive; [`Telemetry::shutdown`]
/// (or dropping it) flushes the spans not yet exported.
#[derive(Debug)]
#[must_use = "dropping it stops the export of spans"]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporter_runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Exports what is buffered and stops (dropping it does the same). It blocks
    /// until the exporter is done, so call it at the end of `main`.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
        if let Some(rt) = self.exporter_runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl TelemetryConfig {
    /// Settings from the environment: `RATIFY_LOG_FORMAT` (`text` or `json`) and
    /// `RATIFY_OTLP_ENDPOINT`, with `default_filter` for an unset `RUST_LOG`.
    ///
    /// # Errors
    /// When `RATIFY_LOG_FORMAT` is neither `text` nor `json`.
    pub fn from_env(default_filter: &str, service_name: &str) -> Result<Self, TelemetryError> {
        let format = match std::env::var("RATIFY_LOG_FORMAT").ok().as_deref() {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(TelemetryError::BadFormat(other.to_string()));
            }
        };
        Ok(Self {
            default_filter: default_filter.to_string(),
            format,
            otlp_endpoint: std::env::var("RATIFY_OTLP_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty()),
            trace_spans: matches!(
                std::env::var("RATIFY_TRACE_SPANS").ok().as_deref(),
                Some("on" | "1" | "true")
            ),
            service_name: service_name.to_string(),
        })
    }
}

/// Sets up logs and tracing for the whole process (see the module docs).
///
/// # Errors
/// When a subscriber is installed already, or the OTLP exporter cannot be built.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::new(filter_directives(
        std::env::var("RUST_LOG").ok().as_deref(),
        &config.default_filter,
    ));
    // Colours only for a person at a terminal, not in files and pipes.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match config.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().with_current_span(false).boxed(),
    }
    .with_filter(filter);

    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut exporter_runtime = None;
    if let Some(endpoint) = &config.otlp_endpoint {
        let (exporter, rt) = otlp_exporter(endpoint)?;
        builder = builder.with_batch_exporter(exporter);
        exporter_runtime = Some(rt);
    }
    let provider = builder.build();
    let tracer = provider.tracer("ratify");
    let otel = otel_spans_enabled(config).then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::INFO
                    && meta.target().starts_with("ratify")
            }))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    Ok(Telemetry {
        provider,
        exporter_runtime,
    })
}

/// Whether Ratify's spans are OpenTelemetry spans: when they are exported, or when
/// asked for (`trace_spans`: an app with an exporter of its own). Off, a caller's
/// trace context still reaches the participants through the task-local of
/// `ratify_proto::trace`, and the ~0.2 ms of CPU a transaction's spans cost
/// (measured with `ratify-dev bench`) is not paid.
fn otel_spans_enabled(config: &TelemetryConfig) -> bool {
    config.otlp_endpoint.is_some() || config.trace_spans
}

/// The log filter: `RUST_LOG`, else `default`; openraft's INFO lines (internal
/// state changes, several per election) stay out unless the filter names openraft.
fn filter_directives(rust_log: Option<&str>, default: &str) -> String {
    let base = match rust_log {
        Some(v) if !v.trim().is_empty() => v.trim(),
        _ => default,
    };
    if base.contains("openraft") {
        base.to_string()
    } else {
        format!("{base},openraft=warn")
    }
}

/// The OTLP/gRPC exporter, on a runtime of its own: the SDK's batch processor exports
/// from a plain thread, and tonic needs a Tokio reactor.
fn otlp_exporter(endpoint: &str) -> Result<(OnRuntime, tokio::runtime::Runtime), TelemetryError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let exporter = {
        let _entered = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Otlp {
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            })?
    };
    let exporter = OnRuntime {
        inner: Arc::new(exporter),
        rt: rt.handle().clone(),
    };
    Ok((exporter, rt))
}

/// A span exporter whose exports run on a given Tokio runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    rt: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        match self
            .rt
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn shutdown(&mut self) -> OTelSdkResult {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shutdown(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_stays_at_warn_unless_named() {
        assert_eq!(filter_directives(None, "info"), "info,openraft=warn");
        assert_eq!(filter_directives(Some(""), "warn"), "warn,openraft=warn");
        assert_eq!(
            filter_directives(Some("debug"), "info"),
            "debug,openraft=warn"
        );
        assert_eq!(
            filter_directives(Some("info,openraft=debug"), "warn"),
            "info,openraft=debug"
        );
    }
}
