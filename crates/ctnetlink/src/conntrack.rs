//! The conntrack handle: dumps, exact deletes, creates and statistics over one socket.
//!
//! One request is in flight per handle (`&mut self`), which is what lets a dump stream straight
//! from one reused receive buffer into the caller's callback.

use std::io;
use std::ops::ControlFlow;

use crate::attr::MsgWriter;
use crate::consts::*;
use crate::error::{Error, ParseError, Result};
use crate::filter::Filter;
use crate::flow::{parse_flow, Flow, Tuple};
use crate::nl::*;
use crate::request::{self, DeleteKey, FlowUpdate, NewFlow};
use crate::socket::Socket;
use crate::stats::{CpuStats, GlobalStats};

/// A dump's datagrams are at most 32 KiB (the kernel caps `max_recvmsg_len`); 64 KiB is safe.
const RX_BUF: usize = 64 * 1024;
/// Keep each batch well under the socket send buffer.
const TX_BATCH_BYTES: usize = 192 * 1024;
/// A failed message's answer costs up to ~1 KiB of receive buffer (skb truesize).
const RX_COST_PER_ANSWER: usize = 1024;
/// An exact read's answer is allocated at `NLMSG_DEFAULT_SIZE` (~4 KiB of data, ~5 KiB of skb
/// truesize) whatever the entry's size; 8 KiB each keeps every answer of a batch in the buffer.
const RX_COST_PER_ENTRY: usize = 8 * 1024;

/// What a dump saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DumpSummary {
    /// Entries the kernel returned (after its own pre-selection).
    pub seen: u64,
    /// Entries that passed the user-space filter and reached the callback.
    pub matched: u64,
    /// Entries that did not parse; they are skipped, the first error is kept.
    pub malformed: u64,
    /// Why the first malformed entry did not parse.
    pub first_error: Option<ParseError>,
    /// The kernel flagged the dump as interrupted (the table changed under it).
    pub interrupted: bool,
}

/// The fate of one exact delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteOutcome {
    /// The entry was deleted.
    Deleted,
    /// ENOENT: the entry expired, someone else removed it, or the tuple now belongs to a newer
    /// entry with another id (which we rightly did not touch).
    AlreadyGone,
    /// The kernel refused the delete with this errno.
    Failed(i32),
}

/// What an exact read of one entry found.
// `Found` is as large as a `Flow` (~224 bytes) by design: reads come in batches of the few flows
// about to be deleted, and a `Copy` answer is worth more than the bytes a box would save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// The entry that has this tuple now (its id may differ from the key's: compare).
    Found(Flow),
    /// ENOENT: no entry has this tuple any more.
    Gone,
    /// The read failed with this errno.
    Failed(i32),
}

/// What a batch of creates did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateSummary {
    /// Entries created.
    pub created: u64,
    /// Entries not created because one with the same tuple exists (EEXIST).
    pub existed: u64,
    /// Entries not created for another reason.
    pub failed: u64,
    /// The errno of the first of those.
    pub first_errno: Option<i32>,
}

/// A ctnetlink connection in one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    sock: Socket,
    rx: Vec<u8>,
    tx: MsgWriter,
    seq: u32,
    /// Upper bound of messages per batch so that every failure answer fits the receive buffer.
    batch_msgs: usize,
    /// The same for exact reads, whose every answer carries an entry.
    get_batch_msgs: usize,
}

impl Conntrack {
    /// Opens a handle in the caller's network namespace.
    pub fn open() -> Result<Self> {
        Self::with_socket(Socket::new()?)
    }

    /// Opens a handle in a named namespace (`/run/netns/NAME` or a path), or the caller's.
    pub fn open_in(netns: Option<&str>) -> Result<Self> {
        match netns {
            None => Self::open(),
            Some(name) => {
                let sock = crate::netns::run_in(name, Socket::new)??;
                Self::with_socket(sock)
            }
        }
    }

