//! Ending the client's socket of a removed ghost (`agent --terminate-sockets`).
//!
//! Removing a ghost's conntrack entry helps a client that *sends*: its next packet is DNAT'd to a
//! live backend (or refused). A client that waits to *read* — a gRPC stream, an idle pooled
//! connection — still waits on a dead backend until its keepalive fires, minutes later. When the
//! client is a socket on this node (in a pod's network namespace, or the host's), the agent can
//! end it at once: `SOCK_DESTROY` makes a blocked `read()` return `ECONNABORTED`.
//!
//! Rules, each one a way to never end a healthy socket:
//! - only for a flow the sweep *deleted* (never a kept verdict), TCP or **connected** UDP;
//! - the socket is found by the flow's original tuple, client side (client address and port →
//!   the Service address and port it connected to), with an exact lookup — never a dump;
//! - a UDP answer must be connected to exactly that tuple (an unconnected socket matches the
//!   lookup by its port alone: a DNS server's socket must never be ended), and the destroy names
//!   the socket's cookie, so it can only end the socket that was checked;
//! - the client's namespace is the one that holds the client address: the namespaces pinned
//!   under `/run/netns` (containerd and CRI-O pin pod sandboxes there) and those of the
//!   processes in `/proc`, deduplicated by inode; the node's own (the agent's, or `--netns`) for
//!   a client at a node address. An address held by several namespaces with a matching socket in
//!   more than one is ambiguous: nothing is ended;
//! - right before the destroy, the node's conntrack table is read by the flow's original tuple: an
//!   entry there that a *different* backend answered means the socket works again (its next
//!   packet was DNAT'd to a live backend, or a new socket reuses the client port): left alone. A
//!   read that fails ends nothing.

pub mod diag;
mod namespaces;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, Flow, Lookup, Status};

use self::diag::{DiagSocket, Found, SockId};
pub use self::namespaces::{NamespaceId, Namespaces};

/// What ending a removed flow's client socket came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ended {
    /// The socket was destroyed: its reader got `ECONNABORTED`.
    Destroyed,
    /// No socket has the tuple (closed already, or the client is not on this node).
    NoSocket,
    /// A UDP socket matched only by its port (not connected to the tuple): left alone.
    Unconnected,
    /// No network namespace on this node holds the client address.
    NoNamespace,
    /// Sockets with the tuple in more than one namespace: left alone.
    Ambiguous,
    /// The client's tuple has a new entry that another backend answered: the socket works
    /// again (its next packet found a live backend, or a new socket reuses the port): left alone.
    Recovered,
    /// Not TCP or UDP.
    NotApplicable,
    /// The kernel refused (the errno), or a namespace could not be entered.
    Failed,
}

impl Ended {
    /// The label of `ghostbuster_sockets_terminated_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            Ended::Destroyed => "destroyed",
            Ended::NoSocket => "no_socket",
            Ended::Unconnected => "unconnected",
            Ended::NoNamespace => "no_namespace",
            Ended::Ambiguous => "ambiguous",
            Ended::Recovered => "recovered",
            Ended::NotApplicable => "not_applicable",
            Ended::Failed => "failed",
        }
    }

    pub const ALL: [Ended; 8] = [
        Ended::Destroyed,
        Ended::NoSocket,
        Ended::Unconnected,
        Ended::NoNamespace,
        Ended::Ambiguous,
        Ended::Recovered,
        Ended::NotApplicable,
        Ended::Failed,
    ];
}

/// The client side of a flow: its original tuple as the client's socket sees it.
pub fn client_side(f: &Flow) -> Option<SockId> {
    let protocol = f.orig.proto;
    if protocol != 6 && protocol != 17 {
        return None;
    }
    Some(SockId {
        protocol,
        local: f.orig.src,
        local_port: f.orig.sport()?,
        remote: f.orig.dst,
        remote_port: f.orig.dport()?,
    })
}

