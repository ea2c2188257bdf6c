"""The recovery loop acts on QueryOutcome answers, and only on decisions."""

from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from ratify_py.client import ClientConfig, CoordinatorClient
from ratify_py.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from ratify_py.recovery import RecoveryLoop
from ratify_py.store import AccountStore, Vote
from ratify_py.xid import Xid

G = "0123456789abcdef00000000000000"
ANSWERS = {
    f"{G}01": coordinator_pb2.OUTCOME_COMMITTED,
    f"{G}02": coordinator_pb2.OUTCOME_ABORTED,
    f"{G}03": coordinator_pb2.OUTCOME_IN_PROGRESS,
    f"{G}04": coordinator_pb2.OUTCOME_FORGOTTEN,
}


class Outcomes(coordinator_pb2_grpc.CoordinatorServicer):
    """Answers QueryOutcome from ``ANSWERS``."""

    def QueryOutcome(self, request, context):  # noqa: N802
        return coordinator_pb2.QueryOutcomeResponse(
            outcome=ANSWERS[request.xid.gtrid], reason=common_pb2.REASON_CLIENT_COMMIT
        )


@pytest.fixture
def coordinator() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(Outcomes(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_decisions_are_applied_and_the_rest_stays_prepared(tmp_path: Path, coordinator: str) -> None:
    store = AccountStore(tmp_path / "bank.sqlite")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2, "FULL: fsync every commit"
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    accounts = ["a", "b", "c", "d"]
    store.open_accounts(accounts, 100)
    xids = [Xid(g, "1") for g in sorted(ANSWERS)]
    for x, acct in zip(xids, accounts):
        store.branch(x).credit(acct, 1)
        assert store.prepare(x)[0] == Vote.YES
    loop = RecoveryLoop({"accounts": store}, CoordinatorClient([coordinator], ClientConfig(deadline=5)))
    report = loop.run_once()
    assert report.committed == [xids[0].render()]
    assert report.rolled_back == [xids[1].render()]
    assert (report.in_doubt, report.needs_operator, report.errors) == (1, 1, 0)
    assert store.balance("a") == 101 and store.balance("b") == 100
    assert sorted(x.gtrid for x in store.recover()) == [f"{G}03", f"{G}04"]
