//! `--emit-sysctl DIR`: the audit's recommendations as `/etc/sysctl.d` files.
//!
//! Two files, because the two scopes are applied in different places: namespace-scoped keys with
//! `sysctl -p FILE` inside the audited namespace (or `/etc/sysctl.d/` for the node's own one),
//! global keys only in the initial namespace (they are read-only in a child). Only warn and
//! critical findings become settings; info findings that carry a recommendation are written
//! commented out, for a human to decide. Rendering is pure; [`write`] does the I/O.

use std::io;
use std::path::{Path, PathBuf};

use super::{Finding, Scope, Severity, Value};

/// File name of the namespace-scoped keys.
pub const NAMESPACE_FILE: &str = "90-ghostbuster-namespace.conf";
/// File name of the machine-wide keys.
pub const GLOBAL_FILE: &str = "90-ghostbuster-global.conf";

/// The text of both files, and how many active settings each holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub namespace: String,
    pub namespace_keys: usize,
    pub global: String,
    pub global_keys: usize,
}

/// Renders both files. `audited` names what was audited ("network namespace \"x\"") for the
/// header.
pub fn render(findings: &[Finding], audited: &str) -> Files {
    let (namespace, namespace_keys) = render_scope(findings, Scope::Namespace, audited);
    let (global, global_keys) = render_scope(findings, Scope::Global, audited);
    Files {
        namespace,
        namespace_keys,
        global,
        global_keys,
    }
}

fn render_scope(findings: &[Finding], scope: Scope, audited: &str) -> (String, usize) {
    let mut out = String::new();
    match scope {
        Scope::Namespace => out.push_str(
            "# Conntrack sysctls that are per network namespace, written by `ghostbuster audit`.\n\
             # Apply inside the namespace with `sysctl -p FILE` (e.g. `ip netns exec NS sysctl -p FILE`),\n\
             # or install into /etc/sysctl.d/ for the node's own namespace.\n",
        ),
        Scope::Global => out.push_str(
            "# Machine-wide conntrack sysctls, written by `ghostbuster audit`.\n\
             # They can only be set in the initial network namespace (read-only in others):\n\
             # install into /etc/sysctl.d/ on the node, or run `sysctl -p FILE` as root on the host.\n",
        ),
    }
    out.push_str(&format!("# Audited: {audited}.\n"));
    out.push_str(
        "# net.netfilter.* exists only once nf_conntrack is loaded: list it in /etc/modules-load.d/\n\
         # so that these settings are applied at boot.\n",
    );
    let mut active = 0;
    for f in findings.iter().filter(|f| f.scope == scope) {
        let (Some(key), Some(Value::Int(rec))) = (f.sysctl_key(), &f.recommended) else {
            continue;
        };
        let commented = match f.severity {
            Severity::Warn | Severity::Critical => false,
            Severity::Info => true,
            Severity::Ok => continue,
        };
        let current = f
            .current
            .as_ref()
            .map_or_else(|| "absent".to_string(), Value::to_string);
        out.push('\n');
        out.push_str(&format!("# {}: {}\n", f.severity, one_line(&f.reason)));
        out.push_str(&format!(
            "# current: {current}; source: {}\n",
            one_line(f.source)
        ));
        if commented {
            out.push_str("# (optional: uncomment to apply)\n# ");
        } else {
            active += 1;
        }
        out.push_str(&format!("{key} = {rec}\n"));
    }
    if active == 0 {
        out.push_str("\n# Nothing to change at warn or critical level.\n");
    }
    (out, active)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes both files into `dir` (created if missing) and returns their paths.
pub fn write(dir: &Path, files: &Files) -> io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let ns = dir.join(NAMESPACE_FILE);
    let global = dir.join(GLOBAL_FILE);
    std::fs::write(&ns, &files.namespace)?;
    std::fs::write(&global, &files.global)?;
    Ok((ns, global))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(
        check: &'static str,
        scope: Scope,
        sev: Severity,
        cur: u64,
        rec: Option<u64>,
    ) -> Finding {
        Finding {
            check,
            scope,
            current: Some(Value::Int(cur)),
            recommended: rec.map(Value::Int),
            severity: sev,
            reason: "because\nof reasons.".into(),
            source: "seed 000",
        }
    }

    fn active_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect()
    }

    #[test]
    fn only_warn_and_critical_are_active_and_info_is_commented() {
        let findings = vec![
            finding(
                "nf_conntrack_max",
                Scope::Global,
                Severity::Critical,
                65_536,
                Some(262_144),
            ),
            finding(
                "nf_conntrack_buckets",
                Scope::Global,
                Severity::Ok,
                65_536,
                Some(65_536),
            ),
            finding(
                "nf_conntrack_tcp_be_liberal",
                Scope::Namespace,
                Severity::Warn,
                0,
                Some(1),
            ),
            finding(
                "nf_conntrack_tcp_loose",
                Scope::Namespace,
                Severity::Info,
                0,
                Some(1),
            ),
            finding(
                "nf_conntrack_acct",
                Scope::Namespace,
                Severity::Info,
                0,
                None,
            ),
            finding(
                "nf_conntrack_udp_timeout",
                Scope::Namespace,
                Severity::Ok,
                30,
                Some(30),
            ),
            Finding {
                check: "kube_proxy_mode",
                scope: Scope::Global,
                current: Some(Value::Text("ipvs".into())),
                recommended: None,
                severity: Severity::Info,
                reason: "r.".into(),
                source: "s",
            },
        ];
        let files = render(&findings, "this network namespace");
        assert_eq!(files.namespace_keys, 1);
        assert_eq!(files.global_keys, 1);
        assert_eq!(
            active_lines(&files.namespace),
            ["net.netfilter.nf_conntrack_tcp_be_liberal = 1"]
        );
        assert!(files
            .namespace
            .contains("\n# net.netfilter.nf_conntrack_tcp_loose = 1\n"));
        assert!(!files.namespace.contains("acct"));
        assert!(!files.namespace.contains("udp_timeout"));
        assert!(files.namespace.contains("# warn: because of reasons.\n"));
        assert!(files.namespace.contains("# current: 0; source: seed 000\n"));
        assert_eq!(
            active_lines(&files.global),
            ["net.netfilter.nf_conntrack_max = 262144"]
        );
        assert!(!files.global.contains("buckets"));
        assert!(!files.global.contains("kube_proxy"));
        assert!(!files.namespace.contains("nf_conntrack_max"));
    }

    #[test]
    fn nothing_to_change_still_writes_a_valid_file() {
        let files = render(&[], "x");
        assert_eq!(files.namespace_keys + files.global_keys, 0);
        assert!(active_lines(&files.namespace).is_empty());
        assert!(files.global.contains("Nothing to change"));
    }

    #[test]
    fn writes_both_files() {
        let dir = std::env::temp_dir().join(format!("gb-emit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = render(&[], "x");
        let (ns, global) = write(&dir.join("sub"), &files).unwrap();
        assert_eq!(std::fs::read_to_string(ns).unwrap(), files.namespace);
        assert_eq!(std::fs::read_to_string(global).unwrap(), files.global);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
