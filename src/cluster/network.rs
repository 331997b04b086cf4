//! Node-to-node traffic: openraft's three calls over the `Cluster` gRPC service, on the
//! same mutual-TLS port as every other service. A call's small parts travel as openraft's
//! own JSON; entries travel as the log stores them (with the bytes of the files they
//! ingest) and snapshot chunks as raw bytes, so a write set is never spelled out as a JSON
//! array of numbers.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::files::LogFiles;
use super::{ClusterNode, Config, NodeId, rows};
use crate::client::Bundle;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::store::DecodeError;

/// Most entries one AppendEntries may carry; openraft sends at most its
/// `max_payload_entries` (300 by default).
pub const MAX_ENTRIES: usize = 4_096;
/// Largest message the `Cluster` service reads (and a node sends): an entry is one
/// commit's write set, and an import block's (200,000 rows) is an estimated 40 MB. A
/// larger call is refused before it is decoded; only a node's calls are read at all.
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Why a `RaftRequest` could not be read; the service answers INVALID_ARGUMENT with it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadRequest {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl std::fmt::Display) -> BadRequest {
    BadRequest {
        field: field.into(),
        reason: reason.to_string(),
    }
}

fn header<T: DeserializeOwned>(request: &pb::RaftRequest) -> Result<T, BadRequest> {
    serde_json::from_slice(&request.header).map_err(|err| bad("header", err))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // openraft's types serialise without fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Most bytes of entries one AppendEntries carries (at least one entry goes whatever its
/// size). openraft gives an AppendEntries one heartbeat interval (250 ms) to be answered
/// and bounds a payload by count only (300 entries): a follower far behind was sent 300
/// import blocks of ~2.5 MB at once, never answered in time, and was sent them again and
/// again. A call carries a prefix within this bound instead, and its success is reported
/// as a partial one, so openraft sends the rest next.
pub const APPEND_BUDGET_BYTES: usize = 4 << 20;

/// About the bytes `entry` takes in an AppendEntries (its files' bytes included).
fn wire_size(entry: &openraft::Entry<Config>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(proposal) => {
            let files: u64 = proposal.files.iter().map(|file| file.len + 41).sum();
            26 + proposal.writes.len() + usize::try_from(files).unwrap_or(usize::MAX)
        }
        // A membership's JSON: small.
        _ => 26,
    }
}

/// An AppendEntries as sent: its entries out of the JSON header, as many of them as fit
/// `budget` bytes (at least one). The second value is the last entry sent when some were
/// left out.
pub fn encode_append(
    rpc: &AppendEntriesRequest<Config>,
    budget: usize,
    files: &LogFiles,
) -> Result<(pb::RaftRequest, Option<openraft::LogId<NodeId>>), DecodeError> {
    let mut entries = Vec::new();
    let mut bytes_so_far = 0;
    let mut cut_at = None;
    for entry in &rpc.entries {
        // Sized before it is encoded: an entry's files are read only if it goes.
        if !entries.is_empty() && bytes_so_far + wire_size(entry) > budget {
            cut_at = rpc.entries.get(entries.len() - 1).map(|entry| entry.log_id);
            break;
        }
        let mut bytes = entry.log_id.index.to_be_bytes().to_vec();
        bytes.extend_from_slice(&rows::encode_wire_entry(entry, files)?);
        bytes_so_far += bytes.len();
        entries.push(bytes);
    }
    let bare = AppendEntriesRequest::<Config> {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
        entries: Vec::new(),
    };
    Ok((
        pb::RaftRequest {
            header: json(&bare),
            entries,
            data: Vec::new(),
        },
        cut_at,
    ))
}

pub fn decode_append(request: pb::RaftRequest) -> Result<AppendEntriesRequest<Config>, BadRequest> {
    let mut rpc: AppendEntriesRequest<Config> = header(&request)?;
    if !rpc.entries.is_empty() {
        return Err(bad("header", "entries belong in the entries field"));
    }
    if request.entries.len() > MAX_ENTRIES {
        return Err(bad(
            "entries",
            format!("{} in one call, at most {MAX_ENTRIES}", request.entries.len()),
        ));
    }
    let first = rpc.prev_log_id.map_or(0, |log_id| log_id.index + 1);
    for ((at, bytes), expected) in request.entries.iter().enumerate().zip(first..) {
        let field = || format!("entries[{at}]");
        let (index, row) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| bad(field(), "shorter than its 8-byte index"))?;
        let index = u64::from_be_bytes(*index);
        if index != expected {
            return Err(bad(
                field(),
                format!("index {index}, expected {expected} (entries are consecutive)"),
            ));
        }
        rpc.entries
            .push(rows::decode_wire_entry(index, row).map_err(|err| bad(field(), err))?);
    }
    Ok(rpc)
}

