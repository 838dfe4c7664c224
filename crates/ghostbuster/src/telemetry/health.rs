//! Liveness and readiness, as `/healthz` and `/readyz` answer them.
//!
//! [`Readiness`] is a latch (after linkerd2-proxy's readiness): it opens when every required watch
//! has synced and the first full scan finished, and then stays open. A later relist, a stale
//! watch or an open circuit breaker make the agent *report only* — shown in the `/readyz` details,
//! in `ghostbuster_report_only` and in the logs — but do not make it unready: failing readiness
//! on every API server hiccup would only stall DaemonSet rollouts and flap the metrics Service.
//!
//! [`Liveness`] is a heartbeat: the agent's loop calls [`Liveness::beat`] each turn; `/healthz`
//! fails once no beat came for the timeout, so the kubelet restarts a wedged agent. Before the
//! first beat it is alive (start-up lists can take a while).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::series::lock;

/// Three default resync intervals (60 s) without a beat: the loop is stuck.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(180);

/// Why the agent reports instead of removing, for `/readyz` and `ghostbuster_report_only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportOnly {
    /// Short, stable label (`dry_run`, `dataplane`, `not_synced`, `watch_stale`, `circuit_open`).
    pub reason: String,
    /// For people: "kube-proxy runs in ipvs mode", "endpointslices silent for 95 s".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl ReportOnly {
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        ReportOnly {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// The `/readyz` JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyStatus {
    pub ready: bool,
    /// Watches that have synced (and not lost it since).
    pub synced: Vec<String>,
    /// Required watches that have not synced.
    pub waiting_for: Vec<String>,
    pub first_scan_done: bool,
    /// `sweep` or `report`.
    pub mode: &'static str,
    pub report_only: Vec<ReportOnly>,
}

#[derive(Debug, Default)]
struct State {
    required: BTreeSet<String>,
    synced: BTreeSet<String>,
    first_scan_done: bool,
    open: bool,
    sweep: bool,
    report_only: Vec<ReportOnly>,
}

impl State {
    fn update_latch(&mut self) {
        if !self.open && self.first_scan_done && self.required.is_subset(&self.synced) {
            self.open = true;
        }
    }
}

/// The readiness latch. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<State>>);

impl Readiness {
    /// A latch waiting for these watches (e.g. `services`, `endpointslices`, `nodes`, `pods`) and
    /// the first full scan.
    pub fn new<S: Into<String>>(watches: impl IntoIterator<Item = S>) -> Self {
        let r = Readiness::default();
        lock(&r.0).required = watches.into_iter().map(Into::into).collect();
        r
    }

    /// Adds a watch to wait for (no effect once the latch is open).
    pub fn require(&self, watch: &str) {
        let mut s = lock(&self.0);
        if !s.open {
            s.required.insert(watch.to_string());
        }
    }

    /// A watch finished its initial list (`InitDone`).
    pub fn synced(&self, watch: &str) {
        let mut s = lock(&self.0);
        s.synced.insert(watch.to_string());
        s.update_latch();
    }

    /// A watch is relisting: shown in the details; closes nothing once open.
    pub fn lost_sync(&self, watch: &str) {
        lock(&self.0).synced.remove(watch);
    }

    /// The first full scan finished.
    pub fn first_scan_done(&self) {
        let mut s = lock(&self.0);
        s.first_scan_done = true;
        s.update_latch();
    }

    pub fn is_ready(&self) -> bool {
        lock(&self.0).open
    }

    pub fn set_mode(&self, sweep: bool) {
        lock(&self.0).sweep = sweep;
    }

    /// Replaces the report-only reasons.
    pub fn set_report_only(&self, reasons: Vec<ReportOnly>) {
        lock(&self.0).report_only = reasons;
    }

    pub fn status(&self) -> ReadyStatus {
        let s = lock(&self.0);
        ReadyStatus {
            ready: s.open,
            synced: s.synced.iter().cloned().collect(),
            waiting_for: s.required.difference(&s.synced).cloned().collect(),
            first_scan_done: s.first_scan_done,
            mode: if s.sweep { "sweep" } else { "report" },
            report_only: s.report_only.clone(),
        }
    }
}

/// The loop's heartbeat. Clones share it.
#[derive(Debug, Clone)]
pub struct Liveness {
    last: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(DEFAULT_LIVENESS_TIMEOUT)
    }
}

impl Liveness {
    pub fn new(timeout: Duration) -> Self {
        Liveness {
            last: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        *lock(&self.last) = Some(Instant::now());
    }

    /// Time since the last beat; `None` before the first one.
    pub fn since_last_beat(&self) -> Option<Duration> {
        lock(&self.last).map(|t| t.elapsed())
    }

    pub fn is_alive(&self) -> bool {
        self.since_last_beat().is_none_or(|d| d <= self.timeout)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_every_watch_and_the_first_scan_then_stays_open() {
        let r = Readiness::new(["services", "endpointslices"]);
        assert!(!r.is_ready());
        r.synced("services");
        r.first_scan_done();
        assert!(!r.is_ready());
        assert_eq!(r.status().waiting_for, vec!["endpointslices".to_string()]);
        r.synced("endpointslices");
        assert!(r.is_ready());
        // A relist afterwards shows in the details but does not close the latch.
        r.lost_sync("endpointslices");
        assert!(r.is_ready());
        let s = r.status();
        assert_eq!(s.waiting_for, vec!["endpointslices".to_string()]);
        assert!(s.ready);
    }

    #[test]
    fn scan_first_then_sync_also_opens() {
        let r = Readiness::new(["nodes"]);
        r.first_scan_done();
        assert!(!r.is_ready());
        r.require("servicecidrs");
        r.synced("nodes");
        assert!(!r.is_ready(), "servicecidrs was added");
        r.synced("servicecidrs");
        assert!(r.is_ready());
    }

    #[test]
    fn status_serializes_mode_and_reasons() {
        let r = Readiness::new(["pods"]);
        r.set_report_only(vec![
            ReportOnly::new("dataplane", "kube-proxy runs in ipvs mode"),
            ReportOnly::new("dry_run", ""),
        ]);
        let v = serde_json::to_value(r.status()).unwrap();
        assert_eq!(v["mode"], "report");
        assert_eq!(v["ready"], false);
        assert_eq!(v["waiting_for"][0], "pods");
        assert_eq!(
            v["report_only"][0]["detail"],
            "kube-proxy runs in ipvs mode"
        );
        assert!(v["report_only"][1].get("detail").is_none());
        r.set_mode(true);
        assert_eq!(r.status().mode, "sweep");
    }

    #[test]
    fn liveness_times_out_without_beats() {
        let l = Liveness::new(Duration::from_millis(500));
        assert!(l.is_alive(), "alive before the first beat");
        l.beat();
        assert!(l.is_alive());
        std::thread::sleep(Duration::from_millis(700));
        assert!(!l.is_alive());
        l.beat();
        assert!(l.is_alive());
    }
}
