//! RocksDB storage: column families (`cf`), key layouts (`keys`), value codecs (`codec`).
//!
//! Everything here is synchronous; `domain` calls it from `spawn_blocking`. Every change
//! that touches more than one row goes through one `Batch`, committed atomically.

pub mod cf;
pub mod codec;
pub mod keys;
mod presence;
pub use presence::Noting;
mod raft;
pub use raft::Row;
pub mod writeset;

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DataBlockIndexType, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::digest::Digest;
use crate::model::{
    Change, ChangeRecord, FlagKey, FlagRecord, ForeignMember, PrincipalId, PrincipalRecord, PrincipalStats,
    SummaryEntry,
};

pub use codec::{DecodeError, EncodeError};
pub use keys::KeyError;
pub use writeset::{FileKind, IngestFile, WriteSet};

/// Version of the layout described in `cf.rs`. Bumped when a family or a layout changes;
/// a store written by another version is refused at open rather than misread.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database at {0} is in use by another process (is a flagshare server running on it?)")]
    Locked(PathBuf),
    #[error("database at {path} has schema version {found}, this build reads version {expected}")]
    SchemaMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    /// The replicated log could not take a commit (no leader, no majority): the caller may
    /// try again.
    #[error("{0}")]
    Unavailable(String),
}

/// Where a replicated store's commits go instead of straight to RocksDB (`crate::cluster`).
pub trait Replicator: Send + Sync {
    /// Makes `writes` part of the store through the replicated log; returns once they are
    /// applied here.
    fn replicate(&self, writes: WriteSet) -> Result<(), StoreError> {
        self.propose(writes)?.wait()
    }

    /// Hands `writes` to the replicated log, in order after every write proposed before
    /// it, without waiting for the log to commit it: the caller releases its locks and
    /// then waits (`Proposed::wait`), so the next commit is staged while this one is on
    /// its way to the disks.
    fn propose(&self, writes: WriteSet) -> Result<Proposed, StoreError>;

    /// Drops the log entries already applied (behind a fresh snapshot), so that the rows
    /// their write sets held leave the disk with the next compaction.
    fn trim_log(&self) -> Result<(), StoreError>;

    /// Waits (a bounded time) until a newly elected leader has applied every entry before
    /// its own: what a commit reads (sequence numbers, the audit head) is then current.
    /// Called before the writer's locks are taken, which applying those entries needs.
    /// Returns the term this node leads in, if it leads; fails if it leads and those
    /// entries are not applied in time (a commit staged then would not start from the
    /// current state).
    fn settle(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Whether the cluster is this node alone: no other node receives its entries, so an
    /// entry may carry an import block as large as a single server's.
    fn alone(&self) -> bool {
        false
    }
}

/// A commit on its way (`Store::propose`): `wait` answers once it is part of the store,
/// or why it is not.
#[must_use = "a proposed commit is acknowledged only once waited for"]
pub struct Proposed(Option<Box<dyn FnOnce() -> Result<(), StoreError> + Send>>);

impl Proposed {
    /// A commit already made.
    pub fn done() -> Proposed {
        Proposed(None)
    }

    /// A commit `wait` completes.
    pub fn pending(wait: impl FnOnce() -> Result<(), StoreError> + Send + 'static) -> Proposed {
        Proposed(Some(Box::new(wait)))
    }

    pub fn is_pending(&self) -> bool {
        self.0.is_some()
    }

    pub fn wait(self) -> Result<(), StoreError> {
        self.0.map_or(Ok(()), |wait| wait())
    }
}

/// Tuning that an operator may change without changing the on-disk format.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes of the block cache shared by all families (data, index and filter blocks), so
    /// memory stays flat as data grows.
    pub block_cache_bytes: usize,
    /// Whether each commit waits for the WAL to reach the disk (fsync) before it returns.
    pub sync_writes: bool,
    /// Whether RocksDB counts block cache hits and stalls (`rocksdb_statistics`).
    pub statistics: bool,
    /// Whether this store holds a replicated log: what the state machine applies is
    /// written without the WAL (the log holds it, and a node that stops before it reaches
    /// the disk applies it again from there), and every family flushes together, so the
    /// applied log id never reaches the disk ahead of the rows it covers.
    pub replicated: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 256 << 20,
            sync_writes: true,
            statistics: false,
            replicated: false,
        }
    }
}

pub struct Store {
    db: DB,
    /// Kept for its statistics object (tickers read by `rocks_reading`).
    db_options: Options,
    /// The `summaries` and `changes` families' options: a file written for ingestion into
    /// a family must be built alike.
    summaries_options: Options,
    changes_options: Options,
    statistics: bool,
    path: PathBuf,
    write_options: WriteOptions,
    /// How the state machine writes what it applies (`StoreOptions::replicated`).
    apply_options: WriteOptions,
    /// Whether a commit is answered only once its WAL record is on disk.
    sync_writes: bool,
    /// Set while commits go through a replicated log (`set_replicator`).
    replicator: parking_lot::RwLock<Option<std::sync::Arc<dyn Replicator>>>,
    /// Which digests `summaries` may hold (`scan_presence` makes it ready).
    presence: presence::Presence,
    /// Whose entries the domain's memory knows of already, and what to tell when others
    /// were applied here (`set_apply_listener`).
    apply_listener: parking_lot::RwLock<Option<(OwnEntries, ApplyListener)>>,
    /// Imports running (`begin_bulk_load`); held while the settings change.
    bulk_loads: parking_lot::Mutex<usize>,
}

/// Held while an import runs (`Store::begin_bulk_load`).
pub struct BulkLoad(std::sync::Arc<Store>);

impl Drop for BulkLoad {
    fn drop(&mut self) {
        let mut running = self.0.bulk_loads.lock();
        *running = running.saturating_sub(1);
        if *running == 0 {
            self.0.set_summaries_compaction(&SUMMARIES_COMPACTION);
        }
    }
}

/// Told when rows written elsewhere were applied to the store (entries another node's
/// leader proposed, or a snapshot), so that what is kept in memory of the store is read
/// again.
pub type ApplyListener = std::sync::Arc<dyn Fn() + Send + Sync>;

/// The log entries this process proposed: those of node `id` past index `after` (the
/// last its log held when the process started). Its domain moved its memory on as it
/// proposed them; any other entry applied here (another node's, or one this node's
/// previous process proposed and never saw applied) is news to it.
#[derive(Debug, Clone, Copy)]
pub struct OwnEntries {
    pub id: u64,
    pub after: u64,
}

/// Digests from which `Store::get_summaries` reads on two threads.
const PARALLEL_READ: usize = 50_000;
/// Digests `Store::scan_presence` reads from one view of the store.
const SCAN_SLICE: usize = 100_000;

/// Where an import block stands, kept in `meta` until it is whole: its change-log rows
/// `first..=last` are being ingested (`committed` false: a server that stops now deletes
/// them as it opens), or the block is committed and `file` (its summary rows) awaits
/// ingestion (a server that stops now ingests it as it opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingImport {
    pub first: u64,
    pub last: u64,
    pub committed: bool,
    pub file: PathBuf,
}

impl PendingImport {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1, u8::from(self.committed)];
        out.extend_from_slice(&self.first.to_be_bytes());
        out.extend_from_slice(&self.last.to_be_bytes());
        out.extend_from_slice(self.file.to_string_lossy().as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<PendingImport, StoreError> {
        match bytes {
            [1, committed, rest @ ..] if rest.len() >= 16 && *committed <= 1 => {
                let (first, rest) = rest.split_at(8);
                let (last, file) = rest.split_at(8);
                Ok(PendingImport {
                    first: u64::from_be_bytes(first.try_into().unwrap_or_default()),
                    last: u64::from_be_bytes(last.try_into().unwrap_or_default()),
                    committed: *committed == 1,
                    file: PathBuf::from(String::from_utf8_lossy(file).into_owned()),
                })
            }
            _ => Err(DecodeError {
                what: "pending import",
                reason: format!("{} bytes of an unknown layout", bytes.len()),
            }
            .into()),
        }
    }
}

/// RocksDB's figures for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct RocksReading {
    pub live_sst_bytes: u64,
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    pub write_stopped: u64,
    /// Bytes per second writes are slowed to while RocksDB delays them; 0 when it does not.
    pub delayed_write_rate: u64,
    /// Tickers, only with `rocksdb_statistics` on.
    pub block_cache_hits: Option<u64>,
    pub block_cache_misses: Option<u64>,
    pub stall_micros: Option<u64>,
    pub disk_bytes: u64,
    /// Bytes of the in-memory filter of stored digests, and whether it is in use yet.
    pub presence_bytes: u64,
    pub presence_ready: bool,
    /// Filters a lookup probes (one once folded).
    pub presence_filters: u64,
}

/// Whether a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// As configured (`sync_writes`): flag changes and admin actions.
    Configured,
    /// WAL written but not fsynced: the audit record of a read-only call, where a power
    /// loss may lose the last few records but a query is never slowed by an fsync.
    Buffered,
    /// WAL written, fsynced later by `Store::sync_wal` (when `sync_writes`): the caller
    /// releases the audit ledger before waiting for the disk, so queries never wait on it.
    Deferred,
}

