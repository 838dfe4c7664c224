//! The decision table (issue #3, section 2): one pure, total function from a flow and the cluster
//! to a [`Verdict`].
//!
//! Terms: S is the service port the flow's original destination (address, port, protocol) hits;
//! the flow is NATed when its reply source (IP, port) differs from its original destination;
//! b = the reply source is the backend; E(S) is the union of S's endpoints over *all* its slices in
//! the flow's family, matched by the Service port's name. Default keep: a flow is removable only
//! with evidence that its backend is gone, or when removing it cannot hurt (no connection exists;
//! UDP, whose stale flows kube-proxy removes itself). Endpoints that are present but terminating
//! are draining, hence healthy (kubernetes#101607, #100755: removing them breaks graceful
//! shutdown).

use std::net::IpAddr;

use ctnetlink::{Flow, Status, TcpState};
use jiff::Timestamp;

use crate::cluster::{
    Conditions, FrontendKind, FrontendMatch, Index, IpFamily, Name, Pod, PodRef, PodTarget,
    Protocol, Service, Tombstone, Uid,
};
use crate::policy::Policy;
use crate::verdict::{
    Age, Backend, Evidence, EvidenceSet, KeepReason, Owner, ServiceRef, Step, Trace, Verdict,
    VerdictKind,
};

/// Classifies one flow. `now` is the time the flow was read (its age is `now - start`).
/// Never panics, never does I/O.
pub fn classify(flow: &Flow, index: &Index, policy: &Policy, now: Timestamp) -> Verdict {
    let mut c = Classifier {
        flow,
        index,
        policy,
        age: age(flow, now, policy),
        half_open: is_half_open(flow),
        service: None,
        unjudged: None,
        v: Verdict {
            kind: VerdictKind::NotService,
            evidence: EvidenceSet::default(),
            half_open: is_half_open(flow),
            removable: false,
            kept_because: None,
            service: None,
            backend: None,
            now_owned_by: None,
            trace: Trace::default(),
        },
    };
    c.run();
    c.v
}

/// Never saw a reply: TCP `SYN_SENT`, or no reply packet at all (`[UNREPLIED]`).
pub fn is_half_open(flow: &Flow) -> bool {
    flow.tcp_state == Some(TcpState::SYN_SENT) || !flow.status.contains(Status::SEEN_REPLY)
}

fn age(flow: &Flow, now: Timestamp, policy: &Policy) -> Age {
    let Some(start) = flow.start_ns else {
        return Age::Unknown;
    };
    let age_ns = now.as_nanosecond() - i128::from(start);
    let min_ns = i128::try_from(policy.min_age.as_nanos()).unwrap_or(i128::MAX);
    let secs = i64::try_from(age_ns / 1_000_000_000).unwrap_or(i64::MAX);
    if age_ns >= min_ns {
        Age::Old {
            secs: u64::try_from(secs).unwrap_or(0),
        }
    } else {
        Age::Young {
            secs,
            min_secs: policy.min_age.as_secs(),
        }
    }
}

fn flow_start(flow: &Flow) -> Option<Timestamp> {
    Timestamp::from_nanosecond(i128::from(flow.start_ns?)).ok()
}

struct Classifier<'a> {
    flow: &'a Flow,
    index: &'a Index,
    policy: &'a Policy,
    age: Age,
    half_open: bool,
    /// S, once a frontend matched.
    service: Option<&'a Service>,
    /// Why the snapshot cannot judge this flow (rows 5 to 9): it is not known to be older than
    /// the snapshot ([`Classifier::snapshot_cannot_judge`]).
    unjudged: Option<KeepReason>,
    v: Verdict,
}

/// What the listings of b's IP in S say.
#[derive(Default)]
struct InService {
    /// b ∈ E(S): merged conditions.
    member: Option<Conditions>,
    /// b's IP ∈ E(S) on another port (that port and the pod).
    other_port: Option<(u16, Option<PodTarget>)>,
    /// b's IP is listed for S, in a slice that does not name S's port.
    unresolved: bool,
}

impl<'a> Classifier<'a> {
    fn step(&mut self, s: Step) {
        self.v.trace.push(s);
    }

    fn verdict(&mut self, kind: VerdictKind) {
        self.v.kind = kind;
        self.step(Step::Row(kind));
    }

