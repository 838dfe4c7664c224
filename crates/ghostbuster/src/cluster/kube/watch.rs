//! Watching the cluster: one list-then-watch loop per kind, all feeding one channel.
//!
//! Per kind, as client-go's reflector: list from the API server's watch cache
//! (`resourceVersion=0`, `limit` pages, later pages by `continue` only), then watch from the
//! list's resourceVersion with BOOKMARKs; a dropped or timed-out watch resumes from the last
//! resourceVersion seen; `410 Gone` (an ERROR event or the HTTP status) means events were lost and
//! forces a relist; a continue token that expired mid-list restarts the list at the latest
//! version. Errors wait a jittered backoff. A relist is sent as `Init`, `InitApply`...,
//! `InitDone`, so the index swaps in the new view only when it is complete and reports every
//! endpoint the relist dropped exactly once.
//!
//! Scope, for memory and API load: Services, EndpointSlices, ServiceCIDRs, Namespaces and Nodes
//! cluster-wide, but only this node's Pods (`spec.nodeName=`): never every Pod of the cluster
//! (~25 KB each, and O(nodes × pods) API load). Namespaces are few and small, and a selector
//! cannot pick "those with an annotation", so all are watched; the index keeps only the annotated
//! ones. Every Node, because a node address of *any* node is never evidence that an IP was
//! reused: hostNetwork pods (node-exporter and other DaemonSets) share it, and a deselected
//! hostNetwork backend on another node must not look like its IP went to someone else. A Node is
//! stripped to its name and addresses on arrival (a few hundred bytes each).
//!
//! Freshness: a sign of life is a listed page, an event or a BOOKMARK, never the (re)start of a
//! watch. The API server sends a BOOKMARK about once a minute on a quiet watch; a watch that
//! reconnects every few minutes without one is not known to be alive, and must turn stale.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams, WatchEvent, WatchParams};
use ::kube::{Client, Resource, ResourceExt};
use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::backoff::Backoff;
use super::health::{KindState, WatchHealth};
use super::strip::strip;
use crate::cluster::{Event, Kind, Object};

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// This node: the Pods scheduled to it are watched (and every Node).
    pub node_name: String,
    /// Watch ServiceCIDRs (stopped by itself when the API server answers 404).
    pub watch_service_cidrs: bool,
}

/// How to watch: defaults as client-go and kube-rs; tests shorten them.
#[derive(Clone, Debug)]
pub struct WatchTuning {
    /// Objects per list page.
    pub page_size: u32,
    /// `timeoutSeconds` of each watch request: the server ends the watch after it and the loop
    /// resumes from the last resourceVersion (kube's default, 290 s, stays below its client read
    /// timeout).
    pub watch_timeout: Duration,
    /// With nothing at all received for this long (not even a BOOKMARK), the connection is taken
    /// for dead and the watch restarted.
    pub idle_timeout: Duration,
    /// First and longest wait after an error (jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Longest wait for one list page, or for a watch request to be answered: an API server
    /// that accepts the connection and never answers must not stall the kind for ever (the
    /// client's own read timeout is 295 s, for the watches).
    pub request_timeout: Duration,
    /// Largest list body accepted, in bytes: past it the list fails with a clear error (and is
    /// retried with backoff) instead of growing until the pod is OOM-killed.
    pub max_list_bytes: u64,
}

/// Default of [`WatchTuning::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`WatchTuning::max_list_bytes`]: 256 MiB, five times the largest list measured
/// (~50 MB of EndpointSlices at 10,000 Services / 100,000 endpoints).
pub const MAX_LIST_BYTES: u64 = 256 << 20;

/// The bounds of one list request.
#[derive(Clone, Copy, Debug)]
pub(super) struct ListBounds {
    pub timeout: Duration,
    pub max_bytes: u64,
}

impl Default for ListBounds {
    fn default() -> Self {
        ListBounds {
            timeout: REQUEST_TIMEOUT,
            max_bytes: MAX_LIST_BYTES,
        }
    }
}

impl Default for WatchTuning {
    fn default() -> Self {
        WatchTuning {
            page_size: 500,
            watch_timeout: Duration::from_secs(290),
            idle_timeout: Duration::from_secs(295),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            request_timeout: REQUEST_TIMEOUT,
            max_list_bytes: MAX_LIST_BYTES,
        }
    }
}

