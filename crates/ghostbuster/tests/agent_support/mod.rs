//! Shared by the tests that run the real `ghostbuster agent` binary (`agent_e2e*.rs`,
//! `deploy_runtime.rs`, `agent_soak.rs`): [`AgentRig`] (the fake API server, a fake kube-proxy
//! whose syncs the test publishes, and the agent, started and ready), the pieces it is made of —
//! [`FakeKubeProxy`], [`Agent`] (optionally behind a wrapper command, such as one dropping
//! privileges, its stderr inherited, captured or sent to a file), the fake API server listening
//! inside a network namespace ([`NsApiServer`]) — plain HTTP scrapes (optionally from inside a
//! network namespace) and the bounded waits the tests share.
//!
//! Every wait here is bounded; every temporary file is removed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use netlab::plan::vip_v4;
use netlab::{ClientReport, Endpoint, ProxyMode, TcpPool};
use serde_json::Value;

use super::scan_support::{
    entries_to, expect_answers, expect_hang, ip_of, mark, pool, table, web, Story,
};

/// A kube-proxy that only answers what the agent asks: its sync metrics (the end of its last
/// successful sync, the duration histogram of every sync, the failure counter) and its mode.
pub struct FakeKubeProxy {
    pub addr: SocketAddr,
    sync: Arc<Mutex<f64>>,
    /// What `/proxyMode` answers ([`FakeKubeProxy::set_mode`]).
    mode: Arc<Mutex<String>>,
    /// The duration histogram `(sum, count)` and the restore failures.
    syncs: Arc<Mutex<(f64, f64, f64)>>,
    scrapes: Arc<std::sync::atomic::AtomicU64>,
    /// How many times `/proxyMode` was read.
    mode_reads: Arc<std::sync::atomic::AtomicU64>,
    /// `/metrics` and `/healthz` accept and never answer ([`FakeKubeProxy::hang`]).
    hung: Arc<std::sync::atomic::AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl FakeKubeProxy {
    /// Listens on 127.0.0.1 of the test's own network namespace.
    pub fn start(mode: &'static str) -> Self {
        Self::start_in(mode, None)
    }

    /// Listens on 127.0.0.1 of `netns` (the listener is created by a thread inside it and stays
    /// there), or of the test's own namespace.
    pub fn start_in(mode: &'static str, netns: Option<&str>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sync = Arc::new(Mutex::new(now_secs() - 600.0));
        let mode = Arc::new(Mutex::new(mode.to_string()));
        let m2 = mode.clone();
        // Ten syncs of 0.1 s each before the test looks.
        let syncs = Arc::new(Mutex::new((1.0, 10.0, 0.0)));
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mode_reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r2 = mode_reads.clone();
        let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, h2, c2) = (sync.clone(), syncs.clone(), scrapes.clone());
        let (hung_m, hung_h) = (hung.clone(), hung.clone());
        // Long enough to outlast any client timeout, bounded like every wait here.
        let hold = |hung: &std::sync::atomic::AtomicBool| {
            let on = hung.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if on {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        };
        let listener = loopback_listener(netns);
        let addr = rt.block_on(async move {
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let v = *s2.lock().unwrap();
                        let (sum, count, failures) = *h2.lock().unwrap();
                        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let wait = hold(&hung_m);
                        async move {
                            wait.await;
                            format!(
                                "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds\n\
                                 # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
                                 kubeproxy_sync_proxy_rules_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
                                 kubeproxy_sync_proxy_rules_duration_seconds_sum {sum:.6}\n\
                                 kubeproxy_sync_proxy_rules_duration_seconds_count {count}\n\
                                 # HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total [ALPHA] Cumulative proxy iptables restore failures\n\
                                 # TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter\n\
                                 kubeproxy_sync_proxy_rules_iptables_restore_failures_total {failures}\n\
                                 # HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced\n\
                                 # TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n\
                                 kubeproxy_sync_proxy_rules_last_timestamp_seconds {v:.3}\n"
                            )
                        }
                    }),
                )
                // Not served unless hung (a kube-proxy whose healthz is off): 404.
                .route(
                    "/healthz",
                    axum::routing::get(move || {
                        let wait = hold(&hung_h);
                        async move {
                            wait.await;
                            axum::http::StatusCode::NOT_FOUND
                        }
                    }),
                )
                .route(
                    "/proxyMode",
                    axum::routing::get(move || {
                        let m = m2.lock().unwrap().clone();
                        r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move { m }
                    }),
                );
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, app).await });
            addr
        });
        FakeKubeProxy {
            addr,
            sync,
            mode,
            syncs,
            scrapes,
            mode_reads,
            hung,
            _rt: rt,
        }
    }

    /// From now on `/metrics` and `/healthz` accept a request and do not answer it (a
    /// kube-proxy stuck in a long sync holding its lock, or a wedged process), or answer again.
    pub fn hang(&self, on: bool) {
        self.hung.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on `/proxyMode` answers `mode` (kube-proxy restarted in another mode).
    pub fn set_mode(&self, mode: &str) {
        *self.mode.lock().unwrap() = mode.to_string();
    }

    /// kube-proxy syncs: like the real one (minSyncPeriod 1 s), a moment after the change it
    /// reacts to, so its timestamp is later than the agent's view of the removal — and so is
    /// the sync's start (it took 10 ms).
    pub fn synced_now(&self) {
        std::thread::sleep(Duration::from_millis(300));
        let now = now_secs();
        self.synced(now - 0.01, now);
    }

    /// Publishes one successful sync that began at `began` and ended at `ended` (Unix seconds):
    /// the gauge moves to its end, the histogram gains its duration.
    pub fn synced(&self, began: f64, ended: f64) {
        // The gauge first, then the histogram, as kube-proxy does (the duration is observed in
        // a deferred call): a reading in between must not be taken for the whole sync.
        *self.sync.lock().unwrap() = ended;
        let mut h = self.syncs.lock().unwrap();
        h.0 += ended - began;
        h.1 += 1.0;
    }

    /// Publishes one failed sync (iptables-restore failed): the histogram and the failure
    /// counter move, the gauge does not.
    pub fn sync_failed(&self) {
        let mut h = self.syncs.lock().unwrap();
        h.0 += 0.01;
        h.1 += 1.0;
        h.2 += 1.0;
    }

    /// How many times `/metrics` was read.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times `/proxyMode` was read.
    pub fn mode_reads(&self) -> u64 {
        self.mode_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What `/proxyMode` answers now.
    pub fn mode(&self) -> String {
        self.mode.lock().unwrap().clone()
    }

    /// Waits until `/metrics` was read `n` more times than `since`, at most `within`.
    pub fn wait_scrapes(&self, since: u64, n: u64, within: Duration) -> bool {
        let until = Instant::now() + within;
        while self.scrapes() < since + n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.scrapes() >= since + n
    }

    /// kube-proxy keeps syncing ([`FakeKubeProxy::synced_now`]: its timestamp moves on) until
    /// `done`, at most `within`; returns how long it took.
    pub fn sync_until(&self, within: Duration, done: impl Fn() -> bool) -> Duration {
        self.sync_until_pausing(within, Duration::ZERO, done)
    }

    /// [`FakeKubeProxy::sync_until`] with `pause` more between two syncs.
    pub fn sync_until_pausing(
        &self,
        within: Duration,
        pause: Duration,
        done: impl Fn() -> bool,
    ) -> Duration {
        let t = Instant::now();
        while !done() && t.elapsed() < within {
            self.synced_now();
            std::thread::sleep(pause);
        }
        t.elapsed()
    }
}

/// A non-blocking listener on 127.0.0.1:0 of `netns` (or of the test's own namespace).
fn loopback_listener(netns: Option<&str>) -> TcpListener {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let l = match netns {
        Some(ns) => netlab::in_netns(ns, bind).expect("enter netns"),
        None => bind(),
    }
    .expect("bind 127.0.0.1:0");
    l.set_nonblocking(true).unwrap();
    l
}

/// The fake API server listening on 127.0.0.1 of a network namespace (served by a runtime of the
/// test's own; the listening socket belongs to the namespace it was created in).
pub struct NsApiServer {
    // Field order is drop order: the server (its task) before its runtime.
    api: FakeApiServer,
    _rt: tokio::runtime::Runtime,
}

impl NsApiServer {
    pub fn start(netns: &str) -> NsApiServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver-ns")
            .enable_all()
            .build()
            .unwrap();
        let listener = loopback_listener(Some(netns));
        let api = rt
            .block_on(
                async move { FakeApiServer::serve(tokio::net::TcpListener::from_std(listener)?) },
            )
            .expect("serve the fake API server");
        NsApiServer { api, _rt: rt }
    }
}

