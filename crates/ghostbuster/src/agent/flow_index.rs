//! This node's DNAT'd conntrack entries by backend, kept in memory so that a removed backend's
//! flows are found without walking the table.
//!
//! Why: the kernel has no index by reply tuple source. Reading one backend's flows is a dump,
//! and every dump walks the whole table in the kernel whatever its filter (~0.25 s at a million
//! entries, the whole table's dump for IPv6, whose filter the kernel cannot apply). That walk
//! sat between kube-proxy's sync and the deletes, so the reaction grew with the table.
//!
//! How: every full pass already sees every entry; it rebuilds the index from its dump
//! ([`FlowIndex::begin_rebuild`], [`FlowIndex::finish_rebuild`]). Between passes the conntrack
//! event thread keeps it current from NEW and DESTROY events of DNAT'd flows (the kernel drops
//! the others: `ctnetlink::EventSocket::set_dnat_filter`). Events that arrive while a pass
//! dumps are logged and replayed onto the fresh index, in order, so a flow created or destroyed
//! during the dump is neither lost nor resurrected.
//!
//! The index is a hint, never evidence: a removal reads each indexed entry again by its reply
//! tuple (an exact `CT_GET`) and judges what the kernel returns, exactly as it would judge the
//! same entries from a dump; deletes stay exact by id. What the index must be is *complete*:
//! an entry it misses would be left until the next full pass. So it is trusted only while the
//! event thread runs and has lost nothing since the last rebuild began; lost events (ENOBUFS),
//! an overflowing replay log or the event thread's end make it untrusted, and reads fall back
//! to the kernel walk until a full pass has rebuilt it.
//!
//! Memory: entries are grouped by backend address, protocol and zone, so what is stored per
//! entry is the rest of its reply tuple: 8 bytes for IPv4 (client address and both ports), 20
//! for IPv6, in a hash set (one control byte each, at most 7/8 full).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};

use std::ops::ControlFlow;

use ctnetlink::{
    DeleteKey, DeleteOutcome, DumpSummary, EventKind, Family, Filter, Flow, Lookup, Tuple, L4,
};

use crate::table::Table;

/// The most events logged while a full pass dumps (two per new flow: at 10,000 new flows/s a
/// 5 s pass logs ~100,000). Beyond it the fresh index is not trusted (the next pass rebuilds).
pub const MAX_REPLAY: usize = 400_000;

/// The part of a reply tuple that is not its group's: packed so that an entry is a few bytes.
trait Packed: Copy + Eq + Hash {
    /// `None` when the tuple has no ports (ICMP: kube-proxy DNATs only TCP, UDP and SCTP).
    fn pack(reply: &Tuple) -> Option<Self>;
    fn unpack(self, backend: IpAddr, proto: u8) -> Tuple;
}

/// IPv4: the reply's destination (the client, or the node after SNAT) and both ports.
impl Packed for u64 {
    fn pack(reply: &Tuple) -> Option<u64> {
        let (IpAddr::V4(dst), L4::Ports { src, dst: dport }) = (reply.dst, reply.l4) else {
            return None;
        };
        Some(((u32::from(dst) as u64) << 32) | ((src as u64) << 16) | dport as u64)
    }

    fn unpack(self, backend: IpAddr, proto: u8) -> Tuple {
        let dst = Ipv4Addr::from((self >> 32) as u32);
        Tuple::ports(
            backend,
            (self >> 16) as u16,
            IpAddr::V4(dst),
            self as u16,
            proto,
        )
    }
}

/// IPv6: the reply's destination and both ports, byte by byte.
impl Packed for [u8; 20] {
    fn pack(reply: &Tuple) -> Option<[u8; 20]> {
        let (IpAddr::V6(dst), L4::Ports { src, dst: dport }) = (reply.dst, reply.l4) else {
            return None;
        };
        let mut k = [0u8; 20];
        k[..16].copy_from_slice(&dst.octets());
        k[16..18].copy_from_slice(&src.to_be_bytes());
        k[18..].copy_from_slice(&dport.to_be_bytes());
        Some(k)
    }

    fn unpack(self, backend: IpAddr, proto: u8) -> Tuple {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self[..16]);
        let sport = u16::from_be_bytes([self[16], self[17]]);
        let dport = u16::from_be_bytes([self[18], self[19]]);
        Tuple::ports(backend, sport, IpAddr::V6(Ipv6Addr::from(a)), dport, proto)
    }
}

/// The entries of one backend address with one protocol and zone.
#[derive(Debug, Clone, Default)]
struct Group<K> {
    proto: u8,
    zone: u16,
    keys: HashSet<K>,
}

