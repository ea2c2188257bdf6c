"""The client against fake coordinator nodes: leader hints, rotation, rejections."""

from concurrent import futures
from typing import Iterator

import grpc
import pytest

from ratify_py.client import ClientConfig, CoordinatorClient, DeadlineExceeded, Rejected
from ratify_py.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc

GTRID = "0123456789abcdef0000000000000001"


class Follower(coordinator_pb2_grpc.CoordinatorServicer):
    """Answers UNAVAILABLE with the leader's address in ``ratify-leader``."""

    def __init__(self, leader: str) -> None:
        self.leader = leader

    def Commit(self, request, context):  # noqa: N802
        context.set_trailing_metadata((("ratify-leader", self.leader),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader")


class Leader(coordinator_pb2_grpc.CoordinatorServicer):
    """Commits every known gtrid; NOT_FOUND for others."""

    def __init__(self) -> None:
        self.calls = 0

    def Commit(self, request, context):  # noqa: N802
        self.calls += 1
        if request.gtrid != GTRID:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown gtrid")
        return coordinator_pb2.CommitResponse(
            outcome=coordinator_pb2.OUTCOME_COMMITTED, reason=common_pb2.REASON_CLIENT_COMMIT
        )


def start(servicer: coordinator_pb2_grpc.CoordinatorServicer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def cluster() -> Iterator[tuple[Leader, str, str]]:
    leader = Leader()
    ls, leader_addr = start(leader)
    fs, follower_addr = start(Follower(leader_addr))
    yield leader, leader_addr, follower_addr
    ls.stop(None)
    fs.stop(None)


def dead_addr() -> str:
    server, addr = start(Leader())
    server.stop(None).wait()
    return addr


def test_follows_the_leader_hint_and_remembers_it(cluster: tuple[Leader, str, str]) -> None:
    leader, leader_addr, follower_addr = cluster
    client = CoordinatorClient([follower_addr])
    d = client.commit(GTRID)
    assert d.committed and d.reason == "CLIENT_COMMIT"
    assert client.leader() == leader_addr and client.stats.redirects == 1
    client.commit(GTRID)
    assert client.stats.redirects == 1, "the known leader is asked first"


def test_rotates_past_dead_nodes(cluster: tuple[Leader, str, str]) -> None:
    _, leader_addr, _ = cluster
    client = CoordinatorClient([dead_addr(), leader_addr], ClientConfig(deadline=5))
    for _ in range(3):
        assert client.commit(GTRID).committed


def test_rejections_are_not_retried(cluster: tuple[Leader, str, str]) -> None:
    leader, leader_addr, _ = cluster
    client = CoordinatorClient([leader_addr])
    with pytest.raises(Rejected) as e:
        client.commit("f" * 32)
    assert e.value.code == grpc.StatusCode.NOT_FOUND and leader.calls == 1
    with pytest.raises(ValueError):
        client.commit("not a gtrid")


def test_gives_up_at_the_deadline() -> None:
    client = CoordinatorClient([dead_addr()], ClientConfig(deadline=0.5, attempt_timeout=0.2))
    with pytest.raises(DeadlineExceeded):
        client.commit(GTRID)
