//! Host facts the checks depend on: the CPU count kube-proxy sizes the table by, and kube-proxy's
//! mode from its `/proxyMode` endpoint (plain HTTP/1.0 over a std `TcpStream`: one short GET does
//! not justify an HTTP client).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// kube-proxy's metrics address serves its mode as plain text ("iptables", "nftables", "ipvs").
pub const DEFAULT_KUBE_PROXY_URL: &str = "http://127.0.0.1:10249/proxyMode";

/// The CPUs this process may run on, as Go's `runtime.NumCPU()` (which kube-proxy multiplies by
/// `maxPerCore`) counts them: the scheduler affinity mask.
pub fn cpus() -> u32 {
    // SAFETY: `cpu_set_t` is plain data (all zeroes is an empty set); sched_getaffinity writes at
    // most `size_of::<cpu_set_t>()` bytes into it, and CPU_COUNT only reads it.
    let n = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set)
        } else {
            0
        }
    };
    if n > 0 {
        n as u32
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }
}

/// A parsed `http://host:port/path` URL (no TLS, no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: expected http://HOST[:PORT]/PATH"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse()
                .map_err(|_| format!("{url:?}: {p:?} is not a port number"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?}: the path must not contain spaces"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Asks kube-proxy for its mode. `Err` says why there is no answer (for a debug log); the audit
/// then reports the mode as "unknown".
pub fn kube_proxy_mode(url: &HttpUrl, timeout: Duration) -> Result<String, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", url.host))?
        .collect();
    let mut last = format!("{}: no address", url.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return get(stream, url, timeout),
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

fn get(mut stream: TcpStream, url: &HttpUrl, timeout: Duration) -> Result<String, String> {
    let io = |e: std::io::Error| format!("GET {}: {e}", url.path);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ghostbuster-audit\r\nAccept: text/plain\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    // HTTP/1.0: the server closes after the body. 64 KiB is far more than a mode word.
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io)?;
    parse_mode_response(&answer)
}

/// Extracts the mode from a raw HTTP response: status 200 and a short lowercase word.
pub fn parse_mode_response(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the answer is not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .ok_or_else(|| "the answer has no HTTP header".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    let mut parts = status.split_whitespace();
    let (proto, code) = (parts.next().unwrap_or_default(), parts.next());
    if !proto.starts_with("HTTP/") {
        return Err(format!("not an HTTP answer: {status:?}"));
    }
    if code != Some("200") {
        return Err(format!("kube-proxy answered {status:?}"));
    }
    let mode = body.trim();
    let word = !mode.is_empty()
        && mode.len() <= 32
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !word {
        return Err(format!(
            "unexpected proxyMode body {:?}",
            truncate(mode, 40)
        ));
    }
    Ok(mode.to_ascii_lowercase())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn counts_at_least_one_cpu() {
        assert!(cpus() >= 1);
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            HttpUrl::parse(DEFAULT_KUBE_PROXY_URL).unwrap(),
            HttpUrl {
                host: "127.0.0.1".into(),
                port: 10249,
                path: "/proxyMode".into()
            }
        );
        let v6 = HttpUrl::parse("http://[::1]:10249/proxyMode").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 10249));
        assert_eq!(v6.host_header(), "[::1]:10249");
        let bare = HttpUrl::parse("http://node.local").unwrap();
        assert_eq!((bare.port, bare.path.as_str()), (80, "/"));
        for bad in [
            "https://127.0.0.1/proxyMode",
            "127.0.0.1:10249",
            "http://:10249/x",
            "http://127.0.0.1:port/x",
            "http://127.0.0.1:99999/x",
            "http://[::1/x",
            "http://u@h/x",
            "http://h/a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\niptables";
        assert_eq!(parse_mode_response(ok).unwrap(), "iptables");
        assert_eq!(
            parse_mode_response(b"HTTP/1.0 200 OK\n\nIPVS\n").unwrap(),
            "ipvs"
        );
        assert!(parse_mode_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope").is_err());
        assert!(parse_mode_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_mode_response(b"HTTP/1.1 200 OK\r\n\r\n<html>hi</html>").is_err());
        assert!(parse_mode_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_mode_response(b"garbage").is_err());
        assert!(parse_mode_response(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn asks_a_live_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnftables")
                .unwrap();
            req
        });
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/proxyMode")).unwrap();
        let mode = kube_proxy_mode(&url, Duration::from_secs(2)).unwrap();
        assert_eq!(mode, "nftables");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /proxyMode HTTP/1.0\r\n"), "{req}");
        assert!(
            req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
    }

    #[test]
    fn nothing_listening_is_an_error_not_a_hang() {
        // Bind then drop to get a port that is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/proxyMode")).unwrap();
        let start = std::time::Instant::now();
        assert!(kube_proxy_mode(&url, Duration::from_millis(500)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/proxyMode")).unwrap();
        let start = std::time::Instant::now();
        // The backlog accepts the connection; nobody answers.
        assert!(kube_proxy_mode(&url, Duration::from_millis(200)).is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(l);
    }
}
