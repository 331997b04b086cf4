//! The consortium key: 32 secret bytes shared by member platforms, never by the server,
//! plus a key id (epoch) so the key can be rotated.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct ConsortiumKey {
    key_id: u32,
    secret: [u8; 32],
}

/// Never prints the secret.
impl fmt::Debug for ConsortiumKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsortiumKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
}

/// On-disk form of a key file (TOML).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// Format version of this file.
    format: u32,
    key_id: u32,
    /// 64 lowercase hex characters.
    key: String,
}

impl ConsortiumKey {
    pub fn from_parts(key_id: u32, secret: [u8; 32]) -> ConsortiumKey {
        ConsortiumKey { key_id, secret }
    }

    pub fn generate(key_id: u32) -> Result<ConsortiumKey, KeyFileError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|err| KeyFileError::Random(err.to_string()))?;
        Ok(ConsortiumKey { key_id, secret })
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn load(path: &Path) -> Result<ConsortiumKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let malformed = |reason: String| KeyFileError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|err| malformed(err.message().to_owned()))?;
        if file.format != 1 {
            return Err(malformed(format!("unsupported format {} (expected 1)", file.format)));
        }
        let bytes = hex::decode(file.key.trim()).map_err(|_| malformed("key is not hex".to_owned()))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| malformed(format!("key is {} bytes, expected 32", bytes.len())))?;
        Ok(ConsortiumKey {
            key_id: file.key_id,
            secret,
        })
    }

    /// Writes the key to a new file readable by its owner only (mode 0600). Refuses to
    /// overwrite an existing file: losing a consortium key orphans every digest made with it.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let file = KeyFile {
            format: 1,
            key_id: self.key_id,
            key: hex::encode(self.secret),
        };
        let text = toml::to_string(&file).map_err(|err| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        let body = format!(
            "# flagshare consortium key. Secret: share it only with member platforms, never with the server.\n{text}"
        );
        let write_error = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut out = crate::util::create_private_file(path).map_err(write_error)?;
        out.write_all(body.as_bytes()).map_err(write_error)?;
        out.sync_all().map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_then_load_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consortium.key");
        let key = ConsortiumKey::generate(3).unwrap();
        key.save_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = ConsortiumKey::load(&path).unwrap();
        assert_eq!(loaded.key_id(), 3);
        assert_eq!(loaded.secret(), key.secret());
        assert!(
            key.save_new(&path).is_err(),
            "an existing key file must not be overwritten"
        );
    }

    #[test]
    fn malformed_key_files_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "format = 1\nkey_id = 1\nkey = \"abcd\"\n").unwrap();
        let err = ConsortiumKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("key is 2 bytes, expected 32"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = ConsortiumKey::from_parts(1, [0xab; 32]);
        assert!(!format!("{key:?}").contains("ab"));
    }
}