    fn with_socket(sock: Socket) -> Result<Self> {
        let rcv = sock.set_rcvbuf(8 << 20);
        sock.set_sndbuf(1 << 20);
        let batch_msgs = (rcv / RX_COST_PER_ANSWER).clamp(16, 8192);
        let get_batch_msgs = (rcv / RX_COST_PER_ENTRY).clamp(16, 1024);
        Ok(Conntrack {
            sock,
            rx: vec![0; RX_BUF],
            tx: MsgWriter::with_capacity(TX_BATCH_BYTES + 4096),
            seq: std::process::id().wrapping_mul(7919),
            batch_msgs,
            get_batch_msgs,
        })
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    fn send_tx(&mut self, op: &'static str) -> Result<()> {
        self.sock
            .send(self.tx.as_bytes())
            .map_err(|e| io_to_error(op, e))
    }

    fn recv(&mut self, op: &'static str) -> Result<usize> {
        self.sock.recv(&mut self.rx).map_err(|e| io_to_error(op, e))
    }

    /// Streams every entry that matches `filter` to `f`, straight from the receive buffer.
    /// `f` may stop early with `ControlFlow::Break`; the rest of the dump is then drained unparsed.
    pub fn dump<F>(&mut self, filter: &Filter, mut f: F) -> Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        let mut sum = DumpSummary::default();
        let mut stop = false;
        for fam in filter.families() {
            self.dump_family(fam, filter, &mut sum, &mut stop, &mut f)?;
            if stop {
                break;
            }
        }
        Ok(sum)
    }

    fn dump_family<F>(
        &mut self,
        family: Option<crate::Family>,
        filter: &Filter,
        sum: &mut DumpSummary,
        stop: &mut bool,
        f: &mut F,
    ) -> Result<()>
    where
        F: FnMut(&Flow) -> ControlFlow<()>,
    {
        self.dump_messages(family, filter, |m| {
            if m.header.flags & NLM_F_DUMP_INTR != 0 {
                sum.interrupted = true;
            }
            if *stop {
                return;
            }
            sum.seen += 1;
            match m.nfgen().and_then(|(g, attrs)| parse_flow(g.family, attrs)) {
                Ok(flow) => {
                    if filter.matches(&flow) {
                        sum.matched += 1;
                        if f(&flow).is_break() {
                            *stop = true;
                        }
                    }
                }
                Err(e) => {
                    sum.malformed += 1;
                    sum.first_error.get_or_insert(e);
                }
            }
        })
    }

    /// [`Conntrack::dump`] with the decoding off the receiving thread: this thread only receives
    /// (the kernel fills the next batch inside that `recv`) and walks message headers, while a
    /// second thread parses the entries of the batch before and hands them to `f`. On a machine
    /// with a spare core the kernel's walk of its table and our decoding overlap, instead of
    /// taking turns. Same results and summary as `dump`; `f` runs on the other thread (hence
    /// `Send`), in dump order.
    pub fn dump_pipelined<F>(&mut self, filter: &Filter, mut f: F) -> Result<DumpSummary>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        let mut sum = DumpSummary::default();
        let stop = std::sync::atomic::AtomicBool::new(false);
        for fam in filter.families() {
            self.dump_family_pipelined(fam, filter, &mut sum, &stop, &mut f)?;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        Ok(sum)
    }

