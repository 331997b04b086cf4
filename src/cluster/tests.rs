//! The Raft storage against openraft's own suite, and what this crate adds to it: write
//! sets applied on another copy of the store, snapshots moved between stores, refused
//! when damaged, and finished after a stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, LeaderId, LogId, RaftSnapshotBuilder, StorageError};
use tempfile::TempDir;

use super::log::LogStore;
use super::machine::StateMachine;
use super::{ClusterNode, Config, Entry, NodeId, Proposal};
use crate::digest::{Digest, Kind};
use crate::model::{Category, Change, ChangeRecord, Distribution, FlagKey, FlagRecord, SummaryEntry};
use crate::store::{Row, Store, StoreOptions};

struct Builder;

impl StoreBuilder<Config, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let (dir, store) = open_store();
        Ok((dir, LogStore::new(store.clone()), StateMachine::open(store)?))
    }
}

fn open_store() -> (TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
    (dir, Arc::new(store))
}

#[test]
fn the_log_store_and_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

/// Every replicated row of `store`, as a snapshot would carry it.
fn rows_of(store: &Store) -> Vec<Row> {
    store.replicated_rows()
}

fn entry(index: u64, payload: EntryPayload<Config>) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId::new(1, 1), index),
        payload,
    }
}

fn flag(digest: Digest, member: u32, sequence: u64) -> (FlagKey, SummaryEntry, ChangeRecord) {
    let key = FlagKey {
        digest,
        member,
        kind: Kind::Email,
        category: Category::Grooming,
    };
    let record = FlagRecord {
        confidence: 80,
        first_seen_ms: 1,
        last_seen_ms: 2,
        expires_at_ms: 3,
        created_at_ms: 4,
        updated_at_ms: 4,
        key_id: 1,
        distribution: Distribution::Federated,
        origin_sequence: 0,
        reference: Vec::new(),
    };
    let summary = SummaryEntry {
        member,
        kind: Kind::Email,
        category: Category::Grooming,
        confidence: 80,
        first_seen_ms: 1,
        last_seen_ms: 2,
        expires_at_ms: 3,
        distribution: Distribution::Federated,
        sequence,
    };
    let change = ChangeRecord {
        at_ms: 4,
        key,
        change: Change::Upsert(record),
        distribution: Distribution::Federated,
        origin_sequence: 0,
        signature: None,
    };
    (key, summary, change)
}

/// Commits two batches on `store` as the leader would, returning their write sets.
fn commit_on_leader(store: &Store) -> Vec<Vec<u8>> {
    let mut sets = Vec::new();
    let mut batch = store.batch().recording();
    for (n, digest) in [[1u8; 32], [2u8; 32]].into_iter().enumerate() {
        let (_, summary, change) = flag(digest, 7, n as u64 + 1);
        batch.put_summary(&digest, &[summary]).unwrap();
        batch.put_change(n as u64 + 1, &change);
    }
    batch.put_audit(1, b"{\"entry\":1}", &[9; 32]);
    sets.push(batch.take_write_set().into_bytes());
    store.commit(batch).unwrap();

    // The second commit deletes, and deletes a range, as a withdrawal and audit
    // retention do.
    let mut batch = store.batch().recording();
    batch.put_summary(&[1u8; 32], &[]).unwrap();
    batch.delete_change(1);
    batch.prune_audit(1, &[9; 32]);
    sets.push(batch.take_write_set().into_bytes());
    store.commit(batch).unwrap();
    sets
}

#[tokio::test]
async fn write_sets_applied_by_the_state_machine_leave_a_copy_equal_to_the_leader() {
    let (_leader_dir, leader) = open_store();
    let (_follower_dir, follower) = open_store();
    let sets = commit_on_leader(&leader);
    assert_ne!(rows_of(&leader), rows_of(&follower));

    let mut machine = StateMachine::open(follower.clone()).unwrap();
    let entries = (1..)
        .zip(sets)
        .map(|(index, writes)| entry(index, EntryPayload::Normal(Proposal::writes(writes))));
    machine.apply(entries.collect::<Vec<_>>()).await.unwrap();

    assert_eq!(rows_of(&leader), rows_of(&follower));
    let (applied, _) = machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|log_id| log_id.index), Some(2));
}

/// An import block's files as its leader builds them (`n` flags, digests `[k; 32]` for
/// `k` in `1..=n`, sequences from 1) and the entry that carries them, files by
/// reference to where they were built.
fn import_entry(store: &Store, index: u64, n: u8) -> Entry {
    let staging = store.staging_dir();
    let mut batch = store.batch().recording();
    batch.defer_changes();
    let mut rows = Vec::new();
    for k in 1..=n {
        let digest = [k; 32];
        let (_, summary, change) = flag(digest, 7, u64::from(k));
        batch.put_change(u64::from(k), &change);
        rows.push((digest, vec![summary]));
    }
    batch.put_audit(1, b"{\"entry\":1}", &[9; 32]);
    let changes = batch.take_deferred_changes();
    let (summaries, changes_file, digests) = (
        staging.join(format!("summaries-{index}.sst")),
        staging.join(format!("changes-{index}.sst")),
        staging.join(format!("summaries-{index}.digests")),
    );
    assert!(store.write_changes_file(&changes_file, &changes).unwrap());
    let summary_rows: Vec<_> = rows
        .iter()
        .map(|(digest, entries)| (digest, entries.as_slice()))
        .collect();
    assert_eq!(
        store
            .write_replicated_summaries(&summaries, &digests, &summary_rows)
            .unwrap(),
        (true, true)
    );
    let files = [
        (crate::store::FileKind::Summaries, summaries),
        (crate::store::FileKind::Changes, changes_file),
        (crate::store::FileKind::Digests, digests),
    ]
    .into_iter()
    .map(|(kind, path)| crate::store::IngestFile { kind, path })
    .collect();
    let files = super::node::entry_files(files, false).unwrap();
    let writes = batch.take_write_set().into_bytes();
    entry(index, EntryPayload::Normal(Proposal { writes, files }))
}