impl WatchTuning {
    fn list_bounds(&self) -> ListBounds {
        ListBounds {
            timeout: self.request_timeout,
            max_bytes: self.max_list_bytes,
        }
    }
}

/// Watches the cluster until `tx`'s receiver is dropped, sending every change; `health` follows
/// each kind. Never returns on API errors: it retries (with backoff) and says so in `health`.
pub async fn watch_cluster(
    client: Client,
    cfg: WatchConfig,
    tx: mpsc::Sender<Event>,
    health: Arc<WatchHealth>,
) {
    watch_cluster_with(client, cfg, WatchTuning::default(), tx, health).await;
}

/// [`watch_cluster`] with explicit [`WatchTuning`].
pub async fn watch_cluster_with(
    client: Client,
    cfg: WatchConfig,
    tuning: WatchTuning,
    tx: mpsc::Sender<Event>,
    health: Arc<WatchHealth>,
) {
    if !cfg.watch_service_cidrs {
        health.set_state(Kind::ServiceCidr, KindState::Off);
    }
    let on_node = format!("spec.nodeName={}", cfg.node_name);
    let w = |kind, fields: Option<&str>| Watch {
        client: client.clone(),
        kind,
        fields: fields.map(str::to_owned),
        cfg: &tuning,
        tx: &tx,
        health: &health,
    };
    let all = async {
        tokio::join!(
            run::<Service>(w(Kind::Service, None)),
            run::<EndpointSlice>(w(Kind::EndpointSlice, None)),
            run::<Node>(w(Kind::Node, None)),
            async {
                if cfg.watch_service_cidrs {
                    run::<ServiceCIDR>(w(Kind::ServiceCidr, None)).await;
                }
            },
            run::<Pod>(w(Kind::Pod, Some(&on_node))),
            // Their `ghostbuster.io/mode` annotation: without this view a namespace set to `off`
            // would be swept, so it holds the gate like the others.
            run::<Namespace>(w(Kind::Namespace, None)),
        )
    };
    tokio::select! {
        () = tx.closed() => {}
        _ = all => {}
    }
}

/// The objects this module lists and watches.
pub(super) trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn into_object(self) -> Object;
}

macro_rules! watched {
    ($($t:ty),*) => {$(
        impl Watched for $t {
            fn into_object(self) -> Object {
                let mut o = Object::from(self);
                strip(&mut o);
                o
            }
        }
    )*};
}
watched!(Service, EndpointSlice, Node, ServiceCIDR, Pod, Namespace);

/// One page of a list. `any_version`: from the watch cache (`resourceVersion=0`), as client-go's
/// reflector lists; kube's `ListParams` drops `resourceVersion=0` when a limit is set, so it is
/// added here. Later pages carry only `continue` (the API server refuses a resourceVersion with
/// it). Bounded: `bounds.timeout` for the whole page (request and body), `bounds.max_bytes` for
/// its body.
pub(super) async fn list_page<K: Watched>(
    client: &Client,
    fields: Option<&str>,
    limit: u32,
    continue_token: Option<&str>,
    any_version: bool,
    bounds: ListBounds,
) -> Result<RawPage, ::kube::Error> {
    let what = || format!("list {}", K::plural(&()));
    match tokio::time::timeout(
        bounds.timeout,
        list_page_unbounded::<K>(client, fields, limit, continue_token, any_version, bounds),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(::kube::Error::Service(
            format!("{}: no complete answer within {:?}", what(), bounds.timeout).into(),
        )),
    }
}

