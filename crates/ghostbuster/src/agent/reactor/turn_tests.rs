//! The reactor's decisions, turn by turn, over a table in memory and a scripted world
//! ([`super::scenario`]): what is removed, what waits and why, what only reports. Each "kept"
//! assertion follows proof that the turn looked at the backend (its pass report, a parked due
//! time, a snapshot, a question asked).

use std::time::Duration;

use super::scenario::*;
use super::{PodFate, Turn, Work};
use crate::agent::gate::{Breaker, Hold};
use crate::cluster::Changes;
use crate::sweep::Outcome;
use crate::verdict::KeepReason;

/// The common path: `web-0` leaves the slice, kube-proxy syncs after that, the API server says
/// the pod is gone: its flows are removed, `web-1`'s stay.
#[test]
fn a_removed_backend_whose_pod_is_gone_loses_its_flows_once_kube_proxy_synced_after() {
    let (mut r, world) = rig(
        vec![tcp(40000, WEB_0), tcp(40001, WEB_0), tcp(40002, WEB_1)],
        config(),
    );
    let changed = r.endpoints_leave(&[WEB_0]);
    assert_eq!(changed, [WEB_0]);
    world.synced();
    world.pod("web-0", PodFate::Gone);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.totals.deleted, 2, "{pass:#?}");
    assert!(pass.removed_at.is_some() && pass.gate_opened.is_some());
    assert_eq!(r.flows_to(WEB_0), 0);
    assert_eq!(r.flows_to(WEB_1), 1);
    assert_eq!(world.state().asked_pods, ["shop/web-0"]);
}

/// kube-proxy's last sync began before the removal: the old rules may still DNAT to the pod, a
/// removed entry would be re-created. The backend waits (parked, its flows read meanwhile) and
/// is removed on the turn after a reading shows a sync that began after the removal.
#[test]
fn a_removed_backend_waits_for_a_kube_proxy_sync_that_began_after_the_removal() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced_at(later(-10));
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert!(r.parked_until(WEB_0).is_some(), "waits for kube-proxy");
    assert!(
        r.has_snapshot_of(WEB_0),
        "its flows were read while waiting"
    );
    assert_eq!(r.table().dumps, 1);
    assert_eq!(r.flows_to(WEB_0), 1);
    assert!(world.take_reports().is_empty(), "nothing was judged yet");

    world.synced();
    // The reading that moved wakes the backends that wait on kube-proxy.
    let mut turn = Turn::default();
    turn.absorb(r.shared(), Work::KubeProxy);
    assert_eq!(turn, Turn::backends([WEB_0]));
    r.turn(turn);
    assert_eq!(world.last_targeted().totals.deleted, 1);
    assert_eq!(r.flows_to(WEB_0), 0);
}

/// Failing syncs (or an unhealthy /healthz): kube-proxy's rules may be anything; the gate never
/// opens, not even once the grace has passed.
#[test]
fn a_failing_kube_proxy_holds_even_after_the_grace() {
    let mut cfg = config();
    cfg.grace = Duration::ZERO;
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], cfg);
    world.synced();
    world.state().kube_proxy.failing = true;
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert!(r.parked_until(WEB_0).is_some());
    assert!(r.has_snapshot_of(WEB_0));
    assert_eq!(r.flows_to(WEB_0), 1);
}

/// kube-proxy cannot be read at all: the gate waits `--grace` after the removal instead.
#[test]
fn an_unreadable_kube_proxy_opens_the_gate_only_after_the_grace() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed.clone()));
    let due = r.parked_until(WEB_0).expect("parked for the grace");
    assert!(
        due > Duration::from_secs(4) && due <= Duration::from_secs(5),
        "{due:?}"
    );
    assert_eq!(r.flows_to(WEB_0), 1);

    let mut cfg = config();
    cfg.grace = Duration::ZERO;
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], cfg);
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert_eq!(world.last_targeted().totals.deleted, 1);
}

