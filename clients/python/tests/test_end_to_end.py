"""The client against a real `flagshare serve`: submit, query, query_stream, retract,
dispute, range_query, subscribe, refusals, and digests equal to `flagshare hash`."""

import datetime as dt
import os

import grpc
import pytest

from flagshare_client import (
    Category,
    Client,
    ConsortiumKey,
    CursorExpired,
    Digester,
    FeedOp,
    Flag,
    FlagshareError,
    InvalidIdentifier,
    Kind,
    RetractReason,
    Selector,
)

IDENTIFIERS = [
    ("email", "Offender+alt@Example.com", None),
    ("email", "F.o.o+tag@GoogleMail.com", None),
    ("phone", "07400 123456", "GB"),
    ("phone", "+1 (201) 555-0123", None),
    ("username", "Instagram:@Stra\u00dfe", None),
    ("device_id", "AA:BB:CC:00:11:22", None),
    ("ip_address", "::ffff:192.0.2.1", None),
    ("other", "cafe\u0301", None),
]


@pytest.fixture(scope="module")
def digester(server):
    return Digester(ConsortiumKey.load(server.root / "consortium.key"))


@pytest.fixture(scope="module")
def platform_a(server):
    with Client.from_bundle(server.root / "platform-a", endpoint=server.endpoint) as client:
        yield client


@pytest.fixture(scope="module")
def platform_b(server):
    with Client.from_bundle(server.root / "platform-b", endpoint=server.endpoint) as client:
        yield client


def random_digests(n):
    return [os.urandom(32) for _ in range(n)]


def test_digests_equal_the_cli(server, digester):
    for kind, raw, region in IDENTIFIERS:
        args = ["hash", "--key", str(server.root / "consortium.key"), "--kind", kind, raw]
        if region:
            args += ["--region", region]
        normal, digest = server.run(*args).stdout.strip().split("\t")
        assert digester.normalize_and_digest(kind, raw, region) == (normal, bytes.fromhex(digest)), raw


def test_submit_then_query_from_another_member(platform_a, platform_b, digester):
    digest = digester.digest("email", "groomer@example.com")
    result = platform_a.submit(
        [Flag(digest=digest, kind=Kind.EMAIL, category=Category.GROOMING, confidence=90, reference="case-17")],
        key_id=digester.key_id,
    )
    assert (result.n_created, result.n_updated, result.n_quarantined) == (1, 0, 0)
    assert result.sequence > 0
    again = platform_a.submit([Flag(digest, "email", "grooming", confidence=95)], key_id=digester.key_id)
    assert (again.n_created, again.n_updated) == (0, 1)

    miss = digester.digest("email", "someone@example.com")
    matches = platform_b.query([miss, digester.digest("email", "Groomer+x@Example.com")])
    assert len(matches) == 1
    match = matches[0]
    assert match.index == 1 and match.digest == digest
    assert match.members == ("platform-a",) and match.n_members == 1
    assert match.categories == (Category.GROOMING,) and match.kinds == (Kind.EMAIL,)
    assert match.max_confidence == 95 and not match.flagged_by_caller and match.n_disputes == 0
    assert match.first_seen <= match.last_seen <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)


def test_query_batches_past_the_server_limit(platform_a, platform_b, digester):
    digests = random_digests(25_000)
    flagged = [digests[3], digests[10_000], digests[24_999]]
    platform_a.submit([Flag(d, "device_id", "sextortion", 60) for d in flagged], key_id=digester.key_id)
    matches = platform_b.query(digests)
    assert [m.index for m in matches] == [3, 10_000, 24_999]
    assert [m.digest for m in matches] == flagged


def test_query_stream_yields_matches_in_order_across_batches(platform_a, platform_b, digester):
    digests = random_digests(47_000)
    wanted = sorted({0, 9_999, 10_000, 23_456, 46_999})
    platform_a.submit([Flag(digests[i], "phone", "trafficking", 70) for i in wanted], key_id=digester.key_id)
    # A generator: the client must not need the whole input at once.
    matches = list(platform_b.query_stream((d for d in digests), batch_size=3_000, window=4))
    assert [m.index for m in matches] == wanted
    assert all(m.categories == (Category.TRAFFICKING,) for m in matches)


def test_retract_and_dispute(platform_a, platform_b, digester):
    digest = digester.digest("username", "tiktok:predator")
    other = digester.digest("username", "tiktok:never-flagged")
    platform_a.submit(
        [Flag(digest, "username", "grooming", 80), Flag(digest, "username", "sextortion", 80)], key_id=digester.key_id
    )
    disputed = platform_b.dispute(digest, "platform-a", note="our review found no contact")
    assert disputed.n_flags == 2
    assert platform_b.query([digest])[0].n_disputes >= 1

    result = platform_a.retract(
        [Selector(digest, kind="username", category="grooming"), other], reason=RetractReason.APPEAL_UPHELD
    )
    assert result.n_retracted == 1 and result.unmatched_indexes == (1,)
    assert platform_b.query([digest])[0].categories == (Category.SEXTORTION,)
    assert platform_a.retract([digest], reason="false_positive").n_retracted == 1
    assert platform_b.query([digest]) == []


