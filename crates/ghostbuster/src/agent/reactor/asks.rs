//! Questions to the API server the reactor keeps track of: "who holds this IP?" for ghosts
//! without a tombstone (rate-limited per backend, with backoff), and the backoff of backends whose
//! pod GET went unanswered. The questions themselves run off the reactor ([`crate::agent::lookups`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::{HoldersAnswer, ReactorConfig, Shared, World};
use crate::cluster::{Index, IpFamily};
use crate::scan::Finding;
use crate::verdict::{KeepReason, VerdictKind};

/// How long the API server's "no pod at this IP" is remembered (the agent asks again while the
/// flows are there).
pub(super) const IP_ANSWER_TTL: Duration = Duration::from_secs(600);

/// The "who holds this IP?" questions: when each backend may be asked again, and the backoff
/// of unanswered ones. (The questions themselves run off the reactor: see [`super::lookups`].)
#[derive(Debug, Default)]
pub struct HolderAsks {
    next: HashMap<IpAddr, Instant>,
    backoff: HashMap<IpAddr, Duration>,
}

/// What asking about one backend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// Nothing to ask, or asked too recently.
    No,
    /// An answer was recorded in the index: judge the flows again. `Some(d)`: some flows began
    /// too close to the answer for it to prove anything about them; look again after `d` (the
    /// next answer is asked for then).
    Recorded(Option<Duration>),
    /// No answer: look at the backend again after this long.
    Unanswered(Duration),
    /// The question is under way: its answer wakes the reactor for the backend.
    Pending,
}

impl HolderAsks {
    pub(super) fn begin_turn(&mut self) {
        // Bounded by the backends with ghosts: forget those not asked about for a long time.
        let now = Instant::now();
        self.next
            .retain(|_, t| now.saturating_duration_since(*t) < IP_ANSWER_TTL);
        let next = &self.next;
        self.backoff.retain(|ip, _| next.contains_key(ip));
    }
}

/// Whether the API server's empty answer for `ip` can be read as "no pod holds it": its field
/// selector matches a pod's first IP only, so an empty answer is absence only for the cluster's
/// primary family. The agent cannot read that from a pod it does not see, so it takes an empty
/// answer as absence only on a cluster whose Services are all of `ip`'s family (single-stack);
/// on a dual-stack cluster, or one with no Services yet, an empty answer is unknown.
pub(super) fn empty_answer_is_absence(ix: &Index, ip: &IpAddr) -> bool {
    let family = IpFamily::of(ip);
    let other = match family {
        IpFamily::V4 => IpFamily::V6,
        IpFamily::V6 => IpFamily::V4,
    };
    let mut any = false;
    for s in ix.services() {
        if s.families.contains(other) || s.frontends.iter().any(|(a, _)| IpFamily::of(a) == other) {
            return false;
        }
        any |= s.families.contains(family);
    }
    any
}

/// A stale TCP/SCTP flow of `ip` kept only for lack of evidence (or because it began after the
/// last answer: asked again), with a known start, and nothing in the index at `ip` (no
/// tombstone, endpoint, live pod or node address): the kind of ghost an answer from the API
/// server can prove gone.
pub(super) fn wants_holders(ix: &Index, ip: &IpAddr, findings: &[Finding]) -> bool {
    let candidate = findings.iter().any(|f| {
        f.verdict.backend.is_some_and(|b| b.ip == *ip)
            && f.verdict.kind == VerdictKind::EndpointGone
            && !f.verdict.removable
            && matches!(
                f.verdict.kept_because,
                Some(KeepReason::NoEvidence | KeepReason::NewerThanApiAnswer)
            )
            && matches!(f.flow.orig.proto, 6 | 17 | 132)
            && f.flow.start_ns.is_some()
    });
    candidate
        && ix.tombstones().at(ip).is_empty()
        && !ix.is_node_address(ip)
        && ix.endpoints_at(ip).next().is_none()
        && !ix.pods_at(ip).any(|p| p.is_alive() || p.host_network)
}

