//! Kubernetes Events (events.k8s.io/v1) on a Service when its ghost flows were removed:
//! "Removed 12 stale conntrack flows on node N to 203.0.113.7:5432 (pod db-0 gone 3s ago)".
//!
//! At most one Event per Service per node per window (5 minutes): removals inside the window are
//! aggregated and posted when it ends, so a 500-pod rollout does not flood the API server.
//!
//! Events are best effort, and an API server that accepts a write and goes silent must hold
//! no one: every write gives up after [`EVENT_CALL_TIMEOUT`] and the Event is dropped (never
//! retried), and the poster's lock is never held across a write — the reactor records its
//! removals with `try_lock` and must find it free.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use super::supervisor::{Actor, Shutdown};

/// The longest one Event write may take. Without it a silent API server holds the write for
/// kube's read timeout (295 s), per Event, one after the other. Longer than `--pod-get-timeout`'s
/// 5 s default (a write is slower than a read on a busy API server), and cheap to wait for: only
/// the flush loop or a task of its own waits on it.
pub const EVENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Service, by namespace and name.
pub type ServiceName = (String, String);

#[derive(Debug, Default)]
struct Pending {
    flows: u64,
    backends: BTreeSet<String>,
    pods: BTreeSet<String>,
    /// How long before the removal the oldest backend left, when known.
    gone_for: Option<Duration>,
}

/// Aggregates removals and posts them as Events.
pub struct EventPoster {
    client: kube::Client,
    node: String,
    window: Duration,
    last_post: HashMap<ServiceName, Instant>,
    pending: HashMap<ServiceName, Pending>,
    call_timeout: Duration,
}

/// Events taken out of an [`EventPoster`] to be posted without its lock.
pub struct Due {
    client: kube::Client,
    call_timeout: Duration,
    events: Vec<(ServiceName, Event)>,
}

impl EventPoster {
    pub fn new(client: kube::Client, node: impl Into<String>, window: Duration) -> Self {
        EventPoster {
            client,
            node: node.into(),
            window,
            last_post: HashMap::new(),
            pending: HashMap::new(),
            call_timeout: EVENT_CALL_TIMEOUT,
        }
    }

    /// Another limit than [`EVENT_CALL_TIMEOUT`] for each Event write (tests).
    pub fn with_call_timeout(mut self, limit: Duration) -> Self {
        self.call_timeout = limit;
        self
    }

