//! A replicated operator: the store's commits go through a Raft log (openraft) so that any
//! one node of three can fail without losing an acknowledged flag.
//!
//! What is replicated is the *write set* of each commit (`store::writeset`), not the call
//! that produced it: the leader runs an operation as a single server does (its rules, its
//! sequence numbers, its audit hash, its clock) and proposes the rows the commit writes;
//! every node applies those rows as they stand. So every node's database holds the same
//! bytes by construction, and no rule has to be written twice (once to decide, once to
//! replay) or kept deterministic across versions. TiKV replicates key-value writes the same
//! way, beneath its transactions.
//!
//! - `log.rs`: the Raft log and vote in the node's own RocksDB families.
//! - `machine.rs`: the state machine (write sets applied with the log id in the same
//!   write) and its snapshots (every replicated row as of one moment, in a checked file).

// openraft's traits return its `StorageError` (224 bytes); a storage error is rare, and
// these helpers return what the traits do.
#![allow(clippy::result_large_err)]

pub mod forward;
pub mod log;
pub mod machine;
pub mod network;
pub mod node;
#[cfg(test)]
mod tests;

use openraft::{LeaderId, LogId, Vote};

use crate::store::DecodeError;

/// A node's id in its cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The types of flagshare's Raft.
    pub Config:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = ClusterNode,
        Entry = openraft::Entry<Config>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node as the cluster's membership names it: where it listens and the SHA-256 of the
/// certificate it calls other nodes with. Stored as JSON in membership entries; `addr` is
/// openraft's `ClusterNode` field name, so a membership stored before is read alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterNode {
    pub addr: String,
    /// Hex; empty for a one-node cluster, which no other node calls.
    #[serde(default)]
    pub certificate_sha256: String,
}

impl ClusterNode {
    pub fn new(addr: impl Into<String>, certificate_sha256: [u8; 32]) -> ClusterNode {
        ClusterNode {
            addr: addr.into(),
            certificate_sha256: hex::encode(certificate_sha256),
        }
    }
}

impl std::fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// What a leader proposes: the encoded write set of one commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    pub writes: Vec<u8>,
}

pub type Entry = openraft::Entry<Config>;

/// Row codecs of `cf::RAFT_LOG` and `cf::RAFT_STATE` (layouts in `store::cf`).
pub(crate) mod rows {
    use openraft::{EntryPayload, Membership, StoredMembership};

    use super::*;

    const V1: u8 = 1;
    const BLANK: u8 = 0;
    const WRITES: u8 = 1;
    const MEMBERSHIP: u8 = 2;

    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const PURGED: &[u8] = b"purged";
    pub const APPLIED: &[u8] = b"applied";
    pub const MEMBERSHIP_KEY: &[u8] = b"membership";
    pub const SNAPSHOT: &[u8] = b"snapshot";
    pub const INSTALLING: &[u8] = b"installing";

