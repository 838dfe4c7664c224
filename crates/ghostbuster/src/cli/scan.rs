//! `ghostbuster scan` (report) and `ghostbuster sweep` (report, then remove what is removable).
//!
//! Order matters for safety: the cluster view is loaded and validated first (bad input, or an
//! export without a kind the verdicts lean on, exits 2 before the kernel is touched), then one
//! dump is classified, then the circuit breaker weighs what would go against the node's service
//! flows (exit 5, nothing removed, when it is most of them), then the removable flows are deleted
//! exactly (tuple + zone + id), in batches.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use clap::Args;
use ctnetlink::{Conntrack, Filter};
use serde::Serialize;

use super::cluster_args::{ClusterArgs, Need, PolicyArgs};
use super::Output;
use crate::exit::{input_error, CodedError, ExitCode};
use crate::flow_json::FlowRecord;
use crate::render;
use crate::scan::{scan_with, Finding, ScanOptions, ScanReport};
use crate::sweep::{sweep, Outcome, SweepTotals};
use crate::sweep_budget::{self, SweepBudget, Tripped};
use crate::verdict::{Evidence, VerdictKind};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// table (grouped by service), wide (every flow that is not healthy), or json.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Exit 1 when removable flows exist (scan) or remain (sweep).
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Sweep an export that holds no Namespaces: their `ghostbuster.io/mode` opt-outs are then
    /// unknown and not honoured (without this flag such an export is refused).
    #[arg(long)]
    pub ignore_namespace_modes: bool,
    /// Circuit breaker: remove nothing (exit 5) when the view would remove more than this percent
    /// of the node's service flows (and more than 20 flows); 100 turns it off.
    #[arg(long, value_name = "PERCENT", default_value_t = sweep_budget::DEFAULT_MAX_PERCENT, value_parser = sweep_budget::parse_percent)]
    pub max_delete_percent: u8,
}

/// What `sweep` adds to a scan.
#[derive(Debug, Clone, Copy)]
struct SweepMode {
    dry_run: bool,
    ignore_namespace_modes: bool,
    budget: SweepBudget,
}

#[derive(Serialize)]
struct Document<'a> {
    scanned: u64,
    snapshot_time: String,
    /// The shared flow object (`flow_json`), with `result` in a sweep.
    flows: Vec<FlowRecord<'a>>,
    summary: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    sweep: Option<SweepTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<bool>,
    /// The breaker's numbers, in a sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_breaker: Option<BreakerJson>,
    elapsed_seconds: f64,
}

#[derive(Serialize, Clone, Copy)]
struct BreakerJson {
    tripped: bool,
    removable: u64,
    service_flows: u64,
    max_percent: u8,
}

pub fn run_scan(a: ScanArgs) -> anyhow::Result<ExitCode> {
    run(a, None)
}

pub fn run_sweep(a: SweepArgs) -> anyhow::Result<ExitCode> {
    let mode = SweepMode {
        dry_run: a.dry_run,
        ignore_namespace_modes: a.ignore_namespace_modes,
        budget: SweepBudget {
            max_percent: a.max_delete_percent,
        },
    };
    run(a.scan, Some(mode))
}

/// Flows the classifier recognised as service traffic: what the breaker weighs a sweep against.
fn service_flows(report: &ScanReport) -> u64 {
    let not_service = report
        .counts
        .get(&VerdictKind::NotService)
        .copied()
        .unwrap_or(0);
    report.scanned.saturating_sub(not_service)
}

