//! The state every domain operation shares: the store, the principal registry, the
//! writer lock with the last sequence number, the audit ledger, and the helpers that stage
//! flag changes into a batch. Operations live in their own files beside this one and
//! reach the state only through what this file exposes.
//!
//! Locks are `parking_lot`'s, which do not poison: a panic while one is held (a bug, or
//! an input nobody foresaw) fails that one call and leaves the lock usable, and as the
//! in-memory sequence moves only after a successful commit (on a replicated log: once the
//! commit is handed to the log, and a commit that then fails marks the memory stale), the
//! next write starts from the committed state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::Policy;
use super::audit::{AuditEvent, Ledger};
use super::flags::{self, Match};
use super::foreign::Federation;
use super::principals::{Caller, Registry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::model::{Change, ChangeRecord, FlagKey, FlagRecord, OriginSignature, PrincipalId, SummaryEntry, is_foreign};
use crate::store::{Batch, Durability, PendingImport, Store};

/// Most flags one digest may hold from one origin (this operator's members together, or
/// one other operator's). A digest's flags are read whole on every hit, so the row must
/// stay small, and one origin filling it must not keep others from flagging the digest.
pub const MAX_ENTRIES_PER_ORIGIN: usize = 1_024;
/// Most flags one digest may hold in all (the row is read whole on every hit).
pub const MAX_ENTRIES_PER_DIGEST: usize = 16_384;

/// Read audit entries queued at most (see `State::reads`): one commit's worth.
pub const MAX_PENDING_READS: usize = 1_024;
/// Matched digests the queued read entries hold at most (3.2 MB): a query matches up to
/// 10,000, so the entry count alone would not bound the queue's memory.
pub const MAX_PENDING_READ_DIGESTS: usize = 100_000;
/// How often the server commits queued read audit entries.
pub const READ_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Stream chunks worked on at once (see `State::stream_work`).
const STREAM_WORKERS: usize = 4;

/// Counters since the server started, for `admin stats`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub flags_expired_purged: AtomicU64,
    pub audit_entries_pruned: AtomicU64,
    /// When the maintenance task last looked for orphaned foreign members (0: not yet).
    pub last_orphan_scan_ms: std::sync::atomic::AtomicI64,
}

pub(crate) struct State {
    pub(super) store: std::sync::Arc<Store>,
    pub(super) registry: Registry,
    pub(super) policy: Policy,
    /// Held for the whole read-modify-write of every change (a submission on a replicated
    /// log releases it once its commit is handed to the log: `in_flight`); guards the last
    /// sequence number handed out. Taken before `ledger` when both are needed.
    writer: Mutex<u64>,
    /// Submissions handed to the replicated log and not answered yet: they hold the
    /// writer lock only while they stage and propose, so the next one is staged while
    /// they travel. What they change is in memory already and not yet in the store, so
    /// any other writer (and a submission touching one of their digests) waits for them
    /// to land first (`writer`, `submission_writer`).
    in_flight: Mutex<InFlight>,
    landed: parking_lot::Condvar,
    /// The term this node led in when its memory was last known to match the store (0:
    /// none yet). A new term means commits of the old one may have been lost or landed
    /// without this copy knowing which: it reads the store again.
    led_term: AtomicU64,
    /// Set when applied entries of another node's (or a snapshot) changed the store under
    /// this copy's memory and it has not read it again yet (`note_applied`).
    stale: std::sync::atomic::AtomicBool,
    /// The audit chain's head; every audited commit goes through it.
    ledger: Mutex<Ledger>,
    /// Audit entries of read-only calls (queries, listings) not committed yet: such a call
    /// is answered without waiting for a write, and its entry is committed with the
    /// others queued beside it (`flush_reads`) before any other audited commit, by the
    /// server's flusher every `READ_FLUSH_INTERVAL`, or by the call that finds the queue
    /// full (which fails if that commit fails: reads go unaudited for a bounded moment
    /// only). Taken after `ledger` when both are needed.
    reads: Mutex<Vec<(AuditEvent, i64)>>,
    pub(super) metrics: Metrics,
    pub(super) federation: Federation,
    /// Digests with dispute rows; the query path scans `disputes` only for these.
    pub(super) disputed: RwLock<HashSet<Digest>>,
    /// This database's identity, carried by feed cursors and federation batches.
    pub(super) db_identity: [u8; 8],
    /// Blocking chunks of long-lived streams (feed snapshots and changes, federation pulls)
    /// run this many at a time: hundreds of open streams queue here, and the blocking pool
    /// stays free for queries and submissions.
    pub(super) stream_work: tokio::sync::Semaphore,
    /// New flags each member committed in the current quarantine window: (window start
    /// ms, count). Kept in `meta` with the flags it counts, loaded at open: a restart, or
    /// another copy of the store, continues the same window.
    pub(super) new_flags_window: parking_lot::Mutex<HashMap<crate::model::PrincipalId, (i64, u64)>>,
    /// Principals whose flood-quarantine threshold an admin set (`admin member limits`).
    pub(super) quarantine_overrides: RwLock<HashMap<crate::model::PrincipalId, u64>>,
    /// Members with quarantined flags (loaded at open, kept current).
    pub(super) quarantined_members: RwLock<HashSet<crate::model::PrincipalId>>,
    /// While an import block is between its commit and the ingestion of its summaries,
    /// the sequence before it (else `NO_HOLD`): readers of the change log stop there, so no
    /// feed or peer sees a change whose summary row is not in place yet.
    hold: std::sync::atomic::AtomicU64,
    /// The scan that makes the store's presence filter ready, and its stop: it reads every
    /// digest once (about a second per 10,000,000), so it runs beside the server.
    presence_scan: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
    /// On a node of a replicated cluster: where read entries go while another node leads
    /// (a follower cannot commit; the leader commits them in the one chain).
    read_forwarder: RwLock<Option<std::sync::Arc<dyn ReadForwarder>>>,
    /// Tests set it to make the next audited commit panic under the writer lock.
    #[cfg(test)]
    fault: std::sync::atomic::AtomicBool,
    /// Tests set it to stop the next import block as a server killed there would: 1 after
    /// its change-log rows, before its commit; 2 after its commit, before its ingestion.
    #[cfg(test)]
    pub(super) stop_import: std::sync::atomic::AtomicU8,
}

