//! A pool of long-lived connections through a VIP, one thread per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::oneshot::parse_http;
use super::report::{error_kind, ClientReport, Phase, Recorder, StallEnd};
use super::{pause, TICK};
use crate::error::{Error, Result};
use crate::model::Protocol;
use crate::ns::{spawn_in_netns, NsThread};

/// Most connections one pool may hold.
pub const MAX_POOL: usize = 64;
/// What the pooled connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppProtocol {
    /// HTTP/1.1 keep-alive `GET`s; the answer's body names the backend.
    Http,
    /// A line echoed back (backend unknown to the client).
    Echo,
}

/// Settings of a [`TcpPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPoolConfig {
    /// Number of long-lived connections (1..=[`MAX_POOL`]).
    pub connections: usize,
    /// Time between two requests on one connection.
    pub interval: Duration,
    /// An answer later than this makes the request a stall.
    pub request_timeout: Duration,
    /// Abandon a stalled request after this long (close, count a "timeout" error, reconnect if
    /// allowed). `None`: wait until the run ends, like an application blocked on a read.
    pub give_up_after: Option<Duration>,
    /// Bound on each connect.
    pub connect_timeout: Duration,
    /// Hard bound on the whole run.
    pub run_for: Duration,
    /// Most requests per connection.
    pub max_requests: u64,
    /// Open a new connection after one failed.
    pub reconnect: bool,
    /// Application protocol.
    pub protocol: AppProtocol,
    /// Transport: TCP, or SCTP (one-to-one) through the same code.
    pub transport: Protocol,
}

impl Default for TcpPoolConfig {
    fn default() -> Self {
        TcpPoolConfig {
            connections: 4,
            interval: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            give_up_after: None,
            connect_timeout: Duration::from_secs(2),
            run_for: Duration::from_secs(30),
            max_requests: 10_000,
            reconnect: true,
            protocol: AppProtocol::Http,
            transport: Protocol::Tcp,
        }
    }
}
/// A pool of long-lived TCP (or SCTP) connections to one target, each on its own thread inside
/// the client pod's namespace. Dropping it stops and joins the threads.
#[derive(Debug)]
pub struct TcpPool {
    stop: Arc<AtomicBool>,
    recorder: Arc<Recorder>,
    connected: Arc<AtomicUsize>,
    threads: Vec<NsThread<()>>,
    size: usize,
}

