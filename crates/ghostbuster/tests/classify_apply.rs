//! The index fed by watch events (`Index::apply`), as the agent will: upserts, deletes, relists,
//! and the tombstones that are the agent's evidence.

mod classify_support;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::{Event, Index, Kind, ObjectKey};
use ghostbuster::policy::Policy;
use ghostbuster::verdict::{Evidence, KeepReason, VerdictKind};
use serde_json::json;

const VIP: &str = WEB_VIP;

fn apply(index: &mut Index, e: Event) -> ghostbuster::cluster::Changes {
    index.apply(e, t(NOW)).unwrap()
}

fn key() -> ObjectKey {
    ObjectKey::new("ns", "web")
}

/// The pod behind endpoint `10.244.0.2`.
fn pod_b() -> ObjectKey {
    ObjectKey::new("ns", "b")
}

fn verdict_for(index: &Index, backend: &str) -> ghostbuster::verdict::Verdict {
    let f = tcp("10.244.9.9", 40000, VIP, 80)
        .dnat(backend, 8080)
        .build();
    classify(&f, index, &Policy::default(), t(NOW))
}

#[test]
fn endpoint_leaving_every_slice_leaves_a_tombstone() {
    let mut index = index_of(vec![
        web_service(),
        web_slice(
            "web-1",
            vec![ready("10.244.0.1", "a"), ready("10.244.0.2", "b")],
        ),
    ]);
    let changes = apply(
        &mut index,
        Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")])),
    );
    assert_eq!(changes.endpoints_removed, vec![(key(), ip("10.244.0.2"))]);
    let tomb = index.tombstones().get(&key(), &ip("10.244.0.2")).unwrap();
    assert_eq!(&*tomb.pod.as_ref().unwrap().name, "b");
    assert_eq!(
        tomb.pod.as_ref().unwrap().uid.as_ref().unwrap().to_string(),
        "uid-pod-b"
    );
    assert_eq!(tomb.removed_at, t(NOW));
    assert!(tomb.managed && !tomb.pod_gone && tomb.conditions.ready());
    assert_eq!(tomb.ports[0].port, 8080);

    // Pods are not known to the agent index: the tombstone alone is not enough for TCP...
    let v = verdict_for(&index, "10.244.0.2");
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert_eq!(
        v.evidence.iter().collect::<Vec<_>>(),
        [Evidence::EndpointRemoved]
    );
    assert_eq!(v.kept_because, Some(KeepReason::NoEvidence));
    // A pod of the same name in another namespace is another pod: its 404 proves nothing.
    assert_eq!(
        index.tombstones_mut().mark_pod_gone(
            &ip("10.244.0.2"),
            &ObjectKey::new("other", "b"),
            None
        ),
        0
    );
    assert!(!verdict_for(&index, "10.244.0.2").removable);
    // ...until the agent confirms the pod is gone.
    assert_eq!(
        index
            .tombstones_mut()
            .mark_pod_gone(&ip("10.244.0.2"), &pod_b(), None),
        1
    );
    let v = verdict_for(&index, "10.244.0.2");
    assert!(v.evidence.contains(Evidence::PodGone));
    assert!(v.removable);
}

/// Issue #12: an endpoint that left while terminating may be a draining pod whose labels changed
/// (alive): only the API's confirmation makes its pod gone.
#[test]
fn endpoint_last_seen_terminating_is_gone_only_once_confirmed() {
    let mut index = web_with_b_terminating(false);
    apply(
        &mut index,
        Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")])),
    );
    let v = verdict_for(&index, "10.244.0.2");
    assert!(v.evidence.contains(Evidence::EndpointRemoved));
    assert!(!v.evidence.contains(Evidence::PodGone));
    assert!(!v.removable);
    assert_eq!(v.kept_because, Some(KeepReason::NoEvidence));
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.2"), &pod_b(), None);
    let v = verdict_for(&index, "10.244.0.2");
    assert!(v.evidence.contains(Evidence::PodGone));
    assert!(v.removable);
}

