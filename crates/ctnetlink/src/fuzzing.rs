//! A fuzzing engine for the codec that runs on the stable toolchain (no libFuzzer, no
//! sanitizers): it generates and mutates netlink datagrams, starting from real kernel bytes
//! (`tests/fixtures/*.bin`) and from messages the crate's own encoders build, and feeds each one
//! to every parse entry point, public and internal. A panic is a finding; the input is kept to
//! reproduce it.
//!
//! Not part of the public API: compiled only with the `fuzzing` feature (for the long
//! release-mode run, `cargo run --release -p ctnetlink --features fuzzing --example fuzz_stable`,
//! and the libFuzzer target in `fuzz/`) and in the crate's unit tests, which run a short slice
//! of it on every `cargo test`.

#![allow(missing_docs)]

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};

use crate::attr::{Attrs, MsgWriter};
use crate::consts::*;

const NLMSGERR_ATTR_MSG: u16 = 1;
use crate::attr::F_NESTED as NLA_F_NESTED;
use crate::flow::parse_flow;
use crate::nl::{Messages, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_MULTI};
use crate::request::{self, DeleteKey, FlowUpdate, NewFlow};
use crate::{
    parse_events, parse_message, CpuStats, Filter, GlobalStats, Status, TcpState, Tuple, TupleMatch,
};

/// splitmix64: small, fast, and reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// The kernel's own bytes, from the crate's fixtures.
pub fn fixtures() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read fixture"))
        .collect()
}

fn error_message(errno: i32, seq: u32, extack: Option<&str>, capped: bool) -> Vec<u8> {
    let mut inner = MsgWriter::new();
    let m = inner.begin_msg(msg_type(IPCTNL_MSG_CT_DELETE), 1, seq, 2, 0, 0);
    inner.put_be32(CTA_ID, 7);
    inner.end_msg(m);
    let echoed: &[u8] = if capped {
        &inner.as_bytes()[..16]
    } else {
        inner.as_bytes()
    };
    let mut payload = (-errno).to_ne_bytes().to_vec();
    payload.extend_from_slice(echoed);
    let mut flags = 0u16;
    if let Some(text) = extack {
        flags |= NLM_F_ACK_TLVS;
        let mut tlv = MsgWriter::new();
        let mut s = text.as_bytes().to_vec();
        s.push(0);
        tlv.put(NLMSGERR_ATTR_MSG, &s);
        payload.extend_from_slice(tlv.as_bytes());
    }
    if capped {
        flags |= NLM_F_CAPPED;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&payload);
    out
}

fn done_message(seq: u32) -> Vec<u8> {
    let mut w = MsgWriter::new();
    let m = w.begin_bare_msg(NLMSG_DONE, NLM_F_MULTI, seq);
    w.end_msg(m);
    w.as_bytes().to_vec()
}

fn stats_messages() -> Vec<Vec<u8>> {
    let mut g = MsgWriter::new();
    let m = g.begin_msg(msg_type(IPCTNL_MSG_CT_GET_STATS), 0, 1, 0, 0, 0);
    g.put_be32(CTA_STATS_GLOBAL_ENTRIES, 1234);
    g.put_be32(CTA_STATS_GLOBAL_MAX_ENTRIES, 262_144);
    g.end_msg(m);
    let mut c = MsgWriter::new();
    for cpu in 0..2u16 {
        let m = c.begin_msg(
            msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            NLM_F_MULTI,
            2,
            0,
            0,
            cpu,
        );
        for (i, k) in [
            CTA_STATS_FOUND,
            CTA_STATS_INVALID,
            CTA_STATS_INSERT,
            CTA_STATS_INSERT_FAILED,
            CTA_STATS_DROP,
            CTA_STATS_EARLY_DROP,
            CTA_STATS_ERROR,
            CTA_STATS_SEARCH_RESTART,
            CTA_STATS_CLASH_RESOLVE,
            CTA_STATS_CHAIN_TOOLONG,
        ]
        .into_iter()
        .enumerate()
        {
            c.put_be32(k, i as u32 * 3 + u32::from(cpu));
        }
        c.end_msg(m);
    }
    vec![g.as_bytes().to_vec(), c.as_bytes().to_vec()]
}

