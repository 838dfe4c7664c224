//! The state the reactor shares with the rest of the agent: the cluster index, the dead backends
//! the conntrack event thread filters on, and the few flags and times the gate reads.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use ctnetlink::{EventFilterHandle, FilterApplied};
use jiff::Timestamp;

use super::quiet_deletes::DestroyEvents;
use crate::agent::flow_index::FlowIndex;
use crate::agent::prefetch::EventMarks;
use crate::cluster::Index;

/// The reactor's shared state with the rest of the agent.
pub struct Shared {
    pub index: RwLock<Index>,
    /// Backends with tombstones: the conntrack event thread looks NEW flows up here. Written only
    /// by [`Shared::refresh_dead_backends`], which keeps the event socket's filter in step.
    dead_backends: RwLock<HashSet<IpAddr>>,
    /// The kernel-side filter of the conntrack event socket, once the event thread runs.
    event_filter: Mutex<EventFilter>,
    /// The index holds the first list of every kind (or its API is absent): a whole view of
    /// the cluster, though a relist may be running. The reactor starts then.
    pub initial_sync_done: AtomicBool,
    pub circuit_open: AtomicBool,
    /// The latest change the agent saw whose removals no tombstone remembers: its start, and
    /// the removal of a Service. A flow removable without a tombstone (`service_gone`, a ghost
    /// older than the agent) waits for a kube-proxy sync that began after it.
    changed_at: Mutex<Timestamp>,
    /// What the event thread saw since a snapshot of a backend's flows was taken.
    pub event_marks: EventMarks,
    /// This node's DNAT'd entries by backend (kept by the event thread, rebuilt by full passes):
    /// a removed backend's flows without a walk of the table.
    pub flows: FlowIndex,
    /// Backends whose gate waits on kube-proxy (behind, failing, unreadable): looked at again
    /// as soon as a reading moves its view ([`Work::KubeProxy`]).
    waiting_on_kube_proxy: Mutex<HashSet<IpAddr>>,
    /// The event socket's DESTROY subscription while it keeps the flow index: left during the
    /// reactor's own large batches of deletes ([`super::quiet_deletes`]).
    destroy_events: Mutex<Option<Arc<dyn DestroyEvents>>>,
}

/// The event socket's filter and what was last said about it (each condition is logged once).
#[derive(Default)]
struct EventFilter {
    handle: Option<EventFilterHandle>,
    /// The filter on the socket was made from the current `dead_backends`.
    in_sync: bool,
    /// A failure to attach was logged.
    warned: bool,
    /// The set was too large for a filter last time (logged on the change only).
    too_large: bool,
}

impl EventFilter {
    fn apply(&mut self, dead: &HashSet<IpAddr>) {
        let Some(handle) = &self.handle else {
            return;
        };
        match handle.set(dead.iter().copied()) {
            Ok(FilterApplied::Filtered { instructions }) => {
                if self.too_large {
                    tracing::info!(
                        dead_backends = dead.len(),
                        instructions,
                        "conntrack events filtered in the kernel again"
                    );
                }
                self.too_large = false;
            }
            // `Unfiltered`, or an outcome a newer ctnetlink may add: assume every event arrives.
            Ok(_) => {
                if !self.too_large {
                    tracing::info!(
                        dead_backends = dead.len(),
                        "too many dead backends for a kernel event filter: reading every NEW event"
                    );
                }
                self.too_large = true;
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(
                        error = %e,
                        "could not filter conntrack events in the kernel; reading every NEW event"
                    );
                }
                self.warned = true;
            }
        }
        // Also after a failure: the socket is left unfiltered, which is safe; the next change
        // of the set tries again.
        self.in_sync = true;
    }
}

impl Shared {
    pub fn new(index: Index) -> Arc<Self> {
        Arc::new(Shared {
            index: RwLock::new(index),
            dead_backends: RwLock::new(HashSet::new()),
            event_filter: Mutex::new(EventFilter::default()),
            initial_sync_done: AtomicBool::new(false),
            circuit_open: AtomicBool::new(false),
            changed_at: Mutex::new(Timestamp::now()),
            event_marks: EventMarks::default(),
            flows: FlowIndex::default(),
            waiting_on_kube_proxy: Mutex::default(),
            destroy_events: Mutex::new(None),
        })
    }

    /// Installs (or, with `None`, forgets) the event socket's DESTROY subscription.
    pub fn set_destroy_events(&self, events: Option<Arc<dyn DestroyEvents>>) {
        *self
            .destroy_events
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = events;
    }

    /// The event socket's DESTROY subscription, while the event thread keeps the flow index.
    pub fn destroy_events(&self) -> Option<Arc<dyn DestroyEvents>> {
        self.destroy_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A Service was removed at `at` (its flows' `service_gone` waits for kube-proxy).
    pub fn note_services_removed(&self, at: Timestamp) {
        let mut c = self.changed_at.lock().unwrap_or_else(|e| e.into_inner());
        *c = (*c).max(at);
    }

    /// The baseline change for flows no tombstone covers (see the field).
    pub(super) fn changed_at(&self) -> Timestamp {
        *self.changed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kube_proxy_waiters(&self) -> std::sync::MutexGuard<'_, HashSet<IpAddr>> {
        self.waiting_on_kube_proxy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The gate of `ip` waits on kube-proxy (or no longer does).
    pub(super) fn waits_on_kube_proxy(&self, ip: IpAddr, waits: bool) {
        let mut w = self.kube_proxy_waiters();
        if waits {
            w.insert(ip);
        } else {
            w.remove(&ip);
        }
    }

    /// The backends waiting on kube-proxy, forgotten here: a reading moved its view.
    pub(super) fn take_kube_proxy_waiters(&self) -> Vec<IpAddr> {
        self.kube_proxy_waiters().drain().collect()
    }

    /// The backends with tombstones, for the event thread's own check of every event it gets.
    pub fn dead_backends(&self) -> RwLockReadGuard<'_, HashSet<IpAddr>> {
        self.dead_backends.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes the dead backends from the index's tombstones and, before returning, makes the
    /// event socket's filter match them. Callers that then ask the reactor to look at a removed
    /// backend rely on this order: a flow toward it created after the call is let through by
    /// the kernel, one created before is in the table when the reactor dumps it. Must not be
    /// called with the index locked.
    pub fn refresh_dead_backends(&self) {
        // Held across the recompute and the filter update, so that concurrent refreshes apply
        // in order and the last filter always matches the last set.
        let mut filter = self.event_filter.lock().unwrap_or_else(|e| e.into_inner());
        let dead: HashSet<IpAddr> = {
            let ix = self.index.read().unwrap_or_else(|e| e.into_inner());
            ix.tombstones().iter().map(|t| t.ip).collect()
        };
        let changed = {
            let mut d = self
                .dead_backends
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let changed = *d != dead;
            if changed {
                d.clone_from(&dead);
            }
            changed
        };
        if changed || !filter.in_sync {
            filter.apply(&dead);
        }
    }

    /// Installs (or, with `None`, forgets) the event socket's filter handle, and filters on the
    /// current dead backends right away.
    pub fn set_event_filter(&self, handle: Option<EventFilterHandle>) {
        {
            let mut filter = self.event_filter.lock().unwrap_or_else(|e| e.into_inner());
            filter.handle = handle;
            filter.in_sync = false;
        }
        self.refresh_dead_backends();
    }
}
