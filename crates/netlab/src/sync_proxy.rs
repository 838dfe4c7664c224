//! A kube-proxy that lives on its own schedule, for soak tests: changes are *queued*, a sync
//! thread applies them a moment later (like kube-proxy's `minSyncPeriod`), sometimes late,
//! sometimes failing, sometimes slowly (a sync that began before a change and ended after it has
//! not programmed it), and it publishes the sync metrics the real one does on its metrics port:
//!
//! - `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: end of the last *successful* sync;
//! - `kubeproxy_sync_proxy_rules_duration_seconds` (histogram): how long syncs took;
//! - `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`: the last change queued;
//! - `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` and
//!   `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`: failed syncs;
//!
//! plus `/healthz` (`lastUpdated`/`currentTime` in Go's time format; 503 while a queued change
//! waited longer than [`HEALTHZ_TIMEOUT`]) and `/proxyMode` (the configured
//! [`crate::ProxyMode`]).
//!
//! Every sync is recorded ([`SyncRecord`]: when it began, when it ended, whether it succeeded,
//! which change it covered), so a test can tell exactly when the rules held a change — the
//! ground truth of a delete gate.
//!
//! The rules are rendered by [`KubeProxy`] into the node namespace; use this *instead of*
//! [`crate::Lab::sync_services`] (one writer of the node's rules).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::kube_proxy::{KubeProxy, ProxyConfig};
use crate::model::Service;

/// kube-proxy reports unhealthy when a queued change waited longer than this (its
/// `healthzBindAddress` timeout is larger; a short one makes the state visible in a soak).
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(5);
/// Histogram buckets of `kubeproxy_sync_proxy_rules_duration_seconds` (kube-proxy's own).
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// A failed sync is retried after this long (kube-proxy's backoff starts about there).
const RETRY: Duration = Duration::from_secs(1);
/// kube-proxy's periodic full sync (`syncPeriod`).
const SYNC_PERIOD: Duration = Duration::from_secs(30);

/// Wall-clock seconds since the epoch (what kube-proxy's timestamps are).
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How the next sync of a change behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncPlan {
    /// Wait after the change before the sync begins (`minSyncPeriod`, or a late sync).
    pub delay: Duration,
    /// Extra time the sync takes after it began (and took its snapshot) before the rules are
    /// installed: a sync that began before a later change and ends after it.
    pub slow: Duration,
    /// Attempts that fail before one succeeds.
    pub failures: u32,
}

impl Default for SyncPlan {
    fn default() -> Self {
        SyncPlan {
            delay: Duration::from_millis(300),
            slow: Duration::ZERO,
            failures: 0,
        }
    }
}

/// One sync attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncRecord {
    /// When it began (and took its snapshot of the services), epoch seconds.
    pub start: f64,
    /// When it ended, epoch seconds.
    pub end: f64,
    /// True when the rules were installed.
    pub ok: bool,
    /// The last change (its [`SyncingProxy::change`] number) the snapshot held; 0: none.
    pub covers: u64,
}

