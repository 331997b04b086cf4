//! A write set: the rows one commit puts and deletes, as plain bytes that name each family
//! by its place in `cf::REPLICATED`. A replicated operator's leader proposes the write set
//! of every commit and each node applies it as it stands, so every copy of the store holds
//! the same bytes (sequence numbers, audit hashes and times included) by construction,
//! whatever the clock or the in-memory state of the node applying it.
//!
//! Layout: `[1, op*]`, each op `tag u8 | family u8 | key (u32 BE length, bytes) | value
//! (u32 BE length, bytes)`: tag 1 puts the value under the key, 2 deletes the key (no
//! value), 3 deletes every key from the key up to, not including, the value.

use super::cf;
use super::codec::{DecodeError, Reader};

const WRITE_SET_V1: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const DELETE_RANGE: u8 = 3;

/// One row change of a write set; `family` is a name from `cf::REPLICATED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    Put {
        family: &'static str,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        family: &'static str,
        key: &'a [u8],
    },
    DeleteRange {
        family: &'static str,
        from: &'a [u8],
        to: &'a [u8],
    },
}

/// The encoded write set of one commit, built as the commit's batch is staged, and the
/// files it ingests (an import block's rows, built as files: `IngestFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    bytes: Vec<u8>,
    files: Vec<IngestFile>,
}

impl Default for WriteSet {
    fn default() -> Self {
        WriteSet {
            bytes: vec![WRITE_SET_V1],
            files: Vec::new(),
        }
    }
}

/// What a file a commit ingests holds. Applied in this order, before the write set:
/// digests are noted in the presence filter before their rows exist, and change rows
/// before the summary rows that point at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    /// The block's stored digests, 32 bytes each, for the presence filter.
    Digests,
    /// An SST file of `cf::CHANGES` rows (`Store::write_changes_file`).
    Changes,
    /// An SST file of `cf::SUMMARIES` rows (`Store::write_summaries_file`).
    Summaries,
}

impl FileKind {
    pub const ALL: [FileKind; 3] = [FileKind::Digests, FileKind::Changes, FileKind::Summaries];

    pub fn code(self) -> u8 {
        match self {
            FileKind::Digests => 0,
            FileKind::Changes => 1,
            FileKind::Summaries => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::Digests => "digests",
            FileKind::Changes => "changes",
            FileKind::Summaries => "summaries",
        }
    }
}

/// A file a replicated commit ingests, where its builder left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestFile {
    pub kind: FileKind,
    pub path: std::path::PathBuf,
}

impl WriteSet {
    /// The encoding of a write set that changes nothing.
    pub const EMPTY: &'static [u8] = &[WRITE_SET_V1];

    pub fn put(&mut self, family: &'static str, key: &[u8], value: &[u8]) {
        self.op(PUT, family, key, Some(value));
    }

    pub fn delete(&mut self, family: &'static str, key: &[u8]) {
        self.op(DELETE, family, key, None);
    }

    pub fn delete_range(&mut self, family: &'static str, from: &[u8], to: &[u8]) {
        self.op(DELETE_RANGE, family, from, Some(to));
    }

    fn op(&mut self, tag: u8, family: &'static str, key: &[u8], value: Option<&[u8]>) {
        self.bytes.push(tag);
        self.bytes.push(family_index(family));
        for part in std::iter::once(key).chain(value) {
            // Keys and values are a few KiB at most (a summary row of 16,384 entries is
            // 640 KiB); a length is u32 with room to spare.
            self.bytes
                .extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            self.bytes.extend_from_slice(part);
        }
    }

    /// Adds a file the commit ingests (at most one of each kind).
    pub fn attach(&mut self, kind: FileKind, path: std::path::PathBuf) {
        self.files.retain(|file| file.kind != kind);
        self.files.push(IngestFile { kind, path });
    }

