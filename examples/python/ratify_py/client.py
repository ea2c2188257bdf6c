"""A coordinator client written from ``coordinator.proto`` alone.

Only the Raft leader serves the ``Coordinator`` API. A node that is not the leader
answers UNAVAILABLE and, when it knows the leader, names it (``host:port``) in the
``ratify-leader`` response metadata; the client retries there at once. Without a hint
(connection refused, no answer in time, no quorum) it moves to the next configured
node after a jittered, doubling backoff. Codes that say the request itself is wrong
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...) are raised at once as
:class:`Rejected`. Every call gives up after ``ClientConfig.deadline`` with
:class:`DeadlineExceeded`, which for Commit means "outcome unknown": the transaction
may still commit, and a later Commit or GetTransaction returns what was decided.

Every call carries the W3C trace context (``traceparent`` metadata, see
:mod:`ratify_py.tracing`): the one passed as ``traceparent=`` to the method, else the
app's current OpenTelemetry context, so the coordinator's spans of the transaction and
the participants' spans join the app's trace. Without either nothing is added, and
:attr:`ClientConfig.metadata` is sent as it is.

Commit, Rollback, Enlist, GetTransaction and QueryOutcome are idempotent on the server,
so retrying them is safe. Begin is not: a retried Begin can leave an orphan
transaction behind, which is harmless (nothing was done in it, and the leader aborts it
when its timeout passes).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

import grpc

from ratify_py import tracing
from ratify_py.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from ratify_py.xid import Xid, validate_gtrid

#: Response metadata key naming the leader on an UNAVAILABLE answer.
LEADER_METADATA_KEY = "ratify-leader"

#: Leader hints followed back to back before backing off (two nodes that name each
#: other during an election must not make the client spin).
MAX_IMMEDIATE_REDIRECTS = 3

#: Codes that say the request is wrong: another node or a later try answers the same.
REJECTIONS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

#: gRPC channel options: no HTTP proxy for loopback clusters, and quick reconnects to
#: a node that was restarted.
CHANNEL_OPTIONS = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

T = TypeVar("T")


class RatifyError(Exception):
    """Base of the errors this client raises."""


class Rejected(RatifyError):
    """The coordinator refused the request (it is wrong); nothing changed."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class DeadlineExceeded(RatifyError):
    """No node answered within the call's deadline. For Commit: outcome unknown."""


@dataclass(frozen=True)
class Tls:
    """Mutual TLS material, PEM bytes (README, "Security"): the CA that the other
    side's certificate must be issued by, and this process's certificate chain and key.
    The certificate's SAN URIs say who it is: ``ratify://client/<name>`` to begin and
    commit, ``ratify://participant/<name>`` to serve branches and ask their outcome.
    Read once: rotating it means restarting the process.
    """

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: str, cert: str, key: str) -> "Tls":
        """Reads the three PEM files."""
        with open(ca, "rb") as a, open(cert, "rb") as c, open(key, "rb") as k:
            return cls(a.read(), c.read(), k.read())

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For a client: verify the server against the CA, present this certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """For a server: present this certificate, require one of the CA from callers."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts and backoff, in seconds, metadata sent with every call, and TLS."""

    #: Longest wait for one attempt (one RPC to one node).
    attempt_timeout: float = 3.0
    #: Longest wait for a whole call, retries included.
    deadline: float = 15.0
    #: First pause between attempts on different nodes.
    backoff_initial: float = 0.02
    #: Largest pause (it doubles up to this, with jitter).
    backoff_max: float = 0.25
    #: gRPC metadata sent with every call (lower-case keys), e.g. credentials. The
    #: trace context is added to it (replacing any ``traceparent``/``tracestate``).
    metadata: tuple[tuple[str, str], ...] = ()
    #: Mutual TLS; ``None`` for plaintext (a cluster run with ``--insecure``).
    tls: Tls | None = None


@dataclass(frozen=True)
class Branch:
    """A branch as the coordinator recorded it."""

    xid: Xid
    endpoint: str
    resource: str


@dataclass(frozen=True)
class Begun:
    """A started global transaction."""

    gtrid: str
    branches: tuple[Branch, ...]
    deadline_unix_ms: int


@dataclass(frozen=True)
class Decision:
    """A transaction's decision: outcome ``COMMITTED`` or ``ABORTED``, and why."""

    outcome: str
    reason: str
    detail: str = ""

    @property
    def committed(self) -> bool:
        """True for COMMITTED."""
        return self.outcome == "COMMITTED"


@dataclass
class ClientStats:
    """Counters, for tests and logs."""

    #: Leader hints followed.
    redirects: int = 0
    #: Attempts that failed and were retried.
    retries: int = 0


def outcome_name(value: int) -> str:
    """``Outcome`` enum value → ``COMMITTED`` / ``ABORTED`` / ``IN_PROGRESS`` / ..."""
    try:
        return coordinator_pb2.Outcome.Name(value).removeprefix("OUTCOME_")
    except ValueError:
        return f"UNKNOWN_{value}"


