//! A conntrack entry, parsed without heap allocation.
//!
//! [`Flow`] is a plain `Copy` value: every field is fixed-size, so parsing an entry of a dump costs
//! no allocation, and a caller that wants to keep some entries copies just those.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops;

use crate::attr::{Attr, Attrs};
use crate::consts::*;
use crate::error::ParseError;

/// Address family of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Family {
    /// IPv4 (`AF_INET`).
    Ipv4,
    /// IPv6 (`AF_INET6`).
    Ipv6,
}

impl Family {
    /// The `AF_*` number.
    pub const fn af(self) -> u8 {
        match self {
            Family::Ipv4 => libc::AF_INET as u8,
            Family::Ipv6 => libc::AF_INET6 as u8,
        }
    }
    /// The family of an `AF_*` number; an error for any other than `AF_INET` and `AF_INET6`.
    pub fn from_af(af: u8) -> Result<Self, ParseError> {
        match af as i32 {
            libc::AF_INET => Ok(Family::Ipv4),
            libc::AF_INET6 => Ok(Family::Ipv6),
            _ => Err(ParseError::BadFamily(af)),
        }
    }
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
    /// `"ipv4"` or `"ipv6"`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// The layer-4 part of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L4 {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// ICMP and ICMPv6.
    Icmp {
        /// ICMP type.
        kind: u8,
        /// ICMP code.
        code: u8,
        /// Echo identifier.
        id: u16,
    },
    /// Anything conntrack tracks without ports (GRE keys are not decoded).
    None,
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (same family as `src`).
    pub dst: IpAddr,
    /// IP protocol number (`IPPROTO_*`).
    pub proto: u8,
    /// Ports or ICMP identifiers.
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
    /// The source port, for protocols with ports.
    #[inline]
    pub fn sport(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { src, .. } => Some(src),
            _ => None,
        }
    }
    /// The destination port, for protocols with ports.
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

/// Connection status flags (`enum ip_conntrack_status`, the kernel's `IPS_*` bits).
///
/// A typed flag set over the kernel's `u32`: bits this crate does not name (added by a newer
/// kernel) are kept as they are, so [`Status::bits`] always returns what the kernel sent.
///
/// ```
/// use ctnetlink::Status;
///
/// let s = Status::SEEN_REPLY | Status::CONFIRMED | Status::DST_NAT;
/// assert!(s.contains(Status::CONFIRMED | Status::DST_NAT));
/// assert!(!s.contains(Status::ASSURED));
/// assert_eq!(s.names().collect::<Vec<_>>(), ["seen_reply", "confirmed", "dst_nat"]);
/// assert_eq!(Status::from_name("dst_nat"), Some(Status::DST_NAT));
/// assert_eq!(format!("{s:?}"), "Status(seen_reply | confirmed | dst_nat)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(u32);

impl Status {
    /// `IPS_EXPECTED`: an expected connection (of a helper's master).
    pub const EXPECTED: Status = Status(1 << 0);
    /// `IPS_SEEN_REPLY`: packets were seen in both directions.
    pub const SEEN_REPLY: Status = Status(1 << 1);
    /// `IPS_ASSURED`: the entry will not be early-dropped.
    pub const ASSURED: Status = Status(1 << 2);
    /// `IPS_CONFIRMED`: the entry is in the table (every entry a dump returns).
    pub const CONFIRMED: Status = Status(1 << 3);
    /// `IPS_SRC_NAT`: the source is rewritten.
    pub const SRC_NAT: Status = Status(1 << 4);
    /// `IPS_DST_NAT`: the destination is rewritten.
    pub const DST_NAT: Status = Status(1 << 5);
    /// `IPS_SEQ_ADJUST`: TCP sequence numbers are adjusted.
    pub const SEQ_ADJUST: Status = Status(1 << 6);
    /// `IPS_SRC_NAT_DONE`: the source NAT mapping is set up.
    pub const SRC_NAT_DONE: Status = Status(1 << 7);
    /// `IPS_DST_NAT_DONE`: the destination NAT mapping is set up.
    pub const DST_NAT_DONE: Status = Status(1 << 8);
    /// `IPS_DYING`: the entry is being removed.
    pub const DYING: Status = Status(1 << 9);
    /// `IPS_FIXED_TIMEOUT`: the timeout does not change with traffic.
    pub const FIXED_TIMEOUT: Status = Status(1 << 10);
    /// `IPS_TEMPLATE`: a template entry (never in the table).
    pub const TEMPLATE: Status = Status(1 << 11);
    /// `IPS_UNTRACKED`: the untracked pseudo-entry.
    pub const UNTRACKED: Status = Status(1 << 12);
    /// `IPS_HELPER`: a helper was assigned explicitly.
    pub const HELPER: Status = Status(1 << 13);
    /// `IPS_OFFLOAD`: the flow is offloaded to the flow table.
    pub const OFFLOAD: Status = Status(1 << 14);
    /// `IPS_HW_OFFLOAD`: the flow is offloaded to hardware.
    pub const HW_OFFLOAD: Status = Status(1 << 15);

