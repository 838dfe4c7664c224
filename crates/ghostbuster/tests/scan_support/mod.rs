//! Shared by the real-kernel `scan`/`sweep` tests (`scan_kernel*.rs`): the root gate, a lab node
//! with flow timestamps, cluster files written from the lab's own Kubernetes objects (edited to
//! model a situation), the real binary, and bounded observations of the lab's clients.
//!
//! Every wait here is bounded; every namespace belongs to a [`netlab::Lab`] (removed on drop);
//! every file lives in a per-story temporary directory (removed on drop).

#![allow(dead_code)]

#[path = "../flow_schema/mod.rs"]
pub mod flow_schema;
pub mod setups;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use netlab::plan::vip_v4;
use netlab::{
    ClientReport, Endpoint, Lab, PodSpec, ProxyConfig, ServerSpec, Service, ServicePort, TcpPool,
    TcpPoolConfig,
};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_ghostbuster");
/// Port of every backend's HTTP server.
pub const HTTP: u16 = 8080;
/// Bound on one request or connect of the test itself.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// True when the test may run: root is needed for network namespaces. Outside CI a missing
/// privilege is a skip with a printed reason; in CI (`CI` set) it is a failure.
pub fn lab_available(test: &str) -> bool {
    if netlab::is_root() {
        return true;
    }
    let reason =
        format!("{test} needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) for network namespaces");
    if std::env::var_os("CI").is_some() {
        panic!("{reason}; in CI this is a failure, not a skip");
    }
    eprintln!("SKIP {reason}");
    false
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let short: String = test.chars().take(24).collect();
        let dir = std::env::temp_dir().join(format!(
            "gb-scan-{}-{}-{short}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: a lab node (kube-proxy-shaped rules), a client pod, a scratch directory.
pub struct Story {
    // Field order is drop order: the lab (servers, namespaces) goes first.
    pub lab: Lab,
    /// The client pod's namespace.
    pub client: String,
    dir: TempDir,
}

impl Story {
    /// A lab with `nf_conntrack_timestamp=1` in the node namespace when `timestamps` (before any
    /// traffic, so every flow has a start time), and a client pod. `None` when skipped.
    pub fn start(test: &str, timestamps: bool) -> Option<Story> {
        Self::with_config(test, timestamps, ProxyConfig::default())
    }

    /// Like [`Story::start`] with the node's rules rendered by kube-proxy's `mode` proxier
    /// (whatever [`netlab::kube_proxy::PROXY_MODE_ENV`] says).
    pub fn in_mode(test: &str, timestamps: bool, mode: netlab::ProxyMode) -> Option<Story> {
        Self::with_config(
            test,
            timestamps,
            ProxyConfig {
                mode,
                ..ProxyConfig::default()
            },
        )
    }

    /// The proxier whose rules the node holds.
    pub fn mode(&self) -> netlab::ProxyMode {
        self.lab.kube_proxy().mode()
    }

    /// Like [`Story::start`] with explicit kube-proxy settings.
    pub fn with_config(test: &str, timestamps: bool, config: ProxyConfig) -> Option<Story> {
        if !lab_available(test) {
            return None;
        }
        let mut lab = Lab::with_config(config).expect("lab");
        if timestamps {
            enable_timestamps(lab.node_netns());
        }
        let client = lab
            .add_pod(PodSpec::client("client"))
            .expect("client pod")
            .netns()
            .to_string();
        // Recent kernels retransmit a SYN every second at first (tcp_syn_linear_timeouts=4); the
        // client pod uses the classic exponential backoff (1 s, 3 s, 7 s after the first SYN), so
        // a test can act between two retransmissions with seconds to spare. Best effort: older
        // kernels have no such sysctl and back off exponentially anyway.
        let _ = sysctl_in(&client, "net.ipv4.tcp_syn_linear_timeouts", "0");
        Some(Story {
            lab,
            client,
            dir: TempDir::new(test),
        })
    }

    /// The node namespace, where the DNAT'd flows live.
    pub fn node(&self) -> String {
        self.lab.node_netns().to_string()
    }

    /// A backend pod labelled `app: <app>` in namespace `ns` running an HTTP server on
    /// [`HTTP`] that answers with its name, plus `extra` servers; its ready endpoints.
    pub fn backend(
        &mut self,
        name: &str,
        ns: &str,
        app: &str,
        extra: &[ServerSpec],
    ) -> Vec<Endpoint> {
        let mut spec = PodSpec::backend(name)
            .in_namespace(ns)
            .label("app", app)
            .serve(ServerSpec::http(HTTP, 200, name));
        for s in extra {
            spec = spec.serve(s.clone());
        }
        self.lab.add_pod(spec).expect("backend pod").endpoints()
    }

    /// A backend pod `name` of `kube-system/dns` (`app: dns`): [`Story::backend`] plus a UDP
    /// echo on 5353 that answers with its name.
    pub fn dns_backend(&mut self, name: &str) -> Vec<Endpoint> {
        self.backend(
            name,
            "kube-system",
            "dns",
            &[ServerSpec::udp_echo(5353, name)],
        )
    }

    /// Writes `objects` as `name` in the scratch directory; returns the path.
    pub fn write(&self, name: &str, objects: &Value) -> String {
        let path = self.dir.0.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(objects).unwrap()).expect("write file");
        path.to_string_lossy().into_owned()
    }

    /// Writes raw text as `name`; returns the path.
    pub fn write_text(&self, name: &str, text: &str) -> String {
        let path = self.dir.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path.to_string_lossy().into_owned()
    }

    /// `ghostbuster sweep --netns NODE --from-file FILE -o json EXTRA...`
    pub fn sweep(&self, file: &str, extra: &[&str]) -> Run {
        self.run("sweep", file, extra)
    }

    /// `ghostbuster explain --netns NODE --from-file FILE -o json TARGET...`
    pub fn explain(&self, file: &str, target: &[&str]) -> Run {
        self.run("explain", file, target)
    }

    /// `ghostbuster scan --netns NODE --from-file FILE -o json EXTRA...`
    pub fn scan(&self, file: &str, extra: &[&str]) -> Run {
        self.run("scan", file, extra)
    }

    /// With `--clock-skew 0s`: the test writes its export on the very clock that stamps the
    /// node's flows, moments after them, so there is no skew to allow for (the default 2 s margin
    /// would rightly keep every flow younger than that; `scan_kernel_evidence.rs` tests it).
    fn run(&self, command: &str, file: &str, extra: &[&str]) -> Run {
        let node = self.node();
        let mut args = vec![
            command,
            "--netns",
            &node,
            "--from-file",
            file,
            "-o",
            "json",
            "--clock-skew",
            "0s",
        ];
        args.extend_from_slice(extra);
        Run::of(&args)
    }

    /// The node's conntrack table, as `ghostbuster list -o ndjson` prints it.
    pub fn table(&self) -> Vec<Value> {
        table(&self.node())
    }

    /// The lab as the recommended export holds it (`kubectl get services,endpointslices,pods,
    /// nodes,namespaces -A -o json`): its Services, EndpointSlices and Pods, plus the node and
    /// every namespace they live in (no annotation), which `sweep` refuses to go without.
    pub fn export(&self) -> Value {
        with_node(with_namespaces(self.lab.kubernetes_objects()))
    }
}

/// `sysctl -w KEY=VALUE` inside `netns` (never on the machine itself); the error text if it failed.
pub fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-q", "-w"])
        .arg(format!("{key}={value}"))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Turns on flow start times inside `netns` only (never the machine's own sysctls).
pub fn enable_timestamps(netns: &str) {
    if let Err(e) = sysctl_in(netns, "net.netfilter.nf_conntrack_timestamp", "1") {
        panic!("sysctl nf_conntrack_timestamp=1 in {netns}: {e}");
    }
}

/// One run of the binary.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout as JSON, `Null` when it is not JSON.
    pub json: Value,
}

impl Run {
    /// Runs `ghostbuster ARGS...`.
    pub fn of(args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .output()
            .expect("run ghostbuster");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code and that stdout is a JSON report; a `scan`, `sweep` or `explain`
    /// report's flows must each be the flow object of docs/flow.schema.json, so every kernel
    /// scenario these tests build checks the schema too.
    pub fn ok(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "ghostbuster {:?}: exit {}\nstdout: {}\nstderr: {}",
            self.args, self.code, self.stdout, self.stderr
        );
        assert!(self.json.is_object(), "not JSON: {}", self.stdout);
        if matches!(
            self.args.first().map(String::as_str),
            Some("scan" | "sweep" | "explain")
        ) {
            flow_schema::assert_flows(&self.json);
        }
        self
    }

    /// The listed (not healthy) flows.
    pub fn flows(&self) -> Vec<&Value> {
        self.json["flows"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    /// Listed flows whose backend (reply source) is `ip`.
    pub fn to_backend(&self, ip: IpAddr) -> Vec<&Value> {
        self.flows()
            .into_iter()
            .filter(|f| reply_src(f) == Some(ip))
            .collect()
    }

    /// The listed flow with this conntrack id.
    pub fn by_id(&self, id: u64) -> Option<&Value> {
        self.flows().into_iter().find(|f| f["id"] == id)
    }

    pub fn deleted(&self) -> u64 {
        self.json["deleted"].as_u64().unwrap_or(0)
    }

    pub fn removable(&self) -> u64 {
        self.json["summary"]["removable"].as_u64().unwrap_or(0)
    }

    /// The report, for assertion messages.
    pub fn pretty(&self) -> String {
        format!(
            "ghostbuster {:?} (exit {}):\n{}\nstderr: {}",
            self.args,
            self.code,
            serde_json::to_string_pretty(&self.json).unwrap_or_default(),
            self.stderr
        )
    }
}

/// `ghostbuster list --netns NS -o ndjson`, one object per entry.
pub fn table(netns: &str) -> Vec<Value> {
    let run = Run::of(&["list", "--netns", netns, "-o", "ndjson"]);
    assert_eq!(run.code, 0, "list failed: {}", run.stderr);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect()
}

/// What identifies an entry across two dumps: protocol, original tuple, zone and kernel id.
pub fn key(flow: &Value) -> String {
    let o = &flow["original"];
    format!(
        "{} {}:{} -> {}:{} zone {} id {}",
        flow["protocol"], o["src"], o["sport"], o["dst"], o["dport"], flow["zone"], flow["id"]
    )
}

/// The keys of a table.
pub fn keys(table: &[Value]) -> BTreeSet<String> {
    table.iter().map(key).collect()
}

fn ip_field(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

/// The flow's reply source: its backend when NATed.
pub fn reply_src(flow: &Value) -> Option<IpAddr> {
    ip_field(&flow["reply"]["src"])
}

/// The flow's original destination address and port.
pub fn orig_dst(flow: &Value) -> Option<SocketAddr> {
    let ip = ip_field(&flow["original"]["dst"])?;
    let port = u16::try_from(flow["original"]["dport"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Entries of `table` whose reply source is `ip`.
pub fn entries_to(table: &[Value], ip: IpAddr) -> Vec<&Value> {
    table.iter().filter(|f| reply_src(f) == Some(ip)).collect()
}

/// The flow's evidence names.
pub fn evidence(flow: &Value) -> Vec<String> {
    flow["evidence"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the node's table until an entry satisfies `pred` (bounded by `timeout`).
pub fn wait_entry(netns: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + timeout;
    loop {
        let t = table(netns);
        if let Some(f) = t.iter().find(|f| pred(f)) {
            return f.clone();
        }
        assert!(
            Instant::now() < until,
            "no such entry within {timeout:?}; table: {t:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// --- cluster objects -----------------------------------------------------------------------------

/// The `items` of a `List`.
pub fn items(list: &mut Value) -> &mut Vec<Value> {
    list["items"].as_array_mut().expect("a List with items")
}

/// Removes every object of `kind`.
pub fn without_kind(mut list: Value, kind: &str) -> Value {
    items(&mut list).retain(|o| o["kind"] != kind);
    list
}

/// True for the Service `ns/name` and its EndpointSlices.
pub fn belongs_to_service(o: &Value, ns: &str, name: &str) -> bool {
    o["metadata"]["namespace"] == ns
        && match o["kind"].as_str() {
            Some("Service") => o["metadata"]["name"] == name,
            Some("EndpointSlice") => o["metadata"]["labels"]["kubernetes.io/service-name"] == name,
            _ => false,
        }
}

/// Removes the Service `ns/name` and its EndpointSlices (a deleted Service).
pub fn without_service(mut list: Value, ns: &str, name: &str) -> Value {
    items(&mut list).retain(|o| !belongs_to_service(o, ns, name));
    list
}

/// The cluster's ServiceCIDR objects (the lab's ClusterIP ranges), as
/// `kubectl get servicecidrs -o json` prints them.
pub fn with_service_cidrs(mut list: Value) -> Value {
    items(&mut list).push(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": { "name": "kubernetes" },
        "spec": { "cidrs": [netlab::plan::SERVICE_CIDR_V4, netlab::plan::SERVICE_CIDR_V6] },
    }));
    list
}

/// The EndpointSlice of `default/kubernetes` (kept by the API server itself; here one API server
/// on the lab node's address), which every real export holds next to that Service.
pub fn with_api_server_slice(mut list: Value) -> Value {
    items(&mut list).push(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": "3e9a7c21-5b4d-4f8e-a6c2-9d1e0f2a3b4c",
            "labels": { "kubernetes.io/service-name": "kubernetes" },
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [netlab::plan::NODE_IPV4.to_string()],
            "conditions": { "ready": true },
        }],
        "ports": [{ "name": "https", "port": 6443, "protocol": "TCP" }],
    }));
    list
}

/// The Service every cluster has, `default/kubernetes` (the API servers, no selector), which the
/// lab does not model.
pub fn with_api_server(mut list: Value) -> Value {
    items(&mut list).push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": "0b6c4f32-9a1e-4c55-8d7e-2f1a3b4c5d6e",
            "labels": { "component": "apiserver", "provider": "kubernetes" },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": netlab::plan::vip_v4(1).to_string(),
            "clusterIPs": [netlab::plan::vip_v4(1).to_string()],
            "ipFamilies": ["IPv4"],
            "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443 }],
        },
    }));
    list
}

/// A Namespace object (no annotation) for every namespace an object of `list` lives in, as
/// `kubectl get namespaces` adds them to an export.
pub fn with_namespaces(mut list: Value) -> Value {
    let names: BTreeSet<String> = items(&mut list)
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    for name in names {
        items(&mut list).push(namespace_object(&name, None));
    }
    list
}

/// A Namespace object, annotated `ghostbuster.io/mode: MODE` when `mode` is given.
pub fn namespace_object(name: &str, mode: Option<&str>) -> Value {
    let mut ns = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "uid": format!("0d5e8a1c-0000-4000-8000-{:012x}", name.len()) },
        "status": { "phase": "Active" },
    });
    if let Some(m) = mode {
        ns["metadata"]["annotations"] = json!({ "ghostbuster.io/mode": m });
    }
    ns
}

