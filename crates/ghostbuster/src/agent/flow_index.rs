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
//! Memory: an entry is its reply tuple and zone packed into one 16-byte key, IPv4 or IPv6 alike:
//! the addresses become small ids (a node's entries name few distinct backends and clients, many
//! times each), and the key starts with the backend's id, so that a backend's entries are one
//! range of sorted keys — no per-backend table to pay for on a node with 100,000 backends of a few
//! entries each (a first version kept a hash set per backend: 130 bytes an entry there; a
//! second, addresses in the keys: 52 bytes an IPv6 entry; a third, the keys in a B-tree, whose
//! nodes added 16 % to them when built and up to 90 % as events grew it). The keys live in one
//! sorted vector with the changes since its last merge beside it ([`KeySet`]).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use std::ops::ControlFlow;

use ctnetlink::{
    DeleteKey, DeleteOutcome, DumpSummary, EventKind, Family, Filter, Flow, Lookup, Tuple, L4,
};

use hashbrown::HashTable;

use super::flow_keys::{Gathered, KeySet};
use crate::table::Table;

/// The most events logged while a full pass dumps (two per new flow: at 10,000 new flows/s a
/// 5 s pass logs ~100,000). Beyond it the fresh index is not trusted (the next pass rebuilds).
pub const MAX_REPLAY: usize = 400_000;

/// Addresses as small numbers: a node's entries name few distinct addresses (its backends, its
/// clients) many times each, and an IPv6 address is 16 bytes. Each id counts the entries that
/// use it and is freed with the last, so churning pods leave nothing behind. The address is
/// stored once (`addrs`); the table holds only ids, found by their address's hash: ~27 bytes an
/// address instead of the ~60 of a `HashMap<IpAddr, _>` beside the same vector.
#[derive(Debug, Clone, Default)]
struct Interner {
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    addrs: Vec<IpAddr>,
    /// The entries using each id; 0 for a free one (listed in `free`).
    uses: Vec<u32>,
    free: Vec<u32>,
}

impl Interner {
    fn id(&self, ip: IpAddr) -> Option<u32> {
        let addrs = &self.addrs;
        self.table
            .find(self.hasher.hash_one(ip), |&id| addrs[id as usize] == ip)
            .copied()
    }

