//! The reactor with the flow index ([`crate::agent::flow_index`]): a removal reads exactly the
//! entries the index names and walks nothing, judges them as a walk would have, and falls back
//! to the walk as soon as the index cannot be trusted. Each "kept" or "not read" assertion
//! follows the pass report that proves the backend was looked at.

use ctnetlink::{EventKind, Flow};

use super::scenario::*;
use super::{PodFate, Turn};
use crate::sweep::Outcome;

/// A reactor whose event thread "runs" and whose first full pass has rebuilt the index.
fn indexed(flows: Vec<Flow>) -> (super::Reactor<crate::table::MemTable, Script>, Script) {
    let (mut r, world) = rig(flows, config());
    r.shared().flows.set_live(true);
    r.turn(Turn::full());
    assert!(r.shared().flows.is_trusted(), "rebuilt by the full pass");
    world.take_reports();
    (r, world)
}

/// `web-0` leaves the slice, kube-proxy has synced since, the API says `fate` of its pod: the
/// turn that looks at it, and its report.
fn remove_web_0(
    r: &mut super::Reactor<crate::table::MemTable, Script>,
    world: &Script,
    fate: PodFate,
) -> super::PassReport {
    let changed = r.endpoints_leave(&[WEB_0]);
    world.synced();
    world.pod("web-0", fate);
    r.turn(Turn::backends(changed));
    world.last_targeted()
}

#[test]
fn with_a_trusted_index_a_removal_reads_only_the_backends_entries_and_walks_nothing() {
    let (mut r, world) = indexed(vec![
        tcp(40000, WEB_0),
        udp(40001, WEB_0),
        tcp(40002, WEB_1),
    ]);
    assert_eq!(r.shared().flows.summary().flows, 3);
    let dumps = r.table().dumps;
    let pass = remove_web_0(&mut r, &world, PodFate::Gone);
    assert!(pass.read_by_index, "{pass:#?}");
    assert_eq!((pass.scanned, pass.totals.deleted), (2, 2), "{pass:#?}");
    assert_eq!(r.table().dumps, dumps, "no walk of the table");
    assert_eq!(r.flows_to(WEB_0), 0);
    assert_eq!(r.flows_to(WEB_1), 1);
}

/// `web-0` leaves while kube-proxy is behind (its last sync began before the change): the turn
/// that parks it.
fn remove_web_0_while_kube_proxy_is_behind(
    r: &mut super::Reactor<crate::table::MemTable, Script>,
    world: &Script,
) {
    world.synced_at(later(-10));
    world.pod("web-0", PodFate::Gone);
    let changed = r.endpoints_leave(&[WEB_0]);
    r.turn(Turn::backends(changed));
    assert!(r.parked_until(WEB_0).is_some(), "waits for kube-proxy");
}

/// While kube-proxy is behind, the entries the index names are read exactly (no walk) and the
/// pod GET starts; when the gate opens, nothing happened to the backend since (no NEW event, no
/// loss), so the opening only judges and deletes: no second read.
#[test]
fn a_waiting_backend_is_read_exactly_while_it_waits_and_the_opening_only_deletes() {
    let (mut r, world) = indexed(vec![
        tcp(40000, WEB_0),
        tcp(40001, WEB_0),
        tcp(40002, WEB_1),
    ]);
    r.shared().event_marks.set_live(true);
    let dumps = r.table().dumps;
    remove_web_0_while_kube_proxy_is_behind(&mut r, &world);
    assert!(r.has_snapshot_of(WEB_0));
    assert_eq!(r.table().read_keys.len(), 2, "the two entries toward web-0");
    assert_eq!(world.state().asked_pods, ["shop/web-0"]);
    world.synced();
    r.turn(Turn::backends([WEB_0]));
    let pass = world.last_targeted();
    assert!(pass.read_by_index, "{pass:#?}");
    assert_eq!((pass.scanned, pass.totals.deleted), (2, 2), "{pass:#?}");
    assert_eq!(
        r.table().read_keys.len(),
        2,
        "not read again at the opening"
    );
    assert_eq!(r.table().dumps, dumps, "no walk");
    assert_eq!((r.flows_to(WEB_0), r.flows_to(WEB_1)), (0, 1));
}

