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

/// How many datagrams (one event each) one [`EventSocket::recv`] reads at most, in one
/// `recvmmsg(2)`.
const DATAGRAMS_PER_RECV: usize = crate::socket::RECV_MANY_MAX;

/// The receive slot of one datagram. The kernel sends each conntrack event as a datagram of its
/// own, sized by `ctnetlink_nlmsg_size()` (net/netfilter/nf_conntrack_netlink.c): headers, three
/// tuples, status, timeout, counters, timestamps, protocol info, helper name, mark, zone, labels
/// and the security context. An event carries no more than a dump's entry (270–400 bytes as
/// captured in `tests/fixtures`; the IPv4 events the kernel tests read are 160–190 bytes, and
/// they check that events stay under 1 KiB), and well under 1 KiB with every attribute; only a
/// security context (an LSM label string) has no fixed bound. 8 KiB is netlink's own message-size convention (`NLMSG_GOODSIZE` is at most 8 KiB,
/// libmnl's `MNL_SOCKET_BUFFER_SIZE` is 8 KiB), so a datagram that does not fit is one no
/// netlink reader is sized for; it is counted as malformed and skipped, never read past its
/// slot. Only the pages the kernel writes are ever touched: one per slot in practice, so the
/// 512 KiB buffer costs about 256 KiB of memory once 64 datagrams have arrived at once.
const SLOT: usize = 8 * 1024;

/// After a batch read found at most one datagram waiting, this many reads ask for one datagram
/// only; the next asks for a batch again. A batch read that empties the queue tries once more
/// for a datagram that is not there (`MSG_WAITFORONE` reads on until the kernel's queue is
/// empty), which costs about as much as reading one; a reader that keeps up with a steady
/// stream of events finds one waiting at each read and would pay that at every event.
const SINGLE_READS_WHEN_IDLE: u8 = 7;

/// A subscription to conntrack events in one network namespace.
#[derive(Debug)]
pub struct EventSocket {
    /// Shared (weakly) with [`EventFilterHandle`]s, which only ever set socket options on it.
    sock: Arc<Socket>,
    /// [`DATAGRAMS_PER_RECV`] slots of [`SLOT`] bytes.
    rx: Vec<u8>,
    /// The length of the datagram in each slot, as the last read left them.
    lens: [usize; DATAGRAMS_PER_RECV],
    /// Reads left that ask for one datagram ([`SINGLE_READS_WHEN_IDLE`]).
    single_reads: u8,
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
            rx: vec![0; DATAGRAMS_PER_RECV * SLOT],
            lens: [0; DATAGRAMS_PER_RECV],
            single_reads: 0,
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

    /// Reads the events already queued, up to 64 datagrams (one event each) in one system
    /// call, and hands each to `f` in the order the kernel sent them. Blocks (up to the timeout,
    /// [`set_timeout`](Self::set_timeout)) only until the first event arrives, never to wait for
    /// more. Returns the number of events, 0 when the timeout expired. Malformed events are
    /// skipped (counted in the second value), and so is a datagram too large for its 8 KiB
    /// receive slot (a conntrack event is under 1 KiB).
    ///
    /// While events trickle in no faster than they are read (each read finds at most one
    /// waiting), 7 reads out of 8 ask for a single event: asking for more than is queued costs
    /// the kernel a wasted attempt. Once a read finds several waiting, or events were lost (a
    /// burst), every read asks for 64 until one finds at most one waiting again.
    ///
    /// [`Error::EventsLost`] says that the kernel dropped events since the last call (the
    /// receive buffer overflowed). It never costs events already read: when the kernel drops
    /// events while this call is reading, the events read before are handed to `f` and returned
    /// now, and the loss is reported by the next call (the kernel keeps the error for it). Events
    /// still queued when the loss is reported are delivered by the calls after it.
    pub fn recv<F>(&mut self, f: F) -> Result<(usize, usize)>
    where
        F: FnMut(EventKind, &Flow),
    {
        let ask = if self.single_reads > 0 {
            self.single_reads -= 1;
            1
        } else {
            DATAGRAMS_PER_RECV
        };
        let n = match self.read(ask) {
            Ok(n) => n,
            Err(e) => {
                self.single_reads = 0;
                return Err(e);
            }
        };
        if ask > 1 && n <= 1 {
            self.single_reads = SINGLE_READS_WHEN_IDLE;
        }
        Ok(parse_slots(&self.rx, SLOT, &self.lens[..n], f))
    }

    /// Reads up to `max` datagrams into the first slots; returns how many arrived.
    fn read(&mut self, max: usize) -> Result<usize> {
        if max != 1 {
            return self
                .sock
                .recv_many(&mut self.rx, SLOT, &mut self.lens[..max])
                .map_err(recv_error);
        }
        // One: plain recv(2), a little cheaper than recvmmsg(2) (no message header to copy in
        // and out), with the same outcome.
        match self.sock.recv_trunc(&mut self.rx[..SLOT]) {
            Ok(len) => {
                self.lens[0] = len;
                Ok(1)
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
            Err(e) => Err(recv_error(e)),
        }
    }
}

/// Hands each event of the datagrams in `rx`'s first `lens.len()` slots of `slot` bytes (datagram
/// `i` is `lens[i]` bytes long) to `f`, in order. A datagram longer than its slot was truncated
/// by the kernel: it counts as one malformed event and is skipped, since parsing its start could
/// hand `f` an event whose attributes were cut off.
fn parse_slots<F>(rx: &[u8], slot: usize, lens: &[usize], mut f: F) -> (usize, usize)
where
    F: FnMut(EventKind, &Flow),
{
    let (mut events, mut bad) = (0, 0);
    for (slot, &len) in rx.chunks_exact(slot).zip(lens) {
        let Some(datagram) = slot.get(..len) else {
            bad += 1;
            continue;
        };
        let (e, b) = parse_events(datagram, &mut f);
        events += e;
        bad += b;
    }
    (events, bad)
}

/// The error of a failed event read: ENOBUFS is lost events, the rest an I/O error.
fn recv_error(e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOBUFS) => Error::EventsLost,
        _ => crate::conntrack::io_to_error("read conntrack events", e),
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

