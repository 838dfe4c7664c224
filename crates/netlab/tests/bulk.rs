//! Bulk fill of a real conntrack table. Alone in its own test binary: the conntrack hash is
//! shared by every namespace, so bulk fills must not run concurrently.

mod common;

use std::process::Command;

use netlab::bulk::{fill, write_truth, BulkSpec};
use netlab::NetNs;

fn conntrack_count(netns: &str, extra: &[&str]) -> usize {
    let mut args = vec!["netns", "exec", netns, "conntrack", "-L"];
    args.extend_from_slice(extra);
    let mut total = 0;
    for family in ["ipv4", "ipv6"] {
        let mut a = args.clone();
        a.extend(["-f", family]);
        let out = Command::new("ip").args(&a).output().expect("conntrack -L");
        total += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    total
}

#[test]
fn bulk_fill_matches_its_ground_truth() {
    if !common::lab_available("bulk_fill_matches_its_ground_truth") {
        return;
    }
    netlab::cleanup_leftovers().expect("cleanup");
    let ns = NetNs::create("bulk").expect("namespace");
    let spec = BulkSpec {
        entries: 20_000,
        services: 120,
        ..BulkSpec::default()
    };
    let (cluster, truth) = fill(Some(ns.name()), &spec).expect("fill");
    assert_eq!(truth.planned, 20_000);
    assert_eq!(truth.created, 20_000, "{truth:?}");
    assert_eq!(truth.failed, 0);
    assert!(
        truth.per_family.get("ipv6").copied().unwrap_or(0) > 0,
        "{:?}",
        truth.per_family
    );
    assert!(
        truth.per_protocol.get("udp").copied().unwrap_or(0) > 0,
        "{:?}",
        truth.per_protocol
    );

    // Every entry is DNAT'd, and the ghosts of one deleted backend are exactly as planned.
    assert_eq!(conntrack_count(ns.name(), &["--dst-nat"]), 20_000);
    let (ip, planned) = truth
        .stale_per_backend
        .iter()
        .find(|(ip, n)| ip.is_ipv4() && **n > 0)
        .expect("an IPv4 deleted backend with entries");
    assert_eq!(
        conntrack_count(ns.name(), &["--reply-src", &ip.to_string()]),
        *planned as usize
    );

    let dir = std::env::temp_dir().join(format!("netlab-bulk-{}", std::process::id()));
    write_truth(&dir, &spec, &cluster, &truth, true).expect("write truth");
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap()).unwrap();
    let items = list["items"].as_array().unwrap();
    let services = items.iter().filter(|i| i["kind"] == "Service").count();
    assert_eq!(services, 120);
    assert!(
        items
            .iter()
            .filter(|i| i["kind"] == "EndpointSlice")
            .count()
            >= 120
    );
    assert_eq!(
        items.iter().filter(|i| i["kind"] == "Pod").count(),
        120 * spec.backends
    );
    let text = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
    assert!(
        !text.contains(&format!("\"{ip}\"")),
        "a deleted backend is in the objects"
    );
    let flows = std::fs::read_to_string(dir.join("flows.tsv")).unwrap();
    assert_eq!(flows.lines().count(), 20_001);
    assert_eq!(
        flows.lines().filter(|l| l.ends_with("\t1")).count() as u64,
        truth.stale
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