/// The entries of one address family, by backend address.
#[derive(Debug, Clone)]
struct ByBackend<A, K> {
    map: HashMap<A, Vec<Group<K>>>,
}

impl<A, K> Default for ByBackend<A, K> {
    fn default() -> Self {
        ByBackend {
            map: HashMap::new(),
        }
    }
}

impl<A: Copy + Eq + Hash, K: Packed> ByBackend<A, K> {
    fn insert(&mut self, backend: A, proto: u8, zone: u16, key: K) -> bool {
        let groups = self.map.entry(backend).or_default();
        let g = match groups
            .iter()
            .position(|g| g.proto == proto && g.zone == zone)
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    proto,
                    zone,
                    keys: HashSet::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        g.keys.insert(key)
    }

    fn remove(&mut self, backend: A, proto: u8, zone: u16, key: K) -> bool {
        let Some(groups) = self.map.get_mut(&backend) else {
            return false;
        };
        let Some(i) = groups
            .iter()
            .position(|g| g.proto == proto && g.zone == zone)
        else {
            return false;
        };
        let g = &mut groups[i];
        let removed = g.keys.remove(&key);
        if g.keys.is_empty() {
            groups.swap_remove(i);
        } else if g.keys.capacity() > 64 && g.keys.len() < g.keys.capacity() / 4 {
            // A backend that had many flows and lost most keeps no large table.
            g.keys.shrink_to_fit();
        }
        if groups.is_empty() {
            self.map.remove(&backend);
        }
        removed
    }

    fn keys_of(&self, backend: A, ip: IpAddr, family: Family, out: &mut Vec<DeleteKey>) {
        for g in self.map.get(&backend).into_iter().flatten() {
            out.extend(g.keys.iter().map(|k| DeleteKey {
                family,
                reply: k.unpack(ip, g.proto),
                zone: g.zone,
                id: None,
            }));
        }
    }

    fn count_of(&self, backend: A) -> usize {
        self.map
            .get(&backend)
            .into_iter()
            .flatten()
            .map(|g| g.keys.len())
            .sum()
    }

    /// Heap bytes of the tables (hash sets: a key and a control byte per slot; the map the
    /// same for its entries).
    fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(A, Vec<Group<K>>)>() + 1;
        let key = std::mem::size_of::<K>() + 1;
        self.map.capacity() * slot
            + self
                .map
                .values()
                .map(|gs| {
                    gs.capacity() * std::mem::size_of::<Group<K>>()
                        + gs.iter().map(|g| g.keys.capacity() * key).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// This node's DNAT'd entries by backend: the index itself, without the bookkeeping of when it
/// may be trusted ([`FlowIndex`]). A full pass builds one of these from its dump.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    v4: ByBackend<Ipv4Addr, u64>,
    v6: ByBackend<Ipv6Addr, [u8; 20]>,
    len: usize,
}

impl Entries {
    /// Adds `f` if it is a DNAT'd flow with ports (whatever else: nothing). True if it was new.
    pub fn insert(&mut self, f: &Flow) -> bool {
        if !f.is_dnat() {
            return false;
        }
        let added = match f.reply.src {
            IpAddr::V4(b) => {
                u64::pack(&f.reply).is_some_and(|k| self.v4.insert(b, f.reply.proto, f.zone, k))
            }
            IpAddr::V6(b) => <[u8; 20]>::pack(&f.reply)
                .is_some_and(|k| self.v6.insert(b, f.reply.proto, f.zone, k)),
        };
        self.len += added as usize;
        added
    }

    /// Forgets the entry with `f`'s reply tuple and zone. True if it was there.
    pub fn remove(&mut self, f: &Flow) -> bool {
        let removed = match f.reply.src {
            IpAddr::V4(b) => {
                u64::pack(&f.reply).is_some_and(|k| self.v4.remove(b, f.reply.proto, f.zone, k))
            }
            IpAddr::V6(b) => <[u8; 20]>::pack(&f.reply)
                .is_some_and(|k| self.v6.remove(b, f.reply.proto, f.zone, k)),
        };
        self.len -= removed as usize;
        removed
    }

    /// The exact-read keys (reply tuple and zone, no id) of every entry toward `ip`.
    pub fn keys_of(&self, ip: IpAddr) -> Vec<DeleteKey> {
        let mut out = Vec::new();
        match ip {
            IpAddr::V4(b) => self.v4.keys_of(b, ip, Family::Ipv4, &mut out),
            IpAddr::V6(b) => self.v6.keys_of(b, ip, Family::Ipv6, &mut out),
        }
        out
    }

    /// How many entries lead to `ip`.
    pub fn count_of(&self, ip: IpAddr) -> usize {
        match ip {
            IpAddr::V4(b) => self.v4.count_of(b),
            IpAddr::V6(b) => self.v6.count_of(b),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Backend addresses with at least one entry.
    pub fn backends(&self) -> usize {
        self.v4.map.len() + self.v6.map.len()
    }

    /// An estimate of the heap the index holds (its tables' capacity, not the allocator's
    /// rounding).
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes()
    }

    fn apply(&mut self, kind: EventKind, f: &Flow) {
        match kind {
            EventKind::New => {
                self.insert(f);
            }
            EventKind::Destroy => {
                self.remove(f);
            }
            // Updates change neither tuple nor zone.
            _ => {}
        }
    }
}

/// What the index holds, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub flows: usize,
    pub backends: usize,
    pub heap_bytes: usize,
    pub trusted: bool,
}

/// The index shared by the event thread (writes) and the reactor (reads, rebuilds), with when
/// it may be trusted (see the module's doc).
#[derive(Debug, Default)]
pub struct FlowIndex {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: Entries,
    /// Complete: built by a full pass since which the event thread ran and lost nothing.
    trusted: bool,
    /// The event thread is reading events into the index.
    live: bool,
    /// A full pass is dumping: the events seen meanwhile, to replay onto its fresh index.
    rebuild: Option<Rebuild>,
}

#[derive(Debug, Default)]
struct Rebuild {
    log: Vec<(EventKind, Flow)>,
    /// Events were lost (or the log overflowed, or the event thread stopped) during the dump.
    lost: bool,
}

/// A rebuild under way: hand the fresh entries to [`FlowIndex::finish_rebuild`], or drop it
/// (a failed dump) to abandon it.
#[must_use]
pub struct Rebuilding<'a> {
    index: &'a FlowIndex,
    pub fresh: Entries,
    done: bool,
}

impl Drop for Rebuilding<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.index.state().rebuild = None;
        }
    }
}

