//! The delete gate (issue #4, section 2): when a flow the decision table calls removable may
//! actually be removed by the agent. Pure: every input is a value, so every rule is unit-tested.
//!
//! 1. The cluster view is complete and fresh: every watch synced and heard from recently.
//! 2. kube-proxy has caught up with the endpoint's removal, or the next packet of the flow is
//!    DNAT'd by the old rules straight back to the dead backend and the ghost is recreated.
//! 3. The evidence suffices for the protocol (the classifier's `removable`, with the agent's
//!    tombstone + pod GET evidence).
//! 4. The circuit breaker: never more than a fixed number, and never more than 90 % of this node's
//!    service flows, in one pass — a snapshot that lost every endpoint at once is a broken view,
//!    not a cluster-wide outage to act on.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

pub use crate::kube_proxy::SyncReading;

/// Why the agent reports instead of removing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Hold {
    /// `--dry-run`.
    DryRun,
    /// kube-proxy runs in IPVS mode, or no kube-proxy DNAT exists (eBPF dataplane).
    Dataplane { detail: String },
    /// A watch has not finished its initial list.
    NotSynced { kinds: Vec<String> },
    /// A watch has been silent longer than its expected interval.
    Stale { kinds: Vec<String> },
    /// kube-proxy has not completed a sync that began after the endpoint's removal.
    KubeProxyBehind,
    /// kube-proxy reports failing syncs (or an unhealthy `/healthz`): its rules may be anything.
    KubeProxyFailing,
    /// kube-proxy cannot be read: wait `--grace` after the removal instead.
    Grace,
    /// The circuit breaker is open.
    CircuitOpen,
}

impl Hold {
    /// Short label for metrics (`ghostbuster_report_only{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            Hold::DryRun => "dry_run",
            Hold::Dataplane { .. } => "dataplane",
            Hold::NotSynced { .. } => "not_synced",
            Hold::Stale { .. } => "watch_stale",
            Hold::KubeProxyBehind => "kube_proxy_behind",
            Hold::KubeProxyFailing => "kube_proxy_failing",
            Hold::Grace => "grace",
            Hold::CircuitOpen => "circuit_open",
        }
    }

    /// A hold that lifts without anything changing about the backends it held: a watch that
    /// finishes its relist or is heard from again. What it held is worth looking at as soon as
    /// it lifts (the others lift with a change that brings its own look, or never).
    pub fn lifts_by_itself(&self) -> bool {
        matches!(self, Hold::NotSynced { .. } | Hold::Stale { .. })
    }
}

/// The state that gates every delete of a pass.
#[derive(Debug, Clone, Default)]
pub struct Global {
    pub dry_run: bool,
    pub dataplane: Option<String>,
    pub unsynced: Vec<String>,
    pub stale: Vec<String>,
}

impl Global {
    /// Rule 1 and the report-only modes: `Ok` when deletes may happen at all.
    pub fn check(&self) -> Result<(), Hold> {
        if self.dry_run {
            return Err(Hold::DryRun);
        }
        if let Some(d) = &self.dataplane {
            return Err(Hold::Dataplane { detail: d.clone() });
        }
        if !self.unsynced.is_empty() {
            return Err(Hold::NotSynced {
                kinds: self.unsynced.clone(),
            });
        }
        if !self.stale.is_empty() {
            return Err(Hold::Stale {
                kinds: self.stale.clone(),
            });
        }
        Ok(())
    }
}

/// What the gate knows about kube-proxy's syncs from successive readings: when the last
/// successful sync *began* (a lower bound), and whether syncs are failing.
///
/// A sync that began before an endpoint's removal and ended after it has not programmed it, so
/// the end time alone (the gauge) proves nothing. The start is bounded from below by
/// - the duration histogram: every sync that ended since the previous reading added its whole
///   duration to the sum, so `end - (sum delta)` is no later than the last sync's start;
/// - without the histogram, the previous reading's end time: kube-proxy's sync runner runs one
///   sync at a time, so a sync that ended after the previous one began after it.
///
/// Failures (the restore/sync failure counters moving, or `/healthz` answering 503) make the
/// tracker `failing` until a success is seen with no failure next to it: the gate holds then.
#[derive(Debug, Clone, Default)]
pub struct SyncTracker {
    last: Option<SyncReading>,
    began_after: Option<Timestamp>,
    failing: bool,
    unhealthy: bool,
    readable: bool,
}

