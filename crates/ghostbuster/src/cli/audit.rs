//! `ghostbuster audit`: conntrack sysctls against what a Kubernetes node needs.
//!
//! Gathers [`Facts`] (sysctls of the namespace, entry count over netlink, CPU count, kube-proxy's
//! mode), runs the pure [`audit::check`], and prints a table or JSON; `--emit-sysctl` writes the
//! fixes as `/etc/sysctl.d` files. Exit 3 when the kernel has no conntrack or the namespace cannot
//! be entered, 1 with `--exit-code` when a check is warn or critical.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::audit::{self, emit, sysctl, Facts, Finding, Severity, Summary};
use crate::exit::{input_error, CodedError, ExitCode};
use crate::kube_proxy;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Network namespace (a name under /run/netns, or a path such as /proc/PID/ns/net).
    #[arg(long)]
    pub netns: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: AuditOutput,
    /// Write the recommended settings into DIR as /etc/sysctl.d files: 90-ghostbuster-namespace.conf
    /// (apply inside the namespace) and 90-ghostbuster-global.conf (apply on the host).
    #[arg(long, value_name = "DIR")]
    pub emit_sysctl: Option<PathBuf>,
    /// Exit with 1 when any check is warn or critical.
    #[arg(long)]
    pub exit_code: bool,
    /// Where kube-proxy tells its mode; the mode is "unknown" when nothing answers within 1 s.
    #[arg(long, value_name = "URL", default_value = kube_proxy::DEFAULT_PROXY_MODE_URL)]
    pub kube_proxy_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditOutput {
    Table,
    Json,
}

/// The `audit -o json` document.
#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub checks: Vec<Finding>,
    pub summary: Summary,
    pub facts: FactsReport,
}

/// The host facts behind the checks, as reported in JSON.
#[derive(Debug, Serialize)]
pub struct FactsReport {
    /// The audited namespace (`null`: the caller's own).
    pub netns: Option<String>,
    pub cpus: u32,
    /// Entries in the namespace's table when audited (`null` if unknown).
    pub entries: Option<u64>,
    pub kube_proxy_url: String,
    /// kube-proxy's mode, or "unknown".
    pub kube_proxy_mode: String,
    pub proc_net_stat_nf_conntrack: bool,
}

/// Reads everything the checks need ([`audit::gather`]). Errors carry their exit code (2 bad
/// URL, 3 environment).
pub fn gather(a: &AuditArgs) -> anyhow::Result<Facts> {
    let url = kube_proxy::HttpUrl::parse(&a.kube_proxy_url)
        .map_err(|e| input_error(anyhow::anyhow!("--kube-proxy-url {e}")))?;
    audit::gather(a.netns.as_deref(), &url).map_err(read_error)
}

/// Both ways reading can fail are the environment's fault (exit 3): no conntrack in this kernel,
/// or a namespace that cannot be entered. The ctnetlink error is kept as itself so that
/// [`crate::exit::code_of`] sees it.
fn read_error(e: sysctl::Error) -> anyhow::Error {
    match e {
        sysctl::Error::Netns(ct) => anyhow::Error::new(ct),
        e @ sysctl::Error::NoConntrack { .. } => CodedError {
            code: ExitCode::Environment,
            error: e.into(),
        }
        .into(),
    }
}

pub fn run(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let facts = gather(&a)?;
    let checks = audit::check(&facts);
    let summary = Summary::of(&checks);
    let audited = match &a.netns {
        Some(n) => format!("network namespace {n:?}"),
        None => "the caller's network namespace".to_string(),
    };
    if let Some(dir) = &a.emit_sysctl {
        let files = emit::render(&checks, &audited);
        let (ns, global) = emit::write(dir, &files).map_err(|e| CodedError {
            code: ExitCode::Environment,
            error: anyhow::Error::new(e)
                .context(format!("write sysctl files into {}", dir.display())),
        })?;
        eprintln!(
            "wrote {} ({} settings) and {} ({} settings)",
            ns.display(),
            files.namespace_keys,
            global.display(),
            files.global_keys
        );
    }
    let report = AuditReport {
        checks,
        summary,
        facts: FactsReport {
            netns: a.netns.clone(),
            cpus: facts.cpus,
            entries: facts.peak_entries,
            kube_proxy_url: a.kube_proxy_url.clone(),
            kube_proxy_mode: facts
                .kube_proxy_mode
                .clone()
                .unwrap_or_else(|| "unknown".to_string()),
            proc_net_stat_nf_conntrack: facts.proc_stat,
        },
    };
    let stdout = std::io::stdout();
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = stdout.lock();
    let written = match a.output {
        AuditOutput::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out)),
        AuditOutput::Table => write_table(&mut out, &report, &audited, color),
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("write output")?,
    }
    if a.exit_code && summary.worst >= Severity::Warn {
        return Ok(ExitCode::Found);
    }
    Ok(ExitCode::Ok)
}

