"""Fixtures for the end-to-end tests: a real `flagshare serve` with a fresh development
PKI in a temporary folder, two member bundles and a consortium key."""

import shutil

import pytest

from serve import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("flagshare")
    server = Server(root / "data")
    try:
        for member in ("platform-a", "platform-b"):
            server.admin("member", "add", member, "--out", str(root / member))
        server.run("keygen", "--out", str(root / "consortium.key"))
        server.root = root
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
