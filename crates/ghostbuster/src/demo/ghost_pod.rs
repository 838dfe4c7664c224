//! Act 1, the ghost pod (seed 000): a client holds a pool of long-lived TCP connections through a
//! Service VIP; a rolling update replaces web-a with web-b and web-a vanishes the way a pod on a
//! lost node does (packets silently dropped). New connections go to web-b; the pooled ones stay
//! DNAT'd to web-a by their conntrack entries and hang — no reset, no error, for as long as the
//! kernel retransmits (about 15 minutes).
//!
//! Control: they are still stuck when the window ends. Fixed: `sweep` removes their entries
//! (`endpoint_gone`, evidence `pod_absent`); the next retransmission is DNAT'd afresh to web-b,
//! which answers with a reset (it never had that connection), and the pool reconnects to web-b.

use std::time::{Duration, Instant};

use netlab::{http_get, plan, Endpoint, ServerSpec, Service, ServicePort, TcpPool, TcpPoolConfig};
use serde_json::json;

use super::stage::{pause, vip, wait_until, Healthy, Stage, HTTP_PORT};
use super::{ActInfo, ActReport, Context, Error, Mode, RunReport};
use crate::policy::Policy;

const INFO: ActInfo = (1, "ghost_pod", "the ghost pod", "000");
const VIP: u8 = 10;
/// Pooled connections (a database pool, gRPC channels).
const CONNECTIONS: usize = 4;

pub fn run(ctx: &Context) -> Result<ActReport, Error> {
    let started = Instant::now();
    ctx.narrator.line("\nAct 1 — the ghost pod (seeds/000): pooled TCP connections pinned to a pod that vanished in a rolling update");
    let control = story(ctx, Mode::Control)?;
    let fixed = story(ctx, Mode::Fixed)?;
    Ok(ActReport::new(INFO, control, fixed, started))
}

