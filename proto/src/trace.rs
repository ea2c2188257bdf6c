//! W3C Trace Context on Ratify's gRPC calls (docs/design.md, "Tracing").
//!
//! Every call of the contract may carry a `traceparent` metadata entry in the
//! [W3C Trace Context](https://www.w3.org/TR/trace-context/) format
//! (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`). A client sends it
//! with Begin, Commit or Rollback; the coordinator makes its transaction span a child
//! of it and sends the context of each branch-call span on Prepare, Commit and
//! Rollback; the participant SDK makes its call span a child of that. So one trace
//! follows a gtrid from the client through both phases into every participant.
//!
//! Two ways a context travels inside a process:
//! - through `tracing` spans, in a process whose subscriber has an OpenTelemetry
//!   layer (`tracing-opentelemetry`): [`adopt`] makes a span the child of the
//!   caller's context, and [`inject`] sends the context of the span making a call.
//!   Spans are real (exportable), at the price of building them.
//! - without that layer (a coordinator that exports nothing, the default), by a
//!   task-local: [`scope`] runs a future with the caller's context, [`inherited`]
//!   reads it back (spawned tasks must take it along: `scope(inherited(), fut)`),
//!   and [`inject`] sends it on with a fresh span id, as a non-recording span
//!   would. The trace id reaches the participants at the cost of one header.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key of the W3C header (gRPC metadata keys are lower case).
pub const TRACEPARENT: &str = "traceparent";

/// Parses a `traceparent` value. Accepts version `00` exactly, and a later version
/// by its first four fields as the specification asks; refuses version `ff`, an
/// all-zero trace or parent id, upper-case hex and anything malformed.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let bytes = value.as_bytes();
    // version(2) '-' trace-id(32) '-' parent-id(16) '-' flags(2) = 55 bytes.
    if bytes.len() < 55 {
        return None;
    }
    let field = |from: usize, len: usize| -> Option<&str> {
        let s = value.get(from..from + len)?;
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then_some(s)
    };
    let version = field(0, 2)?;
    if version == "ff" || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if version != "00" && bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_hex(field(3, 32)?).ok()?;
    let span_id = SpanId::from_hex(field(36, 16)?).ok()?;
    let flags = u8::from_str_radix(field(53, 2)?, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Renders `context` as a version-`00` `traceparent` value; `None` when it is not
/// valid (no trace).
pub fn format_traceparent(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The trace context a caller sent in `metadata`, if any (and well formed: a bad
/// header is ignored, as the specification asks, and the call starts a new trace).
pub fn extract(metadata: &MetadataMap) -> Option<SpanContext> {
    metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
}

/// Makes `span` a child of the trace context the caller sent in `metadata`. Call it
/// right after creating the span, before entering it or creating children.
pub fn adopt(span: &tracing::Span, metadata: &MetadataMap) {
    if let Some(remote) = extract(metadata) {
        adopt_remote(span, remote);
    }
}

/// Makes `span` a child of `remote`, a context already read from a caller (see
/// [`adopt`]).
pub fn adopt_remote(span: &tracing::Span, remote: SpanContext) {
    let parent = opentelemetry::Context::new().with_remote_span_context(remote);
    // Fails only when the span is disabled or has no OpenTelemetry layer: then
    // there is nothing to trace.
    let _ = span.set_parent(parent);
}

/// The trace context of `span` (invalid when the process does not trace).
pub fn context_of(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

tokio::task_local! {
    /// The caller's trace context, for processes without an OpenTelemetry layer.
    static INHERITED: SpanContext;
}

/// Runs `fut` with `context` as the inherited trace context (see the module docs);
/// an invalid context means none.
pub fn scope<F: std::future::Future>(
    context: SpanContext,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<SpanContext, F> {
    INHERITED.scope(context, fut)
}

/// The trace context inherited by the running task ([`scope`]), or an invalid one.
pub fn inherited() -> SpanContext {
    INHERITED
        .try_with(Clone::clone)
        .unwrap_or_else(|_| SpanContext::empty_context())
}

/// The context to send on a call made in `span`: the span's own when the process
/// traces, else a child of the inherited one with a fresh span id; none without
/// either.
fn outgoing(span: &tracing::Span) -> Option<SpanContext> {
    let own = context_of(span);
    if own.is_valid() {
        return Some(own);
    }
    let parent = inherited();
    parent.is_valid().then(|| {
        SpanContext::new(
            parent.trace_id(),
            SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes()),
            parent.trace_flags(),
            false,
            TraceState::default(),
        )
    })
}

/// Puts the trace context of a call made in `span` into outgoing `metadata` (see
/// the module docs; nothing when there is no trace).
pub fn inject(metadata: &mut MetadataMap, span: &tracing::Span) {
    if let Some(value) = outgoing(span).as_ref().and_then(format_traceparent) {
        if let Ok(v) = MetadataValue::try_from(value) {
            metadata.insert(TRACEPARENT, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let sc = parse_traceparent(SAMPLE).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert_eq!(format_traceparent(&sc).as_deref(), Some(SAMPLE));
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_known_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next";
        let sc = parse_traceparent(later).expect("valid");
        // Only the sampled bit is known; the rest of the flags are dropped.
        assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none()
        );
    }

    #[tokio::test]
    async fn without_spans_the_inherited_trace_goes_on_with_a_new_span_id() {
        let remote = parse_traceparent(SAMPLE).expect("valid");
        let sent = scope(remote.clone(), async {
            // A spawned task takes the context along.
            let inherited = inherited();
            tokio::spawn(scope(inherited, async {
                let mut meta = MetadataMap::new();
                inject(&mut meta, &tracing::Span::none());
                extract(&meta)
            }))
            .await
            .expect("task")
        })
        .await
        .expect("a traceparent was sent");
        assert_eq!(sent.trace_id(), remote.trace_id());
        assert_ne!(sent.span_id(), remote.span_id());
        assert!(sent.is_sampled());
        // Outside the scope: nothing.
        assert!(!inherited().is_valid());
    }

    #[test]
    fn an_untraced_process_sends_nothing() {
        let mut meta = MetadataMap::new();
        inject(&mut meta, &tracing::Span::none());
        assert!(meta.get(TRACEPARENT).is_none());
        let mut meta = MetadataMap::new();
        meta.insert(TRACEPARENT, MetadataValue::from_static(SAMPLE));
        assert!(extract(&meta).is_some());
        // Adopting into a disabled span is harmless.
        adopt(&tracing::Span::none(), &meta);
    }
}
