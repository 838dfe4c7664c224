//! `ghostbuster audit`: the conntrack sysctls a Kubernetes node needs, checked against what the
//! kernel has.
//!
//! [`check`] is pure: it maps [`Facts`] (plain values read elsewhere: [`sysctl`] reads the
//! namespace's `/proc/sys/net/netfilter`, [`host`] the CPU count and kube-proxy's mode) to one
//! [`Finding`] per check, so every threshold is unit-tested with synthetic facts. [`emit`] turns
//! findings into `/etc/sysctl.d` files; the CLI (`cli/audit.rs`) does the I/O.
//!
//! Scope: `global` keys are machine-wide and writable only in the initial namespace
//! (`nf_conntrack_max`, `nf_conntrack_buckets`: read-only in a child namespace, checked on 6.18);
//! every other conntrack sysctl is per network namespace. `nf_conntrack_timestamp` is per
//! namespace too: setting it in one namespace adds timestamps only to that namespace's entries
//! (checked on 6.18; `net->ct.sysctl_tstamp` in `nf_conntrack_timestamp.h`).
//!
//! Thresholds come from the table: kube-proxy's own defaults where it has one
//! (`pkg/proxy/apis/config`: `maxPerCore` 32768, `min` 131072, established 24 h, close_wait 1 h,
//! hashsize = max / 4), the field reports in `seeds/` otherwise.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

pub mod emit;
mod gather;
pub mod host;
pub mod sysctl;

pub use gather::gather;

/// How bad a finding is. Ordered: `Ok < Info < Warn < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Info,
    Warn,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Ok,
        Severity::Info,
        Severity::Warn,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Critical => "critical",
        }
    }

    /// The metric value (`ghostbuster_sysctl_check`): 0 ok, 1 info, 2 warn, 3 critical.
    pub fn level(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a setting applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Per network namespace: set it in every namespace that tracks Service traffic.
    Namespace,
    /// Machine-wide: settable only in the initial namespace.
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Namespace => "namespace",
            Scope::Global => "global",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A current or recommended value: a sysctl's integer, or a word for host facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Int(u64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => f.pad(&n.to_string()),
            Value::Text(s) => f.pad(s),
        }
    }
}

/// One check's result. Serialized as-is in `audit -o json` (field names are an interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name: the sysctl's short name (`nf_conntrack_max`) or a host fact's name.
    pub check: &'static str,
    pub scope: Scope,
    /// `None` (JSON null) when the sysctl is absent.
    pub current: Option<Value>,
    /// `None` when there is nothing to recommend.
    pub recommended: Option<Value>,
    pub severity: Severity,
    /// One sentence: why this matters, with the numbers that decided it.
    pub reason: String,
    /// Where the rule comes from: a seed report, the kernel, kube-proxy.
    pub source: &'static str,
}

impl Finding {
    /// The full sysctl key (`net.netfilter.nf_conntrack_max`), for checks that are sysctls.
    pub fn sysctl_key(&self) -> Option<String> {
        self.check
            .starts_with("nf_conntrack_")
            .then(|| format!("net.netfilter.{}", self.check))
    }
}

/// Everything the checks look at, as plain values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Conntrack sysctls by short name (`nf_conntrack_max`); a missing key is an absent sysctl.
    pub sysctls: BTreeMap<String, u64>,
    /// CPUs kube-proxy would count (the affinity mask, like Go's `runtime.NumCPU`).
    pub cpus: u32,
    /// The highest entry count seen in the namespace (the CLI uses the current count).
    pub peak_entries: Option<u64>,
    /// `/proc/net/stat/nf_conntrack` exists in the namespace.
    pub proc_stat: bool,
    /// kube-proxy's `/proxyMode` answer; `None` when it did not answer.
    pub kube_proxy_mode: Option<String>,
}

impl Facts {
    fn get(&self, name: &str) -> Option<u64> {
        self.sysctls.get(name).copied()
    }
}

/// Counts per severity, and the worst one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub checks: usize,
    pub ok: usize,
    pub info: usize,
    pub warn: usize,
    pub critical: usize,
    pub worst: Severity,
}

impl Summary {
    pub fn of(findings: &[Finding]) -> Summary {
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        Summary {
            checks: findings.len(),
            ok: count(Severity::Ok),
            info: count(Severity::Info),
            warn: count(Severity::Warn),
            critical: count(Severity::Critical),
            worst: findings
                .iter()
                .map(|f| f.severity)
                .max()
                .unwrap_or(Severity::Ok),
        }
    }
}