    /// The id of `ip`, made if needed; counts one more use. `None` when every id below `cap`
    /// is in use.
    fn take(&mut self, ip: IpAddr, cap: u32) -> Option<u32> {
        if let Some(id) = self.id(ip) {
            self.uses[id as usize] += 1;
            return Some(id);
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.addrs[id as usize] = ip;
                self.uses[id as usize] = 1;
                id
            }
            None if self.addrs.len() < cap as usize => {
                self.addrs.push(ip);
                self.uses.push(1);
                (self.addrs.len() - 1) as u32
            }
            None => return None,
        };
        let (addrs, hasher) = (&self.addrs, &self.hasher);
        self.table.insert_unique(hasher.hash_one(ip), id, |&i| {
            hasher.hash_one(addrs[i as usize])
        });
        Some(id)
    }

    /// One use fewer of `id`; the last frees it. By id, not by address: the caller has just
    /// found the id, and only the last use needs the table (a DESTROY event thus costs one
    /// lookup an address, not two).
    fn release(&mut self, id: u32) {
        let uses = &mut self.uses[id as usize];
        *uses -= 1;
        if *uses > 0 {
            return;
        }
        let hash = self.hasher.hash_one(self.addrs[id as usize]);
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    /// Counts the uses again as `ids` names them (each once per entry), freeing the ids it
    /// never names.
    fn recount(&mut self, ids: impl Iterator<Item = u32>) {
        self.uses.iter_mut().for_each(|u| *u = 0);
        for id in ids {
            self.uses[id as usize] += 1;
        }
        let (uses, free) = (&self.uses, &mut self.free);
        self.table.retain(|id| {
            let used = uses[*id as usize] > 0;
            if !used {
                free.push(*id);
            }
            used
        });
    }

    fn addr(&self, id: u32) -> IpAddr {
        self.addrs[id as usize]
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    fn heap_bytes(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.addrs.capacity() * std::mem::size_of::<IpAddr>()
            + (self.uses.capacity() + self.free.capacity()) * std::mem::size_of::<u32>()
    }
}

/// The key's bits for a backend's id and for a reply destination's (a client, or the node after
/// SNAT): 4,194,304 and 16,777,216 distinct addresses at once.
const BACKEND_BITS: u32 = 22;
const CLIENT_BITS: u32 = 24;
/// How many backend ids may be in use at once. Past it an entry cannot be named and the index
/// is dropped (as past `--flow-index-max-entries`); the unit tests make it small to get there.
#[cfg(not(test))]
const BACKEND_IDS: u32 = 1 << BACKEND_BITS;
#[cfg(test)]
const BACKEND_IDS: u32 = 16;
const CLIENT_IDS: u32 = 1 << CLIENT_BITS;
/// The protocols kube-proxy DNATs (a Service port is TCP, UDP or SCTP), as the key's 2 bits, and
/// DCCP, which has ports too. A DNAT'd flow of another protocol can be no Service's flow.
const PROTOCOLS: [u8; 4] = [6, 17, 132, 33];

/// An entry's key, 96 bits ([`KeySet`]'s width): the backend's id (22 bits), the protocol (2),
/// the zone (16), the backend's port (16), the id of the reply's destination (24: the client,
/// or the node after SNAT) and the client's port (16). The backend's id comes first, so a
/// backend's entries are one range of the keys.
fn key(backend: u32, reply: &Tuple, zone: u16, client: u32) -> Option<u128> {
    let L4::Ports { src, dst } = reply.l4 else {
        return None;
    };
    let proto = PROTOCOLS.iter().position(|p| *p == reply.proto)?;
    debug_assert!(backend < 1 << BACKEND_BITS && client < 1 << CLIENT_BITS);
    Some(
        (u128::from(backend) << 74)
            | ((proto as u128) << 72)
            | (u128::from(zone) << 56)
            | (u128::from(src) << 40)
            | (u128::from(client) << 16)
            | u128::from(dst),
    )
}

/// The parts of a key: (backend id, protocol, zone, backend port, client id, client port).
fn parts(k: u128) -> (u32, u8, u16, u16, u32, u16) {
    (
        (k >> 74) as u32,
        PROTOCOLS[(k >> 72) as usize & 3],
        (k >> 56) as u16,
        (k >> 40) as u16,
        (k >> 16) as u32 & ((1 << CLIENT_BITS) - 1),
        k as u16,
    )
}

fn range_of(backend: u32) -> std::ops::RangeInclusive<u128> {
    let lo = u128::from(backend) << 74;
    lo..=(lo | ((1u128 << 74) - 1))
}

/// A flow the index holds: DNAT'd, with ports, of a protocol the key can name ([`PROTOCOLS`]:
/// every protocol a Service can have), both addresses of one family.
fn indexable(f: &Flow) -> bool {
    f.is_dnat()
        && matches!(f.reply.l4, L4::Ports { .. })
        && PROTOCOLS.contains(&f.reply.proto)
        && f.reply.src.is_ipv4() == f.reply.dst.is_ipv4()
}

/// This node's DNAT'd entries by backend: the index itself, without the bookkeeping of when it
/// may be trusted ([`FlowIndex`]). A full pass builds one of these from its dump.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    keys: KeySet,
    backends: Interner,
    clients: Interner,
    /// An entry could not be added: every id of its backends' or clients' was in use. The index
    /// is incomplete then, and must be dropped (see `State::go_over_limit`).
    full: bool,
}

