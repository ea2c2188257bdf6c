"""W3C trace context: the participant's spans continue the caller's trace, the client
sends the app's, and the per-branch log lines carry the trace id."""

from __future__ import annotations

import json
import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ratify_py import tracing
from ratify_py.client import ClientConfig, CoordinatorClient
from ratify_py.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, participant_pb2, participant_pb2_grpc
from ratify_py.server import serve
from ratify_py.spanlog import JsonLinesSpanExporter
from ratify_py.store import AccountStore
from ratify_py.xid import Xid

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_PREPARE = "00f067aa0ba902b7"
PARENT_COMMIT = "00f067aa0ba902b8"
GTRID = "0123456789abcdef0000000000000001"


def tp(span_id: str, trace_id: str = TRACE) -> str:
    """A sampled version-00 traceparent."""
    return f"00-{trace_id}-{span_id}-01"


@dataclass
class Hosted:
    """A participant served in this process, its store and its finished spans."""

    stub: participant_pb2_grpc.ParticipantStub
    store: AccountStore
    exporter: InMemorySpanExporter

    def spans(self) -> list:
        return [s for s in self.exporter.get_finished_spans() if s.name == "participant"]


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Hosted]:
    # A provider of the test's own, injected: the global provider can be set only once
    # per process and stays unset here (see test_without_an_sdk_the_trace_id_is_still_logged).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = AccountStore(tmp_path / "bank.sqlite")
    store.open_accounts(["a", "b"], 100)
    server, port = serve({"accounts": store}, "127.0.0.1:0", failpoint="", tracer=tracing.tracer(provider))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Hosted(participant_pb2_grpc.ParticipantStub(channel), store, exporter)
    channel.close()
    server.stop(None)
    provider.shutdown()
    store.close()


def xid(n: int) -> Xid:
    return Xid(f"{GTRID[:-2]}{n:02x}", "1")


def test_prepare_and_commit_spans_are_children_of_the_callers_spans(hosted: Hosted) -> None:
    x = xid(1)
    hosted.store.branch(x).credit("a", 5)
    vote = hosted.stub.Prepare(
        participant_pb2.PrepareRequest(resource="accounts", xid=x.to_pb()),
        metadata=(("traceparent", tp(PARENT_PREPARE)),),
    )
    assert vote.vote == participant_pb2.VOTE_YES
    hosted.stub.Commit(
        participant_pb2.BranchCommitRequest(resource="accounts", xid=x.to_pb(), one_phase=False),
        metadata=(("x-other", "kept"), ("traceparent", tp(PARENT_COMMIT))),
    )
    prepare, commit = hosted.spans()
    for span, parent, op in ((prepare, PARENT_PREPARE, "prepare"), (commit, PARENT_COMMIT, "commit")):
        ctx = span.get_span_context()
        assert trace.format_trace_id(ctx.trace_id) == TRACE
        assert span.parent is not None and span.parent.is_remote
        assert trace.format_span_id(span.parent.span_id) == parent
        assert trace.format_span_id(ctx.span_id) not in (PARENT_PREPARE, PARENT_COMMIT)
        assert span.kind == trace.SpanKind.SERVER
        assert span.status.status_code == trace.StatusCode.UNSET
        attrs = dict(span.attributes or {})
        assert attrs["op"] == op and attrs["resource"] == "accounts"
        assert attrs["gtrid"] == x.gtrid
        assert attrs["xid"] == f"{0x52544659:08x}.{x.gtrid}.1" == x.render()
    assert prepare.attributes["vote"] == "YES" and commit.attributes["result"] == "COMMITTED"


def test_one_phase_rollback_and_recover_name_their_op(hosted: Hosted) -> None:
    hosted.store.branch(xid(2)).credit("a", 1)
    hosted.stub.Commit(
        participant_pb2.BranchCommitRequest(resource="accounts", xid=xid(2).to_pb(), one_phase=True),
        metadata=(("traceparent", tp(PARENT_COMMIT)),),
    )
    hosted.stub.Rollback(
        participant_pb2.BranchRollbackRequest(resource="accounts", xid=xid(3).to_pb()),
        metadata=(("traceparent", tp(PARENT_COMMIT)),),
    )
    hosted.stub.Recover(participant_pb2.RecoverRequest(resource="accounts"))
    one_phase, rollback, recover = hosted.spans()
    assert one_phase.attributes["op"] == "commit_one_phase"
    assert rollback.attributes["op"] == "rollback" and rollback.attributes["result"] == "ROLLED_BACK"
    assert recover.attributes["op"] == "recover" and "xid" not in recover.attributes
    assert recover.parent is None, "no traceparent: a new trace"