    /// Notes `flows` removed flows of `service` to `backend` (`ip:port`).
    pub fn record(
        &mut self,
        service: ServiceName,
        flows: u64,
        backend: String,
        pod: Option<String>,
        gone_for: Option<Duration>,
    ) {
        let p = self.pending.entry(service).or_default();
        p.flows += flows;
        p.backends.insert(backend);
        if let Some(pod) = pod {
            p.pods.insert(pod);
        }
        p.gone_for = match (p.gone_for, gone_for) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// The note of an aggregated Event.
    fn note(&self, p: &Pending) -> String {
        let backends: Vec<&str> = p.backends.iter().map(String::as_str).take(3).collect();
        let more = p.backends.len().saturating_sub(3);
        let mut s = format!(
            "Removed {} stale conntrack flow{} on node {} to {}{}",
            p.flows,
            if p.flows == 1 { "" } else { "s" },
            self.node,
            backends.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        if !p.pods.is_empty() {
            let pods: Vec<&str> = p.pods.iter().map(String::as_str).take(3).collect();
            s.push_str(&format!(" (pod {} gone", pods.join(", ")));
            if let Some(d) = p.gone_for {
                s.push_str(&format!(" {:.0}s ago", d.as_secs_f64()));
            }
            s.push(')');
        }
        s
    }

    /// Takes out what is due (no Event for this Service within the window), to be posted by
    /// [`Due::post`] once the poster is unlocked. No I/O: quick under a lock.
    pub fn take_due(&mut self, now: Instant) -> Due {
        let due: Vec<ServiceName> = self
            .pending
            .keys()
            .filter(|k| {
                self.last_post
                    .get(*k)
                    .is_none_or(|t| now.duration_since(*t) >= self.window)
            })
            .cloned()
            .collect();
        let mut events = Vec::with_capacity(due.len());
        for key in due {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let note = self.note(&p);
            self.last_post.insert(key.clone(), now);
            let ev = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}.ghostbuster.", key.1)),
                    namespace: Some(key.0.clone()),
                    ..Default::default()
                },
                event_time: Some(MicroTime(jiff::Timestamp::now())),
                action: Some("RemoveStaleFlows".into()),
                reason: Some("StaleConntrackFlowsRemoved".into()),
                note: Some(note),
                type_: Some("Normal".into()),
                reporting_controller: Some("ghostbuster.io/agent".into()),
                reporting_instance: Some(format!("ghostbuster-{}", self.node)),
                regarding: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Service".into()),
                    namespace: Some(key.0.clone()),
                    name: Some(key.1.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            events.push((key, ev));
        }
        // Forget services quiet for a long time.
        let window = self.window;
        self.last_post
            .retain(|_, t| now.duration_since(*t) < window * 4);
        Due {
            client: self.client.clone(),
            call_timeout: self.call_timeout,
            events,
        }
    }
}

impl Due {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Posts the Events, each within the call timeout; returns how many were posted. Failures
    /// are logged and dropped (Events are best effort). After a timeout the API server is taken
    /// for silent and the rest are dropped too: a flush costs at most one timeout, not one per
    /// Service.
    pub async fn post(self) -> usize {
        let mut posted = 0;
        let total = self.events.len();
        for (i, (key, ev)) in self.events.into_iter().enumerate() {
            let service = format!("{}/{}", key.0, key.1);
            let api: Api<Event> = Api::namespaced(self.client.clone(), &key.0);
            match tokio::time::timeout(self.call_timeout, api.create(&PostParams::default(), &ev))
                .await
            {
                Ok(Ok(_)) => posted += 1,
                Ok(Err(e)) => {
                    tracing::warn!(service = %service, error = %e, "posting an Event failed; dropped")
                }
                Err(_) => {
                    tracing::warn!(
                        service = %service,
                        timeout_ms = self.call_timeout.as_millis() as u64,
                        dropped = total - i,
                        "posting an Event timed out: the API server did not answer; dropped with \
                         the rest of this flush (Events are best effort, never retried)"
                    );
                    break;
                }
            }
        }
        posted
    }
}

/// The poster shared by the reactor (which records removals) and the flusher.
pub type SharedPoster = std::sync::Arc<tokio::sync::Mutex<EventPoster>>;

/// Starts the flusher actor (`events`): every 2 s, the Events whose window ended are posted.
pub fn spawn(poster: SharedPoster, mut shutdown: Shutdown) -> Actor {
    Actor::task("events", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            // Posted without the lock held: see [`flush`].
            flush(&poster, Instant::now()).await;
        }
    })
}

/// Posts what `poster` has due, its lock held only to take the Events out: a slow or silent API
/// server never keeps the reactor from recording removals. Returns how many were posted.
pub async fn flush(poster: &tokio::sync::Mutex<EventPoster>, now: Instant) -> usize {
    let due = poster.lock().await.take_due(now);
    due.post().await
}

/// Posts a Warning Event about the Node (table utilization): best effort.
pub async fn post_node_warning(
    client: kube::Client,
    node: String,
    reason: &'static str,
    note: String,
) {
    post_node_warning_for(client, node, "WatchConntrackTable", reason, note).await
}

/// [`post_node_warning`] with the Event's `action` given (what the agent was doing).
pub async fn post_node_warning_for(
    client: kube::Client,
    node: String,
    action: &'static str,
    reason: &'static str,
    note: String,
) {
    let warning = NodeWarning {
        action,
        reason,
        note,
    };
    post_node_warning_within(client, node, warning, EVENT_CALL_TIMEOUT).await
}

/// What a Warning Event on the Node says.
pub struct NodeWarning {
    /// What the agent was doing.
    pub action: &'static str,
    pub reason: &'static str,
    pub note: String,
}

/// [`post_node_warning_for`] giving up after `limit`: the Event is then dropped with a warning.
pub async fn post_node_warning_within(
    client: kube::Client,
    node: String,
    warning: NodeWarning,
    limit: Duration,
) {
    let NodeWarning {
        action,
        reason,
        note,
    } = warning;
    let node = node.as_str();
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{node}.ghostbuster.")),
            namespace: Some("default".into()),
            ..Default::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        action: Some(action.into()),
        reason: Some(reason.into()),
        note: Some(note),
        type_: Some("Warning".into()),
        reporting_controller: Some("ghostbuster.io/agent".into()),
        reporting_instance: Some(format!("ghostbuster-{node}")),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client, "default");
    match tokio::time::timeout(limit, api.create(&PostParams::default(), &ev)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(node, reason, error = %e, "posting the Node Event failed; dropped")
        }
        Err(_) => tracing::warn!(
            node,
            reason,
            timeout_ms = limit.as_millis() as u64,
            "posting the Node Event timed out: the API server did not answer; dropped"
        ),
    }
}
