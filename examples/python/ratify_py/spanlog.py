"""A span exporter that appends finished spans to a file, one JSON object a line.

For tests and local debugging, not production (use an OTLP exporter there). The
participant command installs it when ``$RATIFY_PY_SPAN_LOG`` names a file::

    RATIFY_PY_SPAN_LOG=/tmp/spans.jsonl python -m ratify_py.participant ...

Each line: ``name``, ``kind`` (``SERVER``, ...), ``trace_id``, ``span_id``,
``parent_span_id`` (hex; null for a root span), ``status`` (``UNSET``/``OK``/
``ERROR``), ``status_description``, ``attributes``, ``start_ns``, ``end_ns``.

Needs ``opentelemetry-sdk`` (pinned in requirements.txt), which the rest of the
package does not.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

#: Names the file spans are appended to; unset: no span log.
SPAN_LOG_ENV = "RATIFY_PY_SPAN_LOG"


def span_to_json(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a JSON-ready dict (the line format above)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": trace.format_trace_id(ctx.trace_id) if ctx else None,
        "span_id": trace.format_span_id(ctx.span_id) if ctx else None,
        "parent_span_id": trace.format_span_id(parent.span_id) if parent else None,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": {k: v if isinstance(v, (str, int, float, bool)) else list(v) for k, v in (span.attributes or {}).items()},
        "start_ns": span.start_time,
        "end_ns": span.end_time,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported span to ``path`` as one JSON line (flushed at once)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self._file = Path(path).open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Writes ``spans``; FAILURE once the file is closed or unwritable."""
        lines = "".join(json.dumps(span_to_json(s)) + "\n" for s in spans)
        with self._lock:
            try:
                self._file.write(lines)
                self._file.flush()
            except (OSError, ValueError):
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Closes the file."""
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:  # noqa: ARG002
        """Lines are flushed as they are written."""
        return True


def install_from_env(
    service_name: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Sets a global tracer provider writing to ``$RATIFY_PY_SPAN_LOG`` when it is set.

    ``service_name`` becomes the provider's ``service.name`` resource attribute.

    Spans are written synchronously when they end, so a span is in the file before
    the call it covers is answered. Returns the provider (call ``shutdown()`` on exit)
    or None when the variable is unset or empty.
    """
    path = (environ if environ is not None else os.environ).get(SPAN_LOG_ENV, "")
    if not path:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    trace.set_tracer_provider(provider)
    return provider
