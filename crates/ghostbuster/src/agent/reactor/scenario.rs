//! A small cluster, a table in memory and a scripted world, for driving the [`Reactor`] turn by
//! turn in unit tests: the Service `shop/web` (198.51.100.10:80 → 8080/TCP, 53 → 5353/UDP) with
//! the pods `web-0` (203.0.113.7) and `web-1` (203.0.113.8), clients at 192.0.2.x.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ctnetlink::{Flow, Status, TcpState, Tuple};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{HoldersAnswer, PassKind, PassReport, PodFate, Reactor, ReactorConfig, Shared, World};
use crate::agent::gate::{Breaker, Global, KubeProxyView, Trip};
use crate::cluster::{Event, Index, IndexConfig, Object};
use crate::policy::Policy;
use crate::table::MemTable;

pub const WEB_0: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
pub const WEB_1: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8));
/// An address no object of the cluster names (a pod made and deleted while a watch was down).
pub const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));

/// What the scripted world answers and what it was asked; tests keep a handle while the reactor
/// owns the world.
#[derive(Debug)]
pub struct State {
    pub kube_proxy: KubeProxyView,
    pub kube_proxy_reads: u32,
    /// `namespace/name` → answer; unlisted pods are `Unknown`.
    pub pods: HashMap<String, PodFate>,
    pub asked_pods: Vec<String>,
    pub holders: HoldersAnswer,
    pub asked_holders: Vec<IpAddr>,
    pub global: Global,
    pub reports: Vec<PassReport>,
    pub trips: Vec<Trip>,
}

/// The world as a test scripts it.
#[derive(Debug, Clone)]
pub struct Script(Arc<Mutex<State>>);

impl Script {
    fn new() -> Script {
        Script(Arc::new(Mutex::new(State {
            kube_proxy: KubeProxyView::default(),
            kube_proxy_reads: 0,
            pods: HashMap::new(),
            asked_pods: Vec::new(),
            holders: HoldersAnswer::Unknown,
            asked_holders: Vec::new(),
            global: Global::default(),
            reports: Vec::new(),
            trips: Vec::new(),
        })))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// kube-proxy is readable and its last successful sync began at `began` (after every change
    /// made before it).
    pub fn synced_at(&self, began: Timestamp) {
        self.state().kube_proxy = KubeProxyView {
            readable: true,
            last_success: Some(began),
            began_after: Some(began),
            failing: false,
        };
    }

    /// kube-proxy synced, in a sync that began after everything done so far.
    pub fn synced(&self) {
        self.synced_at(later(1));
    }

    pub fn pod(&self, name: &str, fate: PodFate) {
        self.state().pods.insert(format!("shop/{name}"), fate);
    }

    /// The reports of the passes so far, taken.
    pub fn take_reports(&self) -> Vec<PassReport> {
        std::mem::take(&mut self.state().reports)
    }

    /// The last targeted pass's report (panics when there was none).
    pub fn last_targeted(&self) -> PassReport {
        self.state()
            .reports
            .iter()
            .rev()
            .find(|r| r.kind == PassKind::Targeted)
            .cloned()
            .expect("a targeted pass ran")
    }
}

impl World for Script {
    fn kube_proxy(&mut self) -> KubeProxyView {
        let mut s = self.state();
        s.kube_proxy_reads += 1;
        s.kube_proxy
    }
    fn pod_fate(&mut self, namespace: &str, name: &str, _: Option<&str>, _: IpAddr) -> PodFate {
        let key = format!("{namespace}/{name}");
        let mut s = self.state();
        s.asked_pods.push(key.clone());
        s.pods.get(&key).copied().unwrap_or(PodFate::Unknown)
    }
    fn ip_holders(&mut self, ip: IpAddr) -> HoldersAnswer {
        let mut s = self.state();
        s.asked_holders.push(ip);
        s.holders
    }
    fn global(&mut self) -> Global {
        self.state().global.clone()
    }
    fn report(&mut self, pass: &PassReport) {
        self.state().reports.push(pass.clone());
    }
    fn circuit_tripped(&mut self, trip: &Trip) {
        self.state().trips.push(*trip);
    }
}

/// `secs` seconds from now.
pub fn later(secs: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_secs(secs))
        .expect("a time")
}

fn service() -> Object {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "svc-web"},
        "spec": {"clusterIP": "198.51.100.10", "clusterIPs": ["198.51.100.10"],
                 "selector": {"app": "web"}, "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                           {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}
    }))
    .expect("a Service");
    Object::from(svc)
}

/// The slice of `shop/web` with these pods (`web-N` at 203.0.113.(7+N)), ready.
fn slice(pods: &[IpAddr]) -> Object {
    let endpoints: Vec<serde_json::Value> = pods
        .iter()
        .map(|ip| {
            let n = match ip {
                IpAddr::V4(v4) => v4.octets()[3] - 7,
                IpAddr::V6(_) => 0,
            };
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("web-{n}"),
                              "uid": format!("uid-web-{n}")}
            })
        })
        .collect();
    let s: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "namespace": "shop", "uid": "slice-web",
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
    .expect("an EndpointSlice");
    Object::from(s)
}