/// The lab node's Node object (its addresses), as `kubectl get nodes` adds it to an export.
pub fn with_node(mut list: Value) -> Value {
    items(&mut list).push(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": netlab::node::NODE_NAME, "uid": "5c1f8d2e-7a3b-4c9d-9e0f-1a2b3c4d5e6f" },
        "status": { "addresses": [
            { "type": "InternalIP", "address": netlab::plan::NODE_IPV4.to_string() },
            { "type": "InternalIP", "address": netlab::plan::NODE_IPV6.to_string() },
            { "type": "Hostname", "address": netlab::node::NODE_NAME },
        ] },
    }));
    list
}

/// The first object of `kind` named `name`.
pub fn object_mut<'a>(list: &'a mut Value, kind: &str, name: &str) -> &'a mut Value {
    items(list)
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The EndpointSlices of Service `name`.
pub fn slices_mut<'a>(list: &'a mut Value, name: &str) -> Vec<&'a mut Value> {
    items(list)
        .iter_mut()
        .filter(|o| {
            o["kind"] == "EndpointSlice"
                && o["metadata"]["labels"]["kubernetes.io/service-name"] == name
        })
        .collect()
}

// --- endpoints -----------------------------------------------------------------------------------

/// The IPv4 endpoints (for single-stack IPv4 Services: the controller renders no IPv6 slice).
/// Service `ns/name` at ClusterIP `vip_v4(vip)` port 80 (TCP, to the backends' [`HTTP`] port),
/// with the IPv4 endpoints of `eps`.
pub fn http_service(ns: &str, name: &str, vip: u8, eps: &[Endpoint]) -> Service {
    Service::new(ns, name)
        .cluster_ip(vip_v4(vip))
        .port(ServicePort::tcp("http", 80, HTTP))
        .endpoints(v4(eps))
}

