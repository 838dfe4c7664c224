//! Classic BPF socket filters for conntrack events: let through only the events whose REPLY
//! tuple's source address (the backend of a DNAT'd flow) is in a given set
//! ([`reply_src_program`]), or only the events of DNAT'd flows ([`dnat_program`]).
//!
//! Why: a busy node creates 10k–100k flows per second, and a listener that only cares about flows
//! toward a handful of backends would otherwise wake up, copy and parse every one of them (and
//! overflow its receive buffer in bursts). The kernel runs the filter before it queues the event,
//! so a dropped event costs neither a wake-up nor buffer space.
//!
//! How: like libnetfilter_conntrack's `bsf.c`, with the netlink ancillary loads the kernel offers
//! for exactly this (`net/core/filter.c`):
//! - `SKF_AD_OFF + SKF_AD_NLATTR`: A = offset of the first attribute of type X found from offset
//!   A to the end of the packet (types compared without the NESTED/BYTEORDER flags), 0 if absent;
//! - `SKF_AD_OFF + SKF_AD_NLATTR_NEST`: A = offset of the attribute of type X inside the nest at
//!   offset A, 0 if absent.
//!
//! Both answer 0 for non-linear packets; conntrack events are linear (one `nlmsg_new` each).
//!
//! The program walks `CTA_TUPLE_REPLY` → `CTA_TUPLE_IP` → `CTA_IP_V4_SRC`/`CTA_IP_V6_SRC`
//! (chosen by the `nfgenmsg` family byte at offset 16) and compares the address with the set.
//! Packet loads are big-endian; netlink headers are host-endian, so every constant compared with a
//! header field is converted here.
//!
//! Decisions (the filter is an optimisation; user space re-checks every event it gets):
//! - an empty set drops every conntrack NEW/DELETE event: nothing can match;
//! - any other message (other types, other subsystems) is accepted: not ours to judge;
//! - a conntrack message the program cannot read (too short, attribute missing, address of the
//!   wrong length, unknown family) is accepted: fail open;
//! - a set too large for one program ([`MAX_ADDRESSES`], or more than [`MAX_INSNS`] instructions)
//!   yields no program at all ("accept everything") rather than an error.
//!
//! A second program, [`dnat_program`], accepts a conntrack NEW/DELETE event only when its
//! `CTA_STATUS` has `IPS_DST_NAT`: the flow was DNAT'd (kube-proxy's Service flows). A listener
//! that indexes DNAT'd flows by backend needs no address set for that, and the flows that were
//! not DNAT'd (the bulk of a node's own traffic) never leave the kernel. It finds `CTA_STATUS`
//! among the top-level attributes (`SKF_AD_NLATTR`) and tests the bit with `jset`; ctnetlink puts
//! the status big-endian (`nla_put_be32`), which is how a packet load reads it. Same decisions:
//! other messages are accepted, and so is an event the program cannot read (too short, no status,
//! a status attribute whose `nla_len` is not 8).

use std::collections::BTreeSet;
use std::net::IpAddr;

use libc::sock_filter;

use crate::consts::*;

/// Most addresses one program holds. Above this, [`reply_src_program`] returns `None`: the
/// program would be long (a linear chain costs one compare per address per event) and a set this
/// large means something else is going on (a mass rollout), where filtering buys little.
pub const MAX_ADDRESSES: usize = 1024;

/// The kernel's limit on the length of a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// What the program returns to keep a message: the whole packet (`~0`, like libnetfilter_conntrack).
pub(crate) const ACCEPT: u32 = u32::MAX;
/// What the program returns to drop a message.
pub(crate) const DROP: u32 = 0;

/// Offset of the first attribute of a netfilter netlink message: nlmsghdr (16) + nfgenmsg (4).
const ATTRS_OFFSET: u32 = 20;
/// Offset of `nlmsg_type` in the nlmsghdr.
const TYPE_OFFSET: u32 = 4;
/// Offset of the nfgenmsg family byte.
const FAMILY_OFFSET: u32 = 16;
/// Size of an attribute header (`struct nlattr`).
const NLA_HDRLEN: u32 = 4;
/// Longest forward distance of a conditional jump (`jt`/`jf` are one byte).
const MAX_COND_JUMP: usize = u8::MAX as usize;
/// `IPS_DST_NAT` in the status word (which loads as its value: both are big-endian).
const IPS_DST_NAT: u32 = crate::flow::Status::DST_NAT.bits();

// Opcodes, spelled like the kernel's (the values are fixed by the ABI).
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_W_IND: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_IND) as u16;
const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
const LD_W_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
const LD_IMM: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_IMM) as u16;
const LDX_IMM: u16 = (libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM) as u16;
const LDX_MEM: u16 = (libc::BPF_LDX | libc::BPF_W | libc::BPF_MEM) as u16;
const ST: u16 = libc::BPF_ST as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `k` of the two ancillary loads (negative offsets, as the kernel's ABI spells them).
const AD_NLATTR: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_NLATTR) as u32;
const AD_NLATTR_NEST: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_NLATTR_NEST) as u32;

