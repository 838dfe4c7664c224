//! The netfilter netlink socket: the only module that makes syscalls (besides [`crate::netns`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::consts::NETLINK_NETFILTER;
use crate::error::{Error, Result};

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

/// A `NETLINK_NETFILTER` socket bound in the network namespace it was created in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

impl Socket {
    /// Creates and binds a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            let e = last_err();
            return Err(Error::from_errno(
                "open netfilter netlink socket",
                e.raw_os_error().unwrap_or(0),
                None,
            ));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = Socket { fd };
        // SAFETY: sockaddr_nl is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::Io {
                op: "bind netlink socket",
                source: last_err(),
            });
        }
        // Small ACKs (no echo of our request) and readable error strings; both optional.
        let _ = s.set_int(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = s.set_int(SOL_NETLINK, NETLINK_EXT_ACK, 1);
        Ok(s)
    }

    fn set_int(&self, level: i32, opt: i32, val: i32) -> io::Result<()> {
        // SAFETY: val lives across the call and the length is that of an int.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                &val as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc < 0 {
            Err(last_err())
        } else {
            Ok(())
        }
    }

    fn get_int(&self, level: i32, opt: i32) -> io::Result<i32> {
        let mut val: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as u32;
        // SAFETY: val and len are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                &mut val as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            Err(last_err())
        } else {
            Ok(val)
        }
    }

    /// Sets the receive buffer, beyond `rmem_max` when we hold CAP_NET_ADMIN. Returns the size
    /// the kernel really granted (it doubles the request for bookkeeping).
    pub fn set_rcvbuf(&self, bytes: usize) -> usize {
        let v = bytes.min(i32::MAX as usize / 2) as i32;
        if self
            .set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
            .is_err()
        {
            let _ = self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, v);
        }
        self.get_int(libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map(|v| v.max(0) as usize)
            .unwrap_or(0)
    }

    /// Sets the send buffer (a netlink message batch must fit into it).
    pub fn set_sndbuf(&self, bytes: usize) -> usize {
        let v = bytes.min(i32::MAX as usize / 2) as i32;
        if self
            .set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v)
            .is_err()
        {
            let _ = self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, v);
        }
        self.get_int(libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map(|v| v.max(0) as usize)
            .unwrap_or(0)
    }

    /// Attaches a classic BPF program (`SO_ATTACH_FILTER`). The kernel swaps it in for any
    /// previous one atomically: no message is ever judged by neither.
    pub fn attach_filter(&self, prog: &[libc::sock_filter]) -> io::Result<()> {
        let len = u16::try_from(prog.len())
            .ok()
            .filter(|n| (1..=libc::BPF_MAXINSNS as u16).contains(n))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a socket filter has 1 to {} instructions, not {}",
                        libc::BPF_MAXINSNS,
                        prog.len()
                    ),
                )
            })?;
        let fprog = libc::sock_fprog {
            len,
            // The kernel only reads the program (it copies it in); the cast is for the C type.
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at `len` valid instructions that outlive the call, and the length
        // passed is that of a sock_fprog.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if rc < 0 {
            Err(last_err())
        } else {
            Ok(())
        }
    }

    /// Removes the socket filter (`SO_DETACH_FILTER`); no filter attached is not an error.
    pub fn detach_filter(&self) -> io::Result<()> {
        match self.set_int(libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Joins a multicast group (conntrack events).
    pub fn add_membership(&self, group: u32) -> Result<()> {
        self.set_int(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as i32)
            .map_err(|e| {
                Error::from_errno(
                    "subscribe to conntrack events",
                    e.raw_os_error().unwrap_or(0),
                    None,
                )
            })
    }

    /// A receive timeout; `None` blocks forever.
    pub fn set_recv_timeout(&self, t: Option<Duration>) -> Result<()> {
        let tv = match t {
            Some(d) => libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros().max(if d.is_zero() { 0 } else { 1 })
                    as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: tv lives across the call and the length matches.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::Io {
                op: "set receive timeout",
                source: last_err(),
            });
        }
        Ok(())
    }

    /// Sends one datagram to the kernel (port id 0).
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: buf is valid for reads of buf.len() bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short netlink send",
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram. A datagram larger than `buf` is an error, not silent truncation.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "netlink datagram of {n} bytes exceeds the {} byte buffer",
                        buf.len()
                    ),
                ));
            }
            return Ok(n);
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