fn run(a: ScanArgs, mode: Option<SweepMode>) -> anyhow::Result<ExitCode> {
    if a.output == Output::Ndjson {
        return Err(input_error(anyhow::anyhow!(
            "scan and sweep print table, wide or json"
        )));
    }
    let policy = a.policy.policy().map_err(input_error)?;
    let need = match mode {
        Some(m) => Need::Sweep {
            ignore_namespace_modes: m.ignore_namespace_modes,
        },
        None => Need::Report,
    };
    let loaded = a.cluster.load_for(need)?;
    let mut ct = Conntrack::open_in(a.cluster.netns.as_deref()).context("open conntrack")?;
    let dumped_at = std::time::Instant::now();
    // With a spare core, decoding and classifying overlap the kernel's walk of its table.
    let opts = ScanOptions {
        tally: false,
        pipelined: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
    };
    let report = scan_with(&mut ct, &loaded.index, &policy, &Filter::default(), opts)
        .context("scan the conntrack table")?;
    if report.dump.malformed > 0 {
        tracing::warn!(malformed = report.dump.malformed, first = ?report.dump.first_error, "entries that did not parse were skipped");
    }
    let sweep_mode = mode.map(|m| m.dry_run);
    let breaker = mode.map(|m| {
        let service_flows = service_flows(&report);
        (
            m.budget.check(report.removable, service_flows),
            BreakerJson {
                tripped: false,
                removable: report.removable,
                service_flows,
                max_percent: m.budget.max_percent,
            },
        )
    });
    let tripped: Option<Tripped> = breaker.and_then(|(r, _)| r.err());
    let (outcomes, totals, first_errno) = match sweep_mode {
        Some(dry) => {
            // A tripped breaker turns the sweep into a report: every flow is kept.
            let hold = dry || tripped.is_some();
            let (o, t, e) =
                sweep(&mut ct, &report.findings, hold, dumped_at).context("delete stale flows")?;
            (Some(o), Some(t), e)
        }
        None => (None, None, None),
    };
    let breaker_json = breaker.map(|(r, j)| BreakerJson {
        tripped: r.is_err(),
        ..j
    });
    let snapshot = loaded.snapshot_time.to_string();
    print(
        &a,
        &report,
        &snapshot,
        outcomes.as_deref(),
        totals,
        sweep_mode,
        breaker_json,
    )?;
    if let Some(t) = tripped {
        if sweep_mode == Some(true) {
            tracing::warn!("dry run: a sweep of this view would stop here. {t}");
        } else {
            return Err(CodedError {
                code: ExitCode::CircuitBreaker,
                error: anyhow::Error::msg(t.to_string()),
            }
            .into());
        }
    }
    if let Some(e) = first_errno {
        tracing::warn!(
            "some deletes failed: {}",
            std::io::Error::from_raw_os_error(e)
        );
    }
    let mut code = ExitCode::Ok;
    if a.exit_code {
        let remaining = match (&outcomes, sweep_mode) {
            (Some(o), Some(false)) => o
                .iter()
                .zip(&report.findings)
                .filter(|(o, f)| f.verdict.removable && **o == Outcome::Failed)
                .count() as u64,
            _ => report.removable,
        };
        if remaining > 0 {
            code = code.max(ExitCode::Found);
        }
    }
    if totals.is_some_and(|t| t.failed > 0) {
        code = code.max(ExitCode::DeleteFailed);
    }
    Ok(code)
}

fn summary(report: &ScanReport) -> BTreeMap<&'static str, u64> {
    let mut s: BTreeMap<&'static str, u64> = report
        .counts
        .iter()
        .filter(|(k, _)| k.is_stale())
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    s.insert("removable", report.removable);
    s
}

