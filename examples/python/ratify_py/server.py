"""The ``ratify.v1.Participant`` gRPC service over an :class:`AccountStore`.

Votes and phase-2 results travel in responses. gRPC status codes only say a call
could not be answered: NOT_FOUND for a resource this process does not host (the
coordinator counts it as a NO vote at prepare), INVALID_ARGUMENT for a malformed
request, UNAVAILABLE when storage is busy or failing (the coordinator retries),
INTERNAL for a phase-2 request that contradicts what the branch did.

Tracing: each call runs in a ``participant`` span that continues the trace the caller
sent in its ``traceparent`` metadata (:mod:`ratify_py.tracing`); a call answered with
an error status has an error span status. Logging: one DEBUG line per branch call,
with its trace id; refusals and storage trouble at ERROR/WARNING.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Mapping, NoReturn, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from ratify_py import tracing
from ratify_py.client import Tls
from ratify_py.pb import participant_pb2, participant_pb2_grpc
from ratify_py.store import AccountStore, CommitResult, ProtocolViolation, RollbackResult, StoreError, Vote
from ratify_py.xid import Xid, XidError

log = logging.getLogger("ratify_py.server")

#: Test-only crash switch, read from the environment at start. With
#: ``kill_before_commit`` the process SIGKILLs itself when the first two-phase COMMIT
#: arrives, after it voted YES and before it changed anything: the crash window that
#: recovery must close. Never set it in production.
FAILPOINT_ENV = "RATIFY_PY_FAILPOINT"

R = TypeVar("R")


@dataclass
class _Call:
    """One call being served: its gRPC context and its span."""

    context: grpc.ServicerContext
    span: trace.Span
    #: Set once the call was answered with an error status (the span says why).
    aborted: bool = False

    def abort(self, code: grpc.StatusCode, message: str) -> NoReturn:
        """Marks the span failed and answers ``code``; never returns."""
        self.aborted = True
        self.span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self.context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")


@dataclass
class ParticipantService(participant_pb2_grpc.ParticipantServicer):
    """Hosts named stores; ``failpoint`` is the test-only crash switch (see above).

    Each Prepare/Commit/Rollback/Recover runs inside a ``participant`` span (kind
    SERVER, attributes ``op``, ``resource`` and, once validated, ``gtrid`` and
    ``xid``) that is the child of the ``traceparent`` the caller sent, so the
    coordinator's ``branch_call`` span is its parent (see :mod:`ratify_py.tracing`).
    ``tracer`` defaults to the global provider's (a no-op until the app installs an SDK
    provider); tests pass their own.
    """

    resources: Mapping[str, AccountStore]
    failpoint: str = ""
    tracer: trace.Tracer = field(default_factory=tracing.tracer)
    #: Under TLS: serve coordinator nodes only (a ``ratify://peer/<id>`` certificate).
    require_peer: bool = False
    _crash_armed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._crash_armed = self.failpoint == "kill_before_commit"
        if self.failpoint and not self._crash_armed:
            raise ValueError(f"unknown failpoint {self.failpoint!r}")

    def _run(
        self,
        op: str,
        request: object,
        context: grpc.ServicerContext,
        work: Callable[[AccountStore, Xid, _Call], R],
        needs_xid: bool = True,
    ) -> R:
        """Runs ``work`` on the request's resource and xid inside the call's span.

        Failures become gRPC statuses and an error status on the span.
        """
        name = getattr(request, "resource")
        if self.require_peer and not is_coordinator(context):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "only the coordinator's nodes (ratify://peer/<id>) call a participant",
            )
        parent = tracing.extract(context.invocation_metadata())
        with self.tracer.start_as_current_span(
            "participant",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"op": op, "resource": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            call = _Call(context, span)
            try:
                return self._serve(call, request, name, work, needs_xid)
            except Exception as e:
                if not call.aborted:  # a bug, not an answer: say so on the span
                    span.record_exception(e)
                    span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
                raise

    def _serve(
        self,
        call: _Call,
        request: object,
        name: str,
        work: Callable[[AccountStore, Xid, _Call], R],
        needs_xid: bool,
    ) -> R:
        """Looks up the resource and xid, runs ``work``, turns failures into statuses."""
        store = self.resources.get(name)
        if store is None:
            call.abort(grpc.StatusCode.NOT_FOUND, f"no resource named {name!r:.64} is hosted here")
        xid: Xid | None = None
        if needs_xid:
            if not request.HasField("xid"):  # type: ignore[attr-defined]
                call.abort(grpc.StatusCode.INVALID_ARGUMENT, "xid is required")
            try:
                xid = Xid.from_pb(getattr(request, "xid"))
            except XidError as e:
                call.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            call.span.set_attribute("gtrid", xid.gtrid)
            call.span.set_attribute("xid", xid.render())
        try:
            return work(store, xid, call)  # type: ignore[arg-type]
        except ProtocolViolation as e:
            log.error("refused %s (trace %s): %s", xid, tracing.trace_id_of(call.span), e)
            call.abort(grpc.StatusCode.INTERNAL, str(e))
        except (sqlite3.OperationalError, StoreError) as e:
            log.warning("storage unavailable for %s (trace %s): %s", xid, tracing.trace_id_of(call.span), e)
            call.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    def Prepare(self, request, context):  # noqa: N802 (gRPC method name)
        """Phase 1."""

        def prepare(store: AccountStore, xid: Xid, call: _Call) -> tuple[Vote, str]:
            vote, detail = store.prepare(xid)
            call.span.set_attribute("vote", vote.value)
            log.debug("prepare %s: %s %s (trace %s)", xid, vote.value, detail, tracing.trace_id_of(call.span))
            return vote, detail

        vote, detail = self._run("prepare", request, context, prepare)
        return participant_pb2.PrepareResponse(vote=participant_pb2.Vote.Value(f"VOTE_{vote.value}"), detail=detail)

    def Commit(self, request, context):  # noqa: N802
        """Phase 2 commit, or one-phase commit."""
        if self._crash_armed and not request.one_phase:
            log.warning("failpoint kill_before_commit: SIGKILL before committing %s", request.xid.gtrid)
            os.kill(os.getpid(), signal.SIGKILL)
        op = "commit_one_phase" if request.one_phase else "commit"

        def commit(store: AccountStore, xid: Xid, call: _Call) -> CommitResult:
            result = store.commit(xid, request.one_phase)
            call.span.set_attribute("result", result.value)
            log.debug("%s %s: %s (trace %s)", op, xid, result.value, tracing.trace_id_of(call.span))
            return result

        result = self._run(op, request, context, commit)
        return participant_pb2.BranchCommitResponse(
            result=participant_pb2.BranchCommitResult.Value(f"BRANCH_COMMIT_RESULT_{result.value}")
        )

    def Rollback(self, request, context):  # noqa: N802
        """Phase 2 rollback."""

        def rollback(store: AccountStore, xid: Xid, call: _Call) -> RollbackResult:
            result = store.rollback(xid)
            call.span.set_attribute("result", result.value)
            log.debug("rollback %s: %s (trace %s)", xid, result.value, tracing.trace_id_of(call.span))
            return result

        result = self._run("rollback", request, context, rollback)
        return participant_pb2.BranchRollbackResponse(
            result=participant_pb2.BranchRollbackResult.Value(f"BRANCH_ROLLBACK_RESULT_{result.value}")
        )

    def Recover(self, request, context):  # noqa: N802
        """The prepared branches of one resource."""

        def recover(store: AccountStore, _xid: Xid, call: _Call) -> list[Xid]:
            xids = store.recover()
            call.span.set_attribute("prepared", len(xids))
            return xids

        xids = self._run("recover", request, context, recover, needs_xid=False)
        return participant_pb2.RecoverResponse(xids=[x.to_pb() for x in xids])


def is_coordinator(context: grpc.ServicerContext) -> bool:
    """Whether the caller's verified certificate names ``ratify://peer/<id>``."""
    auth = context.auth_context()
    names = list(auth.get("x509_subject_alternative_name", [])) + list(auth.get("peer_uri", []))
    return any(n.startswith(b"ratify://peer/") for n in names)


def serve(
    resources: Mapping[str, AccountStore],
    listen: str,
    failpoint: str | None = None,
    tracer: trace.Tracer | None = None,
    tls: Tls | None = None,
) -> tuple[grpc.Server, int]:
    """Starts the participant server on ``listen`` (``host:port``, port 0 picks one).

    With ``tls`` it speaks mutual TLS and serves the coordinator's nodes only.

    ``tracer`` makes the call spans (default: :func:`ratify_py.tracing.tracer`, the
    global provider's). Returns the server and the bound port.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    service = ParticipantService(
        resources,
        failpoint if failpoint is not None else os.environ.get(FAILPOINT_ENV, ""),
        tracer if tracer is not None else tracing.tracer(),
        require_peer=tls is not None,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=(("grpc.so_reuseport", 0),))
    participant_pb2_grpc.add_ParticipantServicer_to_server(service, server)
    port = server.add_insecure_port(listen) if tls is None else server.add_secure_port(listen, tls.server_credentials())
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    return server, port
