//! What the agent act runs the real agent against, and how it watches it: the in-process API
//! server ([`fake_apiserver`]) holding the lab's Services, EndpointSlices and Pods, the lab's
//! kube-proxy ([`netlab::SyncingProxy`]: it renders the node's rules a moment after each change,
//! in the demo's `--proxy-mode`, and publishes kube-proxy's sync metrics), and the agent itself —
//! this very binary, started as `ghostbuster agent` in a child process with the flags a user
//! would give it, read only through what it exposes: `/metrics`, `/debug/recent`, `/readyz` and
//! the Kubernetes Events it posts.
//!
//! The demo never tells the agent anything: it changes the lab and the API, and watches.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use netlab::sync_proxy::now_secs;
use netlab::{Lab, ProxyConfig, Service, SyncPlan, SyncRecord, SyncingProxy};
use serde_json::Value;

use super::stage::wait_until;
use super::Error;

/// How long after a change the lab's kube-proxy syncs: kube-proxy's default `minSyncPeriod`.
pub const KUBE_PROXY_DELAY: Duration = Duration::from_secs(1);

/// The agent's flags beyond where its servers are. Everything else is the default.
pub const AGENT_FLAGS: [&str; 6] = [
    // Half-open flows are left alone for 10 s by default (a SYN-ACK may still come); the lab's
    // SYNs are 2 s old when the gate opens and no answer will come.
    "--min-age",
    "1s",
    // A full scan (the source of `conntrack_stale_entries`) twice a second instead of every
    // minute, so the gauge shows the ghosts in the second before kube-proxy syncs.
    "--resync-interval",
    "500ms",
    // The lab's table is tiny: never stretch the interval to save CPU.
    "--resync-cpu-percent",
    "0",
];

/// One change: when the API learned it and kube-proxy's number for it.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// Unix seconds.
    pub at: f64,
    pub seq: u64,
}

/// The API server and kube-proxy of one run.
pub struct Cluster {
    pub kp: SyncingProxy,
    pub api: FakeApiServer,
    created: String,
    published: BTreeMap<(String, String, String), Value>,
}

impl Cluster {
    /// An empty API server and a kube-proxy for the lab's node (nothing rendered yet).
    pub fn start(lab: &Lab, config: ProxyConfig) -> Result<Cluster, Error> {
        let kp = SyncingProxy::start(lab.node_netns(), config)?;
        kp.set_plan(SyncPlan {
            delay: KUBE_PROXY_DELAY,
            ..SyncPlan::default()
        });
        let api = FakeApiServer::start_in_thread().map_err(|e| Error::Io {
            what: "starting the in-process API server".into(),
            source: e,
        })?;
        Ok(Cluster {
            kp,
            api,
            created: netlab::k8s::rfc3339_now(),
            published: BTreeMap::new(),
        })
    }

