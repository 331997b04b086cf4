//! The state machine: committed write sets applied to the replicated families with the
//! log id in the same write, and snapshots of those families.
//!
//! A snapshot is every replicated row as of one moment (a RocksDB snapshot), in a file:
//! `MAGIC`, rows `family u8 | key (u32 BE length, bytes) | value (likewise)`, an end
//! byte `0xFF`, then the BLAKE3 hash of everything before it. A received file is checked
//! whole (hash and layout) before the store is touched. Installing one replaces every
//! replicated family; a row `installing` in `cf::RAFT_STATE` marks the replacement under
//! way, and a node that stops midway installs the kept file again when it opens.

use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership};

use super::rows::{self, APPLIED, INSTALLING, MEMBERSHIP_KEY, SNAPSHOT, Stored};
use super::{Config, Entry, NodeId, failed};
use crate::store::{DecodeError, Row, Store, StoreError};

const MAGIC: &[u8; 8] = b"FSSNAP1\n";
const END: u8 = 0xFF;
/// The longest key or value a snapshot row may hold (a summary row of 16,384 entries is
/// 640 KiB): a damaged length is refused before anything is allocated for it.
const MAX_PART: usize = 16 << 20;

type Meta = SnapshotMeta<NodeId, super::ClusterNode>;

/// The state machine of one node over its store.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    /// The files entries ingest, kept by the log.
    files: super::files::LogFiles,
    /// Where the current snapshot (`current`) and those being built or received live.
    dir: PathBuf,
}

