//! `Submit`: a member's batch of new or updated flags, committed as one batch.

use super::SubmitOutcome;
use super::audit::AuditEvent;
use super::flags::{self, NewFlag};
use super::principals::Caller;
use super::state::{Removal, State, stage_removal, stage_upsert};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{AuditOp, Change, ChangeRecord, Distribution, FlagKey, FlagRecord, RetractReason, SummaryEntry};

/// Flags per block of an import: one audited commit, its summary rows ingested as one
/// file. Bounds the memory an import holds and how long it holds the writer lock.
pub const IMPORT_BLOCK: usize = 200_000;

impl State {
    pub(super) fn submit(
        &self,
        caller: &Caller,
        new_flags: &[NewFlag],
        key_id: u32,
        now: i64,
    ) -> Result<SubmitOutcome> {
        self.write_flags(caller, new_flags, key_id, now, false)
    }

    /// One block of an import (at most `IMPORT_BLOCK` flags): Submit's rules, one audited
    /// commit, the summary rows ingested as a file.
    pub(super) fn import_block(
        &self,
        caller: &Caller,
        new_flags: &[NewFlag],
        key_id: u32,
        now: i64,
    ) -> Result<SubmitOutcome> {
        if new_flags.len() > IMPORT_BLOCK {
            return Err(Error::invalid(format!(
                "flags: {} in one block, at most {IMPORT_BLOCK}",
                new_flags.len()
            )));
        }
        self.write_flags(caller, new_flags, key_id, now, true)
    }

    fn write_flags(
        &self,
        caller: &Caller,
        new_flags: &[NewFlag],
        key_id: u32,
        now: i64,
        import: bool,
    ) -> Result<SubmitOutcome> {
        let flag_keys: Vec<FlagKey> = new_flags
            .iter()
            .map(|flag| FlagKey {
                digest: flag.digest,
                member: caller.id,
                kind: flag.kind,
                category: flag.category,
            })
            .collect();
        // Key order, not submission order: RocksDB's memtable inserts a sorted run of keys
        // from where the previous one went, instead of searching its skip list afresh
        // (that search was half the server's time in a bulk load). (key, place) pairs are
        // sorted, not places by their key: the keys stay beside each other in memory, and
        // the place breaks ties, so a key given twice still ends with its later submission.
        let mut keyed: Vec<(FlagKey, usize)> = flag_keys.iter().copied().zip(0..).collect();
        keyed.sort_unstable();
        let order: Vec<usize> = keyed.iter().map(|(_, index)| *index).collect();
        let mut sorted_keys: Vec<FlagKey> = keyed.into_iter().map(|(key, _)| key).collect();
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
        if import {
            batch.defer_changes();
        }
        let mut sequence = *last_sequence;
        let (mut n_created, mut n_updated, mut n_quarantined) = (0, 0, 0);
        // New flags this member may still commit in this window; the rest are quarantined.
        let mut room = self.quarantine_room(caller.id, now);
        // Only a member with held-back flags can need one of them cleared as it goes live.
        let may_be_held = self.has_quarantined(caller.id);
        let (mut k, mut d) = (0, 0);
        let mut previous: Option<(FlagKey, FlagRecord, bool)> = None;
        for index in order {
            let (key, new_flag) = (&flag_keys[index], &new_flags[index]);
            let mut held_back = false;
            let existing = match previous.take() {
                // The same key again in this batch: merge with what it just became.
                Some((previous_key, record, quarantined)) if previous_key == *key => {
                    held_back = quarantined;
                    Some(record)
                }
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
            if held_back {
                // Already held back in this batch: stays so.
            } else if existing.is_some() {
                n_updated += 1;
            } else if room == Some(0) {
                held_back = true;
                n_quarantined += 1;
            } else {
                self.check_room(&summaries[d], key)
                    .map_err(|reason| Error::ResourceExhausted(format!("flags[{index}].digest: {reason}")))?;
                n_created += 1;
                room = room.map(|left| left - 1);
            }
            let record = flags::merge_flag(
                existing.as_ref(),
                new_flag,
                key_id,
                self.policy.longest_expiry(key.category, now),
                self.policy.default_distribution,
                now,
            );
            if held_back {
                // Stored for an admin to release or reject; no summary entry, no change-log
                // entry: nobody else matches it and no peer is sent it.
                batch.put_quarantined(key, &quarantine_row(key, &record, now));
                previous = Some((*key, record, true));
                continue;
            }
            // A flag that goes live is no longer held back, if it was by an earlier call.
            if may_be_held {
                batch.delete_quarantined(key);
            }
            // A flag that peers have and that now stays local is withdrawn from them: the
            // withdrawal travels, the local upsert does not.
            if let Some(old) = &existing
                && old.distribution == Distribution::Federated
                && record.distribution == Distribution::Local
                && let Some(entry) = summaries[d].iter().find(|entry| entry.same_flag(key)).copied()
            {
                stage_removal(
                    &mut batch,
                    &mut sequence,
                    key.digest,
                    &entry,
                    Removal::local(Change::Retract(RetractReason::Unshared)),
                    now,
                );
                summaries[d].retain(|entry| !entry.same_flag(key));
            }
            stage_upsert(&mut batch, &mut sequence, &mut summaries[d], key, &record, None, now);
            previous = Some((*key, record, false));
        }
        // The flags themselves say who flagged what; the entry counts them.
        let detail = if n_quarantined > 0 {
            format!("{n_created} created, {n_updated} updated, {n_quarantined} quarantined")
        } else {
            format!("{n_created} created, {n_updated} updated")
        };
        let op = if import { AuditOp::Import } else { AuditOp::Submit };
        let event = AuditEvent::new(caller.into(), op)
            .counts(new_flags.len() as u64, u64::from(n_created + n_updated))
            .detail(detail);
        let window = self.next_window(caller.id, u64::from(n_created), now);
        if let Some((start, count)) = window {
            batch.put_quarantine_window(caller.id, start, count);
        }
        if import {
            let rows: Vec<(Digest, Vec<SummaryEntry>)> = digests.into_iter().zip(summaries).collect();
            self.commit_ingesting(batch, event, now, &rows, *last_sequence, sequence)?;
        } else {
            for (digest, entries) in digests.iter().zip(&summaries) {
                batch.put_summary(digest, entries)?;
            }
            self.commit_audited(batch, event, now)?;
        }
        *last_sequence = sequence;
        if let Some(window) = window {
            self.set_window(caller.id, window);
        }
        if n_quarantined > 0 {
            self.quarantined_members.write().insert(caller.id);
        }
        Ok(SubmitOutcome {
            n_created,
            n_updated,
            n_quarantined,
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
}

/// A quarantined flag's row: the upsert it will be when released.
fn quarantine_row(key: &FlagKey, record: &FlagRecord, now: i64) -> ChangeRecord {
    ChangeRecord {
        at_ms: now,
        key: *key,
        change: Change::Upsert(record.clone()),
        distribution: record.distribution,
        origin_sequence: 0,
        signature: None,
    }
}
