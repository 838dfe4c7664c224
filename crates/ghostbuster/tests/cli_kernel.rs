//! `list` and `stats` against the real kernel on a bulk-filled namespace, compared with
//! conntrack-tools on the same table.

mod scan_support;

use std::collections::BTreeMap;
use std::process::Command;

use netlab::bulk::{self, BulkSpec};
use netlab::NetNs;
use scan_support::lab_available;
use serde_json::Value;

fn gb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ghostbuster"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn conntrack(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One filled table serves all checks (bulk fills share the machine's conntrack hash).
#[test]
fn list_and_stats_agree_with_conntrack_tools_on_a_filled_table() {
    if !lab_available("list_and_stats_agree_with_conntrack_tools_on_a_filled_table") {
        return;
    }
    let ns = NetNs::create("cli").unwrap();
    let spec = BulkSpec {
        entries: 20_000,
        services: 40,
        stale_fraction: 0.05,
        ..BulkSpec::default()
    };
    let (cluster, truth) = bulk::fill(Some(ns.name()), &spec).unwrap();
    assert_eq!(truth.created, 20_000);
    let dir = tempdir();
    bulk::write_truth(&dir, &spec, &cluster, &truth, false).unwrap();
    let cluster_file = dir.join("cluster.json").to_string_lossy().into_owned();
    let n = ns.name();

    // list --count == conntrack -C == number of ndjson lines == json count.
    let (code, count, _) = gb(&["list", "--netns", n, "--count"]);
    assert_eq!(code, 0);
    let c: u64 = conntrack(n, &["-C"]).trim().parse().unwrap();
    assert_eq!(count.trim().parse::<u64>().unwrap(), c);
    let (_, nd, _) = gb(&["list", "--netns", n, "-o", "ndjson"]);
    let flows: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(flows.len() as u64, c);
    let (_, js, _) = gb(&["list", "--netns", n, "-o", "json"]);
    let doc: Value = serde_json::from_str(&js).unwrap();
    assert_eq!(doc["count"].as_u64(), Some(c));
    assert_eq!(doc["flows"].as_array().unwrap().len() as u64, c);

    // A filter by backend (reply source) matches conntrack's own filter, IPv4 and IPv6.
    let dead4 = cluster
        .deleted
        .iter()
        .find(|d| d.ip.is_ipv4())
        .unwrap()
        .ip
        .to_string();
    {
        let ip = dead4;
        let (_, cnt, _) = gb(&["list", "--netns", n, "--reply-src", &ip, "--count"]);
        let theirs = conntrack(n, &["-L", "--reply-src", &ip]).lines().count() as u64;
        assert_eq!(
            cnt.trim().parse::<u64>().unwrap(),
            theirs,
            "--reply-src {ip}"
        );
        assert_eq!(theirs, truth.stale_per_backend[&ip.parse().unwrap()]);
    }
    if let Some(d6) = cluster.deleted.iter().find(|d| d.ip.is_ipv6()) {
        let ip = d6.ip.to_string();
        let (_, cnt, _) = gb(&["list", "--netns", n, "--reply-src", &ip, "--count"]);
        assert_eq!(
            cnt.trim().parse::<u64>().unwrap(),
            truth.stale_per_backend[&d6.ip]
        );
    }
    // TCP ESTABLISHED per conntrack -L equals our state filter.
    let est = conntrack(n, &["-L", "-p", "tcp", "--state", "ESTABLISHED"])
        .lines()
        .count() as u64;
    let (_, cnt, _) = gb(&[
        "list",
        "--netns",
        n,
        "-p",
        "tcp",
        "--state",
        "ESTABLISHED",
        "--count",
    ]);
    assert_eq!(cnt.trim().parse::<u64>().unwrap(), est);

    // stats: entries == conntrack -C, per-CPU sums == conntrack -S sums, top services == truth.
    let (code, st, err) = gb(&[
        "stats",
        "--netns",
        n,
        "-o",
        "json",
        "--top",
        "100",
        "--from-file",
        &cluster_file,
    ]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["entries"].as_u64(), Some(c));
    assert_eq!(st["dumped"].as_u64(), Some(c));
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for line in conntrack(n, &["-S"]).lines() {
        for kv in line.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=').unwrap();
            *sums.entry(k.to_string()).or_default() += v.parse::<u64>().unwrap();
        }
    }
    for k in [
        "insert",
        "insert_failed",
        "drop",
        "early_drop",
        "invalid",
        "found",
    ] {
        assert_eq!(
            st["counters"][k].as_u64(),
            sums.get(k).copied(),
            "counter {k}"
        );
    }
    assert_eq!(st["by_state"]["tcp ESTABLISHED"].as_u64(), Some(est));
    let top = st["top"]["by_service"].as_array().unwrap();
    assert!(!top.is_empty());
    for s in top {
        let name = s["name"].as_str().unwrap();
        let (healthy, stale) = truth.per_service[name];
        assert_eq!(s["entries"].as_u64(), Some(healthy + stale), "{name}");
        let share = s["share"].as_f64().unwrap();
        assert!((share - (healthy + stale) as f64 / c as f64).abs() < 1e-9);
    }
    let shares: f64 = st["top"]["by_service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["share"].as_f64().unwrap())
        .sum();
    assert!(shares <= 1.0 + 1e-9);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn environment_and_usage_errors_have_their_exit_codes() {
    let (code, _, err) = gb(&["list", "--netns", "gbt-no-such-namespace"]);
    if netlab::is_root() {
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("gbt-no-such-namespace"), "{err}");
    }
    let (code, _, err) = gb(&["list", "--state", "NOT_A_STATE"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = gb(&["list", "--bogus-flag"]);
    assert_eq!(code, 2);
    let (code, _, err) = gb(&["scan"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--from-file"), "{err}");
    // The breaker's limit is a percentage; a bad one is a usage error before anything is read.
    for bad in ["101", "-5", "half"] {
        let flag = format!("--max-delete-percent={bad}");
        let (code, _, err) = gb(&["sweep", "--from-file", "-", &flag]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--max-delete-percent"), "{err}");
    }
    // An export without EndpointSlices is refused before conntrack is opened (any user may see
    // this: no privilege is needed to be refused).
    let dir = std::env::temp_dir().join(format!("gb-cli-refusal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let services = dir.join("services.json");
    std::fs::write(
        &services,
        r#"{"kind": "ServiceList", "apiVersion": "v1", "items": [{"metadata": {"name": "web",
           "namespace": "shop"}, "spec": {"clusterIP": "198.51.100.7",
           "clusterIPs": ["198.51.100.7"], "ports": [{"port": 80}]}}]}"#,
    )
    .unwrap();
    let path = services.to_string_lossy().into_owned();
    for command in ["scan", "sweep", "explain"] {
        let mut args = vec![command, "--from-file", &path];
        if command == "explain" {
            args.push("198.51.100.7");
        }
        let (code, out, err) = gb(&args);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(out.is_empty(), "{command}: {out}");
        assert!(
            err.contains("holds no EndpointSlices")
                && err.contains(
                    "kubectl get services,endpointslices,pods,nodes,namespaces -A -o json"
                )
                && err.contains("nothing was changed"),
            "{command}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gb-cli-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
