//! The DNAT event filter ([`EventSocket::set_dnat_filter`], `ctnetlink::bpf::dnat_program`)
//! against the real kernel, in a throwaway network namespace: of entries created and deleted over
//! ctnetlink, only the NEW and DESTROY events of the DNAT'd ones arrive.
//!
//! Two sockets listen side by side: one filtered, one not (the control, which proves that the
//! plain entries' events were sent). The kernel sends each event while it handles the request,
//! in order, so once the last DNAT'd entry's DESTROY has arrived on the filtered socket, every
//! event before it has been queued there or dropped by the filter.
//!
//! Needs root (network namespaces, conntrack); without it the test skips with a reason, unless
//! `CI` is set.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctnetlink::{
    Conntrack, DeleteKey, DeleteOutcome, EventGroups, EventKind, EventSocket, Filter,
    FilterApplied, Flow, NewFlow, Status, Tuple, IPPROTO_TCP,
};

#[path = "../src/test_kernel.rs"]
mod test_kernel;

use test_kernel::{root_or_skip, ThrowawayNs};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A DNAT'd TCP entry: `client` → VIP:80, answered by `backend`:8080 (the kernel computes the
/// reply tuple from the NAT target and sets DST_NAT, as for a packet that hit a DNAT rule).
fn dnat(client: &str, port: u16, vip: &str, backend: &str) -> NewFlow {
    NewFlow::established(
        Tuple::ports(ip(client), port, ip(vip), 80, IPPROTO_TCP),
        Some((ip(backend), 8080)),
    )
}

/// A TCP entry without NAT: the reply tuple mirrors the original.
fn plain(client: &str, port: u16, server: &str) -> NewFlow {
    NewFlow::established(
        Tuple::ports(ip(client), port, ip(server), 80, IPPROTO_TCP),
        None,
    )
}

/// What identifies an event of an entry made here: its kind and original source port (each
/// entry has its own).
type Event = (EventKind, u16);

fn event_of(kind: EventKind, nf: &NewFlow) -> Event {
    (kind, nf.orig.sport().unwrap())
}

/// Reads `ev` until `last` has arrived (at most 5 s), then for `quiet` more, and returns every
/// NEW/DESTROY event in the order received. Also checks what user space would re-check: each
/// event on a filtered socket is a DNAT'd flow.
fn read_until(ev: &mut EventSocket, last: Event, quiet: Duration, dnat_only: bool) -> Vec<Event> {
    let mut seen: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut until = deadline;
    // Bounded: the socket's timeout (100 ms) bounds each recv, the deadline the loop.
    while Instant::now() < until {
        let (_, bad) = ev
            .recv(|kind, f: &Flow| {
                assert!(
                    !dnat_only || f.is_dnat(),
                    "a flow without DNAT passed: {f:?}"
                );
                seen.push((kind, f.orig.sport().unwrap_or(0)));
            })
            .expect("read events");
        assert_eq!(bad, 0, "malformed events");
        if until == deadline && seen.contains(&last) {
            until = Instant::now() + quiet;
        }
    }
    assert!(seen.contains(&last), "{last:?} never arrived: {seen:?}");
    seen
}