const NO_HOLD: u64 = u64::MAX;

/// See `State::in_flight`.
#[derive(Default)]
struct InFlight {
    commits: usize,
    /// The digests whose summary rows they change, each with how many change it.
    digests: HashMap<Digest, usize>,
}

/// A submission on its way to the replicated log (`State::launch`): answered by `land`,
/// after the caller released the writer lock.
pub(super) struct Landing<'a> {
    state: &'a State,
    /// `None` for a commit made already (no replicated log): nothing was registered.
    proposed: Option<crate::store::Proposed>,
    digests: Vec<Digest>,
}

impl Landing<'_> {
    /// Waits until the commit is part of the store. On failure this copy's memory (moved
    /// on when it was proposed) is read again before the next commit.
    pub(super) fn land(mut self) -> Result<()> {
        let Some(proposed) = self.proposed.take() else {
            return Ok(());
        };
        let landed = self.state.land(proposed);
        self.deregister();
        landed
    }

    fn deregister(&mut self) {
        let mut in_flight = self.state.in_flight.lock();
        in_flight.commits = in_flight.commits.saturating_sub(1);
        for digest in &self.digests {
            if let Some(count) = in_flight.digests.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    in_flight.digests.remove(digest);
                }
            }
        }
        drop(in_flight);
        self.digests.clear();
        self.state.landed.notify_all();
    }
}

impl Drop for Landing<'_> {
    /// A landing dropped unanswered (a panic between the proposal and the wait) still
    /// answers first: the writers waiting for it must not wait for ever.
    fn drop(&mut self) {
        if let Some(proposed) = self.proposed.take() {
            let _ = self.state.land(proposed);
            self.deregister();
        }
    }
}

/// Where a node that does not lead its cluster sends the audit entries of the reads it
/// answered (`cluster::forward`).
pub trait ReadForwarder: Send + Sync {
    /// Whether this node leads: it commits its own entries then.
    fn leads(&self) -> bool;
    /// Hands `reads` (entries and their times) to the leader, which queues them as its
    /// own; blocking.
    fn forward(&self, reads: &[(AuditEvent, i64)]) -> Result<()>;
}

impl Drop for State {
    /// Read entries still queued are committed as the store closes. Not through a
    /// replicated log: its commit needs the runtime, whose only thread may be the one
    /// dropping this (the server commits the queue itself before it stops its log).
    fn drop(&mut self) {
        if let Some((stop, scan)) = self.presence_scan.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = scan.join();
        }
        if self.store.is_replicated() {
            let n_queued = self.reads.lock().len();
            if n_queued > 0 {
                tracing::warn!(
                    n_queued,
                    "read audit entries still queued as the store closed were not committed"
                );
            }
            return;
        }
        if let Err(err) = self.flush_reads() {
            tracing::error!(%err, "committing queued read audit entries at close failed");
        }
    }
}

/// How often the presence thread looks for filters to fold: every `FOLD_CHECK_TICKS`
/// ticks (a second).
const FOLD_TICK: std::time::Duration = std::time::Duration::from_millis(100);
const FOLD_CHECK_TICKS: u32 = 10;

/// Starts the presence scan (see `State::presence_scan`), then folds the filters the
/// store's growth adds whenever no import is running, until stopped; without a thread
/// for it, the filter stays unready and every read goes to RocksDB as before.
fn scan_presence(
    store: &std::sync::Arc<Store>,
) -> Option<(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
)> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (scan_store, scan_stop) = (store.clone(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name("flagshare-presence".to_owned())
        .spawn(move || {
            let started = std::time::Instant::now();
            match scan_store.scan_presence(&scan_stop) {
                Ok(true) => tracing::debug!(elapsed = ?started.elapsed(), "presence filter ready"),
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(%err, "scanning stored digests failed; reads skip the presence filter");
                    return;
                }
            }
            let mut ticks = 0u32;
            while !scan_stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Its own thread, never a runtime worker; a stop is seen within a tick.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(FOLD_TICK);
                ticks += 1;
                if !ticks.is_multiple_of(FOLD_CHECK_TICKS)
                    || scan_store.bulk_loading()
                    || scan_store.presence_filters() < 2
                {
                    continue;
                }
                let started = std::time::Instant::now();
                match scan_store.fold_presence(&scan_stop) {
                    Ok(true) => tracing::debug!(elapsed = ?started.elapsed(), "presence filters folded into one"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(%err, "folding the presence filters failed; lookups probe each"),
                }
            }
        });
    match spawned {
        Ok(scan) => Some((stop, scan)),
        Err(err) => {
            tracing::warn!(%err, "no thread for the presence scan; reads skip the presence filter");
            None
        }
    }
}

