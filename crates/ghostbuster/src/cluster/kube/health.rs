//! How complete and how recent the watched view is, per kind: the first condition of the delete
//! gate, and `/readyz`'s details. Atomics only on the read side: cheap from any thread.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::Kind;

/// Where the watch of one kind stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindState {
    /// Not started, or its first list has not finished.
    Pending,
    /// A relist is running (after a 410 or an error): the previous view is still served, but
    /// may miss changes until it finishes.
    Listing,
    /// The last list finished; watch events follow.
    Synced,
    /// Not watched by configuration (`watch_service_cidrs: false`).
    Off,
    /// The API server does not have this API (ServiceCIDRs before 1.33): `--service-cidr` must be
    /// given instead.
    Unavailable,
}

impl KindState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => KindState::Listing,
            2 => KindState::Synced,
            3 => KindState::Off,
            4 => KindState::Unavailable,
            _ => KindState::Pending,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            KindState::Pending => 0,
            KindState::Listing => 1,
            KindState::Synced => 2,
            KindState::Off => 3,
            KindState::Unavailable => 4,
        }
    }

    /// True when this kind does not hold the view back (synced, or not watched at all).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            KindState::Synced | KindState::Off | KindState::Unavailable
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KindState::Pending => "pending",
            KindState::Listing => "listing",
            KindState::Synced => "synced",
            KindState::Off => "off",
            KindState::Unavailable => "unavailable",
        }
    }
}

#[derive(Default)]
struct Cell {
    state: AtomicU8,
    /// Milliseconds since `WatchHealth::start` of the last event, BOOKMARK or listed page, plus
    /// one; 0 = never. A watch (re)start is not one: a silent connection proves nothing.
    last: AtomicU64,
    events: AtomicU64,
    relists: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of one kind's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindStatus {
    pub kind: Kind,
    pub state: KindState,
    /// Time since the last sign of life (event, BOOKMARK, listed page); `None`: never.
    pub age: Option<Duration>,
    /// Watch events and listed objects received.
    pub events: u64,
    /// Lists started after the first (410 Gone, errors).
    pub relists: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Per-kind health of the cluster watches, shared between the watch tasks and readers.
///
/// A kind turns synced once its `InitDone` has been handed to the channel: health runs ahead of
/// an index by whatever still sits in the channel. A consumer that must know its index holds the
/// complete view applies the `InitDone` events first (or drains the channel) before trusting
/// [`WatchHealth::all_synced`].
pub struct WatchHealth {
    start: Instant,
    cells: [Cell; Kind::ALL.len()],
}

impl Default for WatchHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WatchHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

/// The API resource name of a kind, as RBAC and `kubectl get` spell it.
pub fn resource_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::EndpointSlice => "endpointslices",
        Kind::Node => "nodes",
        Kind::ServiceCidr => "servicecidrs",
        Kind::Pod => "pods",
        Kind::Namespace => "namespaces",
    }
}

