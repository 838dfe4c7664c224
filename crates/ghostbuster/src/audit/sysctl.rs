//! Reading a namespace's conntrack sysctls.
//!
//! `/proc/sys/net` shows the network namespace of the thread that *opens* the file, and
//! `/proc/thread-self/net` that of the thread itself (`/proc/self/net` would follow the process's
//! main thread). So for another namespace every file is opened on a thread that has `setns()`ed
//! into it ([`ctnetlink::netns::run_in`]); the calling thread never moves.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where the conntrack sysctls live (`net.netfilter.*`).
pub const DIR: &str = "/proc/sys/net/netfilter";
/// Per-CPU statistics file (absent without CONFIG_NF_CONNTRACK_PROCFS), of the reading thread's
/// namespace.
pub const PROC_STAT: &str = "/proc/thread-self/net/stat/nf_conntrack";

/// Every sysctl the audit reads, by short name.
pub const KEYS: &[&str] = &[
    "nf_conntrack_max",
    "nf_conntrack_count",
    "nf_conntrack_buckets",
    "nf_conntrack_tcp_be_liberal",
    "nf_conntrack_tcp_loose",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_udp_timeout",
    "nf_conntrack_udp_timeout_stream",
    "nf_conntrack_timestamp",
    "nf_conntrack_acct",
    "nf_conntrack_events",
];

/// What was read in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// Values by short name; absent sysctls are missing.
    pub values: BTreeMap<String, u64>,
    /// `/proc/net/stat/nf_conntrack` exists.
    pub proc_stat: bool,
    /// Sysctls that exist but could not be read or parsed: (name, what went wrong).
    pub unreadable: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no conntrack sysctls in {where_}: {dir}/nf_conntrack_max does not exist, so this kernel has no connection tracking loaded: load it with `modprobe nf_conntrack` (needs CONFIG_NF_CONNTRACK)")]
    NoConntrack { dir: PathBuf, where_: String },
    #[error(transparent)]
    Netns(ctnetlink::Error),
}

/// Reads the audited sysctls under `dir` (normally [`DIR`]) and whether `proc_stat` exists, on
/// the calling thread.
pub fn read_at(dir: &Path, proc_stat: &Path) -> Reading {
    let mut r = Reading {
        proc_stat: proc_stat.exists(),
        ..Reading::default()
    };
    for key in KEYS {
        match std::fs::read_to_string(dir.join(key)) {
            Ok(text) => match parse_value(&text) {
                Some(v) => {
                    r.values.insert((*key).to_string(), v);
                }
                None => r.unreadable.push((
                    (*key).to_string(),
                    format!("not a number: {:?}", text.trim()),
                )),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => r.unreadable.push(((*key).to_string(), e.to_string())),
        }
    }
    r
}

/// A sysctl's text as an unsigned integer (`"432000\n"`).
pub fn parse_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Reads the namespace's conntrack sysctls: the caller's namespace, or `netns` (a name under
/// `/run/netns` or a path) entered on a separate thread. Fails when conntrack is not loaded.
pub fn read(netns: Option<&str>) -> Result<Reading, Error> {
    let reading = match netns {
        None => read_at(Path::new(DIR), Path::new(PROC_STAT)),
        Some(name) => {
            ctnetlink::netns::run_in(name, || read_at(Path::new(DIR), Path::new(PROC_STAT)))
                .map_err(Error::Netns)?
        }
    };
    require_conntrack(reading, Path::new(DIR), netns)
}

/// Turns a reading without `nf_conntrack_max` into [`Error::NoConntrack`].
pub fn require_conntrack(
    reading: Reading,
    dir: &Path,
    netns: Option<&str>,
) -> Result<Reading, Error> {
    if reading.values.contains_key("nf_conntrack_max") {
        return Ok(reading);
    }
    Err(Error::NoConntrack {
        dir: dir.to_path_buf(),
        where_: match netns {
            Some(n) => format!("network namespace {n:?}"),
            None => "this network namespace".to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gb-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_sysctl_text() {
        assert_eq!(parse_value("432000\n"), Some(432_000));
        assert_eq!(parse_value(" 2 "), Some(2));
        assert_eq!(parse_value("-1\n"), None);
        assert_eq!(parse_value(""), None);
        assert_eq!(parse_value("1\t2"), None);
    }

    #[test]
    fn reads_present_keys_and_skips_absent_ones() {
        let d = temp_dir("read");
        std::fs::write(d.join("nf_conntrack_max"), "262144\n").unwrap();
        std::fs::write(d.join("nf_conntrack_tcp_be_liberal"), "0\n").unwrap();
        std::fs::write(d.join("nf_conntrack_udp_timeout"), "soon\n").unwrap();
        std::fs::write(d.join("stat"), "").unwrap();
        let r = read_at(&d, &d.join("stat"));
        assert!(r.proc_stat);
        assert_eq!(r.values.get("nf_conntrack_max"), Some(&262_144));
        assert_eq!(r.values.get("nf_conntrack_tcp_be_liberal"), Some(&0));
        assert_eq!(r.values.get("nf_conntrack_events"), None);
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.unreadable.len(), 1);
        assert_eq!(r.unreadable[0].0, "nf_conntrack_udp_timeout");
        assert!(require_conntrack(r, &d, None).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_kernel_without_conntrack_is_a_clear_error() {
        let d = temp_dir("none");
        let r = read_at(&d.join("missing"), &d.join("missing-stat"));
        assert!(!r.proc_stat);
        assert!(r.values.is_empty());
        let e = require_conntrack(r, Path::new(DIR), Some("blue")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("modprobe nf_conntrack"), "{msg}");
        assert!(msg.contains("\"blue\""), "{msg}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_namespace_is_an_environment_error() {
        let e = read(Some("/nonexistent/ghostbuster-audit-ns")).unwrap_err();
        match e {
            Error::Netns(inner) => assert!(inner.is_environment(), "{inner}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