/// What `State` keeps in memory of the store, read at open and again by `refresh`.
struct Cached {
    principals: Vec<crate::model::PrincipalRecord>,
    last_sequence: u64,
    ledger: Ledger,
    disputed: HashSet<Digest>,
    foreign_members: Vec<crate::model::ForeignMember>,
    quarantined_members: HashSet<PrincipalId>,
    windows: HashMap<PrincipalId, (i64, u64)>,
}

impl Cached {
    fn read(store: &Store) -> Result<Cached> {
        Ok(Cached {
            principals: store.load_principals()?,
            last_sequence: store.last_sequence()?,
            ledger: Ledger::load(store)?,
            disputed: store.disputed_digests()?.into_iter().collect(),
            foreign_members: store.load_foreign_members()?,
            quarantined_members: super::quarantine::members_with_rows(store)?,
            windows: store
                .load_quarantine_windows()?
                .into_iter()
                .map(|(member, start, count)| (member, (start, count)))
                .collect(),
        })
    }

    /// A registry of the principals and the names of foreign members.
    fn registry(&mut self) -> Registry {
        let registry = Registry::new(std::mem::take(&mut self.principals));
        for member in &self.foreign_members {
            registry.set_foreign_name(member.id, member.display.clone());
        }
        registry
    }
}

impl State {
    pub(super) fn open(store: std::sync::Arc<Store>, policy: Policy) -> Result<State> {
        // An import block a stopped server left unfinished: undone if it never committed,
        // else finished, before anything reads.
        if let Some(pending) = store.pending_import()? {
            if pending.committed {
                if pending.file.exists() {
                    store.ingest_summaries(&pending.file)?;
                }
                tracing::info!(
                    last = pending.last,
                    "finished an import block interrupted after its commit"
                );
            } else {
                store.delete_changes(pending.first, pending.last)?;
                let _ = std::fs::remove_file(&pending.file);
                tracing::info!(
                    first = pending.first,
                    last = pending.last,
                    "undid an import block interrupted before its commit"
                );
            }
            store.clear_pending_ingest()?;
        }
        store.clear_staging()?;
        let mut cached = Cached::read(&store)?;
        let registry = cached.registry();
        let federation = Federation::new(
            store.meta_secret(crate::store::keys::OPERATOR_ID_KEY)?,
            policy.operator_name.clone(),
            store.meta_secret(crate::store::keys::PSEUDONYM_KEY_KEY)?,
            super::signing::OriginKey::from_secret(store.meta_secret(crate::store::keys::ORIGIN_KEY_KEY)?),
            cached.foreign_members,
        );
        let db_identity = store.db_identity()?;
        let presence_scan = scan_presence(&store);
        Ok(State {
            #[cfg(test)]
            fault: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            stop_import: std::sync::atomic::AtomicU8::new(0),
            db_identity,
            stream_work: tokio::sync::Semaphore::new(STREAM_WORKERS),
            store,
            registry,
            policy,
            writer: Mutex::new(cached.last_sequence),
            in_flight: Mutex::new(InFlight::default()),
            landed: parking_lot::Condvar::new(),
            led_term: AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
            ledger: Mutex::new(cached.ledger),
            reads: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            federation,
            disputed: RwLock::new(cached.disputed),
            new_flags_window: parking_lot::Mutex::new(cached.windows),
            quarantined_members: RwLock::new(cached.quarantined_members),
            quarantine_overrides: RwLock::new(HashMap::new()),
            hold: std::sync::atomic::AtomicU64::new(NO_HOLD),
            presence_scan,
            read_forwarder: RwLock::new(None),
        })
    }

    /// The quarantine thresholds admins set, from the stored limit overrides.
    pub(super) fn load_quarantine_overrides(&self) -> Result<()> {
        self.quarantine_overrides.write().clear();
        for (name, limits) in self.all_limit_overrides()? {
            if let Some(record) = self.registry.by_name(&name) {
                self.set_quarantine_override(record.id, limits.quarantine_new_flags_per_hour);
            }
        }
        Ok(())
    }

    /// See `Domain::refresh`: waits for the writer and ledger locks.
    pub(super) fn refresh(&self) -> Result<()> {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        // The lock itself: `writer()` may wait for the very entries being applied.
        let mut writer = self.writer.lock();
        self.refresh_stale(&mut writer, true)
    }

    /// Entries another node led (or a snapshot) were applied under this copy: it reads
    /// the store again now if the writer and ledger locks are free, else the next holder
    /// of the writer lock does (`writer()`, and the read flusher's `flush_reads`). Never
    /// waits: it runs on the state machine's apply, which a commit holding those locks
    /// may itself be waiting for.
    pub(super) fn note_applied(&self) -> Result<()> {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.writer.try_lock() {
            Some(mut writer) => self.refresh_stale(&mut writer, false),
            None => Ok(()),
        }
    }