    /// Flag names in bit order (bit `i` is named `NAMES[i]`): the kernel's `IPS_*` names in
    /// lower case.
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

    /// Every named flag.
    pub const ALL: Status = Status((1 << 16) - 1);

    /// No flag set.
    #[inline]
    pub const fn empty() -> Self {
        Status(0)
    }
    /// The flags of a raw kernel value; unnamed bits are kept.
    #[inline]
    pub const fn from_bits_retain(bits: u32) -> Self {
        Status(bits)
    }
    /// The raw value, unnamed bits included.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// True when no bit is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// True when every flag of `other` is set here.
    #[inline]
    pub const fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }
    /// True when any flag of `other` is set here.
    #[inline]
    pub const fn intersects(self, other: Status) -> bool {
        self.0 & other.0 != 0
    }
    /// Sets the flags of `other`.
    #[inline]
    pub fn insert(&mut self, other: Status) {
        self.0 |= other.0;
    }
    /// Clears the flags of `other`.
    #[inline]
    pub fn remove(&mut self, other: Status) {
        self.0 &= !other.0;
    }
    /// The set bits this crate has no name for.
    #[inline]
    pub const fn unknown_bits(self) -> u32 {
        self.0 & !Self::ALL.0
    }
    /// The names of the named flags that are set, in bit order (unnamed bits are skipped).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        (0..Self::NAMES.len())
            .filter(move |b| self.0 & (1 << b) != 0)
            .map(|b| Self::NAMES[b])
    }
    /// The flag named `name` (as in [`Status::NAMES`]).
    pub fn from_name(name: &str) -> Option<Status> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|b| Status(1 << b))
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Status(")?;
        let mut first = true;
        for n in self.names() {
            if !first {
                f.write_str(" | ")?;
            }
            f.write_str(n)?;
            first = false;
        }
        let unknown = self.unknown_bits();
        if unknown != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{unknown:#x}")?;
            first = false;
        }
        if first {
            f.write_str("empty")?;
        }
        f.write_str(")")
    }
}

impl From<u32> for Status {
    fn from(bits: u32) -> Self {
        Status(bits)
    }
}

impl From<Status> for u32 {
    fn from(s: Status) -> Self {
        s.0
    }
}

impl ops::BitOr for Status {
    type Output = Status;
    fn bitor(self, rhs: Status) -> Status {
        Status(self.0 | rhs.0)
    }
}

impl ops::BitOrAssign for Status {
    fn bitor_assign(&mut self, rhs: Status) {
        self.0 |= rhs.0;
    }
}

impl ops::BitAnd for Status {
    type Output = Status;
    fn bitand(self, rhs: Status) -> Status {
        Status(self.0 & rhs.0)
    }
}

impl ops::BitAndAssign for Status {
    fn bitand_assign(&mut self, rhs: Status) {
        self.0 &= rhs.0;
    }
}

impl ops::Not for Status {
    type Output = Status;
    /// The complement over all 32 bits (unnamed ones included), for masks: `s & !Status::DYING`.
    fn not(self) -> Status {
        Status(!self.0)
    }
}

