//! Dump filters: what the kernel may pre-select, and the user-space check that always follows.
//!
//! The kernel's `CTA_FILTER` only does exact matches, needs a concrete address family, and its
//! IPv6 address compare is inverted (`!ipv6_addr_cmp` in `ctnetlink_filter_match_tuple`: a filter
//! for fd00::1 returns everything *except* fd00::1). So IPv6 addresses are never sent to the
//! kernel, ports only go with a protocol (the kernel ignores them otherwise), and every entry the
//! kernel returns is checked again by [`Filter::matches`].

use std::net::IpAddr;

use crate::flow::{Family, Flow, Status, Tuple};

/// Exact matches on one direction's tuple; `None` matches anything.
///
/// Built with [`TupleMatch::new`] and the `with_*` methods, or from `default()` by assigning
/// fields (more may be added).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TupleMatch {
    /// Source address.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Source port (protocols with ports only).
    pub sport: Option<u16>,
    /// Destination port (protocols with ports only).
    pub dport: Option<u16>,
}

impl TupleMatch {
    /// Matches any tuple.
    pub const fn new() -> Self {
        TupleMatch {
            src: None,
            dst: None,
            sport: None,
            dport: None,
        }
    }
    /// Also requires this source address.
    pub const fn with_src(mut self, ip: IpAddr) -> Self {
        self.src = Some(ip);
        self
    }
    /// Also requires this destination address.
    pub const fn with_dst(mut self, ip: IpAddr) -> Self {
        self.dst = Some(ip);
        self
    }
    /// Also requires this source port.
    pub const fn with_sport(mut self, port: u16) -> Self {
        self.sport = Some(port);
        self
    }
    /// Also requires this destination port.
    pub const fn with_dport(mut self, port: u16) -> Self {
        self.dport = Some(port);
        self
    }
    /// True when nothing is to be matched.
    pub fn is_empty(&self) -> bool {
        *self == TupleMatch::default()
    }
    #[inline]
    fn matches(&self, t: &Tuple) -> bool {
        self.src.is_none_or(|a| a == t.src)
            && self.dst.is_none_or(|a| a == t.dst)
            && self.sport.is_none_or(|p| Some(p) == t.sport())
            && self.dport.is_none_or(|p| Some(p) == t.dport())
    }
    fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.src.iter().chain(self.dst.iter())
    }
}

/// What a dump should return. Empty (`Filter::default()`) means everything.
///
/// Built with [`Filter::new`] and the `with_*` methods, or from `default()` by assigning fields
/// (more may be added):
///
/// ```
/// use ctnetlink::{Filter, TupleMatch, IPPROTO_TCP};
///
/// let backend = "10.0.0.7".parse().unwrap();
/// let f = Filter::new()
///     .with_proto(IPPROTO_TCP)
///     .with_reply(TupleMatch::new().with_src(backend).with_sport(8080));
/// assert_eq!(f.reply.src, Some(backend));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Address family.
    pub family: Option<Family>,
    /// IP protocol number (`IPPROTO_*`).
    pub proto: Option<u8>,
    /// Matches on the original direction.
    pub orig: TupleMatch,
    /// Matches on the reply direction.
    pub reply: TupleMatch,
    /// `(value, mask)`: entries with `mark & mask == value`.
    pub mark: Option<(u32, u32)>,
    /// `(value, mask)`: entries with `status & mask == value`.
    pub status: Option<(Status, Status)>,
    /// Conntrack zone.
    pub zone: Option<u16>,
}

impl Filter {
    /// Matches every entry.
    pub const fn new() -> Self {
        Filter {
            family: None,
            proto: None,
            orig: TupleMatch::new(),
            reply: TupleMatch::new(),
            mark: None,
            status: None,
            zone: None,
        }
    }
    /// Also requires this address family.
    pub const fn with_family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }
    /// Also requires this IP protocol (`IPPROTO_*`).
    pub const fn with_proto(mut self, proto: u8) -> Self {
        self.proto = Some(proto);
        self
    }
    /// Replaces the matches on the original direction.
    pub const fn with_orig(mut self, orig: TupleMatch) -> Self {
        self.orig = orig;
        self
    }
    /// Replaces the matches on the reply direction.
    pub const fn with_reply(mut self, reply: TupleMatch) -> Self {
        self.reply = reply;
        self
    }
    /// Also requires `mark & mask == value`.
    pub const fn with_mark(mut self, value: u32, mask: u32) -> Self {
        self.mark = Some((value, mask));
        self
    }
    /// Also requires `status & mask == value`: e.g. `(Status::empty(), Status::SEEN_REPLY)` for
    /// entries that never saw a reply.
    pub const fn with_status(mut self, value: Status, mask: Status) -> Self {
        self.status = Some((value, mask));
        self
    }
    /// Also requires this conntrack zone.
    pub const fn with_zone(mut self, zone: u16) -> Self {
        self.zone = Some(zone);
        self
    }
    /// The user-space check. The kernel's pre-selection is only an optimisation.
    #[inline]
    pub fn matches(&self, f: &Flow) -> bool {
        self.family.is_none_or(|fam| fam == f.family)
            && self.proto.is_none_or(|p| p == f.orig.proto)
            && self.orig.matches(&f.orig)
            && self.reply.matches(&f.reply)
            && self.mark.is_none_or(|(v, m)| f.mark.unwrap_or(0) & m == v)
            && self.status.is_none_or(|(v, m)| f.status & m == v)
            && self.zone.is_none_or(|z| z == f.zone)
    }

    /// The address families this filter can match: the explicit family, or the family of the
    /// addresses it names; empty when they contradict each other (nothing can match).
    pub fn families(&self) -> Vec<Option<Family>> {
        let mut fam = self.family;
        for a in self.orig.addresses().chain(self.reply.addresses()) {
            let af = Family::of(a);
            match fam {
                None => fam = Some(af),
                Some(f) if f != af => return Vec::new(),
                _ => {}
            }
        }
        vec![fam]
    }
}
