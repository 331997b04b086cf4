//! The files an entry of the log ingests (an import block's rows, built as files by the
//! leader as a single server builds them), kept beside the log in a folder of their own.
//!
//! The log's row of such an entry names each file by kind, length and BLAKE3 hash; the
//! bytes are here, under the entry's index, until the log is purged past the entry or
//! truncated before it. So an import writes its rows once (the leader's files, moved in
//! here and hard-linked into the store) instead of three times (the log's row, the
//! write-ahead log and the memtable's flush), and the log's family stays small. Over the
//! network an entry carries its files' bytes (`rows::encode_wire_entry`); a follower
//! checks them against the hashes and keeps them here as the leader does.

use std::path::{Path, PathBuf};

use super::{EntryFile, FileBody};
use crate::store::{FileKind, Store};

/// The folder of one node's log files.
#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    /// The folder beside `store`'s database.
    pub fn of(store: &Store) -> LogFiles {
        LogFiles {
            dir: store.path().with_extension("log-files"),
        }
    }

    /// Where the log keeps the file of `kind` of entry `index`.
    pub fn path(&self, index: u64, kind: FileKind) -> PathBuf {
        self.dir.join(format!("{index:020}.{}", kind.name()))
    }

    /// Keeps `file` of entry `index` here: a leader's own file is moved in, a received one
    /// written (and synced). Either way it is checked against its length first; the
    /// folder itself is synced by `sync`.
    pub fn keep(&self, index: u64, file: &EntryFile) -> std::io::Result<()> {
        {
            use std::os::unix::fs::DirBuilderExt as _;
            // Only the owner may read what members imported.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
        }
        let target = self.path(index, file.kind);
        match &file.body {
            FileBody::Local(source) => {
                check_len(file, std::fs::metadata(source)?.len())?;
                std::fs::rename(source, &target)
            }
            FileBody::Inline(bytes) => {
                check_len(file, bytes.len() as u64)?;
                let partial = target.with_extension("partial");
                std::fs::write(&partial, bytes)?;
                std::fs::File::open(&partial)?.sync_all()?;
                std::fs::rename(&partial, &target)
            }
            FileBody::Logged => check_len(file, std::fs::metadata(&target)?.len()),
        }
    }

    /// Waits until the files kept so far are part of the folder on disk.
    pub fn sync(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The bytes of `file` of entry `index`, as the network sends them.
    pub fn read(&self, index: u64, file: &EntryFile) -> std::io::Result<Vec<u8>> {
        match &file.body {
            FileBody::Inline(bytes) => Ok(bytes.clone()),
            FileBody::Local(path) => std::fs::read(path),
            FileBody::Logged => {
                let bytes = std::fs::read(self.path(index, file.kind))?;
                check_len(file, bytes.len() as u64)?;
                Ok(bytes)
            }
        }
    }

    /// Removes the files of every entry whose index `drop` says goes (purged, truncated,
    /// or left by a node that stopped between keeping a file and writing its entry).
    pub fn remove_where(&self, drop: impl Fn(u64) -> bool) -> std::io::Result<usize> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut removed = 0;
        for item in listing {
            let path = item?.path();
            match index_of(&path) {
                Some(index) if !drop(index) => {}
                // A name this folder never gives (a partial write has its index too).
                _ => {
                    std::fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn index_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (index, _kind) = name.split_once('.')?;
    index.parse().ok()
}

fn check_len(file: &EntryFile, found: u64) -> std::io::Result<()> {
    if found == file.len {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "the {} file of an entry has {found} bytes, {} expected",
            file.kind.name(),
            file.len
        )))
    }
}
