//! The audit log: one hash-chained entry per call, written in the same batch as the change
//! it describes, plus the per-principal activity counters that ride along with it.
//!
//! The chain makes the log tamper-evident, not tamper-proof: someone with write access to
//! the database can rewrite every entry after the one they altered. Operators who need more
//! publish the head hash (`admin audit verify` prints it) somewhere the database cannot reach.

use std::collections::HashMap;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{AuditEntry, AuditOp, PrincipalId, PrincipalStats};
use crate::store::{Batch, Durability, Proposed, Store, codec};

/// Hash that the first entry of a never-pruned log points back to.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Who acted, for the audit entry and the activity counters.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `None` for the server's own tasks (expiry, retention).
    pub id: Option<PrincipalId>,
    pub name: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: None,
            name: super::principals::SYSTEM_NAME.to_owned(),
        }
    }

    /// A caller the server refused (unknown certificate, suspended, wrong role).
    pub fn refused() -> Actor {
        Actor {
            id: None,
            name: "refused".to_owned(),
        }
    }
}

/// What to record about one call.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: Actor,
    pub op: AuditOp,
    pub n_items: u64,
    pub n_changed: u64,
    pub detail: String,
    pub digests: Vec<Digest>,
}

impl AuditEvent {
    pub fn new(actor: Actor, op: AuditOp) -> AuditEvent {
        AuditEvent {
            actor,
            op,
            n_items: 0,
            n_changed: 0,
            detail: String::new(),
            digests: Vec::new(),
        }
    }

    pub fn counts(mut self, n_items: u64, n_changed: u64) -> AuditEvent {
        self.n_items = n_items;
        self.n_changed = n_changed;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = detail.into();
        self
    }

    pub fn digests(mut self, digests: Vec<Digest>) -> AuditEvent {
        self.digests = digests;
        self
    }
}

/// What staged entries make of the ledger once their batch commits.
struct Staged {
    last_sequence: u64,
    head: [u8; 32],
    stats: HashMap<PrincipalId, PrincipalStats>,
}

/// The chain's head and the counters, guarded by one lock so entries are numbered and
/// chained in commit order.
pub struct Ledger {
    last_sequence: u64,
    head: [u8; 32],
    stats: HashMap<PrincipalId, PrincipalStats>,
}

impl Ledger {
    pub fn load(store: &Store) -> Result<Ledger> {
        let (last_sequence, head) = match store.audit_head()? {
            Some(end) => end,
            None => store.audit_anchor()?.unwrap_or((0, GENESIS_HASH)),
        };
        Ok(Ledger {
            last_sequence,
            head,
            stats: store.load_principal_stats()?.into_iter().collect(),
        })
    }

