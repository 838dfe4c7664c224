//! What the classifier says about one flow, and why.
//!
//! A [`Verdict`] is the verdict part of every flow JSON object (`flow_json::FlowRecord` writes it:
//! `verdict`, `evidence`, `half_open`, `removable`, `kept_because`, `service`, `backend`,
//! `now_owned_by`, `reason`; field names are an interface, docs/flow.schema.json). The [`Trace`]
//! lists every row of the decision table the flow passed through, for `ghostbuster explain`.
//! Building a verdict allocates nothing: a scan classifies every entry of the table.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::cluster::{Conditions, EffectiveMode, FrontendKind, ModeSource, Name, Protocol};

/// The decision table's verdicts (issue #3, section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Row 3: the backend is an endpoint of the service port (ready, serving or draining).
    Healthy,
    /// Row 1: not service traffic.
    NotService,
    /// Row 2: a SYN that was never DNAT'd while the Service has ready endpoints (kubernetes#101607).
    MissedDnat,
    /// Row 4: half-open to an endpoint that no longer serves.
    Unanswered,
    /// Row 10: UDP to an endpoint that is still listed but not serving (readiness failing, or
    /// terminating and no longer serving) while the port has serving endpoints: kube-proxy's own
    /// reconciler removes these (pkg/proxy/conntrack/cleanup.go) so the next datagram reaches a
    /// serving pod. TCP/SCTP to such an endpoint are `healthy`: a connection may still finish.
    NotServing,
    /// Row 5: the backend IP is still an endpoint of the service port, on another port.
    PortChanged,
    /// Row 6: the backend IP now belongs to another pod.
    IpReused,
    /// Row 7: the backend is alive but no longer selected (blue/green switch), or a node address.
    Deselected,
    /// Row 8: the backend is nobody's endpoint.
    EndpointGone,
    /// Row 9: DNAT'd to a service CIDR address whose Service is gone (kubernetes#141371).
    ServiceGone,
}

impl VerdictKind {
    pub const ALL: [VerdictKind; 10] = [
        VerdictKind::Healthy,
        VerdictKind::NotService,
        VerdictKind::MissedDnat,
        VerdictKind::Unanswered,
        VerdictKind::NotServing,
        VerdictKind::PortChanged,
        VerdictKind::IpReused,
        VerdictKind::Deselected,
        VerdictKind::EndpointGone,
        VerdictKind::ServiceGone,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Healthy => "healthy",
            VerdictKind::NotService => "not_service",
            VerdictKind::MissedDnat => "missed_dnat",
            VerdictKind::Unanswered => "unanswered",
            VerdictKind::NotServing => "not_serving",
            VerdictKind::PortChanged => "port_changed",
            VerdictKind::IpReused => "ip_reused",
            VerdictKind::Deselected => "deselected",
            VerdictKind::EndpointGone => "endpoint_gone",
            VerdictKind::ServiceGone => "service_gone",
        }
    }

    /// Every verdict but `healthy` and `not_service`: the flows a report lists.
    pub const fn is_stale(self) -> bool {
        !matches!(self, VerdictKind::Healthy | VerdictKind::NotService)
    }

    /// The row of the decision table.
    pub const fn row(self) -> u8 {
        match self {
            VerdictKind::NotService => 1,
            VerdictKind::MissedDnat => 2,
            VerdictKind::Healthy => 3,
            VerdictKind::Unanswered => 4,
            VerdictKind::PortChanged => 5,
            VerdictKind::IpReused => 6,
            VerdictKind::Deselected => 7,
            VerdictKind::EndpointGone => 8,
            VerdictKind::ServiceGone => 9,
            VerdictKind::NotServing => 10,
        }
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backend is believed gone (field `evidence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// The flow never saw a reply: no connection exists to break.
    HalfOpen,
    /// UDP: kube-proxy itself removes such flows (pkg/proxy/conntrack/cleanup.go).
    Udp,
    /// Pods were given and no live pod has the IP (and the flow predates the snapshot).
    PodAbsent,
    /// The pod the Service last had at the IP is confirmed gone (404, another uid or another IP)
    /// and another Service's endpoint, a pod with another uid, holds the IP now.
    PodReplaced,
    /// The pod now holding the IP was created after the flow started.
    PodCreatedAfterFlow,
    /// Nothing but the snapshot's silence: not enough for TCP/SCTP without `--trust-snapshot`.
    SnapshotOnly,
    /// The agent saw the endpoint leave every slice of the Service (a tombstone).
    EndpointRemoved,
    /// The API server (a GET, or the pod watch) confirmed the pod is gone: 404, another uid, or
    /// another IP. Leaving the slice while terminating is not enough: a draining pod whose labels
    /// change leaves it alive.
    PodGone,
}

impl Evidence {
    pub const ALL: [Evidence; 8] = [
        Evidence::HalfOpen,
        Evidence::Udp,
        Evidence::PodAbsent,
        Evidence::PodReplaced,
        Evidence::PodCreatedAfterFlow,
        Evidence::SnapshotOnly,
        Evidence::EndpointRemoved,
        Evidence::PodGone,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Evidence::HalfOpen => "half_open",
            Evidence::Udp => "udp",
            Evidence::PodAbsent => "pod_absent",
            Evidence::PodReplaced => "pod_replaced",
            Evidence::PodCreatedAfterFlow => "pod_created_after_flow",
            Evidence::SnapshotOnly => "snapshot_only",
            Evidence::EndpointRemoved => "endpoint_removed",
            Evidence::PodGone => "pod_gone",
        }
    }

    /// Enough on its own to remove a flow whose backend is not an endpoint any more.
    /// `endpoint_removed` is not: the agent must still confirm the pod is gone.
    pub const fn suffices(self) -> bool {
        !matches!(self, Evidence::SnapshotOnly | Evidence::EndpointRemoved)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Evidence`]; serializes as a list of names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EvidenceSet(u16);

impl EvidenceSet {
    pub fn insert(&mut self, e: Evidence) {
        self.0 |= e.bit();
    }

    pub fn contains(self, e: Evidence) -> bool {
        self.0 & e.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Evidence> {
        Evidence::ALL.into_iter().filter(move |e| self.contains(*e))
    }

    /// Some member is enough on its own ([`Evidence::suffices`]).
    pub fn suffices(self) -> bool {
        self.iter().any(Evidence::suffices)
    }
}

impl FromIterator<Evidence> for EvidenceSet {
    fn from_iter<I: IntoIterator<Item = Evidence>>(iter: I) -> Self {
        let mut s = EvidenceSet::default();
        for e in iter {
            s.insert(e);
        }
        s
    }
}

impl Serialize for EvidenceSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for e in self.iter() {
            seq.serialize_element(&e)?;
        }
        seq.end()
    }
}

