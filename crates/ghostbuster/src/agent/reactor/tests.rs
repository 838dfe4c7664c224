use super::asks::*;
use super::report::*;
use super::*;
use crate::agent::gate::Global;
use crate::cluster::{Index, Name};
use crate::verdict::{EvidenceSet, KeepReason, Trace, Verdict};
use ctnetlink::{Flow, Status, Tuple};
use std::net::Ipv4Addr;

fn finding(sport: u16, removable: bool) -> Finding {
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
    let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    Finding {
        flow: {
            let mut fl = Flow::new(
                Tuple::ports(client, sport, vip, 5432, 6),
                Tuple::ports(pod, 5432, client, sport, 6),
            );
            fl.status = Status::DST_NAT;
            fl.timeout = Some(100);
            fl.id = Some(u32::from(sport));
            fl
        },
        verdict: Verdict {
            kind: VerdictKind::EndpointGone,
            evidence: EvidenceSet::default(),
            half_open: false,
            removable,
            kept_because: None,
            service: None,
            backend: Some(crate::verdict::Backend {
                ip: pod,
                port: 5432,
            }),
            now_owned_by: None,
            trace: Trace::default(),
        },
    }
}

/// Issue #12 §3: 100,000 kept stale flows must not be carried (cloned, ~700 B each) in a
/// pass report: the counts stay exact, the details are capped; acted-on flows are all kept.
#[test]
fn a_pass_report_counts_every_kept_flow_and_details_a_few() {
    let n = 100_000usize;
    let all = (0..n).map(|i| {
        let o = if i < 3 {
            Outcome::Deleted
        } else {
            Outcome::Kept
        };
        (finding((i % 60_000) as u16, false), o)
    });
    let (shown, not_shown) = keep_shown(all);
    assert_eq!(shown.len(), 3 + MAX_KEPT_SHOWN);
    assert_eq!(not_shown, (n - 3 - MAX_KEPT_SHOWN) as u64);
    assert_eq!(
        shown.iter().filter(|(_, o)| *o == Outcome::Deleted).count(),
        3
    );
    // The counts for metrics are taken before the cap, over every finding.
    let many: Vec<Finding> = (0..1_000).map(|i| finding(i, false)).collect();
    let stale = stale_counts(&many);
    assert_eq!(stale.values().sum::<u64>(), 1_000);
}

/// Issue #12 §3, bounded memory: the kept findings no step of a full pass can change are
/// counted and not carried — kept by policy, or of unknown age with no tombstone at the
/// backend. Unknown age *with* a tombstone is carried (its pod GET may prove it gone), as is
/// every finding that may still be removed or that an API answer may settle.
#[test]
fn only_kept_findings_nothing_in_the_pass_can_change_are_settled() {
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut ix = index_with_services(&[&["10.96.0.10"]]);
    // Of unknown age (the helper's flows have no start).
    let kept = |why: Option<KeepReason>| {
        let mut f = finding(40_000, false);
        f.verdict.kept_because = why;
        f
    };
    let known_age = |why: KeepReason| {
        let mut f = kept(Some(why));
        f.flow.start_ns = Some(1);
        f
    };
    // Every reason but these three (which an API answer or the next pass may change) settles.
    let carried = [
        KeepReason::NewerThanApiAnswer,
        KeepReason::LivePod,
        KeepReason::NewerThanSnapshot,
    ];
    for why in KeepReason::ALL {
        let settled = !carried.contains(&why);
        assert_eq!(is_settled(&kept(Some(why)), &ix), settled, "{why:?}");
    }
    // Of known age, the API server may be asked about it: carried.
    assert!(!is_settled(&known_age(KeepReason::NoEvidence), &ix));
    assert!(is_settled(&known_age(KeepReason::Annotation), &ix));
    assert!(!is_settled(&kept(None), &ix));
    let mut removable = kept(Some(KeepReason::Annotation));
    removable.verdict.removable = true;
    assert!(!is_settled(&removable, &ix));
    // A tombstone at the backend: its pod GET may still make the flow removable.
    ix.tombstones_mut().bury(tombstone("shop", "web-0", ip));
    assert!(!is_settled(&kept(Some(KeepReason::UnknownAge)), &ix));
    assert!(!is_settled(&kept(Some(KeepReason::NoEvidence)), &ix));
    assert!(is_settled(&kept(Some(KeepReason::Annotation)), &ix));
}