    /// Joins (`true`) or leaves the DESTROY group. While no socket listens to it, the kernel
    /// builds no DESTROY message at all: a batch of deletes costs a third as much.
    pub fn set_destroy_events(&self, on: bool) -> Result<()> {
        let sock = self.socket(OP_MEMBERSHIP)?;
        if on {
            sock.add_membership(NFNLGRP_CONNTRACK_DESTROY)
        } else {
            sock.drop_membership(NFNLGRP_CONNTRACK_DESTROY)
        }
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
const OP_MEMBERSHIP: &str = "change the conntrack event subscription";

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
    use crate::test_fixtures::{fixture, flow};

    /// The policy of [`EventSocket::recv`]: 64 at a time while several wait, one at a time (7
    /// reads of 8) once reads find at most one.
    #[test]
    fn reads_take_one_event_while_idle_and_64_once_several_wait() {
        use crate::test_kernel::{root_or_skip, ThrowawayNs};
        use crate::{Conntrack, NewFlow, Tuple, IPPROTO_UDP};
        if !root_or_skip("reads_take_one_event_while_idle_and_64_once_several_wait") {
            return;
        }
        let ns = ThrowawayNs::new("gbmm");
        let mut ct = Conntrack::open_in(Some(&ns.0)).expect("open conntrack");
        let mut ev =
            EventSocket::open_in(Some(&ns.0), EventGroups::NEW, 1 << 20).expect("subscribe");
        ev.set_timeout(Some(Duration::from_millis(50))).unwrap();
        let flows = |from: u16, n: u16| -> Vec<NewFlow> {
            (from..from + n)
                .map(|port| {
                    let t = Tuple::ports(
                        "192.0.2.1".parse().unwrap(),
                        port,
                        "198.51.100.53".parse().unwrap(),
                        53,
                        IPPROTO_UDP,
                    );
                    NewFlow::established(t, None)
                })
                .collect()
        };
        let mut ports = Vec::new();
        let mut read = |ev: &mut EventSocket| {
            let (n, bad) = ev
                .recv(|_, f| ports.push(f.orig.sport().unwrap()))
                .expect("read");
            assert_eq!(bad, 0);
            n
        };
        // A fresh socket asks for 64: a burst may be waiting.
        assert_eq!(ct.create(&flows(1000, 100)).unwrap().created, 100);
        assert_eq!(read(&mut ev), 64);
        // Each NEW event is its own datagram, far from filling its slot.
        let (least, most) = (ev.lens.iter().min(), ev.lens.iter().max());
        eprintln!("NEW events of UDP entries: {least:?} to {most:?} bytes");
        assert!(
            ev.lens.iter().all(|l| (100..1024).contains(l)),
            "{:?}",
            ev.lens
        );
        assert_eq!(read(&mut ev), 36);
        // That read found fewer than 64 but several: the next asks for 64 again, and finds none.
        assert_eq!(read(&mut ev), 0);
        // Idle: one at a time, 7 reads, then 64 again.
        assert_eq!(ct.create(&flows(2000, 100)).unwrap().created, 100);
        let per_read: Vec<usize> = (0..10).map(|_| read(&mut ev)).collect();
        assert_eq!(per_read, [1, 1, 1, 1, 1, 1, 1, 64, 29, 0]);
        // A loss switches to batches at once.
        assert_eq!(read(&mut ev), 0, "idle: one at a time next");
        ev.sock.set_rcvbuf(16 << 10);
        assert_eq!(ct.create(&flows(3000, 2000)).unwrap().created, 2000);
        assert!(matches!(ev.recv(|_, _| {}), Err(Error::EventsLost)));
        assert!(read(&mut ev) > 1, "a batch after the loss");
        let want: Vec<u16> = (1000..1100).chain(2000..2100).collect();
        assert_eq!(ports[..200], want[..], "in order");
        assert_eq!(ports[200], 3000, "the first queued after the idle reads");
    }

    #[test]
    fn slots_are_parsed_in_order_and_a_truncated_datagram_is_skipped() {
        let names = [
            "ipv4-tcp-dnat-established.bin",
            "ipv6-udp-unreplied.bin",
            "ipv6-tcp-dnat-established.bin",
            "ipv4-icmp-echo.bin",
        ];
        const SLOT: usize = 512;
        let mut rx = vec![0u8; 5 * SLOT];
        let mut lens = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let bytes = fixture(name);
            rx[i * SLOT..][..bytes.len()].copy_from_slice(&bytes);
            lens.push(bytes.len());
        }
        // The third did not fit its slot (the kernel reported its real length).
        lens[2] = SLOT + 1;
        let mut seen = Vec::new();
        let (events, bad) = parse_slots(&rx, SLOT, &lens, |_, f| seen.push(*f));
        assert_eq!((events, bad), (3, 1));
        let want: Vec<Flow> = [0, 1, 3].iter().map(|&i| flow(names[i])).collect();
        assert_eq!(seen, want);
        // Only the slots named by `lens` are read.
        assert_eq!(parse_slots(&rx, SLOT, &lens[..1], |_, _| {}), (1, 0));
        assert_eq!(parse_slots(&rx, SLOT, &[], |_, _| {}), (0, 0));
    }

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
