//! The evidence rules of issue #12 §1 against the real kernel: `sweep --from-file` on a table
//! without flow timestamps must keep a connection it cannot prove older than the export, while the
//! same run removes a ghost it can.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netlab::plan::vip_v4;
use netlab::Endpoint;
use scan_support::*;

fn set_timestamps(netns: &str, on: bool) {
    let value = if on { "1" } else { "0" };
    if let Err(e) = sysctl_in(netns, "net.netfilter.nf_conntrack_timestamp", value) {
        panic!("sysctl nf_conntrack_timestamp={value} in {netns}: {e}");
    }
}

/// Unknown age is not old. The export is taken before pod web-b exists; then, with
/// `nf_conntrack_timestamp=0`, a TCP connection is opened to web-b. Judged against the export,
/// web-b is "absent", but nothing proves the connection older than the export: `sweep` keeps it
/// (`kept_because: unknown_age`) and it keeps answering. The same run removes the UDP flow to
/// dns-old, which vanished: that flow got a start time (timestamps were on when it began) well
/// before the export, so the export's silence about dns-old is evidence for it.
#[test]
fn sweep_from_file_keeps_a_connection_of_unknown_age_to_a_pod_newer_than_the_export() {
    let Some(mut s) = Story::start("unknown_age_kept", false) else {
        return;
    };
    let node = s.node();
    let old = s.dns_backend("dns-old");
    let new = s.dns_backend("dns-new");
    let a = s.backend("web-a", "shop", "web", &[]);
    let dns = |eps: &[Endpoint]| dns_service(90, eps);
    s.lab
        .sync_services(&[dns(&old), web("shop", 91, &a)])
        .unwrap();

    // The sibling ghost, with a start time: UDP to dns-old, which then vanishes.
    set_timestamps(&node, true);
    let dns_client = s.querier(SocketAddr::from((vip_v4(90), 53)));
    let ghost_began = Instant::now();
    let report = dns_client.stop();
    assert!(report.answers_from("dns-old") >= 3, "{report:#?}");
    set_timestamps(&node, false);
    s.lab.delete_pod_silently("dns-old").unwrap();
    s.lab
        .sync_services(&[dns(&new), web("shop", 91, &a)])
        .unwrap();
    let ip_old = ip_of(&old, false);
    let ghost = s
        .table()
        .into_iter()
        .find(|f| f["protocol"] == "udp" && reply_src(f) == Some(ip_old))
        .expect("the UDP entry to dns-old");
    assert!(
        ghost["start_time"].is_string(),
        "the ghost has a start time: {ghost:#}"
    );
    let ghost = key(&ghost);

    // The export: proven later than the ghost's start by more than the default 2 s margin.
    sleep_until(ghost_began + Duration::from_millis(2600));
    let snapshot = jiff::Timestamp::now().to_string();
    let file = s.write(
        "cluster.json",
        &with_api_server(with_service_cidrs(s.lab.kubernetes_objects())),
    );

    // After the export, without timestamps: web-b is created and a connection opened to it.
    let b = s.backend("web-b", "shop", "web", &[]);
    s.lab
        .sync_services(&[dns(&new), web("shop", 91, &b)])
        .unwrap();
    let mut conn = connect(&s.client, SocketAddr::from((vip_v4(91), 80)));
    assert_eq!(http_request(&mut conn, TIMEOUT).unwrap(), "web-b");
    s.lab
        .sync_services(&[dns(&new), web("shop", 91, &[a, b.clone()].concat())])
        .unwrap();
    let ip_b = ip_of(&b, false);
    let live = s
        .table()
        .into_iter()
        .find(|f| f["protocol"] == "tcp" && reply_src(f) == Some(ip_b))
        .expect("the TCP entry to web-b");
    assert!(
        live["start_time"].is_null(),
        "no start time without nf_conntrack_timestamp: {live:#}"
    );
    let live = key(&live);

    // The default --clock-skew (2 s), unlike `Story::sweep`.
    let run = Run::of(&[
        "sweep",
        "--netns",
        &node,
        "--from-file",
        &file,
        // The lab's export has no Namespaces (no namespace is annotated here).
        "--ignore-namespace-modes",
        "-o",
        "json",
        "--snapshot-time",
        &snapshot,
    ])
    .ok(0);
    // The sweep ran: the ghost it could prove went.
    let gone = run.to_backend(ip_old);
    assert_eq!(gone.len(), 1, "{}", run.pretty());
    assert_eq!(gone[0]["verdict"], "endpoint_gone", "{}", run.pretty());
    assert_eq!(gone[0]["result"], "deleted", "{}", run.pretty());
    assert!(evidence(gone[0]).contains(&"pod_absent".to_string()));
    assert!(run.deleted() >= 1, "{}", run.pretty());
    // The connection of unknown age was judged and kept.
    let kept = run.to_backend(ip_b);
    assert_eq!(kept.len(), 1, "{}", run.pretty());
    assert_eq!(kept[0]["verdict"], "endpoint_gone", "{}", run.pretty());
    assert_eq!(kept[0]["removable"], false, "{}", run.pretty());
    assert_eq!(kept[0]["kept_because"], "unknown_age", "{}", run.pretty());
    assert!(
        kept[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("net.netfilter.nf_conntrack_timestamp=1"),
        "{}",
        run.pretty()
    );
    let table = keys(&s.table());
    assert!(!table.contains(&ghost), "the UDP ghost is still there");
    assert!(table.contains(&live), "the live connection's entry went");
    assert_eq!(http_request(&mut conn, TIMEOUT).unwrap(), "web-b");

    // The human report tells the operator how to turn timestamps on.
    let human = Run::of(&[
        "scan",
        "--netns",
        &node,
        "--from-file",
        &file,
        "--snapshot-time",
        &snapshot,
    ]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human
            .stdout
            .contains("sysctl -w net.netfilter.nf_conntrack_timestamp=1"),
        "{}",
        human.stdout
    );
}
