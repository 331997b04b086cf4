//! The vocabulary shared by `store` (which persists it) and `domain` (which applies the
//! rules to it). Plain data: no I/O, no tonic or rocksdb types.
//!
//! Every `#[repr(u8)]` value below is both a wire value in `flagshare.v1` and an on-disk
//! byte: never renumber, only add.

use crate::digest::{Digest, Kind};

/// Principals (members, admins, peers) are numbered densely; flags refer to the number, so
/// renaming a principal never rewrites its flags.
pub type PrincipalId = u32;

macro_rules! byte_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $value:literal => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($variant = $value),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn from_u8(value: u8) -> Option<$name> {
                match value { $($value => Some($name::$variant),)+ _ => None }
            }

            /// Lowercase name, as the CLI reads and prints it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
                $name::ALL.iter().copied().find(|v| v.as_str() == wanted).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    // "AuditOp" reads as "audit op".
                    let what: String = stringify!($name)
                        .chars()
                        .enumerate()
                        .flat_map(|(i, c)| (i > 0 && c.is_uppercase()).then_some(' ').into_iter().chain(c.to_lowercase()))
                        .collect();
                    format!("unknown {what} '{s}' (expected one of: {})", names.join(", "))
                })
            }
        }
    };
}

byte_enum!(
    /// Why an account was flagged.
    Category {
        Grooming = 1 => "grooming",
        Sextortion = 2 => "sextortion",
        CsamSharing = 3 => "csam_sharing",
        CsamSolicitation = 4 => "csam_solicitation",
        Trafficking = 5 => "trafficking",
        Other = 6 => "other",
    }
);

byte_enum!(
    /// What a principal may do. Checked on every call.
    Role {
        Member = 1 => "member",
        Admin = 2 => "admin",
        Peer = 3 => "peer",
        Node = 4 => "node",
    }
);

byte_enum!(
    /// Whether a principal may call at all. `removed` is for good: the name stays reserved
    /// so the audit log stays unambiguous.
    PrincipalStatus {
        Active = 1 => "active",
        Suspended = 2 => "suspended",
        Removed = 3 => "removed",
    }
);

byte_enum!(
    /// Why a flag was withdrawn. `withdrawn` is the operator's withdrawal of the flags of a
    /// suspended or removed member; `unshared` tells federation peers that a flag they
    /// were sent now stays with its operator's members (it was resubmitted as local).
    /// Members send neither.
    RetractReason {
        Unspecified = 0 => "unspecified",
        AppealUpheld = 1 => "appeal_upheld",
        FalsePositive = 2 => "false_positive",
        Duplicate = 3 => "duplicate",
        Other = 4 => "other",
        Withdrawn = 5 => "withdrawn",
        Unshared = 6 => "unshared",
    }
);

byte_enum!(
    /// Who may see a flag: this operator's members only, or federation peers too.
    Distribution {
        Local = 1 => "local",
        Federated = 2 => "federated",
    }
);

/// Principal ids from here up stand for members of other operators, learnt through
/// federation (`store::cf::FOREIGN_MEMBERS`); below it, local principals.
pub const FOREIGN_MEMBER_BASE: PrincipalId = 0x8000_0000;

pub fn is_foreign(member: PrincipalId) -> bool {
    member >= FOREIGN_MEMBER_BASE
}

byte_enum!(
    /// What an audit entry records.
    AuditOp {
        Submit = 1 => "submit",
        Query = 2 => "query",
        Retract = 3 => "retract",
        Dispute = 4 => "dispute",
        AddPrincipal = 5 => "add_principal",
        SetPrincipalStatus = 6 => "set_principal_status",
        RemovePrincipal = 7 => "remove_principal",
        RotateCertificate = 8 => "rotate_certificate",
        ListPrincipals = 9 => "list_principals",
        ReadAudit = 10 => "read_audit",
        Stats = 11 => "stats",
        Backup = 12 => "backup",
        PurgeExpired = 13 => "purge_expired",
        PruneAudit = 14 => "prune_audit",
        FederationApply = 15 => "federation_apply",
        FederationPull = 16 => "federation_pull",
        ConfigurePeer = 17 => "configure_peer",
        RangeQuery = 18 => "range_query",
        Subscribe = 19 => "subscribe",
        ListPeers = 20 => "list_peers",
        RefusedCall = 21 => "refused_call",
        Compact = 22 => "compact",
        ForgetMembers = 23 => "forget_members",
        LimitExceeded = 24 => "limit_exceeded",
        SetLimits = 25 => "set_limits",
        RenewServerCertificate = 26 => "renew_server_certificate",
        ReleaseQuarantine = 27 => "release_quarantine",
        RejectQuarantine = 28 => "reject_quarantine",
        ListHeld = 29 => "list_held",
        Import = 30 => "import",
        ChangeCluster = 31 => "change_cluster",
    }
);

/// Identifies one flag: one member's flag of one digest, under one kind, for one category.
/// Re-submitting the same key updates the flag instead of adding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlagKey {
    pub digest: Digest,
    pub member: PrincipalId,
    pub kind: Kind,
    pub category: Category,
}

/// Everything stored about one flag, beyond its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRecord {
    pub confidence: u8,
    /// Earliest `observed_at` the member reported for this flag.
    pub first_seen_ms: i64,
    /// Latest `observed_at` the member reported for this flag.
    pub last_seen_ms: i64,
    /// When the flag stops matching.
    pub expires_at_ms: i64,
    /// Server time of the first submission.
    pub created_at_ms: i64,
    /// Server time of the latest submission.
    pub updated_at_ms: i64,
    /// Epoch of the consortium key the digest was made with.
    pub key_id: u32,
    /// Opaque member-side reference, at most 128 bytes.
    pub reference: Vec<u8>,
    pub distribution: Distribution,
    /// For a flag learnt from another operator: its sequence number there (the flag's
    /// version); 0 for local flags.
    pub origin_sequence: u64,
}

