//! Act 2, the wrong backend (seed 003): web-a stops answering (killed without a preStop hook)
//! while kube-proxy still routes to it, so new connections' SYNs are DNAT'd to it and stay
//! `SYN_SENT [UNREPLIED]`. The EndpointSlice then marks web-a terminating and not serving, web-b
//! takes the traffic, web-a's Pod goes — and a pod of *another* service, billing-0, gets its IP.
//!
//! Control: the client's SYN retransmission follows the old NAT binding and completes to
//! billing-0, which answers 404 on a perfectly healthy TCP connection; the pooled client keeps
//! using it. A read-only scan afterwards names those connections `ip_reused` (billing-0 was
//! created after the flows began: flow timestamps). Fixed: before the IP is reused, `sweep`
//! removes the half-open flows (`unanswered`: the backend is listed but not serving and the flow
//! never saw a reply, so no connection exists to break); the retransmission is DNAT'd afresh to
//! web-b and every answer is 200.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctnetlink::{Conntrack, Filter, TcpState};
use netlab::{plan, Endpoint, ServerSpec, Service, ServicePort, TcpPool, TcpPoolConfig};
use serde_json::json;

use super::stage::{pause, vip, wait_until, Healthy, Stage, HTTP_PORT};
use super::{ActInfo, ActReport, Context, Error, Mode, RunReport};
use crate::policy::Policy;

const INFO: ActInfo = (2, "wrong_backend", "the wrong backend", "003");
const WEB_VIP: u8 = 11;
const BILLING_VIP: u8 = 12;
/// Pooled connections opened while web-a is silent.
const CONNECTIONS: usize = 3;
/// Answers per connection before judging.
const ANSWERS: u64 = 3;

pub fn run(ctx: &Context) -> Result<ActReport, Error> {
    let started = Instant::now();
    ctx.narrator.line("\nAct 2 — the wrong backend (seeds/003): a half-open flow completes to a pod of another service that reused the IP");
    let control = story(ctx, Mode::Control)?;
    let fixed = story(ctx, Mode::Fixed)?;
    Ok(ActReport::new(INFO, control, fixed, started))
}

fn web(endpoints: Vec<Endpoint>) -> Service {
    Service::new("shop", "web")
        .cluster_ip(plan::vip_v4(WEB_VIP))
        .port(ServicePort::tcp("http", 80, HTTP_PORT))
        .endpoints(endpoints)
}

fn billing(endpoints: Vec<Endpoint>) -> Service {
    Service::new("billing", "billing")
        .cluster_ip(plan::vip_v4(BILLING_VIP))
        .port(ServicePort::tcp("http", 80, HTTP_PORT))
        .endpoints(endpoints)
}

/// The policy of this act's scans: `--min-age 0s`. The default (10 s) leaves half-open flows
/// younger than that alone, because a SYN-ACK may still be on its way; here the SYNs are a second
/// old when the IP is reused, and the lab knows no answer will come.
fn policy() -> Policy {
    Policy {
        min_age: Duration::ZERO,
        ..Policy::default()
    }
}