/// Why a stale flow is kept (field `kept_because`, null when removable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// TCP/SCTP with only the snapshot's word for it (`--trust-snapshot`, or give Pods / enable
    /// `nf_conntrack_timestamp` for evidence).
    NoEvidence,
    /// The backend pod is alive (deselected / port changed) and the flow is TCP/SCTP
    /// (`--include-deselected`).
    LivePod,
    /// The flow started after the snapshot was taken, or within `--clock-skew` of it: the
    /// snapshot says nothing about it.
    NewerThanSnapshot,
    /// Not in zone 0 (kube-proxy's).
    Zone,
    /// Protocol not in `--protocols`.
    Protocol,
    /// Namespace excluded by `--namespace` / `--exclude-namespace`.
    Namespace,
    /// `default/kubernetes`: the API servers.
    ApiServer,
    /// The Service's endpoints are not the EndpointSlice controller's Pods.
    Unmanaged,
    /// The `ghostbuster.io/mode` annotation that applies is `report` or `off`: the Service's own,
    /// else its Namespace's (the trace's [`Step::Mode`] says which).
    Annotation,
    /// The flow's start is unknown (`nf_conntrack_timestamp=0`): unknown is not old. A half-open
    /// flow is judged only once known to be older than `--min-age`, and absence from a snapshot
    /// is evidence only for a flow known to be older than the snapshot.
    UnknownAge,
    /// The API server listed no pod at the backend IP, but the flow started after it was asked,
    /// or within `--clock-skew` of it: a pod may have been created at the IP since.
    NewerThanApiAnswer,
}

impl KeepReason {
    /// Every reason, in declaration order: docs/flow.schema.json's `kept_because` enum is checked
    /// against it.
    pub const ALL: [KeepReason; 11] = [
        KeepReason::NoEvidence,
        KeepReason::LivePod,
        KeepReason::NewerThanSnapshot,
        KeepReason::Zone,
        KeepReason::Protocol,
        KeepReason::Namespace,
        KeepReason::ApiServer,
        KeepReason::Unmanaged,
        KeepReason::Annotation,
        KeepReason::UnknownAge,
        KeepReason::NewerThanApiAnswer,
    ];

