//! `Submit`: a member's batch of new or updated flags, committed as one batch.

use super::SubmitOutcome;
use super::audit::AuditEvent;
use super::flags::{self, NewFlag};
use super::principals::Caller;
use super::state::{Removal, State, stage_removal, stage_upsert};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{
    AuditOp, Change, ChangeRecord, Distribution, FlagKey, FlagRecord, PrincipalId, RetractReason, SummaryEntry,
};

/// Flags per block of an import: one audited commit, its summary rows ingested as one
/// file. Bounds the memory an import holds and how long it holds the writer lock.
pub const IMPORT_BLOCK: usize = 200_000;

/// A batch of new flags in key order, with the keys and digests it names: the part of
/// writing flags that needs no lock, so an import sorts its next block while the last one
/// commits.
pub struct SortedFlags {
    /// (place in the batch as submitted, flag), in key order; a key given twice keeps its
    /// submission order, so the later word wins.
    flags: Vec<(usize, NewFlag)>,
    /// The key of each of `flags`.
    keys: Vec<FlagKey>,
    /// `keys` without repeats.
    unique_keys: Vec<FlagKey>,
    /// The digests of `unique_keys`, without repeats.
    digests: Vec<Digest>,
}

impl SortedFlags {
    /// Sorts `member`'s batch. Everything after walks keys in order beside these sorted
    /// vectors, with cursors instead of maps: hashing 32-byte keys was a tenth of a bulk
    /// load. Key order also lets RocksDB's memtable insert a sorted run of keys from where
    /// the previous one went, instead of searching its skip list afresh.
    pub fn new(member: PrincipalId, new_flags: Vec<NewFlag>) -> SortedFlags {
        let key_of = |flag: &NewFlag| FlagKey {
            digest: flag.digest,
            member,
            kind: flag.kind,
            category: flag.category,
        };
        // By the digest's first eight bytes as one integer first (two integers compare
        // faster than two keys), then runs of equal prefixes (rare) by the whole key.
        let mut order: Vec<(u64, usize)> = new_flags
            .iter()
            .enumerate()
            .map(|(place, flag)| (digest_prefix(&flag.digest), place))
            .collect();
        order.sort_unstable();
        let mut start = 0;
        while start < order.len() {
            let prefix = order[start].0;
            let end = start + order[start..].iter().take_while(|(other, _)| *other == prefix).count();
            if end - start > 1 {
                order[start..end].sort_unstable_by_key(|&(_, place)| (key_of(&new_flags[place]), place));
            }
            start = end;
        }
        // The flags moved into that order, so the write walks memory in sequence.
        let mut slots: Vec<Option<NewFlag>> = new_flags.into_iter().map(Some).collect();
        let flags: Vec<(usize, NewFlag)> = order
            .iter()
            .filter_map(|&(_, place)| slots[place].take().map(|flag| (place, flag)))
            .collect();
        let keys: Vec<FlagKey> = flags.iter().map(|(_, flag)| key_of(flag)).collect();
        let mut unique_keys = keys.clone();
        unique_keys.dedup();
        let mut digests: Vec<Digest> = unique_keys.iter().map(|key| key.digest).collect();
        digests.dedup();
        SortedFlags {
            flags,
            keys,
            unique_keys,
            digests,
        }
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

fn digest_prefix(digest: &Digest) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(prefix)
}

impl State {
    pub(super) fn submit(&self, caller: &Caller, sorted: SortedFlags, key_id: u32, now: i64) -> Result<SubmitOutcome> {
        self.write_flags(caller, sorted, key_id, now, false)
    }

    /// One block of an import (at most `IMPORT_BLOCK` flags): Submit's rules, one audited
    /// commit, the summary rows ingested as a file.
    pub(super) fn import_block(
        &self,
        caller: &Caller,
        sorted: SortedFlags,
        key_id: u32,
        now: i64,
    ) -> Result<SubmitOutcome> {
        if sorted.len() > IMPORT_BLOCK {
            return Err(Error::invalid(format!(
                "flags: {} in one block, at most {IMPORT_BLOCK}",
                sorted.len()
            )));
        }
        self.write_flags(caller, sorted, key_id, now, true)
    }

