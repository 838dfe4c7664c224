//! The live cluster source against the fake API server over real HTTP: watches feeding the
//! index, relists, bookmarks, hanging lists, selectors, 404 and 403, the one-shot read, pod checks,
//! Namespaces' `ghostbuster.io/mode` annotation, and the CLI reading the live API end to end.
//!
//! Every wait is bounded. The CLI test with a real conntrack table needs root (network
//! namespaces): outside CI it skips with a printed reason, in CI (`CI` set) it fails.

mod scan_support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, PolicyRule, Rbac};
use ghostbuster::cluster::kube::{
    self as live, KindState, PodCheck, PodChecker, ReadConfig, WatchConfig, WatchHealth,
    WatchTuning, MODE_ANNOTATION,
};
use ghostbuster::cluster::{
    Changes, Event, Index, IndexConfig, Kind, ModeSource, Name, Object, ObjectKey, SweepMode,
};
use jiff::Timestamp;
use scan_support::lab_available;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const NODE: &str = "node-1";

// --- objects as a cluster holds them -----------------------------------------------------------

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": {MODE_ANNOTATION: "report"}},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        }
    })
}

/// An EndpointSlice of `svc` listing `(ip, pod)` endpoints, ready.
fn slice(ns: &str, svc: &str, name: &str, endpoints: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod, "uid": format!("uid-{pod}")}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}]
        }
    })
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// A Namespace, annotated `ghostbuster.io/mode: MODE` when `mode` is given.
fn namespace(name: &str, mode: Option<&str>) -> Value {
    let mut ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    });
    if let Some(m) = mode {
        ns["metadata"]["annotations"] = json!({MODE_ANNOTATION: m, "owner": "team-shop"});
    }
    ns
}

fn service_cidr(cidr: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": [cidr]}
    })
}

/// A small cluster: two Services with slices, this node and another, a Pod on each node, a
/// ServiceCIDR, the Namespace `shop` (without the mode annotation).
fn populate(server: &FakeApiServer) {
    server.create(namespace("shop", None));
    server.create(service("shop", "web", "10.96.0.10"));
    server.create(service("shop", "db", "10.96.0.11"));
    server.create(slice(
        "shop",
        "web",
        "web-a",
        &[("10.244.0.5", "web-0"), ("10.244.0.6", "web-1")],
    ));
    server.create(slice("shop", "db", "db-a", &[("10.244.0.7", "db-0")]));
    server.create(node(NODE, "192.0.2.10"));
    server.create(node("node-2", "192.0.2.11"));
    server.create(pod("shop", "web-0", NODE, "10.244.0.5"));
    server.create(pod("shop", "far-away", "node-2", "10.244.1.9"));
    server.create(service_cidr("10.96.0.0/16"));
}

/// A fake API server holding [`populate`]'s cluster.
async fn populated() -> FakeApiServer {
    let server = FakeApiServer::start().await.unwrap();
    populate(&server);
    server
}

/// Every kind the agent lists and watches, in the order it starts them.
const RESOURCES: [&str; 6] = [
    "services",
    "endpointslices",
    "nodes",
    "servicecidrs",
    "pods",
    "namespaces",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: Name::new(ns),
        name: Name::new(name),
    }
}

