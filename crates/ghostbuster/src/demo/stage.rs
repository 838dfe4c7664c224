//! One run of one act: a fresh lab, and ghostbuster run against it through the product's own
//! code paths — the lab's Services, EndpointSlices and Pods rendered as `kubectl get -o json`,
//! read by the `--from-file` loader into the classifier's [`Index`], then [`scan::scan`] and
//! [`sweep::sweep`] on the lab node's conntrack table. Nothing here decides what is stale.
//!
//! Also here: the healthy connections every run keeps open through its sweeps (a false delete
//! must show up as a broken healthy connection), and the waits, which all poll the Ctrl-C flag.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, Filter};
use jiff::Timestamp;
use netlab::{
    plan, Endpoint, Lab, PodSpec, ProxyConfig, ProxyMode, ServerSpec, Service, ServicePort,
    TcpPool, TcpPoolConfig, UdpClient, UdpConfig,
};

use super::interrupt;
use super::{Context, Error, KeptLab, Mode};
use crate::cluster::file::{Loaded, Loader};
use crate::cluster::{Cidr, IndexConfig};
use crate::policy::Policy;
use crate::render;
use crate::scan::{self, ScanReport};
use crate::sweep::{self, Outcome, SweepTotals};

/// Port every lab HTTP server listens on (the Services' targetPort).
pub const HTTP_PORT: u16 = 8080;
/// Port of the DNS-like UDP servers.
pub const DNS_PORT: u16 = 5353;
/// VIP number of `shop/cart`, the healthy service of every run.
const CART_VIP: u8 = 20;
/// How often waits look at their condition and at Ctrl-C.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `done` is true (`Ok(true)`) or `timeout` passed (`Ok(false)`); Ctrl-C is an error.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<bool, Error> {
    let until = Instant::now() + timeout;
    loop {
        interrupt::check()?;
        if done() {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= until {
            return Ok(false);
        }
        std::thread::sleep(POLL.min(until - now));
    }
}

/// Sleeps `d`, waking for Ctrl-C.
pub fn pause(d: Duration) -> Result<(), Error> {
    wait_until(d, || false).map(|_| ())
}

/// A ClusterIP:port as a socket address.
pub fn vip(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from((plan::vip_v4(n), port))
}

/// A scan (and, for a sweep, its deletes) of the lab node's table.
pub struct Pass {
    pub report: ScanReport,
    /// One per finding, for a sweep.
    pub outcomes: Option<Vec<Outcome>>,
    pub totals: Option<SweepTotals>,
    /// Load + scan (+ sweep), as a user would time the command.
    pub elapsed: Duration,
}

impl Pass {
    /// Flows that are not healthy: what the run calls ghosts.
    pub fn ghosts(&self) -> u64 {
        self.report.findings.len() as u64
    }

    pub fn removed(&self) -> u64 {
        self.totals.map_or(0, |t| t.deleted)
    }

    /// Verdict name → flows, for the stale verdicts.
    pub fn verdicts(&self) -> BTreeMap<String, u64> {
        self.report
            .counts
            .iter()
            .filter(|(k, _)| k.is_stale())
            .map(|(k, n)| (k.as_str().to_string(), *n))
            .collect()
    }

    /// Flows of verdict `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.verdicts().get(name).copied().unwrap_or(0)
    }
}

/// "1 flow", "4 flows".
pub fn flows(n: u64) -> String {
    if n == 1 {
        "1 flow".into()
    } else {
        format!("{n} flows")
    }
}

/// kube-proxy's settings on a lab node, in `mode` (`--proxy-mode`). Spelled out rather than
/// `ProxyConfig::default()`, which reads the tests' `GB_LAB_PROXY_MODE`: the demo's mode is its
/// flag's.
pub fn lab_config(mode: ProxyMode) -> ProxyConfig {
    ProxyConfig {
        mode,
        masquerade_mark: netlab::kube_proxy::MASQUERADE_MARK,
        cluster_cidrs_v4: plan::CLUSTER_CIDRS_V4
            .iter()
            .map(|s| s.to_string())
            .collect(),
        cluster_cidrs_v6: plan::CLUSTER_CIDRS_V6
            .iter()
            .map(|s| s.to_string())
            .collect(),
        service_cidr_v4: Some(plan::SERVICE_CIDR_V4.to_string()),
        service_cidr_v6: Some(plan::SERVICE_CIDR_V6.to_string()),
        node_ips: vec![plan::NODE_IPV4.into(), plan::NODE_IPV6.into()],
    }
}