    /// The API learns the cluster as it now is — `services` and the lab's live pods (a pod the
    /// lab deleted is deleted from the API) — and kube-proxy queues the change.
    pub fn publish(&mut self, lab: &Lab, services: &[Service]) -> Change {
        let pods: Vec<netlab::k8s::PodObject> = lab.pods().map(netlab::Pod::object).collect();
        let list = netlab::k8s::list(services, &pods, &self.created);
        let mut want = BTreeMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let m = &item["metadata"];
            let key = (
                item["kind"].as_str().unwrap_or("").to_string(),
                m["namespace"].as_str().unwrap_or("").to_string(),
                m["name"].as_str().unwrap_or("").to_string(),
            );
            want.insert(key, item.clone());
        }
        let at = now_secs();
        for (k, _) in self
            .published
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
        {
            let resource = match k.0.as_str() {
                "Service" => "services",
                "EndpointSlice" => "endpointslices",
                _ => "pods",
            };
            self.api.delete(resource, &k.1, &k.2);
        }
        for (k, v) in &want {
            if self.published.get(k) != Some(v) {
                self.api.apply(v.clone());
            }
        }
        self.published = want;
        let seq = self.kp.change(services.to_vec());
        Change { at, seq }
    }

    /// Waits for kube-proxy to install change `c`.
    pub fn wait_synced(&self, c: Change, within: Duration) -> Result<bool, Error> {
        wait_until(within, || self.kp.synced() >= c.seq)
    }

    /// The first successful sync that installed change `c` (it began after the change).
    pub fn sync_of(&self, c: Change) -> Option<SyncRecord> {
        self.kp
            .history()
            .into_iter()
            .find(|r| r.ok && r.covers >= c.seq)
    }

    /// The Events the agent posted about Service `namespace/name`: `(reason, note)`.
    pub fn events_about(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        self.api
            .events()
            .into_iter()
            .filter(|e| {
                e["regarding"]["namespace"] == namespace
                    && e["regarding"]["name"] == name
                    && e["regarding"]["kind"] == "Service"
            })
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or("").to_string(),
                    e["note"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// The agent, a child process of the demo.
pub struct AgentProcess {
    child: Child,
    port: u16,
    kubeconfig: PathBuf,
    log: PathBuf,
    /// The command line, for the narration.
    pub command: String,
}

impl AgentProcess {
    /// Starts `ghostbuster agent` (this binary) for the lab's node: the conntrack table of
    /// `node` (`--netns`), the API server's kubeconfig, kube-proxy's metrics, `/proxyMode` and
    /// `/healthz`, its admin server on a free loopback port. Its log goes to a file, shown when it
    /// misbehaves.
    pub fn start(node: &str, api: &FakeApiServer, kube_proxy: SocketAddr) -> Result<Self, Error> {
        let io = |what: &str, e| Error::Io {
            what: what.to_string(),
            source: e,
        };
        let exe = std::env::current_exe().map_err(|e| io("finding the ghostbuster binary", e))?;
        let tag = format!("{}-{}", std::process::id(), unique());
        let dir = std::env::temp_dir();
        let kubeconfig = dir.join(format!("ghostbuster-demo-agent-{tag}.kubeconfig"));
        std::fs::write(&kubeconfig, api.kubeconfig())
            .map_err(|e| io(&format!("writing {}", kubeconfig.display()), e))?;
        let log = dir.join(format!("ghostbuster-demo-agent-{tag}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| io(&format!("creating {}", log.display()), e))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| io("finding a free port on 127.0.0.1", e))?
            .port();
        let url = |p: &str| format!("http://{kube_proxy}{p}");
        let mut args: Vec<String> = [
            "agent",
            "--node-name",
            netlab::node::NODE_NAME,
            "--netns",
            node,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--kube-proxy-metrics-url".into(),
            url("/metrics"),
            "--kube-proxy-healthz-url".into(),
            url("/healthz"),
            "--kube-proxy-mode-url".into(),
            url("/proxyMode"),
        ]);
        args.extend(AGENT_FLAGS.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe. With it the agent ends with the demo even when the demo
        // is killed outright (SIGKILL), instead of outliving its lab.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io("starting `ghostbuster agent`", e))?;
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.ends_with(".kubeconfig") {
                    "KUBECONFIG".into()
                } else {
                    a.clone()
                }
            })
            .collect();
        Ok(AgentProcess {
            child,
            port,
            kubeconfig,
            log,
            command: format!("ghostbuster {}", shown.join(" ")),
        })
    }

    /// `GET path` on the admin server: `(status, body)`.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(SocketAddr::from(([127, 0, 0, 1], self.port)), path)
    }

    /// Waits until `/readyz` answers 200 (every watch synced, the first full scan done).
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), Error> {
        let mut exited = None;
        let ready = wait_until(within, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            matches!(self.get("/readyz"), Some((200, _)))
        })?;
        if let Some(status) = exited {
            return Err(Error::Lab(format!(
                "the agent exited ({status}) before it was ready; its log:\n{}",
                self.log_tail(20)
            )));
        }
        if !ready {
            return Err(Error::Lab(format!(
                "the agent was not ready within {within:?}: /readyz {:?}; its log:\n{}",
                self.get("/readyz"),
                self.log_tail(20)
            )));
        }
        Ok(())
    }

    /// The flows the agent removed lately (`/debug/recent`), oldest first.
    pub fn recent(&self) -> Vec<Removal> {
        let Some((200, body)) = self.get("/debug/recent") else {
            return Vec::new();
        };
        let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut out: Vec<Removal> = doc["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Removal::from_json)
            .collect();
        out.sort_by(|a, b| a.at.total_cmp(&b.at));
        out
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, as the kubelet stops it; killed after 5 s. Returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        t.elapsed()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One flow of `/debug/recent`.
#[derive(Debug, Clone)]
pub struct Removal {
    /// When the agent removed it, Unix seconds (the agent writes milliseconds).
    pub at: f64,
    pub result: String,
    pub verdict: String,
    pub evidence: Vec<String>,
    pub backend: Option<IpAddr>,
    /// `namespace/name`.
    pub service: Option<String>,
}

impl Removal {
    fn from_json(v: &Value) -> Option<Removal> {
        let at: jiff::Timestamp = v["time"].as_str()?.parse().ok()?;
        Some(Removal {
            at: at.as_millisecond() as f64 / 1000.0,
            result: v["result"].as_str().unwrap_or("").to_string(),
            verdict: v["verdict"].as_str().unwrap_or("").to_string(),
            evidence: v["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect(),
            backend: v["backend"]["ip"].as_str().and_then(|s| s.parse().ok()),
            service: v["service"]["name"]
                .as_str()
                .map(|n| format!("{}/{n}", v["service"]["namespace"].as_str().unwrap_or(""))),
        })
    }

    /// It is gone from the table (the agent's delete, or the kernel's own expiry just before).
    pub fn gone(&self) -> bool {
        self.result == "deleted" || self.result == "already_gone"
    }
}

/// One scrape of the agent's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unix seconds.
    pub at: f64,
    /// `conntrack_stale_entries` summed per `namespace/service`.
    pub stale: BTreeMap<String, f64>,
    /// `ghostbuster_last_scan_timestamp_seconds{kind="full"}`.
    pub last_full_scan: f64,
}

impl Sample {
    fn parse(text: &str, at: f64) -> Sample {
        let mut s = Sample {
            at,
            ..Sample::default()
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(labels) = series.strip_prefix("conntrack_stale_entries{") {
                let key = format!(
                    "{}/{}",
                    label(labels, "namespace").unwrap_or_default(),
                    label(labels, "service").unwrap_or_default()
                );
                *s.stale.entry(key).or_insert(0.0) += value;
            } else if let Some(labels) =
                series.strip_prefix("ghostbuster_last_scan_timestamp_seconds{")
            {
                if label(labels, "kind").as_deref() == Some("full") {
                    s.last_full_scan = value;
                }
            }
        }
        s
    }

    /// The gauge of Service `namespace/name` (0 when it has no series).
    pub fn stale_of(&self, service: &str) -> f64 {
        self.stale.get(service).copied().unwrap_or(0.0)
    }
}

/// The value of label `name` in `a="x",b="y"}`.
fn label(labels: &str, name: &str) -> Option<String> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Scrapes the agent's `/metrics` every 100 ms on a thread of its own until dropped.
pub struct Scraper {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    pub fn start(agent: &AgentProcess) -> Scraper {
        let addr = SocketAddr::from(([127, 0, 0, 1], agent.port));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("demo-scraper".into())
            .spawn(move || {
                // Bounded like every loop of the demo: the act ends long before.
                let until = Instant::now() + Duration::from_secs(600);
                while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
                    if let Some((200, body)) = http_get(addr, "/metrics") {
                        let sample = Sample::parse(&body, now_secs());
                        s2.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok();
        Scraper {
            samples,
            stop,
            thread,
        }
    }

    /// Every scrape so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET path` over HTTP/1.0 with short timeouts: `(status, body)`.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.take(64 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scrape_is_read_per_service() {
        let text = "# TYPE conntrack_stale_entries gauge\n\
            conntrack_stale_entries{namespace=\"shop\",service=\"web\",port=\"80\",protocol=\"TCP\",verdict=\"endpoint_gone\"} 3\n\
            conntrack_stale_entries{namespace=\"shop\",service=\"web\",port=\"80\",protocol=\"TCP\",verdict=\"unanswered\"} 1\n\
            conntrack_stale_entries{namespace=\"shop\",service=\"cache\",port=\"11211\",protocol=\"UDP\",verdict=\"endpoint_gone\"} 1\n\
            ghostbuster_last_scan_timestamp_seconds{kind=\"targeted\"} 5.0\n\
            ghostbuster_last_scan_timestamp_seconds{kind=\"full\"} 7.5\n";
        let s = Sample::parse(text, 1.0);
        assert_eq!(s.stale_of("shop/web"), 4.0);
        assert_eq!(s.stale_of("shop/cache"), 1.0);
        assert_eq!(s.stale_of("shop/api"), 0.0);
        assert_eq!(s.last_full_scan, 7.5);
    }

    #[test]
    fn a_recent_entry_is_read() {
        let v = json!({"time": "2026-01-02T03:04:05.678Z", "result": "deleted",
            "verdict": "endpoint_gone", "evidence": ["endpoint_removed", "pod_gone"],
            "backend": {"ip": "203.0.113.10", "port": 8080},
            "service": {"namespace": "shop", "name": "web"}});
        let r = Removal::from_json(&v).unwrap();
        assert!(r.gone());
        assert_eq!(r.service.as_deref(), Some("shop/web"));
        assert_eq!(r.backend, Some("203.0.113.10".parse().unwrap()));
        assert!((r.at.fract() - 0.678).abs() < 1e-6);
    }
}