/// The value a 16-bit packet load (big-endian) yields for a host-endian `u16` field, such as
/// `nlmsg_type` or `nla_len`: the program is built on the host whose kernel runs it.
pub(crate) const fn host_u16_as_loaded(v: u16) -> u32 {
    u16::from_be_bytes(v.to_ne_bytes()) as u32
}

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Builds the program that accepts a conntrack NEW/DELETE event only when its reply source is
/// one of `addrs` (duplicates are fine), and accepts every other message.
///
/// `None` means "attach no filter" (let everything through): the set is larger than
/// [`MAX_ADDRESSES`] or the program would exceed [`MAX_INSNS`]. Never fails otherwise.
pub fn reply_src_program<I>(addrs: I) -> Option<Vec<sock_filter>>
where
    I: IntoIterator<Item = IpAddr>,
{
    // Sorted and distinct: duplicates cost nothing, and equal sets give equal programs.
    let mut v4: BTreeSet<u32> = BTreeSet::new();
    let mut v6: BTreeSet<[u32; 4]> = BTreeSet::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => {
                v4.insert(u32::from(a));
            }
            IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                v6.insert([w(0), w(4), w(8), w(12)]);
            }
        }
        // Stop early: a huge input never builds a huge set.
        if v4.len() + v6.len() > MAX_ADDRESSES {
            return None;
        }
    }
    let v4: Vec<u32> = v4.into_iter().collect();
    let v6: Vec<[u32; 4]> = v6.into_iter().collect();
    let prog = if v4.is_empty() && v6.is_empty() {
        drop_all_conntrack()
    } else {
        let v4_body = if v4.is_empty() {
            vec![stmt(RET_K, DROP)]
        } else {
            let mut b = vec![stmt(LD_W_IND, NLA_HDRLEN)];
            b.extend(any_of(&v4));
            b
        };
        let v6_body = trie(0, &v6);
        match_reply_src(v4_body, v6_body)?
    };
    (prog.len() <= MAX_INSNS).then_some(prog)
}

/// Builds the program that accepts a conntrack NEW/DELETE event only when its status has
/// [`Status::DST_NAT`](crate::Status::DST_NAT) (a DNAT'd flow), and accepts every other message.
///
/// Events it cannot judge (no `CTA_STATUS`, or one whose `nla_len` is not 8) are accepted: user
/// space re-checks [`Flow::is_dnat`](crate::Flow::is_dnat) on every event it gets.
pub fn dnat_program() -> Vec<sock_filter> {
    let mut a = Asm::default();
    let (ct, acc, drop) = (a.label(), a.label(), a.label());
    // Shorter than nlmsghdr + nfgenmsg: not a message we can read; keep it.
    a.stmt(LD_W_LEN, 0);
    a.jump(JGE_K, ATTRS_OFFSET, To::Next, To::L(acc));
    // Only conntrack NEW (new and update) and DELETE (destroy) events are judged.
    a.stmt(LD_H_ABS, TYPE_OFFSET);
    a.jump(JEQ_K, ct_new(), To::L(ct), To::Next);
    a.jump(JEQ_K, ct_delete(), To::Next, To::L(acc));
    a.bind(ct);
    // CTA_STATUS among the top-level attributes; missing (0): accept, user space decides.
    a.stmt(LD_IMM, ATTRS_OFFSET);
    a.stmt(LDX_IMM, CTA_STATUS as u32);
    a.stmt(LD_W_ABS, AD_NLATTR);
    a.jump(JEQ_K, 0, To::L(acc), To::Next);
    // X = offset of the status attribute. The kernel found it whole inside the packet; a status
    // that is not 4 bytes is malformed: accept rather than read past it.
    a.stmt(TAX, 0);
    a.stmt(LD_H_IND, 0);
    a.jump(JEQ_K, host_u16_as_loaded(8), To::Next, To::L(acc));
    // Big-endian on the wire (nla_put_be32), big-endian as loaded: the value itself.
    a.stmt(LD_W_IND, NLA_HDRLEN);
    a.jump(JSET_K, IPS_DST_NAT, To::L(acc), To::L(drop));
    a.bind(acc);
    a.stmt(RET_K, ACCEPT);
    a.bind(drop);
    a.stmt(RET_K, DROP);
    // Every jump here is a few instructions long: resolving cannot fail.
    a.finish().unwrap_or_else(|| vec![stmt(RET_K, ACCEPT)])
}

/// The program for an empty set: every conntrack NEW/DELETE event is dropped, nothing else.
fn drop_all_conntrack() -> Vec<sock_filter> {
    let mut a = Asm::default();
    let (acc, drop) = (a.label(), a.label());
    a.stmt(LD_W_LEN, 0);
    // Too short to hold nlmsg_type: not a message we know; keep it.
    a.jump(JGE_K, TYPE_OFFSET + 2, To::Next, To::L(acc));
    a.stmt(LD_H_ABS, TYPE_OFFSET);
    a.jump(JEQ_K, ct_new(), To::L(drop), To::Next);
    a.jump(JEQ_K, ct_delete(), To::L(drop), To::L(acc));
    a.bind(acc);
    a.stmt(RET_K, ACCEPT);
    a.bind(drop);
    a.stmt(RET_K, DROP);
    // Every jump here is a few instructions long: resolving cannot fail.
    a.finish().unwrap_or_else(|| vec![stmt(RET_K, ACCEPT)])
}

fn ct_new() -> u32 {
    host_u16_as_loaded(msg_type(IPCTNL_MSG_CT_NEW))
}

fn ct_delete() -> u32 {
    host_u16_as_loaded(msg_type(IPCTNL_MSG_CT_DELETE))
}