    pub const fn explain(self) -> &'static str {
        match self {
            KeepReason::NoEvidence => {
                "only the snapshot says the backend is gone; add Pods to the export, enable \
                 nf_conntrack_timestamp, or pass --trust-snapshot"
            }
            KeepReason::LivePod => "the backend pod is alive; pass --include-deselected to remove",
            KeepReason::NewerThanSnapshot => {
                "the flow started after the snapshot was taken, or within --clock-skew of it"
            }
            KeepReason::Zone => "not in conntrack zone 0",
            KeepReason::Protocol => "protocol not selected by --protocols",
            KeepReason::Namespace => "namespace not selected by --namespace/--exclude-namespace",
            KeepReason::ApiServer => "default/kubernetes (the API servers) is never swept",
            KeepReason::Annotation => {
                "the ghostbuster.io/mode annotation of the Service or of its Namespace says report \
                 or off"
            }
            KeepReason::Unmanaged => {
                "the Service's endpoints are not Pods of the EndpointSlice controller"
            }
            KeepReason::UnknownAge => {
                "the flow's age is unknown (no conntrack timestamps), so neither --min-age nor the \
                 snapshot can judge it; turn timestamps on with `sysctl -w \
                 net.netfilter.nf_conntrack_timestamp=1` (flows opened afterwards carry a start \
                 time)"
            }
            KeepReason::NewerThanApiAnswer => {
                "no pod held the backend IP when the API server was asked, but the flow started \
                 after that (or within --clock-skew of it); the agent asks again"
            }
        }
    }
}

/// The Service port a flow was sent to (field `service`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRef {
    pub namespace: Name,
    pub name: Name,
    pub port: u16,
    pub port_name: Name,
    pub protocol: Protocol,
    /// Set when the flow came in through the NodePort.
    pub node_port: Option<u16>,
    pub frontend: FrontendKind,
}

/// The flow's backend: the reply source (field `backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

/// Who holds the backend's IP now (field `now_owned_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub namespace: Option<Name>,
    pub service: Option<Name>,
    pub pod: Option<Name>,
}

/// The classifier's answer for one flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub evidence: EvidenceSet,
    /// Never saw a reply (TCP SYN_SENT / `[UNREPLIED]`).
    pub half_open: bool,
    /// `sweep` may remove it (table and policy agree).
    pub removable: bool,
    /// Why a stale flow is not removable.
    pub kept_because: Option<KeepReason>,
    pub service: Option<ServiceRef>,
    pub backend: Option<Backend>,
    pub now_owned_by: Option<Owner>,
    pub trace: Trace,
}

impl Verdict {
    /// One line: the row that decided, the observation that led to it, and why a stale flow is
    /// kept.
    pub fn reason(&self) -> String {
        let steps = self.trace.steps();
        let row = steps.iter().rposition(|s| matches!(s, Step::Row(_)));
        let mut out = match row {
            Some(0) | None => format!("row {}: {}", self.kind.row(), self.kind),
            Some(i) => format!("{}: {}", steps[i], steps[i - 1]),
        };
        if let Some(k) = self.kept_explanation() {
            out.push_str("; kept: ");
            out.push_str(&k);
        }
        out
    }

    /// Why a stale flow is kept, in words: [`KeepReason::explain`], except that a flow kept by
    /// the mode annotation names the object the annotation is on (the trace knows it).
    pub fn kept_explanation(&self) -> Option<Cow<'static, str>> {
        let k = self.kept_because?;
        let mode = self.trace.steps().iter().find_map(|s| match s {
            Step::Mode(m) => Some(*m),
            _ => None,
        });
        Some(match (k, mode) {
            (KeepReason::Annotation, Some(m)) => Cow::Owned(match m.from {
                ModeSource::Service => {
                    format!(
                        "the Service's ghostbuster.io/mode annotation says {}",
                        m.mode
                    )
                }
                ModeSource::Namespace => format!(
                    "its Namespace's ghostbuster.io/mode annotation says {} (the Service has \
                     none)",
                    m.mode
                ),
            }),
            _ => Cow::Borrowed(k.explain()),
        })
    }
}

/// How a flow's age compared with `--min-age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Age {
    /// No start time (`nf_conntrack_timestamp=0`).
    Unknown,
    /// At least `--min-age` old.
    Old { secs: u64 },
    /// Younger than `--min-age` (or started in the future: clock skew).
    Young { secs: i64, min_secs: u64 },
}

