//! A DNS-like UDP querier that keeps its socket (and so its conntrack tuple), like a resolver.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::oneshot::bind_udp;
use super::report::{error_kind, ClientReport, Phase, Recorder, StallEnd};
use super::{pause, TICK};
use crate::error::Result;
use crate::ns::{spawn_in_netns, NsThread};

/// Settings of a [`UdpClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Time between queries.
    pub interval: Duration,
    /// A query unanswered after this counts as lost (error `timeout`); consecutive losses form
    /// one stall, which ends at the next answer.
    pub timeout: Duration,
    /// Hard bound on the run.
    pub run_for: Duration,
    /// Most queries.
    pub max_queries: u64,
    /// Keep one socket (one source port, one conntrack tuple) for all queries, like a resolver
    /// or statsd client; otherwise a new socket per query.
    pub reuse_socket: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            run_for: Duration::from_secs(30),
            max_queries: 100_000,
            reuse_socket: true,
        }
    }
}

/// A DNS-like querier on its own thread inside a client pod's namespace.
#[derive(Debug)]
pub struct UdpClient {
    stop: Arc<AtomicBool>,
    recorder: Arc<Recorder>,
    thread: Option<NsThread<()>>,
}

impl UdpClient {
    /// Starts querying `target` from namespace `netns`.
    pub fn start(netns: &str, target: SocketAddr, config: UdpConfig) -> Result<UdpClient> {
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Recorder::new(1));
        let (s, r) = (stop.clone(), recorder.clone());
        let thread = spawn_in_netns(netns, "netlab-udp", move || {
            udp_loop(target, &config, &s, &r)
        })?;
        Ok(UdpClient {
            stop,
            recorder,
            thread: Some(thread),
        })
    }

    /// Waits until `n` answers arrived, or `timeout` passed.
    pub fn wait_answers(&self, n: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.recorder.lock().answers >= n {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            thread::sleep(TICK);
        }
    }

    /// What it saw so far.
    pub fn report(&self) -> ClientReport {
        self.recorder.snapshot()
    }

    /// Stops and returns the final report.
    pub fn stop(mut self) -> ClientReport {
        self.shutdown()
    }

    fn shutdown(&mut self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.recorder.snapshot()
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn udp_loop(target: SocketAddr, cfg: &UdpConfig, stop: &AtomicBool, rec: &Recorder) {
    let deadline = rec.started + cfg.run_for;
    let mut socket: Option<UdpSocket> = None;
    let mut buf = [0u8; 2048];
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && seq < cfg.max_queries {
        seq += 1;
        let sent = Instant::now();
        if socket.is_none() || !cfg.reuse_socket {
            let fresh = bind_udp(target).and_then(|s| {
                s.connect(target)?;
                s.set_read_timeout(Some(TICK))?;
                Ok(s)
            });
            match fresh {
                Ok(s) => socket = Some(s),
                Err(e) => {
                    rec.error(0, Phase::Connect, error_kind(&e), e.to_string());
                    if !pause(cfg.interval, stop, deadline) {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(sock) = socket.as_ref() else { break };
        let query = format!("q{seq}");
        if let Err(e) = sock.send(query.as_bytes()) {
            rec.error(0, Phase::Send, error_kind(&e), e.to_string());
            if !pause(cfg.interval, stop, deadline) {
                break;
            }
            continue;
        }
        rec.request(0);
        let mut answered = false;
        while sent.elapsed() < cfg.timeout && !stop.load(Ordering::Relaxed) {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    // Late answers to earlier queries are skipped.
                    if let Some((identity, q)) = text.split_once(' ') {
                        if q == query {
                            rec.stall_ended(0, StallEnd::Answered);
                            rec.answer(0, Some(identity), None);
                            answered = true;
                            break;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ECONNREFUSED: an ICMP port unreachable came back.
                    rec.error(0, Phase::Receive, error_kind(&e), e.to_string());
                    break;
                }
            }
        }
        if !answered {
            rec.stall_started(0, sent);
            if sent.elapsed() >= cfg.timeout {
                rec.error(
                    0,
                    Phase::Receive,
                    "timeout".into(),
                    format!("{query} unanswered after {:?}", cfg.timeout),
                );
            }
        }
        let next = cfg.interval.saturating_sub(sent.elapsed());
        if !pause(next, stop, deadline) {
            break;
        }
    }
}