fn files_of(store: &Store) -> Vec<String> {
    let dir = store.path().with_extension("log-files");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|listing| {
            listing
                .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An entry that ingests files: its leader's log keeps the files (moved in, named by the
/// entry's index) and its row only names them; over the network it carries their bytes,
/// checked against their hashes; a follower keeps them as the leader does; applying it
/// leaves both copies alike, the digests noted, and again after a stop midway; purging
/// or truncating the log removes its files, and files of entries the log does not hold
/// are removed when the log opens.
#[tokio::test]
async fn an_entry_that_ingests_files_travels_whole_and_is_applied_alike() {
    use openraft::RaftLogReader;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

    let (_leader_dir, leader) = open_store();
    let (_follower_dir, follower) = open_store();
    // Presence filters ready (nothing stored yet): a digest the apply did not note would
    // then read as not stored.
    for store in [&leader, &follower] {
        assert!(store.scan_presence(&std::sync::atomic::AtomicBool::new(false)).unwrap());
    }
    let mut leader_log = LogStore::new(leader.clone());
    let proposed = import_entry(&leader, 1, 40);
    leader_log.blocking_append([proposed]).await.unwrap();
    assert_eq!(
        files_of(&leader),
        [
            "00000000000000000001.changes",
            "00000000000000000001.digests",
            "00000000000000000001.summaries"
        ]
    );
    assert_eq!(
        std::fs::read_dir(leader.staging_dir()).unwrap().count(),
        0,
        "the built files were moved into the log"
    );
    let logged = leader_log.try_get_log_entries(1..2).await.unwrap().remove(0);
    let EntryPayload::Normal(proposal) = &logged.payload else {
        panic!("{logged:?}")
    };
    assert!(proposal.files.iter().all(|file| file.body == super::FileBody::Logged));
    let row = super::rows::encode_entry(&logged).unwrap();
    assert!(row.len() < 400, "the log's row names its files: {} bytes", row.len());

    // The network's form carries the bytes; a damaged byte or the log's form is refused.
    let files = super::files::LogFiles::of(&leader);
    let wire = super::rows::encode_wire_entry(&logged, &files).unwrap();
    let sent = super::rows::decode_wire_entry(1, &wire).unwrap();
    let mut damaged = wire.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let refused = super::rows::decode_wire_entry(1, &damaged).unwrap_err();
    assert!(refused.to_string().contains("do not match its hash"), "{refused}");
    let refused = super::rows::decode_wire_entry(1, &row).unwrap_err();
    assert!(refused.to_string().contains("unknown payload kind"), "{refused}");

    let mut follower_log = LogStore::new(follower.clone());
    follower_log.blocking_append([sent]).await.unwrap();
    assert_eq!(files_of(&follower), files_of(&leader));

    let mut leader_machine = StateMachine::open(leader.clone()).unwrap();
    let mut follower_machine = StateMachine::open(follower.clone()).unwrap();
    leader_machine.apply([logged.clone()]).await.unwrap();
    let from_log = follower_log.try_get_log_entries(1..2).await.unwrap();
    follower_machine.apply(from_log.clone()).await.unwrap();
    let copied = rows_of(&follower);
    assert_eq!(copied, rows_of(&leader));
    // Noted by the follower's apply, and on the leader as it built the files.
    let digests: Vec<Digest> = (1..=40u8).map(|k| [k; 32]).collect();
    for store in [&follower, &leader] {
        let found = store.get_summaries(&digests).unwrap();
        assert!(
            found
                .iter()
                .all(|summary| summary.as_ref().is_some_and(|entries| entries.len() == 1))
        );
    }
    // Applied again, as after a stop before the applied index was written: the same rows.
    follower_machine.apply(from_log).await.unwrap();
    assert_eq!(rows_of(&follower), copied);
    assert_eq!(files_of(&follower).len(), 3, "the log keeps its files after the apply");

    // Purged past the entry: its files go. Truncated at a newer entry: that one's go.
    follower_log.purge(logged.log_id).await.unwrap();
    assert!(files_of(&follower).is_empty(), "{:?}", files_of(&follower));
    leader_log.blocking_append([import_entry(&leader, 2, 3)]).await.unwrap();
    assert_eq!(files_of(&leader).len(), 6);
    leader_log.truncate(LogId::new(LeaderId::new(1, 1), 2)).await.unwrap();
    assert_eq!(files_of(&leader).len(), 3, "{:?}", files_of(&leader));

    // A file whose entry the log does not hold (a stop between the two) goes at open.
    let stray = leader
        .path()
        .with_extension("log-files")
        .join("00000000000000000007.summaries");
    std::fs::write(&stray, b"left by a stop").unwrap();
    drop(leader_log);
    let _reopened = LogStore::new(leader.clone());
    assert_eq!(files_of(&leader).len(), 3, "{:?}", files_of(&leader));
    assert!(!stray.exists());
}

/// Files a commit ingests are hashed for the entry when other nodes receive it, and
/// refused when more than an AppendEntries may carry; a node alone takes them whatever
/// their size and leaves hashing to the first send.
#[test]
fn files_larger_than_an_append_go_only_into_a_one_node_log() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![7u8; super::node::MAX_SHARED_FILE_BYTES as usize + 1]).unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"rows").unwrap();
    let file = |path: &std::path::Path, kind| crate::store::IngestFile {
        kind,
        path: path.to_path_buf(),
    };
    let shared = super::node::entry_files(vec![file(&small, crate::store::FileKind::Changes)], false).unwrap();
    assert_eq!((shared[0].len, shared[0].hash), (4, *blake3::hash(b"rows").as_bytes()));
    let refused = super::node::entry_files(vec![file(&big, crate::store::FileKind::Summaries)], false).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("more than another node may receive at once"),
        "{refused}"
    );
    let alone = super::node::entry_files(
        vec![
            file(&big, crate::store::FileKind::Summaries),
            file(&small, crate::store::FileKind::Digests),
        ],
        true,
    )
    .unwrap();
    let kinds: Vec<_> = alone.iter().map(|file| (file.kind, file.hash)).collect();
    assert_eq!(
        kinds,
        [
            (crate::store::FileKind::Digests, super::UNHASHED),
            (crate::store::FileKind::Summaries, super::UNHASHED)
        ],
        "in apply order, unhashed"
    );
}

#[tokio::test]
async fn a_damaged_write_set_in_a_committed_entry_stops_the_apply_and_changes_nothing() {
    let (_leader_dir, leader) = open_store();
    let (_follower_dir, follower) = open_store();
    let mut sets = commit_on_leader(&leader);
    let before = rows_of(&follower);
    let damaged = sets.remove(0);
    let mut machine = StateMachine::open(follower.clone()).unwrap();
    let refused = machine
        .apply(vec![entry(
            1,
            EntryPayload::Normal(Proposal::writes(damaged[..damaged.len() - 3].to_vec())),
        )])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("truncated"), "{refused}");
    assert_eq!(rows_of(&follower), before);
    assert_eq!(machine.applied_state().await.unwrap().0, None);
}

