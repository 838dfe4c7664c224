//! What the soak watches while it runs, each on its own thread with wall-clock times:
//! - the node's conntrack table, dumped every [`TABLE_EVERY`] (when each entry was first and last
//!   seen, and its state), the ground truth of "was this ghost reaped, and when";
//! - the agent's `/debug/recent` (every delete it made, with its time and the flow's tuples);
//! - the agent's RSS and how long `/metrics` takes to answer.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, Filter, Flow, TcpState, L4};
use netlab::sync_proxy::now_secs;
use serde_json::Value;

/// How often the node's table is dumped.
pub const TABLE_EVERY: Duration = Duration::from_millis(100);

/// One conntrack entry as the poller saw it over time.
#[derive(Debug, Clone)]
pub struct Seen {
    pub proto: u8,
    /// Original destination (the VIP and port).
    pub vip: SocketAddr,
    /// Reply source: the backend.
    pub backend: IpAddr,
    pub first: f64,
    pub last: f64,
    /// TCP state at the last sighting (`None` for UDP).
    pub tcp_state: Option<TcpState>,
}

impl Seen {
    /// A live flow at its last sighting: UDP, or TCP not closing (a FIN'd connection is over).
    pub fn was_open(&self) -> bool {
        match self.tcp_state {
            None => true,
            Some(s) => matches!(
                s,
                TcpState::ESTABLISHED | TcpState::SYN_SENT | TcpState::SYN_RECV
            ),
        }
    }
}

/// Entries by (kernel id, original tuple, backend). The backend is part of the key: an id is a
/// hash of the entry's address and original tuple, so a UDP client's next datagram after a
/// delete re-creates "the same" id and tuple — routed to a live backend now, a new entry.
pub type EntryKey = (u32, String);

#[derive(Default)]
pub struct TableLog {
    /// Entries seen in the last dump (or earlier ones not yet seen gone), by key.
    pub entries: HashMap<EntryKey, Seen>,
    /// Entries that went (missing from a dump): a key seen again later is a new entry — over a
    /// long run a UDP client's one socket meets the same recycled backend address (and the same
    /// kernel id) again, minutes after its first entry there was deleted.
    pub ended: Vec<Seen>,
    /// Every dump's time.
    pub polls: Vec<f64>,
    pub errors: u64,
}

impl TableLog {
    /// Every entry, ended or not.
    pub fn all(&self) -> impl Iterator<Item = &Seen> {
        self.ended.iter().chain(self.entries.values())
    }

    /// The first dump after `t` (when an entry last seen at `t` was gone), if any.
    pub fn next_poll_after(&self, t: f64) -> Option<f64> {
        let i = self.polls.partition_point(|p| *p <= t);
        self.polls.get(i).copied()
    }
}

/// A background loop; stopped and joined on drop.
pub struct Looper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Looper {
    fn spawn(name: &str, every: Duration, mut tick: impl FnMut() + Send + 'static) -> Looper {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    tick();
                    let rest = every.saturating_sub(t.elapsed());
                    thread::sleep(rest);
                }
            })
            .expect("spawn an observer");
        Looper {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        self.halt();
    }
}

fn port(t: &ctnetlink::Tuple, dst: bool) -> u16 {
    match t.l4 {
        L4::Ports { src, dst: d } => {
            if dst {
                d
            } else {
                src
            }
        }
        _ => 0,
    }
}

fn key_of(f: &Flow) -> Option<EntryKey> {
    Some((
        f.id?,
        format!(
            "{} {}:{} {}:{} via {}",
            f.orig.proto,
            f.orig.src,
            port(&f.orig, false),
            f.orig.dst,
            port(&f.orig, true),
            f.reply.src
        ),
    ))
}