    /// With the writer lock held: when marked stale, reads the store again (everything
    /// before anything is replaced, under the ledger lock too, so no call sees half of
    /// it). `wait_for_ledger` false: gives up, still stale, if the ledger is held.
    fn refresh_stale(&self, writer: &mut u64, wait_for_ledger: bool) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.stale.load(SeqCst) {
            return Ok(());
        }
        let mut ledger = match wait_for_ledger {
            true => self.ledger.lock(),
            false => match self.ledger.try_lock() {
                Some(ledger) => ledger,
                None => return Ok(()),
            },
        };
        // Commits in flight moved the memory ahead of the store: it is read again only
        // once they landed (or failed). Each is registered before the ledger is released,
        // so none is missed here.
        if wait_for_ledger {
            self.wait_for_landings(|_| true);
        } else if self.in_flight.lock().commits > 0 {
            return Ok(());
        }
        // Cleared before the read: an entry applied meanwhile marks it again.
        self.stale.store(false, SeqCst);
        let mut cached = match Cached::read(&self.store) {
            Ok(cached) => cached,
            Err(err) => {
                self.stale.store(true, SeqCst);
                return Err(err);
            }
        };
        self.registry.replace_with(cached.registry());
        self.federation.replace_foreign_members(cached.foreign_members);
        *writer = cached.last_sequence;
        *ledger = cached.ledger;
        *self.disputed.write() = cached.disputed;
        *self.quarantined_members.write() = cached.quarantined_members;
        *self.new_flags_window.lock() = cached.windows;
        drop(ledger);
        self.load_quarantine_overrides()
    }

    /// Whether applied entries left this copy's memory behind the store.
    pub(super) fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock()
    }

    /// The writer lock, once a newly elected leader has applied what came before it
    /// (`Store::settle_replication`): a commit then starts from the current state.
    /// Fails (and nothing may be staged) if the state cannot be made current: a new
    /// leader that has not applied its predecessors' entries in time, or a failed read of
    /// the store.
    pub(super) fn writer(&self) -> Result<MutexGuard<'_, u64>> {
        self.settle()?;
        let mut writer = self.writer.lock();
        self.wait_for_landings(|_| true);
        self.refresh_stale(&mut writer, true)?;
        Ok(writer)
    }

    /// `writer` for a submission changing the summary rows of `digests`: it waits only
    /// for the submissions in flight that change one of them (or for all, when this copy
    /// must read the store again). It proposes its commit (`propose_audited`), releases
    /// the lock, and `land`s it.
    pub(super) fn submission_writer(&self, digests: &[Digest]) -> Result<MutexGuard<'_, u64>> {
        self.settle()?;
        let mut writer = self.writer.lock();
        let stale = self.is_stale();
        self.wait_for_landings(|in_flight| {
            stale || digests.iter().any(|digest| in_flight.digests.contains_key(digest))
        });
        self.refresh_stale(&mut writer, true)?;
        Ok(writer)
    }

    /// Registers a proposed commit as in flight (with the ledger still held, so a copy
    /// reading the store again waits for it) until its `Landing` lands.
    pub(super) fn launch(&self, proposed: crate::store::Proposed, digests: Vec<Digest>) -> Landing<'_> {
        if !proposed.is_pending() {
            // Made already: nothing to wait for. `land` still reports its outcome.
            return Landing {
                state: self,
                proposed: None,
                digests: Vec::new(),
            };
        }
        let mut in_flight = self.in_flight.lock();
        in_flight.commits += 1;
        for digest in &digests {
            *in_flight.digests.entry(*digest).or_default() += 1;
        }
        Landing {
            state: self,
            proposed: Some(proposed),
            digests,
        }
    }

    /// Waits for a commit handed to the replicated log; on failure this copy's memory
    /// (moved on when it was proposed) is read again before the next commit.
    fn land(&self, proposed: crate::store::Proposed) -> Result<()> {
        proposed.wait().map_err(|err| {
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            Error::from(err)
        })
    }

    /// With the writer lock held (no commit can be launched meanwhile): waits until no
    /// submission is in flight if `must_wait` says so. Landing needs no lock of this
    /// copy's, so this ends when the log answers them.
    fn wait_for_landings(&self, must_wait: impl Fn(&InFlight) -> bool) {
        let mut in_flight = self.in_flight.lock();
        if in_flight.commits == 0 || !must_wait(&in_flight) {
            return;
        }
        while in_flight.commits > 0 {
            self.landed.wait(&mut in_flight);
        }
    }

    /// Waits for a newly elected leader's earlier entries (`Store::settle_replication`);
    /// a term this node did not lead in before makes its memory stale.
    fn settle(&self) -> Result<()> {
        if let Some(term) = self.store.settle_replication()?
            && self.led_term.swap(term, std::sync::atomic::Ordering::SeqCst) != term
        {
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// The newest committed sequence number, without waiting for a writer that holds the lock
    /// longer than a moment: readers of the change log use it as the head.
    pub(super) fn head(&self) -> Result<u64> {
        match self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            NO_HOLD => Ok(self.store.last_sequence()?),
            held => Ok(held),
        }
    }

    /// Up to `limit` change-log rows after `after` and no further than the head (read
    /// first), and the head.
    pub(super) fn changes_to_head(&self, after: u64, limit: usize) -> Result<(Vec<(u64, ChangeRecord)>, u64)> {
        let head = self.head()?;
        Ok((self.store.changes_between(after, head, limit)?, head))
    }

    /// Commits an import block: `batch` (built with `Batch::defer_changes`) with `event`
    /// like `commit_audited`, except that the bulk stays out of the audited commit. The
    /// change-log rows are written first, in chunks, behind the hold (readers of the change
    /// log stop at `before`, the sequence before the block); then the audited commit, small,
    /// so other writers (queries' audit entries) never wait behind the block; then the
    /// summary `rows` (sorted by digest) go in as one ingested file. `meta`'s pending-import
    /// row says how far it got: a server that stops midway undoes an uncommitted block or
    /// finishes a committed one as it opens.
    pub(super) fn commit_ingesting(
        &self,
        mut batch: Batch<'_>,
        event: AuditEvent,
        now: i64,
        rows: &[(Digest, Vec<SummaryEntry>)],
        before: u64,
        last: u64,
    ) -> Result<()> {
        let changes = batch.take_deferred_changes();
        // From the file's notes until it is ingested (a fold of the filters waits).
        let _noting = self.store.presence_noting();
        let staging = self.store.staging_dir();
        let file = staging.join(format!("summaries-{before}.sst"));
        let changes_file = staging.join(format!("changes-{before}.sst"));
        if self.store.is_replicated() {
            return self.commit_ingesting_replicated(batch, event, now, rows, changes, [file, changes_file]);
        }
        let mut pending = PendingImport {
            first: before + 1,
            last,
            committed: false,
            file: file.clone(),
        };
        // The two files are independent: built side by side.
        let (written, changes_written) = std::thread::scope(|scope| {
            let changes_written = scope.spawn(|| self.store.write_changes_file(&changes_file, &changes));
            let written = self
                .store
                .write_summaries_file(&file, rows.iter().map(|(digest, entries)| (digest, entries.as_slice())));
            let changes_written = changes_written
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("building the change-log file failed").into()));
            (written, changes_written)
        });
        let (written, changes_written) = match (written, changes_written) {
            (Ok(written), Ok(changes_written)) => (written, changes_written),
            (Err(err), _) | (_, Err(err)) => {
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_file(&changes_file);
                return Err(err.into());
            }
        };
        if !written {
            // No summary row to write (every flag was held back): one ordinary commit.
            let _ = std::fs::remove_file(&changes_file);
            for (sequence, row) in &changes {
                batch.put_change_row(*sequence, row);
            }
            self.commit_audited(batch, event, now)?;
            return Ok(());
        }
        self.hold.store(before, std::sync::atomic::Ordering::SeqCst);
        let staged = (|| -> Result<()> {
            let mut marker = self.store.batch();
            marker.put_pending_import(&pending);
            self.store.commit(marker)?;
            if changes_written {
                self.store.ingest_changes(&changes_file)?;
            }
            #[cfg(test)]
            if self.stop_import.load(std::sync::atomic::Ordering::SeqCst) == 1 {
                return Err(Error::Internal("stopped before the commit by a test".to_owned()));
            }
            pending.committed = true;
            batch.put_pending_import(&pending);
            self.commit_audited(batch, event, now)?;
            Ok(())
        })();
        if let Err(err) = staged {
            #[cfg(test)]
            if self.stop_import.load(std::sync::atomic::Ordering::SeqCst) == 1 {
                // As if killed: whatever was written stays for the next open to undo.
                return Err(err);
            }
            // Not committed: take back what was ingested (or leave it to the next open).
            if self.store.delete_changes(pending.first, pending.last).is_ok() {
                let _ = self.store.clear_pending_ingest();
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_file(&changes_file);
                self.hold.store(NO_HOLD, std::sync::atomic::Ordering::SeqCst);
            }
            return Err(err);
        }
        #[cfg(test)]
        if self.stop_import.load(std::sync::atomic::Ordering::SeqCst) == 2 {
            return Err(Error::Internal("stopped before ingestion by a test".to_owned()));
        }
        if let Err(err) = self.store.ingest_summaries(&file) {
            tracing::warn!(%err, "ingesting an import block's summaries failed; writing them as a batch");
            let mut batch = self.store.batch();
            for (digest, entries) in rows {
                batch.put_summary(digest, entries)?;
            }
            self.store.commit(batch)?;
            let _ = std::fs::remove_file(&file);
        }
        self.store.clear_pending_ingest()?;
        self.hold.store(NO_HOLD, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// `commit_ingesting` on a replicated log: the block's files are built as a single
    /// server builds them and go into the log with the audited commit (the log keeps them
    /// and every node ingests them as it applies the entry), so the rows are written once
    /// rather than spelled out in the entry, the WAL and the memtable.
    fn commit_ingesting_replicated(
        &self,
        mut batch: Batch<'_>,
        event: AuditEvent,
        now: i64,
        rows: &[(Digest, Vec<SummaryEntry>)],
        changes: Vec<(u64, Vec<u8>)>,
        [file, changes_file]: [std::path::PathBuf; 2],
    ) -> Result<()> {
        use crate::store::FileKind;
        let digests_file = file.with_extension("digests");
        let built = std::thread::scope(|scope| {
            let changes_written = scope.spawn(|| self.store.write_changes_file(&changes_file, &changes));
            let summaries: Vec<_> = rows
                .iter()
                .map(|(digest, entries)| (digest, entries.as_slice()))
                .collect();
            let (written, digests_written) = self
                .store
                .write_replicated_summaries(&file, &digests_file, &summaries)?;
            let changes_written = changes_written
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("building the change-log file failed").into()))?;
            Ok::<_, crate::store::StoreError>((written, changes_written, digests_written))
        });
        let committed = built
            .map_err(Error::from)
            .and_then(|(written, changes_written, digests_written)| {
                for (kind, path, was_written) in [
                    (FileKind::Digests, &digests_file, digests_written),
                    (FileKind::Changes, &changes_file, changes_written),
                    (FileKind::Summaries, &file, written),
                ] {
                    if was_written {
                        batch.attach_file(kind, path.clone());
                    }
                }
                self.commit_audited(batch, event, now).map(|_| ())
            });
        // The log moved each file it took; whatever is left was not proposed.
        for path in [&digests_file, &changes_file, &file] {
            let _ = std::fs::remove_file(path);
        }
        committed
    }

    /// Fails with `OutOfRange` when tombstones a reader at `after` has not seen were
    /// deleted since `horizon_at_start` (the horizon when its stream started; 0 for a
    /// resumption, checked against the whole past). Returns the horizon now. A reader at 0
    /// holds nothing, so it may read on however far the horizon is.
    pub(super) fn check_horizon(&self, after: u64, horizon_at_start: u64) -> Result<u64> {
        let horizon = self.store.change_horizon()?;
        if after != 0 && after < horizon && horizon > horizon_at_start {
            return Err(Error::OutOfRange(format!(
                "cursor: position {after} is older than the retention of removals (kept from {horizon} on); start again with a snapshot"
            )));
        }
        Ok(horizon)
    }

    #[cfg(test)]
    pub(super) fn panic_in_next_commit(&self) {
        self.fault.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Commits `batch` together with the audit entry of `event`.
    pub(super) fn commit_audited(&self, batch: Batch<'_>, event: AuditEvent, now: i64) -> Result<u64> {
        let (sequence, landing) = self.propose_audited(batch, event, now, Vec::new())?;
        landing.land()?;
        Ok(sequence)
    }

    /// `commit_audited` up to the wait: on a replicated log the commit is handed to it,
    /// in flight (changing the summary rows of `digests`) until the caller `land`s it;
    /// without one it is on disk when this returns.
    pub(super) fn propose_audited(
        &self,
        batch: Batch<'_>,
        event: AuditEvent,
        now: i64,
        digests: Vec<Digest>,
    ) -> Result<(u64, Landing<'_>)> {
        #[cfg(test)]
        #[allow(clippy::panic)]
        if self.fault.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a fault injected by a test");
        }
        let replicated = self.store.is_replicated();
        // The ledger is held for the write only; the wait for the disk (or the log) comes
        // after it is released (the writer lock, when the caller holds it, still orders
        // flag changes), so a query's audit entry never waits behind another call's
        // fsync. Read entries queued before this commit go first, in the same write.
        let proposed = {
            let mut ledger = self.ledger();
            let mut events = std::mem::take(&mut *self.reads.lock());
            let n_reads = events.len();
            events.push((event, now));
            let committed = match replicated {
                true => ledger.propose_all(&self.store, batch, &events),
                false => ledger
                    .commit_all(&self.store, batch, &events, Durability::Deferred)
                    .map(|sequence| (sequence, crate::store::Proposed::done())),
            };
            if committed.is_err() {
                events.truncate(n_reads);
                self.requeue_reads(events);
            }
            let (sequence, proposed) = committed?;
            // In flight before the ledger is released: a copy reading the store again
            // holds the ledger, so it finds this commit registered and waits for it.
            (sequence, self.launch(proposed, digests))
        };
        if !replicated {
            self.store.sync_wal()?;
        }
        Ok(proposed)
    }

    /// Records a call that changes nothing else.
    pub(super) fn record(&self, event: AuditEvent, now: i64) -> Result<u64> {
        self.commit_audited(self.store.batch(), event, now)
    }

    /// Records a read-only call: its entry is queued (`State::reads`), not written yet.
    pub(super) fn record_read(&self, event: AuditEvent, now: i64) -> Result<()> {
        {
            let mut reads = self.reads.lock();
            let queued_digests: usize = reads.iter().map(|(queued, _)| queued.digests.len()).sum();
            if reads.len() < MAX_PENDING_READS && queued_digests + event.digests.len() <= MAX_PENDING_READ_DIGESTS {
                reads.push((event, now));
                return Ok(());
            }
        }
        self.flush_reads()?;
        self.reads.lock().push((event, now));
        Ok(())
    }

    /// Commits the queued read audit entries, in one write without waiting for the disk
    /// (as a single read's entry was written before), or on a follower hands them to the
    /// leader. On failure they stay queued.
    pub(super) fn flush_reads(&self) -> Result<()> {
        if self.is_stale() {
            // Applied entries left this copy behind (its refresh found the locks taken):
            // read again under the writer lock before anything here extends the chain.
            drop(self.writer()?);
        }
        let forwarder = self.read_forwarder.read().clone();
        if let Some(forwarder) = forwarder.filter(|forwarder| !forwarder.leads()) {
            let mut events = std::mem::take(&mut *self.reads.lock());
            // In calls the leader takes: the queue may hold more than one call's worth
            // when reads arrived while a failed call's entries were out of it.
            let mut start = 0;
            while start < events.len() {
                let (mut end, mut n_digests) = (start, 0);
                while end < events.len()
                    && end - start < MAX_PENDING_READS
                    && (end == start || n_digests + events[end].0.digests.len() <= MAX_PENDING_READ_DIGESTS)
                {
                    n_digests += events[end].0.digests.len();
                    end += 1;
                }
                if let Err(err) = forwarder.forward(&events[start..end]) {
                    self.requeue_reads(events.split_off(start));
                    return Err(err);
                }
                start = end;
            }
            return Ok(());
        }
        self.settle()?;
        if self.is_stale() {
            drop(self.writer()?);
        }
        let (events, landing) = {
            let mut ledger = self.ledger();
            let events = std::mem::take(&mut *self.reads.lock());
            if events.is_empty() {
                return Ok(());
            }
            let committed = match self.store.is_replicated() {
                true => ledger
                    .propose_all(&self.store, self.store.batch(), &events)
                    .map(|(_, proposed)| proposed),
                false => ledger
                    .commit_all(&self.store, self.store.batch(), &events, Durability::Buffered)
                    .map(|_| crate::store::Proposed::done()),
            };
            match committed {
                Ok(proposed) => (events, self.launch(proposed, Vec::new())),
                Err(err) => {
                    self.requeue_reads(events);
                    return Err(err);
                }
            }
        };
        // The log's answer comes after the ledger is released, as a commit's does.
        if let Err(err) = landing.land() {
            self.requeue_reads(events);
            return Err(err);
        }
        Ok(())
    }

    pub(super) fn set_read_forwarder(&self, forwarder: Option<std::sync::Arc<dyn ReadForwarder>>) {
        *self.read_forwarder.write() = forwarder;
    }

    pub(super) fn has_queued_reads(&self) -> bool {
        !self.reads.lock().is_empty()
    }

    /// Puts read entries a failed commit took back at the front of the queue.
    fn requeue_reads(&self, mut events: Vec<(AuditEvent, i64)>) {
        let mut reads = self.reads.lock();
        events.append(&mut reads);
        *reads = events;
    }

    /// Ordered by digest: whoever walks the result writes in that order, the same on every
    /// copy of the store (a `HashMap`'s order differs from one process to the next).
    pub(super) fn read_summaries(&self, sorted_digests: &[Digest]) -> Result<BTreeMap<Digest, Vec<SummaryEntry>>> {
        Ok(sorted_digests
            .iter()
            .copied()
            .zip(self.store.get_summaries(sorted_digests)?)
            .map(|(digest, entries)| (digest, entries.unwrap_or_default()))
            .collect())
    }

    /// What `caller` is told about a digest with these stored flags; `None` when none is live.
    pub(super) fn match_of(
        &self,
        caller: &Caller,
        index: u32,
        digest: Digest,
        entries: &[SummaryEntry],
        now: i64,
    ) -> Result<Option<Match>> {
        let Some(mut found) = flags::aggregate(index, digest, entries, caller.id, now, |id| self.registry.name_of(id))
        else {
            return Ok(None);
        };
        // Disputes are rare: only a digest known to have some is scanned for them.
        if !self.disputed.read().contains(&digest) {
            return Ok(Some(found));
        }
        let live: BTreeSet<PrincipalId> = entries
            .iter()
            .filter(|entry| entry.expires_at_ms > now)
            .map(|entry| entry.member)
            .collect();
        found.n_disputes = self
            .store
            .disputes_of(&digest)?
            .iter()
            .filter(|(flagged_by, _)| live.contains(flagged_by))
            .count() as u32;
        Ok(Some(found))
    }

    /// Removes every flag on `digests` for which `selects` holds, as `removal` says (the
    /// tombstone's change and version), `chunk` digests per commit so the writer lock is
    /// never held long, each commit audited as `event(n_flags)` at time `now`. `digests` are
    /// found beforehand without the lock; each chunk is re-read under it. Disputes of
    /// members left without flags on a digest go too, and with `drop_versions` the flags'
    /// version rows (a peer's fresh snapshot may bring them back at the same version).
    /// Returns how many flags went. Member withdrawals, a peer's re-snapshot and the expiry
    /// purge all remove flags through here.
    #[allow(clippy::too_many_arguments)] // each is one decision of the caller's; a struct would only rename them
    pub(super) fn remove_where(
        &self,
        digests: &[Digest],
        chunk: usize,
        selects: impl Fn(&SummaryEntry) -> bool,
        removal: impl Fn(&SummaryEntry) -> Result<Removal>,
        drop_versions: bool,
        event: impl Fn(u64) -> AuditEvent,
        now: i64,
    ) -> Result<u64> {
        let mut n_withdrawn = 0u64;
        for digests in digests.chunks(chunk.max(1)) {
            let mut last_sequence = self.writer()?;
            let mut sequence = *last_sequence;
            let mut batch = self.store.batch();
            let mut n_chunk = 0u64;
            for (digest, entries) in self.read_summaries(digests)? {
                let (withdrawn, kept): (Vec<SummaryEntry>, Vec<SummaryEntry>) =
                    entries.into_iter().partition(|entry| selects(entry));
                if withdrawn.is_empty() {
                    continue;
                }
                for entry in &withdrawn {
                    stage_removal(&mut batch, &mut sequence, digest, entry, removal(entry)?, now);
                    if drop_versions {
                        batch.delete_flag_version(&FlagKey {
                            digest,
                            member: entry.member,
                            kind: entry.kind,
                            category: entry.category,
                        });
                    }
                    n_chunk += 1;
                }
                let members: BTreeSet<PrincipalId> = withdrawn.iter().map(|entry| entry.member).collect();
                for member in members {
                    stage_dispute_cleanup(self, &mut batch, &digest, &kept, member);
                }
                batch.put_summary(&digest, &kept)?;
            }
            if n_chunk == 0 {
                continue;
            }
            self.commit_audited(batch, event(n_chunk), now)?;
            *last_sequence = sequence;
            n_withdrawn += n_chunk;
        }
        Ok(n_withdrawn)
    }

    /// The origin a flag's member belongs to, for the per-origin bound: `None` for this
    /// operator's own members.
    fn origin_of(&self, member: PrincipalId) -> Option<[u8; 8]> {
        if is_foreign(member) {
            self.federation.origin_of(member)
        } else {
            None
        }
    }

    /// Fails when adding a flag of `key.member` to `entries` (which does not hold that flag
    /// yet) would pass a per-digest bound.
    pub(super) fn check_room(&self, entries: &[SummaryEntry], key: &FlagKey) -> std::result::Result<(), String> {
        if entries.iter().any(|entry| entry.same_flag(key)) {
            return Ok(());
        }
        if entries.len() >= MAX_ENTRIES_PER_DIGEST {
            return Err(format!(
                "the digest already holds {} flags, the most one digest may hold",
                entries.len()
            ));
        }
        let origin = self.origin_of(key.member);
        let n_same_origin = entries
            .iter()
            .filter(|entry| {
                is_foreign(entry.member) == is_foreign(key.member) && self.origin_of(entry.member) == origin
            })
            .count();
        if n_same_origin >= MAX_ENTRIES_PER_ORIGIN {
            return Err(format!(
                "the digest already holds {n_same_origin} flags from this origin, the most one origin may place on a digest"
            ));
        }
        Ok(())
    }
}