#[test]
fn endpoint_moving_between_slices_is_not_a_removal() {
    for add_first in [true, false] {
        let mut index = index_of(vec![
            web_service(),
            web_slice(
                "web-1",
                vec![ready("10.244.0.1", "a"), ready("10.244.0.2", "b")],
            ),
            web_slice("web-2", vec![ready("10.244.0.3", "c")]),
        ]);
        let add = Event::Apply(web_slice(
            "web-2",
            vec![ready("10.244.0.3", "c"), ready("10.244.0.2", "b")],
        ));
        let remove = Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")]));
        let (first, second) = if add_first {
            (add, remove)
        } else {
            (remove, add)
        };
        let c1 = apply(&mut index, first);
        let c2 = apply(&mut index, second);
        if add_first {
            assert!(c1.is_empty() && c2.is_empty(), "{c1:?} {c2:?}");
        }
        assert!(index.tombstones().is_empty(), "add_first={add_first}");
        assert_eq!(verdict_for(&index, "10.244.0.2").kind, VerdictKind::Healthy);
    }
}

#[test]
fn slice_deletion_and_service_deletion() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ]);
    let c = apply(&mut index, Event::Delete(web_service()));
    assert_eq!(c.services_removed, vec![key()]);
    let c = apply(&mut index, Event::Delete(web_slice("web-1", vec![])));
    assert_eq!(c.endpoints_removed, vec![(key(), ip("10.244.0.1"))]);
    // The flow now hits no frontend: service_gone, with the tombstone as evidence.
    let v = verdict_for(&index, "10.244.0.1");
    assert_eq!(v.kind, VerdictKind::ServiceGone);
    assert!(v.evidence.contains(Evidence::EndpointRemoved));
    assert!(!v.removable);
    assert_eq!(index.counts().services, 0);
    assert_eq!(index.counts().slices, 0);
}

#[test]
fn delete_of_an_older_incarnation_is_ignored() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ]);
    let mut old = slice("ns", "web", "web-1", vec![], json!([]));
    old.metadata.uid = Some("some-older-uid".into());
    apply(&mut index, Event::Delete(old.into()));
    assert_eq!(index.counts().slices, 1);
}

#[test]
fn relist_swaps_at_init_done_and_records_what_vanished() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
        web_slice("web-2", vec![ready("10.244.0.2", "b")]),
    ]);
    apply(&mut index, Event::Init(Kind::EndpointSlice));
    apply(
        &mut index,
        Event::InitApply(web_slice(
            "web-1",
            vec![ready("10.244.0.1", "a"), ready("10.244.0.3", "c")],
        )),
    );
    // Nothing changes before InitDone.
    assert_eq!(verdict_for(&index, "10.244.0.2").kind, VerdictKind::Healthy);
    assert_eq!(
        verdict_for(&index, "10.244.0.3").kind,
        VerdictKind::EndpointGone
    );
    let c = apply(&mut index, Event::InitDone(Kind::EndpointSlice));
    assert_eq!(c.endpoints_removed, vec![(key(), ip("10.244.0.2"))]);
    assert_eq!(c.endpoints_added, vec![(key(), ip("10.244.0.3"))]);
    assert_eq!(
        verdict_for(&index, "10.244.0.2").kind,
        VerdictKind::EndpointGone
    );
    assert_eq!(verdict_for(&index, "10.244.0.3").kind, VerdictKind::Healthy);
    assert_eq!(index.counts().slices, 1);
}

#[test]
fn relist_keeps_objects_it_could_not_read() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ]);
    apply(&mut index, Event::Init(Kind::EndpointSlice));
    let mut broken = slice(
        "ns",
        "web",
        "web-1",
        vec![ready("10.244.0.1", "a")],
        json!([]),
    );
    broken.address_type = "IPv5".into();
    let err = index
        .apply(Event::InitApply(broken.into()), t(NOW))
        .unwrap_err();
    assert!(err.to_string().contains("addressType \"IPv5\""), "{err}");
    let c = apply(&mut index, Event::InitDone(Kind::EndpointSlice));
    assert!(c.is_empty());
    assert_eq!(verdict_for(&index, "10.244.0.1").kind, VerdictKind::Healthy);
}

