//! Every column family, with its rows and value layout. Names and layouts are on-disk
//! format: never rename one; add a new family (and bump `SCHEMA_VERSION`) instead.
//!
//! Integers in keys are big-endian, so byte order is numeric order (`keys.rs`). Every value
//! starts with a format-version byte (`codec.rs`).

/// Schema bookkeeping.
/// Rows: `b"schema_version"` → u32 BE, checked at open.
pub const META: &str = "meta";

/// The lookup path: one row per digest that has at least one stored flag.
/// Rows: `digest(32)` → summary v1: `[1, n: u16 BE, n × entry(31 bytes)]`, each entry
/// `member u32 | kind u8 | category u8 | confidence u8 | first_seen i64 | last_seen i64 |
/// expires_at i64` (milliseconds since the epoch). Whole-key bloom filter: most lookups miss.
pub const SUMMARIES: &str = "summaries";

/// The full record of every flag; all flags of one digest are one prefix scan.
/// Rows: `digest(32) | member u32 | kind u8 | category u8` → flag v1 (see `codec::encode_flag`).
pub const FLAGS: &str = "flags";

/// The change log: every flag upsert and retraction, in commit order. Feeds and
/// federation replay it.
/// Rows: `sequence u64` → change v1 (see `codec::encode_change`).
pub const CHANGES: &str = "changes";

/// Registered client identities.
/// Rows: `principal id u32` → principal v1 (see `codec::encode_principal`).
pub const PRINCIPALS: &str = "principals";

/// All families, in the order they are opened.
pub const ALL: &[&str] = &[META, SUMMARIES, FLAGS, CHANGES, PRINCIPALS];
