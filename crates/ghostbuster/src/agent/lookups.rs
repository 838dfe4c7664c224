//! Lookups that never block the reactor: a pod GET, "who holds this IP?".
//!
//! The reactor is one thread that reads and changes the conntrack table for every Service. A
//! question to the API server asked on it waits for the answer, so a hanging API server would
//! hold back every other backend's deletes for up to the lookup's timeout, each time a retry
//! came due. Here a question is started as a task on the agent's runtime and the reactor gets,
//! at once, either the answer of an earlier lookup (consumed once) or "pending". A finished
//! lookup whose answer the reactor must act on wakes it for that backend (see
//! [`Answer::wakes`]); one it need not act on (a pod alive) does not, or a pass would ask
//! again, be answered "alive", wake, pass, ask ... for as long as the pod lives.
//!
//! The table is the pure part ([`Lookups::poll`], [`Lookups::finish`], time given by the
//! caller); [`Lookups::start`] spawns the lookup.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::reactor::{HoldersAnswer, PodFate};

/// An answer a lookup gives.
pub trait Answer: Clone + Send + 'static {
    /// The reactor must look at the backend again once this arrives (new evidence, or an
    /// unanswered question to retry with backoff).
    fn wakes(&self) -> bool;
    /// How long the answer may be used after it came: an older one is dropped and asked again
    /// (a pod alive a minute ago may be gone now).
    fn fresh_for(&self) -> Duration;
}

/// An alive pod is not evidence for long: after this, asked again.
pub const ALIVE_FOR: Duration = Duration::from_secs(2);
/// A pod gone (404, another uid or IP) stays gone: used until the backend's gate opens.
pub const GONE_FOR: Duration = Duration::from_secs(60);
/// No answer: the reactor retries it with backoff; an older one is asked again at once.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// A pod's fate wakes the reactor when it is new evidence (gone) or a failure to retry with
/// backoff (unknown); a pod alive does not (the flows stay kept, nothing to do).
impl Answer for PodFate {
    fn wakes(&self) -> bool {
        matches!(self, PodFate::Gone | PodFate::Unknown)
    }
    fn fresh_for(&self) -> Duration {
        match self {
            PodFate::Gone => GONE_FOR,
            PodFate::Alive => ALIVE_FOR,
            PodFate::Unknown | PodFate::Pending => UNKNOWN_FOR,
        }
    }
}

/// Every answer about an IP's holders wakes the reactor: it records the answer (and when it
/// may ask again: at most once per `--ip-lookup-every`, so a pass cannot loop on it).
impl Answer for HoldersAnswer {
    fn wakes(&self) -> bool {
        !matches!(self, HoldersAnswer::Pending)
    }
    fn fresh_for(&self) -> Duration {
        match self {
            HoldersAnswer::Absent { .. } | HoldersAnswer::Held => GONE_FOR,
            HoldersAnswer::Unknown | HoldersAnswer::Pending => UNKNOWN_FOR,
        }
    }
}

/// What the reactor gets when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled<V> {
    /// The answer of a finished lookup (now consumed: the next ask starts a new lookup).
    Ready(V),
    /// A lookup is under way (the caller was the one to start it when `start` is true).
    Pending { start: bool },
}

#[derive(Debug, Clone)]
enum Slot<V> {
    /// Started then; given up on (started again) past the table's `in_flight_for`, so that a
    /// task that never finished (a runtime shutting down) cannot keep the key pending for ever.
    InFlight(Instant),
    Answered(V, Instant),
}

/// In-flight and answered lookups by key. Cheap to clone (shared with the lookup tasks).
#[derive(Debug)]
pub struct Lookups<K, V> {
    slots: Arc<Mutex<HashMap<K, Slot<V>>>>,
    in_flight_for: Duration,
}

impl<K, V> Clone for Lookups<K, V> {
    fn clone(&self) -> Self {
        Lookups {
            slots: self.slots.clone(),
            in_flight_for: self.in_flight_for,
        }
    }
}

