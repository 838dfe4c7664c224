//! The reactor: the one thread that reads and changes the conntrack table for the agent.
//!
//! Dumps run inside `recvmsg`, so they live here, off the async runtime's workers. Work arrives as
//! [`Work`] items (a backend to look at, a full pass) and is coalesced into a [`Turn`]: a burst of
//! endpoint changes during a rollout becomes one targeted pass per backend, and any number of
//! "events were lost" signals become one full pass. A backend whose gate is not open yet
//! (kube-proxy behind, grace running) is parked with a due time and looked at again then.
//!
//! [`Reactor`] holds the table (any [`Table`]: the kernel's, or [`crate::table::MemTable`] in
//! tests), the [`World`] (kube-proxy, the API server, telemetry) and what it remembers between
//! turns; [`Reactor::turn`] is one turn, so that every decision — gate waits, breakers, targeted
//! passes, the re-check before a delete, report-only — is tested without root or a clock.
//!
//! - [`work`]: the input ([`Work`], [`Turn`]);
//! - [`world`]: what the reactor asks of the world ([`World`]);
//! - [`shared`]: the state shared with the rest of the agent ([`Shared`]);
//! - [`asks`]: the questions to the API server it keeps track of;
//! - [`report`]: what a pass did ([`PassReport`]), within bounded memory.

mod asks;
mod quiet_deletes;
mod report;
mod shared;
mod walker;
mod work;
mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use self::asks::{next_retry, Asked, HolderAsks, IP_ANSWER_TTL};
use self::report::{keep_shown, Settled};
use super::gate::{self, Breaker, DeleteBudget, Hold, KubeProxyView};
use super::prefetch::{self, Snapshot};
use super::supervisor::{Actor, Shutdown};
use crate::classify::classify;
use crate::cluster::ObjectKey;
use crate::policy::Policy;
use crate::scan::{classify_flows, Finding};
use crate::sweep::{sweep, Outcome, SweepTotals};
use crate::table::Table;
use crate::telemetry::metrics::stale_counts;
use crate::verdict::VerdictKind;

pub use self::quiet_deletes::{DestroyEvents, QUIET_AT};
pub use self::report::{services_of, PassKind, PassReport, MAX_KEPT_SHOWN};
pub use self::shared::Shared;
pub use self::walker::{spawn as spawn_walker, walk, Walked, Walker};
pub use self::work::{work_from_changes, Turn, Work};
pub use self::world::{HoldersAnswer, PodFate, World};

/// How often the flow index's size and state are reported between passes.
const FLOW_INDEX_EVERY: Duration = Duration::from_secs(5);

/// Reactor settings.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    pub policy: Policy,
    pub grace: Duration,
    /// Longest wait for a readable kube-proxy to sync after a removal (its `syncPeriod` + slack).
    pub kube_proxy_max_wait: Duration,
    pub resync_interval: Duration,
    /// Most of a core the periodic full passes may use, in percent (0: no limit).
    pub resync_cpu_percent: f64,
    pub breaker: Breaker,
    /// How long tombstones are kept.
    pub tombstone_ttl: Duration,
    /// The least time between two "who holds this IP?" questions about one backend (ghosts
    /// without a tombstone); zero: never ask.
    pub ip_lookup_every: Duration,
}

/// The reactor: the table it reads and changes, the world it asks, and what it remembers between
/// turns.
pub struct Reactor<T, W> {
    table: T,
    shared: Arc<Shared>,
    world: W,
    cfg: ReactorConfig,
    /// Backends waiting for their gate, with the time to look again.
    parked: HashMap<IpAddr, Instant>,
    /// Flows of backends whose gate is still closed, read while waiting.
    prefetched: HashMap<IpAddr, Snapshot>,
    /// Backends with removable flows that a passing hold kept (a watch relisting or quiet):
    /// looked at again as soon as the global gate opens, not at the next full pass minutes later.
    held_back: HashSet<IpAddr>,
    /// The brake across passes.
    budget: DeleteBudget,
    /// The backoff of backends whose pod GET went unanswered.
    backoff: HashMap<IpAddr, Duration>,
    asks: HolderAsks,
    next_full: Instant,
    /// A full pass was asked for (due, or lost events) and has not begun yet: the walker was
    /// busy with the previous one.
    full_wanted: bool,
    /// The thread that walks the table for full passes; `None`: walks run inline.
    walker: Option<Walker>,
    /// The resync interval last logged (logged when it moves by more than a tenth).
    resync_logged: Duration,
}

