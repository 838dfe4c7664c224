//! "Is the pod named in this tombstone gone?": the evidence TCP/SCTP deletes need in the agent.
//!
//! One GET of the pod, answered from a short-lived cache: a rollout removes many endpoints at
//! once and every flow to one backend asks about the same pod, so each pod costs at most one GET
//! per TTL however many flows and passes ask. Only a definite answer is cached; errors are not
//! (the caller keeps its flows and asks again later).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::kube::api::Api;
use ::kube::Client;
use k8s_openapi::api::core::v1::Pod;

use super::{Error, Result};

/// What the API says about the pod behind an endpoint that left every slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCheck {
    /// 404, or the pod has finished (Succeeded/Failed: its containers stopped and its sandbox's
    /// IP was released).
    Gone,
    /// A pod of that name exists with another uid (a StatefulSet pod recreated).
    Replaced,
    /// Same pod (or uid unknown), but the IP is not among its `status.podIPs` any more.
    Moved,
    /// The same pod at the same IP, being deleted: it still runs and drains; not gone.
    Terminating,
    /// The same pod at the same IP, alive: merely deselected.
    Same,
}

impl PodCheck {
    /// True when the backend at the IP is not this pod any more: evidence for a delete.
    pub fn is_gone(self) -> bool {
        matches!(self, PodCheck::Gone | PodCheck::Replaced | PodCheck::Moved)
    }
}

/// What a GET told (`None`: 404).
#[derive(Clone, Debug)]
struct Facts {
    uid: Option<String>,
    ips: Vec<IpAddr>,
    deleting: bool,
    finished: bool,
}

type Key = (String, String);

/// Checks pods with a GET each, cached for a TTL.
pub struct PodChecker {
    client: Client,
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<Key, (Instant, Option<Facts>)>>,
}

/// Entries kept before expired ones are purged.
const PURGE_AT: usize = 4096;

/// Default longest wait for one pod GET.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl PodChecker {
    /// A checker whose answers live `ttl` (a few seconds: long enough to cover a rollout's
    /// burst, short enough that a pod recreated meanwhile is seen).
    pub fn new(client: Client, ttl: Duration) -> Self {
        PodChecker {
            client,
            ttl,
            timeout: DEFAULT_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The longest wait for one GET (default [`DEFAULT_TIMEOUT`]); past it the check fails (the
    /// caller keeps its flows): the client's own read timeout (295 s, for watches) would hold
    /// the reactor for minutes.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether pod `namespace/name`, last seen with `expected_uid` at `expected_ip`, is still
    /// there. Errors other than 404 (unreachable, 403, 5xx) are returned, not guessed at.
    pub async fn check(
        &self,
        namespace: &str,
        name: &str,
        expected_uid: Option<&str>,
        expected_ip: IpAddr,
    ) -> Result<PodCheck> {
        let key = (namespace.to_owned(), name.to_owned());
        let cached = self
            .lock()
            .get(&key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, f)| f.clone());
        let facts = match cached {
            Some(f) => f,
            None => {
                let f = self.fetch(namespace, name).await?;
                let mut cache = self.lock();
                if cache.len() >= PURGE_AT {
                    let ttl = self.ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                }
                cache.insert(key, (Instant::now(), f.clone()));
                f
            }
        };
        Ok(judge(facts.as_ref(), expected_uid, expected_ip))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Instant, Option<Facts>)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch(&self, namespace: &str, name: &str) -> Result<Option<Facts>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let got = tokio::time::timeout(self.timeout, api.get(name))
            .await
            .unwrap_or_else(|_| {
                Err(::kube::Error::Service(
                    format!("no answer within {:?}", self.timeout).into(),
                ))
            });
        let pod = match got {
            Ok(p) => p,
            Err(::kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(Error::api(format!("get pod {namespace}/{name}"), e)),
        };
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|i| i.parse().ok())
        {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Ok(Some(Facts {
            uid: pod.metadata.uid.clone(),
            ips,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
        }))
    }
}

fn judge(facts: Option<&Facts>, uid: Option<&str>, ip: IpAddr) -> PodCheck {
    let Some(f) = facts else {
        return PodCheck::Gone;
    };
    if let (Some(want), Some(have)) = (uid, f.uid.as_deref()) {
        if want != have {
            return PodCheck::Replaced;
        }
    }
    if f.finished {
        return PodCheck::Gone;
    }
    if !f.ips.contains(&ip) {
        return PodCheck::Moved;
    }
    if f.deleting {
        PodCheck::Terminating
    } else {
        PodCheck::Same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let other: IpAddr = "10.0.0.6".parse().unwrap();
        let f = Facts {
            uid: Some("u1".into()),
            ips: vec![ip],
            deleting: false,
            finished: false,
        };
        assert_eq!(judge(None, Some("u1"), ip), PodCheck::Gone);
        assert_eq!(judge(Some(&f), Some("u2"), ip), PodCheck::Replaced);
        assert_eq!(judge(Some(&f), Some("u1"), other), PodCheck::Moved);
        assert_eq!(judge(Some(&f), None, ip), PodCheck::Same);
        let deleting = Facts {
            deleting: true,
            ..f.clone()
        };
        assert_eq!(
            judge(Some(&deleting), Some("u1"), ip),
            PodCheck::Terminating
        );
        let done = Facts {
            finished: true,
            ..f
        };
        assert_eq!(judge(Some(&done), Some("u1"), ip), PodCheck::Gone);
        assert!(PodCheck::Moved.is_gone() && !PodCheck::Terminating.is_gone());
    }
}
