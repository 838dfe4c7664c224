//! Running code in another network namespace without moving the caller.
//!
//! A netlink socket belongs to the namespace it was created in. So we create it on a short-lived
//! thread that has entered the target namespace (`setns` changes only the calling thread), and
//! hand the socket back: every later operation on it acts in that namespace, from any thread.
//! [`run_in`] does this for any closure.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The path of a named namespace: `/run/netns/NAME` (where `ip netns add` creates it), or the
/// argument itself when it is a path (e.g. `/proc/1234/ns/net`).
pub fn path_of(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Runs `f` on a new thread that has entered the network namespace `name` (a name under
/// `/run/netns`, or a path, see [`path_of`]) and returns what `f` returns. The calling thread
/// stays where it is.
///
/// The error is about entering the namespace only ([`Error::Netns`], or
/// [`Error::PermissionDenied`] without `CAP_SYS_ADMIN`); a fallible `f` returns its own `Result`
/// inside the `Ok`. A panic in `f` is returned as an [`Error::Io`], not propagated.
///
/// ```no_run
/// // Which interfaces does the namespace "blue" have?
/// let links = ctnetlink::netns::run_in("blue", || std::fs::read_dir("/sys/class/net").map(|d| d.count()))?;
/// println!("{} interfaces", links?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = path_of(name);
    let ns = File::open(&path).map_err(|source| Error::Netns {
        name: name.to_string(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("ctnetlink-netns".into())
            .spawn_scoped(scope, move || -> Result<T> {
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
                            name: name.to_string(),
                            source,
                        },
                    });
                }
                Ok(f())
            })
            .map_err(|source| Error::Io {
                op: "spawn namespace thread",
                source,
            })?;
        handle.join().map_err(|_| Error::Io {
            op: "namespace thread",
            source: io::Error::other("the namespace thread panicked"),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_kernel::{root_or_skip, ThrowawayNs};

    fn netns_inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("stat netns").ino()
    }

    #[test]
    fn run_in_runs_the_closure_in_the_namespace_and_returns_its_value() {
        if !root_or_skip("run_in_runs_the_closure_in_the_namespace_and_returns_its_value") {
            return;
        }
        let ns = ThrowawayNs::new("ctnl-runin");
        let here = netns_inode("/proc/thread-self/ns/net");
        let target = netns_inode(&path_of(&ns.0).to_string_lossy());
        assert_ne!(here, target);
        // Borrows from the caller's stack: the closure need not be 'static.
        let label = String::from("inside");
        let (inode, text) = run_in(&ns.0, || {
            (netns_inode("/proc/thread-self/ns/net"), label.clone())
        })
        .expect("enter the namespace");
        assert_eq!(inode, target, "the closure ran in the namespace");
        assert_eq!(text, "inside");
        // The caller did not move.
        assert_eq!(netns_inode("/proc/thread-self/ns/net"), here);
        // A path works as well as a name, and any return type does.
        let path = path_of(&ns.0);
        let n: Result<u8, String> =
            run_in(&path.to_string_lossy(), || Err("mine".to_string())).expect("enter by path");
        assert_eq!(
            n,
            Err("mine".to_string()),
            "the closure's own error comes back inside Ok"
        );
    }

    /// No privilege needed: the namespace file does not exist.
    #[test]
    fn run_in_reports_a_missing_namespace() {
        let missing = format!("ctnl-runin-missing-{}", std::process::id());
        let e = run_in(&missing, || ()).expect_err("no such namespace");
        assert!(
            matches!(&e, Error::Netns { name, .. } if *name == missing),
            "{e:?}"
        );
        assert!(e.is_environment());
        assert!(e.to_string().contains(&missing), "{e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn run_in_returns_a_panic_as_an_error() {
        if !root_or_skip("run_in_returns_a_panic_as_an_error") {
            return;
        }
        let ns = ThrowawayNs::new("ctnl-runin");
        let e = run_in(&ns.0, || -> u32 { panic!("boom") }).expect_err("the panic is an error");
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }
}
