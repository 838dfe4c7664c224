//! The admin server over real HTTP on 127.0.0.1:0: `/metrics` parsed as OpenMetrics (names,
//! types, `_total`, the series cap, series that disappear, counter wrap), `/healthz`, `/readyz`
//! before and after the latch opens, `/debug/recent`; and the kube-proxy client against a fake
//! kube-proxy serving what a real one serves.

mod flow_schema;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::get as route_get;
use axum::Router;
use ctnetlink::{CpuStats, Flow, GlobalStats, Status, Tuple};
use ghostbuster::audit::{Finding as AuditFinding, Scope, Severity};
use ghostbuster::cluster::{FrontendKind, Name, Protocol};
use ghostbuster::kube_proxy::HttpUrl;
use ghostbuster::kube_proxy::{self, KubeProxy, KubeProxyConfig};
use ghostbuster::scan::Finding;
use ghostbuster::sweep::Outcome;
use ghostbuster::telemetry::{
    serve, AdminState, Metrics, MetricsConfig, Readiness, RemovedFlow, ReportOnly, ScanKind,
    StaleKey,
};
use ghostbuster::verdict::{Backend, Evidence, ServiceRef, Trace, Verdict, VerdictKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A running admin server; stops when dropped.
struct Server {
    base: String,
    state: AdminState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(config: MetricsConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState::new(
            Arc::new(Metrics::new(config)),
            Readiness::new(["services", "endpointslices"]),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            base: format!("http://{addr}"),
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn get(&self, path: &str) -> kube_proxy::Response {
        let url = HttpUrl::parse(&format!("{}{path}", self.base)).unwrap();
        kube_proxy::get(&url, TIMEOUT).await.unwrap()
    }

    async fn scrape(&self) -> Exposition {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        Exposition::parse(&r.body)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let res = tokio::time::timeout(TIMEOUT, self.task.take().unwrap())
            .await
            .expect("server stops on shutdown");
        res.unwrap().unwrap();
    }
}

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed OpenMetrics text exposition, checked for well-formedness on the way.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with("# EOF\n"), "no EOF marker");
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "family {name} declared twice"
                );
                family = Some((name.to_string(), ty.to_string()));
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment {line:?}");
            let s = parse_sample(line);
            let (fam, ty) = family.as_ref().expect("sample before any TYPE");
            let suffix = s
                .name
                .strip_prefix(fam.as_str())
                .unwrap_or_else(|| panic!("{} outside its family {fam}", s.name));
            let allowed: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "gauge" => &[""],
                other => panic!("unexpected type {other}"),
            };
            assert!(allowed.contains(&suffix), "{} in a {ty}", s.name);
            samples.push(s);
        }
        Exposition { types, samples }
    }

    fn named(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.named(name)
            .iter()
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => panic!("bad sample {line:?}"),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(inner) = rest.strip_prefix('{') {
        let end = inner.find('}').expect("unclosed labels");
        for pair in inner[..end].split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label without =");
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
            labels.insert(k.to_string(), v.expect("unquoted label").to_string());
        }
        &inner[end + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next().expect("no value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

fn stale(service: usize, n: u64) -> (StaleKey, u64) {
    (
        StaleKey {
            namespace: "shop".into(),
            service: format!("svc-{service:03}"),
            port: 8080,
            protocol: "tcp",
            verdict: VerdictKind::EndpointGone,
        },
        n,
    )
}

fn flow(sport: u16) -> Flow {
    let client = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5));
    let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
    let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 9));
    let mut f = Flow::new(
        Tuple::ports(client, sport, vip, 5432, 6),
        Tuple::ports(pod, 5432, client, sport, 6),
    );
    f.status = Status::DST_NAT | Status::SEEN_REPLY;
    f.timeout = Some(431_000);
    f.id = Some(7);
    f.tcp_state = Some(ctnetlink::TcpState::ESTABLISHED);
    f
}

