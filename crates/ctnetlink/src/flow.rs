//! A conntrack entry, parsed without heap allocation.
//!
//! [`Flow`] is a plain `Copy` value: every field is fixed-size, so parsing an entry of a dump costs
//! no allocation, and a caller that wants to keep some entries copies just those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::attr::{Attr, Attrs};
use crate::consts::*;
use crate::error::ParseError;

/// Address family of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn af(self) -> u8 {
        match self {
            Family::Ipv4 => libc::AF_INET as u8,
            Family::Ipv6 => libc::AF_INET6 as u8,
        }
    }
    pub fn from_af(af: u8) -> Result<Self, ParseError> {
        match af as i32 {
            libc::AF_INET => Ok(Family::Ipv4),
            libc::AF_INET6 => Ok(Family::Ipv6),
            _ => Err(ParseError::BadFamily(af)),
        }
    }
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// The layer-4 part of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP.
    Ports { src: u16, dst: u16 },
    /// ICMP and ICMPv6.
    Icmp { kind: u8, code: u8, id: u16 },
    /// Anything conntrack tracks without ports (GRE keys are not decoded).
    None,
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: L4,
}

impl Tuple {
    /// A TCP/UDP/SCTP tuple.
    pub fn ports(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Self {
        Tuple {
            src,
            dst,
            proto,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        }
    }
    #[inline]
    pub fn sport(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { src, .. } => Some(src),
            _ => None,
        }
    }
    #[inline]
    pub fn dport(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { dst, .. } => Some(dst),
            _ => None,
        }
    }
    /// The reverse direction, as the kernel computes a reply tuple when there is no NAT.
    pub fn inverted(&self) -> Tuple {
        let l4 = match self.l4 {
            L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
            other => other,
        };
        Tuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            l4,
        }
    }
}

/// Connection status bits (`enum ip_conntrack_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

impl Status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;

    /// Flag names in bit order, as printed in JSON.
    pub const NAMES: [&'static str; 16] = [
        "expected",
        "seen_reply",
        "assured",
        "confirmed",
        "src_nat",
        "dst_nat",
        "seq_adjust",
        "src_nat_done",
        "dst_nat_done",
        "dying",
        "fixed_timeout",
        "template",
        "untracked",
        "helper",
        "offload",
        "hw_offload",
    ];

    #[inline]
    pub const fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
    /// The names of the bits that are set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        (0..16)
            .filter(move |b| self.0 & (1 << b) != 0)
            .map(|b| Self::NAMES[b])
    }
    /// Parses a flag name (as in [`Status::NAMES`]) to its bit.
    pub fn bit_of(name: &str) -> Option<u32> {
        Self::NAMES.iter().position(|n| *n == name).map(|b| 1 << b)
    }
}

/// TCP conntrack state (`enum tcp_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const NONE: TcpState = TcpState(0);
    pub const SYN_SENT: TcpState = TcpState(1);
    pub const SYN_RECV: TcpState = TcpState(2);
    pub const ESTABLISHED: TcpState = TcpState(3);
    pub const FIN_WAIT: TcpState = TcpState(4);
    pub const CLOSE_WAIT: TcpState = TcpState(5);
    pub const LAST_ACK: TcpState = TcpState(6);
    pub const TIME_WAIT: TcpState = TcpState(7);
    pub const CLOSE: TcpState = TcpState(8);
    pub const SYN_SENT2: TcpState = TcpState(9);

    const NAMES: [&'static str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
    /// The name `conntrack -L` prints.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
    pub fn from_name(name: &str) -> Option<Self> {
        let up = name.to_ascii_uppercase();
        Self::NAMES
            .iter()
            .position(|n| *n == up)
            .map(|i| TcpState(i as u8))
    }
}

/// SCTP conntrack state (`enum sctp_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SctpState(pub u8);

impl SctpState {
    pub const ESTABLISHED: SctpState = SctpState(4);
    const NAMES: [&'static str; 10] = [
        "NONE",
        "CLOSED",
        "COOKIE_WAIT",
        "COOKIE_ECHOED",
        "ESTABLISHED",
        "SHUTDOWN_SENT",
        "SHUTDOWN_RECD",
        "SHUTDOWN_ACK_SENT",
        "HEARTBEAT_SENT",
        "HEARTBEAT_ACKED",
    ];
    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
    pub fn from_name(name: &str) -> Option<Self> {
        let up = name.to_ascii_uppercase();
        Self::NAMES
            .iter()
            .position(|n| *n == up)
            .map(|i| SctpState(i as u8))
    }
}