/// What makes the opening read again rather than trust the snapshot: a NEW flow toward the
/// backend since (the snapshot would miss it), lost or unreadable events, the event thread's
/// end, a half-open flow (a reply may have arrived). Each time the flows read at the opening
/// are the ones judged: the new flow is deleted with the others.
#[test]
fn a_snapshot_taken_while_waiting_is_read_again_when_anything_may_have_changed() {
    for case in [
        "new flow",
        "lost events",
        "event thread stopped",
        "half-open",
    ] {
        let first = if case == "half-open" {
            half_open(40000, WEB_0, 600)
        } else {
            tcp(40000, WEB_0)
        };
        let (mut r, world) = indexed(vec![first, tcp(40001, WEB_0)]);
        r.shared().event_marks.set_live(true);
        remove_web_0_while_kube_proxy_is_behind(&mut r, &world);
        assert!(r.has_snapshot_of(WEB_0), "{case}");
        let late = tcp(40009, WEB_0);
        match case {
            "new flow" => {
                r.table_mut().flows.push(late);
                r.shared().flows.apply(&[(EventKind::New, late)]);
                r.shared().event_marks.saw(WEB_0);
            }
            "lost events" => r.shared().event_marks.lost(),
            "event thread stopped" => r.shared().event_marks.set_live(false),
            _ => {}
        }
        let reads = r.table().read_keys.len();
        world.synced();
        r.turn(Turn::backends([WEB_0]));
        let pass = world.last_targeted();
        assert!(r.table().read_keys.len() > reads, "{case}: read again");
        let expect = if case == "new flow" { 3 } else { 2 };
        assert_eq!(
            (pass.scanned, pass.totals.deleted),
            (expect, expect),
            "{case}: {pass:#?}"
        );
        assert_eq!(r.flows_to(WEB_0), 0, "{case}");
    }
}

/// A flow created after the rebuild is in the index through its NEW event, and removed with
/// the others; one whose DESTROY event arrived is not read at all.
#[test]
fn flows_created_and_ended_after_the_rebuild_follow_their_events() {
    let (mut r, world) = indexed(vec![tcp(40000, WEB_0), tcp(40001, WEB_0)]);
    let late = tcp(40009, WEB_0);
    r.table_mut().flows.push(late);
    let ended = r.table().flows[1];
    r.table_mut().flows.remove(1);
    r.shared()
        .flows
        .apply(&[(EventKind::New, late), (EventKind::Destroy, ended)]);
    let pass = remove_web_0(&mut r, &world, PodFate::Gone);
    assert!(pass.read_by_index);
    assert_eq!((pass.scanned, pass.totals.deleted), (2, 2), "{pass:#?}");
    assert_eq!(r.flows_to(WEB_0), 0);
}

/// Lost events: the index may miss a flow, so the removal walks the table (and finds the flow
/// no event announced) until a full pass has rebuilt the index.
#[test]
fn after_lost_events_a_removal_walks_the_table_until_a_full_pass_rebuilt_the_index() {
    let (mut r, world) = indexed(vec![tcp(40000, WEB_0)]);
    // Created while events were being lost: no NEW event for it.
    r.table_mut().flows.push(tcp(40009, WEB_0));
    r.shared().flows.lost();
    let dumps = r.table().dumps;
    let pass = remove_web_0(&mut r, &world, PodFate::Gone);
    assert!(!pass.read_by_index);
    assert_eq!(pass.totals.deleted, 2, "{pass:#?}");
    assert_eq!(r.table().dumps, dumps + 1, "one walk");

    r.turn(Turn::full());
    assert!(r.shared().flows.is_trusted(), "the full pass rebuilt it");
}

