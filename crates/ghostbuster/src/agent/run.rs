//! Wiring: one tokio runtime for the API watches, the admin server and Events; three plain
//! threads for the kernel (the reactor, the conntrack event reader, the table sampler), so a
//! million-entry dump never blocks an async worker.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;
use tokio::net::TcpListener;

use super::conntrack_events::{self, EventSink};
use super::k8s_events::EventPoster;
use super::kube_proxy_reader::KubeProxyReader;
use super::lookups::Lookups;
use super::reactor::{self, Shared, Work};
use super::table_alarm::UtilizationAlarm;
use super::world::AgentWorld;
use super::Config;
use crate::cluster::kube::{
    self as kube_source, resource_name, KindState, PodChecker, WatchConfig, WatchHealth,
};
use crate::cluster::{Event, Index, IndexConfig, Kind};
use crate::exit::{CodedError, ExitCode};
use crate::kube_proxy::{HttpUrl, KubeProxy};
use crate::telemetry::admin::{self, AdminState};
use crate::telemetry::health::{Readiness, ReportOnly};
use crate::telemetry::metrics::{Metrics, MetricsConfig};

/// How long past `--pod-get-timeout` a lookup that never finished is presumed lost (and asked
/// again).
const LOOKUP_SLACK: Duration = Duration::from_secs(5);

/// `ghostbuster agent`: builds the runtime, binds the admin listener, runs until SIGTERM/SIGINT.
pub fn main(a: Config) -> anyhow::Result<ExitCode> {
    super::memory::limit_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(a.listen).await.map_err(|e| {
            env_error(anyhow::anyhow!(
                "bind the admin server to {}: {e}",
                a.listen
            ))
        })?;
        let client = kube_source::client(a.kubeconfig.as_deref())
            .await
            .map_err(|e| env_error(anyhow::anyhow!("connect to the Kubernetes API: {e:#}")))?;
        run(a, client, listener, shutdown_signal()).await
    })
}

