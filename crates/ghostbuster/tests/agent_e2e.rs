//! The agent end to end: the real binary against a netlab node (real DNAT'd traffic, a backend
//! that vanishes silently), the in-process fake API server (real list/watch protocol, enforcing
//! the rendered ClusterRole), and a fake kube-proxy whose last sync time the test controls.
//!
//! The ghost story and the kept flows run in both of kube-proxy's modes (test names end in
//! `_nftables` / `_iptables`): the node's rules are netlab's rendering of kube-proxy's nftables
//! proxier (one `nft -f`) or its iptables proxier (`KUBE-SVC-*`/`KUBE-SEP-*` chains, one
//! `iptables-restore`), and the fake kube-proxy's `/proxyMode` answers the same mode. The other
//! tests run in the lab's default mode (`GB_LAB_PROXY_MODE`, nftables when unset).
//!
//! What this does NOT cover: a real kube-apiserver (none can run on these machines), real
//! kube-proxy (its rules are netlab's rendering of kube-proxy's proxiers).

mod agent_support;
mod scan_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::*;
use fake_apiserver::Rbac;
use netlab::plan::vip_v4;
use netlab::{Endpoint, ProxyMode};
use scan_support::*;
use serde_json::Value;

/// The ClusterRole the deploy/ manifests give the agent, rendered by kustomize.
fn rendered_rbac() -> Option<Rbac> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let out = Command::new("kubectl")
        .args(["kustomize", root])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Rbac::from_manifests(&String::from_utf8_lossy(&out.stdout)).ok()
}

/// The seed-000 story with the agent: an endpoint leaves its Service by a watch event; the agent
/// waits for kube-proxy to catch up, then removes the ghosts; the pooled connections fail fast
/// and recover; a healthy connection to the live backend keeps working; metrics, /debug/recent and
/// an Event tell about it; the API server never refused a request of the rendered ClusterRole.
/// In kube-proxy's nftables mode, with the flow index (the default): the ghosts are read
/// through it, no walk of the table.
#[test]
fn an_endpoint_removed_by_a_watch_event_is_swept_once_kube_proxy_caught_up_nftables() {
    watch_event_story(ProxyMode::Nftables, "agent_e2e_main", 30, Read::ByIndex);
}

/// The same story on a node whose rules are kube-proxy's iptables mode's (`KUBE-SVC-*` picking
/// a `KUBE-SEP-*` with `statistic --mode random`), its `/proxyMode` answering `iptables`; and
/// with `--flow-index=false`, so the removal walks the table (the path the agent falls back to
/// after lost events).
#[test]
fn an_endpoint_removed_by_a_watch_event_is_swept_once_kube_proxy_caught_up_iptables() {
    watch_event_story(ProxyMode::Iptables, "agent_e2e_main_ipt", 37, Read::ByWalk);
}

/// The story with a flow index too small for the node's table (`--flow-index-max-entries 1`):
/// the index is dropped, the removal walks the table, and the ghosts go all the same.
#[test]
fn an_endpoint_removed_by_a_watch_event_is_swept_when_the_flow_index_is_over_its_bound() {
    watch_event_story(
        ProxyMode::Nftables,
        "agent_e2e_main_bound",
        42,
        Read::OverBound,
    );
}

/// How the story's agent reads a removed backend's flows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Read {
    ByIndex,
    /// `--flow-index=false`.
    ByWalk,
    /// The index on, over its bound.
    OverBound,
}

