//! Act 3, the UDP blackhole (seed 001): a resolver-like client keeps one UDP socket, so every
//! query has the same conntrack tuple. The DNS-like backend dns-a is replaced by dns-b and
//! vanishes; each query refreshes the entry's timeout, so the entry — DNAT'd to dns-a — never
//! expires and every query times out, while a fresh socket is answered by dns-b at once.
//!
//! Control: timeouts for the whole window. Fixed: `sweep` removes the entry (`endpoint_gone`,
//! evidence `udp` and `pod_absent`); the next query creates a new one, DNAT'd to dns-b, and is
//! answered within a second.

use std::time::{Duration, Instant};

use netlab::{plan, udp_query, Endpoint, ServerSpec, Service, ServicePort, UdpClient, UdpConfig};
use serde_json::json;

use super::stage::{pause, vip, wait_until, Healthy, Stage, DNS_PORT};
use super::{ActInfo, ActReport, Context, Error, Mode, RunReport};
use crate::policy::Policy;

const INFO: ActInfo = (3, "udp_blackhole", "the UDP blackhole", "001");
const VIP: u8 = 53;
/// Time between queries; a query unanswered after [`TIMEOUT`] is lost.
const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(300);

pub fn run(ctx: &Context) -> Result<ActReport, Error> {
    let started = Instant::now();
    ctx.narrator.line(
        "\nAct 3 — the UDP blackhole (seeds/001): DNS-like queries keep going to a deleted backend",
    );
    let control = story(ctx, Mode::Control)?;
    let fixed = story(ctx, Mode::Fixed)?;
    Ok(ActReport::new(INFO, control, fixed, started))
}

fn dns(endpoints: Vec<Endpoint>) -> Service {
    Service::new("kube-system", "dns")
        .cluster_ip(plan::vip_v4(VIP))
        .port(ServicePort::udp("dns", 53, DNS_PORT))
        .endpoints(endpoints)
}

fn story(ctx: &Context, mode: Mode) -> Result<RunReport, Error> {
    let n = &ctx.narrator;
    let started = Instant::now();
    n.run(mode.title());
    let mut stage = Stage::new(ctx, INFO.0, mode)?;
    let a = stage.backend(
        "dns-a",
        "kube-system",
        "dns",
        ServerSpec::udp_echo(DNS_PORT, "dns-a"),
    )?;
    let cart = stage.cart()?;
    let client = stage.client()?;
    stage.sync(&[dns(a.clone()), cart.clone()])?;
    let target = vip(VIP, 53);
    n.at(&format!(
        "lab up: node {}; kube-system/dns {target}/udp → dns-a {}:{DNS_PORT}",
        stage.node(),
        a[0].ip
    ));
    let mut healthy = Healthy::default();
    healthy.tcp(&client, Stage::cart_vip(), "shop/cart")?;
    let querier = UdpClient::start(
        &client,
        target,
        UdpConfig {
            interval: INTERVAL,
            timeout: TIMEOUT,
            run_for: ctx.window + Duration::from_secs(30),
            ..UdpConfig::default()
        },
    )?;
    if !wait_until(Duration::from_secs(3), || querier.report().answers >= 3)? {
        return Err(Error::Lab("the resolver never got answers".into()));
    }
    n.at("client: a resolver-like querier keeps one socket (one conntrack tuple), a query every 100 ms, answered by dns-a");

    let b = stage.backend(
        "dns-b",
        "kube-system",
        "dns",
        ServerSpec::udp_echo(DNS_PORT, "dns-b"),
    )?;
    stage.sync(&[dns(b.clone()), cart.clone()])?;
    let dead = stage.lab.delete_pod_silently("dns-a")?;
    let at_update = querier.report();
    n.at(&format!(
        "dns-a {} is rescheduled: dns-b {} is ready and kube-proxy's rules point to it; dns-a is gone (packets to it dropped)",
        dead.ips[0], b[0].ip
    ));
    let fresh = udp_query(&client, target, "probe", Duration::from_secs(1))?;
    n.more(&format!(
        "a query from a fresh socket is answered by {}: the Service looks healthy",
        fresh.split(' ').next().unwrap_or("?")
    ));
    healthy.udp(&client, target, "kube-system/dns (dns-b)")?;

    let mut run = RunReport::default();
    let mut details = json!({});
    let policy = Policy::default();
    match mode {
        Mode::Control => {
            n.at(&format!(
                "watching the resolver for {:.0} s",
                ctx.window.as_secs_f64()
            ));
            pause(ctx.window)?;
            let r = querier.report();
            let answered = r.answers - at_update.answers;
            let lost = r.errors_of_kind("timeout") - at_update.errors_of_kind("timeout");
            n.at(&format!(
                "{lost} queries timed out since the update, {answered} answered, {} by dns-b",
                r.answers_from("dns-b")
            ));
            let pass = stage.scan(&policy)?;
            stage.narrate(
                &pass,
                "read-only `ghostbuster scan` (the control run removes nothing)",
            );
            run.ghosts_seen = pass.ghosts();
            run.ghosts_left = pass.ghosts();
            run.verdicts = pass.verdicts();
            // The seed's failure: not one answer for the whole window.
            let expected = ctx.window.as_secs_f64() / (TIMEOUT + INTERVAL).as_secs_f64();
            run.failed = answered == 0 && lost as f64 >= expected * 0.5;
            details["lost_after_update"] = json!(lost);
        }
        Mode::Fixed => {
            wait_until(Duration::from_secs(2), || {
                querier.report().errors_of_kind("timeout")
                    >= at_update.errors_of_kind("timeout") + 3
            })?;
            let r = querier.report();
            n.at(&format!(
                "{} queries timed out since the update, none answered",
                r.errors_of_kind("timeout") - at_update.errors_of_kind("timeout")
            ));
            let pass = stage.sweep(&policy)?;
            let swept = Instant::now();
            stage.narrate(&pass, "`ghostbuster sweep`");
            healthy.swept_live += stage.swept_live(&pass);
            run.ghosts_seen = pass.ghosts();
            run.removed = pass.removed();
            run.verdicts = pass.verdicts();
            let back = wait_until(Duration::from_secs(3), || {
                querier.report().answers_from("dns-b") >= 1
            })?;
            let recovery = swept.elapsed().as_secs_f64();
            wait_until(Duration::from_secs(1), || {
                querier.report().answers_from("dns-b") >= 3
            })?;
            n.at(&format!(
                "the resolver is answered by dns-b again, {recovery:.2} s after the sweep"
            ));
            let after = stage.scan(&policy)?;
            run.ghosts_left = after.ghosts();
            n.more(&format!(
                "after the sweep a new scan finds {} not healthy",
                super::stage::flows(after.ghosts())
            ));
            run.failed = true;
            run.recovered = back && recovery <= 1.0 && run.ghosts_left == 0;
            details["recovery_seconds"] = json!(recovery);
        }
    }
    let r = querier.stop();
    let h = healthy.finish();
    n.more(&format!(
        "the resolver was stuck {:.1} s; healthy connections broken: {} of {} (shop/cart, a new resolver to dns-b)",
        r.total_stuck.as_secs_f64(),
        h.broken,
        h.connections
    ));
    run.client_errors = r.errors.len() as u64;
    run.stall_seconds = r.total_stuck.as_secs_f64();
    run.healthy_broken = h.broken;
    run.recovered &= h.broken == 0;
    details["answers_by_backend"] = json!(r.per_backend);
    details["window_seconds"] = json!(ctx.window.as_secs_f64());
    run.details = details;
    run.healthy = h;
    stage.finish()?;
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}
