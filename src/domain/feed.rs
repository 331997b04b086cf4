//! The member feed behind `Subscribe`: a snapshot of every digest with live flags, then the
//! change log, each event carrying the digest's resulting match. Events carry state, not
//! deltas, so applying one twice or after a later one's snapshot leaves a mirror right.

use std::collections::HashMap;

use super::audit::AuditEvent;
use super::{Caller, Inner, Match};
use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{AuditOp, Category, Change, RetractReason};

/// Digests per snapshot batch, and most changes per live batch.
pub const FEED_BATCH: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOp {
    Snapshot,
    Upsert,
    Retract(RetractReason),
    Expire,
}

#[derive(Debug, Clone)]
pub struct FeedItem {
    pub sequence: u64,
    pub op: FeedOp,
    pub digest: Digest,
    /// The changed flag (unset for snapshot items).
    pub flag: Option<(Kind, Category, String)>,
    pub state: Option<Match>,
}

/// Cursors are opaque to clients: `v1:<sequence>`.
pub fn encode_cursor(sequence: u64) -> String {
    format!("v1:{sequence}")
}

pub fn decode_cursor(cursor: &str) -> Result<u64> {
    cursor
        .strip_prefix("v1:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid(format!("cursor: '{cursor}' is not a cursor this server issued")))
}

/// Streams the snapshot to `emit` in batches (stopping early when it returns false) and
/// returns the sequence number from which live changes continue it.
pub(super) fn snapshot(inner: &Inner, caller: &Caller, mut emit: impl FnMut(Vec<FeedItem>) -> bool) -> Result<u64> {
    // Read before the scan: changes during the scan are sent again afterwards, and as
    // events carry state, the repeat is harmless.
    let head = *inner.writer();
    inner.record(AuditEvent::new(caller.into(), AuditOp::Subscribe).detail("snapshot"))?;
    let now = crate::util::now_ms();
    let mut items = Vec::with_capacity(FEED_BATCH);
    for row in inner.store.all_summaries() {
        let (digest, entries) = row?;
        if let Some(state) = inner.match_of(caller, 0, digest, &entries, now)? {
            items.push(FeedItem {
                sequence: 0,
                op: FeedOp::Snapshot,
                digest,
                flag: None,
                state: Some(state),
            });
        }
        if items.len() == FEED_BATCH && !emit(std::mem::take(&mut items)) {
            return Ok(head);
        }
    }
    if !items.is_empty() {
        emit(items);
    }
    Ok(head)
}

/// Up to `FEED_BATCH` changes after `after`, each with its digest's current match; the
/// sequence covered; the newest sequence.
pub(super) fn changes(inner: &Inner, caller: &Caller, after: u64) -> Result<(Vec<FeedItem>, u64, u64)> {
    let head = *inner.writer();
    let changes = inner.store.changes_after(after, FEED_BATCH)?;
    let covered = changes.last().map_or(after, |(sequence, _)| *sequence);
    let mut digests: Vec<Digest> = changes.iter().map(|(_, change)| change.key.digest).collect();
    digests.sort_unstable();
    digests.dedup();
    let now = crate::util::now_ms();
    let mut states: HashMap<Digest, Option<Match>> = HashMap::with_capacity(digests.len());
    for (digest, entries) in digests.iter().zip(inner.store.get_summaries(&digests)?) {
        let state = match entries {
            Some(entries) => inner.match_of(caller, 0, *digest, &entries, now)?,
            None => None,
        };
        states.insert(*digest, state);
    }
    let items = changes
        .into_iter()
        .map(|(sequence, change)| FeedItem {
            sequence,
            op: match change.change {
                Change::Upsert(_) => FeedOp::Upsert,
                Change::Retract(reason) => FeedOp::Retract(reason),
                Change::Expire => FeedOp::Expire,
            },
            digest: change.key.digest,
            flag: Some((
                change.key.kind,
                change.key.category,
                inner.registry.name_of(change.key.member),
            )),
            state: states[&change.key.digest].clone(),
        })
        .collect();
    Ok((items, covered, head))
}