pub fn encode_snapshot(rpc: &InstallSnapshotRequest<Config>) -> pb::RaftRequest {
    let bare = InstallSnapshotRequest::<Config> {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        data: Vec::new(),
        done: rpc.done,
    };
    pb::RaftRequest {
        header: json(&bare),
        entries: Vec::new(),
        data: rpc.data.clone(),
    }
}

pub fn decode_snapshot(request: pb::RaftRequest) -> Result<InstallSnapshotRequest<Config>, BadRequest> {
    let mut rpc: InstallSnapshotRequest<Config> = header(&request)?;
    if !rpc.data.is_empty() {
        return Err(bad("header", "snapshot bytes belong in the data field"));
    }
    rpc.data = request.data;
    Ok(rpc)
}

pub fn encode_vote(rpc: &VoteRequest<NodeId>) -> pb::RaftRequest {
    pb::RaftRequest {
        header: json(rpc),
        entries: Vec::new(),
        data: Vec::new(),
    }
}

pub fn decode_vote(request: pb::RaftRequest) -> Result<VoteRequest<NodeId>, BadRequest> {
    header(&request)
}

/// What the receiving Raft answered, as the reply carries it.
pub fn reply<T: Serialize, E: Serialize>(outcome: &Result<T, E>) -> pb::RaftReply {
    pb::RaftReply { outcome: json(outcome) }
}

/// Connections to the other nodes, each made with this node's own credentials; without
/// them (a one-node cluster) every other node is out of reach.
#[derive(Clone)]
pub struct Network {
    bundle: Option<Arc<Bundle>>,
    /// The files the log's entries ingest, which entries carry to other nodes.
    files: LogFiles,
}

impl Network {
    pub fn new(bundle: Option<Arc<Bundle>>, files: LogFiles) -> Network {
        Network { bundle, files }
    }
}

impl RaftNetworkFactory<Config> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> Peer {
        Peer {
            target,
            address: node.addr.clone(),
            bundle: self.bundle.clone(),
            files: self.files.clone(),
            client: None,
        }
    }
}

/// One other node, connected on first use and again after a failure.
pub struct Peer {
    target: NodeId,
    address: String,
    bundle: Option<Arc<Bundle>>,
    files: LogFiles,
    client: Option<ClusterClient<Channel>>,
}

type Failed<E> = RPCError<NodeId, ClusterNode, E>;

impl Peer {
    async fn client<E: std::error::Error>(&mut self) -> Result<ClusterClient<Channel>, Failed<E>> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let Some(bundle) = &self.bundle else {
            let err = std::io::Error::other("this node has no credentials to call other nodes (cluster_credentials)");
            return Err(Unreachable::new(&err).into());
        };
        let channel = bundle
            .connect(Some(&self.address))
            .await
            .map_err(|err| Unreachable::new(&err))?;
        let client = ClusterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The reply's outcome, or why there is none. A failed call drops the connection, so
    /// the next one connects afresh.
    fn outcome<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        answered: Result<tonic::Response<pb::RaftReply>, tonic::Status>,
    ) -> Result<T, Failed<E>> {
        let reply = answered.map_err(|status| {
            self.client = None;
            let err = std::io::Error::other(format!("{}: {}", status.code(), status.message()));
            if status.code() == tonic::Code::Unavailable {
                Failed::<E>::Unreachable(Unreachable::new(&err))
            } else {
                Failed::<E>::Network(NetworkError::new(&err))
            }
        })?;
        let outcome: Result<T, E> = serde_json::from_slice(&reply.into_inner().outcome)
            .map_err(|err| NetworkError::new(&std::io::Error::other(format!("the reply: {err}"))))?;
        outcome.map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

impl RaftNetwork<Config> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Config>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Failed<RaftError<NodeId>>> {
        let (request, cut_at) =
            encode_append(&rpc, APPEND_BUDGET_BYTES, &self.files).map_err(|err| NetworkError::new(&err))?;
        let mut client = self.client().await?;
        let answered = client.append_entries(timed(request, &option)).await;
        match (self.outcome(answered)?, cut_at) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(last_sent)))
            }
            (response, _) => Ok(response),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Config>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Failed<RaftError<NodeId, InstallSnapshotError>>> {
        let mut client = self.client().await?;
        let answered = client.install_snapshot(timed(encode_snapshot(&rpc), &option)).await;
        self.outcome(answered)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Failed<RaftError<NodeId>>> {
        let mut client = self.client().await?;
        let answered = client.vote(timed(encode_vote(&rpc), &option)).await;
        self.outcome(answered)
    }
}

/// A request that gives up when openraft would.
fn timed(request: pb::RaftRequest, option: &RPCOption) -> tonic::Request<pb::RaftRequest> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(option.hard_ttl());
    request
}