fn web(endpoints: Vec<Endpoint>) -> Service {
    Service::new("shop", "web")
        .cluster_ip(plan::vip_v4(VIP))
        .port(ServicePort::tcp("http", 80, HTTP_PORT))
        .endpoints(endpoints)
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
    stage.sync(&[web(a.clone()), cart.clone()])?;
    let target = vip(VIP, 80);
    n.at(&format!(
        "lab up: node {}; shop/web {target} → web-a {}:{HTTP_PORT}",
        stage.node(),
        a[0].ip
    ));

    let mut healthy = Healthy::default();
    healthy.tcp(&client, Stage::cart_vip(), "shop/cart")?;
    let pool = TcpPool::start(
        &client,
        target,
        TcpPoolConfig {
            connections: CONNECTIONS,
            interval: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            run_for: ctx.window + Duration::from_secs(30),
            ..TcpPoolConfig::default()
        },
    )?;
    if !wait_until(Duration::from_secs(5), || {
        pool.report().connections.iter().all(|c| c.answers >= 2)
    })? {
        return Err(Error::Lab(format!(
            "the pooled connections never got answers: {:?}",
            pool.report().errors
        )));
    }
    n.at(&format!(
        "client: a pool of {CONNECTIONS} long-lived HTTP keep-alive connections to shop/web (a DB pool, gRPC channels), all answered by web-a"
    ));

    // The rolling update: B ready, the rules move to B, then A vanishes silently.
    let b = stage.backend(
        "web-b",
        "shop",
        "web",
        ServerSpec::http(HTTP_PORT, 200, "web-b"),
    )?;
    stage.sync(&[web(b.clone()), cart.clone()])?;
    let dead = stage.lab.delete_pod_silently("web-a")?;
    let at_update = pool.report();
    n.at(&format!(
        "rolling update: web-b {} is ready and kube-proxy's rules point to it; web-a {} vanished like a pod on a lost node (its packets are dropped: no reset, no ICMP)",
        b[0].ip, dead.ips[0]
    ));
    let fresh = http_get(&client, target, Duration::from_secs(2))?;
    n.more(&format!(
        "a new connection to shop/web is answered by {} ({}): the Service looks healthy",
        fresh.backend, fresh.status
    ));
    healthy.tcp(&client, target, "shop/web (web-b)")?;

    let mut run = RunReport::default();
    let mut details = json!({ "connections": CONNECTIONS });
    let policy = Policy::default();
    match mode {
        Mode::Control => {
            n.at(&format!(
                "watching the pooled connections for {:.0} s",
                ctx.window.as_secs_f64()
            ));
            pause(ctx.window)?;
            let r = pool.report();
            let new_answers = r.answers - at_update.answers;
            let shortest = per_connection_stall(&r)
                .into_iter()
                .fold(f64::MAX, f64::min);
            n.at(&format!(
                "{}/{CONNECTIONS} pooled connections are stuck: {} answers since the update, {} errors; each has waited {:.1} s or more",
                r.stuck_connections(),
                new_answers,
                r.errors.len(),
                shortest
            ));
            let pass = stage.scan(&policy)?;
            stage.narrate(
                &pass,
                "read-only `ghostbuster scan` (the control run removes nothing)",
            );
            run.ghosts_seen = pass.ghosts();
            run.ghosts_left = pass.ghosts();
            run.verdicts = pass.verdicts();
            // The seed's failure: every pooled connection hangs for the whole window, silently.
            run.failed = r.stuck_connections() == CONNECTIONS
                && new_answers == 0
                && r.errors.is_empty()
                && shortest >= ctx.window.as_secs_f64() - 1.0;
            details["stuck_at_end"] = json!(r.stuck_connections());
            details["answers_after_update"] = json!(new_answers);
        }
        Mode::Fixed => {
            let stuck = wait_until(Duration::from_secs(3), || {
                pool.report().stuck_connections() == CONNECTIONS
            })?;
            let r = pool.report();
            n.at(&format!(
                "{}/{CONNECTIONS} pooled connections are stuck (no answer, no error)",
                r.stuck_connections()
            ));
            let pass = stage.sweep(&policy)?;
            let swept = Instant::now();
            stage.narrate(&pass, "`ghostbuster sweep`");
            healthy.swept_live += stage.swept_live(&pass);
            run.ghosts_seen = pass.ghosts();
            run.removed = pass.removed();
            run.verdicts = pass.verdicts();
            let all_on_b = wait_until(Duration::from_secs(10), || {
                pool.report()
                    .connections
                    .iter()
                    .all(|c| c.backends.get("web-b").copied().unwrap_or(0) >= 1 && !c.stuck)
            })?;
            let recovery = swept.elapsed().as_secs_f64();
            let r = pool.report();
            let kinds = error_kinds(&r);
            n.at(&format!(
                "{}/{CONNECTIONS} pooled connections failed fast ({kinds}), reconnected and are answered by web-b, {recovery:.1} s after the sweep",
                r.connections
                    .iter()
                    .filter(|c| c.backends.contains_key("web-b"))
                    .count()
            ));
            let after = stage.scan(&policy)?;
            run.ghosts_left = after.ghosts();
            n.more(&format!(
                "after the sweep a new scan finds {} not healthy",
                super::stage::flows(after.ghosts())
            ));
            run.failed = stuck;
            run.recovered = all_on_b
                && run.ghosts_left == 0
                && r.answers_from("web-a") == at_update.answers_from("web-a");
            details["recovery_seconds"] = json!(recovery);
        }
    }
    let r = pool.stop();
    let h = healthy.finish();
    let stalls = per_connection_stall(&r);
    n.more(&format!(
        "the pooled client was stuck {} s per connection ({:.1} s in all); healthy connections broken: {} of {} (shop/cart, new ones to web-b)",
        stalls
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        r.total_stuck.as_secs_f64(),
        h.broken,
        h.connections
    ));
    run.client_errors = r.errors.len() as u64;
    run.stall_seconds = r.total_stuck.as_secs_f64();
    run.healthy_broken = h.broken;
    run.recovered &= h.broken == 0;
    details["stall_seconds_per_connection"] = json!(stalls);
    details["answers_by_backend"] = json!(r.per_backend);
    details["errors_by_kind"] = json!(error_map(&r));
    details["window_seconds"] = json!(ctx.window.as_secs_f64());
    run.details = details;
    run.healthy = h;
    stage.finish()?;
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// The total stall of each connection.
fn per_connection_stall(r: &netlab::ClientReport) -> Vec<f64> {
    let mut per = vec![0.0; r.connections.len().max(1)];
    for s in &r.stalls {
        if let Some(slot) = per.get_mut(s.connection) {
            *slot += s.duration.as_secs_f64();
        }
    }
    per
}

/// Error kind → count.
fn error_map(r: &netlab::ClientReport) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for e in &r.errors {
        *m.entry(e.kind.clone()).or_insert(0) += 1;
    }
    m
}

/// "ECONNRESET ×4, EOF ×1".
fn error_kinds(r: &netlab::ClientReport) -> String {
    let m = error_map(r);
    if m.is_empty() {
        return "no errors".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
