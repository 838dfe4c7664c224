//! The agent's safety stories end to end (issue #12 §1 and §3): the real binary, the real
//! kernel in a netlab node namespace, the fake API server and a fake kube-proxy whose sync
//! metrics the test publishes. Each story has a connection that must survive and, to prove
//! the agent looked, a sibling ghost that goes (or a counter that moved) first.
//!
//! - a pod is namespace/name/uid: `a/web-0` gone does not make `b/web-0`'s backend gone;
//! - a kube-proxy sync that began before the change does not open the gate, a later one does;
//! - a kube-proxy that reports failing syncs holds every delete, even past `--kube-proxy-max-wait`;
//! - the deletes-per-minute budget trips the breaker across passes and stays open;
//! - a pod GET that hangs neither blocks the reactor nor waits for the next full pass;
//! - one Service's hanging pod GET does not hold back another Service's deletes;
//! - a draining pod on another node whose labels change keeps its connections.

mod agent_support;
mod scan_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use agent_support::*;
use fake_apiserver::FakeApiServer;
use netlab::plan::vip_v4;
use netlab::{Endpoint, TcpPool};
use scan_support::*;
use serde_json::Value;

/// Targeted passes reported (each one has judged a backend's flows).
const TARGETED_PASSES: &str = "ghostbuster_scan_duration_seconds_count{kind=\"targeted\"}";

/// Entries to `backend` whose original destination is `vip`.
fn flows_via(node: &str, vip: SocketAddr, backend: IpAddr) -> usize {
    table(node)
        .iter()
        .filter(|f| reply_src(f) == Some(backend) && orig_dst(f) == Some(vip))
        .count()
}

/// GETs of pod `namespace/name` the fake API server saw.
fn pod_gets(api: &FakeApiServer, namespace: &str, name: &str) -> Vec<fake_apiserver::Request> {
    api.requests()
        .into_iter()
        .filter(|r| {
            r.verb == "get"
                && r.resource == "pods"
                && r.namespace.as_deref() == Some(namespace)
                && r.name.as_deref() == Some(name)
        })
        .collect()
}

/// Moves pod `name` and its endpoints in `objects` to another node (`node-b`): this node's pod
/// watch does not see it, only a GET can say what became of it.
fn on_another_node(objects: &mut Value, name: &str, ip: IpAddr) {
    for item in items(objects) {
        if item["kind"] == "Pod" && item["metadata"]["name"] == name {
            item["spec"]["nodeName"] = Value::from("node-b");
            item["status"]["hostIP"] = Value::from("203.0.113.99");
        }
    }
    for item in items(objects) {
        if item["kind"] != "EndpointSlice" {
            continue;
        }
        for ep in item["endpoints"].as_array_mut().into_iter().flatten() {
            if ep["addresses"][0] == ip.to_string() {
                ep["nodeName"] = Value::from("node-b");
            }
        }
    }
}

