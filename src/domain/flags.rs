//! The rules for flags: what a valid submission is, how a resubmission updates a flag,
//! and how the flags on a digest add up to a match.

use std::collections::BTreeSet;

use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{Category, Distribution, FlagKey, FlagRecord, PrincipalId, SummaryEntry};

/// Most flags, digests or selectors in one call. Larger sets are sent as several calls.
pub const MAX_BATCH: usize = 10_000;
/// Longest member-side reference, in bytes.
pub const MAX_REFERENCE_LEN: usize = 128;
/// How far in the future an `observed_at` may lie before it is refused as a clock error.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// A flag as submitted, after wire-level decoding.
#[derive(Debug, Clone)]
pub struct NewFlag {
    pub digest: Digest,
    pub kind: Kind,
    pub category: Category,
    pub confidence: u32,
    pub observed_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub reference: Vec<u8>,
    /// `None`: the operator's default.
    pub distribution: Option<Distribution>,
}

/// Selects some of the caller's flags on one digest; `None` selects every kind or category.
#[derive(Debug, Clone)]
pub struct FlagSelector {
    pub digest: Digest,
    pub kind: Option<Kind>,
    pub category: Option<Category>,
}

impl FlagSelector {
    pub fn selects(&self, member: PrincipalId, entry: &SummaryEntry) -> bool {
        entry.member == member
            && self.kind.is_none_or(|kind| kind == entry.kind)
            && self.category.is_none_or(|category| category == entry.category)
    }
}

/// What a query reports about one digest that at least one member flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub index: u32,
    pub digest: Digest,
    /// Distinct flagging members, by name, sorted.
    pub members: Vec<String>,
    pub categories: Vec<Category>,
    pub kinds: Vec<Kind>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub max_confidence: u8,
    pub flagged_by_caller: bool,
    /// Disputes by members of the flags of members in `members`.
    pub n_disputes: u32,
}