#[tokio::test]
async fn a_snapshot_replaces_a_far_behind_copy_whole_and_a_damaged_one_is_refused() {
    let (_leader_dir, leader) = open_store();
    let sets = commit_on_leader(&leader);
    let mut leader_machine = StateMachine::open(leader.clone()).unwrap();
    // The leader's applied index, as if it applied what it committed.
    leader_machine
        .apply(vec![entry(1, EntryPayload::Blank), entry(2, EntryPayload::Blank)])
        .await
        .unwrap();
    let snapshot = leader_machine.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|log_id| log_id.index), Some(2));
    let bytes = std::fs::read(leader.path().with_extension("snapshot").join("current")).unwrap();

    // A follower holding rows of its own that the leader never had.
    let (_follower_dir, follower) = open_store();
    let mut stale = follower.batch();
    let (_, summary, _) = flag([5u8; 32], 3, 1);
    stale.put_summary(&[5u8; 32], &[summary]).unwrap();
    follower.commit(stale).unwrap();
    let mut machine = StateMachine::open(follower.clone()).unwrap();
    let before = rows_of(&follower);

    for (what, damaged) in [
        ("a flipped byte", {
            let mut bytes = bytes.clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            bytes
        }),
        ("a cut", bytes[..bytes.len() - 40].to_vec()),
        ("another format", {
            let mut bytes = bytes.clone();
            bytes[0] = b'X';
            bytes
        }),
    ] {
        let mut file = machine.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *file, &damaged).await.unwrap();
        let refused = machine.install_snapshot(&snapshot.meta, file).await;
        assert!(refused.is_err(), "{what} was installed");
        assert_eq!(rows_of(&follower), before, "{what} changed the store");
    }

    let mut file = machine.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *file, &bytes).await.unwrap();
    machine.install_snapshot(&snapshot.meta, file).await.unwrap();
    assert_eq!(rows_of(&follower), rows_of(&leader));
    assert_eq!(machine.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    let current = machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    drop(sets);
}

#[tokio::test]
async fn an_install_cut_short_by_a_stop_is_finished_when_the_node_opens() {
    let (_leader_dir, leader) = open_store();
    commit_on_leader(&leader);
    let mut leader_machine = StateMachine::open(leader.clone()).unwrap();
    leader_machine.apply(vec![entry(1, EntryPayload::Blank)]).await.unwrap();
    let snapshot = leader_machine.build_snapshot().await.unwrap();

    let (follower_dir, follower) = open_store();
    let machine = StateMachine::open(follower.clone()).unwrap();
    drop(machine);
    // As a node killed midway leaves it: the file in place, the mark set, the rows not.
    std::fs::copy(
        leader.path().with_extension("snapshot").join("current"),
        follower.path().with_extension("snapshot").join("current"),
    )
    .unwrap();
    follower
        .put_raft_state(&[(
            super::rows::INSTALLING,
            super::rows::encode_json(&snapshot.meta).unwrap(),
        )])
        .unwrap();
    assert_ne!(rows_of(&follower), rows_of(&leader));
    drop(follower);

    let follower = Arc::new(Store::open(&follower_dir.path().join("db"), &StoreOptions::default()).unwrap());
    let mut machine = StateMachine::open(follower.clone()).unwrap();
    assert_eq!(rows_of(&follower), rows_of(&leader));
    assert_eq!(machine.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    assert!(follower.raft_state(super::rows::INSTALLING).unwrap().is_none());
}

/// Three (then four) real Raft cores over real stores, their messages carried by a router
/// in this process that can cut a node off: what the log store and state machine do under
/// openraft's replication, elections and snapshot transfer, before any network is involved.
/// The leader's commits, applied to a follower's store by its state machine as Raft
/// entries; the follower's state machine tells the store's apply listener.
struct Mirror {
    leader: Arc<Store>,
    follower: std::sync::Mutex<StateMachine>,
    index: std::sync::atomic::AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl crate::store::Replicator for Mirror {
    fn propose(&self, writes: crate::store::WriteSet) -> Result<crate::store::Proposed, crate::store::StoreError> {
        let writes = writes.into_bytes();
        self.leader.apply_write_set(&writes, &[])?;
        let index = self.index.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut machine = self.follower.lock().unwrap();
        tokio::task::block_in_place(|| {
            self.runtime
                .block_on(machine.apply(vec![entry(index, EntryPayload::Normal(Proposal::writes(writes)))]))
        })
        .map_err(|err| crate::store::StoreError::Unavailable(err.to_string()))?;
        Ok(crate::store::Proposed::done())
    }

    fn trim_log(&self) -> Result<(), crate::store::StoreError> {
        Ok(())
    }
}

/// A leader's domain whose commits `Mirror` applies to a follower's store, and the
/// follower's domain and store (its listener not set yet).
fn mirrored_pair() -> (
    [tempfile::TempDir; 2],
    crate::domain::Domain,
    crate::domain::Domain,
    Arc<Store>,
) {
    use crate::domain::{Domain, Policy};
    let (leader_dir, leader_store) = open_store();
    let (follower_dir, follower_store) = open_store();
    let leader = Domain::open(leader_store.clone(), Policy::default()).unwrap();
    let follower = Domain::open(follower_store.clone(), Policy::default()).unwrap();
    leader_store.set_replicator(Some(Arc::new(Mirror {
        leader: leader_store.clone(),
        follower: std::sync::Mutex::new(StateMachine::open(follower_store.clone()).unwrap()),
        index: std::sync::atomic::AtomicU64::new(0),
        runtime: tokio::runtime::Handle::current(),
    })));
    ([leader_dir, follower_dir], leader, follower, follower_store)
}

/// A follower's domain reads the store again when another node's commits are applied
/// under it: a principal added on the leader is known, its flags are found, the change
/// log's head and the audit chain's head move with the leader's; without the listener,
/// the follower's memory stays behind (the principal is unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_domain_follows_the_leaders_commits_applied_under_it() {
    use crate::model::Role;

    let (_dirs, leader, follower, follower_store) = mirrored_pair();
    let add = |name: &'static str| crate::domain::tests::member(&leader, name);

    // No listener: the rows arrive, the follower's memory does not follow.
    let early = add("early").await;
    assert!(follower.authorize(&early.cert_sha256, &[Role::Member]).is_err());

    // This node is 2; the entries were proposed by node 1.
    follower_store.set_apply_listener(
        crate::store::OwnEntries { id: 2, after: 0 },
        Some(follower.apply_listener()),
    );
    let alpha = add("alpha").await;
    for caller in [&early, &alpha] {
        let known = follower.authorize(&caller.cert_sha256, &[Role::Member]).unwrap();
        assert_eq!((known.id, known.name.as_str()), (caller.id, caller.name.as_str()));
    }
    let flags = gated_flags(0, 50);
    let digests: Vec<Digest> = flags.iter().map(|flag| flag.digest).collect();
    leader.submit(alpha.clone(), flags, 1).await.unwrap();
    assert_eq!(follower.query(early.clone(), digests.clone()).await.unwrap().len(), 50);
    let (_, _, leader_head) = leader.feed_changes(alpha.clone(), 0, 0).await.unwrap();
    let (_, _, follower_head) = follower.feed_changes(alpha.clone(), 0, 0).await.unwrap();
    assert_eq!(follower_head, leader_head);
    assert_eq!(leader_head, 50);

    // The audit chain: the follower's own next entry (its query's, written to its own
    // store here, as no log routes it) links to the leader's head it was told of.
    let admin = crate::domain::tests::admin();
    let report = follower.verify_audit(admin.clone()).await.unwrap();
    assert!(report.broken.is_none(), "{:?}", report.broken);
    let again = follower.verify_audit(admin).await.unwrap();
    assert!(again.broken.is_none(), "{:?}", again.broken);
    assert!(again.last_sequence > report.last_sequence);
}

/// Entries of this node's own id are news to its domain only when a previous process
/// proposed them (at or below the last index its log held when this one started): a
/// leader restarted in its term applies them after its domain read the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_is_told_of_its_nodes_entries_that_a_previous_process_proposed() {
    use crate::model::Role;

    let (_dirs, leader, restarted, restarted_store) = mirrored_pair();
    let add = |name: &'static str| crate::domain::tests::member(&leader, name);

    // The entries are node 1's (`entry`), and this process started with its log at 1,000.
    restarted_store.set_apply_listener(
        crate::store::OwnEntries { id: 1, after: 1_000 },
        Some(restarted.apply_listener()),
    );
    let inherited = add("inherited").await;
    let known = restarted.authorize(&inherited.cert_sha256, &[Role::Member]).unwrap();
    assert_eq!(known.name, "inherited");

    // Node 1's entries past where its log was at start are this process's own: not news.
    restarted_store.set_apply_listener(
        crate::store::OwnEntries { id: 1, after: 0 },
        Some(restarted.apply_listener()),
    );
    let own = add("own").await;
    assert!(restarted.authorize(&own.cert_sha256, &[Role::Member]).is_err());
}