/// Settled findings reach the report's counts in full, and its details within the cap of
/// kept ones the pass's own findings left.
#[test]
fn settled_findings_are_counted_in_full_and_shown_within_the_cap() {
    let mut settled = Settled::default();
    let n = MAX_KEPT_SHOWN + 1_000;
    for i in 0..n {
        let mut f = finding((i % 60_000) as u16, false);
        f.verdict.kept_because = Some(KeepReason::UnknownAge);
        settled.take(f);
    }
    assert_eq!(settled.shown.len(), MAX_KEPT_SHOWN);
    let own_kept = 10;
    let mut r = PassReport {
        findings: (0..own_kept)
            .map(|i| (finding(i, false), Outcome::Kept))
            .chain([(finding(99, true), Outcome::Deleted)])
            .collect(),
        not_shown: 5,
        stale: stale_counts(&[finding(1, false)]),
        ..PassReport::nothing(PassKind::Full, Instant::now())
    };
    settled.add_to(&mut r);
    assert_eq!(r.stale.values().sum::<u64>(), 1 + n as u64);
    let kept = r
        .findings
        .iter()
        .filter(|(_, o)| *o == Outcome::Kept)
        .count();
    assert_eq!(kept, MAX_KEPT_SHOWN);
    assert_eq!(r.findings.len(), MAX_KEPT_SHOWN + 1);
    // Every stale flow is either shown or counted as not shown.
    assert_eq!(
        r.findings.len() as u64 + r.not_shown,
        (own_kept as u64 + 1 + 5) + n as u64
    );
}

fn index_with_services(cluster_ips: &[&[&str]]) -> Index {
    let mut ix = Index::new(crate::cluster::IndexConfig::default());
    for (i, ips) in cluster_ips.iter().enumerate() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "ns", "uid": format!("u{i}")},
            "spec": {"clusterIP": ips[0], "clusterIPs": ips, "selector": {"app": "x"},
                     "ports": [{"name": "http", "port": 80}], "type": "ClusterIP"}
        }))
        .unwrap();
        ix.apply(crate::cluster::Event::Apply(svc.into()), Timestamp::now())
            .unwrap();
    }
    ix
}

/// The API server's `status.podIP` selector matches a pod's first IP only: an empty answer
/// is absence only on a single-stack cluster of the IP's family.
#[test]
fn an_empty_answer_is_absence_only_on_a_single_stack_cluster() {
    let v4: IpAddr = "10.244.0.2".parse().unwrap();
    let v6: IpAddr = "fd00:10:244::2".parse().unwrap();
    let single = index_with_services(&[&["10.96.0.10"], &["10.96.0.11"]]);
    assert!(empty_answer_is_absence(&single, &v4));
    assert!(!empty_answer_is_absence(&single, &v6));
    let dual = index_with_services(&[&["10.96.0.10"], &["10.96.0.11", "fd00:10:96::11"]]);
    assert!(!empty_answer_is_absence(&dual, &v4));
    assert!(!empty_answer_is_absence(&dual, &v6));
    // Nothing known of the cluster's families: unknown.
    let none = index_with_services(&[]);
    assert!(!empty_answer_is_absence(&none, &v4));
}

/// Asked only for stale TCP/UDP/SCTP flows kept for lack of evidence, of known age, with
/// nothing in the index at the IP.
#[test]
fn only_ghosts_kept_for_lack_of_evidence_are_asked_about() {
    let ix = index_with_services(&[&["10.96.0.10"]]);
    let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let ghost = |f: fn(&mut Finding)| {
        let mut g = finding(40000, false);
        g.flow.start_ns = Some(1);
        g.verdict.kept_because = Some(KeepReason::NoEvidence);
        f(&mut g);
        g
    };
    assert!(wants_holders(&ix, &pod, &[ghost(|_| {})]));
    assert!(!wants_holders(
        &ix,
        &pod,
        &[ghost(|g| g.flow.start_ns = None)]
    ));
    // UDP too: without a tombstone, UDP alone is no evidence in the agent's view.
    assert!(wants_holders(
        &ix,
        &pod,
        &[ghost(|g| {
            g.flow.orig.proto = 17;
        })]
    ));
    assert!(!wants_holders(
        &ix,
        &pod,
        &[ghost(|g| {
            g.flow.orig.proto = 1;
        })]
    ));
    assert!(!wants_holders(
        &ix,
        &pod,
        &[ghost(|g| {
            g.verdict.kept_because = Some(KeepReason::LivePod);
        })]
    ));
    assert!(!wants_holders(
        &ix,
        &pod,
        &[ghost(|g| g.verdict.removable = true)]
    ));
    let other: IpAddr = "203.0.113.8".parse().unwrap();
    assert!(!wants_holders(&ix, &other, &[ghost(|_| {})]));
}

/// A World whose pod lookups answer from a table (what the agent's lookups would have
/// answered by now), and which records what was asked.
struct Answers {
    fates: HashMap<String, PodFate>,
    asked: Vec<String>,
}