/// Packet and byte counters of one direction (`nf_conntrack_acct=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// One conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub family: Family,
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: Status,
    /// Seconds until the entry expires.
    pub timeout: Option<u32>,
    pub mark: Option<u32>,
    /// Conntrack zone (0 when the kernel sent none).
    pub zone: u16,
    /// The kernel's entry id: a delete that carries it never hits a newer entry with the same tuple.
    pub id: Option<u32>,
    pub use_count: Option<u32>,
    pub tcp_state: Option<TcpState>,
    pub sctp_state: Option<SctpState>,
    /// Start time, ns since the Unix epoch (only with `nf_conntrack_timestamp=1`).
    pub start_ns: Option<u64>,
    /// Stop time, ns since the Unix epoch (destroy events only).
    pub stop_ns: Option<u64>,
    pub orig_counters: Option<Counters>,
    pub reply_counters: Option<Counters>,
    /// Connection labels bitmap (up to 128 bits), zero-padded.
    pub labels: Option<[u8; 16]>,
}

impl Flow {
    /// The protocol number of the connection.
    #[inline]
    pub fn proto(&self) -> u8 {
        self.orig.proto
    }
    /// Lower-case protocol name as used in JSON and on the command line.
    pub fn proto_name(&self) -> &'static str {
        proto_name(self.orig.proto)
    }
    /// True when the kernel rewrote the destination (a Service DNAT).
    #[inline]
    pub fn is_dnat(&self) -> bool {
        self.status.has(Status::DST_NAT)
    }
    /// True when no packet was ever seen in the reply direction (`[UNREPLIED]`).
    #[inline]
    pub fn unreplied(&self) -> bool {
        !self.status.has(Status::SEEN_REPLY)
    }
    /// The protocol state name (`ESTABLISHED`, ...), when the protocol has states.
    pub fn state_name(&self) -> Option<&'static str> {
        if let Some(s) = self.tcp_state {
            return Some(s.name());
        }
        self.sctp_state.map(|s| s.name())
    }
}

/// Lower-case name of an IP protocol number.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_SCTP => "sctp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        IPPROTO_UDPLITE => "udplite",
        IPPROTO_DCCP => "dccp",
        IPPROTO_GRE => "gre",
        _ => "unknown",
    }
}

/// Parses a protocol name or number.
pub fn proto_from_name(s: &str) -> Option<u8> {
    Some(match s.to_ascii_lowercase().as_str() {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        "sctp" => IPPROTO_SCTP,
        "icmp" => IPPROTO_ICMP,
        "icmpv6" | "ipv6-icmp" => IPPROTO_ICMPV6,
        "udplite" => IPPROTO_UDPLITE,
        "dccp" => IPPROTO_DCCP,
        "gre" => IPPROTO_GRE,
        other => return other.parse().ok(),
    })
}

#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    icmp_id: Option<u16>,
}

