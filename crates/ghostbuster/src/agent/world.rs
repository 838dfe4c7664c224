//! The agent's [`World`]: what the reactor asks of the outside (kube-proxy, the API server, the
//! watches) and where its results go (metrics, `/debug/recent`, logs, Events).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::runtime::Handle;

use super::gate::{Global, KubeProxyView, Trip};
use super::k8s_events::EventPoster;
use super::kube_proxy_reader::KubeProxyReader;
use super::lookups::{Lookups, Polled};
use super::reactor::{HoldersAnswer, PassKind, PassReport, PodFate, World};
use crate::cluster::kube::{HoldersError, IpHolders, PodCheck, PodChecker, WatchHealth};
use crate::sweep::Outcome;
use crate::telemetry::admin::AdminState;
use crate::telemetry::health::ReportOnly;
use crate::telemetry::metrics::{ScanKind, StaleKey};
use crate::telemetry::recent::RemovedFlow;

/// A pod lookup's key: the pod is its namespace, name and uid (never a name alone), asked about
/// one IP.
pub type PodKey = (String, String, Option<String>, IpAddr);

pub struct AgentWorld {
    pub rt: Handle,
    /// What successive readings of kube-proxy's metrics proved (read off the reactor).
    pub kube_proxy: KubeProxyReader,
    pub pods: Arc<PodChecker>,
    /// The longest a pod GET may take (it runs off the reactor, see [`super::lookups`]).
    pub pod_get_timeout: Duration,
    /// "Which pods hold IP x?" (rate-limited, with its own timeout), for ghosts without a
    /// tombstone.
    pub ip_holders: Arc<IpHolders>,
    /// Pod lookups under way or answered, by pod and IP.
    pub pod_lookups: Lookups<PodKey, PodFate>,
    /// "Who holds this IP?" questions under way or answered.
    pub holder_lookups: Lookups<IpAddr, HoldersAnswer>,
    /// Asks the reactor to look at a backend again (a lookup's answer it must act on).
    pub wake: Arc<dyn Fn(IpAddr) + Send + Sync>,
    /// For the Warning Event on this node when the circuit breaker trips.
    pub client: kube::Client,
    pub node_name: String,
    pub health: Arc<WatchHealth>,
    pub watch_stale_after: Duration,
    pub dry_run: bool,
    /// Set when the dataplane is one ghostbuster must not act on (IPVS, eBPF).
    pub dataplane: Arc<Mutex<Option<String>>>,
    pub admin: AdminState,
    pub events: Option<Arc<tokio::sync::Mutex<EventPoster>>>,
    pub log_removed_flows: bool,
    /// Where deleted flows go to have their client sockets ended (`--terminate-sockets`).
    pub end_sockets: Option<super::socket_ender::Requests>,
    /// A full pass over a whole view of the cluster has finished (readiness waits for it).
    pub first_full_pass: Arc<AtomicBool>,
    /// The biggest services by entries at the last full pass, for table-full warnings.
    pub top_services: Arc<Mutex<Vec<(String, u64)>>>,
}

impl World for AgentWorld {
    fn kube_proxy(&mut self) -> KubeProxyView {
        // Never waits for kube-proxy: see super::kube_proxy_reader.
        self.kube_proxy.view()
    }

    fn pod_fate(&mut self, namespace: &str, name: &str, uid: Option<&str>, ip: IpAddr) -> PodFate {
        let key: PodKey = (
            namespace.to_owned(),
            name.to_owned(),
            uid.map(str::to_owned),
            ip,
        );
        match self.pod_lookups.poll(&key, Instant::now()) {
            Polled::Ready(fate) => return fate,
            Polled::Pending { start: false } => return PodFate::Pending,
            Polled::Pending { start: true } => {}
        }
        let pods = self.pods.clone();
        let limit = self.pod_get_timeout;
        let (namespace, name, uid) = (key.0.clone(), key.1.clone(), key.2.clone());
        let lookup = async move {
            let pod = format!("{namespace}/{name}");
            let check = pods.check(&namespace, &name, uid.as_deref(), ip);
            match tokio::time::timeout(limit, check).await {
                Ok(Ok(PodCheck::Gone | PodCheck::Replaced | PodCheck::Moved)) => PodFate::Gone,
                Ok(Ok(PodCheck::Same | PodCheck::Terminating)) => PodFate::Alive,
                Ok(Err(e)) => {
                    tracing::warn!(%pod, error = %e, "pod lookup failed; keeping its flows, asking again with backoff");
                    PodFate::Unknown
                }
                Err(_) => {
                    tracing::warn!(%pod, timeout_ms = limit.as_millis() as u64, "pod lookup timed out; keeping its flows, asking again with backoff (--pod-get-timeout)");
                    PodFate::Unknown
                }
            }
        };
        self.pod_lookups
            .start(&self.rt, key, ip, self.wake.clone(), lookup);
        PodFate::Pending
    }

