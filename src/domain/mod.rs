//! The rules of flagshare, over a `Store`. Never sees tonic or rocksdb types.
//!
//! Reads run concurrently; writes take one lock, so sequence numbers are handed out in
//! commit order and a read-modify-write of a digest's summary never races another.

pub mod audit;
pub mod federation;
pub mod feed;
pub mod flags;
pub mod maintenance;
pub mod principals;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, AuditOp, Category, Change, ChangeRecord, Distribution, FlagKey, FlagRecord, PrincipalId,
    PrincipalRecord, PrincipalStats, PrincipalStatus, RetractReason, Role, SummaryEntry,
};
use crate::store::{Batch, Durability, Store};
use crate::util::now_ms;

pub use audit::{Actor, AuditEvent, AuditFilter, Ledger, VerifyReport};
pub use federation::{ApplyOutcome, Event, EventOp, Federation, OutgoingBatch, PeerRecord};
pub use flags::{FlagSelector, Match, NewFlag};
pub use maintenance::{Stats, Sweep};
pub use principals::{Caller, Registry};

/// Rules an operator configures.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a flag matches when its member gave no expiry, per category.
    pub default_ttl_ms: HashMap<Category, i64>,
    /// Distribution of a flag whose member did not choose one.
    pub default_distribution: Distribution,
    /// This operator's name, shown to federation peers with its members' flags.
    pub operator_name: String,
}

/// Shortest and longest `RangeQuery` prefix, in bytes. Two bytes make 65,536 buckets, so
/// 10,000,000 digests put about 150 in each: the server learns a member checked one of
/// ~150. Three bytes (16.7 M buckets) answer with less but hide little at that size.
pub const MIN_RANGE_PREFIX: usize = 2;
pub const MAX_RANGE_PREFIX: usize = 3;

/// Two years: long enough to span a typical appeal and re-offending window, short enough
/// that a stale flag does not follow someone indefinitely.
pub const DEFAULT_TTL_MS: i64 = 2 * 365 * 24 * 60 * 60 * 1000;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_ttl_ms: Category::ALL
                .iter()
                .map(|category| (*category, DEFAULT_TTL_MS))
                .collect(),
            default_distribution: Distribution::Federated,
            operator_name: "flagshare".to_owned(),
        }
    }
}