async fn list_page_unbounded<K: Watched>(
    client: &Client,
    fields: Option<&str>,
    limit: u32,
    continue_token: Option<&str>,
    any_version: bool,
    bounds: ListBounds,
) -> Result<RawPage, ::kube::Error> {
    let mut lp = ListParams::default().limit(limit);
    if let Some(f) = fields {
        lp = lp.fields(f);
    }
    if let Some(c) = continue_token {
        lp = lp.continue_token(c);
    }
    let path = K::url_path(&(), None);
    let mut req = ::kube::core::Request::new(path)
        .list(&lp)
        .map_err(::kube::Error::BuildRequest)?;
    if any_version && continue_token.is_none() {
        let uri = format!("{}&resourceVersion=0", req.uri());
        *req.uri_mut() = uri
            .parse()
            .map_err(|e| ::kube::Error::Service(format!("list URL {uri:?}: {e}").into()))?;
    }
    // Read into one buffer: `Client::request_text` collects the body and then copies it, twice
    // the size of a 50 MB list for a moment. A growing Vec is remapped, not copied, by glibc
    // once it is large, and its untouched spare capacity is not resident.
    let body = client.request_stream(req).await?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly the cap" from "over it".
    body.take(bounds.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ::kube::Error::Service(Box::new(e)))?;
    if bytes.len() as u64 > bounds.max_bytes {
        return Err(::kube::Error::Service(
            format!(
                "list {}: the answer is larger than {} bytes, the most the agent reads (ask for \
                 smaller pages, or raise the limit)",
                K::plural(&()),
                bounds.max_bytes
            )
            .into(),
        ));
    }
    let text = String::from_utf8(bytes).map_err(::kube::Error::FromUtf8)?;
    Ok(RawPage { text })
}

/// One list response, kept as its JSON text. Its items are deserialized one at a time as they
/// are handed on, so a list of 20,000 objects never exists as 20,000 API objects at once: the
/// API server answers `resourceVersion=0` lists from its watch cache in one response whatever
/// `limit` says, and those objects are several times the size of their JSON. (The agent's
/// start-up peak was that: ~170 MiB at 10,000 Services / 100,000 endpoints, for a 27 MiB index.)
pub(super) struct RawPage {
    text: String,
}

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(default)]
    metadata: ListMeta,
    /// `null` as well as absent or `[]` (kube's own list type accepts all three).
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// A parsed [`RawPage`]: its list metadata and its items, still as JSON.
pub(super) struct Items<'a> {
    pub metadata: ListMeta,
    items: std::vec::IntoIter<&'a RawValue>,
}

impl RawPage {
    pub fn items(&self) -> Result<Items<'_>, ::kube::Error> {
        let list: RawList<'_> =
            serde_json::from_str(&self.text).map_err(::kube::Error::SerdeError)?;
        Ok(Items {
            metadata: list.metadata,
            items: list.items.unwrap_or_default().into_iter(),
        })
    }
}

impl Items<'_> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The next item as an API object. An item that is not a `K` fails the whole list, as it
    /// would have failed the list's deserialization: skipping it would make a relist drop an
    /// object that exists.
    pub fn next_object<K: DeserializeOwned>(&mut self) -> Option<Result<K, ::kube::Error>> {
        let raw = self.items.next()?;
        Some(serde_json::from_str(raw.get()).map_err(::kube::Error::SerdeError))
    }
}

struct Watch<'a> {
    client: Client,
    kind: Kind,
    fields: Option<String>,
    cfg: &'a WatchTuning,
    tx: &'a mpsc::Sender<Event>,
    health: &'a WatchHealth,
}

/// Why a list ended without a resourceVersion to watch from.
enum ListEnd {
    /// The receiver is gone.
    Closed,
    /// 404: the API server does not have this API.
    Unavailable,
    /// A continue token expired mid-list: list again, at the latest version.
    Expired,
    Failed(::kube::Error),
}

/// Why a watch ended.
enum WatchEnd {
    Closed,
    /// 410 Gone: relist. `quiet`: nothing arrived since the list (do not relist in a hot loop).
    Gone {
        quiet: bool,
    },
}