fn finding(sport: u16, kind: VerdictKind) -> Finding {
    Finding {
        flow: flow(sport),
        verdict: Verdict {
            kind,
            evidence: [Evidence::EndpointRemoved, Evidence::PodGone]
                .into_iter()
                .collect(),
            half_open: false,
            removable: true,
            kept_because: None,
            service: Some(ServiceRef {
                namespace: Name::new("db"),
                name: Name::new("postgres"),
                port: 5432,
                port_name: Name::new("pg"),
                protocol: Protocol::Tcp,
                node_port: None,
                frontend: FrontendKind::ClusterIp,
            }),
            backend: Some(Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 244, 2, 9)),
                port: 5432,
            }),
            now_owned_by: None,
            trace: Trace::default(),
        },
    }
}

#[tokio::test]
async fn metrics_are_well_formed_and_named_as_documented() {
    let srv = Server::start(MetricsConfig::default()).await;
    let m = &srv.state.metrics;
    // Touch everything once.
    m.record_scan_findings(
        ScanKind::Full,
        Duration::from_millis(730),
        1_000_000,
        &[
            finding(40001, VerdictKind::EndpointGone),
            finding(40002, VerdictKind::EndpointGone),
        ],
    );
    m.record_scan(ScanKind::Targeted, Duration::from_millis(3), 12, []);
    m.record_removed(
        &StaleKey::of(&finding(1, VerdictKind::EndpointGone)).unwrap(),
        2,
    );
    m.record_removal_failure("permission");
    m.record_recreated(1);
    m.observe_reaction(Duration::from_millis(40));
    m.observe_gate_wait(Duration::from_millis(1200));
    m.observe_ghost_age(Duration::from_secs(300));
    m.set_kube_proxy_lag(Some(Duration::from_millis(800)));
    m.set_table(GlobalStats::new(5_000, 262_144));
    m.set_entries_by_state([("tcp", "ESTABLISHED", 4_000), ("udp", "none", 1_000)]);
    m.set_service_entries([("db", "postgres", 3_000u64)]);
    let mut cpu0 = CpuStats::new(0);
    cpu0.insert_failed = 2;
    cpu0.drop = 1;
    m.update_cpu_stats(&[cpu0]);
    m.set_synced(true);
    srv.state.set_mode(true);
    m.set_circuit_open(false);
    m.events_lost();
    m.endpoint_changes(3);
    m.set_sysctl_checks(&[AuditFinding {
        check: "nf_conntrack_tcp_be_liberal",
        scope: Scope::Namespace,
        current: None,
        recommended: None,
        severity: Severity::Warn,
        reason: "test".into(),
        source: "test",
    }]);
    let e = srv.scrape().await;

    let want: &[(&str, &str)] = &[
        ("conntrack_stale_entries", "gauge"),
        ("ghostbuster_flows_removed", "counter"),
        ("ghostbuster_flow_removal_failures", "counter"),
        ("ghostbuster_flows_recreated", "counter"),
        ("ghostbuster_ghost_age_seconds", "histogram"),
        ("ghostbuster_reaction_seconds", "histogram"),
        ("ghostbuster_gate_wait_seconds", "histogram"),
        ("ghostbuster_kube_proxy_sync_lag_seconds", "gauge"),
        ("ghostbuster_conntrack_entries", "gauge"),
        ("ghostbuster_conntrack_entries_limit", "gauge"),
        ("ghostbuster_scan_duration_seconds", "histogram"),
        ("ghostbuster_scan_flows", "gauge"),
        ("ghostbuster_conntrack_events_lost", "counter"),
        ("ghostbuster_cluster_synced", "gauge"),
        ("ghostbuster_endpoint_changes", "counter"),
        ("ghostbuster_mode", "gauge"),
        ("ghostbuster_circuit_open", "gauge"),
        ("ghostbuster_build_info", "gauge"),
        ("ghostbuster_ready", "gauge"),
        ("ghostbuster_conntrack_entries_by_state", "gauge"),
        ("ghostbuster_conntrack_service_entries", "gauge"),
        ("ghostbuster_conntrack_stat_insert_failed", "counter"),
        ("ghostbuster_conntrack_stat_drop", "counter"),
        ("ghostbuster_conntrack_stat_chaintoolong", "counter"),
        ("ghostbuster_sysctl_check", "gauge"),
    ];
    for (name, ty) in want {
        assert_eq!(e.types.get(*name).map(String::as_str), Some(*ty), "{name}");
    }
    // Every counter sample carries `_total`, and only counters do.
    for s in &e.samples {
        let counter = e
            .types
            .iter()
            .any(|(f, t)| t == "counter" && s.name == format!("{f}_total"));
        assert_eq!(counter, s.name.ends_with("_total"), "{}", s.name);
        assert!(
            s.name == "conntrack_stale_entries" || s.name.starts_with("ghostbuster_"),
            "{} lacks the prefix",
            s.name
        );
    }
    assert_eq!(
        e.value(
            "conntrack_stale_entries",
            &[
                ("namespace", "db"),
                ("service", "postgres"),
                ("port", "5432"),
                ("protocol", "tcp"),
                ("verdict", "endpoint_gone")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.value(
            "ghostbuster_flows_removed_total",
            &[
                ("namespace", "db"),
                ("service", "postgres"),
                ("protocol", "tcp"),
                ("verdict", "endpoint_gone")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.value("ghostbuster_scan_flows", &[("kind", "full")]),
        Some(1e6)
    );
    assert_eq!(
        e.value(
            "ghostbuster_scan_duration_seconds_count",
            &[("kind", "targeted")]
        ),
        Some(1.0)
    );
    assert_eq!(e.value("ghostbuster_mode", &[("mode", "sweep")]), Some(1.0));
    assert_eq!(
        e.value("ghostbuster_mode", &[("mode", "report")]),
        Some(0.0)
    );
    assert_eq!(e.value("ghostbuster_ready", &[]), Some(0.0));
    assert_eq!(
        e.value("ghostbuster_conntrack_entries_limit", &[]),
        Some(262_144.0)
    );
    assert_eq!(
        e.value("ghostbuster_kube_proxy_sync_lag_seconds", &[]),
        Some(0.8)
    );
    assert_eq!(
        e.value(
            "ghostbuster_sysctl_check",
            &[
                ("check", "nf_conntrack_tcp_be_liberal"),
                ("scope", "namespace")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.value("ghostbuster_conntrack_stat_insert_failed_total", &[]),
        Some(2.0)
    );
    assert!(
        e.named("ghostbuster_conntrack_table_full_eta_seconds")
            .is_empty(),
        "one sample is not a trend"
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_series_cap_and_series_that_disappear() {
    let srv = Server::start(MetricsConfig::default()).await;
    let m = &srv.state.metrics;
    // 150 services with stale flows; service i has i+1 flows.
    m.record_scan(
        ScanKind::Full,
        Duration::from_millis(10),
        10_000,
        (0..150).map(|i| stale(i, i as u64 + 1)),
    );
    let e = srv.scrape().await;
    let services = e.label_values("conntrack_stale_entries", "service");
    assert!(services.len() <= 101, "{} services", services.len());
    assert!(services.contains("_other"));
    assert!(services.contains("svc-149") && !services.contains("svc-000"));
    let total: f64 = e
        .named("conntrack_stale_entries")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        total,
        (1..=150).sum::<u64>() as f64,
        "_other keeps the count"
    );
    assert_eq!(
        e.value(
            "conntrack_stale_entries",
            &[
                ("namespace", "_other"),
                ("service", "_other"),
                ("port", "_other"),
                ("protocol", "tcp"),
                ("verdict", "endpoint_gone")
            ]
        ),
        Some((1..=50).sum::<u64>() as f64)
    );

    // The removed counter: 150 services removed from, at most 100 named.
    for i in 0..150 {
        let (k, _) = stale(i, 1);
        m.record_removed(&k, 1);
    }
    let e = srv.scrape().await;
    let named = e.label_values("ghostbuster_flows_removed_total", "service");
    assert_eq!(named.len(), 101);
    assert_eq!(
        e.value(
            "ghostbuster_flows_removed_total",
            &[
                ("namespace", "_other"),
                ("service", "_other"),
                ("protocol", "tcp"),
                ("verdict", "endpoint_gone")
            ]
        ),
        Some(50.0)
    );

    // A targeted scan does not touch the stale gauge.
    m.record_scan(
        ScanKind::Targeted,
        Duration::from_millis(1),
        3,
        [stale(7, 1)],
    );
    assert_eq!(
        srv.scrape()
            .await
            .label_values("conntrack_stale_entries", "service")
            .len(),
        101
    );

    // The next full scan has only one ghost left: every other series is gone.
    m.record_scan(
        ScanKind::Full,
        Duration::from_millis(10),
        10_000,
        [stale(3, 2)],
    );
    let e = srv.scrape().await;
    assert_eq!(
        e.label_values("conntrack_stale_entries", "service"),
        BTreeSet::from(["svc-003".to_string()])
    );
    // And a clean scan leaves no series at all (the seeds' `> 0` alert resolves).
    m.record_scan(ScanKind::Full, Duration::from_millis(10), 10_000, []);
    let e = srv.scrape().await;
    assert!(e.named("conntrack_stale_entries").is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn kernel_counters_wrap_without_going_down() {
    let srv = Server::start(MetricsConfig {
        per_cpu: true,
        ..Default::default()
    })
    .await;
    let m = &srv.state.metrics;
    let reading = |c0: u32, c1: u32| {
        [
            {
                let mut c = CpuStats::new(0);
                c.insert = c0;
                c
            },
            {
                let mut c = CpuStats::new(1);
                c.insert = c1;
                c
            },
        ]
    };
    m.update_cpu_stats(&reading(u32::MAX - 5, 100));
    let before = srv.scrape().await;
    assert_eq!(
        before.value("ghostbuster_conntrack_stat_insert_total", &[("cpu", "0")]),
        Some(f64::from(u32::MAX - 5))
    );
    // CPU 0 wraps past 2^32 to 10.
    m.update_cpu_stats(&reading(10, 150));
    let after = srv.scrape().await;
    assert_eq!(
        after.value("ghostbuster_conntrack_stat_insert_total", &[("cpu", "0")]),
        Some(f64::from(u32::MAX - 5) + 16.0)
    );
    assert_eq!(
        after.value("ghostbuster_conntrack_stat_insert_total", &[("cpu", "1")]),
        Some(150.0)
    );
    assert!(
        after
            .value("ghostbuster_conntrack_stat_insert_total", &[("cpu", "0")])
            .unwrap()
            > 4_294_967_296.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn readyz_opens_with_the_latch_and_explains_itself() {
    let srv = Server::start(MetricsConfig::default()).await;
    let r = srv.get("/readyz").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["first_scan_done"], false);
    assert_eq!(
        v["waiting_for"],
        serde_json::json!(["endpointslices", "services"])
    );
    assert_eq!(v["mode"], "report");

    srv.state.readiness.synced("services");
    srv.state.readiness.synced("endpointslices");
    assert_eq!(srv.get("/readyz").await.status, 503, "no full scan yet");
    srv.state.readiness.first_scan_done();
    srv.state.set_report_only(vec![ReportOnly::new(
        "dataplane",
        "kube-proxy runs in ipvs mode",
    )]);
    let r = srv.get("/readyz").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["report_only"][0]["reason"], "dataplane");
    assert_eq!(
        v["report_only"][0]["detail"],
        "kube-proxy runs in ipvs mode"
    );
    let e = srv.scrape().await;
    assert_eq!(e.value("ghostbuster_ready", &[]), Some(1.0));
    assert_eq!(
        e.value("ghostbuster_report_only", &[("reason", "dataplane")]),
        Some(1.0)
    );

    let h = srv.get("/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert_eq!(srv.get("/nope").await.status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn healthz_fails_when_the_loop_stops_beating() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut state = AdminState::new(
        Arc::new(Metrics::new(MetricsConfig::default())),
        Readiness::new(Vec::<String>::new()),
    );
    state.liveness = ghostbuster::telemetry::Liveness::new(Duration::from_millis(1000));
    state.liveness.beat();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let url = HttpUrl::parse(&format!("http://{addr}/healthz")).unwrap();
    assert_eq!(kube_proxy::get(&url, TIMEOUT).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = kube_proxy::get(&url, TIMEOUT).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("has not run"), "{}", r.body);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn debug_recent_lists_the_newest_removals() {
    let srv = Server::start(MetricsConfig::default()).await;
    let r = srv.get("/debug/recent").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["count"], 0);
    assert_eq!(v["capacity"], 256);

    let t = jiff::Timestamp::from_second(1_714_957_312).unwrap();
    srv.state.recent.extend([
        RemovedFlow::new(
            &finding(40001, VerdictKind::EndpointGone),
            Outcome::Deleted,
            None,
            t,
        ),
        RemovedFlow::new(
            &finding(40002, VerdictKind::IpReused),
            Outcome::Failed,
            Some(1),
            t,
        ),
    ]);
    let r = srv.get("/debug/recent").await;
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json"),
        "JSON body"
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["count"], 2);
    // The flow object of `sweep -o json` (docs/flow.schema.json), with the removal's fields.
    assert_eq!(flow_schema::assert_flows(&v), 2);
    let newest = &v["flows"][0];
    assert_eq!(newest["verdict"], "ip_reused");
    assert_eq!(newest["result"], "failed");
    assert_eq!(newest["errno"], 1);
    let older = &v["flows"][1];
    assert_eq!(older["verdict"], "endpoint_gone");
    assert_eq!(older["result"], "deleted");
    assert_eq!(
        older["evidence"],
        serde_json::json!(["endpoint_removed", "pod_gone"])
    );
    assert_eq!(older["service"]["namespace"], "db");
    assert_eq!(older["service"]["name"], "postgres");
    assert_eq!(older["backend"]["ip"], "10.244.2.9");
    assert_eq!(older["original"]["src"], "10.244.0.5");
    assert_eq!(older["original"]["sport"], 40001);
    assert_eq!(older["original"]["dst"], "10.96.0.20");
    assert_eq!(older["reply"]["src"], "10.244.2.9");
    assert_eq!(older["time"], "2024-05-06T01:01:52Z");
    assert_eq!(older["removable"], true);
    assert!(older["kept_because"].is_null());
    assert!(older["reason"].is_string());
    let r = srv.get("/debug/recent?limit=1").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["count"], 1);
    srv.stop().await;
}

/// `/debug/recent` names who talked to whom: served to clients on loopback (IPv4, IPv6 and
/// IPv4-mapped IPv6), refused to any other client unless the operator exposes it, and refused
/// when the client is unknown. Over real HTTP from 127.0.0.1 (the server records each
/// connection's client) it answers; the refusal to a remote client over real HTTP is in
/// `agent_e2e_watch.rs` (a client in another network namespace).
#[tokio::test]
async fn debug_recent_answers_loopback_clients_only_unless_exposed() {
    use ghostbuster::telemetry::admin::debug_allowed;
    let at = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
    assert!(debug_allowed(false, at("127.0.0.1:40000")));
    assert!(debug_allowed(false, at("[::1]:40000")));
    assert!(debug_allowed(false, at("[::ffff:127.0.0.1]:40000")));
    assert!(!debug_allowed(false, at("192.0.2.10:40000")));
    assert!(!debug_allowed(false, at("[2001:db8::10]:40000")));
    assert!(!debug_allowed(false, at("[::ffff:192.0.2.10]:40000")));
    assert!(!debug_allowed(false, None), "unknown client");
    assert!(debug_allowed(true, at("192.0.2.10:40000")));
    assert!(debug_allowed(true, None));

    let srv = Server::start(MetricsConfig::default()).await;
    let r = srv.get("/debug/recent").await;
    assert_eq!(r.status, 200, "{}", r.body);
    srv.stop().await;
}

// ---- A fake kube-proxy, serving what kube-proxy 1.3x serves. ----

/// `curl 127.0.0.1:10249/metrics` on a kube-proxy (trimmed; client_golang text format 0.0.4).
const KUBE_PROXY_METRICS: &str = "\
# HELP kubeproxy_network_programming_duration_seconds [ALPHA] In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le=\"0.25\"} 3
kubeproxy_network_programming_duration_seconds_bucket{le=\"+Inf\"} 9
kubeproxy_network_programming_duration_seconds_sum 14.2
kubeproxy_network_programming_duration_seconds_count 9
# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"} 57
kubeproxy_sync_proxy_rules_duration_seconds_sum 2.891
kubeproxy_sync_proxy_rules_duration_seconds_count 57
# HELP kubeproxy_sync_proxy_rules_endpoint_changes_pending [ALPHA] Pending proxy rules Endpoint changes
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_pending gauge
kubeproxy_sync_proxy_rules_endpoint_changes_pending 0
# HELP kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds [ALPHA] The last time a sync of proxy rules was queued
# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1.7149573131e+09
# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7149573125e+09
# HELP process_start_time_seconds [ALPHA] Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.71495721786e+09
";

/// `curl 127.0.0.1:10256/healthz` (Go's `%q` of a `time.Time`).
const KUBE_PROXY_HEALTHZ: &str = r#"{"lastUpdated": "2024-05-06 01:01:52.5 +0000 UTC m=+94.713409412","currentTime": "2024-05-06 01:01:52.5 +0000 UTC m=+94.713409412", "nodeEligible": true}"#;

async fn fake_kube_proxy() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route(
            "/metrics",
            route_get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    KUBE_PROXY_METRICS,
                )
            }),
        )
        .route(
            "/healthz",
            route_get(|| async {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    KUBE_PROXY_HEALTHZ,
                )
            }),
        )
        .route("/proxyMode", route_get(|| async { "iptables" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

fn client(base: &str) -> KubeProxy {
    KubeProxy::new(&KubeProxyConfig {
        metrics_url: format!("{base}/metrics"),
        healthz_url: format!("{base}/healthz"),
        proxy_mode_url: format!("{base}/proxyMode"),
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test]
async fn reads_a_fake_kube_proxy() {
    let (base, task) = fake_kube_proxy().await;
    let kp = client(&base);
    let synced = kp.last_sync().await.unwrap();
    assert_eq!(synced.as_millisecond(), 1_714_957_312_500);
    let h = kp.healthz().await.unwrap();
    assert!(h.healthy);
    assert_eq!(h.last_updated.to_string(), "2024-05-06T01:01:52.5Z");
    assert_eq!(h.node_eligible, Some(true));
    assert_eq!(kp.proxy_mode().await.unwrap(), "iptables");

    // A path kube-proxy does not serve.
    let wrong = KubeProxy::new(&KubeProxyConfig {
        metrics_url: format!("{base}/nometrics"),
        ..KubeProxyConfig::default()
    })
    .unwrap();
    let e = wrong.last_sync().await.unwrap_err();
    assert!(
        matches!(e, kube_proxy::Error::Status { status: 404, .. }),
        "{e}"
    );
    // The metrics endpoint of something that is not kube-proxy.
    let not_kp = KubeProxy::new(&KubeProxyConfig {
        metrics_url: format!("{base}/proxyMode"),
        ..KubeProxyConfig::default()
    })
    .unwrap();
    let e = not_kp.last_sync().await.unwrap_err();
    assert!(matches!(e, kube_proxy::Error::NoSample { .. }), "{e}");
    task.abort();
}

#[tokio::test]
async fn reads_a_chunked_answer_and_sends_a_proper_request() {
    // A hand-written server: Go's net/http answers a large /metrics with chunked encoding.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
        }
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in KUBE_PROXY_METRICS.as_bytes().chunks(100) {
            resp.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            resp.extend_from_slice(chunk);
            resp.extend_from_slice(b"\r\n");
        }
        resp.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&resp).await.unwrap();
        s.shutdown().await.unwrap();
        String::from_utf8(req).unwrap()
    });
    let kp = client(&format!("http://{addr}"));
    assert_eq!(
        kp.last_sync().await.unwrap().as_millisecond(),
        1_714_957_312_500
    );
    let req = server.await.unwrap();
    assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");
    assert!(req.contains("Connection: close\r\n"), "{req}");
}

#[tokio::test]
async fn an_absent_or_silent_kube_proxy_fails_fast() {
    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kp = client(&format!("http://127.0.0.1:{port}"));
    let e = kp.last_sync().await.unwrap_err();
    assert!(matches!(e, kube_proxy::Error::Io { .. }), "{e}");

    // Accepts, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let kp = KubeProxy::new(&KubeProxyConfig {
        metrics_url: format!("http://{addr}/metrics"),
        timeout: Duration::from_millis(200),
        ..KubeProxyConfig::default()
    })
    .unwrap();
    let start = std::time::Instant::now();
    let e = kp.last_sync().await.unwrap_err();
    assert!(matches!(e, kube_proxy::Error::Timeout { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(e.to_string().contains("no answer within"), "{e}");
    drop(silent);
}