/// The gate's view of kube-proxy, from [`SyncTracker::view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KubeProxyView {
    /// The last reading of its metrics succeeded.
    pub readable: bool,
    /// The end of its last successful sync.
    pub last_success: Option<Timestamp>,
    /// A time its last successful sync is known to have begun after.
    pub began_after: Option<Timestamp>,
    /// Its syncs are failing (or its healthz says unhealthy): never open, not even by grace.
    pub failing: bool,
}

fn counter_moved(before: Option<f64>, now: Option<f64>) -> bool {
    matches!((before, now), (Some(b), Some(n)) if n > b)
}

fn minus_secs(t: Timestamp, secs: f64) -> Option<Timestamp> {
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    let d = jiff::SignedDuration::try_from_secs_f64(secs).ok()?;
    t.checked_sub(d).ok()
}

impl SyncTracker {
    /// A successful reading of `/metrics` (with `/healthz`'s answer when it was read).
    pub fn observe(&mut self, r: SyncReading) {
        self.readable = true;
        if let Some(h) = r.healthy {
            self.unhealthy = !h;
        }
        let Some(end) = r.last_success else {
            // No sample: kube-proxy has not synced since it started.
            self.began_after = None;
            self.failing |= self
                .last
                .is_some_and(|p| counter_moved(p.failures, r.failures));
            self.last = Some(r);
            return;
        };
        let Some(p) = self.last else {
            // The first reading: the start of the sync that ended at `end` is known only when
            // it was the only sync.
            self.began_after = match r.duration {
                Some((sum, 1.0)) => minus_secs(end, sum),
                _ => None,
            };
            self.last = Some(r);
            return;
        };
        let failed = counter_moved(p.failures, r.failures);
        match p.last_success {
            Some(prev) if end > prev => {
                match (p.duration, r.duration) {
                    (Some((ps, pc)), Some((s, c))) => {
                        if c == pc {
                            // The gauge is set just before the duration is observed: a reading
                            // in between is of a sync not finished yet. Wait for the next one.
                            return;
                        }
                        self.began_after = if c > pc {
                            minus_secs(end, s - ps)
                        } else {
                            None
                        };
                    }
                    (None, None) => self.began_after = Some(prev),
                    _ => self.began_after = None,
                }
                // A success and a failure in one interval: their order is unknown.
                self.failing = failed;
            }
            Some(prev) if end < prev => {
                // kube-proxy restarted (its gauge went back): nothing is known of this sync.
                self.began_after = None;
                self.failing |= failed;
            }
            None => {
                self.began_after = None;
                self.failing |= failed;
            }
            Some(_) => {
                // No new success. When the histogram moved, the syncs that ended in between all
                // failed (a success sets the gauge before it observes its duration): they become
                // the baseline, so their durations are not taken for the next success's (which
                // would make a sync that began after a removal look as if it began before it).
                self.failing |= failed;
                let histogram_moved = matches!(
                    (p.duration, r.duration),
                    (Some((_, pc)), Some((_, c))) if c > pc
                );
                if !histogram_moved {
                    return;
                }
            }
        }
        self.last = Some(r);
    }

    /// `/metrics` could not be read (`healthy`: `/healthz`'s answer, when that could be read).
    /// A failing state is kept: an unreadable kube-proxy is not a recovered one.
    pub fn unreadable(&mut self, healthy: Option<bool>) {
        self.readable = false;
        if let Some(h) = healthy {
            self.unhealthy = !h;
        }
    }

    pub fn view(&self) -> KubeProxyView {
        KubeProxyView {
            readable: self.readable,
            last_success: self.last.and_then(|r| r.last_success),
            began_after: self.began_after,
            failing: self.failing || self.unhealthy,
        }
    }
}

/// How often a backend whose gate waits on kube-proxy is looked at again while its change is
/// young: the sync that programs it usually comes within kube-proxy's `minSyncPeriod` (1 s by
/// default), and each look may read kube-proxy's metrics, so how soon that sync is *noticed* is
/// this interval plus one reading. Only while a removal waits: an idle agent reads nothing.
const KUBE_PROXY_FAST_POLL: Duration = Duration::from_millis(20);
/// ... for this long after the change;
const KUBE_PROXY_FAST_FOR: Duration = Duration::from_secs(3);
/// ... then this often;
const KUBE_PROXY_POLL: Duration = Duration::from_millis(100);
/// ... once it has waited longer than `max_wait`.
const KUBE_PROXY_SLOW_POLL: Duration = Duration::from_secs(1);

