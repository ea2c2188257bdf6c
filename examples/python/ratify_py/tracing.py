"""W3C Trace Context on Ratify's gRPC calls, with the OpenTelemetry API.

Every call of the contract may carry a ``traceparent`` metadata entry
(``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``, and ``tracestate``
beside it). The client sends the app's current trace context with every coordinator
call; the coordinator makes its transaction span a child of it and sends, with each
Prepare/Commit/Rollback, the context of its ``branch_call`` span; the participant
server makes its ``participant`` span a child of that. So one trace follows a gtrid
from the app through both phases into every participant.

Only ``opentelemetry-api`` is needed here. Until the app installs an SDK tracer
provider the tracer is a no-op: spans cost nothing and nothing is exported, but a
trace context that arrives is still passed on (and its trace id is still logged). To
export spans, install one at start-up, for example::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(my_exporter))  # OTLP, console, ...
    trace.set_tracer_provider(provider)

The parser is OpenTelemetry's ``TraceContextTextMapPropagator``: version ``00`` must be
exactly four fields, a later version is read by its first four, version ``ff``, all-zero
ids and upper-case hex are refused. A refused header is ignored (the call starts a new
trace), as the specification asks.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: The name of the tracer the package's spans come from.
TRACER_NAME = "ratify_py"

#: The metadata keys of the W3C headers (gRPC metadata keys are lower case).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: gRPC metadata: (key, value) pairs; values of ``-bin`` keys are bytes.
Metadata = Sequence[tuple[str, Union[str, bytes]]]

_PROPAGATOR = TraceContextTextMapPropagator()


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The package's tracer from ``provider`` (default: the global one, a no-op until
    the app sets an SDK provider; the returned tracer follows a provider set later)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def extract(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context a caller sent in gRPC ``metadata`` (an empty context when it
    sent none or a malformed one). Binary entries are skipped."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        k = key.lower()
        if k in (TRACEPARENT, TRACESTATE) and isinstance(value, str):
            carrier[k] = value
    return _PROPAGATOR.extract(carrier)


def parse_traceparent(value: str) -> trace.SpanContext | None:
    """The span context of a ``traceparent`` value, or None if it is refused."""
    ctx = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: value})).get_span_context()
    return ctx if ctx.is_valid else None


def format_traceparent(ctx: trace.SpanContext) -> str | None:
    """``ctx`` as a version-``00`` ``traceparent`` value; None when it is not valid."""
    if not ctx.is_valid:
        return None
    return f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-{int(ctx.trace_flags):02x}"


def outgoing(
    metadata: Metadata = (), traceparent: str | None = None, context: Context | None = None
) -> list[tuple[str, str | bytes]]:
    """``metadata`` plus the W3C entries of a call about to be sent.

    The trace context is ``traceparent`` when given, else ``context``, else the current
    OpenTelemetry context; without a valid one the entries are not added. Trace entries
    already in ``metadata`` are replaced by the ones added; other entries are kept.

    Raises:
        ValueError: ``traceparent`` is given and malformed.
    """
    if traceparent is not None:
        if parse_traceparent(traceparent) is None:
            raise ValueError(f"malformed traceparent {traceparent!r:.80}")
        context = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    out = list(metadata)
    if carrier:
        out = [(k, v) for k, v in out if k.lower() not in (TRACEPARENT, TRACESTATE)]
        out.extend(carrier.items())
    return out


def trace_id_of(span: trace.Span) -> str:
    """The trace id of ``span`` in hex, or ``-`` when it has none (for log lines)."""
    ctx = span.get_span_context()
    return format_trace_id(ctx.trace_id) if ctx.is_valid else "-"
