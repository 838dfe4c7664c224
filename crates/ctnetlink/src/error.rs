//! Errors of the conntrack netlink layer.
//!
//! Two families: [`ParseError`] is what the pure codec returns for bytes that do not follow the
//! protocol (it is `Copy` so the hot path never allocates for it), and [`Error`] is what the socket
//! layer returns, worded so that an operator knows what to do next.

use std::io;

/// Malformed netlink bytes. Returned by the codec; never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("attribute {what} has length {len}, expected {expected}")]
    BadLength {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("conntrack entry without {what}")]
    Missing { what: &'static str },
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    BadFamily(u8),
}

/// Errors of the socket layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: permission denied: run as root or grant CAP_NET_ADMIN (in the target network namespace)")]
    PermissionDenied { op: &'static str },
    #[error("{op}: conntrack netlink is not available in this kernel: load the modules with `modprobe nf_conntrack_netlink` (needs CONFIG_NF_CT_NETLINK) ({source})")]
    NotAvailable {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {name:?}: {source} (list them with `ip netns list`)")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: the kernel answered {source}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
        message: Option<String>,
    },
    #[error("conntrack events were lost (the receive buffer overflowed): resync with a full dump")]
    EventsLost,
    #[error("{op}: malformed answer from the kernel: {source}")]
    Malformed {
        op: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("refusing to build {0}")]
    Refused(&'static str),
}

impl Error {
    /// Maps an errno answered by the kernel (or by a syscall) to an error that says what to do.
    pub(crate) fn from_errno(op: &'static str, errno: i32, message: Option<String>) -> Self {
        let source = io::Error::from_raw_os_error(errno);
        match errno {
            libc::EPERM | libc::EACCES => Error::PermissionDenied { op },
            libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT => {
                Error::NotAvailable { op, source }
            }
            _ => Error::Kernel {
                op,
                source,
                message,
            },
        }
    }

    /// The errno behind this error, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { .. } => Some(libc::EPERM),
            Error::NotAvailable { source, .. }
            | Error::Netns { source, .. }
            | Error::Kernel { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            Error::EventsLost => Some(libc::ENOBUFS),
            _ => None,
        }
    }

    /// True for errors that come from the environment (permissions, missing kernel support, a
    /// missing namespace) rather than from a bug or bad input: the CLI maps these to exit code 3.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            Error::PermissionDenied { .. } | Error::NotAvailable { .. } | Error::Netns { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