    fn dump_family_pipelined<F>(
        &mut self,
        family: Option<crate::Family>,
        filter: &Filter,
        sum: &mut DumpSummary,
        stop: &std::sync::atomic::AtomicBool,
        f: &mut F,
    ) -> Result<()>
    where
        F: FnMut(&Flow) -> ControlFlow<()> + Send,
    {
        use std::sync::atomic::Ordering;
        use std::sync::mpsc;
        const OP: &str = "dump conntrack table";
        /// Batches received but not yet decoded (the receiver runs at most this far ahead).
        const AHEAD: usize = 2;
        let seq = self.next_seq(1);
        self.tx.clear();
        request::dump(&mut self.tx, seq, family, filter);
        self.send_tx(OP)?;
        let entry_type = msg_type(IPCTNL_MSG_CT_NEW);
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(AHEAD);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..=AHEAD {
            let _ = empty_tx.send(vec![0; self.rx.len()]);
        }
        let sock = &self.sock;
        std::thread::scope(|scope| {
            let decoder = scope.spawn(move || {
                let mut part = DumpSummary::default();
                for (buf, n) in full_rx {
                    for m in Messages::new(&buf[..n]).flatten() {
                        if m.header.seq != seq || m.header.kind != entry_type {
                            continue;
                        }
                        if m.header.flags & NLM_F_DUMP_INTR != 0 {
                            part.interrupted = true;
                        }
                        if stop.load(Ordering::Relaxed) {
                            continue;
                        }
                        part.seen += 1;
                        match m.nfgen().and_then(|(g, attrs)| parse_flow(g.family, attrs)) {
                            Ok(flow) => {
                                if filter.matches(&flow) {
                                    part.matched += 1;
                                    if f(&flow).is_break() {
                                        stop.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                            Err(e) => {
                                part.malformed += 1;
                                part.first_error.get_or_insert(e);
                            }
                        }
                    }
                    // The receiver may be gone (an error): the buffer is dropped then.
                    let _ = empty_tx.send(buf);
                }
                part
            });
            // This thread: receive, find the end (or an error) by the headers alone.
            let received: Result<()> = (|| loop {
                let mut buf = empty_rx.recv().map_err(|_| decoder_gone(OP))?;
                let n = sock.recv(&mut buf).map_err(|e| io_to_error(OP, e))?;
                let mut done = false;
                for m in Messages::new(&buf[..n]) {
                    let m = m.map_err(|source| Error::Malformed { op: OP, source })?;
                    if m.header.seq != seq {
                        continue;
                    }
                    match m.header.kind {
                        NLMSG_DONE => done = true,
                        NLMSG_ERROR => {
                            let (errno, msg) = m
                                .error()
                                .map_err(|source| Error::Malformed { op: OP, source })?;
                            if errno != 0 {
                                return Err(Error::from_errno(OP, errno, msg.map(str::to_string)));
                            }
                        }
                        _ => {}
                    }
                }
                if full_tx.send((buf, n)).is_err() {
                    return Err(decoder_gone(OP));
                }
                if done {
                    return Ok(());
                }
            })();
            drop(full_tx);
            let part = decoder.join().map_err(|_| decoder_gone(OP))?;
            sum.seen += part.seen;
            sum.matched += part.matched;
            sum.malformed += part.malformed;
            sum.interrupted |= part.interrupted;
            if sum.first_error.is_none() {
                sum.first_error = part.first_error;
            }
            received
        })
    }

    /// Hands every raw entry message of a dump (header included) to `f`: for byte captures,
    /// fixtures and forensics. No user-space filtering happens here.
    pub fn dump_raw<F>(
        &mut self,
        family: Option<crate::Family>,
        filter: &Filter,
        mut f: F,
    ) -> Result<()>
    where
        F: FnMut(&[u8]),
    {
        self.dump_messages(family, filter, |m| f(m.raw))
    }

    /// Sends one dump request and feeds each entry message to `on_entry` until NLMSG_DONE.
    fn dump_messages<F>(
        &mut self,
        family: Option<crate::Family>,
        filter: &Filter,
        mut on_entry: F,
    ) -> Result<()>
    where
        F: FnMut(&Message<'_>),
    {
        const OP: &str = "dump conntrack table";
        let seq = self.next_seq(1);
        self.tx.clear();
        request::dump(&mut self.tx, seq, family, filter);
        self.send_tx(OP)?;
        let entry_type = msg_type(IPCTNL_MSG_CT_NEW);
        loop {
            let n = self.recv(OP)?;
            for m in Messages::new(&self.rx[..n]) {
                let m = m.map_err(|source| Error::Malformed { op: OP, source })?;
                if m.header.seq != seq {
                    continue; // a late answer to an earlier request
                }
                match m.header.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let (errno, msg) = m
                            .error()
                            .map_err(|source| Error::Malformed { op: OP, source })?;
                        if errno != 0 {
                            return Err(Error::from_errno(OP, errno, msg.map(str::to_string)));
                        }
                    }
                    k if k == entry_type => on_entry(&m),
                    _ => {}
                }
            }
        }
    }

    /// Collects a dump into a vector (for small tables and tests; scans should stream).
    pub fn dump_vec(&mut self, filter: &Filter) -> Result<Vec<Flow>> {
        let mut v = Vec::new();
        self.dump(filter, |f| {
            v.push(*f);
            ControlFlow::Continue(())
        })?;
        Ok(v)
    }

    /// Sends a batch of messages built by `build` (one per item, no ACK flag, at most
    /// `per_batch` per `sendmsg`) plus a trailing ACKed no-op, and reports each item's answer:
    /// failures to `on_error(index, errno)` — only failures answer a delete or a create, so
    /// everything not reported succeeded — and other messages answering an item (the entry an
    /// exact read returns) to `on_data(index, message)`.
    fn batch<T, B, A, D>(
        &mut self,
        op: &'static str,
        items: &[T],
        per_batch: usize,
        mut build: B,
        mut on_error: A,
        mut on_data: D,
    ) -> Result<()>
    where
        B: FnMut(&mut MsgWriter, u32, &T) -> Result<()>,
        A: FnMut(usize, i32),
        D: FnMut(usize, &Message<'_>),
    {
        let mut start = 0;
        while start < items.len() {
            self.tx.clear();
            let base = self.seq;
            let mut end = start;
            while end < items.len() && end - start < per_batch && self.tx.len() < TX_BATCH_BYTES {
                let seq = base.wrapping_add((end - start) as u32);
                build(&mut self.tx, seq, &items[end])?;
                end += 1;
            }
            let count = (end - start) as u32;
            let ack_seq = base.wrapping_add(count);
            self.seq = ack_seq.wrapping_add(1);
            request::noop_ack(&mut self.tx, ack_seq);
            self.send_tx(op)?;
            'recv: loop {
                let n = self.recv(op)?;
                for m in Messages::new(&self.rx[..n]) {
                    let m = m.map_err(|source| Error::Malformed { op, source })?;
                    let seq = m.header.seq;
                    let off = seq.wrapping_sub(base);
                    if m.header.kind != NLMSG_ERROR {
                        if off < count {
                            on_data(start + off as usize, &m);
                        }
                        continue;
                    }
                    let (errno, msg) = m
                        .error()
                        .map_err(|source| Error::Malformed { op, source })?;
                    if seq == ack_seq {
                        if errno != 0 {
                            return Err(Error::from_errno(op, errno, msg.map(str::to_string)));
                        }
                        break 'recv;
                    }
                    if off < count && errno != 0 {
                        if errno == libc::EPERM {
                            return Err(Error::PermissionDenied { op });
                        }
                        on_error(start + off as usize, errno);
                    }
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Deletes exactly these entries (reply tuple + zone + id, see [`DeleteKey`]), many per
    /// `sendmsg`, and returns the outcome of each, in order.
    pub fn delete(&mut self, keys: &[DeleteKey]) -> Result<Vec<DeleteOutcome>> {
        let mut out = vec![DeleteOutcome::Deleted; keys.len()];
        let per_batch = self.batch_msgs;
        self.batch(
            "delete conntrack entries",
            keys,
            per_batch,
            request::delete,
            |i, errno| {
                out[i] = if errno == libc::ENOENT {
                    DeleteOutcome::AlreadyGone
                } else {
                    DeleteOutcome::Failed(errno)
                }
            },
            |_, _| {},
        )?;
        Ok(out)
    }

    /// Reads exactly these entries now (one CT_GET per key, by reply tuple and zone, many per
    /// `sendmsg`; no dump): what a verdict made from an earlier dump is checked against right
    /// before a delete. The kernel does not compare ids on a read: a `Found` entry may be a newer
    /// one with the same tuple, and the caller compares `id` itself.
    pub fn get(&mut self, keys: &[DeleteKey]) -> Result<Vec<Lookup>> {
        self.read_each(keys, request::get)
    }

    /// Reads the entries whose *original* tuple (in `zone`) is each of `keys`, now: whatever
    /// entry holds that tuple, old or new (a new connection from the same client port, or the
    /// same client re-routed to another backend). Which entry it is shows in its reply tuple.
    pub fn get_original(&mut self, keys: &[(Tuple, u16)]) -> Result<Vec<Lookup>> {
        self.read_each(keys, request::get_original)
    }

    fn read_each<K>(
        &mut self,
        keys: &[K],
        build: impl FnMut(&mut MsgWriter, u32, &K) -> Result<()>,
    ) -> Result<Vec<Lookup>> {
        const OP: &str = "read conntrack entries";
        // Until an answer arrives an item counts as failed: every request is answered (with the
        // entry or an error), so one left unanswered means the kernel dropped the answer.
        let mut out = vec![Lookup::Failed(libc::ENOBUFS); keys.len()];
        let mut found: Vec<(usize, Result<Flow, ParseError>)> = Vec::new();
        let entry_type = msg_type(IPCTNL_MSG_CT_NEW);
        let per_batch = self.get_batch_msgs;
        self.batch(
            OP,
            keys,
            per_batch,
            build,
            |i, errno| {
                out[i] = if errno == libc::ENOENT {
                    Lookup::Gone
                } else {
                    Lookup::Failed(errno)
                };
            },
            |i, m| {
                if m.header.kind == entry_type {
                    let flow = m.nfgen().and_then(|(g, attrs)| parse_flow(g.family, attrs));
                    found.push((i, flow));
                }
            },
        )?;
        for (i, flow) in found {
            let flow = flow.map_err(|source| Error::Malformed { op: OP, source })?;
            out[i] = Lookup::Found(flow);
        }
        Ok(out)
    }

    /// Creates entries, many per `sendmsg`.
    pub fn create(&mut self, flows: &[NewFlow]) -> Result<CreateSummary> {
        let mut sum = CreateSummary::default();
        let mut failed = 0u64;
        let mut existed = 0u64;
        let per_batch = self.batch_msgs;
        self.batch(
            "create conntrack entries",
            flows,
            per_batch,
            request::create,
            |_, errno| {
                if errno == libc::EEXIST {
                    existed += 1;
                } else {
                    failed += 1;
                    sum.first_errno.get_or_insert(errno);
                }
            },
            |_, _| {},
        )?;
        sum.existed = existed;
        sum.failed = failed;
        sum.created = flows.len() as u64 - existed - failed;
        Ok(sum)
    }

    /// Changes existing entries (status, TCP state, timeout), many per `sendmsg`; returns the
    /// errno of each change that failed (`None`: done), in order.
    pub fn update(&mut self, updates: &[FlowUpdate]) -> Result<Vec<Option<i32>>> {
        let mut out = vec![None; updates.len()];
        let per_batch = self.batch_msgs;
        self.batch(
            "update conntrack entries",
            updates,
            per_batch,
            request::update,
            |i, errno| out[i] = Some(errno),
            |_, _| {},
        )?;
        Ok(out)
    }

    /// The table's entry count and limit (no dump; what `conntrack -C` reads).
    pub fn stats(&mut self) -> Result<GlobalStats> {
        const OP: &str = "read conntrack statistics";
        let seq = self.next_seq(1);
        self.tx.clear();
        request::stats(&mut self.tx, seq);
        self.send_tx(OP)?;
        let mut out = None;
        loop {
            let n = self.recv(OP)?;
            for m in Messages::new(&self.rx[..n]) {
                let m = m.map_err(|source| Error::Malformed { op: OP, source })?;
                if m.header.seq != seq {
                    continue;
                }
                match m.header.kind {
                    NLMSG_ERROR => {
                        let (errno, msg) = m
                            .error()
                            .map_err(|source| Error::Malformed { op: OP, source })?;
                        if errno != 0 {
                            return Err(Error::from_errno(OP, errno, msg.map(str::to_string)));
                        }
                        return out.ok_or(Error::Malformed {
                            op: OP,
                            source: ParseError::Missing { what: "statistics" },
                        });
                    }
                    k if k == msg_type(IPCTNL_MSG_CT_GET_STATS) => {
                        let (_, attrs) = m
                            .nfgen()
                            .map_err(|source| Error::Malformed { op: OP, source })?;
                        out = Some(
                            GlobalStats::parse(attrs)
                                .map_err(|source| Error::Malformed { op: OP, source })?,
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// Per-CPU counters (what `conntrack -S` prints), straight from netlink: works on kernels
    /// without `/proc/net/stat/nf_conntrack`.
    pub fn stats_per_cpu(&mut self) -> Result<Vec<CpuStats>> {
        const OP: &str = "read per-CPU conntrack statistics";
        let seq = self.next_seq(1);
        self.tx.clear();
        request::stats_cpu(&mut self.tx, seq);
        self.send_tx(OP)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(OP)?;
            for m in Messages::new(&self.rx[..n]) {
                let m = m.map_err(|source| Error::Malformed { op: OP, source })?;
                if m.header.seq != seq {
                    continue;
                }
                match m.header.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let (errno, msg) = m
                            .error()
                            .map_err(|source| Error::Malformed { op: OP, source })?;
                        if errno != 0 {
                            return Err(Error::from_errno(OP, errno, msg.map(str::to_string)));
                        }
                    }
                    k if k == msg_type(IPCTNL_MSG_CT_GET_STATS_CPU) => {
                        let (g, attrs) = m
                            .nfgen()
                            .map_err(|source| Error::Malformed { op: OP, source })?;
                        out.push(
                            CpuStats::parse(g.res_id, attrs)
                                .map_err(|source| Error::Malformed { op: OP, source })?,
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// [`Conntrack::dump_pipelined`]'s decoding thread ended early (it panicked).
fn decoder_gone(op: &'static str) -> Error {
    Error::Io {
        op,
        source: io::Error::other("the decoding thread ended early"),
    }
}

pub(crate) fn io_to_error(op: &'static str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(errno @ (libc::EPERM | libc::EACCES | libc::EOPNOTSUPP)) => {
            Error::from_errno(op, errno, None)
        }
        _ => Error::Io { op, source: e },
    }
}
