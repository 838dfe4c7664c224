//! `ghostbuster audit` against the real kernel, in throwaway child namespaces only: the machine's
//! own sysctls are never written (every `sysctl -w`/`-p` runs under `ip netns exec` in a child,
//! and a test checks that the host's values did not move).
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (CI set) they fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use netlab::{plan, Lab, NetNs, PodSpec, ProxyConfig, ProxyMode, ServerSpec, Service, ServicePort};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ghostbuster");

fn root_or_skip(test: &str) -> bool {
    if netlab::is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), and CI must run kernel tests");
    }
    eprintln!("SKIP {test}: needs root to create network namespaces (run as root, or CI=true)");
    false
}

/// A port on 127.0.0.1 where nothing listens, so the kube-proxy probe fails fast and the test
/// never depends on a kube-proxy on this machine.
fn closed_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/proxyMode")
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sysctl -w` inside the namespace (never on the host).
fn set(ns: &NetNs, values: &[(&str, u64)]) {
    set_in(ns.name(), values);
}

/// `sysctl -w` inside the namespace named `netns` (never on the host).
fn set_in(netns: &str, values: &[(&str, u64)]) {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    let kv: Vec<String> = values
        .iter()
        .map(|(k, v)| format!("net.netfilter.{k}={v}"))
        .collect();
    args.extend(kv.iter().map(String::as_str));
    sh("ip", &args);
}

fn audit(ns: &NetNs, extra: &[&str]) -> (Output, Value) {
    let url = closed_url();
    let mut args = vec![
        "audit",
        "--netns",
        ns.name(),
        "-o",
        "json",
        "--kube-proxy-url",
        url.as_str(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(BIN).args(&args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit {args:?}: not JSON ({e}), status {:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn severity(report: &Value, name: &str) -> String {
    check(report, name)["severity"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The namespace-scoped checks set to bad values below, with the severity each must get.
const BAD: &[(&str, u64, &str)] = &[
    ("nf_conntrack_tcp_timeout_established", 432_000, "warn"),
    ("nf_conntrack_tcp_be_liberal", 0, "warn"),
    ("nf_conntrack_udp_timeout", 120, "warn"),
    ("nf_conntrack_udp_timeout_stream", 300, "warn"),
    ("nf_conntrack_tcp_timeout_syn_sent", 120, "warn"),
    ("nf_conntrack_tcp_timeout_close_wait", 7_200, "warn"),
    ("nf_conntrack_tcp_timeout_time_wait", 240, "warn"),
    ("nf_conntrack_tcp_timeout_fin_wait", 240, "warn"),
    ("nf_conntrack_events", 0, "warn"),
    ("nf_conntrack_tcp_loose", 0, "info"),
    ("nf_conntrack_timestamp", 0, "info"),
    ("nf_conntrack_acct", 0, "info"),
];

/// Good values for the same keys: every one must pass.
const GOOD: &[(&str, u64)] = &[
    ("nf_conntrack_tcp_timeout_established", 86_400),
    ("nf_conntrack_tcp_be_liberal", 1),
    ("nf_conntrack_udp_timeout", 30),
    ("nf_conntrack_udp_timeout_stream", 120),
    ("nf_conntrack_tcp_timeout_syn_sent", 30),
    ("nf_conntrack_tcp_timeout_close_wait", 3_600),
    ("nf_conntrack_tcp_timeout_time_wait", 120),
    ("nf_conntrack_tcp_timeout_fin_wait", 30),
    ("nf_conntrack_events", 1),
    ("nf_conntrack_tcp_loose", 1),
    ("nf_conntrack_timestamp", 1),
    ("nf_conntrack_acct", 1),
];

/// Makes sure the namespace's conntrack sysctls exist (they appear once nf_conntrack is in use
/// there on some kernels; on 6.18 they exist in every namespace once the module is loaded).
fn ensure_conntrack(ns: &NetNs) {
    let probe = "/proc/sys/net/netfilter/nf_conntrack_max";
    let present = Command::new("ip")
        .args(["netns", "exec", ns.name(), "test", "-e", probe])
        .status()
        .unwrap()
        .success();
    if !present {
        insert_udp_entry(ns, 1, 2, 10);
    }
}

/// `conntrack -I` in the namespace: a UDP entry 192.0.2.1:`sport` -> 192.0.2.2:`dport` that
/// expires in `timeout` seconds.
fn insert_udp_entry(ns: &NetNs, sport: u16, dport: u16, timeout: u32) {
    let (sport, dport, timeout) = (sport.to_string(), dport.to_string(), timeout.to_string());
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns.name(),
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            "192.0.2.1",
            "-d",
            "192.0.2.2",
            "--sport",
            &sport,
            "--dport",
            &dport,
            "-t",
            &timeout,
        ],
    );
}

/// The host's own values of every key the tests write in child namespaces.
fn host_values() -> Vec<(String, String)> {
    BAD.iter()
        .map(|(k, _, _)| {
            let p = format!("/proc/sys/net/netfilter/{k}");
            let value = std::fs::read_to_string(&p).unwrap_or_default();
            (p, value)
        })
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gb-audit-kernel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn bad_values_are_flagged_and_the_emitted_file_fixes_them() {
    if !root_or_skip("bad_values_are_flagged_and_the_emitted_file_fixes_them") {
        return;
    }
    let host_before = host_values();
    let ns = NetNs::create("aud").unwrap();
    ensure_conntrack(&ns);
    let bad: Vec<(&str, u64)> = BAD.iter().map(|(k, v, _)| (*k, *v)).collect();
    set(&ns, &bad);

    let (out, report) = audit(&ns, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no --exit-code: 0 even with warnings"
    );
    for (name, value, want) in BAD {
        let c = check(&report, name);
        assert_eq!(c["severity"], *want, "{name}: {c}");
        assert_eq!(c["current"], *value, "{name}: {c}");
        assert_eq!(c["scope"], "namespace", "{name}");
        assert!(c["reason"].as_str().unwrap().ends_with('.'), "{c}");
        assert!(!c["source"].as_str().unwrap().is_empty(), "{c}");
    }
    // The global ones are reported as global; a child sees the host's (read-only) limit.
    assert_eq!(check(&report, "nf_conntrack_max")["scope"], "global");
    assert_eq!(check(&report, "nf_conntrack_buckets")["scope"], "global");
    let host_max: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(check(&report, "nf_conntrack_max")["current"], host_max);
    assert_eq!(check(&report, "kube_proxy_mode")["current"], "unknown");
    assert_eq!(report["facts"]["netns"], ns.name());
    assert!(report["summary"]["warn"].as_u64().unwrap() >= 9);
    assert_eq!(report["summary"]["worst"], "warn");

    // --exit-code turns warnings into exit 1; --emit-sysctl writes both files.
    let dir = temp_dir("emit");
    let dir_s = dir.to_str().unwrap().to_string();
    let (out, _) = audit(&ns, &["--exit-code", "--emit-sysctl", &dir_s]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns_file = dir.join("90-ghostbuster-namespace.conf");
    let global_file = dir.join("90-ghostbuster-global.conf");
    let text = std::fs::read_to_string(&ns_file).unwrap();
    assert!(global_file.exists());
    for (name, _, want) in BAD {
        let line = format!("net.netfilter.{name} = ");
        let active = text.lines().any(|l| l.starts_with(&line));
        assert_eq!(active, *want == "warn", "{name} in\n{text}");
    }
    assert!(
        text.contains("# net.netfilter.nf_conntrack_tcp_loose = 1"),
        "{text}"
    );
    assert!(
        !text.contains("nf_conntrack_max"),
        "global keys stay out: {text}"
    );
    assert!(!std::fs::read_to_string(&global_file)
        .unwrap()
        .contains("tcp_be_liberal"));

    // Applying the namespace file inside the namespace makes those checks pass.
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns.name(),
            "sysctl",
            "-q",
            "-p",
            ns_file.to_str().unwrap(),
        ],
    );
    let (_, after) = audit(&ns, &[]);
    for (name, _, want) in BAD {
        let got = severity(&after, name);
        if *want == "warn" {
            assert_eq!(got, "ok", "{name} after sysctl -p: {}", check(&after, name));
        } else {
            assert_eq!(
                got, "info",
                "{name}: info settings are only suggested (commented out)"
            );
        }
    }
    for c in after["checks"].as_array().unwrap() {
        if c["scope"] == "namespace" {
            assert!(
                c["severity"] == "ok" || c["severity"] == "info",
                "namespace check still failing after sysctl -p: {c}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(ns);
    assert_eq!(
        host_values(),
        host_before,
        "the host's own sysctls must not change"
    );
}

#[test]
fn good_values_pass() {
    if !root_or_skip("good_values_pass") {
        return;
    }
    let ns = NetNs::create("aud").unwrap();
    ensure_conntrack(&ns);
    set(&ns, GOOD);
    let (out, report) = audit(&ns, &["--exit-code"]);
    for (name, value) in GOOD {
        let c = check(&report, name);
        assert_eq!(c["severity"], "ok", "{name}: {c}");
        assert_eq!(c["current"], *value, "{name}");
    }
    // The per-namespace statistics file exists on this kernel (CONFIG_NF_CONNTRACK_PROCFS).
    let stat_present = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "test",
            "-e",
            "/proc/net/stat/nf_conntrack",
        ])
        .status()
        .unwrap()
        .success();
    let want = if stat_present { "ok" } else { "info" };
    assert_eq!(severity(&report, "proc_net_stat_nf_conntrack"), want);
    // Whatever the host's global values, --exit-code reflects exactly the worst severity.
    let worst = report["summary"]["worst"].as_str().unwrap();
    let code = if worst == "warn" || worst == "critical" {
        1
    } else {
        0
    };
    assert_eq!(out.status.code(), Some(code), "worst {worst}");
}

#[test]
fn utilization_counts_the_namespace_table() {
    if !root_or_skip("utilization_counts_the_namespace_table") {
        return;
    }
    let ns = NetNs::create("aud").unwrap();
    ensure_conntrack(&ns);
    for port in 1..=3u16 {
        insert_udp_entry(&ns, port, 53, 60);
    }
    let (_, report) = audit(&ns, &[]);
    let n = report["facts"]["entries"].as_u64().unwrap();
    assert!((3..=4).contains(&n), "entries {n}");
    let reason = check(&report, "nf_conntrack_max")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains(&format!("{n} entries in use")), "{reason}");
}

#[test]
fn timestamp_is_per_namespace() {
    if !root_or_skip("timestamp_is_per_namespace") {
        return;
    }
    let host = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_timestamp").ok();
    let a = NetNs::create("aud").unwrap();
    let b = NetNs::create("aud").unwrap();
    ensure_conntrack(&a);
    ensure_conntrack(&b);
    set(&a, &[("nf_conntrack_timestamp", 1)]);
    set(&b, &[("nf_conntrack_timestamp", 0)]);
    let (_, ra) = audit(&a, &[]);
    let (_, rb) = audit(&b, &[]);
    assert_eq!(check(&ra, "nf_conntrack_timestamp")["current"], 1);
    assert_eq!(check(&rb, "nf_conntrack_timestamp")["current"], 0);
    assert_eq!(check(&ra, "nf_conntrack_timestamp")["scope"], "namespace");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_timestamp").ok(),
        host
    );
}

#[test]
fn table_output_and_kube_proxy_mode() {
    if !root_or_skip("table_output_and_kube_proxy_mode") {
        return;
    }
    let ns = NetNs::create("aud").unwrap();
    ensure_conntrack(&ns);
    set(&ns, &[("nf_conntrack_tcp_be_liberal", 0)]);
    // A stand-in for kube-proxy's metrics port that says "ipvs".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Non-blocking accept with a deadline: a failing audit must not hang the test.
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nipvs")
                        .unwrap();
                    return true;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    });
    let url = format!("http://127.0.0.1:{port}/proxyMode");
    let out = Command::new(BIN)
        .args(["audit", "--netns", ns.name(), "--kube-proxy-url", &url])
        .output()
        .unwrap();
    assert!(server.join().unwrap(), "the audit never asked kube-proxy");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    let liberal = text
        .lines()
        .find(|l| l.contains("nf_conntrack_tcp_be_liberal"))
        .unwrap();
    assert!(liberal.starts_with("warn "), "{liberal}");
    let kp = text
        .lines()
        .find(|l| l.contains("kube_proxy_mode"))
        .unwrap();
    assert!(kp.starts_with("info ") && kp.contains("ipvs"), "{kp}");
    assert!(text.contains("kube-proxy ipvs)"), "{text}");
}

#[test]
fn environment_and_input_errors() {
    // A namespace that does not exist: exit 3 with a message that says what to do.
    let out = Command::new(BIN)
        .args([
            "audit",
            "--netns",
            "gbt-no-such-namespace-audit",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gbt-no-such-namespace-audit"), "{err}");
    assert!(out.stdout.is_empty());
    // A URL that is not http://: exit 2, before anything is read.
    let out = Command::new(BIN)
        .args([
            "audit",
            "--kube-proxy-url",
            "https://127.0.0.1:10249/proxyMode",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kube-proxy-url"));
}

#[test]
fn emit_into_an_unwritable_place_is_an_environment_error() {
    if !root_or_skip("emit_into_an_unwritable_place_is_an_environment_error") {
        return;
    }
    let ns = NetNs::create("aud").unwrap();
    ensure_conntrack(&ns);
    // A regular file where the directory should be.
    let blocker = temp_dir("blocker");
    std::fs::write(&blocker, "").unwrap();
    let url = closed_url();
    let out = Command::new(BIN)
        .args([
            "audit",
            "--netns",
            ns.name(),
            "--kube-proxy-url",
            &url,
            "--emit-sysctl",
            blocker.join("sub").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("write sysctl files"));
    let _ = std::fs::remove_file(&blocker);
    assert!(!Path::new(&blocker).join("sub").exists());
}

// --- kube-proxy's mode, in both of its modes ------------------------------------------------

/// `audit` of a lab node whose Service rules kube-proxy's `mode` proxier programmed (netlab's
/// syncing kube-proxy: one `nft -f` or one `iptables-restore` per sync), with a DNAT'd flow in
/// its table and the good values set, asking that kube-proxy's `/proxyMode`. Returns the JSON
/// report and the table output.
fn audit_lab(mode: ProxyMode) -> (Value, String) {
    let config = ProxyConfig {
        mode,
        ..ProxyConfig::default()
    };
    let mut lab = Lab::with_config(config.clone()).expect("lab");
    let node = lab.node_netns().to_string();
    let eps = lab
        .add_pod(
            PodSpec::backend("web-a")
                .in_namespace("shop")
                .serve(ServerSpec::http(8080, 200, "web-a")),
        )
        .expect("backend")
        .endpoints();
    let client = lab
        .add_pod(PodSpec::client("client"))
        .expect("client")
        .netns()
        .to_string();
    let kp = netlab::SyncingProxy::start(&node, config).expect("kube-proxy");
    let web = Service::new("shop", "web")
        .cluster_ip(plan::vip_v4(50))
        .port(ServicePort::tcp("http", 80, 8080))
        .endpoints(eps);
    let seq = kp.change(vec![web]);
    assert!(
        kp.wait_synced(seq, Duration::from_secs(10)),
        "kube-proxy ({mode}) never synced: {:?}",
        kp.error()
    );
    // The node holds that mode's rules, and they DNAT: a request through the VIP is answered.
    let rules = lab.kube_proxy().list().expect("list the node's rules");
    let marker = match mode {
        ProxyMode::Iptables => "-j KUBE-SVC-",
        ProxyMode::Nftables => "table ip kube-proxy",
    };
    assert!(rules.contains(marker), "{mode}: no {marker:?} in\n{rules}");
    let vip = std::net::SocketAddr::from((plan::vip_v4(50), 80));
    let answer = netlab::http_get(&client, vip, Duration::from_secs(2)).expect("request via VIP");
    assert_eq!(
        (answer.status, answer.backend.as_str()),
        (200, "web-a"),
        "{mode}"
    );
    set_in(&node, GOOD);

    let url = format!("http://{}/proxyMode", kp.addr());
    let args = [
        "audit",
        "--netns",
        &node,
        "--kube-proxy-url",
        &url,
        "--exit-code",
    ];
    let out = Command::new(BIN)
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let worst = report["summary"]["worst"].as_str().unwrap();
    let code = if worst == "warn" || worst == "critical" {
        1
    } else {
        0
    };
    assert_eq!(out.status.code(), Some(code), "worst {worst}: {report:#}");
    let text = Command::new(BIN).args(args).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    (report, text)
}

/// What the checks of a report found: (check, severity), in order.
fn severities(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The mode audit read from `/proxyMode` is reported and judged one ghostbuster acts on; the
/// namespace's checks pass; the flow through the VIP is counted.
fn expect_mode_detected(mode: ProxyMode, report: &Value, text: &str) {
    let k = check(report, "kube_proxy_mode");
    assert_eq!(k["current"], mode.name(), "{k}");
    assert_eq!(k["severity"], "ok", "{k}");
    assert!(
        k["reason"]
            .as_str()
            .unwrap()
            .contains("iptables/nftables rules"),
        "{k}"
    );
    assert_eq!(
        report["facts"]["kube_proxy_mode"],
        mode.name(),
        "{report:#}"
    );
    for (name, value) in GOOD {
        let c = check(report, name);
        assert_eq!(c["severity"], "ok", "{mode}: {name}: {c}");
        assert_eq!(c["current"], *value, "{mode}: {name}");
    }
    assert!(
        report["facts"]["entries"].as_u64().unwrap() >= 1,
        "{mode}: the flow through the VIP is not counted: {report:#}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("kube_proxy_mode"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("ok ") && line.contains(mode.name()),
        "{line}"
    );
    assert!(
        text.contains(&format!("kube-proxy {})", mode.name())),
        "{text}"
    );
}

#[test]
fn audit_detects_kube_proxys_nftables_mode_from_proxy_mode() {
    if !root_or_skip("audit_detects_kube_proxys_nftables_mode_from_proxy_mode") {
        return;
    }
    let (report, text) = audit_lab(ProxyMode::Nftables);
    expect_mode_detected(ProxyMode::Nftables, &report, &text);
}

/// In iptables mode, and every check judges as it does on the same node in nftables mode.
#[test]
fn audit_detects_kube_proxys_iptables_mode_from_proxy_mode_and_judges_as_in_nftables_mode() {
    if !root_or_skip(
        "audit_detects_kube_proxys_iptables_mode_from_proxy_mode_and_judges_as_in_nftables_mode",
    ) {
        return;
    }
    let (report, text) = audit_lab(ProxyMode::Iptables);
    expect_mode_detected(ProxyMode::Iptables, &report, &text);
    let (nft, _) = audit_lab(ProxyMode::Nftables);
    assert_eq!(severities(&report), severities(&nft));
}