// kube-proxy's conntrack defaults (pkg/proxy/apis/config/v1alpha1/defaults.go).
/// `conntrack.maxPerCore`.
pub const KUBE_PROXY_MAX_PER_CORE: u64 = 32_768;
/// `conntrack.min`.
pub const KUBE_PROXY_MIN: u64 = 131_072;
/// kube-proxy writes `hashsize = max / HASH_RATIO`.
pub const KUBE_PROXY_HASH_RATIO: u64 = 4;
/// Above this many entries per bucket (at the limit) hash chains get long.
pub const MAX_ENTRIES_PER_BUCKET: u64 = 8;

/// kube-proxy's `nf_conntrack_max`: max(32768 × CPUs, 131072).
pub fn kube_proxy_max(cpus: u32) -> u64 {
    (KUBE_PROXY_MAX_PER_CORE * u64::from(cpus.max(1))).max(KUBE_PROXY_MIN)
}

/// Severity of a fill level: above 75 % warn, above 90 % critical (integer math, so the
/// boundaries are exact).
pub fn utilization_severity(entries: u64, max: u64) -> Severity {
    let (e, m) = (u128::from(entries), u128::from(max));
    if m == 0 {
        Severity::Ok
    } else if e * 10 > m * 9 {
        Severity::Critical
    } else if e * 4 > m * 3 {
        Severity::Warn
    } else {
        Severity::Ok
    }
}

/// Runs every check. Total: any facts give one finding per check, never a panic.
pub fn check(facts: &Facts) -> Vec<Finding> {
    let max = check_max(facts);
    let buckets = check_buckets(facts, &max);
    let mut out = vec![max, buckets];
    out.extend(LIMITS.iter().map(|l| l.check(facts)));
    out.extend(FLAGS.iter().map(|f| f.check(facts)));
    out.push(check_proc_stat(facts));
    out.push(check_kube_proxy(facts));
    out
}

fn absent(check: &'static str, scope: Scope, severity: Severity, source: &'static str) -> Finding {
    Finding {
        check,
        scope,
        current: None,
        recommended: None,
        severity,
        reason: format!(
            "net.netfilter.{check} is not present in this kernel or namespace, so this cannot be checked."
        ),
        source,
    }
}

const SRC_MAX: &str =
    "kube-proxy reference (conntrack maxPerCore 32768, min 131072); seed 004 (table full)";