/// The common part: checks the message, finds the reply source address (X = its attribute's
/// offset), then runs `v4_body` or `v6_body` by family. The bodies are self-contained (every path
/// ends in a `ret`), so they are appended as they are: classic BPF jumps are relative.
fn match_reply_src(
    v4_body: Vec<sock_filter>,
    v6_body: Vec<sock_filter>,
) -> Option<Vec<sock_filter>> {
    let af_inet = libc::AF_INET as u32;
    let af_inet6 = libc::AF_INET6 as u32;
    let mut a = Asm::default();
    let acc = a.label();
    let (ct, is4, is6, find, v6) = (a.label(), a.label(), a.label(), a.label(), a.label());
    let (body4, body6) = (a.label(), a.label());

    // Shorter than nlmsghdr + nfgenmsg: nothing to read (and no out-of-bounds load, which would
    // make the kernel drop the message).
    a.stmt(LD_W_LEN, 0);
    a.jump(JGE_K, ATTRS_OFFSET, To::Next, To::L(acc));
    // Only conntrack NEW (new and update) and DELETE (destroy) events are judged.
    a.stmt(LD_H_ABS, TYPE_OFFSET);
    a.jump(JEQ_K, ct_new(), To::L(ct), To::Next);
    a.jump(JEQ_K, ct_delete(), To::Next, To::L(acc));
    a.bind(ct);
    // The family decides which address attribute to look for; others are not ours to judge.
    a.stmt(LD_B_ABS, FAMILY_OFFSET);
    a.jump(JEQ_K, af_inet, To::L(is4), To::Next);
    a.jump(JEQ_K, af_inet6, To::L(is6), To::L(acc));
    a.bind(is4);
    a.stmt(LD_IMM, CTA_IP_V4_SRC as u32);
    a.ja(find);
    a.bind(is6);
    a.stmt(LD_IMM, CTA_IP_V6_SRC as u32);
    a.bind(find);
    a.stmt(ST, 0); // M[0] = the address attribute's type
                   // CTA_TUPLE_REPLY among the top-level attributes, then CTA_TUPLE_IP in it, then the
                   // address in that. Any of them missing (0): accept, user space decides.
    a.stmt(LD_IMM, ATTRS_OFFSET);
    a.stmt(LDX_IMM, CTA_TUPLE_REPLY as u32);
    a.stmt(LD_W_ABS, AD_NLATTR);
    a.jump(JEQ_K, 0, To::L(acc), To::Next);
    a.stmt(LDX_IMM, CTA_TUPLE_IP as u32);
    a.stmt(LD_W_ABS, AD_NLATTR_NEST);
    a.jump(JEQ_K, 0, To::L(acc), To::Next);
    a.stmt(LDX_MEM, 0);
    a.stmt(LD_W_ABS, AD_NLATTR_NEST);
    a.jump(JEQ_K, 0, To::L(acc), To::Next);
    a.stmt(TAX, 0); // X = offset of the address attribute
                    // The kernel found it inside the packet; an address of the wrong length is malformed:
                    // accept rather than read past it.
    a.stmt(LD_B_ABS, FAMILY_OFFSET);
    a.jump(JEQ_K, af_inet, To::Next, To::L(v6));
    a.stmt(LD_H_IND, 0);
    a.jump(JEQ_K, host_u16_as_loaded(8), To::Next, To::L(acc));
    a.ja(body4);
    a.bind(v6);
    a.stmt(LD_H_IND, 0);
    a.jump(JEQ_K, host_u16_as_loaded(20), To::Next, To::L(acc));
    a.ja(body6);
    a.bind(acc);
    a.stmt(RET_K, ACCEPT);
    a.bind(body4);
    a.raw(v4_body);
    a.bind(body6);
    a.raw(v6_body);
    a.finish()
}

/// Self-contained: A holds the value; accept when it is one of `values` (sorted, distinct), drop
/// otherwise. One `jeq` per value, in chunks whose `ret ACCEPT` stays within a one-byte jump:
/// `jeq v0 … jeq vm-1, (ja +1 | ret DROP), ret ACCEPT`.
fn any_of(values: &[u32]) -> Vec<sock_filter> {
    if values.is_empty() {
        return vec![stmt(RET_K, DROP)];
    }
    let mut out = Vec::with_capacity(values.len() + 2 * values.len().div_ceil(MAX_COND_JUMP));
    let chunks = values.chunks(MAX_COND_JUMP);
    let last = chunks.len().saturating_sub(1);
    for (ci, chunk) in chunks.enumerate() {
        let m = chunk.len();
        for (i, v) in chunk.iter().enumerate() {
            // From position i to ret ACCEPT at position m + 1: m - i instructions ahead (≤ 255).
            out.push(jump(JEQ_K, *v, (m - i) as u8, 0));
        }
        if ci == last {
            out.push(stmt(RET_K, DROP));
        } else {
            out.push(stmt(JA, 1));
        }
        out.push(stmt(RET_K, ACCEPT));
    }
    out
}

/// Self-contained: X is the offset of an IPv6 address attribute; accept when the address is one
/// of `addrs` (sorted, distinct, all sharing their first `level` words). A trie on the four
/// big-endian words: addresses from one prefix share the compares of that prefix, so a set of pod
/// addresses (a few /64s) costs about two instructions per address.
fn trie(level: usize, addrs: &[[u32; 4]]) -> Vec<sock_filter> {
    if addrs.is_empty() {
        return vec![stmt(RET_K, DROP)];
    }
    let mut out = vec![stmt(LD_W_IND, NLA_HDRLEN + 4 * level as u32)];
    if level == 3 {
        let last: Vec<u32> = addrs.iter().map(|a| a[3]).collect();
        out.extend(any_of(&last));
        return out;
    }
    let mut rest = addrs;
    while let Some(first) = rest.first() {
        let v = first[level];
        let n = rest.iter().take_while(|a| a[level] == v).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let sub = trie(level + 1, group);
        // On a mismatch skip the subtree (A still holds this word); on a match enter it. After
        // a match no other value at this level can match, so the subtree ends in ret.
        if sub.len() <= MAX_COND_JUMP {
            out.push(jump(JEQ_K, v, 0, sub.len() as u8));
        } else {
            out.push(jump(JEQ_K, v, 1, 0));
            out.push(stmt(JA, sub.len() as u32));
        }
        out.extend(sub);
    }
    out.push(stmt(RET_K, DROP));
    out
}

/// A jump target.
#[derive(Debug, Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// A label bound with [`Asm::bind`] further down.
    L(usize),
}

