//! `agent --terminate-sockets` end to end: the real agent, the fake API server and kube-proxy,
//! a lab node with kube-proxy-shaped rules, and idle clients blocked in `read()` — the gRPC
//! stream or pooled connection that waits on a dead backend until its keepalive fires.
//!
//! With the option the ghost's reader gets ECONNABORTED within 1 s of the removal, the healthy
//! neighbour to the same Service (on the new backend) is untouched, and every removed flow's
//! socket is counted destroyed (or already gone: the pool's clients close their own on timeouts);
//! without it the reader stays blocked after the agent removed its entry.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod agent_support;
mod scan_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_support::*;
use scan_support::*;

/// One run: an idle connection to web-a (the ghost to be) and, after the rolling update to
/// web-b, an idle one to web-b (the neighbour), both blocked in `read()`; the API learns web-a is
/// gone and kube-proxy syncs until the agent removed the ghost's entry. Returns the rig, the two
/// readers, the neighbour's writing half and when the removal was seen.
struct Idle {
    rig: AgentRig,
    ghost: BlockedReader,
    neighbour: BlockedReader,
    neighbour_writer: TcpStream,
    removed_at: Instant,
    /// The ghost's client address and the Service address it connected to.
    ghost_tuple: (SocketAddr, SocketAddr),
    _pool: netlab::TcpPool,
    s: Story,
}

fn idle_story(test: &str, vip: u8, args: &[&str]) -> Option<Idle> {
    let (mut s, a, b, addr, pool) = two_backends(test, true, vip)?;
    let mut ghost = connect(&s.client, addr);
    assert_eq!(
        http_request(&mut ghost, TIMEOUT).expect("answered"),
        "web-a"
    );
    let rig = AgentRig::of(&s).args(args).start();

    // Rolling update: kube-proxy's rules move to web-b, web-a vanishes without a RST.
    s.lab.sync_services(&[web("shop", vip, &b)]).unwrap();
    let dead = ip_of(&a, false);
    s.lab.delete_pod_silently("web-a").unwrap();
    let mut neighbour = connect(&s.client, addr);
    assert_eq!(
        http_request(&mut neighbour, TIMEOUT).expect("answered"),
        "web-b"
    );
    let neighbour_writer = neighbour.try_clone().unwrap();
    let ghost_tuple = (ghost.local_addr().unwrap(), addr);
    let ghost = BlockedReader::tcp(ghost);
    let neighbour = BlockedReader::tcp(neighbour);

    publish_pod_gone(&rig.api, &s.lab.kubernetes_objects(), "shop", "web-a");
    let node = s.node();
    let gone = || entries_to(&table(&node), dead).is_empty();
    let took = rig.kp.sync_until(Duration::from_secs(10), gone);
    assert!(
        gone(),
        "the ghosts are still there {took:?} after the API change"
    );
    Some(Idle {
        rig,
        ghost,
        neighbour,
        neighbour_writer,
        removed_at: Instant::now(),
        ghost_tuple,
        _pool: pool,
        s,
    })
}

/// The neighbour's socket still works: a request on it is answered by web-b (and its reader,
/// blocked until now, returns that answer).
fn expect_neighbour_untouched(idle: &mut Idle) {
    assert!(
        idle.neighbour.returned_within(Duration::ZERO).is_none(),
        "the neighbour's reader returned before it was sent anything"
    );
    idle.neighbour_writer
        .write_all(b"GET / HTTP/1.1\r\nHost: netlab\r\n\r\n")
        .unwrap();
    let (r, _) = idle
        .neighbour
        .returned_within(TIMEOUT)
        .expect("the neighbour got no answer");
    assert!(r.expect("the neighbour's read failed") > 0);
}

