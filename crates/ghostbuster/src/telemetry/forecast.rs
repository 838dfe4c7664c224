//! When will the conntrack table be full? A least-squares line through the entry count of the
//! last 15 minutes (`ghostbuster_conntrack_table_full_eta_seconds`, issue #5).
//!
//! Samples come from scrapes or the agent's timer; at most one per 15 s is kept, so a scrape storm
//! does not weigh the fit towards one moment. The answer is `None` — the metric is absent — unless
//! the table is growing: the slope must be positive *and* clearly above its own noise (more than
//! three standard errors), so a flat but jittery table does not forecast "full in 40 days". ETAs
//! beyond a week are also `None`: a 15-minute trend says nothing about next month.
//!
//! The ETA starts from the latest sample (not the fitted line), so a table that just jumped is
//! judged from where it is now, at the pace of the last 15 minutes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the fit looks.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Samples closer together than this are dropped.
pub const MIN_INTERVAL: Duration = Duration::from_secs(15);
/// Fewer samples than this give no forecast (45 s of data at the default interval).
pub const MIN_SAMPLES: usize = 4;
/// Longer ETAs are reported as "not growing".
pub const MAX_ETA: Duration = Duration::from_secs(7 * 24 * 3600);
/// The slope must exceed this many standard errors.
const SIGNIFICANCE: f64 = 3.0;

/// A fitted line `entries = intercept + slope × seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Entries per second.
    pub slope: f64,
    /// Entries at `t = 0`.
    pub intercept: f64,
    /// Standard error of the slope (0 for a perfect line).
    pub slope_stderr: f64,
}

impl Fit {
    /// Growing, and not just by noise.
    pub fn is_growing(&self) -> bool {
        self.slope > 0.0 && self.slope > SIGNIFICANCE * self.slope_stderr
    }
}

/// Ordinary least squares over `(seconds, entries)` points. `None` for fewer than three points or
/// when every point has the same time.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for &(t, y) in points {
        let dt = t - mean_t;
        sxx += dt * dt;
        sxy += dt * (y - mean_y);
    }
    if sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_t;
    let ssr: f64 = points
        .iter()
        .map(|&(t, y)| {
            let r = y - (intercept + slope * t);
            r * r
        })
        .sum();
    let slope_stderr = (ssr / (nf - 2.0) / sxx).sqrt();
    Some(Fit {
        slope,
        intercept,
        slope_stderr,
    })
}

/// The last 15 minutes of entry counts.
#[derive(Debug, Clone)]
pub struct Forecaster {
    window: Duration,
    min_interval: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Default for Forecaster {
    fn default() -> Self {
        Self::new()
    }
}

impl Forecaster {
    pub fn new() -> Self {
        Self::with(WINDOW, MIN_INTERVAL)
    }

    pub fn with(window: Duration, min_interval: Duration) -> Self {
        Forecaster {
            window,
            min_interval,
            samples: VecDeque::new(),
        }
    }

