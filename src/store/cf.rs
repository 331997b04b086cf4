//! Every column family, with its rows and value layout. Names and layouts are on-disk
//! format: never rename one; add a new family (and bump `SCHEMA_VERSION`) instead.
//!
//! Integers in keys are big-endian, so byte order is numeric order (`keys.rs`). Every value
//! starts with a format-version byte (`codec.rs`).

/// Schema bookkeeping and the audit chain's ends.
/// Rows: `b"schema_version"` → u32 BE, checked at open; `b"audit_head"` → `sequence u64 |
/// BLAKE3 hash(32)` of the newest audit entry; `b"audit_anchor"` → the same for the newest
/// entry removed by audit retention (the chain is verified from there); `b"operator_id"` →
/// 8 random bytes naming this operator in federation; `b"pseudonym_key"` → 32 random bytes
/// keying the pseudonyms of local members sent to peers; `b"db_identity"` → 8 random bytes
/// naming this database (made anew by `offline-restore`: cursors of before a restore are
/// refused); `b"origin_signing_key"` → the 32-byte Ed25519 secret this operator signs the
/// federated events it originates with (`domain::signing`); `b"change_horizon"` → u64 BE:
/// every tombstone at or below this sequence has been deleted (`domain::maintenance`), so
/// a cursor below it cannot be continued; `b"sequence_floor"` → u64 BE: the newest sequence
/// handed out when the newest change-log row was deleted, so sequences never go back;
/// `b"limits/" + name` → `[1, JSON]`: that principal's limit overrides (`LimitOverrides`);
/// `b"quarantine_window/" + member id (u32 BE)` → `[1, window start ms i64, new flags
/// committed in it u64]`: the flood quarantine's hourly count (`domain::quarantine`);
/// `b"pending_ingest"` → UTF-8 path of a summaries file an import block committed with and
/// has not ingested yet (ingested at the next open if the server stopped first).
pub const META: &str = "meta";

/// The lookup path: one row per digest that has at least one stored flag, one entry per
/// flag. Rows: `digest(32)` → summary v3: `[3, n: u16 BE, n × entry(40 bytes)]`, each entry
/// `member u32 | kind u8 | category u8 | confidence u8 | first_seen i64 | last_seen i64 |
/// expires_at i64 | distribution u8 | sequence u64` (times in milliseconds since the epoch;
/// `sequence` is the `CHANGES` row holding the flag's full record). Whole-key bloom filter:
/// most lookups miss.
pub const SUMMARIES: &str = "summaries";

/// The change log: every flag upsert, retraction and expiry, in commit order. Feeds and
/// federation replay it, and an upsert is the flag's full record: a stored flag is the
/// upsert its summary entry names, so no row keyed by digest is written twice per flag
/// (schema 2 had a `flags` family; sequence keys append where random keys cost a
/// skip-list search and compaction). An upsert is deleted when a newer one supersedes it or
/// its flag is removed; what remains of a removed flag is a thin tombstone (key, time,
/// reason), itself deleted after the tombstone retention window. Never pruned while a
/// summary entry names a row.
/// Rows: `sequence u64` → change v4 (see `codec::encode_change`).
pub const CHANGES: &str = "changes";

/// Registered client identities.
/// Rows: `principal id u32` → principal v1 (see `codec::encode_principal`).
pub const PRINCIPALS: &str = "principals";

/// Activity counters per principal, for `admin member list`.
/// Rows: `principal id u32` → stats v1: `[1, last_seen i64, flags_submitted u64, queries u64,
/// digests_queried u64]`.
pub const PRINCIPAL_STATS: &str = "principal_stats";

/// The append-only, hash-chained audit log.
/// Rows: `sequence u64` → audit v1: `[1, JSON of model::AuditEntry]`. JSON because operators
/// and their tools read entries as they are; the hash covers the stored bytes.
pub const AUDIT: &str = "audit";

/// Disputes of one member's flags on a digest by another member.
/// Rows: `digest(32) | flagged-by member u32 | disputing member u32` → dispute v1: `[1, at i64]`.
/// All disputes of a digest are one prefix scan, done only for digests that matched.
pub const DISPUTES: &str = "disputes";

/// Members of other operators, learnt through federation; their ids start at
/// `model::FOREIGN_MEMBER_BASE`.
/// Rows: `id u32` → foreign member v1 (see `codec::encode_foreign_member`).
pub const FOREIGN_MEMBERS: &str = "foreign_members";

/// The version of every flag learnt from another operator, kept after it is retracted or
/// expired (a tombstone), so an event arriving late by another path never resurrects it.
/// Rows: `digest(32) | member u32 | kind u8 | category u8` → origin sequence u64 BE.
pub const FLAG_VERSIONS: &str = "flag_versions";

/// Federation peers: where to pull from, the pull cursor, and what they may be sent.
/// Rows: peer name → peer v1: `[1, JSON of domain::federation::PeerRecord]`.
pub const PEERS: &str = "peers";

/// Flags held back by the flood quarantine (`domain::quarantine`): stored, matching for
/// no one else and sent to no peer until an admin releases or rejects them. Rows:
/// `member u32 | digest(32) | kind u8 | category u8` → change v3 (see `codec`), an upsert
/// carrying the flag's full record as it will be released.
pub const QUARANTINE: &str = "quarantine";

/// The Raft log of a replicated operator (`cluster`): one row per entry.
/// Rows: `index u64` → entry v1: `[1, term u64, leader node u64, payload kind u8, payload]`,
/// kind 0 a blank entry (no payload), 1 a write set (`writeset.rs`), 2 a membership (JSON
/// of openraft's `Membership`). Not replicated as rows: each node keeps its own log.
pub const RAFT_LOG: &str = "raft_log";

/// What a node's Raft keeps beside its log, and what its state machine has applied.
/// Rows: `b"vote"` → `[1, term u64, node u64, committed u8]`; `b"committed"` and
/// `b"purged"` → a log id `[1, term u64, leader node u64, index u64]`; `b"applied"` → the
/// same, written in the batch of the entry it names; `b"membership"` → `[1, JSON of
/// openraft's StoredMembership]`, likewise; `b"snapshot"` → `[1, JSON of the current
/// snapshot's meta]` (its rows are the file `snapshot` beside the database).
pub const RAFT_STATE: &str = "raft_state";

/// The state machine: the families a write set may change and a snapshot carries. The
/// place of each is its number on the wire (`writeset.rs`): append, never reorder.
pub const REPLICATED: &[&str] = &[
    META,
    SUMMARIES,
    CHANGES,
    PRINCIPALS,
    PRINCIPAL_STATS,
    AUDIT,
    DISPUTES,
    FOREIGN_MEMBERS,
    FLAG_VERSIONS,
    PEERS,
    QUARANTINE,
];

/// A node's own families: never replicated, never in a write set or a snapshot.
pub const NODE: &[&str] = &[RAFT_LOG, RAFT_STATE];

/// All families, in the order they are opened: the replicated ones, then the node's own.
/// Families added empty (the Raft ones) need no schema version: a store without them
/// gains them at open, and an older build opens them as families it does not know.
pub fn all() -> impl Iterator<Item = &'static str> {
    REPLICATED.iter().chain(NODE).copied()
}
