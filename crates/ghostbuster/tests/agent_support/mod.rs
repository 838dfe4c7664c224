//! Shared by the tests that run the real `ghostbuster agent` binary (`agent_e2e.rs`,
//! `deploy_runtime.rs`): a fake kube-proxy whose last sync time the test controls, the agent
//! process (optionally behind a wrapper command, such as one dropping privileges), plain HTTP
//! scrapes (optionally from inside a network namespace), and the fake API server listening inside
//! a network namespace.
//!
//! Every wait here is bounded; every temporary file is removed on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::Value;

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

    /// Waits until `/metrics` was read `n` more times than `since`, at most `within`.
    pub fn wait_scrapes(&self, since: u64, n: u64, within: Duration) -> bool {
        let until = Instant::now() + within;
        while self.scrapes() < since + n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.scrapes() >= since + n
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
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
    scrape_ns: Option<String>,
    _kubeconfig: tempfile_path::Path,
}

impl Agent {
    /// The agent in the test's namespace, serving `node_ns` with `--netns`, admin on a free port.
    pub fn start(api: &FakeApiServer, node_ns: &str, kp: &FakeKubeProxy, extra: &[&str]) -> Agent {
        Agent::start_on(api, node_ns, kp, free_port(), extra)
    }

    /// Like [`Agent::start`] with the admin port given.
    pub fn start_on(
        api: &FakeApiServer,
        node_ns: &str,
        kp: &FakeKubeProxy,
        port: u16,
        extra: &[&str],
    ) -> Agent {
        Agent::launch(
            Launch {
                kubeconfig: api.kubeconfig(),
                kube_proxy: kp.addr,
                netns: Some(node_ns.to_string()),
                wrapper: Vec::new(),
                scrape_ns: None,
                port,
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
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start the agent");
        Agent {
            child,
            port: l.port,
            scrape_ns: l.scrape_ns,
            _kubeconfig: kc,
        }
    }

    /// `GET path` on the admin port, from the namespace it listens in.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get_in(self.scrape_ns.as_deref(), self.port, path)
    }

    pub fn wait_ready(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// SIGTERM; returns how long the agent took to exit.
    pub fn stop(mut self) -> Duration {
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
}

impl Agent {
    /// An agent the caller spawned itself from [`Agent::command`] (e.g. with its stderr sent to
    /// a file), admin port `port` in the test's own namespace.
    pub fn adopt(child: Child, port: u16, kubeconfig: tempfile_path::Path) -> Agent {
        Agent {
            child,
            port,
            scrape_ns: None,
            _kubeconfig: kubeconfig,
        }
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