def test_failures_set_the_span_status_to_error(hosted: Hosted) -> None:
    with pytest.raises(grpc.RpcError) as e:
        hosted.stub.Prepare(
            participant_pb2.PrepareRequest(resource="nope", xid=xid(4).to_pb()),
            metadata=(("traceparent", tp(PARENT_PREPARE)),),
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    bad = common_pb2.Xid(format_id=1, gtrid=GTRID, bqual="1")
    with pytest.raises(grpc.RpcError) as e:
        hosted.stub.Commit(participant_pb2.BranchCommitRequest(resource="accounts", xid=bad))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    not_found, invalid = hosted.spans()
    assert not_found.status.status_code == trace.StatusCode.ERROR
    assert "NOT_FOUND" in (not_found.status.description or "")
    assert not_found.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert trace.format_trace_id(not_found.get_span_context().trace_id) == TRACE
    assert "gtrid" not in not_found.attributes, "set only once the request is valid"
    assert invalid.status.status_code == trace.StatusCode.ERROR
    assert "xid" not in invalid.attributes


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE.upper()}-{PARENT_PREPARE}-01",
        f"ff-{TRACE}-{PARENT_PREPARE}-01",
        f"00-{'0' * 32}-{PARENT_PREPARE}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE}-{PARENT_PREPARE}-01-extra",
        "garbage",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(hosted: Hosted, header: str) -> None:
    hosted.stub.Recover(participant_pb2.RecoverRequest(resource="accounts"), metadata=(("traceparent", header),))
    (span,) = hosted.spans()
    assert span.parent is None
    assert trace.format_trace_id(span.get_span_context().trace_id) != TRACE


def test_a_later_version_is_read_by_its_first_four_fields(hosted: Hosted) -> None:
    header = f"01-{TRACE}-{PARENT_PREPARE}-01-what-comes-next"
    hosted.stub.Recover(participant_pb2.RecoverRequest(resource="accounts"), metadata=(("traceparent", header),))
    (span,) = hosted.spans()
    assert trace.format_trace_id(span.get_span_context().trace_id) == TRACE
    assert trace.format_span_id(span.parent.span_id) == PARENT_PREPARE


