//! Errors of the conntrack netlink layer.
//!
//! Two families: [`ParseError`] is what the pure codec returns for bytes that do not follow the
//! protocol (it is `Copy` so the hot path never allocates for it), and [`Error`] is what the socket
//! layer returns, worded so that an operator knows what to do next. Every socket-layer error
//! names the operation that failed (`op`).

use std::io;

/// Malformed netlink bytes. Returned by the codec; never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A header or message is shorter than it must be.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// An attribute's payload has the wrong size for its type.
    #[error("attribute {what} has length {len}, expected {expected}")]
    BadLength {
        /// The attribute.
        what: &'static str,
        /// Its payload length.
        len: usize,
        /// The length its type has.
        expected: usize,
    },
    /// A required attribute is absent (or inconsistent with the rest of the entry).
    #[error("conntrack entry without {what}")]
    Missing {
        /// What is missing.
        what: &'static str,
    },
    /// The message's address family is neither IPv4 nor IPv6.
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    BadFamily(u8),
}

/// Errors of the socket layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// EPERM/EACCES: the caller lacks `CAP_NET_ADMIN` (or `CAP_SYS_ADMIN` to enter a namespace).
    #[error("{op}: permission denied: run as root or grant CAP_NET_ADMIN (in the target network namespace)")]
    PermissionDenied {
        /// The operation that failed.
        op: &'static str,
    },
    /// The kernel has no conntrack netlink (module not loaded or not built).
    #[error("{op}: conntrack netlink is not available in this kernel: load the modules with `modprobe nf_conntrack_netlink` (needs CONFIG_NF_CT_NETLINK) ({source})")]
    NotAvailable {
        /// The operation that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The named network namespace could not be opened or entered.
    #[error("network namespace {name:?}: {source} (list them with `ip netns list`)")]
    Netns {
        /// The namespace name or path, as given.
        name: String,
        /// Why it could not be opened or entered.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{op}: the kernel answered {source}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        /// The operation that failed.
        op: &'static str,
        /// The errno the kernel answered.
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, when it sent one.
        message: Option<String>,
    },
    /// Events were dropped because the receive buffer overflowed (ENOBUFS); the socket stays
    /// usable.
    #[error("conntrack events were lost (the receive buffer overflowed): resync with a full dump")]
    EventsLost,
    /// The kernel's answer did not parse.
    #[error("{op}: malformed answer from the kernel: {source}")]
    Malformed {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong with the bytes.
        #[source]
        source: ParseError,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A request that cannot be encoded (e.g. a key whose addresses mix families); nothing was
    /// sent.
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
    /// missing namespace) rather than from a bug or bad input: fixing the host fixes these.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            Error::PermissionDenied { .. } | Error::NotAvailable { .. } | Error::Netns { .. }
        )
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
