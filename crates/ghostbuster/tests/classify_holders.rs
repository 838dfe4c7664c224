//! Issue #12 §1, "ghosts without a tombstone": the agent asked the API server which pods hold a
//! backend IP and none did (`IpAnswers`). That answer is `PodAbsent` only for a flow whose start
//! is known and older than the answer (beyond `--clock-skew`), and only while nothing the index
//! knows holds the IP.

mod classify_support;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::{Event, Index, Object};
use ghostbuster::policy::Policy;
use ghostbuster::verdict::{Evidence, KeepReason, Step, Verdict, VerdictKind};
use serde_json::json;

const VIP: &str = WEB_VIP;
/// The ghost's backend: nobody's endpoint, no pod in the agent's view (a live index).
const GHOST: &str = "10.244.0.2";
/// When the API server was asked (NOW is 12:01:00).
const ASKED: &str = "2025-06-01T12:00:30Z";

fn web() -> Index {
    index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ])
}

fn answered(mut index: Index) -> Index {
    index.ip_answers_mut().record_absent(ip(GHOST), t(ASKED));
    index
}

fn judge(index: &Index, started: Option<&str>) -> Verdict {
    let mut f = tcp("10.244.9.9", 40000, VIP, 80).dnat(GHOST, 8080);
    if let Some(s) = started {
        f = f.started(s);
    }
    classify(&f.build(), index, &Policy::default(), t(NOW))
}

#[test]
fn without_an_answer_a_ghost_without_a_tombstone_is_kept_for_lack_of_evidence() {
    let v = judge(&web(), Some("2025-06-01T11:00:00Z"));
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::NoEvidence));
}

#[test]
fn no_pod_at_the_ip_asked_after_the_flow_began_is_pod_absent() {
    let v = judge(&answered(web()), Some("2025-06-01T11:00:00Z"));
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(v.evidence.contains(Evidence::PodAbsent), "{:?}", v.evidence);
    assert!(v.trace.steps().contains(&Step::ApiNoPod));
    assert!(v.removable, "kept: {:?}", v.kept_because);
    assert_eq!(v.kept_because, None);
}

#[test]
fn a_flow_that_began_after_the_answer_or_within_the_skew_is_kept() {
    let index = answered(web());
    // 1 s before the question: within the default 2 s clock-skew margin.
    for started in ["2025-06-01T12:00:29Z", "2025-06-01T12:00:45Z"] {
        let v = judge(&index, Some(started));
        assert!(!v.removable, "{started}");
        assert!(!v.evidence.contains(Evidence::PodAbsent));
        assert_eq!(v.kept_because, Some(KeepReason::NewerThanApiAnswer));
    }
    // 3 s before: beyond it.
    assert!(judge(&index, Some("2025-06-01T12:00:27Z")).removable);
}

#[test]
fn a_flow_of_unknown_age_is_kept_whatever_the_answer() {
    let v = judge(&answered(web()), None);
    assert!(!v.removable);
    assert!(!v.evidence.contains(Evidence::PodAbsent));
    assert_eq!(v.kept_because, Some(KeepReason::UnknownAge));
}