/// Stages a new or updated flag: a change-log upsert holding its full record, and its
/// entry in the digest's summary (written by the caller once per digest) naming that upsert.
/// The upsert the entry named before (a superseded version of the flag) is deleted in the
/// same batch: the change log keeps one record per live flag.
pub(super) fn stage_upsert(
    batch: &mut Batch<'_>,
    sequence: &mut u64,
    summary: &mut Vec<SummaryEntry>,
    key: &FlagKey,
    record: &FlagRecord,
    signature: Option<OriginSignature>,
    now: i64,
) {
    *sequence += 1;
    if let Some(previous) = flags::upsert_summary_entry(summary, key, record, *sequence) {
        batch.delete_change(previous);
    }
    batch.put_change(
        *sequence,
        &ChangeRecord {
            at_ms: now,
            key: *key,
            change: Change::Upsert(record.clone()),
            distribution: record.distribution,
            origin_sequence: record.origin_sequence,
            signature,
        },
    );
}

/// Why and by whose word a flag is removed: the tombstone's change, the flag's version at
/// its origin (0 for a local flag) and, for another operator's, its signature.
pub(super) struct Removal {
    pub change: Change,
    pub origin_sequence: u64,
    pub signature: Option<OriginSignature>,
}

impl Removal {
    /// A removal decided here, of a flag of this operator's own (or expired here).
    pub fn local(change: Change) -> Removal {
        Removal {
            change,
            origin_sequence: 0,
            signature: None,
        }
    }
}

