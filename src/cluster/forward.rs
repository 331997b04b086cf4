//! A follower's read audit entries, sent to the leader (`Cluster.RecordReads`): a
//! follower answers reads from its own applied state, but only the leader can commit, and
//! every node's audit chain is the one the leader writes.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tonic::transport::Channel;

use super::Config;
use super::network::MAX_MESSAGE_BYTES;
use crate::client::Bundle;
use crate::domain::{AuditEvent, ForwardedRead, ReadForwarder};
use crate::error::{Error, Result};
use crate::model::AuditOp;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::store::StoreError;

/// How long a follower waits for the leader to answer a member's call it forwarded.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// ... and to take its read entries: they stay queued on failure, and the next flush
/// tries again (a read that finds the queue full waits for this at most).
const READS_TIMEOUT: Duration = Duration::from_secs(5);

/// How recent a majority's acknowledgement must be for the leader to answer a read from
/// its lease: well inside openraft's lease (the election timeout's maximum, 2 s), so
/// clock drift between nodes does not matter.
const LEASE_MILLIS: u64 = 1_000;
/// How recent a majority's acknowledgement must be for the leader to take a write: the
/// election timeout's maximum (past it, the other nodes elect another leader).
const WRITE_QUORUM_MILLIS: u64 = 2_000;
/// How long a read on a leader whose lease lapsed waits for a majority to confirm it.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// The leader, as this node's Raft knows it, reached with this node's credentials.
pub struct Leader {
    raft: Raft<Config>,
    bundle: Option<Arc<Bundle>>,
    runtime: tokio::runtime::Handle,
    /// The connection last used, and the address it goes to.
    channel: parking_lot::Mutex<Option<(String, Channel)>>,
    /// One read-index round at a time, and when the last began and how it ended: reads
    /// that arrived before a round began take its outcome instead of a round each.
    read_index: tokio::sync::Mutex<Option<(std::time::Instant, std::result::Result<(), String>)>>,
    read_index_rounds: Arc<std::sync::atomic::AtomicU64>,
}

impl Leader {
    pub fn new(
        raft: Raft<Config>,
        bundle: Option<Arc<Bundle>>,
        read_index_rounds: Arc<std::sync::atomic::AtomicU64>,
    ) -> Leader {
        Leader {
            raft,
            bundle,
            runtime: tokio::runtime::Handle::current(),
            channel: parking_lot::Mutex::new(None),
            read_index: tokio::sync::Mutex::new(None),
            read_index_rounds,
        }
    }