impl World for Answers {
    fn kube_proxy(&mut self) -> KubeProxyView {
        KubeProxyView::default()
    }
    fn pod_fate(&mut self, ns: &str, name: &str, _: Option<&str>, _: IpAddr) -> PodFate {
        let pod = format!("{ns}/{name}");
        self.asked.push(pod.clone());
        self.fates[&pod]
    }
    fn global(&mut self) -> Global {
        Global::default()
    }
    fn report(&mut self, _: &PassReport) {}
}

fn tombstone(ns: &str, pod: &str, ip: IpAddr) -> crate::cluster::Tombstone {
    crate::cluster::Tombstone {
        service: ObjectKey::new(ns, "web"),
        ip,
        ports: Vec::new(),
        pod: Some(crate::cluster::PodTarget {
            name: Name::new(pod),
            uid: None,
        }),
        conditions: crate::cluster::Conditions::new(true, true, false),
        managed: true,
        removed_at: Timestamp::now(),
        pod_gone: false,
    }
}

/// kube-proxy as a test sets it, and the API server's answer about every IP.
struct Proxy {
    view: KubeProxyView,
    holders: HoldersAnswer,
}

impl Proxy {
    /// A readable kube-proxy whose last successful sync began after `t`.
    fn synced_after(t: Timestamp) -> Proxy {
        Proxy {
            view: KubeProxyView {
                readable: true,
                last_success: Some(t),
                began_after: Some(t),
                failing: false,
            },
            holders: HoldersAnswer::Unknown,
        }
    }
}

impl World for Proxy {
    fn kube_proxy(&mut self) -> KubeProxyView {
        self.view
    }
    fn pod_fate(&mut self, _: &str, _: &str, _: Option<&str>, _: IpAddr) -> PodFate {
        PodFate::Unknown
    }
    fn ip_holders(&mut self, _: IpAddr) -> HoldersAnswer {
        self.holders
    }
    fn global(&mut self) -> Global {
        Global::default()
    }
    fn report(&mut self, _: &PassReport) {}
}

/// The soak in CI (a pod made and deleted while the slice watch was silent, so without a
/// tombstone): the API server's "no pod at this IP" came 0.15 s after the deletion, and the
/// agent deleted the flows at once — the gate had compared kube-proxy's last sync with the
/// agent's start, not with the answer, and the sync that removed the pod began 0.43 s after
/// the deletion. The answer is when the agent learnt of the change: the gate waits for a
/// sync that began after it.
#[test]
fn an_answer_that_no_pod_holds_the_ip_waits_for_a_sync_that_began_after_it() {
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
    let cfg = super::scenario::config();
    let secs = |s: i64| {
        Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(s))
            .unwrap()
    };
    let answered = secs(10);
    shared
        .index
        .write()
        .unwrap()
        .ip_answers_mut()
        .record_absent(ip, answered);
    let world = Proxy::synced_after;
    // A sync that began after the agent started, but before the answer: not yet.
    let r = backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None);
    assert!(
        r.is_err(),
        "the gate opened on a sync that began before the API said the IP was free"
    );
    // One that began after it: open.
    let r = backend_gate(&shared, &mut world(secs(11)), &cfg, ip, &mut None);
    assert_eq!(r, Ok(None));
}

/// The same for a backend whose endpoint's removal the agent never saw (a silent slice
/// watch) but whose pod this node's pod watch saw deleted: that is the change. With a
/// tombstone at the IP the endpoint's removal stays the change (kube-proxy programs
/// endpoints; a pod deleted long after its endpoint left needs no new sync).
#[test]
fn a_pod_seen_gone_without_a_tombstone_waits_for_a_sync_that_began_after_it() {
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
    let cfg = super::scenario::config();
    let t0 = Timestamp::now();
    let secs = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dns-0", "namespace": "ns", "uid": "p1",
                     "creationTimestamp": "2025-06-01T10:00:00Z"},
        "spec": {"nodeName": "n"},
        "status": {"phase": "Running", "podIP": "203.0.113.7",
                   "podIPs": [{"ip": "203.0.113.7"}]}
    }))
    .unwrap();
    {
        let mut ix = shared.index.write().unwrap();
        ix.apply(crate::cluster::Event::Apply(pod.clone().into()), secs(1))
            .unwrap();
        ix.apply(crate::cluster::Event::Delete(pod.into()), secs(10))
            .unwrap();
        assert_eq!(ix.pod_left_at(&ip), Some(secs(10)));
    }
    let world = Proxy::synced_after;
    assert!(backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None).is_err());
    assert!(backend_gate(&shared, &mut world(secs(11)), &cfg, ip, &mut None).is_ok());
    // A tombstone at the IP: its removal (now) is the change, not the pod's deletion.
    shared
        .index
        .write()
        .unwrap()
        .tombstones_mut()
        .bury(tombstone("ns", "dns-0", ip));
    assert!(backend_gate(&shared, &mut world(secs(5)), &cfg, ip, &mut None).is_ok());
}

