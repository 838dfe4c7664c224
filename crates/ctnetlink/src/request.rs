//! Request encoders: pure functions that append ctnetlink messages to a [`MsgWriter`].
//!
//! Nothing here touches a socket, so every message can be checked byte by byte in tests.

use std::net::IpAddr;

use crate::attr::MsgWriter;
use crate::consts::*;
use crate::error::{Error, Result};
use crate::filter::{Filter, TupleMatch};
use crate::flow::{Family, Flow, Status, TcpState, Tuple, L4};
use crate::nl::*;

/// What identifies one entry exactly, for a delete or an exact read
/// ([`Conntrack::get`](crate::Conntrack::get)): the *reply* tuple,
/// the zone and the kernel's id.
///
/// The reply tuple, not the original one: `CTA_ID` is a hash of the entry's address and original
/// tuple, so a new entry that reuses both the original tuple and the freed slot (a UDP flow that
/// a load balancer re-routed to another backend) carries the same id. Its reply tuple names the new
/// backend, so a key taken from the old entry cannot match it (the kernel's
/// `ctnetlink_del_conntrack` looks an entry up by `CTA_TUPLE_REPLY` when no `CTA_TUPLE_ORIG` is
/// given, then compares `CTA_ID`). Test: `a_stale_key_never_hits_a_rerouted_entry_with_the_same_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeleteKey {
    /// Address family.
    pub family: Family,
    /// The entry's reply tuple.
    pub reply: Tuple,
    /// The entry's conntrack zone.
    pub zone: u16,
    /// With an id the kernel refuses (ENOENT) to delete a newer entry that reuses the tuple.
    pub id: Option<u32>,
}

impl From<&Flow> for DeleteKey {
    fn from(f: &Flow) -> Self {
        DeleteKey {
            family: f.family,
            reply: f.reply,
            zone: f.zone,
            id: f.id,
        }
    }
}

/// A change to an existing entry (tests and the lab: what a packet would have done to it, e.g. a
/// half-open flow that gets its reply). Found like a delete, by reply tuple and zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowUpdate {
    /// The entry to change.
    pub key: DeleteKey,
    /// The whole new status. The kernel refuses (EBUSY) to clear CONFIRMED, SEEN_REPLY or
    /// ASSURED and ignores the NAT bits: pass the entry's status with the bits to add.
    pub status: Option<Status>,
    /// The new TCP state.
    pub tcp_state: Option<TcpState>,
    /// The new timeout, in seconds.
    pub timeout: Option<u32>,
}

/// An entry to create (tests, benchmarks, labs): start from [`NewFlow::established`] and
/// adjust with the `with_*` methods or by assigning fields (more may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewFlow {
    /// The original tuple; the reply tuple is its inverse, or follows from `dnat`.
    pub orig: Tuple,
    /// DNAT target (backend address and port): the kernel computes the reply tuple from it and
    /// sets DST_NAT, exactly as for a packet that hit a DNAT rule.
    pub dnat: Option<(IpAddr, u16)>,
    /// Status flags ([`Status::CONFIRMED`] is always added: the kernel requires it).
    pub status: Status,
    /// Timeout, in seconds.
    pub timeout: u32,
    /// TCP state, for TCP entries.
    pub tcp_state: Option<TcpState>,
    /// Connection mark.
    pub mark: Option<u32>,
    /// Conntrack zone.
    pub zone: u16,
}

impl NewFlow {
    /// A TCP ESTABLISHED/ASSURED entry, or a UDP one that has seen a reply.
    pub fn established(orig: Tuple, dnat: Option<(IpAddr, u16)>) -> Self {
        NewFlow {
            orig,
            dnat,
            status: Status::SEEN_REPLY | Status::ASSURED,
            timeout: 3600,
            tcp_state: (orig.proto == IPPROTO_TCP).then_some(TcpState::ESTABLISHED),
            mark: None,
            zone: 0,
        }
    }
    /// With these status flags instead.
    pub const fn with_status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }
    /// With this timeout (seconds) instead.
    pub const fn with_timeout(mut self, seconds: u32) -> Self {
        self.timeout = seconds;
        self
    }
    /// With this TCP state instead.
    pub const fn with_tcp_state(mut self, state: TcpState) -> Self {
        self.tcp_state = Some(state);
        self
    }
    /// With this connection mark.
    pub const fn with_mark(mut self, mark: u32) -> Self {
        self.mark = Some(mark);
        self
    }
    /// In this conntrack zone.
    pub const fn with_zone(mut self, zone: u16) -> Self {
        self.zone = zone;
        self
    }
}

