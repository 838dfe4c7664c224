//! Act 0, the agent: the product users install, at work on the lab's node. The real
//! `ghostbuster agent` ([`agent_rig::AgentProcess`]) watches the in-process API server and the
//! node's conntrack table, reads the lab's kube-proxy's sync metrics, and nobody types a command.
//! Three things happen to three Services, one after the other:
//!
//! 1. **rolling update** of `shop/web` (seed 000): web-b replaces web-a, which vanishes like a pod
//!    on a lost node; four pooled keep-alive connections are pinned to it by conntrack and hang.
//! 2. **scale to zero and back** of `shop/cache`, a UDP service (seed 001): its only pod goes; a
//!    client that keeps one socket stays DNAT'd to it — also when the Deployment scales back up.
//! 3. **IP reuse** (seed 003): api-a of `shop/api` stops answering before kube-proxy hears of it;
//!    new connections' SYNs are DNAT'd to it and stay half-open; then a pod of *another* Service,
//!    billing-0 (it answers 404), gets api-a's IP, and the retransmitted SYNs complete to it.
//!
//! The control run tells the same story without the agent and must show each failure. With the
//! agent, per event, the narration and `-o json` give: the endpoint change, kube-proxy's sync of
//! it (the delete gate), the flows the agent removed and how many ms after that sync ended (from
//! its `/debug/recent`), the client's recovery, the `conntrack_stale_entries` gauge of the Service
//! rising and falling (its `/metrics`), and the Kubernetes Event it posted (the API server's
//! store). Whether ghosts are left is checked in the node's table, not taken from the agent.
//!
//! The schedule is the same in both runs (the scale-up 2.5 s after the scale-down, the IP reused
//! 3 s after the endpoint change): the agent gets no more time than the cluster gives it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, Filter, TcpState};
use netlab::sync_proxy::now_secs;
use netlab::{
    plan, ClientReport, Endpoint, ServerSpec, Service, ServicePort, TcpPool, TcpPoolConfig,
    UdpClient, UdpConfig,
};
use serde::Serialize;
use serde_json::json;

use super::agent_rig::{AgentProcess, Change, Cluster, Scraper, AGENT_FLAGS, KUBE_PROXY_DELAY};
use super::stage::{flows, lab_config, pause, vip, wait_until, Healthy, Stage, HTTP_PORT};
use super::{ActInfo, ActReport, Context, Error, Mode, RunReport};

const INFO: ActInfo = (0, "agent", "the agent at work", "000, 001, 003");
const WEB_VIP: u8 = 30;
const CACHE_VIP: u8 = 31;
const API_VIP: u8 = 32;
const BILLING_VIP: u8 = 33;
/// memcached's port, over UDP.
const CACHE_PORT: u16 = 11211;
/// Pooled connections pinned to web-a.
const WEB_CONNECTIONS: usize = 4;
/// Connections opened to api-a while it is silent.
const API_CONNECTIONS: usize = 3;
/// The Deployment scales back up this long after it scaled to zero.
const SCALE_UP_AFTER: Duration = Duration::from_millis(2500);
/// billing-0 gets api-a's IP this long after api-a left the EndpointSlice.
const REUSE_AFTER: Duration = Duration::from_secs(3);
/// The longest the demo waits for anything the agent should do (it takes milliseconds).
const AGENT_WAIT: Duration = Duration::from_secs(10);

pub fn run(ctx: &Context) -> Result<ActReport, Error> {
    let started = Instant::now();
    ctx.narrator.line(&format!(
        "\nAct 0 — the agent (seeds/000, 001, 003): the real `ghostbuster agent` on the lab's node, kube-proxy in {} mode; nobody types a command",
        ctx.proxy_mode
    ));
    let control = story(ctx, Mode::Control)?;
    let fixed = story(ctx, Mode::Fixed)?;
    Ok(ActReport::new(INFO, control, fixed, started))
}

/// The lab's Services as the API says they are.
#[derive(Clone)]
struct World {
    web: Vec<Endpoint>,
    cache: Vec<Endpoint>,
    api: Vec<Endpoint>,
    billing: Vec<Endpoint>,
    cart: Service,
}

