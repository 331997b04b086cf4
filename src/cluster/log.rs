//! The Raft log and vote, in the node's own families of the store (`cf::RAFT_LOG`,
//! `cf::RAFT_STATE`). Every write is on disk before it is acknowledged: a vote or an entry
//! a node forgot after a crash could elect two leaders or lose a committed flag. Entries
//! are acknowledged (openraft's `LogFlushed`) by a thread of their own once the WAL behind
//! them is synced, so appends overlap their fsyncs.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use super::files::LogFiles;
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
    /// The files its entries ingest.
    files: LogFiles,
    /// Appends waiting for the disk, in order, to the thread that syncs the WAL behind
    /// them (`sync_appends`). It ends when the last clone is dropped.
    appended: std::sync::mpsc::Sender<LogFlushed<Config>>,
}

impl LogStore {
    pub fn new(store: Arc<Store>) -> LogStore {
        let (appended, flushes) = std::sync::mpsc::channel();
        // Weak: a node that stops closes its store when openraft drops its log, not when
        // this thread next wakes.
        let syncing = Arc::downgrade(&store);
        let started = std::thread::Builder::new()
            .name("flagshare-raft-log".to_owned())
            .spawn(move || sync_appends(&syncing, &flushes));
        if let Err(err) = started {
            // Without the thread every append reports a failed write (its callback is
            // dropped unanswered): the node stops rather than acknowledge unsynced entries.
            tracing::error!(%err, "starting the raft log's sync thread failed");
        }
        let files = LogFiles::of(&store);
        let log = LogStore { store, files, appended };
        // Files of entries the log no longer holds: a node that stopped between keeping a
        // file and writing its entry, or between removing entries and their files.
        if let Err(err) = log.remove_orphan_files() {
            tracing::warn!(%err, "removing files of entries the raft log no longer holds failed");
        }
        log
    }

    fn remove_orphan_files(&self) -> Result<(), StorageError<NodeId>> {
        let purged = self.log_id_row(PURGED)?.map(|log_id| log_id.index);
        let last = self
            .store
            .last_raft_log()
            .map_err(failed::read_logs)?
            .map(|(index, _)| index);
        let removed = self
            .files
            .remove_where(|index| purged.is_some_and(|purged| index <= purged) || last.is_none_or(|last| index > last))
            .map_err(failed::write_logs)?;
        if removed > 0 {
            tracing::info!(removed, "removed files of entries the raft log no longer holds");
        }
        Ok(())
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

/// Syncs the WAL behind each run of appends, then answers them in order, until every
/// `LogStore` of the node is dropped.
fn sync_appends(store: &std::sync::Weak<Store>, flushes: &std::sync::mpsc::Receiver<LogFlushed<Config>>) {
    while let Ok(first) = flushes.recv() {
        let waiting: Vec<LogFlushed<Config>> = std::iter::once(first).chain(flushes.try_iter()).collect();
        // Every append waiting was written before it was queued: one sync covers them all.
        let synced = match store.upgrade() {
            Some(store) => store.persist_wal().map_err(|err| err.to_string()),
            None => Err("the store is closed".to_owned()),
        };
        for callback in waiting {
            callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
        }
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
        let mut kept_files = false;
        let rows = entries
            .into_iter()
            .map(|entry| {
                // An entry's files are kept before its row is written: a row in the log
                // always has its files (a file without its row is removed at the next open).
                if let openraft::EntryPayload::Normal(proposal) = &entry.payload {
                    for file in &proposal.files {
                        self.files.keep(entry.log_id.index, file).map_err(failed::write_logs)?;
                        kept_files = true;
                    }
                }
                Ok((
                    entry.log_id.index,
                    rows::encode_entry(&entry).map_err(failed::write_logs)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError<NodeId>>>()?;
        if kept_files {
            self.files.sync().map_err(failed::write_logs)?;
        }
        // Written at once (readable, as openraft requires when this returns), synced by
        // the log's thread, which tells openraft once the entries are on disk: the core
        // goes on to the next entries meanwhile, and one fsync covers every append that
        // arrived while the last one ran, as concurrent commits share one on a single
        // server.
        if let Err(err) = self.store.append_raft_log(&rows) {
            callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
            return Err(failed::write_logs(err));
        }
        self.appended
            .send(callback)
            .map_err(|std::sync::mpsc::SendError(callback)| {
                let stopped = || std::io::Error::other("the raft log's sync thread stopped");
                callback.log_io_completed(Err(stopped()));
                failed::write_logs(stopped())
            })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store.truncate_raft_log(log_id.index).map_err(failed::write_logs)?;
        self.files
            .remove_where(|index| index >= log_id.index)
            .map_err(failed::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store
            .purge_raft_log(log_id.index, PURGED, &rows::encode_log_id(&log_id))
            .map_err(failed::write_logs)?;
        self.files
            .remove_where(|index| index <= log_id.index)
            .map_err(failed::write_logs)?;
        Ok(())
    }
}