/// The endpoint left the slice but the pod is alive (deselected, draining): its connections are
/// healthy and stay.
#[test]
fn a_pod_that_is_still_alive_keeps_its_flows() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Alive);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.findings.len(), 1, "{pass:#?}");
    let (f, outcome) = &pass.findings[0];
    assert_eq!(*outcome, Outcome::Kept);
    assert!(!f.verdict.removable);
    assert_eq!(pass.totals.deleted, 0);
    assert_eq!(r.flows_to(WEB_0), 1);
    assert_eq!(r.parked_until(WEB_0), None, "an answer needs no retry");
}

/// The API server did not answer about the pod: unknown is not gone. The flows stay, and the
/// backend is looked at again with a growing backoff.
#[test]
fn an_unanswered_pod_lookup_keeps_the_flows_and_asks_again_with_backoff() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Unknown);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert_eq!(world.last_targeted().findings[0].1, Outcome::Kept);
    let first = r.parked_until(WEB_0).expect("asked again later");
    assert!(first <= Duration::from_secs(1), "{first:?}");
    r.turn(Turn::backends([WEB_0]));
    let second = r.parked_until(WEB_0).expect("asked again later");
    assert!(second > Duration::from_secs(1), "backoff grows: {second:?}");
    assert_eq!(world.state().asked_pods.len(), 2);
    assert_eq!(r.flows_to(WEB_0), 1);
}

/// A lookup under way keeps the flows without parking the backend: its answer wakes the reactor.
#[test]
fn a_pending_pod_lookup_keeps_the_flows_without_parking() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Pending);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert_eq!(world.last_targeted().findings[0].1, Outcome::Kept);
    assert_eq!(r.parked_until(WEB_0), None);
    assert_eq!(r.flows_to(WEB_0), 1);
    // The answer arrives and wakes it.
    world.pod("web-0", PodFate::Gone);
    r.turn(Turn::backends([WEB_0]));
    assert_eq!(r.flows_to(WEB_0), 0);
}

/// UDP to a removed endpoint is evidence by itself (kube-proxy removes such entries too): it
/// goes while the pod lookup is still unanswered; the TCP flow to the same pod stays.
#[test]
fn udp_to_a_removed_endpoint_goes_without_the_pod_confirmed_gone() {
    let (mut r, world) = rig(vec![udp(40000, WEB_0), tcp(40001, WEB_0)], config());
    world.synced();
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.totals.deleted, 1, "{pass:#?}");
    assert_eq!(r.table().flows.len(), 1);
    assert_eq!(r.table().flows[0].orig.proto, 6, "the TCP flow stays");
}

/// `--dry-run`: everything is judged and reported, nothing removed.
#[test]
fn dry_run_reports_what_it_would_remove_and_removes_nothing() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Gone);
    world.state().global.dry_run = true;
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.held, Some(Hold::DryRun));
    assert!(pass.findings[0].0.verdict.removable);
    assert_eq!(pass.totals.deleted, 0);
    assert_eq!(r.flows_to(WEB_0), 1);
    assert!(r.table().deleted_keys.is_empty());
}

/// A watch gone quiet: the view may be stale, so nothing is removed; the backend it held is
/// looked at again as soon as the watch is heard from — not at the next full pass.
#[test]
fn a_stale_watch_holds_and_the_held_backend_is_looked_at_once_it_recovers() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Gone);
    world.state().global.stale = vec!["endpointslices".into()];
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert!(matches!(
        world.last_targeted().held,
        Some(Hold::Stale { .. })
    ));
    assert_eq!(r.flows_to(WEB_0), 1);
    // Still stale: an empty turn does nothing.
    r.turn(Turn::default());
    assert_eq!(r.flows_to(WEB_0), 1);
    world.state().global.stale.clear();
    r.turn(Turn::default());
    assert_eq!(world.last_targeted().totals.deleted, 1);
    assert_eq!(r.flows_to(WEB_0), 0);
}

/// More removals than one pass may make (`--max-deletes-per-pass`): the breaker opens, the
/// pass only reports, and the shared flag says so.
#[test]
fn more_removals_than_a_pass_may_make_open_the_breaker() {
    let mut cfg = config();
    cfg.breaker = Breaker {
        max_deletes_per_pass: 1,
        ..Breaker::default()
    };
    let (mut r, world) = rig(vec![tcp(40000, WEB_0), tcp(40001, WEB_0)], cfg);
    world.synced();
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.held, Some(Hold::CircuitOpen));
    assert!(pass.circuit_open);
    assert!(r
        .shared()
        .circuit_open
        .load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(r.flows_to(WEB_0), 2);
}

