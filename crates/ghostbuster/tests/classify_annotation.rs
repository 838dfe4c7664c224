//! The override `ghostbuster.io/mode`, on a Service or on its Namespace: `report` and `off` keep
//! every flow of the Service (reported with `kept_because: annotation`), `sweep` or no annotation
//! change nothing. The Service's own annotation wins over its Namespace's, and the trace says
//! which one applied.

mod classify_support;

use classify_support::*;
use ghostbuster::classify::classify;
use ghostbuster::cluster::{EffectiveMode, Event, ModeSource, Object, SweepMode};
use ghostbuster::flow_json::FlowRecord;
use ghostbuster::policy::Policy;
use ghostbuster::scan::Finding;
use ghostbuster::verdict::{KeepReason, Step, Verdict, VerdictKind};
use k8s_openapi::api::core::v1::Namespace;
use serde_json::json;

fn namespace(name: &str, mode: Option<&str>) -> Namespace {
    let annotations = match mode {
        Some(m) => {
            json!({"ghostbuster.io/mode": m, "scheduler.alpha.kubernetes.io/node-selector": "x"})
        }
        None => json!(null),
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("uid-ns-{name}"), "annotations": annotations,
                     "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    }))
    .unwrap()
}

/// The flow of [`judge_with_mode`], with the Service annotated `service` and its Namespace
/// `namespace` (`None`: no annotation; the Namespace object exists either way).
fn judge_with_modes(service_mode: Option<&str>, namespace_mode: Option<&str>) -> Verdict {
    let (mut index, f) = setup(service_mode);
    index
        .apply(
            Event::Apply(Object::from(namespace("ns", namespace_mode))),
            t(NOW),
        )
        .unwrap();
    classify(&f, &index, &Policy::default(), t(NOW))
}

fn mode_step(v: &Verdict) -> Option<EffectiveMode> {
    v.trace.steps().iter().find_map(|s| match s {
        Step::Mode(m) => Some(*m),
        _ => None,
    })
}

fn judge_with_mode(mode: Option<&str>) -> Verdict {
    let (index, f) = setup(mode);
    classify(&f, &index, &Policy::default(), t(NOW))
}

fn setup(mode: Option<&str>) -> (ghostbuster::cluster::Index, ctnetlink::Flow) {
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
    (index, f)
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

#[test]
fn a_namespace_annotation_applies_to_services_without_their_own() {
    for m in ["off", "report", "Something-Unknown", " OFF "] {
        let v = judge_with_modes(None, Some(m));
        assert_eq!(v.kind, VerdictKind::EndpointGone, "{m}");
        assert!(!v.removable, "{m}");
        assert_eq!(v.kept_because, Some(KeepReason::Annotation), "{m}");
        let step = mode_step(&v).expect("the trace names the mode");
        assert_eq!(step.from, ModeSource::Namespace, "{m}");
        assert!(
            v.reason()
                .contains("its Namespace's ghostbuster.io/mode annotation says"),
            "{}",
            v.reason()
        );
    }
    let v = judge_with_modes(None, Some("off"));
    assert_eq!(mode_step(&v).unwrap().mode, SweepMode::Off);
    assert!(v.trace.to_string().contains(
        "mode off: from the Namespace's ghostbuster.io/mode annotation (the Service has none)"
    ));
    let v = judge_with_modes(None, Some("report"));
    assert_eq!(mode_step(&v).unwrap().mode, SweepMode::Report);
    // JSON: the same `kept_because` as a Service's annotation; `reason` names the Namespace.
    let (_, flow) = setup(None);
    let finding = Finding { flow, verdict: v };
    let json = serde_json::to_value(FlowRecord::new(&finding)).unwrap();
    assert_eq!(json["kept_because"], "annotation");
    assert!(json["reason"].as_str().unwrap().ends_with(
        "kept: its Namespace's ghostbuster.io/mode annotation says report (the Service has none)"
    ));

    // `sweep` on the Namespace, or a Namespace without the annotation: the default.
    let v = judge_with_modes(None, Some("sweep"));
    assert!(v.removable && v.kept_because.is_none(), "{v:?}");
    assert_eq!(mode_step(&v).unwrap().from, ModeSource::Namespace);
    let v = judge_with_modes(None, None);
    assert!(v.removable, "{v:?}");
    assert_eq!(mode_step(&v), None);
}

#[test]
fn the_services_annotation_wins_over_its_namespaces() {
    // A Service opted back in, in a Namespace switched off: swept.
    let v = judge_with_modes(Some("sweep"), Some("off"));
    assert!(v.removable, "{v:?}");
    assert_eq!(
        mode_step(&v),
        Some(EffectiveMode {
            mode: SweepMode::Sweep,
            from: ModeSource::Service,
            overrides: Some(SweepMode::Off),
        })
    );
    assert!(
        v.trace
            .to_string()
            .contains("which wins over its Namespace's (off)"),
        "{}",
        v.trace
    );
    // A Service held back in a sweeping Namespace: kept, and the reason names the Service.
    for (svc, ns) in [
        ("report", Some("sweep")),
        ("off", None),
        ("off", Some("report")),
    ] {
        let v = judge_with_modes(Some(svc), ns);
        assert!(!v.removable, "{svc} {ns:?}");
        assert_eq!(v.kept_because, Some(KeepReason::Annotation));
        assert_eq!(mode_step(&v).unwrap().from, ModeSource::Service);
        assert!(
            v.reason().ends_with(&format!(
                "kept: the Service's ghostbuster.io/mode annotation says {svc}"
            )),
            "{}",
            v.reason()
        );
    }
}

#[test]
fn deleting_the_namespace_restores_the_default() {
    let (mut index, f) = setup(None);
    let ns = Object::from(namespace("ns", Some("off")));
    index.apply(Event::Apply(ns.clone()), t(NOW)).unwrap();
    assert!(!classify(&f, &index, &Policy::default(), t(NOW)).removable);
    index.apply(Event::Delete(ns), t(NOW)).unwrap();
    let v = classify(&f, &index, &Policy::default(), t(NOW));
    assert!(v.removable, "{v:?}");
}
