//! The hard cap on per-service series (issue #4: at most `--max-service-series` services get
//! their own labels, the rest are summed as `namespace="_other", service="_other"`).
//!
//! Gauges are rebuilt per scan, so their cap is a ranking ([`top_services`]): the services with the
//! most flows keep their names. Counters cannot be rebuilt (that would reset them), so
//! [`Admission`] admits services on first use up to the cap and sends later ones to `_other`; a
//! service whose counters have not moved for [`IDLE_EVICTION`] gives its place up, so an agent
//! that runs for months keeps naming the services that matter now rather than the first hundred
//! it ever saw. An evicted counter disappears; `rate()`/`increase()` treat its return as a new
//! series.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::series::Labels;

/// The label value of everything beyond the cap.
pub const OTHER: &str = "_other";

/// A counter series of a service unused this long may be evicted to admit another service.
pub const IDLE_EVICTION: Duration = Duration::from_secs(3600);

/// A Service as `(namespace, name)`.
pub type ServiceKey = (String, String);

/// The `max` keys with the largest totals (ties broken by key, so the choice is stable).
pub fn top_services<K: Ord + Clone>(totals: &BTreeMap<K, u64>, max: usize) -> BTreeSet<K> {
    let mut ranked: Vec<(&K, u64)> = totals.iter().map(|(k, v)| (k, *v)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(max)
        .map(|(k, _)| k.clone())
        .collect()
}

#[derive(Debug)]
struct Admitted {
    last_used: Instant,
    label_sets: Vec<Labels>,
}

/// Which services have their own series in a counter family.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    idle: Duration,
    services: HashMap<ServiceKey, Admitted>,
}

/// The answer of [`Admission::admit`].
#[derive(Debug, PartialEq, Eq)]
pub struct Admit {
    /// The service keeps its own labels; otherwise use [`OTHER`].
    pub own: bool,
    /// Label sets of an evicted service: remove them from the family.
    pub evicted: Vec<Labels>,
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self::with_idle(max, IDLE_EVICTION)
    }

    pub fn with_idle(max: usize, idle: Duration) -> Self {
        Admission {
            max,
            idle,
            services: HashMap::new(),
        }
    }

    /// Decides whether `key` gets its own series now; `labels` is the label set about to be
    /// incremented, remembered so an eviction can remove it.
    pub fn admit(&mut self, key: &ServiceKey, labels: &Labels, now: Instant) -> Admit {
        let mut evicted = Vec::new();
        if !self.services.contains_key(key) {
            if self.services.len() >= self.max {
                let lru = self
                    .services
                    .iter()
                    .filter(|(_, a)| now.saturating_duration_since(a.last_used) >= self.idle)
                    .min_by(|a, b| a.1.last_used.cmp(&b.1.last_used).then(a.0.cmp(b.0)))
                    .map(|(k, _)| k.clone());
                match lru {
                    Some(old) => {
                        if let Some(a) = self.services.remove(&old) {
                            evicted = a.label_sets;
                        }
                    }
                    None => {
                        return Admit {
                            own: false,
                            evicted,
                        }
                    }
                }
            }
            self.services.insert(
                key.clone(),
                Admitted {
                    last_used: now,
                    label_sets: Vec::new(),
                },
            );
        }
        if let Some(a) = self.services.get_mut(key) {
            a.last_used = now;
            if !a.label_sets.contains(labels) {
                a.label_sets.push(labels.clone());
            }
        }
        Admit { own: true, evicted }
    }

    /// Services with their own series.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> ServiceKey {
        ("ns".to_string(), format!("svc{i:03}"))
    }

    fn labels(i: usize) -> Labels {
        vec![("service", format!("svc{i:03}"))]
    }

    #[test]
    fn top_keeps_the_largest_with_stable_ties() {
        let totals: BTreeMap<ServiceKey, u64> = (0..10).map(|i| (key(i), (i % 5) as u64)).collect();
        let top = top_services(&totals, 3);
        // Totals 4 (svc004, svc009) and 3 (svc003, svc008): the tie at 3 goes to the smaller key.
        assert_eq!(
            top.into_iter().collect::<Vec<_>>(),
            vec![key(3), key(4), key(9)]
        );
        assert_eq!(top_services(&totals, 100).len(), 10);
        assert!(top_services(&totals, 0).is_empty());
    }

    #[test]
    fn admits_up_to_the_cap_then_other() {
        let now = Instant::now();
        let mut a = Admission::new(2);
        assert!(a.admit(&key(1), &labels(1), now).own);
        assert!(a.admit(&key(2), &labels(2), now).own);
        assert!(!a.admit(&key(3), &labels(3), now).own, "cap reached");
        assert!(a.admit(&key(1), &labels(1), now).own, "already admitted");
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn an_idle_service_gives_its_place_up() {
        let t0 = Instant::now();
        let mut a = Admission::with_idle(2, Duration::from_secs(60));
        a.admit(&key(1), &labels(1), t0);
        a.admit(&key(1), &vec![("service", "svc001-b".into())], t0);
        a.admit(&key(2), &labels(2), t0 + Duration::from_secs(30));
        // At t0+70 s, svc001 has been idle 70 s, svc002 40 s.
        let r = a.admit(&key(3), &labels(3), t0 + Duration::from_secs(70));
        assert!(r.own);
        assert_eq!(
            r.evicted,
            vec![labels(1), vec![("service", "svc001-b".to_string())]]
        );
        // svc002 is not idle enough yet: svc004 goes to _other.
        let r = a.admit(&key(4), &labels(4), t0 + Duration::from_secs(80));
        assert!(!r.own);
        assert!(r.evicted.is_empty());
        assert_eq!(a.len(), 2);
    }
}
