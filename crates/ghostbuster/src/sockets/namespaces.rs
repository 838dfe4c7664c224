//! The network namespaces of this node, the way a node shows them: the node's own, the ones
//! pinned under `/run/netns` (containerd and CRI-O pin pod sandboxes there; so does `ip netns`),
//! and those of the processes in `/proc` — deduplicated by the namespace's inode, each with the
//! addresses configured in it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::diag::DiagSocket;
use super::AddressMap;

/// A network namespace, by its nsfs inode (stable while the namespace lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    fn of(path: &Path) -> Option<NamespaceId> {
        let m = std::fs::metadata(path).ok()?;
        Some(NamespaceId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The namespaces found at the last [`Namespaces::scan`], and who holds which address.
#[derive(Debug)]
pub struct Namespaces {
    /// The node's namespace (a name under /run/netns or a path); `None`: the agent's own.
    node: Option<String>,
    paths: HashMap<NamespaceId, PathBuf>,
    by_addr: AddressMap,
}

impl Namespaces {
    pub fn new(node: Option<String>) -> Namespaces {
        Namespaces {
            node,
            paths: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }

    /// Looks for every namespace again and reads the addresses of each.
    pub fn scan(&mut self) {
        let node = match &self.node {
            Some(n) => ctnetlink::netns::path_of(n),
            None => PathBuf::from("/proc/self/ns/net"),
        };
        let mut candidates = vec![node];
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            candidates.extend(dir.flatten().map(|e| e.path()));
        }
        if let Ok(dir) = std::fs::read_dir("/proc") {
            candidates.extend(
                dir.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .map(|e| e.path().join("ns/net")),
            );
        }
        let mut paths: HashMap<NamespaceId, PathBuf> = HashMap::new();
        for p in candidates {
            if let Some(id) = NamespaceId::of(&p) {
                paths.entry(id).or_insert(p);
            }
        }
        let mut by_addr: AddressMap = HashMap::new();
        for (id, path) in &paths {
            let Some(name) = path.to_str() else { continue };
            let Ok(addrs) = crate::local_addrs::of(Some(name)) else {
                continue;
            };
            // Loopback is in every namespace: never a client's identity.
            for a in addrs.into_iter().filter(|a| !a.is_loopback()) {
                by_addr.entry(a).or_default().push(*id);
            }
        }
        self.paths = paths;
        self.by_addr = by_addr;
    }

    /// The namespaces that hold `ip`.
    pub fn holding(&self, ip: &IpAddr) -> Vec<NamespaceId> {
        self.by_addr.get(ip).cloned().unwrap_or_default()
    }

    pub fn ids(&self) -> HashSet<NamespaceId> {
        self.paths.keys().copied().collect()
    }

    /// A `sock_diag` socket of the namespace `id`.
    pub fn open_diag_in(&self, id: NamespaceId) -> std::io::Result<DiagSocket> {
        let path = self
            .paths
            .get(&id)
            .and_then(|p| p.to_str())
            .ok_or_else(|| std::io::Error::other("the namespace is gone"))?
            .to_string();
        // The namespace may have been replaced at that path since the scan: check it.
        if NamespaceId::of(Path::new(&path)) != Some(id) {
            return Err(std::io::Error::other("the namespace is gone"));
        }
        ctnetlink::netns::run_in(&path, DiagSocket::open).map_err(std::io::Error::other)?
    }
}