/// A tiny assembler with forward labels, for the hand-written part of the program.
#[derive(Default)]
struct Asm {
    code: Vec<sock_filter>,
    labels: Vec<Option<usize>>,
    /// (instruction, label of jt, label of jf); `ja` uses the jt slot.
    fixups: Vec<(usize, To, To)>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        if let Some(slot) = self.labels.get_mut(l) {
            *slot = Some(self.code.len());
        }
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(stmt(code, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.fixups.push((self.code.len(), jt, jf));
        self.code.push(jump(code, k, 0, 0));
    }
    fn ja(&mut self, l: usize) {
        self.fixups.push((self.code.len(), To::L(l), To::Next));
        self.code.push(stmt(JA, 0));
    }
    fn raw(&mut self, code: Vec<sock_filter>) {
        self.code.extend(code);
    }
    /// Resolves the labels. `None` when a label is unbound or behind its jump, or a conditional
    /// jump is out of reach (a bug in the layout above; the tests cover every shape).
    fn finish(mut self) -> Option<Vec<sock_filter>> {
        let labels = self.labels;
        let off = |at: usize, to: To| -> Option<usize> {
            match to {
                To::Next => Some(0),
                To::L(l) => labels.get(l).copied().flatten()?.checked_sub(at + 1),
            }
        };
        for (at, jt, jf) in self.fixups {
            let (t, f) = (off(at, jt)?, off(at, jf)?);
            let insn = self.code.get_mut(at)?;
            if insn.code == JA {
                insn.k = u32::try_from(t).ok()?;
            } else {
                insn.jt = u8::try_from(t).ok()?;
                insn.jf = u8::try_from(f).ok()?;
            }
        }
        Some(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::MsgWriter;
    use crate::flow::{Family, Status, Tuple};
    use crate::request::put_tuple;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Classic BPF as the kernel runs it, for the opcodes this module emits. `None` when the
    /// program is one the kernel would refuse (bad jump, unknown opcode, no `ret`).
    fn run(prog: &[sock_filter], pkt: &[u8]) -> Option<u32> {
        check(prog)?;
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; 16];
        let mut pc = 0usize;
        let load = |off: u32, size: usize| -> Option<u32> {
            let off = off as usize;
            let b = pkt.get(off..off.checked_add(size)?)?;
            Some(b.iter().fold(0u32, |acc, &v| (acc << 8) | v as u32))
        };
        loop {
            let i = prog.get(pc)?;
            pc += 1;
            match i.code {
                LD_W_ABS | LD_H_ABS | LD_B_ABS if i.k >= libc::SKF_AD_OFF as u32 => {
                    a = match i.k {
                        AD_NLATTR => nlattr(pkt, a, x),
                        AD_NLATTR_NEST => nlattr_nest(pkt, a, x),
                        _ => return None,
                    }
                }
                // An out-of-bounds load ends the program with 0, like the kernel.
                LD_W_ABS => match load(i.k, 4) {
                    Some(v) => a = v,
                    None => return Some(0),
                },
                LD_H_ABS => match load(i.k, 2) {
                    Some(v) => a = v,
                    None => return Some(0),
                },
                LD_B_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return Some(0),
                },
                LD_W_IND => match load(x.wrapping_add(i.k), 4) {
                    Some(v) => a = v,
                    None => return Some(0),
                },
                LD_H_IND => match load(x.wrapping_add(i.k), 2) {
                    Some(v) => a = v,
                    None => return Some(0),
                },
                LD_W_LEN => a = pkt.len() as u32,
                LD_IMM => a = i.k,
                LDX_IMM => x = i.k,
                LDX_MEM => x = *mem.get(i.k as usize)?,
                ST => *mem.get_mut(i.k as usize)? = a,
                TAX => x = a,
                JA => pc += i.k as usize,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                JGE_K => pc += if a >= i.k { i.jt } else { i.jf } as usize,
                JSET_K => pc += if a & i.k != 0 { i.jt } else { i.jf } as usize,
                RET_K => return Some(i.k),
                _ => return None,
            }
        }
    }

    /// The kernel's static checks (`bpf_check_classic`) that matter here.
    fn check(prog: &[sock_filter]) -> Option<()> {
        if prog.is_empty() || prog.len() > MAX_INSNS {
            return None;
        }
        for (pc, i) in prog.iter().enumerate() {
            let rest = prog.len() - pc - 1;
            match i.code {
                JA if i.k as usize >= rest => return None,
                JEQ_K | JGE_K | JSET_K if i.jt as usize >= rest || i.jf as usize >= rest => {
                    return None
                }
                ST | LDX_MEM if i.k >= 16 => return None,
                _ => {}
            }
        }
        (prog.last()?.code == RET_K).then_some(())
    }

    fn nla(pkt: &[u8], at: usize) -> Option<(usize, u16)> {
        let h = pkt.get(at..at + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let kind = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff; // without NESTED/BYTEORDER
        Some((len, kind))
    }

    /// `nla_find(head, len, x)`: offset of the match, or 0.
    fn nla_find(pkt: &[u8], head: usize, len: usize, x: u32) -> u32 {
        let (mut pos, mut rem) = (head, len as isize);
        // nla_ok: rem >= 4, nla_len >= 4, nla_len <= rem.
        while rem >= 4 {
            let Some((l, kind)) = nla(pkt, pos) else {
                return 0;
            };
            if l < 4 || l as isize > rem {
                return 0;
            }
            if kind as u32 == x {
                return pos as u32;
            }
            let step = (l + 3) & !3;
            pos += step;
            rem -= step as isize;
        }
        0
    }

    /// `__skb_get_nlattr` (net/core/filter.c).
    fn nlattr(pkt: &[u8], a: u32, x: u32) -> u32 {
        let len = pkt.len();
        if len < 4 || a as usize > len - 4 {
            return 0;
        }
        nla_find(pkt, a as usize, len - a as usize, x)
    }

    /// `__skb_get_nlattr_nest`: the nest at A must be `nla_ok`, then `nla_find_nested`.
    fn nlattr_nest(pkt: &[u8], a: u32, x: u32) -> u32 {
        let len = pkt.len();
        if len < 4 || a as usize > len - 4 {
            return 0;
        }
        let a = a as usize;
        let Some((l, _)) = nla(pkt, a) else {
            return 0;
        };
        if l < 4 || l > len - a {
            return 0;
        }
        nla_find(pkt, a + 4, l - 4, x)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A NEW event as the kernel sends it for a DNAT'd TCP flow (type NEW, CREATE|EXCL, both
    /// tuples, status, id), built with the crate's own writer.
    fn event(orig_src: &str, vip: &str, backend: &str) -> Vec<u8> {
        let status = Status::CONFIRMED | Status::DST_NAT;
        ct_event(IPCTNL_MSG_CT_NEW, orig_src, vip, backend, Some(status))
    }

    /// A conntrack event of type `kind` (NEW: with CREATE|EXCL, DELETE: without flags, like the
    /// kernel's) for a TCP flow from `orig_src` to `dst`:80 whose reply comes from `reply_src`,
    /// with this status (`None`: no `CTA_STATUS` attribute).
    fn ct_event(
        kind: u16,
        orig_src: &str,
        dst: &str,
        reply_src: &str,
        status: Option<Status>,
    ) -> Vec<u8> {
        let tcp = crate::consts::IPPROTO_TCP;
        let orig = Tuple::ports(ip(orig_src), 40000, ip(dst), 80, tcp);
        let reply_port = if reply_src == dst { 80 } else { 8080 };
        let reply = Tuple::ports(ip(reply_src), reply_port, ip(orig_src), 40000, tcp);
        let flags = if kind == IPCTNL_MSG_CT_NEW {
            crate::nl::NLM_F_CREATE | crate::nl::NLM_F_EXCL
        } else {
            0
        };
        let mut w = MsgWriter::new();
        let m = w.begin_msg(msg_type(kind), flags, 0, Family::of(&orig.src).af(), 0, 0);
        put_tuple(&mut w, CTA_TUPLE_ORIG, &orig);
        put_tuple(&mut w, CTA_TUPLE_REPLY, &reply);
        if let Some(status) = status {
            w.put_be32(CTA_STATUS, status.bits());
        }
        w.put_be32(CTA_ID, 7);
        w.end_msg(m);
        w.as_bytes().to_vec()
    }

    /// The `i`-th of the 768 IPv4 documentation addresses.
    fn doc_v4(i: usize) -> IpAddr {
        let nets = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
        let n = nets[(i / 256) % 3];
        IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], (i % 256) as u8))
    }

