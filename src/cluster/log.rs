//! The Raft log and vote, in the node's own families of the store (`cf::RAFT_LOG`,
//! `cf::RAFT_STATE`). Every write is on disk before it is acknowledged: a vote or an entry
//! a node forgot after a crash could elect two leaders or lose a committed flag.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use super::rows::{self, COMMITTED, PURGED, VOTE};
use super::{Config, Entry, NodeId, failed};
use crate::store::Store;

/// Entries one read returns at most (a replication batch).
const READ_LIMIT: usize = 4_096;

/// The log of one node; clones share the store (openraft reads through one while it
/// appends through another).
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    pub fn new(store: Arc<Store>) -> LogStore {
        LogStore { store }
    }

    /// The last entry this node knew committed when it last wrote that down.
    pub fn committed(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.log_id_row(COMMITTED)
    }

    fn log_id_row(&self, key: &[u8]) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.store
            .raft_state(key)
            .map_err(failed::read_logs)?
            .map(|bytes| rows::decode_log_id(&bytes).map_err(failed::read_logs))
            .transpose()
    }

    fn entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.store
            .raft_log_between(from, to, limit)
            .map_err(failed::read_logs)?
            .into_iter()
            .map(|(index, bytes)| rows::decode_entry(index, &bytes).map_err(failed::read_logs))
            .collect()
    }
}

impl RaftLogReader<Config> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(from) => *from,
            Bound::Excluded(from) => from.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(to) => to.saturating_add(1),
            Bound::Excluded(to) => *to,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(from, to, usize::MAX)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.entries(start, end, READ_LIMIT)
    }
}

impl RaftLogStorage<Config> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Config>, StorageError<NodeId>> {
        let last_purged_log_id = self.log_id_row(PURGED)?;
        let last = match self.store.last_raft_log().map_err(failed::read_logs)? {
            Some((index, bytes)) => Some(rows::decode_entry(index, &bytes).map_err(failed::read_logs)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store
            .put_raft_state(&[(VOTE, rows::encode_vote(vote))])
            .map_err(failed::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.store
            .raft_state(VOTE)
            .map_err(failed::read_vote)?
            .map(|bytes| rows::decode_vote(&bytes).map_err(failed::read_vote))
            .transpose()
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        match committed {
            Some(log_id) => self
                .store
                .note_raft_state(&[(COMMITTED, rows::encode_log_id(&log_id))])
                .map_err(failed::write_logs),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.log_id_row(COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Config>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| {
                Ok((
                    entry.log_id.index,
                    rows::encode_entry(&entry).map_err(failed::write_logs)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError<NodeId>>>()?;
        let store = self.store.clone();
        // The write waits for the disk: off the runtime's threads.
        let written = tokio::task::spawn_blocking(move || store.append_raft_log(&rows))
            .await
            .map_err(failed::write_logs)?;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                Err(failed::write_logs(err))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store.truncate_raft_log(log_id.index).map_err(failed::write_logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store
            .purge_raft_log(log_id.index, PURGED, &rows::encode_log_id(&log_id))
            .map_err(failed::write_logs)
    }
}