/// How often the namespaces are looked for again when an address is not found.
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// Ends client sockets; keeps one `sock_diag` socket per namespace and the map from addresses to
/// namespaces (rebuilt when an address is missing, at most every [`RESCAN_EVERY`]).
pub struct Terminator {
    node: Option<String>,
    conntrack: Option<Conntrack>,
    namespaces: Namespaces,
    sockets: HashMap<NamespaceId, DiagSocket>,
    last_scan: Option<Instant>,
}

impl Terminator {
    /// `node`: the node's namespace (`None`: the agent's own).
    pub fn new(node: Option<String>) -> Terminator {
        Terminator {
            conntrack: None,
            namespaces: Namespaces::new(node.clone()),
            node,
            sockets: HashMap::new(),
            last_scan: None,
        }
    }

    /// Ends the client socket of the removed flow `f`, if it is on this node.
    pub fn end(&mut self, f: &Flow) -> Ended {
        let Some(want) = client_side(f) else {
            return Ended::NotApplicable;
        };
        let mut holders = self.namespaces.holding(&want.local);
        if holders.is_empty() && self.may_rescan() {
            self.rescan();
            holders = self.namespaces.holding(&want.local);
        }
        if holders.is_empty() {
            return Ended::NoNamespace;
        }
        let mut matches: Vec<(NamespaceId, Found)> = Vec::new();
        let mut unconnected = false;
        for ns in holders {
            match self.find_in(ns, &want) {
                Ok(Some(found)) if found.is_connected_to(&want) => matches.push((ns, found)),
                Ok(Some(_)) => unconnected = true,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "looking for a client socket failed");
                    return Ended::Failed;
                }
            }
        }
        match matches.as_slice() {
            [] if unconnected => Ended::Unconnected,
            [] => Ended::NoSocket,
            [(ns, found)] => match self.answered_elsewhere(f) {
                Ok(true) => Ended::Recovered,
                Ok(false) => self.destroy(*ns, found),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the client's conntrack entry failed");
                    Ended::Failed
                }
            },
            _ => Ended::Ambiguous,
        }
    }

    /// Whether the table now holds an entry with the flow's original tuple that a backend other
    /// than the flow's answered.
    fn answered_elsewhere(&mut self, f: &Flow) -> ctnetlink::Result<bool> {
        if self.conntrack.is_none() {
            self.conntrack = Some(Conntrack::open_in(self.node.as_deref())?);
        }
        let ct = self.conntrack.as_mut().expect("opened above");
        let now = ct.get_original(&[(f.orig, f.zone)])?;
        Ok(match now.first() {
            Some(Lookup::Found(g)) => {
                g.reply.src != f.reply.src && g.status.contains(Status::SEEN_REPLY)
            }
            Some(Lookup::Failed(errno)) => {
                return Err(ctnetlink::Error::Io {
                    op: "read the client's conntrack entry",
                    source: std::io::Error::from_raw_os_error(*errno),
                })
            }
            _ => false,
        })
    }

    fn destroy(&mut self, ns: NamespaceId, found: &Found) -> Ended {
        match self.socket(ns).and_then(|s| s.destroy(found)) {
            Ok(true) => Ended::Destroyed,
            Ok(false) => Ended::NoSocket,
            Err(e) => {
                tracing::debug!(error = %e, "destroying a client socket failed");
                Ended::Failed
            }
        }
    }

    fn may_rescan(&self) -> bool {
        self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.namespaces.scan();
        // Sockets of namespaces that are gone hold them open: drop them.
        let live = self.namespaces.ids();
        self.sockets.retain(|id, _| live.contains(id));
    }

    fn socket(&mut self, ns: NamespaceId) -> std::io::Result<&mut DiagSocket> {
        if !self.sockets.contains_key(&ns) {
            let s = self.namespaces.open_diag_in(ns)?;
            self.sockets.insert(ns, s);
        }
        Ok(self.sockets.get_mut(&ns).expect("inserted above"))
    }

    fn find_in(&mut self, ns: NamespaceId, want: &SockId) -> std::io::Result<Option<Found>> {
        self.socket(ns)?.find(want)
    }
}

/// Namespaces keyed by address, for the reasons above; `IpAddr` → the namespaces holding it.
pub type AddressMap = HashMap<IpAddr, Vec<NamespaceId>>;
