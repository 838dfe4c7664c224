//! The table sampler actor (a thread: its reads are netlink calls): every 15 s the table's size,
//! limit and per-CPU counters go to the metrics, a crossing of 75 % or 90 % is logged and posted
//! as a Warning Event on the Node ([`UtilizationAlarm`]), and every ten minutes the audit runs
//! again and logs what changed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ctnetlink::Conntrack;

use super::supervisor::{Actor, Shutdown};
use super::table_alarm::UtilizationAlarm;
use crate::audit::{self, Finding};
use crate::kube_proxy::HttpUrl;
use crate::telemetry::metrics::Metrics;

/// How often the table is sampled.
const EVERY: Duration = Duration::from_secs(15);
/// How often the audit runs again.
const AUDIT_EVERY: Duration = Duration::from_secs(600);
/// How often the thread looks at the shutdown while it waits.
const STOP_POLL: Duration = Duration::from_millis(250);

/// What the sampler needs to know.
pub struct Settings {
    pub node_name: String,
    pub netns: Option<String>,
    /// kube-proxy's mode endpoint, for the audit.
    pub kube_proxy_mode: HttpUrl,
    /// The audit's findings at start: the later audits log what changed from them.
    pub audit_at_start: Vec<Finding>,
}

/// What the sampler reads and writes.
pub struct Inputs {
    /// A conntrack handle of its own (the reactor's is busy with dumps).
    pub conntrack: Conntrack,
    pub metrics: Arc<Metrics>,
    /// For the Node's Warning Event.
    pub client: kube::Client,
    pub runtime: tokio::runtime::Handle,
    /// The Services with the most flows, as the last full pass counted them (named in the
    /// warning).
    pub top_services: Arc<Mutex<Vec<(String, u64)>>>,
}

/// Starts the sampler.
pub fn spawn(settings: Settings, inputs: Inputs, shutdown: Shutdown) -> std::io::Result<Actor> {
    Actor::thread("table", move || {
        run(settings, inputs, shutdown);
        Ok(())
    })
}

fn run(settings: Settings, mut inputs: Inputs, shutdown: Shutdown) {
    let mut alarm = UtilizationAlarm::new(Duration::from_secs(1800));
    let mut last_audit = Instant::now();
    let mut previous = settings.audit_at_start.clone();
    while !shutdown.is_set() {
        sample(&settings, &mut inputs, &mut alarm);
        if last_audit.elapsed() >= AUDIT_EVERY {
            last_audit = Instant::now();
            audit_again(&settings, &inputs.metrics, &mut previous);
        }
        let until = Instant::now() + EVERY;
        while Instant::now() < until {
            if shutdown.is_set() {
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
    }
}

/// One sample: the metrics, and the alarm's warning when a threshold was crossed.
fn sample(settings: &Settings, inputs: &mut Inputs, alarm: &mut UtilizationAlarm) {
    if let Ok(g) = inputs.conntrack.stats() {
        inputs.metrics.set_table(g);
        if let Some(t) = alarm.check(g.utilization(), Instant::now()) {
            let top = inputs
                .top_services
                .lock()
                .map(|t| {
                    t.iter()
                        .map(|(s, n)| format!("{s} ({n})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let note = format!(
                "conntrack table on node {} is {:.0}% full ({} of {} entries; over {:.0}%); top services: {}",
                settings.node_name,
                g.utilization() * 100.0,
                g.entries,
                g.max_entries,
                t * 100.0,
                if top.is_empty() { "unknown yet".into() } else { top }
            );
            tracing::warn!(
                threshold = t,
                entries = g.entries,
                max = g.max_entries,
                "{note}"
            );
            inputs.runtime.spawn(super::k8s_events::post_node_warning(
                inputs.client.clone(),
                settings.node_name.clone(),
                "ConntrackTableFilling",
                note,
            ));
        }
    }
    if let Ok(c) = inputs.conntrack.stats_per_cpu() {
        inputs.metrics.update_cpu_stats(&c);
    }
}

/// The audit again: its metrics updated, and a log line for every check that changed.
fn audit_again(settings: &Settings, metrics: &Metrics, previous: &mut Vec<Finding>) {
    let Ok(facts) = audit::gather(settings.netns.as_deref(), &settings.kube_proxy_mode) else {
        return;
    };
    let now = audit::check(&facts);
    for f in &now {
        let before = previous.iter().find(|p| p.check == f.check);
        if before.is_none_or(|b| b.severity != f.severity || b.current != f.current) {
            tracing::warn!(check = %f.check, severity = ?f.severity, current = ?f.current, "audit changed: {}", f.reason);
        }
    }
    metrics.set_sysctl_checks(&now);
    *previous = now;
}