impl Watch<'_> {
    async fn send(&self, event: Event) -> bool {
        self.tx.send(event).await.is_ok()
    }

    /// Waits `delay`, or less if the receiver goes away (then false).
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.tx.closed() => false,
        }
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let msg = format!("{what} {}s: {e}", self.kind);
        tracing::warn!(kind = %self.kind, "{msg}");
        self.health.record_error(self.kind, &msg);
    }

    /// Lists every object, sending Init, InitApply... InitDone; returns the resourceVersion to
    /// watch from.
    async fn list<K: Watched>(&self, any_version: bool) -> Result<String, ListEnd> {
        let kind = self.kind;
        if self.health.state(kind) != KindState::Pending {
            self.health.count_relist(kind);
            self.health.set_state(kind, KindState::Listing);
        }
        if !self.send(Event::Init(kind)).await {
            return Err(ListEnd::Closed);
        }
        let mut token: Option<String> = None;
        loop {
            let page = list_page::<K>(
                &self.client,
                self.fields.as_deref(),
                self.cfg.page_size,
                token.as_deref(),
                any_version,
                self.cfg.list_bounds(),
            )
            .await;
            let page = match page {
                Ok(p) => p,
                Err(::kube::Error::Api(s)) if s.code == 404 => return Err(ListEnd::Unavailable),
                Err(::kube::Error::Api(s)) if s.code == 410 && token.is_some() => {
                    return Err(ListEnd::Expired)
                }
                Err(e) => return Err(ListEnd::Failed(e)),
            };
            let mut items = page.items().map_err(ListEnd::Failed)?;
            self.health.touch(kind);
            self.health.count_events(kind, items.len() as u64);
            while let Some(item) = items.next_object::<K>() {
                let item = item.map_err(ListEnd::Failed)?;
                if !self.send(Event::InitApply(item.into_object())).await {
                    return Err(ListEnd::Closed);
                }
            }
            let meta = items.metadata;
            match meta.continue_.filter(|c| !c.is_empty()) {
                Some(next) => token = Some(next),
                None => {
                    let rv = meta.resource_version.unwrap_or_default();
                    if !self.send(Event::InitDone(kind)).await {
                        return Err(ListEnd::Closed);
                    }
                    self.health.set_state(kind, KindState::Synced);
                    return Ok(rv);
                }
            }
        }
    }

    /// Watches from `rv` until 410 Gone (or the receiver goes away), resuming after drops.
    async fn watch<K: Watched>(&self, mut rv: String, backoff: &mut Backoff) -> WatchEnd {
        let kind = self.kind;
        let api: Api<K> = Api::all(self.client.clone());
        // kube refuses 295 s and more (its client read timeout is 295 s).
        let secs = self.cfg.watch_timeout.as_secs().clamp(1, 294);
        let mut wp = WatchParams::default().timeout(u32::try_from(secs).unwrap_or(290));
        if let Some(f) = &self.fields {
            wp = wp.fields(f);
        }
        let mut quiet = true;
        loop {
            let started = tokio::time::timeout(self.cfg.request_timeout, api.watch(&wp, &rv));
            let stream = match started.await {
                Err(_) => {
                    let e = format!("no answer within {:?}", self.cfg.request_timeout);
                    self.failed("watch", &e);
                    if !self.pause(backoff.next_delay()).await {
                        return WatchEnd::Closed;
                    }
                    continue;
                }
                Ok(r) => r,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(::kube::Error::Api(s)) if s.code == 410 => return WatchEnd::Gone { quiet },
                Err(e) => {
                    self.failed("watch", &e);
                    if !self.pause(backoff.next_delay()).await {
                        return WatchEnd::Closed;
                    }
                    continue;
                }
            };
            // Not a sign of life: a connection that is accepted and then stays silent proves
            // nothing about the view. (Touching here let a watch that reconnects every idle
            // timeout, 295 s, stay "fresh" under a 300 s threshold forever.)
            let started = Instant::now();
            let mut received = false;
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::time::timeout(self.cfg.idle_timeout, stream.next()).await;
                let event = match next {
                    // Silence beyond the idle timeout: the connection is presumed dead.
                    Err(_) => {
                        tracing::debug!(%kind, "watch idle, restarting");
                        break;
                    }
                    // The server ended the watch (timeout, or a cut connection): resume, at
                    // once unless it ends them as fast as they start.
                    Ok(None) => {
                        if !received
                            && started.elapsed() < Duration::from_secs(1)
                            && !self.pause(backoff.next_delay()).await
                        {
                            return WatchEnd::Closed;
                        }
                        break;
                    }
                    Ok(Some(Ok(e))) => e,
                    Ok(Some(Err(e))) => {
                        self.failed("watch", &e);
                        if !self.pause(backoff.next_delay()).await {
                            return WatchEnd::Closed;
                        }
                        break;
                    }
                };
                received = true;
                let out = match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        rv = o.resource_version().unwrap_or_default();
                        Event::Apply(o.into_object())
                    }
                    WatchEvent::Deleted(o) => {
                        rv = o.resource_version().unwrap_or_default();
                        Event::Delete(o.into_object())
                    }
                    WatchEvent::Bookmark(b) => {
                        rv = b.metadata.resource_version;
                        quiet = false;
                        self.health.touch(kind);
                        continue;
                    }
                    WatchEvent::Error(s) if s.code == 410 => return WatchEnd::Gone { quiet },
                    WatchEvent::Error(s) => {
                        self.failed("watch", &format!("{} {}: {}", s.code, s.reason, s.message));
                        if !self.pause(backoff.next_delay()).await {
                            return WatchEnd::Closed;
                        }
                        break;
                    }
                };
                quiet = false;
                backoff.reset();
                self.health.touch(kind);
                self.health.count_events(kind, 1);
                if !self.send(out).await {
                    return WatchEnd::Closed;
                }
            }
        }
    }
}

