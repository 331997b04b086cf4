//! A node's Raft over its store, and the store's commits routed through it.
//!
//! Every server is a node (`replicated_log = true`, the default): a one-node cluster
//! commits as a leader of several does (every commit an entry of its log, applied by the
//! state machine), and grows by `add_node`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use openraft::Raft;

use super::log::LogStore;
use super::machine::StateMachine;
use super::network::Network;
use super::{ClusterNode, Config, NodeId, Proposal};
use crate::store::{Proposed, Replicator, Store, StoreError, WriteSet};

/// How long a starting node waits to lead its cluster and apply its log.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a commit on a newly elected leader waits for the entries before its term.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `add_node` waits for a new node to catch up before it may vote.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterChangeError {
    #[error("this node does not lead the cluster (leader: {})", .0.map_or_else(|| "unknown".to_owned(), |id| format!("node {id}")))]
    NotLeader(Option<NodeId>),
    #[error("node {0} is already in the cluster")]
    Exists(NodeId),
    #[error("node {0} is not in the cluster")]
    Unknown(NodeId),
    #[error("{0}")]
    Failed(String),
}

/// The Raft timings: a heartbeat well inside the election timeout, and log entries kept
/// behind a snapshot so that a follower briefly away catches up from the log.
fn raft_config() -> anyhow::Result<openraft::Config> {
    openraft::Config {
        cluster_name: "flagshare".to_owned(),
        heartbeat_interval: 250,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")
}

/// A running node.
pub struct Node {
    raft: Raft<Config>,
    store: Arc<Store>,
    /// This node's credentials for calling the others.
    credentials: Option<Arc<crate::client::Bundle>>,
    /// Read-index rounds its leader reads ran (`forward::Leader::confirm_read`).
    read_index_rounds: Arc<std::sync::atomic::AtomicU64>,
    /// The last index its log held when this process started.
    inherited_through: u64,
}

impl Node {
    /// Starts node `id` on `store` and waits until it has applied what it knew committed
    /// (its whole log, and leads, when it is its cluster's only voter). A store that never held a Raft starts a
    /// new one-node cluster; a store copied from a node's backup keeps that node's log and
    /// waits for its leader to add this node (`add_node`), and so does an empty one made by
    /// `init --join` (`join`: see `wait_until_joined`). Commits still go straight to the
    /// store until `route_commits`.
    pub async fn start(
        store: Arc<Store>,
        id: NodeId,
        address: String,
        credentials: Option<crate::client::Bundle>,
        join: bool,
    ) -> anyhow::Result<Node> {
        let certificate_sha256 = match &credentials {
            Some(bundle) => hex::encode(
                crate::pki::pem_certificate_sha256(&bundle.cert_pem).context("cluster_credentials: cert.pem")?,
            ),
            None => String::new(),
        };
        let credentials = credentials.map(Arc::new);
        let machine = StateMachine::open(store.clone()).context("opening the state machine")?;
        let log = LogStore::new(store.clone());
        // What this node knew committed. Entries after it may never be: a leader killed
        // between appending and committing holds some, which the next leader replaces,
        // so waiting for them would keep this node from serving (and being replaced).
        let committed = log.committed().context("reading the committed index")?;
        // Entries up to here were proposed before this process (`own_entries`).
        let inherited_through = store
            .last_raft_log()
            .context("reading the log's last entry")?
            .map_or(0, |(index, _)| index);
        let raft = Raft::new(
            id,
            Arc::new(raft_config()?),
            Network::new(credentials.clone(), super::files::LogFiles::of(&store)),
            log,
            machine,
        )
        .await
        .context("starting raft")?;
        // A store that never held a Raft becomes a one-node cluster. The wait below must
        // know it: until the initialisation is processed the membership reads empty,
        // and "applied what it knew committed" (nothing) would pass before it leads.
        let new_cluster = !join && !raft.is_initialized().await.context("reading raft state")?;
        if new_cluster {
            raft.initialize(BTreeMap::from([(
                id,
                ClusterNode {
                    addr: address.clone(),
                    certificate_sha256: certificate_sha256.clone(),
                },
            )]))
            .await
            .context("initialising the one-node cluster")?;
        }
        raft.wait(Some(START_TIMEOUT))
            .metrics(
                |metrics| {
                    let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
                    let applied = metrics.last_applied.map(|log_id| log_id.index);
                    match new_cluster || voters == [id] {
                        // Alone, every entry it holds is committed once it leads.
                        true => {
                            applied.is_some() && applied == metrics.last_log_index && metrics.current_leader == Some(id)
                        }
                        false => applied >= committed.map(|log_id| log_id.index),
                    }
                },
                "the committed log applied (and leading, as the only voter)",
            )
            .await
            .context("waiting for the node's log to be applied")?;
        let node = Node {
            raft,
            store,
            credentials,
            read_index_rounds: Arc::default(),
            inherited_through,
        };
        node.keep_own_entry_current(address, certificate_sha256).await?;
        Ok(node)
    }

    /// Whether this node holds its cluster's state: it is in the membership and applied
    /// what the leader sent it (a node made by `init --join` starts with neither).
    pub fn has_joined(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.last_applied.is_some()
            && metrics
                .membership_config
                .membership()
                .nodes()
                .any(|(known, _)| *known == metrics.id)
    }

    /// Waits (without end: an operator adds the node when ready) until `has_joined`.
    pub async fn wait_until_joined(&self) -> anyhow::Result<()> {
        let mut metrics = self.raft.metrics();
        while !self.has_joined() {
            metrics.changed().await.context("the node stopped before it joined")?;
        }
        Ok(())
    }

    /// From now on every commit of the store is an entry of this node's log.
    pub fn route_commits(&self) {
        self.store.set_replicator(Some(Arc::new(Proposer {
            raft: self.raft.clone(),
            runtime: tokio::runtime::Handle::current(),
            batcher: super::batch::Batcher::start(self.raft.clone()),
            led: parking_lot::Mutex::new(None),
        })));
    }

    /// Stops the Raft. A commit waiting for it fails; so does every later one: a write
    /// straight to the store would be this node's alone, never replicated or applied
    /// elsewhere. Stopping twice does nothing more.
    pub async fn stop(&self) {
        self.store.set_replicator(Some(Arc::new(Stopped)));
        self.store.set_apply_listener(self.own_entries(), None);
        if let Err(err) = self.raft.shutdown().await {
            tracing::debug!(%err, "stopping raft");
        }
    }

    pub fn id(&self) -> NodeId {
        self.raft.metrics().borrow().id
    }

    /// The entries this process proposes: its domain knows them without being told.
    pub fn own_entries(&self) -> crate::store::OwnEntries {
        crate::store::OwnEntries {
            id: self.id(),
            after: self.inherited_through,
        }
    }

    /// A leader that restarted at another address, or with other credentials, says so in
    /// the membership, or the other nodes would call it where it no longer is. Only its
    /// own entry, and only while it leads (the change is an entry like any other).
    ///
    /// Bounded, and a failure only logged: a node that restarts believing it leads (its
    /// vote is stored) may have been replaced meanwhile, and its change then never
    /// commits. Waiting for it kept such a node from serving, so it never heard the new
    /// leader and kept calling elections (found by the cluster benchmark's failovers).
    async fn keep_own_entry_current(&self, address: String, certificate_sha256: String) -> anyhow::Result<()> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Ok(());
        }
        let current = ClusterNode {
            addr: address,
            certificate_sha256,
        };
        let membership = metrics.membership_config.membership();
        if membership.get_node(&metrics.id) == Some(&current) {
            return Ok(());
        }
        let change = async {
            // Still the leader? A majority must say so before the change is proposed.
            self.raft.ensure_linearizable().await.map_err(|err| err.to_string())?;
            self.raft
                .change_membership(
                    openraft::ChangeMembers::SetNodes(BTreeMap::from([(metrics.id, current)])),
                    false,
                )
                .await
                .map_err(|err| err.to_string())
        };
        match tokio::time::timeout(SETTLE_TIMEOUT, change).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(%err, "this node's address was not recorded in the membership (it may not lead any more)")
            }
            Err(_) => tracing::warn!(
                "this node's address was not recorded in the membership within {} s (it may not lead any more)",
                SETTLE_TIMEOUT.as_secs()
            ),
        }
        Ok(())
    }

    /// Takes node `id` out of the cluster: it stops voting and receiving the log. On the
    /// leader only, and not the leader itself (a cluster's last voter cannot leave).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterChangeError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Err(ClusterChangeError::NotLeader(metrics.current_leader));
        }
        if id == metrics.id {
            return Err(ClusterChangeError::Failed(format!(
                "node {id} leads the cluster; stop it so that another is elected, then remove it there"
            )));
        }
        let membership = metrics.membership_config.membership();
        if !membership.nodes().any(|(known, _)| *known == id) {
            return Err(ClusterChangeError::Unknown(id));
        }
        let failed = |err: openraft::error::RaftError<
            NodeId,
            openraft::error::ClientWriteError<NodeId, ClusterNode>,
        >| { ClusterChangeError::Failed(err.to_string()) };
        if membership.voter_ids().any(|voter| voter == id) {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
                .await
                .map_err(failed)?;
        }
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Adds node `id` to the cluster: as a learner until it holds the log (at most
    /// `JOIN_TIMEOUT`), then as a voter (openraft's joint consensus). On the leader only.
    pub async fn add_node(&self, id: NodeId, node: ClusterNode) -> Result<(), ClusterChangeError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Err(ClusterChangeError::NotLeader(metrics.current_leader));
        }
        if metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(known, _)| *known == id)
        {
            return Err(ClusterChangeError::Exists(id));
        }
        // The new node may hold nothing: it starts from a snapshot, never from the log's
        // first entry (rows written before the log began are in no entry).
        snapshot_and_purge(&self.raft)
            .await
            .map_err(|err| ClusterChangeError::Failed(format!("a snapshot for the new node: {err}")))?;
        let was_alone = alone(&metrics);
        let added = self
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(|err| ClusterChangeError::Failed(err.to_string()))?;
        if was_alone {
            // An import block proposed while this node was alone may be larger than one
            // AppendEntries carries (`entry_files`): every entry up to the addition goes
            // behind a snapshot too, and later blocks are proposed small.
            self.raft
                .wait(Some(JOIN_TIMEOUT))
                .applied_index_at_least(Some(added.log_id.index), "the new node's addition applied")
                .await
                .map_err(|err| ClusterChangeError::Failed(format!("applying the new node's addition: {err}")))?;
            snapshot_and_purge(&self.raft)
                .await
                .map_err(|err| ClusterChangeError::Failed(format!("a snapshot for the new node: {err}")))?;
        }
        // A voter must hold the log up to its own addition first (openraft's blocking add
        // may answer before a snapshot has even been sent).
        let added_at = added.log_id.index;
        self.raft
            .wait(Some(JOIN_TIMEOUT))
            .metrics(
                |metrics| {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&id))
                        .is_some_and(|matched| matched.is_some_and(|log_id| log_id.index >= added_at))
                },
                "the new node holding the log up to its addition",
            )
            .await
            .map_err(|_| {
                ClusterChangeError::Failed(format!(
                    "node {id} did not catch up within {} s",
                    JOIN_TIMEOUT.as_secs()
                ))
            })?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|err| ClusterChangeError::Failed(err.to_string()))?;
        Ok(())
    }

    /// Whether a node of the current membership calls with the certificate `sha256`.
    pub fn has_member_certificate(&self, sha256: &[u8; 32]) -> bool {
        let wanted = hex::encode(sha256);
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(_, node)| node.certificate_sha256 == wanted)
    }

    /// SHA-256 (hex) of every membership node's client certificate (those recorded).
    pub fn node_certificates(&self) -> Vec<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(_, node)| node.certificate_sha256.clone())
            .filter(|sha256| !sha256.is_empty())
            .collect()
    }

    /// The node that leads, when it is another (or none is known): `Some(None)`.
    pub fn other_leader(&self) -> Option<Option<NodeId>> {
        let metrics = self.raft.metrics().borrow().clone();
        (metrics.current_leader != Some(metrics.id)).then_some(metrics.current_leader)
    }

    pub fn raft(&self) -> &Raft<Config> {
        &self.raft
    }

    /// Whether this node is in touch with its cluster's majority now: it leads and a
    /// majority answered within `within`, leads alone, or follows a known leader (a
    /// follower cut off stops knowing one when its election timeout passes).
    pub fn in_touch(&self, within: Duration) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return metrics.current_leader.is_some();
        }
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        voters == [metrics.id]
            || metrics
                .millis_since_quorum_ack
                .is_some_and(|millis| u128::from(millis) <= within.as_millis())
    }

    /// The cluster's leader, reached with this node's credentials: where a follower sends
    /// the audit entries of its reads and the members' writes.
    pub fn leader(&self) -> Arc<super::forward::Leader> {
        Arc::new(super::forward::Leader::new(
            self.raft.clone(),
            self.credentials.clone(),
            self.read_index_rounds.clone(),
        ))
    }

    /// Read-index rounds run for reads on this node while it led (their lease lapsed).
    pub fn read_index_rounds(&self) -> u64 {
        self.read_index_rounds.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The replicator of a node whose Raft stopped: every commit is refused.
struct Stopped;

impl Replicator for Stopped {
    fn propose(&self, _writes: WriteSet) -> Result<Proposed, StoreError> {
        Err(StoreError::Unavailable(
            "this node is stopping: its replicated log takes no more writes".to_owned(),
        ))
    }

    fn trim_log(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Proposes each commit's write set and waits until it is applied here.
struct Proposer {
    raft: Raft<Config>,
    runtime: tokio::runtime::Handle,
    /// The queue in front of the log (group commit).
    batcher: super::batch::Batcher,
    /// The term this node was last seen leading, and its log's last index then: the
    /// entries a commit must find applied before it is staged (`settle`).
    led: parking_lot::Mutex<Option<(u64, u64)>>,
}

impl Replicator for Proposer {
    fn propose(&self, writes: WriteSet) -> Result<Proposed, StoreError> {
        let (writes, files) = writes.into_parts();
        let files = match files.is_empty() {
            true => Vec::new(),
            false => entry_files(files, self.alone())?,
        };
        self.batcher.propose(Proposal { writes, files })
    }

    fn alone(&self) -> bool {
        alone(&self.raft.metrics().borrow())
    }

    /// A leader's log may hold entries that this process did not propose: those of the
    /// leaders before it (openraft appends an entry of the new term after them), and,
    /// when this node restarted still leading its term (openraft resumes the lead from
    /// the stored vote, with no election), the entries its previous process appended
    /// but never saw committed. A commit staged before they are applied would reuse
    /// their sequence numbers. So the first commit of each term led waits until
    /// everything in the log when it began is applied.
    fn settle(&self) -> Result<Option<u64>, StoreError> {
        let up_to = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(metrics.id) {
                return Ok(None);
            }
            let mut led = self.led.lock();
            match *led {
                Some((term, up_to)) if term == metrics.current_term => up_to,
                _ => {
                    let up_to = metrics.last_log_index.unwrap_or(0);
                    *led = Some((metrics.current_term, up_to));
                    up_to
                }
            }
        };
        let settled = tokio::task::block_in_place(|| {
            self.runtime.block_on(self.raft.wait(Some(SETTLE_TIMEOUT)).metrics(
                |metrics| {
                    metrics.current_leader != Some(metrics.id)
                        || metrics.last_applied.is_some_and(|log_id| {
                            log_id.leader_id.term == metrics.current_term && log_id.index >= up_to
                        })
                },
                "the entries before this leader's first commit applied",
            ))
        });
        match settled {
            Ok(metrics) if metrics.current_leader == Some(metrics.id) => Ok(Some(metrics.current_term)),
            Ok(_) => Ok(None),
            Err(err) => {
                tracing::warn!(%err, "leading, but the entries before this term are not applied yet");
                Err(StoreError::Unavailable(
                    "this node leads the cluster but has not yet applied the entries its log held when it began leading; try again"
                        .to_owned(),
                ))
            }
        }
    }

    fn trim_log(&self) -> Result<(), StoreError> {
        let trimmed = tokio::task::block_in_place(|| self.runtime.block_on(snapshot_and_purge(&self.raft)));
        trimmed.map_err(|err| StoreError::Unavailable(format!("trimming the replicated log failed: {err}")))
    }
}

/// The files a commit ingests, as its entry names them. Files larger together than an
/// AppendEntries may carry (`MAX_SHARED_FILE_BYTES`) go only into the log of a cluster
/// of one node (`alone`): another node could not receive the entry within a heartbeat.
/// Hashed here when other nodes receive the entry; on a node alone (where reading back
/// an import block's files was a fifth of its time) when it is first sent.
pub(super) fn entry_files(
    files: Vec<crate::store::IngestFile>,
    alone: bool,
) -> Result<Vec<super::EntryFile>, StoreError> {
    let mut entry_files = Vec::with_capacity(files.len());
    for file in files {
        let (len, hash) = match alone {
            true => (std::fs::metadata(&file.path)?.len(), super::UNHASHED),
            false => {
                let bytes = std::fs::read(&file.path)?;
                (bytes.len() as u64, *blake3::hash(&bytes).as_bytes())
            }
        };
        entry_files.push(super::EntryFile {
            kind: file.kind,
            len,
            hash,
            body: super::FileBody::Local(file.path),
        });
    }
    entry_files.sort_by_key(|file| file.kind);
    let total: u64 = entry_files.iter().map(|file| file.len).sum();
    if total > MAX_SHARED_FILE_BYTES && !alone {
        return Err(StoreError::Unavailable(format!(
            "an import block of {total} bytes is more than another node may receive at once ({MAX_SHARED_FILE_BYTES}); the cluster grew during the import: import the rest again"
        )));
    }
    Ok(entry_files)
}

/// Most bytes of files an entry may carry on a cluster of more than one node: an import
/// block of `REPLICATED_IMPORT_BLOCK` flags is about 2.5 MB.
pub(super) const MAX_SHARED_FILE_BYTES: u64 = super::network::APPEND_BUDGET_BYTES as u64;

/// Whether the membership `metrics` show is one node (voter or learner).
fn alone(metrics: &openraft::RaftMetrics<NodeId, ClusterNode>) -> bool {
    metrics.membership_config.membership().nodes().count() == 1
}

pub(super) fn not_leading(forward: &openraft::error::ForwardToLeader<NodeId, ClusterNode>) -> String {
    match (forward.leader_id, &forward.leader_node) {
        (Some(id), Some(node)) => format!("this node does not lead the cluster; node {id} does, at {}", node.addr),
        _ => "this node does not lead the cluster and knows no leader yet".to_owned(),
    }
}

/// Takes a snapshot of everything applied and drops the log behind it: `admin compact`
/// (removed rows leave the disk), and before a node joins (it starts from the snapshot,
/// which holds what was written before the log began, as the log does not).
async fn snapshot_and_purge(raft: &Raft<Config>) -> Result<(), String> {
    let Some(applied) = raft.metrics().borrow().last_applied else {
        return Ok(());
    };
    // Each step is a trigger, then a wait until the metrics show it done.
    let reached = |what: &'static str, at: fn(&openraft::RaftMetrics<NodeId, ClusterNode>) -> Option<u64>| async move {
        raft.wait(Some(START_TIMEOUT))
            .metrics(
                move |metrics| at(metrics).is_some_and(|index| index >= applied.index),
                what,
            )
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    };
    raft.trigger().snapshot().await.map_err(|err| err.to_string())?;
    reached("a snapshot of everything applied", |metrics| {
        metrics.snapshot.map(|log_id| log_id.index)
    })
    .await?;
    raft.trigger()
        .purge_log(applied.index)
        .await
        .map_err(|err| err.to_string())?;
    reached("the log purged behind the snapshot", |metrics| {
        metrics.purged.map(|log_id| log_id.index)
    })
    .await?;
    Ok(())
}

/// One node of the membership as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub address: String,
    /// "leader", "follower" (a voter) or "learner".
    pub role: &'static str,
    /// Known on the leader only: the last entry the node holds, and how many it lacks.
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

/// This node's view of its cluster (`admin cluster list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub nodes: Vec<NodeView>,
}

impl Node {
    pub fn view(&self) -> ClusterView {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = metrics.last_log_index;
        let nodes = membership
            .nodes()
            .map(|(id, node)| {
                let role = if metrics.current_leader == Some(*id) {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                let matched_index = if *id == metrics.id && metrics.current_leader == Some(metrics.id) {
                    last
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(id))
                        .map(|log_id| log_id.map_or(0, |log_id| log_id.index))
                };
                NodeView {
                    id: *id,
                    address: node.addr.clone(),
                    role,
                    matched_index,
                    lag: matched_index.map(|matched| last.unwrap_or(0).saturating_sub(matched)),
                }
            })
            .collect();
        ClusterView {
            node_id: metrics.id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: last,
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
            nodes,
        }
    }
}