#[test]
fn anything_in_the_index_at_the_ip_outweighs_the_answer() {
    let old = Some("2025-06-01T11:00:00Z");
    // A live pod at the IP (the agent's watch saw it after the answer).
    let mut index = answered(web());
    index
        .apply(
            Event::Apply(pod("ns", "new", GHOST, "2025-06-01T10:00:00Z", "Running").into()),
            t(NOW),
        )
        .unwrap();
    let v = judge(&index, old);
    assert!(!v.removable && !v.evidence.contains(Evidence::PodAbsent));

    // A node's address (hostNetwork pods share it).
    let mut index = answered(web());
    let n: Object = node("node-b", &[GHOST]).into();
    index.apply(Event::Apply(n), t(NOW)).unwrap();
    let v = judge(&index, old);
    assert!(!v.removable && !v.evidence.contains(Evidence::PodAbsent));

    // An endpoint of another Service.
    let mut index = answered(web());
    for o in [
        Object::from(service(
            "ns",
            "db",
            &["10.96.1.2"],
            json!([{"name": "pg", "port": 5432}]),
        )),
        slice(
            "ns",
            "db",
            "db-1",
            vec![ready(GHOST, "db-0")],
            json!([{"name": "pg", "port": 5432}]),
        )
        .into(),
    ] {
        index.apply(Event::Apply(o), t(NOW)).unwrap();
    }
    let v = judge(&index, old);
    assert!(!v.removable && !v.evidence.contains(Evidence::PodAbsent));

    // A tombstone at the IP: its pod GET is the evidence, not the list.
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a"), ready(GHOST, "b")]),
    ]);
    index
        .apply(
            Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")])),
            t(NOW),
        )
        .unwrap();
    let index = answered(index);
    let v = judge(&index, old);
    assert!(!v.removable && !v.evidence.contains(Evidence::PodAbsent));
}

/// A Service with a UDP port, for the untracked-UDP rule below.
fn dns() -> Index {
    index_of(vec![
        service(
            "ns",
            "dns",
            &[VIP],
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]),
        )
        .into(),
        slice(
            "ns",
            "dns",
            "dns-1",
            vec![ready("10.244.0.1", "a")],
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
        )
        .into(),
    ])
}

fn judge_udp(index: &Index) -> Verdict {
    let f = udp("10.244.9.9", 40000, VIP, 53)
        .dnat(GHOST, 5353)
        .started("2025-06-01T11:00:00Z");
    classify(&f.build(), index, &Policy::default(), t(NOW))
}

/// Issue #12, found by the 30-minute soak: in the agent's live view, UDP to an address no
/// endpoint holds and whose removal the agent never saw (no tombstone) is not gone by that
/// alone — the view may lag kube-proxy's (a pod made while the slice watch was silent, or one
/// kube-proxy already sends to). Old code deleted such a flow at once, 0.31 s after its pod went
/// and before kube-proxy's sync. It counts once this node's pod watch saw the pod at the IP go,
/// or the API server says no pod holds it; a snapshot (`scan`/`sweep`) is judged as before.
#[test]
fn untracked_udp_in_the_live_view_needs_the_pod_seen_gone() {
    let mut live = dns();
    live.set_live(true);
    let v = judge_udp(&live);
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(!v.removable, "UDP alone removed an untracked flow: {v:?}");
    assert_eq!(v.kept_because, Some(KeepReason::NoEvidence));
    assert!(v
        .trace
        .steps()
        .contains(&Step::UntrackedUdp { pod_left: false }));

    // This node's pod watch saw the pod at the IP deleted.
    let mut seen_gone = dns();
    seen_gone.set_live(true);
    let p: Object = pod("ns", "dns-0", GHOST, "2025-06-01T10:00:00Z", "Running").into();
    seen_gone.apply(Event::Apply(p.clone()), t(NOW)).unwrap();
    seen_gone.apply(Event::Delete(p), t(NOW)).unwrap();
    assert_eq!(seen_gone.pod_left_at(&ip(GHOST)), Some(t(NOW)));
    let v = judge_udp(&seen_gone);
    assert!(v.removable, "kept: {v:?}");
    assert!(v
        .trace
        .steps()
        .contains(&Step::UntrackedUdp { pod_left: true }));

    // The API server said no pod holds the IP, after the flow began.
    let mut asked = answered(dns());
    asked.set_live(true);
    let v = judge_udp(&asked);
    assert!(v.removable, "kept: {v:?}");
    assert!(v.evidence.contains(Evidence::PodAbsent));

    // Not the agent's view: UDP to nobody's endpoint is judged as before.
    assert!(judge_udp(&dns()).removable);
}