    fn write_flags(
        &self,
        caller: &Caller,
        sorted: SortedFlags,
        key_id: u32,
        now: i64,
        import: bool,
    ) -> Result<SubmitOutcome> {
        let SortedFlags {
            flags: new_flags,
            keys: flag_keys,
            unique_keys: sorted_keys,
            digests,
        } = sorted;
        let mut last_sequence = self.submission_writer(&digests)?;
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
        for ((index, new_flag), key) in new_flags.iter().zip(&flag_keys) {
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
        let landing = if import {
            let rows: Vec<(Digest, Vec<SummaryEntry>)> = digests.into_iter().zip(summaries).collect();
            self.commit_ingesting(batch, event, now, &rows, *last_sequence, sequence)?;
            None
        } else {
            for (digest, entries) in digests.iter().zip(&summaries) {
                batch.put_summary(digest, entries)?;
            }
            // On a replicated log the commit is on its way, not yet made: the memory moves
            // on now, so the next submission is staged after it (and is read again from
            // the store if it fails).
            Some(self.propose_audited(batch, event, now, digests)?.1)
        };
        *last_sequence = sequence;
        if let Some(window) = window {
            self.set_window(caller.id, window);
        }
        if n_quarantined > 0 {
            self.quarantined_members.write().insert(caller.id);
        }
        drop(last_sequence);
        if let Some(landing) = landing {
            landing.land()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Kind;
    use crate::model::Category;

    fn new_flag(digest: Digest, kind: Kind, confidence: u32) -> NewFlag {
        NewFlag {
            digest,
            kind,
            category: Category::Grooming,
            confidence,
            observed_at_ms: None,
            expires_at_ms: None,
            reference: Vec::new(),
            distribution: None,
        }
    }

    #[test]
    fn sorted_flags_are_in_key_order_and_a_repeated_key_keeps_its_submission_order() {
        // Digests sharing their first eight bytes (ordered by the rest), others apart.
        let digest = |first: u8, last: u8| {
            let mut digest = [first; 32];
            digest[31] = last;
            digest
        };
        let submitted = vec![
            new_flag(digest(9, 2), Kind::Email, 1),
            new_flag(digest(9, 1), Kind::Phone, 2),
            new_flag(digest(3, 0), Kind::Email, 3),
            new_flag(digest(9, 1), Kind::Email, 4),
            new_flag(digest(9, 2), Kind::Email, 5),
            new_flag(digest(9, 1), Kind::Email, 6),
            new_flag(digest(200, 0), Kind::Email, 7),
        ];
        let mut expected: Vec<(FlagKey, usize)> = submitted
            .iter()
            .enumerate()
            .map(|(place, flag)| {
                let key = FlagKey {
                    digest: flag.digest,
                    member: 7,
                    kind: flag.kind,
                    category: flag.category,
                };
                (key, place)
            })
            .collect();
        expected.sort();
        let sorted = SortedFlags::new(7, submitted.clone());
        let places: Vec<usize> = sorted.flags.iter().map(|(place, _)| *place).collect();
        assert_eq!(places, expected.iter().map(|(_, place)| *place).collect::<Vec<_>>());
        assert_eq!(places, [2, 3, 5, 1, 0, 4, 6]);
        for ((place, flag), key) in sorted.flags.iter().zip(&sorted.keys) {
            assert_eq!(flag.confidence, submitted[*place].confidence);
            assert_eq!((key.digest, key.kind, key.member), (flag.digest, flag.kind, 7));
        }
        assert_eq!(sorted.unique_keys.len(), 5, "two keys given twice");
        assert_eq!(
            sorted.digests,
            [digest(3, 0), digest(9, 1), digest(9, 2), digest(200, 0)]
        );
    }
}
