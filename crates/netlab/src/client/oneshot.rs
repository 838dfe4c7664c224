//! One request on a fresh socket: which backend answers a *new* connection right now.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::TICK;
use crate::error::{Error, Result};
use crate::ns::in_netns;

/// An HTTP answer from a lab server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// The backend's identity (the body).
    pub backend: String,
}

/// `None` while incomplete; `Some(Err)` for garbage.
pub(crate) fn parse_http(buf: &[u8]) -> Option<std::result::Result<HttpAnswer, String>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = match status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(s) => s,
        None => return Some(Err(format!("bad status line {status_line:?}"))),
    };
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < head_end + length {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]);
    Some(Ok(HttpAnswer {
        status,
        backend: body.trim().to_string(),
    }))
}

/// Reads one HTTP answer from `stream`, whose read timeout makes each read a tick: `on_tick` runs
/// after every read that timed out, and its error ends the wait. A peer that closes before a
/// whole answer is `UnexpectedEof`; a malformed answer is an error too.
pub fn read_http_answer(
    stream: &mut impl Read,
    mut on_tick: impl FnMut() -> io::Result<()>,
) -> io::Result<HttpAnswer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(answer) = parse_http(&buf) {
            return answer.map_err(io::Error::other);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before an answer",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                on_tick()?
            }
            Err(e) => return Err(e),
        }
    }
}

/// One HTTP request on a fresh connection from namespace `netns`: which backend answers a *new*
/// connection to `target` right now.
pub fn http_get(netns: &str, target: SocketAddr, timeout: Duration) -> Result<HttpAnswer> {
    in_netns(netns, || -> io::Result<HttpAnswer> {
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(TICK))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: netlab\r\nConnection: close\r\n\r\n")?;
        read_http_answer(&mut stream, || {
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            Ok(())
        })
    })?
    .map_err(|e| Error::io(format!("HTTP GET to {target} from {netns}"), e))
}

/// One UDP query from a fresh socket in `netns`; returns the answer text (`<identity> <query>`).
pub fn udp_query(
    netns: &str,
    target: SocketAddr,
    query: &str,
    timeout: Duration,
) -> Result<String> {
    in_netns(netns, || -> io::Result<String> {
        let socket = bind_udp(target)?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send(query.as_bytes())?;
        let mut buf = [0u8; 2048];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?
    .map_err(|e| Error::io(format!("UDP query to {target} from {netns}"), e))
}

pub(crate) fn bind_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    if target.is_ipv6() {
        UdpSocket::bind("[::]:0")
    } else {
        UdpSocket::bind("0.0.0.0:0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_answers_incrementally() {
        let full = crate::server::http_response(404, "billing-0");
        assert!(parse_http(&full[..10]).is_none());
        assert!(parse_http(&full[..full.len() - 1]).is_none());
        let a = parse_http(&full).unwrap().unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.backend, "billing-0");
    }
}
