//! Act 4, who fills the table (seed 004): one client fires a bounded burst of short HTTP
//! connections and DNS-like queries (each from a fresh socket); then the DNS backend is
//! rescheduled. The burst's entries stay in the node's table long after the traffic stopped —
//! TIME_WAIT for 120 s, UDP for 30 s — and the ones to the rescheduled DNS pod are ghosts.
//!
//! The lab cannot and must not fill the machine's table (`nf_conntrack_max` is global and
//! read-only outside the initial namespace), so the failure shown is the one that leads there:
//! entries held after the traffic ended, ghosts among them, and nothing on the node saying whose
//! they are — all a node offers is `nf_conntrack_count`. Control: the count, and the ghosts still
//! there when the window ends. Fixed: `stats` and a per-service grouping of the dump (through the
//! classifier's own `Index::frontend` lookup, `stats --top`) name the services and states holding the entries,
//! `audit` names the timeouts that keep them there, and `sweep` removes the ghosts.

use std::time::{Duration, Instant};

use ctnetlink::Conntrack;
use netlab::{http_get, plan, udp_query, Endpoint, ServerSpec, Service, ServicePort};
use serde::Serialize;
use serde_json::json;

use super::stage::{pause, vip, Healthy, Stage, DNS_PORT, HTTP_PORT};
use super::{ActInfo, ActReport, Context, Error, Mode, RunReport};
use crate::audit::{self, host, sysctl, Facts};
use crate::policy::Policy;
use crate::stats;

const INFO: ActInfo = (4, "table_fill", "who fills the table", "004");
const WEB_VIP: u8 = 30;
const DNS_VIP: u8 = 54;
/// The burst: short HTTP connections, then DNS-like queries from fresh sockets.
const CONNECTIONS: usize = 200;
const QUERIES: usize = 300;
/// How long the control run watches the table after the burst.
const WATCH: Duration = Duration::from_secs(2);
/// Groups `stats --top` shows.
const TOP: usize = 5;

pub fn run(ctx: &Context) -> Result<ActReport, Error> {
    let started = Instant::now();
    ctx.narrator.line("\nAct 4 — who fills the table (seeds/004): a burst of short connections and DNS-like queries from one client");
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

fn dns(endpoints: Vec<Endpoint>) -> Service {
    Service::new("kube-system", "dns")
        .cluster_ip(plan::vip_v4(DNS_VIP))
        .port(ServicePort::udp("dns", 53, DNS_PORT))
        .endpoints(endpoints)
}

/// The entries in one state and the timeout that holds them.
#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    pub state: String,
    pub entries: u64,
    /// The sysctl whose timeout keeps entries in this state, with its value and the audit's
    /// severity.
    pub timeout: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub audit: Option<String>,
}