impl FlowIndex {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The event thread started (true) or ended (false). Without it the index goes stale at
    /// once: it is untrusted until the thread runs again *and* a full pass has rebuilt it.
    pub fn set_live(&self, live: bool) {
        let mut st = self.state();
        st.live = live;
        if !live {
            st.trusted = false;
            st.entries = Entries::default();
            if let Some(r) = &mut st.rebuild {
                r.lost = true;
            }
        }
    }

    /// Events were lost: untrusted until the next rebuild completes without losses.
    pub fn lost(&self) {
        let mut st = self.state();
        st.trusted = false;
        if let Some(r) = &mut st.rebuild {
            r.lost = true;
        }
    }

    /// Applies events as the event thread read them (NEW adds a DNAT'd flow, DESTROY removes
    /// it; others are ignored), and logs them for a rebuild under way.
    pub fn apply(&self, events: &[(EventKind, Flow)]) {
        if events.is_empty() {
            return;
        }
        let mut st = self.state();
        for (kind, f) in events {
            st.entries.apply(*kind, f);
        }
        if let Some(r) = &mut st.rebuild {
            if r.lost {
                return;
            }
            if r.log.len() + events.len() > MAX_REPLAY {
                r.lost = true;
                r.log = Vec::new();
            } else {
                r.log.extend(
                    events
                        .iter()
                        .filter(|(k, _)| matches!(k, EventKind::New | EventKind::Destroy)),
                );
            }
        }
    }

    /// A full pass is about to dump: from now on events are logged for the fresh index. Call it
    /// before the dump starts, so that every change after the dump's first read is replayed.
    pub fn begin_rebuild(&self) -> Rebuilding<'_> {
        let mut st = self.state();
        st.rebuild = Some(Rebuild {
            log: Vec::new(),
            lost: !st.live,
        });
        Rebuilding {
            index: self,
            fresh: Entries::default(),
            done: false,
        }
    }

    /// The dump completed: the events logged during it are replayed onto `fresh`, which becomes
    /// the index; trusted if nothing was lost meanwhile and the event thread still runs.
    pub fn finish_rebuild(&self, mut r: Rebuilding<'_>) -> Summary {
        r.done = true;
        let mut fresh = std::mem::take(&mut r.fresh);
        let mut st = self.state();
        let rebuild = st.rebuild.take().unwrap_or(Rebuild {
            log: Vec::new(),
            lost: true,
        });
        for (kind, f) in &rebuild.log {
            fresh.apply(*kind, f);
        }
        st.entries = fresh;
        st.trusted = !rebuild.lost && st.live;
        summary(&st)
    }

    /// The exact-read keys of the entries toward each of `ips`, or `None` while the index is
    /// not trusted (read the table instead).
    pub fn keys_of(&self, ips: &[IpAddr]) -> Option<Vec<(IpAddr, Vec<DeleteKey>)>> {
        let st = self.state();
        st.trusted.then(|| {
            ips.iter()
                .map(|ip| (*ip, st.entries.keys_of(*ip)))
                .collect()
        })
    }

    /// How many entries lead to `ip`, or `None` while the index is not trusted.
    pub fn count_of(&self, ip: IpAddr) -> Option<usize> {
        let st = self.state();
        st.trusted.then(|| st.entries.count_of(ip))
    }

    /// The event thread feeds the index: full passes should rebuild it.
    pub fn is_live(&self) -> bool {
        self.state().live
    }

    pub fn is_trusted(&self) -> bool {
        self.state().trusted
    }

    pub fn summary(&self) -> Summary {
        summary(&self.state())
    }
}