fn check_max(facts: &Facts) -> Finding {
    const NAME: &str = "nf_conntrack_max";
    let Some(max) = facts.get(NAME) else {
        return absent(NAME, Scope::Global, Severity::Info, SRC_MAX);
    };
    let rule = kube_proxy_max(facts.cpus);
    let finding = |severity, recommended, reason| Finding {
        check: NAME,
        scope: Scope::Global,
        current: Some(Value::Int(max)),
        recommended: Some(Value::Int(recommended)),
        severity,
        reason,
        source: SRC_MAX,
    };
    if max == 0 {
        return finding(
            Severity::Info,
            rule,
            format!("0 means no limit, so the table grows until memory runs out; kube-proxy would set {rule}."),
        );
    }
    let low = max < rule;
    let util = facts
        .peak_entries
        .map(|peak| (peak, utilization_severity(peak, max)));
    let util_sev = util.map_or(Severity::Ok, |(_, s)| s);
    let severity = util_sev.max(if low { Severity::Warn } else { Severity::Ok });
    let used = match util {
        Some((peak, _)) => format!("{peak} entries in use ({:.1} %)", percent(peak, max)),
        None => "the entry count is unknown".to_string(),
    };
    if severity == Severity::Ok {
        return finding(
            Severity::Ok,
            max.max(rule),
            format!(
                "{max} meets kube-proxy's max(32768 × {} CPUs, 131072) = {rule} and {used}.",
                facts.cpus
            ),
        );
    }
    let peak2 = util.map_or(0, |(peak, _)| peak.saturating_mul(2));
    let recommended = if util_sev > Severity::Ok {
        rule.max(peak2)
    } else {
        rule
    };
    let mut problems = Vec::new();
    if low {
        problems.push(format!(
            "{max} is below kube-proxy's max(32768 × {} CPUs, 131072) = {rule}",
            facts.cpus
        ));
    }
    if util_sev > Severity::Ok {
        let limit = if util_sev == Severity::Critical {
            90
        } else {
            75
        };
        problems.push(format!("{used}, above {limit} %"));
    }
    finding(
        severity,
        recommended,
        format!(
            "{}: a full table drops new connections silently (\"table full, dropping packet\").",
            problems.join(" and ")
        ),
    )
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

const SRC_BUCKETS: &str =
    "kube-proxy reference (hashsize = max / 4); kernel (nf_conntrack-sysctl.rst)";

/// Judged at the current limit; when the limit itself should be raised, the buckets that limit
/// will need are recommended too (info, so a reviewer raises both together).
fn check_buckets(facts: &Facts, max_finding: &Finding) -> Finding {
    const NAME: &str = "nf_conntrack_buckets";
    let (Some(buckets), Some(max)) = (facts.get(NAME), facts.get("nf_conntrack_max")) else {
        return absent(NAME, Scope::Global, Severity::Info, SRC_BUCKETS);
    };
    let target = match (&max_finding.severity, &max_finding.recommended) {
        (s, Some(Value::Int(r))) if *s > Severity::Ok && *r > max => *r,
        _ => max,
    };
    let finding = |severity, recommended, reason| Finding {
        check: NAME,
        scope: Scope::Global,
        current: Some(Value::Int(buckets)),
        recommended: Some(Value::Int(recommended)),
        severity,
        reason,
        source: SRC_BUCKETS,
    };
    let per_bucket = |m: u64| m as f64 / buckets.max(1) as f64;
    let too_few = |m: u64| m > MAX_ENTRIES_PER_BUCKET.saturating_mul(buckets);
    if too_few(max) {
        let rec = target / KUBE_PROXY_HASH_RATIO;
        return finding(
            Severity::Warn,
            rec,
            format!(
                "{max} / {buckets} = {:.1} entries per bucket at the limit (above {MAX_ENTRIES_PER_BUCKET}): long hash chains cost CPU on every packet; kube-proxy sets max / 4.",
                per_bucket(max)
            ),
        );
    }
    if too_few(target) {
        return finding(
            Severity::Info,
            target / KUBE_PROXY_HASH_RATIO,
            format!(
                "raising nf_conntrack_max to {target} would make it {:.1} entries per bucket (above {MAX_ENTRIES_PER_BUCKET}): raise the buckets with it.",
                per_bucket(target)
            ),
        );
    }
    finding(
        Severity::Ok,
        buckets.max(max / KUBE_PROXY_HASH_RATIO),
        format!(
            "{:.1} entries per bucket at the limit (at most {MAX_ENTRIES_PER_BUCKET}): hash chains stay short.",
            per_bucket(max)
        ),
    )
}

/// A timeout that must not exceed `max_ok` seconds.
struct Limit {
    name: &'static str,
    max_ok: u64,
    recommended: u64,
    /// Completes "N s is above M s: ...".
    too_long: &'static str,
    ok: &'static str,
    source: &'static str,
}

impl Limit {
    fn check(&self, facts: &Facts) -> Finding {
        let Some(current) = facts.get(self.name) else {
            return absent(self.name, Scope::Namespace, Severity::Info, self.source);
        };
        // A shorter timeout than recommended is never "recommended up".
        let (severity, recommended, reason) = if current > self.max_ok {
            (
                Severity::Warn,
                self.recommended,
                format!("{current} s is above {} s: {}", self.max_ok, self.too_long),
            )
        } else {
            (
                Severity::Ok,
                self.recommended.min(current),
                format!("{current} s is at most {} s: {}", self.max_ok, self.ok),
            )
        };
        Finding {
            check: self.name,
            scope: Scope::Namespace,
            current: Some(Value::Int(current)),
            recommended: Some(Value::Int(recommended)),
            severity,
            reason,
            source: self.source,
        }
    }
}

const LIMITS: &[Limit] = &[
    Limit {
        name: "nf_conntrack_tcp_timeout_established",
        max_ok: 86_400,
        recommended: 86_400,
        too_long: "idle ghosts and leaked flows live for days (the kernel default is 432000 = 5 days; kube-proxy sets 86400).",
        ok: "idle established flows expire within a day, like kube-proxy's default.",
        source: "kube-proxy reference (conntrack tcpEstablishedTimeout 24h); kernel default 432000",
    },
    Limit {
        name: "nf_conntrack_tcp_timeout_syn_sent",
        max_ok: 60,
        recommended: 30,
        too_long: "a half-open flow outlives its pod and can complete to a new pod that reused the IP.",
        ok: "half-open flows expire before a dead pod's IP is likely to be reused.",
        source: "seed 003 (SYN_SENT flow completed to a pod that reused the IP)",
    },
    Limit {
        name: "nf_conntrack_tcp_timeout_close_wait",
        max_ok: 3_600,
        recommended: 3_600,
        too_long: "half-closed flows hold table entries longer than kube-proxy's default of an hour.",
        ok: "half-closed flows expire within kube-proxy's default of an hour.",
        source: "kube-proxy reference (conntrack tcpCloseWaitTimeout 1h)",
    },
    Limit {
        name: "nf_conntrack_tcp_timeout_time_wait",
        max_ok: 120,
        recommended: 120,
        too_long: "TIME_WAIT floods from short connections fill the table.",
        ok: "TIME_WAIT entries expire before floods of short connections fill the table.",
        source: "seed 004 (TIME_WAIT fills the table)",
    },
    Limit {
        name: "nf_conntrack_tcp_timeout_fin_wait",
        max_ok: 120,
        recommended: 30,
        too_long: "closing flows linger and floods of short connections fill the table.",
        ok: "closing flows expire before floods of short connections fill the table.",
        source: "seed 004 (TIME_WAIT fills the table)",
    },
    Limit {
        name: "nf_conntrack_udp_timeout",
        max_ok: 60,
        recommended: 30,
        too_long: "one-way UDP flows (DNS queries to a dead backend) stay pinned to it as ghosts for longer.",
        ok: "one-way UDP flows expire quickly, so a dead backend's UDP ghosts do not linger.",
        source: "seed 001 (UDP ghosts after scale-down)",
    },
    Limit {
        name: "nf_conntrack_udp_timeout_stream",
        max_ok: 180,
        recommended: 120,
        too_long: "UDP streams keep a dead backend's DNAT for longer.",
        ok: "UDP streams to a dead backend expire within two to three minutes.",
        source: "seed 001 (UDP ghosts after scale-down)",
    },
];

/// A switch whose bad value is 0.
struct Flag {
    name: &'static str,
    /// Severity when the switch is 0.
    off: Severity,
    /// Severity when the sysctl is absent.
    missing: Severity,
    /// Recommended when off (`None`: a trade-off, no recommendation).
    recommended: Option<u64>,
    off_reason: &'static str,
    on_reason: &'static str,
    source: &'static str,
}

impl Flag {
    fn check(&self, facts: &Facts) -> Finding {
        let Some(current) = facts.get(self.name) else {
            return absent(self.name, Scope::Namespace, self.missing, self.source);
        };
        // When on, the current value is the recommendation (events = 2 is as good as 1).
        let (severity, recommended, reason) = if current == 0 {
            (self.off, self.recommended, self.off_reason)
        } else {
            (
                Severity::Ok,
                self.recommended.map(|_| current),
                self.on_reason,
            )
        };
        Finding {
            check: self.name,
            scope: Scope::Namespace,
            current: Some(Value::Int(current)),
            recommended: recommended.map(Value::Int),
            severity,
            reason: reason.to_string(),
            source: self.source,
        }
    }
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "nf_conntrack_tcp_be_liberal",
        off: Severity::Warn,
        missing: Severity::Info,
        recommended: Some(1),
        off_reason: "with 0, out-of-window packets after an endpoint change are marked INVALID (and dropped by kube-proxy's rule), so clients get resets.",
        on_reason: "out-of-window packets stay tracked instead of turning INVALID and resetting connections.",
        source: "seed 002 (INVALID packets and RSTs in rolling updates); kube-proxy reference (drop-INVALID rule when 0)",
    },
    Flag {
        name: "nf_conntrack_tcp_loose",
        off: Severity::Info,
        missing: Severity::Info,
        recommended: Some(1),
        off_reason: "with 0, mid-stream packets of a flow whose entry was removed are dropped instead of reset, so clients hang instead of failing fast.",
        on_reason: "mid-stream packets of a removed flow are picked up again and answered, so clients fail fast instead of hanging.",
        source: "kernel (nf_conntrack-sysctl.rst)",
    },
    Flag {
        name: "nf_conntrack_timestamp",
        off: Severity::Info,
        missing: Severity::Info,
        recommended: Some(1),
        off_reason: "without flow start times ghostbuster cannot prove a flow is older than an IP's reuse (ip_reused) or age ghosts.",
        on_reason: "flow start times are recorded: evidence for ip_reused and for ageing ghosts.",
        source: "ghostbuster design (ip_reused evidence); kernel (CONFIG_NF_CONNTRACK_TIMESTAMP)",
    },
    Flag {
        name: "nf_conntrack_acct",
        off: Severity::Info,
        missing: Severity::Info,
        recommended: None,
        off_reason: "without per-flow byte counters `stats --top` cannot rank by volume; enabling them costs a little memory per entry.",
        on_reason: "per-flow byte counters are kept, so `stats --top` can rank by volume.",
        source: "ghostbuster (stats --top by volume); kernel",
    },
    Flag {
        name: "nf_conntrack_events",
        off: Severity::Warn,
        // Absent means a kernel built without CONFIG_NF_CONNTRACK_EVENTS: no events at all.
        missing: Severity::Warn,
        recommended: Some(1),
        off_reason: "with 0 the kernel sends no conntrack events, so the agent's fast path is blind and falls back to periodic dumps.",
        on_reason: "conntrack events are delivered (2 = whenever someone listens), which the agent's fast path needs.",
        source: "ghostbuster agent (event fast path); kernel (CONFIG_NF_CONNTRACK_EVENTS)",
    },
];

