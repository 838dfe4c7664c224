//! Every metric the agent exports (issue #4 §4, issue #5 §1), in one prometheus-client
//! [`Registry`] owned by [`Metrics`].
//!
//! Names: all prefixed `ghostbuster_` except `conntrack_stale_entries`, the seeds' own name, so
//! their alert `conntrack_stale_entries > 0` works unchanged. Counters are registered without
//! `_total`: prometheus-client appends it.
//!
//! Cardinality is capped (see `cardinality.rs`): only services with non-healthy flows get labels,
//! at most [`MetricsConfig::max_service_series`] of them, the rest are summed as
//! `namespace="_other", service="_other"` (and `port="_other"`). Gauges that describe "the table
//! now" (stale flows per service, entries per state or service, sysctl checks) are *replaced* by
//! each full scan or reading, so a service that no longer has stale flows disappears instead of
//! staying at its last value. Targeted scans see one backend only and never replace the stale
//! gauge; the next full scan does.
//!
//! Values that are not known yet are absent rather than 0: the table size and limit before the
//! first reading, the kube-proxy lag when kube-proxy cannot be read, the per-CPU counters before
//! the first statistics dump, and the table-full ETA unless the table is growing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctnetlink::{CpuStats, Flow, GlobalStats};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::cardinality::{top_services, Admission, ServiceKey, OTHER};
use super::forecast::Forecaster;
use super::series::{lock, GaugeSet, Labels, StatCounter};
use super::wrap::CpuCounters;
use crate::audit::Finding as AuditFinding;
use crate::scan::Finding;
use crate::verdict::VerdictKind;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Default of `--max-service-series`.
pub const DEFAULT_MAX_SERVICE_SERIES: usize = 100;
/// How many services `ghostbuster_conntrack_service_entries` names by default.
pub const DEFAULT_TOP_SERVICES: usize = 20;
/// Distinct `reason` values of the removal-failure counter before the rest become `other`.
pub const MAX_FAILURE_REASONS: usize = 16;
/// Namespace and service of a stale flow whose Service is unknown (e.g. `service_gone`).
pub const UNKNOWN: &str = "_unknown";

// Histogram buckets, in seconds.
/// A ghost's age at removal: seconds to days (the kernel's TCP established timeout is 5 days).
const GHOST_AGE_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0, 432000.0,
];
/// Gate open → flows gone. The target is p99 ≤ 250 ms on a 1M-entry table.
const REACTION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Endpoint removal → gate open: kube-proxy's sync lag (about 1 s minimum), or `--grace`.
const GATE_WAIT_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// A targeted scan takes milliseconds, a full dump of 1M entries about a second.
const SCAN_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn scan_histogram() -> Histogram {
    Histogram::new(SCAN_BUCKETS)
}

/// What [`Metrics::new`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `--max-service-series`: services with their own labels in per-service metrics.
    pub max_service_series: usize,
    /// Services named in `ghostbuster_conntrack_service_entries` (never more than
    /// `max_service_series`).
    pub top_services: usize,
    /// `--per-cpu-metrics`: a `cpu` label on the kernel's counters instead of their sum.
    pub per_cpu: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_service_series: DEFAULT_MAX_SERVICE_SERIES,
            top_services: DEFAULT_TOP_SERVICES,
            per_cpu: false,
        }
    }
}

/// `kind` of `ghostbuster_scan_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// A dump of the whole table: the source of truth, replaces the stale gauge.
    Full,
    /// A filtered dump for one backend.
    Targeted,
}

impl ScanKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScanKind::Full => "full",
            ScanKind::Targeted => "targeted",
        }
    }
}

/// The labels of `conntrack_stale_entries` for one group of non-healthy flows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StaleKey {
    pub namespace: String,
    pub service: String,
    /// The Service port (the flow's original destination port when the Service is unknown).
    pub port: u16,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: &'static str,
    pub verdict: VerdictKind,
}

impl StaleKey {
    /// The key of a finding; `None` for `healthy` and `not_service`.
    pub fn of(f: &Finding) -> Option<StaleKey> {
        let verdict = f.verdict.kind;
        if !verdict.is_stale() {
            return None;
        }
        Some(match &f.verdict.service {
            Some(s) => StaleKey {
                namespace: s.namespace.to_string(),
                service: s.name.to_string(),
                port: s.port,
                protocol: s.protocol.as_lower(),
                verdict,
            },
            None => StaleKey {
                namespace: UNKNOWN.to_string(),
                service: UNKNOWN.to_string(),
                port: f.flow.orig.dport().unwrap_or(0),
                protocol: f.flow.proto_name(),
                verdict,
            },
        })
    }