/// Issue #12 §1: a pod is namespace/name/uid. The IP of `a/web-0` (Service a/web) is, in the
/// agent's lagging view, also that of `b/web-0` (Service b/web); `b/web-0` is deselected (it
/// runs on, its connections live), then `a/web-0` is deleted (its pod GET answers 404). The
/// 404 for `a/web-0` marks a/web's tombstone only: a's flows to the IP go (the sibling ghosts,
/// removed in the very pass that judges b's), b's connections survive. Old code matched the
/// gone pod by name and removed b's live connections as `endpoint_gone`.
#[test]
fn a_pod_gone_in_one_namespace_leaves_its_namesake_in_another_alone() {
    let Some(mut s) = Story::start("agent_safety_namesake", true) else {
        return;
    };
    // The lab's one process at the IP is b/web-0; a/web's endpoint names a/web-0 (no such Pod
    // object: the API answers 404 for it).
    let b0 = s.backend("web-0", "b", "web", &[]);
    let b1 = s.backend("web-1", "b", "web", &[]);
    let ip = ip_of(&b0, false);
    let (a_vip, b_vip) = (
        SocketAddr::from((vip_v4(50), 80)),
        SocketAddr::from((vip_v4(51), 80)),
    );
    s.lab
        .sync_services(&[web("a", 50, &b0), web("b", 51, &b0)])
        .unwrap();
    let a_pool = pool(&s.client, a_vip, 2);
    let b_pool = pool(&s.client, b_vip, 2);
    expect_answers(&a_pool, 2, "pool via a/web");
    expect_answers(&b_pool, 2, "pool via b/web");
    let both: Vec<Endpoint> = b0.iter().chain(&b1).cloned().collect();
    s.lab
        .sync_services(&[web("a", 50, &b0), web("b", 51, &both)])
        .unwrap();

    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s).capture_log().start();
    assert!(api.get("pods", "a", "web-0").is_none());

    // b/web-0 deselected: it leaves b/web's slice and runs on. kube-proxy does not sync yet,
    // so nothing can be removed before a's change below.
    s.lab
        .sync_services(&[web("a", 50, &b0), web("b", 51, &b1)])
        .unwrap();
    publish(&api, &s.lab.kubernetes_objects());
    wait_for_every(Duration::from_millis(50), Duration::from_secs(20), || {
        !pod_gets(&api, "b", "web-0").is_empty()
    });
    assert!(
        !pod_gets(&api, "b", "web-0").is_empty(),
        "the agent never asked about b/web-0"
    );
    // a/web-0 deleted: a/web loses its endpoint.
    s.lab
        .sync_services(&[web("a", 50, &[]), web("b", 51, &b1)])
        .unwrap();
    publish(&api, &s.lab.kubernetes_objects());
    let before = mark(&b_pool);

    // The change was seen and judged: the agent asked about a/web-0 (404) and a targeted pass
    // finished after that answer. Until kube-proxy syncs, the gate is closed and no targeted
    // pass is reported (flows read while waiting are not a pass); every pass reported after
    // `passes_before` calls the pod GET first (or follows the pass that did), so the first one
    // to finish has judged the IP's flows with a/web-0 known gone. a/web-0's flows themselves
    // are kept: a live pod (b/web-0) holds the IP they go to, and a confirmed-gone pod is not
    // proof that a flow to an IP someone else answers on is dead (docs/detection.md,
    // ip_reused) — so they are no sibling ghost here.
    let targeted = || metric_sum(&agent.metrics(), TARGETED_PASSES);
    let passes_before = targeted();
    let a_gone = || pod_gets(&api, "a", "web-0").iter().any(|r| r.status == 404);
    let took = kp.sync_until(Duration::from_secs(20), || {
        a_gone() && targeted() > passes_before
    });
    assert!(
        a_gone(),
        "the agent never confirmed a/web-0 gone ({took:?}): {:#?}",
        api.requests()
    );
    assert!(
        targeted() > passes_before,
        "no targeted pass finished after a/web-0's 404 ({took:?})"
    );
    eprintln!(
        "a/web-0 confirmed gone and judged; its flows via a/web: {}",
        flows_via(&s.node(), a_vip, ip)
    );
    assert_eq!(
        flows_via(&s.node(), b_vip, ip),
        2,
        "b/web-0's connections were removed because a/web-0 is gone"
    );
    expect_untouched(
        b_pool,
        &before,
        &["web-0"],
        "pool to the deselected b/web-0",
    );
    drop(a_pool);
    let m = agent.metrics();
    assert_eq!(
        metric_sum(&m, "ghostbuster_flows_removed_total"),
        0.0,
        "nothing was removed: a's flows go to an IP a live pod answers on: {m}"
    );
}

/// Removed flows, by the agent's count.
fn removed(g: &GhostStory) -> f64 {
    metric_sum(&g.rig.agent.metrics(), "ghostbuster_flows_removed_total")
}

/// The healthy connection survived; then the agent goes.
fn finish(g: GhostStory) {
    expect_untouched(g.healthy, &g.before, &["web-b"], "healthy pool");
}

/// Issue #12 §3: the gate opens only on a successful sync that *began* after the change. The
/// fake kube-proxy publishes a sync that began a second before the change and ended after it
/// (its gauge, the end, is later than the removal: old code opened on it). The agent reads it
/// several times and removes nothing; the next sync, which began after the change, opens it.
#[test]
fn a_sync_that_began_before_the_change_does_not_open_the_gate() {
    let Some(g) = GhostStory::start(
        "agent_safety_straddle",
        52,
        Duration::from_millis(500),
        |r| r.capture_log(),
    ) else {
        return;
    };
    let changed = now_secs();
    g.tell_api();
    // The agent waits on kube-proxy: it reads it again and again.
    let seen = g.rig.kp.scrapes();
    assert!(
        g.rig.kp.wait_scrapes(seen, 3, Duration::from_secs(10)),
        "the agent never read kube-proxy after the change"
    );
    std::thread::sleep(Duration::from_millis(300));
    g.rig.kp.synced(changed - 1.0, now_secs());
    // Read ten times (an agent that removed the ghosts stops waiting, and reading, sooner).
    let seen = g.rig.kp.scrapes();
    let read = g.rig.kp.wait_scrapes(seen, 10, Duration::from_secs(10));
    assert_eq!(
        g.ghosts_left(),
        2,
        "removed on a sync that began before the change"
    );
    assert!(read, "the agent stopped reading kube-proxy");
    assert_eq!(removed(&g), 0.0);

    let took = g
        .rig
        .kp
        .sync_until(Duration::from_secs(10), || g.ghosts_left() == 0);
    assert_eq!(
        g.ghosts_left(),
        0,
        "a later sync did not open the gate ({took:?})"
    );
    eprintln!("ghosts removed {took:?} after the first sync that began after the change");
    assert_eq!(removed(&g), 2.0);
    finish(g);
}

