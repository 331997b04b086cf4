//! Work the server does on its own: purging expired flags, pruning audit entries past
//! retention, and the figures of `admin stats`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::audit::{Actor, AuditEvent};
use super::state::{Removal, State};
use crate::digest::{Digest, Kind};
use crate::error::Result;
use crate::model::{AuditOp, Category, Change, PrincipalStatus, Role, SummaryEntry, is_foreign};

/// Digests rewritten per commit while purging, so the writer lock is never held long.
const PURGE_CHUNK: usize = 1_000;

/// Deletes the members of other operators that no stored flag and no change-log row
/// names any more (their flags were removed and the tombstones are gone), so a peer's
/// departed members leave, and free their places under the per-origin bound. A full scan
/// of flags and change log: the maintenance task runs it once a day.
pub(super) fn forget_orphaned_members(state: &State, now: i64) -> Result<u64> {
    let scan = state.federation.begin_orphan_scan();
    let referenced = state.store.referenced_members()?;
    let _writer = state.writer()?;
    let orphans = state.federation.forget_orphans(&referenced, scan);
    if orphans.is_empty() {
        return Ok(0);
    }
    let mut batch = state.store.batch();
    for id in &orphans {
        batch.delete_foreign_member(*id);
    }
    let event = AuditEvent::new(Actor::system(), AuditOp::ForgetMembers)
        .counts(orphans.len() as u64, orphans.len() as u64)
        .detail("members of other operators no flag or tombstone names any more");
    state.commit_audited(batch, event, now)?;
    for id in &orphans {
        state.registry.forget_foreign_name(*id);
    }
    Ok(orphans.len() as u64)
}

/// Change-log rows read per commit while deleting old tombstones.
const TOMBSTONE_CHUNK: usize = 1_000;

/// How long things are kept, for one maintenance pass.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub audit_ms: i64,
    /// How long the thin tombstone of a removed flag stays in the change log, so mirrors
    /// and peers that were away learn of the removal; a cursor older than that re-snapshots.
    pub tombstone_ms: i64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub flags_purged: u64,
    pub audit_entries_pruned: u64,
    pub tombstones_deleted: u64,
    pub members_forgotten: u64,
}

/// How often the maintenance task looks for orphaned members of other operators (a full
/// scan of flags and change log).
const ORPHAN_SCAN_INTERVAL_MS: i64 = 24 * 60 * 60 * 1000;

pub(super) fn sweep(state: &State, now: i64, retention: Retention) -> Result<Sweep> {
    let flags_purged = purge_expired(state, now)?;
    let tombstones_deleted = delete_old_tombstones(state, now.saturating_sub(retention.tombstone_ms))?;
    let last_orphan_scan = state.metrics.last_orphan_scan_ms.load(Ordering::Relaxed);
    let members_forgotten = if now.saturating_sub(last_orphan_scan) >= ORPHAN_SCAN_INTERVAL_MS {
        state.metrics.last_orphan_scan_ms.store(now, Ordering::Relaxed);
        forget_orphaned_members(state, now)?
    } else {
        0
    };
    let audit_retention_ms = retention.audit_ms;
    let audit_entries_pruned = state
        .ledger()
        .prune(&state.store, now.saturating_sub(audit_retention_ms), now)?;
    state
        .metrics
        .flags_expired_purged
        .fetch_add(flags_purged, Ordering::Relaxed);
    state
        .metrics
        .audit_entries_pruned
        .fetch_add(audit_entries_pruned, Ordering::Relaxed);
    Ok(Sweep {
        flags_purged,
        audit_entries_pruned,
        tombstones_deleted,
        members_forgotten,
    })
}

/// Deletes the tombstones (retractions, expiries, disputes) committed before `cutoff_ms`,
/// with the version rows of the foreign flags they ended, and moves the change horizon past
/// them: a cursor below the horizon is refused, as what it missed is gone. Live flags'
/// upserts stay. Deleting the newest row records the sequence floor, so sequences never go
/// back.
pub(super) fn delete_old_tombstones(state: &State, cutoff_ms: i64) -> Result<u64> {
    let mut n_deleted = 0u64;
    let start = state.store.change_horizon()?;
    let mut horizon = start;
    loop {
        let last_sequence = state.writer()?;
        let changes = state.store.changes_after(horizon, TOMBSTONE_CHUNK)?;
        let mut batch = state.store.batch();
        let mut reached = horizon;
        let mut n_chunk = 0u64;
        let mut done = changes.len() < TOMBSTONE_CHUNK;
        for (sequence, change) in &changes {
            if change.at_ms >= cutoff_ms || *sequence > *last_sequence {
                done = true;
                break;
            }
            reached = *sequence;
            match change.change {
                Change::Upsert(_) => {}
                Change::Retract(_) | Change::Expire | Change::Dispute => {
                    batch.delete_change(*sequence);
                    n_chunk += 1;
                    if is_foreign(change.key.member) && change.origin_sequence > 0 {
                        let version = state.store.get_flag_versions(&[change.key])?.pop().flatten();
                        let live = state
                            .store
                            .get_summaries(&[change.key.digest])?
                            .pop()
                            .flatten()
                            .is_some_and(|entries| entries.iter().any(|entry| entry.same_flag(&change.key)));
                        if version == Some(change.origin_sequence) && !live {
                            batch.delete_flag_version(&change.key);
                        }
                    }
                }
            }
        }
        if reached > horizon {
            if reached == *last_sequence {
                batch.put_sequence_floor(reached);
            }
            batch.put_change_horizon(reached);
            state.store.commit(batch)?;
            horizon = reached;
            n_deleted += n_chunk;
        }
        drop(last_sequence);
        if done {
            break;
        }
    }
    if horizon > start {
        state.store.compact_changes(start, horizon);
        if n_deleted > 0 {
            tracing::info!(n_deleted, horizon, "deleted tombstones past their retention");
        }
    }
    Ok(n_deleted)
}