/// [`http_service`] `ns/web`.
pub fn web(ns: &str, vip: u8, eps: &[Endpoint]) -> Service {
    http_service(ns, "web", vip, eps)
}

/// Service `kube-system/dns` at ClusterIP `vip_v4(vip)` port 53 (UDP, to the backends' 5353),
/// with the IPv4 endpoints of `eps`.
pub fn dns_service(vip: u8, eps: &[Endpoint]) -> Service {
    Service::new("kube-system", "dns")
        .cluster_ip(vip_v4(vip))
        .port(ServicePort::udp("dns", 53, 5353))
        .endpoints(v4(eps))
}

pub fn v4(eps: &[Endpoint]) -> Vec<Endpoint> {
    eps.iter().filter(|e| e.ip.is_ipv4()).cloned().collect()
}

/// The IPv6 endpoints.
pub fn v6(eps: &[Endpoint]) -> Vec<Endpoint> {
    eps.iter().filter(|e| e.ip.is_ipv6()).cloned().collect()
}

/// The first address of a family among `eps`.
pub fn ip_of(eps: &[Endpoint], ipv6: bool) -> IpAddr {
    eps.iter()
        .map(|e| e.ip)
        .find(|ip| ip.is_ipv6() == ipv6)
        .expect("an endpoint of that family")
}

