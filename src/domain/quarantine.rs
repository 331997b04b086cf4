//! The flood quarantine: once a member has committed `quarantine_new_flags_per_hour` new
//! flags in an hour, its further new flags are stored here instead of going live. They
//! match for no one else and reach no peer until an admin releases them (they go live
//! then, and federate, as if submitted at that moment) or rejects them (they are deleted,
//! never having matched). Matches made before are never touched: only flags beyond the
//! threshold are held. Updates of a member's live flags are never held.

use std::collections::HashSet;

use super::audit::AuditEvent;
use super::principals::Caller;
use super::state::{State, stage_upsert};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{AuditOp, Change, FlagKey, PrincipalId, PrincipalStatus, SummaryEntry};
use crate::store::Store;
use crate::store::keys::{HELD_PAGE_KEY_LEN, held_page_key};

const WINDOW_MS: i64 = 60 * 60 * 1000;
/// Quarantined flags released or rejected per commit.
pub const QUARANTINE_CHUNK: usize = 10_000;

/// Held flags per page of a listing.
pub const HELD_PAGE: usize = 1_000;

/// A flag held back by the quarantine, as it would go live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFlag {
    pub key: FlagKey,
    pub confidence: u8,
    pub held_since_ms: i64,
    pub expires_at_ms: i64,
}

/// One member's quarantined flags, for `admin quarantine list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineSummary {
    pub member: String,
    pub n_flags: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
}

pub(super) fn members_with_rows(store: &Store) -> Result<HashSet<PrincipalId>> {
    // One row per member is enough to know: seek to each next member.
    let mut members = HashSet::new();
    let mut next = Some(0u32);
    while let Some(from) = next {
        let rows = store.quarantined_from(from, 1)?;
        next = match rows.first() {
            Some((key, _)) => {
                members.insert(key.member);
                key.member.checked_add(1)
            }
            None => None,
        };
    }
    Ok(members)
}

impl State {
    /// How many more new flags `member` may commit in this window; `None`: no quarantine.
    pub(super) fn quarantine_room(&self, member: PrincipalId, now: i64) -> Option<u64> {
        let threshold = self.quarantine_threshold(member);
        if threshold == 0 {
            return None;
        }
        Some(threshold.saturating_sub(self.window_at(member, now).1))
    }

    /// `member`'s window as of `now`: (start, new flags in it), a new one if the last ended.
    fn window_at(&self, member: PrincipalId, now: i64) -> (i64, u64) {
        match self.new_flags_window.lock().get(&member) {
            Some(&(start, count)) if now - start < WINDOW_MS => (start, count),
            _ => (now, 0),
        }
    }

    /// New flags per hour `member` may commit before the rest are held (0: never held):
    /// its own setting (`admin member limits`) or the server's.
    pub(super) fn quarantine_threshold(&self, member: PrincipalId) -> u64 {
        self.quarantine_overrides
            .read()
            .get(&member)
            .copied()
            .unwrap_or(self.policy.quarantine_new_flags_per_hour)
    }

    pub(super) fn set_quarantine_override(&self, member: PrincipalId, threshold: Option<u64>) {
        let mut overrides = self.quarantine_overrides.write();
        match threshold {
            Some(threshold) => overrides.insert(member, threshold),
            None => overrides.remove(&member),
        };
    }

    /// `member`'s window once `n_created` more new flags are committed at `now`, or `None`
    /// when nothing is counted (no quarantine for it, or no new flag). Staged in the batch
    /// that commits the flags, then set with `set_window` once it is committed.
    pub(super) fn next_window(&self, member: PrincipalId, n_created: u64, now: i64) -> Option<(i64, u64)> {
        if self.quarantine_threshold(member) == 0 || n_created == 0 {
            return None;
        }
        let (start, count) = self.window_at(member, now);
        Some((start, count.saturating_add(n_created)))
    }

    pub(super) fn set_window(&self, member: PrincipalId, window: (i64, u64)) {
        self.new_flags_window.lock().insert(member, window);
    }

    pub(super) fn has_quarantined(&self, member: PrincipalId) -> bool {
        self.quarantined_members.read().contains(&member)
    }

    pub(super) fn quarantine_list(&self) -> Result<Vec<QuarantineSummary>> {
        // One summary per member, whatever the number of rows (members are few).
        let mut by_member: std::collections::BTreeMap<PrincipalId, QuarantineSummary> = Default::default();
        self.store.for_each_quarantined(None, |key, at_ms| {
            let summary = by_member.entry(key.member).or_insert_with(|| QuarantineSummary {
                member: self.registry.name_of(key.member),
                n_flags: 0,
                oldest_ms: i64::MAX,
                newest_ms: i64::MIN,
            });
            summary.n_flags += 1;
            summary.oldest_ms = summary.oldest_ms.min(at_ms);
            summary.newest_ms = summary.newest_ms.max(at_ms);
        })?;
        Ok(by_member.into_values().collect())
    }