/// A pass's findings with what the report needs to say about them.
struct Judged {
    kind: PassKind,
    findings: Vec<Finding>,
    scanned: u64,
    service_flows: u64,
    span: Span,
    /// Targeted passes: when the backend left its Service, and when its gate opened.
    removed_at: Option<Timestamp>,
    gate_opened: Option<Instant>,
}

/// When a pass began, and when the flows it judges were read from the kernel (a prefetched
/// snapshot is older than its pass): the sweep refuses verdicts from a dump older than its
/// `max_verdict_age`.
#[derive(Debug, Clone, Copy)]
struct Span {
    started: Instant,
    dumped_at: Instant,
}

/// A backend whose gate is open, with its flows and when they were read.
struct Ready {
    ip: IpAddr,
    removed_at: Option<Timestamp>,
    flows: Vec<ctnetlink::Flow>,
    read_at: Instant,
    /// Read through the flow index (exact reads), not a walk of the table.
    by_index: bool,
}

impl<T: Table, W: World> Reactor<T, W> {
    /// A reactor whose first turn makes a full pass.
    pub fn new(table: T, shared: Arc<Shared>, world: W, cfg: ReactorConfig) -> Self {
        Reactor {
            table,
            shared,
            world,
            budget: DeleteBudget::new(cfg.breaker.max_deletes_per_minute),
            resync_logged: cfg.resync_interval,
            cfg,
            parked: HashMap::new(),
            prefetched: HashMap::new(),
            held_back: HashSet::new(),
            backoff: HashMap::new(),
            asks: HolderAsks::default(),
            next_full: Instant::now(),
            full_wanted: false,
            walker: None,
        }
    }

    /// Full passes walk the table on `walker`'s thread; the reactor acts on what it finds.
    pub fn with_walker(mut self, walker: Walker) -> Self {
        self.walker = Some(walker);
        self
    }