/// The part of a flag a query needs, kept beside its siblings under the digest so a query
/// reads one value per digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryEntry {
    pub member: PrincipalId,
    pub kind: Kind,
    pub category: Category,
    pub confidence: u8,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub expires_at_ms: i64,
    pub distribution: Distribution,
    /// The change-log sequence of the upsert that wrote this entry: the flag's full record
    /// is that change.
    pub sequence: u64,
}

impl SummaryEntry {
    pub fn from_flag(key: &FlagKey, record: &FlagRecord, sequence: u64) -> SummaryEntry {
        SummaryEntry {
            member: key.member,
            kind: key.kind,
            category: key.category,
            confidence: record.confidence,
            first_seen_ms: record.first_seen_ms,
            last_seen_ms: record.last_seen_ms,
            expires_at_ms: record.expires_at_ms,
            distribution: record.distribution,
            sequence,
        }
    }

    pub fn same_flag(&self, key: &FlagKey) -> bool {
        self.member == key.member && self.kind == key.kind && self.category == key.category
    }
}

/// A registered client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub id: PrincipalId,
    pub name: String,
    pub role: Role,
    pub status: PrincipalStatus,
    pub created_at_ms: i64,
    /// SHA-256 of the DER of the one certificate that currently authenticates it.
    pub cert_sha256: [u8; 32],
    /// When that certificate expires (ms since the epoch); 0 when it was issued before
    /// expiry was recorded.
    pub cert_not_after_ms: i64,
}

/// A certificate issued to a principal, as the registry keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub sha256: [u8; 32],
    pub not_after_ms: i64,
}

/// One entry of the change log: what a feed or a federation peer replays, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub at_ms: i64,
    pub key: FlagKey,
    pub change: Change,
    pub distribution: Distribution,
    /// As in `FlagRecord`: the origin's sequence number for a foreign flag, 0 for local.
    pub origin_sequence: u64,
    /// For a change of another operator's flag: that operator's signature over the event,
    /// kept so the change can be passed on verifiably; `None` when it came unsigned.
    pub signature: Option<OriginSignature>,
}

/// An origin's signature over a federated event, as received: the signature of its
/// batch's root and the event's path to it (`domain::signing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSignature {
    pub signature: Vec<u8>,
    /// The expiry the origin signed (the stored one may be shorter: this operator's
    /// retention caps it), so the event can be sent on exactly as signed.
    pub expires_at_ms: i64,
}

/// A member of another operator, as federation names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignMember {
    pub id: PrincipalId,
    /// The origin operator's id (from its CA certificate).
    pub origin: [u8; 8],
    pub origin_name: String,
    /// Stable opaque id of the member at its origin: the identity used for counting.
    pub pseudonym: String,
    /// The member's name when its operator reveals it, else the pseudonym.
    pub display: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The flag was created or updated and now reads as given (its full record: the change
    /// log is where flag records are kept).
    Upsert(FlagRecord),
    /// The member (or the operator) withdrew the flag.
    Retract(RetractReason),
    /// The flag passed its expiry and was purged.
    Expire,
    /// Another member disputed the flag (the dispute itself is in `disputes`).
    Dispute,
}

/// Per-principal activity counters, updated in the same batch as the audit entry of the
/// call they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrincipalStats {
    /// Server time of the principal's latest audited call; 0 when it never called.
    pub last_seen_ms: i64,
    pub n_flags_submitted: u64,
    pub n_queries: u64,
    pub n_digests_queried: u64,
}

/// One entry of the append-only audit log. `prev_hash` is the BLAKE3 hash of the stored
/// bytes of the entry before it, so altering or deleting an entry breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub sequence: u64,
    pub at_ms: i64,
    /// Principal name at the time of the call; `system` for the server's own tasks.
    pub principal: String,
    pub op: String,
    /// Items in the request (flags submitted, digests queried, ...).
    pub n_items: u64,
    /// Items the call changed or found (flags created+updated, matches, retractions, ...).
    pub n_changed: u64,
    /// What else identifies the action: a target principal, a reason, a backup folder.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Digests the action concerns, hex: the matches of a query (never its misses), the
    /// flags submitted, retracted or disputed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<String>,
    pub prev_hash: String,
}

/// Limits set for one principal over its role's defaults (`admin member limits`); `None`
/// leaves the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub digests_queried_per_second: Option<u64>,
    pub flags_submitted_per_second: Option<u64>,
    pub flags_submitted_per_day: Option<u64>,
    pub streams: Option<u32>,
    /// The flood quarantine's hourly threshold for this principal; 0 exempts it.
    pub quarantine_new_flags_per_hour: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }

    /// `other`'s values where it sets them, else these.
    pub fn merged(self, other: LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            digests_queried_per_second: other.digests_queried_per_second.or(self.digests_queried_per_second),
            flags_submitted_per_second: other.flags_submitted_per_second.or(self.flags_submitted_per_second),
            flags_submitted_per_day: other.flags_submitted_per_day.or(self.flags_submitted_per_day),
            streams: other.streams.or(self.streams),
            quarantine_new_flags_per_hour: other
                .quarantine_new_flags_per_hour
                .or(self.quarantine_new_flags_per_hour),
        }
    }
}