fn paint(s: &str, sev: Severity, color: bool) -> String {
    if !color {
        return s.to_string();
    }
    let code = match sev {
        Severity::Ok => "32",
        Severity::Info => "36",
        Severity::Warn => "33",
        Severity::Critical => "1;31",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// One line per check (severity, name, scope, current, recommended, reason), then the summary.
pub fn write_table(
    out: &mut impl Write,
    r: &AuditReport,
    audited: &str,
    color: bool,
) -> std::io::Result<()> {
    let name_w = r
        .checks
        .iter()
        .map(|c| c.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let show = |v: &Option<audit::Value>| {
        v.as_ref()
            .map_or_else(|| "-".to_string(), |v| v.to_string())
    };
    writeln!(
        out,
        "{:<8}  {:<name_w$}  {:<9}  {:>8}  {:>11}  REASON",
        "SEVERITY", "CHECK", "SCOPE", "CURRENT", "RECOMMENDED"
    )?;
    for c in &r.checks {
        // Pad before painting: escape codes have no width.
        let sev = paint(&format!("{:<8}", c.severity.as_str()), c.severity, color);
        writeln!(
            out,
            "{sev}  {:<name_w$}  {:<9}  {:>8}  {:>11}  {}",
            c.check,
            c.scope.as_str(),
            show(&c.current),
            show(&c.recommended),
            c.reason
        )?;
    }
    let s = &r.summary;
    let f = &r.facts;
    writeln!(
        out,
        "\n{audited}: {} checks: {} ok, {} info, {} warn, {} critical (cpus {}, entries {}, kube-proxy {})",
        s.checks,
        s.ok,
        s.info,
        s.warn,
        s.critical,
        f.cpus,
        f.entries.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        f.kube_proxy_mode
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Scope, Value};

    fn report(color_sev: Severity) -> AuditReport {
        let checks = vec![Finding {
            check: "nf_conntrack_tcp_be_liberal",
            scope: Scope::Namespace,
            current: Some(Value::Int(0)),
            recommended: Some(Value::Int(1)),
            severity: color_sev,
            reason: "why.".into(),
            source: "seed 002",
        }];
        AuditReport {
            summary: Summary::of(&checks),
            checks,
            facts: FactsReport {
                netns: None,
                cpus: 2,
                entries: None,
                kube_proxy_url: kube_proxy::DEFAULT_PROXY_MODE_URL.into(),
                kube_proxy_mode: "unknown".into(),
                proc_net_stat_nf_conntrack: true,
            },
        }
    }

    #[test]
    fn table_has_no_escape_codes_unless_asked() {
        let mut plain = Vec::new();
        write_table(&mut plain, &report(Severity::Warn), "here", false).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(!plain.contains('\x1b'));
        assert!(
            plain.contains(
                "warn      nf_conntrack_tcp_be_liberal  namespace         0            1  why."
            ),
            "{plain}"
        );
        assert!(
            plain.contains("1 checks: 0 ok, 0 info, 1 warn, 0 critical"),
            "{plain}"
        );
        let mut colored = Vec::new();
        write_table(&mut colored, &report(Severity::Critical), "here", true).unwrap();
        let colored = String::from_utf8(colored).unwrap();
        assert!(colored.contains("\x1b[1;31mcritical\x1b[0m"), "{colored}");
    }

    #[test]
    fn no_conntrack_and_bad_namespaces_exit_3() {
        let missing = sysctl::require_conntrack(
            sysctl::Reading::default(),
            std::path::Path::new(sysctl::DIR),
            None,
        )
        .unwrap_err();
        let e = read_error(missing);
        assert_eq!(crate::exit::code_of(&e), ExitCode::Environment);
        assert!(format!("{e:#}").contains("modprobe nf_conntrack"), "{e:#}");
        let ns = sysctl::read(Some("/nonexistent/ghostbuster-audit")).unwrap_err();
        assert_eq!(crate::exit::code_of(&read_error(ns)), ExitCode::Environment);
    }

    #[test]
    fn json_document_shape() {
        let v = serde_json::to_value(report(Severity::Warn)).unwrap();
        let top: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(top, ["checks", "facts", "summary"]);
        assert_eq!(v["summary"]["warn"], 1);
        assert_eq!(v["summary"]["worst"], "warn");
        assert_eq!(v["facts"]["entries"], serde_json::Value::Null);
        assert_eq!(v["checks"][0]["check"], "nf_conntrack_tcp_be_liberal");
    }
}