#[test]
fn with_terminate_sockets_a_reader_blocked_on_a_ghost_returns_at_once() {
    let Some(mut idle) = idle_story("agent_sockets_on", 40, &["--terminate-sockets"]) else {
        return;
    };
    expect_aborted(&idle.ghost, idle.removed_at, "the ghost's reader");
    // Every ghost's client is on this node: the idle one (blocked in read, ended above) and the
    // pool's two, which the pool may already have closed itself (its requests time out on the
    // dead backend and it reconnects): each removed flow's socket was destroyed, or was gone.
    let m = idle.rig.agent.metrics_until(Duration::from_secs(5), |m| {
        metric_sum(m, "ghostbuster_sockets_terminated_total")
            >= metric_sum(m, "ghostbuster_flows_removed_total")
    });
    let removed = metric_sum(&m, "ghostbuster_flows_removed_total");
    let result = |r: &str| -> f64 {
        let prefix = format!("ghostbuster_sockets_terminated_total{{result=\"{r}\"}}");
        m.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(removed, 3.0, "{m}");
    assert!(result("destroyed") >= 1.0, "{m}");
    assert_eq!(result("destroyed") + result("no_socket"), removed, "{m}");

    // The ghost's /debug/recent entry says its socket was destroyed; every entry is schema-valid
    // and carries a socket result.
    let (code, recent) = http_get(idle.rig.agent.port, "/debug/recent").unwrap();
    assert_eq!(code, 200);
    let recent: serde_json::Value = serde_json::from_str(&recent).unwrap();
    assert_eq!(flow_schema::assert_flows(&recent), 3, "{recent:#}");
    let flows = recent
        .as_array()
        .or_else(|| recent["flows"].as_array())
        .unwrap();
    let (client, _) = idle.ghost_tuple;
    for f in flows {
        assert_eq!(f["result"], "deleted", "{f:#}");
        let want: &[&str] = if f["original"]["sport"] == client.port() {
            &["destroyed"]
        } else {
            &["destroyed", "no_socket"]
        };
        assert!(
            want.iter().any(|w| f["socket"] == *w),
            "{f:#}: socket should be one of {want:?}"
        );
    }

    // explain --agent tells the removed flow's story: gone from the table, removed by the agent,
    // its socket destroyed.
    let export = idle.s.write("cluster.json", &idle.s.export());
    let agent_url = format!("http://127.0.0.1:{}", idle.rig.agent.port);
    let (client, vip) = idle.ghost_tuple;
    let flow = format!("tcp {client} -> {vip}");
    let explained = idle
        .s
        .explain(&export, &["--agent", &agent_url, &flow])
        .ok(0);
    assert_eq!(explained.flows().len(), 0, "{}", explained.pretty());
    let removed = explained.json["removed_by_agent"]
        .as_array()
        .expect("removed_by_agent");
    assert_eq!(removed.len(), 1, "{}", explained.pretty());
    assert_eq!(removed[0]["socket"], "destroyed");
    assert_eq!(removed[0]["original"]["sport"], client.port());
    let node = idle.s.node();
    let text = Run::of(&[
        "explain",
        "--netns",
        &node,
        "--from-file",
        &export,
        "--agent",
        &agent_url,
        &flow,
    ]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("the agent removed 1 matching flow")
            && text.stdout.contains("client socket: destroyed"),
        "{}",
        text.stdout
    );
    expect_neighbour_untouched(&mut idle);
}

#[test]
fn without_it_the_reader_stays_blocked_after_the_removal() {
    let Some(mut idle) = idle_story("agent_sockets_off", 41, &[]) else {
        return;
    };
    // The change was seen: the agent removed the ghost's entry (idle_story waited for it) and
    // counted it; the reader is still blocked well past the time it would have been ended.
    let m = idle.rig.agent.metrics();
    assert!(
        metric_sum(&m, "ghostbuster_flows_removed_total") >= 1.0,
        "{m}"
    );
    assert!(
        idle.ghost.returned_within(2 * ENDED_WITHIN).is_none(),
        "the reader returned without --terminate-sockets"
    );
    assert_eq!(metric_sum(&m, "ghostbuster_sockets_terminated_total"), 0.0);
    expect_neighbour_untouched(&mut idle);
}