    fn service_key(&self) -> ServiceKey {
        (self.namespace.clone(), self.service.clone())
    }
}

/// Counts findings per [`StaleKey`] (healthy and non-service flows are skipped).
pub fn stale_counts<'a>(
    findings: impl IntoIterator<Item = &'a Finding>,
) -> BTreeMap<StaleKey, u64> {
    let mut m = BTreeMap::new();
    for f in findings {
        if let Some(k) = StaleKey::of(f) {
            *m.entry(k).or_insert(0) += 1;
        }
    }
    m
}

/// Entries per protocol and state, counted during a dump (`state="none"` for protocols without
/// states, such as UDP), for [`Metrics::set_entries_by_state`].
#[derive(Debug, Clone, Default)]
pub struct StateCounts(HashMap<(&'static str, &'static str), u64>);

impl StateCounts {
    pub fn add(&mut self, f: &Flow) {
        *self
            .0
            .entry((f.proto_name(), f.state_name().unwrap_or("none")))
            .or_insert(0) += 1;
    }

    pub fn rows(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.0.iter().map(|(&(p, s), &n)| (p, s, n))
    }
}

/// The agent's metrics. Share it as `Arc<Metrics>`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
    registry: Registry,
    stale: GaugeSet,
    removed: Family<Labels, Counter>,
    removed_admission: Mutex<Admission>,
    removal_failures: Family<Labels, Counter>,
    sockets_ended: Family<Labels, Counter>,
    failure_reasons: Mutex<BTreeSet<String>>,
    recreated: Counter,
    ghost_age: Histogram,
    reaction: Histogram,
    gate_wait: Histogram,
    kube_proxy_lag: GaugeSet,
    entries: GaugeSet,
    limit: GaugeSet,
    scan_duration: Family<Labels, Histogram, fn() -> Histogram>,
    scan_flows: Family<Labels, Gauge>,
    last_scan: Family<Labels, Gauge<f64, AtomicU64>>,
    events_lost: Counter,
    synced: Gauge,
    endpoint_changes: Counter,
    mode: GaugeSet,
    circuit_open: Gauge,
    circuit_trips: Counter,
    kube_proxy_failing: Gauge,
    ready: Gauge,
    report_only: GaugeSet,
    entries_by_state: GaugeSet,
    service_entries: GaugeSet,
    cpu: Arc<Mutex<CpuCounters>>,
    forecast: Mutex<(Forecaster, u64)>,
    table_full_eta: GaugeSet,
    sysctl: GaugeSet,
    flow_index: TableReadMetrics,
}

#[derive(Debug)]
/// The reactor's reading of the table: the full passes' effective interval, how removed
/// backends' flows were read, and the flow index's size (`agent::flow_index`).
struct TableReadMetrics {
    full_pass_interval: Gauge<f64, AtomicU64>,
    reads: Family<Labels, Counter>,
    entries: Gauge,
    bytes: Gauge,
    trusted: Gauge,
}

