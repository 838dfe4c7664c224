//! Wiring: builds the agent's state and starts its actors under a [`Supervisor`], which joins
//! them on SIGTERM. One tokio runtime for the API watches, the admin server and Events; three
//! plain threads for the kernel (the reactor, the conntrack event reader, the table sampler), so
//! a million-entry dump never blocks an async worker.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use super::conntrack_events::{self, EventSink};
use super::k8s_events::EventPoster;
use super::kube_proxy_reader::KubeProxyReader;
use super::lookups::Lookups;
use super::reactor::{Reactor, Shared, Work};
use super::supervisor::Supervisor;
use super::world::AgentWorld;
use super::Config;
use crate::cluster::kube::{self as kube_source, resource_name, PodChecker, WatchHealth};
use crate::cluster::{Index, IndexConfig, Kind};
use crate::exit::{CodedError, ExitCode};
use crate::kube_proxy::{HttpUrl, KubeProxy};
use crate::telemetry::admin::AdminState;
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

/// How long the actors get to stop after SIGTERM (a full pass over a large table takes seconds;
/// the DaemonSet's grace period is 30 s).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the agent with its API client and admin listener given (tests bind port 0 and point the
/// client at a fake API server) until `shutdown` resolves.
///
/// The data flow, in the order the actors start:
///
/// ```text
///  API server ──watch──▶ index ──Work──▶ reactor ──dump/delete──▶ conntrack
///                          ▲               ▲  ▲
///  conntrack NEW events ───┘(dead set)     │  └── kube-proxy reader (sync metrics, /healthz)
///                                          └───── pod / IP-holder lookups (wake)
///  reactor ──reports──▶ metrics, /debug/recent, Events;  table sampler ──▶ metrics, alarms
/// ```
pub async fn run(
    a: Config,
    client: kube::Client,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let netns = a.netns.clone();
    // The kernel first: without CAP_NET_ADMIN or conntrack there is nothing to do.
    let ct = ctnetlink::Conntrack::open_in(netns.as_deref()).context("open conntrack")?;
    let mut sampler_ct =
        ctnetlink::Conntrack::open_in(netns.as_deref()).context("open conntrack")?;
    sampler_ct
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
    let kube_proxy = KubeProxy::new(&a.kube_proxy)
        .map_err(|e| crate::exit::input_error(anyhow::anyhow!("kube-proxy URL: {e}")))?;
    let mode_url = HttpUrl::parse(&a.kube_proxy.proxy_mode_url)
        .map_err(|e| crate::exit::input_error(anyhow::anyhow!("kube-proxy mode URL: {e}")))?;

    let metrics = Arc::new(Metrics::new(MetricsConfig {
        max_service_series: a.max_service_series,
        per_cpu: a.per_cpu_metrics,
        ..MetricsConfig::default()
    }));
    let readiness = Readiness::new(Kind::ALL.map(resource_name));
    let mut admin_state = AdminState::new(metrics.clone(), readiness.clone());
    admin_state.debug_public = a.expose_debug_recent;
    admin_state.set_mode(!a.dry_run);
    let mut actors = Supervisor::new();

    // Admin server.
    let mut listeners = vec![listener];
    listeners.extend(super::admin::loopback_too(a.listen).await);
    actors.add(super::admin::spawn(
        listeners,
        admin_state.clone(),
        actors.shutdown(),
    ));

    // Where ghostbuster must not act: IPVS (kube-proxy's mode, or a kube-ipvs0 link).
    let (dataplane, probe) = super::dataplane::spawn(
        kube_proxy.clone(),
        netns.clone(),
        a.kube_proxy_mode_interval,
        actors.shutdown(),
    )
    .await;
    actors.add(probe);
    let audit_at_start = audit_at_start(&metrics, netns.clone(), mode_url.clone()).await;

    // Watches → index → work for the reactor.
    let health = Arc::new(WatchHealth::new());
    let (work_tx, work_rx) = mpsc::channel::<Work>();
    actors.add(super::watch::spawn(
        super::watch::Inputs {
            client: client.clone(),
            node_name: a.node_name.clone(),
            shared: shared.clone(),
            work: work_tx.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            health: health.clone(),
        },
        actors.shutdown(),
    ));

    // Events.
    let poster = a.events.then(|| {
        Arc::new(tokio::sync::Mutex::new(EventPoster::new(
            client.clone(),
            a.node_name.clone(),
            Duration::from_secs(300),
        )))
    });
    if let Some(p) = &poster {
        actors.add(super::k8s_events::spawn(p.clone(), actors.shutdown()));
    }

    // kube-proxy's sync metrics, read off the reactor; a reading that moves the gate's view
    // wakes it for the backends that wait on kube-proxy.
    let (kube_proxy_reader, reader) = KubeProxyReader::spawn(
        kube_proxy,
        metrics.clone(),
        {
            let work_tx = work_tx.clone();
            Arc::new(move || {
                let _ = work_tx.send(Work::KubeProxy);
            })
        },
        actors.shutdown(),
    );
    actors.add(reader);

    // The socket ender (--terminate-sockets): the client sockets of deleted flows.
    let end_sockets = if a.terminate_sockets {
        let (tx, rx) = std::sync::mpsc::channel();
        actors.add(
            super::socket_ender::spawn(
                super::socket_ender::Settings {
                    node_netns: netns.clone(),
                    log_each: a.log_removed_flows,
                },
                super::socket_ender::Outputs {
                    metrics: metrics.clone(),
                    recent: admin_state.recent.clone(),
                },
                rx,
                actors.shutdown(),
            )
            .context("start the socket ender")?,
        );
        Some(tx)
    } else {
        None
    };

    // The reactor.
    let top_services: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
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
        dataplane,
        admin: admin_state.clone(),
        events: poster,
        log_removed_flows: a.log_removed_flows,
        end_sockets,
        first_full_pass: Arc::new(AtomicBool::new(false)),
        top_services: top_services.clone(),
    };
    // Conntrack events, before the reactor: its first full pass builds the flow index, which it
    // trusts only if the event thread was already reading.
    shared.flows.set_limit(a.flow_index_max_entries);
    match conntrack_events::subscribe(netns.as_deref(), a.event_buffer_bytes, a.flow_index) {
        Ok(sock) => actors.add(
            conntrack_events::spawn(
                sock,
                shared.clone(),
                work_tx.clone(),
                Sink(metrics.clone()),
                actors.shutdown(),
            )
            .context("start the event thread")?
            // A failing event socket degrades the agent to periodic scans; it goes on.
            .may_end_alone(),
        ),
        Err(e) => tracing::warn!(error = %e, "no conntrack events; relying on periodic scans"),
    }
    // Full passes walk the table on a thread of their own, so that no walk delays a removal.
    let walker_ct = ctnetlink::Conntrack::open_in(netns.as_deref()).context("open conntrack")?;
    let (walker, walker_actor) = super::reactor::spawn_walker(
        walker_ct,
        shared.clone(),
        a.reactor.policy.clone(),
        work_tx.clone(),
        actors.shutdown(),
    )
    .context("start the walker thread")?;
    actors.add(walker_actor);
    let reactor = Reactor::new(ct, shared.clone(), world, a.reactor.clone()).with_walker(walker);
    actors.add(
        super::reactor::spawn(reactor, work_rx, actors.shutdown())
            .context("start the reactor thread")?,
    );

    drop(work_tx);

    // Table sampler: size, limit, per-CPU counters every 15 s; warnings at 75 % and 90 %; the
    // audit again every 10 minutes, logging what changed.
    actors.add(
        super::table_sampler::spawn(
            super::table_sampler::Settings {
                node_name: a.node_name.clone(),
                netns: netns.clone(),
                kube_proxy_mode: mode_url,
                audit_at_start,
            },
            super::table_sampler::Inputs {
                conntrack: sampler_ct,
                metrics: metrics.clone(),
                client: client.clone(),
                runtime: tokio::runtime::Handle::current(),
                top_services,
            },
            actors.shutdown(),
        )
        .context("start the table sampler")?,
    );
    tracing::info!(node = %a.node_name, dry_run = a.dry_run, actors = ?actors.names(), "agent started");
    if a.dry_run {
        admin_state.set_report_only(vec![ReportOnly::new("dry_run", "--dry-run")]);
    }

    let stopped = actors.run_until(shutdown, SHUTDOWN_DEADLINE).await;
    match stopped.ended_early {
        Some((actor, why)) => Err(anyhow::anyhow!("the agent's {actor} actor ended: {why}")),
        None => {
            tracing::info!(clean = stopped.is_clean(), "stopped");
            Ok(ExitCode::Ok)
        }
    }
}

/// The audit at start, exported as metrics and logged; its findings (empty when it failed).
async fn audit_at_start(
    metrics: &Metrics,
    netns: Option<String>,
    mode_url: HttpUrl,
) -> Vec<crate::audit::Finding> {
    let gather = move || crate::audit::gather(netns.as_deref(), &mode_url);
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
            findings
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "audit failed");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit task failed");
            Vec::new()
        }
    }
}