impl Entries {
    /// Adds `f` if it is a DNAT'd flow with ports (whatever else: nothing). True if it was new.
    pub fn insert(&mut self, f: &Flow) -> bool {
        if !indexable(f) {
            return false;
        }
        let (b, c) = (f.reply.src, f.reply.dst);
        let Some(bi) = self.backends.take(b, BACKEND_IDS) else {
            self.full = true;
            return false;
        };
        let Some(ci) = self.clients.take(c, CLIENT_IDS) else {
            self.backends.release(bi);
            self.full = true;
            return false;
        };
        // One lookup: the ids' uses are given back when the entry was there already (a NEW
        // replayed onto the pass that saw the flow).
        let new = key(bi, &f.reply, f.zone, ci).is_some_and(|k| self.keys.insert(k));
        if !new {
            self.backends.release(bi);
            self.clients.release(ci);
        }
        new
    }

    /// An entry could not be added for want of ids: the index is incomplete.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Forgets the entry with `f`'s reply tuple and zone. True if it was there.
    pub fn remove(&mut self, f: &Flow) -> bool {
        let (b, c) = (f.reply.src, f.reply.dst);
        let (Some(bi), Some(ci)) = (self.backends.id(b), self.clients.id(c)) else {
            return false;
        };
        let removed = key(bi, &f.reply, f.zone, ci).is_some_and(|k| self.keys.remove(&k));
        if removed {
            self.backends.release(bi);
            self.clients.release(ci);
        }
        removed
    }

    /// The exact-read keys (reply tuple and zone, no id) of every entry toward `ip`.
    pub fn keys_of(&self, ip: IpAddr) -> Vec<DeleteKey> {
        let Some(b) = self.backends.id(ip) else {
            return Vec::new();
        };
        let family = if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        self.keys
            .range(range_of(b))
            .map(|k| {
                let (_, proto, zone, sport, client, dport) = parts(k);
                DeleteKey {
                    family,
                    reply: Tuple::ports(ip, sport, self.clients.addr(client), dport, proto),
                    zone,
                    id: None,
                }
            })
            .collect()
    }

