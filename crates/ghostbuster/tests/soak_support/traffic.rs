//! The soak's live connections: long-lived TCP connections that send a request every 200 ms and
//! read its answer (the backend's HTTP server names itself), and UDP request/response clients
//! that keep one socket (one conntrack tuple), like a resolver. Every thread lives in the client
//! pod's namespace and records, with wall-clock times, every failure together with the backend
//! that last answered on that connection, so the end of the run can tell a ghost that was
//! reaped (its backend was gone) from a healthy connection that broke (its backend was alive).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netlab::sync_proxy::now_secs;
use netlab::{spawn_in_netns, NsThread};

/// Time between two requests of one connection.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// An answer later than this is a stall ("an echo not answered").
pub const LATE: Duration = Duration::from_secs(2);
/// A stalled TCP request is abandoned after this long (the connection is then re-opened).
pub const GIVE_UP: Duration = Duration::from_secs(30);
/// A UDP query unanswered after this long is lost.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// One failure seen by a client.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was noticed (epoch seconds).
    pub t: f64,
    /// The group (a Service's traffic) and connection number.
    pub group: String,
    pub conn: usize,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// The backend (its server identity) that last answered on this connection; `None` for a
    /// connect that failed or a connection that never got an answer.
    pub backend: Option<String>,
    /// `connect`, `late`, `closed`, `reset`, `timeout`, `lost`, or the errno's kind.
    pub kind: String,
}

#[derive(Default)]
pub struct Log {
    pub failures: Mutex<Vec<Failure>>,
    pub answers: AtomicU64,
    pub connects: AtomicU64,
    /// Connections open now (TCP) plus UDP clients that got an answer on their socket.
    pub open: AtomicU64,
}

impl Log {
    fn fail(&self, f: Failure) {
        self.failures.lock().unwrap().push(f);
    }
}

/// All the soak's clients.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<NsThread<()>>,
    pub log: Arc<Log>,
    netns: String,
    next: usize,
}

impl Traffic {
    pub fn new(client_netns: &str) -> Traffic {
        Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            log: Arc::new(Log::default()),
            netns: client_netns.to_string(),
            next: 0,
        }
    }

    /// `n` long-lived TCP connections of `group` to `target`.
    pub fn tcp(&mut self, group: &str, target: SocketAddr, n: usize) {
        for _ in 0..n {
            let (stop, log, id) = (self.stop.clone(), self.log.clone(), self.next);
            self.next += 1;
            let group = group.to_string();
            let t = spawn_in_netns(&self.netns, &format!("soak-tcp-{id}"), move || {
                tcp_loop(&group, id, target, &stop, &log)
            })
            .expect("start a TCP client thread");
            self.threads.push(t);
        }
    }

    /// `n` UDP clients of `group` to `target`, one socket each.
    pub fn udp(&mut self, group: &str, target: SocketAddr, n: usize) {
        for _ in 0..n {
            let (stop, log, id) = (self.stop.clone(), self.log.clone(), self.next);
            self.next += 1;
            let group = group.to_string();
            let t = spawn_in_netns(&self.netns, &format!("soak-udp-{id}"), move || {
                udp_loop(&group, id, target, &stop, &log)
            })
            .expect("start a UDP client thread");
            self.threads.push(t);
        }
    }

    /// Clients started so far.
    pub fn clients(&self) -> usize {
        self.threads.len()
    }

    /// Waits until `n` clients are connected and answered (true) or `within` passed.
    pub fn wait_open(&self, n: u64, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.log.open.load(Ordering::Relaxed) >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops every client; the failures seen.
    pub fn stop(mut self) -> Vec<Failure> {
        self.shutdown();
        self.log.failures.lock().unwrap().clone()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn kind_of(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::BrokenPipe => "reset".into(),
        io::ErrorKind::UnexpectedEof => "closed".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// Sleeps `d` in small steps; false when told to stop.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n";

/// Reads one HTTP answer; its body (the backend's name). Reports a stall once it is late.
fn read_answer(
    s: &mut TcpStream,
    stop: &AtomicBool,
    mut on_late: impl FnMut(),
) -> io::Result<String> {
    let sent = Instant::now();
    let mut late = false;
    let answer = netlab::client::read_http_answer(s, || {
        if !late && sent.elapsed() >= LATE {
            late = true;
            on_late();
        }
        if sent.elapsed() >= GIVE_UP || stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        Ok(())
    })?;
    Ok(answer.backend)
}

fn tcp_loop(group: &str, conn: usize, target: SocketAddr, stop: &AtomicBool, log: &Log) {
    let fail = |backend: &Option<String>, kind: String| {
        log.fail(Failure {
            t: now_secs(),
            group: group.to_string(),
            conn,
            proto: "tcp",
            backend: backend.clone(),
            kind,
        })
    };
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                fail(&None, format!("connect {}", kind_of(&e)));
                if !pause(Duration::from_millis(500), stop) {
                    return;
                }
                continue;
            }
        };
        log.connects.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = s.set_nodelay(true);
        let mut backend: Option<String> = None;
        let mut counted = false;
        loop {
            let sent = Instant::now();
            let r = s
                .write_all(REQUEST)
                .and_then(|()| read_answer(&mut s, stop, || fail(&backend, "late".into())));
            match r {
                Ok(name) => {
                    backend = Some(name);
                    log.answers.fetch_add(1, Ordering::Relaxed);
                    if !counted {
                        counted = true;
                        log.open.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if !stop.load(Ordering::Relaxed) {
                        fail(&backend, kind_of(&e));
                    }
                    break;
                }
            }
            if !pause(INTERVAL.saturating_sub(sent.elapsed()), stop) {
                break;
            }
        }
        if counted {
            log.open.fetch_sub(1, Ordering::Relaxed);
        }
        if !pause(Duration::from_millis(200), stop) {
            return;
        }
    }
}

fn udp_loop(group: &str, conn: usize, target: SocketAddr, stop: &AtomicBool, log: &Log) {
    let fail = |backend: &Option<String>, kind: String| {
        log.fail(Failure {
            t: now_secs(),
            group: group.to_string(),
            conn,
            proto: "udp",
            backend: backend.clone(),
            kind,
        })
    };
    let sock = match UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect(target)?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            fail(&None, format!("socket {}", kind_of(&e)));
            return;
        }
    };
    let mut backend: Option<String> = None;
    let mut counted = false;
    let mut buf = [0u8; 2048];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let sent = Instant::now();
        let query = format!("q{seq}");
        if let Err(e) = sock.send(query.as_bytes()) {
            fail(&backend, kind_of(&e));
        } else {
            let mut answered = false;
            while sent.elapsed() < UDP_TIMEOUT && !stop.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Some((identity, q)) = text.split_once(' ') {
                            if q == query {
                                backend = Some(identity.to_string());
                                answered = true;
                                break;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        fail(&backend, kind_of(&e));
                        break;
                    }
                }
            }
            if answered {
                log.answers.fetch_add(1, Ordering::Relaxed);
                if !counted {
                    counted = true;
                    log.open.fetch_add(1, Ordering::Relaxed);
                }
            } else if sent.elapsed() >= UDP_TIMEOUT && !stop.load(Ordering::Relaxed) {
                fail(&backend, "lost".into());
            }
        }
        if !pause(INTERVAL.saturating_sub(sent.elapsed()), stop) {
            break;
        }
    }
}
