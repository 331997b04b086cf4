"""Keyed digests, spec v1: BLAKE3 keyed hash of the normal form under a per-kind key
derived from the consortium key. The server never sees the key or the identifier."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tomllib

import blake3

from .normalize import Kind, normalize

DIGEST_LEN = 32
_CONTEXT = "flagshare 2026-11 identifier digest v1 "


class KeyFileError(ValueError):
    """A consortium key file that cannot be read or is malformed."""


@dataclasses.dataclass(frozen=True, repr=False)
class ConsortiumKey:
    """The consortium key: 32 secret bytes and their epoch (key id)."""

    key_id: int
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyFileError(f"key is {len(self.secret)} bytes, expected 32")
        if not 0 <= self.key_id <= 0xFFFFFFFF:
            raise KeyFileError(f"key_id {self.key_id} is not an unsigned 32-bit number")

    def __repr__(self) -> str:
        # Never print the secret, even in a traceback.
        return f"ConsortiumKey(key_id={self.key_id})"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ConsortiumKey":
        """Reads a key file written by `flagshare keygen` (TOML: format, key_id, key)."""
        path = pathlib.Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise KeyFileError(f"cannot read key file {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise KeyFileError(f"key file {path} is malformed: {err}") from None
        if data.get("format") != 1:
            raise KeyFileError(f"key file {path}: unsupported format {data.get('format')!r} (expected 1)")
        key_id, key = data.get("key_id"), data.get("key")
        if not isinstance(key_id, int) or not isinstance(key, str):
            raise KeyFileError(f"key file {path}: needs an integer key_id and a hex key")
        try:
            secret = bytes.fromhex(key.strip())
        except ValueError:
            raise KeyFileError(f"key file {path}: key is not hex") from None
        try:
            return cls(key_id=key_id, secret=secret)
        except KeyFileError as err:
            raise KeyFileError(f"key file {path}: {err}") from None


class Digester:
    """Normalises and digests identifiers under one consortium key."""

    def __init__(self, key: ConsortiumKey):
        self.key_id = key.key_id
        self._kind_keys = {
            kind: blake3.blake3(key.secret, derive_key_context=_CONTEXT + kind.value).digest() for kind in Kind
        }

    def digest_normalized(self, kind: Kind | str, normal: str) -> bytes:
        """The digest of a normal form (no normalisation: for forms you already hold)."""
        kind = Kind.parse(kind)
        return blake3.blake3(normal.encode("utf-8"), key=self._kind_keys[kind]).digest()

    def normalize_and_digest(self, kind: Kind | str, raw: str, region: str | None = None) -> tuple[str, bytes]:
        """The normal form and the digest; raises InvalidIdentifier for invalid input."""
        kind = Kind.parse(kind)
        normal = normalize(kind, raw, region)
        return normal, self.digest_normalized(kind, normal)

    def digest(self, kind: Kind | str, raw: str, region: str | None = None) -> bytes:
        """The 32-byte digest of `raw` read as `kind`; raises InvalidIdentifier."""
        return self.normalize_and_digest(kind, raw, region)[1]
