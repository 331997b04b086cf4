"""The examples under examples/python, run as a platform would run them, against the
real server of conftest."""

import sqlite3
import subprocess
import sys

import pytest

from flagshare_client import Client, ConsortiumKey, Digester, Flag

from serve import REPO

EXAMPLES = REPO / "examples" / "python"


def run(server, script, *args):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--endpoint", server.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def key_path(server):
    return str(server.root / "consortium.key")


def test_bulk_upload_refuses_a_file_with_a_bad_line_then_uploads_it_fixed(server, key_path, tmp_path):
    csv = tmp_path / "flags.csv"
    rows = ["identifier,kind,category,confidence,region"]
    rows += [f"bulk{i}@example.com,email,grooming,70," for i in range(25_000)]
    rows += ["07400 123456,phone,sextortion,90,GB", "not-an-email,email,grooming,50,"]
    csv.write_text("\n".join(rows) + "\n")
    bundle = str(server.root / "platform-a")
    refused = run(server, "bulk_upload.py", "--bundle", bundle, "--key", key_path, str(csv))
    assert refused.returncode == 1
    assert "line 25003: invalid email identifier: it has no '@'" in refused.stderr
    assert "nothing was sent" in refused.stderr

    digester = Digester(ConsortiumKey.load(key_path))
    with Client.from_bundle(server.root / "platform-b", endpoint=server.endpoint) as client:
        assert client.query([digester.digest("email", "bulk0@example.com")]) == []
        done = run(server, "bulk_upload.py", "--bundle", bundle, "--key", key_path, "--skip-invalid", str(csv))
        assert done.returncode == 1, done.stderr  # one line skipped
        assert "25001 created, 0 updated, 1 line(s) skipped" in done.stdout
        assert "25,001/25,001 flags sent" in done.stderr
        probe = [digester.digest("email", f"bulk{i}@example.com") for i in (0, 12_345, 24_999)]
        probe.append(digester.digest("phone", "+44 7400 123456"))
        assert [m.index for m in client.query(probe)] == [0, 1, 2, 3]


def test_signup_check_prints_a_verdict(server, key_path):
    digester = Digester(ConsortiumKey.load(key_path))
    with Client.from_bundle(server.root / "platform-a", endpoint=server.endpoint) as client:
        client.submit([Flag(digester.digest("email", "signup-offender@example.com"), "email", "grooming", 85)], 1)
    bundle = str(server.root / "platform-b")
    flagged = run(
        server, "signup_check.py", "--bundle", bundle, "--key", key_path,
        "--email", "Signup-Offender+new@Example.com", "--phone", "07911 123456", "--region", "GB",
    )
    assert flagged.returncode == 2, flagged.stderr
    assert "email signup-offender@example.com: FLAGGED by 1 platform(s): platform-a" in flagged.stdout
    assert "categories: grooming; highest confidence 85" in flagged.stdout
    assert "phone +447911123456: no match" in flagged.stdout
    assert "verdict: HOLD for review" in flagged.stdout
    clean = run(server, "signup_check.py", "--bundle", bundle, "--key", key_path, "--email", "fine@example.com")
    assert clean.returncode == 0 and "verdict: no match" in clean.stdout
    invalid = run(server, "signup_check.py", "--bundle", bundle, "--key", key_path, "--phone", "07911 123456")
    assert invalid.returncode == 0 and "phone: not checked: it has no '+' country code" in invalid.stdout


def test_mirror_holds_exactly_what_the_server_holds_and_resumes(server, key_path, tmp_path):
    db_path = tmp_path / "mirror.sqlite"
    bundle = str(server.root / "platform-b")
    digester = Digester(ConsortiumKey.load(key_path))
    with Client.from_bundle(server.root / "platform-a", endpoint=server.endpoint) as client:
        client.submit([Flag(digester.digest("email", f"mirror{i}@example.com"), "email", "grooming", 60) for i in range(3)], 1)
    first = run(server, "mirror_sqlite.py", "--bundle", bundle, "--db", str(db_path), "--once")
    assert first.returncode == 0, first.stderr

    def table():
        with sqlite3.connect(db_path) as db:
            return {row[0]: row[1:] for row in db.execute("SELECT digest, members, categories, max_confidence FROM flagged")}

    def server_view(digests):
        with Client.from_bundle(bundle, endpoint=server.endpoint) as client:
            return {m.digest: (",".join(m.members), ",".join(c.value for c in m.categories), m.max_confidence)
                    for m in client.query(digests)}

    mirrored = table()
    assert mirrored and server_view(list(mirrored)) == mirrored

    added = digester.digest("email", "mirror-new@example.com")
    dropped = next(iter(mirrored))
    with Client.from_bundle(server.root / "platform-a", endpoint=server.endpoint) as client:
        client.submit([Flag(added, "email", "trafficking", 77)], 1)
        client.retract([dropped], reason="duplicate")
    resumed = run(server, "mirror_sqlite.py", "--bundle", bundle, "--db", str(db_path), "--once")
    assert resumed.returncode == 0, resumed.stderr
    after = table()
    assert after[added] == ("platform-a", "trafficking", 77)
    assert dropped not in after
    assert set(after) == set(mirrored) - {dropped} | {added}
    assert server_view(list(after) + [dropped]) == after

    # A cursor the server cannot continue: the mirror rebuilds from a snapshot by itself.
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE feed_cursor SET cursor = 'v2:0000000000000000:1'")
        db.execute("INSERT INTO flagged VALUES (x'00', 1, 'ghost', 'other', 'email', 1, 0, NULL)")
    rebuilt = run(server, "mirror_sqlite.py", "--bundle", bundle, "--db", str(db_path), "--once")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "re-snapshot" in rebuilt.stderr
    assert table() == after
