//! Errors of the cluster model: an object the index cannot use.

use super::event::Kind;

/// Why an object was rejected. The index is left unchanged by a rejected object: keeping the
/// previous version keeps its flows, which is the safe side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{kind} {key}: {reason}")]
    Invalid {
        kind: Kind,
        /// `namespace/name`, or `<unnamed>`.
        key: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(kind: Kind, key: impl ToString, reason: impl Into<String>) -> Self {
        Error::Invalid {
            kind,
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
