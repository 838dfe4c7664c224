//! Table exhaustion warnings: a log line and a Kubernetes Event on the Node when the conntrack table
//! crosses 75 % and 90 % (seed 004: "nf_conntrack: table full, dropping packet" is silent
//! otherwise), at most once per threshold per quiet period (30 minutes).

use std::time::{Duration, Instant};

/// The thresholds, highest first.
pub const THRESHOLDS: [f64; 2] = [0.90, 0.75];

/// Remembers when each threshold was last announced.
#[derive(Debug, Clone)]
pub struct UtilizationAlarm {
    last: [Option<Instant>; 2],
    quiet: Duration,
}

impl UtilizationAlarm {
    pub fn new(quiet: Duration) -> Self {
        UtilizationAlarm {
            last: [None, None],
            quiet,
        }
    }

    /// The highest threshold `utilization` is at or above that was not announced within the quiet
    /// period; announcing it also silences the lower one (one message, not two).
    pub fn check(&mut self, utilization: f64, now: Instant) -> Option<f64> {
        for (i, t) in THRESHOLDS.iter().enumerate() {
            if utilization < *t {
                continue;
            }
            let due = self.last[i].is_none_or(|at| now.duration_since(at) >= self.quiet);
            if !due {
                return None;
            }
            for j in i..THRESHOLDS.len() {
                self.last[j] = Some(now);
            }
            return Some(*t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_at_most_once_per_quiet_period() {
        let q = Duration::from_secs(1800);
        let mut a = UtilizationAlarm::new(q);
        let t0 = Instant::now();
        assert_eq!(a.check(0.50, t0), None);
        assert_eq!(a.check(0.76, t0), Some(0.75));
        assert_eq!(
            a.check(0.80, t0 + Duration::from_secs(60)),
            None,
            "75 % again within 30 min"
        );
        assert_eq!(
            a.check(0.91, t0 + Duration::from_secs(120)),
            Some(0.90),
            "90 % is news"
        );
        assert_eq!(a.check(0.95, t0 + Duration::from_secs(180)), None);
        assert_eq!(
            a.check(0.80, t0 + Duration::from_secs(300)),
            None,
            "75 % silenced by the 90 % message"
        );
        assert_eq!(
            a.check(0.92, t0 + q + Duration::from_secs(121)),
            Some(0.90),
            "after the quiet period"
        );
    }

    #[test]
    fn jumping_straight_past_90_percent_sends_one_message() {
        let mut a = UtilizationAlarm::new(Duration::from_secs(1800));
        let t0 = Instant::now();
        assert_eq!(a.check(0.99, t0), Some(0.90));
        assert_eq!(a.check(0.80, t0 + Duration::from_secs(1)), None);
    }
}
