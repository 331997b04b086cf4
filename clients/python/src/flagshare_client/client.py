"""A member platform's client for the flagshare `Flags` service, over mutual TLS with the
bundle the operator issued (`client.toml`, `cert.pem`, `key.pem`, `ca.pem`).

Requests are checked here before anything is sent: a call with one bad item raises
ValueError (or InvalidIdentifier) naming the item, and sends nothing. Batching to the
server's 10,000-item limit is done for the caller.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import os
import pathlib
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
from google.protobuf import timestamp_pb2

from ._proto.flagshare.v1 import flagshare_pb2 as pb
from ._proto.flagshare.v1 import flagshare_pb2_grpc as pb_grpc
from .digest import DIGEST_LEN
from .normalize import Kind

#: The most items one request may carry (flags, digests or selectors).
MAX_BATCH = 10_000
_MAX_REFERENCE_BYTES = 128
_MAX_NOTE_BYTES = 128
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class FlagshareError(Exception):
    """A call the server (or the connection) refused: `code` is the gRPC status code,
    `message` the server's explanation. For a call sent in several batches, `n_done`
    items of earlier batches were committed before this one failed."""

    def __init__(self, code: grpc.StatusCode, message: str, n_done: int = 0):
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.message = message
        self.n_done = n_done


class CursorExpired(FlagshareError):
    """A Subscribe cursor the server can no longer continue (it compacted past it, or the
    database was restored): start again from a snapshot (`subscribe(cursor="")`)."""


class Category(str, enum.Enum):
    GROOMING = "grooming"
    SEXTORTION = "sextortion"
    CSAM_SHARING = "csam_sharing"
    CSAM_SOLICITATION = "csam_solicitation"
    TRAFFICKING = "trafficking"
    OTHER = "other"


class Distribution(str, enum.Enum):
    """Who may see a flag. `None` on a Flag means the operator's default (or, when the flag
    exists already, the distribution it has)."""

    LOCAL = "local"
    FEDERATED = "federated"


class RetractReason(str, enum.Enum):
    APPEAL_UPHELD = "appeal_upheld"
    FALSE_POSITIVE = "false_positive"
    DUPLICATE = "duplicate"
    OTHER = "other"


class FeedOp(str, enum.Enum):
    SNAPSHOT = "snapshot"
    UPSERT = "upsert"
    RETRACT = "retract"
    EXPIRE = "expire"
    DISPUTE = "dispute"


# Explicit maps both ways: an unknown wire value is an error, never a silent default.
_KIND_TO_PB = {
    Kind.EMAIL: pb.IDENTIFIER_KIND_EMAIL,
    Kind.PHONE: pb.IDENTIFIER_KIND_PHONE,
    Kind.USERNAME: pb.IDENTIFIER_KIND_USERNAME,
    Kind.DEVICE_ID: pb.IDENTIFIER_KIND_DEVICE_ID,
    Kind.IP_ADDRESS: pb.IDENTIFIER_KIND_IP_ADDRESS,
    Kind.OTHER: pb.IDENTIFIER_KIND_OTHER,
}
_CATEGORY_TO_PB = {
    Category.GROOMING: pb.CATEGORY_GROOMING,
    Category.SEXTORTION: pb.CATEGORY_SEXTORTION,
    Category.CSAM_SHARING: pb.CATEGORY_CSAM_SHARING,
    Category.CSAM_SOLICITATION: pb.CATEGORY_CSAM_SOLICITATION,
    Category.TRAFFICKING: pb.CATEGORY_TRAFFICKING,
    Category.OTHER: pb.CATEGORY_OTHER,
}
_DISTRIBUTION_TO_PB = {
    None: pb.DISTRIBUTION_UNSPECIFIED,
    Distribution.LOCAL: pb.DISTRIBUTION_LOCAL,
    Distribution.FEDERATED: pb.DISTRIBUTION_FEDERATED,
}
_REASON_TO_PB = {
    RetractReason.APPEAL_UPHELD: pb.RETRACT_REASON_APPEAL_UPHELD,
    RetractReason.FALSE_POSITIVE: pb.RETRACT_REASON_FALSE_POSITIVE,
    RetractReason.DUPLICATE: pb.RETRACT_REASON_DUPLICATE,
    RetractReason.OTHER: pb.RETRACT_REASON_OTHER,
}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}
_CATEGORY_FROM_PB = {v: k for k, v in _CATEGORY_TO_PB.items()}
# Reasons a feed may carry, members' own and the operator's.
_REASON_FROM_PB = {
    pb.RETRACT_REASON_APPEAL_UPHELD: "appeal_upheld",
    pb.RETRACT_REASON_FALSE_POSITIVE: "false_positive",
    pb.RETRACT_REASON_DUPLICATE: "duplicate",
    pb.RETRACT_REASON_OTHER: "other",
    pb.RETRACT_REASON_WITHDRAWN: "withdrawn",
    pb.RETRACT_REASON_UNSHARED: "unshared",
}
_OP_FROM_PB = {
    pb.FeedEvent.OP_SNAPSHOT: FeedOp.SNAPSHOT,
    pb.FeedEvent.OP_UPSERT: FeedOp.UPSERT,
    pb.FeedEvent.OP_RETRACT: FeedOp.RETRACT,
    pb.FeedEvent.OP_EXPIRE: FeedOp.EXPIRE,
    pb.FeedEvent.OP_DISPUTE: FeedOp.DISPUTE,
}


def _enum_value(enum_type, value, what: str, where: str):
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).strip().lower().replace("-", "_"))
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ValueError(f"{where}: {what} {value!r} is not one of {allowed}") from None


def _kind(value, where: str) -> Kind:
    if not isinstance(value, str):
        raise ValueError(f"{where}: kind must be a Kind or its name, not {type(value).__name__}")
    try:
        return Kind.parse(value)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _check_digest(digest, where: str) -> bytes:
    if not isinstance(digest, (bytes, bytearray, memoryview)):
        raise ValueError(f"{where}: digest must be bytes, not {type(digest).__name__}")
    digest = bytes(digest)
    if len(digest) != DIGEST_LEN:
        raise ValueError(f"{where}: digest is {len(digest)} bytes, expected {DIGEST_LEN}")
    return digest


def _timestamp(value: _dt.datetime | None, what: str, where: str) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if not isinstance(value, _dt.datetime) or value.tzinfo is None:
        raise ValueError(f"{where}: {what} must be a timezone-aware datetime")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(_dt.timezone.utc))
    return stamp


_UTC = _dt.timezone.utc


def _datetime(stamp: timestamp_pb2.Timestamp, present: bool) -> _dt.datetime | None:
    # fromtimestamp is several times faster than Timestamp.ToDatetime, and a stream of
    # matches converts two per match.
    if not present:
        return None
    try:
        moment = _dt.datetime.fromtimestamp(stamp.seconds, _UTC)
    except (OverflowError, OSError, ValueError):
        return _dt.datetime.max.replace(tzinfo=_UTC)
    return moment.replace(microsecond=stamp.nanos // 1000) if stamp.nanos else moment


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag to submit: the digest of an identifier (see Digester), its kind and why."""

    digest: bytes
    kind: Kind | str
    category: Category | str
    confidence: int = 100
    observed_at: _dt.datetime | None = None
    expires_at: _dt.datetime | None = None
    # Your own case reference, at most 128 bytes; only you see it back.
    reference: bytes | str = b""
    distribution: Distribution | str | None = None

    def _to_pb(self, where: str) -> pb.Flag:
        kind = _kind(self.kind, where)
        category = _enum_value(Category, self.category, "category", where)
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int) or not 0 <= self.confidence <= 100:
            raise ValueError(f"{where}: confidence {self.confidence!r} must be an integer from 0 to 100")
        reference = self.reference.encode("utf-8") if isinstance(self.reference, str) else bytes(self.reference)
        if len(reference) > _MAX_REFERENCE_BYTES:
            raise ValueError(f"{where}: reference is {len(reference)} bytes, at most {_MAX_REFERENCE_BYTES}")
        distribution = (
            None if self.distribution is None else _enum_value(Distribution, self.distribution, "distribution", where)
        )
        message = pb.Flag(
            digest=_check_digest(self.digest, where),
            kind=_KIND_TO_PB[kind],
            category=_CATEGORY_TO_PB[category],
            confidence=self.confidence,
            reference=reference,
            distribution=_DISTRIBUTION_TO_PB[distribution],
        )
        observed = _timestamp(self.observed_at, "observed_at", where)
        if observed is not None:
            message.observed_at.CopyFrom(observed)
        expires = _timestamp(self.expires_at, "expires_at", where)
        if expires is not None:
            message.expires_at.CopyFrom(expires)
        return message


