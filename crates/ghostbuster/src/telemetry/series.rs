//! Two metric types prometheus-client does not have.
//!
//! - [`GaugeSet`]: a family of gauges that is *replaced as a whole*. A scan's results are one
//!   picture of the table: a `Family` cleared and refilled would let a scrape in between see half
//!   of it, and a `Family` never cleared would keep reporting services that recovered. An empty
//!   set is not encoded at all (the metric is absent, not 0).
//! - [`StatCounter`]: one of the kernel's per-CPU counters, read from the shared
//!   [`CpuCounters`] at scrape time, summed or with a `cpu` label.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::wrap::CpuCounters;

/// A label set: names are fixed in code, values come from data.
pub type Labels = Vec<(&'static str, String)>;

/// Locks, ignoring poisoning: a panic elsewhere must not take the metrics endpoint down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Gauges replaced as a whole. Unlabelled when a series has no labels.
#[derive(Debug, Clone, Default)]
pub struct GaugeSet(Arc<RwLock<Vec<(Labels, f64)>>>);

impl GaugeSet {
    /// Replaces every series.
    pub fn replace(&self, series: Vec<(Labels, f64)>) {
        let mut g = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *g = series;
    }

    /// One unlabelled value, or none (the metric disappears).
    pub fn set_single(&self, value: Option<f64>) {
        self.replace(value.map(|v| vec![(Vec::new(), v)]).unwrap_or_default());
    }

    /// A copy of the current series.
    pub fn series(&self) -> Vec<(Labels, f64)> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The unlabelled value, if any.
    pub fn single(&self) -> Option<f64> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(l, _)| l.is_empty())
            .map(|(_, v)| *v)
    }
}

impl EncodeMetric for GaugeSet {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let g = self.0.read().unwrap_or_else(PoisonError::into_inner);
        for (labels, v) in g.iter() {
            if labels.is_empty() {
                encoder.encode_gauge(v)?;
            } else {
                encoder.encode_family(labels)?.encode_gauge(v)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// One counter of `CpuStats`, as `ghostbuster_conntrack_stat_<name>_total`.
#[derive(Debug, Clone)]
pub struct StatCounter {
    counters: Arc<Mutex<CpuCounters>>,
    index: usize,
    per_cpu: bool,
}

impl StatCounter {
    pub fn new(counters: Arc<Mutex<CpuCounters>>, index: usize, per_cpu: bool) -> Self {
        StatCounter {
            counters,
            index,
            per_cpu,
        }
    }
}

impl EncodeMetric for StatCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = lock(&self.counters);
        if self.per_cpu {
            for (cpu, values) in c.per_cpu() {
                let labels = [("cpu", cpu.to_string())];
                encoder
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&values[self.index], None)?;
            }
            Ok(())
        } else {
            encoder.encode_counter::<NoLabelSet, _, u64>(&c.total(self.index), None)
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        lock(&self.counters).is_empty()
    }
}
