//! Issue #12 §1, ghosts without a tombstone, end to end: the real binary, the real kernel in a
//! netlab node namespace (`nf_conntrack_timestamp=1`), the fake API server and a fake
//! kube-proxy. A pod deleted *before the agent started* leaves no tombstone; the agent asks the
//! API server which pods hold its IP (`pods?fieldSelector=status.podIP=<ip>`) and, with none,
//! removes the flows older than the answer. A pod the API lists at its IP keeps its
//! connections; an API that does not answer keeps the ghost and never stalls the agent.

mod agent_support;
mod scan_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use agent_support::*;
use fake_apiserver::FakeApiServer;
use netlab::plan::vip_v4;
use scan_support::*;
use serde_json::Value;

/// The "who holds `ip`?" lists the fake API server saw.
fn holder_lists(api: &FakeApiServer, ip: IpAddr) -> Vec<fake_apiserver::Request> {
    let want = format!("status.podIP={ip}");
    api.requests()
        .into_iter()
        .filter(|r| {
            r.verb == "list" && r.resource == "pods" && r.param("fieldSelector") == Some(&want)
        })
        .collect()
}

/// Moves pod `name` to another node (`node-b`) in `objects`: this node's pod watch does not see
/// it, only the API server's list by IP does.
fn on_another_node(objects: &mut Value, name: &str) {
    for item in items(objects) {
        if item["kind"] == "Pod" && item["metadata"]["name"] == name {
            item["spec"]["nodeName"] = Value::from("node-b");
            item["status"]["hostIP"] = Value::from("203.0.113.99");
        }
    }
}

/// Ghost connections to `web-a` (deleted silently, before the agent starts: no tombstone) and
/// healthy ones to `web-b` (the Service's endpoint now).
struct Rig {
    s: Story,
    api: RigApi,
    kp: FakeKubeProxy,
    dead: IpAddr,
}

impl Rig {
    fn left(&self, ip: IpAddr) -> usize {
        entries_to(&table(&self.s.node()), ip).len()
    }
}

/// A pod deleted before the agent started (no tombstone) has its ghosts removed once the API
/// server says no pod holds its IP; a deselected pod on another node, which the API lists at
/// its IP, keeps its live connections. Old code kept both for lack of evidence
/// (`kept_because: no_evidence`) until the ghosts' own timeout.
#[test]
fn a_ghost_older_than_the_agent_goes_once_the_api_lists_no_pod_at_its_ip() {
    let Some(mut s) = Story::start("agent_holders_absent", true) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let c = s.backend("web-c", "shop", "web", &[]);
    let vip = SocketAddr::from((vip_v4(60), 80));
    s.lab.sync_services(&[web("shop", 60, &a)]).unwrap();
    let ghost = pool(&s.client, vip, 2);
    expect_answers(&ghost, 2, "pool to web-a");
    s.lab.sync_services(&[web("shop", 60, &c)]).unwrap();
    let deselected = pool(&s.client, vip, 2);
    expect_answers(&deselected, 2, "pool to web-c");
    // web-a is deleted, web-c deselected (it runs on, on another node), web-b serves.
    s.lab.sync_services(&[web("shop", 60, &b)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "pool to web-b");
    expect_hang(&ghost, 2, Duration::from_millis(500));
    let (before_c, before_b) = (mark(&deselected), mark(&healthy));
    let (dead, alive) = (ip_of(&a, false), ip_of(&c, false));

    let mut objects = s.lab.kubernetes_objects();
    on_another_node(&mut objects, "web-c");
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects)
        .capture_log()
        .start();
    let r = Rig { s, api, kp, dead };
    assert_eq!(
        r.left(r.dead),
        2,
        "web-a's ghosts went before kube-proxy synced"
    );
    // The flows must be older than the answer by more than --clock-skew (2 s).
    std::thread::sleep(Duration::from_millis(2500));

    let took =
        r.kp.sync_until_pausing(Duration::from_secs(30), Duration::from_millis(100), || {
            r.left(r.dead) == 0
        });
    assert_eq!(
        r.left(r.dead),
        0,
        "web-a's ghosts still there {took:?} after kube-proxy synced: {:#?}",
        r.api.requests()
    );
    eprintln!("web-a's ghosts removed {took:?} after kube-proxy synced");
    assert!(holder_lists(&r.api, r.dead).iter().any(|q| q.status == 200));
    // web-c: asked about too (the API lists it), kept.
    r.kp.sync_until_pausing(Duration::from_secs(10), Duration::from_millis(100), || {
        holder_lists(&r.api, alive).iter().any(|q| q.status == 200)
    });
    assert!(
        holder_lists(&r.api, alive).iter().any(|q| q.status == 200),
        "the agent never asked who holds web-c's IP"
    );
    assert_eq!(r.left(alive), 2, "web-c's live connections were removed");
    agent.expect_removed(2.0);
    expect_untouched(
        deselected,
        &before_c,
        &["web-c"],
        "pool to the deselected web-c",
    );
    expect_untouched(healthy, &before_b, &["web-b"], "healthy pool");
    drop(ghost);
}

/// The API's pod list hangs: the question times out (`--pod-get-timeout`), the ghost is kept,
/// the agent answers `/metrics` meanwhile; once the API answers again, the retry (with backoff,
/// not the next full pass) removes it.
#[test]
fn a_hanging_pod_list_keeps_the_ghost_and_the_agent_responsive() {
    let Some((mut s, a, b, vip, ghost)) = two_backends("agent_holders_hang", true, 61) else {
        return;
    };
    s.lab.sync_services(&[web("shop", 61, &b)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    let healthy = pool(&s.client, vip, 2);
    expect_answers(&healthy, 2, "pool to web-b");
    expect_hang(&ghost, 2, Duration::from_millis(500));
    let before = mark(&healthy);
    let dead = ip_of(&a, false);

    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&["--pod-get-timeout", "1s"])
        .capture_log()
        .start();
    let r = Rig { s, api, kp, dead };
    std::thread::sleep(Duration::from_millis(2500));
    r.api.hang_lists("pods", true);

    // kube-proxy syncs; the agent asks and gets no answer.
    let took =
        r.kp.sync_until_pausing(Duration::from_secs(20), Duration::from_millis(100), || {
            agent.logged("asking who holds a backend IP failed")
        });
    assert!(
        agent.logged("asking who holds a backend IP failed"),
        "the agent never gave up on the hanging list ({took:?}): {:#?}",
        r.api.requests()
    );
    assert!(!holder_lists(&r.api, r.dead).is_empty());
    assert_eq!(r.left(r.dead), 2, "removed without an answer");
    let t = Instant::now();
    let m = agent.metrics();
    assert!(
        m.contains("ghostbuster_") && t.elapsed() < Duration::from_secs(2),
        "/metrics took {:?}",
        t.elapsed()
    );

    r.api.hang_lists("pods", false);
    let took =
        r.kp.sync_until_pausing(Duration::from_secs(30), Duration::from_millis(100), || {
            r.left(r.dead) == 0
        });
    assert_eq!(
        r.left(r.dead),
        0,
        "web-a's ghosts still there {took:?} after the API answered again"
    );
    eprintln!("web-a's ghosts removed {took:?} after the API answered again");
    assert!(holder_lists(&r.api, r.dead).iter().any(|q| q.status == 200));
    expect_untouched(healthy, &before, &["web-b"], "healthy pool");
    drop(ghost);
}