/// A reactor over a table holding `flows`, the cluster above with both pods serving, a scripted
/// world (kube-proxy unreadable until a test says otherwise), and `cfg` (see [`config`]). Its
/// first full pass is an hour away: tests ask for passes themselves.
pub fn rig(flows: Vec<Flow>, cfg: ReactorConfig) -> (Reactor<MemTable, Script>, Script) {
    let mut ix = Index::new(IndexConfig::default());
    ix.set_live(true);
    ix.apply(Event::Apply(service()), Timestamp::now())
        .expect("the Service applies");
    ix.apply(Event::Apply(slice(&[WEB_0, WEB_1])), Timestamp::now())
        .expect("the slice applies");
    let shared = Shared::new(ix);
    let script = Script::new();
    let mut r = Reactor::new(MemTable::new(flows), shared, script.clone(), cfg);
    r.next_full = Instant::now() + Duration::from_secs(3600);
    (r, script)
}

/// Reactor settings for tests: grace 5 s, breakers at their defaults, holders asked about every
/// 30 s.
pub fn config() -> ReactorConfig {
    ReactorConfig {
        policy: Policy::default(),
        grace: Duration::from_secs(5),
        kube_proxy_max_wait: Duration::from_secs(60),
        resync_interval: Duration::from_secs(60),
        resync_cpu_percent: 0.0,
        breaker: Breaker::default(),
        tombstone_ttl: Duration::from_secs(600),
        ip_lookup_every: Duration::from_secs(30),
    }
}

impl Reactor<MemTable, Script> {
    /// The pods at `gone` leave the slice now (tombstones are recorded), as the watch would
    /// apply it; returns the backends that changed.
    pub fn endpoints_leave(&mut self, gone: &[IpAddr]) -> Vec<IpAddr> {
        let stay: Vec<IpAddr> = [WEB_0, WEB_1]
            .into_iter()
            .filter(|ip| !gone.contains(ip))
            .collect();
        let changes = {
            let mut ix = self.shared.index.write().expect("the index");
            ix.apply(Event::Apply(slice(&stay)), Timestamp::now())
                .expect("the slice applies")
        };
        self.shared.refresh_dead_backends();
        changes
            .endpoints_removed
            .iter()
            .map(|(_, ip)| *ip)
            .collect()
    }

    pub fn table(&self) -> &MemTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut MemTable {
        &mut self.table
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// When `ip` is due to be looked at again, if it is parked.
    pub fn parked_until(&self, ip: IpAddr) -> Option<Duration> {
        self.parked
            .get(&ip)
            .map(|due| due.saturating_duration_since(Instant::now()))
    }

    pub fn has_snapshot_of(&self, ip: IpAddr) -> bool {
        self.prefetched.contains_key(&ip)
    }

    /// The flows in the table toward `ip`.
    pub fn flows_to(&self, ip: IpAddr) -> usize {
        self.table
            .flows
            .iter()
            .filter(|f| f.reply.src == ip)
            .count()
    }
}

/// An established TCP flow from the client's port `sport` to the Service, DNAT'd to `backend`.
pub fn tcp(sport: u16, backend: IpAddr) -> Flow {
    let mut f = base(sport, backend, 6, 80, 8080);
    f.status = Status::SEEN_REPLY | Status::ASSURED | Status::CONFIRMED | Status::DST_NAT;
    f.tcp_state = Some(TcpState::ESTABLISHED);
    f
}

/// A TCP flow that never got a reply (SYN_SENT), begun `age_secs` ago.
pub fn half_open(sport: u16, backend: IpAddr, age_secs: i64) -> Flow {
    let mut f = base(sport, backend, 6, 80, 8080);
    f.status = Status::CONFIRMED | Status::DST_NAT;
    f.tcp_state = Some(TcpState::SYN_SENT);
    f.start_ns = Some(later(-age_secs).as_nanosecond() as u64);
    f
}

/// A UDP flow (a DNS query, answered) to the Service's port 53, DNAT'd to `backend`.
pub fn udp(sport: u16, backend: IpAddr) -> Flow {
    let mut f = base(sport, backend, 17, 53, 5353);
    f.status = Status::SEEN_REPLY | Status::CONFIRMED | Status::DST_NAT;
    f
}

/// The flow that got its reply: what a packet does to a half-open entry.
pub fn answered(mut f: Flow) -> Flow {
    f.status |= Status::SEEN_REPLY | Status::ASSURED;
    f.tcp_state = Some(TcpState::ESTABLISHED);
    f
}

/// Of known age: begun `secs` ago.
pub fn begun(mut f: Flow, secs: i64) -> Flow {
    f.start_ns = Some(later(-secs).as_nanosecond() as u64);
    f
}

fn base(sport: u16, backend: IpAddr, proto: u8, port: u16, target: u16) -> Flow {
    let mut f = Flow::new(
        Tuple::ports(CLIENT, sport, VIP, port, proto),
        Tuple::ports(backend, target, CLIENT, sport, proto),
    );
    f.status = Status::CONFIRMED | Status::DST_NAT;
    f.timeout = Some(100);
    f.id = Some(u32::from(sport));
    f
}

/// The event socket's DESTROY subscription, recorded: every change asked for, in order.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<bool>>,
    pub fail_join: bool,
    pub fail_leave: bool,
}

impl super::DestroyEvents for Recorder {
    fn subscribe(&self, on: bool) -> Result<(), String> {
        self.calls.lock().unwrap().push(on);
        if (on && self.fail_join) || (!on && self.fail_leave) {
            return Err("refused".into());
        }
        Ok(())
    }
}
