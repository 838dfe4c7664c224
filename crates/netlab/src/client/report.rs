//! What a client saw: errors, stalls, answers per backend — and the shared recorder the client
//! threads write into.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

/// Most error and stall records kept per client (counters keep counting beyond).
pub const MAX_RECORDS: usize = 10_000;

fn secs<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
/// Where in a request's life an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening the connection.
    Connect,
    /// Sending the request.
    Send,
    /// Waiting for the answer.
    Receive,
}

/// One error, with when and where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorRecord {
    /// Time since the client started.
    #[serde(serialize_with = "secs", rename = "at_s")]
    pub at: Duration,
    /// Connection index (0 for UDP).
    pub connection: usize,
    /// Phase.
    pub phase: Phase,
    /// Short name: `ECONNRESET`, `ECONNREFUSED`, `EOF`, `timeout`, `bad_answer`...
    pub kind: String,
    /// Full message.
    pub message: String,
}

/// How a stall ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StallEnd {
    /// The answer came late.
    Answered,
    /// The connection failed (reset, EOF...).
    Failed,
    /// The client gave up (`give_up_after`).
    Abandoned,
    /// The run ended while still waiting.
    StillStuck,
}

/// A request that waited longer than `request_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// Connection index (0 for UDP).
    pub connection: usize,
    /// When the stalled request was sent (since the client started).
    #[serde(serialize_with = "secs", rename = "started_s")]
    pub started: Duration,
    /// How long the client was stuck.
    #[serde(serialize_with = "secs", rename = "duration_s")]
    pub duration: Duration,
    /// How it ended.
    pub end: StallEnd,
}

/// Per-connection summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionReport {
    /// Connection index.
    pub id: usize,
    /// Successful connects (1 + reconnects).
    pub connects: u64,
    /// Requests sent.
    pub requests: u64,
    /// Answers received.
    pub answers: u64,
    /// Errors seen.
    pub errors: u64,
    /// Answers per backend identity.
    pub backends: BTreeMap<String, u64>,
    /// Identity of the last answer.
    pub last_backend: Option<String>,
    /// True while a request is stalled on it right now.
    pub stuck: bool,
}

/// Everything a client saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientReport {
    /// Time since start.
    #[serde(serialize_with = "secs", rename = "elapsed_s")]
    pub elapsed: Duration,
    /// Requests (queries) sent.
    pub requests: u64,
    /// Answers received.
    pub answers: u64,
    /// Answers per backend identity.
    pub per_backend: BTreeMap<String, u64>,
    /// Answers per HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors, oldest first.
    pub errors: Vec<ErrorRecord>,
    /// Stalls, including ones still open at report time.
    pub stalls: Vec<Stall>,
    /// Sum of all stall durations.
    #[serde(serialize_with = "secs", rename = "total_stuck_s")]
    pub total_stuck: Duration,
    /// Per connection (one entry for UDP).
    pub connections: Vec<ConnectionReport>,
    /// Records not kept because of [`MAX_RECORDS`].
    pub records_dropped: u64,
}

impl ClientReport {
    /// Number of errors whose kind is `kind` (e.g. `"ECONNRESET"`).
    pub fn errors_of_kind(&self, kind: &str) -> usize {
        self.errors.iter().filter(|e| e.kind == kind).count()
    }

    /// Connections stalled at report time.
    pub fn stuck_connections(&self) -> usize {
        self.connections.iter().filter(|c| c.stuck).count()
    }

    /// Answers from backend `identity`.
    pub fn answers_from(&self, identity: &str) -> u64 {
        self.per_backend.get(identity).copied().unwrap_or(0)
    }
}

/// A short name for an I/O error: the errno name when there is one.
pub fn error_kind(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::EPROTONOSUPPORT) => "EPROTONOSUPPORT",
        Some(libc::EINVAL) => "EINVAL",
        Some(n) => return format!("errno {n}"),
        None if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            "timeout"
        }
        None if e.kind() == io::ErrorKind::UnexpectedEof => "EOF",
        None => return format!("{:?}", e.kind()),
    };
    name.to_string()
}

/// Shared recording state of one client.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) started: Instant,
    report: Mutex<ClientReport>,
    /// Per connection: start of the currently open stall.
    open_stalls: Mutex<BTreeMap<usize, Instant>>,
}