    /// Known to be at least `--min-age` old. Unknown is not old: without a start time a SYN may
    /// be a moment old and its answer on the way.
    fn old_enough(&self) -> bool {
        matches!(self.age, Age::Old { .. })
    }

    /// A half-open row (2 or 4) reached with an unknown age: reported with its verdict, kept.
    fn half_open_of_unknown_age(&mut self, kind: VerdictKind) {
        self.verdict(kind);
        self.v.kept_because = Some(KeepReason::UnknownAge);
    }

    fn run(&mut self) {
        let flow = self.flow;
        let Some(protocol) = Protocol::from_ip_proto(flow.orig.proto) else {
            self.step(Step::OtherProtocol(flow.orig.proto));
            return self.verdict(VerdictKind::NotService);
        };
        let (Some(dport), Some(bport)) = (flow.orig.dport(), flow.reply.sport()) else {
            self.step(Step::OtherProtocol(flow.orig.proto));
            return self.verdict(VerdictKind::NotService);
        };
        let dst = flow.orig.dst;
        let nated = (flow.reply.src, bport) != (dst, dport);
        let backend = Backend {
            ip: flow.reply.src,
            port: bport,
        };

        let Some(fm) = self.index.frontend(dst, dport, protocol) else {
            self.step(Step::NoFrontend);
            if self.index.is_other_proxy_address(&dst) {
                // Another proxy DNAT'd it: not a Service flow of ours, whatever it looks like.
                self.step(Step::OtherProxy);
                return self.verdict(VerdictKind::NotService);
            }
            let in_cidr = self.index.in_service_cidr(&dst);
            self.step(Step::InServiceCidr(in_cidr));
            if !in_cidr {
                return self.verdict(VerdictKind::NotService);
            }
            let dnat = flow.is_dnat();
            self.step(Step::Dnat(dnat));
            self.step(Step::Nated(nated));
            if !(dnat && nated) {
                // Nothing rewrote it: traffic to an unused service address, not a Service flow.
                return self.verdict(VerdictKind::NotService);
            }
            self.v.backend = Some(backend);
            return self.service_gone(protocol, backend);
        };

        self.step(Step::Frontend(fm.kind));
        self.service = Some(fm.service);
        self.v.service = Some(service_ref(&fm));
        self.step(Step::Nated(nated));
        if !nated {
            return self.not_nated(&fm, protocol);
        }
        self.v.backend = Some(backend);
        self.nated(&fm, protocol, backend);
    }

    /// Row 2, or healthy.
    fn not_nated(&mut self, fm: &FrontendMatch<'_>, protocol: Protocol) {
        self.step(Step::HalfOpen(self.half_open));
        if self.half_open {
            let family = IpFamily::of(&self.flow.orig.dst);
            let ready = self.index.slices_of(&fm.service.key).any(|s| {
                s.family == family
                    && s.port_for(&fm.port.name, protocol).is_some()
                    && s.endpoints().any(|e| e.conditions.ready())
            });
            self.step(Step::ReadyEndpoints(ready));
            if ready {
                self.step(Step::Age(self.age));
                if self.old_enough() {
                    self.verdict(VerdictKind::MissedDnat);
                    self.v.evidence.insert(Evidence::HalfOpen);
                    return self.decide(protocol, true, false);
                }
                if self.age == Age::Unknown {
                    return self.half_open_of_unknown_age(VerdictKind::MissedDnat);
                }
            }
        }
        self.verdict(VerdictKind::Healthy);
    }