impl Deref for NsApiServer {
    type Target = FakeApiServer;
    fn deref(&self) -> &FakeApiServer {
        &self.api
    }
}

/// The machine-wide `nf_conntrack_max` (the limit every namespace's table shares).
pub fn conntrack_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A free port on 127.0.0.1 of `netns` (or of the test's own namespace).
pub fn free_port_in(netns: Option<&str>) -> u16 {
    loopback_listener(netns).local_addr().unwrap().port()
}

pub fn free_port() -> u16 {
    free_port_in(None)
}

/// `GET path` on 127.0.0.1:port: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// [`http_get`] from inside `netns` (or the test's own namespace).
pub fn http_get_in(netns: Option<&str>, port: u16, path: &str) -> Option<(u16, String)> {
    match netns {
        Some(ns) => netlab::in_netns(ns, || http_get(port, path)).ok().flatten(),
        None => http_get(port, path),
    }
}

/// The metric's value summed over all its series (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub mod tempfile_path {
    /// A file removed on drop.
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Where the agent's stderr goes.
#[derive(Clone, Debug, Default)]
pub enum Log {
    /// The test's own stderr.
    #[default]
    Inherit,
    /// Captured line by line (and echoed, prefixed `agent: `), for [`Agent::logged`].
    Capture,
    /// Written to this file.
    File(PathBuf),
}

/// How to start an agent.
pub struct Launch {
    /// The kubeconfig's text (written to a temporary file).
    pub kubeconfig: String,
    /// The fake kube-proxy's address.
    pub kube_proxy: SocketAddr,
    /// `--netns` for the agent; `None`: it serves the namespace it runs in.
    pub netns: Option<String>,
    /// A command the agent runs under (`WRAPPER... ghostbuster agent ...`); empty: none.
    pub wrapper: Vec<String>,
    /// The namespace its admin port is reachable in; `None`: the test's own.
    pub scrape_ns: Option<String>,
    /// The admin port (on 127.0.0.1).
    pub port: u16,
    /// Its stderr.
    pub log: Log,
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
    scrape_ns: Option<String>,
    /// Its stderr lines, with [`Log::Capture`].
    log: Option<Arc<Mutex<Vec<String>>>>,
    _kubeconfig: tempfile_path::Path,
}

impl Agent {
    /// The agent in the test's namespace serving `node_ns` (`--netns`), its fakes `api` and
    /// `kp`, admin on a free port, stderr inherited; not waited for. [`AgentRig`] is the usual
    /// way to start one; this is for callers with fakes of their own making (the agent bench).
    pub fn start(api: &FakeApiServer, node_ns: &str, kp: &FakeKubeProxy, extra: &[&str]) -> Agent {
        Agent::launch(
            Launch {
                kubeconfig: api.kubeconfig(),
                kube_proxy: kp.addr,
                netns: Some(node_ns.to_string()),
                wrapper: Vec::new(),
                scrape_ns: None,
                port: free_port(),
                log: Log::Inherit,
            },
            extra,
        )
    }

    /// The command line [`Agent::launch`] runs, for callers that want to run it themselves.
    pub fn command(l: &Launch, kubeconfig: &std::path::Path, extra: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_ghostbuster");
        let mut cmd = match l.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let kp_url = |p: &str| format!("http://{}{p}", l.kube_proxy);
        cmd.args([
            "--log",
            "info",
            "agent",
            "--node-name",
            netlab::node::NODE_NAME,
        ]);
        if let Some(ns) = &l.netns {
            cmd.args(["--netns", ns]);
        }
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{}", l.port)])
            .args(["--kube-proxy-metrics-url", &kp_url("/metrics")])
            .args(["--kube-proxy-healthz-url", &kp_url("/healthz")])
            .args(["--kube-proxy-mode-url", &kp_url("/proxyMode")])
            .args(["--min-age", "1s"]);
        // The tests' grace unless one sets its own (clap refuses a flag given twice).
        if !extra.contains(&"--grace") {
            cmd.args(["--grace", "2s"]);
        }
        cmd.args(extra);
        cmd
    }

    /// A temporary kubeconfig file with `text`.
    pub fn kubeconfig_file(text: &str) -> tempfile_path::Path {
        let kc = std::env::temp_dir().join(format!(
            "gb-agent-kubeconfig-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::write(&kc, text).unwrap();
        tempfile_path::Path(kc)
    }

    pub fn launch(l: Launch, extra: &[&str]) -> Agent {
        let kc = Agent::kubeconfig_file(&l.kubeconfig);
        let mut cmd = Agent::command(&l, &kc.0, extra);
        cmd.stdout(Stdio::null());
        match &l.log {
            Log::Inherit => cmd.stderr(Stdio::inherit()),
            Log::Capture => cmd.stderr(Stdio::piped()),
            Log::File(path) => cmd.stderr(std::fs::File::create(path).expect("agent log file")),
        };
        let mut child = cmd.spawn().expect("start the agent");
        let log = child.stderr.take().map(|stderr| {
            let log = Arc::new(Mutex::new(Vec::new()));
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("agent: {line}");
                    sink.lock().unwrap().push(line);
                }
            });
            log
        });
        Agent {
            child,
            port: l.port,
            scrape_ns: l.scrape_ns,
            log,
            _kubeconfig: kc,
        }
    }

    /// `GET path` on the admin port, from the namespace it listens in.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get_in(self.scrape_ns.as_deref(), self.port, path)
    }

    pub fn wait_ready(&self, within: Duration) -> bool {
        wait_for(within, || matches!(self.get("/readyz"), Some((200, _))))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Scrapes `/metrics` every 100 ms until `done` holds for the text, at most `within`;
    /// returns the last scrape (for the caller to assert on).
    pub fn metrics_until(&self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        let mut m = self.metrics();
        while !done(&m) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            m = self.metrics();
        }
        m
    }

    /// [`expect_removed`] on a scrape taken now.
    #[track_caller]
    pub fn expect_removed(&self, n: f64) {
        expect_removed(&self.metrics(), n);
    }

    /// Its stderr lines so far (started with [`Log::Capture`]).
    pub fn log_lines(&self) -> Vec<String> {
        let log = self.log.as_ref().expect("the agent's log is not captured");
        log.lock().unwrap().clone()
    }

    /// Whether a captured stderr line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log_lines().iter().any(|l| l.contains(text))
    }

    /// SIGTERM; returns how long the agent took to exit (killed after 10 s).
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Agent::terminate`], and the agent is gone.
    pub fn stop(mut self) -> Duration {
        self.terminate()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loads the lab's objects into the fake API server (create, then apply for updates).
pub fn publish(api: &FakeApiServer, objects: &Value) {
    for item in objects["items"].as_array().unwrap() {
        api.apply(item.clone());
    }
}

/// The API learns of a change: `objects` as they are now, and pod `namespace/name` deleted.
pub fn publish_pod_gone(api: &FakeApiServer, objects: &Value, namespace: &str, name: &str) {
    publish(api, objects);
    api.delete("pods", namespace, name);
}

/// Asserts `ghostbuster_flows_removed_total` in the scrape `metrics` is exactly `n` (the whole
/// scrape in the message).
#[track_caller]
pub fn expect_removed(metrics: &str, n: f64) {
    assert_eq!(
        metric_sum(metrics, "ghostbuster_flows_removed_total"),
        n,
        "{metrics}"
    );
}

/// Polls `f` every 100 ms until it holds or `within` passes; returns whether it held.
pub fn wait_for(within: Duration, f: impl FnMut() -> bool) -> bool {
    wait_for_every(Duration::from_millis(100), within, f)
}

/// Polls `f` every `every` until it holds or `within` passes; returns whether it held.
pub fn wait_for_every(every: Duration, within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The fake API server of an [`AgentRig`]: on a thread of its own in the test's namespace, or
/// inside the node's namespace ([`RigBuilder::confined`]).
pub enum RigApi {
    Own(FakeApiServer),
    InNetns(NsApiServer),
}

impl Deref for RigApi {
    type Target = FakeApiServer;
    fn deref(&self) -> &FakeApiServer {
        match self {
            RigApi::Own(api) => api,
            RigApi::InNetns(api) => api,
        }
    }
}

/// One agent test's world: the fake API server holding the cluster's objects, a fake
/// kube-proxy whose syncs the test publishes (its `/proxyMode` answers the mode of the node's
/// rules: [`RigBuilder::proxy_mode`]; [`AgentRig::of`] takes the story's), and the real agent serving the
/// node's namespace, ready (unless [`RigBuilder::no_wait`]). Built by [`AgentRig::new`].
///
/// A test keeps it whole or destructures it binding all three (`let AgentRig { api, kp, agent,
/// .. } = ...`; `_agent` for one it does not use): a field left unbound is dropped at once.
pub struct AgentRig {
    // Field order is drop order: the agent before the servers it talks to.
    pub agent: Agent,
    pub kp: FakeKubeProxy,
    pub api: RigApi,
    node: String,
    wrapper: Option<Vec<String>>,
    log: Log,
    ready: Option<Duration>,
    mode: ProxyMode,
}

/// [`RigBuilder::api`]'s preparation of the API server.
type ApiSetup = Box<dyn FnOnce(&FakeApiServer)>;

/// What an [`AgentRig`] starts with; [`RigBuilder::start`] starts it.
pub struct RigBuilder {
    node: String,
    objects: Option<Value>,
    api_setup: Option<ApiSetup>,
    kp_synced: bool,
    args: Vec<String>,
    log: Log,
    ready: Option<Duration>,
    port: Option<u16>,
    wrapper: Option<Vec<String>>,
    mode: ProxyMode,
}

impl AgentRig {
    /// A rig for the node namespace `node`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(node: &str) -> RigBuilder {
        RigBuilder {
            node: node.to_string(),
            objects: None,
            api_setup: None,
            kp_synced: false,
            args: Vec::new(),
            log: Log::Inherit,
            ready: Some(Duration::from_secs(20)),
            port: None,
            wrapper: None,
            mode: ProxyMode::from_env().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// A rig for `story`'s node, with its lab's objects; its kube-proxy reports the mode whose
    /// rules the lab's node holds.
    pub fn of(story: &Story) -> RigBuilder {
        AgentRig::new(&story.node())
            .objects(story.lab.kubernetes_objects())
            .proxy_mode(story.mode())
    }

    /// The mode the fake kube-proxy's `/proxyMode` answered at the start.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// How to start another agent against this rig's servers (same admin port unless the caller
    /// changes it), under `wrapper` when confined.
    pub fn launch(&self, wrapper: Option<Vec<String>>) -> Launch {
        let confined = self.wrapper.is_some();
        Launch {
            kubeconfig: self.api.kubeconfig(),
            kube_proxy: self.kp.addr,
            netns: (!confined).then(|| self.node.clone()),
            wrapper: wrapper.unwrap_or_default(),
            scrape_ns: confined.then(|| self.node.clone()),
            port: self.agent.port,
            log: self.log.clone(),
        }
    }

    /// The agent stops (SIGTERM) and another starts in its place with `args` (same admin port,
    /// wrapper and log), and gets ready as the first did.
    pub fn restart_agent(&mut self, args: &[&str]) {
        self.agent.terminate();
        let l = self.launch(self.wrapper.clone());
        self.agent = Agent::launch(l, args);
        self.expect_ready();
    }

    fn expect_ready(&self) {
        if let Some(within) = self.ready {
            assert!(
                self.agent.wait_ready(within),
                "the agent never became ready within {within:?}: /readyz {:?}",
                self.agent.get("/readyz")
            );
        }
    }
}

impl RigBuilder {
    /// The cluster's objects, published before the agent starts.
    pub fn objects(mut self, objects: Value) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Prepares the API server (faults, RBAC, extra objects) before the objects are published.
    pub fn api(mut self, setup: impl FnOnce(&FakeApiServer) + 'static) -> Self {
        self.api_setup = Some(Box::new(setup));
        self
    }

    /// kube-proxy publishes a sync ([`FakeKubeProxy::synced_now`]) before the agent starts.
    pub fn kube_proxy_synced(mut self) -> Self {
        self.kp_synced = true;
        self
    }

    /// Extra agent flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The agent's stderr captured ([`Agent::logged`]).
    pub fn capture_log(mut self) -> Self {
        self.log = Log::Capture;
        self
    }

    /// Starts the agent without waiting for it to be ready (the test waits, or proves it never
    /// gets ready).
    pub fn no_wait(mut self) -> Self {
        self.ready = None;
        self
    }

    /// What the fake kube-proxy's `/proxyMode` answers; default: the lab's default mode
    /// ([`netlab::kube_proxy::PROXY_MODE_ENV`], nftables when unset).
    pub fn proxy_mode(mut self, mode: ProxyMode) -> Self {
        self.mode = mode;
        self
    }

    /// The admin port (on 127.0.0.1); default: a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The agent runs inside the node's namespace under `wrapper` (as the DaemonSet runs it:
    /// hostNetwork, no `--netns`); the fakes listen on 127.0.0.1 there, the only place it can
    /// reach, and its admin port is scraped from there.
    pub fn confined(mut self, wrapper: Vec<String>) -> Self {
        self.wrapper = Some(wrapper);
        self
    }

    /// Starts the fakes, publishes the objects, starts the agent and (unless
    /// [`RigBuilder::no_wait`]) asserts it ready within 20 s.
    pub fn start(self) -> AgentRig {
        let node = self.node;
        let confined = self.wrapper.is_some();
        let api = if confined {
            RigApi::InNetns(NsApiServer::start(&node))
        } else {
            RigApi::Own(FakeApiServer::start_in_thread().expect("start the fake API server"))
        };
        if let Some(setup) = self.api_setup {
            setup(&api);
        }
        if let Some(objects) = &self.objects {
            publish(&api, objects);
        }
        let kp = FakeKubeProxy::start_in(self.mode.name(), confined.then_some(node.as_str()));
        if self.kp_synced {
            kp.synced_now();
        }
        let l = Launch {
            kubeconfig: api.kubeconfig(),
            kube_proxy: kp.addr,
            netns: (!confined).then(|| node.clone()),
            wrapper: self.wrapper.clone().unwrap_or_default(),
            scrape_ns: confined.then(|| node.clone()),
            port: self
                .port
                .unwrap_or_else(|| free_port_in(confined.then_some(node.as_str()))),
            log: self.log.clone(),
        };
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let agent = Agent::launch(l, &args);
        let rig = AgentRig {
            agent,
            kp,
            api,
            node,
            wrapper: self.wrapper,
            log: self.log,
            ready: self.ready,
            mode: self.mode,
        };
        rig.expect_ready();
        rig
    }
}

/// [`two_backends`]: the story, web-a's endpoints, web-b's, the VIP, the pool to web-a.
pub type TwoBackends = (Story, Vec<Endpoint>, Vec<Endpoint>, SocketAddr, TcpPool);

/// The lab most agent tests start from: Service `shop/web` at `vip_v4(vip)`:80 served by
/// `web-a`, `web-b` made but not serving yet, and two pooled connections to web-a that
/// answered. Returns `(story, web-a's endpoints, web-b's, the VIP, the pool)`; `None`: no lab
/// here (skipped outside CI).
pub fn two_backends(test: &str, timestamps: bool, vip: u8) -> Option<TwoBackends> {
    two_backends_story(Story::start(test, timestamps)?, vip)
}

/// [`two_backends`] on a node whose rules kube-proxy's `mode` proxier rendered.
pub fn two_backends_in(
    mode: ProxyMode,
    test: &str,
    timestamps: bool,
    vip: u8,
) -> Option<TwoBackends> {
    two_backends_story(Story::in_mode(test, timestamps, mode)?, vip)
}

fn two_backends_story(mut s: Story, vip: u8) -> Option<TwoBackends> {
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let addr = SocketAddr::from((vip_v4(vip), 80));
    s.lab.sync_services(&[web("shop", vip, &a)]).unwrap();
    let ghost = pool(&s.client, addr, 2);
    expect_answers(&ghost, 2, "pool to web-a");
    Some((s, a, b, addr, ghost))
}

/// Two pooled connections pinned to each of `backends` in turn (Service `shop/web` at
/// `vip_v4(vip)`:80 served by that one alone while they connect and answer), then the Service
/// served by all of them.
pub fn pin_pools<const N: usize>(
    s: &mut Story,
    vip: u8,
    backends: [(&str, &[Endpoint]); N],
) -> [TcpPool; N] {
    let addr = SocketAddr::from((vip_v4(vip), 80));
    let all: Vec<Endpoint> = backends.iter().flat_map(|(_, eps)| eps.to_vec()).collect();
    let pools = backends.map(|(name, eps)| {
        s.lab.sync_services(&[web("shop", vip, eps)]).unwrap();
        let p = pool(&s.client, addr, 2);
        expect_answers(&p, 2, &format!("pool to {name}"));
        p
    });
    s.lab.sync_services(&[web("shop", vip, &all)]).unwrap();
    pools
}

/// The ghost story most agent tests tell: [`two_backends`] (the pool to web-a: the ghosts to
/// be); the rig starts (its objects: the
/// lab's, then whatever `rig` adds); then a rolling update moves the node's rules to `web-b`,
/// `web-a` vanishes without a RST (its connections hang, observed for `hang_for`), and two
/// healthy connections to `web-b` answer. The API is not told yet ([`GhostStory::tell_api`]).
pub struct GhostStory {
    // Field order is drop order: the healthy pool, the agent, the ghost pool (its connections
    // hang until the ghosts go), the lab.
    /// The connections to `web-b` and their mark once they answered.
    pub healthy: TcpPool,
    pub before: ClientReport,
    pub rig: AgentRig,
    /// The ghosts' connections, and what they had answered when they hung.
    pub ghost: TcpPool,
    pub hung: ClientReport,
    /// `web-a`'s IP.
    pub dead: IpAddr,
    pub vip: SocketAddr,
    pub s: Story,
}

impl GhostStory {
    /// `None`: no lab here (skipped outside CI).
    pub fn start(
        test: &str,
        vip: u8,
        hang_for: Duration,
        rig: impl FnOnce(RigBuilder) -> RigBuilder,
    ) -> Option<GhostStory> {
        Self::tell(two_backends(test, true, vip)?, vip, hang_for, rig)
    }

    /// [`GhostStory::start`] on a node whose rules kube-proxy's `mode` proxier rendered (and
    /// whose fake kube-proxy says so on `/proxyMode`).
    pub fn start_in(
        mode: ProxyMode,
        test: &str,
        vip: u8,
        hang_for: Duration,
        rig: impl FnOnce(RigBuilder) -> RigBuilder,
    ) -> Option<GhostStory> {
        Self::tell(two_backends_in(mode, test, true, vip)?, vip, hang_for, rig)
    }

    fn tell(
        (mut s, a, b, addr, ghost): TwoBackends,
        vip: u8,
        hang_for: Duration,
        rig: impl FnOnce(RigBuilder) -> RigBuilder,
    ) -> Option<GhostStory> {
        let rig = rig(AgentRig::of(&s)).start();
        // Rolling update: kube-proxy's rules move to B, A vanishes silently.
        s.lab.sync_services(&[web("shop", vip, &b)]).unwrap();
        let dead = ip_of(&a, false);
        s.lab.delete_pod_silently("web-a").unwrap();
        let healthy = pool(&s.client, addr, 2);
        expect_answers(&healthy, 2, "healthy pool");
        let hung = expect_hang(&ghost, 2, hang_for);
        let before = mark(&healthy);
        Some(GhostStory {
            healthy,
            before,
            rig,
            ghost,
            hung,
            dead,
            vip: addr,
            s,
        })
    }

    /// The API learns of the change: web-a left the slice, its pod is deleted.
    pub fn tell_api(&self) {
        publish_pod_gone(
            &self.rig.api,
            &self.s.lab.kubernetes_objects(),
            "shop",
            "web-a",
        );
    }

    /// Entries to `web-a` left in the node's table.
    pub fn ghosts_left(&self) -> usize {
        entries_to(&table(&self.s.node()), self.dead).len()
    }
}

/// Asserts that the node of `story` holds kube-proxy's rules in its mode's form, and none of the
/// other mode's: `iptables-save`'s `KUBE-SERVICES`/`KUBE-SVC-*` chains in iptables mode, the `ip
/// kube-proxy` nftables table in nftables mode — so a test named after a mode runs in it.
#[track_caller]
pub fn expect_rules_of_mode(story: &Story) {
    expect_node_rules_of(&story.node(), story.mode());
}

/// [`expect_rules_of_mode`] for the node namespace `node` and `mode`.
#[track_caller]
pub fn expect_node_rules_of(node: &str, mode: ProxyMode) {
    let out = |program: &str, args: &[&str]| -> String {
        let mut full = vec!["netns", "exec", node, program];
        full.extend_from_slice(args);
        let o = std::process::Command::new("ip")
            .args(&full)
            .output()
            .unwrap_or_else(|e| panic!("ip {full:?}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let iptables = out("iptables-save", &["-t", "nat"]);
    let nft_tables = out("nft", &["list", "tables"]);
    let has_iptables = iptables.contains(":KUBE-SERVICES") && iptables.contains("-j KUBE-SVC-");
    let has_nft = nft_tables
        .lines()
        .any(|l| l.trim() == "table ip kube-proxy");
    match mode {
        ProxyMode::Iptables => assert!(
            has_iptables && !has_nft,
            "iptables mode: the node's nat table\n{iptables}\nnft tables\n{nft_tables}"
        ),
        ProxyMode::Nftables => assert!(
            has_nft && !has_iptables,
            "nftables mode: the node's nat table\n{iptables}\nnft tables\n{nft_tables}"
        ),
    }
}