#[test]
fn rejected_update_keeps_the_previous_version() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ]);
    let mut broken = slice(
        "ns",
        "web",
        "web-1",
        vec![ready("not-an-ip", "a")],
        json!([]),
    );
    broken.metadata.uid = Some("uid-slice-ns-web-1".into());
    assert!(index.apply(Event::Apply(broken.into()), t(NOW)).is_err());
    assert_eq!(verdict_for(&index, "10.244.0.1").kind, VerdictKind::Healthy);
}

#[test]
fn ip_reused_by_a_pod_with_another_uid() {
    // The agent saw db's endpoint at 10.244.0.5 (pod db-0, uid-pod-db-0) leave; now the IP is an
    // endpoint of web with another pod.
    let mut index = index_of(vec![
        service(
            "ns",
            "db",
            &["10.96.1.2"],
            json!([{"name": "", "port": 5432}]),
        )
        .into(),
        slice(
            "ns",
            "db",
            "db-1",
            vec![ready("10.244.0.5", "db-0")],
            json!([{"name": "", "port": 5432}]),
        )
        .into(),
        web_service(),
    ]);
    apply(
        &mut index,
        Event::Apply(
            slice(
                "ns",
                "db",
                "db-1",
                vec![],
                json!([{"name": "", "port": 5432}]),
            )
            .into(),
        ),
    );
    apply(
        &mut index,
        Event::Apply(web_slice("web-1", vec![ready("10.244.0.5", "web-x")])),
    );
    let f = tcp("10.244.9.9", 40000, "10.96.1.2", 5432)
        .dnat("10.244.0.5", 5432)
        .build();
    // Until the API confirms db-0 is gone, it may be alive and merely deselected (issue #12).
    let v = classify(&f, &index, &Policy::default(), t(NOW));
    assert_eq!(v.kind, VerdictKind::Deselected);
    assert!(!v.removable);
    index
        .tombstones_mut()
        .mark_pod_gone(&ip("10.244.0.5"), &ObjectKey::new("ns", "db-0"), None);
    let v = classify(&f, &index, &Policy::default(), t(NOW));
    assert_eq!(v.kind, VerdictKind::IpReused);
    assert!(v.evidence.contains(Evidence::PodReplaced));
    assert!(v.removable);
    assert_eq!(v.now_owned_by.unwrap().pod.as_deref(), Some("web-x"));
}

#[test]
fn tombstones_expire_and_revive() {
    let mut index = index_of(vec![
        web_service(),
        web_slice("web-1", vec![ready("10.244.0.1", "a")]),
    ]);
    index
        .apply(
            Event::Apply(web_slice("web-1", vec![])),
            t("2025-06-01T12:00:00Z"),
        )
        .unwrap();
    assert_eq!(index.tombstones().len(), 1);
    assert_eq!(index.tombstones_mut().expire(t("2025-06-01T11:00:00Z")), 0);
    // Back in a slice: no longer a tombstone.
    let c = apply(
        &mut index,
        Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")])),
    );
    assert_eq!(c.endpoints_added, vec![(key(), ip("10.244.0.1"))]);
    assert!(index.tombstones().is_empty());
    index
        .apply(
            Event::Apply(web_slice("web-1", vec![])),
            t("2025-06-01T12:00:00Z"),
        )
        .unwrap();
    assert_eq!(index.tombstones_mut().expire(t("2025-06-01T12:10:00Z")), 1);
    assert!(index.tombstones().is_empty());
}