/// TCP conntrack state (`enum tcp_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

#[allow(missing_docs)] // the kernel's TCP_CONNTRACK_* names
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
    /// The name `conntrack -L` prints (`"UNKNOWN"` for a value this crate does not name).
    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
    /// The state of a name (any case), as [`TcpState::name`] prints it.
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
    /// `SCTP_CONNTRACK_ESTABLISHED`.
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
    /// The name `conntrack -L` prints (`"UNKNOWN"` for a value this crate does not name).
    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
    /// The state of a name (any case), as [`SctpState::name`] prints it.
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
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One conntrack entry.
///
/// Parsed from the kernel's messages; [`Flow::new`] builds one by hand (tests, fixtures). More
/// fields may be added as the kernel grows attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flow {
    /// Address family.
    pub family: Family,
    /// The original direction (as the first packet was seen).
    pub orig: Tuple,
    /// The reply direction (after NAT: its source is a DNAT'd flow's backend).
    pub reply: Tuple,
    /// Status flags.
    pub status: Status,
    /// Seconds until the entry expires.
    pub timeout: Option<u32>,
    /// Connection mark.
    pub mark: Option<u32>,
    /// Conntrack zone (0 when the kernel sent none).
    pub zone: u16,
    /// The kernel's entry id: a delete that carries it never hits a newer entry with the same tuple.
    pub id: Option<u32>,
    /// Reference count (`CTA_USE`).
    pub use_count: Option<u32>,
    /// TCP state, for TCP entries.
    pub tcp_state: Option<TcpState>,
    /// SCTP state, for SCTP entries.
    pub sctp_state: Option<SctpState>,
    /// Start time, ns since the Unix epoch (only with `nf_conntrack_timestamp=1`).
    pub start_ns: Option<u64>,
    /// Stop time, ns since the Unix epoch (destroy events only).
    pub stop_ns: Option<u64>,
    /// Original-direction counters (only with `nf_conntrack_acct=1`).
    pub orig_counters: Option<Counters>,
    /// Reply-direction counters (only with `nf_conntrack_acct=1`).
    pub reply_counters: Option<Counters>,
    /// Connection labels bitmap (up to 128 bits), zero-padded.
    pub labels: Option<[u8; 16]>,
}

