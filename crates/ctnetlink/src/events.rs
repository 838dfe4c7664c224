//! Conntrack events: NEW, UPDATE and DESTROY as they happen.
//!
//! Events are lossy by design: when the receive buffer overflows the kernel drops messages and
//! the next read fails with ENOBUFS. That is reported as [`Error::EventsLost`] — the only correct
//! reaction is one full dump to resynchronise, and the socket stays usable.
//!
//! A listener that only cares about flows toward a few backends can have the kernel drop every
//! other event before it is queued ([`EventSocket::set_reply_src_filter`], a classic BPF socket
//! filter built by [`crate::bpf`]): no wake-up, no copy, no buffer space for the rest. One that
//! indexes every DNAT'd flow can have the kernel drop the events of flows that were not DNAT'd
//! ([`EventSocket::set_dnat_filter`]). The filter can be changed from another thread while one is
//! blocked in [`EventSocket::recv`], through an [`EventFilterHandle`].

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::consts::*;
use crate::error::{Error, Result};
use crate::flow::{parse_flow, Flow};
use crate::nl::*;
use crate::socket::Socket;

/// Which events to receive: a set of groups, combined with `|`
/// (`EventGroups::NEW | EventGroups::DESTROY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EventGroups {
    /// New entries.
    pub new: bool,
    /// Changes of existing entries.
    pub update: bool,
    /// Removed entries.
    pub destroy: bool,
}

impl EventGroups {
    /// No event.
    pub const NONE: EventGroups = EventGroups {
        new: false,
        update: false,
        destroy: false,
    };
    /// New entries only.
    pub const NEW: EventGroups = EventGroups {
        new: true,
        ..Self::NONE
    };
    /// Changes only.
    pub const UPDATE: EventGroups = EventGroups {
        update: true,
        ..Self::NONE
    };
    /// Removals only.
    pub const DESTROY: EventGroups = EventGroups {
        destroy: true,
        ..Self::NONE
    };
    /// Every event.
    pub const ALL: EventGroups = EventGroups {
        new: true,
        update: true,
        destroy: true,
    };
}

impl std::ops::BitOr for EventGroups {
    type Output = EventGroups;
    fn bitor(self, rhs: EventGroups) -> EventGroups {
        EventGroups {
            new: self.new || rhs.new,
            update: self.update || rhs.update,
            destroy: self.destroy || rhs.destroy,
        }
    }
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// An entry was created.
    New,
    /// An entry changed (status, state, ...).
    Update,
    /// An entry was removed.
    Destroy,
}

/// What a filter update left on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterApplied {
    /// A program of this many instructions lets through only the events it was built for (the
    /// set's backends, or DNAT'd flows) and every message that is not a conntrack event.
    Filtered {
        /// The program's length.
        instructions: usize,
    },
    /// The set was too large for one program ([`crate::bpf::MAX_ADDRESSES`] or
    /// [`crate::bpf::MAX_INSNS`]): no filter, every event arrives.
    Unfiltered,
}

/// A subscription to conntrack events in one network namespace.
#[derive(Debug)]
pub struct EventSocket {
    /// Shared (weakly) with [`EventFilterHandle`]s, which only ever set socket options on it.
    sock: Arc<Socket>,
    rx: Vec<u8>,
    rcvbuf: usize,
}

impl EventSocket {
    /// Subscribes in the named namespace (or the caller's). `rcvbuf` is the receive buffer to ask
    /// for: bigger buffers lose fewer events under bursts.
    pub fn open_in(netns: Option<&str>, groups: EventGroups, rcvbuf: usize) -> Result<Self> {
        let sock = match netns {
            None => Socket::new()?,
            Some(name) => crate::netns::run_in(name, Socket::new)??,
        };
        if groups.new {
            sock.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        }
        if groups.update {
            sock.add_membership(NFNLGRP_CONNTRACK_UPDATE)?;
        }
        if groups.destroy {
            sock.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
        }
        let rcvbuf = sock.set_rcvbuf(rcvbuf);
        Ok(EventSocket {
            sock: Arc::new(sock),
            rx: vec![0; 64 * 1024],
            rcvbuf,
        })
    }