// --- clients -------------------------------------------------------------------------------------

/// A pool of long-lived HTTP keep-alive connections, one request per 100 ms each, a stall after
/// 500 ms, no give-up (like an application blocked on a read), bounded to 40 s.
pub fn pool(netns: &str, target: SocketAddr, connections: usize) -> TcpPool {
    pool_with(
        netns,
        target,
        TcpPoolConfig {
            connections,
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(500),
            connect_timeout: TIMEOUT,
            run_for: Duration::from_secs(40),
            ..TcpPoolConfig::default()
        },
    )
}

pub fn pool_with(netns: &str, target: SocketAddr, config: TcpPoolConfig) -> TcpPool {
    TcpPool::start(netns, target, config).expect("pool")
}

/// Waits until every connection of `pool` had `n` answers; fails with the report otherwise.
pub fn expect_answers(pool: &TcpPool, n: u64, what: &str) {
    assert!(
        pool.wait_answers(n, Duration::from_secs(4)),
        "{what}: no answers: {:#?}",
        pool.report()
    );
}

/// The failure first: for `observe`, every one of the `connections` of `pool` is stuck, nothing
/// fails and nothing answers (a ghost: the backend vanished without a RST).
pub fn expect_hang(pool: &TcpPool, connections: usize, observe: Duration) -> ClientReport {
    // The first request after the vanish has to be sent before it can hang.
    let until = Instant::now() + Duration::from_secs(2);
    while pool.report().stuck_connections() < connections && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let before = pool.report();
    thread::sleep(observe);
    let hung = pool.report();
    assert_eq!(hung.stuck_connections(), connections, "not hung: {hung:#?}");
    assert!(
        hung.errors.is_empty(),
        "a silently vanished backend must not fail fast: {:?}",
        hung.errors
    );
    assert_eq!(hung.answers, before.answers, "a ghost connection answered");
    hung
}