impl TableReadMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = TableReadMetrics {
            full_pass_interval: Gauge::default(),
            reads: Family::default(),
            entries: Gauge::default(),
            bytes: Gauge::default(),
            trusted: Gauge::default(),
        };
        r.register(
            "ghostbuster_full_pass_interval_seconds",
            "Time from the last full pass to the next: --resync-interval, stretched so that full \
             passes stay under --resync-cpu-percent of a core",
            m.full_pass_interval.clone(),
        );
        r.register(
            "ghostbuster_backend_reads",
            "Targeted passes by how the backend's flows were read: `index` (exact reads of the \
             entries the flow index names) or `walk` (a dump of the whole table)",
            m.reads.clone(),
        );
        r.register(
            "ghostbuster_flow_index_entries",
            "DNAT'd conntrack entries in the flow index",
            m.entries.clone(),
        );
        r.register(
            "ghostbuster_flow_index_bytes",
            "Heap held by the flow index's tables (estimate)",
            m.bytes.clone(),
        );
        r.register(
            "ghostbuster_flow_index_trusted",
            "1 while the flow index is complete (rebuilt by a full pass, no conntrack event lost \
             since); 0: removals walk the table",
            m.trusted.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn new(config: MetricsConfig) -> Self {
        let mut r = Registry::default();
        let stale = GaugeSet::default();
        r.register(
            "conntrack_stale_entries",
            "Conntrack flows that were not healthy at the last full scan, by Service port and \
             verdict (services beyond the series cap are summed as _other)",
            stale.clone(),
        );
        let removed = Family::<Labels, Counter>::default();
        r.register(
            "ghostbuster_flows_removed",
            "Stale conntrack flows removed, by Service and verdict",
            removed.clone(),
        );
        let removal_failures = Family::<Labels, Counter>::default();
        r.register(
            "ghostbuster_flow_removal_failures",
            "Conntrack deletes that failed (an entry already gone is not a failure), by reason",
            removal_failures.clone(),
        );
        let sockets_ended = Family::<Labels, Counter>::default();
        r.register(
            "ghostbuster_sockets_terminated",
            "With --terminate-sockets: what ending the client socket of each deleted flow came to \
             (destroyed, no_socket, unconnected, no_namespace, ambiguous, recovered, \
             not_applicable, failed)",
            sockets_ended.clone(),
        );
        let recreated = Counter::default();
        r.register(
            "ghostbuster_flows_recreated",
            "Flows seen again towards a backend whose flows were already removed (kube-proxy \
             still sending to it)",
            recreated.clone(),
        );
        let ghost_age = Histogram::new(GHOST_AGE_BUCKETS);
        r.register(
            "ghostbuster_ghost_age_seconds",
            "How long a removed ghost flow had lived (flows with a start timestamp only)",
            ghost_age.clone(),
        );
        let reaction = Histogram::new(REACTION_BUCKETS);
        r.register(
            "ghostbuster_reaction_seconds",
            "From the delete gate opening to the stale flows being gone",
            reaction.clone(),
        );
        let gate_wait = Histogram::new(GATE_WAIT_BUCKETS);
        r.register(
            "ghostbuster_gate_wait_seconds",
            "From an endpoint's removal to the delete gate opening (kube-proxy's lag shows here)",
            gate_wait.clone(),
        );
        let kube_proxy_lag = GaugeSet::default();
        r.register(
            "ghostbuster_kube_proxy_sync_lag_seconds",
            "Seconds since kube-proxy last synced its rules (absent when it cannot be read)",
            kube_proxy_lag.clone(),
        );
        let entries = GaugeSet::default();
        r.register(
            "ghostbuster_conntrack_entries",
            "Entries in the conntrack table of the agent's network namespace",
            entries.clone(),
        );
        let limit = GaugeSet::default();
        r.register(
            "ghostbuster_conntrack_entries_limit",
            "The conntrack table's limit (nf_conntrack_max)",
            limit.clone(),
        );
        let scan_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(scan_histogram);
        r.register(
            "ghostbuster_scan_duration_seconds",
            "Duration of conntrack scans (full: the whole table; targeted: one backend)",
            scan_duration.clone(),
        );
        let scan_flows = Family::<Labels, Gauge>::default();
        r.register(
            "ghostbuster_scan_flows",
            "Flows examined by the last scan of each kind",
            scan_flows.clone(),
        );
        let last_scan = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "ghostbuster_last_scan_timestamp_seconds",
            "When the last scan of each kind finished (Unix time)",
            last_scan.clone(),
        );
        let events_lost = Counter::default();
        r.register(
            "ghostbuster_conntrack_events_lost",
            "Conntrack event socket overflows (ENOBUFS); each one costs a full scan",
            events_lost.clone(),
        );
        let synced = Gauge::default();
        r.register(
            "ghostbuster_cluster_synced",
            "1 when every watch has synced and is fresh, else 0",
            synced.clone(),
        );
        let endpoint_changes = Counter::default();
        r.register(
            "ghostbuster_endpoint_changes",
            "Endpoints that left every slice of their Service (each one a possible ghost)",
            endpoint_changes.clone(),
        );
        let mode = GaugeSet::default();
        r.register(
            "ghostbuster_mode",
            "1 for the active mode: sweep (removing ghosts) or report (only reporting them)",
            mode.clone(),
        );
        let circuit_open = Gauge::default();
        r.register(
            "ghostbuster_circuit_open",
            "1 while the circuit breaker holds deletes (too many flows would be removed at once)",
            circuit_open.clone(),
        );
        let circuit_trips = Counter::default();
        r.register(
            "ghostbuster_circuit_breaker_trips",
            "Times the deletes-per-minute budget tripped the circuit breaker (it then stays open until the agent restarts)",
            circuit_trips.clone(),
        );
        let kube_proxy_failing = Gauge::default();
        r.register(
            "ghostbuster_kube_proxy_failing",
            "1 while kube-proxy reports failing rule syncs or an unhealthy /healthz (deletes wait)",
            kube_proxy_failing.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "ghostbuster_ready",
            "1 once every watch has synced and the first full scan finished (as /readyz)",
            ready.clone(),
        );
        let report_only = GaugeSet::default();
        r.register(
            "ghostbuster_report_only",
            "1 for each reason the agent reports instead of removing (absent in sweep mode)",
            report_only.clone(),
        );
        let build_info = GaugeSet::default();
        build_info.replace(vec![(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        )]);
        r.register(
            "ghostbuster_build_info",
            "Always 1; the version is in the label",
            build_info,
        );
        let entries_by_state = GaugeSet::default();
        r.register(
            "ghostbuster_conntrack_entries_by_state",
            "Conntrack entries by protocol and state at the last full scan",
            entries_by_state.clone(),
        );
        let service_entries = GaugeSet::default();
        r.register(
            "ghostbuster_conntrack_service_entries",
            "Conntrack entries of the Services holding the most (the rest summed as _other)",
            service_entries.clone(),
        );
        let cpu = Arc::new(Mutex::new(CpuCounters::new()));
        for (i, name) in CpuStats::NAMES.iter().enumerate() {
            r.register(
                format!("ghostbuster_conntrack_stat_{name}"),
                format!(
                    "The kernel's per-CPU conntrack counter {name} (as conntrack -S), {}",
                    if config.per_cpu {
                        "per CPU"
                    } else {
                        "summed over CPUs"
                    }
                ),
                StatCounter::new(cpu.clone(), i, config.per_cpu),
            );
        }
        let table_full_eta = GaugeSet::default();
        r.register(
            "ghostbuster_conntrack_table_full_eta_seconds",
            "Seconds until the conntrack table is full at the pace of the last 15 minutes \
             (absent when not growing)",
            table_full_eta.clone(),
        );
        let sysctl = GaugeSet::default();
        r.register(
            "ghostbuster_sysctl_check",
            "Result of each audit check: 0 ok, 1 info, 2 warn, 3 critical",
            sysctl.clone(),
        );
        let flow_index = TableReadMetrics::register(&mut r);
        let admission = Admission::new(config.max_service_series);
        let m = Metrics {
            config,
            registry: r,
            stale,
            removed,
            removed_admission: Mutex::new(admission),
            removal_failures,
            sockets_ended,
            failure_reasons: Mutex::new(BTreeSet::new()),
            recreated,
            ghost_age,
            reaction,
            gate_wait,
            kube_proxy_lag,
            entries,
            limit,
            scan_duration,
            scan_flows,
            last_scan,
            events_lost,
            synced,
            endpoint_changes,
            mode,
            circuit_open,
            circuit_trips,
            kube_proxy_failing,
            ready,
            report_only,
            entries_by_state,
            service_entries,
            cpu,
            forecast: Mutex::new((Forecaster::new(), 0)),
            table_full_eta,
            sysctl,
            flow_index,
        };
        m.set_mode(false);
        m
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// The registry (read-only: to encode it into a combined exposition).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a finished scan: its duration, how many flows it examined and, for a full scan,
    /// the non-healthy flows per [`StaleKey`] (replacing the previous full scan's). Targeted scans
    /// leave `conntrack_stale_entries` alone.
    pub fn record_scan(
        &self,
        kind: ScanKind,
        duration: Duration,
        scanned: u64,
        stale: impl IntoIterator<Item = (StaleKey, u64)>,
    ) {
        let labels: Labels = vec![("kind", kind.as_str().to_string())];
        self.scan_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.scan_flows
            .get_or_create(&labels)
            .set(i64::try_from(scanned).unwrap_or(i64::MAX));
        self.last_scan.get_or_create(&labels).set(unix_now());
        if kind == ScanKind::Full {
            self.stale
                .replace(stale_series(stale, self.config.max_service_series));
        }
    }

    /// [`Metrics::record_scan`] from the scan's findings.
    pub fn record_scan_findings(
        &self,
        kind: ScanKind,
        duration: Duration,
        scanned: u64,
        findings: &[Finding],
    ) {
        self.record_scan(kind, duration, scanned, stale_counts(findings));
    }

    /// Counts `n` flows removed (the `port` of the key is not a label here).
    pub fn record_removed(&self, key: &StaleKey, n: u64) {
        self.record_removed_at(key, n, Instant::now());
    }

    fn record_removed_at(&self, key: &StaleKey, n: u64, now: Instant) {
        let own = removed_labels(&key.namespace, &key.service, key.protocol, key.verdict);
        let admit = lock(&self.removed_admission).admit(&key.service_key(), &own, now);
        for old in &admit.evicted {
            self.removed.remove(old);
        }
        let labels = if admit.own {
            own
        } else {
            removed_labels(OTHER, OTHER, key.protocol, key.verdict)
        };
        self.removed.get_or_create(&labels).inc_by(n);
    }

    /// Counts one failed delete. Use a short, bounded reason ([`errno_reason`]); past
    /// [`MAX_FAILURE_REASONS`] distinct values the rest count as `other`.
    pub fn record_removal_failure(&self, reason: &str) {
        let reason = {
            let mut seen = lock(&self.failure_reasons);
            if seen.contains(reason) || seen.len() < MAX_FAILURE_REASONS {
                seen.insert(reason.to_string());
                reason
            } else {
                "other"
            }
        };
        self.removal_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// One client socket of a deleted flow looked for and, maybe, ended.
    pub fn socket_ended(&self, e: crate::sockets::Ended) {
        self.sockets_ended
            .get_or_create(&vec![("result", e.label().to_string())])
            .inc();
    }

    /// A targeted pass read its backend's flows through the flow index (or walked the table).
    pub fn record_backend_read(&self, by_index: bool) {
        let how = if by_index { "index" } else { "walk" };
        self.flow_index
            .reads
            .get_or_create(&vec![("how", how.to_string())])
            .inc();
    }

    /// The time to the next full pass, as the last one scheduled it.
    pub fn set_full_pass_interval(&self, d: Duration) {
        self.flow_index.full_pass_interval.set(d.as_secs_f64());
    }

    /// The flow index as a pass left it.
    pub fn set_flow_index(&self, s: &crate::agent::flow_index::Summary) {
        let m = &self.flow_index;
        m.entries.set(s.flows as i64);
        m.bytes.set(s.heap_bytes as i64);
        m.trusted.set(i64::from(s.trusted));
    }

    pub fn record_recreated(&self, n: u64) {
        self.recreated.inc_by(n);
    }

    pub fn observe_reaction(&self, d: Duration) {
        self.reaction.observe(d.as_secs_f64());
    }

    pub fn observe_gate_wait(&self, d: Duration) {
        self.gate_wait.observe(d.as_secs_f64());
    }

    pub fn observe_ghost_age(&self, d: Duration) {
        self.ghost_age.observe(d.as_secs_f64());
    }

    /// kube-proxy's lag behind now, or `None` when it cannot be read (the metric disappears).
    pub fn set_kube_proxy_lag(&self, lag: Option<Duration>) {
        self.kube_proxy_lag.set_single(lag.map(|d| d.as_secs_f64()));
    }

    /// The table's size and limit (`Conntrack::stats`); also feeds the table-full forecast.
    pub fn set_table(&self, stats: GlobalStats) {
        self.entries.set_single(Some(f64::from(stats.entries)));
        self.limit.set_single(Some(f64::from(stats.max_entries)));
        let mut f = lock(&self.forecast);
        f.1 = u64::from(stats.max_entries);
        f.0.sample(Instant::now(), u64::from(stats.entries));
        self.table_full_eta
            .set_single(f.0.eta(f.1).map(|d| d.as_secs_f64()));
    }

    /// Feeds the forecast one entry count taken at `at` (at most one per 15 s is kept) and
    /// updates `ghostbuster_conntrack_table_full_eta_seconds` against the last known limit.
    pub fn sample_table_count(&self, at: Instant, entries: u64) {
        let mut f = lock(&self.forecast);
        f.0.sample(at, entries);
        self.table_full_eta
            .set_single(f.0.eta(f.1).map(|d| d.as_secs_f64()));
    }

    /// Replaces the entries per `(protocol, state)` ([`StateCounts::rows`]).
    pub fn set_entries_by_state<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) {
        let mut series: Vec<(Labels, f64)> = rows
            .into_iter()
            .map(|(p, s, n)| {
                (
                    vec![("protocol", p.to_string()), ("state", s.to_string())],
                    n as f64,
                )
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        self.entries_by_state.replace(series);
    }

    /// Replaces the entries per Service `(namespace, name, entries)`: the
    /// [`MetricsConfig::top_services`] largest keep their names, the rest are summed as `_other`.
    pub fn set_service_entries<A, B>(&self, rows: impl IntoIterator<Item = (A, B, u64)>)
    where
        A: AsRef<str>,
        B: AsRef<str>,
    {
        let mut totals: BTreeMap<ServiceKey, u64> = BTreeMap::new();
        for (ns, svc, n) in rows {
            *totals
                .entry((ns.as_ref().to_string(), svc.as_ref().to_string()))
                .or_insert(0) += n;
        }
        let max = self.config.top_services.min(self.config.max_service_series);
        let keep = top_services(&totals, max);
        let mut other = 0u64;
        let mut series = Vec::with_capacity(keep.len() + 1);
        for ((ns, svc), n) in totals {
            if keep.contains(&(ns.clone(), svc.clone())) {
                series.push((vec![("namespace", ns), ("service", svc)], n as f64));
            } else {
                other += n;
            }
        }
        if other > 0 {
            series.push((
                vec![("namespace", OTHER.into()), ("service", OTHER.into())],
                other as f64,
            ));
        }
        self.service_entries.replace(series);
    }

    /// Takes one per-CPU statistics dump (`Conntrack::stats_per_cpu`); the counters handle the
    /// kernel's 32-bit wrap.
    pub fn update_cpu_stats(&self, stats: &[CpuStats]) {
        lock(&self.cpu).update(stats);
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.set(i64::from(synced));
    }

    /// `ghostbuster_mode{mode="sweep"}` 1 and `{mode="report"}` 0, or the other way round.
    pub fn set_mode(&self, sweep: bool) {
        self.mode.replace(vec![
            (vec![("mode", "report".into())], f64::from(u8::from(!sweep))),
            (vec![("mode", "sweep".into())], f64::from(u8::from(sweep))),
        ]);
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }

    /// The deletes-per-minute budget tripped (`ghostbuster_circuit_breaker_trips_total`).
    pub fn circuit_tripped(&self) {
        self.circuit_trips.inc();
        self.circuit_open.set(1);
    }

    pub fn set_kube_proxy_failing(&self, failing: bool) {
        self.kube_proxy_failing.set(i64::from(failing));
    }

    /// Readiness as `/readyz` answers it (the admin server sets it at each scrape).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// One report-only reason, or none.
    pub fn set_report_only(&self, reason: Option<&str>) {
        self.set_report_only_reasons(reason);
    }

    /// Replaces the report-only reasons (e.g. `gate::Hold::label()`: `dry_run`, `dataplane`,
    /// `not_synced`, `watch_stale`, `circuit_open`); none makes the metric absent.
    pub fn set_report_only_reasons<S: AsRef<str>>(&self, reasons: impl IntoIterator<Item = S>) {
        let set: BTreeSet<String> = reasons
            .into_iter()
            .map(|r| r.as_ref().to_string())
            .collect();
        self.report_only.replace(
            set.into_iter()
                .map(|r| (vec![("reason", r)], 1.0))
                .collect(),
        );
    }

    /// Counts one event socket overflow.
    pub fn events_lost(&self) {
        self.events_lost.inc();
    }

    pub fn endpoint_changes(&self, n: u64) {
        self.endpoint_changes.inc_by(n);
    }

    /// Replaces the audit results.
    pub fn set_sysctl_checks(&self, findings: &[AuditFinding]) {
        self.sysctl.replace(
            findings
                .iter()
                .map(|f| {
                    (
                        vec![
                            ("check", f.check.to_string()),
                            ("scope", f.scope.as_str().to_string()),
                        ],
                        f64::from(f.severity.level()),
                    )
                })
                .collect(),
        );
    }

    /// The OpenMetrics text exposition (ends with `# EOF`), served as [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; a metric's own encoder could. Say so in the
            // exposition rather than serve half of it silently.
            out.clear();
            out.push_str("# encoding the metrics failed\n# EOF\n");
        }
        out
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn removed_labels(ns: &str, svc: &str, protocol: &str, verdict: VerdictKind) -> Labels {
    vec![
        ("namespace", ns.to_string()),
        ("service", svc.to_string()),
        ("protocol", protocol.to_string()),
        ("verdict", verdict.as_str().to_string()),
    ]
}

/// The `conntrack_stale_entries` series of one full scan, capped.
fn stale_series(rows: impl IntoIterator<Item = (StaleKey, u64)>, max: usize) -> Vec<(Labels, f64)> {
    let mut merged: BTreeMap<StaleKey, u64> = BTreeMap::new();
    for (k, n) in rows {
        if n > 0 {
            *merged.entry(k).or_insert(0) += n;
        }
    }
    let mut totals: BTreeMap<ServiceKey, u64> = BTreeMap::new();
    for (k, n) in &merged {
        *totals.entry(k.service_key()).or_insert(0) += n;
    }
    let keep = top_services(&totals, max);
    let mut other: BTreeMap<(&'static str, VerdictKind), u64> = BTreeMap::new();
    let mut series = Vec::new();
    for (k, n) in merged {
        if keep.contains(&k.service_key()) {
            series.push((
                vec![
                    ("namespace", k.namespace),
                    ("service", k.service),
                    ("port", k.port.to_string()),
                    ("protocol", k.protocol.to_string()),
                    ("verdict", k.verdict.as_str().to_string()),
                ],
                n as f64,
            ));
        } else {
            *other.entry((k.protocol, k.verdict)).or_insert(0) += n;
        }
    }
    for ((protocol, verdict), n) in other {
        series.push((
            vec![
                ("namespace", OTHER.into()),
                ("service", OTHER.into()),
                ("port", OTHER.into()),
                ("protocol", protocol.to_string()),
                ("verdict", verdict.as_str().to_string()),
            ],
            n as f64,
        ));
    }
    series
}

/// A bounded `reason` for [`Metrics::record_removal_failure`] from a delete's errno.
pub fn errno_reason(errno: i32) -> &'static str {
    match errno {
        libc::EPERM | libc::EACCES => "permission",
        libc::ENOBUFS | libc::ENOMEM => "no_memory",
        libc::EINVAL => "invalid",
        libc::EBUSY => "busy",
        libc::EOPNOTSUPP => "not_supported",
        libc::ETIMEDOUT => "timeout",
        _ => "other_errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize, verdict: VerdictKind) -> StaleKey {
        StaleKey {
            namespace: "ns".into(),
            service: format!("svc{i:03}"),
            port: 80,
            protocol: "tcp",
            verdict,
        }
    }

    fn services(series: &[(Labels, f64)]) -> BTreeSet<String> {
        series
            .iter()
            .filter_map(|(l, _)| {
                l.iter()
                    .find(|(k, _)| *k == "service")
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }

    #[test]
    fn stale_series_caps_services_and_sums_the_rest() {
        // 150 services, service i with i+1 flows: the 100 largest (50..150) keep their names.
        let rows = (0..150).map(|i| (key(i, VerdictKind::EndpointGone), i as u64 + 1));
        let s = stale_series(rows, 100);
        let names = services(&s);
        assert_eq!(names.len(), 101);
        assert!(names.contains(OTHER));
        assert!(names.contains("svc149") && names.contains("svc050"));
        assert!(!names.contains("svc049"));
        let other: f64 = s
            .iter()
            .filter(|(l, _)| l.contains(&("service", OTHER.to_string())))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(other, (1..=50).sum::<u64>() as f64);
        let total: f64 = s.iter().map(|(_, v)| v).sum();
        assert_eq!(total, (1..=150).sum::<u64>() as f64, "nothing lost");
    }

    #[test]
    fn stale_series_merges_duplicates_and_drops_zeros() {
        let rows = vec![
            (key(1, VerdictKind::Unanswered), 2),
            (key(1, VerdictKind::Unanswered), 3),
            (key(2, VerdictKind::IpReused), 0),
        ];
        let s = stale_series(rows, 100);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1, 5.0);
    }

    #[test]
    fn removed_counters_are_capped_with_other() {
        let m = Metrics::new(MetricsConfig {
            max_service_series: 2,
            ..Default::default()
        });
        for i in 0..5 {
            m.record_removed(&key(i, VerdictKind::EndpointGone), 1);
        }
        let text = m.encode();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ghostbuster_flows_removed_total{"))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(text.contains(
            "ghostbuster_flows_removed_total{namespace=\"_other\",service=\"_other\",protocol=\"tcp\",verdict=\"endpoint_gone\"} 3"
        ));
    }

    #[test]
    fn idle_removed_series_are_evicted() {
        let m = Metrics::new(MetricsConfig {
            max_service_series: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        m.record_removed_at(&key(1, VerdictKind::EndpointGone), 4, t0);
        m.record_removed_at(
            &key(2, VerdictKind::EndpointGone),
            1,
            t0 + Duration::from_secs(10),
        );
        assert!(m.encode().contains("service=\"svc001\""));
        m.record_removed_at(
            &key(3, VerdictKind::EndpointGone),
            2,
            t0 + Duration::from_secs(2 * 3600),
        );
        let text = m.encode();
        assert!(!text.contains("service=\"svc001\""), "{text}");
        assert!(text.contains("service=\"svc003\""));
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let m = Metrics::new(MetricsConfig::default());
        for i in 0..(MAX_FAILURE_REASONS + 5) {
            m.record_removal_failure(&format!("r{i}"));
        }
        let text = m.encode();
        let n = text
            .lines()
            .filter(|l| l.starts_with("ghostbuster_flow_removal_failures_total{"))
            .count();
        assert_eq!(n, MAX_FAILURE_REASONS + 1);
        assert!(text.contains("ghostbuster_flow_removal_failures_total{reason=\"other\"} 5"));
        assert_eq!(errno_reason(libc::EPERM), "permission");
        assert_eq!(errno_reason(12345), "other_errno");
    }

    #[test]
    fn service_entries_keep_the_top_n() {
        let m = Metrics::new(MetricsConfig {
            top_services: 3,
            ..Default::default()
        });
        m.set_service_entries((0..10).map(|i| ("ns", format!("s{i}"), (i + 1) as u64)));
        let s = m.service_entries.series();
        assert_eq!(s.len(), 4);
        assert_eq!(
            services(&s),
            ["s7", "s8", "s9", OTHER]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let other = s.iter().find(|(l, _)| l[1].1 == OTHER).unwrap().1;
        assert_eq!(other, (1..=7).sum::<u64>() as f64);
    }

    #[test]
    fn absent_until_known() {
        let m = Metrics::new(MetricsConfig::default());
        let text = m.encode();
        for absent in [
            "ghostbuster_conntrack_entries ",
            "ghostbuster_conntrack_entries_limit ",
            "ghostbuster_kube_proxy_sync_lag_seconds ",
            "ghostbuster_conntrack_table_full_eta_seconds",
            "ghostbuster_conntrack_stat_",
            "conntrack_stale_entries",
            "ghostbuster_report_only",
        ] {
            assert!(!text.contains(absent), "{absent} present:\n{text}");
        }
        assert!(text.contains("ghostbuster_mode{mode=\"report\"} 1"));
        assert!(text.contains("ghostbuster_mode{mode=\"sweep\"} 0"));
        assert!(text.contains(&format!(
            "ghostbuster_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with("# EOF\n"));
        m.set_kube_proxy_lag(Some(Duration::from_millis(1500)));
        assert!(m
            .encode()
            .contains("ghostbuster_kube_proxy_sync_lag_seconds 1.5\n"));
        m.set_kube_proxy_lag(None);
        assert!(!m
            .encode()
            .contains("ghostbuster_kube_proxy_sync_lag_seconds 1"));
    }

    #[test]
    fn the_forecast_appears_when_the_table_grows() {
        let m = Metrics::new(MetricsConfig::default());
        m.set_table(GlobalStats::new(1000, 100_000));
        assert!(!m.encode().contains("table_full_eta_seconds "));
        let t0 = Instant::now() + Duration::from_secs(15);
        for i in 0..10u64 {
            m.sample_table_count(t0 + Duration::from_secs(15 * i), 1000 + 1500 * (i + 1));
        }
        // +100/s, at 16,000 of 100,000: 840 s.
        let eta = m.table_full_eta.single().unwrap();
        assert!((eta - 840.0).abs() < 1.0, "{eta}");
    }

    #[test]
    fn per_cpu_labels_only_when_asked() {
        let summed = Metrics::new(MetricsConfig::default());
        let per = Metrics::new(MetricsConfig {
            per_cpu: true,
            ..Default::default()
        });
        let stats = [
            {
                let mut c = CpuStats::new(0);
                c.insert_failed = 3;
                c
            },
            {
                let mut c = CpuStats::new(1);
                c.insert_failed = 4;
                c
            },
        ];
        summed.update_cpu_stats(&stats);
        per.update_cpu_stats(&stats);
        let s = summed.encode();
        assert!(s.contains("# TYPE ghostbuster_conntrack_stat_insert_failed counter\n"));
        assert!(s.contains("\nghostbuster_conntrack_stat_insert_failed_total 7\n"));
        let p = per.encode();
        assert!(p.contains("ghostbuster_conntrack_stat_insert_failed_total{cpu=\"0\"} 3\n"));
        assert!(p.contains("ghostbuster_conntrack_stat_insert_failed_total{cpu=\"1\"} 4\n"));
    }
}