impl World {
    fn services(&self) -> Vec<Service> {
        let http = |ns: &str, name: &str, n: u8, eps: &[Endpoint]| {
            Service::new(ns, name)
                .cluster_ip(plan::vip_v4(n))
                .port(ServicePort::tcp("http", 80, HTTP_PORT))
                .endpoints(eps.to_vec())
        };
        vec![
            http("shop", "web", WEB_VIP, &self.web),
            Service::new("shop", "cache")
                .cluster_ip(plan::vip_v4(CACHE_VIP))
                .port(ServicePort::udp("memcache", CACHE_PORT, CACHE_PORT))
                .endpoints(self.cache.clone()),
            http("shop", "api", API_VIP, &self.api),
            http("billing", "billing", BILLING_VIP, &self.billing),
            self.cart.clone(),
        ]
    }
}

/// What happened in one event (`details.events[]` in `-o json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventReport {
    pub event: &'static str,
    /// `namespace/name`.
    pub service: String,
    pub change: String,
    /// Seconds since the run began.
    pub endpoint_change_seconds: f64,
    /// kube-proxy's sync that installed the change: when it ended, ms after the change.
    pub sync_ms_after_change: Option<f64>,
    /// Entries DNAT'd to the gone backend right after the change (the node's table).
    pub ghosts: u64,
    /// Entries DNAT'd to it at the end (the node's table).
    pub ghosts_left: u64,
    /// Flows the agent removed (its `/debug/recent`).
    pub removed: u64,
    /// Of those, removed before kube-proxy's sync ended (must be 0).
    pub removed_before_sync: u64,
    /// First and last removal, ms after kube-proxy's sync ended (the agent's clock has ms).
    pub removed_ms_after_sync: Option<[f64; 2]>,
    pub verdicts: BTreeMap<String, u64>,
    pub evidence: Vec<String>,
    /// The event's failure showed (its client hung, was blackholed or answered by a stranger).
    pub failed: bool,
    pub client_recovered: bool,
    /// Seconds from the removal (control: from the change) to the client's recovery.
    pub recovery_seconds: Option<f64>,
    /// What the client saw.
    pub client: serde_json::Value,
    /// `conntrack_stale_entries` of the Service: its highest value after the change, the value
    /// at the first full scan begun after the removal, and whether it rose and fell back to 0.
    pub gauge_max: f64,
    pub gauge_end: Option<f64>,
    pub gauge_rose: bool,
    pub gauge_fell: bool,
    /// The agent's Kubernetes Event on the Service: reason and note.
    pub event_posted: bool,
    pub event_reason: Option<String>,
    pub event_note: Option<String>,
}

impl EventReport {
    /// What the agent should have done and did not (empty: it did everything).
    fn agent_missed(&self) -> Vec<&'static str> {
        [
            (
                self.ghosts >= 1,
                "no ghost to remove: the lab did not reproduce the seed",
            ),
            (self.ghosts_left == 0, "ghosts left in the node's table"),
            (
                self.removed >= self.ghosts,
                "fewer removals in /debug/recent than ghosts",
            ),
            (
                self.removed_before_sync == 0,
                "a flow removed before kube-proxy's sync",
            ),
            (self.client_recovered, "the client did not recover"),
            (
                self.gauge_rose,
                "conntrack_stale_entries never showed the ghosts",
            ),
            (self.gauge_fell, "conntrack_stale_entries did not fall to 0"),
            (self.event_posted, "no Event posted"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what)
        .collect()
    }

    /// Everything the agent should have done, it did.
    fn agent_passed(&self) -> bool {
        self.agent_missed().is_empty()
    }
}

/// One run's shared state.
struct Run<'a> {
    stage: Stage<'a>,
    cluster: Cluster,
    world: World,
    client: String,
    agent: Option<(AgentProcess, Scraper)>,
    /// Unix seconds when the run began.
    t0: f64,
    /// Addresses of pods that went: since when (Unix seconds) and until another pod got them.
    dead: Vec<(IpAddr, f64, Option<f64>)>,
}