impl TcpPool {
    /// Starts `config.connections` connections from namespace `netns` to `target`.
    pub fn start(netns: &str, target: SocketAddr, config: TcpPoolConfig) -> Result<TcpPool> {
        if config.connections == 0 || config.connections > MAX_POOL {
            return Err(Error::Invalid(format!(
                "a pool holds 1..={MAX_POOL} connections, not {}",
                config.connections
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Recorder::new(config.connections));
        let connected = Arc::new(AtomicUsize::new(0));
        let deadline = recorder.started + config.run_for;
        let mut pool = TcpPool {
            stop: stop.clone(),
            recorder: recorder.clone(),
            connected: connected.clone(),
            threads: Vec::new(),
            size: config.connections,
        };
        for conn in 0..config.connections {
            let worker = Worker {
                conn,
                target,
                config: config.clone(),
                stop: stop.clone(),
                recorder: recorder.clone(),
                connected: connected.clone(),
                deadline,
            };
            let thread =
                spawn_in_netns(netns, &format!("netlab-pool-{conn}"), move || worker.run())?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Waits until every connection has connected at least once (true) or `timeout` passed.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.connected.load(Ordering::Relaxed) >= self.size {
                return true;
            }
            thread::sleep(TICK);
        }
        self.connected.load(Ordering::Relaxed) >= self.size
    }

    /// Waits until every connection has had at least `n` answers, or `timeout` passed.
    pub fn wait_answers(&self, n: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let ok = self
                .recorder
                .lock()
                .connections
                .iter()
                .all(|c| c.answers >= n);
            if ok {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            thread::sleep(TICK);
        }
    }

    /// What the pool saw so far.
    pub fn report(&self) -> ClientReport {
        self.recorder.snapshot()
    }

    /// Stops every connection and returns the final report (open stalls end as `StillStuck`).
    pub fn stop(mut self) -> ClientReport {
        self.shutdown()
    }

    fn shutdown(&mut self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        // Workers notice within a TICK; joining first makes the final counts complete.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.recorder.snapshot()
    }
}

impl Drop for TcpPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    conn: usize,
    target: SocketAddr,
    config: TcpPoolConfig,
    stop: Arc<AtomicBool>,
    recorder: Arc<Recorder>,
    connected: Arc<AtomicUsize>,
    deadline: Instant,
}

enum Outcome {
    Answer {
        backend: Option<String>,
        status: Option<u16>,
    },
    Failed(String, String),
    GaveUp,
    Stopped,
}

impl Worker {
    fn run(self) {
        let cfg = &self.config;
        let mut stream: Option<TcpStream> = None;
        let mut ever_connected = false;
        let mut seq: u64 = 0;
        while !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && seq < cfg.max_requests
        {
            let current = match stream.as_mut() {
                Some(s) => s,
                None => {
                    if ever_connected && !cfg.reconnect {
                        break;
                    }
                    match self.connect() {
                        Ok(s) => {
                            if !ever_connected {
                                self.connected.fetch_add(1, Ordering::Relaxed);
                            }
                            ever_connected = true;
                            self.recorder.connected(self.conn);
                            stream.insert(s)
                        }
                        Err(e) => {
                            self.recorder.error(
                                self.conn,
                                Phase::Connect,
                                error_kind(&e),
                                e.to_string(),
                            );
                            if !pause(cfg.interval, &self.stop, self.deadline) {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            seq += 1;
            let request = self.request(seq);
            let sent = Instant::now();
            if let Err(e) = current.write_all(&request) {
                self.recorder
                    .error(self.conn, Phase::Send, error_kind(&e), e.to_string());
                stream = None;
                continue;
            }
            self.recorder.request(self.conn);
            match self.wait_answer(current, &request, sent) {
                Outcome::Answer { backend, status } => {
                    self.recorder.stall_ended(self.conn, StallEnd::Answered);
                    self.recorder.answer(self.conn, backend.as_deref(), status);
                }
                Outcome::Failed(kind, message) => {
                    self.recorder.stall_ended(self.conn, StallEnd::Failed);
                    self.recorder
                        .error(self.conn, Phase::Receive, kind, message);
                    stream = None;
                }
                Outcome::GaveUp => {
                    self.recorder.stall_ended(self.conn, StallEnd::Abandoned);
                    self.recorder.error(
                        self.conn,
                        Phase::Receive,
                        "timeout".to_string(),
                        format!("no answer after {:?}", sent.elapsed()),
                    );
                    stream = None;
                }
                Outcome::Stopped => break,
            }
            let next = cfg.interval.saturating_sub(sent.elapsed());
            if !pause(next, &self.stop, self.deadline) {
                break;
            }
        }
        // A stall still open at the end is reported by the final snapshot as StillStuck.
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = self
            .config
            .connect_timeout
            .min(left)
            .max(Duration::from_millis(1));
        let stream = match self.config.transport {
            Protocol::Sctp => crate::sctp::connect(self.target, timeout)?,
            _ => TcpStream::connect_timeout(&self.target, timeout)?,
        };
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn request(&self, seq: u64) -> Vec<u8> {
        match self.config.protocol {
            AppProtocol::Http => format!(
                "GET /?conn={}&seq={seq} HTTP/1.1\r\nHost: netlab\r\nUser-Agent: netlab-pool\r\n\r\n",
                self.conn
            )
            .into_bytes(),
            AppProtocol::Echo => format!("ping {} {seq}\n", self.conn).into_bytes(),
        }
    }

    fn wait_answer(&self, stream: &mut TcpStream, request: &[u8], sent: Instant) -> Outcome {
        let cfg = &self.config;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(outcome) = parse_answer(cfg.protocol, &buf, request) {
                return outcome;
            }
            if buf.len() > 64 * 1024 {
                return Outcome::Failed("bad_answer".into(), "answer too large".into());
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Outcome::Failed("EOF".into(), "connection closed by peer".into()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Outcome::Failed(error_kind(&e), e.to_string()),
            }
            let waited = sent.elapsed();
            if waited >= cfg.request_timeout && !self.recorder.is_stalled(self.conn) {
                self.recorder.stall_started(self.conn, sent);
            }
            if let Some(limit) = cfg.give_up_after {
                if waited >= limit {
                    return Outcome::GaveUp;
                }
            }
            if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
                return Outcome::Stopped;
            }
        }
    }
}

/// Parses a complete answer out of `buf`, or `None` while incomplete.
fn parse_answer(protocol: AppProtocol, buf: &[u8], request: &[u8]) -> Option<Outcome> {
    match protocol {
        AppProtocol::Echo => {
            if buf.len() < request.len() {
                return None;
            }
            if &buf[..request.len()] == request {
                Some(Outcome::Answer {
                    backend: None,
                    status: None,
                })
            } else {
                Some(Outcome::Failed(
                    "bad_answer".into(),
                    "echo differs from request".into(),
                ))
            }
        }
        AppProtocol::Http => {
            let answer = parse_http(buf)?;
            Some(match answer {
                Ok(a) => Outcome::Answer {
                    backend: Some(a.backend),
                    status: Some(a.status),
                },
                Err(msg) => Outcome::Failed("bad_answer".into(), msg),
            })
        }
    }
}
