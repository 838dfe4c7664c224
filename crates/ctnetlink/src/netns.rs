//! Running in another network namespace without moving the caller.
//!
//! A netlink socket belongs to the namespace it was created in. So we create it on a short-lived
//! thread that has entered the target namespace (`setns` changes only the calling thread), and
//! hand the socket back: every later operation on it acts in that namespace, from any thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The path of a named namespace: `/run/netns/NAME`, or the argument itself when it is a path
/// (e.g. `/proc/1234/ns/net`).
pub fn path_of(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Runs `f` on a new thread that has entered the named network namespace, and returns its result.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = path_of(name);
    let ns = File::open(&path).map_err(|source| Error::Netns {
        name: name.to_string(),
        source,
    })?;
    let owned_name = name.to_string();
    let handle = std::thread::Builder::new()
        .name("ctnetlink-netns".into())
        .spawn(move || -> Result<T> {
            // SAFETY: setns on a valid namespace fd; it only affects this thread, which ends
            // after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc < 0 {
                let source = io::Error::last_os_error();
                return Err(match source.raw_os_error() {
                    Some(libc::EPERM) => Error::PermissionDenied {
                        op: "enter network namespace",
                    },
                    _ => Error::Netns {
                        name: owned_name,
                        source,
                    },
                });
            }
            f()
        })
        .map_err(|source| Error::Io {
            op: "spawn namespace thread",
            source,
        })?;
    handle.join().map_err(|_| Error::Io {
        op: "namespace thread",
        source: io::Error::other("the namespace thread panicked"),
    })?
}
