//! Pod servers: in-process TCP echo, HTTP-like and UDP (DNS-like) servers bound inside a pod's
//! namespace. The HTTP and UDP answers carry the server's *identity*, so a client behind a VIP
//! can tell which backend (and which service) answered — the only way to see the "wrong backend
//! answers 404" story (seed 003) from the client side.
//!
//! Every server runs on plain threads (the sockets stay in the pod's namespace) with a stop flag
//! checked at least every [`TICK`]; connection threads are capped at [`MAX_CONNECTIONS`] and
//! requests at [`MAX_REQUEST`] bytes. Dropping a [`Server`] stops and joins everything.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Protocol;
use crate::ns::in_netns;
use crate::poll;

/// How often loops look at their stop flag.
pub const TICK: Duration = Duration::from_millis(50);
/// Connections served at once per server; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request accepted (HTTP head, UDP datagram).
pub const MAX_REQUEST: usize = 8 * 1024;

/// What a server does with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ServerKind {
    /// Echoes every byte back (TCP).
    TcpEcho,
    /// Answers every HTTP/1.1 request (keep-alive) with `status` and a body naming the server.
    Http {
        /// Status code of every answer (200, or 404 for a "wrong service").
        status: u16,
    },
    /// Answers each datagram with `<identity> <request>` (a DNS-like request/response).
    UdpEcho,
    /// Echoes every byte back over a one-to-one SCTP association.
    SctpEcho,
}

impl ServerKind {
    /// Transport protocol the server listens on.
    pub fn protocol(&self) -> Protocol {
        match self {
            ServerKind::TcpEcho | ServerKind::Http { .. } => Protocol::Tcp,
            ServerKind::UdpEcho => Protocol::Udp,
            ServerKind::SctpEcho => Protocol::Sctp,
        }
    }
}

/// A server to run in a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerSpec {
    /// What it does.
    pub kind: ServerKind,
    /// Port, bound on all addresses of both families (`[::]`).
    pub port: u16,
    /// Name put into answers; usually the pod name.
    pub identity: String,
}

impl ServerSpec {
    /// An HTTP-like server answering `status` with `identity` in the body.
    pub fn http(port: u16, status: u16, identity: &str) -> Self {
        Self::new(ServerKind::Http { status }, port, identity)
    }

    /// A TCP echo server.
    pub fn tcp_echo(port: u16, identity: &str) -> Self {
        Self::new(ServerKind::TcpEcho, port, identity)
    }

    /// A UDP request/response server.
    pub fn udp_echo(port: u16, identity: &str) -> Self {
        Self::new(ServerKind::UdpEcho, port, identity)
    }

    /// An SCTP echo server (needs kernel SCTP support).
    pub fn sctp_echo(port: u16, identity: &str) -> Self {
        Self::new(ServerKind::SctpEcho, port, identity)
    }

    /// A server of any kind.
    pub fn new(kind: ServerKind, port: u16, identity: &str) -> Self {
        ServerSpec {
            kind,
            port,
            identity: identity.to_string(),
        }
    }
}

/// Counters of a running server.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    active: AtomicUsize,
}

/// Snapshot of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Connections accepted (TCP/SCTP).
    pub accepted: u64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
    /// Requests answered (HTTP requests, UDP datagrams, echo reads).
    pub requests: u64,
}

