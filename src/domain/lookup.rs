//! `Query` and `RangeQuery`: reads of the `summaries` family, each audited without
//! waiting for the disk.

use super::audit::AuditEvent;
use super::flags::Match;
use super::principals::Caller;
use super::state::State;
use super::{MAX_RANGE_PREFIX, MIN_RANGE_PREFIX};
use crate::digest::{DIGEST_LEN, Digest};
use crate::error::{Error, Result};
use crate::model::AuditOp;

/// Most matches one `RangeQuery` page returns. A bucket is normally small (about 150
/// digests of 10,000,000 under a 2-byte prefix), but any member can fill one on purpose:
/// the page bounds what one call costs, and `page_after` reads on.
pub const MAX_RANGE_MATCHES: usize = 2_000;

impl State {
    pub(super) fn query(&self, caller: &Caller, digests: &[Digest], now: i64) -> Result<Vec<Match>> {
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
        self.record_read(event, now)?;
        Ok(matches)
    }

    pub(super) fn range_query(
        &self,
        caller: &Caller,
        prefix: &[u8],
        page_after: &[u8],
        now: i64,
    ) -> Result<(Vec<Match>, Option<Digest>)> {
        if !(MIN_RANGE_PREFIX..=MAX_RANGE_PREFIX).contains(&prefix.len()) {
            return Err(Error::invalid(format!(
                "prefix: {} bytes, expected {MIN_RANGE_PREFIX} to {MAX_RANGE_PREFIX}",
                prefix.len()
            )));
        }
        let after: Option<Digest> = match page_after.len() {
            0 => None,
            DIGEST_LEN => {
                let mut digest = [0u8; DIGEST_LEN];
                digest.copy_from_slice(page_after);
                if !digest.starts_with(prefix) {
                    return Err(Error::invalid("page_after: the digest does not start with prefix"));
                }
                Some(digest)
            }
            n => {
                return Err(Error::invalid(format!(
                    "page_after: {n} bytes, expected 0 or {DIGEST_LEN}"
                )));
            }
        };
        let rows = self.store.summaries_with_prefix(prefix, after, MAX_RANGE_MATCHES)?;
        // A full page may have more after it: the last digest read is where the next starts.
        let next_after = (rows.len() == MAX_RANGE_MATCHES)
            .then(|| rows.last().map(|(digest, _)| *digest))
            .flatten();
        let mut matches = Vec::with_capacity(rows.len());
        for (digest, entries) in rows {
            if let Some(found) = self.match_of(caller, 0, digest, &entries, now)? {
                matches.push(found);
            }
        }
        // The prefix is all the server learns; the entry says how big the answer was.
        let event = AuditEvent::new(caller.into(), AuditOp::RangeQuery)
            .counts(1, matches.len() as u64)
            .detail(format!("prefix {}", hex::encode(prefix)));
        self.record_read(event, now)?;
        Ok((matches, next_after))
    }
}