/// Keys kept before old answers and lost lookups are purged.
const PURGE_AT: usize = 256;

impl<K: Eq + Hash + Clone + Send + 'static, V: Answer> Lookups<K, V> {
    /// A table whose lookups are presumed lost `in_flight_for` after they began (the lookup's
    /// own timeout and some slack).
    pub fn new(in_flight_for: Duration) -> Self {
        Lookups {
            slots: Arc::default(),
            in_flight_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer for `key` if a fresh one is there (consumed), else pending: with `start`
    /// true when no lookup for `key` is under way, which the caller must then start (one lookup
    /// in flight per key).
    pub fn poll(&self, key: &K, now: Instant) -> Polled<V> {
        let mut slots = self.lock();
        if slots.len() >= PURGE_AT {
            let lost = self.in_flight_for;
            slots.retain(|_, s| match s {
                Slot::InFlight(at) => now.saturating_duration_since(*at) < lost,
                Slot::Answered(v, at) => now.saturating_duration_since(*at) < v.fresh_for(),
            });
        }
        match slots.get(key) {
            Some(Slot::InFlight(at)) if now.saturating_duration_since(*at) < self.in_flight_for => {
                return Polled::Pending { start: false };
            }
            Some(Slot::Answered(v, at)) if now.saturating_duration_since(*at) < v.fresh_for() => {
                let v = v.clone();
                slots.remove(key);
                return Polled::Ready(v);
            }
            _ => {}
        }
        slots.insert(key.clone(), Slot::InFlight(now));
        Polled::Pending { start: true }
    }

    /// Records the answer of the lookup for `key`; returns whether the reactor must be woken.
    pub fn finish(&self, key: K, answer: V, now: Instant) -> bool {
        let wakes = answer.wakes();
        self.lock().insert(key, Slot::Answered(answer, now));
        wakes
    }

    /// Runs `lookup` as a task on `rt`; its answer is recorded for `key`, and `wake(ip)` is
    /// called when the answer [`Answer::wakes`]. Call only after [`Lookups::poll`] said
    /// `start`.
    pub fn start<F>(
        &self,
        rt: &tokio::runtime::Handle,
        key: K,
        ip: IpAddr,
        wake: Arc<dyn Fn(IpAddr) + Send + Sync>,
        lookup: F,
    ) where
        F: Future<Output = V> + Send + 'static,
    {
        let table = self.clone();
        rt.spawn(async move {
            let answer = lookup.await;
            if table.finish(key, answer, Instant::now()) {
                wake(ip);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Gone,
        Alive,
        Unknown,
    }

    impl Answer for Fate {
        fn wakes(&self) -> bool {
            !matches!(self, Fate::Alive)
        }
        fn fresh_for(&self) -> Duration {
            match self {
                Fate::Alive => Duration::from_secs(2),
                _ => Duration::from_secs(60),
            }
        }
    }

    fn table() -> Lookups<&'static str, Fate> {
        Lookups::new(Duration::from_secs(10))
    }

    #[test]
    fn one_lookup_in_flight_per_key() {
        let t = table();
        let now = Instant::now();
        assert_eq!(t.poll(&"a", now), Polled::Pending { start: true });
        assert_eq!(t.poll(&"a", now), Polled::Pending { start: false });
        assert_eq!(
            t.poll(&"a", now + Duration::from_secs(9)),
            Polled::Pending { start: false }
        );
        // Another key is another lookup.
        assert_eq!(t.poll(&"b", now), Polled::Pending { start: true });
        // A lookup that never finished is presumed lost and started again.
        assert_eq!(
            t.poll(&"a", now + Duration::from_secs(10)),
            Polled::Pending { start: true }
        );
    }

    #[test]
    fn an_answer_is_consumed_once() {
        let t = table();
        let now = Instant::now();
        assert_eq!(t.poll(&"a", now), Polled::Pending { start: true });
        t.finish("a", Fate::Gone, now);
        assert_eq!(t.poll(&"a", now), Polled::Ready(Fate::Gone));
        // The next ask is a new lookup.
        assert_eq!(t.poll(&"a", now), Polled::Pending { start: true });
    }

    #[test]
    fn an_old_alive_answer_is_asked_again() {
        let t = table();
        let now = Instant::now();
        t.poll(&"a", now);
        t.finish("a", Fate::Alive, now);
        assert_eq!(
            t.poll(&"a", now + Duration::from_secs(3)),
            Polled::Pending { start: true },
            "a pod alive 3 s ago may be gone now"
        );
        t.finish("a", Fate::Alive, now + Duration::from_secs(3));
        assert_eq!(
            t.poll(&"a", now + Duration::from_millis(4500)),
            Polled::Ready(Fate::Alive)
        );
        // Gone stays evidence longer (it is used when the backend's gate opens).
        t.poll(&"b", now);
        t.finish("b", Fate::Gone, now);
        assert_eq!(
            t.poll(&"b", now + Duration::from_secs(30)),
            Polled::Ready(Fate::Gone)
        );
    }

    /// The agent's answers: a pod alive neither wakes the reactor (pass, GET, alive, pass, ...
    /// would loop) nor stays evidence for long; gone and unknown wake it.
    #[test]
    fn a_pod_alive_does_not_wake_gone_and_unknown_do() {
        assert!(!PodFate::Alive.wakes());
        assert!(PodFate::Gone.wakes() && PodFate::Unknown.wakes());
        assert_eq!(PodFate::Alive.fresh_for(), ALIVE_FOR);
        assert!(HoldersAnswer::Held.wakes() && HoldersAnswer::Unknown.wakes());
        let t: Lookups<u8, PodFate> = Lookups::new(Duration::from_secs(10));
        let now = Instant::now();
        t.poll(&1, now);
        assert!(!t.finish(1, PodFate::Alive, now));
        assert_eq!(t.poll(&1, now + ALIVE_FOR), Polled::Pending { start: true });
    }

    #[test]
    fn gone_and_unknown_wake_the_reactor_alive_does_not() {
        let t = table();
        let now = Instant::now();
        assert!(t.finish("a", Fate::Gone, now));
        assert!(t.finish("b", Fate::Unknown, now));
        assert!(!t.finish("c", Fate::Alive, now));
    }

    #[test]
    fn many_keys_are_purged_once_old() {
        let t = table();
        let now = Instant::now();
        let keys: Vec<&'static str> = (0..PURGE_AT)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        for k in &keys {
            t.poll(k, now);
            t.finish(k, Fate::Alive, now);
        }
        t.poll(&"x", now + Duration::from_secs(3));
        assert_eq!(t.lock().len(), 1);
    }

    /// The task records the answer and wakes for Gone and Unknown only; the reactor is never
    /// made to wait for it.
    #[test]
    fn a_started_lookup_answers_later_and_wakes_only_when_it_must() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = table();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let wake: Arc<dyn Fn(IpAddr) + Send + Sync> = Arc::new(move |_| {
            w.fetch_add(1, Ordering::SeqCst);
        });
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for (key, fate) in [("g", Fate::Gone), ("u", Fate::Unknown), ("a", Fate::Alive)] {
            assert_eq!(
                t.poll(&key, Instant::now()),
                Polled::Pending { start: true }
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            t.start(rt.handle(), key, ip, wake.clone(), async move {
                let _ = rx.await;
                fate
            });
            // Not answered yet: still pending, nothing started twice.
            assert_eq!(
                t.poll(&key, Instant::now()),
                Polled::Pending { start: false }
            );
            tx.send(()).unwrap();
            rt.block_on(async {
                for _ in 0..100 {
                    if matches!(t.lock().get(&key), Some(Slot::Answered(..))) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            assert_eq!(t.poll(&key, Instant::now()), Polled::Ready(fate));
        }
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }
}
