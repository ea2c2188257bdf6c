"""A durable SQLite account store: the resource the Python participant hosts.

The application and the participant may be different processes sharing the database
file, as an application and a database's XA agent would: the application registers a
branch and buffers its work (:meth:`AccountStore.branch`, :meth:`BranchWork.debit`,
:meth:`BranchWork.credit`); the participant prepares, commits and rolls back.

Tables:
    accounts(name, balance)            balances, never negative.
    branches(xid, state, updated_ms)   one row per branch this store heard of; state is
                                       ``active`` (taking work), ``prepared`` (voted YES,
                                       in doubt), ``committed``, ``rolled_back`` (also
                                       the tombstone that refuses a late prepare) or
                                       ``read_only``.
    work(xid, account, delta)          net change per account of an active or prepared
                                       branch; deleted when the branch finishes.

Durability: ``journal_mode=WAL`` and ``synchronous=FULL``, so every transaction is
fsynced before ``COMMIT`` returns; a YES vote and every phase-2 answer are given only
after that. Every read-check-write runs in ``BEGIN IMMEDIATE`` (one writer at a time,
across processes) and under a thread lock (one connection per store object).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator

from ratify_py.xid import Xid

log = logging.getLogger("ratify_py.store")

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name    TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS branches (
    xid        TEXT PRIMARY KEY,
    state      TEXT NOT NULL
               CHECK (state IN ('active', 'prepared', 'committed', 'rolled_back', 'read_only')),
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS work (
    xid     TEXT NOT NULL REFERENCES branches (xid),
    account TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    PRIMARY KEY (xid, account)
);
CREATE INDEX IF NOT EXISTS work_by_account ON work (account);
"""


class StoreError(Exception):
    """A request the store refuses (bad name, unknown account, closed branch)."""


class Vote(Enum):
    """A phase-1 answer."""

    YES = "YES"
    NO = "NO"
    READ_ONLY = "READ_ONLY"


class CommitResult(Enum):
    """A commit answer."""

    COMMITTED = "COMMITTED"
    ROLLED_BACK = "ROLLED_BACK"


class RollbackResult(Enum):
    """A rollback answer."""

    ROLLED_BACK = "ROLLED_BACK"
    ALREADY_COMMITTED = "ALREADY_COMMITTED"


class ProtocolViolation(StoreError):
    """A phase-2 request the store cannot make sense of (a two-phase commit of a branch
    that was never prepared). The participant answers with an error status; the
    coordinator retries and an operator looks. A two-phase commit of a branch that was
    rolled back is not one: it answers ROLLED_BACK, a heuristic outcome the coordinator
    records and lists (errors would be retried for ever and never show up)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class AccountStore:
    """The store at ``path`` (created if missing)."""

    path: Path
    _db: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx() as db:
            for stmt in filter(str.strip, SCHEMA.split(";")):
                db.execute(stmt)

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One fsynced write transaction, exclusive across threads and processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- the application's side --------------------------------------------------

    def open_accounts(self, names: list[str], initial: int) -> None:
        """Creates the accounts that do not exist yet with ``initial`` balance."""
        for n in names:
            _check_name(n)
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO accounts (name, balance) VALUES (?, ?)",
                [(n, initial) for n in names],
            )

    def branch(self, xid: Xid) -> "BranchWork":
        """Registers branch ``xid`` (idempotent) and returns a handle to work on it.

        Raises:
            StoreError: the branch is prepared, finished or fenced by a rollback.
        """
        key = xid.render()
        with self._tx() as db:
            row = db.execute("SELECT state FROM branches WHERE xid = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO branches (xid, state, updated_ms) VALUES (?, 'active', ?)",
                    (key, _now_ms()),
                )
            elif row[0] != "active":
                raise StoreError(f"branch {key} does not accept work (it is {row[0]})")
        return BranchWork(self, xid)

    def _add_work(self, xid: Xid, account: str, delta: int) -> None:
        _check_name(account)
        key = xid.render()
        with self._tx() as db:
            state = db.execute("SELECT state FROM branches WHERE xid = ?", (key,)).fetchone()
            if state is None or state[0] != "active":
                raise StoreError(f"branch {key} does not accept work")
            if db.execute("SELECT 1 FROM accounts WHERE name = ?", (account,)).fetchone() is None:
                raise StoreError(f"unknown account {account!r}")
            db.execute(
                "INSERT INTO work (xid, account, delta) VALUES (?, ?, ?) "
                "ON CONFLICT (xid, account) DO UPDATE SET delta = delta + excluded.delta",
                (key, account, delta),
            )

    def balance(self, account: str) -> int:
        """The committed balance of ``account``.

        Raises:
            StoreError: unknown account.
        """
        with self._lock:
            row = self._db.execute("SELECT balance FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            raise StoreError(f"unknown account {account!r}")
        return int(row[0])

    def total(self) -> int:
        """Sum of every committed balance."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0])

    def state_of(self, xid: Xid) -> str | None:
        """The branch's state (``active``, ``prepared``, ...), None if never heard of."""
        with self._lock:
            row = self._db.execute("SELECT state FROM branches WHERE xid = ?", (xid.render(),)).fetchone()
        return None if row is None else str(row[0])

    # -- the participant's side (the XA verbs) -------------------------------------

    def prepare(self, xid: Xid) -> tuple[Vote, str]:
        """Phase 1: YES once the work and the ``prepared`` state are fsynced.

        An unknown branch gets a tombstone and NO, so work registered later for it can
        never be prepared (a late prepare after an abort must not succeed).
        """
        key = xid.render()
        with self._tx() as db:
            state = _state(db, key)
            if state in ("prepared", "committed"):
                return Vote.YES, ""
            if state == "read_only":
                return Vote.READ_ONLY, ""
            if state == "rolled_back":
                return Vote.NO, "branch was rolled back"
            if state is None:
                _finish(db, key, "rolled_back")
                return Vote.NO, "unknown branch"
            deltas = _deltas(db, key)
            if not deltas:
                _finish(db, key, "read_only")
                return Vote.READ_ONLY, ""
            refusal = _refusal(db, key, deltas)
            if refusal is not None:
                _finish(db, key, "rolled_back")
                return Vote.NO, refusal
            _set_state(db, key, "prepared")
        return Vote.YES, ""

    def commit(self, xid: Xid, one_phase: bool) -> CommitResult:
        """Phase 2 commit (idempotent), or one-phase commit of an unprepared branch.

        A two-phase commit of a rolled-back branch answers ROLLED_BACK: the heuristic
        answer the coordinator records, not an error it would retry for ever.

        Raises:
            ProtocolViolation: two-phase commit of a never-prepared branch.
        """
        key = xid.render()
        with self._tx() as db:
            state = _state(db, key)
            if state in ("committed", "read_only"):
                return CommitResult.COMMITTED
            if state == "rolled_back":
                if not one_phase:
                    log.warning("two-phase commit of %s, which was rolled back: heuristic outcome", key)
                return CommitResult.ROLLED_BACK
            if state == "prepared":
                _apply(db, key, _deltas(db, key))
                return CommitResult.COMMITTED
            if state is None:
                if one_phase:
                    _finish(db, key, "rolled_back")
                    return CommitResult.ROLLED_BACK
                # Committed earlier and forgotten since.
                return CommitResult.COMMITTED
            # active
            if not one_phase:
                raise ProtocolViolation(f"two-phase commit of {key}, which was never prepared")
            deltas = _deltas(db, key)
            if _refusal(db, key, deltas) is not None:
                _finish(db, key, "rolled_back")
                return CommitResult.ROLLED_BACK
            _apply(db, key, deltas)
        return CommitResult.COMMITTED

    def rollback(self, xid: Xid) -> RollbackResult:
        """Phase 2 rollback (idempotent); leaves a tombstone that refuses prepare."""
        key = xid.render()
        with self._tx() as db:
            state = _state(db, key)
            if state == "committed":
                return RollbackResult.ALREADY_COMMITTED
            if state != "rolled_back":
                _finish(db, key, "rolled_back")
        return RollbackResult.ROLLED_BACK

    def recover(self) -> list[Xid]:
        """The prepared (in-doubt) branches."""
        with self._lock:
            rows = self._db.execute(
                "SELECT xid FROM branches WHERE state = 'prepared' ORDER BY xid"
            ).fetchall()
        return [Xid.parse(r[0]) for r in rows]


