//! One error type for the whole lab. Every variant says what was attempted, so a failing test or
//! `ghostbuster demo` prints something a person can act on ("run as root", "install nftables").

use std::io;

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error("netlab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces: run as root (e.g. sudo)")]
    NotRoot,
    /// A helper program (`ip`, `nft`) could not be started at all.
    #[error("could not run `{program}`: {source}; install it (apt-get install {package}) and run as root")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A system call or file operation failed; `context` names what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Entering a network namespace failed (not root, or the namespace is gone).
    #[error("entering network namespace {name} (needs CAP_SYS_ADMIN, i.e. root): {source}")]
    SetNs {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The caller asked for something the lab cannot build.
    #[error("invalid lab request: {0}")]
    Invalid(String),
    /// The conntrack netlink library failed (bulk fill).
    #[error(transparent)]
    Conntrack(#[from] ctnetlink::Error),
}

impl Error {
    /// Wraps an I/O error with what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
