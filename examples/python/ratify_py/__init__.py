"""Ratify from Python, written from the ``.proto`` files alone (no SDK).

Layout:
    pb         generates the gRPC stubs from ``proto/`` (grpcio-tools) and imports them.
    xid        the XA branch id: validation and the rendered form.
    client     coordinator client: Begin/Enlist/Commit/Rollback/QueryOutcome with
               leader discovery (the ``ratify-leader`` hint), retries and deadlines.
    store      a durable SQLite account store: the resource a participant hosts.
    server     the ``ratify.v1.Participant`` gRPC service over the store.
    tracing    W3C trace context in and out of gRPC metadata (OpenTelemetry API).
    spanlog    a JSON-lines span exporter (needs opentelemetry-sdk; tests, debugging).
    recovery   the in-doubt resolution loop (asks QueryOutcome for prepared branches).
    participant  command line: host the store as a participant process.
    driver     command line: a JSON-lines driver of the client, used by the Rust tests.
"""

from ratify_py.client import ClientConfig, CoordinatorClient, Decision, RatifyError
from ratify_py.xid import Xid

__all__ = ["ClientConfig", "CoordinatorClient", "Decision", "RatifyError", "Xid"]