/// The budget across passes (`--max-deletes-per-minute`): the pass that would exceed it trips
/// the breaker once (the operator is told once), and it stays open for later passes.
#[test]
fn the_budget_across_passes_trips_once_and_stays_open() {
    let mut cfg = config();
    cfg.breaker = Breaker {
        max_deletes_per_minute: 2,
        ..Breaker::default()
    };
    let (mut r, world) = rig(
        vec![
            tcp(40000, WEB_0),
            tcp(40001, WEB_0),
            tcp(40002, WEB_1),
            tcp(40003, WEB_1),
        ],
        cfg,
    );
    world.synced();
    world.pod("web-0", PodFate::Gone);
    world.pod("web-1", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert_eq!(r.flows_to(WEB_0), 0, "within the budget");
    let changed = r.endpoints_leave(&[WEB_0, WEB_1]);
    world.synced();
    r.turn(Turn::backends(changed.clone()));
    assert_eq!(world.last_targeted().held, Some(Hold::CircuitOpen));
    assert_eq!(world.state().trips.len(), 1);
    r.turn(Turn::backends(changed));
    assert_eq!(world.last_targeted().held, Some(Hold::CircuitOpen));
    assert_eq!(world.state().trips.len(), 1, "told once");
    assert_eq!(r.flows_to(WEB_1), 2);
}

/// A full pass over a view in which every endpoint left at once would remove every service
/// flow of the node: a broken view, not an outage to act on. The breaker holds it.
#[test]
fn a_full_pass_that_would_remove_most_service_flows_trips_the_breaker() {
    let flows: Vec<_> = (0..20)
        .map(|i| tcp(40000 + i, if i % 2 == 0 { WEB_0 } else { WEB_1 }))
        .collect();
    let (mut r, world) = rig(flows, config());
    world.synced_at(later(-10));
    world.pod("web-0", PodFate::Gone);
    world.pod("web-1", PodFate::Gone);
    r.endpoints_leave(&[WEB_0, WEB_1]);
    world.synced();
    r.turn(Turn::full());
    let full = world
        .take_reports()
        .into_iter()
        .find(|p| p.kind == super::PassKind::Full)
        .expect("a full pass");
    assert_eq!(full.scanned, 20);
    assert_eq!(full.held, Some(Hold::CircuitOpen), "{full:#?}");
    assert_eq!(full.totals.deleted, 0);
    assert_eq!(r.table().flows.len(), 20);
}

/// A full pass finds the flows of a backend removed a moment ago, before kube-proxy synced: it
/// leaves them to the backend's targeted pass (parked), never removes them itself.
#[test]
fn a_full_pass_leaves_a_backend_kube_proxy_has_not_caught_up_with() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0), tcp(40001, WEB_1)], config());
    world.synced_at(later(-10));
    world.pod("web-0", PodFate::Gone);
    r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::full());
    let full = world.take_reports().remove(0);
    assert_eq!(full.kind, super::PassKind::Full);
    assert_eq!(full.scanned, 2);
    assert_eq!(full.totals.deleted, 0);
    assert!(r.parked_until(WEB_0).is_some());
    assert_eq!(r.flows_to(WEB_0), 1);
    // Once kube-proxy has synced, the parked backend's own pass removes it.
    world.synced();
    r.turn(Turn::backends([WEB_0]));
    assert_eq!(r.flows_to(WEB_0), 0);
    assert_eq!(r.flows_to(WEB_1), 1);
}

