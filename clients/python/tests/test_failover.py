"""Several endpoints of one operator: calls go to one that answers, and a subscription
moves to another node when its node is killed, continuing from its cursor. The second node
is started from a copy of the first's data folder, as a node holding the same state."""

import os
import shutil
import socket
import threading

import grpc
import pytest

from flagshare_client import Category, Client, Flag, FlagshareError, Kind
from serve import Server


def closed_endpoint() -> str:
    """An endpoint nothing listens on: a port bound and released at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def flag(digest: bytes) -> Flag:
    return Flag(digest=digest, kind=Kind.EMAIL, category=Category.GROOMING, confidence=90)


@pytest.fixture()
def two_nodes(tmp_path):
    first = Server(tmp_path / "data")
    bundle = tmp_path / "platform-a"
    first.admin("member", "add", "platform-a", "--out", str(bundle))
    before = os.urandom(32)
    with Client.from_bundle(bundle, endpoint=first.endpoint) as client:
        client.submit([flag(before)], key_id=0)
    first.stop()
    copy = tmp_path / "data-2"
    shutil.copytree(tmp_path / "data", copy)
    # `serve --data` on a new folder writes no settings file; one written by `init` names
    # its folder, which the copy must not share.
    settings = copy / "flagshare.toml"
    if settings.exists():
        own = f'data_dir = "{tmp_path / "data"}"'
        settings.write_text(settings.read_text().replace(own, f'data_dir = "{copy}"'))
    nodes = [Server(tmp_path / "data"), Server(copy)]
    try:
        yield nodes, bundle, before
    finally:
        for node in nodes:
            node.stop()


def test_calls_go_to_the_first_endpoint_that_answers(two_nodes):
    (first, second), bundle, before = two_nodes
    closed = closed_endpoint()
    with Client.from_bundle(bundle, endpoint=f"{closed}, {first.endpoint}, {second.endpoint}") as client:
        assert [m.digest for m in client.query([before])] == [before]
        assert client.endpoint == first.endpoint
        first.process.kill()
        first.process.wait()
        # Unavailable now: sent again to the next node, which holds the same flag.
        assert [m.digest for m in client.query([before])] == [before]
        assert client.endpoint == second.endpoint
    with Client.from_bundle(bundle, endpoint=[closed, closed_endpoint()]) as client:
        with pytest.raises(FlagshareError) as refused:
            client.query([before])
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_bundle_lists_the_endpoints(two_nodes, tmp_path):
    (first, second), bundle, before = two_nodes
    config = bundle / "client.toml"
    lines = [
        f'endpoint = "{closed_endpoint()}"\nendpoints = ["{second.endpoint}", "{first.endpoint}"]'
        if line.startswith("endpoint = ")
        else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")
    with Client.from_bundle(bundle) as client:
        assert client.endpoints[1:] == [second.endpoint, first.endpoint]
        assert len(client.query([before])) == 1
        assert client.endpoint == second.endpoint


def test_a_subscription_moves_to_another_node_and_keeps_its_cursor(two_nodes):
    (first, second), bundle, before = two_nodes
    after = os.urandom(32)
    received: list[bytes] = []
    caught_up = threading.Event()
    got_after = threading.Event()
    with Client.from_bundle(bundle, endpoint=[first.endpoint, second.endpoint]) as client:
        subscription = client.subscribe()

        def follow():
            try:
                for batch in subscription:
                    received.extend(event.digest for event in batch.events)
                    if batch.caught_up:
                        caught_up.set()
                    if after in received:
                        got_after.set()
                        return
            except FlagshareError:
                return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert caught_up.wait(timeout=30), "the snapshot arrives"
        assert received == [before]
        first.process.kill()
        first.process.wait()
        with Client.from_bundle(bundle, endpoint=second.endpoint) as other:
            other.submit([flag(after)], key_id=0)
        arrived = got_after.wait(timeout=30)
        subscription.close()
        reader.join(timeout=10)
        assert arrived, f"the flag submitted on the second node arrives: {received}"
        # Resumed from its cursor: the snapshot is not sent again.
        assert received == [before, after]
        assert client.endpoint == second.endpoint