/// Messages our encoders build (creates carry both tuples, NAT, protoinfo; IPv4 and IPv6; ICMP).
fn encoded() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let tcp4 = Tuple::ports(ip("192.0.2.2"), 40000, ip("198.51.100.10"), 80, IPPROTO_TCP);
    let udp6 = Tuple::ports(
        ip("2001:db8:1::2"),
        5353,
        ip("2001:db8:3::10"),
        53,
        IPPROTO_UDP,
    );
    let icmp = Tuple {
        src: ip("192.0.2.2"),
        dst: ip("198.51.100.1"),
        proto: IPPROTO_ICMP,
        l4: crate::L4::Icmp {
            kind: 8,
            code: 0,
            id: 77,
        },
    };
    let mut syn = NewFlow::established(tcp4, Some((ip("203.0.113.7"), 8080)));
    syn.status = Status::empty();
    syn.tcp_state = Some(TcpState::SYN_SENT);
    syn.mark = Some(9);
    syn.zone = 5;
    let flows = [
        syn,
        NewFlow::established(udp6, Some((ip("2001:db8:2::7"), 5353))),
        NewFlow::established(icmp, None),
    ];
    for nf in &flows {
        let mut w = MsgWriter::new();
        request::create(&mut w, 1, nf).expect("create");
        out.push(w.as_bytes().to_vec());
        let key = DeleteKey {
            family: crate::Family::of(&nf.orig.src),
            reply: nf.orig.inverted(),
            zone: nf.zone,
            id: Some(42),
        };
        let mut w = MsgWriter::new();
        request::delete(&mut w, 2, &key).expect("delete");
        request::get(&mut w, 3, &key).expect("get");
        request::update(
            &mut w,
            4,
            &FlowUpdate {
                key,
                status: Some(Status::SEEN_REPLY),
                tcp_state: Some(TcpState::ESTABLISHED),
                timeout: Some(30),
            },
        )
        .expect("update");
        out.push(w.as_bytes().to_vec());
    }
    let filter = Filter {
        family: Some(crate::Family::Ipv4),
        proto: Some(IPPROTO_TCP),
        orig: TupleMatch {
            src: Some(ip("192.0.2.2")),
            dport: Some(80),
            ..Default::default()
        },
        mark: Some((1, 0xff)),
        status: Some((Status::SEEN_REPLY, Status::SEEN_REPLY)),
        ..Default::default()
    };
    let mut w = MsgWriter::new();
    request::dump(&mut w, 5, Some(crate::Family::Ipv4), &filter);
    request::stats(&mut w, 6);
    request::noop_ack(&mut w, 7);
    out.push(w.as_bytes().to_vec());
    out
}

/// The seed corpus: kernel fixtures, encoded messages, errors, stats, DONE, and whole
/// multi-message datagrams made of them.
pub fn seeds() -> Vec<Vec<u8>> {
    let fx = fixtures();
    assert!(!fx.is_empty(), "no fixtures");
    let mut s = fx.clone();
    s.extend(encoded());
    s.extend(stats_messages());
    s.push(done_message(9));
    s.push(error_message(libc::ENOENT, 3, None, false));
    s.push(error_message(libc::EINVAL, 4, Some("bad tuple"), false));
    s.push(error_message(libc::EPERM, 5, Some("no"), true));
    s.push(error_message(0, 6, None, true));
    // A dump datagram: every fixture, then DONE; an event datagram: the fixtures as events.
    let mut dump: Vec<u8> = fx.concat();
    dump.extend(done_message(1));
    s.push(dump);
    s
}

