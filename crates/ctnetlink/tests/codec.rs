//! The codec against byte captures from a real kernel (no root needed), the encoders against
//! the parser, and the parser against arbitrary bytes (it must never panic).

use std::net::IpAddr;

use ctnetlink::attr::{Attrs, MsgWriter};
use ctnetlink::consts::*;
use ctnetlink::nl::{Messages, NLM_F_DUMP};
use ctnetlink::request::{self, DeleteKey};
use ctnetlink::{parse_message, Family, Filter, Flow, Status, TcpState, Tuple, TupleMatch, L4};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

fn flow(name: &str) -> Flow {
    parse_message(&fixture(name))
        .expect("parses")
        .expect("is an entry")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const ALL: [&str; 8] = [
    "ipv4-icmp-echo.bin",
    "ipv4-sctp-established.bin",
    "ipv4-tcp-dnat-established.bin",
    "ipv4-tcp-syn-sent.bin",
    "ipv4-udp-zone5-unreplied.bin",
    "ipv6-icmpv6-echo.bin",
    "ipv6-tcp-dnat-established.bin",
    "ipv6-udp-unreplied.bin",
];

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
        .has(Status::SEEN_REPLY | Status::ASSURED | Status::CONFIRMED));
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

/// Emit: the tuple we encode for a DELETE is byte-identical to the kernel's own tuple nest.
#[test]
fn encoded_tuple_matches_kernel_bytes() {
    for name in ALL {
        let raw = fixture(name);
        let f = flow(name);
        let msg = Messages::new(&raw).next().unwrap().unwrap();
        let (_, attrs) = msg.nfgen().unwrap();
        let kernel_orig = attrs
            .map(|a| a.unwrap())
            .find(|a| a.kind == CTA_TUPLE_ORIG)
            .unwrap();
        let mut w = MsgWriter::new();
        request::put_tuple(&mut w, CTA_TUPLE_ORIG, &f.orig);
        let ours = Attrs::new(w.as_bytes()).next().unwrap().unwrap();
        assert_eq!(
            ours.payload, kernel_orig.payload,
            "{name}: tuple bytes differ"
        );
    }
}

#[test]
fn delete_request_round_trips_and_carries_id_and_zone() {
    let f = flow("ipv4-udp-zone5-unreplied.bin");
    let mut w = MsgWriter::new();
    request::delete(&mut w, 42, &DeleteKey::from(&f)).unwrap();
    let m = Messages::new(w.as_bytes()).next().unwrap().unwrap();
    assert_eq!(m.header.kind, msg_type(IPCTNL_MSG_CT_DELETE));
    assert_eq!(m.header.seq, 42);
    let (g, attrs) = m.nfgen().unwrap();
    assert_eq!(g.family, libc::AF_INET as u8);
    let attrs: Vec<_> = attrs.map(|a| a.unwrap()).collect();
    let zone = attrs.iter().find(|a| a.kind == CTA_ZONE).unwrap();
    assert_eq!(zone.be16("zone").unwrap(), 5);
    let id = attrs.iter().find(|a| a.kind == CTA_ID).unwrap();
    assert_eq!(Some(id.be32("id").unwrap()), f.id);
    // Keyed on the reply tuple (it names the backend), never the original one: the kernel
    // prefers CTA_TUPLE_ORIG when both are present, so the original must be absent.
    assert!(!attrs.iter().any(|a| a.kind == CTA_TUPLE_ORIG));
    let reply = attrs.iter().find(|a| a.kind == CTA_TUPLE_REPLY).unwrap();
    let mut w = MsgWriter::new();
    request::put_tuple(&mut w, CTA_TUPLE_REPLY, &f.reply);
    let ours = Attrs::new(w.as_bytes()).next().unwrap().unwrap();
    assert_eq!(reply.payload, ours.payload);
}

/// An exact read is a *do* request (no DUMP flag: that would list the table) with the same key.
#[test]
fn get_request_is_one_exact_lookup_by_reply_tuple_and_zone() {
    let f = flow("ipv4-udp-zone5-unreplied.bin");
    let mut w = MsgWriter::new();
    request::get(&mut w, 7, &DeleteKey::from(&f)).unwrap();
    let m = Messages::new(w.as_bytes()).next().unwrap().unwrap();
    assert_eq!(m.header.kind, msg_type(IPCTNL_MSG_CT_GET));
    assert_eq!(m.header.flags & NLM_F_DUMP, 0);
    assert_eq!(m.header.seq, 7);
    let (_, attrs) = m.nfgen().unwrap();
    let kinds: Vec<u16> = attrs.map(|a| a.unwrap().kind).collect();
    assert!(kinds.contains(&CTA_TUPLE_REPLY) && kinds.contains(&CTA_ZONE));
    assert!(!kinds.contains(&CTA_TUPLE_ORIG));
    let mut key = DeleteKey::from(&f);
    key.family = Family::Ipv6;
    let mut w = MsgWriter::new();
    assert!(request::get(&mut w, 1, &key).is_err());
    assert!(w.is_empty());
}

#[test]
fn delete_without_a_consistent_tuple_is_refused() {
    let f = flow("ipv4-tcp-syn-sent.bin");
    let mut key = DeleteKey::from(&f);
    key.family = Family::Ipv6;
    let mut w = MsgWriter::new();
    assert!(request::delete(&mut w, 1, &key).is_err());
    assert!(w.is_empty(), "nothing may be emitted for a refused delete");
}

/// Kernel filters never carry IPv6 addresses (the kernel's compare is inverted).
#[test]
fn ipv6_addresses_never_reach_the_kernel_filter() {
    let filter = Filter {
        family: Some(Family::Ipv6),
        proto: Some(IPPROTO_TCP),
        reply: TupleMatch {
            src: Some(ip("2001:db8:2::7")),
            sport: Some(8443),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut w = MsgWriter::new();
    request::dump(&mut w, 1, Some(Family::Ipv6), &filter);
    let bytes = w.as_bytes();
    let addr = ip("2001:db8:2::7");
    let IpAddr::V6(a6) = addr else { unreachable!() };
    assert!(
        !bytes.windows(16).any(|win| win == a6.octets()),
        "IPv6 address leaked into the filter"
    );
    // The port still goes to the kernel (with the protocol).
    let m = Messages::new(bytes).next().unwrap().unwrap();
    let (_, attrs) = m.nfgen().unwrap();
    assert!(attrs.map(|a| a.unwrap()).any(|a| a.kind == CTA_FILTER));
    // And the user-space check still matches exactly.
    let f = flow("ipv6-tcp-dnat-established.bin");
    assert!(filter.matches(&f));
    let mut other = f;
    other.reply.src = ip("2001:db8:2::8");
    assert!(!filter.matches(&other));
}

#[test]
fn contradictory_families_match_nothing() {
    let filter = Filter {
        family: Some(Family::Ipv4),
        orig: TupleMatch {
            src: Some(ip("2001:db8::1")),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(filter.families().is_empty());
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
        for m in Messages::new(&bytes).flatten() {
            let _ = m.error();
            let _ = m.nfgen().map(|(g, a)| ctnetlink::parse_flow(g.family, a));
        }
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