    /// How many entries lead to `ip`.
    pub fn count_of(&self, ip: IpAddr) -> usize {
        self.backends
            .id(ip)
            .map_or(0, |b| self.keys.count(range_of(b)))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// An estimate of the heap the index holds: the keys ([`KeySet::heap_bytes`]) and the
    /// address tables. `tests/flow_index_memory.rs` measures it.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes() + self.backends.heap_bytes() + self.clients.heap_bytes()
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
/// end in one go: the keys are gathered packed and sorted in place, and a push costs a fraction
/// of an insert.
#[derive(Debug, Default)]
pub struct Builder {
    keys: Gathered,
    backends: Interner,
    clients: Interner,
    /// Gather at most this many (0: no bound); past it, gather nothing more.
    limit: usize,
    over: bool,
}

impl Builder {
    /// Gathers `f` if it is a DNAT'd flow with ports.
    pub fn push(&mut self, f: &Flow) {
        if self.over || !indexable(f) {
            return;
        }
        // More DNAT'd entries than the index may hold, or more distinct addresses than its
        // keys can name: this pass builds nothing.
        if self.limit > 0 && self.keys.len() >= self.limit {
            return self.give_up();
        }
        let Some(bi) = self.backends.take(f.reply.src, BACKEND_IDS) else {
            return self.give_up();
        };
        let Some(ci) = self.clients.take(f.reply.dst, CLIENT_IDS) else {
            return self.give_up();
        };
        if let Some(k) = key(bi, &f.reply, f.zone, ci) {
            self.keys.push(k);
        }
    }

    fn give_up(&mut self) {
        self.over = true;
        self.keys = Gathered::default();
        self.backends = Interner::default();
        self.clients = Interner::default();
    }

    pub fn finish(self) -> Entries {
        let Builder {
            keys,
            mut backends,
            mut clients,
            ..
        } = self;
        let before = keys.len();
        let keys = KeySet::from_gathered(keys);
        if keys.len() != before {
            // The dump named an entry twice (it can, when the table changes under it): count
            // the uses again from the keys.
            backends.recount(keys.iter().map(|k| parts(k).0));
            clients.recount(keys.iter().map(|k| parts(k).4));
        }
        Entries {
            keys,
            backends,
            clients,
            full: false,
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
    /// The most entries the index may hold (`--flow-index-max-entries`; 0: no bound). Past it
    /// the index is dropped and untrusted — removals walk the table — until a pass finds the
    /// table back under it: its memory stays bounded whatever the table's size.
    limit: usize,
    /// The index is off for being over `limit` (logged on the change).
    over_limit: bool,
}

impl State {
    fn go_over_limit(&mut self) {
        if !self.over_limit {
            tracing::warn!(
                limit = self.limit,
                "more DNAT'd conntrack entries than --flow-index-max-entries (or more distinct \
                 addresses than it can name): the flow index is off (removals walk the table) \
                 until a full pass finds fewer"
            );
        }
        self.over_limit = true;
        self.trusted = false;
        self.entries = Entries::default();
        if let Some(r) = &mut self.rebuild {
            r.lost = true;
            r.log = Vec::new();
        }
    }
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

    /// Bounds the index to `max` entries (0: no bound); see `State::limit`.
    pub fn set_limit(&self, max: usize) {
        self.state().limit = max;
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
        // Over the bound the index holds nothing, but a rebuild under way still logs: the pass
        // may find the table back under it.
        if !st.over_limit {
            for (kind, f) in events {
                st.entries.apply(*kind, f);
            }
            if st.entries.is_full() || st.limit > 0 && st.entries.len() > st.limit {
                st.go_over_limit();
                return;
            }
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
            fresh: Builder {
                limit: st.limit,
                ..Builder::default()
            },
            done: false,
        }
    }

    /// The dump completed: the events logged during it are replayed onto `fresh`, which becomes
    /// the index; trusted if nothing was lost meanwhile and the event thread still runs.
    pub fn finish_rebuild(&self, mut r: Rebuilding<'_>) -> Summary {
        r.done = true;
        let built = std::mem::take(&mut r.fresh);
        let over = built.over;
        let mut fresh = built.finish();
        let mut st = self.state();
        let rebuild = st.rebuild.take().unwrap_or(Rebuild {
            log: Vec::new(),
            lost: true,
        });
        if over {
            st.go_over_limit();
            return summary(&st);
        }
        for (kind, f) in &rebuild.log {
            fresh.apply(*kind, f);
        }
        if fresh.is_full() {
            st.go_over_limit();
            return summary(&st);
        }
        if st.over_limit {
            tracing::info!(
                entries = fresh.len(),
                limit = st.limit,
                "the flow index is back: the table's DNAT'd entries fit --flow-index-max-entries"
            );
            st.over_limit = false;
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
    use std::net::{Ipv4Addr, Ipv6Addr};

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
        // The address ids went with the last entry that used them.
        assert_eq!((e.backends.len(), e.clients.len()), (0, 0));
        assert!(e.insert(&v6(1, 3)));
        assert_eq!(e.backends.addrs.len(), 1, "the freed id is reused");
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

    /// Past its bound the index holds nothing and is not trusted (removals walk); a pass that
    /// finds the table back under it brings it back.
    #[test]
    fn past_its_bound_the_index_is_dropped_until_a_pass_finds_fewer() {
        let ix = FlowIndex::default();
        ix.set_live(true);
        ix.set_limit(2);
        let (a, b, c) = (v4(5, 40000, 7), v4(6, 40001, 7), v4(7, 40002, 8));
        assert!(rebuilt(&ix, &[a, b]).trusted);
        ix.apply(&[(EventKind::New, c)]);
        assert_eq!(
            ix.summary(),
            Summary::default(),
            "dropped: {:?}",
            ix.summary()
        );
        assert_eq!(ix.count_of(a.reply.src), None);
        // Events alone never bring it back, nor does a pass over too many entries.
        ix.apply(&[(EventKind::Destroy, c)]);
        assert!(!ix.is_trusted());
        let s = rebuilt(&ix, &[a, b, c]);
        assert!(!s.trusted && s.flows == 0, "{s:?}");
        // Events during the pass that finds fewer are replayed as ever.
        let mut r = ix.begin_rebuild();
        r.fresh.push(&a);
        ix.apply(&[(EventKind::New, c)]);
        let s = ix.finish_rebuild(r);
        assert!(s.trusted && s.flows == 2, "{s:?}");
        assert_eq!(ix.count_of(c.reply.src), Some(1));
    }

    /// More distinct backends than the keys can name (16 in the unit tests, 4,194,304 in the
    /// agent): the entry that finds no id drops the index, by event or in a pass, as past the
    /// bound; a backend leaving frees its id for the next.
    #[test]
    fn an_entry_without_a_free_id_drops_the_index() {
        let ix = FlowIndex::default();
        ix.set_live(true);
        let of = |backend: u8| v4(5, 40000, backend);
        let fill: Vec<Flow> = (0..BACKEND_IDS as u8).map(of).collect();
        assert!(rebuilt(&ix, &fill).trusted);
        // An id freed and taken again: still complete.
        ix.apply(&[(EventKind::Destroy, of(0)), (EventKind::New, of(100))]);
        assert!(ix.is_trusted());
        assert_eq!(ix.count_of(of(100).reply.src), Some(1));
        // One backend too many.
        ix.apply(&[(EventKind::New, of(101))]);
        assert!(!ix.is_trusted());
        assert_eq!(ix.summary().flows, 0);
        // A pass over too many builds nothing; one over few enough brings it back.
        let mut too_many = fill.clone();
        too_many.push(of(101));
        assert!(!rebuilt(&ix, &too_many).trusted);
        let s = rebuilt(&ix, &fill);
        assert!(s.trusted && s.flows == fill.len(), "{s:?}");
        // The same through an event replayed after the dump.
        let mut r = ix.begin_rebuild();
        for f in &fill {
            r.fresh.push(f);
        }
        ix.apply(&[(EventKind::New, of(101))]);
        assert!(!ix.finish_rebuild(r).trusted);
    }

    /// The key names TCP, UDP, SCTP and DCCP (every protocol a Service port can have, and one
    /// more); a DNAT'd UDP-Lite flow is no Service's and is not indexed.
    #[test]
    fn the_protocols_a_key_can_name_come_back() {
        let mut e = Entries::default();
        for proto in PROTOCOLS {
            let mut f = v4(5, 40000, 7);
            f.orig.proto = proto;
            f.reply.proto = proto;
            assert!(e.insert(&f), "{proto}");
        }
        let mut lite = v4(5, 40000, 7);
        lite.reply.proto = 136;
        assert!(!e.insert(&lite) && !e.is_full());
        let mut protos: Vec<u8> = e
            .keys_of(lite.reply.src)
            .iter()
            .map(|k| k.reply.proto)
            .collect();
        protos.sort_unstable();
        assert_eq!(protos, [6, 17, 33, 132]);
    }

    /// A dump that names an entry twice builds it once, its addresses counted once.
    #[test]
    fn a_built_index_counts_each_entry_once() {
        let mut b = Builder::default();
        let (a, c) = (v4(5, 40000, 7), v4(6, 40001, 7));
        for f in [a, a, c] {
            b.push(&f);
        }
        let mut e = b.finish();
        assert_eq!(e.len(), 2);
        assert!(e.remove(&a) && e.remove(&c));
        assert_eq!((e.backends.len(), e.clients.len()), (0, 0));
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