/// Writes `rows` (keys strictly increasing; `None` deletes the key) to a new file at
/// `file` for ingestion into a family built with `options`. False when there was nothing
/// to write (no file is left then).
fn write_sst<K: AsRef<[u8]>>(
    options: &Options,
    file: &Path,
    rows: impl IntoIterator<Item = Result<(K, Option<impl AsRef<[u8]>>), StoreError>>,
) -> Result<bool, StoreError> {
    create_private_folder(file)?;
    let mut writer = rocksdb::SstFileWriter::create(options);
    writer.open(file)?;
    let mut any = false;
    for row in rows {
        let (key, value) = row?;
        match value {
            Some(value) => writer.put(key, value)?,
            None => writer.delete(key)?,
        }
        any = true;
    }
    if !any {
        drop(writer);
        let _ = std::fs::remove_file(file);
        return Ok(false);
    }
    writer.finish()?;
    Ok(true)
}

/// Creates the folder `file` goes into (only its owner may read it), if missing.
fn create_private_folder(file: &Path) -> std::io::Result<()> {
    if let Some(folder) = file.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
    }
    Ok(())
}

/// The `summaries` family's compaction settings as `family_options` sets them.
const SUMMARIES_COMPACTION: [(&str, &str); 4] = [
    ("level0_file_num_compaction_trigger", "10"),
    ("level0_slowdown_writes_trigger", "50"),
    ("level0_stop_writes_trigger", "80"),
    ("max_bytes_for_level_base", "268435456"),
];

/// ... and while an import runs (`Store::begin_bulk_load`): a compaction every 40 files,
/// into the last level directly (the base level may hold 4 GiB), so the stored rows are
/// rewritten once for 40 import blocks instead of four times or more. (A level-0 size past
/// the base level's target also starts a compaction: hence the base level's size too.)
/// An import of 10,000,000 took 11.7-14.8 s instead of 15.1-17.6 (alternating runs), its
/// compaction during the import 0.7-0.8 s instead of 8-14; what is left is compacted once
/// the import ends. Lookups meanwhile probe up to that many more level-0 bloom filters for
/// a hit.
const BULK_LOAD: [(&str, &str); 4] = [
    ("level0_file_num_compaction_trigger", "40"),
    ("level0_slowdown_writes_trigger", "100"),
    ("level0_stop_writes_trigger", "150"),
    ("max_bytes_for_level_base", "4294967296"),
];

fn family_options(name: &str, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_format_version(5);
    // Filters and indexes live in the bounded cache; level-0 ones stay pinned because
    // every lookup consults them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut options = Options::default();
    match name {
        cf::SUMMARIES => {
            // Point lookups of random keys, mostly misses: a full (not block-based) bloom
            // filter on the whole key answers a miss without reading a data block.
            table.set_bloom_filter(10.0, false);
            // No block cache: the files are uncompressed and read through a mapping, so a
            // data block is searched where the kernel holds it instead of being copied
            // into the cache first (hits 6-23% faster at 10,000,000, benches/ab.rs). The
            // family's filters and indexes then stay in memory with their table readers:
            // about a byte per digest (the heap 100 MiB at 1,000,000, 130 at 30,000,000).
            table.disable_cache();
            table.set_cache_index_and_filter_blocks(false);
            table.set_pin_l0_filter_and_index_blocks_in_cache(false);
            table.set_whole_key_filtering(true);
            table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
            table.set_index_type(BlockBasedIndexType::BinarySearch);
            options.set_memtable_whole_key_filtering(true);
            options.set_memtable_prefix_bloom_ratio(0.02);
            // Random digests do not compress; skip the work on the read path.
            options.set_compression_type(DBCompressionType::None);
            // An import block's file spans every digest, so each level-0 compaction rewrites
            // the whole base level: compacting every 10 files instead of every 4 halved the
            // compaction work of an import of 10,000,000 (9.2-9.6 s of CPU instead of
            // 17-18). A lookup that misses never reaches level 0 (the presence filter
            // answers it); a hit probes one bloom filter per level-0 file. While an import
            // runs, `BULK_LOAD` applies instead.
            options.set_level_zero_file_num_compaction_trigger(10);
            options.set_level_zero_slowdown_writes_trigger(50);
            options.set_level_zero_stop_writes_trigger(80);
            options.set_max_bytes_for_level_base(256 << 20);
        }
        cf::RAFT_LOG => {
            // Entries are write sets of random digests (they do not compress), deleted once
            // a snapshot covers them: no compression, and no compaction of level 0 before
            // the purge usually drops its files whole.
            options.set_compression_type(DBCompressionType::None);
            options.set_level_zero_file_num_compaction_trigger(16);
            options.set_level_zero_slowdown_writes_trigger(40);
            options.set_level_zero_stop_writes_trigger(64);
        }
        _ => options.set_compression_type(DBCompressionType::Lz4),
    }
    options.set_block_based_table_factory(&table);
    options
}

