//! An in-process fake of kube-apiserver over real HTTP, speaking the protocol as kube-rs and
//! client-go use it, for tests of clients that list and watch.
//!
//! What it serves (paths as the API server lays them out, JSON as it sends it):
//! - get, list, watch, create, update (PUT), patch (merge, strategic, JSON, apply) and delete of
//!   the [`RESOURCES`](resource::RESOURCES): Services, EndpointSlices, Nodes, ServiceCIDRs, Pods,
//!   Namespaces, events.k8s.io Events, ConfigMaps; anything else is a 404 `Status`.
//! - Objects get `uid`, `resourceVersion` (one global counter), `creationTimestamp` and
//!   `managedFields`; objects created through [`FakeApiServer::create`] also get the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation, as `kubectl apply` leaves.
//! - Lists: `resourceVersion` in the list metadata, items without `kind`, `limit`/`continue`
//!   pagination from a consistent snapshot (with `remainingItemCount`), the API server's
//!   validation of `resourceVersion`/`resourceVersionMatch`/`continue`, `410 Expired` for a
//!   continue token older than the last compaction.
//! - Watches: chunked `{"type":...,"object":...}` lines; `resourceVersion` 0/absent starts with
//!   ADDED for everything; `allowWatchBookmarks` BOOKMARKs (on demand or periodically);
//!   `sendInitialEvents` ends the initial events with the `k8s.io/initial-events-end` bookmark;
//!   `timeoutSeconds`; a too-old `resourceVersion` gets an ERROR event with a 410 `Expired`
//!   `Status` (or HTTP 410); selectors apply to watches as the watch cache does (an object
//!   leaving the selection is a DELETED).
//! - Field selectors (`metadata.name`, `metadata.namespace`, and the per-resource fields the API
//!   server supports, such as `spec.nodeName` for Pods; others are a 400) and label selectors.
//! - Optional bearer-token authentication (401) and RBAC from ClusterRole rules (403 with the API
//!   server's message).
//!
//! What tests control: objects ([`FakeApiServer::create`], `update`, `apply`, `delete`),
//! BOOKMARKs now or periodically, expiring every watch (410, as after a compaction), losing
//! events (changes no watch sees, then 410), cutting every watch connection, lists that hang,
//! GETs and writes that hang, disabled resources (404), RBAC, and what was asked: every [`Request`], counts per verb and
//! resource, and every Event written.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let server = fake_apiserver::FakeApiServer::start().await?;
//! server.create(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}
//! }));
//! let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
//! # Ok(()) }
//! ```

mod api;
mod patch;
mod rbac;
pub mod resource;
mod selector;
mod shared;
mod status;
mod store;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use rbac::{PolicyRule, Rbac};
pub use resource::ResourceType;
pub use shared::{EventWrite, Request};
pub use status::{ApiError, Details};

use shared::Shared;
use store::Selection;