impl FlowUpdate {
    /// A change of the entry `key` that changes nothing yet: add what to change with the
    /// `with_*` methods.
    pub const fn new(key: DeleteKey) -> Self {
        FlowUpdate {
            key,
            status: None,
            tcp_state: None,
            timeout: None,
        }
    }
    /// Sets the whole status (see [`FlowUpdate::status`]).
    pub const fn with_status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }
    /// Sets the TCP state.
    pub const fn with_tcp_state(mut self, state: TcpState) -> Self {
        self.tcp_state = Some(state);
        self
    }
    /// Sets the timeout, in seconds.
    pub const fn with_timeout(mut self, seconds: u32) -> Self {
        self.timeout = Some(seconds);
        self
    }
}

fn put_ip(w: &mut MsgWriter, src: Option<&IpAddr>, dst: Option<&IpAddr>) {
    let n = w.begin_nest(CTA_TUPLE_IP);
    if let Some(a) = src {
        match a {
            IpAddr::V4(a) => w.put(CTA_IP_V4_SRC, &a.octets()),
            IpAddr::V6(a) => w.put(CTA_IP_V6_SRC, &a.octets()),
        }
    }
    if let Some(a) = dst {
        match a {
            IpAddr::V4(a) => w.put(CTA_IP_V4_DST, &a.octets()),
            IpAddr::V6(a) => w.put(CTA_IP_V6_DST, &a.octets()),
        }
    }
    w.end_nest(n);
}

/// Appends a complete tuple nest.
pub(crate) fn put_tuple(w: &mut MsgWriter, kind: u16, t: &Tuple) {
    let n = w.begin_nest(kind);
    put_ip(w, Some(&t.src), Some(&t.dst));
    let p = w.begin_nest(CTA_TUPLE_PROTO);
    w.put_u8(CTA_PROTO_NUM, t.proto);
    match t.l4 {
        L4::Ports { src, dst } => {
            w.put_be16(CTA_PROTO_SRC_PORT, src);
            w.put_be16(CTA_PROTO_DST_PORT, dst);
        }
        L4::Icmp { kind, code, id } => {
            let v6 = matches!(t.src, IpAddr::V6(_));
            let (i, ty, c) = if v6 {
                (
                    CTA_PROTO_ICMPV6_ID,
                    CTA_PROTO_ICMPV6_TYPE,
                    CTA_PROTO_ICMPV6_CODE,
                )
            } else {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            };
            w.put_be16(i, id);
            w.put_u8(ty, kind);
            w.put_u8(c, code);
        }
        L4::None => {}
    }
    w.end_nest(p);
    w.end_nest(n);
}

/// Kernel filter flags and tuple values for one direction. IPv6 addresses are left out on
/// purpose (the kernel's compare is inverted); ports only go with a protocol.
fn kernel_tuple_flags(m: &TupleMatch, proto: Option<u8>) -> u32 {
    let mut flags = 0;
    if matches!(m.src, Some(IpAddr::V4(_))) {
        flags |= FILTER_IP_SRC;
    }
    if matches!(m.dst, Some(IpAddr::V4(_))) {
        flags |= FILTER_IP_DST;
    }
    if proto.is_some() {
        flags |= FILTER_PROTO_NUM;
        if m.sport.is_some() {
            flags |= FILTER_SRC_PORT;
        }
        if m.dport.is_some() {
            flags |= FILTER_DST_PORT;
        }
    }
    flags
}