/// List, watch, relist on 410; forever (until the receiver goes or the API turns out absent).
async fn run<K: Watched>(w: Watch<'_>) {
    let mut backoff = Backoff::new(w.cfg.backoff_min, w.cfg.backoff_max);
    let mut any_version = true;
    loop {
        let rv = match w.list::<K>(any_version).await {
            Ok(rv) => {
                backoff.reset();
                rv
            }
            Err(ListEnd::Closed) => return,
            Err(ListEnd::Unavailable) if w.kind == Kind::ServiceCidr => {
                tracing::warn!(
                    "the API server has no ServiceCIDRs (networking.k8s.io/v1, Kubernetes 1.33+): \
                     not watching them; give the service ranges with --service-cidr"
                );
                w.health.set_state(w.kind, KindState::Unavailable);
                return;
            }
            Err(ListEnd::Unavailable) => {
                w.failed("list", &"404 Not Found: the API server does not serve them");
                if !w.pause(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
            Err(ListEnd::Expired) => {
                // As client-go: the watch cache is behind; read the latest version instead.
                any_version = false;
                continue;
            }
            Err(ListEnd::Failed(e)) => {
                w.failed("list", &e);
                if !w.pause(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        any_version = true;
        match w.watch::<K>(rv, &mut backoff).await {
            WatchEnd::Closed => return,
            WatchEnd::Gone { quiet } => {
                tracing::debug!(kind = %w.kind, "watch expired (410 Gone): relisting");
                // Events were missed: the view of this kind is known to be behind from now
                // until the relist ends, and the delete gate must say so (not only once the
                // relist has started, after a backoff).
                w.health.set_state(w.kind, KindState::Listing);
                // A watch that dies with 410 right after its list must not relist in a hot loop.
                if quiet && !w.pause(backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> RawPage {
        RawPage {
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_raw_page_hands_out_its_items_one_at_a_time() {
        let p = page(
            r#"{"kind":"ServiceList","apiVersion":"v1",
                "metadata":{"resourceVersion":"42","continue":"abc"},
                "items":[
                  {"metadata":{"name":"a","namespace":"ns"},"spec":{"clusterIP":"10.96.0.1"}},
                  {"metadata":{"name":"b","namespace":"ns"}}
                ]}"#,
        );
        let mut items = p.items().unwrap();
        assert_eq!(items.len(), 2);
        let a: Service = items.next_object().unwrap().unwrap();
        assert_eq!(a.metadata.name.as_deref(), Some("a"));
        let b: Service = items.next_object().unwrap().unwrap();
        assert_eq!(b.metadata.name.as_deref(), Some("b"));
        assert!(items.next_object::<Service>().is_none());
        assert_eq!(items.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(items.metadata.continue_.as_deref(), Some("abc"));
    }

    #[test]
    fn an_empty_or_itemless_list_is_fine_and_a_bad_item_fails_the_list() {
        for text in [
            r#"{"metadata":{},"items":[]}"#,
            r#"{"metadata":{},"items":null}"#,
            "{}",
        ] {
            let p = page(text);
            let mut items = p.items().unwrap();
            assert!(items.next_object::<Service>().is_none(), "{text}");
        }
        // Well-formed JSON that is not a Service: an error, not a skipped object (a relist that
        // skipped it would take the object for deleted).
        let p = page(r#"{"items":[{"metadata":{"name":"a"},"spec":{"ports":"oops"}}]}"#);
        let mut items = p.items().unwrap();
        assert!(matches!(
            items.next_object::<Service>(),
            Some(Err(::kube::Error::SerdeError(_)))
        ));
        // Not JSON at all (a proxy's HTML error page with status 200).
        assert!(page("<html>").items().is_err());
    }
}
