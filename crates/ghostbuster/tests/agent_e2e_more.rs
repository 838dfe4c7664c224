//! More of the agent end to end (issue #4, section 5), each story against the real kernel in a
//! netlab node namespace, with a real ghost (a pooled TCP connection or a UDP flow to a backend
//! that vanished silently) and a connection that must survive: a 410 relist that drops an
//! endpoint, a conntrack event overflow (ENOBUFS), a terminating pod, a ghost recreated by
//! kube-proxy rules that still point at the dead backend, and a Namespace annotated
//! `ghostbuster.io/mode: off` whose ghosts are kept while the same ghosts elsewhere go.
//!
//! The helpers are `agent_support`'s; the agent's stderr is captured so the tests can count its
//! `pass` lines.

mod agent_support;
mod scan_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_support::*;
use fake_apiserver::FakeApiServer;
use netlab::client::TcpPoolConfig;
use netlab::plan::vip_v4;
use netlab::{Endpoint, UdpClient, UdpConfig};
use scan_support::*;
use serde_json::Value;

/// The `pass` lines of `kind` that deleted something: their `deleted=N`.
fn deleting_passes(agent: &Agent, kind: &str) -> Vec<u64> {
    agent
        .log_lines()
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains(" pass ") && l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| field(&l, "deleted")?.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .collect()
}

/// The line without ANSI colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name=VALUE` of a log line (unquoted).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// One series of a metric: the value of the line `name{...label...} V` (0 when absent).
fn metric_series(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scans(agent: &Agent, kind: &str) -> f64 {
    metric_series(
        &agent.metrics(),
        "ghostbuster_scan_duration_seconds_count",
        &format!("kind=\"{kind}\""),
    )
}

fn gets_of_pod(api: &FakeApiServer, name: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.verb == "get" && r.resource == "pods" && r.name.as_deref() == Some(name))
        .count()
}

/// Test 1. The endpoint's removal is invisible to the watches (the watch cache "fell behind"):
/// only the relist after the 410 shows it. The agent must turn that relist into exactly one
/// targeted sweep of the dead backend, keep the healthy connection, and a later relist that
/// changes nothing must remove nothing more.
#[test]
fn a_relist_after_410_that_drops_an_endpoint_sweeps_that_backend_once() {
    let Some(g) = GhostStory::start("agent_more_relist", 40, Duration::from_millis(500), |r| {
        r.capture_log()
    }) else {
        return;
    };
    let (api, kp, agent) = (&g.rig.api, &g.rig.kp, &g.rig.agent);
    let lists_before = api.count("list", "endpointslices");

    // The removal, unseen by every watch; then 410 for all of them.
    let objects = g.s.lab.kubernetes_objects();
    api.lose_events(|api| {
        publish(api, &objects);
        api.delete("pods", "shop", "web-a");
    });
    // 20 s: the relist waits out the watch's backoff after a 410, and on a loaded 2-core CI
    // machine (the flood test of this file runs alongside) every step stretches; alone it takes
    // ~1.3 s. It failed once in ~10 runs with 10 s.
    let took = kp.sync_until(Duration::from_secs(20), || g.ghosts_left() == 0);
    assert!(
        g.ghosts_left() == 0,
        "ghosts still there {took:?} after the relist; endpointslice lists {} -> {}; agent metrics:\n{}",
        lists_before,
        api.count("list", "endpointslices"),
        agent
            .metrics()
            .lines()
            .filter(|l| l.starts_with("ghostbuster_") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        api.count("list", "endpointslices") > lists_before,
        "the agent never relisted"
    );
    eprintln!("ghosts removed {took:?} after the 410");
    expect_fail_fast_and_recover(g.ghost, &g.hung, Some("web-b"), Duration::from_secs(8));

    // A second 410 (nothing changed): a relist that must not cause another removal.
    let lists = api.count("list", "endpointslices");
    api.expire_watches();
    wait_for_every(Duration::from_millis(50), Duration::from_secs(5), || {
        api.count("list", "endpointslices") != lists
    });
    assert!(
        api.count("list", "endpointslices") > lists,
        "no second relist"
    );
    for _ in 0..5 {
        kp.synced_now();
    }
    expect_untouched(g.healthy, &g.before, &["web-b"], "healthy pool");

    let targeted = deleting_passes(agent, "targeted");
    let full = deleting_passes(agent, "full");
    let m = agent.metrics();
    eprintln!(
        "deleting passes: targeted {targeted:?}, full {full:?}; targeted scans {}",
        scans(agent, "targeted")
    );
    assert_eq!(
        targeted,
        vec![2],
        "exactly one targeted sweep removing both ghosts"
    );
    assert!(full.is_empty(), "a full pass removed something: {full:?}");
    expect_removed(&m, 2.0);
}

/// The agent's log lines that say a pass was held for `reason`.
fn held_passes(agent: &Agent, reason: &str) -> usize {
    agent
        .log_lines()
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains(" pass ") && l.contains(reason))
        .count()
}

