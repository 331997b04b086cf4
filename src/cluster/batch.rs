//! Group commit: the write sets proposed while the log is busy go into its next entry
//! together.
//!
//! openraft 0.9 appends, syncs and applies one client write at a time, and every entry
//! costs the same hops (its core, the log's sync thread, the state machine, back to the
//! core) whatever it holds: under load those hops, not the writes, made a commit's tail.
//! So at most `IN_FLIGHT` entries are on their way at once; proposals made meanwhile
//! wait in a queue, and the next entry carries every write set queued, one after
//! another (`writeset::concat`: one write set, applied in one RocksDB write), up to
//! `MAX_BATCH_BYTES`. A proposal made while the log is idle goes at once, alone; so does
//! one that ingests files (an import block's). Order is kept: entries carry the queue in
//! the order it was filled, and each proposal is answered when its entry is applied.

use std::sync::Arc;

use openraft::Raft;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Config, Proposal};
use crate::store::{Proposed, StoreError, writeset};

/// Entries proposed and not yet applied, at most: two, so that one is appended and
/// synced while the one before it is applied.
const IN_FLIGHT: usize = 2;
/// The write-set bytes an entry gathers from the queue, at most (a proposal larger alone
/// goes alone): well within what one AppendEntries carries to a follower.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a proposal learns once its entry is applied, or why it was not.
type Outcome = Result<(), String>;

struct Queued<A = oneshot::Sender<Outcome>> {
    proposal: Proposal,
    answer: A,
}

/// The queue in front of a node's log; its task ends when this is dropped.
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    runtime: tokio::runtime::Handle,
}

impl Batcher {
    /// Starts the task that proposes the queue to `raft` (on the current runtime).
    pub fn start(raft: Raft<Config>) -> Batcher {
        let (queue, queued) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(propose_queued(raft, queued));
        Batcher { queue, runtime }
    }

    /// Queues `proposal` behind every earlier one (so the caller may release its locks
    /// once this returns); `Proposed::wait` returns once its entry is applied here.
    pub fn propose(&self, proposal: Proposal) -> Result<Proposed, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Queued { proposal, answer }).map_err(|_| stopped())?;
        let runtime = self.runtime.clone();
        // Commits run on blocking threads (or a runtime thread, which gives up its tasks
        // while it waits).
        Ok(Proposed::pending(move || {
            match tokio::task::block_in_place(|| runtime.block_on(answered)) {
                Ok(outcome) => outcome.map_err(StoreError::Unavailable),
                Err(_) => Err(stopped()),
            }
        }))
    }
}

const STOPPED: &str = "the write was not committed: the replicated log stopped";

fn stopped() -> StoreError {
    StoreError::Unavailable(STOPPED.to_owned())
}

async fn propose_queued(raft: Raft<Config>, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match queued.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Everything queued while the permit was awaited goes into this entry.
        let (proposal, answers, rest) = gather(first, || queued.try_recv().ok());
        held = rest;
        match raft.client_write_ff(proposal).await {
            Ok(response) => {
                tokio::spawn(async move {
                    let outcome = match response.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(forward))) => {
                            Err(super::node::not_leading(&forward))
                        }
                        Ok(Err(err)) => Err(format!("the write was not committed: {err}")),
                        Err(_) => Err(STOPPED.to_owned()),
                    };
                    drop(permit);
                    answer(answers, &outcome);
                });
            }
            Err(err) => answer(answers, &Err(format!("the write was not committed: {err}"))),
        }
    }
}

fn answer(answers: Vec<oneshot::Sender<Outcome>>, outcome: &Outcome) {
    for answer in answers {
        // A caller that stopped waiting has nobody to tell.
        let _ = answer.send(outcome.clone());
    }
}