#[test]
fn node_and_service_cidr_events_update_frontends() {
    let mut index = index_of(vec![service(
        "ns",
        "np",
        &["10.96.1.9"],
        json!([{"name": "", "port": 80, "nodePort": 30007}]),
    )
    .into()]);
    let np = |index: &Index| {
        index
            .frontend(
                ip("192.168.49.2"),
                30007,
                ghostbuster::cluster::Protocol::Tcp,
            )
            .is_some()
    };
    assert!(!np(&index));
    apply(
        &mut index,
        Event::Apply(node("node-a", &["192.168.49.2"]).into()),
    );
    assert!(np(&index));
    apply(
        &mut index,
        Event::Apply(node("node-b", &["192.168.49.3"]).into()),
    );
    assert!(index
        .frontend(
            ip("192.168.49.3"),
            30007,
            ghostbuster::cluster::Protocol::Tcp
        )
        .is_none());
    apply(&mut index, Event::Delete(node("node-a", &[]).into()));
    assert!(!np(&index));

    assert!(!index.in_service_cidr(&ip("172.20.0.1")));
    let cidr: k8s_openapi::api::networking::v1::ServiceCIDR = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "extra"}, "spec": {"cidrs": ["172.20.0.0/16"]}
    }))
    .unwrap();
    apply(&mut index, Event::Apply(cidr.clone().into()));
    assert!(index.in_service_cidr(&ip("172.20.0.1")));
    apply(&mut index, Event::Delete(cidr.into()));
    assert!(!index.in_service_cidr(&ip("172.20.0.1")));
    assert!(
        index.in_service_cidr(&ip("10.96.0.1")),
        "configured CIDRs stay"
    );
}

#[test]
fn pods_are_indexed_by_ip_and_follow_updates() {
    let mut index = index_of(vec![pod(
        "ns",
        "p",
        "10.244.0.7",
        "2025-06-01T10:00:00Z",
        "Running",
    )
    .into()]);
    assert_eq!(index.pods_at(&ip("10.244.0.7")).count(), 1);
    apply(
        &mut index,
        Event::Apply(pod("ns", "p", "10.244.0.8", "2025-06-01T10:00:00Z", "Running").into()),
    );
    assert_eq!(index.pods_at(&ip("10.244.0.7")).count(), 0);
    assert_eq!(index.pods_at(&ip("10.244.0.8")).count(), 1);
    apply(
        &mut index,
        Event::Delete(pod("ns", "p", "10.244.0.8", "2025-06-01T10:00:00Z", "Running").into()),
    );
    assert_eq!(index.counts().pods, 0);
}

#[test]
fn service_update_moves_its_frontends() {
    use ghostbuster::cluster::Protocol;
    let mut index = index_of(vec![web_service()]);
    assert!(index.frontend(ip(VIP), 80, Protocol::Tcp).is_some());
    let moved = service(
        "ns",
        "web",
        &["10.96.1.5"],
        json!([{"name": "http", "port": 81}]),
    );
    apply(&mut index, Event::Apply(moved.into()));
    assert!(index.frontend(ip(VIP), 80, Protocol::Tcp).is_none());
    assert!(index.frontend(ip("10.96.1.5"), 80, Protocol::Tcp).is_none());
    let f = index.frontend(ip("10.96.1.5"), 81, Protocol::Tcp).unwrap();
    assert_eq!(&*f.service.key.name, "web");
    assert_eq!(index.counts().services, 1);
}

/// The index of the agent on node-a: the web Service with endpoints a and b, and b's pod, which
/// runs on this node. Then b leaves the slice while its pod still looks alive.
fn b_left_while_its_pod_looks_alive() -> Index {
    let mut index = index_of(vec![
        web_service(),
        web_slice(
            "web-1",
            vec![ready("10.244.0.1", "a"), ready("10.244.0.2", "b")],
        ),
        pod("ns", "b", "10.244.0.2", "2020-01-01T00:00:00Z", "Running").into(),
    ]);
    apply(
        &mut index,
        Event::Apply(web_slice("web-1", vec![ready("10.244.0.1", "a")])),
    );
    let v = verdict_for(&index, "10.244.0.2");
    assert_eq!(v.kind, VerdictKind::Deselected, "{v:?}");
    assert_eq!(v.kept_because, Some(KeepReason::LivePod));
    index
}