/// Issue #12 §3: a kube-proxy whose syncs fail holds every delete — past
/// `--kube-proxy-max-wait` (old code opened then), and however long — until a sync succeeds
/// with no failure next to it.
#[test]
fn a_failing_kube_proxy_holds_deletes_until_a_clean_sync() {
    let Some(g) = GhostStory::start(
        "agent_safety_failing",
        53,
        Duration::from_millis(500),
        |r| r.args(&["--kube-proxy-max-wait", "2s"]).capture_log(),
    ) else {
        return;
    };
    g.tell_api();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        g.rig.kp.sync_failed();
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = g.rig.agent.metrics();
    assert_eq!(metric_sum(&m, "ghostbuster_kube_proxy_failing"), 1.0, "{m}");
    assert_eq!(g.ghosts_left(), 2, "removed while kube-proxy's syncs fail");
    assert_eq!(removed(&g), 0.0);

    let took = g
        .rig
        .kp
        .sync_until(Duration::from_secs(10), || g.ghosts_left() == 0);
    assert_eq!(
        g.ghosts_left(),
        0,
        "a clean sync did not open the gate ({took:?})"
    );
    assert_eq!(
        metric_sum(&g.rig.agent.metrics(), "ghostbuster_kube_proxy_failing"),
        0.0
    );
    finish(g);
}

/// Issue #12 §3: the reactor never blocks on the network — kube-proxy's loopback port either.
/// A kube-proxy that accepts and never answers (`/metrics` and `/healthz`) leaves the agent with
/// `--grace` after the removal; the ghosts go within grace + 1 s of the change. Old code read
/// kube-proxy on the reactor thread: every turn waited for both reads to time out (2 s), so the
/// grace decision came two reads late (about grace + 2 s) and every other backend waited too.
#[test]
fn a_kube_proxy_that_never_answers_does_not_hold_the_reactor() {
    let grace = Duration::from_secs(3);
    let Some(g) = GhostStory::start(
        "agent_safety_kp_hang",
        59,
        Duration::from_millis(500),
        |r| r.args(&["--grace", "3s"]).capture_log(),
    ) else {
        return;
    };
    g.rig.kp.hang(true);
    let changed = Instant::now();
    g.tell_api();
    let until = changed + Duration::from_secs(15);
    while g.ghosts_left() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = changed.elapsed();
    assert_eq!(
        g.ghosts_left(),
        0,
        "ghosts still there {took:?} after the change while kube-proxy does not answer"
    );
    assert!(
        took < grace + Duration::from_secs(1),
        "the ghosts went {took:?} after the change, grace is {grace:?}: the reactor waited for \
         kube-proxy's reads to time out"
    );
    eprintln!("ghosts removed {took:?} after the change (grace {grace:?}), kube-proxy hung");
    g.rig.agent.expect_removed(2.0);
    g.rig.kp.hang(false);
    finish(g);
}

/// shop/web's backends web-a, web-c and web-b (with timestamps), and a pool of clients pinned
/// through VIP number `vip` to each of web-a and web-c: for the stories in which first web-a
/// goes, then web-c, while web-b stays.
struct OneThenAnother {
    s: Story,
    a: Vec<Endpoint>,
    c: Vec<Endpoint>,
    b: Vec<Endpoint>,
    vip: SocketAddr,
    ghost_a: TcpPool,
    ghost_c: TcpPool,
}