fn put_filter_tuple(w: &mut MsgWriter, kind: u16, m: &TupleMatch, proto: Option<u8>, flags: u32) {
    let n = w.begin_nest(kind);
    if flags & (FILTER_IP_SRC | FILTER_IP_DST) != 0 {
        let src = m.src.as_ref().filter(|_| flags & FILTER_IP_SRC != 0);
        let dst = m.dst.as_ref().filter(|_| flags & FILTER_IP_DST != 0);
        put_ip(w, src, dst);
    }
    if let Some(p) = proto {
        let pn = w.begin_nest(CTA_TUPLE_PROTO);
        w.put_u8(CTA_PROTO_NUM, p);
        if let Some(sp) = m.sport.filter(|_| flags & FILTER_SRC_PORT != 0) {
            w.put_be16(CTA_PROTO_SRC_PORT, sp);
        }
        if let Some(dp) = m.dport.filter(|_| flags & FILTER_DST_PORT != 0) {
            w.put_be16(CTA_PROTO_DST_PORT, dp);
        }
        w.end_nest(pn);
    }
    w.end_nest(n);
}

/// Appends a dump request for one family (`None`: all families). The kernel pre-selects what it
/// safely can; the caller re-checks every entry with [`Filter::matches`].
pub(crate) fn dump(w: &mut MsgWriter, seq: u32, family: Option<Family>, filter: &Filter) {
    let af = family.map(Family::af).unwrap_or(libc::AF_UNSPEC as u8);
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        af,
        NFNETLINK_V0,
        0,
    );
    if let Some((v, mask)) = filter.mark {
        w.put_be32(CTA_MARK, v);
        w.put_be32(CTA_MARK_MASK, mask);
    }
    if let Some((v, mask)) = filter.status {
        w.put_be32(CTA_STATUS, v.bits());
        w.put_be32(CTA_STATUS_MASK, mask.bits());
    }
    // CTA_FILTER needs a concrete family to parse addresses and ports.
    if family.is_some() {
        let of = kernel_tuple_flags(&filter.orig, filter.proto);
        let rf = kernel_tuple_flags(&filter.reply, filter.proto);
        if of != 0 || rf != 0 {
            let n = w.begin_nest(CTA_FILTER);
            if of != 0 {
                w.put_ne32(CTA_FILTER_ORIG_FLAGS, of);
            }
            if rf != 0 {
                w.put_ne32(CTA_FILTER_REPLY_FLAGS, rf);
            }
            w.end_nest(n);
            if of != 0 {
                put_filter_tuple(w, CTA_TUPLE_ORIG, &filter.orig, filter.proto, of);
            }
            if rf != 0 {
                put_filter_tuple(w, CTA_TUPLE_REPLY, &filter.reply, filter.proto, rf);
            }
        }
    }
    w.end_msg(m);
}

/// Refuses a key whose tuple cannot be encoded for its family: a DELETE without a usable tuple
/// would be a table flush, so one is never built.
fn check_key(key: &DeleteKey) -> Result<()> {
    if Family::of(&key.reply.src) != key.family || Family::of(&key.reply.dst) != key.family {
        return Err(Error::Refused(
            "a DELETE or GET whose tuple does not match its family",
        ));
    }
    Ok(())
}

/// Appends one exact delete, keyed on the reply tuple (never the original one: see
/// [`DeleteKey`]), the zone and the id. The message carries no ACK request: the kernel answers
/// only on failure, and a trailing [`noop_ack`] tells when the whole batch has been processed.
pub(crate) fn delete(w: &mut MsgWriter, seq: u32, key: &DeleteKey) -> Result<()> {
    check_key(key)?;
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST,
        seq,
        key.family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_TUPLE_REPLY, &key.reply);
    w.put_be16(CTA_ZONE, key.zone);
    if let Some(id) = key.id {
        w.put_be32(CTA_ID, id);
    }
    w.end_msg(m);
    Ok(())
}

/// Appends one exact read of a single entry (a CT_GET *do* request, not a dump), keyed like
/// [`delete`]. The kernel answers with the entry (a CT_NEW message carrying this `seq`) or with
/// an error (ENOENT when no entry has this tuple); it ignores `CTA_ID` here, so the caller
/// compares the id itself. No ACK request, as for [`delete`].
pub(crate) fn get(w: &mut MsgWriter, seq: u32, key: &DeleteKey) -> Result<()> {
    check_key(key)?;
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST,
        seq,
        key.family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_TUPLE_REPLY, &key.reply);
    w.put_be16(CTA_ZONE, key.zone);
    w.end_msg(m);
    Ok(())
}