    /// Rows 3 to 8.
    fn nated(&mut self, fm: &FrontendMatch<'a>, protocol: Protocol, b: Backend) {
        let svc = &fm.service.key;
        let mut found = InService::default();
        for view in self.index.endpoints_at(&b.ip) {
            if view.slice.service != *svc {
                continue;
            }
            match view.slice.port_for(&fm.port.name, protocol) {
                Some(p) if p == b.port => {
                    let c = view.endpoint.conditions;
                    found.member = Some(found.member.map_or(c, |m| m.merge(c)));
                }
                Some(p) => {
                    found.other_port = Some((p, view.endpoint.pod.as_ref().map(PodRef::to_target)));
                }
                None => found.unresolved = true,
            }
        }

        if let Some(conditions) = found.member {
            self.step(Step::InEndpoints(conditions));
            self.step(Step::HalfOpen(self.half_open));
            let serving = conditions.serving();
            if self.half_open && !serving {
                self.step(Step::Age(self.age));
                if self.old_enough() {
                    self.verdict(VerdictKind::Unanswered);
                    self.v.evidence.insert(Evidence::HalfOpen);
                    return self.decide(protocol, true, false);
                }
            }
            if protocol == Protocol::Udp && !serving {
                return self.not_serving(fm, protocol);
            }
            if self.half_open && !serving && self.age == Age::Unknown {
                return self.half_open_of_unknown_age(VerdictKind::Unanswered);
            }
            return self.verdict(VerdictKind::Healthy);
        }
        self.step(Step::NotInEndpoints);
        self.unjudged = self.snapshot_cannot_judge();

        if let Some((port, pod)) = found.other_port {
            self.step(Step::OtherPort(port));
            self.v.now_owned_by = Some(Owner {
                namespace: Some(svc.namespace.clone()),
                service: Some(svc.name.clone()),
                pod: pod.map(|p| p.name),
            });
            self.verdict(VerdictKind::PortChanged);
            return self.live_backend(protocol);
        }
        if found.unresolved {
            self.step(Step::PortUnresolved);
            return self.verdict(VerdictKind::Healthy);
        }

        let index: &'a Index = self.index;
        let tombstone = index.tombstones().get(svc, &b.ip);
        // Any node's address (hostNetwork pods share it): whoever else holds it proves nothing.
        if index.is_node_address(&b.ip) {
            self.step(Step::NodeAddress);
            self.verdict(VerdictKind::Deselected);
            return self.live_backend(protocol);
        }

        // Who holds the IP now: an endpoint of another service, or a live pod.
        let other = index
            .endpoints_at(&b.ip)
            .filter(|v| v.slice.service != *svc)
            .max_by_key(|v| v.endpoint.pod.is_some());
        let pods = self.live_pods(&b.ip);
        if let Some(view) = other {
            self.step(Step::OtherServiceEndpoint);
            self.v.now_owned_by = Some(Owner {
                namespace: Some(view.slice.key.namespace.clone()),
                service: Some(view.slice.service.name.clone()),
                pod: view.endpoint.pod.as_ref().map(|p| Name::new(p.name)),
            });
            let holder = view.endpoint.pod.as_ref();
            let holder_pod =
                holder.and_then(|t| index.pod_named(&view.slice.key.namespace, t.name));
            let holder_uid = holder.and_then(|t| t.uid.as_ref());
            return self.owned_by_another(protocol, tombstone, holder_uid, holder_pod, pods, true);
        }
        if let Some(pod) = pods.first() {
            self.step(Step::LivePod);
            self.v.now_owned_by = Some(Owner {
                namespace: Some(pod.key.namespace.clone()),
                service: None,
                pod: Some(pod.key.name.clone()),
            });
            return self.owned_by_another(
                protocol,
                tombstone,
                pod.uid.as_ref(),
                Some(pod),
                pods,
                false,
            );
        }

        self.step(Step::NobodysEndpoint);
        self.verdict(VerdictKind::EndpointGone);
        if self.index.pods_complete() && self.unjudged.is_none() {
            self.step(Step::NoPod);
            self.v.evidence.insert(Evidence::PodAbsent);
        }
        self.tombstone_evidence(tombstone);
        let unused_answer = self.api_absence(&b.ip);
        // The agent's live view: an endpoint whose removal it never saw (no tombstone) may be
        // one its view has not caught up with (a new pod kube-proxy already sends to, a silent
        // slice watch). UDP counts only once the pod is known gone: this node's pod watch saw
        // it go, or the API server says no pod holds the IP.
        let untracked_udp = protocol == Protocol::Udp
            && tombstone.is_none()
            && self.index.is_live()
            && !self.v.evidence.contains(Evidence::PodAbsent);
        if untracked_udp {
            let pod_left = self.index.pod_left_at(&b.ip).is_some();
            self.step(Step::UntrackedUdp { pod_left });
            if pod_left {
                self.protocol_evidence(protocol);
            }
        } else {
            self.protocol_evidence(protocol);
        }
        if self.v.evidence.is_empty() {
            self.v.evidence.insert(Evidence::SnapshotOnly);
        }
        let enough = self.v.evidence.suffices() || self.policy.trust_snapshot;
        self.decide(protocol, enough, true);
        if self.v.kept_because == Some(KeepReason::NoEvidence) {
            self.v.kept_because = unused_answer.or(self.v.kept_because);
        }
    }

