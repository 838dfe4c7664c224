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
    /// kube-proxy's rules are older than the endpoint's removal.
    KubeProxyBehind,
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

/// Rule 2 for one backend removed at `removed_at` (when the agent saw it leave): has kube-proxy
/// synced its rules since? With kube-proxy's last sync time unknown, wait `grace` after the
/// removal. Returns when to look again when not yet.
///
/// `max_wait` bounds the wait on a readable kube-proxy: when kube-proxy happened to apply the
/// change a moment *before* the agent saw it, its next sync is only its periodic one
/// (`syncPeriod`, 30 s by default), so after that long its rules are as current as they get.
pub fn kube_proxy_caught_up(
    removed_at: Timestamp,
    kube_proxy_synced_at: Option<Timestamp>,
    grace: Duration,
    max_wait: Duration,
    now: Timestamp,
) -> Result<(), (Hold, Duration)> {
    let elapsed: Duration = now
        .duration_since(removed_at)
        .try_into()
        .unwrap_or(Duration::ZERO);
    match kube_proxy_synced_at {
        Some(sync) if sync > removed_at => Ok(()),
        Some(_) if elapsed >= max_wait => Ok(()),
        Some(_) => Err((Hold::KubeProxyBehind, Duration::from_millis(100))),
        None => {
            if elapsed >= grace {
                Ok(())
            } else {
                Err((Hold::Grace, grace - elapsed))
            }
        }
    }
}

/// Rule 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub max_deletes_per_pass: u64,
    /// Percent of this node's service flows that one pass may remove.
    pub max_percent: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            max_deletes_per_pass: 100_000,
            max_percent: 90,
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

    #[test]
    fn kube_proxy_must_have_synced_after_the_removal() {
        let g = Duration::from_secs(2);
        assert!(kube_proxy_caught_up(t(10), Some(t(11)), g, MAX, t(11)).is_ok());
        assert!(matches!(
            kube_proxy_caught_up(t(10), Some(t(10)), g, MAX, t(30)),
            Err((Hold::KubeProxyBehind, _))
        ));
        assert!(matches!(
            kube_proxy_caught_up(t(10), Some(t(9)), g, MAX, t(30)),
            Err((Hold::KubeProxyBehind, _))
        ));
        // kube-proxy applied it just before we saw it: its periodic sync bounds the wait.
        assert!(kube_proxy_caught_up(t(10), Some(t(9)), g, MAX, t(45)).is_ok());
    }

    #[test]
    fn without_kube_proxy_wait_the_grace() {
        let g = Duration::from_secs(2);
        let r = kube_proxy_caught_up(t(10), None, g, MAX, t(11));
        assert!(matches!(r, Err((Hold::Grace, d)) if d == Duration::from_secs(1)));
        assert!(kube_proxy_caught_up(t(10), None, g, MAX, t(12)).is_ok());
        // A clock that went backwards is not a reason to delete early.
        assert!(kube_proxy_caught_up(t(10), None, g, MAX, t(5)).is_err());
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
        };
        assert!(strict.trips(11, 1000));
    }
}