/// Appends one read by *original* tuple and zone ([`Conntrack::get_original`]).
///
/// [`Conntrack::get_original`]: crate::Conntrack::get_original
pub(crate) fn get_original(w: &mut MsgWriter, seq: u32, key: &(Tuple, u16)) -> Result<()> {
    let (orig, zone) = key;
    let family = Family::of(&orig.src);
    if Family::of(&orig.dst) != family {
        return Err(Error::Refused("a GET whose tuple mixes families"));
    }
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST,
        seq,
        family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_TUPLE_ORIG, orig);
    w.put_be16(CTA_ZONE, *zone);
    w.end_msg(m);
    Ok(())
}

/// Appends one create (no ACK request; see [`delete`]).
pub(crate) fn create(w: &mut MsgWriter, seq: u32, nf: &NewFlow) -> Result<()> {
    let family = Family::of(&nf.orig.src);
    if Family::of(&nf.orig.dst) != family
        || nf.dnat.is_some_and(|(ip, _)| Family::of(&ip) != family)
    {
        return Err(Error::Refused("a NEW whose addresses mix families"));
    }
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_TUPLE_ORIG, &nf.orig);
    // The un-NATed inverse; the kernel rewrites it from CTA_NAT_DST and sets DST_NAT.
    put_tuple(w, CTA_TUPLE_REPLY, &nf.orig.inverted());
    // The kernel marks a created entry CONFIRMED before applying CTA_STATUS and refuses (EBUSY)
    // a status that would clear it, so the bit must be in ours.
    w.put_be32(CTA_STATUS, (nf.status | Status::CONFIRMED).bits());
    w.put_be32(CTA_TIMEOUT, nf.timeout);
    if let Some(mark) = nf.mark {
        w.put_be32(CTA_MARK, mark);
    }
    if nf.zone != 0 {
        w.put_be16(CTA_ZONE, nf.zone);
    }
    if let Some(st) = nf.tcp_state {
        let p = w.begin_nest(CTA_PROTOINFO);
        let t = w.begin_nest(CTA_PROTOINFO_TCP);
        w.put_u8(CTA_PROTOINFO_TCP_STATE, st.0);
        w.end_nest(t);
        w.end_nest(p);
    }
    if let Some((ip, port)) = nf.dnat {
        let n = w.begin_nest(CTA_NAT_DST);
        match ip {
            IpAddr::V4(a) => {
                w.put(CTA_NAT_V4_MINIP, &a.octets());
                w.put(CTA_NAT_V4_MAXIP, &a.octets());
            }
            IpAddr::V6(a) => {
                w.put(CTA_NAT_V6_MINIP, &a.octets());
                w.put(CTA_NAT_V6_MAXIP, &a.octets());
            }
        }
        let p = w.begin_nest(CTA_NAT_PROTO);
        w.put_be16(CTA_PROTONAT_PORT_MIN, port);
        w.put_be16(CTA_PROTONAT_PORT_MAX, port);
        w.end_nest(p);
        w.end_nest(n);
    }
    w.end_msg(m);
    Ok(())
}

/// Appends one change of an existing entry: a CT_NEW without NLM_F_CREATE, so the kernel answers
/// ENOENT rather than create one (no ACK request; see [`delete`]).
pub(crate) fn update(w: &mut MsgWriter, seq: u32, u: &FlowUpdate) -> Result<()> {
    check_key(&u.key)?;
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST,
        seq,
        u.key.family.af(),
        NFNETLINK_V0,
        0,
    );
    put_tuple(w, CTA_TUPLE_REPLY, &u.key.reply);
    w.put_be16(CTA_ZONE, u.key.zone);
    if let Some(status) = u.status {
        w.put_be32(CTA_STATUS, status.bits());
    }
    if let Some(t) = u.timeout {
        w.put_be32(CTA_TIMEOUT, t);
    }
    if let Some(st) = u.tcp_state {
        let p = w.begin_nest(CTA_PROTOINFO);
        let t = w.begin_nest(CTA_PROTOINFO_TCP);
        w.put_u8(CTA_PROTOINFO_TCP_STATE, st.0);
        w.end_nest(t);
        w.end_nest(p);
    }
    w.end_msg(m);
    Ok(())
}

