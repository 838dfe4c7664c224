//! `sock_diag` (NETLINK_SOCK_DIAG) for one job: find one connected TCP or UDP socket by its exact
//! 4-tuple, and destroy it (`SOCK_DESTROY`, kernel `CONFIG_INET_DIAG_DESTROY`).
//!
//! The codec ([`request`], [`parse_answer`]) is pure; [`DiagSocket`] is the netlink socket. A
//! socket is created in the network namespace of the sockets it looks at (the kernel looks them
//! up in the netlink socket's namespace), so one is opened per namespace.
//!
//! The lookup is exact (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`): the kernel's
//! `inet_diag_find_one_icsk` / `udp_dump_one`. For UDP that lookup also matches an *unconnected*
//! socket bound to the port (a wildcard destination), which must never be destroyed (a DNS
//! server's socket, cilium#48564): the answer's destination is checked against the tuple, and the
//! destroy names the socket's cookie, so that it can only hit the socket that was checked.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NETLINK_SOCK_DIAG: i32 = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `INET_DIAG_NOCOOKIE`: "any socket" in a request's cookie.
const NO_COOKIE: u64 = u64::MAX;
/// Every TCP state (a lookup by tuple filters on these).
const ALL_STATES: u32 = u32::MAX;

const NLMSG_HDR: usize = 16;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
const REQ: usize = 4 + 4 + SOCKID;
/// `struct inet_diag_msg`: family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode.
const MSG: usize = 4 + SOCKID + 4 * 5;

/// One socket's identity as the kernel keys it: protocol, local and remote address and port
/// (the client's side: local = the flow's original source, remote = its original destination,
/// the Service address before DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

/// A socket the kernel found: its identity, TCP state (for UDP: 1 when connected, 7 when not)
/// and cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub id: SockId,
    pub state: u8,
    pub cookie: u64,
}

impl Found {
    /// A socket connected to exactly the tuple asked for: never a wildcard (unconnected) one.
    pub fn is_connected_to(&self, want: &SockId) -> bool {
        self.id == *want && !self.id.remote.is_unspecified() && self.id.remote_port != 0
    }
}

/// What the kernel answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Found(Found),
    /// ENOENT: no such socket.
    NotFound,
    /// The request was acknowledged (a destroy that worked).
    Done,
    Failed(i32),
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn put_addr(out: &mut Vec<u8>, ip: &IpAddr) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&a);
}

/// A request for the socket `id`: a lookup (`destroy` false) or a destroy of the socket with
/// this `cookie` (`None`: whichever the lookup finds — never used for UDP, see the module).
pub fn request(id: &SockId, destroy: bool, cookie: Option<u64>, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR + REQ;
    let mut out = Vec::with_capacity(len);
    let kind = if destroy {
        SOCK_DESTROY
    } else {
        SOCK_DIAG_BY_FAMILY
    };
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family(&id.local));
    out.push(id.protocol);
    out.push(0); // no extensions
    out.push(0);
    out.extend_from_slice(&ALL_STATES.to_ne_bytes());
    // The kernel's UDP lookup by tuple (`udp_dump_one`) reads the request's source as the
    // packet's source, i.e. the socket's *remote* side ("src and dst are swapped for historical
    // reasons" in udp_diag.c); its destroy (`udp_diag_destroy`) and every TCP request read them
    // as the socket's own. Measured in tests/sockets_kernel.rs: without the swap a UDP lookup
    // finds nothing.
    let (first, first_port, second, second_port) = if id.protocol == 17 && !destroy {
        (&id.remote, id.remote_port, &id.local, id.local_port)
    } else {
        (&id.local, id.local_port, &id.remote, id.remote_port)
    };
    out.extend_from_slice(&first_port.to_be_bytes());
    out.extend_from_slice(&second_port.to_be_bytes());
    put_addr(&mut out, first);
    put_addr(&mut out, second);
    out.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    let c = cookie.unwrap_or(NO_COOKIE);
    out.extend_from_slice(&(c as u32).to_ne_bytes());
    out.extend_from_slice(&((c >> 32) as u32).to_ne_bytes());
    debug_assert_eq!(out.len(), len);
    out
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn addr(fam: u8, b: &[u8]) -> Option<IpAddr> {
    if fam == libc::AF_INET as u8 {
        Some(IpAddr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?))
    } else if fam == libc::AF_INET6 as u8 {
        Some(IpAddr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?))
    } else {
        None
    }
}