/// The next entry: `first` and, unless it ingests files, the write sets `next` yields
/// after it, while they fit `MAX_BATCH_BYTES` and ingest none; with the answers of the
/// proposals it carries, in order, and the first proposal taken that it does not carry.
fn gather<A>(first: Queued<A>, mut next: impl FnMut() -> Option<Queued<A>>) -> (Proposal, Vec<A>, Option<Queued<A>>) {
    let Queued { mut proposal, answer } = first;
    let mut answers = vec![answer];
    if !proposal.files.is_empty() {
        return (proposal, answers, None);
    }
    while let Some(queued) = next() {
        let fits =
            queued.proposal.files.is_empty() && proposal.writes.len() + queued.proposal.writes.len() <= MAX_BATCH_BYTES;
        if !fits || !writeset::concat(&mut proposal.writes, &queued.proposal.writes) {
            return (proposal, answers, Some(queued));
        }
        answers.push(queued.answer);
    }
    (proposal, answers, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileKind, WriteSet, cf};

    fn queued(key: &[u8], value_len: usize, files: bool) -> Queued<Vec<u8>> {
        let mut writes = WriteSet::default();
        writes.put(cf::SUMMARIES, key, &vec![7; value_len]);
        let files = match files {
            true => vec![super::super::EntryFile {
                kind: FileKind::Changes,
                len: 0,
                hash: super::super::UNHASHED,
                body: super::super::FileBody::Local("changes.sst".into()),
            }],
            false => Vec::new(),
        };
        Queued {
            proposal: Proposal {
                writes: writes.into_bytes(),
                files,
            },
            answer: key.to_vec(),
        }
    }

    fn keys(proposal: &Proposal) -> Vec<Vec<u8>> {
        writeset::decode(&proposal.writes)
            .unwrap()
            .into_iter()
            .map(|write| match write {
                writeset::Write::Put { key, .. } => key.to_vec(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_entry_carries_the_queue_in_order_up_to_a_proposal_with_files() {
        let mut queue = std::collections::VecDeque::from([
            queued(b"b", 10, false),
            queued(b"c", 10, false),
            queued(b"d", 10, true),
            queued(b"e", 10, false),
        ]);
        let (proposal, answers, rest) = gather(queued(b"a", 10, false), || queue.pop_front());
        assert_eq!(keys(&proposal), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(answers, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(proposal.files.is_empty());
        let rest = rest.expect("the proposal with files is held for the next entry");
        assert_eq!(rest.answer, b"d");

        // One with files goes alone; what follows waits for the next entry.
        let (proposal, answers, rest) = gather(rest, || queue.pop_front());
        assert_eq!(
            (keys(&proposal), answers, rest.is_none()),
            (vec![b"d".to_vec()], vec![b"d".to_vec()], true)
        );
        assert_eq!(proposal.files.len(), 1);
        assert_eq!(queue.len(), 1, "nothing was taken after a proposal with files");
    }

    #[test]
    fn an_entry_gathers_no_more_than_its_byte_bound() {
        let half = MAX_BATCH_BYTES / 2;
        let mut queue = std::collections::VecDeque::from([queued(b"b", half, false), queued(b"c", half, false)]);
        let (proposal, answers, rest) = gather(queued(b"a", 100, false), || queue.pop_front());
        assert_eq!(answers, [b"a".to_vec(), b"b".to_vec()]);
        assert!(proposal.writes.len() <= MAX_BATCH_BYTES);
        assert_eq!(rest.map(|rest| rest.answer), Some(b"c".to_vec()));

        // A proposal larger than the bound alone still goes, alone.
        let mut queue = std::collections::VecDeque::from([queued(b"b", 10, false)]);
        let (proposal, answers, rest) = gather(queued(b"a", MAX_BATCH_BYTES, false), || queue.pop_front());
        assert_eq!((keys(&proposal), answers), (vec![b"a".to_vec()], vec![b"a".to_vec()]));
        assert_eq!(rest.map(|rest| rest.answer), Some(b"b".to_vec()));
    }
}