impl Flow {
    /// An entry with these tuples (the family is that of `orig.src`), no status flag, zone 0,
    /// and nothing else known: set the other fields as needed.
    pub fn new(orig: Tuple, reply: Tuple) -> Self {
        Flow {
            family: Family::of(&orig.src),
            orig,
            reply,
            status: Status::empty(),
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
        }
    }
    /// The protocol number of the connection.
    #[inline]
    pub fn proto(&self) -> u8 {
        self.orig.proto
    }
    /// Lower-case protocol name as used in JSON and on the command line.
    pub fn proto_name(&self) -> &'static str {
        proto_name(self.orig.proto)
    }
    /// True when the kernel rewrote the destination (DNAT).
    #[inline]
    pub fn is_dnat(&self) -> bool {
        self.status.contains(Status::DST_NAT)
    }
    /// True when no packet was ever seen in the reply direction (`[UNREPLIED]`).
    #[inline]
    pub fn unreplied(&self) -> bool {
        !self.status.contains(Status::SEEN_REPLY)
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
pub(crate) fn parse_flow(family: u8, attrs: Attrs<'_>) -> Result<Flow, ParseError> {
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
        status: Status::empty(),
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
            CTA_STATUS => f.status = Status::from_bits_retain(a.be32("status")?),
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

#[cfg(test)]
mod tests {
    use super::*;

    const NAMED: [Status; 16] = [
        Status::EXPECTED,
        Status::SEEN_REPLY,
        Status::ASSURED,
        Status::CONFIRMED,
        Status::SRC_NAT,
        Status::DST_NAT,
        Status::SEQ_ADJUST,
        Status::SRC_NAT_DONE,
        Status::DST_NAT_DONE,
        Status::DYING,
        Status::FIXED_TIMEOUT,
        Status::TEMPLATE,
        Status::UNTRACKED,
        Status::HELPER,
        Status::OFFLOAD,
        Status::HW_OFFLOAD,
    ];

    #[test]
    fn each_flag_is_its_kernel_bit_and_its_name_round_trips() {
        for (b, flag) in NAMED.iter().enumerate() {
            assert_eq!(flag.bits(), 1 << b, "{}", Status::NAMES[b]);
            let names: Vec<_> = flag.names().collect();
            assert_eq!(names, [Status::NAMES[b]]);
            assert_eq!(Status::from_name(Status::NAMES[b]), Some(*flag));
        }
        assert_eq!(Status::from_name("unreplied"), None);
        assert_eq!(
            Status::from_name("SEEN_REPLY"),
            None,
            "names are lower case"
        );
        let all = NAMED.iter().fold(Status::empty(), |a, f| a | *f);
        assert_eq!(all, Status::ALL);
        assert_eq!(all.names().collect::<Vec<_>>(), Status::NAMES);
    }

    #[test]
    fn any_set_of_names_round_trips_through_the_bits() {
        for bits in [0u32, 0x2a, 0x128, 0xffff, 0x8001, 0x0e] {
            let s = Status::from_bits_retain(bits);
            let back = s
                .names()
                .map(|n| Status::from_name(n).unwrap())
                .fold(Status::empty(), |a, f| a | f);
            assert_eq!(back, s, "{bits:#x}");
        }
        // The order JSON output relies on: bit order, not the order the flags were combined in.
        let s = Status::DST_NAT | Status::CONFIRMED | Status::SEEN_REPLY;
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["seen_reply", "confirmed", "dst_nat"]
        );
    }

    #[test]
    fn unknown_bits_are_kept_but_not_named() {
        let raw = (1 << 16) | (1 << 31) | Status::ASSURED.bits();
        let s = Status::from_bits_retain(raw);
        assert_eq!(s.bits(), raw);
        assert_eq!(u32::from(s), raw);
        assert_eq!(s.unknown_bits(), (1 << 16) | (1 << 31));
        assert_eq!(s.names().collect::<Vec<_>>(), ["assured"]);
        assert_eq!(format!("{s:?}"), "Status(assured | 0x80010000)");
        let mut t = s;
        t.remove(Status::ASSURED);
        assert_eq!(t.bits(), (1 << 16) | (1 << 31));
        assert_eq!(format!("{t:?}"), "Status(0x80010000)");
        t.insert(Status::DYING);
        assert!(t.contains(Status::DYING) && t.intersects(Status::DYING | Status::HELPER));
        assert_eq!((t & !Status::DYING).bits(), (1 << 16) | (1 << 31));
    }

    #[test]
    fn a_hand_built_flow_takes_its_family_from_the_tuples_and_knows_nothing_else() {
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let orig = Tuple::ports(v6("2001:db8::1"), 40000, v6("2001:db8::2"), 80, IPPROTO_TCP);
        let f = Flow::new(orig, orig.inverted());
        assert_eq!(f.family, Family::Ipv6);
        assert_eq!((f.orig, f.reply), (orig, orig.inverted()));
        assert!(f.status.is_empty() && f.unreplied() && !f.is_dnat());
        assert_eq!(
            (f.zone, f.id, f.timeout, f.tcp_state),
            (0, None, None, None)
        );
        assert_eq!(f.proto_name(), "tcp");
    }

    #[test]
    fn contains_needs_every_flag_and_debug_names_them() {
        let s = Status::SEEN_REPLY | Status::ASSURED;
        assert!(s.contains(Status::SEEN_REPLY));
        assert!(s.contains(Status::SEEN_REPLY | Status::ASSURED));
        assert!(!s.contains(Status::SEEN_REPLY | Status::CONFIRMED));
        assert!(s.contains(Status::empty()));
        assert!(!s.intersects(Status::CONFIRMED | Status::DYING));
        assert_eq!(format!("{s:?}"), "Status(seen_reply | assured)");
        assert_eq!(format!("{:?}", Status::empty()), "Status(empty)");
        assert!(Status::default().is_empty());
    }
}
