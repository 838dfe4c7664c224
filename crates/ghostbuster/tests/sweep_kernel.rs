//! The sweep between verdict and delete, against the real kernel (issue #12 §2): a verdict made
//! from a dump must still hold when the delete is sent. Entries are created over ctnetlink in a
//! throwaway namespace, judged as a scan would judge them (a dead backend, half-open), then changed
//! the way a packet would change them before the sweep runs.

mod scan_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ctnetlink::IPPROTO_TCP;
use ctnetlink::{Conntrack, DeleteKey, Filter, Flow, FlowUpdate, NewFlow, Status, TcpState, Tuple};
use ghostbuster::scan::Finding;
use ghostbuster::sweep::{sweep, sweep_with, Outcome, SweepOptions};
use ghostbuster::verdict::{Backend, Evidence, Trace, Verdict, VerdictKind};
use netlab::NetNs;
use scan_support::lab_available;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const BACKEND: &str = "203.0.113.7";

/// A SYN to the Service that kube-proxy DNAT'd to `BACKEND` and that has not been answered.
fn half_open(sport: u16) -> NewFlow {
    NewFlow::established(
        Tuple::ports(ip("192.0.2.2"), sport, ip("198.51.100.10"), 80, IPPROTO_TCP),
        Some((ip(BACKEND), 8080)),
    )
    .with_status(Status::empty())
    .with_timeout(120)
    .with_tcp_state(TcpState::SYN_SENT)
}

/// What the classifier says of a half-open flow to a backend that is nobody's endpoint, with no
/// other evidence: removable because half-open, and for no other reason.
fn judged_half_open(flow: Flow) -> Finding {
    Finding {
        flow,
        verdict: Verdict {
            kind: VerdictKind::EndpointGone,
            evidence: [Evidence::HalfOpen].into_iter().collect(),
            half_open: true,
            removable: true,
            kept_because: None,
            service: None,
            backend: Some(Backend {
                ip: ip(BACKEND),
                port: 8080,
            }),
            now_owned_by: None,
            trace: Trace::default(),
        },
    }
}

fn table(ct: &mut Conntrack) -> Vec<Flow> {
    let mut t = ct.dump_vec(&Filter::default()).unwrap();
    t.sort_by_key(|f| f.orig.sport());
    t
}

/// A throwaway namespace's conntrack table. Field order is drop order: the socket, then the
/// namespace.
struct Table {
    ct: Conntrack,
    _ns: NetNs,
}

impl Table {
    /// A new namespace holding two [`half_open`] flows, from ports 40001 and 40002.
    fn with_two_half_open() -> Table {
        let ns = NetNs::create("swp").unwrap();
        let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
        assert_eq!(
            ct.create(&[half_open(40001), half_open(40002)])
                .unwrap()
                .created,
            2
        );
        Table { ct, _ns: ns }
    }
}

/// The packet that answers a SYN: the entry sees a reply and becomes ESTABLISHED (same entry,
/// same id).
fn gets_its_reply(ct: &mut Conntrack, f: &Flow) {
    let done = ct
        .update(&[FlowUpdate::new(DeleteKey::from(f))
            .with_status(f.status | Status::SEEN_REPLY | Status::ASSURED)
            .with_tcp_state(TcpState::ESTABLISHED)
            .with_timeout(3600)])
        .unwrap();
    assert_eq!(done, vec![None]);
}

/// A half-open flow judged removable at dump time that got its reply before the sweep (while the
/// pod GETs ran, say) is not deleted; its sibling, still half-open, is (proof that the sweep ran).
#[test]
fn a_half_open_flow_answered_after_the_scan_is_not_deleted() {
    if !lab_available("a_half_open_flow_answered_after_the_scan_is_not_deleted") {
        return;
    }
    let mut t = Table::with_two_half_open();
    let ct = &mut t.ct;
    let dumped_at = Instant::now();
    let dumped = table(ct);
    assert_eq!(dumped.len(), 2);
    let findings: Vec<Finding> = dumped.iter().copied().map(judged_half_open).collect();

    gets_its_reply(ct, &dumped[0]);

    let (outcomes, totals, _) = sweep(ct, &findings, false, dumped_at).unwrap();
    assert_eq!(outcomes[1], Outcome::Deleted, "the still half-open sibling");
    assert_eq!(totals.deleted, 1);
    assert_eq!(
        outcomes[0],
        Outcome::Changed,
        "a flow that got its reply after the scan must be kept as changed"
    );
    assert_eq!(totals.changed, 1);
    let left = table(ct);
    assert_eq!(left.len(), 1, "the answered flow must survive");
    assert_eq!(left[0].id, dumped[0].id);
    assert_eq!(left[0].tcp_state, Some(TcpState::ESTABLISHED));
}

/// A verdict older than `max_verdict_age` is not acted on: every removable finding comes back as
/// `stale_verdict`, nothing is deleted; a fresh dump judged again is swept as usual.
#[test]
fn a_verdict_older_than_max_verdict_age_is_returned_for_a_re_dump() {
    if !lab_available("a_verdict_older_than_max_verdict_age_is_returned_for_a_re_dump") {
        return;
    }
    let mut t = Table::with_two_half_open();
    let ct = &mut t.ct;
    let old: Vec<Finding> = table(ct).into_iter().map(judged_half_open).collect();
    let opts = SweepOptions {
        dry_run: false,
        // Dumped six seconds ago (no sleep: the dump time is what the sweep compares).
        dumped_at: Instant::now()
            .checked_sub(Duration::from_secs(6))
            .expect("an uptime of six seconds"),
        max_verdict_age: Duration::from_secs(5),
    };
    let (outcomes, totals, _) = sweep_with(ct, &old, &opts).unwrap();
    assert_eq!(outcomes, vec![Outcome::StaleVerdict; 2]);
    assert_eq!((totals.stale_verdict, totals.deleted), (2, 0));
    assert_eq!(table(ct).len(), 2, "a stale verdict deleted a flow");

    // The caller re-dumps and judges again: now they go.
    let dumped_at = Instant::now();
    let fresh: Vec<Finding> = table(ct).into_iter().map(judged_half_open).collect();
    let (outcomes, totals, _) = sweep(ct, &fresh, false, dumped_at).unwrap();
    assert_eq!(outcomes, vec![Outcome::Deleted; 2]);
    assert_eq!(totals.deleted, 2);
    assert!(table(ct).is_empty());
}