/// One observation the classifier made on the way to its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// IP protocol without Service frontends (only TCP, UDP and SCTP have them).
    OtherProtocol(u8),
    Frontend(FrontendKind),
    NoFrontend,
    InServiceCidr(bool),
    /// The conntrack status bit DST_NAT.
    Dnat(bool),
    /// Reply source differs from the original destination.
    Nated(bool),
    HalfOpen(bool),
    ReadyEndpoints(bool),
    Age(Age),
    /// The backend is in E(S), with these merged conditions.
    InEndpoints(Conditions),
    NotInEndpoints,
    /// The backend IP is in E(S) with this other port.
    OtherPort(u16),
    /// The backend IP is listed for the Service, but no slice names the Service port.
    PortUnresolved,
    NodeAddress,
    /// The destination is an address of a Service kube-proxy does not program (another proxy's).
    OtherProxy,
    /// The Service port has serving endpoints in this family (a UDP flow to one that does not
    /// serve is re-routed by removing it).
    ServingEndpoints(bool),
    OtherServiceEndpoint,
    LivePod,
    PodCreatedAfterFlow,
    PodReplaced,
    NobodysEndpoint,
    /// Pods were given and none alive has the IP.
    NoPod,
    Tombstone {
        terminating: bool,
        pod_gone: bool,
    },
    NewerThanSnapshot,
    /// The API server listed no pod at the backend IP, asked after the flow began.
    ApiNoPod,
    /// The agent never saw this endpoint leave (no tombstone): UDP alone proves nothing (its
    /// view may lag kube-proxy's) until this node's pod watch saw the pod at the IP go
    /// (`true`) or the API server says no pod holds it.
    UntrackedUdp {
        pod_left: bool,
    },
    /// The API server listed no pod at the backend IP, asked before the flow began (or within
    /// `--clock-skew` of it): no evidence for this flow.
    NewerThanApiAnswer,
    /// A `ghostbuster.io/mode` annotation applies to the Service, and from where.
    Mode(EffectiveMode),
    /// The decision-table row that gave the verdict.
    Row(VerdictKind),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        match *self {
            Step::OtherProtocol(p) => {
                write!(
                    f,
                    "IP protocol {p} has no Service frontends (only TCP, UDP, SCTP)"
                )
            }
            Step::Frontend(k) => write!(f, "original destination is a Service frontend ({k:?})"),
            Step::NoFrontend => f.write_str("original destination matches no Service frontend"),
            Step::InServiceCidr(b) => {
                write!(
                    f,
                    "destination is {}inside a service CIDR",
                    yes_no(b, "", "not ")
                )
            }
            Step::Dnat(b) => write!(f, "status {} DST_NAT", yes_no(b, "has", "lacks")),
            Step::Nated(b) => write!(
                f,
                "reply source {} the original destination ({})",
                yes_no(b, "differs from", "equals"),
                yes_no(b, "NATed", "not NATed")
            ),
            Step::HalfOpen(b) => f.write_str(yes_no(
                b,
                "half-open: never saw a reply",
                "saw a reply: a connection exists",
            )),
            Step::ReadyEndpoints(b) => write!(
                f,
                "the service port has {}ready endpoints in this family",
                yes_no(b, "", "no ")
            ),
            Step::Age(Age::Unknown) => {
                f.write_str("age unknown (no nf_conntrack_timestamp): not known to be old")
            }
            Step::Age(Age::Old { secs }) => write!(f, "{secs}s old, not younger than --min-age"),
            Step::Age(Age::Young { secs, min_secs }) => {
                write!(
                    f,
                    "{secs}s old, younger than --min-age {min_secs}s: not judged"
                )
            }
            Step::InEndpoints(c) => write!(
                f,
                "backend is an endpoint of the service port (ready: {}, serving: {}, \
                 terminating: {})",
                c.ready(),
                c.serving(),
                c.terminating()
            ),
            Step::NotInEndpoints => {
                f.write_str("backend is not an endpoint of the service port in any slice")
            }
            Step::OtherPort(p) => {
                write!(
                    f,
                    "backend IP is an endpoint of the service port on port {p}"
                )
            }
            Step::PortUnresolved => f.write_str(
                "backend IP is listed for the Service but no slice resolves the port name: kept",
            ),
            Step::NodeAddress => f.write_str(
                "backend IP is a node address (host network): never evidence of reuse or absence",
            ),
            Step::OtherProxy => f.write_str(
                "destination is an address of a Service that kube-proxy does not program \
                 (service-proxy-name or headless label): another proxy's flow",
            ),
            Step::ServingEndpoints(b) => write!(
                f,
                "the service port has {}serving endpoints in this family",
                yes_no(b, "", "no ")
            ),
            Step::OtherServiceEndpoint => {
                f.write_str("backend IP is now an endpoint of another service")
            }
            Step::LivePod => f.write_str("backend IP belongs to a live pod"),
            Step::PodCreatedAfterFlow => f.write_str(
                "the pod holding the IP was created after the flow started (beyond --clock-skew)",
            ),
            Step::PodReplaced => f.write_str(
                "the Service's last pod at the IP is confirmed gone and another Service's pod \
                 (another uid) holds the IP",
            ),
            Step::NobodysEndpoint => f.write_str("backend IP is nobody's endpoint"),
            Step::NoPod => f.write_str("no live pod has the backend IP"),
            Step::Tombstone {
                terminating,
                pod_gone,
            } => write!(
                f,
                "the endpoint left every slice of the Service{}{}",
                yes_no(terminating, " while terminating", ""),
                yes_no(
                    pod_gone,
                    "; its pod is confirmed gone",
                    "; its pod is not confirmed gone"
                )
            ),
            Step::NewerThanSnapshot => f.write_str(
                "the flow started after the snapshot, or within --clock-skew of it: the snapshot \
                 cannot judge it",
            ),
            Step::ApiNoPod => f.write_str(
                "the API server listed no pod at the backend IP, asked after the flow began \
                 (beyond --clock-skew)",
            ),
            Step::UntrackedUdp { pod_left: true } => f.write_str(
                "the agent never saw this endpoint leave, but this node's pod watch saw the pod \
                 at the backend IP deleted: UDP to it is gone",
            ),
            Step::UntrackedUdp { pod_left: false } => f.write_str(
                "the agent never saw this endpoint leave (no tombstone) and no pod at the IP was \
                 seen going: UDP alone is not evidence (the agent asks the API server who holds \
                 the IP)",
            ),
            Step::NewerThanApiAnswer => f.write_str(
                "the API server listed no pod at the backend IP, but the flow began after it was \
                 asked (or within --clock-skew of it): not evidence for this flow",
            ),
            Step::Mode(m) => match (m.from, m.overrides) {
                (ModeSource::Service, None) => write!(
                    f,
                    "mode {}: from the Service's ghostbuster.io/mode annotation",
                    m.mode
                ),
                (ModeSource::Service, Some(ns)) => write!(
                    f,
                    "mode {}: from the Service's ghostbuster.io/mode annotation, which wins over \
                     its Namespace's ({ns})",
                    m.mode
                ),
                (ModeSource::Namespace, _) => write!(
                    f,
                    "mode {}: from the Namespace's ghostbuster.io/mode annotation (the Service \
                     has none)",
                    m.mode
                ),
            },
            Step::Row(v) => write!(f, "row {}: {}", v.row(), v),
        }
    }
}

