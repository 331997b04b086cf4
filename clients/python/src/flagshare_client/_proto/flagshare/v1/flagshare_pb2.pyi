import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentifierKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTIFIER_KIND_UNSPECIFIED: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_EMAIL: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_PHONE: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_USERNAME: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_DEVICE_ID: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_IP_ADDRESS: _ClassVar[IdentifierKind]
    IDENTIFIER_KIND_OTHER: _ClassVar[IdentifierKind]

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    CATEGORY_GROOMING: _ClassVar[Category]
    CATEGORY_SEXTORTION: _ClassVar[Category]
    CATEGORY_CSAM_SHARING: _ClassVar[Category]
    CATEGORY_CSAM_SOLICITATION: _ClassVar[Category]
    CATEGORY_TRAFFICKING: _ClassVar[Category]
    CATEGORY_OTHER: _ClassVar[Category]

class Distribution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTION_UNSPECIFIED: _ClassVar[Distribution]
    DISTRIBUTION_LOCAL: _ClassVar[Distribution]
    DISTRIBUTION_FEDERATED: _ClassVar[Distribution]

class RetractReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRACT_REASON_UNSPECIFIED: _ClassVar[RetractReason]
    RETRACT_REASON_APPEAL_UPHELD: _ClassVar[RetractReason]
    RETRACT_REASON_FALSE_POSITIVE: _ClassVar[RetractReason]
    RETRACT_REASON_DUPLICATE: _ClassVar[RetractReason]
    RETRACT_REASON_OTHER: _ClassVar[RetractReason]
    RETRACT_REASON_WITHDRAWN: _ClassVar[RetractReason]
    RETRACT_REASON_UNSHARED: _ClassVar[RetractReason]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_MEMBER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
    ROLE_PEER: _ClassVar[Role]
    ROLE_NODE: _ClassVar[Role]

class PrincipalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRINCIPAL_STATUS_UNSPECIFIED: _ClassVar[PrincipalStatus]
    PRINCIPAL_STATUS_ACTIVE: _ClassVar[PrincipalStatus]
    PRINCIPAL_STATUS_SUSPENDED: _ClassVar[PrincipalStatus]
    PRINCIPAL_STATUS_REMOVED: _ClassVar[PrincipalStatus]
IDENTIFIER_KIND_UNSPECIFIED: IdentifierKind
IDENTIFIER_KIND_EMAIL: IdentifierKind
IDENTIFIER_KIND_PHONE: IdentifierKind
IDENTIFIER_KIND_USERNAME: IdentifierKind
IDENTIFIER_KIND_DEVICE_ID: IdentifierKind
IDENTIFIER_KIND_IP_ADDRESS: IdentifierKind
IDENTIFIER_KIND_OTHER: IdentifierKind
CATEGORY_UNSPECIFIED: Category
CATEGORY_GROOMING: Category
CATEGORY_SEXTORTION: Category
CATEGORY_CSAM_SHARING: Category
CATEGORY_CSAM_SOLICITATION: Category
CATEGORY_TRAFFICKING: Category
CATEGORY_OTHER: Category
DISTRIBUTION_UNSPECIFIED: Distribution
DISTRIBUTION_LOCAL: Distribution
DISTRIBUTION_FEDERATED: Distribution
RETRACT_REASON_UNSPECIFIED: RetractReason
RETRACT_REASON_APPEAL_UPHELD: RetractReason
RETRACT_REASON_FALSE_POSITIVE: RetractReason
RETRACT_REASON_DUPLICATE: RetractReason
RETRACT_REASON_OTHER: RetractReason
RETRACT_REASON_WITHDRAWN: RetractReason
RETRACT_REASON_UNSHARED: RetractReason
ROLE_UNSPECIFIED: Role
ROLE_MEMBER: Role
ROLE_ADMIN: Role
ROLE_PEER: Role
ROLE_NODE: Role
PRINCIPAL_STATUS_UNSPECIFIED: PrincipalStatus
PRINCIPAL_STATUS_ACTIVE: PrincipalStatus
PRINCIPAL_STATUS_SUSPENDED: PrincipalStatus
PRINCIPAL_STATUS_REMOVED: PrincipalStatus

