//! [`EventSocket::recv`] against the real kernel, in a throwaway network namespace: it reads many
//! event datagrams per system call, hands them over in the order the kernel sent them, and
//! reports lost events before the ones still queued, without dropping any of those.
//!
//! The kernel sends each event while it handles the request that caused it, so once
//! [`Conntrack::create`] has returned, every NEW event of its entries is queued (or was dropped
//! for lack of room): the reads below find them all waiting.
//!
//! Needs root (network namespaces, conntrack); without it the tests skip with a reason, unless
//! `CI` is set.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctnetlink::{EventGroups, EventKind, EventSocket, Flow, NewFlow, Tuple, IPPROTO_TCP};

#[path = "../src/test_kernel.rs"]
mod test_kernel;

use test_kernel::{root_or_skip, ThrowawayNs};

/// The most datagrams (events) one `recv` reads, as its documentation says.
const PER_RECV: usize = 64;

/// `n` DNAT'd TCP entries, IPv4 and IPv6 in turn, each with its own source port (20000 + i):
/// the port says which entry an event is about.
fn flows(n: u16) -> Vec<NewFlow> {
    (0..n)
        .map(|i| {
            let (client, vip, backend): (IpAddr, IpAddr, IpAddr) = if i % 2 == 0 {
                (
                    format!("192.0.2.{}", 1 + i % 200).parse().unwrap(),
                    "198.51.100.10".parse().unwrap(),
                    format!("203.0.113.{}", 1 + i % 50).parse().unwrap(),
                )
            } else {
                (
                    format!("2001:db8:1::{:x}", 1 + i).parse().unwrap(),
                    "2001:db8:3::10".parse().unwrap(),
                    format!("2001:db8:2::{:x}", 1 + i % 50).parse().unwrap(),
                )
            };
            NewFlow::established(
                Tuple::ports(client, 20000 + i, vip, 80, IPPROTO_TCP),
                Some((backend, 8080)),
            )
        })
        .collect()
}

fn sports(flows: &[NewFlow]) -> Vec<u16> {
    flows.iter().map(|nf| nf.orig.sport().unwrap()).collect()
}

/// Reads until a read comes back empty (the socket's timeout expired), at most 5 s. Returns the
/// source port of every event in the order received, the number of reads that returned events,
/// and the malformed count. Panics on an error.
fn drain(ev: &mut EventSocket) -> (Vec<u16>, usize, usize) {
    let (mut seen, mut reads, mut bad) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (n, b) = ev
            .recv(|kind, f: &Flow| {
                assert_eq!(kind, EventKind::New, "{f:?}");
                assert!(f.is_dnat(), "{f:?}");
                seen.push(f.orig.sport().unwrap_or(0));
            })
            .expect("read events");
        bad += b;
        if n == 0 && b == 0 {
            return (seen, reads, bad);
        }
        reads += 1;
    }
    panic!("events kept coming for 5 s: {} so far", seen.len());
}

#[test]
fn five_hundred_new_events_arrive_in_creation_order_in_few_reads() {
    if !root_or_skip("five_hundred_new_events_arrive_in_creation_order_in_few_reads") {
        return;
    }
    let ns = ThrowawayNs::new("gbmm");
    let mut ct = ctnetlink::Conntrack::open_in(Some(&ns.0)).expect("open conntrack");
    // As the agent subscribes: room for every event, and the kernel's DNAT filter on.
    let mut ev = EventSocket::open_in(
        Some(&ns.0),
        EventGroups::NEW | EventGroups::DESTROY,
        8 << 20,
    )
    .expect("subscribe");
    ev.set_timeout(Some(Duration::from_millis(100))).unwrap();
    ev.set_dnat_filter().expect("attach the DNAT filter");

    let flows = flows(500);
    let s = ct.create(&flows).expect("create");
    assert_eq!(s.created, 500, "{s:?}");

    let (seen, reads, bad) = drain(&mut ev);
    eprintln!(
        "{} events in {reads} reads (receive buffer {} bytes)",
        seen.len(),
        ev.rcvbuf()
    );
    assert_eq!(bad, 0, "malformed events");
    // (a) All of them, each once, in the order the entries were created.
    assert_eq!(seen, sports(&flows));
    // (b) Batched: every event was queued before the first read, so each read but the last
    // took a full batch.
    assert!(
        reads < seen.len(),
        "{reads} reads for {} events",
        seen.len()
    );
    assert_eq!(reads, seen.len().div_ceil(PER_RECV), "reads of {PER_RECV}");
}

#[test]
fn lost_events_are_reported_before_the_queued_ones_which_all_arrive() {
    if !root_or_skip("lost_events_are_reported_before_the_queued_ones_which_all_arrive") {
        return;
    }
    let ns = ThrowawayNs::new("gbmm");
    let mut ct = ctnetlink::Conntrack::open_in(Some(&ns.0)).expect("open conntrack");
    // Room for a few hundred events (a few batches), not 2000.
    let mut ev = EventSocket::open_in(Some(&ns.0), EventGroups::NEW, 128 << 10).expect("subscribe");
    ev.set_timeout(Some(Duration::from_millis(100))).unwrap();

    let flows = flows(2000);
    assert_eq!(ct.create(&flows).expect("create").created, 2000);

    // The kernel reports the loss first (a read checks the socket's error before its queue)...
    let mut early = 0;
    let r = ev.recv(|_, _| early += 1);
    assert!(
        matches!(r, Err(ctnetlink::Error::EventsLost)),
        "{r:?} with {early} events"
    );
    assert_eq!(early, 0);
    // ... then the events queued before the buffer filled up, every one of them, in order: the
    // first entries' (once full, the queue takes nothing until it has been emptied).
    let (seen, reads, bad) = drain(&mut ev);
    eprintln!(
        "lost: {} of 2000 events were queued (receive buffer {} bytes), read in {reads} reads",
        seen.len(),
        ev.rcvbuf()
    );
    assert_eq!(bad, 0, "malformed events");
    assert!(
        !seen.is_empty() && seen.len() < 2000,
        "{} queued",
        seen.len()
    );
    assert_eq!(seen, sports(&flows[..seen.len()]));
    assert_eq!(reads, seen.len().div_ceil(PER_RECV));

    // Nothing else is pending, and new events arrive again.
    let more = self::flows(2001);
    assert_eq!(ct.create(&more[2000..]).expect("create").created, 1);
    let (seen, _, _) = drain(&mut ev);
    assert_eq!(seen, sports(&more[2000..]));
}
