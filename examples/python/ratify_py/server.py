"""The ``ratify.v1.Participant`` gRPC service over an :class:`AccountStore`.

Votes and phase-2 results travel in responses. gRPC status codes only say a call
could not be answered: NOT_FOUND for a resource this process does not host (the
coordinator counts it as a NO vote at prepare), INVALID_ARGUMENT for a malformed
request, UNAVAILABLE when storage is busy or failing (the coordinator retries),
INTERNAL for a phase-2 request that contradicts what the branch did.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

import grpc

from ratify_py.pb import participant_pb2, participant_pb2_grpc
from ratify_py.store import AccountStore, ProtocolViolation, StoreError
from ratify_py.xid import Xid, XidError

log = logging.getLogger("ratify_py.server")

#: Test-only crash switch, read from the environment at start. With
#: ``kill_before_commit`` the process SIGKILLs itself when the first two-phase COMMIT
#: arrives, after it voted YES and before it changed anything: the crash window that
#: recovery must close. Never set it in production.
FAILPOINT_ENV = "RATIFY_PY_FAILPOINT"

R = TypeVar("R")


@dataclass
class ParticipantService(participant_pb2_grpc.ParticipantServicer):
    """Hosts named stores; ``failpoint`` is the test-only crash switch (see above)."""

    resources: Mapping[str, AccountStore]
    failpoint: str = ""
    _crash_armed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._crash_armed = self.failpoint == "kill_before_commit"
        if self.failpoint and not self._crash_armed:
            raise ValueError(f"unknown failpoint {self.failpoint!r}")

    def _run(
        self,
        request: object,
        context: grpc.ServicerContext,
        op: Callable[[AccountStore, Xid], R],
        needs_xid: bool = True,
    ) -> R:
        """Looks up the resource and xid, runs ``op``, turns failures into statuses."""
        name = getattr(request, "resource")
        store = self.resources.get(name)
        if store is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no resource named {name!r:.64} is hosted here")
        xid: Xid | None = None
        if needs_xid:
            if not request.HasField("xid"):  # type: ignore[attr-defined]
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "xid is required")
            try:
                xid = Xid.from_pb(getattr(request, "xid"))
            except XidError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            return op(store, xid)  # type: ignore[arg-type]
        except ProtocolViolation as e:
            log.error("refused: %s", e)
            context.abort(grpc.StatusCode.INTERNAL, str(e))
        except (sqlite3.OperationalError, StoreError) as e:
            log.warning("storage unavailable: %s", e)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        raise AssertionError("unreachable: context.abort raises")

    def Prepare(self, request, context):  # noqa: N802 (gRPC method name)
        """Phase 1."""
        vote, detail = self._run(request, context, lambda s, x: s.prepare(x))
        log.info("prepare %s: %s %s", request.xid.gtrid, vote.value, detail)
        return participant_pb2.PrepareResponse(vote=participant_pb2.Vote.Value(f"VOTE_{vote.value}"), detail=detail)

    def Commit(self, request, context):  # noqa: N802
        """Phase 2 commit, or one-phase commit."""
        if self._crash_armed and not request.one_phase:
            log.warning("failpoint kill_before_commit: SIGKILL before committing %s", request.xid.gtrid)
            os.kill(os.getpid(), signal.SIGKILL)
        result = self._run(request, context, lambda s, x: s.commit(x, request.one_phase))
        log.info("commit %s: %s", request.xid.gtrid, result.value)
        return participant_pb2.BranchCommitResponse(
            result=participant_pb2.BranchCommitResult.Value(f"BRANCH_COMMIT_RESULT_{result.value}")
        )

    def Rollback(self, request, context):  # noqa: N802
        """Phase 2 rollback."""
        result = self._run(request, context, lambda s, x: s.rollback(x))
        log.info("rollback %s: %s", request.xid.gtrid, result.value)
        return participant_pb2.BranchRollbackResponse(
            result=participant_pb2.BranchRollbackResult.Value(f"BRANCH_ROLLBACK_RESULT_{result.value}")
        )

    def Recover(self, request, context):  # noqa: N802
        """The prepared branches of one resource."""
        xids = self._run(request, context, lambda s, _x: s.recover(), needs_xid=False)
        return participant_pb2.RecoverResponse(xids=[x.to_pb() for x in xids])


def serve(
    resources: Mapping[str, AccountStore], listen: str, failpoint: str | None = None
) -> tuple[grpc.Server, int]:
    """Starts the participant server on ``listen`` (``host:port``, port 0 picks one).

    Returns the server and the bound port.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    service = ParticipantService(
        resources, failpoint if failpoint is not None else os.environ.get(FAILPOINT_ENV, "")
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=(("grpc.so_reuseport", 0),))
    participant_pb2_grpc.add_ParticipantServicer_to_server(service, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    return server, port