const INTERESTING_U16: [u16; 12] = [0, 1, 3, 4, 5, 7, 8, 16, 0x7fff, 0x8000, 0xfffc, 0xffff];
const INTERESTING_U32: [u32; 10] = [
    0,
    1,
    4,
    15,
    16,
    17,
    20,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// Offsets of the netlink length fields of `buf` (message headers and attributes, walked
/// leniently as far as they make sense): the fields a length mutation targets.
fn length_fields(buf: &[u8], out: &mut Vec<(usize, bool)>) {
    out.clear();
    let mut off = 0;
    while off + 16 <= buf.len() {
        out.push((off, true));
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let end = (off + len).min(buf.len());
        // Attributes start after the netfilter header (16 + 4).
        let mut a = off + 20;
        let mut budget = 256;
        while a + 4 <= end && budget > 0 {
            budget -= 1;
            out.push((a, false));
            let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
            let kind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]);
            if alen < 4 {
                break;
            }
            // Step into nests (a nest's payload is attributes), else over the attribute.
            if kind & NLA_F_NESTED != 0 || (kind & 0x3fff) <= 3 {
                a += 4;
            } else {
                a += (alen + 3) & !3;
            }
        }
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
}

/// Applies 1 to 8 random mutations to `buf`.
pub fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, seeds: &[Vec<u8>], lens: &mut Vec<(usize, bool)>) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        match rng.below(11) {
            // Bit flip.
            0 | 1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            // Random byte or an interesting one.
            2 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => 0x80,
                    _ => rng.next() as u8,
                };
            }
            // Truncation.
            3 if !buf.is_empty() => {
                let n = rng.below(buf.len());
                buf.truncate(n);
            }
            // A message or attribute length field.
            4 | 5 => {
                length_fields(buf, lens);
                if lens.is_empty() {
                    continue;
                }
                let (off, is_msg) = lens[rng.below(lens.len())];
                if is_msg {
                    let old =
                        u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
                    let v = match rng.below(3) {
                        0 => INTERESTING_U32[rng.below(INTERESTING_U32.len())],
                        1 => old.wrapping_add(rng.below(9) as u32).wrapping_sub(4),
                        _ => (buf.len() - off) as u32,
                    };
                    buf[off..off + 4].copy_from_slice(&v.to_ne_bytes());
                } else {
                    let old = u16::from_ne_bytes([buf[off], buf[off + 1]]);
                    let v = match rng.below(3) {
                        0 => INTERESTING_U16[rng.below(INTERESTING_U16.len())],
                        1 => old.wrapping_add(rng.below(9) as u16).wrapping_sub(4),
                        _ => (buf.len() - off).min(0xffff) as u16,
                    };
                    buf[off..off + 2].copy_from_slice(&v.to_ne_bytes());
                }
            }
            // Attribute type (nested flag, byte-order flag, neighbours of real kinds).
            6 => {
                length_fields(buf, lens);
                let attrs: Vec<usize> = lens.iter().filter(|l| !l.1).map(|l| l.0).collect();
                if attrs.is_empty() {
                    continue;
                }
                let off = attrs[rng.below(attrs.len())] + 2;
                let old = u16::from_ne_bytes([buf[off], buf[off + 1]]);
                let v = match rng.below(3) {
                    0 => old ^ NLA_F_NESTED,
                    1 => (old & 0xc000) | rng.below(24) as u16,
                    _ => rng.next() as u16,
                };
                buf[off..off + 2].copy_from_slice(&v.to_ne_bytes());
            }
            // Splice: a piece of another seed, inserted or appended.
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                if other.is_empty() {
                    continue;
                }
                let a = rng.below(other.len());
                let b = a + rng.below(other.len() - a + 1);
                let at = rng.below(buf.len() + 1);
                let piece = other[a..b].to_vec();
                buf.splice(at..at, piece);
            }
            // A random attribute (sometimes a nest of random attributes) at a 4-aligned spot.
            8 => {
                let mut w = MsgWriter::new();
                let nest = rng.chance(3);
                let n = if nest {
                    w.begin_nest(1 + rng.below(20) as u16)
                } else {
                    0
                };
                for _ in 0..1 + rng.below(3) {
                    let len = rng.below(24);
                    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    w.put(rng.below(24) as u16, &payload);
                }
                if nest {
                    w.end_nest(n);
                }
                let at = rng.below(buf.len() / 4 + 1) * 4;
                buf.splice(at..at, w.as_bytes().iter().copied());
            }
            // Duplicate or delete a region.
            9 if !buf.is_empty() => {
                let a = rng.below(buf.len());
                let b = a + rng.below((buf.len() - a).min(64) + 1);
                if rng.chance(2) {
                    let piece = buf[a..b].to_vec();
                    buf.splice(b..b, piece);
                } else {
                    buf.drain(a..b);
                }
            }
            // The nfgenmsg family byte of the first message.
            _ => {
                if buf.len() > 16 {
                    buf[16] = match rng.below(4) {
                        0 => libc::AF_INET as u8,
                        1 => libc::AF_INET6 as u8,
                        2 => 0,
                        _ => rng.next() as u8,
                    };
                }
            }
        }
    }
    if buf.len() > 1 << 16 {
        buf.truncate(1 << 16);
    }
}

