//! `Conntrack::dump_pipelined` (decoding on a second thread while the kernel fills the next
//! batch) against the plain `dump`, on a real table of 30,000 cluster-shaped entries in a
//! throwaway namespace: the same entries in the same order, the same summary, a filtered dump,
//! and a stop after k entries (the socket usable after). The CLI's scan and sweep use it; every
//! scan/sweep kernel test runs through it.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::ops::ControlFlow;

use ctnetlink::{Conntrack, Family, Filter, Flow};
use netlab::bulk::{self, BulkSpec};
use netlab::NetNs;

/// What identifies an entry (its timeout counts down between two dumps).
type Key = (
    ctnetlink::Tuple,
    ctnetlink::Tuple,
    Option<u32>,
    ctnetlink::Status,
);

fn key(f: &Flow) -> Key {
    (f.orig, f.reply, f.id, f.status)
}

fn both(ct: &mut Conntrack, filter: &Filter) -> (Vec<Key>, Vec<Key>) {
    let mut plain = Vec::new();
    let a = ct
        .dump(filter, |f| {
            plain.push(key(f));
            ControlFlow::Continue(())
        })
        .expect("dump");
    let mut piped = Vec::new();
    let b = ct
        .dump_pipelined(filter, |f| {
            piped.push(key(f));
            ControlFlow::Continue(())
        })
        .expect("dump_pipelined");
    assert_eq!(
        (a.seen, a.matched, a.malformed),
        (b.seen, b.matched, b.malformed)
    );
    assert_eq!(a.matched as usize, plain.len());
    (plain, piped)
}

#[test]
fn a_pipelined_dump_reads_what_a_plain_one_reads() {
    if !scan_support::lab_available("dump_pipelined") {
        return;
    }
    let ns = NetNs::create("pipe").expect("namespace");
    let spec = BulkSpec {
        entries: 30_000,
        services: 50,
        stale_fraction: 0.02,
        ..BulkSpec::default()
    };
    let (_cluster, truth) = bulk::fill(Some(ns.name()), &spec).expect("fill");
    assert_eq!(truth.failed, 0, "{truth:?}");
    let mut ct = Conntrack::open_in(Some(ns.name())).expect("conntrack");

    let (plain, piped) = both(&mut ct, &Filter::default());
    assert_eq!(plain.len() as u64, truth.created);
    let first_difference = plain.iter().zip(&piped).position(|(a, b)| a != b);
    assert!(
        plain.len() == piped.len() && first_difference.is_none(),
        "the same entries in the same order: {} vs {} entries, first difference at {first_difference:?}",
        plain.len(),
        piped.len()
    );

    // Filtered alike: one family (in the kernel) and one protocol.
    let v4_udp = Filter::new()
        .with_family(Family::Ipv4)
        .with_proto(libc::IPPROTO_UDP as u8);
    let (plain_udp, piped_udp) = both(&mut ct, &v4_udp);
    assert!(!plain_udp.is_empty() && plain_udp.len() < plain.len());
    assert!(plain_udp == piped_udp, "the filtered dumps differ");

    // A stop after k entries: exactly k reach the callback, and the socket is usable after.
    let mut k = 0;
    let sum = ct
        .dump_pipelined(&Filter::default(), |_| {
            k += 1;
            if k == 1_000 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("dump_pipelined");
    assert_eq!((k, sum.matched), (1_000, 1_000));
    let again = ct.dump_vec(&Filter::default()).expect("dump after a stop");
    assert_eq!(again.len(), plain.len());
}