/// Test 1b. A pod leaves its Service's slices while it still runs (deselected: its TCP flows are
/// kept, the pod GET says "same pod"), and is deleted later. The deletion, seen by the watch of
/// this node's pods, is the evidence: its flows go then, from a targeted pass, not at the next
/// full pass (60 s away). The healthy connection to the other backend survives.
#[test]
fn a_deselected_pod_loses_its_ghosts_when_it_is_deleted() {
    let Some((mut s, a, b, vip, ghost)) = two_backends("agent_more_deselect", true, 43) else {
        return;
    };

    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s).capture_log().start();

    // Deselected: out of the slice, the pod runs on.
    s.lab.sync_services(&[web("shop", 43, &b)]).unwrap();
    let dead = ip_of(&a, false);
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    publish(&api, &s.lab.kubernetes_objects());
    kp.sync_until(Duration::from_secs(20), || gets_of_pod(&api, "web-a") != 0);
    assert!(
        gets_of_pod(&api, "web-a") > 0,
        "the agent never asked about web-a"
    );
    for _ in 0..5 {
        kp.synced_now();
    }
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "the flows of a deselected, running pod were removed"
    );
    let before = mark(&ghost);
    expect_answers(&ghost, before.answers + 2, "pool to the deselected web-a");

    // Now the pod is deleted: the watch event is the evidence.
    s.lab.delete_pod_silently("web-a").unwrap();
    let hung = expect_hang(&ghost, 2, Duration::from_millis(500));
    let before_healthy = mark(&healthy);
    api.delete("pods", "shop", "web-a");
    let took = kp.sync_until(Duration::from_secs(20), || {
        entries_to(&table(&s.node()), dead).is_empty()
    });
    assert!(
        entries_to(&table(&s.node()), dead).is_empty(),
        "the deleted pod's flows are still there {took:?} after its deletion"
    );
    eprintln!("flows removed {took:?} after the pod's deletion");
    expect_fail_fast_and_recover(ghost, &hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(healthy, &before_healthy, &["web-b"], "healthy pool");
    assert_eq!(deleting_passes(&agent, "targeted"), vec![2]);
    assert!(deleting_passes(&agent, "full").is_empty());
}

/// Test 1c. The endpoint's removal arrives by a relist while another watch (Services) is still
/// relisting: the global gate holds ("not synced") although kube-proxy synced and the pod is
/// gone. When that relist ends, the held backend is looked at again at once — nothing else
/// would bring it back before the next full pass, 60 s away.
#[test]
fn a_removal_held_while_a_watch_relists_goes_when_the_relist_ends() {
    let Some(g) = GhostStory::start("agent_more_held", 44, Duration::from_millis(500), |r| {
        r.capture_log()
    }) else {
        return;
    };
    let (api, kp, agent) = (&g.rig.api, &g.rig.kp, &g.rig.agent);

    api.hang_lists("services", true);
    let objects = g.s.lab.kubernetes_objects();
    api.lose_events(|api| {
        publish(api, &objects);
        api.delete("pods", "shop", "web-a");
    });
    kp.sync_until(Duration::from_secs(20), || {
        held_passes(agent, "not_synced") != 0
    });
    assert!(
        held_passes(agent, "not_synced") > 0,
        "no pass was held while Services relisted"
    );
    assert_eq!(g.ghosts_left(), 2, "removed while a watch was relisting");

    api.hang_lists("services", false);
    let took = kp.sync_until(Duration::from_secs(20), || g.ghosts_left() == 0);
    assert!(
        g.ghosts_left() == 0,
        "ghosts still there {took:?} after the Services relist ended"
    );
    eprintln!("held ghosts removed {took:?} after the relist ended");
    expect_fail_fast_and_recover(g.ghost, &g.hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(g.healthy, &g.before, &["web-b"], "healthy pool");
    assert_eq!(deleting_passes(agent, "targeted"), vec![2]);
    assert!(deleting_passes(agent, "full").is_empty());
}

/// An established UDP entry from 192.0.2.0/24 to 198.51.100.200:53, distinct for each `i`.
/// A UDP flow DNAT'd to `backend` from an address that is no Service's: the agent's event filter
/// lets it through (its backend is a removed one), and the decision table calls it `not_service`.
fn flood_flow(i: u64, backend: std::net::IpAddr) -> ctnetlink::NewFlow {
    let src = std::net::Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1);
    let t = ctnetlink::Tuple::ports(
        src.into(),
        1024 + ((i / 250) % 60000) as u16,
        std::net::Ipv4Addr::new(198, 51, 100, 200).into(),
        53,
        17,
    );
    ctnetlink::NewFlow::established(t, Some((backend, 53)))
}