impl HolderAsks {
    /// Asks the API server who holds `ip` when its flows need it (see [`wants_holders`]), at most
    /// once per `ip_lookup_every` per backend, and records a "no pod" answer in the index. Must be
    /// called with the gate of `ip` open (the index is not locked here).
    pub(super) fn ask(
        &mut self,
        shared: &Shared,
        world: &mut impl World,
        cfg: &ReactorConfig,
        ip: IpAddr,
        findings: &[Finding],
    ) -> Asked {
        if cfg.ip_lookup_every.is_zero() {
            return Asked::No;
        }
        let now = Instant::now();
        if self.next.get(&ip).is_some_and(|t| *t > now) {
            return Asked::No;
        }
        {
            let ix = shared.index.read().unwrap_or_else(|e| e.into_inner());
            if !wants_holders(&ix, &ip, findings) {
                return Asked::No;
            }
        }
        let answer = world.ip_holders(ip);
        let now = Instant::now();
        match answer {
            HoldersAnswer::Pending => Asked::Pending,
            HoldersAnswer::Unknown => {
                let again = next_retry(&mut self.backoff, ip);
                self.next.insert(ip, now + again);
                Asked::Unanswered(again)
            }
            HoldersAnswer::Held => {
                self.backoff.remove(&ip);
                self.next.insert(ip, now + cfg.ip_lookup_every);
                let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                ix.ip_answers_mut().forget(&ip);
                Asked::No
            }
            HoldersAnswer::Absent { as_of } => {
                self.backoff.remove(&ip);
                self.next.insert(ip, now + cfg.ip_lookup_every);
                let mut ix = shared.index.write().unwrap_or_else(|e| e.into_inner());
                if !empty_answer_is_absence(&ix, &ip) {
                    tracing::debug!(%ip, "no pod lists the IP first, but the cluster may be dual-stack: unknown");
                    return Asked::No;
                }
                ix.ip_answers_mut().record_absent(ip, as_of);
                let soon = ask_again_after(findings, ip, as_of, cfg.policy.clock_skew);
                if let Some(d) = soon {
                    self.next.insert(ip, now + d.min(cfg.ip_lookup_every));
                }
                Asked::Recorded(soon.map(|d| d.min(cfg.ip_lookup_every)))
            }
        }
    }
}

/// When an empty answer taken at `as_of` cannot prove a candidate flow of `ip` gone — it began
/// after `as_of - skew` (a pod may have been made at the IP since, or the clocks differ) — the
/// time until an answer taken then could (its start + skew, half a second to spare, at least a
/// second). `None` when the answer covers every candidate. Without it such a ghost (a pod made
/// and deleted while a watch was down, its flows seconds old) waited `--ip-lookup-every`.
pub(super) fn ask_again_after(
    findings: &[Finding],
    ip: IpAddr,
    as_of: Timestamp,
    skew: Duration,
) -> Option<Duration> {
    let as_of_ns = as_of.as_nanosecond();
    let skew_ns = i128::try_from(skew.as_nanos()).unwrap_or(i128::MAX / 4);
    findings
        .iter()
        .filter(|f| {
            f.verdict.backend.is_some_and(|b| b.ip == ip)
                && f.verdict.kind == VerdictKind::EndpointGone
                && !f.verdict.removable
        })
        .filter_map(|f| f.flow.start_ns)
        .map(|start| i128::from(start) + skew_ns - as_of_ns)
        .filter(|&short| short >= 0)
        .max()
        .map(|short| {
            let short = u64::try_from(short).unwrap_or(u64::MAX);
            (Duration::from_nanos(short) + Duration::from_millis(500)).max(Duration::from_secs(1))
        })
}

/// Backoff of a backend whose pod GET could not be answered (error, timeout): looked at again
/// after 1 s, 2 s, 4 s, ... at most [`MAX_RETRY`], not only at the next full pass.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub(super) fn next_retry(backoff: &mut HashMap<IpAddr, Duration>, ip: IpAddr) -> Duration {
    let d = backoff.entry(ip).or_insert(Duration::ZERO);
    *d = if d.is_zero() {
        FIRST_RETRY
    } else {
        (*d * 2).min(MAX_RETRY)
    };
    *d
}