fn story(ctx: &Context, mode: Mode) -> Result<RunReport, Error> {
    let n = &ctx.narrator;
    let started = Instant::now();
    n.run(mode.title());
    let mut stage = Stage::new(ctx, INFO.0, mode)?;
    let mut web_eps = Vec::new();
    for name in ["web-0", "web-1"] {
        web_eps.extend(stage.backend(
            name,
            "shop",
            "web",
            ServerSpec::http(HTTP_PORT, 200, name),
        )?);
    }
    let a = stage.backend(
        "dns-a",
        "kube-system",
        "dns",
        ServerSpec::udp_echo(DNS_PORT, "dns-a"),
    )?;
    let cart = stage.cart()?;
    let client = stage.client()?;
    stage.sync(&[web(web_eps.clone()), dns(a), cart.clone()])?;
    let (web_vip, dns_vip) = (vip(WEB_VIP, 80), vip(DNS_VIP, 53));
    n.at(&format!(
        "lab up: node {}; shop/web {web_vip} → web-0, web-1; kube-system/dns {dns_vip}/udp → dns-a",
        stage.node()
    ));
    let mut healthy = Healthy::default();
    healthy.tcp(&client, Stage::cart_vip(), "shop/cart")?;
    let before = entry_count(&stage)?;

    let burst = Instant::now();
    let mut errors = 0u64;
    for _ in 0..CONNECTIONS {
        super::interrupt::check()?;
        errors += u64::from(http_get(&client, web_vip, Duration::from_secs(2)).is_err());
    }
    for i in 0..QUERIES {
        super::interrupt::check()?;
        let answer = udp_query(&client, dns_vip, &format!("q{i}"), Duration::from_secs(1));
        errors += u64::from(answer.is_err());
    }
    n.at(&format!(
        "burst: {CONNECTIONS} short HTTP connections and {QUERIES} DNS-like queries (a fresh socket each) in {:.1} s, {errors} errors",
        burst.elapsed().as_secs_f64()
    ));
    let b = stage.backend(
        "dns-b",
        "kube-system",
        "dns",
        ServerSpec::udp_echo(DNS_PORT, "dns-b"),
    )?;
    stage.sync(&[web(web_eps), dns(b), cart])?;
    stage.lab.delete_pod("dns-a")?;
    n.at("dns-a is rescheduled to dns-b; the traffic has stopped");

    let mut run = RunReport {
        client_errors: errors,
        ..RunReport::default()
    };
    let mut details = json!({ "burst": { "connections": CONNECTIONS, "queries": QUERIES }, "entries_before_burst": before });
    let policy = Policy::default();
    match mode {
        Mode::Control => {
            let held = entry_count(&stage)?;
            n.at(&format!(
                "the node's table holds {held} entries (it held {before} before the burst): nf_conntrack_count is all a node tells"
            ));
            pause(WATCH)?;
            let still = entry_count(&stage)?;
            let pass = stage.scan(&policy)?;
            n.at(&format!(
                "{:.0} s later: still {still} entries, and nothing on the node says whose",
                WATCH.as_secs_f64()
            ));
            stage.narrate(
                &pass,
                "read-only `ghostbuster scan` (the control run removes nothing)",
            );
            run.ghosts_seen = pass.ghosts();
            run.ghosts_left = pass.ghosts();
            run.verdicts = pass.verdicts();
            run.failed = still > before && run.ghosts_left > 0;
            details["entries_held"] = json!(still);
        }
        Mode::Fixed => {
            // `ghostbuster stats --top` with the lab's objects as the cluster view.
            let loaded = stage.cluster_view()?;
            let mut ct = Conntrack::open_in(Some(stage.node()))?;
            let st = stats::collect(&mut ct, false, Some((TOP, Some(&loaded.index))))?;
            n.at(&format!(
                "`ghostbuster stats --top {TOP}`: {} entries ({} DNAT'd, {} unreplied) of {} ({:.3} %)",
                st.entries,
                st.dnat,
                st.unreplied,
                st.max_entries,
                st.utilization * 100.0
            ));
            let top = st
                .top
                .as_ref()
                .ok_or_else(|| Error::Lab("stats --top returned no groups".into()))?;
            n.more("by Service:");
            for s in &top.by_service {
                n.more(&format!(
                    "  {:<30} {:>5}  {:>5.1} %",
                    s.name,
                    s.entries,
                    s.share * 100.0
                ));
            }
            n.more("by source pod:");
            for s in &top.by_source {
                n.more(&format!(
                    "  {:<30} {:>5}  {:>5.1} %",
                    s.name,
                    s.entries,
                    s.share * 100.0
                ));
            }
            let reading = sysctl::read(Some(stage.node())).map_err(|e| match e {
                sysctl::Error::Netns(ct) => Error::Conntrack(ct),
                other => Error::Environment(other.to_string()),
            })?;
            // The lab has no kube-proxy process to ask for its mode; only the sysctls matter here.
            let facts = Facts {
                sysctls: reading.values,
                cpus: host::cpus(),
                peak_entries: Some(u64::from(st.entries)),
                proc_stat: reading.proc_stat,
                kube_proxy_mode: None,
            };
            let findings = audit::check(&facts);
            let mut states: Vec<(String, u64)> = top
                .by_state
                .iter()
                .map(|s| (s.name.clone(), s.entries))
                .collect();
            // UDP has no conntrack state: one row for all of it.
            if let Some(udp) = st.by_protocol.get("udp") {
                states.push(("udp".to_string(), *udp));
            }
            let rows = held_by(&states, &findings);
            n.more(
                "by state, with the timeout that keeps the entries there (`ghostbuster audit`):",
            );
            for r in &rows {
                n.more(&format!(
                    "  {:<30} {:>5}  {}",
                    r.state,
                    r.entries,
                    r.audit.as_deref().unwrap_or("")
                ));
            }
            let unattributed = top
                .by_service
                .iter()
                .filter(|s| s.name.starts_with('('))
                .map(|s| s.entries)
                .sum::<u64>();
            let pass = stage.sweep(&policy)?;
            stage.narrate(&pass, "`ghostbuster sweep`");
            healthy.swept_live += stage.swept_live(&pass);
            run.ghosts_seen = pass.ghosts();
            run.removed = pass.removed();
            run.verdicts = pass.verdicts();
            let after = stage.scan(&policy)?;
            let left = entry_count(&stage)?;
            run.ghosts_left = after.ghosts();
            n.at(&format!(
                "the table holds {left} entries after the sweep ({} before it); a new scan finds {} not healthy",
                st.entries,
                super::stage::flows(after.ghosts())
            ));
            run.failed = run.ghosts_seen > 0;
            run.recovered = run.ghosts_left == 0 && unattributed == 0;
            details["entries"] = json!(st.entries);
            details["entries_after_sweep"] = json!(left);
            details["by_state"] = json!(st.by_state);
            details["top"] = json!(top);
            details["held_by"] = json!(rows);
            details["not_attributed"] = json!(unattributed);
        }
    }
    let h = healthy.finish();
    n.more(&format!(
        "healthy connections broken: {} of {} (shop/cart)",
        h.broken, h.connections
    ));
    run.healthy_broken = h.broken;
    run.recovered &= h.broken == 0;
    run.details = details;
    run.healthy = h;
    stage.finish()?;
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// The namespace's entry count (what `conntrack -C` and `nf_conntrack_count` say).
fn entry_count(stage: &Stage<'_>) -> Result<u64, Error> {
    let mut ct = Conntrack::open_in(Some(stage.node()))?;
    Ok(u64::from(ct.stats()?.entries))
}

/// The sysctl whose timeout holds entries in `state` (`"tcp TIME_WAIT"`).
fn timeout_sysctl(state: &str) -> Option<&'static str> {
    Some(match state {
        "tcp ESTABLISHED" => "nf_conntrack_tcp_timeout_established",
        "tcp SYN_SENT" => "nf_conntrack_tcp_timeout_syn_sent",
        "tcp CLOSE_WAIT" => "nf_conntrack_tcp_timeout_close_wait",
        "tcp TIME_WAIT" => "nf_conntrack_tcp_timeout_time_wait",
        "tcp FIN_WAIT" => "nf_conntrack_tcp_timeout_fin_wait",
        // Single request/response datagrams, like the burst's; streams use udp_timeout_stream.
        "udp" => "nf_conntrack_udp_timeout",
        _ => return None,
    })
}

/// Each state's entries with the audit's finding for the timeout that holds them.
fn held_by(states: &[(String, u64)], findings: &[audit::Finding]) -> Vec<StateRow> {
    states
        .iter()
        .map(|(state, entries)| {
            let finding =
                timeout_sysctl(state).and_then(|name| findings.iter().find(|f| f.check == name));
            let seconds = finding.and_then(|f| match &f.current {
                Some(audit::Value::Int(v)) => Some(*v),
                _ => None,
            });
            StateRow {
                state: state.clone(),
                entries: *entries,
                timeout: finding.map(|f| f.check.to_string()),
                timeout_seconds: seconds,
                audit: finding.map(|f| {
                    format!(
                        "held by {} = {} s [{}]",
                        f.check,
                        seconds.map_or("?".into(), |v| v.to_string()),
                        f.severity
                    )
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_the_burst_leaves_has_its_timeout() {
        for s in ["tcp TIME_WAIT", "tcp ESTABLISHED", "tcp SYN_SENT", "udp"] {
            let name = timeout_sysctl(s).unwrap();
            assert!(sysctl::KEYS.contains(&name), "{name} is not audited");
        }
        assert_eq!(timeout_sysctl("tcp CLOSE"), None);
    }
}