fn watch_event_story(mode: ProxyMode, test: &str, vip: u8, read: Read) {
    let rbac = rendered_rbac();
    if rbac.is_none() && std::env::var_os("CI").is_some() {
        panic!("kubectl kustomize deploy/ failed: CI must prove the ClusterRole sufficient");
    }
    let role = rbac.clone();
    // Rolling update: kube-proxy's rules move to B, A vanishes silently, the API says so.
    let Some(g) = GhostStory::start_in(mode, test, vip, Duration::from_secs(1), |r| {
        let r = r.api(move |api| api.set_rbac(role));
        match read {
            Read::ByIndex => r,
            Read::ByWalk => r.args(&["--flow-index=false"]),
            Read::OverBound => r.args(&["--flow-index-max-entries", "1"]),
        }
    }) else {
        return;
    };
    expect_rules_of_mode(&g.s);
    assert_eq!(g.rig.mode(), mode);
    g.tell_api();
    let (api, kp, agent) = (&g.rig.api, &g.rig.kp, &g.rig.agent);
    // The agent asked kube-proxy its mode (it starts with that probe) and got this one.
    assert!(kp.mode_reads() >= 1, "the agent never read /proxyMode");
    assert_eq!(kp.mode(), mode.name());

    // kube-proxy has not synced since the removal: the gate holds, the ghosts stay.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(g.ghosts_left(), 2, "deleted before kube-proxy caught up");

    // kube-proxy syncs: the ghosts go, within a fraction of a second.
    kp.synced_now();
    let t = Instant::now();
    while g.ghosts_left() != 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t.elapsed();
    assert!(g.ghosts_left() == 0, "ghosts still there after {took:?}");
    eprintln!("{mode}: ghosts removed {took:?} after kube-proxy's sync became visible");

    expect_fail_fast_and_recover(g.ghost, &g.hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(g.healthy, &g.before, &["web-b"], "healthy pool");

    let m = agent.metrics();
    assert!(
        metric_sum(&m, "ghostbuster_flows_removed_total") >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "ghostbuster_reaction_seconds_count") >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "ghostbuster_endpoint_changes_total") >= 1.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "ghostbuster_cluster_synced"), 1.0, "{m}");
    // How the ghosts were read: exact reads of what the flow index named, or a walk.
    let (index, walk) = (
        metric_sum(&m, r#"ghostbuster_backend_reads_total{how="index"}"#),
        metric_sum(&m, r#"ghostbuster_backend_reads_total{how="walk"}"#),
    );
    match read {
        Read::ByIndex => {
            assert!(index >= 1.0 && walk == 0.0, "{m}");
            assert_eq!(metric_sum(&m, "ghostbuster_flow_index_trusted"), 1.0, "{m}");
            assert!(
                metric_sum(&m, "ghostbuster_flow_index_entries") >= 1.0,
                "{m}"
            );
        }
        Read::ByWalk | Read::OverBound => {
            assert!(walk >= 1.0 && index == 0.0, "{m}");
            assert_eq!(metric_sum(&m, "ghostbuster_flow_index_entries"), 0.0, "{m}");
            assert_eq!(metric_sum(&m, "ghostbuster_flow_index_trusted"), 0.0, "{m}");
        }
    }
    // The mode is one the agent acts on: no report-only hold for the dataplane.
    assert_eq!(
        metric_sum(&m, r#"ghostbuster_report_only{reason="dataplane"}"#),
        0.0,
        "{m}"
    );
    let (code, recent) = http_get(agent.port, "/debug/recent").unwrap();
    assert_eq!(code, 200);
    let recent: Value = serde_json::from_str(&recent).unwrap();
    let removed: Vec<&Value> = recent
        .as_array()
        .or_else(|| recent["flows"].as_array())
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    assert!(
        removed.iter().filter(|f| f["result"] == "deleted").count() >= 2,
        "{recent:#}"
    );
    // The real agent's entries are the flow object of docs/flow.schema.json.
    assert_eq!(flow_schema::assert_flows(&recent), removed.len());

    // An aggregated Event on the Service.
    let until = Instant::now() + Duration::from_secs(8);
    let mut events = api.events();
    while events.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        events = api.events();
    }
    let note = events
        .iter()
        .filter_map(|e| e["note"].as_str())
        .find(|n| n.contains("stale conntrack flow"))
        .unwrap_or_else(|| panic!("no Event: {events:#?}"))
        .to_string();
    assert!(note.contains("Removed 2 stale conntrack flows"), "{note}");
    assert!(note.contains(&g.dead.to_string()), "{note}");

    if rbac.is_some() {
        assert!(
            api.forbidden().is_empty(),
            "requests the ClusterRole does not allow: {:#?}",
            api.forbidden()
        );
    }
    // Never an unfiltered pod list or watch: only this node's pods.
    for r in api.requests() {
        if r.resource == "pods" && (r.verb == "list" || r.verb == "watch") {
            assert!(
                r.param("fieldSelector")
                    .is_some_and(|f| f.contains("spec.nodeName")),
                "unfiltered pods request: {r:?}"
            );
        }
    }
    let exit = g.rig.agent.stop();
    assert!(exit < Duration::from_secs(2), "SIGTERM took {exit:?}");
}

/// Report only: `--dry-run` reports the ghosts (the seeds' `conntrack_stale_entries`) and
/// deletes nothing.
#[test]
fn dry_run_reports_and_deletes_nothing() {
    let Some((mut s, a, b, _, ghost)) = two_backends("agent_e2e_dry_run", false, 31) else {
        return;
    };
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .kube_proxy_synced()
        .args(&["--dry-run", "--resync-interval", "1s"])
        .start();
    s.lab.sync_services(&[web("shop", 31, &b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    std::thread::sleep(Duration::from_millis(300));
    kp.synced_now();
    // Two full passes later: reported, not removed.
    let m = agent.metrics_until(Duration::from_secs(6), |m| {
        metric_sum(m, "conntrack_stale_entries") >= 2.0
    });
    assert!(metric_sum(&m, "conntrack_stale_entries") >= 2.0, "{m}");
    expect_removed(&m, 0.0);
    assert!(m.contains("ghostbuster_mode{mode=\"report\"} 1"), "{m}");
    assert_eq!(
        entries_to(&table(&s.node()), dead).len(),
        2,
        "dry run deleted"
    );
    drop(ghost);
}

/// No delete before the cluster view is complete: with the EndpointSlice list hanging, the agent
/// never becomes ready and never deletes, even though its (empty) view would call every flow
/// stale.
#[test]
fn nothing_is_deleted_before_every_watch_synced() {
    let Some(mut s) = Story::start("agent_e2e_unsynced", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let vip = SocketAddr::from((vip_v4(32), 80));
    s.lab.sync_services(&[web("shop", 32, &a)]).unwrap();
    let live = pool(&s.client, vip, 2);
    expect_answers(&live, 2, "pool");
    // The cluster without the slices, and a slice list that never finishes.
    let AgentRig {
        api: _api,
        kp: _kp,
        agent,
        ..
    } = AgentRig::new(&s.node())
        .objects(without_kind(s.lab.kubernetes_objects(), "EndpointSlice"))
        .api(|api| api.hang_lists("endpointslices", true))
        .kube_proxy_synced()
        .args(&["--resync-interval", "1s"])
        .no_wait()
        .start();
    assert!(
        !agent.wait_ready(Duration::from_secs(4)),
        "ready without a synced view"
    );
    assert_eq!(entries_to(&table(&s.node()), ip_of(&a, false)).len(), 2);
    let before = mark(&live);
    expect_untouched(live, &before, &["web-a"], "live pool");
    let m = agent.metrics();
    expect_removed(&m, 0.0);
    assert_eq!(metric_sum(&m, "ghostbuster_cluster_synced"), 0.0, "{m}");
    // No full pass judged the partial view (Services without their slices: every flow would
    // look stale), so the seeds' alert `conntrack_stale_entries > 0` does not fire at start.
    assert_eq!(metric_sum(&m, "conntrack_stale_entries"), 0.0, "{m}");
    assert!(
        !m.lines().any(
            |l| l.starts_with("ghostbuster_scan_duration_seconds_count{kind=\"full\"}")
                && !l.ends_with(" 0")
        ),
        "a full pass ran before the view was whole:\n{m}"
    );
}

/// A pod that left the Service but is alive (the GET answers the same uid and IP) keeps its TCP
/// flows (`deselected`), and so does a Service annotated `ghostbuster.io/mode: report` — judged
/// after the agent proved it processed the same change: a sibling Service's ghosts (its pod
/// deleted in the same update) are removed, and a full pass after that counted the kept flows
/// stale. In kube-proxy's nftables mode.
#[test]
fn a_deselected_live_pod_and_an_annotated_service_keep_their_flows_nftables() {
    deselected_and_annotated_keep(ProxyMode::Nftables, "agent_e2e_keep", [33, 34, 38]);
}

/// The same in kube-proxy's iptables mode.
#[test]
fn a_deselected_live_pod_and_an_annotated_service_keep_their_flows_iptables() {
    deselected_and_annotated_keep(ProxyMode::Iptables, "agent_e2e_keep_ipt", [39, 40, 41]);
}

fn deselected_and_annotated_keep(mode: ProxyMode, test: &str, [v_web, v_api, v_cart]: [u8; 3]) {
    let Some(mut s) = Story::in_mode(test, false, mode) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    let c = s.backend("api-a", "shop", "api", &[]);
    let d = s.backend("api-b", "shop", "api", &[]);
    let e = s.backend("cart-a", "shop", "cart", &[]);
    let f = s.backend("cart-b", "shop", "cart", &[]);
    let web_ = |eps: &[Endpoint]| web("shop", v_web, eps);
    let api_ = |eps: &[Endpoint]| http_service("shop", "api", v_api, eps);
    let cart_ = |eps: &[Endpoint]| http_service("shop", "cart", v_cart, eps);
    s.lab
        .sync_services(&[web_(&a), api_(&c), cart_(&e)])
        .unwrap();
    expect_rules_of_mode(&s);
    let blue = pool(&s.client, SocketAddr::from((vip_v4(v_web), 80)), 2);
    let annotated = pool(&s.client, SocketAddr::from((vip_v4(v_api), 80)), 2);
    let sibling = pool(&s.client, SocketAddr::from((vip_v4(v_cart), 80)), 2);
    expect_answers(&blue, 2, "blue");
    expect_answers(&annotated, 2, "annotated");
    expect_answers(&sibling, 2, "sibling");
    let annotate = |objects: &mut Value| {
        object_mut(objects, "Service", "api")["metadata"]["annotations"] =
            serde_json::json!({"ghostbuster.io/mode": "report"});
    };
    let mut objects = s.lab.kubernetes_objects();
    annotate(&mut objects);
    let AgentRig { api, kp, agent, .. } = AgentRig::new(&s.node())
        .objects(objects)
        .proxy_mode(mode)
        .args(&["--resync-interval", "1s"])
        .start();
    // Blue/green: web moves to b while a stays alive; api's a and cart's a are deleted for real.
    s.lab
        .sync_services(&[web_(&b), api_(&d), cart_(&f)])
        .unwrap();
    s.lab.delete_pod_silently("api-a").unwrap();
    s.lab.delete_pod_silently("cart-a").unwrap();
    let mut objects = s.lab.kubernetes_objects();
    annotate(&mut objects);
    publish_pod_gone(&api, &objects, "shop", "api-a");
    api.delete("pods", "shop", "cart-a");
    kp.synced_now();
    let before_blue = mark(&blue);

    // The agent processed the update with its gate open: the sibling's ghosts went...
    let gone = ip_of(&e, false);
    let removed = wait_for(Duration::from_secs(10), || {
        entries_to(&table(&s.node()), gone).is_empty()
    });
    assert!(removed, "the sibling's ghosts stayed: {}", agent.metrics());
    // ...and a full pass that began after that (the second to end after it) judged the kept
    // flows stale and left them.
    let full = |m: &str| metric_sum(m, r#"ghostbuster_scan_duration_seconds_count{kind="full"}"#);
    let passes = full(&agent.metrics());
    let m = agent.metrics_until(Duration::from_secs(8), |m| {
        full(m) >= passes + 2.0 && metric_sum(m, "conntrack_stale_entries") >= 4.0
    });
    assert!(
        full(&m) >= passes + 2.0,
        "no full pass after the removal: {m}"
    );
    assert!(metric_sum(&m, "conntrack_stale_entries") >= 4.0, "{m}");
    expect_removed(&m, 2.0);
    assert_eq!(
        entries_to(&table(&s.node()), ip_of(&a, false)).len(),
        2,
        "deselected live pod's flows removed"
    );
    assert_eq!(
        entries_to(&table(&s.node()), ip_of(&c, false)).len(),
        2,
        "annotated service's flows removed"
    );
    expect_untouched(blue, &before_blue, &["web-a"], "blue pool");
    drop(annotated);
    drop(sibling);
}

/// The circuit breaker: a pass that would remove more than `--max-deletes-per-pass` reports only
/// and says so in metrics.
#[test]
fn the_circuit_breaker_holds_a_mass_removal() {
    let Some(mut s) = Story::start("agent_e2e_breaker", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    let b = s.backend("web-b", "shop", "web", &[]);
    s.lab.sync_services(&[web("shop", 35, &a)]).unwrap();
    let ghost = pool(&s.client, SocketAddr::from((vip_v4(35), 80)), 3);
    expect_answers(&ghost, 3, "pool");
    let AgentRig { api, kp, agent, .. } = AgentRig::of(&s)
        .args(&["--max-deletes-per-pass", "2"])
        .start();
    s.lab.sync_services(&[web("shop", 35, &b)]).unwrap();
    s.lab.delete_pod_silently("web-a").unwrap();
    publish_pod_gone(&api, &s.lab.kubernetes_objects(), "shop", "web-a");
    kp.synced_now();
    let m = agent.metrics_until(Duration::from_secs(5), |m| {
        metric_sum(m, "ghostbuster_circuit_open") >= 1.0
    });
    assert_eq!(metric_sum(&m, "ghostbuster_circuit_open"), 1.0, "{m}");
    assert_eq!(
        entries_to(&table(&s.node()), ip_of(&a, false)).len(),
        3,
        "breaker did not hold"
    );
    drop(ghost);
}

/// Seed 004: a table above 75 % of `nf_conntrack_max` gets a warning Event on the Node (and a log
/// line), once. The limit is machine-wide and never changed here; the namespace is filled to 76 %
/// of it with synthetic entries.
#[test]
fn a_filling_table_warns_on_the_node() {
    let Some(s) = Story::start("agent_e2e_table_full", false) else {
        return;
    };
    let max = conntrack_max();
    let want = max * 76 / 100 + 1;
    if want > 800_000 {
        eprintln!("SKIP a_filling_table_warns_on_the_node: nf_conntrack_max is {max}; filling 76 % of it would take too long here");
        return;
    }
    let mut ct = ctnetlink::Conntrack::open_in(Some(&s.node())).unwrap();
    let flows: Vec<ctnetlink::NewFlow> = (0..want)
        .map(|i| {
            let src = std::net::Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1);
            let t = ctnetlink::Tuple::ports(
                src.into(),
                1024 + ((i / 250) % 60000) as u16,
                std::net::Ipv4Addr::new(198, 51, 100, 200 + (i / 15_000_000) as u8).into(),
                53 + (i / (250 * 60000)) as u16,
                17,
            );
            ctnetlink::NewFlow::established(t, None)
        })
        .collect();
    let made = ct.create(&flows).unwrap();
    assert_eq!(made.created, want, "{made:?}");
    let AgentRig {
        api,
        kp: _kp,
        agent,
        ..
    } = AgentRig::new(&s.node())
        .objects(with_api_server(s.lab.kubernetes_objects()))
        .no_wait()
        .start();
    let until = Instant::now() + Duration::from_secs(15);
    let warning = loop {
        let found = api
            .events()
            .into_iter()
            .find(|e| e["reason"] == "ConntrackTableFilling");
        if found.is_some() || Instant::now() > until {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ev = warning.unwrap_or_else(|| panic!("no Node Event: {:#?}", api.events()));
    assert_eq!(ev["regarding"]["kind"], "Node");
    assert_eq!(ev["regarding"]["name"], netlab::node::NODE_NAME);
    assert_eq!(ev["type"], "Warning");
    let note = ev["note"].as_str().unwrap();
    assert!(note.contains("over 75%"), "{note}");
    let m = agent.metrics();
    assert!(
        metric_sum(&m, "ghostbuster_conntrack_entries") >= want as f64,
        "{m}"
    );
    // Once per threshold per 30 minutes.
    std::thread::sleep(Duration::from_secs(1));
    let n = api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "ConntrackTableFilling")
        .count();
    assert_eq!(n, 1);
}

/// An API server without the ServiceCIDR API (Kubernetes before 1.33): the agent takes the
/// ranges from `--service-cidr`, gets ready (the missing API holds nothing back), and removes a
/// ghost as usual.
#[test]
fn without_the_service_cidr_api_the_flag_stands_in_and_the_agent_gets_ready() {
    // Ready within 20 s without the ServiceCIDR API (the rig asserts it).
    let Some(g) = GhostStory::start("agent_e2e_nocidr", 36, Duration::from_millis(500), |r| {
        r.api(|api| api.disable("servicecidrs"))
            .args(&["--service-cidr", netlab::plan::SERVICE_CIDR_V4])
    }) else {
        return;
    };
    assert!(g.rig.api.count("list", "servicecidrs") >= 1, "never asked");
    g.tell_api();
    let took = g
        .rig
        .kp
        .sync_until(Duration::from_secs(10), || g.ghosts_left() == 0);
    assert_eq!(g.ghosts_left(), 0, "ghosts still there after {took:?}");
    expect_fail_fast_and_recover(g.ghost, &g.hung, Some("web-b"), Duration::from_secs(8));
    expect_untouched(g.healthy, &g.before, &["web-b"], "healthy pool");
}
