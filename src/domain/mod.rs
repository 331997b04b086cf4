//! The rules of flagshare, over a `Store`. Never sees tonic or rocksdb types.
//!
//! `Domain` is the facade the server calls: each method runs its operation off the async
//! runtime. The shared state (store, registry, writer lock, ledger) is `state::State`;
//! each operation lives in its own file (`submit`, `lookup`, `retract`, `membership`,
//! `federation`, `feed`, `maintenance`). Reads run concurrently; writes take one lock, so
//! sequence numbers are handed out in commit order and a read-modify-write of a digest's
//! summary never races another.

pub mod audit;
pub mod federation;
pub mod feed;
pub mod flags;
mod foreign;
mod lookup;
pub mod maintenance;
mod membership;
pub mod principals;
mod quarantine;
mod retract;
pub mod signing;
mod state;
mod submit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, AuditOp, Category, Distribution, PrincipalId, PrincipalRecord, PrincipalStats, PrincipalStatus,
    RetractReason, Role,
};
use crate::store::Store;
use crate::util::now_ms;

pub use audit::{Actor, AuditEvent, AuditFilter, Ledger, VerifyReport};
pub use federation::{ApplyOutcome, Event, EventOp, OutgoingBatch, PeerRecord, Rejected};
pub use flags::{FlagSelector, Match, NewFlag};
pub use foreign::Federation;
pub use lookup::MAX_RANGE_MATCHES;
pub use maintenance::{Retention, Stats, Sweep};
pub use membership::describe_limits;
pub use principals::{Caller, Registry};
pub use quarantine::{HELD_PAGE, HeldFlag, QUARANTINE_CHUNK, QuarantineSummary};
pub use state::{
    MAX_ENTRIES_PER_DIGEST, MAX_ENTRIES_PER_ORIGIN, MAX_PENDING_READ_DIGESTS, MAX_PENDING_READS, Metrics,
    READ_FLUSH_INTERVAL, ReadForwarder,
};
pub use submit::{IMPORT_BLOCK, SortedFlags};

use state::{State, blocking, stream_chunk};

/// Rules an operator configures.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a flag matches when its member gave no expiry, per category; also the
    /// longest any flag may live here, federated ones included.
    pub default_ttl_ms: HashMap<Category, i64>,
    /// Distribution of a flag whose member did not choose one.
    pub default_distribution: Distribution,
    /// This operator's name, shown to federation peers with its members' flags.
    pub operator_name: String,
    /// Most members of one other operator this server keeps (each costs memory and a row).
    pub max_foreign_members_per_origin: usize,
    /// New flags one member may commit per hour before the rest are quarantined; 0: no
    /// quarantine.
    pub quarantine_new_flags_per_hour: u64,
}

/// Shortest and longest `RangeQuery` prefix, in bytes. Two bytes make 65,536 buckets, so
/// 10,000,000 digests put about 150 in each: the server learns a member checked one of
/// ~150. Three bytes (16.7 M buckets) answer with less but hide little at that size.
pub const MIN_RANGE_PREFIX: usize = 2;
pub const MAX_RANGE_PREFIX: usize = 3;

/// Two years: long enough to span a typical appeal and re-offending window, short enough
/// that a stale flag does not follow someone indefinitely.
pub const DEFAULT_TTL_MS: i64 = 2 * 365 * 24 * 60 * 60 * 1000;

/// A few thousand platforms per operator is far beyond any consortium; the bound is what a
/// hostile peer can make this server remember.
pub const DEFAULT_MAX_FOREIGN_MEMBERS_PER_ORIGIN: usize = 5_000;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_ttl_ms: Category::ALL
                .iter()
                .map(|category| (*category, DEFAULT_TTL_MS))
                .collect(),
            default_distribution: Distribution::Federated,
            operator_name: "flagshare".to_owned(),
            max_foreign_members_per_origin: DEFAULT_MAX_FOREIGN_MEMBERS_PER_ORIGIN,
            quarantine_new_flags_per_hour: 0,
        }
    }
}

impl Policy {
    /// The latest expiry a flag of `category` may have when it is written at `now_ms`.
    pub fn longest_expiry(&self, category: Category, now_ms: i64) -> i64 {
        let ttl = self.default_ttl_ms.get(&category).copied().unwrap_or(DEFAULT_TTL_MS);
        now_ms.saturating_add(ttl)
    }
}