fn env_error(e: anyhow::Error) -> anyhow::Error {
    CodedError {
        code: ExitCode::Environment,
        error: e,
    }
    .into()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

struct Sink(Arc<Metrics>);

impl EventSink for Sink {
    fn lost(&self) {
        self.0.events_lost();
    }
    fn recreated(&self, _backend: std::net::IpAddr) {
        self.0.record_recreated(1);
    }
}

/// Runs the agent with its API client and admin listener given (tests bind port 0 and point the
/// client at a fake API server) until `shutdown` resolves.
pub async fn run(
    a: Config,
    client: kube::Client,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let netns = a.netns.clone();
    // The kernel first: without CAP_NET_ADMIN or conntrack there is nothing to do.
    let ct = ctnetlink::Conntrack::open_in(netns.as_deref()).context("open conntrack")?;
    let mut probe = ctnetlink::Conntrack::open_in(netns.as_deref()).context("open conntrack")?;
    probe
        .stats()
        .context("read conntrack statistics (the agent needs CAP_NET_ADMIN)")?;
    let local = crate::local_addrs::of(netns.as_deref()).context("read local addresses")?;
    let mut index = Index::new(IndexConfig {
        node_name: Some(a.node_name.clone()),
        local_addresses: local,
        service_cidrs: a.service_cidrs.clone(),
    });
    index.set_live(true);
    let shared = Shared::new(index);

    let metrics = Arc::new(Metrics::new(MetricsConfig {
        max_service_series: a.max_service_series,
        per_cpu: a.per_cpu_metrics,
        ..MetricsConfig::default()
    }));
    let readiness = Readiness::new(Kind::ALL.map(resource_name));
    let mut admin_state = AdminState::new(metrics.clone(), readiness.clone());
    admin_state.debug_public = a.expose_debug_recent;
    admin_state.set_mode(!a.dry_run);
    let stop = Arc::new(AtomicBool::new(false));

    // Admin server.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(listener, admin_state.clone(), async {
        let _ = admin_stop_rx.await;
    }));
    // On a node address (the DaemonSet's `--listen=$(HOST_IP):9477`) no client is on loopback:
    // listen on 127.0.0.1 too, so that /debug/recent stays readable from the node itself.
    let (loopback_stop_tx, loopback_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listen_ip = a.listen.ip();
    if !listen_ip.is_loopback() && !listen_ip.is_unspecified() {
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], a.listen.port()));
        match TcpListener::bind(at).await {
            Ok(l) => {
                tokio::spawn(admin::serve(l, admin_state.clone(), async {
                    let _ = loopback_stop_rx.await;
                }));
            }
            Err(e) => tracing::warn!(
                address = %at,
                error = %e,
                "cannot listen on localhost: /debug/recent is not readable from the node"
            ),
        }
    }

    // Where ghostbuster must not act: IPVS (kube-proxy's mode, or a kube-ipvs0 link).
    let kube_proxy = KubeProxy::new(&a.kube_proxy)
        .map_err(|e| crate::exit::input_error(anyhow::anyhow!("kube-proxy URL: {e}")))?;
    let mode_url = HttpUrl::parse(&a.kube_proxy.proxy_mode_url)
        .map_err(|e| crate::exit::input_error(anyhow::anyhow!("kube-proxy mode URL: {e}")))?;
    // Probed at start and again every --kube-proxy-mode-interval: kube-proxy's mode can change
    // under a running agent (a kube-proxy ConfigMap edit and restart), and IPVS must turn the
    // agent to report-only without waiting for the agent's own restart.
    let dataplane = Arc::new(Mutex::new(None));
    probe_dataplane(&kube_proxy, netns.clone(), &dataplane).await;
    {
        let kube_proxy = kube_proxy.clone();
        let netns = netns.clone();
        let dataplane = dataplane.clone();
        let every = a.kube_proxy_mode_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                probe_dataplane(&kube_proxy, netns.clone(), &dataplane).await;
            }
        });
    }

    // The audit at start, exported as metrics and logged.
    let mut audit_findings = Vec::new();
    let gather = {
        let (netns, url) = (netns.clone(), mode_url.clone());
        move || crate::audit::gather(netns.as_deref(), &url)
    };
    match tokio::task::spawn_blocking(gather).await {
        Ok(Ok(facts)) => {
            let findings = crate::audit::check(&facts);
            for f in findings
                .iter()
                .filter(|f| f.severity >= crate::audit::Severity::Warn)
            {
                tracing::warn!(check = %f.check, current = ?f.current, recommended = ?f.recommended, "audit: {}", f.reason);
            }
            metrics.set_sysctl_checks(&findings);
            audit_findings = findings;
        }
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "audit failed"),
        Err(e) => tracing::warn!(error = %e, "audit task failed"),
    }

    // Watches → index.
    let health = Arc::new(WatchHealth::new());
    // Small: each event holds a whole API object, and a list hands them on faster than the
    // index takes them; a deep queue would rebuild the list's peak the raw pages avoid.
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<Event>(256);
    let watch_task = tokio::spawn(kube_source::watch_cluster(
        client.clone(),
        WatchConfig {
            node_name: a.node_name.clone(),
            watch_service_cidrs: true,
        },
        ev_tx,
        health.clone(),
    ));
    let (work_tx, work_rx) = mpsc::channel::<Work>();
    // Kinds whose first list the index has applied: a first list is the initial view, not a
    // change, and once every kind is here (or absent from the API) the view is whole.
    let listed: Arc<Mutex<HashSet<Kind>>> = Arc::default();
    {
        let shared = shared.clone();
        let work_tx = work_tx.clone();
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let listed = listed.clone();
        let health = health.clone();
        tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                let done_kind = match &ev {
                    Event::InitDone(k) => Some(*k),
                    _ => None,
                };
                let changes = {
                    let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                    ix.apply(ev, Timestamp::now())
                };
                let first_list = done_kind.is_some_and(|k| lock(&listed).insert(k));
                if first_list {
                    mark_whole_view(&shared, &listed, &health);
                }
                if let Some(k) = done_kind {
                    readiness.synced(resource_name(k));
                    // The list's objects are reduced and dropped: give their memory back.
                    super::memory::release_freed_memory();
                }
                match changes {
                    // Every endpoint of the first list is "added": one targeted read for each
                    // would be a walk of the whole table per backend, or one dump holding every
                    // flow of the table. The full pass after the initial sync looks at them all.
                    Ok(_) if first_list => {}
                    Ok(c) => {
                        let n = (c.endpoints_removed.len()
                            + c.endpoints_added.len()
                            + c.services_removed.len()) as u64;
                        if n > 0 {
                            metrics.endpoint_changes(n);
                        }
                        if !c.services_removed.is_empty() {
                            shared.note_services_removed(Timestamp::now());
                        }
                        if !c.endpoints_removed.is_empty() {
                            // Set and event filter updated before the work below is sent.
                            shared.refresh_dead_backends();
                        }
                        for w in reactor::work_from_changes(&c) {
                            let _ = work_tx.send(w);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignored a cluster object"),
                }
            }
        });
    }

    // Gate inputs that change over time: watch sync and freshness.
    {
        let health = health.clone();
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                metrics.set_synced(health.all_synced());
                // Also here: an API found absent after the last first list (ServiceCIDRs).
                mark_whole_view(&shared, &listed, &health);
                // A kind the API server does not serve (ServiceCIDRs before 1.33) never sends
                // InitDone, and must not hold readiness back: `--service-cidr` stands in for it.
                for k in Kind::ALL {
                    if matches!(health.state(k), KindState::Unavailable | KindState::Off) {
                        readiness.synced(resource_name(k));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    // Events.
    let poster = a.events.then(|| {
        Arc::new(tokio::sync::Mutex::new(EventPoster::new(
            client.clone(),
            a.node_name.clone(),
            Duration::from_secs(300),
        )))
    });
    if let Some(p) = poster.clone() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Posted without the lock held: see k8s_events::flush.
                super::k8s_events::flush(&p, Instant::now()).await;
            }
        });
    }

    // The reactor.
    let top_services: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    // kube-proxy's sync metrics, read off the reactor; a reading that moves the gate's view
    // wakes it for the backends that wait on kube-proxy.
    let (kube_proxy_reader, _reader_task) = KubeProxyReader::spawn(
        &tokio::runtime::Handle::current(),
        kube_proxy,
        metrics.clone(),
        {
            let work_tx = work_tx.clone();
            Arc::new(move || {
                let _ = work_tx.send(Work::KubeProxy);
            })
        },
        stop.clone(),
    );
    let world = AgentWorld {
        rt: tokio::runtime::Handle::current(),
        kube_proxy: kube_proxy_reader,
        pods: Arc::new(
            PodChecker::new(client.clone(), Duration::from_secs(5)).with_timeout(a.pod_get_timeout),
        ),
        pod_get_timeout: a.pod_get_timeout,
        ip_holders: Arc::new(crate::cluster::kube::IpHolders::new(
            client.clone(),
            crate::cluster::kube::HoldersConfig {
                timeout: a.pod_get_timeout,
                ..Default::default()
            },
        )),
        // A lookup that has not finished well past its timeout is presumed lost.
        pod_lookups: Lookups::new(a.pod_get_timeout + LOOKUP_SLACK),
        holder_lookups: Lookups::new(a.pod_get_timeout + LOOKUP_SLACK),
        wake: {
            let work_tx = work_tx.clone();
            Arc::new(move |ip| {
                let _ = work_tx.send(Work::Backend(ip));
            })
        },
        client: client.clone(),
        node_name: a.node_name.clone(),
        health: health.clone(),
        watch_stale_after: a.watch_stale_after,
        dry_run: a.dry_run,
        dataplane: dataplane.clone(),
        admin: admin_state.clone(),
        events: poster,
        log_removed_flows: a.log_removed_flows,
        first_full_pass: Arc::new(AtomicBool::new(false)),
        top_services: top_services.clone(),
    };
    let cfg = a.reactor.clone();
    // The reactor starts once the index holds the first list of every kind: a full pass over a
    // partial view (Services listed, their slices not yet) would call healthy flows stale and
    // publish that in `conntrack_stale_entries` at every start. (The watches' own "synced" comes
    // a moment before the index has applied the list.)
    {
        let shared = shared.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("gb-reactor".into())
            .spawn(move || {
                while !shared.initial_sync_done.load(Ordering::Relaxed)
                    && !stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                reactor::Reactor::new(ct, shared, world, cfg).run(work_rx, stop)
            })
            .context("start the reactor thread")?;
    }

    // Conntrack NEW events.
    match conntrack_events::subscribe(netns.as_deref(), a.event_buffer_bytes) {
        Ok(sock) => {
            let shared = shared.clone();
            let work_tx = work_tx.clone();
            let stop = stop.clone();
            let sink = Sink(metrics.clone());
            std::thread::Builder::new()
                .name("gb-ct-events".into())
                .spawn(move || conntrack_events::run(sock, shared, work_tx, sink, stop))
                .context("start the event thread")?;
        }
        Err(e) => tracing::warn!(error = %e, "no conntrack events; relying on periodic scans"),
    }

    // Table sampler: size, limit, per-CPU counters every 15 s; warnings at 75 % and 90 %; the
    // audit again every 10 minutes, logging what changed.
    {
        let metrics = metrics.clone();
        let stop = stop.clone();
        let rt = tokio::runtime::Handle::current();
        let client = client.clone();
        let node = a.node_name.clone();
        let top_services = top_services.clone();
        let (netns, mode_url) = (netns.clone(), mode_url.clone());
        let mut previous = audit_findings.clone();
        std::thread::Builder::new()
            .name("gb-table".into())
            .spawn(move || {
                let mut alarm = UtilizationAlarm::new(Duration::from_secs(1800));
                let mut last_audit = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(g) = probe.stats() {
                        metrics.set_table(g);
                        if let Some(t) = alarm.check(g.utilization(), Instant::now()) {
                            let top = top_services
                                .lock()
                                .map(|t| t.iter().map(|(s, n)| format!("{s} ({n})")).collect::<Vec<_>>().join(", "))
                                .unwrap_or_default();
                            let note = format!(
                                "conntrack table on node {node} is {:.0}% full ({} of {} entries; over {:.0}%); top services: {}",
                                g.utilization() * 100.0,
                                g.entries,
                                g.max_entries,
                                t * 100.0,
                                if top.is_empty() { "unknown yet".into() } else { top }
                            );
                            tracing::warn!(threshold = t, entries = g.entries, max = g.max_entries, "{note}");
                            rt.spawn(super::k8s_events::post_node_warning(
                                client.clone(),
                                node.clone(),
                                "ConntrackTableFilling",
                                note,
                            ));
                        }
                    }
                    if let Ok(c) = probe.stats_per_cpu() {
                        metrics.update_cpu_stats(&c);
                    }
                    if last_audit.elapsed() >= Duration::from_secs(600) {
                        last_audit = Instant::now();
                        if let Ok(facts) = crate::audit::gather(netns.as_deref(), &mode_url) {
                            let now = crate::audit::check(&facts);
                            for f in &now {
                                let before = previous.iter().find(|p| p.check == f.check);
                                if before.is_none_or(|b| b.severity != f.severity || b.current != f.current) {
                                    tracing::warn!(check = %f.check, severity = ?f.severity, current = ?f.current, "audit changed: {}", f.reason);
                                }
                            }
                            metrics.set_sysctl_checks(&now);
                            previous = now;
                        }
                    }
                    for _ in 0..60 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            })
            .context("start the table sampler")?;
    }
    tracing::info!(node = %a.node_name, dry_run = a.dry_run, "agent started");
    if a.dry_run {
        admin_state.set_report_only(vec![ReportOnly::new("dry_run", "--dry-run")]);
    }

    shutdown.await;
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    drop(work_tx);
    watch_task.abort();
    let _ = admin_stop_tx.send(());
    let _ = loopback_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    Ok(ExitCode::Ok)
}