/// Checks the size of a batch: it must hold 1 to `MAX_BATCH` items.
pub fn check_batch_len(field: &str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::invalid(format!("{field}: the batch is empty")));
    }
    if len > MAX_BATCH {
        return Err(Error::invalid(format!(
            "{field}: the batch holds {len} items, the limit is {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// Checks each flag against the rules; the first violation names the item and field.
pub fn validate_new_flags(flags: &[NewFlag], now_ms: i64) -> Result<()> {
    validate_new_flags_from(flags, now_ms, 0)
}

/// As `validate_new_flags`, the items numbered from `first_index` (a message of an import
/// names its items by their place in the whole import).
pub fn validate_new_flags_from(flags: &[NewFlag], now_ms: i64, first_index: usize) -> Result<()> {
    check_batch_len("flags", flags.len())?;
    for (index, flag) in flags.iter().enumerate() {
        let index = first_index + index;
        if flag.confidence > 100 {
            return Err(Error::invalid(format!(
                "flags[{index}].confidence: {} is above 100",
                flag.confidence
            )));
        }
        if flag.reference.len() > MAX_REFERENCE_LEN {
            return Err(Error::invalid(format!(
                "flags[{index}].reference: {} bytes, the limit is {MAX_REFERENCE_LEN}",
                flag.reference.len()
            )));
        }
        if let Some(observed_at_ms) = flag.observed_at_ms
            && observed_at_ms > now_ms + MAX_CLOCK_SKEW_MS
        {
            return Err(Error::invalid(format!(
                "flags[{index}].observed_at: {} lies in the future",
                crate::util::format_ms(observed_at_ms)
            )));
        }
        if let Some(expires_at_ms) = flag.expires_at_ms
            && expires_at_ms <= now_ms
        {
            return Err(Error::invalid(format!(
                "flags[{index}].expires_at: {} is not in the future",
                crate::util::format_ms(expires_at_ms)
            )));
        }
    }
    Ok(())
}

/// The stored record after `new` is applied on top of `existing` (if the member had
/// already raised this flag): times widen, confidence and expiry take the latest word.
pub fn merge_flag(
    existing: Option<&FlagRecord>,
    new: &NewFlag,
    key_id: u32,
    default_expires_at_ms: i64,
    default_distribution: Distribution,
    now_ms: i64,
) -> FlagRecord {
    // A resubmission that names no distribution keeps the stored one: a `local` flag
    // must not leave by being submitted again without the field.
    let distribution = new
        .distribution
        .or(existing.map(|old| old.distribution))
        .unwrap_or(default_distribution);
    let observed_at_ms = new.observed_at_ms.unwrap_or(now_ms);
    // The operator's per-category retention is the longest a flag may live; a member may
    // ask for less, never more.
    let expires_at_ms = new
        .expires_at_ms
        .map_or(default_expires_at_ms, |asked| asked.min(default_expires_at_ms));
    let confidence = new.confidence as u8;
    match existing {
        None => FlagRecord {
            confidence,
            first_seen_ms: observed_at_ms,
            last_seen_ms: observed_at_ms,
            expires_at_ms,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            key_id,
            reference: new.reference.clone(),
            distribution,
            origin_sequence: 0,
        },
        Some(old) => FlagRecord {
            confidence,
            first_seen_ms: old.first_seen_ms.min(observed_at_ms),
            last_seen_ms: old.last_seen_ms.max(observed_at_ms),
            expires_at_ms,
            created_at_ms: old.created_at_ms,
            updated_at_ms: now_ms,
            key_id,
            reference: if new.reference.is_empty() {
                old.reference.clone()
            } else {
                new.reference.clone()
            },
            distribution,
            origin_sequence: 0,
        },
    }
}

/// Replaces (or adds) the entry of `key` in a digest's summary; `sequence` is the
/// change-log upsert holding `record`. Returns the sequence of the upsert the entry named
/// before, which the new one supersedes.
pub fn upsert_summary_entry(
    entries: &mut Vec<SummaryEntry>,
    key: &FlagKey,
    record: &FlagRecord,
    sequence: u64,
) -> Option<u64> {
    let entry = SummaryEntry::from_flag(key, record, sequence);
    match entries.iter_mut().find(|existing| existing.same_flag(key)) {
        Some(existing) => Some(std::mem::replace(existing, entry).sequence),
        None => {
            entries.push(entry);
            None
        }
    }
}

/// Adds up the unexpired flags on one digest. `None` when every flag has expired.
pub fn aggregate(
    index: u32,
    digest: Digest,
    entries: &[SummaryEntry],
    caller: PrincipalId,
    now_ms: i64,
    name_of: impl Fn(PrincipalId) -> String,
) -> Option<Match> {
    let mut members = BTreeSet::new();
    let mut categories = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut first_seen_ms = i64::MAX;
    let mut last_seen_ms = i64::MIN;
    let mut max_confidence = 0;
    for entry in entries.iter().filter(|entry| entry.expires_at_ms > now_ms) {
        members.insert(entry.member);
        categories.insert(entry.category);
        kinds.insert(entry.kind);
        first_seen_ms = first_seen_ms.min(entry.first_seen_ms);
        last_seen_ms = last_seen_ms.max(entry.last_seen_ms);
        max_confidence = max_confidence.max(entry.confidence);
    }
    if members.is_empty() {
        return None;
    }
    let mut member_names: Vec<String> = members.iter().map(|id| name_of(*id)).collect();
    member_names.sort();
    Some(Match {
        index,
        digest,
        flagged_by_caller: members.contains(&caller),
        members: member_names,
        categories: categories.into_iter().collect(),
        kinds: kinds.into_iter().collect(),
        first_seen_ms,
        last_seen_ms,
        max_confidence,
        n_disputes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_flag(confidence: u32) -> NewFlag {
        NewFlag {
            digest: [1; 32],
            kind: Kind::Email,
            category: Category::Grooming,
            confidence,
            observed_at_ms: Some(1_000),
            expires_at_ms: None,
            reference: Vec::new(),
            distribution: None,
        }
    }

    fn entry(member: u32, category: Category, confidence: u8, expires_at_ms: i64) -> SummaryEntry {
        SummaryEntry {
            member,
            kind: Kind::Email,
            category,
            confidence,
            first_seen_ms: 100 * member as i64,
            last_seen_ms: 1000 + member as i64,
            expires_at_ms,
            distribution: crate::model::Distribution::Federated,
            sequence: u64::from(member),
        }
    }

    #[test]
    fn validation_names_the_item_and_field() {
        let now = 10_000;
        let mut flags = vec![new_flag(50), new_flag(101)];
        assert_eq!(
            validate_new_flags(&flags, now).unwrap_err().to_string(),
            "flags[1].confidence: 101 is above 100"
        );
        flags[1].confidence = 1;
        flags[1].reference = vec![0; 129];
        assert!(
            validate_new_flags(&flags, now)
                .unwrap_err()
                .to_string()
                .starts_with("flags[1].reference")
        );
        flags[1].reference.clear();
        flags[0].expires_at_ms = Some(now - 1);
        assert!(
            validate_new_flags(&flags, now)
                .unwrap_err()
                .to_string()
                .starts_with("flags[0].expires_at")
        );
        flags[0].expires_at_ms = None;
        flags[0].observed_at_ms = Some(now + MAX_CLOCK_SKEW_MS + 1);
        assert!(
            validate_new_flags(&flags, now)
                .unwrap_err()
                .to_string()
                .starts_with("flags[0].observed_at")
        );
        assert!(validate_new_flags(&[], now).unwrap_err().to_string().contains("empty"));
        let too_many = vec![new_flag(1); MAX_BATCH + 1];
        assert!(
            validate_new_flags(&too_many, now)
                .unwrap_err()
                .to_string()
                .contains("limit is 10000")
        );
    }

    #[test]
    fn resubmission_widens_times_and_keeps_creation() {
        let first = merge_flag(None, &new_flag(40), 1, 9_999, Distribution::Federated, 5_000);
        let mut again = new_flag(90);
        again.observed_at_ms = Some(3_000);
        let merged = merge_flag(Some(&first), &again, 1, 9_999, Distribution::Federated, 6_000);
        assert_eq!(merged.confidence, 90);
        assert_eq!(merged.first_seen_ms, 1_000);
        assert_eq!(merged.last_seen_ms, 3_000);
        assert_eq!(merged.created_at_ms, 5_000);
        assert_eq!(merged.updated_at_ms, 6_000);
    }

    #[test]
    fn a_resubmission_without_a_distribution_keeps_the_stored_one() {
        let mut local = new_flag(40);
        local.distribution = Some(Distribution::Local);
        let first = merge_flag(None, &local, 1, 9_999, Distribution::Federated, 5_000);
        assert_eq!(first.distribution, Distribution::Local);
        let again = merge_flag(Some(&first), &new_flag(50), 1, 9_999, Distribution::Federated, 6_000);
        assert_eq!(again.distribution, Distribution::Local, "not the operator's default");
        let mut shared = new_flag(50);
        shared.distribution = Some(Distribution::Federated);
        let shared = merge_flag(Some(&again), &shared, 1, 9_999, Distribution::Local, 7_000);
        assert_eq!(shared.distribution, Distribution::Federated, "an explicit choice wins");
    }

    #[test]
    fn a_member_may_shorten_the_retention_but_not_extend_it() {
        let mut shorter = new_flag(40);
        shorter.expires_at_ms = Some(7_000);
        assert_eq!(
            merge_flag(None, &shorter, 1, 9_999, Distribution::Federated, 5_000).expires_at_ms,
            7_000
        );
        let mut longer = new_flag(40);
        longer.expires_at_ms = Some(50_000);
        assert_eq!(
            merge_flag(None, &longer, 1, 9_999, Distribution::Federated, 5_000).expires_at_ms,
            9_999
        );
        assert_eq!(
            merge_flag(None, &new_flag(40), 1, 9_999, Distribution::Federated, 5_000).expires_at_ms,
            9_999
        );
    }

    #[test]
    fn aggregation_counts_distinct_members_and_skips_expired_flags() {
        let entries = vec![
            entry(1, Category::Grooming, 40, 10_000),
            entry(1, Category::Sextortion, 60, 10_000),
            entry(2, Category::Grooming, 70, 10_000),
            entry(3, Category::Trafficking, 99, 500),
        ];
        let name_of = |id: u32| format!("m{id}");
        let found = aggregate(7, [1; 32], &entries, 2, 1_000, name_of).unwrap();
        assert_eq!(found.members, vec!["m1", "m2"]);
        assert_eq!(found.categories, vec![Category::Grooming, Category::Sextortion]);
        assert_eq!(found.max_confidence, 70);
        assert_eq!(found.first_seen_ms, 100);
        assert_eq!(found.last_seen_ms, 1002);
        assert!(found.flagged_by_caller);
        let only_expired = [entry(3, Category::Trafficking, 99, 500)];
        assert!(aggregate(0, [1; 32], &only_expired, 2, 1_000, name_of).is_none());
    }
}