#[test]
fn only_dnat_entries_events_pass_the_dnat_filter() {
    if !root_or_skip("only_dnat_entries_events_pass_the_dnat_filter") {
        return;
    }
    let ns = ThrowawayNs::new("gbbpf");
    let mut ct = Conntrack::open_in(Some(&ns.0)).expect("open conntrack in the namespace");
    let groups = EventGroups::NEW | EventGroups::DESTROY;
    let mut filtered = EventSocket::open_in(Some(&ns.0), groups, 1 << 20).expect("subscribe");
    let mut control = EventSocket::open_in(Some(&ns.0), groups, 1 << 20).expect("subscribe");
    for ev in [&filtered, &control] {
        ev.set_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    let want = FilterApplied::Filtered {
        instructions: ctnetlink::bpf::dnat_program().len(),
    };
    // Through a handle, then again on the socket (replacing it): both attach the same program.
    assert_eq!(filtered.filter_handle().set_dnat().expect("attach"), want);
    assert_eq!(filtered.set_dnat_filter().expect("attach"), want);
    eprintln!("dnat filter: {want:?}");

    let vip4 = "198.51.100.10";
    let vip6 = "2001:db8:3::10";
    let flows = [
        plain("192.0.2.3", 40001, vip4),
        dnat("192.0.2.2", 40000, vip4, "203.0.113.7"),
        // Asks for DST_NAT in CTA_STATUS without a NAT target: see the checks below.
        plain("192.0.2.4", 40002, vip4)
            .with_status(Status::SEEN_REPLY | Status::ASSURED | Status::DST_NAT),
        plain("2001:db8:1::3", 40003, vip6),
        dnat("2001:db8:1::2", 40004, vip6, "2001:db8:2::7"),
    ];
    let is_dnat = [false, true, false, false, true];
    let s = ct.create(&flows).expect("create");
    assert_eq!(s.created, flows.len() as u64, "{s:?}");

    // What the kernel made of them: DST_NAT (and the reply from the backend) exactly for the
    // entries with a NAT target. A DST_NAT bit in CTA_STATUS alone is ignored (the kernel's
    // IPS_UNCHANGEABLE_MASK covers the NAT bits).
    let table = ct.dump_vec(&Filter::default()).expect("dump");
    assert_eq!(table.len(), flows.len(), "{table:?}");
    let mut keys = Vec::new();
    for (nf, &want_dnat) in flows.iter().zip(&is_dnat) {
        let f = table
            .iter()
            .find(|f| f.orig == nf.orig)
            .unwrap_or_else(|| panic!("{:?} not in the table: {table:?}", nf.orig));
        eprintln!("{} -> {}: status {:?}", nf.orig.src, f.reply.src, f.status);
        assert_eq!(f.is_dnat(), want_dnat, "{f:?}");
        assert_eq!(f.status.contains(Status::DST_NAT), want_dnat, "{f:?}");
        match nf.dnat {
            Some((backend, port)) => {
                assert_eq!(f.reply.src, backend);
                assert_eq!(f.reply.sport(), Some(port));
            }
            None => assert_eq!(f.reply, nf.orig.inverted(), "mirrors the original"),
        }
        keys.push(DeleteKey::from(f));
    }
    let out = ct.delete(&keys).expect("delete");
    assert!(out.iter().all(|o| *o == DeleteOutcome::Deleted), "{out:?}");

    // The control socket saw all ten events, in order: the plain entries' events were sent.
    let all: Vec<Event> = [EventKind::New, EventKind::Destroy]
        .iter()
        .flat_map(|&k| flows.iter().map(move |nf| event_of(k, nf)))
        .collect();
    let quiet = Duration::from_millis(300);
    let last = *all.last().unwrap();
    assert_eq!(read_until(&mut control, last, quiet, false), all);
    // The filtered socket saw the DNAT'd entries' NEW and DESTROY, and nothing else.
    let dnat_events: Vec<Event> = all
        .iter()
        .copied()
        .filter(|e| {
            flows
                .iter()
                .zip(&is_dnat)
                .any(|(nf, &d)| d && nf.orig.sport() == Some(e.1))
        })
        .collect();
    assert_eq!(dnat_events.len(), 4);
    assert_eq!(read_until(&mut filtered, last, quiet, true), dnat_events);

    // Removed: every event arrives again.
    filtered.clear_filter().expect("detach");
    let again = [plain("192.0.2.5", 40005, vip4)];
    assert_eq!(ct.create(&again).expect("create").created, 1);
    let new = event_of(EventKind::New, &again[0]);
    assert_eq!(read_until(&mut filtered, new, quiet, false), [new]);
}
