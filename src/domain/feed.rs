//! The member feed behind `Subscribe`: a snapshot of every digest with live flags, then the
//! change log, each event carrying the digest's resulting match. Events carry state, not
//! deltas, so applying one twice or after a later one's snapshot leaves a mirror right.

use std::collections::HashMap;

use super::flags::Match;
use super::principals::Caller;
use super::state::State;
use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};
use crate::model::{Category, Change, RetractReason};

/// Digests per snapshot batch, and most changes per live batch.
pub const FEED_BATCH: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOp {
    Snapshot,
    Upsert,
    Retract(RetractReason),
    Expire,
    /// Another member disputed the flag; the state carries the new dispute count.
    Dispute,
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

/// Cursors are opaque to clients: `v2:<database identity, 16 hex>:<sequence>`. The
/// identity changes when a database is restored from a backup, so a cursor handed out
/// before cannot silently skip what the restore undid.
pub fn encode_cursor(db_identity: &[u8; 8], sequence: u64) -> String {
    format!("v2:{}:{sequence}", hex::encode(db_identity))
}

/// The sequence a cursor resumes after. A cursor of another database (a restore, or
/// another server) or of an older format is `OutOfRange`: the reader starts again with a
/// snapshot.
pub fn decode_cursor(cursor: &str, db_identity: &[u8; 8]) -> Result<u64> {
    let malformed = || Error::invalid(format!("cursor: '{cursor}' is not a cursor this server issued"));
    if cursor.starts_with("v1:") {
        return Err(Error::OutOfRange(
            "cursor: an older cursor format without a database identity; start again with a snapshot (empty cursor)"
                .to_owned(),
        ));
    }
    let mut parts = cursor.strip_prefix("v2:").ok_or_else(malformed)?.splitn(2, ':');
    let identity = parts.next().ok_or_else(malformed)?;
    let sequence: u64 = parts.next().and_then(|n| n.parse().ok()).ok_or_else(malformed)?;
    if identity.len() != 16 || hex::decode(identity).is_err() {
        return Err(malformed());
    }
    if identity != hex::encode(db_identity) {
        return Err(Error::OutOfRange(
            "cursor: it belongs to another database (this one was restored from a backup or replaced); start again with a snapshot (empty cursor)"
                .to_owned(),
        ));
    }
    Ok(sequence)
}

/// One chunk of the snapshot: the live matches of up to `FEED_BATCH` digests after
/// `after`, and the last digest read (`None` once the whole table was read). The caller
/// reads the head before the first chunk: changes during the snapshot are sent again after
/// it, and as events carry state, the repeat is harmless.
pub(super) fn snapshot_chunk(
    state: &State,
    caller: &Caller,
    after: Option<Digest>,
) -> Result<(Vec<FeedItem>, Option<Digest>)> {
    let now = crate::util::now_ms();
    let rows = state.store.summaries_after(after, FEED_BATCH)?;
    let last = (rows.len() == FEED_BATCH)
        .then(|| rows.last().map(|(digest, _)| *digest))
        .flatten();
    let mut items = Vec::with_capacity(rows.len());
    for (digest, entries) in rows {
        if let Some(state) = state.match_of(caller, 0, digest, &entries, now)? {
            items.push(FeedItem {
                sequence: 0,
                op: FeedOp::Snapshot,
                digest,
                flag: None,
                state: Some(state),
            });
        }
    }
    Ok((items, last))
}

/// Up to `FEED_BATCH` changes after `after`, each with its digest's current match; the
/// sequence covered; the newest sequence.
pub(super) fn changes(state: &State, caller: &Caller, after: u64) -> Result<(Vec<FeedItem>, u64, u64)> {
    let (changes, head) = state.changes_to_head(after, FEED_BATCH)?;
    // Nothing after `after`: everything up to the head is covered (rows up to it may have
    // been deleted), else up to the last row read.
    let covered = changes.last().map_or(after.max(head), |(sequence, _)| *sequence);
    let mut digests: Vec<Digest> = changes.iter().map(|(_, change)| change.key.digest).collect();
    digests.sort_unstable();
    digests.dedup();
    let now = crate::util::now_ms();
    let mut states: HashMap<Digest, Option<Match>> = HashMap::with_capacity(digests.len());
    for (digest, entries) in digests.iter().zip(state.store.get_summaries(&digests)?) {
        let state = match entries {
            Some(entries) => state.match_of(caller, 0, *digest, &entries, now)?,
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
                Change::Dispute => FeedOp::Dispute,
            },
            digest: change.key.digest,
            flag: Some((
                change.key.kind,
                change.key.category,
                state.registry.name_of(change.key.member),
            )),
            state: states.get(&change.key.digest).cloned().flatten(),
        })
        .collect();
    Ok((items, covered, head))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_cursor_names_its_database() {
        let identity = [1, 2, 3, 4, 5, 6, 7, 8];
        let cursor = encode_cursor(&identity, 42);
        assert_eq!(cursor, "v2:0102030405060708:42");
        assert_eq!(decode_cursor(&cursor, &identity).unwrap(), 42);
        let restored = decode_cursor(&cursor, &[9; 8]).unwrap_err();
        assert!(matches!(restored, Error::OutOfRange(_)), "{restored:?}");
        assert!(matches!(decode_cursor("v1:42", &identity), Err(Error::OutOfRange(_))));
        for bad in [
            "",
            "v2:",
            "v2:0102030405060708",
            "v2:zz02030405060708:1",
            "v2:0102:1",
            "v3:1",
        ] {
            assert!(
                matches!(decode_cursor(bad, &identity), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_text_is_a_cursor_or_a_refusal(text in "\\PC{0,60}", identity in any::<[u8; 8]>()) {
            let _ = decode_cursor(&text, &identity);
        }

        #[test]
        fn cursors_round_trip(identity in any::<[u8; 8]>(), sequence in any::<u64>()) {
            prop_assert_eq!(decode_cursor(&encode_cursor(&identity, sequence), &identity).unwrap(), sequence);
        }
    }
}