    /// The agent's evidence for a ghost without a tombstone (its endpoint left before the agent
    /// started, or it was nobody's this agent saw leave): the API server listed no pod at `ip`
    /// (`IpAnswers`), asked after the flow began by more than the clock-skew margin → `PodAbsent`.
    /// Only when nothing the index knows holds the IP — the caller has found no endpoint of any
    /// Service, no live pod and no node address there; a hostNetwork pod or a tombstone at the
    /// IP (whose pod GET is the better evidence) also rule it out. Returns why an answer that
    /// exists could not be used (the flow's start unknown, or not older than the answer).
    fn api_absence(&mut self, ip: &IpAddr) -> Option<KeepReason> {
        let index = self.index;
        let as_of = index.ip_answers().absent_as_of(ip)?;
        if !index.tombstones().at(ip).is_empty()
            || index.is_node_address(ip)
            || index.endpoints_at(ip).next().is_some()
            || index.pods_at(ip).any(|p| p.host_network || p.is_alive())
        {
            return None;
        }
        let Some(start) = flow_start(self.flow) else {
            self.step(Step::Age(Age::Unknown));
            return Some(KeepReason::UnknownAge);
        };
        if start.as_nanosecond() + self.skew() >= as_of.as_nanosecond() {
            self.step(Step::NewerThanApiAnswer);
            return Some(KeepReason::NewerThanApiAnswer);
        }
        self.step(Step::ApiNoPod);
        self.v.evidence.insert(Evidence::PodAbsent);
        None
    }

    /// Rows 6 and 7 once the IP is known to be held by someone else: `ip_reused` with evidence
    /// that the flow's backend is another pod than the holder, `deselected` without.
    ///
    /// Someone else holding the IP proves nothing by itself: the Service's own pod may be alive
    /// and merely deselected, or be the holder under a slice update not yet seen. Evidence is
    /// either the holder created after the flow began (every pod at the IP, beyond the clock-skew
    /// margin), or, when the holder is *another Service's* endpoint (`other_service`), the
    /// Service's last pod at the IP confirmed gone (`pod_gone`) with another uid than the
    /// holder's. A bare live pod with another uid is not enough even then: it may be this
    /// Service's new pod, reusing the IP, whose slice update has not arrived.
    fn owned_by_another(
        &mut self,
        protocol: Protocol,
        tombstone: Option<&Tombstone>,
        holder_uid: Option<&Uid>,
        holder_pod: Option<&Pod>,
        pods: Vec<&Pod>,
        other_service: bool,
    ) {
        let start = flow_start(self.flow);
        let skew = self.skew();
        let mut holders = holder_pod
            .into_iter()
            .chain(pods.iter().copied())
            .peekable();
        let created_after = match start {
            Some(start) if holders.peek().is_some() => holders.all(|p| {
                p.created
                    .is_some_and(|c| c.as_nanosecond() > start.as_nanosecond() + skew)
            }),
            _ => false,
        };
        let gone_uid = tombstone
            .filter(|t| t.pod_gone)
            .and_then(|t| t.pod.as_ref()?.uid.as_ref());
        let replaced = other_service
            && match (gone_uid, holder_uid) {
                (Some(last), Some(now)) => last != now,
                _ => false,
            };
        if created_after {
            self.step(Step::PodCreatedAfterFlow);
            self.v.evidence.insert(Evidence::PodCreatedAfterFlow);
        }
        if replaced {
            self.step(Step::PodReplaced);
            self.v.evidence.insert(Evidence::PodReplaced);
        }
        if created_after || replaced {
            self.verdict(VerdictKind::IpReused);
            self.tombstone_evidence(tombstone);
            self.protocol_evidence(protocol);
            return self.decide(protocol, true, true);
        }
        self.verdict(VerdictKind::Deselected);
        self.live_backend(protocol);
    }