fn client(server: &FakeApiServer) -> kube::Client {
    live::client_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

fn fast() -> WatchTuning {
    WatchTuning {
        page_size: 2,
        watch_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(65),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..WatchTuning::default()
    }
}

// --- a watching agent in miniature ---------------------------------------------------------------

/// `watch_cluster` feeding an index, as the agent wires it.
struct Agent {
    index: Index,
    rx: mpsc::Receiver<Event>,
    health: Arc<WatchHealth>,
    task: tokio::task::JoinHandle<()>,
    /// Everything `apply` reported, in order.
    changes: Vec<Changes>,
    /// Every event received.
    events: Vec<Event>,
}

/// `watch_cluster_with` for this node on `tuning` (ServiceCIDRs watched if `cidrs`): the task,
/// its events and its health.
fn spawn_watch(
    server: &FakeApiServer,
    cidrs: bool,
    tuning: WatchTuning,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<Event>,
    Arc<WatchHealth>,
) {
    let (tx, rx) = mpsc::channel(64);
    let health = Arc::new(WatchHealth::new());
    let cfg = WatchConfig {
        node_name: NODE.into(),
        watch_service_cidrs: cidrs,
    };
    let task = tokio::spawn(live::watch_cluster_with(
        client(server),
        cfg,
        tuning,
        tx,
        Arc::clone(&health),
    ));
    (task, rx, health)
}

impl Agent {
    /// [`Agent::start`], once its view is synced.
    async fn synced_on(server: &FakeApiServer, cidrs: bool) -> Agent {
        let mut agent = Agent::start(server, cidrs);
        agent.synced().await;
        agent
    }

    fn start(server: &FakeApiServer, cidrs: bool) -> Agent {
        let (task, rx, health) = spawn_watch(server, cidrs, fast());
        Agent {
            index: Index::new(IndexConfig {
                node_name: Some(NODE.into()),
                ..Default::default()
            }),
            rx,
            health,
            task,
            changes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Applies events until `done` holds (checked whenever the channel is empty, at least every
    /// 50 ms); panics after [`WAIT`].
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Agent) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.apply_pending();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.health
            );
            if let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(50), self.rx.recv()).await
            {
                self.apply(ev);
            }
        }
    }

    fn apply(&mut self, ev: Event) {
        self.events.push(ev.clone());
        let c = self.index.apply(ev, Timestamp::now()).expect("apply");
        if !c.is_empty() {
            self.changes.push(c);
        }
    }

    /// Applies every event already in the channel.
    fn apply_pending(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.apply(ev);
        }
    }

    /// Waits for every kind to be synced, and applies the InitDones that said so: health runs
    /// ahead of the index by whatever sits in the channel.
    async fn synced(&mut self) {
        self.until("every watch synced", |a| a.health.all_synced())
            .await;
        self.apply_pending();
    }

    /// Applies whatever arrives during `d`.
    async fn drain(&mut self, d: Duration) {
        let end = Instant::now() + d;
        self.until("nothing", |_| Instant::now() >= end).await;
    }

    fn removed(&self, svc: &ObjectKey, at: IpAddr) -> usize {
        self.changes
            .iter()
            .flat_map(|c| &c.endpoints_removed)
            .filter(|(s, i)| s == svc && *i == at)
            .count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `watch_cluster_with` (this node, ServiceCIDRs watched) on `tuning`, its events drained and
/// never applied: for the tests of the watches' health alone. Both tasks end on drop.
struct Watching {
    health: Arc<WatchHealth>,
    task: tokio::task::JoinHandle<()>,
    drain: tokio::task::JoinHandle<()>,
}

impl Watching {
    fn start(server: &FakeApiServer, tuning: WatchTuning) -> Watching {
        let (task, mut rx, health) = spawn_watch(server, true, tuning);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Watching {
            health,
            task,
            drain,
        }
    }

    /// Waits until every kind synced; panics past `deadline`.
    async fn synced_by(&self, deadline: Instant) {
        while !self.health.all_synced() {
            assert!(Instant::now() < deadline, "never synced: {:?}", self.health);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
        self.drain.abort();
    }
}

// --- watches -------------------------------------------------------------------------------------

#[tokio::test]
async fn the_initial_list_fills_the_index_from_the_watch_cache_with_this_nodes_objects_only() {
    let server = populated().await;
    server.create(service("shop", "cache", "10.96.0.12"));
    let agent = Agent::synced_on(&server, true).await;

    let ix = &agent.index;
    assert_eq!(ix.counts().services, 3, "listed over two pages");
    assert!(ix.service(&key("shop", "web")).is_some());
    assert!(ix.service(&key("shop", "db")).is_some());
    assert_eq!(ix.endpoints_at(&ip("10.244.0.6")).count(), 1);
    assert_eq!(ix.pods_at(&ip("10.244.0.5")).count(), 1, "this node's pod");
    assert_eq!(
        ix.pods_at(&ip("10.244.1.9")).count(),
        0,
        "never another node's pods"
    );
    assert!(ix.is_node_address(&ip("192.0.2.10")));
    // Every node's addresses: hostNetwork pods on node-2 share its IP, and that IP is never
    // evidence of reuse (issue #12).
    assert!(
        ix.is_node_address(&ip("192.0.2.11")),
        "another node's address is a node address"
    );
    assert!(!ix.is_node_address(&ip("192.0.2.99")));
    assert!(ix.in_service_cidr(&ip("10.96.3.3")));
    assert!(agent.health.fresh(Duration::from_secs(5)));
    assert!(agent.health.unsynced().is_empty());

    // Relists were sent as Init, InitApply..., InitDone per kind; objects arrived stripped.
    for kind in Kind::ALL {
        assert!(agent
            .events
            .iter()
            .any(|e| matches!(e, Event::InitDone(k) if *k == kind)));
    }
    for e in &agent.events {
        if let Event::InitApply(Object::Service(s)) = e {
            assert!(s.metadata.managed_fields.is_none());
            let a = s
                .metadata
                .annotations
                .as_ref()
                .expect("mode annotation kept");
            assert_eq!(a.keys().collect::<Vec<_>>(), [MODE_ANNOTATION]);
        }
        if let Event::InitApply(Object::Node(n)) = e {
            assert!(
                n.status.as_ref().unwrap().images.is_none(),
                "node images stripped"
            );
        }
    }

    // What was asked: watch-cache lists in pages, then watches; Pods and Node by selector only.
    let reqs = server.requests();
    for resource in RESOURCES {
        let first = reqs
            .iter()
            .find(|r| r.resource == resource && r.verb == "list")
            .unwrap_or_else(|| panic!("no list of {resource}"));
        assert_eq!(first.resource_version(), Some("0"), "{first:?}");
        assert_eq!(first.limit(), Some(2), "{first:?}");
        assert!(
            server.wait_for_watches(resource, 1, WAIT).await,
            "{resource} watched"
        );
    }
    let pages: Vec<_> = reqs
        .iter()
        .filter(|r| r.resource == "endpointslices" || r.resource == "services")
        .filter(|r| r.continue_token().is_some())
        .collect();
    assert!(!pages.is_empty(), "3 Services in pages of 2");
    assert!(
        pages.iter().all(|r| r.resource_version().is_none()),
        "continue pages carry no resourceVersion"
    );
    let reqs = server.requests();
    let pods: Vec<_> = reqs.iter().filter(|r| r.resource == "pods").collect();
    assert!(pods.iter().any(|r| r.is_watch()));
    for r in &pods {
        assert_eq!(
            r.field_selector(),
            Some("spec.nodeName=node-1"),
            "never an unfiltered pods request: {r:?}"
        );
    }
    for r in reqs.iter().filter(|r| r.resource == "nodes") {
        assert_eq!(r.field_selector(), None, "every Node: {r:?}");
    }
    for r in reqs.iter().filter(|r| r.is_watch()) {
        assert_eq!(r.param("allowWatchBookmarks"), Some("true"), "{r:?}");
        assert_ne!(
            r.resource_version(),
            Some("0"),
            "watches start from the list's version"
        );
    }
}

#[tokio::test]
async fn added_modified_and_deleted_events_update_the_index_and_report_removed_endpoints() {
    let server = populated().await;
    let mut agent = Agent::synced_on(&server, true).await;
    let web = key("shop", "web");

    server.create(service("shop", "cache", "10.96.0.12"));
    agent
        .until("the new Service", |a| {
            a.index.service(&key("shop", "cache")).is_some()
        })
        .await;

    // web-1 leaves the only slice of web: a removal with a tombstone.
    server.update(slice("shop", "web", "web-a", &[("10.244.0.5", "web-0")]));
    agent
        .until("the removal", |a| a.removed(&web, ip("10.244.0.6")) == 1)
        .await;
    let t = agent.index.tombstones().at(&ip("10.244.0.6"));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].service, web);

    // An endpoint moving to a second slice is an addition there, not a removal.
    server.create(slice("shop", "web", "web-b", &[("10.244.0.9", "web-2")]));
    agent
        .until("web-2", |a| {
            a.index.endpoints_at(&ip("10.244.0.9")).count() == 1
        })
        .await;

    server.delete("services", "shop", "cache");
    agent
        .until("the deleted Service", |a| {
            a.index.service(&key("shop", "cache")).is_none()
        })
        .await;
    assert!(agent
        .changes
        .iter()
        .any(|c| c.services_removed.contains(&key("shop", "cache"))));

    // This node's pods: one scheduled here appears, one leaving the node disappears.
    server.create(pod("shop", "web-2", NODE, "10.244.0.9"));
    agent
        .until("the new pod", |a| {
            a.index.pods_at(&ip("10.244.0.9")).count() == 1
        })
        .await;
    server.update(pod("shop", "web-2", "node-2", "10.244.0.9"));
    agent
        .until("the pod gone elsewhere", |a| {
            a.index.pods_at(&ip("10.244.0.9")).count() == 0
        })
        .await;
    assert_eq!(agent.removed(&web, ip("10.244.0.6")), 1);
}

