//! The soak's invariants, judged at the end from the timeline ([`World`]), the clients'
//! failures, the table's history, the agent's deletes, kube-proxy's syncs and the agent's samples.
//! Each violation names the scenario it happened in, so a failing run says which part broke.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use netlab::SyncRecord;

use super::observe::{AgentDelete, Samples, TableLog};
use super::traffic::Failure;
use super::world::{PodRec, World};

/// A fault window: while it lasts (and until `end`), evidence may reach the agent late.
#[derive(Debug, Clone)]
pub struct Fault {
    pub name: String,
    pub start: f64,
    pub end: f64,
}

/// Everything the judge reads.
pub struct Inputs<'a> {
    pub world: &'a World,
    pub failures: &'a [Failure],
    pub table: &'a TableLog,
    pub deletes: &'a [AgentDelete],
    pub syncs: &'a [SyncRecord],
    pub samples: &'a Samples,
    pub faults: &'a [Fault],
    /// The agent's "which pods hold this IP?" questions to the API server: (when, IP).
    pub ip_questions: &'a [(f64, std::net::IpAddr)],
    pub started: f64,
    pub ended: f64,
    pub reap_slack: Duration,
    pub metrics_limit: Duration,
    pub rss_percent: f64,
}

/// One invariant's outcome.
#[derive(Debug, Default)]
pub struct Row {
    pub name: &'static str,
    pub measured: String,
    pub limit: String,
    pub ok: bool,
    /// Scenario → violations.
    pub by_scenario: BTreeMap<String, usize>,
    /// A few examples.
    pub examples: Vec<String>,
}

impl Row {
    fn violation(&mut self, scenario: &str, example: String) {
        *self.by_scenario.entry(scenario.to_string()).or_default() += 1;
        if self.examples.len() < 8 {
            self.examples.push(example);
        }
    }
}

/// The name of the reaping-deadline invariant.
pub const REAPED: &str = "ghosts reaped within gate + slack";

pub struct Verdict {
    pub rows: Vec<Row>,
    pub facts: Vec<(String, String)>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// Every safety invariant holds (no live connection broken, no delete with the gate closed,
    /// no live flow deleted), and so do RSS and `/metrics`; the reaping deadline (gate + slack)
    /// too unless `strict_reap` is false (`SOAK_STRICT_REAP=0`, for a look at a run whose
    /// lateness is being investigated).
    pub fn ok_with(&self, strict_reap: bool) -> bool {
        self.rows
            .iter()
            .all(|r| r.ok || (!strict_reap && r.name == REAPED))
    }

    /// The table, as the test prints it.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n=== churn soak: invariants ===");
        let _ = writeln!(
            s,
            "| {:<52} | {:<44} | {:<12} | {:<4} | violations by scenario",
            "invariant", "measured", "limit", "ok"
        );
        let _ = writeln!(s, "|{}|", "-".repeat(150));
        for r in &self.rows {
            let by: Vec<String> = r
                .by_scenario
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                s,
                "| {:<52} | {:<44} | {:<12} | {:<4} | {}",
                r.name,
                r.measured,
                r.limit,
                if r.ok { "yes" } else { "NO" },
                by.join(", ")
            );
        }
        let _ = writeln!(s, "\n=== churn soak: the run ===");
        for (k, v) in &self.facts {
            let _ = writeln!(s, "  {k:<40} {v}");
        }
        for r in self.rows.iter().filter(|r| !r.examples.is_empty()) {
            let _ = writeln!(s, "\n--- {} (examples) ---", r.name);
            for e in &r.examples {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }
}

/// When the gate for kube-proxy change `seq` opened: the end of the first successful sync whose
/// snapshot held it (it began after the change was queued).
pub fn gate_open(syncs: &[SyncRecord], seq: u64) -> Option<f64> {
    syncs
        .iter()
        .filter(|s| s.ok && s.covers >= seq)
        .map(|s| s.end)
        .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.min(e))))
}

/// The agent's `--clock-skew` in the soak (its default; `SOAK_AGENT_ARGS` may not change it).
const AGENT_CLOCK_SKEW_SECS: f64 = 2.0;