    /// Offers a sample; returns whether it was kept (not within `min_interval` of the last kept
    /// one, not older than it).
    pub fn sample(&mut self, at: Instant, entries: u64) -> bool {
        if let Some(&(last, _)) = self.samples.back() {
            if at < last || at.duration_since(last) < self.min_interval {
                return false;
            }
        }
        self.samples.push_back((at, entries));
        while let Some(&(first, _)) = self.samples.front() {
            if at.duration_since(first) > self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The line through the kept samples (seconds since the oldest one).
    pub fn fit(&self) -> Option<Fit> {
        let &(origin, _) = self.samples.front()?;
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .map(|&(t, y)| (t.duration_since(origin).as_secs_f64(), y as f64))
            .collect();
        fit(&points)
    }

    /// Time from the latest sample until the table holds `limit` entries at the current pace;
    /// `None` when not growing, with too few samples, or with no limit.
    pub fn eta(&self, limit: u64) -> Option<Duration> {
        if limit == 0 || self.samples.len() < MIN_SAMPLES {
            return None;
        }
        let fit = self.fit()?;
        if !fit.is_growing() {
            return None;
        }
        let &(_, current) = self.samples.back()?;
        if current >= limit {
            return Some(Duration::ZERO);
        }
        let secs = (limit - current) as f64 / fit.slope;
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|eta| *eta <= MAX_ETA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `f(i)` every 15 s for `n` samples starting at `t0`; returns the time of the last.
    fn feed(fc: &mut Forecaster, t0: Instant, n: usize, f: impl Fn(usize) -> u64) -> Instant {
        let mut last = t0;
        for i in 0..n {
            last = t0 + Duration::from_secs(15 * i as u64);
            assert!(fc.sample(last, f(i)));
        }
        last
    }

    /// A deterministic pseudo-random jitter in [-amp, amp].
    fn jitter(i: usize, amp: i64) -> i64 {
        let x = (i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as i64 % (2 * amp + 1)) - amp
    }

    #[test]
    fn fit_recovers_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0 + 2.0 * i as f64)).collect();
        let f = fit(&pts).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-9);
        assert!((f.intercept - 5.0).abs() < 1e-9);
        assert!(f.slope_stderr < 1e-9);
        assert!(f.is_growing());
        assert!(fit(&pts[..2]).is_none(), "two points are not a trend");
        assert!(
            fit(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]).is_none(),
            "no time spread"
        );
    }

    #[test]
    fn steady_growth_gives_the_eta() {
        let mut fc = Forecaster::new();
        let t0 = Instant::now();
        // +10 entries/s: 150 per 15 s sample, from 100,000.
        feed(&mut fc, t0, 20, |i| 100_000 + 150 * i as u64);
        let last = 100_000 + 150 * 19;
        let eta = fc.eta(262_144).unwrap();
        let want = (262_144 - last) as f64 / 10.0;
        assert!((eta.as_secs_f64() - want).abs() < 1.0, "{eta:?} vs {want}");
    }

    #[test]
    fn flat_table_has_no_eta() {
        let mut fc = Forecaster::new();
        feed(&mut fc, Instant::now(), 60, |_| 50_000);
        assert_eq!(fc.eta(262_144), None);
    }

    #[test]
    fn shrinking_table_has_no_eta() {
        let mut fc = Forecaster::new();
        feed(&mut fc, Instant::now(), 30, |i| 200_000 - 100 * i as u64);
        assert_eq!(fc.eta(262_144), None);
    }

    #[test]
    fn noisy_flat_table_has_no_eta() {
        // ±5,000 entries of jitter around 100,000: a slope can come out slightly positive, but
        // not significantly.
        for seed in 0..20 {
            let mut fc = Forecaster::new();
            feed(&mut fc, Instant::now(), 60, |i| {
                (100_000 + jitter(i + seed * 61, 5_000)) as u64
            });
            assert_eq!(fc.eta(262_144), None, "seed {seed}: {:?}", fc.fit());
        }
    }

    #[test]
    fn noisy_growth_still_forecasts() {
        let mut fc = Forecaster::new();
        // +20 entries/s with ±500 of noise.
        feed(&mut fc, Instant::now(), 60, |i| {
            (100_000 + 300 * i as i64 + jitter(i, 500)) as u64
        });
        let eta = fc.eta(262_144).expect("growth through noise");
        let ideal = (262_144.0 - (100_000.0 + 300.0 * 59.0)) / 20.0;
        assert!(
            (eta.as_secs_f64() - ideal).abs() / ideal < 0.15,
            "{eta:?} vs {ideal}"
        );
    }

    #[test]
    fn full_table_is_zero_and_no_limit_is_none() {
        let mut fc = Forecaster::new();
        feed(&mut fc, Instant::now(), 10, |i| 1_000 + 100 * i as u64);
        assert_eq!(fc.eta(1_500), Some(Duration::ZERO));
        assert_eq!(fc.eta(0), None, "limit unknown");
    }

    #[test]
    fn too_few_samples_give_nothing() {
        let mut fc = Forecaster::new();
        feed(&mut fc, Instant::now(), MIN_SAMPLES - 1, |i| {
            1_000 * (i as u64 + 1)
        });
        assert_eq!(fc.eta(1_000_000), None);
    }

    #[test]
    fn very_slow_growth_is_not_a_forecast() {
        let mut fc = Forecaster::new();
        // +1 entry per 15 s towards a limit 1M away: years.
        feed(&mut fc, Instant::now(), 60, |i| 10_000 + i as u64);
        assert_eq!(fc.eta(1_048_576), None);
    }

    #[test]
    fn at_most_one_sample_per_interval_and_a_sliding_window() {
        let mut fc = Forecaster::new();
        let t0 = Instant::now();
        assert!(fc.sample(t0, 1));
        assert!(!fc.sample(t0 + Duration::from_secs(5), 2), "too soon");
        assert!(!fc.sample(t0, 3), "not newer");
        assert!(fc.sample(t0 + Duration::from_secs(15), 4));
        assert_eq!(fc.len(), 2);
        // An hour of samples: only the last 15 minutes (61 samples at 15 s, ends included) stay.
        let mut fc = Forecaster::new();
        feed(&mut fc, t0, 240, |i| i as u64);
        assert_eq!(fc.len(), 61);
    }

    #[test]
    fn old_growth_falls_out_of_the_window() {
        let mut fc = Forecaster::new();
        let t0 = Instant::now();
        // 15 minutes of growth, then 20 minutes flat: the forecast disappears.
        let end = feed(&mut fc, t0, 60, |i| 1_000 + 1_000 * i as u64);
        assert!(fc.eta(1_000_000).is_some());
        let plateau = 1_000 + 1_000 * 59;
        for i in 1..=80 {
            fc.sample(end + Duration::from_secs(15 * i), plateau);
        }
        assert_eq!(fc.eta(1_000_000), None);
    }
}