/// The reactor's side of the lookups: every tombstone's pod is asked about (none waits for
/// another); a gone answer marks only its own tombstone; a pending lookup keeps the flows
/// without parking the backend (its answer wakes the reactor); an unanswered one parks it
/// with backoff, whatever else is pending.
#[test]
fn pending_lookups_keep_the_flows_and_only_unanswered_ones_park() {
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let shared = Shared::new(index_with_services(&[&["10.96.0.10"]]));
    {
        let mut ix = shared.index.write().unwrap();
        for ns in ["a", "b", "c"] {
            ix.tombstones_mut().bury(tombstone(ns, "web-0", ip));
        }
    }
    let gone = |shared: &Shared| -> Vec<String> {
        let ix = shared.index.read().unwrap();
        let at = ix.tombstones().at(&ip);
        at.iter()
            .filter(|t| t.pod_gone)
            .map(|t| t.service.namespace.to_string())
            .collect()
    };
    let world = |a, b, c| Answers {
        fates: [("a/web-0", a), ("b/web-0", b), ("c/web-0", c)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        asked: Vec::new(),
    };
    let mut w = world(PodFate::Pending, PodFate::Gone, PodFate::Alive);
    assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Pending);
    assert_eq!(w.asked.len(), 3);
    assert_eq!(gone(&shared), ["b"]);
    // b is confirmed: not asked again.
    let mut w = world(PodFate::Unknown, PodFate::Gone, PodFate::Pending);
    assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Unanswered);
    assert_eq!(w.asked, ["a/web-0", "c/web-0"]);
    let mut w = world(PodFate::Alive, PodFate::Gone, PodFate::Gone);
    assert_eq!(confirm_pods(&shared, &mut w, ip), Confirmed::Answered);
    assert_eq!(gone(&shared), ["b", "c"]);
}

/// An empty answer taken 1 s after a ghost began proves nothing about it with a 2 s skew
/// margin: the backend is asked about again once it can (start + skew), not after
/// `--ip-lookup-every` — a pod made and deleted while a watch was down leaves exactly such
/// ghosts (the soak's silent watch). An answer that covers every flow needs no second one.
#[test]
fn an_answer_too_close_to_the_flows_is_asked_for_again_soon() {
    let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let skew = Duration::from_secs(2);
    let t0 = Timestamp::from_second(1_800_000_000).unwrap();
    let at = |secs: f64| {
        t0.checked_add(jiff::SignedDuration::from_secs_f64(secs))
            .unwrap()
    };
    let began = |secs: f64| {
        let mut f = finding(40_000, false);
        f.flow.start_ns = Some(at(secs).as_nanosecond() as u64);
        f
    };
    // Began at 0, answered at 1: ask again at 0 + 2 + 0.5, i.e. 1.5 s after the answer.
    let d = ask_again_after(&[began(0.0)], pod, at(1.0), skew).unwrap();
    assert_eq!(d, Duration::from_millis(1500));
    // The latest flow counts; never sooner than a second.
    let d = ask_again_after(&[began(0.0), began(0.5)], pod, at(2.4), skew).unwrap();
    assert_eq!(d, Duration::from_secs(1));
    let d = ask_again_after(&[began(0.0), began(3.0)], pod, at(1.0), skew).unwrap();
    assert_eq!(d, Duration::from_millis(4500));
    // Every flow older than the answer beyond the skew: nothing to ask.
    assert_eq!(ask_again_after(&[began(0.0)], pod, at(2.5), skew), None);
    // Removable ones, flows of unknown age and other backends do not count.
    let mut removable = began(0.0);
    removable.verdict.removable = true;
    let unknown_age = finding(40_001, false);
    assert_eq!(
        ask_again_after(&[removable, unknown_age], pod, at(1.0), skew),
        None
    );
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8));
    assert_eq!(ask_again_after(&[began(0.0)], other, at(1.0), skew), None);
}

#[test]
fn a_long_full_pass_stretches_the_resync_interval() {
    let min = Duration::from_secs(60);
    // 0.3 s at 0.9 %: 33 s of budget, the interval wins.
    assert_eq!(resync_every(min, 0.9, Duration::from_millis(300)), min);
    // 1.08 s at 0.9 %: 120 s.
    let e = resync_every(min, 0.9, Duration::from_millis(1080));
    assert!((e.as_secs_f64() - 120.0).abs() < 0.01, "{e:?}");
    // Disabled, or nonsense: the interval.
    assert_eq!(resync_every(min, 0.0, Duration::from_secs(5)), min);
    assert_eq!(resync_every(min, f64::NAN, Duration::from_secs(5)), min);
    // Never beyond an hour.
    assert_eq!(
        resync_every(min, 0.001, Duration::from_secs(100)),
        Duration::from_secs(3600)
    );
}
