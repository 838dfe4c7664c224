//! Reads kube-proxy's sync metrics (and its `/healthz` when they cannot be read) off the
//! reactor's thread. The reactor asks for kube-proxy's state every time a gate waits on it; a
//! kube-proxy that accepts the connection and never answers would hold each of those asks for
//! the client's timeout (1 s for the metrics, another for `/healthz`), and every other backend's
//! deletes, the full passes and the liveness heartbeat with them (issue #12 §3: "the reactor
//! never blocks on the network").
//!
//! So the reactor only ever reads what the last reading proved ([`KubeProxyReader::view`]
//! returns at once) and asks for a new reading; a task reads, one reading at a time (asks made
//! meanwhile coalesce into the next one), feeds the [`SyncTracker`], and wakes the reactor when
//! the view moved — a sync that began later, kube-proxy failing or recovering — so a gate that
//! waits opens as soon as the reading that opens it is in, not one poll later.
//!
//! A view is at worst one reading old. That is safe: a sync that began after a removal stays
//! proof that the removal was programmed (a later failed sync leaves the rules as they were), and
//! an older view can only keep a gate closed a moment longer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::Notify;

use super::gate::{KubeProxyView, SyncReading, SyncTracker};
use super::supervisor::{Actor, Shutdown};

/// Where readings come from: kube-proxy's metrics and healthz over HTTP in the agent, a table in
/// tests.
pub trait SyncSource: Send + Sync + 'static {
    /// kube-proxy's sync metrics, or why they cannot be read.
    fn reading(&self) -> impl std::future::Future<Output = Result<SyncReading, String>> + Send;
    /// `/healthz`: `Some(healthy)`, or `None` when it cannot be read either.
    fn healthy(&self) -> impl std::future::Future<Output = Option<bool>> + Send;
}

impl SyncSource for crate::kube_proxy::KubeProxy {
    async fn reading(&self) -> Result<SyncReading, String> {
        self.sync_reading().await.map_err(|e| e.to_string())
    }
    async fn healthy(&self) -> Option<bool> {
        self.healthz().await.ok().map(|h| h.healthy)
    }
}

/// What each reading is reported to (the agent's metrics), besides the tracker.
pub trait ReadingSink: Send + Sync + 'static {
    /// How long ago kube-proxy's last successful sync ended (`None`: unreadable).
    fn lag(&self, lag: Option<Duration>);
    fn failing(&self, failing: bool);
}

impl ReadingSink for crate::telemetry::metrics::Metrics {
    fn lag(&self, lag: Option<Duration>) {
        self.set_kube_proxy_lag(lag);
    }
    fn failing(&self, failing: bool) {
        self.set_kube_proxy_failing(failing);
    }
}

#[derive(Default)]
struct State {
    tracker: SyncTracker,
    /// When the last reading finished.
    read_at: Option<Instant>,
}

/// The reactor's handle: the last view, and a way to ask for a new one.
#[derive(Clone)]
pub struct KubeProxyReader {
    state: Arc<Mutex<State>>,
    ask: Arc<Notify>,
}

/// A reading this recent is not asked for again (a turn reads kube-proxy once; several turns
/// in a burst need not each cause a request).
const FRESH: Duration = Duration::from_millis(20);

impl KubeProxyReader {
    /// Starts the reading actor (`kube-proxy`) on the current runtime. `wake` is called when a
    /// reading moved the view; the actor ends at `shutdown`.
    pub fn spawn(
        source: impl SyncSource,
        sink: Arc<dyn ReadingSink>,
        wake: Arc<dyn Fn() + Send + Sync>,
        shutdown: Shutdown,
    ) -> (Self, Actor) {
        let reader = KubeProxyReader {
            state: Arc::default(),
            ask: Arc::new(Notify::new()),
        };
        let work = read_loop(reader.clone(), source, sink, wake, shutdown);
        (reader, Actor::task("kube-proxy", work))
    }

    /// What the readings so far proved, at once; asks for a new reading unless one just
    /// finished.
    pub fn view(&self) -> KubeProxyView {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.read_at.is_none_or(|t| t.elapsed() >= FRESH) {
            self.ask.notify_one();
        }
        st.tracker.view()
    }
}