impl Store {
    /// Opens (creating if needed) the store at `path`. Every family is opened with its
    /// explicit options: opening by name alone would silently drop the bloom filters.
    pub fn open(path: &Path, store_options: &StoreOptions) -> Result<Store, StoreError> {
        let cache = Cache::new_hyper_clock_cache(store_options.block_cache_bytes, 0);
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_atomic_flush(store_options.replicated);
        db_options.increase_parallelism(2);
        // Compactions keep their priority (import blocks do not, `domain::state::bulk`): at
        // nice 19 they made single-digest p99 during an import of 10,000,000 4.6-5.4 ms
        // instead of 6.1-6.7, but lookups right after a load of 30,000,000 ran at half
        // their rate, level-0 files left uncompacted while lookups kept the CPUs busy.
        // Blocks read through a mapping instead of pread and a copy: lookups with hits
        // 4-15% faster and bulk loads 8-11% (N = 10,000,000, benches/ab.rs, two runs); at
        // 1,000,000, where all fits the block cache, lookups 0-9% slower.
        // Mapped pages are the kernel's page cache, counted in the resident set as file
        // pages (RssFile), not memory the server holds.
        db_options.set_allow_mmap_reads(true);
        db_options.set_bytes_per_sync(1 << 20);
        // Tickers (block cache hits, stalls) for the metrics endpoint, when asked for: even
        // without histograms or timers they cost lookups with hits about a tenth.
        if store_options.statistics {
            db_options.enable_statistics();
            db_options.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        }
        // The MANIFEST keeps the first and last key of data files it listed until RocksDB
        // writes it anew (at every open, else at 1 GiB). Forcing that at every change, so
        // that no replaced file's key lingers, cost bulk loads and lookups a tenth to a
        // fifth: not done. (Forcing it only for `compact_all` needs SetDBOptions, which
        // the rocksdb crate does not offer.)
        // A store of another schema may hold families this build does not know; RocksDB
        // opens a store only with all of them, and the schema check below then refuses it
        // by version instead of by a RocksDB message.
        let on_disk = DB::list_cf(&db_options, path).unwrap_or_default();
        let retired = on_disk
            .iter()
            .filter(|name| name.as_str() != "default" && !cf::all().any(|family| family == name.as_str()));
        let descriptors = cf::all()
            .map(|name| ColumnFamilyDescriptor::new(name, family_options(name, &cache)))
            .chain(retired.map(|name| ColumnFamilyDescriptor::new(name, Options::default())))
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&db_options, path, descriptors).map_err(|err| {
            // RocksDB names the LOCK file it could not take ("While lock file: .../LOCK:
            // ...", "lock hold by current process ...: .../LOCK: ..."); "lock" alone would
            // also match an options error about the "block cache".
            if err.to_string().contains("/LOCK:") {
                StoreError::Locked(path.to_owned())
            } else {
                StoreError::Rocks(err)
            }
        })?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(store_options.sync_writes);
        let mut apply_options = WriteOptions::default();
        apply_options.disable_wal(store_options.replicated);
        let store = Store {
            db,
            db_options,
            summaries_options: family_options(cf::SUMMARIES, &cache),
            changes_options: family_options(cf::CHANGES, &cache),
            statistics: store_options.statistics,
            path: path.to_owned(),
            write_options,
            apply_options,
            sync_writes: store_options.sync_writes,
            replicator: parking_lot::RwLock::new(None),
            presence: presence::Presence::new(),
            apply_listener: parking_lot::RwLock::new(None),
            bulk_loads: parking_lot::Mutex::new(0),
        };
        store.check_schema_version()?;
        store.presence.reset(store.estimated_summaries());
        Ok(store)
    }

    fn check_schema_version(&self) -> Result<(), StoreError> {
        let meta = self.cf(cf::META);
        match self.db.get_cf(meta, keys::SCHEMA_VERSION_KEY)? {
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        path: self.path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                let mut write_options = WriteOptions::default();
                write_options.set_sync(true);
                self.db.put_cf_opt(
                    meta,
                    keys::SCHEMA_VERSION_KEY,
                    SCHEMA_VERSION.to_be_bytes(),
                    &write_options,
                )?;
            }
        }
        Ok(())
    }

    /// A value of `meta` made of random bytes on first use (the operator id, the pseudonym
    /// key): stable for the life of the database, and carried by its backups.
    pub fn meta_secret<const N: usize>(&self, key: &[u8]) -> Result<[u8; N], StoreError> {
        let meta = self.cf(cf::META);
        if let Some(bytes) = self.db.get_cf(meta, key)?
            && let Ok(value) = <[u8; N]>::try_from(bytes.as_slice())
        {
            return Ok(value);
        }
        let mut value = [0u8; N];
        getrandom::fill(&mut value).map_err(|err| StoreError::Random(err.to_string()))?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        self.db.put_cf_opt(meta, key, value, &write_options)?;
        Ok(value)
    }

    pub fn load_foreign_members(&self) -> Result<Vec<ForeignMember>, StoreError> {
        self.db
            .iterator_cf(self.cf(cf::FOREIGN_MEMBERS), IteratorMode::Start)
            .map(|item| -> Result<_, StoreError> {
                let (_key, value) = item?;
                Ok(codec::decode_foreign_member(&value)?)
            })
            .collect()
    }

    /// Versions (origin sequence numbers) of foreign flags; `sorted_keys` must be sorted.
    pub fn get_flag_versions(&self, sorted_keys: &[FlagKey]) -> Result<Vec<Option<u64>>, StoreError> {
        let encoded: Vec<[u8; keys::FLAG_KEY_LEN]> = sorted_keys.iter().map(keys::flag_key).collect();
        self.db
            .batched_multi_get_cf(self.cf(cf::FLAG_VERSIONS), &encoded, true)
            .into_iter()
            .map(|value| -> Result<_, StoreError> {
                Ok(value?.map(|bytes| keys::decode_sequence_key(&bytes)).transpose()?)
            })
            .collect()
    }

    /// One peer row, as stored (`[1, JSON]`).
    pub fn get_peer(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf::PEERS), name.as_bytes())?)
    }

    /// Up to `limit` quarantined flags of `member` (every member's when `None`), in key order.
    pub fn quarantined(
        &self,
        member: Option<PrincipalId>,
        limit: usize,
    ) -> Result<Vec<(FlagKey, ChangeRecord)>, StoreError> {
        let prefix = member.map(u32::to_be_bytes);
        let mode = match &prefix {
            Some(prefix) => IteratorMode::From(prefix, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut found = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::QUARANTINE), mode) {
            let (key, value) = item?;
            if prefix.is_some_and(|prefix| !key.starts_with(&prefix)) || found.len() >= limit {
                break;
            }
            found.push((keys::decode_quarantine_key(&key)?, codec::decode_change(&value)?));
        }
        Ok(found)
    }

    /// Calls `visit` with each quarantined flag's key and time of submission, in key order,
    /// without holding them all: a flood can hold millions.
    pub fn for_each_quarantined(
        &self,
        member: Option<PrincipalId>,
        mut visit: impl FnMut(FlagKey, i64),
    ) -> Result<(), StoreError> {
        let prefix = member.map(u32::to_be_bytes);
        let mode = match &prefix {
            Some(prefix) => IteratorMode::From(prefix, Direction::Forward),
            None => IteratorMode::Start,
        };
        for item in self.db.iterator_cf(self.cf(cf::QUARANTINE), mode) {
            let (key, value) = item?;
            if prefix.is_some_and(|prefix| !key.starts_with(&prefix)) {
                break;
            }
            visit(keys::decode_quarantine_key(&key)?, codec::decode_change(&value)?.at_ms);
        }
        Ok(())
    }

    /// `member`'s quarantined flags on `digest`.
    pub fn quarantined_of_digest(
        &self,
        member: PrincipalId,
        digest: &Digest,
    ) -> Result<Vec<(FlagKey, ChangeRecord)>, StoreError> {
        let prefix = [&member.to_be_bytes()[..], &digest[..]].concat();
        let mut found = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            found.push((keys::decode_quarantine_key(&key)?, codec::decode_change(&value)?));
        }
        Ok(found)
    }

    /// Up to `limit` of `member`'s quarantined flags after `after` (digest, kind and
    /// category of the last one of the previous page), in key order.
    pub fn quarantined_page(
        &self,
        member: PrincipalId,
        after: Option<&[u8; keys::HELD_PAGE_KEY_LEN]>,
        limit: usize,
    ) -> Result<Vec<(FlagKey, ChangeRecord)>, StoreError> {
        let prefix = member.to_be_bytes();
        let mut start = prefix.to_vec();
        if let Some(after) = after {
            start.extend_from_slice(after);
            // The smallest key greater than `after`'s row.
            start.push(0);
        }
        let mut found = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || found.len() >= limit {
                break;
            }
            found.push((keys::decode_quarantine_key(&key)?, codec::decode_change(&value)?));
        }
        Ok(found)
    }

    /// Up to `limit` quarantined flags of members numbered `from` and above, in key order.
    pub fn quarantined_from(
        &self,
        from: PrincipalId,
        limit: usize,
    ) -> Result<Vec<(FlagKey, ChangeRecord)>, StoreError> {
        let start = from.to_be_bytes();
        self.db
            .iterator_cf(self.cf(cf::QUARANTINE), IteratorMode::From(&start, Direction::Forward))
            .take(limit)
            .map(|item| -> Result<_, StoreError> {
                let (key, value) = item?;
                Ok((keys::decode_quarantine_key(&key)?, codec::decode_change(&value)?))
            })
            .collect()
    }

    /// Every principal's limit overrides (`meta` rows `limits/<name>`), as stored (JSON).
    pub fn load_limits(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .prefix_iterator_cf(self.cf(cf::META), keys::LIMITS_PREFIX)
            .map(|item| -> Result<_, StoreError> { Ok(item?) })
            .take_while(|item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(keys::LIMITS_PREFIX))
            })
            .map(|item| {
                let (key, value) = item?;
                let name = String::from_utf8_lossy(&key[keys::LIMITS_PREFIX.len()..]).into_owned();
                Ok((name, value.into_vec()))
            })
            .collect()
    }

    /// Every member's flood-quarantine window: (member, window start ms, new flags in it).
    pub fn load_quarantine_windows(&self) -> Result<Vec<(PrincipalId, i64, u64)>, StoreError> {
        let prefix = keys::QUARANTINE_WINDOW_PREFIX;
        self.db
            .prefix_iterator_cf(self.cf(cf::META), prefix)
            .map(|item| -> Result<_, StoreError> { Ok(item?) })
            .take_while(|item| item.as_ref().map_or(true, |(key, _)| key.starts_with(prefix)))
            .map(|item| {
                let (key, value) = item?;
                let (start_ms, count) = codec::decode_quarantine_window(&value)?;
                Ok((keys::decode_quarantine_window_key(&key)?, start_ms, count))
            })
            .collect()
    }

    /// Every peer row, as stored (`[1, JSON]`).
    pub fn load_peers(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db
            .iterator_cf(self.cf(cf::PEERS), IteratorMode::Start)
            .map(|item| -> Result<_, StoreError> { Ok(item?.1.into_vec()) })
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where files for ingestion are built: beside the database, on the same file system,
    /// so that ingesting moves them instead of copying.
    pub fn staging_dir(&self) -> PathBuf {
        self.path.with_extension("staging")
    }

    /// Held by a caller from before `write_summaries_file` until the file is ingested (or
    /// given up), so that a fold of the presence filters waits for it.
    pub fn presence_noting(&self) -> Noting {
        self.presence.noting()
    }

    /// Writes summary rows, in strictly increasing digest order, to a new file at `file`
    /// for `ingest_summaries` (an empty entry list deletes the row). False when there was
    /// nothing to write (no file is left then). The caller holds `presence_noting` until
    /// the file is ingested.
    pub fn write_summaries_file<'a>(
        &self,
        file: &Path,
        rows: impl IntoIterator<Item = (&'a Digest, &'a [SummaryEntry])>,
    ) -> Result<bool, StoreError> {
        let rows: Vec<(&Digest, &[SummaryEntry])> = rows.into_iter().collect();
        // Noting is a cache miss a digest: done beside the writing, finished before the
        // file can be ingested.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                self.presence.note_all(
                    rows.iter()
                        .filter(|(_, entries)| !entries.is_empty())
                        .map(|(digest, _)| digest.as_slice()),
                );
            });
            self.write_summaries_only(file, &rows)
        })
    }

    /// `write_summaries_file` for a replicated import block, with the digests file every
    /// node notes before it ingests the rows (`write_digests_file`, `apply_ingesting`).
    /// The digests are noted here too, beside the writing, so that this node's apply
    /// finds them noted ahead and skips the work (a fifth of a block's apply).
    pub fn write_replicated_summaries(
        &self,
        file: &Path,
        digests_file: &Path,
        rows: &[(&Digest, &[SummaryEntry])],
    ) -> Result<(bool, bool), StoreError> {
        let stored = || {
            rows.iter()
                .filter(|(_, entries)| !entries.is_empty())
                .map(|(digest, _)| *digest)
        };
        std::thread::scope(|scope| {
            let digests = scope.spawn(|| -> Result<bool, StoreError> {
                self.presence.note_all(stored().map(|digest| digest.as_slice()));
                let hash = self.write_digests_file(digests_file, stored())?;
                if let Some(hash) = hash {
                    self.presence.note_ahead(hash);
                }
                Ok(hash.is_some())
            });
            let written = self.write_summaries_only(file, rows)?;
            let digests_written = digests
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writing the digests file failed").into()))?;
            Ok((written, digests_written))
        })
    }

    fn write_summaries_only(&self, file: &Path, rows: &[(&Digest, &[SummaryEntry])]) -> Result<bool, StoreError> {
        let encoded = rows.iter().map(|(digest, entries)| -> Result<_, StoreError> {
            if entries.is_empty() {
                Ok((*digest, None))
            } else {
                Ok((*digest, Some(codec::encode_summary(entries)?)))
            }
        });
        write_sst(&self.summaries_options, file, encoded)
    }

    /// An import begins: the `summaries` family compacts as `BULK_LOAD` says until the
    /// guard of the last running import is dropped.
    pub fn begin_bulk_load(self: &std::sync::Arc<Self>) -> BulkLoad {
        let mut running = self.bulk_loads.lock();
        *running += 1;
        if *running == 1 {
            self.set_summaries_compaction(&BULK_LOAD);
        }
        BulkLoad(self.clone())
    }

    fn set_summaries_compaction(&self, settings: &[(&str, &str)]) {
        // Only the pace of compaction changes: a failure leaves the settings as they were.
        if let Err(err) = self.db.set_options_cf(self.cf(cf::SUMMARIES), settings) {
            tracing::warn!(%err, "changing the summaries family's compaction settings failed");
        }
    }

    /// Files at level 0 of the `summaries` family.
    pub fn summaries_level0_files(&self) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf::SUMMARIES), "rocksdb.num-files-at-level0")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Makes the rows of `file` (from `write_summaries_file`) the newest version of their
    /// digests at once; the file is moved into the database.
    pub fn ingest_summaries(&self, file: &Path) -> Result<(), StoreError> {
        self.ingest(cf::SUMMARIES, file)
    }

    /// Empties the staging folder: files of an import block that ended before their
    /// ingestion (`State::open` first ingests a committed block's).
    pub fn clear_staging(&self) -> Result<(), StoreError> {
        match std::fs::remove_dir_all(self.staging_dir()) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// The import block a stopped server left unfinished, if one.
    pub fn pending_import(&self) -> Result<Option<PendingImport>, StoreError> {
        match self.db.get_cf(self.cf(cf::META), keys::PENDING_INGEST_KEY)? {
            Some(bytes) => Ok(Some(PendingImport::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Forgets the pending ingestion (it is done), durably.
    pub fn clear_pending_ingest(&self) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.inner.delete_cf(self.cf(cf::META), keys::PENDING_INGEST_KEY);
        self.db.write_opt(batch.inner, &self.write_options)?;
        Ok(())
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        match self.db.cf_handle(name) {
            Some(family) => family,
            // `open` opens every family of `cf::all()` or fails, and only names from `cf`
            // reach here: a missing handle is a bug in this file, not an input.
            None => unreachable_family(name),
        }
    }

    /// Summaries of `digests`, which must be sorted (RocksDB then batches the reads per
    /// block). One result per digest, in order. An import block's many digests are read in
    /// two halves side by side: the read is most of a block's time and holds the writer.
    pub fn get_summaries(&self, sorted_digests: &[Digest]) -> Result<Vec<Option<Vec<SummaryEntry>>>, StoreError> {
        // Only digests the presence filter may hold are read: most asked for are not stored.
        let wanted: Vec<&Digest> = self.presence.retain_maybe(sorted_digests);
        let read = if wanted.len() < PARALLEL_READ {
            self.get_summaries_of(&wanted)?
        } else {
            let (first, second) = wanted.split_at(wanted.len() / 2);
            std::thread::scope(|scope| -> Result<_, StoreError> {
                let second = scope.spawn(|| self.get_summaries_of(second));
                let mut found = self.get_summaries_of(first)?;
                found.extend(
                    second
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("reading summaries failed").into()))?,
                );
                Ok(found)
            })?
        };
        if wanted.len() == sorted_digests.len() {
            return Ok(read);
        }
        // Back in the order asked: `wanted` is a subsequence of `sorted_digests`.
        let mut read = wanted.into_iter().zip(read).peekable();
        Ok(sorted_digests
            .iter()
            .map(|digest| {
                read.next_if(|(wanted, _)| std::ptr::eq(*wanted, digest))
                    .and_then(|(_, found)| found)
            })
            .collect())
    }

    fn get_summaries_of(&self, sorted_digests: &[&Digest]) -> Result<Vec<Option<Vec<SummaryEntry>>>, StoreError> {
        let mut read_options = ReadOptions::default();
        read_options.set_verify_checksums(false);
        let values = self
            .db
            .batched_multi_get_cf_opt(self.cf(cf::SUMMARIES), sorted_digests, true, &read_options);
        values
            .into_iter()
            .map(|value| -> Result<_, StoreError> {
                match value? {
                    Some(bytes) => Ok(Some(codec::decode_summary(&bytes)?)),
                    None => Ok(None),
                }
            })
            .collect()
    }

    /// Notes every digest `summaries` holds in the presence filter, which is then ready.
    /// Reads in slices of `SCAN_SLICE` digests, each from a fresh view, and gives up
    /// (leaving the filter unready) when `stop` is set between two slices.
    pub fn scan_presence(&self, stop: &std::sync::atomic::AtomicBool) -> Result<bool, StoreError> {
        let generation = self.presence.generation();
        if !self.note_every_stored(stop)? {
            return Ok(false);
        }
        self.presence.set_ready(generation);
        Ok(true)
    }

    /// Folds the presence filters into the newest, when there are several, by noting
    /// every stored digest in it; true when it did. Slow (a scan of the family): for a
    /// thread of its own while nothing is being imported.
    pub fn fold_presence(&self, stop: &std::sync::atomic::AtomicBool) -> Result<bool, StoreError> {
        let Some((newest, generation)) = self.presence.fold_start(stop) else {
            return Ok(false);
        };
        if !self.note_every_stored(stop)? {
            return Ok(false);
        }
        Ok(self.presence.fold_finish(newest, generation))
    }

    /// How many presence filters a lookup probes.
    pub fn presence_filters(&self) -> usize {
        self.presence.n_filters()
    }

    /// Whether an import is running (`begin_bulk_load`).
    pub fn bulk_loading(&self) -> bool {
        *self.bulk_loads.lock() > 0
    }

    /// Notes every digest `summaries` holds; false when `stop` cut it short.
    fn note_every_stored(&self, stop: &std::sync::atomic::AtomicBool) -> Result<bool, StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(false);
            }
            let mode = match &after {
                Some(key) => IteratorMode::From(key, Direction::Forward),
                None => IteratorMode::Start,
            };
            let mut n_read = 0;
            let mut last = None;
            for item in self.db.iterator_cf(self.cf(cf::SUMMARIES), mode) {
                let (key, _) = item?;
                if after.as_deref() == Some(&key[..]) {
                    continue;
                }
                self.presence.note(&key);
                n_read += 1;
                if n_read == SCAN_SLICE {
                    last = Some(key.to_vec());
                    break;
                }
            }
            match last {
                Some(key) => after = Some(key),
                None => return Ok(true),
            }
        }
    }

    /// From now on `listener` is told when entries other than `own` (or a snapshot) were
    /// applied to the store.
    pub fn set_apply_listener(&self, own: OwnEntries, listener: Option<ApplyListener>) {
        *self.apply_listener.write() = listener.map(|listener| (own, listener));
    }

    /// The state machine applied the entries of `proposed` (index, proposing leader;
    /// `None`: a snapshot).
    pub fn applied(&self, proposed: Option<&[(u64, u64)]>) {
        let listener = self.apply_listener.read().clone();
        if let Some((own, listener)) = listener
            && proposed.is_none_or(|proposed| {
                proposed
                    .iter()
                    .any(|(index, leader)| *leader != own.id || *index <= own.after)
            })
        {
            listener();
        }
    }

    fn estimated_summaries(&self) -> usize {
        self.db
            .property_int_value_cf(self.cf(cf::SUMMARIES), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Full flag records, each read from the change-log upsert its summary entry names.
    /// `sorted_sequences` must be sorted. One result per sequence.
    pub fn get_flag_records(&self, sorted_sequences: &[u64]) -> Result<Vec<Option<FlagRecord>>, StoreError> {
        let encoded: Vec<[u8; 8]> = sorted_sequences
            .iter()
            .map(|sequence| keys::sequence_key(*sequence))
            .collect();
        let values = self.db.batched_multi_get_cf(self.cf(cf::CHANGES), &encoded, true);
        values
            .into_iter()
            .map(|value| -> Result<_, StoreError> {
                let Some(bytes) = value? else { return Ok(None) };
                match codec::decode_change(&bytes)?.change {
                    Change::Upsert(record) => Ok(Some(record)),
                    Change::Retract(_) | Change::Expire | Change::Dispute => Err(DecodeError {
                        what: "change",
                        reason: "a summary entry names a change that is not an upsert".to_owned(),
                    }
                    .into()),
                }
            })
            .collect()
    }

    pub fn load_principals(&self) -> Result<Vec<PrincipalRecord>, StoreError> {
        self.db
            .iterator_cf(self.cf(cf::PRINCIPALS), IteratorMode::Start)
            .map(|item| -> Result<_, StoreError> {
                let (_key, value) = item?;
                Ok(codec::decode_principal(&value)?)
            })
            .collect()
    }

    /// The newest sequence number handed out: the newest change-log entry's, or the floor
    /// recorded when that entry was deleted (tombstone retention); 0 for a new log.
    pub fn last_sequence(&self) -> Result<u64, StoreError> {
        let mut iterator = self.db.iterator_cf(self.cf(cf::CHANGES), IteratorMode::End);
        let newest = match iterator.next() {
            Some(item) => keys::decode_sequence_key(&item?.0)?,
            None => 0,
        };
        let floor = match self.db.get_cf(self.cf(cf::META), keys::SEQUENCE_FLOOR_KEY)? {
            Some(bytes) => keys::decode_sequence_key(&bytes)?,
            None => 0,
        };
        Ok(newest.max(floor))
    }

    /// Up to `limit` change-log entries with a sequence number above `after`, in order.
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, ChangeRecord)>, StoreError> {
        self.changes_between(after, u64::MAX, limit)
    }

    /// Up to `limit` change-log entries with a sequence number above `after` and at most
    /// `until`, in order; nothing past `until` is read.
    pub fn changes_between(
        &self,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ChangeRecord)>, StoreError> {
        let start = keys::sequence_key(after.saturating_add(1));
        let mut options = ReadOptions::default();
        if let Some(bound) = until.checked_add(1) {
            options.set_iterate_upper_bound(keys::sequence_key(bound).to_vec());
        }
        self.db
            .iterator_cf_opt(
                self.cf(cf::CHANGES),
                options,
                IteratorMode::From(&start, Direction::Forward),
            )
            .take(limit)
            .map(|item| -> Result<_, StoreError> {
                let (key, value) = item?;
                Ok((keys::decode_sequence_key(&key)?, codec::decode_change(&value)?))
            })
            .collect()
    }

    pub fn load_principal_stats(&self) -> Result<Vec<(PrincipalId, PrincipalStats)>, StoreError> {
        self.db
            .iterator_cf(self.cf(cf::PRINCIPAL_STATS), IteratorMode::Start)
            .map(|item| -> Result<_, StoreError> {
                let (key, value) = item?;
                Ok((
                    keys::decode_principal_key(&key)?,
                    codec::decode_principal_stats(&value)?,
                ))
            })
            .collect()
    }

    /// `(sequence, hash)` of the newest audit entry, if any.
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.chain_end(keys::AUDIT_HEAD_KEY)
    }

    /// `(sequence, hash)` of the newest audit entry removed by retention, if any.
    pub fn audit_anchor(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.chain_end(keys::AUDIT_ANCHOR_KEY)
    }

    fn chain_end(&self, key: &[u8]) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        match self.db.get_cf(self.cf(cf::META), key)? {
            Some(bytes) => Ok(Some(codec::decode_chain_end(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stored audit entries (raw bytes, as hashed) from `from` on, in sequence order.
    pub fn audit_entries_from(&self, from: u64) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let start = keys::sequence_key(from);
        self.db
            .iterator_cf(self.cf(cf::AUDIT), IteratorMode::From(&start, Direction::Forward))
            .map(|item| -> Result<_, StoreError> {
                let (key, value) = item?;
                Ok((keys::decode_sequence_key(&key)?, value.into_vec()))
            })
    }

    /// Up to `limit` summary rows of the digests that start with `prefix` and come after
    /// `after` (from the first when `None`), in digest order.
    pub fn summaries_with_prefix(
        &self,
        prefix: &[u8],
        after: Option<Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, Vec<SummaryEntry>)>, StoreError> {
        let rows = self.summaries_after_key(
            after.as_ref().map_or(prefix, |digest| digest.as_slice()),
            after.is_some(),
        );
        let mut found = Vec::new();
        for row in rows {
            let (digest, entries) = row?;
            if !digest.starts_with(prefix) || found.len() == limit {
                break;
            }
            found.push((digest, entries));
        }
        Ok(found)
    }

    /// Up to `limit` summary rows after `after` (from the first when `None`), in digest order.
    pub fn summaries_after(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, Vec<SummaryEntry>)>, StoreError> {
        let rows = self.summaries_after_key(
            after.as_ref().map_or(&[][..], |digest| digest.as_slice()),
            after.is_some(),
        );
        rows.take(limit).collect()
    }

    /// Summary rows from `start` on (after it, when `exclusive`), in digest order.
    fn summaries_after_key<'a>(
        &'a self,
        start: &[u8],
        exclusive: bool,
    ) -> impl Iterator<Item = Result<(Digest, Vec<SummaryEntry>), StoreError>> + 'a {
        let start_key = start.to_vec();
        self.db
            .iterator_cf(self.cf(cf::SUMMARIES), IteratorMode::From(start, Direction::Forward))
            .filter(move |item| {
                !(exclusive && item.as_ref().is_ok_and(|(key, _)| key.as_ref() == start_key.as_slice()))
            })
            .map(decode_summary_row)
    }

    /// Every member id a stored flag or a change-log row names (a full scan of both).
    pub fn referenced_members(&self) -> Result<std::collections::HashSet<PrincipalId>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for row in self.all_summaries() {
            found.extend(row?.1.iter().map(|entry| entry.member));
        }
        for item in self.db.iterator_cf(self.cf(cf::CHANGES), IteratorMode::Start) {
            let (_key, value) = item?;
            found.insert(codec::decode_change(&value)?.key.member);
        }
        Ok(found)
    }

    /// Every summary row, in digest order.
    pub fn all_summaries(&self) -> impl Iterator<Item = Result<(Digest, Vec<SummaryEntry>), StoreError>> + '_ {
        self.db
            .iterator_cf(self.cf(cf::SUMMARIES), IteratorMode::Start)
            .map(decode_summary_row)
    }

    /// Keys of every stored flag of `member`: a scan of every summary, for the rare
    /// operator action that withdraws a member's flags.
    pub fn flag_keys_of_member(&self, member: PrincipalId) -> Result<Vec<FlagKey>, StoreError> {
        let mut found = Vec::new();
        for item in self.all_summaries() {
            let (digest, entries) = item?;
            found.extend(
                entries
                    .iter()
                    .filter(|entry| entry.member == member)
                    .map(|entry| FlagKey {
                        digest,
                        member,
                        kind: entry.kind,
                        category: entry.category,
                    }),
            );
        }
        Ok(found)
    }

    /// Every digest with at least one dispute row (disputes are rare: held in memory so the
    /// query path scans only for those).
    pub fn disputed_digests(&self) -> Result<Vec<Digest>, StoreError> {
        let mut found: Vec<Digest> = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::DISPUTES), IteratorMode::Start) {
            let (key, _value) = item?;
            let digest = keys::decode_dispute_key(&key)?.0;
            if found.last() != Some(&digest) {
                found.push(digest);
            }
        }
        Ok(found)
    }

    /// `(flagged_by, disputer)` of every dispute recorded on `digest`.
    pub fn disputes_of(&self, digest: &Digest) -> Result<Vec<(PrincipalId, PrincipalId)>, StoreError> {
        let mut found = Vec::new();
        let iterator = self
            .db
            .iterator_cf(self.cf(cf::DISPUTES), IteratorMode::From(digest, Direction::Forward));
        for item in iterator {
            let (key, _value) = item?;
            if !key.starts_with(digest) {
                break;
            }
            let (_digest, flagged_by, disputer) = keys::decode_dispute_key(&key)?;
            found.push((flagged_by, disputer));
        }
        Ok(found)
    }

    /// What the metrics endpoint reports of RocksDB, summed over the column families.
    pub fn rocks_reading(&self) -> RocksReading {
        let sum = |property: &str| -> u64 {
            cf::all()
                .filter_map(|name| self.db.cf_handle(name))
                .filter_map(|handle| self.db.property_int_value_cf(&handle, property).ok().flatten())
                .sum()
        };
        use rocksdb::statistics::Ticker;
        let ticker = |ticker: Ticker| self.statistics.then(|| self.db_options.get_ticker_count(ticker));
        RocksReading {
            live_sst_bytes: sum("rocksdb.live-sst-files-size"),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
            running_compactions: self
                .db
                .property_int_value("rocksdb.num-running-compactions")
                .ok()
                .flatten()
                .unwrap_or(0),
            write_stopped: u64::from(sum("rocksdb.is-write-stopped") > 0),
            delayed_write_rate: sum("rocksdb.actual-delayed-write-rate"),
            block_cache_hits: ticker(Ticker::BlockCacheHit),
            block_cache_misses: ticker(Ticker::BlockCacheMiss),
            stall_micros: ticker(Ticker::StallMicros),
            disk_bytes: self.disk_size(),
            presence_bytes: self.presence.heap_bytes() as u64,
            presence_ready: self.presence.is_ready(),
            presence_filters: self.presence.n_filters() as u64,
        }
    }

    /// Bytes of the database's files on disk.
    pub fn disk_size(&self) -> u64 {
        fn walk(path: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(path) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }

    /// A consistent copy of the whole database in `dir` (which must not exist), taken while
    /// writes go on: SST files are hard-linked when on the same file system, else copied.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        checkpoint.create_checkpoint(dir)?;
        Ok(())
    }

    /// This database's identity: 8 random bytes made on first open and made anew by
    /// `renew_db_identity` when a backup is restored, so cursors of before the restore are
    /// told apart from cursors of after.
    pub fn db_identity(&self) -> Result<[u8; 8], StoreError> {
        self.meta_secret(keys::DB_IDENTITY_KEY)
    }

    /// Gives this database a new identity (after it was restored from a backup).
    pub fn renew_db_identity(&self) -> Result<[u8; 8], StoreError> {
        let mut value = [0u8; 8];
        getrandom::fill(&mut value).map_err(|err| StoreError::Random(err.to_string()))?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        self.db
            .put_cf_opt(self.cf(cf::META), keys::DB_IDENTITY_KEY, value, &write_options)?;
        Ok(value)
    }

    /// Every tombstone at or below this sequence was deleted (0 when none was).
    pub fn change_horizon(&self) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(cf::META), keys::CHANGE_HORIZON_KEY)? {
            Some(bytes) => Ok(keys::decode_sequence_key(&bytes)?),
            None => Ok(0),
        }
    }

    /// Writes every memtable to disk and compacts every family whole, so that deleted
    /// rows (retracted and purged flags, their tombstones) leave the data files and the
    /// write-ahead log. Costs a rewrite of the database: for an operator's "erase now".
    pub fn compact_all(&self) -> Result<(), StoreError> {
        // The log holds every write set it applied: a removed row's bytes are there too.
        let replicator = self.replicator.read().clone();
        if let Some(replicator) = replicator {
            replicator.trim_log()?;
        }
        // Forced at the bottom level too: by default RocksDB skips files already there, and
        // a deletion (or range deletion) in such a file would keep its key's bytes.
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in cf::all() {
            let family = self.cf(name);
            self.db.flush_cf(family)?;
            self.db
                .compact_range_cf_opt(family, None::<&[u8]>, None::<&[u8]>, &options);
        }
        self.db.flush_wal(true)?;
        // Digests removed since the presence filter was built leave it too: it is noted
        // anew from what is stored (reads go to RocksDB until the scan is done).
        self.presence.reset(self.estimated_summaries());
        self.scan_presence(&std::sync::atomic::AtomicBool::new(false))?;
        Ok(())
    }

    /// Compacts the change-log rows from `from` to `to` (after tombstones there were deleted).
    pub fn compact_changes(&self, from: u64, to: u64) {
        self.db.compact_range_cf(
            self.cf(cf::CHANGES),
            Some(keys::sequence_key(from)),
            Some(keys::sequence_key(to.saturating_add(1))),
        );
    }

    /// A consistent view of the audit log (its anchor, head and entries) as of now, for
    /// verifying the chain while new entries are appended.
    pub fn audit_view(&self) -> AuditView<'_> {
        AuditView {
            store: self,
            snapshot: self.db.snapshot(),
        }
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
            deferred_changes: None,
            recorded: self.is_replicated().then(WriteSet::default),
            noting: None,
        }
    }

    /// From now on every commit goes through `replicator` (or, with `None`, straight to
    /// RocksDB again: a server drops its log this way as it stops).
    pub fn set_replicator(&self, replicator: Option<std::sync::Arc<dyn Replicator>>) {
        *self.replicator.write() = replicator;
    }

    /// See `Replicator::settle`; nothing to wait for without a replicated log.
    pub fn settle_replication(&self) -> Result<Option<u64>, StoreError> {
        let replicator = self.replicator.read().clone();
        replicator.map_or(Ok(None), |replicator| replicator.settle())
    }

    /// Whether commits go through a replicated log.
    pub fn is_replicated(&self) -> bool {
        self.replicator.read().is_some()
    }

    /// Whether this store's commits go to other nodes too (a replicated log with more
    /// than this node): what an entry may carry is then bounded by what another node can
    /// receive within a heartbeat.
    pub fn shares_commits(&self) -> bool {
        self.replicator
            .read()
            .as_ref()
            .is_some_and(|replicator| !replicator.alone())
    }

    /// Writes change-log rows (from `Batch::take_deferred_changes`, in increasing sequence
    /// order) to a new file at `file` for `ingest_changes`. False when there was nothing to
    /// write (no file is left then).
    pub fn write_changes_file(&self, file: &Path, rows: &[(u64, Vec<u8>)]) -> Result<bool, StoreError> {
        write_sst(
            &self.changes_options,
            file,
            rows.iter()
                .map(|(sequence, row)| Ok((keys::sequence_key(*sequence), Some(row.as_slice())))),
        )
    }

    /// Writes `digests` (32 bytes each, no framing) to a new file at `file`, on disk when
    /// this returns: the digests a replicated import block's summaries file stores, which
    /// every node notes in its presence filter before it ingests that file. Returns the
    /// file's hash, or `None` when there was no digest (no file is left then).
    fn write_digests_file<'a>(
        &self,
        file: &Path,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        use std::io::Write as _;
        create_private_folder(file)?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
        let mut hasher = blake3::Hasher::new();
        let mut any = false;
        for digest in digests {
            out.write_all(digest)?;
            hasher.update(digest);
            any = true;
        }
        let file_handle = out.into_inner().map_err(|err| StoreError::from(err.into_error()))?;
        if !any {
            drop(file_handle);
            let _ = std::fs::remove_file(file);
            return Ok(None);
        }
        file_handle.sync_all()?;
        Ok(Some(*hasher.finalize().as_bytes()))
    }

    /// Makes the rows of `file` (from `write_changes_file`) part of the change log at once,
    /// without the WAL, the memtable or a compaction: their sequences follow every stored
    /// one, so the file goes to the last level as it is. Readers must not look past the
    /// block until its commit (`State::hold`).
    pub fn ingest_changes(&self, file: &Path) -> Result<(), StoreError> {
        self.ingest(cf::CHANGES, file)
    }

    fn ingest(&self, family: &'static str, file: &Path) -> Result<(), StoreError> {
        let mut options = rocksdb::IngestExternalFileOptions::default();
        options.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(family), &options, vec![file])?;
        Ok(())
    }

    /// Deletes the change-log rows `first..=last` (an import block that never committed).
    pub fn delete_changes(&self, first: u64, last: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(cf::CHANGES),
            keys::sequence_key(first),
            keys::sequence_key(last.saturating_add(1)),
        );
        self.db.write_opt(batch, &self.write_options)?;
        Ok(())
    }

    /// Writes the whole batch atomically; with `sync_writes` it returns only once the WAL
    /// is on disk.
    pub fn commit(&self, batch: Batch<'_>) -> Result<(), StoreError> {
        self.commit_with(batch, Durability::Configured)
    }

    pub fn commit_with(&self, mut batch: Batch<'_>, durability: Durability) -> Result<(), StoreError> {
        let replicator = self.replicator.read().clone();
        // A batch begun before the log was set holds no write set: it is written here, as
        // it would have been.
        if let (Some(replicator), Some(writes)) = (replicator, batch.recorded.take()) {
            return if writes.is_empty() {
                Ok(())
            } else {
                replicator.replicate(writes)
            };
        }
        match durability {
            Durability::Configured => self.db.write_opt(batch.inner, &self.write_options)?,
            Durability::Buffered | Durability::Deferred => self.db.write(batch.inner)?,
        }
        Ok(())
    }

    /// `commit` for a write that may go on without waiting: on a replicated log, handed
    /// to it and answered by `Proposed::wait` (which the caller calls after releasing its
    /// locks); else written and on disk (as configured) before this returns.
    pub fn propose(&self, mut batch: Batch<'_>) -> Result<Proposed, StoreError> {
        let replicator = self.replicator.read().clone();
        if let (Some(replicator), Some(writes)) = (replicator, batch.recorded.take()) {
            return if writes.is_empty() {
                Ok(Proposed::done())
            } else {
                replicator.propose(writes)
            };
        }
        self.commit_with(batch, Durability::Configured)?;
        Ok(Proposed::done())
    }

    /// Waits until every write so far is on disk (with `sync_writes`; a no-op without):
    /// completes a `Durability::Deferred` commit.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        if self.sync_writes {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }
}

