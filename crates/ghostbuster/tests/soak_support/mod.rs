//! The churn soak's machinery (`agent_soak.rs`): its settings (env vars), the cluster model and
//! its publishing ([`world`]), the live connections ([`traffic`]), the observers ([`observe`])
//! and the invariants judged at the end ([`judge`]).

#![allow(dead_code)]

pub mod judge;
pub mod observe;
pub mod traffic;
pub mod world;

use std::collections::BTreeSet;
use std::time::Duration;

/// Every switchable part of the soak.
pub const ALL_SCENARIOS: &[&str] = &[
    "rolling",
    "rolling_udp",
    "kube_proxy_late",
    "kube_proxy_fail",
    "scale_zero",
    "service_deleted",
    "ip_reuse",
    "api_410",
    "api_dropped_watch",
    "api_silent_watch",
    "api_hung_get",
    "hostnet_deselected",
    "ab_web0",
    "draining_remote",
    "sync_began_before",
];

/// Parts off unless enabled (`SOAK_ENABLE`): none — every part passes with the agent on main.
/// A part that shows a bug goes here, with what it showed in `agent_soak.rs`'s header, until its
/// fix is in.
pub const OFF_BY_DEFAULT: &[&str] = &[];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The soak's size and parts, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SOAK_CONNECTIONS` (default 200): long-lived TCP connections in all.
    pub connections: usize,
    /// `SOAK_UDP_CLIENTS` (default 24).
    pub udp_clients: usize,
    /// `SOAK_ROLLING_UPDATES` (default 50): Deployment rolling updates (two Deployments, one
    /// TCP, one UDP, roll together).
    pub rolling_updates: usize,
    /// `SOAK_MINUTES` (default 0): keep rolling until this long has passed (for
    /// `scripts/soak.sh`), at least `rolling_updates`.
    pub minutes: f64,
    /// `SOAK_REAP_SLACK_MS` (default 1000): a ghost must go within gate + this.
    pub reap_slack: Duration,
    /// `SOAK_METRICS_LIMIT_MS` (default 100).
    pub metrics_limit: Duration,
    /// `SOAK_RSS_PERCENT` (default 10): RSS max − min after warm-up, in percent of min.
    pub rss_percent: f64,
    /// `SOAK_SILENCE_SECS` (default 30): how long the silent watch stays silent.
    pub silence: Duration,
    /// Enabled parts: the defaults, plus `SOAK_ENABLE=a,b` (or `all`), minus `SOAK_DISABLE`.
    pub scenarios: BTreeSet<String>,
    /// `SOAK_AGENT_ARGS`: extra agent flags, whitespace-separated.
    pub agent_args: Vec<String>,
    /// `SOAK_PROXY_MODES=nftables,iptables` (the default: both): the kube-proxy modes whose
    /// soak runs.
    pub proxy_modes: Vec<netlab::ProxyMode>,
}

impl Config {
    pub fn from_env() -> Config {
        let mut scenarios: BTreeSet<String> = ALL_SCENARIOS
            .iter()
            .filter(|s| !OFF_BY_DEFAULT.contains(s))
            .map(|s| s.to_string())
            .collect();
        for s in env_list("SOAK_ENABLE") {
            if s == "all" {
                scenarios.extend(ALL_SCENARIOS.iter().map(|s| s.to_string()));
            } else {
                assert!(
                    ALL_SCENARIOS.contains(&s.as_str()),
                    "SOAK_ENABLE: unknown part {s:?}; known: {ALL_SCENARIOS:?}"
                );
                scenarios.insert(s);
            }
        }
        for s in env_list("SOAK_DISABLE") {
            scenarios.remove(&s);
        }
        let mut proxy_modes: Vec<netlab::ProxyMode> = env_list("SOAK_PROXY_MODES")
            .iter()
            .map(|m| {
                netlab::ProxyMode::parse(m).unwrap_or_else(|| {
                    panic!("SOAK_PROXY_MODES: unknown mode {m:?}; known: nftables, iptables")
                })
            })
            .collect();
        if proxy_modes.is_empty() {
            proxy_modes = vec![netlab::ProxyMode::Nftables, netlab::ProxyMode::Iptables];
        }
        Config {
            connections: env_num("SOAK_CONNECTIONS", 200) as usize,
            udp_clients: env_num("SOAK_UDP_CLIENTS", 24) as usize,
            rolling_updates: env_num("SOAK_ROLLING_UPDATES", 50) as usize,
            minutes: std::env::var("SOAK_MINUTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            reap_slack: Duration::from_millis(env_num("SOAK_REAP_SLACK_MS", 1000)),
            metrics_limit: Duration::from_millis(env_num("SOAK_METRICS_LIMIT_MS", 100)),
            rss_percent: env_num("SOAK_RSS_PERCENT", 10) as f64,
            silence: Duration::from_secs(env_num("SOAK_SILENCE_SECS", 30)),
            scenarios,
            agent_args: std::env::var("SOAK_AGENT_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            proxy_modes,
        }
    }

    pub fn on(&self, part: &str) -> bool {
        self.scenarios.contains(part)
    }
}
