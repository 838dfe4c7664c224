//! The parser against byte captures from a real kernel (no root needed) and against arbitrary
//! bytes (it must never panic), through the public API. The encoders are checked against the
//! same captures by the unit tests in `src/request.rs`.

use ctnetlink::{
    parse_message, Family, Filter, Flow, Status, TcpState, Tuple, TupleMatch, IPPROTO_TCP, L4,
};
use proptest::prelude::*;

#[path = "../src/test_fixtures.rs"]
mod test_fixtures;

use test_fixtures::{fixture, flow, ip, ALL};

#[test]
fn ipv4_dnat_entry_has_every_field() {
    let f = flow("ipv4-tcp-dnat-established.bin");
    assert_eq!(f.family, Family::Ipv4);
    assert_eq!(
        f.orig,
        Tuple::ports(ip("192.0.2.2"), 40000, ip("198.51.100.10"), 80, IPPROTO_TCP)
    );
    assert_eq!(
        f.reply,
        Tuple::ports(ip("203.0.113.7"), 8080, ip("192.0.2.2"), 40000, IPPROTO_TCP)
    );
    assert!(f.is_dnat());
    assert!(f
        .status
        .contains(Status::SEEN_REPLY | Status::ASSURED | Status::CONFIRMED));
    assert!(!f.unreplied());
    assert_eq!(f.tcp_state, Some(TcpState::ESTABLISHED));
    assert_eq!(f.state_name(), Some("ESTABLISHED"));
    assert_eq!(f.mark, Some(7));
    assert_eq!(f.zone, 0);
    assert!(f.id.is_some());
    assert!(f.timeout.is_some_and(|t| t > 0 && t <= 300));
    assert!(f.start_ns.is_some(), "timestamps were on");
    assert!(
        f.orig_counters.is_some() && f.reply_counters.is_some(),
        "acct was on"
    );
    assert_eq!(f.use_count, Some(1));
}

#[test]
fn ipv6_dnat_entry() {
    let f = flow("ipv6-tcp-dnat-established.bin");
    assert_eq!(f.family, Family::Ipv6);
    assert_eq!(f.orig.dst, ip("2001:db8:3::10"));
    assert_eq!(f.reply.src, ip("2001:db8:2::7"));
    assert_eq!(f.reply.sport(), Some(8443));
    assert!(f.is_dnat());
}

#[test]
fn half_open_zone_sctp_and_icmp() {
    let syn = flow("ipv4-tcp-syn-sent.bin");
    assert_eq!(syn.tcp_state, Some(TcpState::SYN_SENT));
    assert!(syn.unreplied() && !syn.is_dnat());
    let udp = flow("ipv4-udp-zone5-unreplied.bin");
    assert_eq!(udp.zone, 5);
    assert_eq!(udp.proto_name(), "udp");
    assert_eq!(udp.state_name(), None);
    let sctp = flow("ipv4-sctp-established.bin");
    assert_eq!(sctp.state_name(), Some("ESTABLISHED"));
    assert_eq!(sctp.proto_name(), "sctp");
    let icmp = flow("ipv4-icmp-echo.bin");
    assert_eq!(
        icmp.orig.l4,
        L4::Icmp {
            kind: 8,
            code: 0,
            id: 4242
        }
    );
    assert_eq!(
        icmp.reply.l4,
        L4::Icmp {
            kind: 0,
            code: 0,
            id: 4242
        }
    );
    let icmp6 = flow("ipv6-icmpv6-echo.bin");
    assert_eq!(
        icmp6.orig.l4,
        L4::Icmp {
            kind: 128,
            code: 0,
            id: 7
        }
    );
    assert_eq!(icmp6.proto_name(), "icmpv6");
    let udp6 = flow("ipv6-udp-unreplied.bin");
    assert_eq!(udp6.orig.dport(), Some(53));
}

#[test]
fn contradictory_families_match_nothing() {
    let filter = Filter::new()
        .with_family(Family::Ipv4)
        .with_orig(TupleMatch::new().with_src(ip("2001:db8::1")));
    assert!(filter.families().is_empty());
    // The same, built field by field.
    let mut same = Filter::default();
    same.family = Some(Family::Ipv4);
    same.orig.src = Some(ip("2001:db8::1"));
    assert_eq!(same, filter);
}

#[test]
fn every_truncation_of_a_fixture_is_an_error_or_none_never_a_panic() {
    for name in ALL {
        let raw = fixture(name);
        for cut in 0..raw.len() {
            let _ = parse_message(&raw[..cut]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_message(&bytes);
        let _ = ctnetlink::parse_events(&bytes, |_, _| {});
    }

    #[test]
    fn mutated_fixtures_never_panic(which in 0usize..8, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut raw = fixture(ALL[which]);
        for (i, v) in flips {
            let i = i.index(raw.len());
            raw[i] = v;
        }
        let _ = parse_message(&raw);
    }
}

/// The README's example (a doctest through the crate docs) is `examples/dump.rs`, which
/// `cargo build --examples` compiles: the two must not drift apart.
#[test]
fn the_readme_example_is_examples_dump() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{dir}/examples/dump.rs")).unwrap();
    let code = readme
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a no_run block in the README");
    let body = example
        .split_once("\n\n")
        .map(|(_header, body)| body)
        .expect("a header comment, then the code");
    assert_eq!(code, body);
}