@dataclasses.dataclass(frozen=True)
class Selector:
    """Selects your own flags on a digest; `None` kind or category selects them all."""

    digest: bytes
    kind: Kind | str | None = None
    category: Category | str | None = None


@dataclasses.dataclass(slots=True)
class Match:
    """A queried digest that at least one member platform flagged. (Not frozen: a frozen
    dataclass costs four times as much to build, and a stream builds one per hit.)"""

    #: Position of the digest in what you queried (0-based, across batches).
    index: int
    digest: bytes
    n_members: int
    members: tuple[str, ...]
    categories: tuple[Category, ...]
    kinds: tuple[Kind, ...]
    first_seen: _dt.datetime | None
    last_seen: _dt.datetime | None
    max_confidence: int
    flagged_by_caller: bool
    n_disputes: int


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    n_created: int
    n_updated: int
    #: Change-log sequence of the last change written.
    sequence: int
    #: New flags held back by the operator's flood quarantine: stored, but matching for no
    #: other member until the operator releases them.
    n_quarantined: int = 0


@dataclasses.dataclass(frozen=True)
class HeldFlag:
    """One of your flags held back by the operator's flood quarantine: stored, matching for
    no one and sent to no feed or peer until the operator releases (or rejects) it."""

    digest: bytes
    kind: Kind | None
    category: Category | None
    confidence: int
    #: When it was submitted and held.
    held_since: _dt.datetime | None
    expires_at: _dt.datetime | None