/// After the sweep: the hung connections fail fast (the next retransmission is DNAT'd afresh to a
/// live backend, which resets it) and every connection reconnects and gets answers again (from
/// `to` when given; echo answers name no backend), within `within`.
pub fn expect_fail_fast_and_recover(
    pool: TcpPool,
    hung: &ClientReport,
    to: Option<&str>,
    within: Duration,
) -> ClientReport {
    let until = Instant::now() + within;
    let count = |c: &netlab::client::ConnectionReport| match to {
        Some(to) => c.backends.get(to).copied().unwrap_or(0),
        None => c.answers,
    };
    let recovered = |r: &ClientReport| {
        r.stuck_connections() == 0
            && r.connections.iter().all(|c| {
                let before = hung
                    .connections
                    .iter()
                    .find(|h| h.id == c.id)
                    .map_or(0, count);
                count(c) > before
            })
    };
    while !recovered(&pool.report()) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let report = pool.stop();
    assert!(
        recovered(&report),
        "the ghost connections did not recover to {to:?} within {within:?}: {report:#?}"
    );
    let resets = report
        .errors
        .iter()
        .filter(|e| e.kind == "ECONNRESET" || e.kind == "EPIPE")
        .count();
    assert!(
        resets >= hung.connections.len(),
        "each ghost connection should have failed fast (reset): {:?}",
        report.errors
    );
    report
}

