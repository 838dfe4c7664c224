//! The per-Service override `ghostbuster.io/mode`: `report` and `off` keep every flow of the
//! Service (reported with `kept_because: annotation`), `sweep` or no annotation change nothing.

mod classify_support;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::Object;
use ghostbuster::policy::Policy;
use ghostbuster::verdict::{KeepReason, VerdictKind};
use serde_json::json;

fn judge_with_mode(mode: Option<&str>) -> ghostbuster::verdict::Verdict {
    let mut svc = service(
        "ns",
        "dns",
        &["10.96.0.10"],
        json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]),
    );
    if let Some(m) = mode {
        svc.metadata.annotations =
            Some([("ghostbuster.io/mode".to_string(), m.to_string())].into());
    }
    let live = slice(
        "ns",
        "dns",
        "dns-abc",
        vec![ready("10.244.1.5", "dns-a")],
        json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
    );
    let index = index_of(vec![Object::from(svc), Object::from(live)]);
    // A UDP flow to a backend that is nobody's endpoint: removable by default (evidence: udp).
    let f = udp("10.244.2.9", 33000, "10.96.0.10", 53)
        .dnat("10.244.1.99", 5353)
        .build();
    classify(&f, &index, &Policy::default(), t(NOW))
}

#[test]
fn mode_annotation_overrides_removal_but_not_the_verdict() {
    let v = judge_with_mode(None);
    assert_eq!(v.kind, VerdictKind::EndpointGone);
    assert!(v.removable, "{v:?}");
    let v = judge_with_mode(Some("sweep"));
    assert!(v.removable);
    for m in ["report", "off", "something-unknown"] {
        let v = judge_with_mode(Some(m));
        assert_eq!(v.kind, VerdictKind::EndpointGone, "{m}");
        assert!(!v.removable, "{m}");
        assert_eq!(v.kept_because, Some(KeepReason::Annotation), "{m}");
    }
}