/// A fresh lab for one run of one act.
pub struct Stage<'c> {
    pub ctx: &'c Context,
    pub lab: Lab,
    act: u8,
    mode: Mode,
    timestamps: bool,
    client: Option<String>,
}

impl<'c> Stage<'c> {
    pub fn new(ctx: &'c Context, act: u8, mode: Mode) -> Result<Stage<'c>, Error> {
        interrupt::check()?;
        let lab = Lab::with_config(lab_config(ctx.proxy_mode))?;
        Ok(Stage {
            ctx,
            lab,
            act,
            mode,
            timestamps: false,
            client: None,
        })
    }

    /// The node namespace: where the DNAT'd flows' conntrack entries live.
    pub fn node(&self) -> &str {
        self.lab.node_netns()
    }

    /// Adds a backend pod of Service `app` in `namespace` serving `server`; returns its endpoint.
    pub fn backend(
        &mut self,
        name: &str,
        namespace: &str,
        app: &str,
        server: ServerSpec,
    ) -> Result<Vec<Endpoint>, Error> {
        self.backend_spec(PodSpec::backend(name), namespace, app, server)
    }

    /// Like [`Stage::backend`], on a fixed address (IP reuse).
    pub fn backend_at(
        &mut self,
        name: &str,
        namespace: &str,
        app: &str,
        ip: Ipv4Addr,
        server: ServerSpec,
    ) -> Result<Vec<Endpoint>, Error> {
        self.backend_spec(PodSpec::backend(name).with_ipv4(ip), namespace, app, server)
    }

    fn backend_spec(
        &mut self,
        spec: PodSpec,
        namespace: &str,
        app: &str,
        server: ServerSpec,
    ) -> Result<Vec<Endpoint>, Error> {
        interrupt::check()?;
        let pod = self.lab.add_pod(
            spec.in_namespace(namespace)
                .label("app", app)
                .ipv4_only()
                .serve(server),
        )?;
        Ok(pod.endpoints())
    }

    /// Adds the client pod; returns its namespace.
    pub fn client(&mut self) -> Result<String, Error> {
        interrupt::check()?;
        let netns = self
            .lab
            .add_pod(PodSpec::client("client").ipv4_only())?
            .netns()
            .to_string();
        self.client = Some(netns.clone());
        Ok(netns)
    }

    /// `shop/cart`, two live backends that never change: the healthy service of every run.
    pub fn cart(&mut self) -> Result<Service, Error> {
        let mut eps = Vec::new();
        for name in ["cart-0", "cart-1"] {
            eps.extend(self.backend(
                name,
                "shop",
                "cart",
                ServerSpec::http(HTTP_PORT, 200, name),
            )?);
        }
        Ok(Service::new("shop", "cart")
            .cluster_ip(plan::vip_v4(CART_VIP))
            .port(ServicePort::tcp("http", 80, HTTP_PORT))
            .endpoints(eps))
    }

    /// The healthy service's VIP.
    pub fn cart_vip() -> SocketAddr {
        vip(CART_VIP, 80)
    }

    /// kube-proxy syncs `services` (existing conntrack entries stay). The first sync also turns
    /// on flow timestamps in the node namespace (only there: the sysctl is per namespace).
    pub fn sync(&mut self, services: &[Service]) -> Result<(), Error> {
        interrupt::check()?;
        self.lab.sync_services(services)?;
        if !self.timestamps {
            self.enable_timestamps()?;
            self.timestamps = true;
        }
        Ok(())
    }

    /// `net.netfilter.nf_conntrack_timestamp=1` in the lab node, as `ghostbuster audit`
    /// recommends: flow start times are the evidence for `ip_reused` (a pod created after the
    /// flow began). Set after the first sync because the sysctl appears only once the rules have
    /// loaded nf_conntrack, and before any traffic, so every lab flow carries its start time.
    pub fn enable_timestamps(&self) -> Result<(), Error> {
        const PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";
        let node = self.node().to_string();
        netlab::in_netns(&node, || std::fs::write(PATH, "1"))?.map_err(|e| {
            Error::Lab(format!(
                "could not enable flow timestamps ({PATH}) in {node}: {e}"
            ))
        })
    }

    /// The lab as Kubernetes objects, read by the same loader as `--from-file`, as seen from the
    /// node: its local addresses serve NodePorts, the lab's service CIDRs as `--service-cidr`.
    pub fn cluster_view(&self) -> Result<Loaded, Error> {
        self.view_of(&self.lab.kubernetes_objects())
    }

    /// [`Stage::cluster_view`] of `objects` (a `kind: List`) rather than of the lab's own sync.
    pub fn view_of(&self, objects: &serde_json::Value) -> Result<Loaded, Error> {
        let text = serde_json::to_string(objects)
            .map_err(|e| Error::Lab(format!("rendering the lab's objects: {e}")))?;
        let local = crate::local_addrs::of(Some(self.node()))?;
        let service_cidrs = [plan::SERVICE_CIDR_V4, plan::SERVICE_CIDR_V6]
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Lab(format!("the lab's service CIDRs: {e}")))?;
        let mut loader = Loader::new(IndexConfig {
            node_name: Some(netlab::node::NODE_NAME.to_string()),
            local_addresses: local,
            service_cidrs,
        });
        loader.add_str("the lab's objects", &text)?;
        Ok(loader.finish(Some(Timestamp::now())))
    }