/// Longest detail of a forwarded read's entry (a read's own are a few words).
const MAX_FORWARDED_DETAIL: usize = 4_096;

/// The audit entry of a read a follower answered, as it travels to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRead {
    /// The reader's name.
    pub actor: String,
    pub op: AuditOp,
    pub n_items: u64,
    pub n_changed: u64,
    pub detail: String,
    pub digests: Vec<Digest>,
    pub at_ms: i64,
}

impl ForwardedRead {
    /// The entry of a read this node answered, to forward; `None` for the server's own
    /// (no reader id), which a follower never queues.
    pub fn of(event: &AuditEvent, at_ms: i64) -> Option<ForwardedRead> {
        event.actor.id?;
        Some(ForwardedRead {
            actor: event.actor.name.clone(),
            op: event.op,
            n_items: event.n_items,
            n_changed: event.n_changed,
            detail: event.detail.clone(),
            digests: event.digests.clone(),
            at_ms,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub n_created: u32,
    pub n_updated: u32,
    /// New flags held back by the flood quarantine (stored, not matching for others).
    pub n_quarantined: u32,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetractOutcome {
    pub n_retracted: u32,
    pub unmatched_indexes: Vec<u32>,
    pub sequence: u64,
}

/// A principal with its activity counters, for `admin member list`.
#[derive(Debug, Clone)]
pub struct PrincipalView {
    pub record: PrincipalRecord,
    pub stats: PrincipalStats,
}

impl From<&Caller> for Actor {
    fn from(caller: &Caller) -> Actor {
        Actor {
            id: Some(caller.id),
            name: caller.name.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Domain {
    state: Arc<State>,
}

impl Domain {
    /// The domain over `store` (a `Store`, or an `Arc` the caller shares with a Raft node).
    pub fn open(store: impl Into<Arc<Store>>, policy: Policy) -> Result<Domain> {
        let state = State::open(store.into(), policy)?;
        state.load_quarantine_overrides()?;
        Ok(Domain { state: Arc::new(state) })
    }

    /// Reads again what this copy keeps in memory of the store (principals, the last
    /// sequence, the audit head, disputed digests, foreign members, quarantine state):
    /// another node's commits were applied to the store under it. The operator's own
    /// keys and database identity are the same on every node of a cluster and stay.
    pub fn refresh(&self) -> Result<()> {
        self.state.refresh()
    }

    /// `refresh` as a store's apply listener: it holds the domain weakly, so a store that
    /// keeps it does not keep the domain open.
    pub fn apply_listener(&self) -> crate::store::ApplyListener {
        let state = Arc::downgrade(&self.state);
        Arc::new(move || {
            if let Some(state) = state.upgrade()
                && let Err(err) = state.note_applied()
            {
                tracing::error!(%err, "reading the store again after another node's commits failed");
            }
        })
    }

    /// The flood quarantine's hourly threshold for the principal named `name` (0: its new
    /// flags are never held), if it exists.
    pub fn quarantine_threshold_of(&self, name: &str) -> Option<u64> {
        let record = self.state.registry.by_name(name)?;
        Some(self.state.quarantine_threshold(record.id))
    }

    /// Whether this handle is the last one: then dropping it closes the store.
    pub fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.state) == 1
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn federation(&self) -> &Federation {
        &self.state.federation
    }

    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// RocksDB's figures for the metrics endpoint (walks the data folder for its size).
    pub async fn rocks_reading(&self) -> Result<crate::store::RocksReading> {
        let state = self.state.clone();
        blocking(move || Ok(state.store.rocks_reading())).await
    }

    /// Maps a client certificate to a caller allowed to act in one of `roles`.
    pub fn authorize(&self, cert_sha256: &[u8; 32], roles: &[Role]) -> Result<Caller> {
        let caller = self.state.registry.authenticate(cert_sha256)?;
        if !roles.contains(&caller.role) {
            let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            return Err(Error::PermissionDenied(format!(
                "principal '{}' has role {}; this call needs role {}",
                caller.name,
                caller.role,
                allowed.join(" or ")
            )));
        }
        Ok(caller)
    }

    /// Fails unless the certificate `caller` opened its stream with still authenticates it
    /// as an active principal (for long-lived streams: a suspension, removal or certificate
    /// rotation ends them).
    pub fn reauthorize(&self, caller: &Caller) -> Result<()> {
        match self.state.registry.authenticate(&caller.cert_sha256) {
            Ok(current) if current.id == caller.id => Ok(()),
            _ => Err(Error::PermissionDenied(format!(
                "principal '{}' is no longer active with this certificate",
                caller.name
            ))),
        }
    }

    pub async fn submit(&self, caller: Caller, new_flags: Vec<NewFlag>, key_id: u32) -> Result<SubmitOutcome> {
        let now = now_ms();
        flags::validate_new_flags(&new_flags, now)?;
        let state = self.state.clone();
        blocking(move || {
            let sorted = SortedFlags::new(caller.id, new_flags);
            state.submit(&caller, sorted, key_id, now)
        })
        .await
    }

    /// Checks one message of an import, its flags named from `first_index` in errors.
    pub fn check_import_message(&self, flags: &[NewFlag], first_index: usize) -> Result<()> {
        flags::validate_new_flags_from(flags, now_ms(), first_index)
    }

    /// Held for the whole of an import: RocksDB compacts its blocks' rows less often
    /// meanwhile, and catches up once the last import ends.
    pub fn begin_import(&self) -> crate::store::BulkLoad {
        self.state.store.begin_bulk_load()
    }

    /// Sorts one block of an import for `import_sorted`, its flags made by `flags` (which
    /// checks them with `check_import_message`) on the same bulk thread. This needs no
    /// lock, so it runs while the block before commits.
    pub async fn sort_import_block(
        &self,
        caller: &Caller,
        flags: impl FnOnce() -> Result<Vec<NewFlag>> + Send + 'static,
    ) -> Result<SortedFlags> {
        let member = caller.id;
        state::bulk(move || Ok(SortedFlags::new(member, flags()?))).await
    }

    /// Commits one sorted block of an import (at most `IMPORT_BLOCK` flags): one audited
    /// commit, visible whole or not at all.
    pub async fn import_sorted(&self, caller: Caller, block: SortedFlags, key_id: u32) -> Result<SubmitOutcome> {
        let now = now_ms();
        let state = self.state.clone();
        state::bulk(move || state.import_block(&caller, block, key_id, now)).await
    }

    /// `sort_import_block`, then `import_sorted`.
    pub async fn import_block(&self, caller: Caller, new_flags: Vec<NewFlag>, key_id: u32) -> Result<SubmitOutcome> {
        let block = self.sort_import_block(&caller, move || Ok(new_flags)).await?;
        self.import_sorted(caller, block, key_id).await
    }

    pub async fn query(&self, caller: Caller, digests: Vec<Digest>) -> Result<Vec<Match>> {
        flags::check_batch_len("digests", digests.len())?;
        let state = self.state.clone();
        blocking(move || state.query(&caller, &digests, now_ms())).await
    }

    /// Every live match whose digest starts with `prefix` (2 or 3 bytes) and comes after
    /// `page_after` (empty for the first page), reading at most `MAX_RANGE_MATCHES` digests,
    /// and the digest the next page starts after when more may follow.
    pub async fn range_query(
        &self,
        caller: Caller,
        prefix: Vec<u8>,
        page_after: Vec<u8>,
    ) -> Result<(Vec<Match>, Option<Digest>)> {
        let state = self.state.clone();
        blocking(move || state.range_query(&caller, &prefix, &page_after, now_ms())).await
    }

    pub async fn retract(
        &self,
        caller: Caller,
        selectors: Vec<FlagSelector>,
        reason: RetractReason,
    ) -> Result<RetractOutcome> {
        flags::check_batch_len("flags", selectors.len())?;
        let state = self.state.clone();
        blocking(move || state.retract(&caller, &selectors, reason, now_ms())).await
    }

    /// Records that `caller` disputes `flagged_by`'s flags on `digest`.
    pub async fn dispute(&self, caller: Caller, digest: Digest, flagged_by: String, note: String) -> Result<u32> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.dispute(&caller, digest, &flagged_by, &note, now)).await
    }

    /// Records the start of a feed (a snapshot, or a resumption from a cursor) as the read
    /// it is: queued with the other reads' entries, so a follower can serve feeds too.
    pub async fn record_subscribe(&self, caller: Caller, detail: String) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state.record_read(
                AuditEvent::new((&caller).into(), AuditOp::Subscribe).detail(detail),
                now_ms(),
            )
        })
        .await
    }

    /// The newest sequence number of the change log: a snapshot read after it is
    /// continued by the changes after it.
    pub async fn feed_head(&self) -> Result<u64> {
        let state = self.state.clone();
        blocking(move || state.head()).await
    }

    /// One chunk of the feed's snapshot: the live matches of up to `feed::FEED_BATCH`
    /// digests after `after` (from the start when `None`), and the last digest read (`None`
    /// when the snapshot is complete). Each chunk is a short piece of blocking work, so a
    /// slow reader holds no thread between chunks.
    pub async fn feed_snapshot_chunk(
        &self,
        caller: Caller,
        after: Option<Digest>,
    ) -> Result<(Vec<feed::FeedItem>, Option<Digest>)> {
        self.reauthorize(&caller)?;
        stream_chunk(self.state.clone(), move |state| {
            feed::snapshot_chunk(state, &caller, after)
        })
        .await
    }

    /// Changes after `after` with their digests' current matches, the sequence covered,
    /// and the newest sequence.
    pub async fn feed_changes(
        &self,
        caller: Caller,
        after: u64,
        horizon_at_start: u64,
    ) -> Result<(Vec<feed::FeedItem>, u64, u64)> {
        self.reauthorize(&caller)?;
        stream_chunk(self.state.clone(), move |state| {
            state.check_horizon(after, horizon_at_start)?;
            feed::changes(state, &caller, after)
        })
        .await
    }

    /// The change log after `after` as `caller` (a peer) may see it. A peer principal
    /// without a configured policy gets the default: every category, no passing on,
    /// pseudonyms only. (Removing a peer also removes its principal, so a removed peer
    /// does not fall back to this.)
    pub async fn outgoing(
        &self,
        caller: Caller,
        after: u64,
        horizon_at_start: u64,
        max: usize,
        signed: bool,
    ) -> Result<OutgoingBatch> {
        self.reauthorize(&caller)?;
        stream_chunk(self.state.clone(), move |state| {
            state.check_horizon(after, horizon_at_start)?;
            let policy = state
                .peer(&caller.name)?
                .unwrap_or_else(|| PeerRecord::policy_only(&caller.name));
            federation::outgoing(state, &policy, after, max, signed)
        })
        .await
    }

    /// Records that `caller` started pulling from `after`.
    pub async fn record_pull(&self, caller: Caller, after: u64) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(
                    AuditEvent::new((&caller).into(), AuditOp::FederationPull).detail(format!("from {after}")),
                    now_ms(),
                )
                .map(drop)
        })
        .await
    }

    pub async fn apply_federated(
        &self,
        peer: String,
        events: Vec<std::result::Result<Event, Rejected>>,
        cursor: u64,
        remote_db_identity: String,
    ) -> Result<ApplyOutcome> {
        let state = self.state.clone();
        blocking(move || federation::apply(&state, &peer, events, cursor, remote_db_identity, now_ms())).await
    }

    /// Whether this server passes flags on to any peer, and so asks its sources to sign.
    pub async fn wants_signatures(&self) -> Result<bool> {
        let state = self.state.clone();
        blocking(move || federation::wants_signatures(&state)).await
    }

    /// This operator's public signing key: peers that learn it believe its events passed
    /// on by others.
    pub fn operator_key(&self) -> [u8; signing::PUBLIC_KEY_LEN] {
        self.state.federation.origin_key.public_key()
    }

    /// Makes a peer's pull start again from 0 (it could not continue our cursor).
    pub async fn reset_peer_cursor(&self, peer: String, reason: String) -> Result<u64> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || federation::reset_peer_cursor(&state, &peer, &reason, now)).await
    }

    /// This database's identity (see `Store::db_identity`).
    pub fn db_identity(&self) -> [u8; 8] {
        self.state.db_identity
    }

    pub async fn peers(&self) -> Result<Vec<PeerRecord>> {
        let state = self.state.clone();
        blocking(move || state.peers()).await
    }

    pub async fn peer(&self, name: String) -> Result<Option<PeerRecord>> {
        let state = self.state.clone();
        blocking(move || state.peer(&name)).await
    }

    /// Records that an admin listed the peers.
    pub async fn record_list_peers(&self, admin: Caller, n_peers: usize) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(
                    AuditEvent::new((&admin).into(), AuditOp::ListPeers).counts(0, n_peers as u64),
                    now_ms(),
                )
                .map(drop)
        })
        .await
    }

    /// Adds or reconfigures a peer; the cursor of an existing peer is kept.
    pub async fn configure_peer(&self, admin: Caller, record: PeerRecord) -> Result<PeerRecord> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || federation::configure_peer(&state, &admin, record, now)).await
    }

    /// Removes a peer and, with it, the `peer` principal of the same name: a peer that is
    /// gone may pull nothing more.
    pub async fn remove_peer(&self, admin: Caller, name: String) -> Result<()> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || federation::remove_peer(&state, &admin, &name, now)).await
    }

    /// Records a counted refusal (for example of a federated event), outside any commit
    /// of data.
    pub async fn record_refusal(&self, actor: Actor, op: AuditOp, detail: String) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(AuditEvent::new(actor, op).counts(1, 0).detail(detail), now_ms())
                .map(drop)
        })
        .await
    }

    /// Registers a new principal authenticated by the certificate with `cert_sha256`.
    pub async fn add_principal(
        &self,
        admin: Actor,
        name: String,
        role: Role,
        certificate: crate::model::IssuedCertificate,
    ) -> Result<PrincipalRecord> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.add_principal(&admin, &name, role, certificate, now)).await
    }

    /// Suspends, reinstates or removes a principal; with `withdraw_flags`, its flags stop
    /// matching (they are retracted with reason `withdrawn`, in commits of bounded size).
    pub async fn set_principal_status(
        &self,
        admin: Caller,
        name: String,
        status: PrincipalStatus,
        withdraw_flags: bool,
    ) -> Result<(PrincipalRecord, u32)> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.set_principal_status(&admin, &name, status, withdraw_flags, now)).await
    }

    /// Every member's quarantined flags, counted.
    pub async fn quarantine_list(&self) -> Result<Vec<QuarantineSummary>> {
        let state = self.state.clone();
        blocking(move || state.quarantine_list()).await
    }

    /// A page of held flags: the caller's own, or (for an admin) those of the member named
    /// `member`; and where the next page starts (empty after the last).
    pub async fn held_flags(
        &self,
        caller: Caller,
        member: Option<String>,
        page_after: Vec<u8>,
    ) -> Result<(Vec<HeldFlag>, Vec<u8>)> {
        let state = self.state.clone();
        blocking(move || {
            let member = match member {
                Some(name) => state.quarantined_member(&name)?,
                None => caller.id,
            };
            state.held_flags(&caller, member, &page_after, now_ms())
        })
        .await
    }

    /// Releases a chunk of a member's quarantined flags: (released, still held).
    pub async fn quarantine_release(&self, admin: Caller, member: String) -> Result<(u32, u64)> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.quarantine_release(&admin, &member, now)).await
    }

    /// Rejects (deletes) a chunk of a member's quarantined flags: (rejected, still held).
    pub async fn quarantine_reject(&self, admin: Caller, member: String) -> Result<(u32, u64)> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.quarantine_reject(&admin, &member, now)).await
    }

    /// Sets a principal's limit overrides (`clear` drops the old ones first).
    pub async fn set_limits(
        &self,
        admin: Caller,
        name: String,
        changes: crate::model::LimitOverrides,
        clear: bool,
    ) -> Result<crate::model::LimitOverrides> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.set_limits(&admin, &name, changes, clear, now)).await
    }

    /// Every principal's limit overrides, by name.
    pub async fn all_limit_overrides(&self) -> Result<Vec<(String, crate::model::LimitOverrides)>> {
        let state = self.state.clone();
        blocking(move || state.all_limit_overrides()).await
    }

    /// Records an admin action that changes no stored state (a server certificate renewal).
    pub async fn record_admin_action(&self, admin: Caller, op: AuditOp, detail: String) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(
                    AuditEvent::new((&admin).into(), op).counts(1, 1).detail(detail),
                    now_ms(),
                )
                .map(drop)
        })
        .await
    }

    /// Records that a principal went over a limit (once per window, by the caller).
    pub async fn record_limit_exceeded(&self, caller: Caller, detail: String) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(
                    AuditEvent::new((&caller).into(), AuditOp::LimitExceeded)
                        .counts(1, 0)
                        .detail(detail),
                    now_ms(),
                )
                .map(drop)
        })
        .await
    }

    /// Replaces a principal's certificate; the old one is refused from the next call on.
    pub async fn rotate_certificate(
        &self,
        admin: Caller,
        name: String,
        certificate: crate::model::IssuedCertificate,
    ) -> Result<PrincipalRecord> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.rotate_certificate(&admin, &name, certificate, now)).await
    }

    pub async fn list_principals(&self, admin: Caller) -> Result<Vec<PrincipalView>> {
        let state = self.state.clone();
        let now = now_ms();
        blocking(move || state.list_principals(&admin, now)).await
    }

    pub async fn list_audit(&self, admin: Caller, filter: AuditFilter) -> Result<Vec<AuditEntry>> {
        let state = self.state.clone();
        blocking(move || {
            state.flush_reads()?;
            let entries = audit::list(&state.store, &filter)?;
            // Queued as a member's read is, so that any node of a cluster answers it.
            state.record_read(
                AuditEvent::new((&admin).into(), AuditOp::ReadAudit)
                    .counts(0, entries.len() as u64)
                    .detail("list"),
                now_ms(),
            )?;
            Ok(entries)
        })
        .await
    }

    /// Walks the audit chain up to its head as of the call, on a consistent view of the
    /// store, while new entries keep being appended: no caller waits for the walk.
    pub async fn verify_audit(&self, admin: Caller) -> Result<VerifyReport> {
        let state = self.state.clone();
        blocking(move || {
            state.flush_reads()?;
            let report = audit::verify(&state.store)?;
            state.record_read(
                AuditEvent::new((&admin).into(), AuditOp::ReadAudit)
                    .counts(report.n_checked, 0)
                    .detail("verify"),
                now_ms(),
            )?;
            Ok(report)
        })
        .await
    }

    pub async fn stats(&self, admin: Caller) -> Result<Stats> {
        let state = self.state.clone();
        blocking(move || {
            state.flush_reads()?;
            let stats = maintenance::stats(&state, now_ms())?;
            state.record_read(AuditEvent::new((&admin).into(), AuditOp::Stats), now_ms())?;
            Ok(stats)
        })
        .await
    }

    /// A consistent copy of the database in `dir` (on the server's file system), taken
    /// while the server keeps serving.
    pub async fn backup(&self, admin: Caller, dir: PathBuf) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            if dir.exists() {
                return Err(Error::AlreadyExists(format!("dir: {} already exists", dir.display())));
            }
            // Recorded first, so the copy holds the entry that describes it.
            state.record(
                AuditEvent::new((&admin).into(), AuditOp::Backup).detail(dir.display().to_string()),
                now_ms(),
            )?;
            // Under the writer lock: the copy never falls inside an import block (between
            // its commit and the ingestion of its summaries file, which the copy would lack).
            let _writer = state.writer()?;
            state.store.checkpoint(&dir).map_err(|err| {
                tracing::warn!(dir = %dir.display(), %err, "backup failed");
                Error::Internal(format!(
                    "backup to {} failed; the server log has the cause",
                    dir.display()
                ))
            })
        })
        .await
    }

    /// Commits the audit entries of read-only calls queued so far (the server does this
    /// every `READ_FLUSH_INTERVAL`).
    /// On a node of a replicated cluster: where the audit entries of reads go while
    /// another node leads.
    pub fn set_read_forwarder(&self, forwarder: Option<Arc<dyn ReadForwarder>>) {
        self.state.set_read_forwarder(forwarder);
    }

    /// On the leader: the audit entries of reads a follower answered, queued as this
    /// node's own (the reader named as this operator's registry knows it). Only
    /// read operations are taken.
    pub async fn record_forwarded_reads(&self, reads: Vec<ForwardedRead>) -> Result<()> {
        if reads.len() > MAX_PENDING_READS {
            return Err(Error::invalid(format!(
                "reads: {} in one call, at most {MAX_PENDING_READS}",
                reads.len()
            )));
        }
        let n_digests: usize = reads.iter().map(|read| read.digests.len()).sum();
        if n_digests > MAX_PENDING_READ_DIGESTS {
            return Err(Error::invalid(format!(
                "reads: {n_digests} digests in one call, at most {MAX_PENDING_READ_DIGESTS}"
            )));
        }
        let mut events = Vec::with_capacity(reads.len());
        for (at, read) in reads.into_iter().enumerate() {
            if read.detail.len() > MAX_FORWARDED_DETAIL {
                return Err(Error::invalid(format!(
                    "reads[{at}].detail: {} bytes, at most {MAX_FORWARDED_DETAIL}",
                    read.detail.len()
                )));
            }
            let by_admin = match read.op {
                AuditOp::Query | AuditOp::RangeQuery | AuditOp::ListHeld | AuditOp::Subscribe => false,
                AuditOp::ReadAudit | AuditOp::Stats => true,
                op => {
                    return Err(Error::invalid(format!(
                        "reads[{at}].op: {op}, expected query, range_query, list_held, subscribe, read_audit or stats"
                    )));
                }
            };
            let reader = self
                .state
                .registry
                .by_name(&read.actor)
                .ok_or_else(|| Error::invalid(format!("reads[{at}].actor: no principal '{}'", read.actor)))?;
            // An operator's read is an admin's: a node does not get to name a member as
            // having read the audit log.
            if by_admin && reader.role != Role::Admin {
                return Err(Error::invalid(format!(
                    "reads[{at}].actor: '{}' is a {}, and {} is an admin's read",
                    read.actor, reader.role, read.op
                )));
            }
            let event = AuditEvent::new(
                Actor {
                    id: Some(reader.id),
                    name: reader.name,
                },
                read.op,
            )
            .counts(read.n_items, read.n_changed)
            .detail(read.detail)
            .digests(read.digests);
            events.push((event, read.at_ms));
        }
        let state = self.state.clone();
        blocking(move || {
            for (event, at_ms) in events {
                state.record_read(event, at_ms)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn flush_reads(&self) -> Result<()> {
        if !self.state.has_queued_reads() {
            return Ok(());
        }
        let state = self.state.clone();
        blocking(move || state.flush_reads()).await
    }

    /// Purges expired flags and audit entries past retention. Run by the server's
    /// maintenance task.
    pub async fn sweep(&self, retention: Retention) -> Result<Sweep> {
        let state = self.state.clone();
        blocking(move || maintenance::sweep(&state, now_ms(), retention)).await
    }

    /// Compacts the whole database, so deleted rows leave the data files now (an
    /// operator's "erase now"); audited.
    /// Records that `admin` changed the cluster's membership (`detail` says how).
    pub async fn record_cluster_change(&self, admin: Caller, detail: String) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state
                .record(
                    AuditEvent::new((&admin).into(), AuditOp::ChangeCluster).detail(detail),
                    now_ms(),
                )
                .map(drop)
        })
        .await
    }

    pub async fn compact(&self, admin: Caller) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            state.record(AuditEvent::new((&admin).into(), AuditOp::Compact), now_ms())?;
            state.store.compact_all()?;
            Ok(())
        })
        .await
    }

    /// Where a stream resuming after `after` may start: fails with `OutOfRange` when
    /// `after` lies below the change horizon (tombstones it has not seen were deleted; 0,
    /// an empty reader, is always fine), else returns the horizon now, which each later
    /// chunk of the stream is checked against.
    pub async fn stream_start(&self, after: u64) -> Result<u64> {
        let state = self.state.clone();
        blocking(move || state.check_horizon(after, 0)).await
    }

    /// Fails unless `name` is well formed and free, so a certificate is not issued in vain.
    pub fn check_new_principal_name(&self, name: &str) -> Result<()> {
        principals::validate_principal_name(name)?;
        if self.state.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        Ok(())
    }

    /// (name, certificate expiry in ms) of every principal not removed whose certificate's
    /// expiry is known: for the metrics and the expiry warning.
    pub fn principal_certificates(&self) -> Vec<(String, i64)> {
        self.state
            .registry
            .list()
            .into_iter()
            .filter(|record| record.status != crate::model::PrincipalStatus::Removed && record.cert_not_after_ms > 0)
            .map(|record| (record.name, record.cert_not_after_ms))
            .collect()
    }

    /// The role of the principal named `name`, if there is one.
    pub fn principal_role(&self, name: &str) -> Option<Role> {
        self.state.registry.by_name(name).map(|record| record.role)
    }

    /// The id of a principal, for tests and tools that address one by name.
    pub fn principal_id(&self, name: &str) -> Option<PrincipalId> {
        self.state.registry.by_name(name).map(|record| record.id)
    }
}

#[cfg(test)]
pub(crate) mod tests;