    pub fn files(&self) -> &[IngestFile] {
        &self.files
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() == 1 && self.files.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The encoded rows and the files, apart.
    pub fn into_parts(self) -> (Vec<u8>, Vec<IngestFile>) {
        (self.bytes, self.files)
    }
}

/// The index of `family` in `cf::REPLICATED`. Only the store's own code names families,
/// always from `cf`; a family outside the list is a bug there.
fn family_index(family: &'static str) -> u8 {
    cf::REPLICATED
        .iter()
        .position(|name| *name == family)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(u8::MAX)
}

/// Every change of an encoded write set, in order, or the first reason it is not one
/// (truncated, an unknown tag, a family outside `cf::REPLICATED`). Nothing is applied from
/// a write set that fails here: callers decode it whole first.
pub fn decode(bytes: &[u8]) -> Result<Vec<Write<'_>>, DecodeError> {
    let mut reader = Reader::new("write set", bytes, WRITE_SET_V1)?;
    let mut writes = Vec::new();
    while !reader.is_empty() {
        let tag = reader.u8()?;
        let index = reader.u8()?;
        let family = *cf::REPLICATED
            .get(usize::from(index))
            .ok_or_else(|| reader.error(format!("op {}: unknown family {index}", writes.len())))?;
        let key = part(&mut reader)?;
        writes.push(match tag {
            PUT => Write::Put {
                family,
                key,
                value: part(&mut reader)?,
            },
            DELETE => Write::Delete { family, key },
            DELETE_RANGE => Write::DeleteRange {
                family,
                from: key,
                to: part(&mut reader)?,
            },
            other => return Err(reader.error(format!("op {}: unknown tag {other}", writes.len()))),
        });
    }
    Ok(writes)
}

/// Appends the changes of the encoded write set `more` to those of `into`: one write set
/// that changes what applying both in turn would (a later change of a key wins, as it
/// would have). False, and `into` unchanged, when either is not a write set of this
/// layout.
pub fn concat(into: &mut Vec<u8>, more: &[u8]) -> bool {
    match (into.first(), more.split_first()) {
        (Some(&WRITE_SET_V1), Some((&WRITE_SET_V1, ops))) => {
            into.extend_from_slice(ops);
            true
        }
        _ => false,
    }
}

fn part<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = reader.u32()? as usize;
    reader.take(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_set_decodes_to_what_was_staged_in_order() {
        let mut set = WriteSet::default();
        assert!(set.is_empty());
        set.put(cf::SUMMARIES, b"digest", b"row");
        set.delete(cf::CHANGES, &7u64.to_be_bytes());
        set.delete_range(cf::AUDIT, &[0; 8], &9u64.to_be_bytes());
        assert!(!set.is_empty());
        assert_eq!(
            decode(set.as_bytes()).unwrap(),
            vec![
                Write::Put {
                    family: cf::SUMMARIES,
                    key: b"digest",
                    value: b"row"
                },
                Write::Delete {
                    family: cf::CHANGES,
                    key: &7u64.to_be_bytes()
                },
                Write::DeleteRange {
                    family: cf::AUDIT,
                    from: &[0; 8],
                    to: &9u64.to_be_bytes()
                },
            ]
        );
    }

    #[test]
    fn concatenated_write_sets_decode_to_both_in_turn() {
        let mut first = WriteSet::default();
        first.put(cf::SUMMARIES, b"digest", b"old");
        let mut second = WriteSet::default();
        second.put(cf::SUMMARIES, b"digest", b"new");
        second.delete(cf::CHANGES, &7u64.to_be_bytes());
        let mut both = first.as_bytes().to_vec();
        assert!(concat(&mut both, second.as_bytes()));
        assert!(concat(&mut both, WriteSet::EMPTY));
        let mut expected = decode(first.as_bytes()).unwrap();
        expected.extend(decode(second.as_bytes()).unwrap());
        assert_eq!(decode(&both).unwrap(), expected);
        let before = both.clone();
        assert!(!concat(&mut both, &[9, 1, 2]), "another layout is not appended");
        assert!(!concat(&mut both, &[]));
        assert_eq!(both, before);
    }

    #[test]
    fn a_damaged_write_set_is_refused_with_what_is_wrong() {
        let mut set = WriteSet::default();
        set.put(cf::META, b"k", b"v");
        let bytes = set.into_bytes();
        let truncated = decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(truncated.reason.contains("truncated"), "{truncated}");

        let mut unknown_family = bytes.clone();
        unknown_family[2] = u8::try_from(cf::REPLICATED.len()).unwrap();
        let refused = decode(&unknown_family).unwrap_err();
        assert!(refused.reason.contains("unknown family"), "{refused}");

        let mut unknown_tag = bytes.clone();
        unknown_tag[1] = 9;
        assert!(decode(&unknown_tag).unwrap_err().reason.contains("unknown tag 9"));

        let mut other_version = bytes;
        other_version[0] = 2;
        assert!(decode(&other_version).unwrap_err().reason.contains("format version"));
    }

    #[test]
    fn no_raft_family_can_be_named_by_a_write_set() {
        for family in [cf::RAFT_LOG, cf::RAFT_STATE] {
            assert!(!cf::REPLICATED.contains(&family));
        }
    }
}