/// Rule 2 for one backend removed at `removed_at` (when the agent saw it leave): has kube-proxy
/// completed a successful sync that *began* after it? With kube-proxy unreadable, wait `grace`
/// after the removal — unless it was last seen failing. Returns when to look again when not yet.
///
/// There is no time after which a readable kube-proxy is assumed to have caught up: kube-proxy
/// resyncs periodically (`syncPeriod`), and that sync opens the gate. Past `max_wait` the
/// backend is only looked at less often.
pub fn kube_proxy_caught_up(
    removed_at: Timestamp,
    kube_proxy: &KubeProxyView,
    grace: Duration,
    max_wait: Duration,
    now: Timestamp,
) -> Result<(), (Hold, Duration)> {
    let elapsed: Duration = now
        .duration_since(removed_at)
        .try_into()
        .unwrap_or(Duration::ZERO);
    // Read again soon while the change is fresh (the clean sync that programs it opens the gate
    // within one short poll, also after a failure), less often once it has waited long.
    let again = if elapsed >= max_wait {
        KUBE_PROXY_SLOW_POLL
    } else if elapsed < KUBE_PROXY_FAST_FOR {
        KUBE_PROXY_FAST_POLL
    } else {
        KUBE_PROXY_POLL
    };
    if kube_proxy.failing {
        return Err((Hold::KubeProxyFailing, again));
    }
    if kube_proxy.readable {
        if kube_proxy.began_after.is_some_and(|b| b > removed_at) {
            return Ok(());
        }
        return Err((Hold::KubeProxyBehind, again));
    }
    if elapsed >= grace {
        Ok(())
    } else {
        Err((Hold::Grace, grace - elapsed))
    }
}

/// Rule 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub max_deletes_per_pass: u64,
    /// Percent of this node's service flows that one pass may remove.
    pub max_percent: u64,
    /// The budget across passes ([`DeleteBudget`]); 0: none.
    pub max_deletes_per_minute: u64,
}

/// The default budget of deletes per minute: a rolling update of a 500-pod Deployment whose
/// pods each leave ~40 ghosts on this node (20,000) passes within a minute; a view that would
/// remove most of a 262,144-entry table does not get past 8 % of it.
pub const DEFAULT_MAX_DELETES_PER_MINUTE: u64 = 20_000;

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            max_deletes_per_pass: 100_000,
            max_percent: 90,
            max_deletes_per_minute: DEFAULT_MAX_DELETES_PER_MINUTE,
        }
    }
}

impl Breaker {
    /// True when a pass that wants to remove `planned` of `service_flows` must not.
    /// A handful of flows may always go (a node with 3 flows, all to one dead pod, is normal).
    pub fn trips(&self, planned: u64, service_flows: u64) -> bool {
        const SMALL: u64 = 10;
        if planned > self.max_deletes_per_pass {
            return true;
        }
        planned > SMALL && planned * 100 > service_flows.saturating_mul(self.max_percent)
    }
}

/// Rule 4 across passes: a budget of deletes per minute (a sliding window), spent by full and
/// targeted passes alike. A pass that would overspend it removes nothing and *trips* the
/// breaker, which then stays open — every later pass reports only — until the agent restarts.
/// A wrong view of the cluster (a watch that lost half the endpoints, a bug) does its damage at
/// a steady rate as well as all at once, and nothing inside the agent can tell it from a real
/// burst; an operator can: the breaker fails closed and says how to reset it.
#[derive(Debug, Clone)]
pub struct DeleteBudget {
    per_minute: u64,
    /// Deletes in the last minute, oldest first.
    spent: std::collections::VecDeque<(std::time::Instant, u64)>,
    tripped: Option<Trip>,
}

/// Why the budget tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    /// Deletes the pass wanted.
    pub planned: u64,
    /// Deletes already made in the minute before.
    pub spent: u64,
    pub per_minute: u64,
}

/// The budget's window.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);

impl DeleteBudget {
    /// `per_minute` 0: no budget.
    pub fn new(per_minute: u64) -> Self {
        DeleteBudget {
            per_minute,
            spent: std::collections::VecDeque::new(),
            tripped: None,
        }
    }