    /// Runs turns until the shutdown or until the work channel closes.
    pub fn run(mut self, work: Receiver<Work>, stop: Shutdown) {
        // A first reading of kube-proxy's sync metrics: the duration of the first sync after a
        // removal is measured against it.
        self.world.kube_proxy();
        let mut index_told = Instant::now();
        loop {
            if stop.is_set() {
                return;
            }
            self.world.tick();
            if index_told.elapsed() >= FLOW_INDEX_EVERY && self.shared.flows.is_live() {
                index_told = Instant::now();
                self.world.flow_index(&self.shared.flows.summary());
            }
            let wait = self
                .next_due()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            let mut turn = Turn::default();
            match work.recv_timeout(wait) {
                Ok(w) => {
                    turn.absorb(&self.shared, w);
                    // Coalesce everything already queued.
                    while let Ok(w) = work.try_recv() {
                        turn.absorb(&self.shared, w);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if stop.is_set() {
                return;
            }
            self.turn(turn);
        }
    }

    /// When the reactor has something to do without being asked: a parked backend is due, or
    /// the next full pass.
    fn next_due(&self) -> Instant {
        self.parked
            .values()
            .copied()
            .min()
            .unwrap_or(self.next_full)
            .min(self.next_full)
    }

    /// One turn: the work given, plus the parked backends now due, the held-back ones when the
    /// global gate has opened, and the full pass when it is due.
    pub fn turn(&mut self, mut turn: Turn) {
        let now = Instant::now();
        if now >= self.next_full {
            turn.full = true;
        }
        self.parked.retain(|ip, due| {
            if *due <= now {
                turn.backends.insert(*ip);
                false
            } else {
                true
            }
        });
        if !self.held_back.is_empty() && self.world.global().check().is_ok() {
            turn.backends.extend(self.held_back.drain());
        }
        expire_tombstones(&self.shared, self.cfg.tombstone_ttl);
        self.asks.begin_turn();
        self.full_wanted |= turn.full;
        let mut acted_on_full = false;
        if self.full_wanted {
            match &mut self.walker {
                Some(w) => {
                    if w.start() {
                        self.full_wanted = false;
                        // Scheduled again when this walk is acted on.
                        self.next_full = Instant::now() + Duration::from_secs(3600);
                    }
                }
                None => {
                    self.full_wanted = false;
                    let walked = walker::walk(&mut self.table, &self.shared, &self.cfg.policy);
                    self.full_pass(walked);
                    acted_on_full = true;
                }
            }
        }
        if let Some(walked) = self.walker.as_mut().and_then(Walker::finished) {
            self.full_pass(walked);
            acted_on_full = true;
        }
        self.prefetched
            .retain(|_, s| s.taken.elapsed() <= prefetch::MAX_AGE);
        let many = turn.backends.len() > prefetch::MAX_SEPARATE_READS;
        // An inline pass in this turn has judged every flow with the index as it is now; a walk
        // on the walker's thread may be older than the turn's backends.
        let judged_all = acted_on_full && self.walker.is_none();
        self.targeted(turn.backends, judged_all);
        if acted_on_full || many {
            // The peaks of a pass are over (findings, flows read for many backends at once).
            super::memory::release_freed_memory();
        }
    }

    /// The next periodic full pass: the interval, stretched by `--resync-cpu-percent` after a
    /// pass that cost `cost` of CPU (the walk's thread and the reactor's). Returns the interval.
    fn schedule_next_full(&mut self, elapsed: Duration, cost: Duration) -> Duration {
        let every = resync_every(self.cfg.resync_interval, self.cfg.resync_cpu_percent, cost);
        // Logged when it starts and when it moves by more than a tenth.
        let moved = every.abs_diff(self.resync_logged) > self.resync_logged / 10;
        if every > self.cfg.resync_interval && moved {
            tracing::info!(
                every_s = every.as_secs(),
                pass_ms = elapsed.as_millis() as u64,
                pass_cpu_ms = cost.as_millis() as u64,
                "full passes stretched to stay under --resync-cpu-percent of a core"
            );
        }
        if moved {
            self.resync_logged = every;
        }
        self.next_full = Instant::now() + every;
        every
    }

    /// Parks `ip` until `due`, or earlier if it is already parked for sooner.
    fn park_by(&mut self, ip: IpAddr, due: Instant) {
        let p = self.parked.entry(ip).or_insert(due);
        *p = (*p).min(due);
    }

    /// The gate of one backend ([`backend_gate`]), with kube-proxy's view cached for the turn.
    fn gate(
        &mut self,
        ip: IpAddr,
        synced: &mut Option<KubeProxyView>,
    ) -> Result<Option<Timestamp>, Duration> {
        backend_gate(&self.shared, &mut self.world, &self.cfg, ip, synced)
    }

    /// The targeted passes of one turn. Backends whose gate is closed are parked, and their flows
    /// are read now (see [`prefetch`]); backends whose gate is open are classified and swept, from
    /// their snapshot when it is still good, else from a fresh read. A full pass in the same turn
    /// has already judged every flow with the same index, so open backends are left to it.
    fn targeted(&mut self, backends: HashSet<IpAddr>, full_ran: bool) {
        let started = Instant::now();
        let mut open: Vec<(IpAddr, Option<Timestamp>)> = Vec::new();
        let mut waiting: Vec<IpAddr> = Vec::new();
        // kube-proxy is read once per turn, however many backends wait on it (a rollout parks
        // hundreds, all due at about the same time).
        let mut synced = None;
        for ip in backends {
            match self.gate(ip, &mut synced) {
                Ok(removed_at) => open.push((ip, removed_at)),
                Err(again) => {
                    self.parked.insert(ip, Instant::now() + again);
                    waiting.push(ip);
                }
            }
        }
        let gate_opened = Instant::now();
        if full_ran {
            for (ip, _) in open.drain(..) {
                self.prefetched.remove(&ip);
            }
        }
        self.prefetch(waiting);
        let reading = Instant::now();
        let ready = self.read_open(open);
        if !ready.is_empty() {
            tracing::debug!(
                backends = ready.len(),
                flows = ready.iter().map(|b| b.flows.len()).sum::<usize>(),
                read_ms = reading.elapsed().as_secs_f64() * 1e3,
                "read the flows of the backends whose gate opened"
            );
        }
        // Reported once every backend's deletes are done: the metrics, logs and events of one
        // backend (~1 ms at 1,650 flows) do not delay the next one's deletes.
        let mut reports = Vec::with_capacity(ready.len());
        for b in ready {
            if b.flows.is_empty() {
                continue;
            }
            reports.extend(self.judge_and_act(b, started, gate_opened, &mut synced));
        }
        for r in &reports {
            self.world.report(r);
        }
    }

    /// Gate closed: reads the flows of the waiting backends now, while they wait — exactly
    /// through the flow index when it is trusted, else by a walk. A backend whose flows keep
    /// changing (kube-proxy still sends it new ones) is re-read at most every
    /// [`prefetch::REREAD_EVERY`]. The opening reads it again anyway when its snapshot is not
    /// usable then. The pod GETs start now too.
    fn prefetch(&mut self, waiting: Vec<IpAddr>) {
        if waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let marks = &self.shared.event_marks;
        let need: Vec<IpAddr> = waiting
            .into_iter()
            .filter(|ip| match self.prefetched.get(ip) {
                None => true,
                Some(s) => {
                    !s.usable(marks, *ip, now)
                        && now.saturating_duration_since(s.taken) >= prefetch::REREAD_EVERY
                }
            })
            .collect();
        if need.is_empty() {
            return;
        }
        let reading = Instant::now();
        let snaps = match prefetch::read_indexed(&mut self.table, marks, &self.shared.flows, &need)
        {
            Some(snaps) => snaps,
            None => match prefetch::read(&mut self.table, marks, &need) {
                Ok(snaps) => snaps.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading a removed backend's flows failed");
                    return;
                }
            },
        };
        tracing::debug!(
            backends = snaps.len(),
            flows = snaps.iter().map(|(_, s)| s.flows.len()).sum::<usize>(),
            by_index = snaps.first().is_some_and(|(_, s)| s.by_index),
            read_ms = reading.elapsed().as_secs_f64() * 1e3,
            "read the flows of waiting backends"
        );
        for (ip, snap) in snaps {
            if !snap.flows.is_empty() {
                // The pod GET, too, starts during the wait (its answer is used when the gate
                // opens; an unanswered one is asked again then).
                confirm_pods(&self.shared, &mut self.world, ip);
            }
            self.prefetched.insert(ip, snap);
        }
    }

    /// Gate open: the flows of each backend — from its snapshot when still good, else read now:
    /// through the flow index when it is trusted (an exact read of each entry it names, no walk),
    /// else by a walk.
    fn read_open(&mut self, open: Vec<(IpAddr, Option<Timestamp>)>) -> Vec<Ready> {
        if open.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let marks = &self.shared.event_marks;
        let mut ready = Vec::new();
        let mut reread: Vec<(IpAddr, Option<Timestamp>)> = Vec::new();
        for (ip, removed_at) in open {
            match self.prefetched.remove(&ip) {
                Some(s) if s.usable(marks, ip, now) => ready.push(Ready {
                    ip,
                    removed_at,
                    flows: s.flows,
                    read_at: s.taken,
                    by_index: s.by_index,
                }),
                _ => reread.push((ip, removed_at)),
            }
        }
        if reread.is_empty() {
            return ready;
        }
        let ips: Vec<IpAddr> = reread.iter().map(|(ip, _)| *ip).collect();
        let read_at = Instant::now();
        let mut snaps: HashMap<IpAddr, Snapshot> =
            match prefetch::read_indexed(&mut self.table, marks, &self.shared.flows, &ips) {
                Some(snaps) => snaps.into_iter().collect(),
                None => match prefetch::read(&mut self.table, marks, &ips) {
                    Ok(snaps) => snaps,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a backend's flows failed");
                        return ready;
                    }
                },
            };
        for (ip, removed_at) in reread {
            let (flows, by_index) = snaps
                .remove(&ip)
                .map(|s| (s.flows, s.by_index))
                .unwrap_or_default();
            ready.push(Ready {
                ip,
                removed_at,
                flows,
                read_at,
                by_index,
            });
        }
        ready
    }

    /// One open backend: its pods confirmed (only now that this node holds flows to it), the
    /// API server asked who holds the IP when no tombstone speaks for it, its flows judged and
    /// acted on.
    fn judge_and_act(
        &mut self,
        b: Ready,
        started: Instant,
        gate_opened: Instant,
        synced: &mut Option<KubeProxyView>,
    ) -> Option<PassReport> {
        let ip = b.ip;
        match confirm_pods(&self.shared, &mut self.world, ip) {
            // Kept for now (the evidence is unknown); asked again soon, with backoff.
            Confirmed::Unanswered => {
                let again = next_retry(&mut self.backoff, ip);
                self.parked.insert(ip, Instant::now() + again);
            }
            Confirmed::Answered => {
                self.backoff.remove(&ip);
            }
            // Kept for now, not parked: the answer (gone, or none) wakes the reactor.
            Confirmed::Pending => {}
        }
        let mut findings = {
            let ix = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
            classify_flows(&b.flows, &ix, &self.cfg.policy)
        };
        // A ghost without a tombstone: ask the API server who holds the IP.
        let asked = self
            .asks
            .ask(&self.shared, &mut self.world, &self.cfg, ip, &findings);
        match asked {
            Asked::Recorded(soon) => {
                // The answer is the change: its flows wait for a sync that began after it.
                if let Err(again) = self.gate(ip, synced) {
                    self.parked.insert(ip, Instant::now() + again);
                    return None;
                }
                let ix = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
                findings = classify_flows(&b.flows, &ix, &self.cfg.policy);
                drop(ix);
                if let Some(d) = soon {
                    self.park_by(ip, Instant::now() + d);
                }
            }
            Asked::Unanswered(again) => self.park_by(ip, Instant::now() + again),
            Asked::No | Asked::Pending => {}
        }
        let n = b.flows.len() as u64;
        let r = self.act(Judged {
            kind: PassKind::Targeted,
            findings,
            scanned: n,
            service_flows: n,
            span: Span {
                started,
                dumped_at: b.read_at,
            },
            removed_at: b.removed_at,
            gate_opened: Some(gate_opened),
        });
        let mut r = r;
        r.read_by_index = b.by_index;
        if r.held.as_ref().is_some_and(Hold::lifts_by_itself) {
            self.held_back.insert(ip);
        }
        if !r.redo_backends.is_empty() {
            self.parked.insert(ip, Instant::now());
        }
        Some(r)
    }

    /// Acts on a full pass's walk ([`walker::walk`]): backends whose change kube-proxy may not
    /// have programmed yet are left to their targeted pass; the pods of the others are
    /// confirmed, ghosts without a tombstone asked about, and what is removable removed. Then
    /// the pass is reported and the next one scheduled.
    fn full_pass(&mut self, walked: Walked) {
        let Walked {
            started,
            report,
            settled,
            cost,
        } = walked;
        let (r, act_cost) = super::cpu::cost_of(|| self.act_on_walk(started, report, settled));
        if r.held.as_ref().is_some_and(Hold::lifts_by_itself) {
            self.held_back.extend(r.held_backends.iter().copied());
        }
        let now = Instant::now();
        self.parked
            .extend(r.redo_backends.iter().map(|ip| (*ip, now)));
        let mut r = r;
        r.next_full_in = Some(self.schedule_next_full(r.elapsed, cost + act_cost));
        self.world.report(&r);
    }

    fn act_on_walk(
        &mut self,
        started: Instant,
        report: ctnetlink::Result<crate::scan::ScanReport>,
        settled: Settled,
    ) -> PassReport {
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "full scan failed");
                return PassReport::nothing(PassKind::Full, started);
            }
        };
        let (by_state, by_service) = (report.by_state, report.by_service);
        let service_flows = report.scanned
            - report
                .counts
                .get(&VerdictKind::NotService)
                .copied()
                .unwrap_or(0);
        let mut findings = report.findings;
        let mut synced = None;
        let not_yet = self.gate_backends_of(&findings, &mut synced);
        // A removable flow without a backend leans on the baseline alone.
        let baseline_open = gate::kube_proxy_caught_up(
            self.shared.changed_at(),
            synced.get_or_insert_with(|| self.world.kube_proxy()),
            self.cfg.grace,
            self.cfg.kube_proxy_max_wait,
            Timestamp::now(),
        )
        .is_ok();
        // Judge the findings again with the index as it is now: evidence may have been recorded
        // on the way (pods confirmed gone, an API answer), and the walk read the index flow by
        // flow while the watch changed it, up to a whole walk ago (a backend may be back).
        {
            let ix = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
            let now = Timestamp::now();
            for f in &mut findings {
                f.verdict = classify(&f.flow, &ix, &self.cfg.policy, now);
            }
        }
        for f in &mut findings {
            let wait = match f.verdict.backend {
                Some(b) => not_yet.contains(&b.ip),
                None => !baseline_open,
            };
            if wait {
                f.verdict.removable = false;
            }
        }
        let mut r = self.act(Judged {
            kind: PassKind::Full,
            findings,
            scanned: report.scanned,
            service_flows,
            span: Span {
                started,
                dumped_at: started,
            },
            removed_at: None,
            gate_opened: None,
        });
        r.by_state = by_state;
        r.by_service = by_service;
        settled.add_to(&mut r);
        r
    }

    /// The gates of the backends of a full pass's stale and removable findings: those whose
    /// gate is closed (`not_yet`: parked for their targeted pass). Evidence recorded on the way
    /// (pods confirmed gone, an API answer) is in the index when the findings are judged again.
    fn gate_backends_of(
        &mut self,
        findings: &[Finding],
        synced: &mut Option<KubeProxyView>,
    ) -> HashSet<IpAddr> {
        let backends: BTreeMap<IpAddr, ()> = findings
            .iter()
            .filter(|f| f.verdict.kind.is_stale() || f.verdict.removable)
            .filter_map(|f| f.verdict.backend.map(|b| (b.ip, ())))
            .collect();
        let mut not_yet: HashSet<IpAddr> = HashSet::new();
        for ip in backends.into_keys() {
            match self.gate(ip, synced) {
                Ok(Some(_)) => {
                    match confirm_pods(&self.shared, &mut self.world, ip) {
                        Confirmed::Unanswered => {
                            let again = next_retry(&mut self.backoff, ip);
                            self.parked.insert(ip, Instant::now() + again);
                        }
                        Confirmed::Answered => {
                            self.backoff.remove(&ip);
                        }
                        // Kept for now; the answer wakes the reactor.
                        Confirmed::Pending => {}
                    }
                }
                Ok(None) => {
                    // No tombstone, and kube-proxy has synced since the agent started (and the
                    // last Service removal): a ghost older than the agent may be proved gone by
                    // the API.
                    let asked =
                        self.asks
                            .ask(&self.shared, &mut self.world, &self.cfg, ip, findings);
                    match asked {
                        Asked::Recorded(soon) => {
                            // The answer is the change: its flows wait for a sync that began
                            // after it (their targeted pass deletes them then).
                            if let Err(again) = self.gate(ip, synced) {
                                self.parked.insert(ip, Instant::now() + again);
                                not_yet.insert(ip);
                            } else if let Some(d) = soon {
                                self.parked.insert(ip, Instant::now() + d);
                            }
                        }
                        Asked::Unanswered(again) => {
                            self.parked.insert(ip, Instant::now() + again);
                        }
                        Asked::No | Asked::Pending => {}
                    }
                }
                Err(again) => {
                    self.parked.insert(ip, Instant::now() + again);
                    not_yet.insert(ip);
                }
            }
        }
        not_yet
    }

    /// Applies the global gate and the circuit breakers (this pass's share, and the budget across
    /// passes), then deletes what is removable — the sweep re-reads what only half-open made
    /// removable, and deletes by reply tuple and id, so a newer entry is never hit.
    fn act(&mut self, pass: Judged) -> PassReport {
        let Judged {
            kind,
            findings,
            scanned,
            service_flows,
            span,
            removed_at,
            gate_opened,
        } = pass;
        let planned = findings.iter().filter(|f| f.verdict.removable).count() as u64;
        let (held, trips) = self.brakes(kind, planned, service_flows);
        let circuit_open = trips || self.budget.tripped().is_some();
        self.shared
            .circuit_open
            .store(circuit_open, Ordering::Relaxed);
        let dry = held.is_some() || planned == 0;
        let quiet = if dry {
            None
        } else {
            quiet_deletes::begin(&self.shared.flows, self.shared.destroy_events(), &findings)
        };
        let (outcomes, totals) = match sweep(&mut self.table, &findings, dry, span.dumped_at) {
            Ok((o, t, _)) => (o, t),
            Err(e) => {
                tracing::warn!(error = %e, "delete failed");
                (
                    vec![Outcome::Failed; findings.len()],
                    SweepTotals {
                        failed: planned,
                        ..Default::default()
                    },
                )
            }
        };
        let without_destroy_events = quiet.is_some();
        if let Some(q) = quiet {
            q.end(&findings, &outcomes);
        }
        self.budget.spend(totals.deleted, Instant::now());
        let held = if planned > 0 { held } else { None };
        let stale = stale_counts(&findings);
        let held_backends = if held.is_some() {
            backends_where(findings.iter().map(|f| (f, f.verdict.removable)))
        } else {
            Vec::new()
        };
        let redo_backends = backends_where(
            findings
                .iter()
                .zip(&outcomes)
                .map(|(f, o)| (f, *o == Outcome::StaleVerdict)),
        );
        if !redo_backends.is_empty() {
            tracing::info!(
                backends = redo_backends.len(),
                flows = totals.stale_verdict,
                "verdicts older than the sweep allows (slow pass or pod lookups): judging those backends again"
            );
        }
        let (findings, not_shown) = keep_shown(findings.into_iter().zip(outcomes));
        PassReport {
            kind,
            started: span.started,
            elapsed: span.started.elapsed(),
            scanned,
            service_flows,
            findings,
            not_shown,
            stale,
            held_backends,
            redo_backends,
            totals,
            held,
            circuit_open,
            removed_at,
            gate_opened,
            acted_at: Instant::now(),
            by_state: BTreeMap::new(),
            by_service: HashMap::new(),
            read_by_index: false,
            without_destroy_events,
            next_full_in: None,
            flow_index: self
                .shared
                .flows
                .is_live()
                .then(|| self.shared.flows.summary()),
        }
    }

    /// Why a pass that plans `planned` removals must only report, if it must: the global gate,
    /// this pass's share of the node's service flows, or the budget across passes. Also whether
    /// this pass's own breaker tripped.
    fn brakes(&mut self, kind: PassKind, planned: u64, service_flows: u64) -> (Option<Hold>, bool) {
        let mut held = self.world.global().check().err();
        let breaker = &self.cfg.breaker;
        let trips = kind == PassKind::Full && breaker.trips(planned, service_flows)
            || planned > breaker.max_deletes_per_pass;
        if held.is_none() && trips {
            tracing::warn!(
                planned,
                service_flows,
                "circuit breaker open: too many removals at once; reporting only"
            );
            held = Some(Hold::CircuitOpen);
        }
        if held.is_none() && planned > 0 {
            if let Err(trip) = self.budget.admit(planned, Instant::now()) {
                if let Some(t) = trip {
                    self.world.circuit_tripped(&t);
                }
                held = Some(Hold::CircuitOpen);
            }
        }
        (held, trips)
    }
}