/// A replicated log the test answers by hand: each proposal waits in `proposals` until the
/// test applies it to the store (as the log's state machine would) or fails it.
struct Gate {
    proposals: std::sync::Mutex<std::sync::mpsc::Sender<Held>>,
    /// The term this node leads in (`Replicator::settle`); 0: none; `u64::MAX`: it leads
    /// but has not applied its predecessors' entries in time.
    term: std::sync::atomic::AtomicU64,
}

/// A proposal held by `Gate`: its write set and where its answer goes.
struct Held {
    writes: Vec<u8>,
    answer: std::sync::mpsc::Sender<Result<(), crate::store::StoreError>>,
}

impl crate::store::Replicator for Gate {
    fn propose(&self, writes: crate::store::WriteSet) -> Result<crate::store::Proposed, crate::store::StoreError> {
        let (answer, answered) = std::sync::mpsc::channel();
        let held = Held {
            writes: writes.into_bytes(),
            answer,
        };
        self.proposals
            .lock()
            .unwrap()
            .send(held)
            .map_err(|_| crate::store::StoreError::Unavailable("the test stopped".to_owned()))?;
        Ok(crate::store::Proposed::pending(move || {
            answered
                .recv()
                .unwrap_or_else(|_| Err(crate::store::StoreError::Unavailable("never answered".to_owned())))
        }))
    }

    fn trim_log(&self) -> Result<(), crate::store::StoreError> {
        Ok(())
    }

    fn settle(&self) -> Result<Option<u64>, crate::store::StoreError> {
        match self.term.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(None),
            u64::MAX => Err(crate::store::StoreError::Unavailable("not settled".to_owned())),
            term => Ok(Some(term)),
        }
    }
}

/// Adds member `name` to `domain` (its commit goes through the gate, which the caller
/// answers).
fn gated_principal(
    domain: &crate::domain::Domain,
    name: &'static str,
) -> tokio::task::JoinHandle<crate::domain::Caller> {
    let domain = domain.clone();
    tokio::spawn(async move { crate::domain::tests::member(&domain, name).await })
}

/// `admin audit verify` on a domain whose log is `held`: every commit it makes meanwhile
/// is applied to `store` and answered.
async fn verified_through_gate(
    domain: &crate::domain::Domain,
    store: &Store,
    held: &std::sync::mpsc::Receiver<Held>,
) -> crate::domain::VerifyReport {
    let admin = crate::domain::tests::admin();
    let verifying = {
        let domain = domain.clone();
        tokio::spawn(async move { domain.verify_audit(admin).await })
    };
    loop {
        if verifying.is_finished() {
            return verifying.await.unwrap().unwrap();
        }
        if let Ok(proposal) = held.recv_timeout(std::time::Duration::from_millis(50)) {
            store.apply_write_set(&proposal.writes, &[]).unwrap();
            proposal.answer.send(Ok(())).unwrap();
        }
    }
}

/// New flags on the digests of `from..to`.
fn gated_flags(from: u32, to: u32) -> Vec<crate::domain::NewFlag> {
    (from..to)
        .map(|n| crate::domain::NewFlag {
            digest: *blake3::hash(&n.to_be_bytes()).as_bytes(),
            kind: Kind::Email,
            category: Category::Grooming,
            confidence: 60,
            observed_at_ms: None,
            expires_at_ms: None,
            reference: Vec::new(),
            distribution: None,
        })
        .collect()
}