impl Policy {
    fn default_expiry(&self, category: Category, now_ms: i64) -> i64 {
        let ttl = self.default_ttl_ms.get(&category).copied().unwrap_or(DEFAULT_TTL_MS);
        now_ms.saturating_add(ttl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub n_created: u32,
    pub n_updated: u32,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetractOutcome {
    pub n_retracted: u32,
    pub unmatched_indexes: Vec<u32>,
    pub sequence: u64,
}

/// Counters since the server started, for `admin stats`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub flags_expired_purged: AtomicU64,
    pub audit_entries_pruned: AtomicU64,
}

/// A principal with its activity counters, for `admin member list`.
#[derive(Debug, Clone)]
pub struct PrincipalView {
    pub record: PrincipalRecord,
    pub stats: PrincipalStats,
}

struct Inner {
    store: Store,
    registry: Registry,
    policy: Policy,
    /// Held for the whole read-modify-write of every change; guards the last sequence
    /// number handed out. Taken before `ledger` when both are needed.
    writer: Mutex<u64>,
    /// The audit chain's head; every audited commit goes through it.
    ledger: Mutex<Ledger>,
    metrics: Metrics,
    federation: Federation,
    /// Digests with dispute rows; the query path scans `disputes` only for these.
    disputed: RwLock<HashSet<Digest>>,
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
    inner: Arc<Inner>,
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}

impl Domain {
    pub fn open(store: Store, policy: Policy) -> Result<Domain> {
        let registry = Registry::new(store.load_principals()?);
        let last_sequence = store.last_sequence()?;
        let ledger = Ledger::load(&store)?;
        let disputed = RwLock::new(store.disputed_digests()?.into_iter().collect());
        let foreign_members = store.load_foreign_members()?;
        for member in &foreign_members {
            registry.set_foreign_name(member.id, member.display.clone());
        }
        let federation = Federation::new(
            store.meta_secret(crate::store::keys::OPERATOR_ID_KEY)?,
            policy.operator_name.clone(),
            store.meta_secret(crate::store::keys::PSEUDONYM_KEY_KEY)?,
            foreign_members,
        );
        Ok(Domain {
            inner: Arc::new(Inner {
                store,
                registry,
                policy,
                writer: Mutex::new(last_sequence),
                ledger: Mutex::new(ledger),
                metrics: Metrics::default(),
                federation,
                disputed,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn federation(&self) -> &Federation {
        &self.inner.federation
    }

    /// The change log after `after` as `caller` (a peer) may see it. A peer without a
    /// configured policy gets the default: every category, no passing on, pseudonyms only.
    pub async fn outgoing(&self, caller: Caller, after: u64, max: usize) -> Result<OutgoingBatch> {
        self.authorize_id(caller.id)?;
        let inner = self.inner.clone();
        blocking(move || {
            let policy = inner
                .peer(&caller.name)?
                .unwrap_or_else(|| PeerRecord::policy_only(&caller.name));
            federation::outgoing(&inner, &policy, after, max)
        })
        .await
    }

    /// Records that `caller` started pulling from `after`.
    pub async fn record_pull(&self, caller: Caller, after: u64) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            inner
                .record(AuditEvent::new((&caller).into(), AuditOp::FederationPull).detail(format!("from {after}")))
                .map(drop)
        })
        .await
    }

    pub async fn apply_federated(
        &self,
        peer: String,
        events: Vec<std::result::Result<Event, String>>,
        cursor: u64,
    ) -> Result<ApplyOutcome> {
        let inner = self.inner.clone();
        blocking(move || federation::apply(&inner, &peer, events, cursor, now_ms())).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerRecord>> {
        let inner = self.inner.clone();
        blocking(move || inner.peers()).await
    }

    pub async fn peer(&self, name: String) -> Result<Option<PeerRecord>> {
        let inner = self.inner.clone();
        blocking(move || inner.peer(&name)).await
    }

    /// Adds or reconfigures a peer; the cursor of an existing peer is kept.
    pub async fn configure_peer(&self, admin: Caller, mut record: PeerRecord) -> Result<PeerRecord> {
        let inner = self.inner.clone();
        blocking(move || {
            principals::validate_principal_name(&record.name)?;
            let _writer = inner.writer();
            if let Some(existing) = inner.peer(&record.name)? {
                record.cursor = existing.cursor;
                record.last_sync_ms = existing.last_sync_ms;
            }
            let mut batch = inner.store.batch();
            batch.put_peer(&record.name, &federation::encode_peer(&record));
            let categories: Vec<&str> = record.categories.iter().map(|c| c.as_str()).collect();
            let event = AuditEvent::new((&admin).into(), AuditOp::ConfigurePeer).detail(format!(
                "{}: endpoint '{}', paused {}, categories [{}], pass_on {}, reveal_names {}",
                record.name,
                record.endpoint,
                record.paused,
                categories.join(","),
                record.pass_on,
                record.reveal_names
            ));
            inner.commit_audited(batch, event, now_ms())?;
            Ok(record)
        })
        .await
    }

    pub async fn remove_peer(&self, admin: Caller, name: String) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let _writer = inner.writer();
            if inner.peer(&name)?.is_none() {
                return Err(Error::NotFound(format!("name: no peer named '{name}'")));
            }
            let mut batch = inner.store.batch();
            batch.delete_peer(&name);
            let event = AuditEvent::new((&admin).into(), AuditOp::ConfigurePeer).detail(format!("{name}: removed"));
            inner.commit_audited(batch, event, now_ms()).map(drop)
        })
        .await
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Maps a client certificate to a caller allowed to act in one of `roles`.
    pub fn authorize(&self, cert_sha256: &[u8; 32], roles: &[Role]) -> Result<Caller> {
        let caller = self.inner.registry.authenticate(cert_sha256)?;
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

    /// Fails unless the principal with `id` is still registered and active (for
    /// long-lived streams, checked per message).
    pub fn authorize_id(&self, id: PrincipalId) -> Result<()> {
        if self.inner.registry.is_active(id) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "principal '{}' is no longer active",
                self.inner.registry.name_of(id)
            )))
        }
    }

    pub async fn submit(&self, caller: Caller, new_flags: Vec<NewFlag>, key_id: u32) -> Result<SubmitOutcome> {
        let now = now_ms();
        flags::validate_new_flags(&new_flags, now)?;
        let inner = self.inner.clone();
        blocking(move || inner.submit(&caller, &new_flags, key_id, now)).await
    }