/// A running server; stops and joins its threads when dropped.
#[derive(Debug)]
pub struct Server {
    spec: ServerSpec,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

enum Bound {
    Stream(TcpListener),
    Datagram(UdpSocket),
}

impl Server {
    /// Binds inside namespace `netns` and starts serving. Bind errors (port in use, no SCTP)
    /// are returned here.
    pub fn start(netns: &str, spec: ServerSpec) -> Result<Server> {
        let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, spec.port));
        let kind = spec.kind.clone();
        let bound = in_netns(netns, move || -> io::Result<Bound> {
            Ok(match kind {
                ServerKind::TcpEcho | ServerKind::Http { .. } => {
                    Bound::Stream(TcpListener::bind(addr)?)
                }
                ServerKind::SctpEcho => Bound::Stream(crate::sctp::listen(addr)?),
                ServerKind::UdpEcho => Bound::Datagram(UdpSocket::bind(addr)?),
            })
        })?
        .map_err(|e| {
            Error::io(
                format!(
                    "binding {:?} server on port {} in {netns}",
                    spec.kind, spec.port
                ),
                e,
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let thread_name = format!("netlab-srv-{}", spec.port);
        let (s, st, sp) = (stop.clone(), stats.clone(), spec.clone());
        let thread = thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || match bound {
                Bound::Stream(listener) => serve_stream(listener, &sp, &s, &st),
                Bound::Datagram(socket) => serve_datagram(socket, &sp, &s, &st),
            })
            .map_err(|e| Error::io(format!("spawning {thread_name}"), e))?;
        Ok(Server {
            spec,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// What this server is.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// Its counters so far.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            accepted: self.stats.accepted.load(Ordering::Relaxed),
            refused: self.stats.refused.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Stops serving, closes every socket and joins the threads (within about [`TICK`]).
    pub fn stop(mut self) -> ServerStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("netlab: server on port {} panicked", self.spec.port);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_stream(
    listener: TcpListener,
    spec: &ServerSpec,
    stop: &Arc<AtomicBool>,
    stats: &Arc<Stats>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("netlab: server on port {}: {e}", spec.port);
        return;
    }
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                connections.retain(|c| !c.is_finished());
                if stats.active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    continue; // dropping the stream closes it
                }
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                stats.active.fetch_add(1, Ordering::Relaxed);
                let (s, st, sp) = (stop.clone(), stats.clone(), spec.clone());
                let spawned = thread::Builder::new()
                    .name(format!("netlab-conn-{}", spec.port))
                    .spawn(move || {
                        // Errors end the connection; the client records what it saw.
                        let _ = serve_connection(stream, &sp, &s, &st);
                        st.active.fetch_sub(1, Ordering::Relaxed);
                    });
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(_) => {
                        stats.active.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = poll::wait(listener.as_raw_fd(), libc::POLLIN, TICK);
            }
            Err(_) => thread::sleep(TICK),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_connection(
    mut stream: TcpStream,
    spec: &ServerSpec,
    stop: &AtomicBool,
    stats: &Stats,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut filled = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match &spec.kind {
            ServerKind::Http { status } => {
                filled += n;
                // Answer every complete request head in the buffer (pipelining is fine).
                while let Some(end) = find_head_end(&buf[..filled]) {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let close = head.contains("\nconnection: close");
                    stream.write_all(&http_response(*status, &spec.identity))?;
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    buf.copy_within(end..filled, 0);
                    filled -= end;
                    if close {
                        return Ok(());
                    }
                }
                if filled == buf.len() {
                    return Ok(()); // head too large: drop the connection
                }
            }
            _ => {
                stream.write_all(&buf[..n])?;
                stats.requests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The HTTP answer of a server: status line, `X-Backend` header and `identity` as the body.
pub fn http_response(status: u16, identity: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let body = format!("{identity}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {identity}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve_datagram(socket: UdpSocket, spec: &ServerSpec, stop: &AtomicBool, stats: &Stats) {
    if let Err(e) = socket.set_read_timeout(Some(TICK)) {
        eprintln!("netlab: UDP server on port {}: {e}", spec.port);
        return;
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(_) => continue, // timeout tick or a transient error
        };
        let mut answer = Vec::with_capacity(spec.identity.len() + 1 + n);
        answer.extend_from_slice(spec.identity.as_bytes());
        answer.push(b' ');
        answer.extend_from_slice(&buf[..n]);
        if socket.send_to(&answer, peer).is_ok() {
            stats.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answer_names_the_backend() {
        let text = String::from_utf8(http_response(404, "other-svc-0")).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with("\r\n\r\nother-svc-0\n"));
        assert!(text.contains("Content-Length: 12\r\n"));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
    }
}
