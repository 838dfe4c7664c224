//! The agent's admin HTTP server (`--listen`): `/metrics`, `/healthz`, `/readyz`,
//! `/debug/recent`.
//!
//! [`serve`] takes its listener and shutdown signal as arguments (mini-redis style), so tests bind
//! `127.0.0.1:0` and the agent decides where to listen. Handlers only read shared state
//! ([`AdminState`]: `Arc`s the agent writes into); none of them touches conntrack or the API
//! server, so a scrape never waits for a dump.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::health::{Liveness, Readiness, ReportOnly};
use super::metrics::{Metrics, CONTENT_TYPE};
use super::recent::{Recent, RemovedFlow};

/// The default port of `--listen`.
///
/// 9477, because the ports a node agent would collide with are taken by agents that share its
/// host network namespace: 9100 node_exporter, 9808 the CSI livenessprobe sidecar, 10249/10256
/// kube-proxy (metrics, healthz), 10250/10255 the kubelet, 9091/9099 Calico felix, 9962-9965
/// Cilium, 9253/9353 NodeLocal DNSCache, 2112 kube-vip, 20256/20257 node-problem-detector. The
/// Prometheus "default port allocations" wiki has handed out every port of 9100–9999 to some
/// exporter, so no port in the customary exporter range is unclaimed; 9477 is not the port of
/// any of the node agents above or of an exporter commonly run on Kubernetes nodes (our copy of
/// the wiki is incomplete: we could not confirm who holds 9477 there). It is a flag: change it
/// when it collides.
pub const DEFAULT_PORT: u16 = 9477;

/// The default of `--listen`. All addresses, because with `hostNetwork` the kubelet probes the
/// node's address; the DaemonSet passes the node IP from the downward API instead. (`/debug/recent`
/// shows flow tuples: it answers clients on localhost only, unless `--expose-debug-recent`.)
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9477";

/// What the handlers read. Clones share everything.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub liveness: Liveness,
    pub recent: Recent,
    /// Serve `/debug/recent` to every client, not only to loopback ones (`--expose-debug-recent`).
    /// It lists the addresses and ports of removed flows, without authentication: on the node's
    /// IP it would tell anyone on the network who talks to whom.
    pub debug_public: bool,
}

impl AdminState {
    /// Default liveness timeout and ring size.
    pub fn new(metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        AdminState {
            metrics,
            readiness,
            liveness: Liveness::default(),
            recent: Recent::default(),
            debug_public: false,
        }
    }

    /// Sets the mode in `/readyz` and `ghostbuster_mode`.
    pub fn set_mode(&self, sweep: bool) {
        self.readiness.set_mode(sweep);
        self.metrics.set_mode(sweep);
    }

    /// Sets the report-only reasons in `/readyz` and `ghostbuster_report_only`.
    pub fn set_report_only(&self, reasons: Vec<ReportOnly>) {
        self.metrics
            .set_report_only_reasons(reasons.iter().map(|r| r.reason.as_str()));
        self.readiness.set_report_only(reasons);
    }
}

/// The routes, for embedding or for tests that drive the router directly.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/recent", get(recent))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight. Each request knows
/// its client's address (for `/debug/recent`).
pub async fn serve<F>(listener: TcpListener, state: AdminState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// True when `/debug/recent` may be shown to `peer`: a loopback client, or any when public. A
/// request whose client is unknown (a router driven without connection info) is not loopback.
pub fn debug_allowed(public: bool, peer: Option<SocketAddr>) -> bool {
    public || peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.metrics.set_ready(s.readiness.is_ready());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode()).into_response()
}

async fn healthz(State(s): State<AdminState>) -> Response {
    if s.liveness.is_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let since = s.liveness.since_last_beat().unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the agent loop has not run for {}s (limit {}s)\n",
                since.as_secs(),
                s.liveness.timeout().as_secs()
            ),
        )
            .into_response()
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let status = s.readiness.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status)).into_response()
}

#[derive(Debug, Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct RecentBody {
    capacity: usize,
    count: usize,
    /// Newest first.
    flows: Vec<RemovedFlow>,
}

async fn recent(
    State(s): State<AdminState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<RecentQuery>,
) -> Response {
    if !debug_allowed(s.debug_public, peer.map(|Extension(ConnectInfo(p))| p)) {
        return (
            StatusCode::FORBIDDEN,
            "/debug/recent lists the addresses of removed flows: it answers clients on localhost \
             only (on the node: curl http://127.0.0.1:PORT/debug/recent); start the agent with \
             --expose-debug-recent to serve it to every client\n",
        )
            .into_response();
    }
    let flows = s.recent.latest(q.limit.unwrap_or(usize::MAX));
    Json(RecentBody {
        capacity: s.recent.capacity(),
        count: flows.len(),
        flows,
    })
    .into_response()
}