    fn error(what: &'static str, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            what,
            reason: reason.into(),
        }
    }

    fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
        bytes
            .get(at..at + 8)
            .and_then(|slice| <[u8; 8]>::try_from(slice).ok())
            .map(u64::from_be_bytes)
    }

    pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(18);
        out.push(V1);
        out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
        out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
        match &entry.payload {
            EntryPayload::Blank => out.push(BLANK),
            EntryPayload::Normal(proposal) => {
                out.push(WRITES);
                out.extend_from_slice(&proposal.writes);
            }
            EntryPayload::Membership(membership) => {
                out.push(MEMBERSHIP);
                let json =
                    serde_json::to_vec(membership).map_err(|err| error("raft entry", format!("membership: {err}")))?;
                out.extend_from_slice(&json);
            }
        }
        Ok(out)
    }

    pub fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, DecodeError> {
        let (Some(term), Some(node)) = (u64_at(bytes, 1), u64_at(bytes, 9)) else {
            return Err(error("raft entry", format!("{} bytes, too short", bytes.len())));
        };
        if bytes.first() != Some(&V1) {
            return Err(error("raft entry", "unknown format version"));
        }
        let payload = &bytes[18.min(bytes.len())..];
        let payload = match bytes.get(17) {
            Some(&BLANK) => EntryPayload::Blank,
            Some(&WRITES) => EntryPayload::Normal(Proposal {
                writes: payload.to_vec(),
            }),
            Some(&MEMBERSHIP) => EntryPayload::Membership(
                serde_json::from_slice::<Membership<NodeId, ClusterNode>>(payload)
                    .map_err(|err| error("raft entry", format!("membership: {err}")))?,
            ),
            other => return Err(error("raft entry", format!("unknown payload kind {other:?}"))),
        };
        Ok(Entry {
            log_id: LogId::new(LeaderId::new(term, node), index),
            payload,
        })
    }

    pub fn encode_log_id(log_id: &LogId<NodeId>) -> Vec<u8> {
        let mut out = vec![V1];
        out.extend_from_slice(&log_id.leader_id.term.to_be_bytes());
        out.extend_from_slice(&log_id.leader_id.node_id.to_be_bytes());
        out.extend_from_slice(&log_id.index.to_be_bytes());
        out
    }

    pub fn decode_log_id(bytes: &[u8]) -> Result<LogId<NodeId>, DecodeError> {
        match (bytes.first(), u64_at(bytes, 1), u64_at(bytes, 9), u64_at(bytes, 17)) {
            (Some(&V1), Some(term), Some(node), Some(index)) if bytes.len() == 25 => {
                Ok(LogId::new(LeaderId::new(term, node), index))
            }
            _ => Err(error(
                "raft log id",
                format!("{} bytes of an unknown layout", bytes.len()),
            )),
        }
    }

    pub fn encode_vote(vote: &Vote<NodeId>) -> Vec<u8> {
        let mut out = vec![V1];
        out.extend_from_slice(&vote.leader_id.term.to_be_bytes());
        out.extend_from_slice(&vote.leader_id.node_id.to_be_bytes());
        out.push(u8::from(vote.committed));
        out
    }

    pub fn decode_vote(bytes: &[u8]) -> Result<Vote<NodeId>, DecodeError> {
        match (bytes.first(), u64_at(bytes, 1), u64_at(bytes, 9), bytes.get(17)) {
            (Some(&V1), Some(term), Some(node), Some(&committed)) if bytes.len() == 18 && committed <= 1 => {
                Ok(if committed == 1 {
                    Vote::new_committed(term, node)
                } else {
                    Vote::new(term, node)
                })
            }
            _ => Err(error(
                "raft vote",
                format!("{} bytes of an unknown layout", bytes.len()),
            )),
        }
    }

    pub fn encode_json(value: &impl serde::Serialize) -> Result<Vec<u8>, DecodeError> {
        let mut out = vec![V1];
        serde_json::to_writer(&mut out, value).map_err(|err| error("raft state", err.to_string()))?;
        Ok(out)
    }

    pub fn decode_json<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
        match bytes.split_first() {
            Some((&V1, json)) => serde_json::from_slice(json).map_err(|err| error(what, err.to_string())),
            _ => Err(error(what, "unknown format version")),
        }
    }

    pub type Stored = StoredMembership<NodeId, ClusterNode>;
}

/// Store failures as openraft takes them, by what was being done.
pub(crate) mod failed {
    use openraft::{AnyError, StorageError, StorageIOError};

    use super::NodeId;

    pub fn read_logs(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::read_logs(AnyError::new(&err)).into()
    }

    pub fn write_logs(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::write_logs(AnyError::new(&err)).into()
    }

    pub fn read_vote(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::read_vote(AnyError::new(&err)).into()
    }

    pub fn write_vote(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::write_vote(AnyError::new(&err)).into()
    }

    pub fn read_state_machine(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::read_state_machine(AnyError::new(&err)).into()
    }

    pub fn write_state_machine(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::write_state_machine(AnyError::new(&err)).into()
    }

    pub fn read_snapshot(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::read_snapshot(None, AnyError::new(&err)).into()
    }

    pub fn write_snapshot(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
        StorageIOError::write_snapshot(None, AnyError::new(&err)).into()
    }
}
