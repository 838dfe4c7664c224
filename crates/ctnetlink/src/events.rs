//! Conntrack events: NEW, UPDATE and DESTROY as they happen.
//!
//! Events are lossy by design: when the receive buffer overflows the kernel drops messages and
//! the next read fails with ENOBUFS. That is reported as [`Error::EventsLost`] — the only correct
//! reaction is one full dump to resynchronise, and the socket stays usable.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::consts::*;
use crate::error::{Error, Result};
use crate::flow::{parse_flow, Flow};
use crate::nl::*;
use crate::socket::Socket;

/// Which events to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGroups {
    pub new: bool,
    pub update: bool,
    pub destroy: bool,
}

impl EventGroups {
    pub const ALL: EventGroups = EventGroups {
        new: true,
        update: true,
        destroy: true,
    };
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

/// A subscription to conntrack events in one network namespace.
#[derive(Debug)]
pub struct EventSocket {
    sock: Socket,
    rx: Vec<u8>,
    rcvbuf: usize,
}

impl EventSocket {
    /// Subscribes in the named namespace (or the caller's). `rcvbuf` is the receive buffer to ask
    /// for: bigger buffers lose fewer events under bursts.
    pub fn open_in(netns: Option<&str>, groups: EventGroups, rcvbuf: usize) -> Result<Self> {
        let sock = match netns {
            None => Socket::new()?,
            Some(name) => crate::netns::run_in(name, Socket::new)?,
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
            sock,
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

    /// Reads one datagram and hands each event in it to `f`. Returns the number of events, 0 when
    /// the timeout expired. Malformed events are skipped (counted in the second value).
    pub fn recv<F>(&mut self, mut f: F) -> Result<(usize, usize)>
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
        let (mut events, mut bad) = (0, 0);
        for m in Messages::new(&self.rx[..n]) {
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
        Ok((events, bad))
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
