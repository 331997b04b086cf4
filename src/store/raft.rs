//! What a replicated operator's Raft (`crate::cluster`) keeps in the store: its log and
//! state rows (`cf::RAFT_LOG`, `cf::RAFT_STATE`), write sets applied with the log id they
//! came from, and the replicated families dumped for a snapshot or replaced by one.
//! Rows are opaque bytes here; `cluster` encodes them.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::writeset::{self, Write};
use super::{Store, StoreError, cf, keys};

/// Above every key of every replicated family (the longest binary key is 40 bytes; text
/// keys are UTF-8, which never holds 0xFF): `delete_range` from empty to here empties one.
const PAST_EVERY_KEY: [u8; 64] = [0xFF; 64];

/// Rows of a snapshot are written this many bytes per commit, so installing one never
/// holds a whole store in one batch.
const INSTALL_BATCH_BYTES: usize = 8 << 20;

/// One row of a replicated family: its index in `cf::REPLICATED`, key and value.
pub type Row = (u8, Vec<u8>, Vec<u8>);

impl Store {
    fn synced() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    pub fn raft_state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf::RAFT_STATE), key)?)
    }

    /// Writes `rows` of `cf::RAFT_STATE` at once, on disk before it returns (a vote must
    /// survive a crash).
    pub fn put_raft_state(&self, rows: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in rows {
            batch.put_cf(self.cf(cf::RAFT_STATE), key, value);
        }
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }

    /// Writes `rows` of `cf::RAFT_STATE` without waiting for the disk (the committed index:
    /// a hint openraft can do without after a crash).
    pub fn note_raft_state(&self, rows: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in rows {
            batch.put_cf(self.cf(cf::RAFT_STATE), key, value);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Waits until every write so far is on disk, whatever `sync_writes` says: before a
    /// snapshot lets the log behind it go.
    pub fn persist_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Flushes every family (together, on a replicated store): what the state machine
    /// applied without the WAL is on disk when this returns.
    pub fn persist_applied(&self) -> Result<(), StoreError> {
        let families: Vec<_> = cf::all().map(|name| self.cf(name)).collect();
        let mut options = rocksdb::FlushOptions::default();
        options.set_wait(true);
        self.db.flush_cfs_opt(&families, &options)?;
        Ok(())
    }

    /// Appends log entries (index, encoded entry) without waiting for the disk: readable
    /// at once, on disk after the next `persist_wal` (`cluster::log` waits for it before it
    /// tells openraft they are).
    pub fn append_raft_log(&self, rows: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (index, row) in rows {
            batch.put_cf(self.cf(cf::RAFT_LOG), keys::sequence_key(*index), row);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Log entries with `from <= index < to`, in order, at most `limit`.
    pub fn raft_log_between(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = keys::sequence_key(from);
        let mut rows = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(cf::RAFT_LOG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            let index = keys::decode_sequence_key(&key)?;
            if index >= to || rows.len() >= limit {
                break;
            }
            rows.push((index, value.into_vec()));
        }
        Ok(rows)
    }

    /// The newest log entry, if any.
    pub fn last_raft_log(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.db.iterator_cf(self.cf(cf::RAFT_LOG), IteratorMode::End).next() {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((keys::decode_sequence_key(&key)?, value.into_vec())))
            }
            None => Ok(None),
        }
    }

    /// Deletes log entries from `from` on (a conflicting suffix), on disk before it returns.
    pub fn truncate_raft_log(&self, from: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(cf::RAFT_LOG),
            keys::sequence_key(from),
            keys::sequence_key(u64::MAX),
        );
        // `u64::MAX` itself is past the range's end; no index gets there.
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }

    /// Deletes log entries up to and including `through`, and records `purged` (the log id
    /// of the last one) under `purged_key` in the same write.
    pub fn purge_raft_log(&self, through: u64, purged_key: &[u8], purged: &[u8]) -> Result<(), StoreError> {
        // What the entries wrote may be in memory only (applied without the WAL): on disk
        // first, or a stop now would lose rows that no log entry holds any more.
        self.persist_applied()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::RAFT_STATE), purged_key, purged);
        batch.delete_range_cf(
            self.cf(cf::RAFT_LOG),
            keys::sequence_key(0),
            keys::sequence_key(through.saturating_add(1)),
        );
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }

    /// Applies a committed entry: its write set (decoded whole first, so a damaged one
    /// changes nothing) and `raft_rows` (the applied log id, a membership) in one write.
    /// It does not wait for the disk: the entry is on disk in the log (whose synced
    /// appends share this WAL), and a node that loses the write re-applies the entry.
    pub fn apply_write_set(&self, set: &[u8], raft_rows: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        let _noting = self.presence.noting();
        let mut batch = WriteBatch::default();
        for write in writeset::decode(set)? {
            match write {
                Write::Put { family, key, value } => {
                    if family == cf::SUMMARIES {
                        self.presence.note(key);
                    }
                    batch.put_cf(self.cf(family), key, value);
                }
                Write::Delete { family, key } => batch.delete_cf(self.cf(family), key),
                Write::DeleteRange { family, from, to } => batch.delete_range_cf(self.cf(family), from, to),
            }
        }
        for (key, value) in raft_rows {
            batch.put_cf(self.cf(cf::RAFT_STATE), key, value);
        }
        self.db.write_opt(batch, &self.apply_options)?;
        Ok(())
    }

    /// Applies a committed entry that ingests files (`files`: kind and where the log keeps
    /// each, in `FileKind` order): digests noted, change rows then summary rows ingested,
    /// then the write set and `raft_rows` as `apply_write_set`. The log's files stay where
    /// they are (a hard link is ingested). A node that stops midway applies the entry
    /// again: each file holds whole rows, the same bytes each time, and every later entry
    /// is applied again after it.
    pub fn apply_ingesting(
        &self,
        set: &[u8],
        files: &[(super::FileKind, std::path::PathBuf)],
        raft_rows: &[(&[u8], Vec<u8>)],
    ) -> Result<(), StoreError> {
        // Decoded whole before anything is ingested: a damaged write set changes nothing.
        writeset::decode(set)?;
        let _noting = self.presence.noting();
        let staging = self.staging_dir();
        for (kind, path) in files {
            match kind {
                super::FileKind::Digests => {
                    let digests = std::fs::read(path)?;
                    if digests.len() % 32 != 0 {
                        return Err(super::DecodeError {
                            what: "digests file",
                            reason: format!("{} bytes, not a multiple of 32", digests.len()),
                        }
                        .into());
                    }
                    // The leader noted its own block's as it built the files.
                    if !self.presence.noted_ahead(blake3::hash(&digests).as_bytes()) {
                        self.presence.note_all(digests.chunks_exact(32));
                    }
                }
                super::FileKind::Changes | super::FileKind::Summaries => {
                    let family = match kind {
                        super::FileKind::Changes => cf::CHANGES,
                        _ => cf::SUMMARIES,
                    };
                    let name = path
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let link = staging.join(format!("apply-{name}"));
                    super::create_private_folder(&link)?;
                    match std::fs::remove_file(&link) {
                        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                        _ => {}
                    }
                    std::fs::hard_link(path, &link)?;
                    self.ingest(family, &link)?;
                }
            }
        }
        self.apply_write_set(set, raft_rows)
    }

    /// Every row of every replicated family as of one moment, in family then key order
    /// (`visit(family index in cf::REPLICATED, key, value)`), and the `cf::RAFT_STATE` rows
    /// `raft_keys` as of the same moment: what a snapshot holds.
    pub fn dump_replicated(
        &self,
        raft_keys: &[&[u8]],
        mut visit: impl FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let snapshot = self.db.snapshot();
        let raft_rows = raft_keys
            .iter()
            .map(|key| snapshot.get_cf(self.cf(cf::RAFT_STATE), key))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, family) in (0u8..).zip(cf::REPLICATED) {
            for item in snapshot.iterator_cf(self.cf(family), IteratorMode::Start) {
                let (key, value) = item?;
                visit(index, &key, &value)?;
            }
        }
        Ok(raft_rows)
    }

    /// Every replicated row, as a snapshot would carry it (tests compare copies with it).
    #[cfg(test)]
    pub fn replicated_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let dumped = self.dump_replicated(&[], |family, key, value| {
            rows.push((family, key.to_vec(), value.to_vec()));
            Ok(())
        });
        assert!(dumped.is_ok(), "dumping the replicated rows: {dumped:?}");
        rows
    }

    /// Replaces every replicated family with `rows` (family index, key, value, as
    /// `dump_replicated` gave them) and writes `raft_rows` last. Not atomic: the caller
    /// marks the install under way first and repeats it after a crash.
    pub fn replace_replicated(
        &self,
        rows: impl Iterator<Item = Result<Row, StoreError>>,
        raft_rows: &[(&[u8], Vec<u8>)],
    ) -> Result<(), StoreError> {
        // Every digest is noted again as its row is written; the filter is ready again at
        // the end (a replacement cut short leaves it unready until the next open scans).
        let _noting = self.presence.noting();
        let generation = self.presence.reset(0);
        let mut batch = WriteBatch::default();
        for family in cf::REPLICATED {
            batch.delete_range_cf(self.cf(family), &[][..], &PAST_EVERY_KEY[..]);
        }
        for row in rows {
            let (index, key, value) = row?;
            let family = *cf::REPLICATED
                .get(usize::from(index))
                .ok_or_else(|| super::DecodeError {
                    what: "snapshot row",
                    reason: format!("unknown family {index}"),
                })?;
            if family == cf::SUMMARIES {
                self.presence.note(&key);
            }
            batch.put_cf(self.cf(family), key, value);
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                self.db.write_opt(std::mem::take(&mut batch), &self.write_options)?;
            }
        }
        for (key, value) in raft_rows {
            batch.put_cf(self.cf(cf::RAFT_STATE), key, value);
        }
        self.db.write_opt(batch, &Self::synced())?;
        self.presence.set_ready(generation);
        Ok(())
    }

    /// Deletes a `cf::RAFT_STATE` row, on disk before it returns.
    pub fn delete_raft_state(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db.delete_cf_opt(self.cf(cf::RAFT_STATE), key, &Self::synced())?;
        Ok(())
    }
}