/// Stages the removal of one flag (the caller drops its summary entry): the upsert that
/// held its record is deleted, and a thin tombstone in the change log says why.
pub(super) fn stage_removal(
    batch: &mut Batch<'_>,
    sequence: &mut u64,
    digest: Digest,
    entry: &SummaryEntry,
    removal: Removal,
    now: i64,
) {
    let Removal {
        change,
        origin_sequence,
        signature,
    } = removal;
    let key = FlagKey {
        digest,
        member: entry.member,
        kind: entry.kind,
        category: entry.category,
    };
    *sequence += 1;
    batch.delete_change(entry.sequence);
    batch.put_change(
        *sequence,
        &ChangeRecord {
            at_ms: now,
            key,
            change,
            distribution: entry.distribution,
            origin_sequence,
            signature,
        },
    );
}

/// When the last live flag of `member` on `digest` goes, disputes of its flags there go
/// with it: a dispute is about flags, and must not attach to a later flag on the digest.
/// Only a digest known to have disputes is touched (a range deletion carries the digest's
/// bytes until compaction).
pub(super) fn stage_dispute_cleanup(
    state: &State,
    batch: &mut Batch<'_>,
    digest: &Digest,
    remaining: &[SummaryEntry],
    removed_member: PrincipalId,
) {
    if state.disputed.read().contains(digest) && !remaining.iter().any(|entry| entry.member == removed_member) {
        batch.delete_disputes_of(digest, removed_member);
    }
}

