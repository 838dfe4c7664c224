//! The admin server actor (`admin`): /metrics, /healthz, /readyz and /debug/recent on
//! `--listen`, and on 127.0.0.1 too when `--listen` is a node address (the DaemonSet's
//! `$(HOST_IP):9477`), so that /debug/recent stays readable from the node itself.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::supervisor::{Actor, Shutdown};
use crate::telemetry::admin::{self, AdminState};

/// The loopback listener to add for `listen`, when `listen` is neither loopback nor the
/// unspecified address (a failure to bind is logged, not fatal).
pub async fn loopback_too(listen: SocketAddr) -> Option<TcpListener> {
    let ip = listen.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    let at = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    match TcpListener::bind(at).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                address = %at,
                error = %e,
                "cannot listen on localhost: /debug/recent is not readable from the node"
            );
            None
        }
    }
}

/// Serves `state` on every listener until the shutdown (open requests are finished first).
pub fn spawn(listeners: Vec<TcpListener>, state: AdminState, shutdown: Shutdown) -> Actor {
    Actor::task("admin", async move {
        let servers = listeners.into_iter().map(|l| {
            let mut stop = shutdown.clone();
            admin::serve(l, state.clone(), async move { stop.wait().await })
        });
        for r in futures::future::join_all(servers).await {
            r?;
        }
        Ok(())
    })
}
