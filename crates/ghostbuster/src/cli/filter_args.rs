//! Flow filter flags shared by `list` (and later `scan`), turned into a [`ctnetlink::Filter`]
//! plus the user-space-only parts (protocol state).

use std::net::IpAddr;

use anyhow::{bail, Context};
use clap::Args;
use ctnetlink::{Family, Filter, Flow, SctpState, Status, TcpState, TupleMatch};

#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// ipv4 or ipv6.
    #[arg(long, short = 'f', value_parser = ["ipv4", "ipv6"])]
    pub family: Option<String>,
    /// Protocol name or number (tcp, udp, sctp, icmp, 132, ...).
    #[arg(long, short = 'p')]
    pub proto: Option<String>,
    /// Original source address.
    #[arg(long, alias = "src")]
    pub orig_src: Option<IpAddr>,
    /// Original destination address (a Service VIP for DNAT'd flows).
    #[arg(long, alias = "dst")]
    pub orig_dst: Option<IpAddr>,
    #[arg(long, alias = "sport")]
    pub orig_sport: Option<u16>,
    #[arg(long, alias = "dport")]
    pub orig_dport: Option<u16>,
    /// Reply source address (the backend pod of a DNAT'd flow).
    #[arg(long)]
    pub reply_src: Option<IpAddr>,
    #[arg(long)]
    pub reply_dst: Option<IpAddr>,
    #[arg(long)]
    pub reply_sport: Option<u16>,
    #[arg(long)]
    pub reply_dport: Option<u16>,
    /// Protocol state, e.g. ESTABLISHED, SYN_SENT, TIME_WAIT (TCP) or COOKIE_WAIT (SCTP).
    #[arg(long)]
    pub state: Option<String>,
    /// Status flags that must be set, comma separated: assured, seen_reply, dst_nat (or dnat),
    /// src_nat (or snat), confirmed, ...; `unreplied` means seen_reply is NOT set.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Mark, as VALUE or VALUE/MASK (decimal or 0x hex).
    #[arg(long)]
    pub mark: Option<String>,
    /// Conntrack zone.
    #[arg(long)]
    pub zone: Option<u16>,
}

/// The state filter is user space only: the kernel cannot filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMatch {
    Any,
    Tcp(TcpState),
    Sctp(SctpState),
    Both(TcpState, SctpState),
}

impl StateMatch {
    #[inline]
    pub fn matches(&self, f: &Flow) -> bool {
        match *self {
            StateMatch::Any => true,
            StateMatch::Tcp(s) => f.tcp_state == Some(s),
            StateMatch::Sctp(s) => f.sctp_state == Some(s),
            StateMatch::Both(t, s) => f.tcp_state == Some(t) || f.sctp_state == Some(s),
        }
    }
}

fn parse_u32(s: &str) -> anyhow::Result<u32> {
    let s = s.trim();
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    v.with_context(|| format!("{s:?} is not a 32-bit number"))
}

impl FilterArgs {
    /// Builds the filter; errors are usage errors.
    pub fn build(&self) -> anyhow::Result<(Filter, StateMatch)> {
        let mut f = Filter::default();
        f.family = match self.family.as_deref() {
            Some("ipv4") => Some(Family::Ipv4),
            Some("ipv6") => Some(Family::Ipv6),
            _ => None,
        };
        let mut orig = TupleMatch::default();
        orig.src = self.orig_src;
        orig.dst = self.orig_dst;
        orig.sport = self.orig_sport;
        orig.dport = self.orig_dport;
        f.orig = orig;
        let mut reply = TupleMatch::default();
        reply.src = self.reply_src;
        reply.dst = self.reply_dst;
        reply.sport = self.reply_sport;
        reply.dport = self.reply_dport;
        f.reply = reply;
        f.zone = self.zone;
        if let Some(p) = &self.proto {
            f.proto = Some(ctnetlink::proto_from_name(p).with_context(|| {
                format!("unknown protocol {p:?} (try tcp, udp, sctp, icmp or a number)")
            })?);
        }
        if let Some(m) = &self.mark {
            let (v, mask) = match m.split_once('/') {
                Some((v, mask)) => (parse_u32(v)?, parse_u32(mask)?),
                None => (parse_u32(m)?, u32::MAX),
            };
            f.mark = Some((v & mask, mask));
        }
        let (mut val, mut mask) = (Status::empty(), Status::empty());
        for name in &self.status {
            let n = name.trim().to_ascii_lowercase();
            match n.as_str() {
                "unreplied" => mask |= Status::SEEN_REPLY,
                "dnat" => {
                    val |= Status::DST_NAT;
                    mask |= Status::DST_NAT;
                }
                "snat" => {
                    val |= Status::SRC_NAT;
                    mask |= Status::SRC_NAT;
                }
                other => {
                    let Some(bit) = Status::from_name(other) else {
                        bail!(
                            "unknown status flag {other:?}; known: unreplied, dnat, snat, {}",
                            Status::NAMES.join(", ")
                        );
                    };
                    val |= bit;
                    mask |= bit;
                }
            }
        }
        if val.contains(Status::SEEN_REPLY) && self.status.iter().any(|s| s == "unreplied") {
            bail!("--status seen_reply and unreplied contradict each other");
        }
        if !mask.is_empty() {
            f.status = Some((val, mask));
        }
        let state = match &self.state {
            None => StateMatch::Any,
            Some(s) => match (TcpState::from_name(s), SctpState::from_name(s)) {
                (Some(t), Some(c)) => StateMatch::Both(t, c),
                (Some(t), None) => StateMatch::Tcp(t),
                (None, Some(c)) => StateMatch::Sctp(c),
                (None, None) => {
                    bail!("unknown state {s:?} (e.g. ESTABLISHED, SYN_SENT, TIME_WAIT)")
                }
            },
        };
        Ok((f, state))
    }
}
