"""Key files, the hand-written vectors of docs/digest-v1-vectors.json, and the edges of
the Python API that the corpus does not reach."""

import json
import pathlib

import pytest

from flagshare_client import ConsortiumKey, Digester, InvalidIdentifier, KeyFileError, Kind, normalize

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "digest-v1-vectors.json"


def test_hand_written_vectors():
    doc = json.loads(VECTORS.read_text())
    digester = Digester(ConsortiumKey(key_id=doc["key_id"], secret=bytes.fromhex(doc["key"])))
    for vector in doc["vectors"]:
        normal, digest = digester.normalize_and_digest(vector["kind"], vector["input"])
        assert normal == vector["normalized"], vector["input"]
        assert digest.hex() == vector["digest"], vector["input"]
    for invalid in doc["invalid"]:
        with pytest.raises(InvalidIdentifier):
            normalize(invalid["kind"], invalid["input"])


def test_key_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "consortium.key"
    path.write_text('# comment\nformat = 1\nkey_id = 7\nkey = "' + "ab" * 32 + '"\n')
    key = ConsortiumKey.load(path)
    assert key.key_id == 7 and key.secret == bytes.fromhex("ab" * 32)
    assert "ab" not in repr(key)
    for text, message in [
        ('format = 2\nkey_id = 1\nkey = "00"\n', "unsupported format 2"),
        ('format = 1\nkey_id = 1\nkey = "abcd"\n', "key is 2 bytes, expected 32"),
        ('format = 1\nkey_id = 1\nkey = "zz"\n', "key is not hex"),
        ("format = 1\n", "needs an integer key_id"),
        ("format = = 1", "malformed"),
    ]:
        path.write_text(text)
        with pytest.raises(KeyFileError, match=message):
            ConsortiumKey.load(path)
    with pytest.raises(KeyFileError, match="cannot read key file"):
        ConsortiumKey.load(tmp_path / "missing.key")


def test_kinds_digest_apart():
    digester = Digester(ConsortiumKey(key_id=1, secret=bytes(32)))
    digests = {digester.digest(kind, "alice@example.com") for kind in (Kind.EMAIL, Kind.DEVICE_ID, Kind.OTHER)}
    assert len(digests) == 3
    assert all(len(d) == 32 for d in digests)


def test_kind_names_and_errors():
    assert Kind.parse("IP") is Kind.IP_ADDRESS and Kind.parse("device-id") is Kind.DEVICE_ID
    with pytest.raises(ValueError, match="unknown identifier kind 'fax'"):
        normalize("fax", "x")


def test_invalid_identifiers_say_why():
    with pytest.raises(InvalidIdentifier) as raised:
        normalize("email", "alice@localhost")
    assert raised.value.error_class == "bad_domain"
    assert str(raised.value) == "invalid email identifier: the domain 'localhost' has no dot"
    with pytest.raises(InvalidIdentifier) as raised:
        normalize("other", "a\ud800b")
    assert "lone surrogate" in str(raised.value)
    with pytest.raises(InvalidIdentifier) as raised:
        normalize("phone", "07400 123456", region="XX")
    assert raised.value.error_class == "bad_phone"
    with pytest.raises(TypeError):
        normalize("email", b"alice@example.com")