    /// Rows 5 and 7: the backend is (probably) alive. UDP and half-open flows go (nothing to
    /// break; kube-proxy does the same for UDP); TCP/SCTP only with `--include-deselected`.
    fn live_backend(&mut self, protocol: Protocol) {
        self.protocol_evidence(protocol);
        let cannot_hurt = !self.v.evidence.is_empty();
        if !cannot_hurt && !self.policy.include_deselected {
            self.v.kept_because = Some(KeepReason::LivePod);
            return;
        }
        self.decide(protocol, true, true);
    }

    /// Row 9: UDP goes; TCP/SCTP only with evidence that the backend is gone too, since a deleted
    /// Service's pods may live on and kube-proxy lets TCP finish. `--trust-snapshot` does not
    /// apply: a deleted Service's pods are absent from every slice whether alive or not.
    fn service_gone(&mut self, protocol: Protocol, b: Backend) {
        self.verdict(VerdictKind::ServiceGone);
        let node = self.index.is_node_address(&b.ip);
        let listed = self.index.endpoints_at(&b.ip).next().is_some();
        let alive = node || !self.live_pods(&b.ip).is_empty();
        self.unjudged = self.snapshot_cannot_judge();
        if node {
            self.step(Step::NodeAddress);
        } else if listed || alive {
            self.step(if listed {
                Step::OtherServiceEndpoint
            } else {
                Step::LivePod
            });
        } else if self.index.pods_complete() && self.unjudged.is_none() {
            self.step(Step::NoPod);
            self.v.evidence.insert(Evidence::PodAbsent);
        }
        let tombstone = self.index.tombstones().at(&b.ip).first();
        if !listed && !alive {
            self.tombstone_evidence(tombstone);
        }
        self.protocol_evidence(protocol);
        if self.v.evidence.is_empty() {
            self.v.evidence.insert(Evidence::SnapshotOnly);
        }
        let enough = self.v.evidence.suffices();
        self.decide(protocol, enough, true);
    }

    /// Evidence that holds whatever the cluster says: UDP (kube-proxy removes such flows itself),
    /// and half-open once older than `--min-age` (a younger SYN may still be answered, and
    /// removing its entry would drop the SYN-ACK in flight).
    fn protocol_evidence(&mut self, protocol: Protocol) {
        if protocol == Protocol::Udp {
            self.v.evidence.insert(Evidence::Udp);
        }
        if self.half_open && self.old_enough() {
            self.v.evidence.insert(Evidence::HalfOpen);
        }
    }

    /// The agent's evidence: the endpoint left every slice (`endpoint_removed`, not enough alone)
    /// and the API confirmed its pod gone (`pod_gone`). Having been terminating when it left is
    /// not a confirmation: a draining pod whose labels change leaves the slice alive.
    fn tombstone_evidence(&mut self, tombstone: Option<&Tombstone>) {
        let Some(t) = tombstone else { return };
        let pod_gone = t.pod_gone;
        self.step(Step::Tombstone {
            terminating: t.was_terminating(),
            pod_gone,
        });
        self.v.evidence.insert(Evidence::EndpointRemoved);
        if pod_gone {
            self.v.evidence.insert(Evidence::PodGone);
        }
    }