def test_without_an_sdk_the_trace_id_is_still_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default tracer (global provider, unset in this process: a no-op) still
    carries the incoming context, so DEBUG lines name the trace; INFO stays quiet."""
    assert not isinstance(trace.get_tracer_provider(), TracerProvider), "the tests never set a global provider"
    store = AccountStore(tmp_path / "bank.sqlite")
    store.open_accounts(["a"], 100)
    server, port = serve({"accounts": store}, "127.0.0.1:0", failpoint="")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = participant_pb2_grpc.ParticipantStub(ch)
            store.branch(xid(5)).credit("a", 1)
            with caplog.at_level(logging.INFO, logger="ratify_py"):
                stub.Prepare(
                    participant_pb2.PrepareRequest(resource="accounts", xid=xid(5).to_pb()),
                    metadata=(("traceparent", tp(PARENT_PREPARE)),),
                )
            assert [r for r in caplog.records if r.name == "ratify_py.server"] == [], "no INFO line per branch"
            with caplog.at_level(logging.DEBUG, logger="ratify_py"):
                stub.Commit(
                    participant_pb2.BranchCommitRequest(resource="accounts", xid=xid(5).to_pb()),
                    metadata=(("traceparent", tp(PARENT_COMMIT)),),
                )
            (line,) = [r.getMessage() for r in caplog.records if r.name == "ratify_py.server"]
            assert line == f"commit {xid(5).render()}: COMMITTED (trace {TRACE})"
    finally:
        server.stop(None)
        store.close()


# -- the client -----------------------------------------------------------------


@dataclass
class Recording(coordinator_pb2_grpc.CoordinatorServicer):
    """A coordinator that records the metadata of every call."""

    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        self.seen.append((method, {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}))

    def Begin(self, request, context):  # noqa: N802
        self._record("Begin", context)
        return coordinator_pb2.BeginResponse(gtrid=GTRID)

    def Commit(self, request, context):  # noqa: N802
        self._record("Commit", context)
        return coordinator_pb2.CommitResponse(
            outcome=coordinator_pb2.OUTCOME_COMMITTED, reason=common_pb2.REASON_CLIENT_COMMIT
        )

    def Rollback(self, request, context):  # noqa: N802
        self._record("Rollback", context)
        return coordinator_pb2.RollbackResponse(
            outcome=coordinator_pb2.OUTCOME_ABORTED, reason=common_pb2.REASON_CLIENT_ROLLBACK
        )

    def GetTransaction(self, request, context):  # noqa: N802
        self._record("GetTransaction", context)
        return coordinator_pb2.GetTransactionResponse(transaction=coordinator_pb2.Transaction(gtrid=GTRID))


@pytest.fixture
def recording() -> Iterator[tuple[Recording, str]]:
    servicer = Recording()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_the_client_sends_the_current_trace_context(recording: tuple[Recording, str]) -> None:
    servicer, addr = recording
    client = CoordinatorClient([addr], ClientConfig(metadata=(("x-tenant", "t1"),)))
    provider = TracerProvider()  # not global: its tracer still sets the current span
    with provider.get_tracer("app").start_as_current_span("transfer") as span:
        t = client.begin([("127.0.0.1:1", "accounts")])
        client.commit(t.gtrid)
        client.get(t.gtrid)
        want = tracing.format_traceparent(span.get_span_context())
    client.rollback(GTRID)  # outside the span: no trace context
    client.close()
    assert want is not None and want.startswith(f"00-{trace.format_trace_id(span.get_span_context().trace_id)}-")
    assert [m for m, _ in servicer.seen] == ["Begin", "Commit", "GetTransaction", "Rollback"]
    for method, md in servicer.seen[:3]:
        assert md.get("traceparent") == want, method
        assert md.get("x-tenant") == "t1", "configured metadata is kept"
    assert "traceparent" not in servicer.seen[3][1] and servicer.seen[3][1]["x-tenant"] == "t1"


def test_an_explicit_traceparent_wins_and_a_malformed_one_is_refused(recording: tuple[Recording, str]) -> None:
    servicer, addr = recording
    client = CoordinatorClient([addr], ClientConfig(metadata=(("traceparent", tp("1111111111111111")),)))
    other = trace.NonRecordingSpan(
        trace.SpanContext(int("ab" * 16, 16), int("cd" * 8, 16), is_remote=True, trace_flags=trace.TraceFlags(1))
    )
    with trace.use_span(other):
        client.commit(GTRID, traceparent=tp(PARENT_COMMIT))
        client.rollback(GTRID)
    with pytest.raises(ValueError, match="malformed traceparent"):
        client.commit(GTRID, traceparent=f"00-{TRACE.upper()}-{PARENT_COMMIT}-01")
    client.close()
    (_, commit), (_, rollback) = servicer.seen
    assert commit["traceparent"] == tp(PARENT_COMMIT)
    assert rollback["traceparent"] == f"00-{'ab' * 16}-{'cd' * 8}-01", "the current context replaces a configured one"
    assert len(servicer.seen) == 2, "a malformed traceparent is refused before any call"


def test_outgoing_keeps_other_entries() -> None:
    assert tracing.outgoing((("a", "1"),)) == [("a", "1")], "no context: nothing added"
    md = tracing.outgoing((("a", "1"), ("traceparent", "old")), traceparent=tp(PARENT_PREPARE))
    assert md == [("a", "1"), ("traceparent", tp(PARENT_PREPARE))]


def test_the_span_log_writes_one_json_line_per_span(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    parent = tracing.extract((("traceparent", tp(PARENT_PREPARE)),))
    with provider.get_tracer("t").start_as_current_span("participant", context=parent, attributes={"op": "prepare"}):
        pass
    provider.shutdown()
    (line,) = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert line["name"] == "participant" and line["trace_id"] == TRACE
    assert line["parent_span_id"] == PARENT_PREPARE and line["attributes"] == {"op": "prepare"}
    assert line["status"] == "UNSET" and line["end_ns"] >= line["start_ns"]