    pub fn stats_of(&self, id: PrincipalId) -> PrincipalStats {
        self.stats.get(&id).copied().unwrap_or_default()
    }

    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Adds `event`'s entry (and the actor's updated counters) to `batch`, commits it, and
    /// only then moves the head: a failed commit leaves the ledger as it was.
    pub fn commit(
        &mut self,
        store: &Store,
        batch: Batch<'_>,
        event: AuditEvent,
        at_ms: i64,
        durability: Durability,
    ) -> Result<u64> {
        self.commit_all(store, batch, &[(event, at_ms)], durability)
    }

    /// `commit` for several events at once, chained in order in one write. Returns the
    /// sequence of the last.
    pub fn commit_all(
        &mut self,
        store: &Store,
        mut batch: Batch<'_>,
        events: &[(AuditEvent, i64)],
        durability: Durability,
    ) -> Result<u64> {
        let staged = self.stage_all(&mut batch, events)?;
        store.commit_with(batch, durability)?;
        Ok(self.advance(staged))
    }

    /// `commit_all` on a replicated log without waiting for the commit: the head moves
    /// as the write is handed to the log, so the next commit chains onto it. If the
    /// write then fails, the ledger is ahead of the store and must be read again.
    pub fn propose_all(
        &mut self,
        store: &Store,
        mut batch: Batch<'_>,
        events: &[(AuditEvent, i64)],
    ) -> Result<(u64, Proposed)> {
        let staged = self.stage_all(&mut batch, events)?;
        let proposed = store.propose(batch)?;
        Ok((self.advance(staged), proposed))
    }

    fn stage_all(&self, batch: &mut Batch<'_>, events: &[(AuditEvent, i64)]) -> Result<Staged> {
        let mut staged = Staged {
            last_sequence: self.last_sequence,
            head: self.head,
            stats: HashMap::new(),
        };
        for (event, at_ms) in events {
            self.stage(&mut staged, batch, event, *at_ms)?;
        }
        Ok(staged)
    }

    fn advance(&mut self, staged: Staged) -> u64 {
        self.last_sequence = staged.last_sequence;
        self.head = staged.head;
        self.stats.extend(staged.stats);
        self.last_sequence
    }

    fn stage(&self, staged: &mut Staged, batch: &mut Batch<'_>, event: &AuditEvent, at_ms: i64) -> Result<()> {
        let sequence = staged.last_sequence + 1;
        let entry = AuditEntry {
            sequence,
            at_ms,
            principal: event.actor.name.clone(),
            op: event.op.as_str().to_owned(),
            n_items: event.n_items,
            n_changed: event.n_changed,
            detail: event.detail.clone(),
            digests: event.digests.iter().map(hex::encode).collect(),
            prev_hash: hex::encode(staged.head),
        };
        let encoded = codec::encode_audit(&entry).map_err(crate::store::StoreError::from)?;
        let hash = *blake3::hash(&encoded).as_bytes();
        batch.put_audit(sequence, &encoded, &hash);
        if let Some(id) = event.actor.id {
            let mut stats = staged.stats.get(&id).copied().unwrap_or_else(|| self.stats_of(id));
            stats.last_seen_ms = at_ms;
            match event.op {
                AuditOp::Submit => stats.n_flags_submitted += event.n_items,
                AuditOp::Query => {
                    stats.n_queries += 1;
                    stats.n_digests_queried += event.n_items;
                }
                _ => {}
            }
            batch.put_principal_stats(id, &stats);
            staged.stats.insert(id, stats);
        }
        staged.last_sequence = sequence;
        staged.head = hash;
        Ok(())
    }

    /// Removes the entries older than `cutoff_ms` (a prefix of the log: entries are in time
    /// order) and records the pruning as an entry of its own. Returns how many went.
    pub fn prune(&mut self, store: &Store, cutoff_ms: i64, now_ms: i64) -> Result<u64> {
        let mut last_pruned: Option<(u64, [u8; 32])> = None;
        let mut n_pruned = 0u64;
        for item in store.audit_entries_from(0) {
            let (sequence, bytes) = item?;
            let entry = codec::decode_audit(&bytes).map_err(crate::store::StoreError::from)?;
            // Never prune the newest entry: the head must stay verifiable.
            if entry.at_ms >= cutoff_ms || sequence >= self.last_sequence {
                break;
            }
            last_pruned = Some((sequence, *blake3::hash(&bytes).as_bytes()));
            n_pruned += 1;
        }
        let Some((through, hash)) = last_pruned else {
            return Ok(0);
        };
        let mut batch = store.batch();
        batch.prune_audit(through, &hash);
        let event = AuditEvent::new(Actor::system(), AuditOp::PruneAudit)
            .counts(n_pruned, n_pruned)
            .detail(format!("removed entries through sequence {through}"));
        self.commit(store, batch, event, now_ms, Durability::Configured)?;
        Ok(n_pruned)
    }
}

/// What `admin audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub n_checked: u64,
    /// First sequence number checked (after the retention anchor).
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Hash of the newest entry: publish it to make later rewriting detectable.
    pub head_hash: [u8; 32],
    /// The first broken link: the sequence number of the entry that fails, and why.
    pub broken: Option<(u64, String)>,
}

/// Walks the whole chain from the retention anchor (or the beginning) to the head, on a
/// snapshot of the store: entries appended or pruned meanwhile do not disturb the walk,
/// and no lock is held.
pub fn verify(store: &Store) -> Result<VerifyReport> {
    let view = store.audit_view();
    let (anchor_sequence, mut expected_prev) = view.anchor()?.unwrap_or((0, GENESIS_HASH));
    let head = view.head()?;
    let mut report = VerifyReport {
        n_checked: 0,
        first_sequence: anchor_sequence + 1,
        last_sequence: anchor_sequence,
        head_hash: expected_prev,
        broken: None,
    };
    for (expected_sequence, item) in (anchor_sequence + 1..).zip(view.entries()) {
        let (sequence, bytes) = item?;
        let broken = |reason: String| Some((sequence, reason));
        if sequence != expected_sequence {
            report.broken = if sequence < expected_sequence {
                broken(format!(
                    "entry {sequence} lies before the retention anchor at {anchor_sequence}"
                ))
            } else {
                Some((
                    expected_sequence,
                    format!("entry {expected_sequence} is missing (the next stored entry is {sequence})"),
                ))
            };
            return Ok(report);
        }
        let entry = match codec::decode_audit(&bytes) {
            Ok(entry) => entry,
            Err(err) => {
                report.broken = broken(format!("entry {sequence} cannot be read: {err}"));
                return Ok(report);
            }
        };
        if entry.sequence != sequence {
            report.broken = broken(format!("entry {sequence} claims sequence {}", entry.sequence));
            return Ok(report);
        }
        if entry.prev_hash != hex::encode(expected_prev) {
            let culprit = sequence - 1;
            report.broken = Some((
                culprit,
                format!(
                    "entry {sequence} does not chain to entry {culprit}: entry {culprit} was altered, or entry {sequence}'s link was"
                ),
            ));
            return Ok(report);
        }
        expected_prev = *blake3::hash(&bytes).as_bytes();
        report.n_checked += 1;
        report.last_sequence = sequence;
    }
    report.head_hash = expected_prev;
    match head {
        Some((head_sequence, head_hash)) if head_sequence != report.last_sequence || head_hash != expected_prev => {
            report.broken = Some((
                head_sequence.min(report.last_sequence.max(1)),
                format!(
                    "the newest entry does not match the recorded head (sequence {head_sequence}): entries at the end were altered or removed"
                ),
            ));
        }
        None if report.n_checked > 0 => {
            report.broken = Some((report.last_sequence, "entries exist but no head is recorded".to_owned()));
        }
        _ => {}
    }
    Ok(report)
}

