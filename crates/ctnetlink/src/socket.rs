//! The netfilter netlink socket: the only module that makes syscalls (besides [`crate::netns`]).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::consts::NETLINK_NETFILTER;
use crate::error::{Error, Result};

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_DROP_MEMBERSHIP: i32 = 2;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

/// The most datagrams one [`Socket::recv_many`] reads: its message headers live on the stack.
pub const RECV_MANY_MAX: usize = 64;

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
        self.membership(
            NETLINK_ADD_MEMBERSHIP,
            group,
            "subscribe to conntrack events",
        )
    }

    /// Leaves a multicast group.
    pub fn drop_membership(&self, group: u32) -> Result<()> {
        self.membership(
            NETLINK_DROP_MEMBERSHIP,
            group,
            "unsubscribe from conntrack events",
        )
    }

    fn membership(&self, option: i32, group: u32, op: &'static str) -> Result<()> {
        self.set_int(SOL_NETLINK, option, group as i32)
            .map_err(|e| Error::from_errno(op, e.raw_os_error().unwrap_or(0), None))
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
        let n = self.recv_trunc(buf)?;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "netlink datagram of {n} bytes exceeds the {} byte buffer",
                    buf.len()
                ),
            ));
        }
        Ok(n)
    }

    /// Receives one datagram and returns its real length (`MSG_TRUNC`): more than `buf.len()`
    /// when it did not fit, and then `buf` holds its first `buf.len()` bytes only.
    pub fn recv_trunc(&self, buf: &mut [u8]) -> io::Result<usize> {
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
            return Ok(n as usize);
        }
    }

    /// Receives up to `lens.len()` datagrams (at most [`RECV_MANY_MAX`], and as many as `buf`
    /// has slots of `slot` bytes) in one `recvmmsg(2)`: datagram `i` lands in
    /// `buf[i * slot..(i + 1) * slot]` and its length in `lens[i]`. Returns how many arrived.
    ///
    /// Blocks (up to the socket's receive timeout, [`set_recv_timeout`](Self::set_recv_timeout))
    /// only until the first datagram, then takes whatever else is already queued without waiting
    /// (`MSG_WAITFORONE`). A timeout, or nothing queued on a non-blocking socket (EAGAIN), is
    /// `Ok(0)`; any other error, ENOBUFS included, is returned as `recv` returns it.
    ///
    /// A datagram larger than its slot is truncated by the kernel: the slot holds its first
    /// `slot` bytes and `lens[i]` is its real length (`MSG_TRUNC`), hence greater than `slot` —
    /// the caller must not parse it as whole. Nothing is ever written past a slot.
    ///
    /// An error met after the first datagram (e.g. ENOBUFS: the kernel dropped messages) does
    /// not lose the datagrams already read: the kernel returns them and keeps the error for the
    /// next call (`do_recvmmsg` in net/socket.c stores it in the socket's `sk_err`, which every
    /// receive reports first).
    pub fn recv_many(&self, buf: &mut [u8], slot: usize, lens: &mut [usize]) -> io::Result<usize> {
        if slot == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_many needs slots of at least one byte",
            ));
        }
        let n = lens.len().min(buf.len() / slot).min(RECV_MANY_MAX);
        if n == 0 {
            return Ok(0);
        }
        // Only the first n headers and iovecs are set up and handed to the kernel: a read of one
        // datagram does not pay for 64.
        let mut iov = [MaybeUninit::<libc::iovec>::uninit(); RECV_MANY_MAX];
        let mut hdrs = [MaybeUninit::<libc::mmsghdr>::uninit(); RECV_MANY_MAX];
        // SAFETY: mmsghdr is plain old data (integers and pointers, padding on some libcs);
        // all-zero is a valid value: no address, no control data, no iovec yet.
        let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // Every slot pointer derives from this one: the slots are disjoint and inside `buf`
        // (n * slot <= buf.len()).
        let base = buf.as_mut_ptr();
        for (i, (v, h)) in iov.iter_mut().zip(hdrs.iter_mut()).take(n).enumerate() {
            let v = v.write(libc::iovec {
                iov_base: base.wrapping_add(i * slot) as *mut libc::c_void,
                iov_len: slot,
            });
            let h = h.write(zero);
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // MSG_TRUNC: netlink reports a datagram's real length, so an oversized one is visible.
        let flags = libc::MSG_WAITFORONE | libc::MSG_TRUNC;
        loop {
            // SAFETY: hdrs[..n] are initialised, each pointing at its own initialised iovec of
            // iov[..n], which describes a distinct `slot`-byte range of `buf`, valid for writes;
            // the kernel reads and writes no header past n. iov, hdrs and buf outlive the call
            // and nothing else touches them during it. No timeout pointer (NULL): the socket's
            // SO_RCVTIMEO bounds the wait for the first datagram.
            let rc = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr() as *mut libc::mmsghdr,
                    n as libc::c_uint,
                    flags as _,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = last_err();
                return match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // EWOULDBLOCK is EAGAIN on Linux; a receive timeout is reported as EAGAIN.
                    Some(libc::EAGAIN) => Ok(0),
                    _ => Err(e),
                };
            }
            let got = (rc as usize).min(n);
            for (len, h) in lens.iter_mut().zip(&hdrs).take(got) {
                // SAFETY: the first n headers were initialised above, and got <= n.
                let h = unsafe { h.assume_init_ref() };
                let mut l = h.msg_len as usize;
                if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    // Whatever length the protocol reported, the datagram did not fit.
                    l = l.max(slot + 1);
                }
                *len = l;
            }
            return Ok(got);
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::consts::NFNLGRP_CONNTRACK_NEW;
    use crate::test_kernel::{root_or_skip, ThrowawayNs};
    use crate::{Conntrack, NewFlow, Tuple, IPPROTO_UDP};

    /// A socket subscribed to NEW events in `ns`, its reads bounded by 100 ms.
    fn new_events(ns: &str) -> Socket {
        let sock = crate::netns::run_in(ns, Socket::new)
            .expect("enter")
            .expect("socket");
        sock.add_membership(NFNLGRP_CONNTRACK_NEW).expect("join");
        sock.set_rcvbuf(1 << 20);
        sock.set_recv_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        sock
    }

    fn udp_flows(n: u16) -> Vec<NewFlow> {
        (0..n)
            .map(|i| {
                let t = Tuple::ports(
                    "192.0.2.1".parse().unwrap(),
                    30000 + i,
                    "198.51.100.53".parse().unwrap(),
                    53,
                    IPPROTO_UDP,
                );
                NewFlow::established(t, None)
            })
            .collect()
    }

    #[test]
    fn recv_many_takes_what_is_queued_truncates_inside_the_slot_and_times_out_empty() {
        if !root_or_skip(
            "recv_many_takes_what_is_queued_truncates_inside_the_slot_and_times_out_empty",
        ) {
            return;
        }
        let ns = ThrowawayNs::new("gbmm");
        let mut ct = Conntrack::open_in(Some(&ns.0)).expect("open conntrack");
        let sock = new_events(&ns.0);
        const CANARY: u8 = 0xa5;

        // Nothing queued: the timeout, then 0 datagrams (not an error).
        let mut buf = vec![CANARY; 8 * 1024];
        let mut lens = [0usize; 8];
        let t = Instant::now();
        assert_eq!(sock.recv_many(&mut buf, 1024, &mut lens).unwrap(), 0);
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );

        // Five queued, eight slots: the five, without waiting for more.
        assert_eq!(ct.create(&udp_flows(5)).unwrap().created, 5);
        let t = Instant::now();
        let n = sock.recv_many(&mut buf, 1024, &mut lens).unwrap();
        assert_eq!(n, 5);
        assert!(t.elapsed() < Duration::from_millis(90), "{:?}", t.elapsed());
        for (i, &len) in lens[..n].iter().enumerate() {
            assert!((100..1024).contains(&len), "datagram {i}: {len} bytes");
            let flow = crate::parse_message(&buf[i * 1024..][..len])
                .expect("parses")
                .expect("an entry");
            assert_eq!(flow.orig.sport(), Some(30000 + i as u16), "in order");
        }
        assert!(buf[5 * 1024..].iter().all(|&b| b == CANARY), "unused slots");

        // Slots too small (and fewer slots than datagrams queued): each datagram is cut at its
        // slot, reported with its real length, and nothing is written past the slots.
        assert_eq!(ct.create(&udp_flows(8)[5..]).unwrap().created, 3);
        let mut small = vec![CANARY; 2 * 64 + 16];
        let n = sock.recv_many(&mut small, 64, &mut lens).unwrap();
        assert_eq!(n, 2);
        assert!(lens[..2].iter().all(|&l| l > 64), "{lens:?}");
        assert!(small[..128].iter().any(|&b| b != CANARY), "written");
        assert!(small[128..].iter().all(|&b| b == CANARY), "past the slots");
        // The third is still queued, whole.
        let n = sock.recv_many(&mut buf, 1024, &mut lens).unwrap();
        assert_eq!(n, 1);
        let flow = crate::parse_message(&buf[..lens[0]]).unwrap().unwrap();
        assert_eq!(flow.orig.sport(), Some(30007));

        // No slot at all is no read.
        assert_eq!(sock.recv_many(&mut buf, 1024, &mut []).unwrap(), 0);
        assert!(sock.recv_many(&mut buf, 0, &mut lens).is_err());
    }
}