    fn ip_holders(&mut self, ip: IpAddr) -> HoldersAnswer {
        match self.holder_lookups.poll(&ip, Instant::now()) {
            Polled::Ready(answer) => return answer,
            Polled::Pending { start: false } => return HoldersAnswer::Pending,
            Polled::Pending { start: true } => {}
        }
        let holders = self.ip_holders.clone();
        let lookup = async move {
            match holders.pods_at(ip).await {
                // Any pod listed, finished ones too: a Succeeded/Failed pod has released the
                // IP, but one whose phase lags may not have; keep the connection.
                Ok(h) if h.pods.is_empty() => HoldersAnswer::Absent { as_of: h.asked_at },
                Ok(_) => HoldersAnswer::Held,
                Err(e @ HoldersError::RateLimited(_)) => {
                    tracing::debug!(error = %e, "keeping the flows; asking again later");
                    HoldersAnswer::Unknown
                }
                Err(e) => {
                    tracing::warn!(error = %e, "asking who holds a backend IP failed; keeping its flows, asking again with backoff");
                    HoldersAnswer::Unknown
                }
            }
        };
        self.holder_lookups
            .start(&self.rt, ip, ip, self.wake.clone(), lookup);
        HoldersAnswer::Pending
    }

    fn circuit_tripped(&mut self, trip: &Trip) {
        let note = format!(
            "ghostbuster on node {} stopped removing conntrack entries: a pass wanted to remove {} \
             after {} in the last minute, over the budget of {} per minute \
             (--max-deletes-per-minute). It only reports until it restarts (kubectl -n <namespace> \
             delete pod <this agent's pod>); look at /debug/recent and the pass logs first: a \
             burst this size is more often a wrong view of the cluster than that many ghosts.",
            self.node_name, trip.planned, trip.spent, trip.per_minute
        );
        tracing::warn!(
            planned = trip.planned,
            spent_last_minute = trip.spent,
            per_minute = trip.per_minute,
            "circuit breaker tripped: reporting only until the agent restarts. {note}"
        );
        self.admin.metrics.circuit_tripped();
        self.rt.spawn(super::k8s_events::post_node_warning_for(
            self.client.clone(),
            self.node_name.clone(),
            "RemoveConntrackEntries",
            "GhostbusterCircuitOpen",
            note,
        ));
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

    fn flow_index(&mut self, index: &crate::agent::flow_index::Summary) {
        self.admin.metrics.set_flow_index(index);
    }

    fn report(&mut self, pass: &PassReport) {
        let m = &self.admin.metrics;
        let kind = match pass.kind {
            PassKind::Full => ScanKind::Full,
            PassKind::Targeted => ScanKind::Targeted,
        };
        // The exact counts; the findings themselves are capped (kept ones beyond a few hundred
        // are only counted).
        m.record_scan(
            kind,
            pass.elapsed,
            pass.scanned,
            pass.stale.iter().map(|(k, n)| (k.clone(), *n)),
        );
        if pass.kind == PassKind::Targeted {
            m.record_backend_read(pass.read_by_index);
        }
        if let Some(ix) = &pass.flow_index {
            m.set_flow_index(ix);
        }
        if let Some(every) = pass.next_full_in {
            m.set_full_pass_interval(every);
        }
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
                let removed = RemovedFlow::new(f, *o, None, now);
                if self.log_removed_flows {
                    removed.log();
                }
                self.admin.recent.push(removed);
            }
            if *o == Outcome::Deleted {
                // Only a flow the sweep deleted, never a kept one; the ender re-checks the
                // table itself before it ends anything.
                if let Some(ender) = &self.end_sockets {
                    let _ = ender.send(f.flow);
                }
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
            m.observe_reaction(pass.acted_at.saturating_duration_since(opened));
            if let Some(removed) = pass.removed_at {
                let waited = Instant::now().saturating_duration_since(opened);
                if let Ok(total) = Duration::try_from(now.duration_since(removed)) {
                    m.observe_gate_wait(total.saturating_sub(waited));
                }
            }
        }
        m.set_circuit_open(pass.circuit_open);
        let held: Vec<ReportOnly> = pass
            .held
            .iter()
            .map(|h| ReportOnly::new(h.label(), serde_json::to_string(h).unwrap_or_default()))
            .collect();
        self.admin.set_report_only(held);
        // "Why is my ghost still there?", flow by flow (the few hundred kept details a pass
        // carries), at debug level: `--log info,ghostbuster::agent=debug`.
        if tracing::enabled!(tracing::Level::DEBUG) {
            for (f, o) in &pass.findings {
                if !matches!(o, Outcome::Deleted | Outcome::AlreadyGone) {
                    tracing::debug!(
                        kind = pass.kind.label(),
                        flow = ?f.flow.orig,
                        reply = ?f.flow.reply,
                        outcome = ?o,
                        verdict = %f.verdict.reason(),
                        "kept"
                    );
                }
            }
        }
        let stale = pass.findings.len() as u64 + pass.not_shown;
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
                without_destroy_events = pass.without_destroy_events,
                held = ?pass.held.as_ref().map(|h| h.label()),
                elapsed_ms = pass.elapsed.as_millis() as u64,
                "pass"
            );
        }
    }
}