/// Why ghostbuster must only report on this dataplane, if it must: kube-proxy in IPVS mode (its
/// `/proxyMode`, or the `kube-ipvs0` link it leaves). `mode`: the answer of `/proxyMode`, `None`
/// when it could not be read; then the link alone decides, and without it the previous verdict
/// stands (an unreadable endpoint is no news about the mode).
fn dataplane_hold(ipvs_link: bool, mode: Option<&str>, previous: Option<&str>) -> Option<String> {
    if ipvs_link || mode == Some("ipvs") {
        return Some(
            "kube-proxy runs in IPVS mode: IPVS recreates conntrack entries, so ghostbuster only \
             reports"
                .to_string(),
        );
    }
    match mode {
        Some(_) => None,
        None => previous.map(str::to_owned),
    }
}

/// Reads kube-proxy's mode and the IPVS link, and updates `dataplane`, logging a change.
async fn probe_dataplane(kp: &KubeProxy, netns: Option<String>, dataplane: &Mutex<Option<String>>) {
    let ipvs_link = tokio::task::spawn_blocking(move || {
        crate::kube_proxy::ipvs_interface_present(netns.as_deref()).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let mode = match kp.proxy_mode().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(error = %e, "kube-proxy's mode is unknown");
            None
        }
    };
    let mut d = lock(dataplane);
    let next = dataplane_hold(ipvs_link, mode.as_deref(), d.as_deref());
    if next != *d {
        match &next {
            Some(why) => tracing::warn!(mode = ?mode, "{why}"),
            None => tracing::warn!(
                mode = ?mode,
                "kube-proxy's mode changed from IPVS: removing stale flows again"
            ),
        }
        *d = next;
    }
}