/// A report taken before the sweeps, to compare against afterwards.
pub fn mark(pool: &TcpPool) -> ClientReport {
    pool.report()
}

/// The healthy connections to live backends kept exchanging data through every sweep: no error
/// at all, more answers than at `before`, all of them from `backends`.
pub fn expect_untouched(pool: TcpPool, before: &ClientReport, backends: &[&str], what: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    let grown = |r: &ClientReport| {
        r.connections.iter().all(|c| {
            let b = before
                .connections
                .iter()
                .find(|x| x.id == c.id)
                .map_or(0, |x| x.answers);
            c.answers >= b + 2
        })
    };
    while !grown(&pool.report()) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let report = pool.stop();
    assert!(
        report.errors.is_empty(),
        "{what}: a live connection to a live backend broke: {:?}",
        report.errors
    );
    assert!(
        grown(&report),
        "{what}: stopped exchanging data: {report:#?}"
    );
    assert!(
        report.connections.iter().all(|c| c.connects == 1),
        "{what}: a connection had to reconnect: {report:#?}"
    );
    for b in report.per_backend.keys() {
        assert!(
            backends.contains(&b.as_str()),
            "{what}: answered by {b}, expected {backends:?}"
        );
    }
}

/// A plain TCP connection opened from namespace `netns` (it stays there), for flows the test
/// drives by hand, e.g. an idle keep-alive connection.
pub fn connect(netns: &str, target: SocketAddr) -> TcpStream {
    netlab::in_netns(netns, move || TcpStream::connect_timeout(&target, TIMEOUT))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("connect to {target}: {e}"))
}