#[derive(Debug, Default)]
struct Metrics {
    last_ok: f64,
    last_queued: f64,
    failures: u64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct State {
    desired: Vec<Service>,
    /// Last change queued, and when.
    seq: u64,
    queued_at: f64,
    /// Last change a successful sync installed.
    synced: u64,
    /// First change not yet installed, queued at (for /healthz).
    pending_since: Option<f64>,
    plan: SyncPlan,
    next_plan: Option<SyncPlan>,
    /// Every attempt fails until then.
    fail_until: Option<Instant>,
    history: Vec<SyncRecord>,
    metrics: Metrics,
    error: Option<String>,
    stop: bool,
}

struct Shared {
    /// What `/proxyMode` answers.
    mode: &'static str,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The syncing kube-proxy. Dropping it stops its threads (the rules stay until the lab goes).
pub struct SyncingProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop_http: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl SyncingProxy {
    /// Renders rules into `node_netns` (nothing until the first change) and serves its metrics
    /// on 127.0.0.1 of the calling thread's namespace (an ephemeral port, [`SyncingProxy::addr`]).
    pub fn start(node_netns: &str, config: ProxyConfig) -> Result<SyncingProxy> {
        let io = |e| Error::io("kube-proxy metrics listener on 127.0.0.1", e);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let shared = Arc::new(Shared {
            mode: config.mode.name(),
            state: Mutex::new(State {
                desired: Vec::new(),
                seq: 0,
                queued_at: 0.0,
                synced: 0,
                pending_since: None,
                plan: SyncPlan::default(),
                next_plan: None,
                fail_until: None,
                history: Vec::new(),
                metrics: Metrics::default(),
                error: None,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let stop_http = Arc::new(AtomicBool::new(false));
        let proxy = KubeProxy::new(node_netns, config);
        let s1 = shared.clone();
        let syncer = thread::Builder::new()
            .name("netlab-kube-proxy".into())
            .spawn(move || sync_loop(&s1, proxy))
            .map_err(|e| Error::io("spawn the kube-proxy sync thread", e))?;
        let (s2, stop2) = (shared.clone(), stop_http.clone());
        let http = thread::Builder::new()
            .name("netlab-kube-proxy-http".into())
            .spawn(move || serve(&s2, &listener, &stop2))
            .map_err(|e| Error::io("spawn the kube-proxy metrics thread", e))?;
        Ok(SyncingProxy {
            shared,
            addr,
            stop_http,
            threads: vec![syncer, http],
        })
    }

    /// Where `/metrics`, `/healthz` and `/proxyMode` answer.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a change: the services as the API now says. Returns its number (from 1).
    pub fn change(&self, services: Vec<Service>) -> u64 {
        let mut st = self.shared.lock();
        let now = now_secs();
        st.desired = services;
        st.seq += 1;
        st.queued_at = now;
        st.metrics.last_queued = now;
        if st.pending_since.is_none() {
            st.pending_since = Some(now);
        }
        let seq = st.seq;
        drop(st);
        self.shared.wake.notify_all();
        seq
    }

    /// How syncs behave from now on (until changed).
    pub fn set_plan(&self, plan: SyncPlan) {
        self.shared.lock().plan = plan;
    }

    /// How the next sync behaves (once), then back to the standing plan.
    pub fn set_next(&self, plan: SyncPlan) {
        self.shared.lock().next_plan = Some(plan);
    }

    /// Every sync attempt fails for `d` from now (retried every second, as kube-proxy does).
    pub fn fail_for(&self, d: Duration) {
        self.shared.lock().fail_until = Some(Instant::now() + d);
    }

    /// Every sync attempt so far, oldest first.
    pub fn history(&self) -> Vec<SyncRecord> {
        self.shared.lock().history.clone()
    }

    /// The last change a successful sync installed.
    pub fn synced(&self) -> u64 {
        self.shared.lock().synced
    }

    /// Waits until change `seq` is installed (true) or `timeout` passed.
    pub fn wait_synced(&self, seq: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.synced < seq {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The first error installing rules, if any (a broken lab, not a planned failure).
    pub fn error(&self) -> Option<String> {
        self.shared.lock().error.clone()
    }

    /// The metrics text, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        metrics_text(&self.shared.lock().metrics)
    }
}

impl Drop for SyncingProxy {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        self.stop_http.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` unless stopped; false when stopped.
fn pause(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    let mut st = shared.lock();
    loop {
        if st.stop {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        st = shared
            .wake
            .wait_timeout(st, until - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn sync_loop(shared: &Shared, mut proxy: KubeProxy) {
    let mut last_sync = Instant::now();
    loop {
        // Wait for a change not yet installed, or the periodic sync.
        let plan = {
            let mut st = shared.lock();
            loop {
                if st.stop {
                    return;
                }
                let periodic = st.seq > 0 && last_sync.elapsed() >= SYNC_PERIOD;
                if st.seq > st.synced || periodic {
                    break;
                }
                st = shared
                    .wake
                    .wait_timeout(st, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            st.next_plan.take().unwrap_or(st.plan)
        };
        if !pause(shared, plan.delay) {
            return;
        }
        let mut failures_left = plan.failures;
        loop {
            let (start, services, covers, failing) = {
                let st = shared.lock();
                let failing = st.fail_until.is_some_and(|t| Instant::now() < t);
                (now_secs(), st.desired.clone(), st.seq, failing)
            };
            if !plan.slow.is_zero() && !pause(shared, plan.slow) {
                return;
            }
            let fail = failing || failures_left > 0;
            let result = if fail {
                failures_left = failures_left.saturating_sub(1);
                Err("planned failure".to_string())
            } else {
                proxy.sync(&services).map_err(|e| e.to_string())
            };
            let end = now_secs();
            last_sync = Instant::now();
            let mut st = shared.lock();
            let m = &mut st.metrics;
            let took = (end - start).max(0.0);
            m.count += 1;
            m.sum += took;
            for (i, b) in BUCKETS.iter().enumerate() {
                if took <= *b {
                    m.buckets[i] += 1;
                }
            }
            match result {
                Ok(()) => {
                    m.last_ok = end;
                    st.synced = st.synced.max(covers);
                    if st.synced >= st.seq {
                        st.pending_since = None;
                    }
                }
                Err(e) => {
                    m.failures += 1;
                    if !fail && st.error.is_none() {
                        st.error = Some(e);
                    }
                }
            }
            st.history.push(SyncRecord {
                start,
                end,
                ok: !fail,
                covers,
            });
            drop(st);
            shared.wake.notify_all();
            if !fail {
                break;
            }
            if !pause(shared, RETRY) {
                return;
            }
        }
    }
}

fn metrics_text(m: &Metrics) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, v: String| {
        out.push_str(&format!(
            "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    gauge(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "The last time proxy rules were successfully synced",
        "gauge",
        format!("{:.6}", m.last_ok),
    );
    gauge(
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "The last time a sync of proxy rules was queued",
        "gauge",
        format!("{:.6}", m.last_queued),
    );
    gauge(
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        "Cumulative proxy nftables sync failures",
        "counter",
        m.failures.to_string(),
    );
    gauge(
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        "Cumulative proxy iptables restore failures",
        "counter",
        m.failures.to_string(),
    );
    let name = "kubeproxy_sync_proxy_rules_duration_seconds";
    out.push_str(&format!(
        "# HELP {name} [ALPHA] SyncProxyRules latency in seconds\n# TYPE {name} histogram\n"
    ));
    for (b, n) in BUCKETS.iter().zip(m.buckets.iter()) {
        out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {n}\n"));
    }
    out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", m.count));
    out.push_str(&format!(
        "{name}_sum {:.6}\n{name}_count {}\n",
        m.sum, m.count
    ));
    out
}

/// A time in Go's `time.Time.String()` format, as kube-proxy's /healthz writes it.
fn go_time(secs: f64) -> String {
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9) as u64;
    let t = UNIX_EPOCH + Duration::from_secs(whole as u64);
    let base = crate::k8s::rfc3339(t).replace('T', " ").replace('Z', "");
    format!("{base}.{nanos:09} +0000 UTC")
}

fn serve(shared: &Shared, listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = answer(shared, stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn answer(shared: &Shared, mut s: TcpStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (code, ctype, body) = {
        let st = shared.lock();
        match path {
            "/metrics" => (200, "text/plain; version=0.0.4", metrics_text(&st.metrics)),
            "/proxyMode" => (200, "text/plain", shared.mode.to_string()),
            "/healthz" | "/livez" => {
                let now = now_secs();
                let late = st
                    .pending_since
                    .is_some_and(|t| now - t > HEALTHZ_TIMEOUT.as_secs_f64());
                let last = if late { st.metrics.last_ok } else { now };
                let body = format!(
                    "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\", \"nodeEligible\": true}}",
                    go_time(last),
                    go_time(now)
                );
                (if late { 503 } else { 200 }, "application/json", body)
            }
            _ => (404, "text/plain", "404 page not found\n".to_string()),
        }
    };
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_reads_like_kube_proxys() {
        assert_eq!(go_time(1.5), "1970-01-01 00:00:01.500000000 +0000 UTC");
    }

    #[test]
    fn metrics_carry_every_series_the_gate_reads() {
        let m = Metrics {
            last_ok: 12.5,
            last_queued: 13.0,
            failures: 2,
            count: 3,
            sum: 0.3,
            ..Metrics::default()
        };
        let t = metrics_text(&m);
        assert!(t.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 12.500000\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 13.000000\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 2\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 3\n"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    }
}