impl Recorder {
    pub(crate) fn new(connections: usize) -> Self {
        let report = ClientReport {
            connections: (0..connections)
                .map(|id| ConnectionReport {
                    id,
                    ..ConnectionReport::default()
                })
                .collect(),
            ..ClientReport::default()
        };
        Recorder {
            started: Instant::now(),
            report: Mutex::new(report),
            open_stalls: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ClientReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn since(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    pub(crate) fn connected(&self, conn: usize) {
        if let Some(c) = self.lock().connections.get_mut(conn) {
            c.connects += 1;
        }
    }

    pub(crate) fn request(&self, conn: usize) {
        let mut r = self.lock();
        r.requests += 1;
        if let Some(c) = r.connections.get_mut(conn) {
            c.requests += 1;
        }
    }

    pub(crate) fn answer(&self, conn: usize, backend: Option<&str>, status: Option<u16>) {
        let mut r = self.lock();
        r.answers += 1;
        if let Some(b) = backend {
            *r.per_backend.entry(b.to_string()).or_default() += 1;
        }
        if let Some(s) = status {
            *r.statuses.entry(s).or_default() += 1;
        }
        if let Some(c) = r.connections.get_mut(conn) {
            c.answers += 1;
            if let Some(b) = backend {
                *c.backends.entry(b.to_string()).or_default() += 1;
                c.last_backend = Some(b.to_string());
            }
        }
    }

    pub(crate) fn error(&self, conn: usize, phase: Phase, kind: String, message: String) {
        let at = self.since(Instant::now());
        let mut r = self.lock();
        if let Some(c) = r.connections.get_mut(conn) {
            c.errors += 1;
        }
        if r.errors.len() < MAX_RECORDS {
            r.errors.push(ErrorRecord {
                at,
                connection: conn,
                phase,
                kind,
                message,
            });
        } else {
            r.records_dropped += 1;
        }
    }

    pub(crate) fn stall_started(&self, conn: usize, sent: Instant) {
        let mut open = self.open_stalls.lock().unwrap_or_else(|e| e.into_inner());
        open.entry(conn).or_insert(sent);
    }

    pub(crate) fn stall_ended(&self, conn: usize, end: StallEnd) {
        let started = {
            let mut open = self.open_stalls.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&conn)
        };
        if let Some(sent) = started {
            let stall = Stall {
                connection: conn,
                started: self.since(sent),
                duration: sent.elapsed(),
                end,
            };
            let mut r = self.lock();
            r.total_stuck += stall.duration;
            if r.stalls.len() < MAX_RECORDS {
                r.stalls.push(stall);
            } else {
                r.records_dropped += 1;
            }
        }
    }

    pub(crate) fn is_stalled(&self, conn: usize) -> bool {
        let open = self.open_stalls.lock().unwrap_or_else(|e| e.into_inner());
        open.contains_key(&conn)
    }

    /// The report so far, with open stalls counted up to now.
    pub(crate) fn snapshot(&self) -> ClientReport {
        let open: Vec<(usize, Instant)> = {
            let open = self.open_stalls.lock().unwrap_or_else(|e| e.into_inner());
            open.iter().map(|(c, t)| (*c, *t)).collect()
        };
        let mut r = self.lock().clone();
        r.elapsed = self.started.elapsed();
        for c in r.connections.iter_mut() {
            c.stuck = open.iter().any(|(id, _)| *id == c.id);
        }
        for (conn, sent) in open {
            let duration = sent.elapsed();
            r.total_stuck += duration;
            r.stalls.push(Stall {
                connection: conn,
                started: self.since(sent),
                duration,
                end: StallEnd::StillStuck,
            });
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_accounting_counts_open_stalls() {
        let rec = Recorder::new(2);
        rec.stall_started(1, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        let r = rec.snapshot();
        assert_eq!(r.stuck_connections(), 1);
        assert_eq!(r.stalls.len(), 1);
        assert_eq!(r.stalls[0].end, StallEnd::StillStuck);
        assert!(r.total_stuck >= Duration::from_millis(5));
        rec.stall_ended(1, StallEnd::Failed);
        let r = rec.snapshot();
        assert_eq!(r.stuck_connections(), 0);
        assert_eq!(r.stalls[0].end, StallEnd::Failed);
    }

    #[test]
    fn errno_names() {
        assert_eq!(
            error_kind(&io::Error::from_raw_os_error(libc::ECONNRESET)),
            "ECONNRESET"
        );
        assert_eq!(
            error_kind(&io::Error::new(io::ErrorKind::TimedOut, "x")),
            "timeout"
        );
    }
}
