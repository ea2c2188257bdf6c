"""The SQLite store's XA verbs: votes, idempotency, tombstones, locks, durability."""

from pathlib import Path

import pytest

from ratify_py.store import AccountStore, CommitResult, ProtocolViolation, RollbackResult, StoreError, Vote
from ratify_py.xid import Xid

G = "0123456789abcdef00000000000000"


def xid(n: int) -> Xid:
    return Xid(f"{G}{n:02x}", "1")


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    s = AccountStore(tmp_path / "bank.sqlite")
    s.open_accounts(["a", "b"], 100)
    return s


def test_prepared_branch_survives_reopen_and_commits(tmp_path: Path, store: AccountStore) -> None:
    w = store.branch(xid(1))
    w.debit("a", 30)
    w.credit("b", 30)
    assert store.prepare(xid(1)) == (Vote.YES, "")
    assert store.prepare(xid(1))[0] == Vote.YES, "prepare is idempotent"
    store.close()
    again = AccountStore(tmp_path / "bank.sqlite")
    assert again.recover() == [xid(1)]
    assert again.commit(xid(1), one_phase=False) == CommitResult.COMMITTED
    assert again.commit(xid(1), one_phase=False) == CommitResult.COMMITTED
    assert (again.balance("a"), again.balance("b"), again.total()) == (70, 130, 200)
    assert again.recover() == []


def test_no_vote_and_tombstones(store: AccountStore) -> None:
    store.branch(xid(2)).debit("a", 101)
    vote, detail = store.prepare(xid(2))
    assert vote == Vote.NO and "insufficient" in detail
    # Never heard of: NO, and the tombstone refuses later work.
    assert store.prepare(xid(3))[0] == Vote.NO
    with pytest.raises(StoreError):
        store.branch(xid(3))
    assert store.rollback(xid(4)) == RollbackResult.ROLLED_BACK
    assert store.prepare(xid(4))[0] == Vote.NO
    # A two-phase commit of a rolled-back branch is a heuristic answer, not an error.
    assert store.commit(xid(4), one_phase=False) == CommitResult.ROLLED_BACK
    assert store.total() == 200


def test_read_only_one_phase_and_locks(store: AccountStore) -> None:
    store.branch(xid(5))
    assert store.prepare(xid(5))[0] == Vote.READ_ONLY
    store.branch(xid(6)).credit("a", 5)
    assert store.commit(xid(6), one_phase=True) == CommitResult.COMMITTED
    store.branch(xid(7)).debit("b", 500)
    assert store.commit(xid(7), one_phase=True) == CommitResult.ROLLED_BACK
    store.branch(xid(8)).debit("a", 1)
    assert store.prepare(xid(8))[0] == Vote.YES
    store.branch(xid(9)).credit("a", 1)
    vote, detail = store.prepare(xid(9))
    assert vote == Vote.NO and "locked" in detail
    assert store.rollback(xid(8)) == RollbackResult.ROLLED_BACK
    assert store.balance("a") == 105
    assert store.rollback(xid(6)) == RollbackResult.ALREADY_COMMITTED