/// Appends a NLMSG_NOOP that asks for an ACK: processed in order, so its ACK marks the end of a
/// batch whose other messages only answer when they fail.
pub(crate) fn noop_ack(w: &mut MsgWriter, seq: u32) {
    let m = w.begin_bare_msg(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq);
    w.end_msg(m);
}

/// The global counters request (a *do* request: it needs the ACK flag).
pub(crate) fn stats(w: &mut MsgWriter, seq: u32) {
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_GET_STATS),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        libc::AF_UNSPEC as u8,
        NFNETLINK_V0,
        0,
    );
    w.end_msg(m);
}

/// The per-CPU counters request (a dump, one answer per CPU).
pub(crate) fn stats_cpu(w: &mut MsgWriter, seq: u32) {
    let m = w.begin_msg(
        msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        libc::AF_UNSPEC as u8,
        NFNETLINK_V0,
        0,
    );
    w.end_msg(m);
}

/// The encoders against byte captures from a real kernel (`tests/fixtures`, no root needed).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::Attrs;
    use crate::test_fixtures::{fixture, flow, ip, ALL};

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
            put_tuple(&mut w, CTA_TUPLE_ORIG, &f.orig);
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
        delete(&mut w, 42, &DeleteKey::from(&f)).unwrap();
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
        put_tuple(&mut w, CTA_TUPLE_REPLY, &f.reply);
        let ours = Attrs::new(w.as_bytes()).next().unwrap().unwrap();
        assert_eq!(reply.payload, ours.payload);
    }

    /// An exact read is a *do* request (no DUMP flag: that would list the table) with the same key.
    #[test]
    fn get_request_is_one_exact_lookup_by_reply_tuple_and_zone() {
        let f = flow("ipv4-udp-zone5-unreplied.bin");
        let mut w = MsgWriter::new();
        get(&mut w, 7, &DeleteKey::from(&f)).unwrap();
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
        assert!(get(&mut w, 1, &key).is_err());
        assert!(w.is_empty());
    }

    #[test]
    fn delete_without_a_consistent_tuple_is_refused() {
        let f = flow("ipv4-tcp-syn-sent.bin");
        let mut key = DeleteKey::from(&f);
        key.family = Family::Ipv6;
        let mut w = MsgWriter::new();
        assert!(delete(&mut w, 1, &key).is_err());
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
        dump(&mut w, 1, Some(Family::Ipv6), &filter);
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
    fn builders_set_exactly_what_they_name() {
        let t = Tuple::ports(ip("192.0.2.2"), 40000, ip("198.51.100.10"), 80, IPPROTO_TCP);
        let base = NewFlow::established(t, Some((ip("203.0.113.7"), 8080)));
        assert_eq!(base.status, Status::SEEN_REPLY | Status::ASSURED);
        assert_eq!(base.tcp_state, Some(TcpState::ESTABLISHED));
        let nf = base
            .with_status(Status::empty())
            .with_timeout(120)
            .with_tcp_state(TcpState::SYN_SENT)
            .with_mark(9)
            .with_zone(5);
        assert_eq!(
            (nf.orig, nf.dnat, nf.status, nf.timeout),
            (base.orig, base.dnat, Status::empty(), 120)
        );
        assert_eq!(
            (nf.tcp_state, nf.mark, nf.zone),
            (Some(TcpState::SYN_SENT), Some(9), 5)
        );
        let key = DeleteKey::from(&flow("ipv4-tcp-syn-sent.bin"));
        let u = FlowUpdate::new(key);
        assert_eq!(
            (u.key, u.status, u.tcp_state, u.timeout),
            (key, None, None, None)
        );
        let u = u
            .with_status(Status::SEEN_REPLY)
            .with_tcp_state(TcpState::ESTABLISHED)
            .with_timeout(30);
        assert_eq!(
            (u.status, u.tcp_state, u.timeout),
            (
                Some(Status::SEEN_REPLY),
                Some(TcpState::ESTABLISHED),
                Some(30)
            )
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn arbitrary_bytes_never_panic_the_framing(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for m in Messages::new(&bytes).flatten() {
                let _ = m.error();
                let _ = m.nfgen().map(|(g, a)| crate::flow::parse_flow(g.family, a));
            }
        }
    }
}