/// A summary row read by an iterator: its digest key and decoded entries.
type RawRow = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

fn decode_summary_row(item: RawRow) -> Result<(Digest, Vec<SummaryEntry>), StoreError> {
    let (key, value) = item?;
    let digest: Digest = key.as_ref().try_into().map_err(|_| KeyError::Length {
        what: "summary",
        got: key.len(),
        expected: crate::digest::DIGEST_LEN,
    })?;
    Ok((digest, codec::decode_summary(&value)?))
}

#[cold]
#[allow(clippy::panic)] // The one invariant `Store::open` guarantees; see `Store::cf`.
fn unreachable_family(name: &str) -> ! {
    panic!("column family {name} was not opened")
}

/// The audit log as of one moment (a RocksDB snapshot).
pub struct AuditView<'a> {
    store: &'a Store,
    snapshot: rocksdb::Snapshot<'a>,
}

impl AuditView<'_> {
    fn chain_end(&self, key: &[u8]) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        match self.snapshot.get_cf(self.store.cf(cf::META), key)? {
            Some(bytes) => Ok(Some(codec::decode_chain_end(&bytes)?)),
            None => Ok(None),
        }
    }

    /// `(sequence, hash)` of the newest entry.
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.chain_end(keys::AUDIT_HEAD_KEY)
    }

    /// `(sequence, hash)` of the newest entry removed by retention.
    pub fn anchor(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.chain_end(keys::AUDIT_ANCHOR_KEY)
    }

    /// Stored entries (raw bytes, as hashed), in sequence order.
    pub fn entries(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        self.snapshot
            .iterator_cf(self.store.cf(cf::AUDIT), IteratorMode::Start)
            .map(|item| -> Result<_, StoreError> {
                let (key, value) = item?;
                Ok((keys::decode_sequence_key(&key)?, value.into_vec()))
            })
    }
}