    pub async fn query(&self, caller: Caller, digests: Vec<Digest>) -> Result<Vec<Match>> {
        flags::check_batch_len("digests", digests.len())?;
        let inner = self.inner.clone();
        blocking(move || inner.query(&caller, &digests, now_ms())).await
    }

    /// The feed's snapshot, in batches given to `emit` (run off the async runtime); returns
    /// the sequence number live changes continue from.
    pub async fn feed_snapshot(
        &self,
        caller: Caller,
        emit: impl FnMut(Vec<feed::FeedItem>) -> bool + Send + 'static,
    ) -> Result<u64> {
        let inner = self.inner.clone();
        blocking(move || feed::snapshot(&inner, &caller, emit)).await
    }

    /// Changes after `after` with their digests' current matches, the sequence covered,
    /// and the newest sequence.
    pub async fn feed_changes(&self, caller: Caller, after: u64) -> Result<(Vec<feed::FeedItem>, u64, u64)> {
        self.authorize_id(caller.id)?;
        let inner = self.inner.clone();
        blocking(move || feed::changes(&inner, &caller, after)).await
    }

    /// Records a subscription that resumes from a cursor.
    pub async fn record_subscribe(&self, caller: Caller, cursor: String) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            inner
                .record(AuditEvent::new((&caller).into(), AuditOp::Subscribe).detail(format!("from {cursor}")))
                .map(drop)
        })
        .await
    }

    /// Every live match whose digest starts with `prefix` (2 or 3 bytes).
    pub async fn range_query(&self, caller: Caller, prefix: Vec<u8>) -> Result<Vec<Match>> {
        let inner = self.inner.clone();
        blocking(move || inner.range_query(&caller, &prefix, now_ms())).await
    }

    pub async fn retract(
        &self,
        caller: Caller,
        selectors: Vec<FlagSelector>,
        reason: RetractReason,
    ) -> Result<RetractOutcome> {
        flags::check_batch_len("flags", selectors.len())?;
        let inner = self.inner.clone();
        blocking(move || inner.retract(&caller, &selectors, reason, now_ms())).await
    }

    /// Registers a new principal authenticated by the certificate with `cert_sha256`.
    pub async fn add_principal(
        &self,
        admin: Actor,
        name: String,
        role: Role,
        cert_sha256: [u8; 32],
    ) -> Result<PrincipalRecord> {
        let inner = self.inner.clone();
        blocking(move || inner.add_principal(&admin, &name, role, cert_sha256)).await
    }

    /// Suspends, reinstates or removes a principal; with `withdraw_flags`, its flags stop
    /// matching in the same commit (they are retracted with reason `withdrawn`).
    pub async fn set_principal_status(
        &self,
        admin: Caller,
        name: String,
        status: PrincipalStatus,
        withdraw_flags: bool,
    ) -> Result<(PrincipalRecord, u32)> {
        let inner = self.inner.clone();
        blocking(move || inner.set_principal_status(&admin, &name, status, withdraw_flags)).await
    }

    /// Replaces a principal's certificate; the old one is refused from the next call on.
    pub async fn rotate_certificate(
        &self,
        admin: Caller,
        name: String,
        cert_sha256: [u8; 32],
    ) -> Result<PrincipalRecord> {
        let inner = self.inner.clone();
        blocking(move || inner.rotate_certificate(&admin, &name, cert_sha256)).await
    }

    /// Records that `caller` disputes `flagged_by`'s flags on `digest`.
    pub async fn dispute(&self, caller: Caller, digest: Digest, flagged_by: String, note: String) -> Result<u32> {
        let inner = self.inner.clone();
        blocking(move || inner.dispute(&caller, digest, &flagged_by, &note)).await
    }

    pub async fn list_principals(&self, admin: Caller) -> Result<Vec<PrincipalView>> {
        let inner = self.inner.clone();
        blocking(move || {
            let records = inner.registry.list();
            inner.record(AuditEvent::new((&admin).into(), AuditOp::ListPrincipals).counts(0, records.len() as u64))?;
            let ledger = inner.ledger();
            Ok(records
                .into_iter()
                .map(|record| PrincipalView {
                    stats: ledger.stats_of(record.id),
                    record,
                })
                .collect())
        })
        .await
    }

    pub async fn list_audit(&self, admin: Caller, filter: AuditFilter) -> Result<Vec<AuditEntry>> {
        let inner = self.inner.clone();
        blocking(move || {
            let entries = audit::list(&inner.store, &filter)?;
            inner.record(
                AuditEvent::new((&admin).into(), AuditOp::ReadAudit)
                    .counts(0, entries.len() as u64)
                    .detail("list"),
            )?;
            Ok(entries)
        })
        .await
    }

    pub async fn verify_audit(&self, admin: Caller) -> Result<VerifyReport> {
        let inner = self.inner.clone();
        blocking(move || {
            // Under the ledger lock: no entry is appended while the chain is walked.
            let report = {
                let _ledger = inner.ledger();
                audit::verify(&inner.store)?
            };
            inner.record(
                AuditEvent::new((&admin).into(), AuditOp::ReadAudit)
                    .counts(report.n_checked, 0)
                    .detail("verify"),
            )?;
            Ok(report)
        })
        .await
    }

    pub async fn stats(&self, admin: Caller) -> Result<Stats> {
        let inner = self.inner.clone();
        blocking(move || {
            let stats = maintenance::stats(&inner, now_ms())?;
            inner.record(AuditEvent::new((&admin).into(), AuditOp::Stats))?;
            Ok(stats)
        })
        .await
    }

    /// A consistent copy of the database in `dir` (on the server's file system), taken
    /// while the server keeps serving.
    pub async fn backup(&self, admin: Caller, dir: PathBuf) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            if dir.exists() {
                return Err(Error::AlreadyExists(format!("dir: {} already exists", dir.display())));
            }
            // Recorded first, so the copy holds the entry that describes it.
            inner.record(AuditEvent::new((&admin).into(), AuditOp::Backup).detail(dir.display().to_string()))?;
            inner.store.checkpoint(&dir).map_err(|err| {
                tracing::warn!(dir = %dir.display(), %err, "backup failed");
                Error::Internal(format!(
                    "backup to {} failed; the server log has the cause",
                    dir.display()
                ))
            })
        })
        .await
    }

    /// Purges expired flags and audit entries past retention. Run by the server's
    /// maintenance task.
    pub async fn sweep(&self, audit_retention_ms: i64) -> Result<Sweep> {
        let inner = self.inner.clone();
        blocking(move || maintenance::sweep(&inner, now_ms(), audit_retention_ms)).await
    }

    /// Fails unless `name` is well formed and free, so a certificate is not issued in vain.
    pub fn check_new_principal_name(&self, name: &str) -> Result<()> {
        principals::validate_principal_name(name)?;
        if self.inner.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        Ok(())
    }
}