/// Feeds `buf` to every public parse entry point. Returns a value derived from what was parsed,
/// so that nothing can be optimised away.
pub fn exercise(buf: &[u8]) -> u64 {
    let mut acc = 0u64;
    let filter = Filter {
        proto: Some(IPPROTO_TCP),
        reply: TupleMatch {
            src: Some(ip("203.0.113.7")),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Ok(Some(f)) = parse_message(buf) {
        acc = acc
            .wrapping_add(u64::from(f.status.bits()) + u64::from(f.zone))
            .wrapping_add(u64::from(filter.matches(&f)))
            .wrapping_add(f.state_name().map_or(0, str::len) as u64)
            .wrapping_add(f.status.names().count() as u64);
    }
    for m in Messages::new(buf) {
        let Ok(m) = m else {
            acc = acc.wrapping_add(1);
            break;
        };
        if let Ok((errno, msg)) = m.error() {
            acc = acc
                .wrapping_add(errno as u64)
                .wrapping_add(msg.map_or(0, str::len) as u64);
        }
        acc = acc.wrapping_add(u64::from(m.error_seq().unwrap_or(0)));
        if let Ok((g, attrs)) = m.nfgen() {
            if let Ok(f) = parse_flow(g.family, attrs.clone()) {
                acc = acc.wrapping_add(u64::from(f.id.unwrap_or(0)));
            }
            if let Ok(s) = GlobalStats::parse(attrs.clone()) {
                acc = acc
                    .wrapping_add(u64::from(s.entries))
                    .wrapping_add(u64::from(s.utilization() > 0.5));
            }
            if let Ok(s) = CpuStats::parse(g.res_id, attrs.clone()) {
                acc = acc.wrapping_add(s.values().iter().map(|v| u64::from(*v)).sum::<u64>());
            }
            // Walk every attribute and nest with the typed readers.
            acc = acc.wrapping_add(walk(attrs, 0));
        }
    }
    let (events, bad) = parse_events(buf, |k, f| {
        acc = acc.wrapping_add(k as u64 + f.orig.proto as u64);
    });
    acc.wrapping_add(events as u64).wrapping_add(bad as u64)
}

fn walk(attrs: Attrs<'_>, depth: u32) -> u64 {
    let mut acc = 0u64;
    for a in attrs {
        let Ok(a) = a else {
            return acc.wrapping_add(1);
        };
        acc = acc
            .wrapping_add(a.u8("x").map_or(0, u64::from))
            .wrapping_add(a.be16("x").map_or(0, u64::from))
            .wrapping_add(a.be32("x").map_or(0, u64::from))
            .wrapping_add(a.be64("x").unwrap_or(0))
            .wrapping_add(a.ne32("x").map_or(0, u64::from))
            .wrapping_add(a.bytes::<16>("x").map_or(0, |b| u64::from(b[15])));
        if depth < 4 {
            acc = acc.wrapping_add(walk(a.nested(), depth + 1));
        }
    }
    acc
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub inputs: u64,
    pub panics: u64,
    /// The first input that panicked, to reproduce it.
    pub first_panic: Option<Vec<u8>>,
    pub checksum: u64,
    pub max_len: usize,
}

/// Runs `inputs` generated inputs from `seed`. Each input is either a mutation of a seed or (one
/// in 8) a further mutation of the previous input, so that mutations stack. Panics are caught and
/// counted; the panic message is silenced while running.
pub fn run(seed: u64, inputs: u64) -> Summary {
    let corpus = seeds();
    let mut rng = Rng::new(seed);
    let mut sum = Summary::default();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut lens = Vec::with_capacity(64);
    // Every seed as is, first.
    for s in &corpus {
        sum.checksum = sum.checksum.wrapping_add(exercise(s));
    }
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    for _ in 0..inputs {
        if buf.is_empty() || !rng.chance(8) {
            buf.clear();
            buf.extend_from_slice(&corpus[rng.below(corpus.len())]);
        }
        mutate(&mut rng, &mut buf, &corpus, &mut lens);
        sum.max_len = sum.max_len.max(buf.len());
        sum.inputs += 1;
        match panic::catch_unwind(AssertUnwindSafe(|| exercise(&buf))) {
            Ok(v) => sum.checksum = sum.checksum.wrapping_add(v),
            Err(_) => {
                sum.panics += 1;
                sum.first_panic.get_or_insert_with(|| buf.clone());
            }
        }
    }
    panic::set_hook(hook);
    sum
}

/// A short slice of the engine in every `cargo test`: 200,000 generated and mutated inputs
/// through every parse entry point, no panic. `GB_FUZZ_INPUTS` and `GB_FUZZ_SEED` change the
/// count and the seed.
#[cfg(test)]
mod tests {
    #[test]
    fn generated_and_mutated_inputs_never_panic_the_parsers() {
        let inputs = std::env::var("GB_FUZZ_INPUTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200_000u64);
        let seed = std::env::var("GB_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            // A new seed every day: the slice explores, and the seed is printed to reproduce it.
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs() / 86_400)
            });
        let s = super::run(seed, inputs);
        eprintln!(
            "fuzz slice: {} inputs, seed {seed}, {} panics, longest {} bytes",
            s.inputs, s.panics, s.max_len
        );
        assert_eq!(s.inputs, inputs);
        assert_eq!(
            s.panics, 0,
            "seed {seed}: a parser panicked; first input: {:02x?}",
            s.first_panic
        );
    }

    /// The engine's mutations really reach the parsers' error paths and success paths (a fuzzer
    /// whose inputs all fail at the first header would prove nothing).
    #[test]
    fn the_mutator_reaches_both_parsed_and_rejected_entries() {
        let corpus = super::seeds();
        let mut rng = super::Rng::new(7);
        let (mut parsed, mut rejected) = (0, 0);
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for i in 0..20_000 {
            buf.clear();
            buf.extend_from_slice(&corpus[i % corpus.len()]);
            super::mutate(&mut rng, &mut buf, &corpus, &mut lens);
            match crate::parse_message(&buf) {
                Ok(Some(_)) => parsed += 1,
                Err(_) => rejected += 1,
                Ok(None) => {}
            }
        }
        assert!(parsed > 1000, "only {parsed} mutated inputs parsed");
        assert!(
            rejected > 1000,
            "only {rejected} mutated inputs were rejected"
        );
    }
}
