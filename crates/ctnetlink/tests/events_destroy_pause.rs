//! [`EventFilterHandle::set_destroy_events`] against the real kernel, in a throwaway network
//! namespace: while the socket is out of the DESTROY group, deletes send it nothing (the kernel
//! builds no DESTROY message when no socket listens: the agent's large batches of deletes cost a
//! third as much), NEW events still arrive, and once it joins again DESTROY events do too.
//!
//! Needs root (network namespaces, conntrack); without it the test skips with a reason, unless
//! `CI` is set.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctnetlink::{
    Conntrack, DeleteKey, DeleteOutcome, EventGroups, EventKind, EventSocket, Filter, NewFlow,
    Tuple, IPPROTO_TCP,
};

#[path = "../src/test_kernel.rs"]
mod test_kernel;

use test_kernel::{root_or_skip, ThrowawayNs};

/// A DNAT'd TCP entry from client port `sport` to 203.0.113.7:8080.
fn flow(sport: u16) -> NewFlow {
    let client: IpAddr = "192.0.2.5".parse().unwrap();
    let vip: IpAddr = "198.51.100.10".parse().unwrap();
    let backend: IpAddr = "203.0.113.7".parse().unwrap();
    NewFlow::established(
        Tuple::ports(client, sport, vip, 80, IPPROTO_TCP),
        Some((backend, 8080)),
    )
}

/// Every event until a read comes back empty (the socket's timeout), at most 5 s: its kind and
/// the entry's client port.
fn drain(ev: &mut EventSocket) -> Vec<(EventKind, u16)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (n, _) = ev
            .recv(|kind, f| seen.push((kind, f.orig.sport().unwrap_or(0))))
            .expect("read events");
        if n == 0 {
            return seen;
        }
    }
    panic!("events kept coming for 5 s: {seen:?}");
}

fn delete(ct: &mut Conntrack, sport: u16) {
    let flows = ct.dump_vec(&Filter::default()).expect("dump");
    let f = flows
        .iter()
        .find(|f| f.orig.sport() == Some(sport))
        .expect("the entry");
    let out = ct.delete(&[DeleteKey::from(f)]).expect("delete");
    assert_eq!(out, [DeleteOutcome::Deleted]);
}

#[test]
fn out_of_the_destroy_group_deletes_send_nothing_and_new_events_still_arrive() {
    if !root_or_skip("out_of_the_destroy_group_deletes_send_nothing_and_new_events_still_arrive") {
        return;
    }
    let ns = ThrowawayNs::new("gbdp");
    let mut ct = Conntrack::open_in(Some(&ns.0)).expect("open conntrack");
    let mut ev = EventSocket::open_in(
        Some(&ns.0),
        EventGroups::NEW | EventGroups::DESTROY,
        1 << 20,
    )
    .expect("subscribe");
    ev.set_timeout(Some(Duration::from_millis(100))).unwrap();
    let handle = ev.filter_handle();

    // Created while the socket listens to DESTROY: the entries carry the event extension.
    assert_eq!(
        ct.create(&[flow(40001), flow(40002)])
            .expect("create")
            .created,
        2
    );
    assert_eq!(
        drain(&mut ev),
        [(EventKind::New, 40001), (EventKind::New, 40002)]
    );

    handle.set_destroy_events(false).expect("leave DESTROY");
    delete(&mut ct, 40001);
    assert_eq!(ct.create(&[flow(40003)]).expect("create").created, 1);
    handle.set_destroy_events(true).expect("join DESTROY");
    delete(&mut ct, 40002);

    // Events arrive in the order the kernel sent them: had 40001's delete sent a DESTROY, it
    // would come first.
    assert_eq!(
        drain(&mut ev),
        [(EventKind::New, 40003), (EventKind::Destroy, 40002)]
    );
}