/// One HTTP request on `stream`; the answering backend's name. Bounded by `timeout`.
pub fn http_request(stream: &mut TcpStream, timeout: Duration) -> io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: netlab\r\n\r\n")?;
    let until = Instant::now() + timeout;
    let answer = netlab::client::read_http_answer(stream, || {
        if Instant::now() >= until {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        Ok(())
    })?;
    Ok(answer.backend)
}

/// Routes `ip` on the node into the lab's silent sink (like a vanished pod's address), so a
/// packet to it that nothing DNATs leaves a conntrack entry and disappears without an answer.
pub fn sink_route(node: &str, ip: IpAddr) {
    let prefix = format!("{ip}/{}", if ip.is_ipv6() { 128 } else { 32 });
    let addr = ip.to_string();
    let route = ["-n", node, "route", "replace", &prefix, "dev", "sink0"];
    let neigh = [
        "-n",
        node,
        "neigh",
        "replace",
        &addr,
        "lladdr",
        "00:00:5e:00:53:00",
        "dev",
        "sink0",
        "nud",
        "permanent",
    ];
    for args in [&route[..], &neigh[..]] {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Makes pod `name` drop every packet it receives or sends, silently, before conntrack (a pod
/// behind a dead node), without touching the node's routes or links.
pub fn silence_pod(lab: &Lab, name: &str) {
    let netns = lab.pod(name).expect("pod").netns().to_string();
    let script = "table inet dead {\n\
                  chain in { type filter hook prerouting priority -500 ; policy drop ; }\n\
                  chain out { type filter hook output priority -500 ; policy drop ; }\n\
                  }\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns, "nft", "-f", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sleeps until `deadline` (no-op when past).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

/// A scratch directory for a test that needs no lab (its own namespace, its own entries), removed
/// on drop.
pub struct Scratch(TempDir);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        Scratch(TempDir::new(test))
    }

    /// Writes `objects` as `name`; returns the path.
    pub fn write(&self, name: &str, objects: &Value) -> String {
        let path = self.0 .0.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(objects).unwrap()).expect("write file");
        path.to_string_lossy().into_owned()
    }
}

/// How long a blocked reader is given to return after its socket was ended.
pub const ENDED_WITHIN: Duration = Duration::from_secs(1);
/// Upper bound on every blocked read of a [`BlockedReader`] (no test waits forever).
const READ_BOUND: Duration = Duration::from_secs(10);

/// A reader blocked on `read` in its own thread: the result and when it came.
pub struct BlockedReader {
    done: mpsc::Receiver<(io::Result<usize>, Instant)>,
}

impl BlockedReader {
    pub fn tcp(mut s: TcpStream) -> BlockedReader {
        s.set_read_timeout(Some(READ_BOUND)).unwrap();
        Self::start(move || s.read(&mut [0u8; 64]))
    }

    pub fn udp(s: UdpSocket) -> BlockedReader {
        s.set_read_timeout(Some(READ_BOUND)).unwrap();
        Self::start(move || s.recv(&mut [0u8; 64]))
    }

    fn start(read: impl FnOnce() -> io::Result<usize> + Send + 'static) -> BlockedReader {
        let (tx, done) = mpsc::channel();
        thread::spawn(move || {
            let r = read();
            let _ = tx.send((r, Instant::now()));
        });
        BlockedReader { done }
    }

    /// The read's result, when it returns within `within`; `None` while it is still blocked.
    pub fn returned_within(&self, within: Duration) -> Option<(io::Result<usize>, Instant)> {
        self.done.recv_timeout(within).ok()
    }
}

pub fn expect_aborted(reader: &BlockedReader, ended_at: Instant, what: &str) {
    let (r, at) = reader
        .returned_within(ENDED_WITHIN)
        .unwrap_or_else(|| panic!("{what}: still blocked {ENDED_WITHIN:?} after the ending"));
    let e = r.expect_err(&format!("{what}: the read returned data"));
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED),
        "{what}: {e} (want ECONNABORTED)"
    );
    assert!(at.duration_since(ended_at) < ENDED_WITHIN, "{what}");
}