fn check_proc_stat(facts: &Facts) -> Finding {
    let (severity, current, reason) = if facts.proc_stat {
        (
            Severity::Ok,
            "present",
            "per-CPU drop counters are visible to node_exporter here as well as to ghostbuster.",
        )
    } else {
        (
            Severity::Info,
            "absent",
            "node_exporter reads per-CPU drops only from this file, so it is blind to them here; ghostbuster reads them over netlink.",
        )
    };
    Finding {
        check: "proc_net_stat_nf_conntrack",
        scope: Scope::Namespace,
        current: Some(Value::Text(current.to_string())),
        recommended: None,
        severity,
        reason: reason.to_string(),
        source: "node_exporter#2491, node_exporter#1093 (CONFIG_NF_CONNTRACK_PROCFS)",
    }
}

fn check_kube_proxy(facts: &Facts) -> Finding {
    let mode = facts.kube_proxy_mode.as_deref();
    let (severity, reason) = match mode {
        Some("iptables" | "nftables") => (
            Severity::Ok,
            "kube-proxy DNATs with iptables/nftables rules, whose conntrack entries ghostbuster can judge and remove.".to_string(),
        ),
        Some("ipvs") => (
            Severity::Info,
            "IPVS recreates conntrack entries from its own connection table, so ghostbuster only reports there.".to_string(),
        ),
        Some(other) => (
            Severity::Info,
            format!("mode {other:?} is not one ghostbuster acts on, so it only reports."),
        ),
        None => (
            Severity::Info,
            "kube-proxy did not answer (none running, a replacement such as Cilium, or another metrics address), so ghostbuster only reports.".to_string(),
        ),
    };
    Finding {
        check: "kube_proxy_mode",
        scope: Scope::Global,
        current: Some(Value::Text(mode.unwrap_or("unknown").to_string())),
        recommended: None,
        severity,
        reason,
        source: "kube-proxy /proxyMode endpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts that pass every check: 2 CPUs, the recommended values, a quiet table.
    fn good() -> Facts {
        let mut f = Facts {
            cpus: 2,
            peak_entries: Some(1000),
            proc_stat: true,
            kube_proxy_mode: Some("iptables".into()),
            ..Facts::default()
        };
        for (k, v) in [
            ("nf_conntrack_max", 262_144),
            ("nf_conntrack_buckets", 65_536),
            ("nf_conntrack_tcp_be_liberal", 1),
            ("nf_conntrack_tcp_loose", 1),
            ("nf_conntrack_tcp_timeout_established", 86_400),
            ("nf_conntrack_tcp_timeout_syn_sent", 30),
            ("nf_conntrack_tcp_timeout_close_wait", 3_600),
            ("nf_conntrack_tcp_timeout_time_wait", 120),
            ("nf_conntrack_tcp_timeout_fin_wait", 30),
            ("nf_conntrack_udp_timeout", 30),
            ("nf_conntrack_udp_timeout_stream", 120),
            ("nf_conntrack_timestamp", 1),
            ("nf_conntrack_acct", 1),
            ("nf_conntrack_events", 2),
        ] {
            f.sysctls.insert(k.to_string(), v);
        }
        f
    }

    fn with(mut f: Facts, key: &str, v: u64) -> Facts {
        f.sysctls.insert(key.to_string(), v);
        f
    }

    fn find(findings: &[Finding], check: &str) -> Finding {
        findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("no finding {check}"))
            .clone()
    }

    fn sev(facts: &Facts, check: &str) -> Severity {
        find(&super::check(facts), check).severity
    }

    #[test]
    fn good_facts_pass_every_check() {
        let findings = check(&good());
        assert_eq!(findings.len(), 16);
        for f in &findings {
            assert_eq!(f.severity, Severity::Ok, "{f:?}");
            assert!(f.reason.ends_with('.'), "one sentence: {f:?}");
            assert!(!f.source.is_empty());
        }
        assert_eq!(Summary::of(&findings).worst, Severity::Ok);
    }

    #[test]
    fn every_check_has_a_unique_name_and_the_right_scope() {
        let findings = check(&good());
        let mut names: Vec<_> = findings.iter().map(|f| f.check).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), findings.len());
        for f in &findings {
            let global = matches!(
                f.check,
                "nf_conntrack_max" | "nf_conntrack_buckets" | "kube_proxy_mode"
            );
            assert_eq!(f.scope == Scope::Global, global, "{}", f.check);
        }
    }

    #[test]
    fn kube_proxy_rule() {
        assert_eq!(kube_proxy_max(0), 131_072);
        assert_eq!(kube_proxy_max(1), 131_072);
        assert_eq!(kube_proxy_max(4), 131_072);
        assert_eq!(kube_proxy_max(5), 163_840);
        assert_eq!(kube_proxy_max(64), 2_097_152);
    }

    #[test]
    fn max_below_kube_proxy_rule_warns() {
        let mut f = with(good(), "nf_conntrack_max", 131_072);
        f.cpus = 4; // rule = 131072: exactly at the rule is fine
        assert_eq!(sev(&f, "nf_conntrack_max"), Severity::Ok);
        f.cpus = 5; // rule = 163840
        let m = find(&check(&f), "nf_conntrack_max");
        assert_eq!(m.severity, Severity::Warn);
        assert_eq!(m.recommended, Some(Value::Int(163_840)));
        assert!(m.reason.contains("163840"), "{}", m.reason);
        let f = with(good(), "nf_conntrack_max", 131_071);
        assert_eq!(sev(&f, "nf_conntrack_max"), Severity::Warn);
    }

    #[test]
    fn max_utilization_boundaries() {
        let base = with(good(), "nf_conntrack_max", 200_000);
        let at = |peak| {
            let mut f = base.clone();
            f.cpus = 1;
            f.peak_entries = Some(peak);
            find(&check(&f), "nf_conntrack_max")
        };
        assert_eq!(at(150_000).severity, Severity::Ok); // exactly 75 %
        let w = at(150_001);
        assert_eq!(w.severity, Severity::Warn);
        assert_eq!(w.recommended, Some(Value::Int(300_002)), "2× the peak");
        assert!(w.reason.contains("above 75 %"), "{}", w.reason);
        assert_eq!(at(180_000).severity, Severity::Warn); // exactly 90 %
        let c = at(180_001);
        assert_eq!(c.severity, Severity::Critical);
        assert_eq!(c.recommended, Some(Value::Int(360_002)));
        assert!(c.reason.contains("above 90 %"), "{}", c.reason);
        assert_eq!(at(250_000).severity, Severity::Critical); // over the limit (count races)
    }

    #[test]
    fn max_low_and_full_recommends_the_larger_of_rule_and_twice_the_peak() {
        let mut f = with(good(), "nf_conntrack_max", 65_536);
        f.cpus = 2;
        f.peak_entries = Some(60_000);
        let m = find(&check(&f), "nf_conntrack_max");
        assert_eq!(m.severity, Severity::Critical);
        assert_eq!(m.recommended, Some(Value::Int(131_072)));
        assert!(m.reason.contains(" and "), "{}", m.reason);
        f.peak_entries = Some(65_000);
        f.sysctls.insert("nf_conntrack_max".into(), 80_000);
        let m = find(&check(&f), "nf_conntrack_max");
        assert_eq!(m.recommended, Some(Value::Int(131_072)));
        f.peak_entries = Some(79_000);
        let m = find(&check(&f), "nf_conntrack_max");
        assert_eq!(m.recommended, Some(Value::Int(158_000)));
    }

    #[test]
    fn max_without_count_or_limit() {
        let mut f = good();
        f.peak_entries = None;
        let m = find(&check(&f), "nf_conntrack_max");
        assert_eq!(m.severity, Severity::Ok);
        assert!(m.reason.contains("unknown"), "{}", m.reason);
        let f = with(good(), "nf_conntrack_max", 0);
        assert_eq!(sev(&f, "nf_conntrack_max"), Severity::Info);
        assert_eq!(sev(&f, "nf_conntrack_buckets"), Severity::Ok);
    }

    #[test]
    fn buckets_boundaries() {
        // 262144 / 32768 = 8 per bucket: at the boundary, fine.
        let f = with(good(), "nf_conntrack_buckets", 32_768);
        assert_eq!(sev(&f, "nf_conntrack_buckets"), Severity::Ok);
        let f = with(
            with(good(), "nf_conntrack_buckets", 32_768),
            "nf_conntrack_max",
            262_145,
        );
        let b = find(&check(&f), "nf_conntrack_buckets");
        assert_eq!(b.severity, Severity::Warn);
        assert_eq!(b.recommended, Some(Value::Int(262_145 / 4)));
        assert!(b.reason.contains("above 8"), "{}", b.reason);
    }

    #[test]
    fn buckets_follow_a_raised_max() {
        // max 262144 with 32768 buckets is fine now, but a full table asks for 2 × 240000.
        let mut f = with(good(), "nf_conntrack_buckets", 32_768);
        f.peak_entries = Some(240_000);
        let all = check(&f);
        assert_eq!(find(&all, "nf_conntrack_max").severity, Severity::Critical);
        let b = find(&all, "nf_conntrack_buckets");
        assert_eq!(b.severity, Severity::Info);
        assert_eq!(b.recommended, Some(Value::Int(120_000)));
        // Already too few at the current limit: warn, and size for the raised limit.
        f.sysctls.insert("nf_conntrack_buckets".into(), 16_384);
        let b = find(&check(&f), "nf_conntrack_buckets");
        assert_eq!(b.severity, Severity::Warn);
        assert_eq!(b.recommended, Some(Value::Int(120_000)));
    }

    #[test]
    fn flags() {
        for (name, off) in [
            ("nf_conntrack_tcp_be_liberal", Severity::Warn),
            ("nf_conntrack_tcp_loose", Severity::Info),
            ("nf_conntrack_timestamp", Severity::Info),
            ("nf_conntrack_acct", Severity::Info),
            ("nf_conntrack_events", Severity::Warn),
        ] {
            assert_eq!(sev(&with(good(), name, 0), name), off, "{name}=0");
            assert_eq!(sev(&with(good(), name, 1), name), Severity::Ok, "{name}=1");
        }
        let ev = find(
            &check(&with(good(), "nf_conntrack_events", 2)),
            "nf_conntrack_events",
        );
        assert_eq!(ev.severity, Severity::Ok);
        assert_eq!(ev.recommended, Some(Value::Int(2)), "2 is fine as it is");
        let acct = find(
            &check(&with(good(), "nf_conntrack_acct", 0)),
            "nf_conntrack_acct",
        );
        assert_eq!(
            acct.recommended, None,
            "acct is a trade-off: no recommendation"
        );
        let lib = find(
            &check(&with(good(), "nf_conntrack_tcp_be_liberal", 0)),
            "nf_conntrack_tcp_be_liberal",
        );
        assert_eq!(lib.recommended, Some(Value::Int(1)));
        assert_eq!(lib.current, Some(Value::Int(0)));
    }

    #[test]
    fn timeout_boundaries() {
        for (name, max_ok, rec) in [
            ("nf_conntrack_tcp_timeout_established", 86_400, 86_400),
            ("nf_conntrack_tcp_timeout_syn_sent", 60, 30),
            ("nf_conntrack_tcp_timeout_close_wait", 3_600, 3_600),
            ("nf_conntrack_tcp_timeout_time_wait", 120, 120),
            ("nf_conntrack_tcp_timeout_fin_wait", 120, 30),
            ("nf_conntrack_udp_timeout", 60, 30),
            ("nf_conntrack_udp_timeout_stream", 180, 120),
        ] {
            let ok = find(&check(&with(good(), name, max_ok)), name);
            assert_eq!(ok.severity, Severity::Ok, "{name}={max_ok}");
            assert_eq!(ok.recommended, Some(Value::Int(rec.min(max_ok))), "{name}");
            let short = find(&check(&with(good(), name, 1)), name);
            assert_eq!(
                short.recommended,
                Some(Value::Int(1)),
                "never recommended up"
            );
            let bad = find(&check(&with(good(), name, max_ok + 1)), name);
            assert_eq!(bad.severity, Severity::Warn, "{name}={}", max_ok + 1);
            assert_eq!(bad.recommended, Some(Value::Int(rec)), "{name}");
            assert!(bad
                .reason
                .starts_with(&format!("{} s is above", max_ok + 1)));
        }
        // The kernel defaults that matter: 5-day established, 120 s SYN_SENT.
        let f = with(
            with(good(), "nf_conntrack_tcp_timeout_established", 432_000),
            "nf_conntrack_tcp_timeout_syn_sent",
            120,
        );
        assert_eq!(
            sev(&f, "nf_conntrack_tcp_timeout_established"),
            Severity::Warn
        );
        assert_eq!(sev(&f, "nf_conntrack_tcp_timeout_syn_sent"), Severity::Warn);
    }

    #[test]
    fn absent_sysctls_are_null_not_a_panic() {
        let mut f = good();
        f.sysctls.clear();
        let findings = check(&f);
        assert_eq!(findings.len(), 16);
        for x in findings
            .iter()
            .filter(|x| x.check.starts_with("nf_conntrack_"))
        {
            assert_eq!(x.current, None, "{}", x.check);
            let want = if x.check == "nf_conntrack_events" {
                Severity::Warn
            } else {
                Severity::Info
            };
            assert_eq!(x.severity, want, "{}", x.check);
        }
        // Only the buckets absent.
        let mut f = good();
        f.sysctls.remove("nf_conntrack_buckets");
        assert_eq!(sev(&f, "nf_conntrack_buckets"), Severity::Info);
        assert_eq!(sev(&f, "nf_conntrack_max"), Severity::Ok);
    }

    #[test]
    fn host_facts() {
        let mut f = good();
        f.proc_stat = false;
        let p = find(&check(&f), "proc_net_stat_nf_conntrack");
        assert_eq!(p.severity, Severity::Info);
        assert_eq!(p.current, Some(Value::Text("absent".into())));
        for (mode, s) in [
            (Some("iptables"), Severity::Ok),
            (Some("nftables"), Severity::Ok),
            (Some("ipvs"), Severity::Info),
            (Some("kernelspace"), Severity::Info),
            (None, Severity::Info),
        ] {
            f.kube_proxy_mode = mode.map(str::to_string);
            let k = find(&check(&f), "kube_proxy_mode");
            assert_eq!(k.severity, s, "{mode:?}");
            assert_eq!(
                k.current,
                Some(Value::Text(mode.unwrap_or("unknown").to_string()))
            );
        }
    }

    #[test]
    fn summary_and_json_shape() {
        let f = with(
            with(good(), "nf_conntrack_tcp_be_liberal", 0),
            "nf_conntrack_tcp_loose",
            0,
        );
        let findings = check(&f);
        let s = Summary::of(&findings);
        assert_eq!((s.ok, s.info, s.warn, s.critical), (14, 1, 1, 0));
        assert_eq!(s.worst, Severity::Warn);
        let v = serde_json::to_value(find(&findings, "nf_conntrack_tcp_be_liberal")).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "check",
                "current",
                "reason",
                "recommended",
                "scope",
                "severity",
                "source"
            ]
        );
        assert_eq!(v["severity"], "warn");
        assert_eq!(v["scope"], "namespace");
        assert_eq!(v["current"], 0);
        let p = serde_json::to_value(find(&findings, "kube_proxy_mode")).unwrap();
        assert_eq!(p["recommended"], serde_json::Value::Null);
        assert_eq!(p["current"], "iptables");
        assert_eq!(
            serde_json::to_value(s).unwrap()["worst"],
            serde_json::json!("warn")
        );
    }

    #[test]
    fn severity_order_and_levels() {
        assert!(Severity::Ok < Severity::Info);
        assert!(Severity::Info < Severity::Warn);
        assert!(Severity::Warn < Severity::Critical);
        let levels: Vec<u8> = Severity::ALL.iter().map(|s| s.level()).collect();
        assert_eq!(levels, [0, 1, 2, 3]);
    }
}
