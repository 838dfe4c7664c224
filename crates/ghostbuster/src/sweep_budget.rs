//! The circuit breaker of the one-shot `sweep`: a view that would remove most of a node's service
//! flows at once is far more often a wrong view (an export taken mid-outage, a controller that
//! emptied its slices, a file from another cluster) than a real mass death of backends, and acting
//! on it resets every connection of the node. So such a sweep removes nothing and says why.
//!
//! Sized for the real backlog it exists to clear: a node whose table holds a million entries and
//! 20,000 ghosts of 24 deleted pods (2 %) passes; a view that condemns more than half of the
//! node's service flows does not (`--max-delete-percent`, 100 turns the breaker off). A handful of
//! flows may always go: on a quiet node, three flows all to one dead pod are 100 % and normal.
//!
//! This is not the agent's breaker (`agent::gate::Breaker`): the agent acts on every change as it
//! happens, so one pass is small and 90 % of a pass is already suspicious; a sweep clears a whole
//! backlog in one go, judged against one export.

use std::fmt;

/// Flows a sweep may always remove, whatever their share.
pub const ALWAYS_ALLOWED: u64 = 20;

/// The default `--max-delete-percent`.
pub const DEFAULT_MAX_PERCENT: u8 = 50;

/// The rule: at most `max_percent` % of the service flows, above [`ALWAYS_ALLOWED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepBudget {
    /// 0..=100; 100 never trips.
    pub max_percent: u8,
}

impl Default for SweepBudget {
    fn default() -> Self {
        SweepBudget {
            max_percent: DEFAULT_MAX_PERCENT,
        }
    }
}

/// A sweep the breaker held, with the numbers for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    pub removable: u64,
    pub service_flows: u64,
    pub max_percent: u8,
}

impl SweepBudget {
    /// `Err` when removing `removable` of the node's `service_flows` must not happen.
    pub fn check(&self, removable: u64, service_flows: u64) -> Result<(), Tripped> {
        let over_share =
            u128::from(removable) * 100 > u128::from(service_flows) * u128::from(self.max_percent);
        if removable > ALWAYS_ALLOWED && over_share {
            return Err(Tripped {
                removable,
                service_flows,
                max_percent: self.max_percent,
            });
        }
        Ok(())
    }
}

impl Tripped {
    /// The share of the service flows the view would remove, in percent (rounded down).
    pub fn percent(&self) -> u64 {
        (u128::from(self.removable) * 100 / u128::from(self.service_flows.max(1))) as u64
    }
}

impl fmt::Display for Tripped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker: this view would remove {} of {} service flows ({} %), more than \
             --max-delete-percent {} allows; nothing was removed. A view in which most backends \
             vanished at once is more often a wrong export than an outage: check it with \
             `ghostbuster scan -o wide`, then pass --max-delete-percent 100 to remove them anyway",
            self.removable,
            self.service_flows,
            self.percent(),
            self.max_percent
        )
    }
}

/// `--max-delete-percent`: an integer from 0 to 100.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    match s.trim().trim_end_matches('%').parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_genuine_backlog_passes_by_default() {
        let b = SweepBudget::default();
        // 2 % of a 1M table: 20,000 ghosts of 24 deleted pods.
        assert_eq!(b.check(20_000, 1_000_000), Ok(()));
        // Half of the service flows is still a backlog (a Deployment replaced in one go).
        assert_eq!(b.check(500, 1_000), Ok(()));
    }

    #[test]
    fn a_view_that_removes_most_of_the_table_trips() {
        let b = SweepBudget::default();
        assert_eq!(
            b.check(60, 60),
            Err(Tripped {
                removable: 60,
                service_flows: 60,
                max_percent: 50
            })
        );
        assert!(b.check(501, 1_000).is_err(), "just over half");
        assert!(b.check(900_000, 1_000_000).is_err());
        let t = b.check(60, 60).unwrap_err();
        let msg = t.to_string();
        for w in [
            "60 of 60",
            "100 %",
            "--max-delete-percent 50",
            "nothing was removed",
        ] {
            assert!(msg.contains(w), "{w:?} in {msg}");
        }
    }

    #[test]
    fn a_handful_may_always_go() {
        let b = SweepBudget::default();
        assert_eq!(b.check(3, 3), Ok(()));
        assert_eq!(b.check(ALWAYS_ALLOWED, ALWAYS_ALLOWED), Ok(()));
        assert!(b.check(ALWAYS_ALLOWED + 1, ALWAYS_ALLOWED + 1).is_err());
        assert_eq!(b.check(0, 0), Ok(()));
    }

    #[test]
    fn the_limit_is_configurable_and_100_turns_it_off() {
        let off = SweepBudget { max_percent: 100 };
        assert_eq!(off.check(1_000_000, 1_000_000), Ok(()));
        let strict = SweepBudget { max_percent: 1 };
        assert!(strict.check(20_000, 1_000_000).is_err());
        assert_eq!(strict.check(10_000, 1_000_000), Ok(()));
        let zero = SweepBudget { max_percent: 0 };
        assert!(zero.check(21, u64::MAX).is_err());
        assert_eq!(zero.check(20, 20), Ok(()));
        // No overflow at the extremes.
        assert!(SweepBudget::default().check(u64::MAX, u64::MAX).is_err());
        assert_eq!(SweepBudget::default().check(u64::MAX / 2, u64::MAX), Ok(()));
    }

    #[test]
    fn percentages_parse() {
        assert_eq!(parse_percent("50"), Ok(50));
        assert_eq!(parse_percent("100%"), Ok(100));
        assert_eq!(parse_percent("0"), Ok(0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("half").is_err());
    }
}