/// The first message of an answer to [`request`] with sequence `seq`: an `inet_diag_msg`, or an
/// error/ack. `None` for bytes that are not such an answer (never a panic).
pub fn parse_answer(buf: &[u8], protocol: u8, seq: u32) -> Option<Answer> {
    let len = u32_ne(buf, 0)? as usize;
    let kind = u16_ne(buf, 4)?;
    if len < NLMSG_HDR || len > buf.len() || u32_ne(buf, 8)? != seq {
        return None;
    }
    let body = &buf[NLMSG_HDR..len];
    if kind == NLMSG_ERROR {
        let errno = -(i32::from_ne_bytes(body.get(..4)?.try_into().ok()?));
        return Some(match errno {
            0 => Answer::Done,
            libc::ENOENT => Answer::NotFound,
            e => Answer::Failed(e),
        });
    }
    if kind != SOCK_DIAG_BY_FAMILY || body.len() < MSG {
        return None;
    }
    let fam = body[0];
    let state = body[1];
    let id = &body[4..4 + SOCKID];
    let local_port = u16::from_be_bytes([id[0], id[1]]);
    let remote_port = u16::from_be_bytes([id[2], id[3]]);
    let local = addr(fam, &id[4..20])?;
    let remote = addr(fam, &id[20..36])?;
    let cookie = u64::from(u32_ne(id, 40)?) | (u64::from(u32_ne(id, 44)?) << 32);
    Some(Answer::Found(Found {
        id: SockId {
            protocol,
            local,
            local_port,
            remote,
            remote_port,
        },
        state,
        cookie,
    }))
}