/// A full pass with every gate open removes the ghosts and nothing else.
#[test]
fn a_full_pass_removes_ghosts_and_never_a_healthy_flow() {
    let (mut r, world) = rig(
        vec![
            tcp(40000, WEB_0),
            udp(40001, WEB_0),
            tcp(40002, WEB_1),
            udp(40003, WEB_1),
        ],
        config(),
    );
    world.pod("web-0", PodFate::Gone);
    r.endpoints_leave(&[WEB_0]);
    world.synced();
    r.turn(Turn::full());
    let full = world.take_reports().remove(0);
    assert_eq!(full.kind, super::PassKind::Full);
    assert_eq!(full.totals.deleted, 2, "{full:#?}");
    assert_eq!(r.flows_to(WEB_0), 0);
    assert_eq!(r.flows_to(WEB_1), 2);
}

/// Re-check before delete: a flow judged only on being half-open got its reply between the read
/// and the delete. The sweep reads it again, sees the reply, and keeps it (`changed`).
#[test]
fn a_half_open_flow_answered_before_the_delete_is_kept() {
    let flow = half_open(40000, WEB_0, 60);
    let (mut r, world) = rig(vec![flow], config());
    world.synced();
    // The pod's fate is unknown: only "half-open" makes the flow removable.
    let changed = r.endpoints_leave(&[WEB_0]);
    r.table_mut().then(move |flows| {
        for f in flows.iter_mut() {
            *f = answered(*f);
        }
    });
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert!(pass.findings[0].0.verdict.removable, "{pass:#?}");
    assert_eq!(pass.findings[0].1, Outcome::Changed);
    assert_eq!(pass.totals.changed, 1);
    assert_eq!(r.flows_to(WEB_0), 1, "the answered flow stays");
}

/// The delete must not hit a newer entry: the ghost expired and a new connection took its tuple
/// (a client reusing its port) between the read and the delete. The delete names the old
/// entry's id, so the new one stays.
#[test]
fn a_delete_never_hits_a_newer_entry_that_took_the_tuple() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.table_mut().then(|flows| {
        let mut newer = flows[0];
        newer.id = Some(77);
        flows[0] = newer;
    });
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert_eq!(pass.totals.deleted, 0, "{pass:#?}");
    assert_eq!(pass.totals.already_gone, 1);
    assert_eq!(r.table().flows[0].id, Some(77), "the newer entry stays");
}

/// A dump that fails reports a pass that looked at nothing, and removes nothing.
#[test]
fn a_failed_dump_reports_an_empty_pass_and_removes_nothing() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
    world.synced();
    world.pod("web-0", PodFate::Gone);
    r.endpoints_leave(&[WEB_0]);
    r.table_mut().fail_next_dump = true;
    r.turn(Turn::full());
    let full = world.take_reports().remove(0);
    assert_eq!(full.kind, super::PassKind::Full);
    assert_eq!((full.scanned, full.totals.deleted), (0, 0));
    assert_eq!(r.flows_to(WEB_0), 1);
    assert!(r.table().deleted_keys.is_empty());
}

/// A ghost no tombstone speaks for (its endpoint came and went while the slice watch was
/// silent): the API server's "no pod holds this IP" is the evidence *and* the change, so the
/// flow waits for a kube-proxy sync that began after the answer.
#[test]
fn a_ghost_without_a_tombstone_goes_after_the_api_answer_and_a_sync_after_it() {
    let (mut r, world) = rig(vec![begun(tcp(40000, STRANGER), 60)], config());
    world.synced();
    r.turn(Turn::backends([STRANGER]));
    let pass = world.last_targeted();
    assert_eq!(
        pass.findings[0].0.verdict.kept_because,
        Some(KeepReason::NoEvidence)
    );
    assert_eq!(world.state().asked_holders, [STRANGER], "the API was asked");
    assert_eq!(r.flows_to(STRANGER), 1, "unknown is not gone");
    assert!(r.parked_until(STRANGER).is_some(), "asked again later");

    // The answer comes: no pod holds the IP. kube-proxy's last sync began before it.
    let (mut r, world) = rig(vec![begun(tcp(40000, STRANGER), 60)], config());
    world.synced_at(later(1));
    world.state().holders = super::HoldersAnswer::Absent { as_of: later(2) };
    r.turn(Turn::backends([STRANGER]));
    assert_eq!(world.state().asked_holders, [STRANGER]);
    assert!(r.parked_until(STRANGER).is_some(), "waits for a later sync");
    assert_eq!(r.flows_to(STRANGER), 1);
    world.synced_at(later(3));
    r.turn(Turn::backends([STRANGER]));
    assert_eq!(world.last_targeted().totals.deleted, 1);
    assert_eq!(r.flows_to(STRANGER), 0);
}