    /// Pods that may still answer at `ip`. A pod the API server has confirmed gone (a tombstone
    /// at `ip` names it, same uid, `pod_gone`) is not one of them even while this node's pod
    /// watch still lists it: the watch is behind (relisting after a 410, say), the GET is not.
    fn live_pods(&self, ip: &IpAddr) -> Vec<&'a Pod> {
        let index: &'a Index = self.index;
        let confirmed_gone = |p: &Pod| {
            index
                .tombstones()
                .at(ip)
                .iter()
                .any(|t| t.pod_gone && t.names_pod(&p.key, p.uid.as_ref()))
        };
        index
            .pods_at(ip)
            .filter(|p| p.is_alive() && !confirmed_gone(p))
            .collect()
    }

    /// `--clock-skew` in nanoseconds.
    fn skew(&self) -> i128 {
        i128::try_from(self.policy.clock_skew.as_nanos()).unwrap_or(i128::MAX / 4)
    }

    /// Why the snapshot cannot judge this flow, if it cannot: absence from a snapshot is evidence
    /// only for a flow *proven* older than it, its start known and before the snapshot's time by
    /// more than the clock-skew margin (the snapshot's time is the API server's or the exporting
    /// machine's clock, the start this node's). A flow that began later, or whose start is
    /// unknown, may be to a pod the snapshot never saw. `None` for a live index (the agent): its
    /// view is not a snapshot, and its evidence (tombstones, pod GETs) needs no flow age.
    fn snapshot_cannot_judge(&mut self) -> Option<KeepReason> {
        let snap = self.index.snapshot_time()?;
        let Some(start) = flow_start(self.flow) else {
            self.step(Step::Age(Age::Unknown));
            return Some(KeepReason::UnknownAge);
        };
        if start.as_nanosecond() + self.skew() >= snap.as_nanosecond() {
            self.step(Step::NewerThanSnapshot);
            return Some(KeepReason::NewerThanSnapshot);
        }
        None
    }

    /// Row 10 (or healthy): UDP to an endpoint still listed but not serving. kube-proxy removes
    /// such entries once the port has a serving endpoint (pkg/proxy/conntrack/cleanup.go), so the
    /// next datagram is DNAT'd to a serving pod; without one it keeps them (nowhere better to
    /// send them), and so do we.
    fn not_serving(&mut self, fm: &FrontendMatch<'_>, protocol: Protocol) {
        let family = IpFamily::of(&self.flow.reply.src);
        let serving = self.index.slices_of(&fm.service.key).any(|s| {
            s.family == family
                && s.port_for(&fm.port.name, protocol).is_some()
                && s.endpoints().any(|e| e.conditions.serving())
        });
        self.step(Step::ServingEndpoints(serving));
        if !serving {
            return self.verdict(VerdictKind::Healthy);
        }
        self.verdict(VerdictKind::NotServing);
        self.v.evidence.insert(Evidence::Udp);
        self.decide(protocol, true, false);
    }

    /// Sets `removable` from the table's answer (`table_allows`) and the policy.
    /// `needs_absence`: the row relies on the backend's absence from the slices, which proves
    /// nothing for Services whose endpoints are not the EndpointSlice controller's Pods.
    fn decide(&mut self, protocol: Protocol, table_allows: bool, needs_absence: bool) {
        let svc = self.service;
        let is_api_server = svc.is_some_and(Service::is_api_server);
        let unmanaged = needs_absence
            && svc.is_some_and(|s| {
                let tomb_unmanaged = self
                    .v
                    .backend
                    .and_then(|b| self.index.tombstones().get(&s.key, &b.ip))
                    .is_some_and(|t| !t.managed);
                !s.has_selector || self.index.proves_nothing(&s.key) || tomb_unmanaged
            });
        let unjudged = self.unjudged.filter(|_| needs_absence);
        // The operator's override: the Service's annotation, else its Namespace's
        // (`Index::effective_mode`). Traced whenever one applies, so `explain` says which object
        // set it, even when it is `sweep` or another reason keeps the flow first.
        let mode = svc.and_then(|s| self.index.effective_mode(s));
        if let Some(m) = mode {
            self.step(Step::Mode(m));
        }
        let keep = if let Some(why) = unjudged {
            Some(why)
        } else if !table_allows {
            Some(KeepReason::NoEvidence)
        } else if !self.policy.allows_zone(self.flow.zone) {
            Some(KeepReason::Zone)
        } else if !self.policy.protocols.contains(protocol) {
            Some(KeepReason::Protocol)
        } else if !self
            .policy
            .allows_namespace(svc.map(|s| s.key.namespace.as_str()))
        {
            Some(KeepReason::Namespace)
        } else if mode.is_some_and(|m| m.mode.keeps()) {
            Some(KeepReason::Annotation)
        } else if is_api_server && !self.policy.include_unmanaged {
            Some(KeepReason::ApiServer)
        } else if unmanaged && !self.policy.include_unmanaged {
            Some(KeepReason::Unmanaged)
        } else {
            None
        };
        self.v.removable = keep.is_none();
        self.v.kept_because = keep;
    }
}

fn service_ref(fm: &FrontendMatch<'_>) -> ServiceRef {
    ServiceRef {
        namespace: fm.service.key.namespace.clone(),
        name: fm.service.key.name.clone(),
        port: fm.port.port,
        port_name: fm.port.name.clone(),
        protocol: fm.port.protocol,
        node_port: match fm.kind {
            FrontendKind::NodePort => fm.port.node_port,
            _ => None,
        },
        frontend: fm.kind,
    }
}