fn parse_tuple(attr: Attr<'_>) -> Result<Tuple, ParseError> {
    let mut p = TupleParts::default();
    for a in attr.nested() {
        let a = a?;
        match a.kind {
            CTA_TUPLE_IP => {
                for ip in a.nested() {
                    let ip = ip?;
                    match ip.kind {
                        CTA_IP_V4_SRC => {
                            p.src = Some(Ipv4Addr::from(ip.bytes::<4>("ipv4 src")?).into())
                        }
                        CTA_IP_V4_DST => {
                            p.dst = Some(Ipv4Addr::from(ip.bytes::<4>("ipv4 dst")?).into())
                        }
                        CTA_IP_V6_SRC => {
                            p.src = Some(Ipv6Addr::from(ip.bytes::<16>("ipv6 src")?).into())
                        }
                        CTA_IP_V6_DST => {
                            p.dst = Some(Ipv6Addr::from(ip.bytes::<16>("ipv6 dst")?).into())
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for pr in a.nested() {
                    let pr = pr?;
                    match pr.kind {
                        CTA_PROTO_NUM => p.proto = Some(pr.u8("proto num")?),
                        CTA_PROTO_SRC_PORT => p.sport = Some(pr.be16("src port")?),
                        CTA_PROTO_DST_PORT => p.dport = Some(pr.be16("dst port")?),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            p.icmp_id = Some(pr.be16("icmp id")?)
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            p.icmp_type = Some(pr.u8("icmp type")?)
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            p.icmp_code = Some(pr.u8("icmp code")?)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let src = p.src.ok_or(ParseError::Missing {
        what: "tuple source address",
    })?;
    let dst = p.dst.ok_or(ParseError::Missing {
        what: "tuple destination address",
    })?;
    if Family::of(&src) != Family::of(&dst) {
        return Err(ParseError::Missing {
            what: "consistent tuple address family",
        });
    }
    let proto = p.proto.ok_or(ParseError::Missing {
        what: "tuple protocol",
    })?;
    let l4 = match (p.sport, p.dport, p.icmp_type) {
        (Some(src), Some(dst), _) => L4::Ports { src, dst },
        (_, _, Some(kind)) => L4::Icmp {
            kind,
            code: p.icmp_code.unwrap_or(0),
            id: p.icmp_id.unwrap_or(0),
        },
        _ => L4::None,
    };
    Ok(Tuple {
        src,
        dst,
        proto,
        l4,
    })
}

fn parse_counters(attr: Attr<'_>) -> Result<Counters, ParseError> {
    let mut c = Counters::default();
    for a in attr.nested() {
        let a = a?;
        match a.kind {
            CTA_COUNTERS_PACKETS => c.packets = a.be64("packets")?,
            CTA_COUNTERS_BYTES => c.bytes = a.be64("bytes")?,
            _ => {}
        }
    }
    Ok(c)
}

/// Parses the attributes of one conntrack message (after the nfgenmsg).
pub fn parse_flow(family: u8, attrs: Attrs<'_>) -> Result<Flow, ParseError> {
    let family = Family::from_af(family)?;
    let mut orig = None;
    let mut reply = None;
    let mut f = Flow {
        family,
        // Placeholders, replaced below or rejected as missing.
        orig: Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            proto: 0,
            l4: L4::None,
        },
        reply: Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            proto: 0,
            l4: L4::None,
        },
        status: Status(0),
        timeout: None,
        mark: None,
        zone: 0,
        id: None,
        use_count: None,
        tcp_state: None,
        sctp_state: None,
        start_ns: None,
        stop_ns: None,
        orig_counters: None,
        reply_counters: None,
        labels: None,
    };
    for a in attrs {
        let a = a?;
        match a.kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(a)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(a)?),
            CTA_STATUS => f.status = Status(a.be32("status")?),
            CTA_TIMEOUT => f.timeout = Some(a.be32("timeout")?),
            CTA_MARK => f.mark = Some(a.be32("mark")?),
            CTA_ZONE => f.zone = a.be16("zone")?,
            CTA_ID => f.id = Some(a.be32("id")?),
            CTA_USE => f.use_count = Some(a.be32("use")?),
            CTA_COUNTERS_ORIG => f.orig_counters = Some(parse_counters(a)?),
            CTA_COUNTERS_REPLY => f.reply_counters = Some(parse_counters(a)?),
            CTA_PROTOINFO => {
                for p in a.nested() {
                    let p = p?;
                    match p.kind {
                        CTA_PROTOINFO_TCP => {
                            for t in p.nested() {
                                let t = t?;
                                if t.kind == CTA_PROTOINFO_TCP_STATE {
                                    f.tcp_state = Some(TcpState(t.u8("tcp state")?));
                                }
                            }
                        }
                        CTA_PROTOINFO_SCTP => {
                            for t in p.nested() {
                                let t = t?;
                                if t.kind == CTA_PROTOINFO_SCTP_STATE {
                                    f.sctp_state = Some(SctpState(t.u8("sctp state")?));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            CTA_TIMESTAMP => {
                for t in a.nested() {
                    let t = t?;
                    match t.kind {
                        CTA_TIMESTAMP_START => f.start_ns = Some(t.be64("timestamp start")?),
                        CTA_TIMESTAMP_STOP => f.stop_ns = Some(t.be64("timestamp stop")?),
                        _ => {}
                    }
                }
            }
            CTA_LABELS => {
                let mut l = [0u8; 16];
                let n = a.payload.len().min(16);
                l[..n].copy_from_slice(&a.payload[..n]);
                f.labels = Some(l);
            }
            _ => {}
        }
    }
    f.orig = orig.ok_or(ParseError::Missing {
        what: "original tuple",
    })?;
    f.reply = reply.ok_or(ParseError::Missing {
        what: "reply tuple",
    })?;
    if Family::of(&f.orig.src) != family {
        return Err(ParseError::Missing {
            what: "tuple of the message's address family",
        });
    }
    Ok(f)
}