/// Sets `initial_sync_done` once the index holds the first list of every kind the API server
/// serves: from then on the reactor's full passes judge a whole view (its first one runs then).
fn mark_whole_view(shared: &Shared, listed: &Mutex<HashSet<Kind>>, health: &WatchHealth) {
    if shared.initial_sync_done.load(Ordering::Relaxed) {
        return;
    }
    let listed = lock(listed);
    let whole = Kind::ALL.iter().all(|k| {
        listed.contains(k) || matches!(health.state(*k), KindState::Unavailable | KindState::Off)
    });
    if whole {
        shared.initial_sync_done.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::dataplane_hold;

    #[test]
    fn the_dataplane_hold_follows_the_mode_and_keeps_its_verdict_when_unknown() {
        assert!(dataplane_hold(false, Some("ipvs"), None).is_some());
        assert!(
            dataplane_hold(true, Some("nftables"), None).is_some(),
            "kube-ipvs0"
        );
        assert_eq!(dataplane_hold(false, Some("nftables"), Some("ipvs")), None);
        assert_eq!(dataplane_hold(false, Some("iptables"), None), None);
        assert_eq!(dataplane_hold(false, None, Some("x")).as_deref(), Some("x"));
        assert_eq!(dataplane_hold(false, None, None), None);
    }
}