/// Deletes every flag whose expiry has passed (queries already ignore them), writing an
/// `Expire` change per flag so feeds and peers learn of it.
fn purge_expired(state: &State, now: i64) -> Result<u64> {
    // Find candidates without the lock; each chunk is re-read under it.
    let mut candidates: Vec<Digest> = Vec::new();
    for item in state.store.all_summaries() {
        let (digest, entries) = item?;
        if entries.iter().any(|entry| entry.expires_at_ms <= now) {
            candidates.push(digest);
        }
    }
    let n_purged = state.remove_where(
        &candidates,
        PURGE_CHUNK,
        |entry| entry.expires_at_ms <= now,
        |entry| {
            Ok(Removal {
                change: Change::Expire,
                origin_sequence: entry_origin_sequence(state, entry)?,
                signature: None,
            })
        },
        false,
        |n| AuditEvent::new(Actor::system(), AuditOp::PurgeExpired).counts(n, n),
        now,
    )?;
    if n_purged > 0 {
        tracing::info!(n_purged, "purged expired flags");
    }
    Ok(n_purged)
}

/// The figures of `admin stats`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Digests with at least one live flag.
    pub n_digests: u64,
    pub n_active_flags: u64,
    /// Flags past expiry that the next sweep purges.
    pub n_expired_flags: u64,
    pub active_by_kind: BTreeMap<Kind, u64>,
    pub active_by_category: BTreeMap<Category, u64>,
    /// Active principals per role.
    pub principals_by_role: BTreeMap<Role, u64>,
    pub disk_bytes: u64,
    /// Earliest first-seen and latest last-seen of live flags, 0 when there are none.
    pub oldest_flag_ms: i64,
    pub newest_flag_ms: i64,
    pub change_sequence: u64,
    pub audit_sequence: u64,
    pub flags_expired_purged: u64,
    pub audit_entries_pruned: u64,
}

pub(super) fn stats(state: &State, now: i64) -> Result<Stats> {
    let mut stats = Stats {
        oldest_flag_ms: i64::MAX,
        newest_flag_ms: i64::MIN,
        ..Stats::default()
    };
    for item in state.store.all_summaries() {
        let (_digest, entries) = item?;
        let mut live = false;
        for entry in entries {
            if entry.expires_at_ms <= now {
                stats.n_expired_flags += 1;
                continue;
            }
            live = true;
            stats.n_active_flags += 1;
            *stats.active_by_kind.entry(entry.kind).or_default() += 1;
            *stats.active_by_category.entry(entry.category).or_default() += 1;
            stats.oldest_flag_ms = stats.oldest_flag_ms.min(entry.first_seen_ms);
            stats.newest_flag_ms = stats.newest_flag_ms.max(entry.last_seen_ms);
        }
        stats.n_digests += u64::from(live);
    }
    if stats.n_active_flags == 0 {
        stats.oldest_flag_ms = 0;
        stats.newest_flag_ms = 0;
    }
    for record in state.registry.list() {
        if record.status == PrincipalStatus::Active {
            *stats.principals_by_role.entry(record.role).or_default() += 1;
        }
    }
    stats.disk_bytes = state.store.disk_size();
    stats.change_sequence = state.head()?;
    stats.audit_sequence = state.ledger().last_sequence();
    stats.flags_expired_purged = state.metrics.flags_expired_purged.load(Ordering::Relaxed);
    stats.audit_entries_pruned = state.metrics.audit_entries_pruned.load(Ordering::Relaxed);
    Ok(stats)
}

/// The origin version of a stored flag (0 for a local one), from the upsert its entry names.
fn entry_origin_sequence(state: &State, entry: &SummaryEntry) -> Result<u64> {
    if !crate::model::is_foreign(entry.member) {
        return Ok(0);
    }
    Ok(state
        .store
        .get_flag_records(&[entry.sequence])?
        .pop()
        .flatten()
        .map_or(0, |record| record.origin_sequence))
}