/// A table whose dumps also fill a fresh index: what a full pass reads through while it
/// rebuilds. Exact reads and deletes pass through untouched.
pub struct Indexing<'a, T> {
    pub table: &'a mut T,
    pub fresh: &'a mut Entries,
}

impl<T: Table> Table for Indexing<'_, T> {
    fn dump<F>(&mut self, filter: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        let fresh = &mut *self.fresh;
        self.table.dump(filter, |flow| {
            fresh.insert(flow);
            f(flow)
        })
    }

    fn dump_pipelined<F>(&mut self, filter: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        let fresh = &mut *self.fresh;
        self.table.dump_pipelined(filter, |flow| {
            fresh.insert(flow);
            f(flow)
        })
    }

    fn get(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<Lookup>> {
        self.table.get(keys)
    }

    fn delete(&mut self, keys: &[DeleteKey]) -> ctnetlink::Result<Vec<DeleteOutcome>> {
        self.table.delete(keys)
    }
}

fn summary(st: &State) -> Summary {
    Summary {
        flows: st.entries.len(),
        backends: st.entries.backends(),
        heap_bytes: st.entries.heap_bytes(),
        trusted: st.trusted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::Status;

    fn v4(last: u8, sport: u16, backend: u8) -> Flow {
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
        let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
        let pod = IpAddr::V4(Ipv4Addr::new(203, 0, 113, backend));
        let mut f = Flow::new(
            Tuple::ports(client, sport, vip, 80, 6),
            Tuple::ports(pod, 8080, client, sport, 6),
        );
        f.status = Status::DST_NAT | Status::SEEN_REPLY;
        f
    }

    fn v6(sport: u16, backend: u16) -> Flow {
        let client: IpAddr = "2001:db8::2".parse().unwrap();
        let vip: IpAddr = "2001:db8:1::10".parse().unwrap();
        let pod = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, backend));
        let mut f = Flow::new(
            Tuple::ports(client, sport, vip, 443, 17),
            Tuple::ports(pod, 8443, client, sport, 17),
        );
        f.status = Status::DST_NAT;
        f.zone = 7;
        f
    }

    fn key(f: &Flow) -> DeleteKey {
        DeleteKey {
            id: None,
            ..DeleteKey::from(f)
        }
    }

    #[test]
    fn keys_come_back_as_the_exact_reply_tuples() {
        let mut e = Entries::default();
        let (a, b, c) = (v4(5, 40000, 7), v4(6, 40001, 7), v6(50000, 9));
        for f in [a, b, c] {
            assert!(e.insert(&f));
        }
        assert!(!e.insert(&a), "twice is once");
        assert_eq!((e.len(), e.backends()), (3, 2));
        let mut got = e.keys_of(a.reply.src);
        got.sort_by_key(|k| k.reply.dst);
        assert_eq!(got, [key(&a), key(&b)]);
        assert_eq!(e.keys_of(c.reply.src), [key(&c)]);
        assert_eq!(e.count_of(c.reply.src), 1);
        assert!(e.keys_of("203.0.113.99".parse().unwrap()).is_empty());
    }

    #[test]
    fn only_dnat_flows_with_ports_are_indexed() {
        let mut e = Entries::default();
        let mut plain = v4(5, 40000, 7);
        plain.status = Status::SEEN_REPLY;
        assert!(!e.insert(&plain));
        let mut icmp = v4(5, 40000, 7);
        icmp.reply.l4 = L4::Icmp {
            kind: 0,
            code: 0,
            id: 1,
        };
        assert!(!e.insert(&icmp));
        assert!(e.is_empty());
    }

    #[test]
    fn removing_the_last_entry_of_a_backend_forgets_it() {
        let mut e = Entries::default();
        let (a, mut udp) = (v4(5, 40000, 7), v4(5, 40000, 7));
        udp.reply.proto = 17;
        udp.orig.proto = 17;
        e.insert(&a);
        e.insert(&udp);
        assert_eq!(e.count_of(a.reply.src), 2, "one group per protocol");
        assert!(e.remove(&a));
        assert!(!e.remove(&a));
        assert!(e.remove(&udp));
        assert_eq!((e.len(), e.backends()), (0, 0));
    }

    fn rebuilt(ix: &FlowIndex, dumped: &[Flow]) -> Summary {
        let mut r = ix.begin_rebuild();
        for f in dumped {
            r.fresh.insert(f);
        }
        ix.finish_rebuild(r)
    }

    #[test]
    fn trusted_only_after_a_rebuild_while_events_were_read_without_loss() {
        let ix = FlowIndex::default();
        let a = v4(5, 40000, 7);
        assert_eq!(ix.keys_of(&[a.reply.src]), None, "never built");
        assert!(
            !rebuilt(&ix, &[a]).trusted,
            "no event thread during the dump"
        );
        ix.set_live(true);
        assert!(rebuilt(&ix, &[a]).trusted);
        assert_eq!(ix.count_of(a.reply.src), Some(1));
        ix.lost();
        assert_eq!(ix.count_of(a.reply.src), None, "lost events");
        assert!(rebuilt(&ix, &[a]).trusted);
        ix.set_live(false);
        assert!(!ix.is_trusted(), "the event thread ended");
    }

    #[test]
    fn events_during_the_dump_are_replayed_onto_the_fresh_index() {
        let ix = FlowIndex::default();
        ix.set_live(true);
        let (old, gone, born, brief) = (
            v4(5, 40000, 7),
            v4(6, 40001, 7),
            v4(7, 40002, 7),
            v4(8, 40003, 7),
        );
        let mut r = ix.begin_rebuild();
        // The dump reads `old` and `gone`; meanwhile `gone` ends, `born` starts after the dump
        // passed its slot, and `brief` starts and ends.
        r.fresh.insert(&old);
        r.fresh.insert(&gone);
        ix.apply(&[
            (EventKind::Destroy, gone),
            (EventKind::New, born),
            (EventKind::New, brief),
            (EventKind::Update, old),
            (EventKind::Destroy, brief),
        ]);
        let s = ix.finish_rebuild(r);
        assert!(s.trusted);
        let mut keys = ix.keys_of(&[old.reply.src]).unwrap().remove(0).1;
        keys.sort_by_key(|k| k.reply.dst);
        assert_eq!(keys, [key(&old), key(&born)]);
    }

    #[test]
    fn a_loss_or_an_overflow_during_the_dump_leaves_the_fresh_index_untrusted() {
        let ix = FlowIndex::default();
        ix.set_live(true);
        let r = ix.begin_rebuild();
        ix.lost();
        assert!(!ix.finish_rebuild(r).trusted);

        let r = ix.begin_rebuild();
        let many: Vec<(EventKind, Flow)> = (0..=MAX_REPLAY)
            .map(|i| (EventKind::New, v4((i % 250) as u8, (i / 250) as u16, 7)))
            .collect();
        ix.apply(&many);
        assert!(!ix.finish_rebuild(r).trusted);

        // An abandoned rebuild (the dump failed) stops the logging and changes nothing.
        let before = ix.summary();
        drop(ix.begin_rebuild());
        ix.apply(&[(EventKind::New, v4(1, 1, 1))]);
        assert!(ix.state().rebuild.is_none());
        assert_eq!(ix.summary().flows, before.flows + 1);
    }

    /// The figure the module's doc gives: a few bytes per entry. A million IPv4 entries over 600
    /// backends stay under 24 bytes each (hash set slots at most 7/8 full, doubled as they grow).
    #[test]
    fn a_million_entries_take_a_few_bytes_each() {
        let mut e = Entries::default();
        let n = 1_000_000u32;
        for i in 0..n {
            let mut f = v4(
                (i % 250) as u8,
                (i / 250 % 60000) as u16,
                (i % 600 / 3) as u8,
            );
            f.reply.dst = IpAddr::V4(Ipv4Addr::from(0xC000_0200u32 + i / 60000 * 256 + i % 250));
            f.reply.src = IpAddr::V4(Ipv4Addr::from(0xCB00_7100u32 + i % 600));
            e.insert(&f);
        }
        assert_eq!(e.len(), n as usize);
        let per = e.heap_bytes() as f64 / n as f64;
        assert!(per < 24.0, "{per:.1} bytes per entry");
    }
}