/// Starts the reactor actor (a thread: dumps run inside `recvmsg`). It waits until the index holds
/// the first list of every kind: a full pass over a partial view (Services listed, their slices
/// not yet) would call healthy flows stale and publish that in `conntrack_stale_entries` at
/// every start. (The watches' own "synced" comes a moment before the index has applied the list.)
pub fn spawn<T, W>(
    reactor: Reactor<T, W>,
    work: Receiver<Work>,
    shutdown: Shutdown,
) -> std::io::Result<Actor>
where
    T: Table + Send + 'static,
    W: World + 'static,
{
    Actor::thread("reactor", move || {
        while !reactor.shared.initial_sync_done.load(Ordering::Relaxed) {
            if shutdown.is_set() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        reactor.run(work, shutdown);
        Ok(())
    })
}

/// The backends of the findings for which `pick` is true, each once, in order.
fn backends_where<'a>(findings: impl Iterator<Item = (&'a Finding, bool)>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for (f, pick) in findings {
        if let Some(b) = f.verdict.backend.filter(|_| pick) {
            if !out.contains(&b.ip) {
                out.push(b.ip);
            }
        }
    }
    out
}

/// The time to the next periodic full pass: `interval`, stretched so that a pass that cost `took`
/// of the reactor thread's CPU time (user and system: the kernel's dump runs in the agent's own
/// `recvmsg`) uses at most `cpu_percent` of a core. The fast paths (targeted passes, NEW events)
/// do not wait for it.
fn resync_every(interval: Duration, cpu_percent: f64, took: Duration) -> Duration {
    if !(cpu_percent > 0.0 && cpu_percent.is_finite()) {
        return interval;
    }
    let needed = took.as_secs_f64() * 100.0 / cpu_percent;
    interval.max(
        Duration::try_from_secs_f64(needed)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(3600)),
    )
}