fn slot(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

impl WatchHealth {
    /// Every kind pending.
    pub fn new() -> Self {
        WatchHealth {
            start: Instant::now(),
            cells: Default::default(),
        }
    }

    fn cell(&self, kind: Kind) -> &Cell {
        &self.cells[slot(kind)]
    }

    pub fn state(&self, kind: Kind) -> KindState {
        KindState::from_u8(self.cell(kind).state.load(Ordering::Acquire))
    }

    /// True when the last list of `kind` finished (and no relist is running).
    pub fn synced(&self, kind: Kind) -> bool {
        self.state(kind) == KindState::Synced
    }

    /// True when every kind is synced, off, or unavailable.
    pub fn all_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.state(*k).is_settled())
    }

    /// Time since `kind` last showed life, `None` if never.
    pub fn age(&self, kind: Kind) -> Option<Duration> {
        match self.cell(kind).last.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// True when every watched kind (not off, not unavailable) showed life within `max_age`.
    /// The API server sends a BOOKMARK about once a minute on a quiet watch, so a `max_age` of a
    /// few minutes tells a quiet watch from a dead one.
    pub fn fresh(&self, max_age: Duration) -> bool {
        Kind::ALL.iter().all(|&k| match self.state(k) {
            KindState::Off | KindState::Unavailable => true,
            _ => self.age(k).is_some_and(|a| a <= max_age),
        })
    }

    /// The kinds holding the view back (not synced, not off, not unavailable), by resource name
    /// (`"endpointslices"`), for `/readyz` and logs; empty when [`Self::all_synced`].
    pub fn unsynced(&self) -> Vec<String> {
        Kind::ALL
            .iter()
            .filter(|k| !self.state(**k).is_settled())
            .map(|k| resource_name(*k).to_owned())
            .collect()
    }

    /// The watched kinds that showed no life within `max_age`, by resource name; empty when
    /// [`Self::fresh`].
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        Kind::ALL
            .iter()
            .filter(|&&k| match self.state(k) {
                KindState::Off | KindState::Unavailable => false,
                _ => self.age(k).is_none_or(|a| a > max_age),
            })
            .map(|k| resource_name(*k).to_owned())
            .collect()
    }

    /// True when the API server has no ServiceCIDR API: `--service-cidr` must be given.
    pub fn service_cidrs_unavailable(&self) -> bool {
        self.state(Kind::ServiceCidr) == KindState::Unavailable
    }

    /// Every kind's health, in [`Kind::ALL`] order.
    pub fn status(&self) -> Vec<KindStatus> {
        Kind::ALL
            .iter()
            .map(|&kind| {
                let c = self.cell(kind);
                KindStatus {
                    kind,
                    state: self.state(kind),
                    age: self.age(kind),
                    events: c.events.load(Ordering::Relaxed),
                    relists: c.relists.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    last_error: c
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                }
            })
            .collect()
    }

    // --- the watchers' side ------------------------------------------------------------------

    pub fn set_state(&self, kind: Kind, state: KindState) {
        self.cell(kind)
            .state
            .store(state.as_u8(), Ordering::Release);
    }

    /// A sign of life: an event, a BOOKMARK, a listed page (not a watch (re)started).
    pub fn touch(&self, kind: Kind) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.cell(kind).last.store(ms + 1, Ordering::Release);
    }

    /// `n` objects or events received.
    pub fn count_events(&self, kind: Kind, n: u64) {
        self.cell(kind).events.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count_relist(&self, kind: Kind) {
        self.cell(kind).relists.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_error(&self, kind: Kind, error: &str) {
        let c = self.cell(kind);
        c.errors.fetch_add(1, Ordering::Relaxed);
        *c.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_and_fresh() {
        let h = WatchHealth::new();
        assert!(!h.all_synced());
        assert!(!h.fresh(Duration::from_secs(60)));
        for k in [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
            Kind::Pod,
            Kind::Namespace,
        ] {
            h.set_state(k, KindState::Synced);
            h.touch(k);
        }
        assert!(!h.all_synced(), "ServiceCIDRs still pending");
        assert_eq!(h.unsynced(), ["servicecidrs"]);
        h.set_state(Kind::ServiceCidr, KindState::Unavailable);
        assert!(h.all_synced());
        assert!(h.service_cidrs_unavailable());
        assert!(h.fresh(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.fresh(Duration::from_millis(10)));
        assert_eq!(h.stale(Duration::from_millis(10)).len(), 5);
        assert!(h.stale(Duration::from_secs(60)).is_empty());
        h.set_state(Kind::Pod, KindState::Listing);
        assert!(!h.all_synced());
        h.record_error(Kind::Pod, "boom");
        let s = &h.status()[4];
        assert_eq!(
            (s.kind, s.errors, s.last_error.as_deref()),
            (Kind::Pod, 1, Some("boom"))
        );
    }
}