    /// `ghostbuster scan`: read-only.
    pub fn scan(&self, policy: &Policy) -> Result<Pass, Error> {
        self.pass(policy, false)
    }

    /// `ghostbuster sweep`: scan, then exact deletes of what is removable.
    pub fn sweep(&self, policy: &Policy) -> Result<Pass, Error> {
        self.pass(policy, true)
    }

    fn pass(&self, policy: &Policy, delete: bool) -> Result<Pass, Error> {
        interrupt::check()?;
        let start = Instant::now();
        let loaded = self.cluster_view()?;
        // The demo's cluster view is stamped by this process, on the node's own clock: there is
        // no API server clock to allow for, so no skew margin (the CLI's default is 2 s).
        let policy = &Policy {
            clock_skew: std::time::Duration::ZERO,
            ..policy.clone()
        };
        let mut ct = Conntrack::open_in(Some(self.node()))?;
        let dumped_at = Instant::now();
        let report = scan::scan(&mut ct, &loaded.index, policy, &Filter::default())?;
        let (outcomes, totals) = if delete {
            let (o, t, _) = sweep::sweep(&mut ct, &report.findings, false, dumped_at)?;
            (Some(o), Some(t))
        } else {
            (None, None)
        };
        Ok(Pass {
            report,
            outcomes,
            totals,
            elapsed: start.elapsed(),
        })
    }

    /// Flows the sweep deleted whose backend was a live pod of the lab: ground truth for "a
    /// healthy connection was broken" that does not depend on a client noticing.
    pub fn swept_live(&self, pass: &Pass) -> u64 {
        let live: BTreeSet<IpAddr> = self.lab.pods().flat_map(|p| p.ips()).collect();
        let Some(outcomes) = &pass.outcomes else {
            return 0;
        };
        pass.report
            .findings
            .iter()
            .zip(outcomes)
            .filter(|(f, o)| **o == Outcome::Deleted && live.contains(&f.flow.reply.src))
            .count() as u64
    }

    /// Narrates a pass: one line per service port, verdict, backend and evidence, then the
    /// deletes.
    pub fn narrate(&self, pass: &Pass, what: &str) {
        let n = &self.ctx.narrator;
        let r = &pass.report;
        n.at(&format!(
            "{what}: {} scanned, {} not healthy, {} removable ({:.1} ms)",
            flows(r.scanned),
            r.findings.len(),
            r.removable,
            pass.elapsed.as_secs_f64() * 1000.0
        ));
        let mut groups: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for f in &r.findings {
            let v = &f.verdict;
            let service = v
                .service
                .as_ref()
                .map(|s| {
                    format!(
                        "{}/{} {}/{}",
                        s.namespace,
                        s.name,
                        s.port,
                        s.protocol.to_string().to_uppercase()
                    )
                })
                .unwrap_or_else(|| "(service gone)".into());
            let backend = v
                .backend
                .map(|b| render::endpoint(&b.ip, Some(b.port)))
                .unwrap_or_else(|| "-".into());
            let evidence: Vec<&str> = v.evidence.iter().map(|e| e.as_str()).collect();
            let state = f
                .flow
                .state_name()
                .map(str::to_string)
                .unwrap_or_else(|| f.flow.proto_name().to_uppercase());
            let mut line = format!(
                "{service}  {}  {state}  backend {backend}  evidence {}",
                v.kind.as_str(),
                evidence.join(",")
            );
            if let Some(o) = &v.now_owned_by {
                let ns = o.namespace.as_ref().map_or("", |n| n.as_str());
                let owner = match (&o.service, &o.pod) {
                    (Some(svc), Some(pod)) => format!("{ns}/{svc} (pod {pod})"),
                    (Some(svc), None) => format!("{ns}/{svc}"),
                    (None, Some(pod)) => format!("pod {ns}/{pod}"),
                    (None, None) => "someone else".to_string(),
                };
                line.push_str(&format!("  now owned by {owner}"));
            }
            line.push_str(if v.removable {
                "  → removable"
            } else {
                "  → kept"
            });
            let g = groups.entry(line).or_insert((0, v.reason()));
            g.0 += 1;
        }
        for (line, (count, reason)) in groups {
            n.more(&format!("  {count} × {line}"));
            n.more(&format!("      why: {reason}"));
        }
        if let Some(t) = pass.totals {
            n.more(&format!(
                "sweep: removed {} ({} already gone, {} failed) — exact deletes: tuple + zone + conntrack id",
                flows(t.deleted), t.already_gone, t.failed
            ));
        }
    }