#[tokio::test]
async fn a_relist_after_410_that_drops_an_endpoint_reports_the_removal_exactly_once() {
    let server = populated().await;
    let mut agent = Agent::synced_on(&server, true).await;
    assert!(server.wait_for_watches("endpointslices", 1, WAIT).await);
    let web = key("shop", "web");
    let lists_before = server.count("list", "endpointslices");

    // The watch cache loses the change (only a relist can see it), then every watch gets 410.
    server.lose_events(|s| s.update(slice("shop", "web", "web-a", &[("10.244.0.5", "web-0")])));
    agent
        .until("the removal", |a| a.removed(&web, ip("10.244.0.6")) >= 1)
        .await;
    agent.synced().await;
    assert!(
        server.count("list", "endpointslices") > lists_before,
        "relisted"
    );
    let relist = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "endpointslices" && r.verb == "list")
        .nth(lists_before)
        .unwrap();
    assert_eq!(
        relist.resource_version(),
        Some("0"),
        "relists use the watch cache too"
    );

    // More expiries and bookmarks: still exactly one removal, one tombstone.
    server.expire_watches();
    agent.drain(Duration::from_millis(500)).await;
    agent.synced().await;
    server.bookmark();
    agent.drain(Duration::from_millis(200)).await;
    assert_eq!(agent.removed(&web, ip("10.244.0.6")), 1);
    assert_eq!(agent.index.tombstones().at(&ip("10.244.0.6")).len(), 1);
    assert!(
        agent.index.endpoints_at(&ip("10.244.0.5")).count() == 1,
        "the rest is intact"
    );
    let st = agent.health.status();
    assert!(st.iter().all(|s| s.relists >= 1), "{st:?}");
}

