//! Appeals: a member retracts its own flags, or disputes another member's.

use std::collections::BTreeSet;

use super::RetractOutcome;
use super::audit::AuditEvent;
use super::flags::{self, FlagSelector};
use super::principals::Caller;
use super::state::{Removal, State, stage_dispute_cleanup, stage_removal};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{AuditOp, Change, ChangeRecord, Distribution, FlagKey, RetractReason, SummaryEntry};

impl State {
    pub(super) fn retract(
        &self,
        caller: &Caller,
        selectors: &[FlagSelector],
        reason: RetractReason,
        now: i64,
    ) -> Result<RetractOutcome> {
        let mut digests: Vec<Digest> = selectors.iter().map(|selector| selector.digest).collect();
        digests.sort_unstable();
        digests.dedup();

        let mut last_sequence = self.writer()?;
        let mut summaries = self.read_summaries(&digests)?;

        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let mut unmatched_indexes = Vec::new();
        let mut retracted_digests = BTreeSet::new();
        let mut n_retracted = 0;
        // A retraction reaches the caller's quarantined flags too: a held flag that was
        // retracted must not go live when an admin later releases the rest.
        let held = self.has_quarantined(caller.id);
        for (index, selector) in selectors.iter().enumerate() {
            let mut n_held = 0;
            if held {
                for (key, _) in self.store.quarantined_of_digest(caller.id, &selector.digest)? {
                    if selector.kind.is_none_or(|kind| kind == key.kind)
                        && selector.category.is_none_or(|category| category == key.category)
                    {
                        batch.delete_quarantined(&key);
                        n_held += 1;
                    }
                }
                n_retracted += n_held;
            }
            let Some(entries) = summaries.get_mut(&selector.digest) else {
                if n_held == 0 {
                    unmatched_indexes.push(index as u32);
                }
                continue;
            };
            let (selected, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) = entries
                .iter()
                .copied()
                .partition(|entry| selector.selects(caller.id, entry));
            if selected.is_empty() {
                if n_held == 0 {
                    unmatched_indexes.push(index as u32);
                }
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
                    Removal::local(Change::Retract(reason)),
                    now,
                );
                n_retracted += 1;
            }
            stage_dispute_cleanup(self, &mut batch, &selector.digest, entries, caller.id);
        }
        for digest in &retracted_digests {
            if let Some(entries) = summaries.get(digest) {
                batch.put_summary(digest, entries)?;
            }
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

    pub(super) fn dispute(
        &self,
        caller: &Caller,
        digest: Digest,
        flagged_by: &str,
        note: &str,
        now: i64,
    ) -> Result<u32> {
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
        let mut last_sequence = self.writer()?;
        let entries = self.store.get_summaries(&[digest])?.pop().flatten().unwrap_or_default();
        let disputed: Vec<&SummaryEntry> = entries
            .iter()
            .filter(|entry| entry.member == target.id && entry.expires_at_ms > now)
            .collect();
        if disputed.is_empty() {
            return Err(Error::NotFound(format!(
                "digest: '{flagged_by}' has no live flag on {}",
                hex::encode(digest)
            )));
        }
        let n_flags = disputed.len() as u32;
        let mut batch = self.store.batch();
        batch.put_dispute(&digest, target.id, caller.id, now);
        // One change per disputed flag: a feed's reader learns the digest's new dispute
        // count. Disputes are this operator's own business: never sent to peers.
        let mut sequence = *last_sequence;
        for entry in disputed {
            sequence += 1;
            batch.put_change(
                sequence,
                &ChangeRecord {
                    at_ms: now,
                    key: FlagKey {
                        digest,
                        member: entry.member,
                        kind: entry.kind,
                        category: entry.category,
                    },
                    change: Change::Dispute,
                    distribution: Distribution::Local,
                    origin_sequence: 0,
                    signature: None,
                },
            );
        }
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
        *last_sequence = sequence;
        self.disputed.write().insert(digest);
        Ok(n_flags)
    }
}