def reason_name(value: int) -> str:
    """``Reason`` enum value → ``CLIENT_COMMIT`` / ``VOTED_NO`` / ..."""
    try:
        return common_pb2.Reason.Name(value).removeprefix("REASON_")
    except ValueError:
        return f"UNKNOWN_{value}"


def normalize_endpoint(raw: str) -> str:
    """``host:port`` or ``http://host:port`` → ``host:port``.

    Raises:
        ValueError: anything else.
    """
    hp = raw.removeprefix("http://").removesuffix("/")
    host, sep, port = hp.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in hp:
        raise ValueError(f"expected host:port or http://host:port, got {raw!r:.64}")
    return hp


def _leader_hint(err: grpc.RpcError) -> str | None:
    """The ``ratify-leader`` address in a failed call's metadata, if valid."""
    pairs: list[tuple[str, str | bytes]] = []
    for getter in ("trailing_metadata", "initial_metadata"):
        md = getattr(err, getter, None)
        if callable(md):
            pairs.extend(md() or ())
    for key, value in pairs:
        if key == LEADER_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            try:
                return normalize_endpoint(text)
            except ValueError:
                return None
    return None


def _decision(outcome: int, reason: int, detail: str) -> Decision:
    name = outcome_name(outcome)
    if name not in ("COMMITTED", "ABORTED"):
        raise RatifyError(f"coordinator answered outcome {name}, expected a decision")
    return Decision(name, reason_name(reason), detail)


def _branch(msg: coordinator_pb2.Branch) -> Branch:
    return Branch(Xid.from_pb(msg.xid), msg.endpoint, msg.resource)


@dataclass
class _Backoff:
    """Jittered doubling pause."""

    next: float
    max: float

    def delay(self) -> float:
        d = self.next * random.uniform(0.5, 1.0)
        self.next = min(self.next * 2, self.max)
        return d