/// The fake API server. Dropping it stops it and cuts every open watch.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// The server's own runtime when started with [`FakeApiServer::start_in_thread`].
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on an ephemeral port and serves on the current tokio runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::serve(listener)
    }

    /// Serves on `listener` (on the current tokio runtime).
    pub fn serve(listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let app = api::router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer {
            shared,
            addr,
            task,
            runtime: None,
        })
    }

    /// Starts the server on a runtime of its own (one worker thread), for tests that are not
    /// async themselves, such as those running the `ghostbuster` binary against it.
    pub fn start_in_thread() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()?;
        let mut server = runtime.block_on(async {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            Self::serve(listener)
        })?;
        server.runtime = Some(runtime);
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig pointing at this server (with the bearer token when one is required).
    pub fn kubeconfig(&self) -> String {
        let token = self.shared.lock().ctl.token.clone();
        let user = match token {
            Some(t) => format!("{{token: {t:?}}}"),
            None => "{}".to_owned(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: {:?}}}\n\
             users:\n- name: fake\n  user: {user}\ncontexts:\n- name: fake\n  context: {{cluster: \
             fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.url()
        )
    }

    // --- objects ----------------------------------------------------------------------------

    fn resource_of(obj: &Value) -> &'static ResourceType {
        let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
        resource::by_type(text("apiVersion"), text("kind")).unwrap_or_else(|| {
            panic!(
                "fake-apiserver does not serve {} {}",
                text("apiVersion"),
                text("kind")
            )
        })
    }

    fn namespace_of(obj: &Value) -> String {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned()
    }

    fn name_of(obj: &Value) -> String {
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// Creates an object (any serializable form with `apiVersion` and `kind`, such as a
    /// k8s-openapi struct); watches see ADDED. Returns it as stored. Panics when the fake
    /// refuses it (a test bug).
    pub fn create(&self, obj: impl Serialize) -> Value {
        self.try_create(obj)
            .unwrap_or_else(|e| panic!("create: {}", e.message))
    }

    pub fn try_create(&self, obj: impl Serialize) -> Result<Value, ApiError> {
        let obj = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let r = Self::resource_of(&obj);
        let ns = Self::namespace_of(&obj);
        self.shared.mutate(|st| {
            st.store
                .create(r, &ns, obj, "kubectl-client-side-apply", true)
        })
    }

    /// Replaces an existing object (uid and creation time are kept); watches see MODIFIED.
    pub fn update(&self, obj: impl Serialize) -> Value {
        let obj = serde_json::to_value(obj).unwrap_or_else(|e| panic!("update: {e}"));
        let r = Self::resource_of(&obj);
        let (ns, name) = (Self::namespace_of(&obj), Self::name_of(&obj));
        self.shared
            .mutate(|st| {
                st.store
                    .update(r, &ns, &name, obj, "kubectl-client-side-apply", false)
            })
            .unwrap_or_else(|e| panic!("update: {}", e.message))
    }

    /// Creates or updates.
    pub fn apply(&self, obj: impl Serialize) -> Value {
        let obj = serde_json::to_value(obj).unwrap_or_else(|e| panic!("apply: {e}"));
        let r = Self::resource_of(&obj);
        let (ns, name) = (Self::namespace_of(&obj), Self::name_of(&obj));
        let exists = self.shared.lock().store.get(r, &ns, &name).is_some();
        if exists {
            self.update(obj)
        } else {
            self.create(obj)
        }
    }

    /// Deletes `resource` (plural, or `group/plural`) `namespace/name` (`namespace` is ignored
    /// for cluster-scoped resources); watches see DELETED. Returns the last state, if it existed.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = Self::resource(resource);
        self.shared
            .mutate(|st| st.store.delete(r, namespace, name))
            .ok()
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = Self::resource(resource);
        self.shared.lock().store.get(r, namespace, name).cloned()
    }

    /// Every object of `resource`, in key order.
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let r = Self::resource(resource);
        self.shared.lock().store.select(r, &Selection::default())
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    fn resource(name: &str) -> &'static ResourceType {
        resource::by_name(name).unwrap_or_else(|| panic!("fake-apiserver does not serve {name:?}"))
    }

    // --- watches ----------------------------------------------------------------------------

    /// Sends a BOOKMARK now on every watch that allows them.
    pub fn bookmark(&self) {
        self.shared.mutate(|st| st.ctl.bookmark_gen += 1);
    }

    /// Sends BOOKMARKs periodically on watches started from now on (`None`: only on demand).
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        self.shared.mutate(|st| st.ctl.bookmark_interval = every);
    }

    /// Compacts: every open watch gets an ERROR event with a 410 `Expired` Status and ends; a
    /// watch or continue token from any earlier resourceVersion gets 410 too. Clients must
    /// relist.
    pub fn expire_watches(&self) {
        self.shared.mutate(|st| {
            st.store.compact();
            st.ctl.expire_gen += 1;
        });
    }

    /// Runs `f` (which changes objects through this server) without any watch seeing its
    /// changes, then expires every watch: as when the watch cache fell behind. Only a relist
    /// shows what `f` did.
    pub fn lose_events<R>(&self, f: impl FnOnce(&Self) -> R) -> R {
        self.shared.mutate(|st| st.store.quiet = true);
        let r = f(self);
        self.shared.mutate(|st| {
            st.store.quiet = false;
            st.store.compact();
            st.ctl.expire_gen += 1;
        });
        r
    }

    /// Cuts every open watch connection mid-stream (no final chunk: the client sees an error).
    pub fn drop_watches(&self) {
        self.shared.mutate(|st| st.ctl.drop_gen += 1);
    }

    /// Answers a watch from a too-old resourceVersion with HTTP 410 instead of 200 and an ERROR
    /// event (both happen in real clusters).
    pub fn set_watch_gone_http(&self, http: bool) {
        self.shared.mutate(|st| st.ctl.watch_gone_http = http);
    }

    /// Open watches of `resource`.
    pub fn open_watches(&self, resource: &str) -> usize {
        let r = Self::resource(resource);
        self.shared
            .lock()
            .ctl
            .open_watches
            .get(r.plural)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` watches of `resource` are open; false on timeout.
    pub async fn wait_for_watches(&self, resource: &str, n: usize, timeout: Duration) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.open_watches(resource) >= n {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.open_watches(resource) >= n,
            }
        }
    }

    // --- failures and permissions -----------------------------------------------------------

    /// Makes lists of `resource` hang (never answer) until called again with `false`.
    pub fn hang_lists(&self, resource: &str, hang: bool) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| {
            if hang {
                st.ctl.hung.insert(r.plural);
            } else {
                st.ctl.hung.remove(r.plural);
            }
        });
    }

    /// Makes GETs of single objects of `resource` hang (never answer) until called again with
    /// `false`: an API server that accepted the request and went silent.
    pub fn hang_gets(&self, resource: &str, hang: bool) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| {
            if hang {
                st.ctl.hung_gets.insert(r.plural);
            } else {
                st.ctl.hung_gets.remove(r.plural);
            }
        });
    }

    /// Makes GETs of the one object `namespace/name` of `resource` hang (never answer) until
    /// called again with `false`; other objects of the kind answer as usual.
    pub fn hang_get(&self, resource: &str, namespace: &str, name: &str, hang: bool) {
        let r = Self::resource(resource);
        let key = (r.plural, namespace.to_owned(), name.to_owned());
        self.shared.mutate(|st| {
            if hang {
                st.ctl.hung_objects.insert(key);
            } else {
                st.ctl.hung_objects.remove(&key);
            }
        });
    }

    /// Makes writes (create, update, patch) of `resource` hang (never answer) until called again
    /// with `false`: an API server that accepted the request and went silent. Nothing is stored.
    pub fn hang_writes(&self, resource: &str, hang: bool) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| {
            if hang {
                st.ctl.hung_writes.insert(r.plural);
            } else {
                st.ctl.hung_writes.remove(r.plural);
            }
        });
    }

    /// Makes every watch of `resource` (open now or opened later) stay connected but silent: no
    /// events, no BOOKMARKs, until called again with `false`, when what changed meanwhile is
    /// sent. A watch that looks alive and is not (a stuck proxy, a wedged watch cache).
    pub fn silence_watches(&self, resource: &str, silent: bool) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| {
            if silent {
                st.ctl.silent.insert(r.plural);
            } else {
                st.ctl.silent.remove(r.plural);
            }
        });
    }

    /// Answers every request for `resource` with 404, as a server without that API does
    /// (ServiceCIDRs before 1.33, or with the API disabled).
    pub fn disable(&self, resource: &str) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| st.ctl.disabled.insert(r.plural));
    }

    pub fn enable(&self, resource: &str) {
        let r = Self::resource(resource);
        self.shared.mutate(|st| st.ctl.disabled.remove(r.plural));
    }

    /// Enforces `rbac` (403 for anything it does not allow); `None` allows everything.
    pub fn set_rbac(&self, rbac: Option<Rbac>) {
        self.shared.mutate(|st| st.ctl.rbac = rbac);
    }

    /// Requires `Authorization: Bearer TOKEN` (401 otherwise); `None` accepts anyone.
    pub fn require_token(&self, token: Option<&str>) {
        let token = token.map(str::to_owned);
        self.shared.mutate(|st| st.ctl.token = token);
    }

    // --- what was asked ---------------------------------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().ctl.requests.clone()
    }

    /// Requests with `verb` on `resource` (plural name).
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.shared
            .lock()
            .ctl
            .requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    /// Requests answered 403.
    pub fn forbidden(&self) -> Vec<Request> {
        self.shared
            .lock()
            .ctl
            .requests
            .iter()
            .filter(|r| r.status == 403)
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().ctl.requests.clear();
    }

    /// Every write of an events.k8s.io Event, in order.
    pub fn event_writes(&self) -> Vec<EventWrite> {
        self.shared.lock().ctl.event_writes.clone()
    }

    /// The events.k8s.io Events stored now.
    pub fn events(&self) -> Vec<Value> {
        self.objects("events.k8s.io/events")
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.mutate(|st| st.ctl.shutdown = true);
        self.task.abort();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