/// Test 2. A flood of NEW events overflows the agent's event socket (64 KiB here, so that it overflows on any machine): every overflow counts
/// as lost events, and the whole burst becomes one full scan (not one per overflow). The healthy
/// connection survives it.
#[test]
fn an_event_overflow_becomes_one_full_scan() {
    let Some(mut s) = Story::start("agent_more_enobufs", false) else {
        return;
    };
    let max = conntrack_max();
    let b = s.backend("web-b", "shop", "web", &[]);
    let x = s.backend("web-x", "shop", "web", &[]);
    let vip = SocketAddr::from((vip_v4(41), 80));
    s.lab.sync_services(&[web("shop", 41, &b)]).unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    // x joins (after the healthy pool connected to b, so none of its connections is on x).
    let both: Vec<Endpoint> = b.iter().chain(x.iter()).cloned().collect();
    s.lab.sync_services(&[web("shop", 41, &both)]).unwrap();
    let AgentRig {
        api,
        kp: _kp,
        agent,
        ..
    } = AgentRig::of(&s)
        .kube_proxy_synced()
        .args(&["--event-buffer-bytes", "65536"])
        .capture_log()
        .start();
    // x leaves the Service: its tombstone makes it a removed backend, so the agent's kernel-side
    // event filter passes NEW flows toward it (and only those) — the flood below targets it.
    let changes = metric_sum(&agent.metrics(), "ghostbuster_endpoint_changes_total");
    s.lab.sync_services(&[web("shop", 41, &b)]).unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-x");
    let dead = ip_of(&x, false);
    wait_for_every(Duration::from_millis(20), Duration::from_secs(5), || {
        metric_sum(&agent.metrics(), "ghostbuster_endpoint_changes_total") > changes
    });
    // The first full pass is done once ready; the next periodic one is 60 s away.
    wait_for_every(Duration::from_millis(50), Duration::from_secs(3), || {
        scans(&agent, "full") >= 1.0
    });
    let full_before = scans(&agent, "full");
    assert!(full_before >= 1.0);
    let before = mark(&healthy);

    let existing = table(&s.node()).len() as u64;
    let want = 200_000u64.min(max.saturating_sub(existing + 1000));
    // Two creators at once (one per core), as fast as ctnetlink takes them: the agent's reader
    // shares the CPUs with them and falls behind.
    let t = Instant::now();
    let made: u64 = std::thread::scope(|sc| {
        let creators: Vec<_> = (0..2u64)
            .map(|k| {
                let node = s.node();
                sc.spawn(move || {
                    let mut ct = ctnetlink::Conntrack::open_in(Some(&node)).unwrap();
                    let mut made = 0u64;
                    let mine: Vec<u64> = (0..want).filter(|i| i % 2 == k).collect();
                    for chunk in mine.chunks(5_000) {
                        let flows: Vec<ctnetlink::NewFlow> =
                            chunk.iter().map(|&i| flood_flow(i, dead)).collect();
                        made += ct.create(&flows).unwrap().created;
                    }
                    made
                })
            })
            .collect();
        creators.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let flood = t.elapsed();
    assert_eq!(made, want);
    // One full scan, within a few seconds of the flood.
    wait_for_every(Duration::from_millis(50), Duration::from_secs(10), || {
        scans(&agent, "full") >= full_before + 1.0
    });
    let resync_after = t.elapsed().saturating_sub(flood);
    // ... and no second one for the same burst.
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    let lost = metric_sum(&m, "ghostbuster_conntrack_events_lost_total");
    let full_after = scans(&agent, "full");
    eprintln!(
        "flood: {made} NEW entries in {flood:?} ({:.0}/s); events lost (overflows): {lost}; full scans {full_before} -> {full_after}; resync seen {resync_after:?} after the flood",
        made as f64 / flood.as_secs_f64()
    );
    assert!(lost > 0.0, "the 64 KiB event buffer never overflowed: {m}");
    assert_eq!(
        full_after,
        full_before + 1.0,
        "one full scan per burst of overflows: {lost} overflows"
    );
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
    expect_removed(&m, 0.0);
}

/// Test 3. A terminating pod (still in its slice with `terminating: true`, its Pod object
/// carrying a deletionTimestamp) keeps its TCP flows: they drain and keep working. Once the
/// endpoint leaves the slice and the pod vanishes, the flows go (the pod watch saw the pod
/// deleted; a GET, when the agent asks first, answers 404).
#[test]
fn a_terminating_pod_keeps_its_flows_until_it_leaves_the_slice() {
    let Some((mut s, a, b, vip, draining)) = two_backends("agent_more_terminating", true, 42)
    else {
        return;
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&["--resync-interval", "1s"])
        .capture_log()
        .start();

    // A is terminating: kube-proxy sends new connections to B only; A's pod is alive, draining.
    let terminating: Vec<Endpoint> = a.iter().cloned().map(Endpoint::terminating).collect();
    let mix: Vec<Endpoint> = b.iter().cloned().chain(terminating).collect();
    s.lab.sync_services(&[web("shop", 42, &mix)]).unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    let mut objects = s.lab.kubernetes_objects();
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    object_mut(&mut objects, "Pod", "web-a")["metadata"]["deletionTimestamp"] =
        Value::String(now.to_string());
    let slices = slices_mut(&mut objects, "web");
    let dead = ip_of(&a, false);
    let conditions: Vec<Value> = slices
        .iter()
        .flat_map(|sl| sl["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["addresses"][0] == dead.to_string())
        .map(|e| e["conditions"].clone())
        .collect();
    assert_eq!(
        conditions,
        vec![serde_json::json!({"ready": false, "serving": true, "terminating": true})]
    );
    publish(&api, &objects);
    // The gate is open (kube-proxy synced, full passes every second): nothing holds but the
    // evidence.
    let before = mark(&draining);
    for _ in 0..10 {
        kp.synced_now();
    }
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "a terminating pod's flows were removed"
    );
    let drained = draining.report();
    assert!(drained.errors.is_empty(), "{:?}", drained.errors);
    assert!(
        drained.connections.iter().all(|c| c.answers
            >= before
                .connections
                .iter()
                .find(|x| x.id == c.id)
                .map_or(0, |x| x.answers)
                + 10),
        "the draining connections stopped: {drained:#?}"
    );
    assert_eq!(drained.answers_from("web-a"), drained.answers);

    // A leaves the slice and vanishes: now the flows are ghosts, and go.
    s.lab.sync_services(&[web("shop", 42, &b)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    let hung = expect_hang(&draining, 2, Duration::from_millis(500));
    let before_healthy = mark(&healthy);
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    let took = kp.sync_until(Duration::from_secs(8), || {
        entries_to(&table(&s.node()), dead).is_empty()
    });
    assert!(
        entries_to(&table(&s.node()), dead).is_empty(),
        "the flows of the gone pod are still there after {took:?}"
    );
    eprintln!("terminated pod's flows removed {took:?} after it left the slice");
    expect_fail_fast_and_recover(draining, &hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(healthy, &before_healthy, &["web-b"], "healthy pool");
    // The agent may ask about a pod last seen terminating (issue #12: a draining pod whose
    // labels changed leaves the slice alive): no assertion on the GETs here, this node's pod
    // watch saw it deleted.
    agent.expect_removed(2.0);
}

/// Test 4. kube-proxy's rules still send the client to the dead backend (the fake kube-proxy
/// claims a sync, the node's rules are never resynced): after the agent removed the ghost UDP
/// flow, the client's next datagram recreates it. The NEW event counts it as recreated and its
/// targeted pass removes it again; once the client stops, no ghost is left. A UDP client pinned
/// to the live backend is never touched.
#[test]
fn a_recreated_ghost_is_counted_and_removed_again() {
    let Some(mut s) = Story::start("agent_more_recreated", true) else {
        return;
    };
    let a = s.dns_backend("dns-a");
    let b = s.dns_backend("dns-b");
    let dns = |eps: &[Endpoint]| dns_service(43, eps);
    let vip = SocketAddr::from((vip_v4(43), 53));
    let both: Vec<Endpoint> = a.iter().chain(&b).cloned().collect();
    s.lab.sync_services(&[dns(&both)]).unwrap();
    let objects_both = s.lab.kubernetes_objects();
    // One socket pinned to each backend (syncing one endpoint at a time pins them).
    s.lab.sync_services(&[dns(&b)]).unwrap();
    let objects_b = s.lab.kubernetes_objects();
    let quick = UdpConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        run_for: Duration::from_secs(30),
        ..UdpConfig::default()
    };
    let healthy = UdpClient::start(&s.client, vip, quick.clone()).unwrap();
    assert!(healthy.wait_answers(3, TIMEOUT), "{:#?}", healthy.report());
    // From here on the node's rules send everything to A, and are never resynced.
    s.lab.sync_services(&[dns(&a)]).unwrap();
    let max_queries = 50;
    let stale = UdpClient::start(
        &s.client,
        vip,
        UdpConfig {
            max_queries,
            ..quick
        },
    )
    .unwrap();
    assert!(stale.wait_answers(3, TIMEOUT), "{:#?}", stale.report());

    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects_both)
        .capture_log()
        .start();

    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("dns-a").unwrap();
    let healthy_before = healthy.report();
    // The API says A is gone and kube-proxy claims to have synced; its rules say otherwise.
    publish_pod_gone(&api, &objects_b, "kube-system", "dns-a");
    kp.synced_now();

    // Recreated at least once, and removed again.
    let until = Instant::now() + Duration::from_secs(8);
    let mut m = agent.metrics();
    while metric_sum(&m, "ghostbuster_flows_recreated_total") < 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        m = agent.metrics();
    }
    assert!(
        metric_sum(&m, "ghostbuster_flows_recreated_total") >= 1.0,
        "no recreated flow counted: {m}"
    );
    // The client stops by itself after its bounded queries; then the last ghost goes too.
    wait_for_every(Duration::from_millis(50), Duration::from_secs(20), || {
        stale.report().requests >= max_queries
    });
    let report = stale.stop();
    let t = Instant::now();
    while !entries_to(&table(&s.node()), dead).is_empty() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = t.elapsed();
    let m = agent.metrics();
    let recreated = metric_sum(&m, "ghostbuster_flows_recreated_total");
    let removed = metric_sum(&m, "ghostbuster_flows_removed_total");
    let targeted = deleting_passes(&agent, "targeted");
    eprintln!(
        "client sent {} queries; recreated {recreated}, removed {removed}, targeted deleting passes {}; last ghost gone {left:?} after the client stopped",
        report.requests,
        targeted.len()
    );
    assert!(
        entries_to(&table(&s.node()), dead).is_empty(),
        "a recreated ghost was left behind: {:#?}",
        entries_to(&table(&s.node()), dead)
    );
    assert!(removed >= 2.0, "removed once, never again: {m}");
    assert!(targeted.len() >= 2, "{targeted:?}");
    assert!(deleting_passes(&agent, "full").is_empty());
    let h = healthy.stop();
    assert!(h.errors.is_empty(), "healthy client broke: {:?}", h.errors);
    assert!(h.answers >= healthy_before.answers + 3, "{h:#?}");
    assert_eq!(h.answers_from("dns-b"), h.answers);
}

/// A Namespace object, annotated `ghostbuster.io/mode: MODE` when `mode` is given.
fn namespace(name: &str, mode: Option<&str>) -> Value {
    let mut ns = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    });
    if let Some(m) = mode {
        ns["metadata"]["annotations"] = serde_json::json!({ "ghostbuster.io/mode": m });
    }
    ns
}

/// Test 5. The same ghost twice: pooled TCP connections to a backend that vanished silently, in
/// Namespace `quiet` (annotated `ghostbuster.io/mode: off`) and in Namespace `shop` (no
/// annotation). The agent removes `shop`'s ghosts at once and keeps `quiet`'s through every
/// targeted and full pass, reporting them; once the annotation is removed, the next full pass
/// removes them too. Healthy connections in both namespaces are never touched.
#[test]
fn a_namespace_annotated_off_keeps_its_ghosts_while_the_same_ghosts_elsewhere_go() {
    let Some(mut s) = Story::start("agent_more_namespace_off", true) else {
        return;
    };
    let qa = s.backend("quiet-a", "quiet", "web", &[]);
    let qb = s.backend("quiet-b", "quiet", "web", &[]);
    let sa = s.backend("shop-a", "shop", "web", &[]);
    let sb = s.backend("shop-b", "shop", "web", &[]);
    let (quiet_vip, shop_vip) = (
        SocketAddr::from((vip_v4(44), 80)),
        SocketAddr::from((vip_v4(45), 80)),
    );
    s.lab
        .sync_services(&[web("quiet", 44, &qa), web("shop", 45, &sa)])
        .unwrap();
    // The kept ghosts wait for several passes and then for TCP's backed-off retransmission:
    // give that pool more than the usual 40 s.
    let quiet_ghost = pool_with(
        &s.client,
        quiet_vip,
        TcpPoolConfig {
            connections: 2,
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_millis(500),
            connect_timeout: TIMEOUT,
            run_for: Duration::from_secs(90),
            ..TcpPoolConfig::default()
        },
    );
    let shop_ghost = pool(&s.client, shop_vip, 2);
    expect_answers(&quiet_ghost, 2, "quiet ghost pool");
    expect_answers(&shop_ghost, 2, "shop ghost pool");

    // The shipped ClusterRole, so a missing `namespaces` rule would show as 403s (and an agent
    // that never gets ready).
    let role = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/clusterrole.yaml"
    ))
    .unwrap();
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .api(move |api| {
            api.create(namespace("quiet", Some("off")));
            api.create(namespace("shop", None));
            api.set_rbac(Some(fake_apiserver::Rbac::from_manifests(&role).unwrap()));
        })
        .objects(s.lab.kubernetes_objects())
        .args(&["--resync-interval", "1s"])
        .capture_log()
        .start();

    // Both Services move to their second backend; the first ones vanish without a RST, and the
    // API says so (slices updated, pods deleted).
    s.lab
        .sync_services(&[web("quiet", 44, &qb), web("shop", 45, &sb)])
        .unwrap();
    let (quiet_dead, shop_dead) = (ip_of(&qa, false), ip_of(&sa, false));
    s.lab.delete_pod_silently("quiet-a").unwrap();
    s.lab.delete_pod_silently("shop-a").unwrap();
    let quiet_healthy = pool(&s.client, quiet_vip, 2);
    let shop_healthy = pool(&s.client, shop_vip, 2);
    expect_answers(&quiet_healthy, 2, "quiet healthy pool");
    expect_answers(&shop_healthy, 2, "shop healthy pool");
    let quiet_hung = expect_hang(&quiet_ghost, 2, Duration::from_millis(500));
    let shop_hung = expect_hang(&shop_ghost, 2, Duration::from_millis(500));
    let (quiet_before, shop_before) = (mark(&quiet_healthy), mark(&shop_healthy));
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "quiet", "quiet-a");
    api.delete("pods", "shop", "shop-a");

    // shop, without the annotation: removed as soon as the gate opens.
    let took = kp.sync_until(Duration::from_secs(10), || {
        entries_to(&table(&s.node()), shop_dead).is_empty()
    });
    assert!(
        entries_to(&table(&s.node()), shop_dead).is_empty(),
        "the shop ghosts are still there {took:?} after the change"
    );
    eprintln!("shop ghosts removed {took:?} after the change");
    expect_fail_fast_and_recover(
        shop_ghost,
        &shop_hung,
        Some("shop-b"),
        Duration::from_secs(8),
    );

    // quiet, annotated off: kept through more kube-proxy syncs and at least two full passes,
    // and reported.
    let full_before = scans(&agent, "full");
    kp.sync_until(Duration::from_secs(10), || {
        scans(&agent, "full") >= full_before + 2.0
    });
    assert!(scans(&agent, "full") >= full_before + 2.0, "no full passes");
    assert_eq!(
        entries_to(&table(&s.node()), quiet_dead).len(),
        2,
        "the ghosts of a namespace annotated off were removed"
    );
    let m = agent.metrics();
    expect_removed(&m, 2.0);
    assert!(
        metric_series(&m, "conntrack_stale_entries", "namespace=\"quiet\"") >= 2.0,
        "the kept ghosts are still reported: {m}"
    );
    let still = quiet_ghost.report();
    assert_eq!(
        still.answers, quiet_hung.answers,
        "a kept ghost connection answered"
    );

    // The annotation removed: the next full pass removes them (the evidence was there all
    // along: the endpoint's tombstone and the pod's 404).
    api.update(namespace("quiet", None));
    let took = kp.sync_until(Duration::from_secs(10), || {
        entries_to(&table(&s.node()), quiet_dead).is_empty()
    });
    assert!(
        entries_to(&table(&s.node()), quiet_dead).is_empty(),
        "the quiet ghosts are still there {took:?} after the annotation was removed"
    );
    eprintln!("quiet ghosts removed {took:?} after the annotation was removed");
    expect_fail_fast_and_recover(
        quiet_ghost,
        &still,
        Some("quiet-b"),
        Duration::from_secs(30),
    );
    expect_untouched(
        quiet_healthy,
        &quiet_before,
        &["quiet-b"],
        "quiet healthy pool",
    );
    expect_untouched(shop_healthy, &shop_before, &["shop-b"], "shop healthy pool");
    agent.expect_removed(4.0);
    assert!(
        api.forbidden().is_empty(),
        "the shipped ClusterRole refused the agent: {:#?}",
        api.forbidden()
    );
}

