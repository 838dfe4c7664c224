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
//! Memory: an entry is its reply tuple and zone packed into one ordered key that starts with the
//! backend address (16 bytes for IPv4, 40 for IPv6), in a B-tree: a backend's entries are one
//! range of it, and there is no per-backend table to pay for on a node with 100,000 backends of
//! a few entries each (a first version kept a hash set per backend: 130 bytes per entry there).
//! The tree's nodes add 5 % to the keys when a full pass has built it (from sorted keys, full
//! nodes) and up to 90 % as events grow it.

use std::collections::BTreeSet;
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

/// One entry, packed into an ordered key that starts with its backend address, so that a
/// backend's entries are one range of a B-tree: no per-backend table (a node has up to 100,000
/// backends, most with a few entries each), and the keys are all the memory there is.
trait Packed: Copy + Ord {
    /// `None` when the tuple has no ports (ICMP: kube-proxy DNATs only TCP, UDP and SCTP).
    fn pack(reply: &Tuple, zone: u16) -> Option<Self>;
    fn unpack(self) -> (Tuple, u16);
    /// The first and last keys of backend `ip`.
    fn range_of(ip: IpAddr) -> Option<(Self, Self)>;
}

/// IPv4 in 120 bits: backend, protocol, zone, the reply's destination (the client, or the node
/// after SNAT), the backend's port, the client's port.
impl Packed for u128 {
    fn pack(reply: &Tuple, zone: u16) -> Option<u128> {
        let (IpAddr::V4(b), IpAddr::V4(dst), L4::Ports { src, dst: dport }) =
            (reply.src, reply.dst, reply.l4)
        else {
            return None;
        };
        Some(
            (u128::from(u32::from(b)) << 88)
                | (u128::from(reply.proto) << 80)
                | (u128::from(zone) << 64)
                | (u128::from(u32::from(dst)) << 32)
                | (u128::from(src) << 16)
                | u128::from(dport),
        )
    }

    fn unpack(self) -> (Tuple, u16) {
        let b = Ipv4Addr::from((self >> 88) as u32);
        let dst = Ipv4Addr::from((self >> 32) as u32);
        let t = Tuple::ports(
            IpAddr::V4(b),
            (self >> 16) as u16,
            IpAddr::V4(dst),
            self as u16,
            (self >> 80) as u8,
        );
        (t, (self >> 64) as u16)
    }

    fn range_of(ip: IpAddr) -> Option<(u128, u128)> {
        let IpAddr::V4(b) = ip else { return None };
        let lo = u128::from(u32::from(b)) << 88;
        Some((lo, lo | ((1u128 << 88) - 1)))
    }
}

/// IPv6 in five words: backend (2), the reply's destination (2), then protocol, zone and both
/// ports.
type V6Key = [u64; 5];

impl Packed for V6Key {
    fn pack(reply: &Tuple, zone: u16) -> Option<V6Key> {
        let (IpAddr::V6(b), IpAddr::V6(dst), L4::Ports { src, dst: dport }) =
            (reply.src, reply.dst, reply.l4)
        else {
            return None;
        };
        let (b, dst) = (u128::from(b), u128::from(dst));
        Some([
            (b >> 64) as u64,
            b as u64,
            (dst >> 64) as u64,
            dst as u64,
            (u64::from(reply.proto) << 48)
                | (u64::from(zone) << 32)
                | (u64::from(src) << 16)
                | u64::from(dport),
        ])
    }

    fn unpack(self) -> (Tuple, u16) {
        let b = (u128::from(self[0]) << 64) | u128::from(self[1]);
        let dst = (u128::from(self[2]) << 64) | u128::from(self[3]);
        let rest = self[4];
        let t = Tuple::ports(
            IpAddr::V6(Ipv6Addr::from(b)),
            (rest >> 16) as u16,
            IpAddr::V6(Ipv6Addr::from(dst)),
            rest as u16,
            (rest >> 48) as u8,
        );
        (t, (rest >> 32) as u16)
    }

    fn range_of(ip: IpAddr) -> Option<(V6Key, V6Key)> {
        let IpAddr::V6(b) = ip else { return None };
        let b = u128::from(b);
        let (hi, lo) = ((b >> 64) as u64, b as u64);
        Some(([hi, lo, 0, 0, 0], [hi, lo, u64::MAX, u64::MAX, u64::MAX]))
    }
}

fn keys_in<K: Packed>(set: &BTreeSet<K>, ip: IpAddr, family: Family, out: &mut Vec<DeleteKey>) {
    let Some((lo, hi)) = K::range_of(ip) else {
        return;
    };
    out.extend(set.range(lo..=hi).map(|k| {
        let (reply, zone) = k.unpack();
        DeleteKey {
            family,
            reply,
            zone,
            id: None,
        }
    }));
}

fn count_in<K: Packed>(set: &BTreeSet<K>, ip: IpAddr) -> usize {
    K::range_of(ip).map_or(0, |(lo, hi)| set.range(lo..=hi).count())
}

/// This node's DNAT'd entries by backend: the index itself, without the bookkeeping of when it
/// may be trusted ([`FlowIndex`]). A full pass builds one of these from its dump.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    v4: BTreeSet<u128>,
    v6: BTreeSet<V6Key>,
}

