"""The flood quarantine as a member sees it: flags past the operator's hourly threshold are
held, listed by `Client.held()` to their member only, match for no one, and go live when
the operator releases them."""

import contextlib
import json
import os
import subprocess

from flagshare_client import Client, Flag, Kind

from serve import Server, flagshare_binary


@contextlib.contextmanager
def two_members(tmp_path, data):
    """A server on `data` (made by `serve` unless it exists) and clients of two new members."""
    server = Server(data)
    try:
        for member in ("platform-a", "platform-b"):
            server.admin("member", "add", member, "--out", str(tmp_path / member))
        with Client.from_bundle(tmp_path / "platform-a", endpoint=server.endpoint) as a, Client.from_bundle(
            tmp_path / "platform-b", endpoint=server.endpoint
        ) as b:
            yield server, a, b
    finally:
        server.stop()


def test_flags_past_the_threshold_are_held_listed_to_their_member_and_released(tmp_path):
    data = tmp_path / "data"
    subprocess.run([str(flagshare_binary()), "init", "--data", str(data)], check=True, capture_output=True, timeout=60)
    settings = data / "flagshare.toml"
    text = settings.read_text()
    assert "quarantine_new_flags_per_hour = 100000" in text
    settings.write_text(text.replace("quarantine_new_flags_per_hour = 100000", "quarantine_new_flags_per_hour = 3"))
    with two_members(tmp_path, data) as (server, a, b):
        digests = [os.urandom(32) for _ in range(5)]
        result = a.submit([Flag(d, "email", "grooming", confidence=70) for d in digests], key_id=1)
        assert (result.n_created, result.n_quarantined) == (3, 2)

        held = a.held()
        assert len(held) == 2
        assert [h.digest for h in held] == sorted(h.digest for h in held)
        assert {h.digest for h in held} < set(digests)
        assert all(h.kind == Kind.EMAIL and h.confidence == 70 and h.held_since for h in held)
        held_digests = [h.digest for h in held]
        assert b.held() == []
        assert b.query(held_digests) == []
        assert len(b.query(digests)) == 3

        listed = [
            json.loads(line)
            for line in server.admin("quarantine", "list", "platform-a", "--json").stdout.splitlines()
        ]
        assert [bytes.fromhex(row["digest"]) for row in listed] == held_digests

        server.admin("quarantine", "release", "platform-a")
        assert a.held() == []
        assert [m.digest for m in b.query(held_digests)] == held_digests


def test_an_import_commits_its_flags_reports_blocks_and_a_bad_flag_cancels_it(tmp_path):
    with two_members(tmp_path, tmp_path / "data") as (_server, a, b):
        digests = [os.urandom(32) for _ in range(25_000)]
        # Generated as it goes: the whole import is never held in memory.
        result = a.import_flags((Flag(d, "email", "grooming", confidence=60) for d in digests), key_id=1)
        assert (result.n_created, result.n_updated, result.n_blocks) == (25_000, 0, 1)
        assert len(b.query(digests[::250])) == 100

        again = a.import_flags((Flag(d, "email", "grooming", confidence=61) for d in digests[:100]), key_id=1)
        assert (again.n_created, again.n_updated) == (0, 100)

        fresh = [os.urandom(32) for _ in range(15_000)]

        def flags_with_a_bad_one():
            for i, d in enumerate(fresh):
                yield Flag(d if i != 12_000 else b"short", "email", "grooming")

        try:
            a.import_flags(flags_with_a_bad_one(), key_id=1)
        except ValueError as err:
            assert "flag 12000" in str(err)
        else:
            raise AssertionError("a bad flag must stop the import")
        # The open block was never committed: nothing of it matches.
        assert b.query(fresh[:10_000:100]) == []