def test_range_query_finds_a_flag_by_prefix(platform_a, platform_b, digester):
    digest = digester.digest("ip_address", "198.51.100.7")
    platform_a.submit([Flag(digest, "ip_address", "other", 40)], key_id=digester.key_id)
    matches = platform_b.range_query(digest[:2])
    assert digest in [m.digest for m in matches]
    assert all(m.digest[:2] == digest[:2] for m in matches)


def test_subscribe_snapshot_then_live_changes_then_resume(platform_a, platform_b, digester):
    seen = {}
    subscription = platform_b.subscribe()
    stream = iter(subscription)
    for batch in stream:
        for event in batch.events:
            seen[event.digest] = event
        if batch.caught_up:
            break
    assert subscription.cursor
    assert all(e.op == FeedOp.SNAPSHOT for e in seen.values())
    live = digester.digest("email", "live@example.com")
    platform_a.submit([Flag(live, "email", "csam_sharing", 99)], key_id=digester.key_id)
    event = next(e for batch in stream for e in batch.events if e.digest == live)
    assert event.op == FeedOp.UPSERT and event.member == "platform-a" and event.category == Category.CSAM_SHARING
    assert event.state.max_confidence == 99
    cursor = subscription.cursor
    subscription.close()

    platform_a.retract([live], reason="duplicate")
    resumed = platform_b.subscribe(cursor)
    event = next(e for batch in resumed for e in batch.events if e.digest == live)
    assert event.op == FeedOp.RETRACT and event.reason == "duplicate" and event.state is None
    resumed.close()


def test_a_cursor_from_elsewhere_is_cursor_expired(platform_b):
    with pytest.raises(CursorExpired) as raised:
        for _ in platform_b.subscribe("v2:0000000000000000:5", reconnect=False):
            pass
    assert raised.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_bad_input_is_refused_before_anything_is_sent(server, platform_a, platform_b, digester):
    good = digester.digest("email", "partial@example.com")
    cases = [
        ([Flag(good, "email", "grooming"), Flag(b"short", "email", "grooming")], "flag 1: digest is 5 bytes, expected 32"),
        ([Flag(good, "email", "grooming"), Flag(good, "email", "grooming", confidence=101)], "flag 1: confidence 101"),
        ([Flag(good, "email", "stalking")], "flag 0: category 'stalking' is not one of"),
        ([Flag(good, "fax", "grooming")], "flag 0: unknown identifier kind 'fax'"),
        ([Flag(good, "email", "grooming", reference=b"x" * 129)], "flag 0: reference is 129 bytes"),
        ([Flag(good, "email", "grooming", expires_at=dt.datetime(2030, 1, 1))], "flag 0: expires_at must be a timezone-aware"),
    ]
    for flags, message in cases:
        with pytest.raises(ValueError, match=message):
            platform_a.submit(flags, key_id=digester.key_id)
    # Nothing partial was sent: the good flag of the first batch is not stored.
    assert platform_b.query([good]) == []
    with pytest.raises(ValueError, match="digest 2: digest is 31 bytes"):
        platform_b.query([good, good, good[:31]])
    with pytest.raises(ValueError, match="reason 'because' is not one of"):
        platform_a.retract([good], reason="because")
    with pytest.raises(InvalidIdentifier, match="no default region") as raised:
        digester.digest("phone", "07400 123456")
    assert raised.value.error_class == "no_region"


def test_server_refusals_carry_code_and_message(platform_a, platform_b, digester):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    with pytest.raises(FlagshareError) as raised:
        platform_a.submit([Flag(digester.digest("email", "late@example.com"), "email", "grooming", expires_at=past)], 1)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expires_at" in raised.value.message
    with pytest.raises(FlagshareError) as raised:
        platform_b.dispute(digester.digest("email", "nobody@example.com"), "platform-a")
    assert raised.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


def test_a_revoked_member_is_refused(server, digester):
    server.admin("member", "add", "platform-c", "--out", str(server.root / "platform-c"))
    with Client.from_bundle(server.root / "platform-c", endpoint=server.endpoint) as client:
        assert client.query([digester.digest("email", "x@example.com")]) == []
        server.admin("member", "remove", "platform-c")
        with pytest.raises(FlagshareError) as raised:
            client.query([digester.digest("email", "x@example.com")])
        assert raised.value.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