    use crate::test_fixtures::{fixture, ALL as FIXTURES};

    fn reply_src(pkt: &[u8]) -> IpAddr {
        crate::parse_message(pkt).unwrap().unwrap().reply.src
    }

    #[test]
    fn real_kernel_messages_pass_only_when_their_reply_source_is_in_the_set() {
        let others = [ip("192.0.2.200"), ip("2001:db8:ffff::1")];
        for name in FIXTURES {
            let pkt = fixture(name);
            let src = reply_src(&pkt);
            let with = reply_src_program([src, others[0], others[1]]).unwrap();
            assert_eq!(run(&with, &pkt), Some(ACCEPT), "{name}: {src} in the set");
            let without = reply_src_program(others).unwrap();
            assert_eq!(
                run(&without, &pkt),
                Some(DROP),
                "{name}: {src} not in the set"
            );
        }
    }

    #[test]
    fn ipv4_event_in_set_accepted_and_not_in_set_dropped() {
        let pkt = event("192.0.2.2", "198.51.100.10", "203.0.113.7");
        assert_eq!(reply_src(&pkt), ip("203.0.113.7"));
        let prog = reply_src_program([ip("203.0.113.9"), ip("203.0.113.7")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(ACCEPT));
        let prog = reply_src_program([ip("203.0.113.9"), ip("203.0.113.8")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(DROP));
        // The original source or destination in the set is not a match.
        let prog = reply_src_program([ip("192.0.2.2"), ip("198.51.100.10")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(DROP));
        // Only IPv6 addresses in the set: an IPv4 event cannot match.
        let prog = reply_src_program([ip("2001:db8::7")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(DROP));
    }

    #[test]
    fn ipv6_compares_all_four_words() {
        let pkt = event("2001:db8:1::2", "2001:db8:3::10", "2001:db8:2::7");
        let prog = reply_src_program([ip("2001:db8:2::7")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(ACCEPT));
        // Differs in exactly one word each: never a match.
        for near in [
            "2001:db8:3::7",
            "2001:db8:2:1::7",
            "2001:db8:2::1:0:7",
            "2001:db8:2::8",
        ] {
            let prog = reply_src_program([ip(near)]).unwrap();
            assert_eq!(run(&prog, &pkt), Some(DROP), "{near}");
        }
        // Among many siblings and cousins, and next to IPv4 addresses.
        let mut set: Vec<IpAddr> = (1..300u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, i)))
            .collect();
        set.extend((1..50u16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 7))));
        set.push(ip("203.0.113.7"));
        let prog = reply_src_program(set.iter().copied()).unwrap();
        assert_eq!(run(&prog, &pkt), Some(ACCEPT));
        set.retain(|a| *a != ip("2001:db8:2::7"));
        let prog = reply_src_program(set.iter().copied()).unwrap();
        assert_eq!(run(&prog, &pkt), Some(DROP));
    }

    #[test]
    fn an_empty_set_drops_every_conntrack_event_and_nothing_else() {
        let prog = reply_src_program([]).unwrap();
        for name in FIXTURES {
            assert_eq!(run(&prog, &fixture(name)), Some(DROP), "{name}");
        }
        let mut destroy = event("192.0.2.2", "198.51.100.10", "203.0.113.7");
        destroy[4..6].copy_from_slice(&msg_type(IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        assert_eq!(run(&prog, &destroy), Some(DROP));
        let mut w = MsgWriter::new();
        let m = w.begin_bare_msg(crate::nl::NLMSG_DONE, 0, 1);
        w.put_be32(1, 0);
        w.end_msg(m);
        assert_eq!(run(&prog, w.as_bytes()), Some(ACCEPT));
    }

    #[test]
    fn destroy_events_are_judged_like_new_ones() {
        let mut pkt = event("192.0.2.2", "198.51.100.10", "203.0.113.7");
        pkt[4..6].copy_from_slice(&msg_type(IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        let prog = reply_src_program([ip("203.0.113.7")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(ACCEPT));
        let prog = reply_src_program([ip("203.0.113.8")]).unwrap();
        assert_eq!(run(&prog, &pkt), Some(DROP));
    }

    #[test]
    fn other_messages_are_accepted() {
        let prog = reply_src_program([ip("203.0.113.8")]).unwrap();
        // Another conntrack message type (GET), another subsystem (expectations), NLMSG_ERROR.
        let base = event("192.0.2.2", "198.51.100.10", "203.0.113.7");
        for kind in [
            msg_type(IPCTNL_MSG_CT_GET),
            (2 << 8) | IPCTNL_MSG_CT_NEW,
            crate::nl::NLMSG_ERROR,
        ] {
            let mut pkt = base.clone();
            pkt[4..6].copy_from_slice(&kind.to_ne_bytes());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "type {kind:#x}");
        }
        // An unknown family byte: not ours to judge.
        let mut pkt = base.clone();
        pkt[16] = libc::AF_BRIDGE as u8;
        assert_eq!(run(&prog, &pkt), Some(ACCEPT));
    }

    #[test]
    fn unreadable_conntrack_messages_fail_open() {
        let prog = reply_src_program([ip("203.0.113.8")]).unwrap();
        let pkt = event("192.0.2.2", "198.51.100.10", "203.0.113.7");
        assert_eq!(run(&prog, &pkt), Some(DROP));
        // Every truncation before the end of the reply tuple is accepted: the kernel's lookups
        // only see attributes that fit whole. From there on the address is readable: dropped.
        let end = reply_tuple_end(&pkt);
        for n in 0..pkt.len() {
            let want = if n < end { ACCEPT } else { DROP };
            assert_eq!(
                run(&prog, &pkt[..n]),
                Some(want),
                "truncated to {n} of {} bytes",
                pkt.len()
            );
        }
        // A message without a reply tuple.
        let mut w = MsgWriter::new();
        let m = w.begin_msg(
            msg_type(IPCTNL_MSG_CT_NEW),
            0x600,
            1,
            libc::AF_INET as u8,
            0,
            0,
        );
        w.put_be32(CTA_STATUS, 0);
        w.end_msg(m);
        assert_eq!(run(&prog, w.as_bytes()), Some(ACCEPT));
        // An IPv4 source of the wrong length.
        let mut w = MsgWriter::new();
        let m = w.begin_msg(
            msg_type(IPCTNL_MSG_CT_NEW),
            0x600,
            1,
            libc::AF_INET as u8,
            0,
            0,
        );
        let r = w.begin_nest(CTA_TUPLE_REPLY);
        let i = w.begin_nest(CTA_TUPLE_IP);
        w.put(CTA_IP_V4_SRC, &[203, 0, 113]);
        w.end_nest(i);
        w.end_nest(r);
        w.end_msg(m);
        assert_eq!(run(&prog, w.as_bytes()), Some(ACCEPT));
        // The same with the empty set: dropped, nothing could match.
        assert_eq!(
            run(&reply_src_program([]).unwrap(), w.as_bytes()),
            Some(DROP)
        );
    }

    /// Where the reply tuple attribute ends.
    fn reply_tuple_end(pkt: &[u8]) -> usize {
        attr_end(pkt, CTA_TUPLE_REPLY)
    }

    /// Where the top-level attribute of type `kind` ends.
    fn attr_end(pkt: &[u8], kind: u16) -> usize {
        let mut off = ATTRS_OFFSET as usize;
        while let Some((len, k)) = nla(pkt, off) {
            if k == kind {
                return off + len;
            }
            off += (len + 3) & !3;
        }
        panic!("no attribute {kind}");
    }

    #[test]
    fn fixture_bytes_under_random_corruption_never_break_the_program() {
        let progs = [
            reply_src_program([ip("203.0.113.10"), ip("2001:db8::10")]).unwrap(),
            dnat_program(),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for prog in &progs {
            for name in FIXTURES {
                let pkt = fixture(name);
                for _ in 0..500 {
                    let mut p = pkt.clone();
                    for _ in 0..4 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let at = (seed as usize) % p.len();
                        p[at] = (seed >> 32) as u8;
                    }
                    let cut = (seed >> 40) as usize % (p.len() + 1);
                    let got = run(prog, &p[..cut]);
                    assert!(got == Some(ACCEPT) || got == Some(DROP), "{name}");
                }
            }
        }
    }

    /// (client, VIP, backend) of a DNAT'd flow, per family.
    const DNAT_V4: (&str, &str, &str) = ("192.0.2.2", "198.51.100.10", "203.0.113.7");
    const DNAT_V6: (&str, &str, &str) = ("2001:db8:1::2", "2001:db8:3::10", "2001:db8:2::7");

    /// A DNAT'd (`dnat`) or plain event of type `kind`, as the kernel would send it.
    fn nat_event(kind: u16, (client, vip, backend): (&str, &str, &str), dnat: bool) -> Vec<u8> {
        let mut status = Status::CONFIRMED | Status::SEEN_REPLY | Status::ASSURED;
        if kind == IPCTNL_MSG_CT_DELETE {
            status.insert(Status::DYING);
        }
        if dnat {
            status.insert(Status::DST_NAT | Status::DST_NAT_DONE | Status::SRC_NAT_DONE);
            ct_event(kind, client, vip, backend, Some(status))
        } else {
            status.insert(Status::SRC_NAT_DONE | Status::DST_NAT_DONE);
            ct_event(kind, client, vip, vip, Some(status))
        }
    }

    #[test]
    fn dnat_program_passes_the_kernels_checks() {
        let prog = dnat_program();
        assert!(check(&prog).is_some());
        // Small and fixed: the length the docs and the kernel test report.
        assert_eq!(prog.len(), 16);
        assert!(prog.iter().any(|i| i.code == JSET_K && i.k == 1 << 5));
    }

    #[test]
    fn dnat_program_accepts_dnat_events_and_drops_the_others() {
        let prog = dnat_program();
        for (fam, addrs) in [("ipv4", DNAT_V4), ("ipv6", DNAT_V6)] {
            for (kname, kind) in [("NEW", IPCTNL_MSG_CT_NEW), ("DELETE", IPCTNL_MSG_CT_DELETE)] {
                let dnat = nat_event(kind, addrs, true);
                let f = crate::parse_message(&dnat).unwrap().unwrap();
                assert!(f.is_dnat() && f.reply.src == ip(addrs.2), "{f:?}");
                assert_eq!(run(&prog, &dnat), Some(ACCEPT), "{fam} {kname} DNAT'd");
                let plain = nat_event(kind, addrs, false);
                let f = crate::parse_message(&plain).unwrap().unwrap();
                assert!(!f.is_dnat() && f.reply.src == ip(addrs.1), "{f:?}");
                assert_eq!(run(&prog, &plain), Some(DROP), "{fam} {kname} plain");
            }
        }
        // The bit alone decides: DST_NAT without anything else passes, every other bit
        // (SNAT'd, masqueraded, the NAT_DONE bits of a flow NAT left alone) does not.
        let (c, v, b) = DNAT_V4;
        let only = ct_event(IPCTNL_MSG_CT_NEW, c, v, b, Some(Status::DST_NAT));
        assert_eq!(run(&prog, &only), Some(ACCEPT));
        let others = Status::from_bits_retain(!Status::DST_NAT.bits());
        let snat = ct_event(IPCTNL_MSG_CT_NEW, c, v, b, Some(others));
        assert_eq!(run(&prog, &snat), Some(DROP));
        let zero = ct_event(IPCTNL_MSG_CT_DELETE, c, v, v, Some(Status::empty()));
        assert_eq!(run(&prog, &zero), Some(DROP));
    }

    #[test]
    fn dnat_program_on_real_kernel_messages_follows_the_status() {
        let prog = dnat_program();
        let mut seen = [0; 2];
        for name in FIXTURES {
            let pkt = fixture(name);
            let dnat = crate::parse_message(&pkt).unwrap().unwrap().is_dnat();
            seen[usize::from(dnat)] += 1;
            let want = if dnat { ACCEPT } else { DROP };
            assert_eq!(run(&prog, &pkt), Some(want), "{name}: DNAT'd {dnat}");
            // The same entry as a destroy event: judged alike.
            let mut destroy = pkt.clone();
            destroy[4..6].copy_from_slice(&msg_type(IPCTNL_MSG_CT_DELETE).to_ne_bytes());
            assert_eq!(run(&prog, &destroy), Some(want), "{name} as DELETE");
        }
        assert!(seen[0] > 0 && seen[1] > 0, "both kinds among the fixtures");
    }

    #[test]
    fn dnat_program_accepts_other_messages() {
        let prog = dnat_program();
        // A plain flow's event under another type (GET, the expectation subsystem's NEW and
        // DELETE, NLMSG_ERROR): only the conntrack NEW/DELETE types are judged.
        let base = nat_event(IPCTNL_MSG_CT_NEW, DNAT_V4, false);
        assert_eq!(run(&prog, &base), Some(DROP));
        for kind in [
            msg_type(IPCTNL_MSG_CT_GET),
            (2 << 8) | IPCTNL_MSG_CT_NEW,
            (2 << 8) | IPCTNL_MSG_CT_DELETE,
            crate::nl::NLMSG_ERROR,
        ] {
            let mut pkt = base.clone();
            pkt[4..6].copy_from_slice(&kind.to_ne_bytes());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "type {kind:#x}");
        }
        let mut w = MsgWriter::new();
        let m = w.begin_bare_msg(crate::nl::NLMSG_DONE, 0, 1);
        w.put_be32(1, 0);
        w.end_msg(m);
        assert_eq!(run(&prog, w.as_bytes()), Some(ACCEPT));
        // The family byte does not matter: the status is the same attribute in every family.
        let mut pkt = base.clone();
        pkt[16] = libc::AF_BRIDGE as u8;
        assert_eq!(run(&prog, &pkt), Some(DROP));
    }

    #[test]
    fn dnat_program_fails_open_on_events_it_cannot_read() {
        let prog = dnat_program();
        let (c, v, _) = DNAT_V4;
        // No status attribute at all.
        for kind in [IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE] {
            let pkt = ct_event(kind, c, v, v, None);
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "type {kind} without status");
        }
        // A status attribute of the wrong length (a flag-free u16, a u64 of zeros, empty).
        for payload in [&[0u8, 0][..], &[0; 8][..], &[][..]] {
            let mut w = MsgWriter::new();
            let m = w.begin_msg(
                msg_type(IPCTNL_MSG_CT_NEW),
                0x600,
                1,
                libc::AF_INET as u8,
                0,
                0,
            );
            w.put(CTA_STATUS, payload);
            w.put_be32(CTA_ID, 7);
            w.end_msg(m);
            assert_eq!(
                run(&prog, w.as_bytes()),
                Some(ACCEPT),
                "status of {} bytes",
                payload.len()
            );
        }
        // A status nested somewhere (inside a tuple) is not the entry's: not found, accepted.
        let mut w = MsgWriter::new();
        let m = w.begin_msg(
            msg_type(IPCTNL_MSG_CT_NEW),
            0x600,
            1,
            libc::AF_INET as u8,
            0,
            0,
        );
        let n = w.begin_nest(CTA_TUPLE_ORIG);
        w.put_be32(CTA_STATUS, 0);
        w.end_nest(n);
        w.end_msg(m);
        assert_eq!(run(&prog, w.as_bytes()), Some(ACCEPT));
        // Every truncation before the end of the status attribute is accepted (the kernel's
        // lookup only sees attributes that fit whole); from there on the status is readable.
        for dnat in [false, true] {
            let pkt = nat_event(IPCTNL_MSG_CT_NEW, DNAT_V4, dnat);
            let end = attr_end(&pkt, CTA_STATUS);
            for n in 0..=pkt.len() {
                let want = if n < end || dnat { ACCEPT } else { DROP };
                assert_eq!(
                    run(&prog, &pkt[..n]),
                    Some(want),
                    "DNAT'd {dnat}, truncated to {n} of {} bytes",
                    pkt.len()
                );
            }
        }
    }

    #[test]
    fn many_addresses_stay_within_reach_and_limits() {
        // Three chunks of compares: both ends of the set and the middle still match.
        let set: Vec<IpAddr> = (0..768).map(doc_v4).collect();
        let prog = reply_src_program(set.iter().copied()).unwrap();
        assert!(prog.len() <= MAX_INSNS);
        for k in [0usize, 254, 255, 256, 300, 511, 512, 767] {
            let pkt = event("192.0.2.2", "198.51.100.10", &set[k].to_string());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "{}", set[k]);
        }
        let odd: Vec<IpAddr> = (0..768).filter(|i| i % 2 == 1).map(doc_v4).collect();
        let prog = reply_src_program(odd.iter().copied()).unwrap();
        for k in [0usize, 256, 766] {
            let pkt = event("192.0.2.2", "198.51.100.10", &doc_v4(k).to_string());
            assert_eq!(run(&prog, &pkt), Some(DROP), "{}", doc_v4(k));
            let pkt = event("192.0.2.2", "198.51.100.10", &doc_v4(k + 1).to_string());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "{}", doc_v4(k + 1));
        }
        // 500 IPv6 addresses in a few /64s: compact, and still exact.
        let set6: Vec<IpAddr> = (0..500u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, i % 4, 0, 0, 0, 1 + i)))
            .collect();
        let prog = reply_src_program(set6.iter().copied()).unwrap();
        assert!(prog.len() < 1200, "{}", prog.len());
        for a in [set6[0], set6[3], set6[250], set6[499]] {
            let pkt = event("2001:db8:1::2", "2001:db8:3::10", &a.to_string());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "{a}");
        }
        let pkt = event("2001:db8:1::2", "2001:db8:3::10", "2001:db8:0:3::2");
        assert_eq!(run(&prog, &pkt), Some(DROP));
    }

    /// Addresses that differ from their second word on: one subtree each.
    fn scattered_v6(n: u16) -> impl Iterator<Item = IpAddr> {
        (0..n).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i, i, 1, 2, 3, i)))
    }

    #[test]
    fn scattered_ipv6_addresses_still_match() {
        let set: Vec<IpAddr> = scattered_v6(300).collect();
        let prog = reply_src_program(set.iter().copied()).unwrap();
        for a in [set[0], set[150], set[299]] {
            let pkt = event("2001:db8:1::2", "2001:db8:3::10", &a.to_string());
            assert_eq!(run(&prog, &pkt), Some(ACCEPT), "{a}");
        }
        // Right second word, wrong third or last.
        for a in ["2001:db8:5:5:1:2:3:6", "2001:db8:5:5:1:3:3:5"] {
            let pkt = event("2001:db8:1::2", "2001:db8:3::10", a);
            assert_eq!(run(&prog, &pkt), Some(DROP), "{a}");
        }
    }

    #[test]
    fn over_the_limit_there_is_no_filter() {
        let v6 = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
        let too_many = (0..768).map(doc_v4).chain((0..257).map(v6));
        assert!(reply_src_program(too_many).is_none());
        let just_enough = (0..768).map(doc_v4).chain((0..256).map(v6));
        assert!(reply_src_program(just_enough).is_some());
        // Duplicates do not count.
        assert!(reply_src_program((0..5 * MAX_ADDRESSES).map(|i| doc_v4(i % 10))).is_some());
        // Scattered IPv6 addresses hit the instruction limit before the address limit.
        assert!(reply_src_program(scattered_v6(MAX_ADDRESSES as u16)).is_none());
    }

    #[test]
    fn programs_are_deterministic_whatever_the_order() {
        let a = [ip("203.0.113.9"), ip("2001:db8::1"), ip("203.0.113.1")];
        let b = [
            ip("203.0.113.1"),
            ip("203.0.113.9"),
            ip("2001:db8::1"),
            ip("203.0.113.1"),
        ];
        let (pa, pb) = (reply_src_program(a).unwrap(), reply_src_program(b).unwrap());
        let flat = |p: &[sock_filter]| {
            p.iter()
                .map(|i| (i.code, i.jt, i.jf, i.k))
                .collect::<Vec<_>>()
        };
        assert_eq!(flat(&pa), flat(&pb));
    }
}