/// Submissions on a replicated log hold the writer lock only while they stage and
/// propose: a second one with other digests is proposed while the first is unanswered. A
/// submission touching a digest in flight, and any other writer, waits until what is in
/// flight landed, and then sees it. A proposal that fails leaves no trace: the next
/// commit continues the change log and the audit chain from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_overlap_on_a_replicated_log_and_a_failed_one_is_read_again() {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Duration;

    use crate::domain::{Domain, NewFlag, Policy};

    let (_dir, store) = open_store();
    let domain = Domain::open(store.clone(), Policy::default()).unwrap();
    let (proposals, held) = std::sync::mpsc::channel();
    store.set_replicator(Some(Arc::new(Gate {
        proposals: std::sync::Mutex::new(proposals),
        term: std::sync::atomic::AtomicU64::new(0),
    })));
    let next = || held.recv_timeout(Duration::from_secs(10)).expect("a proposal");
    let apply = |proposal: Held| {
        store.apply_write_set(&proposal.writes, &[]).unwrap();
        proposal.answer.send(Ok(())).unwrap();
    };
    let quiet = |what: &str| match held.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!(
            "{what} was proposed while a submission it must wait for was in flight: {:?}",
            other.is_ok()
        ),
    };

    let add = |name: &'static str| gated_principal(&domain, name);
    let adding = add("alpha");
    apply(next());
    let alpha = adding.await.unwrap();

    let flags = gated_flags;
    let submit = |new_flags: Vec<NewFlag>| {
        let (domain, alpha) = (domain.clone(), alpha.clone());
        tokio::spawn(async move { domain.submit(alpha, new_flags, 1).await })
    };

    // A and B overlap: B is proposed before A is answered.
    let a = submit(flags(0, 50));
    let proposal_a = next();
    let b = submit(flags(50, 100));
    let proposal_b = next();
    // C touches one of A's digests; another writer (a principal added) touches no
    // digest: both wait for what is in flight.
    let c = submit(flags(10, 11));
    quiet("a submission on a digest in flight");
    apply(proposal_a);
    assert_eq!(a.await.unwrap().unwrap().n_created, 50);
    quiet("a submission on a digest in flight, with another submission still in flight");
    apply(proposal_b);
    assert_eq!(b.await.unwrap().unwrap().n_created, 50);
    apply(next());
    let c = c.await.unwrap().unwrap();
    assert_eq!((c.n_created, c.n_updated), (0, 1), "C staged without A's flag");

    let d = submit(flags(100, 150));
    let proposal_d = next();
    let adding = add("beta");
    quiet("a principal change");
    // D fails: nothing of it reaches the store; its memory (sequences, the audit head)
    // is read again before the next commit.
    proposal_d
        .answer
        .send(Err(crate::store::StoreError::Unavailable(
            "lost its leadership".to_owned(),
        )))
        .unwrap();
    let failed = d.await.unwrap().unwrap_err();
    assert!(failed.to_string().contains("lost its leadership"), "{failed}");
    apply(next());
    adding.await.unwrap();
    let e = submit(flags(150, 160));
    apply(next());
    let e = e.await.unwrap().unwrap();
    assert_eq!(e.n_created, 10);
    // 50 + 50 + 1 changes, then E's 10: D's sequences were handed out again.
    assert_eq!(e.sequence, 111);
    let (_, _, head) = domain.feed_changes(alpha.clone(), 0, 0).await.unwrap();
    assert_eq!(head, 111);
    assert!(
        domain
            .query(alpha.clone(), flags(100, 150).iter().map(|flag| flag.digest).collect())
            .await
            .unwrap()
            .is_empty()
    );

    // Verification records itself (and the queued query's entry) through the log.
    let report = verified_through_gate(&domain, &store, &held).await;
    assert!(report.broken.is_none(), "{:?}", report.broken);
}

/// A commit reported failed may still land later (a leader that lost its lead while its
/// entry was on its way: the next leader commits it, and it is applied here as this
/// node's own). A node that leads again in a new term reads the store before its next
/// commit, so it continues after that entry instead of handing out its sequences again;
/// one that cannot apply what came before its term refuses to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leading_in_a_new_term_reads_the_store_before_its_next_commit() {
    use std::time::Duration;

    use crate::domain::{Domain, Policy};

    let (_dir, store) = open_store();
    let domain = Domain::open(store.clone(), Policy::default()).unwrap();
    let (proposals, held) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        proposals: std::sync::Mutex::new(proposals),
        term: std::sync::atomic::AtomicU64::new(1),
    });
    store.set_replicator(Some(gate.clone()));
    let next = || held.recv_timeout(Duration::from_secs(10)).expect("a proposal");
    let apply = |writes: &[u8]| store.apply_write_set(writes, &[]).unwrap();

    let adding = gated_principal(&domain, "alpha");
    let proposal = next();
    apply(&proposal.writes);
    proposal.answer.send(Ok(())).unwrap();
    let alpha = adding.await.unwrap();
    let submit = |from: u32, to: u32| {
        let (domain, alpha) = (domain.clone(), alpha.clone());
        tokio::spawn(async move { domain.submit(alpha, gated_flags(from, to), 1).await })
    };

    let a = submit(0, 50);
    let proposal = next();
    apply(&proposal.writes);
    proposal.answer.send(Ok(())).unwrap();
    assert_eq!(a.await.unwrap().unwrap().sequence, 50);

    // B is reported failed; the node reads the store again (as a follower's read flush
    // does), then B lands after all.
    let b = submit(50, 100);
    let proposal_b = next();
    proposal_b
        .answer
        .send(Err(crate::store::StoreError::Unavailable(
            "lost its leadership".to_owned(),
        )))
        .unwrap();
    assert!(b.await.unwrap().is_err());
    domain.refresh().unwrap();
    apply(&proposal_b.writes);

    // Leading again, in term 2.
    gate.term.store(2, std::sync::atomic::Ordering::SeqCst);
    let c = submit(100, 110);
    let proposal = next();
    apply(&proposal.writes);
    proposal.answer.send(Ok(())).unwrap();
    assert_eq!(c.await.unwrap().unwrap().sequence, 110, "C reused B's sequences");

    // A leader whose predecessors' entries are not applied in time stages nothing.
    gate.term.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let refused = submit(110, 120).await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("not settled"), "{refused}");
    assert!(
        held.try_recv().is_err(),
        "a commit was proposed from an unsettled state"
    );
    gate.term.store(2, std::sync::atomic::Ordering::SeqCst);

    let report = verified_through_gate(&domain, &store, &held).await;
    assert!(report.broken.is_none(), "{:?}", report.broken);
}