fn story(ctx: &Context, mode: Mode) -> Result<RunReport, Error> {
    let n = &ctx.narrator;
    let started = Instant::now();
    n.run(mode.title());
    let mut stage = Stage::new(ctx, INFO.0, mode)?;
    let a = stage.backend(
        "web-a",
        "shop",
        "web",
        ServerSpec::http(HTTP_PORT, 200, "web-a"),
    )?;
    let cart = stage.cart()?;
    let client = stage.client()?;
    stage.sync(&[web(a.clone()), billing(Vec::new()), cart.clone()])?;
    let target = vip(WEB_VIP, 80);
    let IpAddr::V4(a_ip) = a[0].ip else {
        return Err(Error::Lab("web-a has no IPv4 address".into()));
    };
    n.at(&format!(
        "lab up: node {}; shop/web {target} → web-a {a_ip}:{HTTP_PORT}; billing/billing {} (no pods yet)",
        stage.node(),
        vip(BILLING_VIP, 80)
    ));
    let mut healthy = Healthy::default();
    healthy.tcp(&client, Stage::cart_vip(), "shop/cart")?;

    // web-a stops answering before kube-proxy hears of it.
    stage.lab.delete_pod_silently("web-a")?;
    n.at("web-a stops answering (killed without a preStop hook): its packets are dropped, and kube-proxy still routes to it");
    align_to_second_half()?;
    let pool = TcpPool::start(
        &client,
        target,
        TcpPoolConfig {
            connections: CONNECTIONS,
            interval: Duration::from_millis(200),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(12),
            run_for: Duration::from_secs(40),
            ..TcpPoolConfig::default()
        },
    )?;
    let node = stage.node().to_string();
    let mut half_open = 0;
    wait_until(Duration::from_secs(2), || {
        half_open = syn_sent_to(&node, plan::vip_v4(WEB_VIP)).unwrap_or(0);
        half_open >= CONNECTIONS
    })?;
    // Taken once the SYNs are in the table, so no flow can start later than this.
    let syn_seen = SystemTime::now();
    n.at(&format!(
        "{half_open} new pooled connections to shop/web: their SYNs were DNAT'd to web-a {a_ip}:{HTTP_PORT}, which does not answer → conntrack SYN_SENT [UNREPLIED]; the client retransmits after 1 s, 3 s, 7 s"
    ));

    // The EndpointSlice catches up: web-a terminating and not serving, web-b ready.
    let b = stage.backend(
        "web-b",
        "shop",
        "web",
        ServerSpec::http(HTTP_PORT, 200, "web-b"),
    )?;
    let draining = Endpoint {
        ip: a[0].ip,
        pod: Some("web-a".into()),
        ready: false,
        serving: false,
        terminating: true,
    };
    let mut endpoints = vec![draining];
    endpoints.extend(b.clone());
    stage.sync(&[web(endpoints), billing(Vec::new()), cart.clone()])?;
    n.at(&format!(
        "EndpointSlice: web-a terminating and not serving, web-b {} ready; kube-proxy sends new connections to web-b",
        b[0].ip
    ));

    let mut run = RunReport::default();
    let mut details = json!({ "connections": CONNECTIONS });
    if mode == Mode::Fixed {
        let pass = stage.sweep(&policy())?;
        stage.narrate(&pass, "`ghostbuster sweep --min-age 0s`");
        healthy.swept_live += stage.swept_live(&pass);
        run.ghosts_seen = pass.ghosts();
        run.removed = pass.removed();
        run.verdicts = pass.verdicts();
        details["unanswered_removed"] = json!(pass.count("unanswered"));
    }

    // web-a's Pod is deleted (it leaves the slice) and another service's new pod gets its IP.
    // Pod creation times have one-second resolution, as in Kubernetes: billing-0 is created in a
    // later second than the SYNs, so the flows provably predate it.
    wait_for_next_second(syn_seen)?;
    let billing0 = stage.backend_at(
        "billing-0",
        "billing",
        "billing",
        a_ip,
        ServerSpec::http(HTTP_PORT, 404, "billing-0"),
    )?;
    stage.sync(&[web(b.clone()), billing(billing0), cart.clone()])?;
    n.at(&format!(
        "web-a's Pod is gone and leaves the slice; billing/billing-0 — a pod of ANOTHER service, which answers 404 — gets its IP {a_ip}"
    ));

    let answered = wait_until(Duration::from_secs(12), || {
        pool.report()
            .connections
            .iter()
            .all(|c| c.answers >= ANSWERS)
    })?;
    let r = pool.report();
    let wrong = r.answers_from("billing-0");
    let right = r.answers_from("web-b");
    n.at(&format!(
        "answers: {right} × 200 from web-b, {wrong} × 404 from billing-0 ({} of {CONNECTIONS} connections answered{})",
        r.connections.iter().filter(|c| c.answers > 0).count(),
        if answered { "" } else { ", some never" }
    ));
    match mode {
        Mode::Control => {
            let pass = stage.scan(&policy())?;
            stage.narrate(
                &pass,
                "read-only `ghostbuster scan` of the connections now established to the wrong pod",
            );
            run.ghosts_seen = pass.ghosts();
            run.ghosts_left = pass.ghosts();
            run.verdicts = pass.verdicts();
            details["ip_reused_reported"] = json!(pass.count("ip_reused"));
            // The seed's failure: the retransmission completed to the other service's pod.
            run.failed = wrong > 0;
        }
        Mode::Fixed => {
            let after = stage.scan(&policy())?;
            run.ghosts_left = after.ghosts();
            n.more(&format!(
                "after the sweep a new scan finds {} not healthy",
                super::stage::flows(after.ghosts())
            ));
            run.failed = wrong > 0;
            run.recovered = answered
                && wrong == 0
                && right == r.answers
                && r.statuses.keys().all(|s| *s == 200)
                && run.ghosts_left == 0;
        }
    }
    let r = pool.stop();
    let h = healthy.finish();
    n.more(&format!(
        "healthy connections broken: {} of {} (shop/cart)",
        h.broken, h.connections
    ));
    run.client_errors = r.errors.len() as u64;
    run.stall_seconds = r.total_stuck.as_secs_f64();
    run.healthy_broken = h.broken;
    run.recovered &= h.broken == 0;
    details["answers_by_status"] = json!(r.statuses);
    details["answers_by_backend"] = json!(r.per_backend);
    run.details = details;
    run.healthy = h;
    stage.finish()?;
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// TCP flows to `vip` in `SYN_SENT` in the node's table (watching the lab, not judging it).
fn syn_sent_to(node: &str, vip: Ipv4Addr) -> Result<usize, Error> {
    let mut ct = Conntrack::open_in(Some(node))?;
    let mut count = 0;
    ct.dump(&Filter::default(), |f| {
        if f.orig.dst == IpAddr::V4(vip) && f.tcp_state == Some(TcpState::SYN_SENT) {
            count += 1;
        }
        ControlFlow::Continue(())
    })?;
    Ok(count)
}

fn subsecond(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| f64::from(d.subsec_nanos()) / 1e9)
        .unwrap_or(0.0)
}

/// Waits until the wall clock is 0.5–0.7 s into a second, so the SYNs sent now leave room to
/// reuse the IP in the next second *before* the first retransmission (1 s later).
fn align_to_second_half() -> Result<(), Error> {
    let s = subsecond(SystemTime::now());
    let wait = if s < 0.5 {
        0.5 - s
    } else if s < 0.7 {
        0.0
    } else {
        1.5 - s
    };
    pause(Duration::from_secs_f64(wait))
}

/// Waits until the wall clock has passed the second `t` falls in (plus a little).
fn wait_for_next_second(t: SystemTime) -> Result<(), Error> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let target = UNIX_EPOCH + Duration::from_secs(secs + 1) + Duration::from_millis(20);
    let wait = target
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    pause(wait)
}
