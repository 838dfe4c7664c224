//! The agent's [`World`]: what the reactor asks of the outside (kube-proxy, the API server, the
//! watches) and where its results go (metrics, `/debug/recent`, logs, Events).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::runtime::Handle;

use super::gate::Global;
use super::k8s_events::EventPoster;
use super::reactor::{PassKind, PassReport, PodFate, World};
use crate::cluster::kube::{PodCheck, PodChecker, WatchHealth};
use crate::sweep::Outcome;
use crate::telemetry::admin::AdminState;
use crate::telemetry::health::ReportOnly;
use crate::telemetry::kube_proxy::KubeProxy;
use crate::telemetry::metrics::{ScanKind, StaleKey};
use crate::telemetry::recent::RemovedFlow;

pub struct AgentWorld {
    pub rt: Handle,
    pub kube_proxy: KubeProxy,
    pub pods: PodChecker,
    pub health: Arc<WatchHealth>,
    pub watch_stale_after: Duration,
    pub dry_run: bool,
    /// Set when the dataplane is one ghostbuster must not act on (IPVS, eBPF).
    pub dataplane: Arc<Mutex<Option<String>>>,
    pub admin: AdminState,
    pub events: Option<Arc<tokio::sync::Mutex<EventPoster>>>,
    pub log_removed_flows: bool,
    /// A full pass over a whole view of the cluster has finished (readiness waits for it).
    pub first_full_pass: Arc<AtomicBool>,
    /// The biggest services by entries at the last full pass, for table-full warnings.
    pub top_services: Arc<Mutex<Vec<(String, u64)>>>,
}

impl World for AgentWorld {
    fn kube_proxy_synced_at(&mut self) -> Option<Timestamp> {
        let kp = &self.kube_proxy;
        let r = self.rt.block_on(kp.last_sync());
        let m = &self.admin.metrics;
        match r {
            Ok(t) => {
                let lag = Timestamp::now().duration_since(t);
                m.set_kube_proxy_lag(Duration::try_from(lag).ok());
                Some(t)
            }
            Err(e) => {
                tracing::debug!(error = %e, "kube-proxy's last sync time is unknown; using --grace");
                m.set_kube_proxy_lag(None);
                None
            }
        }
    }

    fn pod_fate(&mut self, namespace: &str, name: &str, uid: Option<&str>, ip: IpAddr) -> PodFate {
        let pods = &self.pods;
        match self.rt.block_on(pods.check(namespace, name, uid, ip)) {
            Ok(PodCheck::Gone | PodCheck::Replaced | PodCheck::Moved) => PodFate::Gone,
            Ok(PodCheck::Same | PodCheck::Terminating) => PodFate::Alive,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "pod lookup failed; keeping its flows");
                PodFate::Unknown
            }
        }
    }

    fn global(&mut self) -> Global {
        Global {
            dry_run: self.dry_run,
            dataplane: self.dataplane.lock().map(|d| d.clone()).unwrap_or(None),
            unsynced: self.health.unsynced(),
            stale: self.health.stale(self.watch_stale_after),
        }
    }

    fn tick(&mut self) {
        self.admin.liveness.beat();
    }

    fn report(&mut self, pass: &PassReport) {
        let m = &self.admin.metrics;
        let kind = match pass.kind {
            PassKind::Full => ScanKind::Full,
            PassKind::Targeted => ScanKind::Targeted,
        };
        let findings: Vec<_> = pass.findings.iter().map(|(f, _)| f.clone()).collect();
        m.record_scan_findings(kind, pass.elapsed, pass.scanned, &findings);
        if pass.kind == PassKind::Full {
            m.set_entries_by_state(
                pass.by_state
                    .iter()
                    .map(|((p, s), n)| (ctnetlink::proto_name(*p), *s, *n)),
            );
            m.set_service_entries(
                pass.by_service
                    .iter()
                    .map(|((ns, n), c)| (ns.as_str(), n.as_str(), *c)),
            );
            if !self.first_full_pass.swap(true, Ordering::Relaxed) {
                self.admin.readiness.first_scan_done();
            }
        }
        let now = Timestamp::now();
        let mut deleted = 0u64;
        for (f, o) in &pass.findings {
            match o {
                Outcome::Deleted => {
                    deleted += 1;
                    if let Some(k) = StaleKey::of(f) {
                        m.record_removed(&k, 1);
                    }
                    if let Some(start) = f.flow.start_ns {
                        let age = now.as_nanosecond() - start as i128;
                        if age > 0 {
                            m.observe_ghost_age(Duration::from_nanos(age as u64));
                        }
                    }
                }
                Outcome::Failed => m.record_removal_failure("delete_failed"),
                _ => {}
            }
            if matches!(o, Outcome::Deleted | Outcome::AlreadyGone | Outcome::Failed) {
                self.admin.recent.push(RemovedFlow::new(f, *o, None, now));
                if self.log_removed_flows {
                    let o4 = &f.flow.orig;
                    tracing::info!(
                        verdict = %f.verdict.kind,
                        result = o.as_str(),
                        protocol = f.flow.proto_name(),
                        src = %crate::render::endpoint(&o4.src, o4.sport()),
                        dst = %crate::render::endpoint(&o4.dst, o4.dport()),
                        backend = ?f.verdict.backend.map(|b| crate::render::endpoint(&b.ip, Some(b.port))),
                        service = ?f.verdict.service.as_ref().map(|s| format!("{}/{}", s.namespace, s.name)),
                        id = ?f.flow.id,
                        "removed flow"
                    );
                }
            }
            if *o == Outcome::Deleted {
                if let (Some(ev), Some(s)) = (&self.events, &f.verdict.service) {
                    let backend = f
                        .verdict
                        .backend
                        .map(|b| crate::render::endpoint(&b.ip, Some(b.port)))
                        .unwrap_or_default();
                    let gone_for = pass
                        .removed_at
                        .and_then(|r| Duration::try_from(now.duration_since(r)).ok());
                    if let Ok(mut p) = ev.try_lock() {
                        p.record(
                            (s.namespace.to_string(), s.name.to_string()),
                            1,
                            backend,
                            None,
                            gone_for,
                        );
                    }
                }
            }
        }
        if let (Some(opened), true) = (pass.gate_opened, deleted > 0) {
            m.observe_reaction(opened.elapsed());
            if let Some(removed) = pass.removed_at {
                let waited = Instant::now().duration_since(opened);
                if let Ok(total) = Duration::try_from(now.duration_since(removed)) {
                    m.observe_gate_wait(total.saturating_sub(waited));
                }
            }
        }
        m.set_circuit_open(matches!(pass.held, Some(super::gate::Hold::CircuitOpen)));
        let held: Vec<ReportOnly> = pass
            .held
            .iter()
            .map(|h| ReportOnly::new(h.label(), serde_json::to_string(h).unwrap_or_default()))
            .collect();
        self.admin.set_report_only(held);
        let stale = pass.findings.len();
        // A targeted pass that kept stale flows is logged too: "why is my ghost still there?"
        if deleted > 0
            || pass.totals.failed > 0
            || pass.held.is_some()
            || pass.kind == PassKind::Full
            || stale > 0
        {
            tracing::info!(
                kind = pass.kind.label(),
                scanned = pass.scanned,
                stale,
                deleted = pass.totals.deleted,
                already_gone = pass.totals.already_gone,
                failed = pass.totals.failed,
                held = ?pass.held.as_ref().map(|h| h.label()),
                elapsed_ms = pass.elapsed.as_millis() as u64,
                "pass"
            );
        }
    }
}
