//! The HTTP/1.1 GET kube-proxy's endpoints need: one request per connection
//! (`Connection: close`), chunked bodies decoded, a size cap, one timeout around everything.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Error, Result, MAX_RESPONSE};

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

    /// `host:port` as the `Host` header writes it (IPv6 in brackets).
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// GETs `url`, all of it within `timeout`.
pub async fn get(url: &HttpUrl, timeout: Duration) -> Result<Response> {
    let shown = display(url);
    match tokio::time::timeout(timeout, get_inner(url)).await {
        Err(_) => Err(Error::Timeout {
            url: shown,
            timeout,
        }),
        Ok(Err(GetError::Io(source))) => Err(Error::Io { url: shown, source }),
        Ok(Err(GetError::Malformed(reason))) => Err(Error::Malformed { url: shown, reason }),
        Ok(Ok(r)) => Ok(r),
    }
}

enum GetError {
    Io(std::io::Error),
    Malformed(String),
}

impl From<std::io::Error> for GetError {
    fn from(e: std::io::Error) -> Self {
        GetError::Io(e)
    }
}

async fn get_inner(url: &HttpUrl) -> Result<Response, GetError> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ghostbuster/{}\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .await?;
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(GetError::Malformed(format!(
            "answer larger than {MAX_RESPONSE} bytes"
        )));
    }
    parse_response(&raw).map_err(GetError::Malformed)
}

/// The URL as shown in errors.
pub(super) fn display(url: &HttpUrl) -> String {
    format!("http://{}{}", url.host_header(), url.path)
}

/// Parses a complete HTTP/1.x response read until the server closed the connection.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .ok_or("the answer has no complete HTTP header")?;
    let head = std::str::from_utf8(&raw[..split.0]).map_err(|_| "the HTTP header is not UTF-8")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or_default();
    if !proto.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 answer: {:?}",
            truncate(status_line, 60)
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status code in {:?}", truncate(status_line, 60)))?;
    let (mut chunked, mut length, mut content_type) = (false, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                )
            }
            "content-type" => content_type = Some(value.to_string()),
            _ => {}
        }
    }
    let rest = &raw[split.1..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("body shorter than its Content-Length {n}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    Ok(Response {
        status,
        content_type,
        body,
    })
}

/// Decodes a `Transfer-Encoding: chunked` body (RFC 9112 §7.1; extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size line")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size line")?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {:?}", truncate(size_hex, 20)))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size..).ok_or("truncated chunk")?;
        rest = rest.strip_prefix(b"\r\n").ok_or("chunk without CRLF")?;
    }
}

pub(super) fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// [`get`] for callers without a runtime (`audit`, also when it runs from the agent): on a
/// thread of its own with a current-thread runtime, so it never meets another runtime.
pub fn get_blocking(url: &HttpUrl, timeout: Duration) -> Result<Response> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    url: display(url),
                    source,
                })?;
            rt.block_on(get(url, timeout))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Malformed {
                url: display(url),
                reason: "the HTTP thread panicked".into(),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn parses_urls() {
        assert_eq!(
            HttpUrl::parse(crate::kube_proxy::DEFAULT_PROXY_MODE_URL).unwrap(),
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
    fn parses_plain_chunked_and_sized_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n\r\niptablesEXTRA",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "iptables"));
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nipta\r\n4\r\nbles\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "iptables");
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "{}"));
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc",
            b"HTTP/1.1 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
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
        let mode = crate::kube_proxy::proxy_mode_blocking(&url, Duration::from_secs(2)).unwrap();
        assert_eq!(mode, "nftables");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /proxyMode HTTP/1.1\r\n"), "{req}");
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
        assert!(crate::kube_proxy::proxy_mode_blocking(&url, Duration::from_millis(500)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/proxyMode")).unwrap();
        let start = std::time::Instant::now();
        // The backlog accepts the connection; nobody answers.
        assert!(crate::kube_proxy::proxy_mode_blocking(&url, Duration::from_millis(200)).is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(l);
    }
}
