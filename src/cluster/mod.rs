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

mod batch;
pub mod files;
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

/// What a leader proposes: the encoded write set of one commit and the files it ingests
/// (an import block's; `files`), in `FileKind` order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    pub writes: Vec<u8>,
    #[serde(default)]
    pub files: Vec<EntryFile>,
}

impl Proposal {
    pub fn writes(writes: Vec<u8>) -> Proposal {
        Proposal {
            writes,
            files: Vec::new(),
        }
    }
}

/// The hash an entry's file has in the log when it was not hashed as it was proposed (a
/// one-node cluster's): the entry is hashed when it is first sent.
pub const UNHASHED: [u8; 32] = [0; 32];

/// A file an entry ingests: what it holds, its length and BLAKE3 hash (or `UNHASHED`),
/// and where its bytes are on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryFile {
    pub kind: crate::store::FileKind,
    pub len: u64,
    pub hash: [u8; 32],
    pub body: FileBody,
}

/// Where an entry's file is.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileBody {
    /// Kept by the log (`files::LogFiles`) under the entry's index: an entry read back.
    Logged,
    /// Where the leader built it, until the log keeps it.
    Local(std::path::PathBuf),
    /// Its bytes: an entry received from another node.
    Inline(Vec<u8>),
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileBody::Logged => write!(f, "Logged"),
            FileBody::Local(path) => write!(f, "Local({})", path.display()),
            FileBody::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
        }
    }
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
    /// A write set and the files it ingests, by reference (the log's row).
    const FILES: u8 = 3;
    /// A write set and the files it ingests, with their bytes (the network's form).
    const INLINE_FILES: u8 = 4;
    /// Files one entry may ingest at most (one of each kind).
    const MAX_FILES: usize = 3;

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

    /// An entry as the log stores it: its files by reference.
    pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, DecodeError> {
        encode(entry, None)
    }

    /// An entry as the network carries it: its files' bytes inline, read through `files`.
    pub fn encode_wire_entry(entry: &Entry, files: &super::files::LogFiles) -> Result<Vec<u8>, DecodeError> {
        encode(entry, Some(files))
    }

    fn encode(entry: &Entry, inline: Option<&super::files::LogFiles>) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(18);
        out.push(V1);
        out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
        out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
        match &entry.payload {
            EntryPayload::Blank => out.push(BLANK),
            EntryPayload::Normal(proposal) if proposal.files.is_empty() => {
                out.push(WRITES);
                out.extend_from_slice(&proposal.writes);
            }
            EntryPayload::Normal(proposal) => {
                out.push(if inline.is_some() { INLINE_FILES } else { FILES });
                out.extend_from_slice(&(proposal.writes.len() as u64).to_be_bytes());
                out.extend_from_slice(&proposal.writes);
                out.push(proposal.files.len() as u8);
                for file in &proposal.files {
                    out.push(file.kind.code());
                    out.extend_from_slice(&file.len.to_be_bytes());
                    match inline {
                        None => out.extend_from_slice(&file.hash),
                        Some(files) => {
                            let bytes = files
                                .read(entry.log_id.index, file)
                                .map_err(|err| error("raft entry", format!("its {} file: {err}", file.kind.name())))?;
                            let hash = match file.hash {
                                super::UNHASHED => *blake3::hash(&bytes).as_bytes(),
                                hash if hash == *blake3::hash(&bytes).as_bytes() => hash,
                                _ => {
                                    return Err(error(
                                        "raft entry",
                                        format!("its {} file does not match its hash", file.kind.name()),
                                    ));
                                }
                            };
                            out.extend_from_slice(&hash);
                            out.extend_from_slice(&bytes);
                        }
                    }
                }
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

    /// An entry as the log stores it.
    pub fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, DecodeError> {
        decode(index, bytes, false)
    }

    /// An entry as the network carries it (files only with their bytes: a node keeps no
    /// file it was not sent).
    pub fn decode_wire_entry(index: u64, bytes: &[u8]) -> Result<Entry, DecodeError> {
        decode(index, bytes, true)
    }

    fn decode(index: u64, bytes: &[u8], wire: bool) -> Result<Entry, DecodeError> {
        let (Some(term), Some(node)) = (u64_at(bytes, 1), u64_at(bytes, 9)) else {
            return Err(error("raft entry", format!("{} bytes, too short", bytes.len())));
        };
        if bytes.first() != Some(&V1) {
            return Err(error("raft entry", "unknown format version"));
        }
        let payload = &bytes[18.min(bytes.len())..];
        let payload = match bytes.get(17) {
            Some(&BLANK) => EntryPayload::Blank,
            Some(&WRITES) => EntryPayload::Normal(Proposal::writes(payload.to_vec())),
            Some(&MEMBERSHIP) => EntryPayload::Membership(
                serde_json::from_slice::<Membership<NodeId, ClusterNode>>(payload)
                    .map_err(|err| error("raft entry", format!("membership: {err}")))?,
            ),
            Some(&FILES) if !wire => EntryPayload::Normal(decode_files(payload, false)?),
            Some(&INLINE_FILES) if wire => EntryPayload::Normal(decode_files(payload, true)?),
            other => return Err(error("raft entry", format!("unknown payload kind {other:?}"))),
        };
        Ok(Entry {
            log_id: LogId::new(LeaderId::new(term, node), index),
            payload,
        })
    }

    /// The payload of a `FILES` or `INLINE_FILES` entry. Inline bytes must have the length
    /// and hash the entry gives, and each kind appears once, in `FileKind` order.
    fn decode_files(payload: &[u8], inline: bool) -> Result<super::Proposal, DecodeError> {
        let mut rest = payload;
        let rest = &mut rest;
        let writes_len = u64_at(take(rest, 8, "the write set's length")?, 0).unwrap_or_default();
        let writes = take(rest, usize::try_from(writes_len).unwrap_or(usize::MAX), "the write set")?.to_vec();
        let count = usize::from(take(rest, 1, "the file count")?[0]);
        if count == 0 || count > MAX_FILES {
            return Err(error("raft entry", format!("{count} files, expected 1 to {MAX_FILES}")));
        }
        let mut files: Vec<super::EntryFile> = Vec::with_capacity(count);
        for at in 0..count {
            let code = take(rest, 1, "a file's kind")?[0];
            let kind = crate::store::FileKind::from_code(code)
                .ok_or_else(|| error("raft entry", format!("file {at}: unknown kind {code}")))?;
            if files.last().is_some_and(|last| last.kind >= kind) {
                return Err(error(
                    "raft entry",
                    format!("file {at}: {} out of order or repeated", kind.name()),
                ));
            }
            let len = u64_at(take(rest, 8, "a file's length")?, 0).unwrap_or_default();
            let hash: [u8; 32] = take(rest, 32, "a file's hash")?.try_into().unwrap_or([0; 32]);
            let body = if inline {
                let bytes = take(rest, usize::try_from(len).unwrap_or(usize::MAX), "a file's bytes")?;
                if *blake3::hash(bytes).as_bytes() != hash {
                    return Err(error(
                        "raft entry",
                        format!("file {at} ({}): its bytes do not match its hash", kind.name()),
                    ));
                }
                super::FileBody::Inline(bytes.to_vec())
            } else {
                super::FileBody::Logged
            };
            files.push(super::EntryFile { kind, len, hash, body });
        }
        if !rest.is_empty() {
            return Err(error("raft entry", format!("{} bytes after its files", rest.len())));
        }
        Ok(super::Proposal { writes, files })
    }

    fn take<'a>(rest: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if rest.len() < n {
            return Err(error("raft entry", format!("ends inside {what}")));
        }
        let (taken, left) = rest.split_at(n);
        *rest = left;
        Ok(taken)
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