/// Dumps the node's table every [`TABLE_EVERY`] (DNAT'd entries only).
pub fn watch_table(node_netns: &str) -> (Looper, Arc<Mutex<TableLog>>) {
    let log = Arc::new(Mutex::new(TableLog::default()));
    let l2 = log.clone();
    let mut ct = Conntrack::open_in(Some(node_netns)).expect("conntrack socket in the node");
    let looper = Looper::spawn("soak-table", TABLE_EVERY, move || {
        let t = now_secs();
        let flows = ct.dump_vec(&Filter::default());
        let mut log = l2.lock().unwrap();
        let flows = match flows {
            Ok(f) => f,
            Err(_) => {
                log.errors += 1;
                return;
            }
        };
        // Entries the previous dump saw and this one does not have ended.
        let prev = log.polls.last().copied();
        log.polls.push(t);
        let present: std::collections::HashSet<EntryKey> = flows
            .iter()
            .filter(|f| f.is_dnat())
            .filter_map(key_of)
            .collect();
        let gone: Vec<EntryKey> = log
            .entries
            .iter()
            .filter(|(k, e)| Some(e.last) == prev && !present.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(e) = log.entries.remove(&k) {
                log.ended.push(e);
            }
        }
        for f in flows.iter().filter(|f| f.is_dnat()) {
            let Some(k) = key_of(f) else { continue };
            let e = log.entries.entry(k).or_insert_with(|| Seen {
                proto: f.orig.proto,
                vip: SocketAddr::new(f.orig.dst, port(&f.orig, true)),
                backend: f.reply.src,
                first: t,
                last: t,
                tcp_state: f.tcp_state,
            });
            e.last = t;
            e.tcp_state = f.tcp_state;
        }
    });
    (looper, log)
}

/// One delete the agent reported in `/debug/recent`.
#[derive(Debug, Clone)]
pub struct AgentDelete {
    pub t: f64,
    /// The flow's start (the kernel's timestamp), when the table has them.
    pub start: Option<f64>,
    pub proto: String,
    pub vip: SocketAddr,
    pub backend: IpAddr,
    pub verdict: String,
    pub result: String,
}

fn parse_delete(v: &Value) -> Option<AgentDelete> {
    let t: jiff::Timestamp = v["time"].as_str()?.parse().ok()?;
    let ip = |x: &Value| x.as_str()?.parse::<IpAddr>().ok();
    let start = v["start_time"]
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|s| s.as_nanosecond() as f64 / 1e9);
    Some(AgentDelete {
        t: t.as_nanosecond() as f64 / 1e9,
        start,
        proto: v["protocol"].as_str().unwrap_or("").to_string(),
        vip: SocketAddr::new(
            ip(&v["original"]["dst"])?,
            u16::try_from(v["original"]["dport"].as_u64().unwrap_or(0)).unwrap_or(0),
        ),
        backend: ip(&v["reply"]["src"])?,
        verdict: v["verdict"].as_str().unwrap_or("").to_string(),
        result: v["result"].as_str().unwrap_or("").to_string(),
    })
}

/// Polls the agent's `/debug/recent` (newest first, a ring) and keeps every delete once.
pub fn watch_deletes(port: u16) -> (Looper, Arc<Mutex<BTreeMap<String, AgentDelete>>>) {
    let log = Arc::new(Mutex::new(BTreeMap::new()));
    let l2 = log.clone();
    let looper = Looper::spawn("soak-recent", Duration::from_millis(300), move || {
        let Some((200, body)) = crate::agent_support::http_get(port, "/debug/recent") else {
            return;
        };
        let Ok(v) = serde_json::from_str::<Value>(&body) else {
            return;
        };
        let mut log = l2.lock().unwrap();
        for f in v["flows"].as_array().into_iter().flatten() {
            let key = format!("{} {} {}", f["time"], f["id"], f["original"]);
            if let std::collections::btree_map::Entry::Vacant(e) = log.entry(key) {
                if let Some(d) = parse_delete(f) {
                    e.insert(d);
                }
            }
        }
    });
    (looper, log)
}

/// The agent's resident memory and `/metrics` answer times, once a second.
#[derive(Default, Debug)]
pub struct Samples {
    /// (time, RSS in KiB).
    pub rss: Vec<(f64, u64)>,
    /// (time, how long `/metrics` took; `None`: no answer within 2 s).
    pub metrics: Vec<(f64, Option<Duration>)>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn sample_agent(pid: u32, port: u16) -> (Looper, Arc<Mutex<Samples>>) {
    let log = Arc::new(Mutex::new(Samples::default()));
    let l2 = log.clone();
    let looper = Looper::spawn("soak-sampler", Duration::from_secs(1), move || {
        let t = now_secs();
        let start = Instant::now();
        let ok = matches!(
            crate::agent_support::http_get(port, "/metrics"),
            Some((200, _))
        );
        let took = start.elapsed();
        let rss = rss_kib(pid);
        let mut log = l2.lock().unwrap();
        log.metrics.push((t, ok.then_some(took)));
        if let Some(r) = rss {
            log.rss.push((t, r));
        }
    });
    (looper, log)
}