impl Inner {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock poisoned")
    }

    fn writer(&self) -> MutexGuard<'_, u64> {
        self.writer.lock().expect("writer lock poisoned")
    }

    /// Commits `batch` together with the audit entry of `event`.
    fn commit_audited(&self, batch: Batch<'_>, event: AuditEvent, now: i64) -> Result<u64> {
        self.ledger()
            .commit(&self.store, batch, event, now, Durability::Configured)
    }

    /// Records a call that changes nothing else.
    fn record(&self, event: AuditEvent) -> Result<u64> {
        self.commit_audited(self.store.batch(), event, now_ms())
    }

    fn submit(&self, caller: &Caller, new_flags: &[NewFlag], key_id: u32, now: i64) -> Result<SubmitOutcome> {
        let flag_keys: Vec<FlagKey> = new_flags
            .iter()
            .map(|flag| FlagKey {
                digest: flag.digest,
                member: caller.id,
                kind: flag.kind,
                category: flag.category,
            })
            .collect();
        let mut sorted_keys = flag_keys.clone();
        sorted_keys.sort_unstable();
        sorted_keys.dedup();
        let mut digests: Vec<Digest> = sorted_keys.iter().map(|key| key.digest).collect();
        digests.dedup();

        let mut last_sequence = self.writer();
        // Everything below walks keys in order beside these sorted vectors, with cursors
        // instead of maps: hashing 32-byte keys was a tenth of a bulk load.
        let mut summaries: Vec<Vec<SummaryEntry>> = self
            .store
            .get_summaries(&digests)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        let mut stored = self
            .stored_records(&sorted_keys, &digests, &summaries)?
            .into_iter()
            .peekable();

        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let (mut n_created, mut n_updated) = (0, 0);
        // Key order, not submission order: RocksDB's memtable inserts a sorted run of keys
        // from where the previous one went, instead of searching its skip list afresh
        // (that search was half the server's time in a bulk load). The sort is stable, so
        // a key given twice still ends with its later submission.
        let mut order: Vec<usize> = (0..flag_keys.len()).collect();
        order.sort_by_key(|index| flag_keys[*index]);
        let (mut k, mut d) = (0, 0);
        let mut previous: Option<(FlagKey, FlagRecord)> = None;
        for (key, new_flag) in order.iter().map(|index| (&flag_keys[*index], &new_flags[*index])) {
            let existing = match previous.take() {
                // The same key again in this batch: merge with what it just became.
                Some((previous_key, record)) if previous_key == *key => Some(record),
                _ => {
                    while sorted_keys[k] != *key {
                        k += 1;
                    }
                    stored.next_if(|(at, _)| *at == k).map(|(_, record)| record)
                }
            };
            while digests[d] != key.digest {
                d += 1;
            }
            if existing.is_some() {
                n_updated += 1;
            } else {
                n_created += 1;
            }
            let record = flags::merge_flag(
                existing.as_ref(),
                new_flag,
                key_id,
                self.policy.default_expiry(key.category, now),
                self.policy.default_distribution,
                now,
            );
            stage_upsert(&mut batch, &mut sequence, &mut summaries[d], key, &record, now);
            previous = Some((*key, record));
        }
        for (digest, entries) in digests.iter().zip(&summaries) {
            batch.put_summary(digest, entries);
        }
        // The flags themselves say who flagged what; the entry counts them.
        let event = AuditEvent::new(caller.into(), AuditOp::Submit)
            .counts(new_flags.len() as u64, u64::from(n_created + n_updated))
            .detail(format!("{n_created} created, {n_updated} updated"));
        self.commit_audited(batch, event, now)?;
        *last_sequence = sequence;
        Ok(SubmitOutcome {
            n_created,
            n_updated,
            sequence,
        })
    }

    /// The stored records of those of `sorted_keys` that are already flagged, as
    /// (position in `sorted_keys`, record) in key order. `summaries` are those of the sorted
    /// `digests`; only keys found there are read, so a batch of new flags reads nothing.
    fn stored_records(
        &self,
        sorted_keys: &[FlagKey],
        digests: &[Digest],
        summaries: &[Vec<SummaryEntry>],
    ) -> Result<Vec<(usize, FlagRecord)>> {
        let mut wanted: Vec<(u64, usize)> = Vec::new();
        let mut d = 0;
        for (k, key) in sorted_keys.iter().enumerate() {
            while digests[d] != key.digest {
                d += 1;
            }
            if let Some(entry) = summaries[d].iter().find(|entry| entry.same_flag(key)) {
                wanted.push((entry.sequence, k));
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // Sequence order lets RocksDB batch the reads block by block.
        wanted.sort_unstable();
        let sequences: Vec<u64> = wanted.iter().map(|(sequence, _)| *sequence).collect();
        let mut stored = Vec::with_capacity(wanted.len());
        for ((_, k), record) in wanted.iter().zip(self.store.get_flag_records(&sequences)?) {
            let record = record.ok_or_else(|| {
                Error::Internal(format!("the record of stored flag {:?} is missing", sorted_keys[*k]))
            })?;
            stored.push((*k, record));
        }
        stored.sort_unstable_by_key(|(k, _)| *k);
        Ok(stored)
    }

    fn read_summaries(&self, sorted_digests: &[Digest]) -> Result<HashMap<Digest, Vec<SummaryEntry>>> {
        Ok(sorted_digests
            .iter()
            .copied()
            .zip(self.store.get_summaries(sorted_digests)?)
            .map(|(digest, entries)| (digest, entries.unwrap_or_default()))
            .collect())
    }

    fn query(&self, caller: &Caller, digests: &[Digest], now: i64) -> Result<Vec<Match>> {
        // Sorted input lets RocksDB batch the reads block by block.
        let mut order: Vec<u32> = (0..digests.len() as u32).collect();
        order.sort_unstable_by_key(|index| digests[*index as usize]);
        let sorted: Vec<Digest> = order.iter().map(|index| digests[*index as usize]).collect();
        let summaries = self.store.get_summaries(&sorted)?;
        let mut matches = Vec::new();
        for (index, entries) in order.iter().zip(summaries) {
            let Some(entries) = entries else { continue };
            if let Some(found) = self.match_of(caller, *index, digests[*index as usize], &entries, now)? {
                matches.push(found);
            }
        }
        matches.sort_unstable_by_key(|found| found.index);
        let mut matched: Vec<Digest> = matches.iter().map(|found| found.digest).collect();
        matched.sort_unstable();
        matched.dedup();
        let event = AuditEvent::new(caller.into(), AuditOp::Query)
            .counts(digests.len() as u64, matches.len() as u64)
            .digests(matched);
        self.ledger()
            .commit(&self.store, self.store.batch(), event, now, Durability::Buffered)?;
        Ok(matches)
    }

    /// What `caller` is told about a digest with these stored flags; `None` when none is live.
    fn match_of(
        &self,
        caller: &Caller,
        index: u32,
        digest: Digest,
        entries: &[SummaryEntry],
        now: i64,
    ) -> Result<Option<Match>> {
        let Some(mut found) = flags::aggregate(index, digest, entries, caller.id, now, |id| self.registry.name_of(id))
        else {
            return Ok(None);
        };
        // Disputes are rare: only a digest known to have some is scanned for them.
        if !self.disputed.read().expect("disputed lock poisoned").contains(&digest) {
            return Ok(Some(found));
        }
        let live: BTreeSet<PrincipalId> = entries
            .iter()
            .filter(|entry| entry.expires_at_ms > now)
            .map(|entry| entry.member)
            .collect();
        found.n_disputes = self
            .store
            .disputes_of(&digest)?
            .iter()
            .filter(|(flagged_by, _)| live.contains(flagged_by))
            .count() as u32;
        Ok(Some(found))
    }

    fn range_query(&self, caller: &Caller, prefix: &[u8], now: i64) -> Result<Vec<Match>> {
        if !(MIN_RANGE_PREFIX..=MAX_RANGE_PREFIX).contains(&prefix.len()) {
            return Err(Error::invalid(format!(
                "prefix: {} bytes, expected {MIN_RANGE_PREFIX} to {MAX_RANGE_PREFIX}",
                prefix.len()
            )));
        }
        let mut matches = Vec::new();
        for (digest, entries) in self.store.summaries_with_prefix(prefix)? {
            if let Some(found) = self.match_of(caller, 0, digest, &entries, now)? {
                matches.push(found);
            }
        }
        // The prefix is all the server learns; the entry says how big the answer was.
        let event = AuditEvent::new(caller.into(), AuditOp::RangeQuery)
            .counts(1, matches.len() as u64)
            .detail(format!("prefix {}", hex::encode(prefix)));
        self.ledger()
            .commit(&self.store, self.store.batch(), event, now, Durability::Buffered)?;
        Ok(matches)
    }

    fn retract(
        &self,
        caller: &Caller,
        selectors: &[FlagSelector],
        reason: RetractReason,
        now: i64,
    ) -> Result<RetractOutcome> {
        let mut digests: Vec<Digest> = selectors.iter().map(|selector| selector.digest).collect();
        digests.sort_unstable();
        digests.dedup();

        let mut last_sequence = self.writer();
        let mut summaries = self.read_summaries(&digests)?;

        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let mut unmatched_indexes = Vec::new();
        let mut retracted_digests = BTreeSet::new();
        let mut n_retracted = 0;
        for (index, selector) in selectors.iter().enumerate() {
            let entries = summaries.get_mut(&selector.digest).expect("every digest was read");
            let (selected, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) = entries
                .iter()
                .copied()
                .partition(|entry| selector.selects(caller.id, entry));
            if selected.is_empty() {
                unmatched_indexes.push(index as u32);
                continue;
            }
            *entries = kept;
            retracted_digests.insert(selector.digest);
            for entry in selected {
                stage_removal(
                    &mut batch,
                    &mut sequence,
                    selector.digest,
                    &entry,
                    Change::Retract(reason),
                    0,
                    now,
                );
                n_retracted += 1;
            }
        }
        for digest in &retracted_digests {
            batch.put_summary(digest, &summaries[digest]);
        }
        let event = AuditEvent::new(caller.into(), AuditOp::Retract)
            .counts(selectors.len() as u64, u64::from(n_retracted))
            .detail(format!("reason {reason}"))
            .digests(retracted_digests.into_iter().collect());
        self.commit_audited(batch, event, now)?;
        *last_sequence = sequence;
        Ok(RetractOutcome {
            n_retracted,
            unmatched_indexes,
            sequence: *last_sequence,
        })
    }

    fn dispute(&self, caller: &Caller, digest: Digest, flagged_by: &str, note: &str) -> Result<u32> {
        if note.len() > flags::MAX_REFERENCE_LEN {
            return Err(Error::invalid(format!(
                "note: {} bytes is over the limit of {}",
                note.len(),
                flags::MAX_REFERENCE_LEN
            )));
        }
        let target = self
            .registry
            .by_name(flagged_by)
            .ok_or_else(|| Error::NotFound(format!("member: no principal named '{flagged_by}'")))?;
        if target.id == caller.id {
            return Err(Error::invalid(
                "member: a member cannot dispute its own flags; retract them instead",
            ));
        }
        let now = now_ms();
        let _writer = self.writer();
        let entries = self.store.get_summaries(&[digest])?.pop().flatten().unwrap_or_default();
        let n_flags = entries
            .iter()
            .filter(|entry| entry.member == target.id && entry.expires_at_ms > now)
            .count() as u32;
        if n_flags == 0 {
            return Err(Error::NotFound(format!(
                "digest: '{flagged_by}' has no live flag on {}",
                hex::encode(digest)
            )));
        }
        let mut batch = self.store.batch();
        batch.put_dispute(&digest, target.id, caller.id, now);
        let mut detail = format!("disputes flags of {flagged_by}");
        if !note.is_empty() {
            detail.push_str(": ");
            detail.push_str(note);
        }
        let event = AuditEvent::new(caller.into(), AuditOp::Dispute)
            .counts(1, u64::from(n_flags))
            .detail(detail)
            .digests(vec![digest]);
        self.commit_audited(batch, event, now)?;
        self.disputed.write().expect("disputed lock poisoned").insert(digest);
        Ok(n_flags)
    }

    fn add_principal(&self, admin: &Actor, name: &str, role: Role, cert_sha256: [u8; 32]) -> Result<PrincipalRecord> {
        principals::validate_principal_name(name)?;
        let _writer = self.writer();
        if self.registry.by_name(name).is_some() {
            return Err(Error::AlreadyExists(format!("name: a principal named '{name}' exists")));
        }
        if self.registry.contains_fingerprint(&cert_sha256) {
            return Err(Error::AlreadyExists(
                "certificate: already registered to another principal".to_owned(),
            ));
        }
        let now = now_ms();
        let record = PrincipalRecord {
            id: self.registry.next_id(),
            name: name.to_owned(),
            role,
            status: PrincipalStatus::Active,
            created_at_ms: now,
            cert_sha256,
        };
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let event = AuditEvent::new(admin.clone(), AuditOp::AddPrincipal)
            .counts(1, 1)
            .detail(format!("{name} as {role}"));
        self.commit_audited(batch, event, now)?;
        self.registry.upsert(record.clone());
        Ok(record)
    }

    fn set_principal_status(
        &self,
        admin: &Caller,
        name: &str,
        status: PrincipalStatus,
        withdraw_flags: bool,
    ) -> Result<(PrincipalRecord, u32)> {
        if name == admin.name {
            return Err(Error::FailedPrecondition(
                "name: an admin cannot change its own status (it would lock itself out)".to_owned(),
            ));
        }
        if withdraw_flags && status == PrincipalStatus::Active {
            return Err(Error::invalid(
                "withdraw_flags: only a suspension or a removal withdraws flags",
            ));
        }
        let mut last_sequence = self.writer();
        let mut record = self
            .registry
            .by_name(name)
            .ok_or_else(|| Error::NotFound(format!("name: no principal named '{name}'")))?;
        if record.status == PrincipalStatus::Removed {
            return Err(Error::FailedPrecondition(format!(
                "name: '{name}' was removed; add the platform again under a new name"
            )));
        }
        let now = now_ms();
        record.status = status;
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let mut sequence = *last_sequence;
        let n_withdrawn = if withdraw_flags {
            self.stage_withdrawal(&mut batch, &mut sequence, record.id, now)?
        } else {
            0
        };
        let op = if status == PrincipalStatus::Removed {
            AuditOp::RemovePrincipal
        } else {
            AuditOp::SetPrincipalStatus
        };
        let event = AuditEvent::new(admin.into(), op)
            .counts(1, u64::from(n_withdrawn))
            .detail(format!("{name} is now {status}; {n_withdrawn} flag(s) withdrawn"));
        self.commit_audited(batch, event, now)?;
        *last_sequence = sequence;
        self.registry.upsert(record.clone());
        Ok((record, n_withdrawn))
    }

    /// Stages the retraction (reason `withdrawn`) of every flag of `member`.
    fn stage_withdrawal(
        &self,
        batch: &mut Batch<'_>,
        sequence: &mut u64,
        member: PrincipalId,
        now: i64,
    ) -> Result<u32> {
        let keys = self.store.flag_keys_of_member(member)?;
        let mut digests: Vec<Digest> = keys.iter().map(|key| key.digest).collect();
        digests.dedup();
        let mut n_withdrawn = 0;
        for (digest, mut entries) in self.read_summaries(&digests)? {
            let (withdrawn, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) =
                entries.drain(..).partition(|entry| entry.member == member);
            for entry in &withdrawn {
                stage_removal(
                    batch,
                    sequence,
                    digest,
                    entry,
                    Change::Retract(RetractReason::Withdrawn),
                    0,
                    now,
                );
                n_withdrawn += 1;
            }
            batch.put_summary(&digest, &kept);
        }
        Ok(n_withdrawn)
    }

    fn rotate_certificate(&self, admin: &Caller, name: &str, cert_sha256: [u8; 32]) -> Result<PrincipalRecord> {
        let _writer = self.writer();
        let mut record = self
            .registry
            .by_name(name)
            .ok_or_else(|| Error::NotFound(format!("name: no principal named '{name}'")))?;
        if record.status == PrincipalStatus::Removed {
            return Err(Error::FailedPrecondition(format!("name: '{name}' was removed")));
        }
        if self.registry.contains_fingerprint(&cert_sha256) {
            return Err(Error::AlreadyExists(
                "certificate: already registered to a principal".to_owned(),
            ));
        }
        let old = record.cert_sha256;
        record.cert_sha256 = cert_sha256;
        let mut batch = self.store.batch();
        batch.put_principal(&record);
        let event = AuditEvent::new(admin.into(), AuditOp::RotateCertificate)
            .counts(1, 1)
            .detail(format!(
                "{name}: certificate {} replaced by {}",
                hex::encode(old),
                hex::encode(cert_sha256)
            ));
        self.commit_audited(batch, event, now_ms())?;
        self.registry.upsert(record.clone());
        Ok(record)
    }
}

/// Stages a new or updated flag: a change-log upsert holding its full record, and its
/// entry in the digest's summary (written by the caller once per digest) naming that upsert.
fn stage_upsert(
    batch: &mut Batch<'_>,
    sequence: &mut u64,
    summary: &mut Vec<SummaryEntry>,
    key: &FlagKey,
    record: &FlagRecord,
    now: i64,
) {
    *sequence += 1;
    flags::upsert_summary_entry(summary, key, record, *sequence);
    batch.put_change(
        *sequence,
        &ChangeRecord {
            at_ms: now,
            key: *key,
            change: Change::Upsert(record.clone()),
            distribution: record.distribution,
            origin_sequence: record.origin_sequence,
        },
    );
}

/// Stages the removal of one flag (the caller drops its summary entry): the change log
/// says why.
/// `origin_sequence` is the flag's version at its origin (0 for a local flag).
fn stage_removal(
    batch: &mut Batch<'_>,
    sequence: &mut u64,
    digest: Digest,
    entry: &SummaryEntry,
    change: Change,
    origin_sequence: u64,
    now: i64,
) {
    let key = FlagKey {
        digest,
        member: entry.member,
        kind: entry.kind,
        category: entry.category,
    };
    *sequence += 1;
    batch.put_change(
        *sequence,
        &ChangeRecord {
            at_ms: now,
            key,
            change,
            distribution: entry.distribution,
            origin_sequence,
        },
    );
}