impl StateMachine {
    /// The state machine of `store`, finishing a snapshot install a stopped node left
    /// under way.
    pub fn open(store: Arc<Store>) -> Result<StateMachine, StorageError<NodeId>> {
        let dir = store.path().with_extension("snapshot");
        std::fs::create_dir_all(&dir).map_err(failed::write_snapshot)?;
        let files = super::files::LogFiles::of(&store);
        let machine = StateMachine { store, files, dir };
        if let Some(bytes) = machine.store.raft_state(INSTALLING).map_err(failed::read_snapshot)? {
            let meta: Meta = rows::decode_json("snapshot meta", &bytes).map_err(failed::read_snapshot)?;
            tracing::info!(snapshot = %meta.snapshot_id, "finishing a snapshot install interrupted by a stop");
            machine.install_current(&meta)?;
        }
        Ok(machine)
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Replaces the replicated families with the rows of `current`, which holds `meta`.
    fn install_current(&self, meta: &Meta) -> Result<(), StorageError<NodeId>> {
        let meta_row = rows::encode_json(meta).map_err(failed::write_snapshot)?;
        let mut raft_rows = vec![
            (
                MEMBERSHIP_KEY,
                rows::encode_json(&meta.last_membership).map_err(failed::write_snapshot)?,
            ),
            (SNAPSHOT, meta_row),
        ];
        if let Some(applied) = &meta.last_log_id {
            raft_rows.push((APPLIED, rows::encode_log_id(applied)));
        }
        let file = std::fs::File::open(self.current()).map_err(failed::read_snapshot)?;
        let mut reader = SnapshotReader::new(BufReader::new(file)).map_err(failed::read_snapshot)?;
        self.store
            .replace_replicated(std::iter::from_fn(|| reader.next_row().transpose()), &raft_rows)
            .map_err(failed::write_snapshot)?;
        self.store.delete_raft_state(INSTALLING).map_err(failed::write_snapshot)
    }
}

impl RaftStateMachine<Config> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Stored), StorageError<NodeId>> {
        let applied = self
            .store
            .raft_state(APPLIED)
            .map_err(failed::read_state_machine)?
            .map(|bytes| rows::decode_log_id(&bytes).map_err(failed::read_state_machine))
            .transpose()?;
        let membership = self
            .store
            .raft_state(MEMBERSHIP_KEY)
            .map_err(failed::read_state_machine)?
            .map(|bytes| rows::decode_json("raft membership", &bytes).map_err(failed::read_state_machine))
            .transpose()?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.store.clone();
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let mut applied = Vec::with_capacity(entries.len());
            let proposed: Vec<(u64, NodeId)> = entries
                .iter()
                .filter(|entry| matches!(entry.payload, EntryPayload::Normal(_)))
                .map(|entry| (entry.log_id.index, entry.log_id.leader_id.node_id))
                .collect();
            for entry in entries {
                let mut raft_rows = vec![(APPLIED, rows::encode_log_id(&entry.log_id))];
                let writes: &[u8] = match &entry.payload {
                    EntryPayload::Normal(proposal) if !proposal.files.is_empty() => {
                        let paths: Vec<_> = proposal
                            .files
                            .iter()
                            .map(|file| (file.kind, files.path(entry.log_id.index, file.kind)))
                            .collect();
                        store
                            .apply_ingesting(&proposal.writes, &paths, &raft_rows)
                            .map_err(failed::write_state_machine)?;
                        applied.push(());
                        continue;
                    }
                    EntryPayload::Normal(proposal) => &proposal.writes,
                    EntryPayload::Membership(membership) => {
                        let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                        raft_rows.push((
                            MEMBERSHIP_KEY,
                            rows::encode_json(&stored).map_err(failed::write_state_machine)?,
                        ));
                        crate::store::WriteSet::EMPTY
                    }
                    EntryPayload::Blank => crate::store::WriteSet::EMPTY,
                };
                // A committed write set that does not decode is a damaged log or a bug: the
                // node stops applying (openraft stops it) rather than diverge from the others.
                store
                    .apply_write_set(writes, &raft_rows)
                    .map_err(failed::write_state_machine)?;
                applied.push(());
            }
            store.applied(Some(&proposed));
            Ok(applied)
        })
        .await
        .map_err(failed::write_state_machine)?
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join("receiving"))
            .await
            .map_err(failed::write_snapshot)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut file = snapshot.into_std().await;
        let machine = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            // Copied into a file of the state machine's own (the handle may be any file
            // openraft was given), and checked whole before anything changes: a damaged
            // file is refused as it is.
            let incoming = machine.dir.join("incoming");
            file.rewind().map_err(failed::read_snapshot)?;
            let mut copy = std::fs::File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&incoming)
                .map_err(failed::write_snapshot)?;
            std::io::copy(&mut file, &mut copy).map_err(failed::write_snapshot)?;
            drop(file);
            copy.sync_all().map_err(failed::write_snapshot)?;
            copy.rewind().map_err(failed::read_snapshot)?;
            check_file(&mut copy).map_err(failed::read_snapshot)?;
            drop(copy);
            let installing = rows::encode_json(&meta).map_err(failed::write_snapshot)?;
            machine
                .store
                .put_raft_state(&[(INSTALLING, installing)])
                .map_err(failed::write_snapshot)?;
            std::fs::rename(&incoming, machine.current()).map_err(failed::write_snapshot)?;
            machine.install_current(&meta)?;
            machine.store.applied(None);
            Ok(())
        })
        .await
        .map_err(failed::write_snapshot)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Config>>, StorageError<NodeId>> {
        let Some(bytes) = self.store.raft_state(SNAPSHOT).map_err(failed::read_snapshot)? else {
            return Ok(None);
        };
        let meta: Meta = rows::decode_json("snapshot meta", &bytes).map_err(failed::read_snapshot)?;
        let file = tokio::fs::File::open(self.current())
            .await
            .map_err(failed::read_snapshot)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

impl RaftSnapshotBuilder<Config> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Config>, StorageError<NodeId>> {
        let machine = self.clone();
        let meta = tokio::task::spawn_blocking(move || machine.write_snapshot())
            .await
            .map_err(failed::write_snapshot)??;
        let file = tokio::fs::File::open(self.current())
            .await
            .map_err(failed::read_snapshot)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl StateMachine {
    /// Writes every replicated row as of now to a new file, then makes it `current`.
    fn write_snapshot(&self) -> Result<Meta, StorageError<NodeId>> {
        // Applied entries may not be on disk yet; the log behind this snapshot goes once it
        // is built, so they must be.
        self.store.persist_wal().map_err(failed::write_snapshot)?;
        let building = self.dir.join("building");
        let file = std::fs::File::create(&building).map_err(failed::write_snapshot)?;
        let mut out = HashingWriter::new(BufWriter::new(file));
        out.write_all(MAGIC).map_err(failed::write_snapshot)?;
        let raft_rows = self
            .store
            .dump_replicated(&[APPLIED, MEMBERSHIP_KEY], |family, key, value| {
                out.write_all(&[family])?;
                for part in [key, value] {
                    out.write_all(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes())?;
                    out.write_all(part)?;
                }
                Ok(())
            })
            .map_err(failed::read_state_machine)?;
        out.write_all(&[END]).map_err(failed::write_snapshot)?;
        let hash = out.hasher.finalize();
        let mut file = out
            .inner
            .into_inner()
            .map_err(|err| failed::write_snapshot(err.into_error()))?;
        file.write_all(hash.as_bytes()).map_err(failed::write_snapshot)?;
        file.sync_all().map_err(failed::write_snapshot)?;

        let mut found = raft_rows.into_iter();
        let last_log_id = found
            .next()
            .flatten()
            .map(|bytes| rows::decode_log_id(&bytes))
            .transpose()
            .map_err(failed::read_state_machine)?;
        let last_membership: Stored = found
            .next()
            .flatten()
            .map(|bytes| rows::decode_json("raft membership", &bytes))
            .transpose()
            .map_err(failed::read_state_machine)?
            .unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis())
            .unwrap_or_default();
        let meta = Meta {
            snapshot_id: match &last_log_id {
                Some(log_id) => format!(
                    "{}-{}-{}-{stamp}",
                    log_id.leader_id.term, log_id.leader_id.node_id, log_id.index
                ),
                None => format!("empty-{stamp}"),
            },
            last_log_id,
            last_membership,
        };
        std::fs::rename(&building, self.current()).map_err(failed::write_snapshot)?;
        self.store
            .put_raft_state(&[(SNAPSHOT, rows::encode_json(&meta).map_err(failed::write_snapshot)?)])
            .map_err(failed::write_snapshot)?;
        Ok(meta)
    }
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn damaged(reason: impl Into<String>) -> StoreError {
    DecodeError {
        what: "snapshot",
        reason: reason.into(),
    }
    .into()
}

/// Reads the rows of a snapshot file, checking its layout as it goes.
struct SnapshotReader<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> SnapshotReader<R> {
    fn new(mut inner: R) -> Result<Self, StoreError> {
        let mut magic = [0u8; 8];
        inner.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(damaged("not a flagshare snapshot (unknown header)"));
        }
        Ok(SnapshotReader { inner, ended: false })
    }

    fn part(&mut self) -> Result<Vec<u8>, StoreError> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_PART {
            return Err(damaged(format!("a row part of {len} bytes, more than {MAX_PART}")));
        }
        let mut part = vec![0u8; len];
        self.inner.read_exact(&mut part)?;
        Ok(part)
    }

    /// The next row, `None` at the end byte.
    fn next_row(&mut self) -> Result<Option<Row>, StoreError> {
        if self.ended {
            return Ok(None);
        }
        let mut family = [0u8; 1];
        self.inner.read_exact(&mut family)?;
        if family[0] == END {
            self.ended = true;
            return Ok(None);
        }
        if usize::from(family[0]) >= crate::store::cf::REPLICATED.len() {
            return Err(damaged(format!("a row of unknown family {}", family[0])));
        }
        let key = self.part()?;
        let value = self.part()?;
        Ok(Some((family[0], key, value)))
    }
}

/// Checks a whole snapshot file: its rows are well formed, the end byte follows them, and
/// the hash after it is the hash of everything before.
fn check_file(file: &mut std::fs::File) -> Result<(), StoreError> {
    let len = file.metadata()?.len();
    let Some(body_len) = len.checked_sub(32) else {
        return Err(damaged(format!("{len} bytes, too short")));
    };
    let mut hasher = blake3::Hasher::new();
    {
        let body = HashingReader {
            inner: BufReader::new(Read::by_ref(file).take(body_len)),
            hasher: &mut hasher,
        };
        let mut reader = SnapshotReader::new(body)?;
        while reader.next_row()?.is_some() {}
        let mut rest = Vec::new();
        reader.inner.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            return Err(damaged(format!("{} bytes after the end of the rows", rest.len())));
        }
    }
    let mut hash = [0u8; 32];
    file.read_exact(&mut hash)?;
    if hasher.finalize() != blake3::Hash::from_bytes(hash) {
        return Err(damaged("its hash does not match its contents"));
    }
    Ok(())
}

/// A reader that hashes what goes through it.
struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut blake3::Hasher,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}