class Flag(_message.Message):
    __slots__ = ("digest", "kind", "category", "confidence", "observed_at", "expires_at", "reference", "distribution")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    kind: IdentifierKind
    category: Category
    confidence: int
    observed_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    reference: bytes
    distribution: Distribution
    def __init__(self, digest: _Optional[bytes] = ..., kind: _Optional[_Union[IdentifierKind, str]] = ..., category: _Optional[_Union[Category, str]] = ..., confidence: _Optional[int] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[bytes] = ..., distribution: _Optional[_Union[Distribution, str]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("flags", "key_id")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    key_id: int
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., key_id: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("n_created", "n_updated", "sequence", "n_quarantined")
    N_CREATED_FIELD_NUMBER: _ClassVar[int]
    N_UPDATED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    N_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    n_created: int
    n_updated: int
    sequence: int
    n_quarantined: int
    def __init__(self, n_created: _Optional[int] = ..., n_updated: _Optional[int] = ..., sequence: _Optional[int] = ..., n_quarantined: _Optional[int] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("flags", "key_id")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    key_id: int
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., key_id: _Optional[int] = ...) -> None: ...

class ImportProgress(_message.Message):
    __slots__ = ("n_created", "n_updated", "n_quarantined", "n_blocks", "sequence", "done")
    N_CREATED_FIELD_NUMBER: _ClassVar[int]
    N_UPDATED_FIELD_NUMBER: _ClassVar[int]
    N_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    N_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    n_created: int
    n_updated: int
    n_quarantined: int
    n_blocks: int
    sequence: int
    done: bool
    def __init__(self, n_created: _Optional[int] = ..., n_updated: _Optional[int] = ..., n_quarantined: _Optional[int] = ..., n_blocks: _Optional[int] = ..., sequence: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: bytes
    def __init__(self, digests: _Optional[bytes] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("index", "digest", "n_members", "members", "categories", "kinds", "first_seen", "last_seen", "max_confidence", "flagged_by_caller", "n_disputes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    N_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    MAX_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_BY_CALLER_FIELD_NUMBER: _ClassVar[int]
    N_DISPUTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    digest: bytes
    n_members: int
    members: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[Category]
    kinds: _containers.RepeatedScalarFieldContainer[IdentifierKind]
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    max_confidence: int
    flagged_by_caller: bool
    n_disputes: int
    def __init__(self, index: _Optional[int] = ..., digest: _Optional[bytes] = ..., n_members: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[_Union[Category, str]]] = ..., kinds: _Optional[_Iterable[_Union[IdentifierKind, str]]] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_confidence: _Optional[int] = ..., flagged_by_caller: _Optional[bool] = ..., n_disputes: _Optional[int] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("matches", "n_queried")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    N_QUERIED_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    n_queried: int
    def __init__(self, matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., n_queried: _Optional[int] = ...) -> None: ...

class FlagSelector(_message.Message):
    __slots__ = ("digest", "kind", "category")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    kind: IdentifierKind
    category: Category
    def __init__(self, digest: _Optional[bytes] = ..., kind: _Optional[_Union[IdentifierKind, str]] = ..., category: _Optional[_Union[Category, str]] = ...) -> None: ...

class RetractRequest(_message.Message):
    __slots__ = ("flags", "reason")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[FlagSelector]
    reason: RetractReason
    def __init__(self, flags: _Optional[_Iterable[_Union[FlagSelector, _Mapping]]] = ..., reason: _Optional[_Union[RetractReason, str]] = ...) -> None: ...

class RetractResponse(_message.Message):
    __slots__ = ("n_retracted", "unmatched_indexes", "sequence")
    N_RETRACTED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_INDEXES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    n_retracted: int
    unmatched_indexes: _containers.RepeatedScalarFieldContainer[int]
    sequence: int
    def __init__(self, n_retracted: _Optional[int] = ..., unmatched_indexes: _Optional[_Iterable[int]] = ..., sequence: _Optional[int] = ...) -> None: ...

class ListHeldRequest(_message.Message):
    __slots__ = ("page_after",)
    PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    page_after: bytes
    def __init__(self, page_after: _Optional[bytes] = ...) -> None: ...

class HeldFlag(_message.Message):
    __slots__ = ("digest", "kind", "category", "confidence", "held_since", "expires_at")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    HELD_SINCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    kind: IdentifierKind
    category: Category
    confidence: int
    held_since: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, digest: _Optional[bytes] = ..., kind: _Optional[_Union[IdentifierKind, str]] = ..., category: _Optional[_Union[Category, str]] = ..., confidence: _Optional[int] = ..., held_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListHeldResponse(_message.Message):
    __slots__ = ("flags", "next_page_after")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[HeldFlag]
    next_page_after: bytes
    def __init__(self, flags: _Optional[_Iterable[_Union[HeldFlag, _Mapping]]] = ..., next_page_after: _Optional[bytes] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("cursor",)
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    def __init__(self, cursor: _Optional[str] = ...) -> None: ...

class FeedEvent(_message.Message):
    __slots__ = ("sequence", "op", "digest", "kind", "category", "member", "reason", "state")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[FeedEvent.Op]
        OP_SNAPSHOT: _ClassVar[FeedEvent.Op]
        OP_UPSERT: _ClassVar[FeedEvent.Op]
        OP_RETRACT: _ClassVar[FeedEvent.Op]
        OP_EXPIRE: _ClassVar[FeedEvent.Op]
        OP_DISPUTE: _ClassVar[FeedEvent.Op]
    OP_UNSPECIFIED: FeedEvent.Op
    OP_SNAPSHOT: FeedEvent.Op
    OP_UPSERT: FeedEvent.Op
    OP_RETRACT: FeedEvent.Op
    OP_EXPIRE: FeedEvent.Op
    OP_DISPUTE: FeedEvent.Op
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    op: FeedEvent.Op
    digest: bytes
    kind: IdentifierKind
    category: Category
    member: str
    reason: RetractReason
    state: Match
    def __init__(self, sequence: _Optional[int] = ..., op: _Optional[_Union[FeedEvent.Op, str]] = ..., digest: _Optional[bytes] = ..., kind: _Optional[_Union[IdentifierKind, str]] = ..., category: _Optional[_Union[Category, str]] = ..., member: _Optional[str] = ..., reason: _Optional[_Union[RetractReason, str]] = ..., state: _Optional[_Union[Match, _Mapping]] = ...) -> None: ...

class FeedBatch(_message.Message):
    __slots__ = ("events", "cursor", "caught_up")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedEvent]
    cursor: str
    caught_up: bool
    def __init__(self, events: _Optional[_Iterable[_Union[FeedEvent, _Mapping]]] = ..., cursor: _Optional[str] = ..., caught_up: _Optional[bool] = ...) -> None: ...

class QueryBatch(_message.Message):
    __slots__ = ("batch_id", "digests")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    digests: bytes
    def __init__(self, batch_id: _Optional[int] = ..., digests: _Optional[bytes] = ...) -> None: ...

class QueryBatchResult(_message.Message):
    __slots__ = ("batch_id", "matches", "n_queried", "error_code", "error_message")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    N_QUERIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    n_queried: int
    error_code: int
    error_message: str
    def __init__(self, batch_id: _Optional[int] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., n_queried: _Optional[int] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class RangeQueryRequest(_message.Message):
    __slots__ = ("prefix", "page_after")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    page_after: bytes
    def __init__(self, prefix: _Optional[bytes] = ..., page_after: _Optional[bytes] = ...) -> None: ...

class RangeQueryResponse(_message.Message):
    __slots__ = ("matches", "next_page_after")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    next_page_after: bytes
    def __init__(self, matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., next_page_after: _Optional[bytes] = ...) -> None: ...

class DisputeRequest(_message.Message):
    __slots__ = ("digest", "member", "note")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    member: str
    note: str
    def __init__(self, digest: _Optional[bytes] = ..., member: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DisputeResponse(_message.Message):
    __slots__ = ("n_flags",)
    N_FLAGS_FIELD_NUMBER: _ClassVar[int]
    n_flags: int
    def __init__(self, n_flags: _Optional[int] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("name", "role", "status", "created_at", "certificate_sha256", "last_seen", "n_flags_submitted", "n_queries", "n_digests_queried", "certificate_expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    N_FLAGS_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    N_QUERIES_FIELD_NUMBER: _ClassVar[int]
    N_DIGESTS_QUERIED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    status: PrincipalStatus
    created_at: _timestamp_pb2.Timestamp
    certificate_sha256: str
    last_seen: _timestamp_pb2.Timestamp
    n_flags_submitted: int
    n_queries: int
    n_digests_queried: int
    certificate_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., status: _Optional[_Union[PrincipalStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., certificate_sha256: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., n_flags_submitted: _Optional[int] = ..., n_queries: _Optional[int] = ..., n_digests_queried: _Optional[int] = ..., certificate_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddPrincipalRequest(_message.Message):
    __slots__ = ("name", "role", "public_key_der")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    public_key_der: bytes
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., public_key_der: _Optional[bytes] = ...) -> None: ...

class AddPrincipalResponse(_message.Message):
    __slots__ = ("principal", "certificate_pem", "ca_certificate_pem", "operator_id", "operator_key")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    certificate_pem: str
    ca_certificate_pem: str
    operator_id: bytes
    operator_key: bytes
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., operator_id: _Optional[bytes] = ..., operator_key: _Optional[bytes] = ...) -> None: ...

class ListPrincipalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPrincipalsResponse(_message.Message):
    __slots__ = ("principals",)
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedCompositeFieldContainer[Principal]
    def __init__(self, principals: _Optional[_Iterable[_Union[Principal, _Mapping]]] = ...) -> None: ...

class SetPrincipalStatusRequest(_message.Message):
    __slots__ = ("name", "status", "withdraw_flags")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FLAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: PrincipalStatus
    withdraw_flags: bool
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[PrincipalStatus, str]] = ..., withdraw_flags: _Optional[bool] = ...) -> None: ...

class SetPrincipalStatusResponse(_message.Message):
    __slots__ = ("principal", "n_withdrawn")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    N_WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    n_withdrawn: int
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., n_withdrawn: _Optional[int] = ...) -> None: ...

class RotateCertificateRequest(_message.Message):
    __slots__ = ("name", "public_key_der")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    name: str
    public_key_der: bytes
    def __init__(self, name: _Optional[str] = ..., public_key_der: _Optional[bytes] = ...) -> None: ...

class RotateCertificateResponse(_message.Message):
    __slots__ = ("principal", "certificate_pem", "ca_certificate_pem", "operator_id", "operator_key")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    certificate_pem: str
    ca_certificate_pem: str
    operator_id: bytes
    operator_key: bytes
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., operator_id: _Optional[bytes] = ..., operator_key: _Optional[bytes] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("sequence", "at", "principal", "op", "n_items", "n_changed", "detail", "digests", "prev_hash")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    N_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    at: _timestamp_pb2.Timestamp
    principal: str
    op: str
    n_items: int
    n_changed: int
    detail: str
    digests: _containers.RepeatedScalarFieldContainer[str]
    prev_hash: str
    def __init__(self, sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., op: _Optional[str] = ..., n_items: _Optional[int] = ..., n_changed: _Optional[int] = ..., detail: _Optional[str] = ..., digests: _Optional[_Iterable[str]] = ..., prev_hash: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("principal", "op", "since", "until", "digest", "limit")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    principal: str
    op: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    digest: bytes
    limit: int
    def __init__(self, principal: _Optional[str] = ..., op: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., digest: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "n_checked", "first_sequence", "last_sequence", "head_hash", "broken_sequence", "problem")
    OK_FIELD_NUMBER: _ClassVar[int]
    N_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    n_checked: int
    first_sequence: int
    last_sequence: int
    head_hash: str
    broken_sequence: int
    problem: str
    def __init__(self, ok: _Optional[bool] = ..., n_checked: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., head_hash: _Optional[str] = ..., broken_sequence: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("n_digests", "n_active_flags", "n_expired_flags", "active_flags_by_kind", "active_flags_by_category", "active_principals_by_role", "disk_bytes", "oldest_flag", "newest_flag", "change_sequence", "audit_sequence", "flags_expired_purged", "audit_entries_pruned", "operator_id", "operator_key")
    class ActiveFlagsByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ActiveFlagsByCategoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ActivePrincipalsByRoleEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    N_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    N_ACTIVE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    N_EXPIRED_FLAGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLAGS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLAGS_BY_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PRINCIPALS_BY_ROLE_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FLAG_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FLAG_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_EXPIRED_PURGED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_PRUNED_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    n_digests: int
    n_active_flags: int
    n_expired_flags: int
    active_flags_by_kind: _containers.ScalarMap[str, int]
    active_flags_by_category: _containers.ScalarMap[str, int]
    active_principals_by_role: _containers.ScalarMap[str, int]
    disk_bytes: int
    oldest_flag: _timestamp_pb2.Timestamp
    newest_flag: _timestamp_pb2.Timestamp
    change_sequence: int
    audit_sequence: int
    flags_expired_purged: int
    audit_entries_pruned: int
    operator_id: str
    operator_key: str
    def __init__(self, n_digests: _Optional[int] = ..., n_active_flags: _Optional[int] = ..., n_expired_flags: _Optional[int] = ..., active_flags_by_kind: _Optional[_Mapping[str, int]] = ..., active_flags_by_category: _Optional[_Mapping[str, int]] = ..., active_principals_by_role: _Optional[_Mapping[str, int]] = ..., disk_bytes: _Optional[int] = ..., oldest_flag: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., newest_flag: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., change_sequence: _Optional[int] = ..., audit_sequence: _Optional[int] = ..., flags_expired_purged: _Optional[int] = ..., audit_entries_pruned: _Optional[int] = ..., operator_id: _Optional[str] = ..., operator_key: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("dir",)
    DIR_FIELD_NUMBER: _ClassVar[int]
    dir: str
    def __init__(self, dir: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("dir",)
    DIR_FIELD_NUMBER: _ClassVar[int]
    dir: str
    def __init__(self, dir: _Optional[str] = ...) -> None: ...

class InviteClusterNodeRequest(_message.Message):
    __slots__ = ("name", "host_names", "public_key_der", "server_public_key_der")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_NAMES_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    SERVER_PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    name: str
    host_names: _containers.RepeatedScalarFieldContainer[str]
    public_key_der: bytes
    server_public_key_der: bytes
    def __init__(self, name: _Optional[str] = ..., host_names: _Optional[_Iterable[str]] = ..., public_key_der: _Optional[bytes] = ..., server_public_key_der: _Optional[bytes] = ...) -> None: ...

class InviteClusterNodeResponse(_message.Message):
    __slots__ = ("principal", "certificate_pem", "server_certificate_pem", "ca_certificate_pem", "node_certificate_sha256", "operator_name", "operator_id", "operator_key")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    SERVER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    certificate_pem: str
    server_certificate_pem: str
    ca_certificate_pem: str
    node_certificate_sha256: _containers.RepeatedScalarFieldContainer[str]
    operator_name: str
    operator_id: bytes
    operator_key: bytes
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., server_certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., node_certificate_sha256: _Optional[_Iterable[str]] = ..., operator_name: _Optional[str] = ..., operator_id: _Optional[bytes] = ..., operator_key: _Optional[bytes] = ...) -> None: ...

class RemoveClusterNodeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class AddClusterNodeRequest(_message.Message):
    __slots__ = ("id", "address", "principal")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    principal: str
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("replicated", "node_id", "leader_id", "term", "last_log_index", "applied_index", "snapshot_index", "nodes")
    REPLICATED_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    replicated: bool
    node_id: int
    leader_id: int
    term: int
    last_log_index: int
    applied_index: int
    snapshot_index: int
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNodeStatus]
    def __init__(self, replicated: _Optional[bool] = ..., node_id: _Optional[int] = ..., leader_id: _Optional[int] = ..., term: _Optional[int] = ..., last_log_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., snapshot_index: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[ClusterNodeStatus, _Mapping]]] = ...) -> None: ...

class ClusterNodeStatus(_message.Message):
    __slots__ = ("id", "address", "role", "matched_index", "lag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    role: str
    matched_index: int
    lag: int
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., matched_index: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class ListQuarantineRequest(_message.Message):
    __slots__ = ("member", "page_after")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    member: str
    page_after: bytes
    def __init__(self, member: _Optional[str] = ..., page_after: _Optional[bytes] = ...) -> None: ...

class QuarantinedMember(_message.Message):
    __slots__ = ("member", "n_flags", "oldest", "newest")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    N_FLAGS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    member: str
    n_flags: int
    oldest: _timestamp_pb2.Timestamp
    newest: _timestamp_pb2.Timestamp
    def __init__(self, member: _Optional[str] = ..., n_flags: _Optional[int] = ..., oldest: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., newest: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListQuarantineResponse(_message.Message):
    __slots__ = ("members", "flags", "next_page_after")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[QuarantinedMember]
    flags: _containers.RepeatedCompositeFieldContainer[HeldFlag]
    next_page_after: bytes
    def __init__(self, members: _Optional[_Iterable[_Union[QuarantinedMember, _Mapping]]] = ..., flags: _Optional[_Iterable[_Union[HeldFlag, _Mapping]]] = ..., next_page_after: _Optional[bytes] = ...) -> None: ...

class QuarantineActionRequest(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: str
    def __init__(self, member: _Optional[str] = ...) -> None: ...

class QuarantineActionResponse(_message.Message):
    __slots__ = ("n_done", "n_remaining")
    N_DONE_FIELD_NUMBER: _ClassVar[int]
    N_REMAINING_FIELD_NUMBER: _ClassVar[int]
    n_done: int
    n_remaining: int
    def __init__(self, n_done: _Optional[int] = ..., n_remaining: _Optional[int] = ...) -> None: ...

class RenewServerCertificateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewServerCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "expires_at", "host_names")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HOST_NAMES_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    expires_at: _timestamp_pb2.Timestamp
    host_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, certificate_pem: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., host_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("digests_queried_per_second", "flags_submitted_per_second", "flags_submitted_per_day", "streams", "quarantine_new_flags_per_hour")
    DIGESTS_QUERIED_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FLAGS_SUBMITTED_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FLAGS_SUBMITTED_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_NEW_FLAGS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    digests_queried_per_second: int
    flags_submitted_per_second: int
    flags_submitted_per_day: int
    streams: int
    quarantine_new_flags_per_hour: int
    def __init__(self, digests_queried_per_second: _Optional[int] = ..., flags_submitted_per_second: _Optional[int] = ..., flags_submitted_per_day: _Optional[int] = ..., streams: _Optional[int] = ..., quarantine_new_flags_per_hour: _Optional[int] = ...) -> None: ...

class SetPrincipalLimitsRequest(_message.Message):
    __slots__ = ("name", "limits", "clear")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    name: str
    limits: Limits
    clear: bool
    def __init__(self, name: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., clear: _Optional[bool] = ...) -> None: ...

class GetPrincipalLimitsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PrincipalLimitsResponse(_message.Message):
    __slots__ = ("name", "overrides", "effective")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    overrides: Limits
    effective: Limits
    def __init__(self, name: _Optional[str] = ..., overrides: _Optional[_Union[Limits, _Mapping]] = ..., effective: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("disk_bytes",)
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    disk_bytes: int
    def __init__(self, disk_bytes: _Optional[int] = ...) -> None: ...

class ConfigurePeerRequest(_message.Message):
    __slots__ = ("name", "endpoint", "bundle_dir", "paused", "categories", "pass_on", "reveal_names", "operator_id", "operator_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PASS_ON_FIELD_NUMBER: _ClassVar[int]
    REVEAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoint: str
    bundle_dir: str
    paused: bool
    categories: _containers.RepeatedScalarFieldContainer[Category]
    pass_on: bool
    reveal_names: bool
    operator_id: str
    operator_key: str
    def __init__(self, name: _Optional[str] = ..., endpoint: _Optional[str] = ..., bundle_dir: _Optional[str] = ..., paused: _Optional[bool] = ..., categories: _Optional[_Iterable[_Union[Category, str]]] = ..., pass_on: _Optional[bool] = ..., reveal_names: _Optional[bool] = ..., operator_id: _Optional[str] = ..., operator_key: _Optional[str] = ...) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("config", "state", "cursor", "lag", "last_sync", "n_received", "n_applied", "n_rejected", "last_error", "last_rejection", "pause_reason", "operator_id")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_FIELD_NUMBER: _ClassVar[int]
    N_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    N_APPLIED_FIELD_NUMBER: _ClassVar[int]
    N_REJECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_REJECTION_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    config: ConfigurePeerRequest
    state: str
    cursor: int
    lag: int
    last_sync: _timestamp_pb2.Timestamp
    n_received: int
    n_applied: int
    n_rejected: int
    last_error: str
    last_rejection: str
    pause_reason: str
    operator_id: str
    def __init__(self, config: _Optional[_Union[ConfigurePeerRequest, _Mapping]] = ..., state: _Optional[str] = ..., cursor: _Optional[int] = ..., lag: _Optional[int] = ..., last_sync: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., n_received: _Optional[int] = ..., n_applied: _Optional[int] = ..., n_rejected: _Optional[int] = ..., last_error: _Optional[str] = ..., last_rejection: _Optional[str] = ..., pause_reason: _Optional[str] = ..., operator_id: _Optional[str] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ...) -> None: ...

class RemovePeerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemovePeerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForwardedReads(_message.Message):
    __slots__ = ("reads",)
    READS_FIELD_NUMBER: _ClassVar[int]
    reads: _containers.RepeatedCompositeFieldContainer[ForwardedRead]
    def __init__(self, reads: _Optional[_Iterable[_Union[ForwardedRead, _Mapping]]] = ...) -> None: ...

class ForwardedRead(_message.Message):
    __slots__ = ("actor", "op", "n_items", "n_changed", "detail", "digests", "at_ms")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    N_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    actor: str
    op: str
    n_items: int
    n_changed: int
    detail: str
    digests: bytes
    at_ms: int
    def __init__(self, actor: _Optional[str] = ..., op: _Optional[str] = ..., n_items: _Optional[int] = ..., n_changed: _Optional[int] = ..., detail: _Optional[str] = ..., digests: _Optional[bytes] = ..., at_ms: _Optional[int] = ...) -> None: ...

class ForwardedReadsReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RaftRequest(_message.Message):
    __slots__ = ("header", "entries", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    data: bytes
    def __init__(self, header: _Optional[bytes] = ..., entries: _Optional[_Iterable[bytes]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RaftReply(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: bytes
    def __init__(self, outcome: _Optional[bytes] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("after", "max_batch", "db_identity", "signed")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    DB_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    after: int
    max_batch: int
    db_identity: bytes
    signed: bool
    def __init__(self, after: _Optional[int] = ..., max_batch: _Optional[int] = ..., db_identity: _Optional[bytes] = ..., signed: _Optional[bool] = ...) -> None: ...

class FederatedEvent(_message.Message):
    __slots__ = ("sequence", "origin_operator", "origin_operator_name", "origin_sequence", "member_id", "member_name", "digest", "kind", "category", "op", "confidence", "first_seen", "last_seen", "expires_at", "reason", "signature")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[FederatedEvent.Op]
        OP_UPSERT: _ClassVar[FederatedEvent.Op]
        OP_RETRACT: _ClassVar[FederatedEvent.Op]
        OP_EXPIRE: _ClassVar[FederatedEvent.Op]
    OP_UNSPECIFIED: FederatedEvent.Op
    OP_UPSERT: FederatedEvent.Op
    OP_RETRACT: FederatedEvent.Op
    OP_EXPIRE: FederatedEvent.Op
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OPERATOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OPERATOR_NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    origin_operator: bytes
    origin_operator_name: str
    origin_sequence: int
    member_id: str
    member_name: str
    digest: bytes
    kind: IdentifierKind
    category: Category
    op: FederatedEvent.Op
    confidence: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    reason: RetractReason
    signature: bytes
    def __init__(self, sequence: _Optional[int] = ..., origin_operator: _Optional[bytes] = ..., origin_operator_name: _Optional[str] = ..., origin_sequence: _Optional[int] = ..., member_id: _Optional[str] = ..., member_name: _Optional[str] = ..., digest: _Optional[bytes] = ..., kind: _Optional[_Union[IdentifierKind, str]] = ..., category: _Optional[_Union[Category, str]] = ..., op: _Optional[_Union[FederatedEvent.Op, str]] = ..., confidence: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[_Union[RetractReason, str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PullBatch(_message.Message):
    __slots__ = ("events", "cursor", "head", "db_identity")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DB_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FederatedEvent]
    cursor: int
    head: int
    db_identity: bytes
    def __init__(self, events: _Optional[_Iterable[_Union[FederatedEvent, _Mapping]]] = ..., cursor: _Optional[int] = ..., head: _Optional[int] = ..., db_identity: _Optional[bytes] = ...) -> None: ...