#[tokio::test]
async fn bookmarks_keep_the_view_fresh_and_silence_makes_it_stale() {
    let server = populated().await;
    let mut agent = Agent::synced_on(&server, true).await;
    for r in RESOURCES {
        assert!(server.wait_for_watches(r, 1, WAIT).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !agent.health.fresh(Duration::from_millis(300)),
        "quiet for 400 ms"
    );
    assert_eq!(agent.health.stale(Duration::from_millis(300)).len(), 6);
    server.bookmark();
    agent
        .until("fresh after a BOOKMARK", |a| {
            a.health.fresh(Duration::from_millis(300))
        })
        .await;
    assert!(agent.health.all_synced());

    // Periodic bookmarks (set before the watches restart) keep it fresh with no events at all.
    server.set_bookmark_interval(Some(Duration::from_millis(100)));
    server.drop_watches();
    agent.drain(Duration::from_millis(300)).await;
    for _ in 0..10 {
        agent.drain(Duration::from_millis(100)).await;
        assert!(
            agent.health.fresh(Duration::from_millis(500)),
            "{:?}",
            agent.health
        );
    }
}

/// A watch that stays connected (or keeps reconnecting) but hears nothing is stale: a
/// reconnect is no sign of life, only a list, an event or a BOOKMARK is. On the old code every
/// watch restart after the idle timeout counted, so 295 s of silence passed a 300 s threshold
/// forever; here the idle timeout is 150 ms and the threshold 600 ms.
#[tokio::test]
async fn a_silent_watch_turns_stale_even_though_it_reconnects_and_a_bookmark_revives_it() {
    let server = populated().await;
    let w = Watching::start(
        &server,
        WatchTuning {
            idle_timeout: Duration::from_millis(150),
            ..fast()
        },
    );
    let health = &w.health;
    w.synced_by(Instant::now() + WAIT).await;
    let watches_before = server.count("watch", "services");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        server.count("watch", "services") >= watches_before + 3,
        "the idle watch was restarted several times: {} -> {}",
        watches_before,
        server.count("watch", "services")
    );
    let stale = health.stale(Duration::from_millis(600));
    assert_eq!(
        stale,
        [
            "services",
            "endpointslices",
            "nodes",
            "servicecidrs",
            "pods",
            "namespaces"
        ],
        "silent for 1.2 s, reconnects notwithstanding: {health:?}"
    );
    assert!(!health.fresh(Duration::from_millis(600)));

    // A BOOKMARK is life: every kind fresh again (on the watches open at that moment).
    let mut fresh = false;
    for _ in 0..100 {
        server.bookmark();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if health.fresh(Duration::from_millis(600)) {
            fresh = true;
            break;
        }
    }
    assert!(fresh, "a BOOKMARK makes it fresh: {health:?}");
}

#[tokio::test]
async fn a_list_that_never_finishes_never_syncs() {
    let server = populated().await;
    server.hang_lists("endpointslices", true);
    let mut agent = Agent::start(&server, true);
    agent
        .until("the other kinds", |a| {
            [
                Kind::Service,
                Kind::Node,
                Kind::ServiceCidr,
                Kind::Pod,
                Kind::Namespace,
            ]
            .iter()
            .all(|k| a.health.synced(*k))
        })
        .await;
    agent.drain(Duration::from_millis(500)).await;
    assert!(!agent.health.all_synced());
    assert_eq!(agent.health.state(Kind::EndpointSlice), KindState::Pending);
    assert_eq!(agent.health.unsynced(), ["endpointslices"]);
    assert!(!agent.health.fresh(Duration::from_secs(60)));
    assert_eq!(
        agent.index.counts().slices,
        0,
        "nothing half-listed is served"
    );

    server.hang_lists("endpointslices", false);
    agent.synced().await;
    assert_eq!(agent.index.counts().slices, 2);
}

#[tokio::test]
async fn dropped_connections_resume_from_the_last_version_without_a_relist() {
    let server = populated().await;
    let mut agent = Agent::synced_on(&server, true).await;
    assert!(server.wait_for_watches("services", 1, WAIT).await);
    let lists = server.count("list", "services");
    server.drop_watches();
    server.create(service("shop", "late", "10.96.0.20"));
    agent
        .until("the Service created while cut off", |a| {
            a.index.service(&key("shop", "late")).is_some()
        })
        .await;
    assert_eq!(
        server.count("list", "services"),
        lists,
        "resumed, not relisted"
    );
    let watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "services" && r.is_watch())
        .collect();
    assert!(watches.len() >= 2);
    assert_eq!(watches[1].resource_version(), watches[0].resource_version());
}

#[tokio::test]
async fn without_servicecidrs_the_api_answers_404_and_the_watch_stops() {
    let server = populated().await;
    server.disable("servicecidrs");
    let mut agent = Agent::synced_on(&server, true).await;
    assert!(agent.health.service_cidrs_unavailable());
    assert_eq!(
        agent.health.state(Kind::ServiceCidr),
        KindState::Unavailable
    );
    assert!(
        agent.health.fresh(Duration::from_secs(5)),
        "an absent API does not hold the view back"
    );
    agent.drain(Duration::from_millis(300)).await;
    assert_eq!(server.count("list", "servicecidrs"), 1);
    assert_eq!(server.count("watch", "servicecidrs"), 0);

    // Off by configuration: never asked.
    let server = populated().await;
    let agent = Agent::synced_on(&server, false).await;
    assert_eq!(agent.health.state(Kind::ServiceCidr), KindState::Off);
    assert_eq!(server.count("list", "servicecidrs"), 0);
}

/// The deploy issue's ClusterRole, as rules: what the agent's source needs, and nothing more.
fn agent_role() -> Rbac {
    Rbac::new(vec![
        PolicyRule::new(&[""], &["services", "nodes"], &["get", "list", "watch"]),
        PolicyRule::new(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["get", "list", "watch"],
        ),
        PolicyRule::new(
            &["networking.k8s.io"],
            &["servicecidrs"],
            &["get", "list", "watch"],
        ),
        PolicyRule::new(&[""], &["pods"], &["get", "list", "watch"]),
        PolicyRule::new(&["events.k8s.io"], &["events"], &["create", "patch"]),
        // The `ghostbuster.io/mode` annotation of Namespaces.
        PolicyRule::new(&[""], &["namespaces"], &["get", "list", "watch"]),
    ])
}

/// The rules above, and the shipped `deploy/clusterrole.yaml` when it is there.
fn shipped_roles() -> Vec<(String, Rbac)> {
    let mut roles = vec![("the issue's rules".to_owned(), agent_role())];
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/clusterrole.yaml");
    if let Ok(text) = std::fs::read_to_string(path) {
        roles.push((
            path.to_owned(),
            Rbac::from_manifests(&text).expect("a ClusterRole"),
        ));
    }
    roles
}