/// The steps of one classification, stored inline (no allocation per flow).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    steps: [Step; Trace::CAPACITY],
    len: u8,
}

impl Trace {
    const CAPACITY: usize = 16;

    pub fn push(&mut self, step: Step) {
        if let Some(slot) = self.steps.get_mut(usize::from(self.len)) {
            *slot = step;
            self.len += 1;
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps[..usize::from(self.len)]
    }

    /// The decision-table rows the flow reached.
    pub fn rows(&self) -> impl Iterator<Item = VerdictKind> + '_ {
        self.steps().iter().filter_map(|s| match s {
            Step::Row(v) => Some(*v),
            _ => None,
        })
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            steps: [Step::NoFrontend; Trace::CAPACITY],
            len: 0,
        }
    }
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps()).finish()
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps().iter().enumerate() {
            writeln!(f, "{:>2}. {s}", i + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case_strings() {
        for v in VerdictKind::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for e in Evidence::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        let set: EvidenceSet = [Evidence::Udp, Evidence::HalfOpen].into_iter().collect();
        assert_eq!(
            serde_json::to_value(set).unwrap(),
            serde_json::json!(["half_open", "udp"])
        );
        assert_eq!(
            serde_json::to_value(KeepReason::NewerThanSnapshot).unwrap(),
            "newer_than_snapshot"
        );
    }

    #[test]
    fn trace_is_bounded() {
        let mut t = Trace::default();
        for _ in 0..40 {
            t.push(Step::NoFrontend);
        }
        assert_eq!(t.steps().len(), Trace::CAPACITY);
    }
}