#[test]
fn a_local_pod_deleted_after_its_endpoint_left_confirms_the_tombstone() {
    let mut index = b_left_while_its_pod_looks_alive();
    let changes = apply(
        &mut index,
        Event::Delete(pod("ns", "b", "10.244.0.2", "2020-01-01T00:00:00Z", "Running").into()),
    );
    assert_eq!(changes.pods_ended, vec![ip("10.244.0.2")]);
    assert!(
        index
            .tombstones()
            .get(&key(), &ip("10.244.0.2"))
            .unwrap()
            .pod_gone
    );
    let v = verdict_for(&index, "10.244.0.2");
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(v.evidence.contains(Evidence::PodGone), "{v:?}");
    assert!(v.removable);
    // A second delete of the same pod is no news.
    let again = apply(
        &mut index,
        Event::Delete(pod("ns", "b", "10.244.0.2", "2020-01-01T00:00:00Z", "Running").into()),
    );
    assert!(again.pods_ended.is_empty());
}

#[test]
fn a_local_pod_that_failed_or_left_a_relist_confirms_the_tombstone() {
    // Evicted: the pod object stays, phase Failed.
    let mut index = b_left_while_its_pod_looks_alive();
    let changes = apply(
        &mut index,
        Event::Apply(pod("ns", "b", "10.244.0.2", "2020-01-01T00:00:00Z", "Failed").into()),
    );
    assert_eq!(changes.pods_ended, vec![ip("10.244.0.2")]);
    assert!(verdict_for(&index, "10.244.0.2").removable);

    // Deleted while the pod watch was down: only its relist shows it.
    let mut index = b_left_while_its_pod_looks_alive();
    apply(&mut index, Event::Init(Kind::Pod));
    let changes = apply(&mut index, Event::InitDone(Kind::Pod));
    assert_eq!(changes.pods_ended, vec![ip("10.244.0.2")]);
    assert!(verdict_for(&index, "10.244.0.2").removable);
}

#[test]
fn a_pod_of_another_incarnation_or_namespace_confirms_nothing() {
    // A pod of the same name in another namespace, at the same IP (another node's view mixed
    // in by a relist): not the pod the tombstone names.
    let mut index = b_left_while_its_pod_looks_alive();
    let other_ns = pod(
        "other",
        "b",
        "10.244.0.2",
        "2020-01-01T00:00:00Z",
        "Running",
    );
    apply(&mut index, Event::Apply(other_ns.clone().into()));
    let changes = apply(&mut index, Event::Delete(other_ns.into()));
    assert!(changes.pods_ended.is_empty());
    assert!(!index.tombstones().at(&ip("10.244.0.2"))[0].pod_gone);

    // The StatefulSet pod b was recreated (new uid) at the same IP: the tombstone names the old
    // uid, and a delete of the new incarnation is no evidence about it (the pod GET decides).
    let mut recreated = pod("ns", "b", "10.244.0.2", "2020-01-01T00:00:00Z", "Running");
    recreated.metadata.uid = Some("uid-pod-b-2".into());
    apply(&mut index, Event::Apply(recreated.clone().into()));
    let changes = apply(&mut index, Event::Delete(recreated.into()));
    assert!(changes.pods_ended.is_empty());
    assert!(!index.tombstones().at(&ip("10.244.0.2"))[0].pod_gone);
}

#[test]
fn a_pod_the_api_confirmed_gone_is_not_alive_for_a_lagging_pod_watch() {
    // The agent's GET answered 404 for b, but this node's pod watch (relisting after a 410)
    // still lists it: the GET is the fresher word.
    let mut index = b_left_while_its_pod_looks_alive();
    assert_eq!(
        index
            .tombstones_mut()
            .mark_pod_gone(&ip("10.244.0.2"), &pod_b(), None),
        1
    );
    let v = verdict_for(&index, "10.244.0.2");
    assert_eq!(v.kind, VerdictKind::EndpointGone, "{v:?}");
    assert!(v.removable);
}