async fn read_loop(
    reader: KubeProxyReader,
    source: impl SyncSource,
    sink: Arc<dyn ReadingSink>,
    wake: Arc<dyn Fn() + Send + Sync>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    loop {
        // A request made while the previous reading ran left a permit: it is served now.
        tokio::select! {
            _ = reader.ask.notified() => {}
            _ = shutdown.wait() => return Ok(()),
        }
        // A kube-proxy that does not answer must not hold the shutdown either.
        let reading = tokio::select! {
            r = source.reading() => r,
            _ = shutdown.wait() => return Ok(()),
        };
        let healthy = match &reading {
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "kube-proxy's sync metrics are unreadable; using --grace unless its /healthz says it fails");
                tokio::select! {
                    h = source.healthy() => h,
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        };
        let (before, after) = {
            let mut st = reader.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = st.tracker.view();
            match reading {
                Ok(r) => {
                    let lag = r
                        .last_success
                        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t)).ok());
                    sink.lag(lag);
                    st.tracker.observe(r);
                }
                Err(_) => {
                    sink.lag(None);
                    st.tracker.unreadable(healthy);
                }
            }
            st.read_at = Some(Instant::now());
            (before, st.tracker.view())
        };
        sink.failing(after.failing);
        if after != before {
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::supervisor::Trigger;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// kube-proxy as a test scripts it: each reading waits for `hold` (a kube-proxy that does not
    /// answer), then answers the next scripted reading.
    struct Scripted {
        now: Mutex<Result<SyncReading, String>>,
        /// What `/healthz` answers.
        healthz: Mutex<Option<bool>>,
        hold: Arc<Notify>,
        hang: AtomicBool,
    }

    fn scripted(first: Result<SyncReading, String>) -> Arc<Scripted> {
        Arc::new(Scripted {
            now: Mutex::new(first),
            healthz: Mutex::new(None),
            hold: Arc::new(Notify::new()),
            hang: AtomicBool::new(false),
        })
    }

    impl SyncSource for Arc<Scripted> {
        async fn reading(&self) -> Result<SyncReading, String> {
            if self.hang.load(Ordering::Relaxed) {
                self.hold.notified().await;
            }
            self.now.lock().unwrap().clone()
        }
        async fn healthy(&self) -> Option<bool> {
            *self.healthz.lock().unwrap()
        }
    }

    struct NoSink;
    impl ReadingSink for NoSink {
        fn lag(&self, _: Option<Duration>) {}
        fn failing(&self, _: bool) {}
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn synced(end: i64, sum: f64, count: f64) -> Result<SyncReading, String> {
        Ok(SyncReading {
            last_success: Some(at(end)),
            duration: Some((sum, count)),
            failures: Some(0.0),
            healthy: None,
        })
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A kube-proxy that never answers does not hold the reactor: `view` returns at once with
    /// what the earlier readings proved, and once the answer comes the view moves and the reactor
    /// is woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kube_proxy_that_does_not_answer_never_holds_the_reactor() {
        let source = scripted(synced(10, 1.0, 1.0));
        let wakes = Arc::new(AtomicUsize::new(0));
        let stop = Trigger::new();
        let w = wakes.clone();
        let (reader, task) = KubeProxyReader::spawn(
            source.clone(),
            Arc::new(NoSink),
            Arc::new(move || {
                w.fetch_add(1, Ordering::Relaxed);
            }),
            stop.shutdown(),
        );
        // The first reading: a single sync that ran 9..10.
        assert_eq!(reader.view(), KubeProxyView::default());
        until("the first reading", || reader.view().readable).await;
        assert_eq!(reader.view().began_after, Some(at(9)));
        let woken = wakes.load(Ordering::Relaxed);
        assert!(
            woken >= 1,
            "the first reading moved the view and woke nobody"
        );

        // kube-proxy stops answering: every ask returns at once with the old view.
        source.hang.store(true, Ordering::Relaxed);
        *source.now.lock().unwrap() = synced(20, 1.5, 2.0);
        tokio::time::sleep(FRESH).await;
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(reader.view().began_after, Some(at(9)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "asking for kube-proxy's view took {:?} while it did not answer",
            t.elapsed()
        );
        assert_eq!(wakes.load(Ordering::Relaxed), woken);

        // It answers: a sync that ran 19.5..20 (sum moved by 0.5). The view moves, the reactor
        // is woken without asking again.
        source.hang.store(false, Ordering::Relaxed);
        source.hold.notify_one();
        until("the reactor woken by the new reading", || {
            wakes.load(Ordering::Relaxed) > woken
        })
        .await;
        assert_eq!(
            reader.view().began_after,
            Some(at(19).checked_add(Duration::from_millis(500)).unwrap())
        );

        stop.set();
        tokio::time::timeout(Duration::from_secs(2), task.join())
            .await
            .expect("the reader stops when told")
            .unwrap();
    }

    /// A reading that proves nothing new wakes nobody (the reactor would look at every waiting
    /// backend again, for nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reading_that_moves_nothing_wakes_nobody() {
        let source = scripted(synced(10, 1.0, 1.0));
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let stop = Trigger::new();
        let (reader, _task) = KubeProxyReader::spawn(
            source,
            Arc::new(NoSink),
            Arc::new(move || {
                w.fetch_add(1, Ordering::Relaxed);
            }),
            stop.shutdown(),
        );
        reader.view();
        until("the first reading", || reader.view().readable).await;
        let reads_before = wakes.load(Ordering::Relaxed);
        for _ in 0..5 {
            tokio::time::sleep(FRESH + Duration::from_millis(5)).await;
            reader.view();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes.load(Ordering::Relaxed), reads_before);
        stop.set();
    }

    /// The `/healthz` fallback: with the metrics unreadable, a kube-proxy whose `/healthz`
    /// answers 503 is failing (the gate holds, `--grace` does not apply); a 200 makes it
    /// unreadable but not failing (grace applies).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_metrics_fall_back_to_healthz() {
        let source = scripted(Err("connection refused".into()));
        let stop = Trigger::new();
        let (reader, _task) = KubeProxyReader::spawn(
            source.clone(),
            Arc::new(NoSink),
            Arc::new(|| {}),
            stop.shutdown(),
        );
        let settled = |want: KubeProxyView| {
            let r = reader.clone();
            async move {
                until(&format!("{want:?}"), || r.view() == want).await;
            }
        };
        *source.healthz.lock().unwrap() = Some(false);
        settled(KubeProxyView {
            failing: true,
            ..KubeProxyView::default()
        })
        .await;
        *source.healthz.lock().unwrap() = Some(true);
        settled(KubeProxyView::default()).await;
        stop.set();
    }
}