#[tokio::test]
async fn the_least_privilege_role_suffices_and_a_missing_permission_holds_the_view_back() {
    for (name, role) in shipped_roles() {
        let server = populated().await;
        server.set_rbac(Some(role));
        let _agent = Agent::synced_on(&server, true).await;
        let checker = PodChecker::new(client(&server), Duration::from_secs(5));
        checker
            .check("shop", "web-0", None, ip("10.244.0.5"))
            .await
            .unwrap();
        // Who holds an IP: pods listed cluster-wide by field selector.
        live::IpHolders::new(client(&server), live::HoldersConfig::default())
            .pods_at(ip("10.244.1.9"))
            .await
            .unwrap();
        assert!(
            server.forbidden().is_empty(),
            "{name}: {:?}",
            server.forbidden()
        );
    }

    // Without endpointslices the view never completes, and says why.
    let server = populated().await;
    let mut role = agent_role();
    role.rules.remove(1);
    server.set_rbac(Some(role));
    let mut agent = Agent::start(&server, true);
    agent.drain(Duration::from_millis(600)).await;
    assert!(!agent.health.all_synced());
    let st = &agent.health.status()[1];
    assert_eq!(st.kind, Kind::EndpointSlice);
    assert!(st.errors >= 2, "retried with backoff: {st:?}");
    assert!(
        st.last_error.as_deref().unwrap_or_default().contains("403"),
        "{st:?}"
    );

    // Granting it later is picked up by the retries.
    server.set_rbac(Some(agent_role()));
    agent.synced().await;
}

// --- Namespaces and the mode annotation ----------------------------------------------------------

/// The mode that applies to `shop/NAME` in the agent's index.
fn mode_in(agent: &Agent, name: &str) -> Option<ghostbuster::cluster::EffectiveMode> {
    let ix = &agent.index;
    ix.effective_mode(ix.service(&key("shop", name))?)
}

/// A Service without its own annotation takes its Namespace's `ghostbuster.io/mode`, live: the
/// Namespace annotated after the agent started, changed, relisted after a 410 without the
/// annotation, annotated again and deleted. The Service's own annotation wins throughout, and
/// the one-shot read agrees.
#[tokio::test]
async fn a_namespace_annotated_after_start_changes_the_mode_of_its_services() {
    let server = populated().await;
    let mut plain = service("shop", "plain", "10.96.0.30");
    plain["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    server.create(plain);
    let mut agent = Agent::synced_on(&server, true).await;
    assert_eq!(mode_in(&agent, "plain"), None, "no annotation anywhere yet");
    assert_eq!(
        mode_in(&agent, "web").map(|m| (m.mode, m.from)),
        Some((SweepMode::Report, ModeSource::Service))
    );

    server.update(namespace("shop", Some("off")));
    agent
        .until("the Namespace's mode", |a| mode_in(a, "plain").is_some())
        .await;
    let m = mode_in(&agent, "plain").unwrap();
    assert_eq!(
        (m.mode, m.from),
        (SweepMode::Off, ModeSource::Namespace),
        "{m:?}"
    );
    let w = mode_in(&agent, "web").unwrap();
    assert_eq!(
        (w.mode, w.from, w.overrides),
        (SweepMode::Report, ModeSource::Service, Some(SweepMode::Off)),
        "the Service's own annotation wins"
    );
    // It arrived stripped: the mode annotation and the name, nothing else.
    let last = agent
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Apply(Object::Namespace(n)) => Some(n),
            _ => None,
        })
        .expect("a Namespace event");
    let a = last.metadata.annotations.as_ref().unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), [MODE_ANNOTATION]);
    assert!(last.metadata.managed_fields.is_none() && last.spec.is_none());

    server.update(namespace("shop", Some(" Sweep")));
    agent
        .until("sweep", |a| {
            mode_in(a, "plain").map(|m| m.mode) == Some(SweepMode::Sweep)
        })
        .await;

    // The annotation removed where no watch sees it: only the relist after the 410 shows it.
    let lists = server.count("list", "namespaces");
    server.lose_events(|s| s.update(namespace("shop", None)));
    agent
        .until("the relisted Namespace", |a| mode_in(a, "plain").is_none())
        .await;
    assert!(server.count("list", "namespaces") > lists, "relisted");
    assert_eq!(agent.index.counts().namespace_modes, 0);

    // Annotated again (an unknown value is `report`), then deleted: back to the default.
    server.update(namespace("shop", Some("later-maybe")));
    agent
        .until("report", |a| {
            mode_in(a, "plain").map(|m| m.mode) == Some(SweepMode::Report)
        })
        .await;
    server.delete("namespaces", "", "shop");
    agent
        .until("the deleted Namespace", |a| mode_in(a, "plain").is_none())
        .await;
    assert_eq!(agent.index.counts().namespace_modes, 0);

    // The one-shot read (scan, sweep, explain without --from-file) sees Namespaces too.
    server.create(namespace("shop", Some("off")));
    let ix = live::read_once(&client(&server), ReadConfig::new(IndexConfig::default()))
        .await
        .unwrap();
    let plain = ix.service(&key("shop", "plain")).unwrap();
    assert_eq!(ix.mode_of(plain), Some(SweepMode::Off));
    assert!(server
        .requests()
        .iter()
        .any(|r| r.resource == "namespaces" && r.verb == "list" && r.resource_version().is_none()));
    assert!(server.forbidden().is_empty());
}