/// An atomic group of writes across families.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
    /// With `defer_changes`: the change-log rows, kept out of the batch (sequence, row).
    deferred_changes: Option<Vec<(u64, Vec<u8>)>>,
    /// With `Batch::recording`: the same changes as a write set, for replication.
    recorded: Option<WriteSet>,
    /// Held from the first summary row noted until the batch is written or dropped.
    noting: Option<Noting>,
}

impl Batch<'_> {
    /// From now on every change is also kept as a write set (`take_write_set`).
    pub fn recording(mut self) -> Self {
        self.recorded.get_or_insert_with(WriteSet::default);
        self
    }

    /// The changes staged since `recording`, as a write set (empty without it).
    pub fn take_write_set(&mut self) -> WriteSet {
        self.recorded.take().unwrap_or_default()
    }

    fn put(&mut self, family: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        if family == cf::SUMMARIES {
            if self.noting.is_none() {
                self.noting = Some(self.store.presence.noting());
            }
            self.store.presence.note(key);
        }
        if let Some(set) = &mut self.recorded {
            set.put(family, key, value);
        }
        self.inner.put_cf(self.store.cf(family), key, value);
    }

    fn delete(&mut self, family: &'static str, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        if let Some(set) = &mut self.recorded {
            set.delete(family, key);
        }
        self.inner.delete_cf(self.store.cf(family), key);
    }

    fn delete_range(&mut self, family: &'static str, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        let (from, to) = (from.as_ref(), to.as_ref());
        if let Some(set) = &mut self.recorded {
            set.delete_range(family, from, to);
        }
        self.inner.delete_range_cf(self.store.cf(family), from, to);
    }

    /// Makes `path` a file this commit ingests on a replicated log (an import block's rows,
    /// built as files). False without a replicated log, where the caller ingests itself.
    pub fn attach_file(&mut self, kind: FileKind, path: PathBuf) -> bool {
        match &mut self.recorded {
            Some(set) => {
                set.attach(kind, path);
                true
            }
            None => false,
        }
    }

    /// Stores the summary of `digest`, or deletes it when no flag is left.
    pub fn put_summary(&mut self, digest: &Digest, entries: &[SummaryEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            self.delete(cf::SUMMARIES, digest);
        } else {
            self.put(cf::SUMMARIES, digest, codec::encode_summary(entries)?);
        }
        Ok(())
    }

    /// Records where an import block stands (see `PendingImport`).
    pub fn put_pending_import(&mut self, pending: &PendingImport) {
        self.put(cf::META, keys::PENDING_INGEST_KEY, pending.encode());
    }

    /// Records the newest sequence handed out (before the newest row is deleted).
    pub fn put_sequence_floor(&mut self, sequence: u64) {
        self.put(cf::META, keys::SEQUENCE_FLOOR_KEY, keys::sequence_key(sequence));
    }

    /// Moves the change horizon (see `Store::change_horizon`).
    pub fn put_change_horizon(&mut self, sequence: u64) {
        self.put(cf::META, keys::CHANGE_HORIZON_KEY, keys::sequence_key(sequence));
    }

    /// Deletes the version row of a foreign flag (its tombstone went).
    pub fn delete_flag_version(&mut self, key: &FlagKey) {
        self.delete(cf::FLAG_VERSIONS, keys::flag_key(key));
    }

    /// Deletes a change-log row: a superseded upsert, or the upsert of a removed flag.
    pub fn delete_change(&mut self, sequence: u64) {
        self.delete(cf::CHANGES, keys::sequence_key(sequence));
    }

    /// Deletes every dispute of `flagged_by`'s flags on `digest`.
    pub fn delete_disputes_of(&mut self, digest: &Digest, flagged_by: PrincipalId) {
        // Member ids stop below u32::MAX (local ones below FOREIGN_MEMBER_BASE, foreign ones
        // are refused at the top), so `flagged_by + 1` is the next member's first key.
        let from = keys::dispute_key(digest, flagged_by, 0);
        let to = keys::dispute_key(digest, flagged_by.saturating_add(1), 0);
        self.delete_range(cf::DISPUTES, from, to);
    }

    pub fn put_change(&mut self, sequence: u64, record: &ChangeRecord) {
        match &mut self.deferred_changes {
            Some(rows) => rows.push((sequence, codec::encode_change(record))),
            None => self.put(cf::CHANGES, keys::sequence_key(sequence), codec::encode_change(record)),
        }
    }

    /// A change-log row as `put_change` encodes it.
    pub fn put_change_row(&mut self, sequence: u64, row: &[u8]) {
        self.put(cf::CHANGES, keys::sequence_key(sequence), row);
    }

    /// From now on change-log rows are kept aside for `Store::write_changes`.
    pub fn defer_changes(&mut self) {
        self.deferred_changes.get_or_insert_with(Vec::new);
    }

    pub fn take_deferred_changes(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.deferred_changes.take().unwrap_or_default()
    }

    pub fn put_principal_stats(&mut self, id: PrincipalId, stats: &PrincipalStats) {
        self.put(
            cf::PRINCIPAL_STATS,
            keys::principal_key(id),
            codec::encode_principal_stats(stats),
        );
    }

    /// Appends an audit entry (already encoded, as hashed) and moves the chain's head.
    pub fn put_audit(&mut self, sequence: u64, encoded: &[u8], hash: &[u8; 32]) {
        self.put(cf::AUDIT, keys::sequence_key(sequence), encoded);
        self.put(cf::META, keys::AUDIT_HEAD_KEY, codec::encode_chain_end(sequence, hash));
    }

    /// Removes audit entries up to and including `through`, whose hash is `hash`; the chain
    /// is verified from that anchor on.
    pub fn prune_audit(&mut self, through: u64, hash: &[u8; 32]) {
        self.delete_range(
            cf::AUDIT,
            keys::sequence_key(0),
            keys::sequence_key(through.saturating_add(1)),
        );
        self.put(cf::META, keys::AUDIT_ANCHOR_KEY, codec::encode_chain_end(through, hash));
    }

    pub fn delete_foreign_member(&mut self, id: PrincipalId) {
        self.delete(cf::FOREIGN_MEMBERS, keys::principal_key(id));
    }

    pub fn put_foreign_member(&mut self, member: &ForeignMember) {
        self.put(
            cf::FOREIGN_MEMBERS,
            keys::principal_key(member.id),
            codec::encode_foreign_member(member),
        );
    }

    pub fn put_flag_version(&mut self, key: &FlagKey, origin_sequence: u64) {
        self.put(
            cf::FLAG_VERSIONS,
            keys::flag_key(key),
            keys::sequence_key(origin_sequence),
        );
    }

    pub fn put_quarantined(&mut self, key: &FlagKey, record: &ChangeRecord) {
        self.put(cf::QUARANTINE, keys::quarantine_key(key), codec::encode_change(record));
    }

    pub fn delete_quarantined(&mut self, key: &FlagKey) {
        self.delete(cf::QUARANTINE, keys::quarantine_key(key));
    }

    /// A member's flood-quarantine window, committed with the flags it counts, so a restart
    /// (or another copy of the store) continues the same window.
    pub fn put_quarantine_window(&mut self, member: PrincipalId, start_ms: i64, count: u64) {
        self.put(
            cf::META,
            keys::quarantine_window_key(member),
            codec::encode_quarantine_window(start_ms, count),
        );
    }

    pub fn put_limits(&mut self, name: &str, encoded: &[u8]) {
        let key = [keys::LIMITS_PREFIX, name.as_bytes()].concat();
        self.put(cf::META, key, encoded);
    }

    pub fn delete_limits(&mut self, name: &str) {
        let key = [keys::LIMITS_PREFIX, name.as_bytes()].concat();
        self.delete(cf::META, key);
    }

    pub fn put_peer(&mut self, name: &str, encoded: &[u8]) {
        self.put(cf::PEERS, name.as_bytes(), encoded);
    }

    pub fn delete_peer(&mut self, name: &str) {
        self.delete(cf::PEERS, name.as_bytes());
    }

    pub fn put_dispute(&mut self, digest: &Digest, flagged_by: PrincipalId, disputer: PrincipalId, at_ms: i64) {
        self.put(
            cf::DISPUTES,
            keys::dispute_key(digest, flagged_by, disputer),
            codec::encode_dispute(at_ms),
        );
    }

    pub fn put_principal(&mut self, record: &PrincipalRecord) {
        self.put(
            cf::PRINCIPALS,
            keys::principal_key(record.id),
            codec::encode_principal(record),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Kind;
    use crate::model::{Category, Distribution};

    fn entry(member: u32) -> SummaryEntry {
        SummaryEntry {
            member,
            kind: Kind::Email,
            category: Category::Grooming,
            confidence: 50,
            first_seen_ms: 1,
            last_seen_ms: 2,
            expires_at_ms: 3,
            distribution: Distribution::Federated,
            sequence: 1,
        }
    }

    fn record() -> FlagRecord {
        FlagRecord {
            confidence: 50,
            first_seen_ms: 1,
            last_seen_ms: 2,
            expires_at_ms: 3,
            created_at_ms: 4,
            updated_at_ms: 4,
            key_id: 1,
            reference: b"case-1".to_vec(),
            distribution: Distribution::Federated,
            origin_sequence: 7,
        }
    }

    /// While an import holds a bulk load, the summaries' level-0 files wait for 40 of
    /// them; once the last one ends, they are compacted at 10 again.
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread
    fn a_bulk_load_defers_the_compaction_of_summaries_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        // Each file spans the others' range, so each goes to level 0.
        let ingest = |n: u8| {
            let file = dir.path().join(format!("block-{n}.sst"));
            let mut low = [1u8; 32];
            let mut high = [254u8; 32];
            (low[31], high[31]) = (n, n);
            let rows = [(low, vec![entry(1)]), (high, vec![entry(2)])];
            store
                .write_summaries_file(&file, rows.iter().map(|(digest, entries)| (digest, entries.as_slice())))
                .unwrap();
            store.ingest_summaries(&file).unwrap();
        };
        let settles_below = |n: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while store.summaries_level0_files() >= n && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            store.summaries_level0_files() < n
        };
        for n in 0..12 {
            ingest(n);
        }
        assert!(settles_below(10), "without an import, 10 files start a compaction");
        let before = store.summaries_level0_files();
        let first = store.begin_bulk_load();
        let second = store.begin_bulk_load();
        for n in 12..30 {
            ingest(n);
        }
        drop(first);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            store.summaries_level0_files(),
            before + 18,
            "no compaction while an import still runs"
        );
        drop(second);
        assert!(settles_below(10), "compacted once the last import ends");
        let stored: Vec<Digest> = (0..30)
            .map(|n| {
                let mut low = [1u8; 32];
                low[31] = n;
                low
            })
            .collect();
        assert!(store.get_summaries(&stored).unwrap().iter().all(Option::is_some));
    }

    /// A digest removed stays in the presence filter (a false positive) until a
    /// compaction rebuilds it from what is stored.
    #[test]
    fn a_compaction_rebuilds_the_presence_filter_without_removed_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(store.scan_presence(&std::sync::atomic::AtomicBool::new(false)).unwrap());
        let (kept, removed) = ([1u8; 32], [2u8; 32]);
        let mut batch = store.batch();
        batch.put_summary(&kept, &[entry(1)]).unwrap();
        batch.put_summary(&removed, &[entry(2)]).unwrap();
        store.commit(batch).unwrap();
        let mut batch = store.batch();
        batch.put_summary(&removed, &[]).unwrap();
        store.commit(batch).unwrap();
        assert!(store.presence.may_contain(&removed), "still noted until a rebuild");
        store.compact_all().unwrap();
        assert!(store.presence.is_ready());
        assert!(store.presence.may_contain(&kept));
        assert!(
            !store.presence.may_contain(&removed),
            "a near-empty filter holds only what is stored"
        );
    }

    /// Growth past the first filter adds a second; a fold leaves one that still holds
    /// every stored digest, and waits for a note whose row is not written yet.
    #[test]
    fn a_fold_leaves_one_presence_filter_holding_every_stored_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let never = std::sync::atomic::AtomicBool::new(false);
        assert!(store.scan_presence(&never).unwrap());
        let digest = |n: u32| *blake3::hash(&n.to_le_bytes()).as_bytes();
        let n = 1_200_000u32; // past the first filter's capacity (2^20)
        for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
            let mut batch = store.batch();
            for i in chunk {
                batch.put_summary(&digest(*i), &[entry(1)]).unwrap();
            }
            store.commit(batch).unwrap();
        }
        assert_eq!(store.presence_filters(), 2);

        // A note made before the fold, its row written only after the fold's scan would
        // have passed it: the fold waits for it.
        let late = digest(n + 1);
        let mut pending = store.batch();
        pending.put_summary(&late, &[entry(1)]).unwrap();
        let folding = {
            let store = store.clone();
            std::thread::spawn(move || store.fold_presence(&std::sync::atomic::AtomicBool::new(false)))
        };
        #[allow(clippy::disallowed_methods)] // a plain test thread
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!folding.is_finished(), "the fold waits for the pending note's row");
        store.commit(pending).unwrap();
        assert!(folding.join().unwrap().unwrap(), "folded");
        assert_eq!(store.presence_filters(), 1);
        let stored: Vec<Digest> = (0..n).map(digest).chain([late]).collect();
        assert_eq!(
            store.presence.retain_maybe(&stored).len(),
            stored.len(),
            "every stored digest passes the one filter"
        );
        assert!(!store.fold_presence(&never).unwrap(), "nothing left to fold");
    }

    /// Every digest `summaries` holds, by each way a row comes in, is found through the
    /// presence filter once it is ready; a digest never stored is not read.
    #[test]
    fn every_stored_digest_passes_the_presence_filter_whichever_way_it_came_in() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |n: u8| [n; 32];
        let never = std::sync::atomic::AtomicBool::new(false);
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            // Before the scan: a row written by a batch (found in the next open's scan).
            let mut batch = store.batch();
            batch.put_summary(&digest(1), &[entry(1)]).unwrap();
            store.commit(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(store.scan_presence(&never).unwrap());
        assert!(store.presence.is_ready());
        // After it: a batch, a write set applied, an ingested file.
        let mut batch = store.batch();
        batch.put_summary(&digest(2), &[entry(2)]).unwrap();
        store.commit(batch).unwrap();
        let mut set = writeset::WriteSet::default();
        set.put(cf::SUMMARIES, &digest(3), &codec::encode_summary(&[entry(3)]).unwrap());
        store.apply_write_set(set.as_bytes(), &[]).unwrap();
        let file = dir.path().join("block.sst");
        let rows = [(digest(4), vec![entry(4)])];
        assert!(
            store
                .write_summaries_file(&file, rows.iter().map(|(digest, entries)| (digest, entries.as_slice())))
                .unwrap()
        );
        store.ingest_summaries(&file).unwrap();
        let stored: Vec<Digest> = (1..=4).map(digest).collect();
        for found in store.get_summaries(&stored).unwrap() {
            assert!(found.is_some_and(|entries| entries.len() == 1));
        }
        // Asked together with digests never stored: each answer in its place.
        let asked: Vec<Digest> = [0, 1, 2, 5, 3, 4, 9].map(digest).to_vec();
        let mut sorted = asked.clone();
        sorted.sort_unstable();
        let found: Vec<bool> = store
            .get_summaries(&sorted)
            .unwrap()
            .iter()
            .map(Option::is_some)
            .collect();
        let expected: Vec<bool> = sorted.iter().map(|digest| stored.contains(digest)).collect();
        assert_eq!(found, expected);
        assert!(
            !store.presence.may_contain(&digest(9)),
            "an empty slot of a near-empty filter"
        );
        // A snapshot's install replaces everything and leaves the filter ready with its rows.
        let rows = store.replicated_rows();
        let other = tempfile::tempdir().unwrap();
        let installed = Store::open(other.path(), &StoreOptions::default()).unwrap();
        installed.replace_replicated(rows.into_iter().map(Ok), &[]).unwrap();
        assert!(installed.presence.is_ready());
        assert!(installed.get_summaries(&stored).unwrap().iter().all(Option::is_some));
    }

    #[test]
    fn batch_commits_all_families_together_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::default();
        let key = FlagKey {
            digest: [1; 32],
            member: 1,
            kind: Kind::Email,
            category: Category::Grooming,
        };
        {
            let store = Store::open(dir.path(), &options).unwrap();
            let mut batch = store.batch();
            batch.put_summary(&key.digest, &[entry(1)]).unwrap();
            batch.put_change(
                1,
                &ChangeRecord {
                    at_ms: 5,
                    key,
                    change: Change::Upsert(record()),
                    distribution: Distribution::Federated,
                    origin_sequence: 7,
                    signature: None,
                },
            );
            store.commit(batch).unwrap();
        }
        let store = Store::open(dir.path(), &options).unwrap();
        let found = store.get_summaries(&[[0; 32], [1; 32], [2; 32]]).unwrap();
        assert_eq!(found, vec![None, Some(vec![entry(1)]), None]);
        assert_eq!(store.last_sequence().unwrap(), 1);
        assert_eq!(store.changes_after(0, 10).unwrap().len(), 1);
        assert!(store.changes_after(1, 10).unwrap().is_empty());
        // A summary entry's sequence leads to the flag's full record.
        assert_eq!(store.get_flag_records(&[1, 2]).unwrap(), vec![Some(record()), None]);
    }

    #[test]
    fn a_store_with_a_family_this_build_does_not_know_is_refused_by_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As an earlier schema left it: an extra family and an older version number.
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let db = DB::open_cf(&options, dir.path(), [cf::META, "flags"]).unwrap();
            db.put_cf(
                db.cf_handle(cf::META).unwrap(),
                keys::SCHEMA_VERSION_KEY,
                2u32.to_be_bytes(),
            )
            .unwrap();
        }
        match Store::open(dir.path(), &StoreOptions::default()) {
            Err(StoreError::SchemaMismatch { found: 2, expected, .. }) => assert_eq!(expected, SCHEMA_VERSION),
            Err(other) => panic!("expected a schema mismatch, got {other}"),
            Ok(_) => panic!("expected a schema mismatch, the store opened"),
        }
    }

    #[test]
    fn after_compact_all_and_a_reopen_no_file_holds_a_deleted_key() {
        fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)))
                .collect()
        }
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::default();
        let (kept, removed) = ([0x11; 32], [0x77; 32]);
        {
            let store = Store::open(dir.path(), &options).unwrap();
            // Files whose last key is the removed digest, in the MANIFEST's history.
            for round in 0..3u8 {
                let mut batch = store.batch();
                batch.put_summary(&kept, &[entry(u32::from(round))]).unwrap();
                batch.put_summary(&removed, &[entry(u32::from(round))]).unwrap();
                store.commit(batch).unwrap();
                store.db.flush_cf(store.cf(cf::SUMMARIES)).unwrap();
            }
            store.db.delete_cf(store.cf(cf::SUMMARIES), removed).unwrap();
            store.compact_all().unwrap();
            // Data files and logs at once; the MANIFEST still lists replaced files' keys.
            let holding = files_holding(dir.path(), &removed);
            assert!(
                holding
                    .iter()
                    .all(|path| path.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-")),
                "{holding:?}"
            );
        }
        let store = Store::open(dir.path(), &options).unwrap();
        assert_eq!(files_holding(dir.path(), &removed), Vec::<PathBuf>::new());
        assert!(!files_holding(dir.path(), &kept).is_empty(), "the check can find a key");
        assert_eq!(store.get_summaries(&[removed]).unwrap(), vec![None]);
    }

    #[test]
    fn a_second_open_of_the_same_path_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let second = Store::open(dir.path(), &StoreOptions::default());
        assert!(matches!(second, Err(StoreError::Locked(_))), "{:?}", second.err());
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            store
                .db
                .put_cf(store.cf(cf::META), keys::SCHEMA_VERSION_KEY, 99u32.to_be_bytes())
                .unwrap();
        }
        let reopened = Store::open(dir.path(), &StoreOptions::default());
        assert!(matches!(reopened, Err(StoreError::SchemaMismatch { found: 99, .. })));
    }
}