    /// Whether this node leads its cluster.
    pub fn is_this_node(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id)
    }

    /// On the leader, fails unless a majority acknowledged it within the election
    /// timeout: a write proposed without one waits (a blocking thread held) until the
    /// node hears a majority again, which on a leader cut off may be never. Writes that
    /// arrive after that are refused instead, so what waits is bounded by what arrives
    /// in one election timeout.
    pub fn check_majority(&self) -> Result<()> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader != Some(metrics.id) || sole_voter(&metrics) {
            return Ok(());
        }
        match metrics.millis_since_quorum_ack {
            Some(millis) if millis <= WRITE_QUORUM_MILLIS => Ok(()),
            _ => Err(unavailable(format!(
                "this node has not heard from a majority of its cluster for over {WRITE_QUORUM_MILLIS} ms: the write was not taken; ask another node"
            ))),
        }
    }

    /// On the leader, makes a read see every write acknowledged before it began
    /// (linearizable); on a follower, nothing (its reads are bounded-stale). Cheap while
    /// the leader's lease holds: a majority acknowledged it within `LEASE` (followers
    /// refuse to elect another for 2 s after a heartbeat, openraft's lease, so no other
    /// node can lead yet) and it applied an entry of its own term (so every entry before
    /// its term too; each of its own writes is applied before it is acknowledged).
    /// Otherwise a read index: a round of heartbeats to a majority, then the apply up to
    /// what was committed, within `READ_INDEX_TIMEOUT`.
    pub async fn confirm_read(&self) -> Result<()> {
        let leads_within_lease = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(metrics.id) {
                return Ok(());
            }
            let lease = sole_voter(&metrics)
                || metrics
                    .millis_since_quorum_ack
                    .is_some_and(|millis| millis <= LEASE_MILLIS);
            lease
                && metrics
                    .last_applied
                    .is_some_and(|log_id| log_id.leader_id.term == metrics.current_term)
        };
        if leads_within_lease {
            return Ok(());
        }
        // A round that began after this read arrived confirms it as well as its own: the
        // leadership it confirms, and the commit index it waits to apply, are at least
        // this read's. So concurrent reads share one round (and one failure) instead of
        // sending the followers a heartbeat round each.
        let arrived = std::time::Instant::now();
        let mut last = self.read_index.lock().await;
        if let Some((began, outcome)) = last.as_ref()
            && *began >= arrived
        {
            return outcome.clone().map_err(unavailable);
        }
        let began = std::time::Instant::now();
        self.read_index_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = match tokio::time::timeout(READ_INDEX_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!(
                "this node cannot confirm that it still leads the cluster ({err}); ask another node"
            )),
            Err(_) => Err(
                "this node cannot confirm that it still leads the cluster: no majority answered; ask another node"
                    .to_owned(),
            ),
        };
        *last = Some((began, outcome.clone()));
        outcome.map_err(unavailable)
    }

    fn address(&self) -> Result<(u64, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .current_leader
            .and_then(|leader| {
                let node = metrics.membership_config.membership().get_node(&leader).cloned()?;
                Some((leader, node.addr))
            })
            .ok_or_else(|| unavailable("this node does not lead the cluster and knows no leader yet".to_owned()))
    }

    /// A connection to the leader (the last one, while it leads at the same address).
    pub async fn channel(&self) -> Result<Channel> {
        let (leader, address) = self.address()?;
        let cached = self
            .channel
            .lock()
            .as_ref()
            .filter(|(to, _)| *to == address)
            .map(|(_, channel)| channel.clone());
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let bundle = self.bundle.as_ref().ok_or_else(|| {
            unavailable(format!(
                "node {leader} leads the cluster, at {address}; this node has no credentials to reach it (cluster_credentials)"
            ))
        })?;
        let channel = bundle.connect(Some(&address)).await.map_err(|err| {
            unavailable(format!(
                "node {leader} leads the cluster, at {address}, and could not be reached: {err}"
            ))
        })?;
        *self.channel.lock() = Some((address, channel.clone()));
        Ok(channel)
    }

    /// After a failed call: the next one connects afresh.
    pub fn forget_channel(&self) {
        *self.channel.lock() = None;
    }

    async fn send_reads(&self, request: pb::ForwardedReads) -> Result<()> {
        let channel = self.channel().await?;
        let mut client = ClusterClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut request = tonic::Request::new(request);
        request.set_timeout(READS_TIMEOUT);
        client.record_reads(request).await.map_err(|status| {
            self.forget_channel();
            unavailable(format!(
                "the leader did not take the audit entries of this node's reads: {}",
                status.message()
            ))
        })?;
        Ok(())
    }
}

impl ReadForwarder for Leader {
    fn leads(&self) -> bool {
        self.is_this_node()
    }

    fn forward(&self, reads: &[(AuditEvent, i64)]) -> Result<()> {
        let request = pb::ForwardedReads {
            reads: reads
                .iter()
                .filter_map(|(event, at_ms)| ForwardedRead::of(event, *at_ms))
                .map(read_to_pb)
                .collect(),
        };
        // Called on a blocking thread (the flusher's, or a read's that found the queue full).
        tokio::task::block_in_place(|| self.runtime.block_on(self.send_reads(request)))
    }
}

fn unavailable(message: String) -> Error {
    Error::Storage(StoreError::Unavailable(message))
}

pub fn read_to_pb(read: ForwardedRead) -> pb::ForwardedRead {
    pb::ForwardedRead {
        actor: read.actor,
        op: read.op.as_str().to_owned(),
        n_items: read.n_items,
        n_changed: read.n_changed,
        detail: read.detail,
        digests: read.digests.concat(),
        at_ms: read.at_ms,
    }
}

/// A forwarded read as received; `at` names it in errors.
pub fn read_from_pb(at: usize, read: pb::ForwardedRead) -> Result<ForwardedRead> {
    let op: AuditOp = read
        .op
        .parse()
        .map_err(|_| Error::invalid(format!("reads[{at}].op: '{}' is not an audit operation", read.op)))?;
    let (chunks, rest) = read.digests.as_chunks::<32>();
    if !rest.is_empty() {
        return Err(Error::invalid(format!(
            "reads[{at}].digests: {} bytes, expected a multiple of 32",
            read.digests.len()
        )));
    }
    Ok(ForwardedRead {
        actor: read.actor,
        op,
        n_items: read.n_items,
        n_changed: read.n_changed,
        detail: read.detail,
        digests: chunks.to_vec(),
        at_ms: read.at_ms,
    })
}

/// Whether this node is its cluster's only voter: a majority is itself.
fn sole_voter(metrics: &openraft::RaftMetrics<super::NodeId, super::ClusterNode>) -> bool {
    metrics.membership_config.membership().voter_ids().eq([metrics.id])
}