impl Run<'_> {
    fn n(&self) -> &super::Narrator {
        &self.stage.ctx.narrator
    }

    /// Pod `name` vanishes (see [`netlab::Lab::delete_pod_silently`]); its addresses are dead
    /// from now on.
    fn vanish(&mut self, name: &str) -> Result<netlab::DeletedPod, Error> {
        let gone = self.stage.lab.delete_pod_silently(name)?;
        let now = now_secs();
        self.dead.extend(gone.ips.iter().map(|ip| (*ip, now, None)));
        Ok(gone)
    }

    /// The removal's backend was a gone pod's address when it was removed.
    fn was_dead(&self, r: &super::agent_rig::Removal) -> bool {
        let Some(ip) = r.backend else {
            return false;
        };
        self.dead
            .iter()
            .any(|(d, from, until)| *d == ip && r.at >= *from && until.is_none_or(|u| r.at < u))
    }

    fn publish(&mut self) -> Change {
        self.cluster
            .publish(&self.stage.lab, &self.world.services())
    }

    /// kube-proxy installs `change`; an error when it does not within 10 s.
    fn synced(&self, change: Change) -> Result<netlab::SyncRecord, Error> {
        self.cluster.wait_synced(change, Duration::from_secs(10))?;
        self.cluster.sync_of(change).ok_or_else(|| {
            Error::Lab(format!(
                "kube-proxy never installed change {}: {}",
                change.seq,
                self.cluster.kp.error().unwrap_or_default()
            ))
        })
    }

    /// Entries in the node's table to `vip` DNAT'd to one of `dead`.
    fn ghosts(&self, vip: SocketAddr, dead: &[IpAddr]) -> Result<u64, Error> {
        let mut ct = Conntrack::open_in(Some(self.stage.node()))?;
        let mut n = 0;
        ct.dump(&Filter::default(), |f| {
            if f.orig.dst == vip.ip() && dead.contains(&f.reply.src) {
                n += 1;
            }
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// After `change` took `dead` out of `service`: narrates kube-proxy's sync, and with the
    /// agent waits for it to remove the ghosts, then for its gauge and its Event. Returns when
    /// the last ghost was removed (Unix seconds), with the agent.
    fn after_change(
        &self,
        ev: &mut EventReport,
        change: Change,
        vip: SocketAddr,
        dead: &[IpAddr],
    ) -> Result<Option<f64>, Error> {
        let n = self.n();
        let sync = self.synced(change)?;
        ev.sync_ms_after_change = Some((sync.end - change.at) * 1000.0);
        n.at(&format!(
            "kube-proxy synced {:.0} ms after the change ({} mode, minSyncPeriod {} s): new connections go to the new endpoints",
            (sync.end - change.at) * 1000.0,
            self.stage.ctx.proxy_mode,
            KUBE_PROXY_DELAY.as_secs()
        ));
        let Some((agent, scraper)) = &self.agent else {
            return Ok(None);
        };
        let service = ev.service.clone();
        let mine = |r: &super::agent_rig::Removal| {
            r.gone()
                && r.service.as_deref() == Some(service.as_str())
                && r.backend.is_some_and(|b| dead.contains(&b))
        };
        let mut removals = Vec::new();
        let mut left = u64::MAX;
        wait_until(AGENT_WAIT, || {
            left = self.ghosts(vip, dead).unwrap_or(u64::MAX);
            removals = agent.recent().into_iter().filter(&mine).collect();
            left == 0 && removals.len() as u64 >= ev.ghosts
        })?;
        // The agent stamps removals in milliseconds: compare with the sync's end at that grain.
        let gate = (sync.end * 1000.0).floor() / 1000.0;
        ev.removed = removals.len() as u64;
        ev.removed_before_sync = removals.iter().filter(|r| r.at < gate).count() as u64;
        let last = removals.last().map(|r| r.at);
        if let (Some(first), Some(last)) = (removals.first(), last) {
            ev.removed_ms_after_sync = Some([
                ((first.at - gate) * 1000.0).round(),
                ((last - gate) * 1000.0).round(),
            ]);
        }
        for r in &removals {
            *ev.verdicts.entry(r.verdict.clone()).or_insert(0) += 1;
            for e in &r.evidence {
                if !ev.evidence.contains(e) {
                    ev.evidence.push(e.clone());
                }
            }
        }
        let verdicts: Vec<String> = ev
            .verdicts
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect();
        match ev.removed_ms_after_sync {
            Some([a, b]) => n.at(&format!(
                "agent removed {} to {} {} ms after kube-proxy's sync ended (its delete gate): {}, evidence {}",
                flows(ev.removed),
                dead.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                if a == b { format!("{a}") } else { format!("{a}–{b}") },
                verdicts.join(", "),
                ev.evidence.join(",")
            )),
            None => n.at(&format!(
                "agent removed nothing within {AGENT_WAIT:?}; {left} ghosts left"
            )),
        }

        // The gauge: what the full scans (every 500 ms) saw between the change and the first
        // full scan that began after the last removal.
        let after = last.unwrap_or(f64::MAX);
        let mut fell_at = None;
        wait_until(Duration::from_secs(5), || {
            fell_at = first_full_scan_begun_after(&scraper.samples(), after);
            fell_at.is_some()
        })?;
        let samples = scraper.samples();
        let rise = samples
            .iter()
            .filter(|s| s.at >= change.at && s.at <= after)
            .map(|s| (s.stale_of(&service), s.at))
            .fold(
                (0.0, None),
                |(max, at), (v, t)| {
                    if v > max {
                        (v, Some(t))
                    } else {
                        (max, at)
                    }
                },
            );
        ev.gauge_max = rise.0;
        ev.gauge_rose = rise.0 > 0.0;
        ev.gauge_end = fell_at.as_ref().map(|s| s.stale_of(&service));
        ev.gauge_fell = ev.gauge_rose && ev.gauge_end == Some(0.0);
        let (ns, name) = service.split_once('/').unwrap_or(("", &service));
        n.more(&format!(
            "/metrics: conntrack_stale_entries{{namespace=\"{ns}\",service=\"{name}\"}} 0 → {} ({}) → {} (the first full scan begun after the removal)",
            ev.gauge_max,
            rise.1
                .map(|t| format!("full scan at {:.2}s", t - self.t0))
                .unwrap_or_else(|| "no full scan saw them".into()),
            ev.gauge_end
                .map(|v| v.to_string())
                .unwrap_or_else(|| "no full scan yet".into())
        ));

        // The Event: the agent posts them every 2 s, at most one per Service per 5 minutes.
        let mut posted = Vec::new();
        wait_until(Duration::from_secs(6), || {
            posted = self.cluster.events_about(ns, name);
            !posted.is_empty()
        })?;
        if let Some((reason, note)) = posted.into_iter().next() {
            n.more(&format!("Event on Service {service}: {reason} \"{note}\""));
            ev.event_posted = true;
            ev.event_reason = Some(reason);
            ev.event_note = Some(note);
        } else {
            n.more(&format!("no Event on Service {service} within 6 s"));
        }
        Ok(last)
    }
}

/// The first sample of a full scan that began after `at` (Unix seconds, the agent's
/// millisecond grain). The agent stamps a full scan when it reports it, and a scan may read the
/// table long before that: its walk can end before a removal and its report come after it,
/// while the reactor handles the removal (a few ms in the lab, more on a loaded machine). Full
/// scans run one after another, each walk starting after the previous report, so the scan after
/// the first one stamped past `at` read a table that `at` had already changed.
fn first_full_scan_begun_after(
    samples: &[super::agent_rig::Sample],
    at: f64,
) -> Option<super::agent_rig::Sample> {
    // Past the stamp's grain: a scan reported in the same millisecond may have come before.
    let ended_after = samples
        .iter()
        .map(|s| s.last_full_scan)
        .find(|t| *t > at + 0.002)?;
    samples
        .iter()
        .find(|s| s.last_full_scan > ended_after)
        .cloned()
}

fn story(ctx: &Context, mode: Mode) -> Result<RunReport, Error> {
    let n = &ctx.narrator;
    let started = Instant::now();
    n.run(match mode {
        Mode::Control => "control — without ghostbuster",
        Mode::Fixed => {
            "with the agent — `ghostbuster agent` runs on the node; nobody types a command"
        }
    });
    let mut stage = Stage::new(ctx, INFO.0, mode)?;
    let web = stage.backend(
        "web-a",
        "shop",
        "web",
        ServerSpec::http(HTTP_PORT, 200, "web-a"),
    )?;
    let cache = stage.backend(
        "cache-0",
        "shop",
        "cache",
        ServerSpec::udp_echo(CACHE_PORT, "cache-0"),
    )?;
    let api = stage.backend(
        "api-a",
        "shop",
        "api",
        ServerSpec::http(HTTP_PORT, 200, "api-a"),
    )?;
    let cart = stage.cart()?;
    let client = stage.client()?;
    let cluster = Cluster::start(&stage.lab, lab_config(ctx.proxy_mode))?;
    let mut run = Run {
        stage,
        cluster,
        world: World {
            web,
            cache,
            api,
            billing: Vec::new(),
            cart,
        },
        client,
        agent: None,
        t0: now_secs() - started.elapsed().as_secs_f64(),
        dead: Vec::new(),
    };
    let first = run.publish();
    run.synced(first)?;
    // Flow start times (the evidence of `ip_reused`) from the first flow on.
    run.stage.enable_timestamps()?;
    n.at(&format!(
        "lab up: node {}, kube-proxy in {} mode (syncs {} s after a change); the in-process API server holds shop/web, shop/cache (UDP), shop/api, billing/billing, shop/cart",
        run.stage.node(),
        ctx.proxy_mode,
        KUBE_PROXY_DELAY.as_secs()
    ));
    let mut healthy = Healthy::default();
    healthy.tcp(&run.client, Stage::cart_vip(), "shop/cart")?;

    if mode == Mode::Fixed {
        let mut agent =
            AgentProcess::start(run.stage.node(), &run.cluster.api, run.cluster.kp.addr())?;
        agent.wait_ready(Duration::from_secs(30))?;
        n.at(&format!(
            "the agent is ready (/readyz 200): {}",
            agent.command
        ));
        n.more(&format!(
            "beyond where its servers are, the flags are the defaults but {} (the demo's pace)",
            AGENT_FLAGS.join(" ")
        ));
        let scraper = Scraper::start(&agent);
        run.agent = Some((agent, scraper));
    }

    let events = vec![
        rolling_update(&mut run, ctx)?,
        scale_to_zero(&mut run, ctx)?,
        ip_reuse(&mut run, ctx)?,
    ];
    if mode == Mode::Fixed {
        for e in &events {
            let missed = e.agent_missed();
            if !missed.is_empty() {
                n.line(&format!("   {}: {}", e.event, missed.join("; ")));
            }
        }
    }

    let mut report = RunReport::default();
    if let Some((agent, _)) = &run.agent {
        // A removed flow whose backend was not a gone pod's address at the time would be a
        // healthy connection broken.
        let recent = agent.recent();
        healthy.swept_live = recent
            .iter()
            .filter(|r| r.gone() && !run.was_dead(r))
            .count() as u64;
        report.removed = recent.iter().filter(|r| r.gone()).count() as u64;
    }
    if let Some((mut agent, scraper)) = run.agent.take() {
        drop(scraper);
        let took = agent.stop();
        n.at(&format!(
            "the agent got SIGTERM and exited in {:.2} s",
            took.as_secs_f64()
        ));
    }
    let h = healthy.finish();
    n.more(&format!(
        "healthy connections broken: {} of {} (shop/cart)",
        h.broken, h.connections
    ));
    report.ghosts_seen = events.iter().map(|e| e.ghosts).sum();
    report.ghosts_left = events.iter().map(|e| e.ghosts_left).sum();
    for e in &events {
        for (k, v) in &e.verdicts {
            *report.verdicts.entry(k.clone()).or_insert(0) += v;
        }
        report.client_errors += e.client["errors"].as_u64().unwrap_or(0);
        report.stall_seconds += e.client["stall_seconds"].as_f64().unwrap_or(0.0);
    }
    report.healthy_broken = h.broken;
    match mode {
        Mode::Control => {
            report.failed = events.iter().all(|e| e.failed && e.ghosts >= 1);
            report.recovered = events.iter().all(|e| e.client_recovered);
        }
        Mode::Fixed => {
            report.failed = events.iter().all(|e| e.ghosts >= 1);
            report.recovered = events.iter().all(EventReport::agent_passed) && h.broken == 0;
        }
    }
    report.details = json!({
        "proxy_mode": ctx.proxy_mode.name(),
        "kube_proxy_delay_ms": KUBE_PROXY_DELAY.as_millis() as u64,
        "agent_flags": AGENT_FLAGS,
        "events": events,
    });
    report.healthy = h;
    run.stage.finish()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The client's figures of `r`.
fn client_json(r: &ClientReport) -> serde_json::Value {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &r.errors {
        *kinds.entry(e.kind.as_str()).or_insert(0) += 1;
    }
    json!({
        "answers_by_backend": r.per_backend,
        "answers_by_status": r.statuses,
        "errors": r.errors.len(),
        "errors_by_kind": kinds,
        "stall_seconds": r.total_stuck.as_secs_f64(),
        "stuck_at_end": r.stuck_connections(),
    })
}

/// "ECONNRESET ×4, timeout ×2".
fn error_kinds(r: &ClientReport, since: usize) -> String {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for e in r.errors.iter().skip(since) {
        *kinds.entry(e.kind.as_str()).or_insert(0) += 1;
    }
    if kinds.is_empty() {
        return "no errors".into();
    }
    kinds
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rolling_update(run: &mut Run<'_>, ctx: &Context) -> Result<EventReport, Error> {
    let n = &ctx.narrator;
    n.line("\n   1. rolling update of shop/web");
    let target = vip(WEB_VIP, 80);
    let pool = TcpPool::start(
        &run.client,
        target,
        TcpPoolConfig {
            connections: WEB_CONNECTIONS,
            interval: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            run_for: ctx.window + Duration::from_secs(40),
            ..TcpPoolConfig::default()
        },
    )?;
    if !wait_until(Duration::from_secs(5), || {
        pool.report().connections.iter().all(|c| c.answers >= 2)
    })? {
        return Err(Error::Lab(format!(
            "the pooled connections to shop/web never got answers: {:?}",
            pool.report().errors
        )));
    }
    n.at(&format!(
        "client: a pool of {WEB_CONNECTIONS} keep-alive connections to shop/web {target} (a DB pool, gRPC channels), answered by web-a"
    ));
    let b = run.stage.backend(
        "web-b",
        "shop",
        "web",
        ServerSpec::http(HTTP_PORT, 200, "web-b"),
    )?;
    let gone = run.vanish("web-a")?;
    run.world.web = b.clone();
    let change = run.publish();
    let at_change = pool.report();
    let mut ev = EventReport {
        event: "rolling_update",
        service: "shop/web".into(),
        change: format!("web-a {} → web-b {}", gone.ips[0], b[0].ip),
        endpoint_change_seconds: change.at - run.t0,
        ghosts: run.ghosts(target, &gone.ips)?,
        ..EventReport::default()
    };
    n.at(&format!(
        "endpoint change: the EndpointSlice lists web-b {} instead of web-a {}, whose Pod is deleted — it vanished like a pod on a lost node (no reset, no ICMP); {} to it in the node's table",
        b[0].ip, gone.ips[0], flows(ev.ghosts)
    ));
    let removed_at = run.after_change(&mut ev, change, target, &gone.ips)?;
    match removed_at {
        None => {
            // The window counts from the change, as with the agent.
            pause(Duration::from_secs_f64(
                (change.at + ctx.window.as_secs_f64() - now_secs()).max(0.0),
            ))?;
            let r = pool.report();
            let since = r.answers - at_change.answers;
            ev.failed = r.stuck_connections() == WEB_CONNECTIONS
                && since == 0
                && r.answers_from("web-b") == 0;
            n.at(&format!(
                "{}/{WEB_CONNECTIONS} pooled connections are stuck {:.0} s after the change: {since} answers, {} — and would be for about 15 minutes of TCP retransmissions",
                r.stuck_connections(),
                ctx.window.as_secs_f64(),
                error_kinds(&r, at_change.errors.len())
            ));
        }
        Some(removed) => {
            ev.failed = true;
            let recovered = wait_until(AGENT_WAIT, || {
                pool.report()
                    .connections
                    .iter()
                    .all(|c| c.last_backend.as_deref() == Some("web-b") && !c.stuck)
            })?;
            let r = pool.report();
            ev.client_recovered =
                recovered && r.answers_from("web-a") == at_change.answers_from("web-a");
            ev.recovery_seconds = Some(now_secs() - removed);
            n.at(&format!(
                "client: {}/{WEB_CONNECTIONS} pooled connections failed fast ({}), reconnected and are answered by web-b, {:.2} s after the removal",
                r.connections
                    .iter()
                    .filter(|c| c.last_backend.as_deref() == Some("web-b"))
                    .count(),
                error_kinds(&r, at_change.errors.len()),
                now_secs() - removed
            ));
        }
    }
    ev.ghosts_left = run.ghosts(target, &gone.ips)?;
    let r = pool.stop();
    ev.client = client_json(&r);
    Ok(ev)
}

fn scale_to_zero(run: &mut Run<'_>, ctx: &Context) -> Result<EventReport, Error> {
    let n = &ctx.narrator;
    n.line("\n   2. scale to zero and back of shop/cache (UDP)");
    let target = vip(CACHE_VIP, CACHE_PORT);
    let querier = UdpClient::start(
        &run.client,
        target,
        UdpConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            run_for: ctx.window + Duration::from_secs(40),
            ..UdpConfig::default()
        },
    )?;
    if !wait_until(Duration::from_secs(5), || querier.report().answers >= 3)? {
        return Err(Error::Lab("the cache client never got answers".into()));
    }
    n.at(&format!(
        "client: keeps one UDP socket to shop/cache {target} (one conntrack tuple), a request every 100 ms, answered by cache-0"
    ));
    let gone = run.vanish("cache-0")?;
    run.world.cache = Vec::new();
    let change = run.publish();
    let mut ev = EventReport {
        event: "scale_to_zero",
        service: "shop/cache".into(),
        change: format!(
            "cache-0 {} → no endpoints → cache-1 {:.1} s later",
            gone.ips[0],
            SCALE_UP_AFTER.as_secs_f64()
        ),
        endpoint_change_seconds: change.at - run.t0,
        ghosts: run.ghosts(target, &gone.ips)?,
        ..EventReport::default()
    };
    n.at(&format!(
        "endpoint change: scaled to zero — cache-0 {} is gone, the EndpointSlice is empty; {} to it in the node's table",
        gone.ips[0],
        flows(ev.ghosts)
    ));
    let removed_at = run.after_change(&mut ev, change, target, &gone.ips)?;
    if removed_at.is_some() {
        n.at("client: while shop/cache has no pod, its requests meet kube-proxy's reject rule for Services without endpoints instead of a NAT binding to cache-0");
    }
    let up_at = change.at + SCALE_UP_AFTER.as_secs_f64();
    pause(Duration::from_secs_f64((up_at - now_secs()).max(0.0)))?;
    let c1 = run.stage.backend(
        "cache-1",
        "shop",
        "cache",
        ServerSpec::udp_echo(CACHE_PORT, "cache-1"),
    )?;
    run.world.cache = c1.clone();
    let up = run.publish();
    let sync = run.synced(up)?;
    n.at(&format!(
        "scaled back to 1: cache-1 {} is ready; kube-proxy synced {:.0} ms later",
        c1[0].ip,
        (sync.end - up.at) * 1000.0
    ));
    let window = if removed_at.is_some() {
        AGENT_WAIT
    } else {
        // From the scale-up, as with the agent.
        Duration::from_secs_f64((up.at + ctx.window.as_secs_f64() - now_secs()).max(0.0))
    };
    let answered = wait_until(window, || querier.report().answers_from("cache-1") >= 3)?;
    let r = querier.report();
    ev.client_recovered = answered;
    ev.failed = if removed_at.is_some() {
        // The ghost showed: requests were lost between the scale-down and the removal.
        !r.errors.is_empty()
    } else {
        !answered
    };
    if answered {
        ev.recovery_seconds = Some(now_secs() - sync.end);
        n.at(&format!(
            "client: answered by cache-1 again, {:.2} s after kube-proxy's sync",
            now_secs() - sync.end
        ));
    } else {
        n.at(&format!(
            "client: {} answers from cache-1 in the {:.0} s after it came up: the socket's entry is still DNAT'd to cache-0 and every request refreshes it ({} since the scale-down)",
            r.answers_from("cache-1"),
            ctx.window.as_secs_f64(),
            error_kinds(&r, 0)
        ));
    }
    ev.ghosts_left = run.ghosts(target, &gone.ips)?;
    let r = querier.stop();
    ev.client = client_json(&r);
    Ok(ev)
}

/// TCP flows to `vip` in `SYN_SENT` in the node's table.
fn syn_sent_to(node: &str, vip: SocketAddr) -> Result<usize, Error> {
    let mut ct = Conntrack::open_in(Some(node))?;
    let mut count = 0;
    ct.dump(&Filter::default(), |f| {
        if f.orig.dst == vip.ip() && f.tcp_state == Some(TcpState::SYN_SENT) {
            count += 1;
        }
        ControlFlow::Continue(())
    })?;
    Ok(count)
}

fn ip_reuse(run: &mut Run<'_>, ctx: &Context) -> Result<EventReport, Error> {
    let n = &ctx.narrator;
    n.line("\n   3. IP reuse: a pod of shop/api dies, a pod of billing/billing gets its IP");
    let target = vip(API_VIP, 80);
    let gone = run.vanish("api-a")?;
    let IpAddr::V4(a_ip) = gone.ips[0] else {
        return Err(Error::Lab("api-a has no IPv4 address".into()));
    };
    n.at(&format!(
        "api-a {a_ip} stops answering (killed without a preStop hook); kube-proxy still routes shop/api to it"
    ));
    let pool = TcpPool::start(
        &run.client,
        target,
        TcpPoolConfig {
            connections: API_CONNECTIONS,
            interval: Duration::from_millis(200),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(20),
            run_for: ctx.window + Duration::from_secs(40),
            ..TcpPoolConfig::default()
        },
    )?;
    let node = run.stage.node().to_string();
    let mut half_open = 0;
    wait_until(Duration::from_secs(3), || {
        half_open = syn_sent_to(&node, target).unwrap_or(0);
        half_open >= API_CONNECTIONS
    })?;
    n.at(&format!(
        "client: {half_open} new connections to shop/api {target}: their SYNs were DNAT'd to api-a and stay SYN_SENT [UNREPLIED]; the kernel retransmits them"
    ));
    // A second later the API hears of it.
    pause(Duration::from_secs(1))?;
    let b = run.stage.backend(
        "api-b",
        "shop",
        "api",
        ServerSpec::http(HTTP_PORT, 200, "api-b"),
    )?;
    run.world.api = b.clone();
    let change = run.publish();
    let mut ev = EventReport {
        event: "ip_reuse",
        service: "shop/api".into(),
        change: format!(
            "api-a {a_ip} → api-b {}; billing-0 gets {a_ip} {} s later",
            b[0].ip,
            REUSE_AFTER.as_secs()
        ),
        endpoint_change_seconds: change.at - run.t0,
        ghosts: run.ghosts(target, &gone.ips)?,
        ..EventReport::default()
    };
    n.at(&format!(
        "endpoint change: api-a's Pod is deleted, the EndpointSlice lists api-b {}; {} half-open to api-a in the node's table",
        b[0].ip,
        flows(ev.ghosts)
    ));
    let removed_at = run.after_change(&mut ev, change, target, &gone.ips)?;
    let reuse_at = change.at + REUSE_AFTER.as_secs_f64();
    pause(Duration::from_secs_f64((reuse_at - now_secs()).max(0.0)))?;
    let reused = now_secs();
    for d in run.dead.iter_mut().filter(|d| d.0 == IpAddr::V4(a_ip)) {
        d.2 = Some(reused);
    }
    let billing = run.stage.backend_at(
        "billing-0",
        "billing",
        "billing",
        a_ip,
        ServerSpec::http(HTTP_PORT, 404, "billing-0"),
    )?;
    run.world.billing = billing;
    run.publish();
    n.at(&format!(
        "billing/billing-0 — a pod of ANOTHER Service, it answers 404 — gets api-a's IP {a_ip}"
    ));
    let answered = wait_until(Duration::from_secs(15), || {
        pool.report().connections.iter().all(|c| c.answers >= 3)
    })?;
    let r = pool.report();
    let wrong = r.answers_from("billing-0");
    let right = r.answers_from("api-b");
    n.at(&format!(
        "client: {right} × 200 from api-b, {wrong} × 404 from billing-0 ({} of {API_CONNECTIONS} connections answered)",
        r.connections.iter().filter(|c| c.answers > 0).count()
    ));
    ev.failed = if removed_at.is_some() {
        ev.ghosts >= 1
    } else {
        wrong > 0
    };
    ev.client_recovered = answered && wrong == 0 && right == r.answers;
    if let (Some(removed), true) = (removed_at, ev.client_recovered) {
        let first_b = r
            .connections
            .iter()
            .all(|c| c.backends.contains_key("api-b"));
        if first_b {
            ev.recovery_seconds = Some(now_secs() - removed);
        }
    }
    if removed_at.is_none() {
        n.more("the retransmitted SYNs followed the old NAT binding to the new owner of the IP: healthy TCP, wrong service");
    }
    // Flows to the VIP still DNAT'd to that IP: in the control, the connections to billing-0.
    ev.ghosts_left = run.ghosts(target, &gone.ips)?;
    let r = pool.stop();
    ev.client = client_json(&r);
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::super::agent_rig::Sample;
    use super::*;

    fn sample(at: f64, last_full_scan: f64, stale: f64) -> Sample {
        Sample {
            at,
            stale: [("shop/web".to_string(), stale)].into(),
            last_full_scan,
        }
    }

    #[test]
    fn the_gauge_after_a_removal_comes_from_a_scan_that_began_after_it() {
        // The removal is stamped at 10.000. A scan whose walk ended before it reports at 10.150
        // (its report waited for the reactor) and still counts the removed flows; the next scan,
        // reported at 10.600, walked after that report.
        let samples = [
            sample(9.9, 9.5, 4.0),
            sample(10.0, 9.5, 4.0),
            sample(10.2, 10.150, 4.0),
            sample(10.3, 10.150, 4.0),
            sample(10.7, 10.600, 0.0),
        ];
        let fell = first_full_scan_begun_after(&samples, 10.0).expect("a later scan");
        assert_eq!(fell.last_full_scan, 10.600);
        assert_eq!(fell.stale_of("shop/web"), 0.0);
        // A scan reported in the removal's own millisecond is not taken as the first after it.
        let same_ms = [sample(10.1, 10.0005, 4.0), sample(10.6, 10.5, 4.0)];
        assert!(first_full_scan_begun_after(&same_ms, 10.0).is_none());
        // Until the second scan is seen there is no answer.
        assert!(first_full_scan_begun_after(&samples[..4], 10.0).is_none());
    }
}