    /// May a pass remove `planned` flows at `now`? `Err(Some(trip))` when this call tripped the
    /// breaker (tell the operator), `Err(None)` when it was open already.
    pub fn admit(&mut self, planned: u64, now: std::time::Instant) -> Result<(), Option<Trip>> {
        if self.tripped.is_some() {
            return Err(None);
        }
        if self.per_minute == 0 || planned == 0 {
            return Ok(());
        }
        while self
            .spent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= BUDGET_WINDOW)
        {
            self.spent.pop_front();
        }
        let spent: u64 = self.spent.iter().map(|(_, n)| n).sum();
        if spent.saturating_add(planned) > self.per_minute {
            let trip = Trip {
                planned,
                spent,
                per_minute: self.per_minute,
            };
            self.tripped = Some(trip);
            return Err(Some(trip));
        }
        Ok(())
    }

    /// Records `n` flows removed at `now`.
    pub fn spend(&mut self, n: u64, now: std::time::Instant) {
        if n > 0 && self.per_minute > 0 {
            self.spent.push_back((now, n));
        }
    }

    /// The trip that opened the breaker, if it is open.
    pub fn tripped(&self) -> Option<Trip> {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn global_gate_orders_its_reasons() {
        let mut g = Global::default();
        assert_eq!(g.check(), Ok(()));
        g.stale = vec!["pods".into()];
        assert!(matches!(g.check(), Err(Hold::Stale { .. })));
        g.unsynced = vec!["endpointslices".into()];
        assert!(matches!(g.check(), Err(Hold::NotSynced { .. })));
        g.dataplane = Some("ipvs".into());
        assert!(matches!(g.check(), Err(Hold::Dataplane { .. })));
        g.dry_run = true;
        assert_eq!(g.check(), Err(Hold::DryRun));
    }

    const MAX: Duration = Duration::from_secs(35);

    /// Seconds after `t(0)`; the tests use binary fractions, exact in an f64.
    fn ts(s: f64) -> Timestamp {
        t(0).checked_add(jiff::SignedDuration::from_secs_f64(s))
            .unwrap()
    }

    fn read(end: f64, sum: f64, count: f64) -> SyncReading {
        SyncReading {
            last_success: Some(ts(end)),
            duration: Some((sum, count)),
            failures: Some(0.0),
            healthy: None,
        }
    }

    fn view(began_after: Option<f64>) -> KubeProxyView {
        KubeProxyView {
            readable: true,
            last_success: began_after.map(ts),
            began_after: began_after.map(ts),
            failing: false,
        }
    }

    #[test]
    fn kube_proxy_must_have_begun_a_sync_after_the_removal() {
        let g = Duration::from_secs(2);
        assert!(kube_proxy_caught_up(t(10), &view(Some(10.5)), g, MAX, t(11)).is_ok());
        assert!(matches!(
            kube_proxy_caught_up(t(10), &view(Some(10.0)), g, MAX, t(30)),
            Err((Hold::KubeProxyBehind, _))
        ));
        // Began before the removal (whatever its end): never, not even after max_wait; only
        // looked at less often.
        let r = kube_proxy_caught_up(t(10), &view(Some(9.0)), g, MAX, t(45));
        assert!(matches!(r, Err((Hold::KubeProxyBehind, d)) if d == Duration::from_secs(1)));
        let r = kube_proxy_caught_up(t(10), &view(None), g, MAX, t(11));
        assert!(matches!(r, Err((Hold::KubeProxyBehind, d)) if d == Duration::from_millis(20)));
        let r = kube_proxy_caught_up(t(10), &view(None), g, MAX, t(14));
        assert!(matches!(r, Err((Hold::KubeProxyBehind, d)) if d == Duration::from_millis(100)));
    }

    #[test]
    fn without_kube_proxy_wait_the_grace() {
        let g = Duration::from_secs(2);
        let unreadable = KubeProxyView::default();
        let r = kube_proxy_caught_up(t(10), &unreadable, g, MAX, t(11));
        assert!(matches!(r, Err((Hold::Grace, d)) if d == Duration::from_secs(1)));
        assert!(kube_proxy_caught_up(t(10), &unreadable, g, MAX, t(12)).is_ok());
        // A clock that went backwards is not a reason to delete early.
        assert!(kube_proxy_caught_up(t(10), &unreadable, g, MAX, t(5)).is_err());
    }

    #[test]
    fn a_failing_kube_proxy_holds_even_past_the_grace() {
        let g = Duration::from_secs(2);
        let failing = KubeProxyView {
            failing: true,
            ..view(Some(20.0))
        };
        assert!(matches!(
            kube_proxy_caught_up(t(10), &failing, g, MAX, t(100)),
            Err((Hold::KubeProxyFailing, _))
        ));
        let unreadable_failing = KubeProxyView {
            readable: false,
            ..failing
        };
        assert!(matches!(
            kube_proxy_caught_up(t(10), &unreadable_failing, g, MAX, t(100)),
            Err((Hold::KubeProxyFailing, _))
        ));
    }

    #[test]
    fn the_histogram_bounds_when_the_last_sync_began() {
        let mut k = SyncTracker::default();
        // The first reading of a kube-proxy that synced many times: the last sync's start is
        // unknown.
        k.observe(read(5.0, 10.0, 40.0));
        assert_eq!(k.view().began_after, None);
        assert_eq!(k.view().last_success, Some(ts(5.0)));
        // One sync of 0.5 s ended at 11: it began at 10.5.
        k.observe(read(11.0, 10.5, 41.0));
        assert_eq!(k.view().began_after, Some(ts(10.5)));
        // A sync of 3 s that ended at 12 began at 9: it straddles a removal at 10.
        k.observe(read(12.0, 13.5, 42.0));
        assert_eq!(k.view().began_after, Some(ts(9.0)));
        assert!(kube_proxy_caught_up(t(10), &k.view(), Duration::ZERO, MAX, t(12)).is_err());
        // Two syncs since the last reading (0.2 s and 0.3 s; the last ended at 13): the bound
        // is 13 - 0.5, no later than the last one's start (12.7).
        k.observe(read(13.0, 14.0, 44.0));
        assert_eq!(k.view().began_after, Some(ts(12.5)));
        // Only the first reading of a kube-proxy that synced once knows its start.
        let mut once = SyncTracker::default();
        once.observe(read(5.0, 0.25, 1.0));
        assert_eq!(once.view().began_after, Some(ts(4.75)));
    }

    #[test]
    fn a_reading_between_the_gauge_and_the_histogram_waits() {
        let mut k = SyncTracker::default();
        k.observe(read(5.0, 1.0, 4.0));
        // The gauge moved, the histogram did not yet: the sync is not finished.
        k.observe(read(11.0, 1.0, 4.0));
        assert_eq!(k.view().began_after, None);
        k.observe(read(11.0, 1.25, 5.0));
        assert_eq!(k.view().began_after, Some(ts(10.75)));
    }

    #[test]
    fn without_the_histogram_the_previous_end_bounds_the_start() {
        let r = |end: f64| SyncReading {
            last_success: Some(ts(end)),
            ..SyncReading::default()
        };
        let mut k = SyncTracker::default();
        k.observe(r(5.0));
        assert_eq!(k.view().began_after, None);
        // Syncs run one at a time: the one that ended at 11 began after 5.
        k.observe(r(11.0));
        assert_eq!(k.view().began_after, Some(ts(5.0)));
        k.observe(r(12.0));
        assert_eq!(k.view().began_after, Some(ts(11.0)));
        // kube-proxy restarted (its gauge went back): nothing is known.
        k.observe(r(3.0));
        assert_eq!(k.view().began_after, None);
    }

    #[test]
    fn failures_hold_until_a_clean_success() {
        let mut k = SyncTracker::default();
        k.observe(read(5.0, 1.0, 4.0));
        assert!(!k.view().failing);
        // A failed sync: the counter moves, the gauge does not.
        let mut r = read(5.0, 1.5, 5.0);
        r.failures = Some(1.0);
        k.observe(r);
        assert!(k.view().failing);
        // Unreadable now: still failing (fail closed).
        k.unreadable(None);
        assert!(k.view().failing && !k.view().readable);
        // A success and a failure in one interval: their order is unknown, still failing.
        let mut r = read(11.0, 2.0, 7.0);
        r.failures = Some(2.0);
        k.observe(r);
        assert!(k.view().failing);
        // A clean success.
        let mut r = read(12.0, 2.125, 8.0);
        r.failures = Some(2.0);
        k.observe(r);
        assert!(!k.view().failing);
        assert_eq!(k.view().began_after, Some(ts(11.875)));
        // healthz 503 fails closed too, until it answers 200.
        k.unreadable(Some(false));
        assert!(k.view().failing);
        let mut r = read(13.0, 2.25, 9.0);
        r.failures = Some(2.0);
        r.healthy = Some(true);
        k.observe(r);
        assert!(!k.view().failing);
    }

    /// A failed sync between two successes adds its duration to the histogram's sum; taken
    /// into the next success's bound, it made a sync that began after a removal look as if it
    /// began before it, and the gate waited for one more sync (the soak's late reaping).
    #[test]
    fn a_failed_sync_in_between_does_not_push_the_next_start_back() {
        let mut k = SyncTracker::default();
        k.observe(read(5.0, 10.0, 40.0));
        k.observe(read(10.0, 10.5, 41.0));
        // A failed sync of 1.5 s ended at 12: the gauge stays, the histogram and the failure
        // counter move.
        let mut r = read(10.0, 12.0, 42.0);
        r.failures = Some(1.0);
        k.observe(r);
        assert!(k.view().failing);
        // The endpoint leaves at 12.25; a clean sync runs 12.5 → 13.
        let mut r = read(13.0, 12.5, 43.0);
        r.failures = Some(1.0);
        k.observe(r);
        assert_eq!(k.view().began_after, Some(ts(12.5)));
        assert!(!k.view().failing);
        let removed = ts(12.25);
        assert!(kube_proxy_caught_up(removed, &k.view(), Duration::ZERO, MAX, ts(13.0)).is_ok());
    }

    /// While kube-proxy fails the gate holds, and it is read as often as when it is merely
    /// behind: the clean sync that ends the failure opens the gate within one short poll.
    #[test]
    fn a_failing_kube_proxy_is_read_again_soon() {
        let failing = KubeProxyView {
            failing: true,
            ..view(Some(9.0))
        };
        let r = kube_proxy_caught_up(t(10), &failing, Duration::ZERO, MAX, t(11));
        assert!(matches!(r, Err((Hold::KubeProxyFailing, d)) if d == Duration::from_millis(20)));
        let r = kube_proxy_caught_up(t(10), &failing, Duration::ZERO, MAX, t(100));
        assert!(matches!(r, Err((Hold::KubeProxyFailing, d)) if d == Duration::from_secs(1)));
    }

    fn at(base: std::time::Instant, s: u64) -> std::time::Instant {
        base + Duration::from_secs(s)
    }

    #[test]
    fn the_budget_trips_across_passes_and_stays_open() {
        let base = std::time::Instant::now();
        let mut b = DeleteBudget::new(100);
        assert_eq!(b.admit(60, at(base, 0)), Ok(()));
        b.spend(60, at(base, 0));
        // Targeted passes count as much as full ones: 60 + 30 fit, 60 + 30 + 20 do not.
        assert_eq!(b.admit(30, at(base, 10)), Ok(()));
        b.spend(30, at(base, 10));
        let trip = b.admit(20, at(base, 20)).unwrap_err().unwrap();
        assert_eq!(
            trip,
            Trip {
                planned: 20,
                spent: 90,
                per_minute: 100
            }
        );
        // Open for good: later passes report only, however long after.
        assert_eq!(b.admit(1, at(base, 3600)), Err(None));
        assert_eq!(b.tripped(), Some(trip));
    }

    #[test]
    fn the_budget_is_a_sliding_minute() {
        let base = std::time::Instant::now();
        let mut b = DeleteBudget::new(100);
        assert_eq!(b.admit(100, at(base, 0)), Ok(()));
        b.spend(100, at(base, 0));
        // A minute later the first deletes no longer count.
        assert_eq!(b.admit(100, at(base, 60)), Ok(()));
        b.spend(100, at(base, 60));
        assert!(b.admit(1, at(base, 119)).is_err());
        // A pass that removes nothing never trips, and 0 disables the budget.
        let mut off = DeleteBudget::new(0);
        assert_eq!(off.admit(u64::MAX, at(base, 0)), Ok(()));
        let mut b = DeleteBudget::new(10);
        assert_eq!(b.admit(0, at(base, 0)), Ok(()));
        // The default lets a 500-pod rollout's 20,000 ghosts through in one minute.
        let mut d = DeleteBudget::new(DEFAULT_MAX_DELETES_PER_MINUTE);
        for i in 0..500 {
            assert_eq!(d.admit(40, at(base, i / 10)), Ok(()), "pod {i}");
            d.spend(40, at(base, i / 10));
        }
        assert!(d.admit(1, at(base, 50)).is_err());
    }

    #[test]
    fn breaker_trips_on_volume_and_on_share() {
        let b = Breaker::default();
        assert!(!b.trips(5, 5), "a handful may always go");
        assert!(!b.trips(50, 100));
        assert!(b.trips(95, 100), "95 % of the node's service flows at once");
        assert!(!b.trips(90, 100));
        assert!(b.trips(100_001, 10_000_000));
        let strict = Breaker {
            max_deletes_per_pass: 10,
            max_percent: 90,
            ..Breaker::default()
        };
        assert!(strict.trips(11, 1000));
    }
}