/// The API server lists a pod at the IP (a new pod got it, or a host-network one): the ghost is
/// not provably gone and stays.
#[test]
fn an_ip_the_api_says_a_pod_holds_keeps_the_ghost() {
    let (mut r, world) = rig(vec![begun(tcp(40000, STRANGER), 60)], config());
    world.synced();
    world.state().holders = super::HoldersAnswer::Held;
    r.turn(Turn::backends([STRANGER]));
    assert_eq!(world.state().asked_holders, [STRANGER]);
    let pass = world.last_targeted();
    assert_eq!(pass.findings[0].1, Outcome::Kept);
    assert_eq!(r.flows_to(STRANGER), 1);
}

/// A rollout parks many backends at once: kube-proxy is read once per turn, not once each.
#[test]
fn kube_proxy_is_read_once_per_turn_however_many_backends_wait() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_0), tcp(40001, WEB_1)], config());
    world.synced_at(later(-10));
    let changed = r.endpoints_leave(&[WEB_0, WEB_1]);
    assert_eq!(changed.len(), 2);
    let before = world.state().kube_proxy_reads;
    r.turn(Turn::backends(changed));
    assert_eq!(world.state().kube_proxy_reads - before, 1);
    assert!(r.parked_until(WEB_0).is_some() && r.parked_until(WEB_1).is_some());
}

/// A snapshot taken while the gate was closed stands in for a fresh read when it opens — unless
/// a NEW flow toward the backend was seen since, or events are not being read: then the flows
/// are read again (each read walks the whole table in the kernel).
#[test]
fn a_snapshot_taken_while_waiting_is_used_when_the_gate_opens_unless_new_flows_came() {
    for new_flow_seen in [false, true] {
        let (mut r, world) = rig(vec![tcp(40000, WEB_0)], config());
        r.shared().event_marks.set_live(true);
        world.synced_at(later(-10));
        world.pod("web-0", PodFate::Gone);
        let changed = r.endpoints_leave(&[WEB_0]);
        r.turn(Turn::backends(changed));
        assert!(r.has_snapshot_of(WEB_0));
        assert_eq!(r.table().dumps, 1);
        if new_flow_seen {
            r.shared().event_marks.saw(WEB_0);
        }
        world.synced();
        r.turn(Turn::backends([WEB_0]));
        assert_eq!(r.flows_to(WEB_0), 0);
        let want = if new_flow_seen { 2 } else { 1 };
        assert_eq!(r.table().dumps, want, "new flow seen: {new_flow_seen}");
    }
}

/// A new reactor's first turn is a full pass; the next one waits for the resync interval.
#[test]
fn the_first_turn_is_a_full_pass_and_the_next_waits_for_the_interval() {
    let (mut r, world) = rig(vec![tcp(40000, WEB_1)], config());
    r.next_full = std::time::Instant::now();
    r.turn(Turn::default());
    r.turn(Turn::default());
    let reports = world.take_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].kind, super::PassKind::Full);
    assert_eq!(reports[0].scanned, 1);
    assert!(r.next_due() > std::time::Instant::now() + Duration::from_secs(50));
}

/// What the watch's changes ask of the reactor: each changed backend once, and a full pass when
/// a Service went (its flows have no endpoint to be found by).
#[test]
fn changes_ask_for_each_backend_once_and_a_full_pass_for_a_removed_service() {
    let svc = crate::cluster::ObjectKey::new("shop", "web");
    let changes = Changes {
        endpoints_removed: vec![(svc.clone(), WEB_0), (svc.clone(), WEB_1)],
        endpoints_added: vec![(svc.clone(), WEB_0)],
        services_removed: vec![svc],
        ..Changes::default()
    };
    let work = super::work_from_changes(&changes);
    assert_eq!(
        work,
        [Work::Backend(WEB_0), Work::Backend(WEB_1), Work::Full]
    );
    assert!(super::work_from_changes(&Changes::default()).is_empty());
}
