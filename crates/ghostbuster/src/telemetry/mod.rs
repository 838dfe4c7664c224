//! Telling people what the agent sees and does: Prometheus metrics, the admin HTTP server
//! (`/metrics`, `/healthz`, `/readyz`, `/debug/recent`) and the readings behind them (kube-proxy's
//! sync time and mode, the kernel's wrapping per-CPU counters, the table-full forecast).
//!
//! The agent's loop owns the work; it writes into the shared [`admin::AdminState`] (an
//! `Arc<Metrics>`, the readiness latch, the liveness heartbeat, the ring of recently removed
//! flows) and the server only reads. One file per job:
//! - `metrics`: the registry and every metric (names, types, labels: README "Metrics");
//! - `cardinality`: the per-service series cap; `series`: replaceable gauge sets and the per-CPU
//!   counters; `wrap`: 32-bit counter wrap-around; `forecast`: the least-squares ETA;
//! - `health`: readiness latch and liveness; `recent`: the removed-flow ring; `admin`: the server.
//!
//! kube-proxy's last sync, health and mode are read by `crate::kube_proxy`.

pub mod admin;
pub mod cardinality;
pub mod forecast;
pub mod health;
pub mod metrics;
pub mod recent;
pub mod series;
pub mod wrap;

pub use admin::{serve, AdminState, DEFAULT_LISTEN, DEFAULT_PORT};
pub use health::{Liveness, Readiness, ReportOnly};
pub use metrics::{Metrics, MetricsConfig, ScanKind, StaleKey};
pub use recent::{Recent, RemovedFlow};
