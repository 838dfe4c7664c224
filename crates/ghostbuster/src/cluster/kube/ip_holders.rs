//! "Which pods hold IP x?": the question for a ghost without a tombstone (its endpoint left
//! before the agent started — every DaemonSet upgrade — or a deselected pod on another node that
//! was deleted later). The agent watches only its own node's Pods, so it asks the API server:
//! `GET /api/v1/pods?fieldSelector=status.podIP=<ip>`, cluster-wide.
//!
//! Bounded on both sides, because the reactor must never wait on the network and one slow answer
//! must not hold back the rest: every question has a timeout, and a token bucket caps the rate
//! (a rollout can strand many backends at once; the API server must not pay for it). A question
//! over the rate is refused at once ([`HoldersError::RateLimited`]) rather than queued: the
//! caller keeps the flow and asks again later.
//!
//! What an answer proves, and what not:
//! - Pods found: each with its uid, creation time and whether it uses the host's network (a
//!   hostNetwork pod's IP is its node's, never evidence of anything).
//! - No pod: nobody held the IP *as its primary IP* at [`Holders::asked_at`]. The API server's
//!   field selector `status.podIP` matches a pod's first IP only; on a dual-stack cluster a pod
//!   holding `ip` as its second address is not found. [`Holders::primary_ip_only`] says so, and a
//!   caller must take an empty answer for an address of the cluster's second family as unknown.
//!   And it says nothing of flows younger than `asked_at` (a pod may have been created since).
//! - An error (timeout, refused, 5xx, rate limited): unknown. Keep the flow.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams};
use ::kube::Client;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// How often and how long to ask.
#[derive(Clone, Debug)]
pub struct HoldersConfig {
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Questions per second, sustained.
    pub per_second: f64,
    /// Questions allowed at once after a quiet time.
    pub burst: u32,
}

impl Default for HoldersConfig {
    fn default() -> Self {
        HoldersConfig {
            timeout: Duration::from_secs(5),
            per_second: 5.0,
            burst: 10,
        }
    }
}

/// One pod that holds the IP (as the API server answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// `metadata.creationTimestamp` (the API server's clock).
    pub created: Option<Timestamp>,
    /// `spec.hostNetwork`: the IP is its node's, shared by every hostNetwork pod there.
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: still running, draining.
    pub deleting: bool,
    /// `Succeeded` or `Failed`: its sandbox and IP are released.
    pub finished: bool,
}

/// The answer to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holders {
    pub ip: IpAddr,
    /// The pods whose `status.podIP` is `ip` (finished ones included, flagged).
    pub pods: Vec<Holder>,
    /// When the question was sent (the local clock): the answer covers flows older than this.
    pub asked_at: Timestamp,
    /// Always true: the API server matches `status.podIP`, a pod's first IP, only.
    pub primary_ip_only: bool,
}

impl Holders {
    /// True when some pod that has not finished holds the IP.
    pub fn held(&self) -> bool {
        self.pods.iter().any(|p| !p.finished)
    }
}

/// Why there is no answer. Every one means "unknown": keep the flow.
#[derive(Debug, thiserror::Error)]
pub enum HoldersError {
    /// Over the rate: ask again later.
    #[error("pod lookup by IP {0} skipped: over the rate limit")]
    RateLimited(IpAddr),
    #[error("pod lookup by IP {ip} timed out after {after:?}")]
    Timeout { ip: IpAddr, after: Duration },
    #[error("pod lookup by IP {ip}: {source}")]
    Api {
        ip: IpAddr,
        #[source]
        source: ::kube::Error,
    },
}

/// Asks the API server which pods hold an IP; rate-limited, with a timeout.
pub struct IpHolders {
    client: Client,
    cfg: HoldersConfig,
    bucket: Mutex<Bucket>,
}

impl IpHolders {
    pub fn new(client: Client, cfg: HoldersConfig) -> Self {
        let bucket = Bucket::new(cfg.burst, cfg.per_second, Instant::now());
        IpHolders {
            client,
            cfg,
            bucket: Mutex::new(bucket),
        }
    }

    /// The pods whose primary IP is `ip`, cluster-wide. Never waits longer than the timeout, and
    /// never waits for the rate limit: over it, [`HoldersError::RateLimited`] at once.
    pub async fn pods_at(&self, ip: IpAddr) -> Result<Holders, HoldersError> {
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if !allowed {
            return Err(HoldersError::RateLimited(ip));
        }
        let asked_at = Timestamp::now();
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("status.podIP={ip}"));
        let list = match tokio::time::timeout(self.cfg.timeout, api.list(&lp)).await {
            Err(_) => {
                return Err(HoldersError::Timeout {
                    ip,
                    after: self.cfg.timeout,
                })
            }
            Ok(Err(source)) => return Err(HoldersError::Api { ip, source }),
            Ok(Ok(l)) => l,
        };
        let pods = list
            .items
            .into_iter()
            .map(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                Holder {
                    finished: matches!(phase, Some("Succeeded" | "Failed")),
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    uid: p.metadata.uid.clone(),
                    created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    host_network: p
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_network)
                        .unwrap_or(false),
                    deleting: p.metadata.deletion_timestamp.is_some(),
                }
            })
            .collect();
        Ok(Holders {
            ip,
            pods,
            asked_at,
            primary_ip_only: true,
        })
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(burst: u32, per_second: f64, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            tokens: burst,
            burst,
            per_second: per_second.max(0.0),
            at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2.0, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "burst spent");
        assert!(!b.take(t0 + Duration::from_millis(400)), "0.8 of a token");
        assert!(
            b.take(t0 + Duration::from_millis(500)),
            "one token after 0.5 s"
        );
        assert!(!b.take(t0 + Duration::from_millis(500)));
        // A long quiet time refills up to the burst only.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }
}
