//! Work the server does on its own: purging expired flags, pruning audit entries past
//! retention, and the figures of `admin stats`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::audit::{Actor, AuditEvent};
use super::{Inner, stage_removal};
use crate::digest::{Digest, Kind};
use crate::error::Result;
use crate::model::{AuditOp, Category, Change, PrincipalStatus, Role, SummaryEntry};

/// Digests rewritten per commit while purging, so the writer lock is never held long.
const PURGE_CHUNK: usize = 1_000;

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub flags_purged: u64,
    pub audit_entries_pruned: u64,
}

pub(super) fn sweep(inner: &Inner, now: i64, audit_retention_ms: i64) -> Result<Sweep> {
    let flags_purged = purge_expired(inner, now)?;
    let audit_entries_pruned = inner
        .ledger()
        .prune(&inner.store, now.saturating_sub(audit_retention_ms), now)?;
    inner
        .metrics
        .flags_expired_purged
        .fetch_add(flags_purged, Ordering::Relaxed);
    inner
        .metrics
        .audit_entries_pruned
        .fetch_add(audit_entries_pruned, Ordering::Relaxed);
    Ok(Sweep {
        flags_purged,
        audit_entries_pruned,
    })
}

/// Deletes every flag whose expiry has passed (queries already ignore them), writing an
/// `Expire` change per flag so feeds and peers learn of it.
fn purge_expired(inner: &Inner, now: i64) -> Result<u64> {
    // Find candidates without the lock; each chunk is re-read under it.
    let mut candidates: Vec<Digest> = Vec::new();
    for item in inner.store.all_summaries() {
        let (digest, entries) = item?;
        if entries.iter().any(|entry| entry.expires_at_ms <= now) {
            candidates.push(digest);
        }
    }
    let mut n_purged = 0u64;
    for chunk in candidates.chunks(PURGE_CHUNK) {
        let mut last_sequence = inner.writer();
        let mut sequence = *last_sequence;
        let mut batch = inner.store.batch();
        let mut n_chunk = 0u64;
        for (digest, entries) in inner.read_summaries(chunk)? {
            let (expired, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) =
                entries.into_iter().partition(|entry| entry.expires_at_ms <= now);
            if expired.is_empty() {
                continue;
            }
            for entry in &expired {
                stage_removal(&mut batch, &mut sequence, digest, entry, Change::Expire, 0, now);
            }
            n_chunk += expired.len() as u64;
            batch.put_summary(&digest, &kept);
        }
        if n_chunk == 0 {
            continue;
        }
        let event = AuditEvent::new(Actor::system(), AuditOp::PurgeExpired).counts(n_chunk, n_chunk);
        inner.commit_audited(batch, event, now)?;
        *last_sequence = sequence;
        n_purged += n_chunk;
    }
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

pub(super) fn stats(inner: &Inner, now: i64) -> Result<Stats> {
    let mut stats = Stats {
        oldest_flag_ms: i64::MAX,
        newest_flag_ms: i64::MIN,
        ..Stats::default()
    };
    for item in inner.store.all_summaries() {
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
    for record in inner.registry.list() {
        if record.status == PrincipalStatus::Active {
            *stats.principals_by_role.entry(record.role).or_default() += 1;
        }
    }
    stats.disk_bytes = inner.store.disk_size();
    stats.change_sequence = *inner.writer();
    stats.audit_sequence = inner.ledger().last_sequence();
    stats.flags_expired_purged = inner.metrics.flags_expired_purged.load(Ordering::Relaxed);
    stats.audit_entries_pruned = inner.metrics.audit_entries_pruned.load(Ordering::Relaxed);
    Ok(stats)
}