    /// The receive buffer the kernel granted.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Bounds each [`recv`](Self::recv); `None` blocks.
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.sock.set_recv_timeout(t)
    }

    /// Lets through only the NEW/UPDATE/DESTROY events whose reply source (a DNAT'd flow's
    /// backend) is in `addrs`, replacing any previous filter atomically. An empty set drops every
    /// event; a set too large for one program removes the filter instead
    /// ([`FilterApplied::Unfiltered`]). Events already queued stay queued.
    ///
    /// The filter is an optimisation, never the only check: events it cannot read (malformed,
    /// unknown family) are let through, and every event received should still be judged.
    /// When attaching fails the socket is left without a filter (every event arrives) rather
    /// than with a stale one, and the error says so.
    pub fn set_reply_src_filter<I>(&self, addrs: I) -> Result<FilterApplied>
    where
        I: IntoIterator<Item = IpAddr>,
    {
        apply_reply_src_filter(&self.sock, addrs)
    }

    /// Lets through only the NEW/UPDATE/DESTROY events of DNAT'd flows (status
    /// [`Status::DST_NAT`](crate::Status::DST_NAT): kube-proxy's Service flows), replacing any
    /// previous filter atomically. Always [`FilterApplied::Filtered`] when it succeeds. Events
    /// already queued stay queued.
    ///
    /// The filter is an optimisation, never the only check: events it cannot read (no status,
    /// a malformed one) are let through, and every event received should still be judged
    /// ([`Flow::is_dnat`]). When attaching fails the socket is left without a filter (every event
    /// arrives) rather than with a stale one, and the error says so.
    pub fn set_dnat_filter(&self) -> Result<FilterApplied> {
        apply_dnat_filter(&self.sock)
    }

    /// Removes the filter: every event arrives again.
    pub fn clear_filter(&self) -> Result<()> {
        clear_filter(&self.sock)
    }

    /// A cheap, cloneable handle that changes this socket's filter from any thread, also while
    /// another thread is blocked in [`recv`](Self::recv) (the kernel swaps filters under RCU).
    /// It does not keep the socket open: once the `EventSocket` is dropped, updates fail.
    pub fn filter_handle(&self) -> EventFilterHandle {
        EventFilterHandle {
            sock: Arc::downgrade(&self.sock),
        }
    }

    /// Reads one datagram and hands each event in it to `f`. Returns the number of events, 0 when
    /// the timeout expired. Malformed events are skipped (counted in the second value).
    pub fn recv<F>(&mut self, f: F) -> Result<(usize, usize)>
    where
        F: FnMut(EventKind, &Flow),
    {
        const OP: &str = "read conntrack events";
        let n = match self.sock.recv(&mut self.rx) {
            Ok(n) => n,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOBUFS) => Err(Error::EventsLost),
                    Some(libc::EAGAIN) => Ok((0, 0)),
                    _ => Err(crate::conntrack::io_to_error(OP, e)),
                }
            }
        };
        Ok(parse_events(&self.rx[..n], f))
    }
}

/// Hands each conntrack event of one datagram (as read from an event socket) to `f` and returns
/// the number of events and of malformed ones (skipped; framing that breaks ends the datagram).
/// Pure: what [`EventSocket::recv`] does with the bytes it reads, for captures and fuzzing.
pub fn parse_events<F>(buf: &[u8], mut f: F) -> (usize, usize)
where
    F: FnMut(EventKind, &Flow),
{
    let (mut events, mut bad) = (0, 0);
    for m in Messages::new(buf) {
        let Ok(m) = m else {
            bad += 1;
            break;
        };
        let kind = match m.header.kind {
            k if k == msg_type(IPCTNL_MSG_CT_NEW) => {
                if m.header.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 {
                    EventKind::New
                } else {
                    EventKind::Update
                }
            }
            k if k == msg_type(IPCTNL_MSG_CT_DELETE) => EventKind::Destroy,
            _ => continue,
        };
        match m.nfgen().and_then(|(g, a)| parse_flow(g.family, a)) {
            Ok(flow) => {
                events += 1;
                f(kind, &flow);
            }
            Err(_) => bad += 1,
        }
    }
    (events, bad)
}