mod replicated {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    };
    use openraft::{Raft, SnapshotPolicy};
    use parking_lot::Mutex;

    use super::*;

    type Nodes = Arc<Mutex<BTreeMap<NodeId, Raft<Config>>>>;

    #[derive(Clone, Default)]
    struct Router {
        nodes: Nodes,
        cut: Arc<Mutex<BTreeSet<NodeId>>>,
    }

    struct Connection {
        router: Router,
        from: NodeId,
        to: NodeId,
    }

    /// The router as one node's network factory.
    struct From {
        router: Router,
        id: NodeId,
    }

    impl RaftNetworkFactory<Config> for From {
        type Network = Connection;

        async fn new_client(&mut self, target: NodeId, _node: &ClusterNode) -> Connection {
            Connection {
                router: self.router.clone(),
                from: self.id,
                to: target,
            }
        }
    }

    impl Connection {
        fn reach<E: std::error::Error>(&self) -> Result<Raft<Config>, RPCError<NodeId, ClusterNode, E>> {
            let cut = self.router.cut.lock();
            if cut.contains(&self.from) || cut.contains(&self.to) {
                return Err(Unreachable::new(&std::io::Error::other("cut off")).into());
            }
            self.router
                .nodes
                .lock()
                .get(&self.to)
                .cloned()
                .ok_or_else(|| NetworkError::new(&std::io::Error::other("no such node")).into())
        }
    }

    impl RaftNetwork<Config> for Connection {
        async fn append_entries(
            &mut self,
            rpc: AppendEntriesRequest<Config>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
            let raft = self.reach()?;
            raft.append_entries(rpc)
                .await
                .map_err(|err| RemoteError::new(self.to, err).into())
        }

        async fn install_snapshot(
            &mut self,
            rpc: InstallSnapshotRequest<Config>,
            _option: RPCOption,
        ) -> Result<
            InstallSnapshotResponse<NodeId>,
            RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
        > {
            let raft = self.reach()?;
            raft.install_snapshot(rpc)
                .await
                .map_err(|err| RemoteError::new(self.to, err).into())
        }

        async fn vote(
            &mut self,
            rpc: VoteRequest<NodeId>,
            _option: RPCOption,
        ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
            let raft = self.reach()?;
            raft.vote(rpc)
                .await
                .map_err(|err| RemoteError::new(self.to, err).into())
        }
    }

    struct Node {
        _dir: TempDir,
        store: Arc<Store>,
        raft: Raft<Config>,
    }

    async fn start(router: &Router, id: NodeId) -> Node {
        let (dir, store) = open_store();
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Snapshots often and no log kept behind them: a node that joins late can
            // only catch up from a snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        };
        let raft = Raft::new(
            id,
            Arc::new(config.validate().unwrap()),
            From {
                router: router.clone(),
                id,
            },
            LogStore::new(store.clone()),
            StateMachine::open(store.clone()).unwrap(),
        )
        .await
        .unwrap();
        router.nodes.lock().insert(id, raft.clone());
        Node { _dir: dir, store, raft }
    }

    /// A write set putting flag `n` (a summary row and its change-log row).
    fn proposal(scratch: &Store, n: u64) -> Proposal {
        let digest: Digest = blake3::hash(&n.to_be_bytes()).into();
        let (_, summary, change) = flag(digest, 7, n);
        let mut batch = scratch.batch().recording();
        batch.put_summary(&digest, &[summary]).unwrap();
        batch.put_change(n, &change);
        Proposal::writes(batch.take_write_set().into_bytes())
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(20));

    async fn leader_among(nodes: &[&Node]) -> NodeId {
        nodes[0]
            .raft
            .wait(WAIT)
            .metrics(
                |metrics| {
                    metrics
                        .current_leader
                        .is_some_and(|leader| nodes.iter().any(|node| node.raft.metrics().borrow().id == leader))
                },
                "a leader among the nodes",
            )
            .await
            .unwrap()
            .current_leader
            .unwrap()
    }

    /// Proposes flags `ns` on `node`, returning the log index of the last.
    async fn write(node: &Node, ns: std::ops::RangeInclusive<u64>) -> u64 {
        let mut last = 0;
        for n in ns {
            last = node
                .raft
                .client_write(proposal(&node.store, n))
                .await
                .unwrap()
                .log_id
                .index;
        }
        last
    }

    /// How many replicated rows a store holds and a hash of them all (two stores alike
    /// have the same; printed, it stays short).
    fn fingerprint(store: &Store) -> (usize, String) {
        let rows = rows_of(store);
        let mut hasher = blake3::Hasher::new();
        for (family, key, value) in &rows {
            hasher.update(&[*family]);
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update(&(value.len() as u64).to_be_bytes());
            hasher.update(value);
        }
        (rows.len(), hasher.finalize().to_hex().to_string())
    }

    /// Nodes 1, 2 and 3, started and made one cluster.
    async fn three_nodes(router: &Router) -> [Node; 3] {
        let nodes = [start(router, 1).await, start(router, 2).await, start(router, 3).await];
        let members: BTreeMap<NodeId, ClusterNode> = (1..=3)
            .map(|id| {
                (
                    id,
                    ClusterNode {
                        addr: format!("node-{id}"),
                        certificate_sha256: String::new(),
                    },
                )
            })
            .collect();
        nodes[0].raft.initialize(members).await.unwrap();
        nodes
    }

    /// Waits until each of `nodes` has applied its log up to `head`, and asserts each then
    /// holds the rows `like` holds.
    async fn converged(nodes: &[&Node], head: u64, like: &Store) {
        for node in nodes {
            node.raft
                .wait(WAIT)
                .applied_index_at_least(Some(head), "caught up")
                .await
                .unwrap();
            assert_eq!(fingerprint(&node.store), fingerprint(like));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn proposals_made_while_the_log_is_busy_share_entries_and_each_is_answered_once_applied_everywhere() {
        let router = Router::default();
        let nodes = three_nodes(&router).await;
        let leader = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
        let leader = nodes
            .iter()
            .find(|node| node.raft.metrics().borrow().id == leader)
            .unwrap();
        let before = write(leader, 1..=1).await;

        // Sixty proposals queued at once, as sixty writers would: the first entries go
        // alone, the rest wait for them and share the next.
        const N: u64 = 60;
        let proposals: Vec<Proposal> = (2..=N + 1).map(|n| proposal(&leader.store, n)).collect();
        let batcher = crate::cluster::batch::Batcher::start(leader.raft.clone());
        let store = leader.store.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let pending: Vec<_> = proposals
                .into_iter()
                .map(|proposal| batcher.propose(proposal).unwrap())
                .collect();
            // Each is answered once its entry is applied on the leader.
            pending
                .into_iter()
                .enumerate()
                .map(|(i, proposed)| {
                    proposed.wait().unwrap();
                    let digest: Digest = blake3::hash(&(i as u64 + 2).to_be_bytes()).into();
                    store.get_summaries(&[digest]).unwrap()[0].is_some()
                })
                .collect::<Vec<bool>>()
        })
        .await
        .unwrap();
        assert!(
            answered.iter().all(|applied| *applied),
            "answered before applied: {answered:?}"
        );

        let head = leader.raft.metrics().borrow().last_applied.unwrap().index;
        assert!(
            head - before < N / 2,
            "{} entries for {N} proposals queued at once: they were not gathered",
            head - before
        );
        converged(&nodes.iter().collect::<Vec<_>>(), head, &leader.store).await;
        for node in &nodes {
            let digests: Vec<Digest> = (1..=N + 1).map(|n| blake3::hash(&n.to_be_bytes()).into()).collect();
            let found = node.store.get_summaries(&digests).unwrap();
            assert!(found.iter().all(Option::is_some), "a proposal is missing on a node");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_apply_the_same_rows_survive_a_cut_off_leader_and_a_new_node_catches_up_from_a_snapshot() {
        let router = Router::default();
        let nodes = three_nodes(&router).await;
        let by_id = |id: NodeId| nodes.iter().find(|node| node.raft.metrics().borrow().id == id).unwrap();

        let first = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
        let head = write(by_id(first), 1..=25).await;
        converged(&nodes.iter().collect::<Vec<_>>(), head, &by_id(first).store).await;

        // The leader is cut off: the other two elect one of themselves and go on; the old
        // leader can no longer commit anything.
        router.cut.lock().insert(first);
        let rest: Vec<&Node> = nodes
            .iter()
            .filter(|node| node.raft.metrics().borrow().id != first)
            .collect();
        let second = rest[0]
            .raft
            .wait(WAIT)
            .metrics(
                |metrics| metrics.current_leader.is_some_and(|leader| leader != first),
                "a new leader",
            )
            .await
            .unwrap()
            .current_leader
            .unwrap();
        let stranded = tokio::time::timeout(
            Duration::from_secs(2),
            by_id(first).raft.client_write(proposal(&by_id(first).store, 1_000)),
        )
        .await;
        assert!(!matches!(stranded, Ok(Ok(_))), "a cut-off leader acknowledged a write");
        let head = write(by_id(second), 26..=40).await;

        // Back in: the old leader follows, converges, and what it alone held is gone.
        router.cut.lock().clear();
        converged(&nodes.iter().collect::<Vec<_>>(), head, &by_id(second).store).await;
        let stray: Digest = blake3::hash(&1_000u64.to_be_bytes()).into();
        assert!(by_id(first).store.get_summaries(&[stray]).unwrap()[0].is_none());

        // A fourth node, joining after the log was purged behind a snapshot, gets the
        // snapshot, then the entries after it.
        let fourth = start(&router, 4).await;
        assert!(
            by_id(second).raft.metrics().borrow().purged.is_some(),
            "no log was purged"
        );
        by_id(second)
            .raft
            .add_learner(
                4,
                ClusterNode {
                    addr: "node-4".to_owned(),
                    certificate_sha256: String::new(),
                },
                true,
            )
            .await
            .unwrap();
        let head = write(by_id(second), 41..=41).await;
        fourth
            .raft
            .wait(WAIT)
            .applied_index_at_least(Some(head), "the new node caught up")
            .await
            .unwrap();
        assert!(
            fourth.raft.metrics().borrow().snapshot.is_some(),
            "the new node installed no snapshot"
        );
        assert_eq!(fingerprint(&fourth.store), fingerprint(&by_id(second).store));

        for node in nodes.iter().chain([&fourth]) {
            node.raft.shutdown().await.unwrap();
        }
    }

    /// Node credentials from one operator CA: a client bundle and its certificate's SHA-256.
    fn node_bundle(pki: &crate::pki::Pki, name: &str, role: crate::model::Role) -> (crate::client::Bundle, [u8; 32]) {
        let key = crate::pki::generate_client_key().unwrap();
        let (cert_pem, issued) = pki
            .issue_client_certificate(name, role, &rcgen::PublicKeyData::subject_public_key_info(&key))
            .unwrap();
        let bundle = crate::client::Bundle {
            dir: std::path::PathBuf::new(),
            config: crate::client::BundleConfig {
                name: name.to_owned(),
                role: role.as_str().to_owned(),
                endpoint: String::new(),
                endpoints: Vec::new(),
                server_name: "localhost".to_owned(),
                operator_id: String::new(),
                operator_key: String::new(),
            },
            cert_pem,
            key_pem: key.serialize_pem(),
            ca_pem: pki.ca_pem.clone(),
        };
        (bundle, issued.sha256)
    }

    /// Three nodes, each a Raft over its own store behind the real `Cluster` service on a
    /// loopback port with mutual TLS (one operator CA), elect a leader and apply the same
    /// rows; a member's certificate is refused before its message is read, and a node's
    /// malformed calls are refused by field without changing any store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_replicate_over_mutual_tls_and_the_cluster_service_refuses_everyone_else() {
        use crate::model::Role;
        use crate::pb::cluster_client::ClusterClient;
        use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

        let pki_dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::create(pki_dir.path(), "test operator", &["localhost".to_owned()]).unwrap();
        let credentials: Vec<_> = (1..=3)
            .map(|id| node_bundle(&pki, &format!("node-{id}"), Role::Node))
            .collect();
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let members: BTreeMap<NodeId, ClusterNode> = (1..=3)
            .zip(&listeners)
            .zip(&credentials)
            .map(|((id, listener), (_, sha256))| {
                let address = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
                (id, ClusterNode::new(address, *sha256))
            })
            .collect();
        let allowed: BTreeSet<[u8; 32]> = credentials.iter().map(|(_, sha256)| *sha256).collect();
        let gate: crate::server::cluster::NodeGate = Arc::new(move |sha256| allowed.contains(sha256));

        let mut nodes = Vec::new();
        for ((id, listener), (bundle, _)) in (1..=3).zip(listeners).zip(&credentials) {
            let (dir, store) = open_store();
            let config = openraft::Config {
                heartbeat_interval: 100,
                election_timeout_min: 500,
                election_timeout_max: 1_000,
                ..Default::default()
            };
            let raft = Raft::new(
                id,
                Arc::new(config.validate().unwrap()),
                super::super::network::Network::new(
                    Some(std::sync::Arc::new(bundle.clone())),
                    super::super::files::LogFiles::of(&store),
                ),
                LogStore::new(store.clone()),
                StateMachine::open(store.clone()).unwrap(),
            )
            .await
            .unwrap();
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(&pki.server_pem, &pki.server_key_pem))
                .client_ca_root(Certificate::from_pem(&pki.ca_pem));
            let service = crate::server::cluster::service(raft.clone(), None, gate.clone());
            listener.set_nonblocking(true).unwrap();
            let incoming =
                tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(listener).unwrap());
            tokio::spawn(
                Server::builder()
                    .tls_config(tls)
                    .unwrap()
                    .add_service(service)
                    .serve_with_incoming(incoming),
            );
            nodes.push(Node { _dir: dir, store, raft });
        }
        nodes[0].raft.initialize(members.clone()).await.unwrap();
        let leader = leader_among(&nodes.iter().collect::<Vec<_>>()).await;
        let by_id = |id: NodeId| nodes.iter().find(|node| node.raft.metrics().borrow().id == id).unwrap();
        let head = write(by_id(leader), 1..=20).await;
        for node in &nodes {
            node.raft
                .wait(WAIT)
                .applied_index_at_least(Some(head), "caught up over grpc")
                .await
                .unwrap();
        }
        let leader_rows = fingerprint(&by_id(leader).store);
        let (_scratch, fresh) = open_store();
        assert_eq!(
            leader_rows.0,
            fingerprint(&fresh).0 + 40,
            "a fresh store's rows, 20 summary rows and 20 change-log rows"
        );
        for node in &nodes {
            assert_eq!(fingerprint(&node.store), leader_rows);
        }

        // A member of the same CA: refused before its message is read.
        let (member, _) = node_bundle(&pki, "a member", Role::Member);
        let address = &members[&2].addr;
        let channel = member.connect(Some(address)).await.unwrap();
        let refused = ClusterClient::new(channel)
            .vote(crate::pb::RaftRequest {
                header: b"{}".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("not a node of this cluster"),
            "{}",
            refused.message()
        );

        // A node's malformed calls: refused by field, nothing applied.
        let follower = nodes
            .iter()
            .find(|node| node.raft.metrics().borrow().id != leader)
            .unwrap();
        let before = fingerprint(&follower.store);
        let address = &members[&follower.raft.metrics().borrow().id].addr;
        let mut client = ClusterClient::new(credentials[0].0.connect(Some(address)).await.unwrap());
        let garbage = client
            .append_entries(crate::pb::RaftRequest {
                header: b"not json".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        assert!(garbage.message().starts_with("header: "), "{}", garbage.message());
        let mut valid = super::super::network::encode_append(
            &AppendEntriesRequest::<Config> {
                vote: openraft::Vote::new_committed(1, leader),
                prev_log_id: None,
                leader_commit: None,
                entries: vec![Entry {
                    log_id: LogId::new(LeaderId::new(1, leader), 0),
                    payload: EntryPayload::Blank,
                }],
            },
            usize::MAX,
            &super::super::files::LogFiles::of(&follower.store),
        )
        .unwrap()
        .0;
        valid.entries[0][7] = 9;
        let misnumbered = client.append_entries(valid.clone()).await.unwrap_err();
        assert_eq!(misnumbered.code(), tonic::Code::InvalidArgument);
        assert!(
            misnumbered.message().starts_with("entries[0]: index 9, expected 0"),
            "{}",
            misnumbered.message()
        );
        valid.entries[0].truncate(12);
        let cut = client.append_entries(valid).await.unwrap_err();
        assert!(cut.message().starts_with("entries[0]: "), "{}", cut.message());
        assert_eq!(fingerprint(&follower.store), before);

        // A node's credentials speak for that node only: node 1's certificate asking for
        // votes as another node, in a term from the future, is refused and the
        // follower's vote stays as it was.
        let vote_before = follower.raft.metrics().borrow().vote;
        let forged = |term: u64, candidate: NodeId| crate::pb::RaftRequest {
            header: serde_json::to_vec(&openraft::raft::VoteRequest::<NodeId> {
                vote: openraft::Vote::new(term, candidate),
                last_log_id: None,
            })
            .unwrap(),
            ..Default::default()
        };
        let refused = client.vote(forged(1_000, 3)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("node 1's"), "{}", refused.message());
        assert_eq!(follower.raft.metrics().borrow().vote, vote_before);
        // A certificate of another operator's CA (naming itself node-1): the handshake
        // fails, nothing is asked of the Raft.
        let other_dir = tempfile::tempdir().unwrap();
        let other_pki =
            crate::pki::Pki::create(other_dir.path(), "another operator", &["localhost".to_owned()]).unwrap();
        let (mut stranger, _) = node_bundle(&other_pki, "node-1", Role::Node);
        stranger.ca_pem = pki.ca_pem.clone();
        let answered = match stranger.connect(Some(address)).await {
            Ok(channel) => ClusterClient::new(channel).vote(forged(1_001, 1)).await.is_ok(),
            Err(_) => false,
        };
        assert!(!answered, "a certificate of another CA is refused");
        assert_eq!(follower.raft.metrics().borrow().vote, vote_before);

        for node in &nodes {
            node.raft.shutdown().await.unwrap();
        }
    }

    /// A far-behind follower is sent its entries in calls of bounded size: a call carries
    /// a prefix within the budget (at least one entry, whatever its size) and says which
    /// entry it ended at, so openraft reports a partial success and sends the rest next.
    #[test]
    fn an_append_carries_entries_up_to_its_byte_budget() {
        let leader = 1;
        let rpc = AppendEntriesRequest::<Config> {
            vote: openraft::Vote::new_committed(1, leader),
            prev_log_id: None,
            leader_commit: None,
            entries: (0..5)
                .map(|index| Entry {
                    log_id: LogId::new(LeaderId::new(1, leader), index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        };
        let (_dir, store) = open_store();
        let files = super::super::files::LogFiles::of(&store);
        let encode = |budget| super::super::network::encode_append(&rpc, budget, &files).unwrap();
        let (whole, cut) = encode(usize::MAX);
        assert_eq!((whole.entries.len(), cut), (5, None));
        let one = whole.entries[0].len();
        let (two, cut) = encode(2 * one + one / 2);
        assert_eq!(two.entries.len(), 2);
        assert_eq!(cut, Some(rpc.entries[1].log_id));
        assert_eq!(two.entries[..], whole.entries[..2]);
        let (first, cut) = encode(0);
        assert_eq!((first.entries.len(), cut), (1, Some(rpc.entries[0].log_id)));
        // What was sent reads back as the first entries, numbered from the start.
        let decoded = super::super::network::decode_append(two).unwrap();
        assert_eq!(
            decoded.entries.iter().map(|entry| entry.log_id).collect::<Vec<_>>(),
            rpc.entries[..2].iter().map(|entry| entry.log_id).collect::<Vec<_>>()
        );
    }
}