/// Without permission on Namespaces the agent's view never completes (a namespace set to `off`
/// would go unseen, so nothing may be removed), and the one-shot read fails instead of sweeping
/// without them.
#[tokio::test]
async fn without_namespaces_the_view_is_incomplete_and_the_one_shot_read_fails() {
    let server = populated().await;
    let mut role = agent_role();
    let last = role.rules.pop().unwrap();
    assert_eq!(last.resources, ["namespaces"]);
    server.set_rbac(Some(role));
    let mut agent = Agent::start(&server, true);
    agent
        .until("the other kinds", |a| a.health.unsynced() == ["namespaces"])
        .await;
    agent.drain(Duration::from_millis(400)).await;
    assert!(!agent.health.all_synced());
    assert_eq!(agent.health.unsynced(), ["namespaces"]);
    let st = agent
        .health
        .status()
        .into_iter()
        .find(|s| s.kind == Kind::Namespace)
        .unwrap();
    assert!(
        st.last_error.as_deref().unwrap_or_default().contains("403"),
        "{st:?}"
    );

    let e = live::read_once(&client(&server), ReadConfig::new(IndexConfig::default()))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("cannot list Namespaces"), "{e}");

    // Granted later: picked up by the retries.
    server.set_rbac(Some(agent_role()));
    agent.synced().await;
}

// --- read_once and pod checks --------------------------------------------------------------------

#[tokio::test]
async fn read_once_lists_everything_consistently_in_pages() {
    let server = populated().await;
    let mut cfg = ReadConfig::new(IndexConfig {
        node_name: Some(NODE.into()),
        ..Default::default()
    });
    cfg.page_size = 1;
    let before = Timestamp::now();
    let ix = live::read_once(&client(&server), cfg).await.unwrap();
    let c = ix.counts();
    assert_eq!(
        (c.services, c.slices, c.endpoints, c.pods, c.nodes),
        (2, 2, 3, 2, 2)
    );
    assert!(ix.pods_complete(), "every pod of the cluster was read");
    assert!(ix.in_service_cidr(&ip("10.96.9.9")));
    assert!(ix.snapshot_time().is_some_and(|t| t
        >= before
            .checked_sub(jiff::SignedDuration::from_secs(1))
            .unwrap()));
    let reqs = server.requests();
    assert!(reqs.iter().all(|r| r.verb == "list"), "lists only");
    assert!(
        reqs.iter().all(|r| r.resource_version().is_none()),
        "consistent reads, not the cache"
    );
    assert!(
        reqs.iter().filter(|r| r.resource == "pods").count() >= 2,
        "paged"
    );

    // Without the ServiceCIDR API, or without permission on Pods: still a view, with less in it.
    server.disable("servicecidrs");
    let mut rbac = agent_role();
    rbac.rules[3] = PolicyRule::new(&[""], &["pods"], &["get"]);
    server.set_rbac(Some(rbac));
    let ix = live::read_once(&client(&server), ReadConfig::new(IndexConfig::default()))
        .await
        .unwrap();
    assert_eq!(ix.counts().services, 2);
    assert!(!ix.pods_complete());
    assert!(!ix.in_service_cidr(&ip("10.96.9.9")));

    // Without permission on Services there is no view at all: an environment error.
    server.set_rbac(Some(Rbac::new(vec![])));
    let e = live::read_once(&client(&server), ReadConfig::new(IndexConfig::default()))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.is_environment());
    assert!(e.to_string().contains("cannot list Services"), "{e}");
}

#[tokio::test]
async fn pod_checks_answer_from_one_cached_get() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(pod("shop", "db-0", NODE, "10.244.0.7"));
    let pods = PodChecker::new(client(&server), Duration::from_millis(300));
    let (uid, at) = (Some("uid-db-0"), ip("10.244.0.7"));
    // What the checker says of db-0 as first seen (uid, address).
    let db_0 = || async { pods.check("shop", "db-0", uid, at).await.unwrap() };
    assert_eq!(db_0().await, PodCheck::Same);
    assert_eq!(
        pods.check("shop", "db-0", uid, ip("10.244.0.8"))
            .await
            .unwrap(),
        PodCheck::Moved
    );
    assert_eq!(
        pods.check("shop", "db-0", Some("uid-old"), at)
            .await
            .unwrap(),
        PodCheck::Replaced
    );
    assert_eq!(server.count("get", "pods"), 1, "one GET, then the cache");
    assert_eq!(
        pods.check("shop", "web-9", None, at).await.unwrap(),
        PodCheck::Gone
    );
    assert_eq!(
        pods.check("shop", "web-9", None, at).await.unwrap(),
        PodCheck::Gone
    );
    assert_eq!(server.count("get", "pods"), 2, "404s are cached too");

    // After the TTL the pod is asked again: terminating, then deleted and recreated.
    let mut terminating = pod("shop", "db-0", NODE, "10.244.0.7");
    terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    server.update(terminating);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(db_0().await, PodCheck::Terminating);
    server.delete("pods", "shop", "db-0");
    let mut again = pod("shop", "db-0", NODE, "10.244.0.8");
    again["metadata"]["uid"] = json!("uid-db-0-new");
    server.create(again);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(db_0().await, PodCheck::Replaced);
    assert_eq!(server.count("get", "pods"), 4);

    // Errors are errors, not answers (and not cached).
    server.set_rbac(Some(Rbac::new(vec![])));
    let e = pods.check("shop", "db-1", uid, at).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
}

