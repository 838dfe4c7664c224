//! The kernel's own messages captured in `tests/fixtures`, for the unit tests and for
//! `tests/codec.rs` (which includes this file by path: there `crate::` is that test crate, which
//! imports `parse_message` and `Flow` from ctnetlink).

use std::net::IpAddr;

use crate::{parse_message, Flow};

/// Every capture: one entry each, of every family and protocol the parser knows.
pub const ALL: [&str; 8] = [
    "ipv4-icmp-echo.bin",
    "ipv4-sctp-established.bin",
    "ipv4-tcp-dnat-established.bin",
    "ipv4-tcp-syn-sent.bin",
    "ipv4-udp-zone5-unreplied.bin",
    "ipv6-icmpv6-echo.bin",
    "ipv6-tcp-dnat-established.bin",
    "ipv6-udp-unreplied.bin",
];

/// The bytes of capture `name`.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

/// Capture `name`, parsed.
pub fn flow(name: &str) -> Flow {
    parse_message(&fixture(name))
        .expect("parses")
        .expect("is an entry")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
