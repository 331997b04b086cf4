//! The library's error type: a small set of kinds, each mapped to one gRPC code in
//! `wire` (`impl From<Error> for tonic::Status`). Messages are lowercase and say which field or item is wrong.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A cursor the server can no longer continue (another database, or older than what
    /// is kept): the reader starts again with a snapshot.
    #[error("{0}")]
    OutOfRange(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }
}