/// A NETLINK_SOCK_DIAG socket, of the namespace it was created in.
#[derive(Debug)]
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    /// Opens one in the calling thread's network namespace, with a receive timeout.
    pub fn open() -> io::Result<DiagSocket> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval of the right size on a valid fd.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DiagSocket {
            fd,
            seq: 0,
            buf: vec![0; 8192],
        })
    }

    fn ask(&mut self, id: &SockId, destroy: bool, cookie: Option<u64>) -> io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = request(id, destroy, cookie, seq);
        // SAFETY: send(2) of an initialised buffer on a valid fd (the kernel is the peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A lookup is answered by the socket and then an ack; a destroy by the ack. Answers to
        // earlier requests (a timed-out one) are skipped by their sequence number.
        loop {
            // SAFETY: recv(2) into our buffer on a valid fd.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let got = &self.buf[..n as usize];
            if let Some(a) = parse_answer(got, id.protocol, seq) {
                if let Answer::Found(_) = a {
                    // Drain its ack, if it is in the same datagram or the next one.
                    if !ack_follows(got) {
                        let _ = self.drain_ack(seq);
                    }
                }
                return Ok(a);
            }
        }
    }

    fn drain_ack(&mut self, seq: u32) -> io::Result<()> {
        // SAFETY: as in `ask`.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = parse_answer(&self.buf[..n as usize], 0, seq);
        Ok(())
    }

    /// The socket with exactly this tuple, if there is one.
    pub fn find(&mut self, id: &SockId) -> io::Result<Option<Found>> {
        match self.ask(id, false, None)? {
            Answer::Found(f) => Ok(Some(f)),
            Answer::NotFound | Answer::Done => Ok(None),
            Answer::Failed(e) => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Destroys the socket `found` (by its tuple and cookie): `Ok(true)` when it was destroyed,
    /// `Ok(false)` when it is gone (closed meanwhile).
    pub fn destroy(&mut self, found: &Found) -> io::Result<bool> {
        match self.ask(&found.id, true, Some(found.cookie))? {
            Answer::Done => Ok(true),
            Answer::NotFound => Ok(false),
            Answer::Found(_) => Ok(true),
            Answer::Failed(e) => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Whether a datagram holding an answer also holds the ack after it.
fn ack_follows(buf: &[u8]) -> bool {
    let Some(len) = u32_ne(buf, 0) else {
        return false;
    };
    let next = (len as usize + 3) & !3;
    u16_ne(buf, next + 4) == Some(NLMSG_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> SockId {
        SockId {
            protocol: 6,
            local: "192.0.2.5".parse().unwrap(),
            local_port: 40000,
            remote: "198.51.100.10".parse().unwrap(),
            remote_port: 80,
        }
    }

    /// The request's layout: the header, the family and protocol, the ports in network order,
    /// the addresses, and the cookie ("any" unless given).
    #[test]
    fn a_request_names_the_exact_tuple_and_the_cookie() {
        let r = request(&id(), false, None, 7);
        assert_eq!(r.len(), NLMSG_HDR + REQ);
        assert_eq!(u16_ne(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u32_ne(&r, 8), Some(7));
        let req = &r[NLMSG_HDR..];
        assert_eq!((req[0], req[1]), (libc::AF_INET as u8, 6));
        assert_eq!(&req[8..10], &40000u16.to_be_bytes());
        assert_eq!(&req[10..12], &80u16.to_be_bytes());
        assert_eq!(&req[12..16], &[192, 0, 2, 5]);
        assert_eq!(&req[28..32], &[198, 51, 100, 10]);
        assert_eq!(&req[48..56], &[0xff; 8]);
        // A UDP lookup names the remote side first, a UDP destroy the local side (the kernel's
        // historical swap, see `request`).
        let udp = SockId {
            protocol: 17,
            ..id()
        };
        let q = &request(&udp, false, None, 1)[NLMSG_HDR..];
        assert_eq!(&q[8..10], &80u16.to_be_bytes());
        assert_eq!(&q[12..16], &[198, 51, 100, 10]);
        assert_eq!(&q[28..32], &[192, 0, 2, 5]);
        let q = &request(&udp, true, Some(1), 1)[NLMSG_HDR..];
        assert_eq!(&q[8..10], &40000u16.to_be_bytes());
        assert_eq!(&q[12..16], &[192, 0, 2, 5]);
        let d = request(&id(), true, Some(0x0102_0304_0506_0708), 8);
        assert_eq!(u16_ne(&d, 4), Some(SOCK_DESTROY));
        let c = &d[NLMSG_HDR + 48..NLMSG_HDR + 56];
        assert_eq!(u32_ne(c, 0), Some(0x0506_0708));
        assert_eq!(u32_ne(c, 4), Some(0x0102_0304));
    }

    /// An `inet_diag_msg` as the kernel writes it, read back; an unconnected UDP socket (wildcard
    /// destination) is never "connected to" the tuple.
    #[test]
    fn an_answer_is_read_back_and_a_wildcard_socket_is_not_connected() {
        // The request's header and sockid, around the answer's own 4 leading bytes (family,
        // state, timer, retransmits) where the request has 8 (family, protocol, ext, pad, states).
        let req = request(&id(), false, Some(42), 3);
        let mut msg = req[..NLMSG_HDR].to_vec();
        msg.extend_from_slice(&[libc::AF_INET as u8, 1, 0, 0]); // state: ESTABLISHED
        msg.extend_from_slice(&req[NLMSG_HDR + 8..NLMSG_HDR + 8 + SOCKID]);
        msg.extend_from_slice(&[0; 20]);
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let Some(Answer::Found(f)) = parse_answer(&msg, 6, 3) else {
            panic!("not parsed");
        };
        assert_eq!(f.id, id());
        assert_eq!((f.state, f.cookie), (1, 42));
        assert!(f.is_connected_to(&id()));
        let mut wildcard = f;
        wildcard.id.remote = "0.0.0.0".parse().unwrap();
        wildcard.id.remote_port = 0;
        let mut asked_as = id();
        asked_as.remote = wildcard.id.remote;
        asked_as.remote_port = 0;
        assert!(!wildcard.is_connected_to(&id()));
        assert!(!wildcard.is_connected_to(&asked_as));
        assert_eq!(parse_answer(&msg, 6, 4), None, "another request's answer");
    }

    #[test]
    fn errors_and_acks() {
        let mut e = vec![0u8; NLMSG_HDR + 4];
        let len = e.len() as u32;
        e[..4].copy_from_slice(&len.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[8..12].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(parse_answer(&e, 6, 9), Some(Answer::Done));
        e[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_answer(&e, 6, 9), Some(Answer::NotFound));
        e[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_answer(&e, 6, 9), Some(Answer::Failed(libc::EPERM)));
    }

    proptest! {
        /// Whatever the bytes, parsing never panics.
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq in any::<u32>()) {
            let _ = parse_answer(&bytes, 17, seq);
            let _ = ack_follows(&bytes);
        }
    }
}