/// How long after an API fault ends the agent may take to apply what the fault hid (a silent
/// watch's backlog arrives in one burst, a relist takes its pages): its gate waits for a sync
/// that began after it *applied* the change, so a sync that began in between does not count.
const AGENT_LEARNS_SECS: f64 = 0.5;

/// The end of the first successful sync covering change `seq` that began at or after `t`.
fn sync_after(syncs: &[SyncRecord], seq: u64, t: f64) -> Option<f64> {
    syncs
        .iter()
        .filter(|s| s.ok && s.covers >= seq && s.start >= t)
        .map(|s| s.end)
        .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.min(e))))
}

fn state_at(p: &PodRec, served_now: bool, t: f64) -> &'static str {
    if p.terminating.is_some_and(|x| x <= t) {
        "draining"
    } else if !served_now {
        "deselected"
    } else {
        "healthy"
    }
}

/// How a violation names a client's failure: `12.3s tcp pool-a conn 4`, its time since the start.
fn failure_of(f: &Failure, started: f64) -> String {
    format!(
        "{:.1}s {} {} conn {}",
        f.t - started,
        f.proto,
        f.group,
        f.conn
    )
}

/// How a violation names a delete: `12.3s tcp 203.0.113.7:80 -> <to>`, its time since the start.
fn delete_of(d: &AgentDelete, started: f64, to: impl std::fmt::Display) -> String {
    format!("{:.1}s {} {} -> {to}", d.t - started, d.proto, d.vip)
}

fn in_window(w: &[(f64, Option<f64>)], t: f64, pad: f64) -> bool {
    w.iter()
        .any(|(a, b)| *a - pad <= t && b.is_none_or(|b| t <= b + pad))
}