@dataclasses.dataclass(frozen=True)
class ImportResult:
    n_created: int
    n_updated: int
    #: New flags held back by the operator's flood quarantine.
    n_quarantined: int
    #: Blocks the server committed, each whole (at most 200,000 flags each).
    n_blocks: int
    #: Change-log sequence of the last change written.
    sequence: int


@dataclasses.dataclass(frozen=True)
class RetractResult:
    n_retracted: int
    #: Indexes (into what you passed) of selectors that matched none of your flags.
    unmatched_indexes: tuple[int, ...]
    sequence: int


@dataclasses.dataclass(frozen=True)
class DisputeResult:
    #: That member's live flags on the digest the dispute covers.
    n_flags: int


@dataclasses.dataclass(frozen=True)
class FeedEvent:
    #: Change-log position; 0 for snapshot events.
    sequence: int
    op: FeedOp
    digest: bytes
    kind: Kind | None
    category: Category | None
    member: str
    #: For retractions: appeal_upheld, false_positive, duplicate, other, withdrawn, unshared.
    reason: str | None
    #: The digest's match after this event, as Query would give it; None when no flag on it
    #: is live any more.
    state: Match | None


@dataclasses.dataclass(frozen=True)
class FeedBatch:
    events: tuple[FeedEvent, ...]
    #: Resume from here; empty while a snapshot is still being sent.
    cursor: str
    #: Set on the batch that reaches the newest change.
    caught_up: bool


def _match(message: pb.Match, index_offset: int = 0) -> Match:
    categories, kinds = _CATEGORY_FROM_PB, _KIND_FROM_PB
    return Match(
        index=index_offset + message.index,
        digest=message.digest,
        n_members=message.n_members,
        members=tuple(message.members),
        categories=tuple([categories[c] for c in message.categories if c in categories]),
        kinds=tuple([kinds[k] for k in message.kinds if k in kinds]),
        first_seen=_datetime(message.first_seen, message.HasField("first_seen")),
        last_seen=_datetime(message.last_seen, message.HasField("last_seen")),
        max_confidence=message.max_confidence,
        flagged_by_caller=message.flagged_by_caller,
        n_disputes=message.n_disputes,
    )