impl OneThenAnother {
    fn start(test: &str, vip: u8) -> Option<OneThenAnother> {
        let mut s = Story::start(test, true)?;
        let a = s.backend("web-a", "shop", "web", &[]);
        let c = s.backend("web-c", "shop", "web", &[]);
        let b = s.backend("web-b", "shop", "web", &[]);
        let [ghost_a, ghost_c] = pin_pools(&mut s, vip, [("web-a", &a), ("web-c", &c)]);
        Some(OneThenAnother {
            s,
            a,
            c,
            b,
            vip: SocketAddr::from((vip_v4(vip), 80)),
            ghost_a,
            ghost_c,
        })
    }
}

/// Issue #12 §3: the deletes-per-minute budget counts across passes. With a budget of 3, a
/// first backend's 2 ghosts go; a second backend's 2 would make 4 within the minute: the
/// breaker trips, removes nothing, says so (metric, Warning Event, a log line on how to reset)
/// and stays open through later syncs and passes.
#[test]
fn the_delete_budget_trips_across_passes_and_stays_open() {
    let Some(OneThenAnother {
        mut s,
        a,
        c,
        b,
        vip,
        ghost_a,
        ghost_c,
    }) = OneThenAnother::start("agent_safety_budget", 54)
    else {
        return;
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&["--max-deletes-per-minute", "3", "--resync-interval", "1s"])
        .capture_log()
        .start();
    let (dead_a, dead_c) = (ip_of(&a, false), ip_of(&c, false));
    let node = s.node();
    let left = |ip| entries_to(&table(&node), ip).len();

    // web-a goes: 2 of the budget of 3.
    s.lab.sync_services(&[web("shop", 54, &c)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    kp.sync_until(Duration::from_secs(20), || left(dead_a) == 0);
    assert_eq!(left(dead_a), 0, "web-a's ghosts were never removed");
    // Its clients reconnect (to web-c, the rules say so): those are web-c's flows now.
    drop(ghost_a);

    // web-c goes too, within the minute: 2 more would overspend it.
    s.lab.sync_services(&[web("shop", 54, &b)]).unwrap();
    s.lab.delete_pod_silently("web-c").unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);
    let ghosts_c = left(dead_c);
    assert!(ghosts_c >= 2, "{ghosts_c}");
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-c");
    let tripped = || metric_sum(&agent.metrics(), "ghostbuster_circuit_breaker_trips_total") >= 1.0;
    kp.sync_until(Duration::from_secs(20), tripped);
    assert!(tripped(), "the breaker never tripped: {}", agent.metrics());
    // Later syncs and full passes (every second) keep it open.
    for _ in 0..8 {
        kp.synced_now();
    }
    assert_eq!(left(dead_c), ghosts_c, "removed past the budget");
    let m = agent.metrics();
    expect_removed(&m, 2.0);
    assert_eq!(metric_sum(&m, "ghostbuster_circuit_open"), 1.0, "{m}");
    assert!(agent.logged("circuit breaker tripped: reporting only until the agent restarts"));
    let warned = api
        .events()
        .iter()
        .any(|e| e["reason"] == "GhostbusterCircuitOpen" && e["type"] == "Warning");
    assert!(warned, "no Warning Event: {:#?}", api.events());
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
    drop(ghost_c);
}

/// Issue #12 §3: a pod GET that hangs times out (`--pod-get-timeout`, 5 s), keeps that backend's
/// flows (unknown is not gone), does not hold the reactor (another backend's ghosts, whose pod
/// the node's watch saw deleted, go meanwhile), and is asked again with backoff: once the API
/// answers, the flows go, long before the next full pass.
#[test]
fn a_hanging_pod_get_neither_blocks_the_agent_nor_waits_for_a_full_pass() {
    let Some(OneThenAnother {
        mut s,
        a,
        c,
        b,
        vip,
        ghost_a,
        ghost_c,
    }) = OneThenAnother::start("agent_safety_hang", 55)
    else {
        return;
    };
    let (dead_a, dead_c) = (ip_of(&a, false), ip_of(&c, false));
    // web-a runs on another node: only a GET can tell the agent it is gone.
    let objects = |s: &Story| {
        let mut o = s.lab.kubernetes_objects();
        on_another_node(&mut o, "web-a", dead_a);
        o
    };
    // The default --pod-get-timeout (5 s).
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects(&s))
        .capture_log()
        .start();
    let node = s.node();
    let left = |ip| entries_to(&table(&node), ip).len();

    api.hang_gets("pods", true);
    s.lab.sync_services(&[web("shop", 55, &b)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    s.lab.delete_pod_silently("web-c").unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);
    publish_pod_gone(&api, &objects(&s), "shop", "web-a");
    api.delete("pods", "shop", "web-c");
    let took = kp.sync_until(Duration::from_secs(30), || left(dead_c) == 0);
    assert_eq!(
        left(dead_c),
        0,
        "web-c's ghosts are still there {took:?} after the change (the reactor is stuck?)"
    );
    let hung = pod_gets(&api, "shop", "web-a");
    assert!(
        hung.iter().any(|r| r.status == 0),
        "no GET of web-a hung: {hung:#?}"
    );
    assert_eq!(left(dead_a), 2, "removed without an answer about web-a");
    // Two 5 s timeouts race (the agent's --pod-get-timeout and the pod client's own): either
    // says the lookup went unanswered and the flows are kept.
    let unanswered = || agent.logged("pod lookup timed out") || agent.logged("pod lookup failed");
    wait_for(Duration::from_secs(15), &unanswered);
    assert!(unanswered(), "the hung pod lookup was never given up on");
    assert_eq!(left(dead_a), 2, "removed without an answer about web-a");

    // The API answers again: the retry (not the full pass, 60 s away) finds web-a gone.
    api.hang_gets("pods", false);
    let took = kp.sync_until(Duration::from_secs(30), || left(dead_a) == 0);
    assert_eq!(
        left(dead_a),
        0,
        "web-a's ghosts still there {took:?} after the API answered"
    );
    eprintln!("web-a's ghosts removed {took:?} after the API answered again");
    assert!(pod_gets(&api, "shop", "web-a")
        .iter()
        .any(|r| r.status == 404));
    agent.expect_removed(4.0);
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
    drop((ghost_a, ghost_c));
}

/// Issue #12 §3: the reactor never blocks on the network, and one slow Service cannot hold
/// back another's deletes. Service a/web's old backend `web-a` runs on another node (only a
/// GET can tell what became of it) and its GET hangs, with a `--pod-get-timeout` of 60 s;
/// then b/web's backend `web-b` (on this node: its pod watch sees it deleted, no GET needed)
/// goes. b's ghosts are removed while a's lookup still hangs, unanswered and not given up on;
/// a's flows are kept meanwhile (unknown is not gone). Once the API answers (404), a's ghosts
/// go too: the answer itself wakes the reactor. Old code waited, on the reactor thread, for
/// a's GET to give up before it looked at b.
#[test]
fn a_hanging_pod_get_of_one_service_does_not_hold_back_anothers_deletes() {
    let Some(mut s) = Story::start("agent_safety_slow_svc", true) else {
        return;
    };
    let a = s.backend("web-a", "a", "web", &[]);
    let a2 = s.backend("web-a2", "a", "web", &[]);
    let b = s.backend("web-b", "b", "web", &[]);
    let b2 = s.backend("web-b2", "b", "web", &[]);
    let (a_vip, b_vip) = (
        SocketAddr::from((vip_v4(57), 80)),
        SocketAddr::from((vip_v4(58), 80)),
    );
    s.lab
        .sync_services(&[web("a", 57, &a), web("b", 58, &b)])
        .unwrap();
    let ghost_a = pool(&s.client, a_vip, 2);
    let ghost_b = pool(&s.client, b_vip, 2);
    expect_answers(&ghost_a, 2, "pool to web-a");
    expect_answers(&ghost_b, 2, "pool to web-b");
    let (dead_a, dead_b) = (ip_of(&a, false), ip_of(&b, false));
    let objects = |s: &Story| {
        let mut o = s.lab.kubernetes_objects();
        on_another_node(&mut o, "web-a", dead_a);
        o
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects(&s))
        .args(&["--pod-get-timeout", "60s"])
        .capture_log()
        .start();
    let node = s.node();
    let left = |ip| entries_to(&table(&node), ip).len();
    let given_up = || agent.logged("pod lookup timed out") || agent.logged("pod lookup failed");

    // a/web moves to web-a2; web-a vanishes on its node, and its GET hangs.
    api.hang_get("pods", "a", "web-a", true);
    s.lab
        .sync_services(&[web("a", 57, &a2), web("b", 58, &b)])
        .unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &objects(&s), "a", "web-a");
    let hanging = || pod_gets(&api, "a", "web-a").iter().any(|r| r.status == 0);
    wait_for_every(Duration::from_millis(50), Duration::from_secs(20), &hanging);
    assert!(
        hanging(),
        "the agent never asked about web-a: {:#?}",
        api.requests()
    );

    // Then b/web moves to web-b2, and this node's watch sees web-b deleted.
    s.lab
        .sync_services(&[web("a", 57, &a2), web("b", 58, &b2)])
        .unwrap();
    s.lab.delete_pod_silently("web-b").unwrap();
    let healthy = pool(&s.client, b_vip, 2);
    expect_answers(&healthy, 2, "healthy pool");
    let before = mark(&healthy);
    publish_pod_gone(&api, &objects(&s), "b", "web-b");
    let took = kp.sync_until(Duration::from_secs(30), || left(dead_b) == 0 || given_up());
    let (waited, b_left) = (given_up(), left(dead_b));
    assert!(
        b_left == 0 && !waited,
        "{took:?} after web-b left b/web: {b_left} of its ghosts left, web-a's hanging pod \
         lookup given up on: {waited} (b's deletes waited for a's GET on the reactor thread)"
    );
    eprintln!("web-b's ghosts removed {took:?} after the change, web-a's GET still hanging");
    assert!(
        hanging(),
        "web-a's GET stopped hanging: {:#?}",
        api.requests()
    );
    assert_eq!(left(dead_a), 2, "removed without an answer about web-a");

    // The API answers (404): that answer wakes the reactor, web-a's ghosts go.
    api.hang_get("pods", "a", "web-a", false);
    let took = kp.sync_until(Duration::from_secs(20), || left(dead_a) == 0);
    assert_eq!(
        left(dead_a),
        0,
        "web-a's ghosts still there {took:?} after the API answered"
    );
    eprintln!("web-a's ghosts removed {took:?} after the API answered");
    agent.expect_removed(4.0);
    expect_untouched(healthy, &before, &["web-b2"], "healthy pool");
    drop((ghost_a, ghost_b));
}