fn print(
    a: &ScanArgs,
    report: &ScanReport,
    snapshot: &str,
    outcomes: Option<&[Outcome]>,
    totals: Option<SweepTotals>,
    sweep_mode: Option<bool>,
    breaker: Option<BreakerJson>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match a.output {
        Output::Json | Output::Ndjson => {
            let doc = Document {
                scanned: report.scanned,
                snapshot_time: snapshot.to_string(),
                flows: report
                    .findings
                    .iter()
                    .enumerate()
                    .map(|(i, f)| match outcomes {
                        Some(o) => FlowRecord::new(f).result(o[i]),
                        None => FlowRecord::new(f),
                    })
                    .collect(),
                summary: summary(report),
                sweep: totals,
                dry_run: sweep_mode,
                circuit_breaker: breaker,
                elapsed_seconds: report.elapsed.as_secs_f64(),
            };
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        Output::Table => print_table(&mut out, report)?,
        Output::Wide => print_wide(&mut out, report, outcomes)?,
    }
    if a.output != Output::Json {
        print_footer(&mut out, report, snapshot, totals, sweep_mode)?;
        if let Some(b) = breaker.filter(|b| b.tripped) {
            writeln!(
                out,
                "circuit breaker: {} of {} service flows would go (more than {} %): nothing was \
                 removed",
                b.removable, b.service_flows, b.max_percent
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

type GroupKey = (String, String, VerdictKind);

/// One line of the grouped table: a service port and verdict.
#[derive(Default)]
struct Group {
    flows: u64,
    removable: u64,
    example: String,
    evidence: Vec<Evidence>,
    kept: Option<&'static str>,
}

fn group_key(f: &Finding) -> GroupKey {
    let v = &f.verdict;
    match &v.service {
        Some(s) => (
            format!("{}/{}", s.namespace, s.name),
            if s.port_name.is_empty() {
                format!("{}/{}", s.port, s.protocol)
            } else {
                format!("{}/{} ({})", s.port, s.protocol, s.port_name)
            },
            v.kind,
        ),
        None => (
            "(service gone)".to_string(),
            format!(
                "{}/{}",
                f.flow.orig.dport().unwrap_or(0),
                f.flow.proto_name()
            ),
            v.kind,
        ),
    }
}

fn print_table(out: &mut impl Write, report: &ScanReport) -> std::io::Result<()> {
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for f in &report.findings {
        let v = &f.verdict;
        let g = groups.entry(group_key(f)).or_default();
        g.flows += 1;
        g.removable += v.removable as u64;
        if g.example.is_empty() {
            g.example = v
                .backend
                .map(|b| render::endpoint(&b.ip, Some(b.port)))
                .unwrap_or_else(|| render::endpoint(&f.flow.orig.dst, f.flow.orig.dport()));
        }
        for e in v.evidence.iter() {
            if !g.evidence.contains(&e) {
                g.evidence.push(e);
            }
        }
        if !v.removable && g.kept.is_none() {
            g.kept = v.kept_because.map(|k| k.explain());
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<36} {:<22} {:<14} {:>7} {:>9}  {:<28} EVIDENCE",
        "SERVICE", "PORT", "VERDICT", "FLOWS", "REMOVABLE", "BACKEND (EXAMPLE)"
    )?;
    let mut kept_notes = Vec::new();
    for ((svc, port, kind), g) in &groups {
        let ev: Vec<&str> = g.evidence.iter().map(|e| e.as_str()).collect();
        writeln!(
            out,
            "{svc:<36} {port:<22} {:<14} {:>7} {:>9}  {:<28} {}",
            kind.as_str(),
            g.flows,
            g.removable,
            g.example,
            ev.join(",")
        )?;
        if let Some(k) = g.kept {
            if !kept_notes.contains(&k) {
                kept_notes.push(k);
            }
        }
    }
    for k in kept_notes {
        writeln!(out, "note: some flows are kept: {k}")?;
    }
    Ok(())
}

fn print_wide(
    out: &mut impl Write,
    report: &ScanReport,
    outcomes: Option<&[Outcome]>,
) -> std::io::Result<()> {
    if report.findings.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<9} {:<5} {:<45} {:<28} {:<30} EVIDENCE / WHY",
        "VERDICT", "ACTION", "PROTO", "ORIGINAL", "BACKEND", "SERVICE"
    )?;
    for (i, f) in report.findings.iter().enumerate() {
        let v = &f.verdict;
        let action = match outcomes {
            Some(o) => o[i].as_str(),
            None if v.removable => "remove",
            None => "keep",
        };
        let o = &f.flow.orig;
        let svc = v
            .service
            .as_ref()
            .map(|s| format!("{}/{}:{}", s.namespace, s.name, s.port))
            .unwrap_or_else(|| "-".into());
        let ev: Vec<&str> = v.evidence.iter().map(|e| e.as_str()).collect();
        writeln!(
            out,
            "{:<14} {:<9} {:<5} {:<45} {:<28} {:<30} {}{}",
            v.kind.as_str(),
            action,
            f.flow.proto_name(),
            format!(
                "{} -> {}",
                render::endpoint(&o.src, o.sport()),
                render::endpoint(&o.dst, o.dport())
            ),
            v.backend
                .map(|b| render::endpoint(&b.ip, Some(b.port)))
                .unwrap_or_else(|| "-".into()),
            svc,
            ev.join(","),
            v.kept_because
                .map(|k| format!(" (kept: {})", k.explain()))
                .unwrap_or_default(),
        )?;
    }
    Ok(())
}

fn print_footer(
    out: &mut impl Write,
    report: &ScanReport,
    snapshot: &str,
    totals: Option<SweepTotals>,
    sweep_mode: Option<bool>,
) -> std::io::Result<()> {
    let stale: u64 = report
        .counts
        .iter()
        .filter(|(k, _)| k.is_stale())
        .map(|(_, n)| n)
        .sum();
    let healthy = report
        .counts
        .get(&VerdictKind::Healthy)
        .copied()
        .unwrap_or(0);
    writeln!(
        out,
        "\nscanned {} flows in {:.2}s (snapshot {snapshot}): {healthy} healthy service flows, {stale} not healthy, {} removable",
        report.scanned,
        report.elapsed.as_secs_f64(),
        report.removable
    )?;
    match (sweep_mode, totals) {
        (Some(true), _) => writeln!(out, "dry run: nothing was removed")?,
        (Some(false), Some(t)) => writeln!(
            out,
            "removed {} flows ({} already gone, {} failed)",
            t.deleted, t.already_gone, t.failed
        )?,
        _ => {}
    }
    Ok(())
}