/// Flows made for [`a_large_removal_deletes_out_of_the_destroy_group_and_the_index_stays_exact`]
/// toward each backend: over the 64 planned deletes from which the agent leaves the DESTROY group.
const MANY: u16 = 150;

/// An established TCP entry from 192.0.2.200-249 (ports 3000 and up: below the clients'
/// ephemeral range, so no real connection holds the tuple) to `vip`, DNAT'd to `backend`:8080.
fn made_flow(i: u16, vip: SocketAddr, backend: std::net::IpAddr) -> ctnetlink::NewFlow {
    let src = std::net::Ipv4Addr::new(192, 0, 2, 200 + (i % 50) as u8);
    let t = ctnetlink::Tuple::ports(src.into(), 3000 + i, vip.ip(), vip.port(), 6);
    ctnetlink::NewFlow::established(t, Some((backend, HTTP)))
}

/// The node's entries the flow index holds (DNAT'd, with ports), read from the kernel.
fn dnat_entries(node: &str) -> Vec<ctnetlink::Flow> {
    let mut ct = ctnetlink::Conntrack::open_in(Some(node)).expect("open conntrack");
    let mut out = Vec::new();
    ct.dump(&ctnetlink::Filter::default(), |f| {
        if f.is_dnat() && matches!(f.reply.l4, ctnetlink::L4::Ports { .. }) {
            out.push(*f);
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("dump");
    out
}

/// Of the node's DNAT'd entries, those toward `backend`.
fn dnat_entries_to(node: &str, backend: std::net::IpAddr) -> Vec<ctnetlink::Flow> {
    let mut all = dnat_entries(node);
    all.retain(|f| f.reply.src == backend);
    all
}

/// Waits until the agent's `ghostbuster_flow_index_entries` equals the node's DNAT'd entries
/// (the gauge is refreshed every 5 s and after each pass).
#[track_caller]
fn expect_index_exact(agent: &Agent, node: &str, when: &str) {
    let mut seen = (0.0, 0);
    let ok = wait_for_every(Duration::from_millis(200), Duration::from_secs(15), || {
        let indexed = metric_sum(&agent.metrics(), "ghostbuster_flow_index_entries");
        seen = (indexed, dnat_entries(node).len());
        indexed == seen.1 as f64
    });
    assert!(
        ok,
        "{when}: the flow index holds {} entries, the node {} DNAT'd ones",
        seen.0, seen.1
    );
}

/// Test 7. A removal of 150 flows of one backend, over the 64 planned deletes from which the
/// agent deletes with its event socket out of the DESTROY group (its own deletes would otherwise
/// cost it ~4 µs each in DESTROY messages): every ghost goes, every flow of the live backends
/// stays, the flow index forgets exactly the deleted entries (its size converges to the node's
/// DNAT'd entries, no more, no less), it hears DESTROY again afterwards (entries deleted behind
/// its back are forgotten too), and it stays trusted: no backend is read by a walk.
#[test]
fn a_large_removal_deletes_out_of_the_destroy_group_and_the_index_stays_exact() {
    let Some(mut s) = Story::start("agent_more_quiet", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let c = s.backend("web-c", "shop", "web", &[]);
    let vip = SocketAddr::from((vip_v4(47), 80));
    // The healthy pool connects while web-c alone serves: none of its connections is on a or b.
    s.lab.sync_services(&[web("shop", 47, &c)]).unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    let all: Vec<Endpoint> = a.iter().chain(&b).chain(&c).cloned().collect();
    s.lab.sync_services(&[web("shop", 47, &all)]).unwrap();
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .kube_proxy_synced()
        // No periodic full pass: it rebuilds the index and would hide what the removal did to it.
        .args(&["--resync-interval", "3600s"])
        .capture_log()
        .start();
    let node = s.node();
    let (dead, live) = (ip_of(&a, false), ip_of(&b, false));
    let mut ct = ctnetlink::Conntrack::open_in(Some(&node)).expect("open conntrack");
    let flows: Vec<ctnetlink::NewFlow> = (0..MANY)
        .map(|i| made_flow(i, vip, dead))
        .chain((MANY..2 * MANY).map(|i| made_flow(i, vip, live)))
        .collect();
    assert_eq!(
        ct.create(&flows).expect("create").created,
        2 * u64::from(MANY)
    );
    // The index learnt them from their NEW events.
    expect_index_exact(&agent, &node, "after the flows were made");
    let before = mark(&healthy);

    // web-a leaves the Service and its pod is deleted.
    let rest: Vec<Endpoint> = b.iter().chain(&c).cloned().collect();
    s.lab.sync_services(&[web("shop", 47, &rest)]).unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    let took = kp.sync_until(Duration::from_secs(20), || {
        dnat_entries_to(&node, dead).is_empty()
    });
    assert!(
        dnat_entries_to(&node, dead).is_empty(),
        "web-a's flows are still there {took:?} after its removal"
    );
    assert_eq!(
        dnat_entries_to(&node, live).len(),
        usize::from(MANY),
        "a flow of the live web-b was deleted"
    );
    // One targeted pass deleted all of them, out of the DESTROY group.
    let quiet: Vec<String> = agent
        .log_lines()
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains(" pass ") && l.contains("kind=\"targeted\""))
        .filter(|l| field(l, "without_destroy_events") == Some("true"))
        .collect();
    assert_eq!(quiet.len(), 1, "{quiet:#?}");
    assert_eq!(field(&quiet[0], "deleted"), Some("150"), "{}", quiet[0]);
    // The index forgot exactly those.
    expect_index_exact(&agent, &node, "after the removal");

    // Back in the DESTROY group: entries that go behind the agent's back (a timeout, `conntrack
    // -D`) are forgotten, new ones learnt.
    let gone: Vec<ctnetlink::DeleteKey> = dnat_entries_to(&node, live)
        .iter()
        .filter(|f| f.orig.sport().is_some_and(|p| p >= 3000))
        .take(40)
        .map(ctnetlink::DeleteKey::from)
        .collect();
    assert_eq!(gone.len(), 40);
    let deleted = ct.delete(&gone).expect("delete");
    assert!(deleted
        .iter()
        .all(|d| *d == ctnetlink::DeleteOutcome::Deleted));
    let more: Vec<ctnetlink::NewFlow> = (2 * MANY..2 * MANY + 20)
        .map(|i| made_flow(i, vip, live))
        .collect();
    assert_eq!(ct.create(&more).expect("create").created, 20);
    expect_index_exact(&agent, &node, "after entries went and came behind its back");

    let m = agent.metrics();
    assert_eq!(metric_sum(&m, "ghostbuster_flow_index_trusted"), 1.0, "{m}");
    assert!(
        metric_sum(&m, r#"ghostbuster_backend_reads_total{how="index"}"#) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, r#"ghostbuster_backend_reads_total{how="walk"}"#),
        0.0,
        "{m}"
    );
    expect_removed(&m, f64::from(MANY));
    expect_untouched(healthy, &before, &["web-c"], "healthy pool");
}