    /// A page of `member`'s held flags after `page_after` (empty, or the previous page's
    /// `next_page_after`), and where the next page starts (empty after the last); audited
    /// as a read of `reader`.
    pub(super) fn held_flags(
        &self,
        reader: &Caller,
        member: PrincipalId,
        page_after: &[u8],
        now: i64,
    ) -> Result<(Vec<HeldFlag>, Vec<u8>)> {
        let after: Option<[u8; HELD_PAGE_KEY_LEN]> = match page_after.len() {
            0 => None,
            HELD_PAGE_KEY_LEN => page_after.try_into().ok(),
            n => {
                return Err(Error::invalid(format!(
                    "page_after: {n} bytes, expected 0 or {HELD_PAGE_KEY_LEN} (a previous page's next_page_after)"
                )));
            }
        };
        let rows = self.store.quarantined_page(member, after.as_ref(), HELD_PAGE)?;
        let next = match rows.last() {
            Some((key, _)) if rows.len() == HELD_PAGE => held_page_key(key).to_vec(),
            _ => Vec::new(),
        };
        let flags: Vec<HeldFlag> = rows
            .into_iter()
            .filter_map(|(key, change)| match change.change {
                Change::Upsert(record) => Some(HeldFlag {
                    key,
                    confidence: record.confidence,
                    held_since_ms: change.at_ms,
                    expires_at_ms: record.expires_at_ms,
                }),
                _ => None,
            })
            .collect();
        let event = AuditEvent::new(reader.into(), AuditOp::ListHeld)
            .counts(0, flags.len() as u64)
            .detail(format!("held flags of {}", self.registry.name_of(member)));
        self.record_read(event, now)?;
        Ok((flags, next))
    }

    /// The id of the principal named `name`, for an admin's quarantine commands.
    pub(super) fn quarantined_member(&self, name: &str) -> Result<PrincipalId> {
        self.registry
            .by_name(name)
            .map(|record| record.id)
            .ok_or_else(|| Error::NotFound(format!("member: no principal named '{name}'")))
    }

    /// Releases up to `QUARANTINE_CHUNK` of `member`'s quarantined flags in one audited
    /// commit: they go live (and federate) as of now. Returns (released, still held).
    pub(super) fn quarantine_release(&self, admin: &Caller, name: &str, now: i64) -> Result<(u32, u64)> {
        let member = self.quarantined_member(name)?;
        let mut last_sequence = self.writer()?;
        // Checked under the lock: a suspension or removal may be under way.
        if let Some(record) = self.registry.by_name(name)
            && record.status != PrincipalStatus::Active
        {
            return Err(Error::FailedPrecondition(format!(
                "member: '{name}' is {}; its held flags can only be rejected",
                record.status
            )));
        }
        let rows = self.store.quarantined(Some(member), QUARANTINE_CHUNK)?;
        let mut digests: Vec<Digest> = rows.iter().map(|(key, _)| key.digest).collect();
        digests.sort_unstable();
        digests.dedup();
        let mut summaries: Vec<Vec<SummaryEntry>> = self
            .store
            .get_summaries(&digests)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        let mut batch = self.store.batch();
        let mut sequence = *last_sequence;
        let mut released = 0u32;
        for (key, row) in &rows {
            batch.delete_quarantined(key);
            let Change::Upsert(record) = &row.change else {
                continue;
            };
            let Ok(d) = digests.binary_search(&key.digest) else {
                continue;
            };
            // Went live meanwhile (resubmitted below the threshold): the live one is newer.
            if summaries[d].iter().any(|entry| entry.same_flag(key)) {
                continue;
            }
            self.check_room(&summaries[d], key).map_err(Error::ResourceExhausted)?;
            let mut record = record.clone();
            // Seen by everyone from now: it starts matching now.
            record.first_seen_ms = record.first_seen_ms.min(now);
            stage_upsert(&mut batch, &mut sequence, &mut summaries[d], key, &record, None, now);
            released += 1;
        }
        for (digest, entries) in digests.iter().zip(&summaries) {
            batch.put_summary(digest, entries)?;
        }
        let event = AuditEvent::new(admin.into(), AuditOp::ReleaseQuarantine)
            .counts(rows.len() as u64, u64::from(released))
            .detail(format!("{name}: {released} quarantined flags released"));
        self.commit_audited(batch, event, now)?;
        *last_sequence = sequence;
        drop(last_sequence);
        Ok((released, self.remaining(member)?))
    }

    /// Deletes up to `QUARANTINE_CHUNK` of `member`'s quarantined flags in one audited
    /// commit; they never matched. Returns (rejected, still held).
    pub(super) fn quarantine_reject(&self, admin: &Caller, name: &str, now: i64) -> Result<(u32, u64)> {
        let member = self.quarantined_member(name)?;
        self.reject_chunk(admin, member, name, now)
    }

    /// Deletes every held flag of `member`, a chunk per audited commit (a suspension or
    /// removal that withdraws the member's flags); how many.
    pub(super) fn reject_all_held(&self, admin: &Caller, member: PrincipalId, name: &str, now: i64) -> Result<u64> {
        let mut n_rejected = 0;
        loop {
            let (n_done, n_left) = self.reject_chunk(admin, member, name, now)?;
            n_rejected += u64::from(n_done);
            if n_done == 0 || n_left == 0 {
                return Ok(n_rejected);
            }
        }
    }

    fn reject_chunk(&self, admin: &Caller, member: PrincipalId, name: &str, now: i64) -> Result<(u32, u64)> {
        let writer = self.writer()?;
        let rows = self.store.quarantined(Some(member), QUARANTINE_CHUNK)?;
        let mut batch = self.store.batch();
        for (key, _) in &rows {
            batch.delete_quarantined(key);
        }
        let digests: Vec<Digest> = rows.iter().take(100).map(|(key, _)| key.digest).collect();
        let event = AuditEvent::new(admin.into(), AuditOp::RejectQuarantine)
            .counts(rows.len() as u64, rows.len() as u64)
            .detail(format!("{name}: {} quarantined flags rejected", rows.len()))
            .digests(digests);
        self.commit_audited(batch, event, now)?;
        // Counted after the writer is released: a flood may leave millions to count.
        drop(writer);
        Ok((rows.len() as u32, self.remaining(member)?))
    }

    fn remaining(&self, member: PrincipalId) -> Result<u64> {
        let mut left = 0u64;
        self.store.for_each_quarantined(Some(member), |_, _| left += 1)?;
        if left == 0 {
            self.quarantined_members.write().remove(&member);
        }
        Ok(left)
    }
}