/// Filters for `admin audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub principal: Option<String>,
    pub op: Option<AuditOp>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub digest: Option<Digest>,
    /// Newest entries kept when more match.
    pub limit: usize,
}

pub const MAX_AUDIT_LIST: usize = 10_000;

/// Entries matching `filter`, oldest first; at most `filter.limit`, the newest of them.
pub fn list(store: &Store, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
    if filter.limit == 0 || filter.limit > MAX_AUDIT_LIST {
        return Err(Error::invalid(format!(
            "limit: {} is outside 1 to {MAX_AUDIT_LIST}",
            filter.limit
        )));
    }
    let op = filter.op.map(AuditOp::as_str);
    let digest = filter.digest.map(hex::encode);
    let mut found = std::collections::VecDeque::new();
    for item in store.audit_entries_from(0) {
        let (_sequence, bytes) = item?;
        let entry = codec::decode_audit(&bytes).map_err(crate::store::StoreError::from)?;
        let keep = filter.principal.as_ref().is_none_or(|name| *name == entry.principal)
            && op.is_none_or(|op| op == entry.op)
            && filter.since_ms.is_none_or(|since| entry.at_ms >= since)
            && filter.until_ms.is_none_or(|until| entry.at_ms < until)
            && digest.as_ref().is_none_or(|digest| entry.digests.contains(digest));
        if keep {
            if found.len() == filter.limit {
                found.pop_front();
            }
            found.push_back(entry);
        }
    }
    Ok(found.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn event(n: u64) -> AuditEvent {
        AuditEvent::new(
            Actor {
                id: Some(1),
                name: "alpha".to_owned(),
            },
            AuditOp::Query,
        )
        .counts(n, 0)
    }

    #[test]
    fn the_chain_verifies_across_retention_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut ledger = Ledger::load(&store).unwrap();
            for at in 1..=5 {
                let batch = store.batch();
                ledger
                    .commit(&store, batch, event(at as u64), at * 1000, Durability::Configured)
                    .unwrap();
            }
            assert_eq!(ledger.stats_of(1).n_queries, 5);
            assert_eq!(ledger.stats_of(1).n_digests_queried, 15);
            let report = verify(&store).unwrap();
            assert_eq!(
                (report.broken.clone(), report.n_checked, report.last_sequence),
                (None, 5, 5)
            );

            // Entries before t = 2.5 s go; the pruning itself is entry 6.
            assert_eq!(ledger.prune(&store, 2500, 6000).unwrap(), 2);
            let report = verify(&store).unwrap();
            assert_eq!(report.broken, None);
            assert_eq!(
                (report.first_sequence, report.last_sequence, report.n_checked),
                (3, 6, 4)
            );
            let listed = list(
                &store,
                &AuditFilter {
                    limit: 2,
                    ..AuditFilter::default()
                },
            )
            .unwrap();
            let sequences: Vec<u64> = listed.iter().map(|entry| entry.sequence).collect();
            assert_eq!(sequences, vec![5, 6], "the newest of the matching entries");
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut ledger = Ledger::load(&store).unwrap();
        assert_eq!(ledger.last_sequence(), 6);
        assert_eq!(ledger.stats_of(1).n_queries, 5, "counters survive a restart");
        ledger
            .commit(&store, store.batch(), event(1), 7000, Durability::Buffered)
            .unwrap();
        assert_eq!(verify(&store).unwrap().broken, None);
    }
}