/// The index only says where to look: what is read is judged like a walk's flows. A pod that is
/// still alive (deselected, draining) keeps its flows.
#[test]
fn flows_read_through_the_index_are_judged_like_a_walks() {
    let (mut r, world) = indexed(vec![tcp(40000, WEB_0), tcp(40001, WEB_0)]);
    let pass = remove_web_0(&mut r, &world, PodFate::Alive);
    assert!(pass.read_by_index);
    assert_eq!(pass.scanned, 2, "both read: {pass:#?}");
    assert!(pass
        .findings
        .iter()
        .all(|(f, o)| *o == Outcome::Kept && !f.verdict.removable));
    assert_eq!(pass.totals.deleted, 0);
    assert_eq!(r.flows_to(WEB_0), 2);
}

/// The entry that holds an indexed tuple now may be a newer one (another id): that entry is
/// what is judged, and deleted by its own id — never by the id the index once saw.
#[test]
fn the_entry_that_holds_the_tuple_now_is_the_one_judged_and_deleted() {
    let (mut r, world) = indexed(vec![tcp(40000, WEB_0)]);
    let mut newer = tcp(40000, WEB_0);
    newer.id = Some(77);
    r.table_mut().flows = vec![newer];
    let pass = remove_web_0(&mut r, &world, PodFate::Gone);
    assert!(pass.read_by_index);
    assert_eq!(pass.totals.deleted, 1, "{pass:#?}");
    assert_eq!(
        r.table()
            .deleted_keys
            .iter()
            .map(|k| k.id)
            .collect::<Vec<_>>(),
        [Some(77)]
    );
}

/// A removal of [`super::QUIET_AT`] entries or more deletes them with the event socket out of
/// the DESTROY group (the kernel then builds no DESTROY message for them), and the index forgets
/// exactly the entries deleted: the backend's other flow, kept, is still named; the next
/// removal still reads through the index.
#[test]
fn a_large_removal_deletes_without_destroy_events_and_the_index_forgets_exactly_its_deletes() {
    let n = super::QUIET_AT as u16 + 10;
    let mut flows: Vec<Flow> = (0..n).map(|i| tcp(40000 + i, WEB_0)).collect();
    flows.push(tcp(50000, WEB_1));
    let (mut r, world) = indexed(flows);
    let rec = std::sync::Arc::new(Recorder::default());
    r.shared().set_destroy_events(Some(rec.clone()));
    // Read while kube-proxy is behind; then one of web-0's entries is replaced by a twin with
    // the same reply tuple and another id before the delete: that delete misses, and the twin
    // stays indexed.
    r.shared().event_marks.set_live(true);
    remove_web_0_while_kube_proxy_is_behind(&mut r, &world);
    r.table_mut().then(|flows| {
        let f = flows
            .iter_mut()
            .find(|f| f.reply.dport() == Some(40003))
            .expect("flow");
        f.id = Some(4242);
    });
    world.synced();
    r.turn(Turn::backends([WEB_0]));
    let pass = world.last_targeted();
    assert!(pass.read_by_index, "{pass:#?}");
    assert_eq!(
        (pass.totals.deleted, pass.totals.already_gone),
        (u64::from(n) - 1, 1),
        "{pass:#?}"
    );
    assert_eq!(
        *rec.calls.lock().unwrap(),
        [false, true],
        "left, then joined"
    );
    assert_eq!(r.flows_to(WEB_0), 1);
    assert_eq!(
        r.shared().flows.count_of(WEB_0),
        Some(1),
        "the entry not deleted is still named"
    );
    assert!(r.shared().flows.is_trusted());

    let changed = r.endpoints_leave(&[WEB_1]);
    world.synced();
    world.pod("web-1", PodFate::Gone);
    r.turn(Turn::backends(changed));
    let pass = world.last_targeted();
    assert!(pass.read_by_index);
    assert_eq!(pass.totals.deleted, 1, "{pass:#?}");
    assert_eq!(
        *rec.calls.lock().unwrap(),
        [false, true],
        "one delete: with its event"
    );
}