impl Entries {
    /// Adds `f` if it is a DNAT'd flow with ports (whatever else: nothing). True if it was new.
    pub fn insert(&mut self, f: &Flow) -> bool {
        if !f.is_dnat() {
            return false;
        }
        match f.reply.src {
            IpAddr::V4(_) => u128::pack(&f.reply, f.zone).is_some_and(|k| self.v4.insert(k)),
            IpAddr::V6(_) => V6Key::pack(&f.reply, f.zone).is_some_and(|k| self.v6.insert(k)),
        }
    }

    /// Forgets the entry with `f`'s reply tuple and zone. True if it was there.
    pub fn remove(&mut self, f: &Flow) -> bool {
        match f.reply.src {
            IpAddr::V4(_) => u128::pack(&f.reply, f.zone).is_some_and(|k| self.v4.remove(&k)),
            IpAddr::V6(_) => V6Key::pack(&f.reply, f.zone).is_some_and(|k| self.v6.remove(&k)),
        }
    }

    /// The exact-read keys (reply tuple and zone, no id) of every entry toward `ip`.
    pub fn keys_of(&self, ip: IpAddr) -> Vec<DeleteKey> {
        let mut out = Vec::new();
        keys_in(&self.v4, ip, Family::Ipv4, &mut out);
        keys_in(&self.v6, ip, Family::Ipv6, &mut out);
        out
    }

    /// How many entries lead to `ip`.
    pub fn count_of(&self, ip: IpAddr) -> usize {
        count_in(&self.v4, ip) + count_in(&self.v6, ip)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An estimate of the heap the index holds: the keys and the B-tree nodes around them (11
    /// keys a node: full when a pass built the tree, about two thirds full once events have
    /// grown it), 1.3 times the keys. `tests/flow_index_memory.rs` measures both ends: 18 and 31
    /// bytes an IPv4 entry, 42 and 60 an IPv6 one.
    pub fn heap_bytes(&self) -> usize {
        (self.v4.len() * std::mem::size_of::<u128>() + self.v6.len() * std::mem::size_of::<V6Key>())
            * 13
            / 10
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

/// The entries a full pass's dump saw, gathered unordered and built into [`Entries`] at the
/// end in one go: the tree built from sorted keys has full nodes (about 18 bytes an IPv4 entry
/// instead of 25-31 when inserted one by one), and a push costs a fraction of an insert.
#[derive(Debug, Default)]
pub struct Builder {
    v4: Vec<u128>,
    v6: Vec<V6Key>,
}

impl Builder {
    /// Gathers `f` if it is a DNAT'd flow with ports.
    pub fn push(&mut self, f: &Flow) {
        if !f.is_dnat() {
            return;
        }
        match f.reply.src {
            IpAddr::V4(_) => self.v4.extend(u128::pack(&f.reply, f.zone)),
            IpAddr::V6(_) => self.v6.extend(V6Key::pack(&f.reply, f.zone)),
        }
    }

    pub fn finish(self) -> Entries {
        Entries {
            v4: self.v4.into_iter().collect(),
            v6: self.v6.into_iter().collect(),
        }
    }
}

/// What the index holds, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub flows: usize,
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
    pub fresh: Builder,
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
            fresh: Builder::default(),
            done: false,
        }
    }

    /// The dump completed: the events logged during it are replayed onto `fresh`, which becomes
    /// the index; trusted if nothing was lost meanwhile and the event thread still runs.
    pub fn finish_rebuild(&self, mut r: Rebuilding<'_>) -> Summary {
        r.done = true;
        let mut fresh = std::mem::take(&mut r.fresh).finish();
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
    pub fresh: &'a mut Builder,
}

impl<T: Table> Table for Indexing<'_, T> {
    fn dump<F>(&mut self, filter: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        let fresh = &mut *self.fresh;
        self.table.dump(filter, |flow| {
            fresh.push(flow);
            f(flow)
        })
    }

    fn dump_pipelined<F>(&mut self, filter: &Filter, mut f: F) -> ctnetlink::Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        let fresh = &mut *self.fresh;
        self.table.dump_pipelined(filter, |flow| {
            fresh.push(flow);
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
        assert_eq!(e.len(), 3);
        assert_eq!(e.count_of(a.reply.src), 2);
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
        assert_eq!(
            e.count_of(a.reply.src),
            2,
            "the same ports in two protocols"
        );
        assert!(e.remove(&a));
        assert!(!e.remove(&a));
        assert!(e.remove(&udp));
        assert!(e.is_empty());
        assert_eq!(e.count_of(a.reply.src), 0);
    }

    fn rebuilt(ix: &FlowIndex, dumped: &[Flow]) -> Summary {
        let mut r = ix.begin_rebuild();
        for f in dumped {
            r.fresh.push(f);
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
        r.fresh.push(&old);
        r.fresh.push(&gone);
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

    /// Neighbouring backends' ranges never overlap, whatever their entries' ports and zones.
    #[test]
    fn a_backends_range_holds_only_its_own_entries() {
        let mut e = Entries::default();
        let (mut low, mut high) = (v4(5, 65535, 7), v4(5, 0, 8));
        low.zone = u16::MAX;
        low.reply.dst = IpAddr::V4(Ipv4Addr::BROADCAST);
        high.zone = 0;
        e.insert(&low);
        e.insert(&high);
        assert_eq!(e.keys_of(low.reply.src), [key(&low)]);
        assert_eq!(e.keys_of(high.reply.src), [key(&high)]);
        let (a, b) = (v6(65535, 1), v6(0, 2));
        e.insert(&a);
        e.insert(&b);
        assert_eq!(e.keys_of(a.reply.src), [key(&a)]);
        assert_eq!(e.keys_of(b.reply.src), [key(&b)]);
    }
}
