//! The watch actor: the API watches feed the cluster index, and every change that matters to
//! the table becomes work for the reactor.
//!
//! Three loops, all stopped at the shutdown: the watches themselves
//! ([`kube_source::watch_cluster`], kube-rs watchers with relists, bookmarks and backoff); the
//! applier, which applies each event to the index and turns removed endpoints into
//! [`Work::Backend`] (after the dead-backend set and the kernel's event filter are updated); and
//! the health loop, which publishes sync and freshness (the gate's inputs) every second.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::reactor::{self, Shared, Work};
use super::supervisor::{Actor, Shutdown};
use crate::cluster::kube::{
    self as kube_source, resource_name, KindState, WatchConfig, WatchHealth,
};
use crate::cluster::{Event, Kind};
use crate::telemetry::health::Readiness;
use crate::telemetry::metrics::Metrics;

/// What the watches feed and report to.
pub struct Inputs {
    pub client: kube::Client,
    pub node_name: String,
    pub shared: Arc<Shared>,
    pub work: Sender<Work>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub health: Arc<WatchHealth>,
}

/// Starts the watches, the applier and the health loop.
pub fn spawn(inputs: Inputs, mut shutdown: Shutdown) -> Actor {
    Actor::task("watch", async move {
        // Small: each event holds a whole API object, and a list hands them on faster than the
        // index takes them; a deep queue would rebuild the list's peak the raw pages avoid.
        let (ev_tx, ev_rx) = tokio::sync::mpsc::channel::<Event>(256);
        // Kinds whose first list the index has applied: a first list is the initial view, not a
        // change, and once every kind is here (or absent from the API) the view is whole.
        let listed: Arc<Mutex<HashSet<Kind>>> = Arc::default();
        let watches = tokio::spawn(kube_source::watch_cluster(
            inputs.client.clone(),
            WatchConfig {
                node_name: inputs.node_name.clone(),
                watch_service_cidrs: true,
            },
            ev_tx,
            inputs.health.clone(),
        ));
        let applier = Applier {
            shared: inputs.shared.clone(),
            work: inputs.work.clone(),
            metrics: inputs.metrics.clone(),
            readiness: inputs.readiness.clone(),
            listed: listed.clone(),
            health: inputs.health.clone(),
        };
        let applier = tokio::spawn(applier.run(ev_rx));
        let health = tokio::spawn(publish_health(
            inputs.health,
            inputs.metrics,
            inputs.readiness,
            inputs.shared,
            listed,
        ));
        shutdown.wait().await;
        for t in [&watches, &applier, &health] {
            t.abort();
        }
        // Joined: an aborted task ends at its next await.
        let _ = tokio::join!(watches, applier, health);
        Ok(())
    })
}

/// Applies every event to the index and sends the reactor what it must look at.
struct Applier {
    shared: Arc<Shared>,
    work: Sender<Work>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    listed: Arc<Mutex<HashSet<Kind>>>,
    health: Arc<WatchHealth>,
}

impl Applier {
    async fn run(self, mut events: tokio::sync::mpsc::Receiver<Event>) {
        let Applier {
            shared,
            work,
            metrics,
            readiness,
            listed,
            health,
        } = self;
        while let Some(ev) = events.recv().await {
            let done_kind = match &ev {
                Event::InitDone(k) => Some(*k),
                _ => None,
            };
            let changes = {
                let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                ix.apply(ev, Timestamp::now())
            };
            let first_list = done_kind.is_some_and(|k| lock(&listed).insert(k));
            if first_list {
                mark_whole_view(&shared, &listed, &health);
            }
            if let Some(k) = done_kind {
                readiness.synced(resource_name(k));
                // The list's objects are reduced and dropped: give their memory back.
                super::memory::release_freed_memory();
            }
            match changes {
                // Every endpoint of the first list is "added": one targeted read for each would be
                // a walk of the whole table per backend, or one dump holding every flow of the
                // table. The full pass after the initial sync looks at them all.
                Ok(_) if first_list => {}
                Ok(c) => {
                    let n = (c.endpoints_removed.len()
                        + c.endpoints_added.len()
                        + c.services_removed.len()) as u64;
                    if n > 0 {
                        metrics.endpoint_changes(n);
                    }
                    if !c.services_removed.is_empty() {
                        shared.note_services_removed(Timestamp::now());
                    }
                    if !c.endpoints_removed.is_empty() {
                        // Set and event filter updated before the work below is sent.
                        shared.refresh_dead_backends();
                    }
                    for w in reactor::work_from_changes(&c) {
                        let _ = work.send(w);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignored a cluster object"),
            }
        }
    }
}

/// The gate's inputs that change over time: watch sync and freshness, every second.
async fn publish_health(
    health: Arc<WatchHealth>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shared: Arc<Shared>,
    listed: Arc<Mutex<HashSet<Kind>>>,
) {
    loop {
        metrics.set_synced(health.all_synced());
        // Also here: an API found absent after the last first list (ServiceCIDRs).
        mark_whole_view(&shared, &listed, &health);
        // A kind the API server does not serve (ServiceCIDRs before 1.33) never sends InitDone,
        // and must not hold readiness back: `--service-cidr` stands in for it.
        for k in Kind::ALL {
            if matches!(health.state(k), KindState::Unavailable | KindState::Off) {
                readiness.synced(resource_name(k));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets `initial_sync_done` once the index holds the first list of every kind the API server
/// serves: from then on the reactor's full passes judge a whole view (its first one runs then).
fn mark_whole_view(shared: &Shared, listed: &Mutex<HashSet<Kind>>, health: &WatchHealth) {
    if shared.initial_sync_done.load(Ordering::Relaxed) {
        return;
    }
    let listed = lock(listed);
    let whole = Kind::ALL.iter().all(|k| {
        listed.contains(k) || matches!(health.state(*k), KindState::Unavailable | KindState::Off)
    });
    if whole {
        shared.initial_sync_done.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