// --- bounds ------------------------------------------------------------------------------------

/// Every API call is bounded: a list that never answers fails after `request_timeout` (and is
/// retried, so the view completes once the server answers again), a list body past
/// `max_list_bytes` is a clear error instead of unbounded memory, and a pod GET that hangs fails
/// after the checker's timeout (the caller keeps its flows) instead of holding the reactor.
#[tokio::test]
async fn lists_and_pod_gets_have_timeouts_and_list_bodies_a_cap() {
    let server = populated().await;
    server.hang_lists("endpointslices", true);
    let w = Watching::start(
        &server,
        WatchTuning {
            request_timeout: Duration::from_millis(300),
            ..fast()
        },
    );
    let health = &w.health;
    let deadline = Instant::now() + WAIT;
    loop {
        let st = &health.status()[1];
        if st.errors >= 2 {
            assert!(
                st.last_error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("no complete answer within"),
                "{st:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hanging list never timed out: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.count("list", "endpointslices") >= 2, "retried");
    server.hang_lists("endpointslices", false);
    w.synced_by(deadline).await;
    drop(w);

    // A list body larger than the cap: an error that says so, and the kind never syncs.
    let w = Watching::start(
        &server,
        WatchTuning {
            max_list_bytes: 300,
            page_size: 500,
            ..fast()
        },
    );
    let health = &w.health;
    let deadline = Instant::now() + WAIT;
    loop {
        let st = &health.status()[1];
        if st.errors >= 1 {
            let e = st.last_error.clone().unwrap_or_default();
            assert!(e.contains("larger than 300 bytes"), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error past the cap: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!health.synced(Kind::EndpointSlice));
    drop(w);

    // A pod GET that hangs.
    server.hang_gets("pods", true);
    let checker = PodChecker::new(client(&server), Duration::from_secs(5))
        .with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let r = checker.check("shop", "web-0", None, ip("10.244.0.5")).await;
    assert!(r.is_err(), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(format!("{}", r.unwrap_err()).contains("no answer within"));
    server.hang_gets("pods", false);
    assert_eq!(
        checker
            .check("shop", "web-0", Some("uid-web-0"), ip("10.244.0.5"))
            .await
            .unwrap(),
        PodCheck::Same
    );
}

// --- who holds an IP ------------------------------------------------------------------------------

/// `pods_at` asks the API server cluster-wide with `fieldSelector=status.podIP=`: it finds a pod
/// on another node (which the agent's own watch never sees), says whether it is hostNetwork, and
/// answers "nobody" for a free IP, stamped with when it asked.
#[tokio::test]
async fn ip_holders_finds_the_pods_at_an_ip_cluster_wide() {
    let server = populated().await;
    let mut exporter = pod("monitoring", "node-exporter-x", "node-2", "192.0.2.11");
    exporter["spec"]["hostNetwork"] = json!(true);
    server.create(exporter);
    let holders = live::IpHolders::new(client(&server), live::HoldersConfig::default());

    let before = Timestamp::now();
    let far = holders.pods_at(ip("10.244.1.9")).await.unwrap();
    assert!(far.held());
    assert_eq!(far.pods.len(), 1, "{far:?}");
    let p = &far.pods[0];
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.uid.as_deref()),
        ("shop", "far-away", Some("uid-far-away"))
    );
    assert!(!p.host_network && !p.deleting && !p.finished);
    assert!(p.created.is_some());
    assert!(far.asked_at >= before && far.primary_ip_only);

    let host = holders.pods_at(ip("192.0.2.11")).await.unwrap();
    assert_eq!(host.pods.len(), 1);
    assert!(host.pods[0].host_network, "{host:?}");

    let nobody = holders.pods_at(ip("10.244.7.7")).await.unwrap();
    assert!(!nobody.held() && nobody.pods.is_empty());

    let asked: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "pods" && r.verb == "list")
        .collect();
    assert_eq!(asked.len(), 3);
    assert_eq!(asked[0].field_selector(), Some("status.podIP=10.244.1.9"));
    assert_eq!(asked[2].field_selector(), Some("status.podIP=10.244.7.7"));
}

/// Bounded: a list that hangs is a timeout after the configured time (never a wait for ever),
/// and questions over the rate are refused at once without a request.
#[tokio::test]
async fn ip_holders_times_out_and_is_rate_limited() {
    let server = populated().await;
    let holders = live::IpHolders::new(
        client(&server),
        live::HoldersConfig {
            timeout: Duration::from_millis(300),
            per_second: 0.01,
            burst: 2,
        },
    );
    server.hang_lists("pods", true);
    let t = Instant::now();
    let r = holders.pods_at(ip("10.244.0.5")).await;
    assert!(
        matches!(r, Err(live::HoldersError::Timeout { .. })),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.hang_lists("pods", false);

    let ok = holders.pods_at(ip("10.244.0.5")).await.unwrap();
    assert_eq!(ok.pods.len(), 1);
    let lists = server.count("list", "pods");
    let t = Instant::now();
    let r = holders.pods_at(ip("10.244.0.5")).await;
    assert!(
        matches!(r, Err(live::HoldersError::RateLimited(_))),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(100), "refused at once");
    assert_eq!(
        server.count("list", "pods"),
        lists,
        "no request over the rate"
    );
    assert!(r.unwrap_err().to_string().contains("rate limit"));
}

// --- the CLI ------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_ghostbuster");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("gb-kube-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ghostbuster(args: &[&str]) -> Run {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .output()
        .expect("run ghostbuster");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn cli_errors_reading_the_api_are_environment_errors_and_bad_kubeconfigs_input_errors() {
    let dir = Scratch::new("cli-errors");
    // Nothing listens on port 1.
    let unreachable = dir.write(
        "unreachable.yaml",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    );
    let run = ghostbuster(&["scan", "--kubeconfig", &unreachable]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot list Services"),
        "{}",
        run.stderr
    );

    let server = FakeApiServer::start_in_thread().unwrap();
    populate(&server);
    server.require_token(Some("t0ken"));
    let mut wrong = server.kubeconfig().replace("t0ken", "wrong");
    let path = dir.write("wrong-token.yaml", &wrong);
    let run = ghostbuster(&["scan", "--kubeconfig", &path]);
    assert_eq!(run.code, 3, "401: {}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);

    server.set_rbac(Some(Rbac::new(vec![])));
    wrong = server.kubeconfig();
    let path = dir.write("forbidden.yaml", &wrong);
    let run = ghostbuster(&["explain", "--kubeconfig", &path, "10.96.0.10"]);
    assert_eq!(run.code, 3, "403: {}", run.stderr);
    assert!(
        run.stderr.contains("403") && run.stderr.contains("forbidden"),
        "{}",
        run.stderr
    );

    let run = ghostbuster(&["scan", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("kubeconfig"), "{}", run.stderr);
    let garbage = dir.write("garbage.yaml", "{{{ not yaml");
    let run = ghostbuster(&["scan", "--kubeconfig", &garbage]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

/// `ghostbuster scan` and `sweep` with `--kubeconfig` only: a UDP ghost in a lab node's table is
/// judged and removed from what the live API says.
#[test]
fn cli_scan_and_sweep_read_the_live_api_end_to_end() {
    use netlab::plan::vip_v4;
    use netlab::{Lab, PodSpec, ServerSpec, Service, ServicePort};

    if !lab_available("cli_scan_and_sweep_read_the_live_api_end_to_end") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    // Flow start times: absence from the API's answer is evidence only against a flow proven
    // older than it (issue #12), and only the kernel's timestamp proves that.
    scan_support::enable_timestamps(lab.node_netns());
    let dns = lab
        .add_pod(
            PodSpec::backend("dns-a")
                .in_namespace("kube-system")
                .label("app", "dns")
                .serve(ServerSpec::udp_echo(5353, "dns-a")),
        )
        .expect("backend")
        .endpoints();
    let client = lab
        .add_pod(PodSpec::client("client"))
        .expect("client")
        .netns()
        .to_string();
    let vip = vip_v4(53);
    let svc = |eps: Vec<netlab::Endpoint>| {
        Service::new("kube-system", "dns")
            .cluster_ip(vip)
            .port(ServicePort::udp("dns", 53, 5353))
            .endpoints(eps)
    };
    lab.sync_services(&[svc(dns.clone())]).unwrap();
    let answer = netlab::udp_query(
        &client,
        SocketAddr::from((vip, 53)),
        "q",
        Duration::from_secs(2),
    )
    .expect("the Service answers");
    assert!(answer.contains("dns-a"), "{answer}");
    let backend = dns
        .iter()
        .find(|e| e.ip.is_ipv4())
        .expect("an IPv4 endpoint")
        .ip;
    lab.delete_pod("dns-a").unwrap();
    lab.sync_services(&[svc(Vec::new())]).unwrap();

    let server = FakeApiServer::start_in_thread().unwrap();
    for item in lab.kubernetes_objects()["items"].as_array().unwrap() {
        server.create(item);
    }
    let dir = Scratch::new("cli-e2e");
    let kubeconfig = dir.write("kubeconfig", &server.kubeconfig());
    let node = lab.node_netns().to_string();
    let to_backend = |run: &Run| -> Vec<Value> {
        let v: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {} {}", run.stdout, run.stderr));
        v["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["reply"]["src"] == backend.to_string())
            .cloned()
            .collect()
    };

    // `scan` or `sweep` of the lab node's table, judged by the live API.
    let live = |cmd: &str| {
        ghostbuster(&[
            cmd,
            "--clock-skew",
            "0s",
            "--kubeconfig",
            &kubeconfig,
            "--netns",
            &node,
            "-o",
            "json",
        ])
    };
    let run = live("scan");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let flows = to_backend(&run);
    assert_eq!(flows.len(), 1, "{}", run.stdout);
    assert_eq!(flows[0]["verdict"], "endpoint_gone", "{}", flows[0]);
    assert_eq!(flows[0]["removable"], true, "{}", flows[0]);
    let asked: Vec<_> = server.requests();
    for resource in [
        "services",
        "endpointslices",
        "pods",
        "nodes",
        "servicecidrs",
        "namespaces",
    ] {
        assert!(
            asked
                .iter()
                .any(|r| r.resource == resource && r.verb == "list"),
            "{resource}"
        );
    }

    let run = live("sweep");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let flows = to_backend(&run);
    assert_eq!(flows[0]["result"], "deleted", "{}", run.stdout);
    let run = live("scan");
    assert!(
        to_backend(&run).is_empty(),
        "the ghost is gone: {}",
        run.stdout
    );
}