    /// Ends the run: with `--keep` the lab's namespaces stay and the objects are written where
    /// `ghostbuster scan --from-file` can read them.
    pub fn finish(mut self) -> Result<(), Error> {
        let Some(dir) = &self.ctx.keep_dir else {
            return Ok(());
        };
        let label = format!("act{}-{}", self.act, self.mode.as_str());
        let file = dir.join(format!("{label}.json"));
        let text = serde_json::to_string_pretty(&self.lab.kubernetes_objects())
            .map_err(|e| Error::Lab(format!("rendering the lab's objects: {e}")))?;
        std::fs::write(&file, text).map_err(|e| Error::Io {
            what: format!("writing {}", file.display()),
            source: e,
        })?;
        self.lab.keep();
        self.ctx
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KeptLab {
                act: self.act,
                run: self.mode.as_str(),
                node_netns: self.node().to_string(),
                client_netns: self.client.clone(),
                objects_file: file.display().to_string(),
            });
        Ok(())
    }
}

/// Connections to live backends held open through every sweep of a run. Any error on them, any
/// of them stuck at the end, or any of their flows deleted counts as a healthy connection broken.
#[derive(Default)]
pub struct Healthy {
    tcp: Vec<(String, TcpPool)>,
    udp: Vec<(String, UdpClient)>,
    /// Deleted flows whose backend was alive ([`Stage::swept_live`]).
    pub swept_live: u64,
}

/// What the healthy connections saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HealthyReport {
    pub connections: usize,
    pub answers: u64,
    pub errors: u64,
    pub stuck: u64,
    pub swept_live: u64,
    pub broken: u64,
    pub targets: Vec<String>,
}

impl Healthy {
    /// Two long-lived HTTP connections to `target`; waits for their first answers.
    pub fn tcp(&mut self, netns: &str, target: SocketAddr, label: &str) -> Result<(), Error> {
        let pool = TcpPool::start(
            netns,
            target,
            TcpPoolConfig {
                connections: 2,
                interval: Duration::from_millis(200),
                request_timeout: Duration::from_secs(1),
                run_for: Duration::from_secs(180),
                ..TcpPoolConfig::default()
            },
        )?;
        let ok = wait_until(Duration::from_secs(5), || {
            pool.report().connections.iter().all(|c| c.answers >= 1)
        })?;
        if !ok {
            return Err(Error::Lab(format!(
                "the healthy connections to {label} never got an answer: {:?}",
                pool.report().errors
            )));
        }
        self.tcp.push((label.to_string(), pool));
        Ok(())
    }

    /// A DNS-like querier on its own socket to `target`; waits for its first answer.
    pub fn udp(&mut self, netns: &str, target: SocketAddr, label: &str) -> Result<(), Error> {
        let client = UdpClient::start(
            netns,
            target,
            UdpConfig {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                run_for: Duration::from_secs(180),
                ..UdpConfig::default()
            },
        )?;
        if !wait_until(Duration::from_secs(5), || client.report().answers >= 1)? {
            return Err(Error::Lab(format!(
                "the healthy querier to {label} never got an answer"
            )));
        }
        self.udp.push((label.to_string(), client));
        Ok(())
    }

    /// Stops every connection and counts.
    pub fn finish(self) -> HealthyReport {
        let mut h = HealthyReport {
            swept_live: self.swept_live,
            ..HealthyReport::default()
        };
        let reports = self
            .tcp
            .into_iter()
            .map(|(l, p)| (l, p.stop()))
            .chain(self.udp.into_iter().map(|(l, c)| (l, c.stop())));
        for (label, r) in reports {
            h.connections += r.connections.len();
            h.answers += r.answers;
            h.errors += r.errors.len() as u64 + r.records_dropped;
            h.stuck += r.stuck_connections() as u64;
            h.targets.push(label);
        }
        h.broken = h.errors + h.stuck + h.swept_live;
        h
    }
}