/// Runs a blocking chunk of a long-lived stream, after waiting for one of the few
/// stream workers.
pub(super) async fn stream_chunk<T: Send + 'static>(
    state: std::sync::Arc<State>,
    work: impl FnOnce(&State) -> Result<T> + Send + 'static,
) -> Result<T> {
    let _permit = state
        .stream_work
        .acquire()
        .await
        .map_err(|_| Error::Internal("the stream workers are closed".to_owned()))?;
    let worker = state.clone();
    blocking(move || work(&worker)).await
}

/// Runs blocking store work off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}

/// Runs bulk work (an import block) on a thread of its own at a lower CPU priority, so
/// that calls on the other threads (a lookup) are not kept waiting behind it when the CPUs
/// are busy. A thread of its own, because a thread cannot take its priority back.
pub(super) async fn bulk<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flagshare-bulk".to_owned())
        .spawn(move || {
            // On Linux a thread id names that thread alone (and the threads it starts inherit
            // its nice value). Failing to lower it changes nothing but the priority.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), BULK_NICE);
            let _ = done.send(work());
        })
        .map_err(|err| Error::Internal(format!("starting a bulk worker failed: {err}")))?;
    result
        .await
        .map_err(|_| Error::Internal("a bulk worker ended without its result".to_owned()))?
}

/// The nice value of bulk work (0 is normal, 19 the lowest): single-digest p99 during an
/// import of 3,000,000 was 8.5-8.8 ms at 0, 4.9-5.4 ms at 10, 4.4 ms at 19.
const BULK_NICE: i32 = 19;