fn expire_tombstones(shared: &Shared, ttl: Duration) {
    let before = |d: Duration| {
        Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(d).unwrap_or_default())
            .unwrap_or(Timestamp::UNIX_EPOCH)
    };
    let cutoff = before(ttl);
    let expired = {
        let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
        if !ix.ip_answers().is_empty() {
            ix.ip_answers_mut().expire(before(IP_ANSWER_TTL));
        }
        ix.expire_pods_left(cutoff);
        ix.tombstones_mut().expire(cutoff)
    };
    // Also while any backend is dead: cheap (nothing is written when the set is unchanged) and
    // it heals a set or filter that missed a change.
    if expired > 0 || !shared.dead_backends().is_empty() {
        shared.refresh_dead_backends();
        let live = shared.dead_backends().clone();
        shared.event_marks.retain(&live);
    }
}

/// Whether kube-proxy has caught up with every change the flows of `ip` lean on: the latest
/// removal among the tombstones at `ip`, the API server's first "no pod at this IP" (a backend
/// without a tombstone), and the agent's baseline (its start, the last removal of a Service)
/// for flows no tombstone covers. `Ok` carries the tombstones' latest removal
/// (for the reaction metrics). `synced` caches kube-proxy's view for the caller's turn.
fn backend_gate(
    shared: &Shared,
    world: &mut impl World,
    cfg: &ReactorConfig,
    ip: IpAddr,
    synced: &mut Option<KubeProxyView>,
) -> Result<Option<Timestamp>, Duration> {
    let (latest, answered, pod_left) = {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        let latest = ix.tombstones().at(&ip).iter().map(|t| t.removed_at).max();
        // Without a tombstone (the endpoint's removal was hidden from the agent), the pod
        // watch's "deleted" is when the agent learnt of it.
        let pod_left = latest.is_none().then(|| ix.pod_left_at(&ip)).flatten();
        (latest, ix.ip_answers().absent_since(&ip), pod_left)
    };
    // The API server's "no pod at this IP" is when the agent learnt that a backend it never
    // knew (no tombstone) is gone: kube-proxy may not have removed it before then.
    let change = [latest, answered, pod_left]
        .into_iter()
        .flatten()
        .fold(shared.changed_at(), Timestamp::max);
    let view = *synced.get_or_insert_with(|| world.kube_proxy());
    let verdict = gate::kube_proxy_caught_up(
        change,
        &view,
        cfg.grace,
        cfg.kube_proxy_max_wait,
        Timestamp::now(),
    );
    tracing::debug!(
        backend = %ip,
        removed_at = ?latest,
        no_pod_at_ip_since = ?answered,
        pod_left = ?pod_left,
        change = %change,
        sync_began_after = ?view.began_after,
        failing = view.failing,
        hold = ?verdict.as_ref().err().map(|(h, _)| h.label()),
        "gate"
    );
    shared.waits_on_kube_proxy(ip, verdict.is_err());
    verdict.map(|()| latest).map_err(|(_, again)| again)
}