def _event(message: pb.FeedEvent) -> FeedEvent:
    op = _OP_FROM_PB.get(message.op)
    if op is None:
        raise FlagshareError(grpc.StatusCode.INTERNAL, f"feed event with unknown op {message.op}")
    return FeedEvent(
        sequence=message.sequence,
        op=op,
        digest=message.digest,
        kind=_KIND_FROM_PB.get(message.kind),
        category=_CATEGORY_FROM_PB.get(message.category),
        member=message.member,
        reason=_REASON_FROM_PB.get(message.reason),
        state=_match(message.state) if message.HasField("state") else None,
    )


def _error(err: grpc.RpcError, n_done: int = 0) -> FlagshareError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    kind = CursorExpired if code == grpc.StatusCode.OUT_OF_RANGE else FlagshareError
    return kind(code, message or code.name.lower(), n_done)


def _chunks(items: Sequence, size: int = MAX_BATCH) -> Iterator[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What the operator issued to a member: `client.toml` and the three PEM files."""

    name: str
    endpoint: str
    server_name: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    # Further endpoints of the same operator (the other nodes of a replicated one), tried in
    # order after `endpoint` when it cannot be reached.
    endpoints: tuple[str, ...] = ()

    def all_endpoints(self) -> list[str]:
        """Every endpoint the bundle names, `endpoint` first."""
        return [self.endpoint, *self.endpoints]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Bundle":
        folder = pathlib.Path(folder)
        try:
            config = tomllib.loads((folder / "client.toml").read_text())
            pems = {name: (folder / f"{name}.pem").read_bytes() for name in ("cert", "key", "ca")}
        except OSError as err:
            raise ValueError(f"cannot read bundle {folder}: {err.strerror}: {err.filename}") from None
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"bundle {folder}: client.toml is malformed: {err}") from None
        missing = [field for field in ("name", "endpoint", "server_name") if not isinstance(config.get(field), str)]
        if missing:
            raise ValueError(f"bundle {folder}: client.toml lacks {', '.join(missing)}")
        endpoints = config.get("endpoints", [])
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ValueError(f"bundle {folder}: client.toml: endpoints must be a list of strings")
        return cls(
            endpoints=tuple(endpoints),
            name=config["name"],
            endpoint=config["endpoint"],
            server_name=config["server_name"],
            cert_pem=pems["cert"],
            key_pem=pems["key"],
            ca_pem=pems["ca"],
        )


def _target(endpoint: str) -> str:
    for scheme in ("https://", "http://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return endpoint.rstrip("/")


def _endpoint_list(endpoint: str | Sequence[str] | None, bundle: Bundle) -> list[str]:
    if endpoint is None:
        return bundle.all_endpoints()
    listed = endpoint.split(",") if isinstance(endpoint, str) else list(endpoint)
    listed = [e.strip() for e in listed if e.strip()]
    if not listed:
        raise ValueError("endpoint: no endpoint given")
    return listed


class Client:
    """A connection to a flagshare operator as one member. Thread-safe; close it (or use it
    as a context manager) when done.

    With several endpoints (the bundle's `endpoints`, or a list given here), calls go to one
    of them; when it is unavailable, `query`, `range_query`, `held` and `submit` (whose
    effect a second sending does not change) are sent again to the next, and `subscribe`
    resumes there from its cursor."""

    def __init__(self, bundle: Bundle, endpoint: str | Sequence[str] | None = None, timeout: float = 60.0):
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem, private_key=bundle.key_pem, certificate_chain=bundle.cert_pem
        )
        self._options = [
            ("grpc.ssl_target_name_override", bundle.server_name),
            ("grpc.default_authority", bundle.server_name),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self.bundle = bundle
        self.timeout = timeout
        self.endpoints = _endpoint_list(endpoint, bundle)
        self._lock = threading.Lock()
        # One channel per endpoint, opened when first used and kept until close(): a call
        # still running on one is not cut off when others move on.
        self._channels: dict[int, grpc.Channel] = {}
        self._current = 0
        self._stub = self._stub_for(0)

    def _stub_for(self, index: int) -> pb_grpc.FlagsStub:
        channel = self._channels.get(index)
        if channel is None:
            channel = grpc.secure_channel(_target(self.endpoints[index]), self._credentials, self._options)
            self._channels[index] = channel
        return pb_grpc.FlagsStub(channel)

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self.endpoints[self._current]

    def _next_endpoint(self, failed: pb_grpc.FlagsStub) -> None:
        """Moves calls to the next endpoint, unless another thread already moved them."""
        with self._lock:
            if self._stub is failed:
                self._current = (self._current + 1) % len(self.endpoints)
                self._stub = self._stub_for(self._current)

    def _unary(self, method: str, request, n_done: int = 0):
        """Calls `method`, sending it again to each further endpoint while one is unavailable."""
        attempts = 0
        while True:
            stub = self._stub
            try:
                return getattr(stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as err:
                attempts += 1
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempts == len(self.endpoints):
                    raise _error(err, n_done=n_done) from None
                self._next_endpoint(stub)

    @classmethod
    def from_bundle(
        cls, folder: str | os.PathLike, endpoint: str | Sequence[str] | None = None, timeout: float = 60.0
    ) -> "Client":
        """Connects with the bundle in `folder`; `endpoint` (one, a comma-separated list or a
        list) overrides its client.toml."""
        return cls(Bundle.load(folder), endpoint=endpoint, timeout=timeout)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- unary calls ---------------------------------------------------------------------

    def submit(self, flags: Iterable[Flag], key_id: int) -> SubmitResult:
        """Raises or updates your flags, in batches of 10,000. Every flag is checked before
        the first batch leaves; the server commits each batch whole or not at all."""
        flags = list(flags)
        if not flags:
            raise ValueError("submit: no flags given")
        if not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFFFFFF:
            raise ValueError(f"submit: key_id {key_id!r} is not an unsigned 32-bit number")
        messages = [flag._to_pb(f"flag {i}") for i, flag in enumerate(flags)]
        created = updated = quarantined = sequence = 0
        for start, chunk in _chunks(messages):
            response = self._unary("Submit", pb.SubmitRequest(flags=chunk, key_id=key_id), n_done=start)
            created += response.n_created
            updated += response.n_updated
            quarantined += response.n_quarantined
            sequence = response.sequence
        return SubmitResult(n_created=created, n_updated=updated, sequence=sequence, n_quarantined=quarantined)

    def import_flags(
        self,
        flags: Iterable[Flag],
        key_id: int,
        on_progress: Callable[[ImportResult], None] | None = None,
    ) -> ImportResult:
        """A bulk import (a back catalogue): any number of flags over one stream, read from
        `flags` as it goes, so memory stays bounded. The server commits blocks of up to
        200,000, each whole or not at all, and reports each to `on_progress`. A bad flag
        raises ValueError and cancels the import (blocks committed before stay, the open one
        is not committed); a server
        refusal raises FlagshareError whose `n_done` counts the flags of committed blocks.
        Importing the same flags again is safe: they count as updates."""
        if not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFFFFFF:
            raise ValueError(f"import_flags: key_id {key_id!r} is not an unsigned 32-bit number")
        failure: list[BaseException] = []

        def messages() -> Iterator[pb.ImportRequest]:
            batch: list = []
            try:
                for i, flag in enumerate(flags):
                    batch.append(flag._to_pb(f"flag {i}"))
                    if len(batch) == MAX_BATCH:
                        yield pb.ImportRequest(flags=batch, key_id=key_id)
                        batch = []
                if batch:
                    yield pb.ImportRequest(flags=batch, key_id=key_id)
            except Exception as err:
                # Raised into gRPC, it cancels the call: the server commits no open block.
                failure.append(err)
                raise

        last = ImportResult(0, 0, 0, 0, 0)
        done = False
        try:
            for answer in self._stub.Import(messages()):
                last = ImportResult(
                    n_created=answer.n_created,
                    n_updated=answer.n_updated,
                    n_quarantined=answer.n_quarantined,
                    n_blocks=answer.n_blocks,
                    sequence=answer.sequence,
                )
                done = answer.done
                if on_progress is not None and not done:
                    on_progress(last)
        except grpc.RpcError as err:
            if failure:
                raise failure[0] from None
            raise _error(err, n_done=last.n_created + last.n_updated + last.n_quarantined) from None
        if failure:
            raise failure[0]
        if not done:
            raise FlagshareError(grpc.StatusCode.UNAVAILABLE, "the import ended without the server confirming it; import again")
        return last

    def query(self, digests: Sequence[bytes]) -> list[Match]:
        """The matches among `digests` (misses are left out), in input order."""
        packed = [_check_digest(d, f"digest {i}") for i, d in enumerate(digests)]
        if not packed:
            raise ValueError("query: no digests given")
        matches: list[Match] = []
        for start, chunk in _chunks(packed):
            response = self._unary("Query", pb.QueryRequest(digests=b"".join(chunk)), n_done=start)
            matches.extend(_match(m, start) for m in response.matches)
        return matches

    def retract(self, selectors: Iterable[Selector | bytes], reason: RetractReason | str) -> RetractResult:
        """Withdraws your flags. A bare digest selects all your flags on it."""
        reason = _enum_value(RetractReason, reason, "reason", "retract")
        messages = []
        for i, selector in enumerate(selectors):
            if not isinstance(selector, Selector):
                selector = Selector(digest=selector)
            where = f"selector {i}"
            kind = _KIND_TO_PB[_kind(selector.kind, where)] if selector.kind is not None else pb.IDENTIFIER_KIND_UNSPECIFIED
            category = (
                _CATEGORY_TO_PB[_enum_value(Category, selector.category, "category", where)]
                if selector.category is not None
                else pb.CATEGORY_UNSPECIFIED
            )
            messages.append(pb.FlagSelector(digest=_check_digest(selector.digest, where), kind=kind, category=category))
        if not messages:
            raise ValueError("retract: no selectors given")
        retracted, unmatched, sequence = 0, [], 0
        for start, chunk in _chunks(messages):
            try:
                response = self._stub.Retract(
                    pb.RetractRequest(flags=chunk, reason=_REASON_TO_PB[reason]), timeout=self.timeout
                )
            except grpc.RpcError as err:
                raise _error(err, n_done=start) from None
            retracted += response.n_retracted
            unmatched.extend(start + i for i in response.unmatched_indexes)
            sequence = response.sequence
        return RetractResult(n_retracted=retracted, unmatched_indexes=tuple(unmatched), sequence=sequence)

    def dispute(self, digest: bytes, member: str, note: str = "") -> DisputeResult:
        """Marks another member's flags on `digest` as disputed (matches count disputes)."""
        digest = _check_digest(digest, "dispute")
        if not member:
            raise ValueError("dispute: member is empty (name it as a match's members list does)")
        if len(note.encode("utf-8")) > _MAX_NOTE_BYTES:
            raise ValueError(f"dispute: note is over {_MAX_NOTE_BYTES} bytes")
        try:
            response = self._stub.Dispute(pb.DisputeRequest(digest=digest, member=member, note=note), timeout=self.timeout)
        except grpc.RpcError as err:
            raise _error(err) from None
        return DisputeResult(n_flags=response.n_flags)

    def range_query(self, prefix: bytes) -> list[Match]:
        """k-anonymity lookup: every flagged digest starting with `prefix` (2 or 3 bytes), so
        the server never learns which digest you hold. Follows the pages to the end."""
        if not isinstance(prefix, (bytes, bytearray)) or len(prefix) not in (2, 3):
            raise ValueError("range_query: prefix must be the first 2 or 3 bytes of a digest")
        matches: list[Match] = []
        page_after = b""
        while True:
            response = self._unary("RangeQuery", pb.RangeQueryRequest(prefix=bytes(prefix), page_after=page_after))
            matches.extend(_match(m) for m in response.matches)
            if not response.next_page_after:
                return matches
            page_after = response.next_page_after

    def held(self) -> list[HeldFlag]:
        """Your flags held back by the flood quarantine, in digest order (every page)."""
        held: list[HeldFlag] = []
        page_after = b""
        while True:
            response = self._unary("ListHeld", pb.ListHeldRequest(page_after=page_after))
            held.extend(
                HeldFlag(
                    digest=f.digest,
                    kind=_KIND_FROM_PB.get(f.kind),
                    category=_CATEGORY_FROM_PB.get(f.category),
                    confidence=f.confidence,
                    held_since=_datetime(f.held_since, f.HasField("held_since")),
                    expires_at=_datetime(f.expires_at, f.HasField("expires_at")),
                )
                for f in response.flags
            )
            if not response.next_page_after:
                return held
            page_after = response.next_page_after

    # -- streams -------------------------------------------------------------------------

    def query_stream(self, digests: Iterable[bytes], batch_size: int = MAX_BATCH, window: int = 8) -> Iterator[Match]:
        """Queries any number of digests over one stream and yields matches in input order.
        Batches are pipelined, at most `window` in flight, so memory stays bounded however
        long the input. A digest of the wrong length raises ValueError before its batch is
        sent (earlier batches have been answered by then)."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"query_stream: batch_size must be 1 to {MAX_BATCH}")
        slots = threading.Semaphore(window)
        offsets: dict[int, int] = {}
        failure: list[BaseException] = []
        done = threading.Event()

        def requests() -> Iterator[pb.QueryBatch]:
            batch: list[bytes] = []
            batch_id, offset = 0, 0
            try:
                for digest in digests:
                    batch.append(_check_digest(digest, f"digest {offset + len(batch)}"))
                    if len(batch) == batch_size:
                        yield from send(batch_id, offset, batch)
                        batch_id, offset, batch = batch_id + 1, offset + len(batch), []
                if batch:
                    yield from send(batch_id, offset, batch)
            except Exception as err:  # surfaced to the caller by the response loop
                failure.append(err)
                call.cancel()

        def send(batch_id: int, offset: int, batch: list[bytes]) -> Iterator[pb.QueryBatch]:
            while not slots.acquire(timeout=0.1):
                if done.is_set():
                    return
            offsets[batch_id] = offset
            yield pb.QueryBatch(batch_id=batch_id, digests=b"".join(batch))

        call = self._stub.QueryStream(requests())
        try:
            for result in call:
                slots.release()
                offset = offsets.pop(result.batch_id, 0)
                if result.error_code:
                    code = _STATUS_BY_VALUE.get(result.error_code, grpc.StatusCode.UNKNOWN)
                    raise FlagshareError(code, f"batch at digest {offset}: {result.error_message}", n_done=offset)
                for message in result.matches:
                    yield _match(message, offset)
        except grpc.RpcError as err:
            if failure:
                raise failure[0] from None
            raise _error(err) from None
        finally:
            done.set()
            call.cancel()
        if failure:
            raise failure[0]

    def subscribe(self, cursor: str = "", reconnect: bool = True) -> "Subscription":
        """The feed of changes for your queries: with an empty cursor, a snapshot of every
        flagged digest first, then each change as it is committed. Iterate it for FeedBatch
        values; `subscription.cursor` is where to resume (store it with what you applied).
        With `reconnect`, a dropped connection is resumed from the last cursor."""
        return Subscription(self, cursor, reconnect)


_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


class Subscription:
    """An iterator of FeedBatch from Subscribe; resumable through `cursor`."""

    def __init__(self, client: Client, cursor: str, reconnect: bool):
        self._client = client
        self.cursor = cursor
        self._reconnect = reconnect
        self._call = None
        self._closed = False

    def __iter__(self) -> Iterator[FeedBatch]:
        delay = 0.5
        while not self._closed:
            stub = self._client._stub
            self._call = stub.Subscribe(pb.SubscribeRequest(cursor=self.cursor))
            try:
                for message in self._call:
                    batch = FeedBatch(
                        events=tuple(_event(e) for e in message.events),
                        cursor=message.cursor,
                        caught_up=message.caught_up,
                    )
                    if message.cursor:
                        self.cursor = message.cursor
                    delay = 0.5
                    yield batch
                return
            except grpc.RpcError as err:
                if self._closed:
                    return
                error = _error(err)
                # Reconnect only where resuming loses nothing: a cursor to resume from and a
                # connection that dropped (not a refusal).
                retry = self._reconnect and self.cursor and error.code == grpc.StatusCode.UNAVAILABLE
                if not retry:
                    raise error from None
                # The same cursor is good on every node of the operator: go on at the next.
                self._client._next_endpoint(stub)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def close(self) -> None:
        """Ends the stream; a loop iterating it stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