/// Changes the filter of an [`EventSocket`] from another thread; see
/// [`EventSocket::filter_handle`].
#[derive(Debug, Clone)]
pub struct EventFilterHandle {
    /// Weak so that a forgotten handle never keeps a subscription (and its queued events) alive.
    sock: Weak<Socket>,
}

impl EventFilterHandle {
    /// Same as [`EventSocket::set_reply_src_filter`].
    pub fn set<I>(&self, addrs: I) -> Result<FilterApplied>
    where
        I: IntoIterator<Item = IpAddr>,
    {
        let sock = self.socket(OP_ATTACH)?;
        apply_reply_src_filter(&sock, addrs)
    }

    /// Same as [`EventSocket::set_dnat_filter`].
    pub fn set_dnat(&self) -> Result<FilterApplied> {
        let sock = self.socket(OP_ATTACH)?;
        apply_dnat_filter(&sock)
    }

    /// Same as [`EventSocket::clear_filter`].
    pub fn clear(&self) -> Result<()> {
        let sock = self.socket(OP_DETACH)?;
        clear_filter(&sock)
    }

    fn socket(&self, op: &'static str) -> Result<Arc<Socket>> {
        self.sock.upgrade().ok_or_else(|| Error::Io {
            op,
            source: io::Error::new(io::ErrorKind::NotConnected, "the event socket is closed"),
        })
    }
}

const OP_ATTACH: &str = "attach the conntrack event filter";
const OP_DETACH: &str = "remove the conntrack event filter";

fn apply_reply_src_filter<I>(sock: &Socket, addrs: I) -> Result<FilterApplied>
where
    I: IntoIterator<Item = IpAddr>,
{
    let Some(prog) = crate::bpf::reply_src_program(addrs) else {
        clear_filter(sock)?;
        return Ok(FilterApplied::Unfiltered);
    };
    attach_filter(sock, &prog)
}

fn apply_dnat_filter(sock: &Socket) -> Result<FilterApplied> {
    attach_filter(sock, &crate::bpf::dnat_program())
}

/// Attaches `prog` in place of the socket's filter; on failure leaves no filter at all.
fn attach_filter(sock: &Socket, prog: &[libc::sock_filter]) -> Result<FilterApplied> {
    let instructions = prog.len();
    let first = match sock.attach_filter(prog) {
        Ok(()) => return Ok(FilterApplied::Filtered { instructions }),
        Err(e) => e,
    };
    // A replacement is charged to the socket's option memory (net.core.optmem_max) while the
    // old program still is: a large program can fit alone but not next to its predecessor.
    // Detaching first lets every event through for a moment, which is safe.
    let err = if first.raw_os_error() == Some(libc::ENOMEM) {
        let retried = sock.detach_filter().and_then(|()| sock.attach_filter(prog));
        match retried {
            Ok(()) => return Ok(FilterApplied::Filtered { instructions }),
            Err(e) => e,
        }
    } else {
        first
    };
    // Never leave a stale filter behind: it could drop the events of a backend just added.
    let left = match sock.detach_filter() {
        Ok(()) => "events stay unfiltered",
        Err(_) => "the previous filter could not be removed either",
    };
    Err(Error::from_errno(
        OP_ATTACH,
        err.raw_os_error().unwrap_or(libc::EIO),
        Some(format!(
            "a program of {instructions} instructions: {left}{}",
            if err.raw_os_error() == Some(libc::ENOMEM) {
                " (net.core.optmem_max too small?)"
            } else {
                ""
            }
        )),
    ))
}

fn clear_filter(sock: &Socket) -> Result<()> {
    sock.detach_filter()
        .map_err(|e| Error::from_errno(OP_DETACH, e.raw_os_error().unwrap_or(libc::EIO), None))
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_groups_combine_with_or() {
        let g = EventGroups::NEW | EventGroups::DESTROY;
        assert!(g.new && !g.update && g.destroy);
        assert_eq!(
            EventGroups::NEW | EventGroups::UPDATE | EventGroups::DESTROY,
            EventGroups::ALL
        );
        assert_eq!(EventGroups::default(), EventGroups::NONE);
        assert_eq!(EventGroups::NONE | EventGroups::UPDATE, EventGroups::UPDATE);
    }
}