@dataclass
class CoordinatorClient:
    """A client of a Ratify cluster. Thread-safe; reuse one per process.

    Example::

        client = CoordinatorClient(["127.0.0.1:7101", "127.0.0.1:7102"])
        t = client.begin([("127.0.0.1:9001", "accounts")])
        ...  # do the work of each branch with t.branches[i].xid
        print(client.commit(t.gtrid))
    """

    endpoints: Sequence[str]
    config: ClientConfig = field(default_factory=ClientConfig)
    stats: ClientStats = field(default_factory=ClientStats)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict, init=False, repr=False)
    _leader: str | None = field(default=None, init=False)
    _cursor: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("no coordinator endpoints given")
        self.endpoints = [normalize_endpoint(e) for e in self.endpoints]
        self._cursor = random.randrange(len(self.endpoints))

    # -- the API ---------------------------------------------------------------

    def begin(
        self,
        branches: Sequence[tuple[str, str]] = (),
        timeout_ms: int = 0,
        labels: Mapping[str, str] | None = None,
        *,
        traceparent: str | None = None,
    ) -> Begun:
        """Starts a transaction, enlisting ``branches`` (endpoint, resource) at once.

        ``traceparent`` (here and in every method) is the W3C trace context to send,
        overriding the current OpenTelemetry context.

        Raises:
            ValueError: malformed ``traceparent``.
            Rejected: malformed input (nothing was started).
            DeadlineExceeded: no leader answered in time.
        """
        req = coordinator_pb2.BeginRequest(
            timeout_ms=timeout_ms,
            labels=dict(labels or {}),
            branches=[coordinator_pb2.BranchSpec(endpoint=e, resource=r) for e, r in branches],
        )
        resp = self._call("Begin", req, traceparent)
        return Begun(resp.gtrid, tuple(_branch(b) for b in resp.branches), resp.deadline_unix_ms)

    def enlist(self, gtrid: str, endpoint: str, resource: str, *, traceparent: str | None = None) -> Branch:
        """Adds a branch to an ACTIVE transaction (idempotent).

        Raises:
            Rejected: unknown gtrid, transaction no longer ACTIVE, malformed input.
            DeadlineExceeded: no leader answered in time.
        """
        spec = coordinator_pb2.BranchSpec(endpoint=endpoint, resource=resource)
        req = coordinator_pb2.EnlistRequest(gtrid=validate_gtrid(gtrid), branch=spec)
        return _branch(self._call("Enlist", req, traceparent).branch)

    def commit(self, gtrid: str, *, traceparent: str | None = None) -> Decision:
        """Runs two-phase commit; returns the recorded decision (idempotent).

        Raises:
            Rejected: unknown or malformed gtrid.
            DeadlineExceeded: outcome unknown; ask again later.
        """
        resp = self._call("Commit", coordinator_pb2.CommitRequest(gtrid=validate_gtrid(gtrid)), traceparent)
        return _decision(resp.outcome, resp.reason, resp.detail)

    def rollback(self, gtrid: str, *, traceparent: str | None = None) -> Decision:
        """Aborts unless already decided; returns the decision in force (idempotent).

        Raises:
            Rejected: unknown or malformed gtrid.
            DeadlineExceeded: no leader answered in time.
        """
        resp = self._call("Rollback", coordinator_pb2.RollbackRequest(gtrid=validate_gtrid(gtrid)), traceparent)
        return _decision(resp.outcome, resp.reason, resp.detail)

    def get(self, gtrid: str, *, traceparent: str | None = None) -> coordinator_pb2.Transaction:
        """One transaction as the coordinator knows it.

        Raises:
            Rejected: unknown or malformed gtrid.
            DeadlineExceeded: no leader answered in time.
        """
        req = coordinator_pb2.GetTransactionRequest(gtrid=validate_gtrid(gtrid))
        return self._call("GetTransaction", req, traceparent).transaction

    def query_outcome(self, xid: Xid, *, traceparent: str | None = None) -> tuple[str, str]:
        """(outcome, reason) of ``xid``'s transaction, as a participant asks it.

        The outcome is COMMITTED, ABORTED, IN_PROGRESS (ask later) or FORGOTTEN.

        Raises:
            Rejected: malformed xid.
            DeadlineExceeded: no leader answered in time.
        """
        req = coordinator_pb2.QueryOutcomeRequest(xid=xid.to_pb())
        resp = self._call("QueryOutcome", req, traceparent)
        return outcome_name(resp.outcome), reason_name(resp.reason)

    def register_participant(self, endpoint: str, name: str = "") -> bool:
        """Registers this participant at ``endpoint`` (``Admin.RegisterParticipant``):
        under TLS a branch may only name a registered endpoint. ``name`` empty: the
        certificate's ``ratify://participant/<name>``. True when something changed.

        Raises:
            Rejected: not a participant certificate, another participant's endpoint.
            DeadlineExceeded: no leader answered in time.
        """
        req = coordinator_pb2.RegisterParticipantRequest(name=name, endpoint=endpoint)
        return self._call("RegisterParticipant", req, admin=True).changed

    def leader(self) -> str | None:
        """The node that last served a call, or that a hint named."""
        with self._lock:
            return self._leader

    def close(self) -> None:
        """Closes every channel."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    # -- the retry loop --------------------------------------------------------

    def _stub(self, addr: str, admin: bool = False) -> object:
        with self._lock:
            ch = self._channels.get(addr)
            if ch is None:
                tls = self.config.tls
                if tls is None:
                    ch = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
                else:
                    ch = grpc.secure_channel(addr, tls.channel_credentials(), options=CHANNEL_OPTIONS)
                self._channels[addr] = ch
        if admin:
            return coordinator_pb2_grpc.AdminStub(ch)
        return coordinator_pb2_grpc.CoordinatorStub(ch)

    def _first_node(self) -> str:
        with self._lock:
            return self._leader or self.endpoints[self._cursor % len(self.endpoints)]

    def _set_leader(self, addr: str | None) -> None:
        with self._lock:
            self._leader = addr

    def _rotate_from(self, addr: str) -> str:
        with self._lock:
            if addr in self.endpoints:
                i = self.endpoints.index(addr) + 1
            else:
                self._cursor += 1
                i = self._cursor
            return self.endpoints[i % len(self.endpoints)]

    def _call(self, method: str, req: T, traceparent: str | None = None, admin: bool = False) -> object:
        """Calls ``method`` on the leader, following hints and retrying until the deadline.

        Every attempt sends :attr:`ClientConfig.metadata` and the trace context
        (``traceparent``, else the current OpenTelemetry context, taken once).

        Raises:
            ValueError: malformed ``traceparent``.
            Rejected, DeadlineExceeded.
        """
        cfg = self.config
        metadata = tracing.outgoing(cfg.metadata, traceparent)
        deadline = time.monotonic() + cfg.deadline
        backoff = _Backoff(cfg.backoff_initial, cfg.backoff_max)
        addr = self._first_node()
        redirects = 0
        last_error = "no attempt finished"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{method}: no answer within {cfg.deadline}s; last: {last_error}")
            rpc: Callable[..., object] = getattr(self._stub(addr, admin), method)
            try:
                resp = rpc(req, timeout=min(remaining, cfg.attempt_timeout), metadata=metadata)
            except grpc.RpcError as err:
                code = err.code()
                if code in REJECTIONS:
                    raise Rejected(code, err.details() or "") from None
                last_error = f"{addr}: {code.name}: {err.details()}"
                hint = _leader_hint(err) if code == grpc.StatusCode.UNAVAILABLE else None
            else:
                self._set_leader(addr)
                return resp
            self.stats.retries += 1
            if hint is not None and hint != addr and redirects < MAX_IMMEDIATE_REDIRECTS:
                self.stats.redirects += 1
                redirects += 1
                self._set_leader(hint)
                addr = hint
                continue
            if hint is not None:
                # The named leader cannot serve yet (or hints loop): retry after a pause.
                self._set_leader(hint)
                addr = hint
            else:
                self._set_leader(None)
                addr = self._rotate_from(addr)
            redirects = 0
            time.sleep(min(backoff.delay(), max(0.0, deadline - time.monotonic())))