/// Asks the API server about the pods named by the tombstones at `ip` — only when this node
/// holds flows to it. Always for a managed endpoint not yet confirmed gone, terminating or not:
/// an endpoint that left its slice while terminating may have been deselected (labels changed,
/// a controller that drops terminating endpoints) and still drain. A pod is its namespace, name
/// and uid: a 404 for `a/web-0` says nothing about `b/web-0`. The lookups run off the reactor
/// ([`World::pod_fate`] returns at once): each tombstone's pod is asked about, whatever the
/// others' answers. While any is unanswered or pending the flows are kept (unknown is not gone).
fn confirm_pods(shared: &Shared, world: &mut impl World, ip: IpAddr) -> Confirmed {
    let asks: Vec<(ObjectKey, Option<crate::cluster::Uid>)> = {
        let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
        ix.tombstones()
            .at(&ip)
            .iter()
            .filter(|t| t.managed && !t.pod_gone)
            .filter_map(|t| {
                // A Pod targetRef lives in the namespace of its Service's slices.
                t.pod.as_ref().map(|p| {
                    (
                        ObjectKey {
                            namespace: t.service.namespace.clone(),
                            name: p.name.clone(),
                        },
                        p.uid.clone(),
                    )
                })
            })
            .collect()
    };
    let mut asked: Vec<&ObjectKey> = Vec::new();
    let mut out = Confirmed::Answered;
    for (key, uid) in &asks {
        // Two Services' tombstones may name one pod.
        if asked.contains(&key) {
            continue;
        }
        asked.push(key);
        let uid_text = uid.as_ref().map(|u| u.to_string());
        match world.pod_fate(&key.namespace, &key.name, uid_text.as_deref(), ip) {
            PodFate::Gone => {
                let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                ix.tombstones_mut().mark_pod_gone(&ip, key, uid.as_ref());
            }
            PodFate::Alive => {}
            PodFate::Pending => out = out.max(Confirmed::Pending),
            PodFate::Unknown => out = Confirmed::Unanswered,
        }
    }
    out
}

/// What asking about the pods of a backend's tombstones came to (the worst of its answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Confirmed {
    /// Every pod asked about was answered (or none needed asking).
    Answered,
    /// Some lookup is under way: its answer wakes the reactor; do not park the backend.
    Pending,
    /// Some lookup went unanswered (error, timeout): park the backend with backoff.
    Unanswered,
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod scenario;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod turn_tests;
