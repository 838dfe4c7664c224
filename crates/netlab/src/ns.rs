//! Throwaway network namespaces: unique names, guaranteed removal, and running code inside one.
//!
//! Names are `gbt-<pid>-<seq>-<role>` with the pid and a per-process counter in base 36, e.g.
//! `gbt-2ikhs-3-node`. The pid in the name is what lets [`cleanup_leftovers`] tell a leftover of a
//! dead run (SIGKILL, abort, `--keep`) from a namespace another live process is using right now.
//!
//! Entering a namespace is per thread (`setns(2)` changes only the calling thread), so code runs
//! inside a namespace on a dedicated thread: [`in_netns`] for a call, [`spawn_in_netns`] for a
//! long-lived server or client. The test thread itself never changes namespace. Sockets keep the
//! namespace they were created in, wherever they are used later.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::command;
use crate::error::{Error, Result};

/// Prefix of every namespace netlab creates; nothing else is ever touched.
pub const PREFIX: &str = "gbt-";

/// Where `ip netns` keeps its bind mounts.
const NETNS_DIR: &str = "/run/netns";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/NAME`) that is deleted when dropped, also while
/// unwinding from a panic. Everything inside it (links, routes, nft tables, conntrack entries)
/// goes with it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    keep: bool,
}

impl NetNs {
    /// Creates a fresh namespace named `gbt-<pid>-<seq>-<role>`. `role` (≤ 4 characters of
    /// `[a-z0-9]`) only makes `ip netns list` readable.
    pub fn create(role: &str) -> Result<NetNs> {
        if role.is_empty()
            || role.len() > 4
            || !role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::Invalid(format!(
                "namespace role {role:?} must be 1-4 characters of [a-z0-9]"
            )));
        }
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            base36(u64::from(std::process::id())),
            base36(u64::from(seq))
        );
        command::run("ip", &["netns", "add", &name], None)?;
        let ns = NetNs { name, keep: false };
        // Loopback is down in a new namespace; servers binding [::] and local tools expect it up.
        command::ip_batch(&ns.name, &["link set lo up".to_string()])?;
        Ok(ns)
    }

    /// The namespace's name, as used by `ip -n NAME` and `ip netns exec NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the namespace in place when dropped (`ghostbuster demo --keep`); a later run's
    /// [`cleanup_leftovers`] removes it once this process has exited.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> Result<R> {
        in_netns(&self.name, f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = delete(&self.name) {
            eprintln!(
                "netlab: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

fn delete(name: &str) -> Result<()> {
    command::run("ip", &["netns", "del", name], None).map(|_| ())
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid encoded in a netlab namespace name, or `None` for names netlab did not make.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?;
    let _seq = parts.next()?;
    let _role = parts.next()?;
    u32::from_str_radix(pid, 36).ok()
}

fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Names of the netlab namespaces currently present (any owner).
pub fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io(format!("listing {NETNS_DIR}"), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name).is_some() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes netlab namespaces left behind by processes that no longer exist (a test killed by a
/// timeout, an aborted run, `--keep`). Namespaces of live processes, including this one, are
/// left alone, so parallel test binaries never remove each other's labs. Returns what it removed.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in list()? {
        match owner_pid(&name) {
            Some(pid) if pid != me && !pid_alive(pid) => match delete(&name) {
                Ok(()) => removed.push(name),
                // Another process cleaning up at the same moment got there first.
                Err(_) if !PathBuf::from(NETNS_DIR).join(&name).exists() => {}
                Err(e) => return Err(e),
            },
            _ => {}
        }
    }
    Ok(removed)
}

/// Deletes every netlab namespace of *this* process: for a Ctrl-C handler, which runs while the
/// owners' destructors may never get to run.
pub fn cleanup_own() -> Result<Vec<String>> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in list()? {
        if owner_pid(&name) == Some(me) {
            match delete(&name) {
                Ok(()) => removed.push(name),
                // Its owner's destructor removed it meanwhile.
                Err(_) if !PathBuf::from(NETNS_DIR).join(&name).exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

fn open_netns(name: &str) -> Result<File> {
    let path = PathBuf::from(NETNS_DIR).join(name);
    File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Moves the calling thread into the namespace behind `file`.
fn enter(name: &str, file: &File) -> Result<()> {
    // SAFETY: `file` is an open descriptor of a network namespace bind mount for the whole call;
    // setns only changes the calling thread's namespace and touches no Rust-managed memory.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::SetNs {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` inside network namespace `name` and returns its result. A scoped thread enters the
/// namespace, runs `f` and ends, so the caller's thread never changes namespace and `f` may
/// borrow from the caller. Sockets created in `f` stay in `name`. A panic in `f` is resumed in
/// the caller.
pub fn in_netns<R: Send, F: FnOnce() -> R + Send>(name: &str, f: F) -> Result<R> {
    let file = open_netns(name)?;
    thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<R> {
            enter(name, &file)?;
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts a named thread inside namespace `name` running `f`. Returns once the thread is inside
/// the namespace, so a failing `setns` is an error here rather than a silent thread death.
pub fn spawn_in_netns<R, F>(name: &str, thread_name: &str, f: F) -> Result<NsThread<R>>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let file = open_netns(name)?;
    let (tx, rx) = mpsc::sync_channel::<Result<()>>(1);
    let ns_name = name.to_string();
    let handle = thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            let entered = enter(&ns_name, &file);
            drop(file);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            // Never run `f` outside the namespace; the error went to the spawner.
            ok.then(f)
        })
        .map_err(|e| Error::io(format!("spawning thread {thread_name}"), e))?;
    let entered = rx
        .recv()
        .map_err(|_| Error::Invalid(format!("thread {thread_name} died before entering {name}")))?;
    entered?;
    Ok(NsThread { handle })
}

/// A thread running inside a network namespace, from [`spawn_in_netns`].
#[derive(Debug)]
pub struct NsThread<R> {
    handle: JoinHandle<Option<R>>,
}

impl<R> NsThread<R> {
    /// Waits for the thread; `Err` carries its panic payload.
    pub fn join(self) -> thread::Result<R> {
        match self.handle.join()? {
            Some(r) => Ok(r),
            // Unreachable in practice: spawn_in_netns only returns a handle after setns worked.
            None => Err(Box::new(
                "netlab: namespace thread did not run (setns failed)",
            )),
        }
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_the_pid() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        let name = format!("{PREFIX}{}-7-node", base36(4_194_304));
        assert_eq!(owner_pid(&name), Some(4_194_304));
        assert!(name.len() <= 16);
        assert_eq!(owner_pid("gbt-probe"), None);
        assert_eq!(owner_pid("other-1-2-x"), None);
    }
}