@dataclass(frozen=True)
class BranchWork:
    """A handle to buffer work on one active branch; prepare makes it durable."""

    store: AccountStore
    xid: Xid

    def debit(self, account: str, amount: int) -> None:
        """Takes ``amount`` (> 0) from ``account`` when the branch commits.

        Raises:
            StoreError: bad amount or account, or the branch no longer takes work.
        """
        self.store._add_work(self.xid, account, -_positive(amount))

    def credit(self, account: str, amount: int) -> None:
        """Adds ``amount`` (> 0) to ``account`` when the branch commits.

        Raises:
            StoreError: bad amount or account, or the branch no longer takes work.
        """
        self.store._add_work(self.xid, account, _positive(amount))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StoreError(f"invalid account name {name!r:.64}: use 1 to 64 of [A-Za-z0-9_.-]")


def _positive(amount: int) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise StoreError(f"invalid amount {amount!r}: must be a positive integer")
    return amount


def _state(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT state FROM branches WHERE xid = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_state(db: sqlite3.Connection, key: str, state: str) -> None:
    db.execute(
        "INSERT INTO branches (xid, state, updated_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (xid) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
        (key, state, _now_ms()),
    )


def _finish(db: sqlite3.Connection, key: str, state: str) -> None:
    """Records a final state and drops the branch's work."""
    _set_state(db, key, state)
    db.execute("DELETE FROM work WHERE xid = ?", (key,))


def _deltas(db: sqlite3.Connection, key: str) -> dict[str, int]:
    rows = db.execute("SELECT account, delta FROM work WHERE xid = ? AND delta != 0", (key,))
    return {str(a): int(d) for a, d in rows}


def _refusal(db: sqlite3.Connection, key: str, deltas: dict[str, int]) -> str | None:
    """Why ``deltas`` cannot be applied: an account locked by another prepared branch,
    unknown, or going negative. None when they can."""
    for account, delta in sorted(deltas.items()):
        holder = db.execute(
            "SELECT w.xid FROM work w JOIN branches b ON b.xid = w.xid "
            "WHERE w.account = ? AND b.state = 'prepared' AND w.xid != ? LIMIT 1",
            (account, key),
        ).fetchone()
        if holder is not None:
            return f"account {account} is locked by prepared branch {holder[0]}"
        row = db.execute("SELECT balance FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            return f"unknown account {account}"
        if row[0] + delta < 0:
            return f"insufficient funds in {account}: balance {row[0]}, change {delta}"
    return None


def _apply(db: sqlite3.Connection, key: str, deltas: dict[str, int]) -> None:
    """Applies ``deltas`` and marks the branch committed, in the caller's transaction."""
    for account, delta in deltas.items():
        db.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", (delta, account))
    _finish(db, key, "committed")