pub fn judge(i: &Inputs<'_>) -> Verdict {
    let w = i.world;
    let svc_of_group = |g: &str| w.svcs.iter().position(|s| s.key() == g);
    let pod_of_lab = |n: &str| w.pods.iter().position(|p| p.lab.as_deref() == Some(n));
    let fault_at = |t: f64| -> Vec<&str> {
        i.faults
            .iter()
            .filter(|f| f.start - 1.0 <= t && t <= f.end + 1.0)
            .map(|f| f.name.as_str())
            .collect()
    };
    let label = |base: &str, t: f64| -> String {
        let f = fault_at(t);
        if f.is_empty() {
            base.to_string()
        } else {
            format!("{base}+{}", f.join("+"))
        }
    };

    // 1. Connections of live backends never break.
    let mut broken = Row {
        name: "healthy/draining/deselected connections broken",
        limit: "0".into(),
        ..Row::default()
    };
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut n_broken = 0;
    for f in i.failures {
        let Some(s) = svc_of_group(&f.group) else {
            continue;
        };
        let svc = &w.svcs[s];
        let svc_gone = svc.deleted.is_some_and(|d| d <= f.t);
        match f.backend.as_deref().and_then(pod_of_lab) {
            Some(p) => {
                let pod = &w.pods[p];
                if pod.gone.is_some_and(|(g, _)| g <= f.t + 0.05) {
                    *expected
                        .entry("backend gone (ghost or shut down)")
                        .or_default() += 1;
                    continue;
                }
                if svc_gone && f.proto == "udp" {
                    *expected.entry("udp to a deleted Service").or_default() += 1;
                    continue;
                }
                let served = w.served_at(p, s, f.t);
                let st = state_at(pod, served, f.t);
                n_broken += 1;
                broken.violation(
                    &label(&pod.scenario, f.t),
                    format!(
                        "{} to {}/{} ({st}): {}",
                        failure_of(f, i.started),
                        pod.ns,
                        pod.name,
                        f.kind
                    ),
                );
            }
            None => {
                if svc_gone || in_window(&svc.empty, f.t, 3.0) {
                    *expected.entry("no endpoint / Service deleted").or_default() += 1;
                    continue;
                }
                n_broken += 1;
                broken.violation(
                    &label(&svc.scenario, f.t),
                    format!("{} (no answer yet): {}", failure_of(f, i.started), f.kind),
                );
            }
        }
    }
    broken.ok = n_broken == 0;
    broken.measured = format!("{n_broken} of {} failures", i.failures.len());

    // 2. Ghosts with evidence go within gate + slack.
    let slack = i.reap_slack.as_secs_f64();
    let mut reaped_row = Row {
        name: REAPED,
        limit: format!("gate + {:.1}s", slack),
        ..Row::default()
    };
    let last_poll = i.table.polls.last().copied().unwrap_or(0.0);
    let (mut ghosts, mut in_time, mut flows) = (0, 0, 0);
    let mut lateness: Vec<f64> = Vec::new();
    for (p, pod) in w.pods.iter().enumerate() {
        let (Some((tg, _)), Some(ta), Some(seq)) = (pod.gone, pod.api_deleted, pod.del_seq) else {
            continue;
        };
        let vips: BTreeSet<std::net::IpAddr> = w
            .services_of(p)
            .into_iter()
            .map(|s| std::net::IpAddr::V4(w.svcs[s].vip))
            .collect();
        let entries: Vec<_> = i
            .table
            .all()
            .filter(|e| e.backend == pod.ip && vips.contains(&e.vip.ip()))
            .filter(|e| e.first <= tg + 0.2 && e.last >= tg - 0.15 && e.was_open())
            .collect();
        if entries.is_empty() {
            continue;
        }
        let t_c = ta;
        let Some(gate) = gate_open(i.syncs, seq) else {
            // kube-proxy never programmed the change before the end: nothing may go.
            continue;
        };
        // A change an API fault hid (a 410, a dropped, silent or hung watch or GET) reaches the
        // agent when the fault ends at the latest, and the agent's gate then waits for a sync
        // that began after it learned of it (rule 2, as the agent can see it): the deadline
        // counts from the first successful sync that began after the fault.
        let hidden_until = i
            .faults
            .iter()
            .filter(|f| f.name.starts_with("api_") && f.start - 1.0 <= t_c && t_c <= f.end)
            .map(|f| f.end)
            .fold(None, |a: Option<f64>, e| {
                Some(a.map_or(e, |a: f64| a.max(e)))
            });
        let gate = match hidden_until {
            None => gate,
            Some(h) => match sync_after(i.syncs, seq, h + AGENT_LEARNS_SECS) {
                Some(g) => g.max(gate),
                // No sync began after the fault before the run ended: nothing may go yet.
                None => continue,
            },
        };
        // A ghost the agent has no tombstone for (a pod made and deleted while the slice watch
        // was down) is proved gone by the API server's "no pod holds this IP" — and that answer
        // is when the agent learnt of the change: its gate waits for a sync that began after
        // the question (docs/detection.md). The first question after the deletion, if the
        // agent asked one, is that moment.
        let asked = i
            .ip_questions
            .iter()
            .filter(|(t, ip)| *ip == pod.ip && *t >= t_c)
            .map(|(t, _)| *t)
            .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.min(t))));
        let gate = match asked {
            None => gate,
            // The agent's clock reads the time as it sends, the fake as it receives.
            Some(q) => match sync_after(i.syncs, seq, q - 0.05) {
                Some(g) => g.max(gate),
                None => continue,
            },
        };
        // Such an answer proves a flow gone only when taken `--clock-skew` after the flow
        // began: such a ghost may take that much longer.
        let evidence_extra = if hidden_until.is_some() {
            AGENT_CLOCK_SKEW_SECS
        } else {
            0.0
        };
        let fault_end = i
            .faults
            .iter()
            .filter(|f| f.start - 1.0 <= t_c && t_c <= f.end)
            .map(|f| f.end)
            .fold(gate, f64::max);
        ghosts += 1;
        flows += entries.len();
        let deadline = fault_end + slack + evidence_extra;
        let reaped = entries
            .iter()
            .map(|e| {
                if e.last >= last_poll - 1e-6 {
                    None
                } else {
                    i.table.next_poll_after(e.last)
                }
            })
            .try_fold(0.0f64, |a, r| r.map(|r| a.max(r)));
        match reaped {
            Some(r) if r <= deadline => {
                in_time += 1;
                lateness.push(r - gate);
            }
            Some(r) => {
                lateness.push(r - gate);
                reaped_row.violation(
                    &label(&pod.scenario, t_c),
                    format!(
                        "{:.1}s {}/{} {} ({} flows): reaped {:.2}s after the gate opened at {:.1}s (deadline {:.2}s)",
                        t_c - i.started,
                        pod.ns,
                        pod.name,
                        pod.ip,
                        entries.len(),
                        r - gate,
                        gate - i.started,
                        deadline - gate
                    ),
                );
            }
            None => reaped_row.violation(
                &label(&pod.scenario, t_c),
                format!(
                    "{:.1}s {}/{} {} ({} flows): never reaped (gate opened at {:.1}s)",
                    t_c - i.started,
                    pod.ns,
                    pod.name,
                    pod.ip,
                    entries.len(),
                    gate - i.started
                ),
            ),
        }
    }
    lateness.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if lateness.is_empty() {
            0.0
        } else {
            lateness[((lateness.len() - 1) as f64 * q) as usize]
        }
    };
    reaped_row.ok = in_time == ghosts;
    reaped_row.measured = format!(
        "{in_time}/{ghosts} pods ({flows} flows); after gate p50 {:.2}s max {:.2}s",
        pct(0.5),
        pct(1.0)
    );

    // 3. and 4. Every delete: of a flow whose backend is gone (or UDP of a deleted Service),
    // and only once kube-proxy programmed the change.
    let mut gate_row = Row {
        name: "deletes while the gate was closed",
        limit: "0".into(),
        ..Row::default()
    };
    let mut live_row = Row {
        name: "live (healthy/draining/deselected) flows deleted",
        limit: "0".into(),
        ..Row::default()
    };
    let deleted: Vec<&AgentDelete> = i.deletes.iter().filter(|d| d.result == "deleted").collect();
    let (mut early, mut live, mut unmatched) = (0, 0, 0);
    for d in &deleted {
        // The flow belongs to the pod that held the address when it began (an address is
        // reused at once after a graceful exit).
        let began = d.start.unwrap_or(d.t);
        let cand = w
            .pods
            .iter()
            .enumerate()
            .filter(|(p, pod)| {
                pod.ip == d.backend
                    && pod.born <= began + 0.05
                    && w.services_of(*p)
                        .iter()
                        .any(|s| std::net::IpAddr::V4(w.svcs[*s].vip) == d.vip.ip())
            })
            .max_by(|a, b| a.1.born.total_cmp(&b.1.born));
        let Some((p, pod)) = cand else {
            unmatched += 1;
            live_row.violation(
                "unknown",
                format!(
                    "{} ({}): no such backend",
                    delete_of(d, i.started, d.backend),
                    d.verdict
                ),
            );
            continue;
        };
        let s = w
            .services_of(p)
            .into_iter()
            .find(|s| std::net::IpAddr::V4(w.svcs[*s].vip) == d.vip.ip())
            .expect("matched above");
        let svc = &w.svcs[s];
        let to = format!("{}/{}", pod.ns, pod.name);
        let alive = pod.gone.is_none_or(|(g, _)| g > d.t);
        let svc_deleted = svc.deleted.filter(|x| *x <= d.t).zip(svc.del_seq);
        let pod_deleted = pod.api_deleted.filter(|x| *x <= d.t).zip(pod.del_seq);
        let t_c = if alive {
            match svc_deleted {
                Some(x) if d.proto == "udp" => Some(x),
                _ => {
                    live += 1;
                    let st = state_at(pod, w.served_at(p, s, d.t), d.t);
                    live_row.violation(
                        &label(&pod.scenario, d.t),
                        format!(
                            "{} ({st}, alive) deleted as {}",
                            delete_of(d, i.started, &to),
                            d.verdict
                        ),
                    );
                    continue;
                }
            }
        } else {
            [pod_deleted, svc_deleted].into_iter().flatten().fold(
                None,
                |a: Option<(f64, u64)>, x| match a {
                    Some(a) if a.0 <= x.0 => Some(a),
                    _ => Some(x),
                },
            )
        };
        let Some((t_c, seq)) = t_c else {
            early += 1;
            gate_row.violation(
                &label(&pod.scenario, d.t),
                format!(
                    "{} ({}, flow began {}): deleted before the API said anything",
                    delete_of(d, i.started, &to),
                    d.verdict,
                    d.start
                        .map_or("at an unknown time".to_string(), |s| format!(
                            "{:.2}s",
                            s - i.started
                        ))
                ),
            );
            continue;
        };
        match gate_open(i.syncs, seq) {
            Some(g) if g <= d.t => {}
            g => {
                early += 1;
                gate_row.violation(
                    &label(&pod.scenario, d.t),
                    format!(
                        "{} ({}): deleted {:.2}s after the change, gate opened {}",
                        delete_of(d, i.started, &to),
                        d.verdict,
                        d.t - t_c,
                        g.map_or("never".to_string(), |g| format!("{:.2}s after it", g - t_c))
                    ),
                );
            }
        }
    }
    gate_row.ok = early == 0;
    gate_row.measured = format!("{early} of {} deletes", deleted.len());
    live_row.ok = live == 0 && unmatched == 0;
    live_row.measured = format!(
        "{live} (+{unmatched} unmatched) of {} deletes",
        deleted.len()
    );

    // 5. RSS flat after warm-up.
    let warm = i.started + (0.25 * (i.ended - i.started)).max(30.0);
    let rss: Vec<u64> = i
        .samples
        .rss
        .iter()
        .filter(|(t, _)| *t >= warm)
        .map(|(_, r)| *r)
        .collect();
    let mut rss_row = Row {
        name: "agent RSS after warm-up: max - min",
        limit: format!("<= {:.0}% of min", i.rss_percent),
        ..Row::default()
    };
    match (rss.iter().min(), rss.iter().max()) {
        (Some(&lo), Some(&hi)) if lo > 0 => {
            let grow = (hi - lo) as f64 * 100.0 / lo as f64;
            rss_row.ok = grow <= i.rss_percent;
            rss_row.measured = format!(
                "{:.1}% ({:.1}-{:.1} MiB, {} samples)",
                grow,
                lo as f64 / 1024.0,
                hi as f64 / 1024.0,
                rss.len()
            );
            if !rss_row.ok {
                rss_row.violation("all", format!("RSS {lo} KiB -> {hi} KiB"));
            }
        }
        _ => {
            rss_row.measured = "no samples after warm-up".into();
            rss_row.ok = false;
        }
    }

    // 6. /metrics answers fast, throughout.
    let mut m_row = Row {
        name: "/metrics answer time",
        limit: format!("< {} ms", i.metrics_limit.as_millis()),
        ..Row::default()
    };
    let mut times: Vec<Duration> = Vec::new();
    let mut missing = 0;
    for (t, d) in &i.samples.metrics {
        match d {
            Some(d) => {
                times.push(*d);
                if *d >= i.metrics_limit {
                    m_row.violation(
                        &label("metrics", *t),
                        format!("{:.1}s: {} ms", t - i.started, d.as_millis()),
                    );
                }
            }
            None => {
                missing += 1;
                m_row.violation(
                    &label("metrics", *t),
                    format!("{:.1}s: no answer", t - i.started),
                );
            }
        }
    }
    times.sort();
    let slow = times.iter().filter(|d| **d >= i.metrics_limit).count();
    m_row.ok = slow == 0 && missing == 0 && !times.is_empty();
    m_row.measured = format!(
        "max {} ms, p50 {} ms, {} scrapes, {} unanswered",
        times.last().map_or(0, |d| d.as_millis()),
        times.get(times.len() / 2).map_or(0, |d| d.as_millis()),
        times.len(),
        missing
    );

    let mut facts = vec![
        (
            "duration".to_string(),
            format!("{:.0}s", i.ended - i.started),
        ),
        (
            "kube-proxy syncs (ok / failed)".to_string(),
            format!(
                "{} / {}",
                i.syncs.iter().filter(|s| s.ok).count(),
                i.syncs.iter().filter(|s| !s.ok).count()
            ),
        ),
        (
            "API changes published".to_string(),
            w.changes.len().to_string(),
        ),
        ("agent deletes".to_string(), deleted.len().to_string()),
        (
            "client failures (all)".to_string(),
            i.failures.len().to_string(),
        ),
    ];
    for (k, v) in expected {
        facts.push((format!("  expected: {k}"), v.to_string()));
    }
    for f in i.faults {
        facts.push((
            format!("fault {}", f.name),
            format!("{:.1}s .. {:.1}s", f.start - i.started, f.end - i.started),
        ));
    }
    Verdict {
        rows: vec![broken, reaped_row, gate_row, live_row, rss_row, m_row],
        facts,
    }
}