/// Issue #12 §1: "terminating when it left the slice" is not "gone". A pod on another node
/// drains (terminating, still serving) and its labels change: its endpoint leaves the slice
/// while it lives. The agent asks the API (the pod is there, terminating) and keeps its
/// connections through later kube-proxy syncs and full passes; they keep answering.
///
/// Needs the classifier's half too (h/classify: a managed endpoint last seen terminating is
/// not by itself `pod_gone`); this branch makes the agent ask.
#[test]
fn a_draining_pod_on_another_node_whose_labels_change_keeps_its_connections() {
    let Some((mut s, a, b, vip, draining)) = two_backends("agent_safety_draining", true, 56) else {
        return;
    };
    let dead = ip_of(&a, false);
    let objects = |s: &Story, deleting: bool| {
        let mut o = s.lab.kubernetes_objects();
        on_another_node(&mut o, "web-a", dead);
        if deleting {
            let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
            object_mut(&mut o, "Pod", "web-a")["metadata"]["deletionTimestamp"] =
                Value::String(now.to_string());
        }
        o
    };
    // Draining: terminating and serving, next to web-b.
    let terminating = v4(&a).into_iter().map(Endpoint::terminating);
    let mix: Vec<Endpoint> = b.iter().cloned().chain(terminating).collect();
    s.lab.sync_services(&[web("shop", 56, &mix)]).unwrap();
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects(&s, true))
        .args(&["--resync-interval", "1s"])
        .capture_log()
        .start();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "healthy pool");

    // Its labels change: it leaves the slice, still terminating, still running.
    s.lab.sync_services(&[web("shop", 56, &b)]).unwrap();
    let mut o = objects(&s, true);
    object_mut(&mut o, "Pod", "web-a")["metadata"]["labels"]["app"] = Value::from("other");
    publish(&api, &o);
    let before = mark(&draining);
    let before_healthy = mark(&healthy);
    kp.sync_until(Duration::from_secs(20), || {
        !pod_gets(&api, "shop", "web-a").is_empty()
    });
    assert!(
        pod_gets(&api, "shop", "web-a")
            .iter()
            .any(|r| r.status == 200),
        "the agent never asked about the draining web-a: {:#?}",
        api.requests()
    );
    // Judged after the answer: kube-proxy synced and two full passes ran.
    let scans = |agent: &Agent| {
        agent
            .metrics()
            .lines()
            .filter(|l| {
                l.starts_with("ghostbuster_scan_duration_seconds_count")
                    && l.contains("kind=\"full\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let full = scans(&agent);
    kp.sync_until(Duration::from_secs(20), || scans(&agent) >= full + 2.0);
    assert!(scans(&agent) >= full + 2.0, "no full passes");
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "a draining pod's connections were removed"
    );
    expect_untouched(draining, &before, &["web-a"], "draining pool");
    expect_untouched(healthy, &before_healthy, &["web-b"], "healthy pool");
    agent.expect_removed(0.0);
}
