//! Stripping API objects before they travel: what the index does not read is dropped on arrival
//! (kube-rs' `Event::modify` idea). A Pod is ~25 KB as a k8s-openapi struct and ~1 KB stripped;
//! `managedFields` and `kubectl.kubernetes.io/last-applied-configuration` are often the largest
//! part of any object.

use k8s_openapi::api::core::v1::{NodeStatus, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::Object;

/// The only annotation kept: the per-Service (and per-Namespace) override the agent honours. One
/// definition, in `cluster::service` beside the [`SweepMode`](crate::cluster::SweepMode) it sets,
/// so what is kept and what is read cannot disagree.
pub use crate::cluster::MODE_ANNOTATION;

/// Drops everything of `obj` that the index and the agent never read.
pub fn strip(obj: &mut Object) {
    match obj {
        Object::Service(s) => strip_meta(&mut s.metadata, true),
        Object::EndpointSlice(s) => {
            strip_meta(&mut s.metadata, true);
            for e in &mut s.endpoints {
                e.deprecated_topology = None;
                e.hints = None;
                e.hostname = None;
                e.zone = None;
            }
        }
        Object::Node(n) => {
            strip_meta(&mut n.metadata, false);
            n.spec = None;
            n.status = n.status.take().map(|s| NodeStatus {
                addresses: s.addresses,
                ..NodeStatus::default()
            });
        }
        Object::ServiceCidr(c) => strip_meta(&mut c.metadata, false),
        // Only the mode annotation is read; a Namespace's spec holds only finalizers.
        Object::Namespace(n) => {
            strip_meta(&mut n.metadata, false);
            n.spec = None;
            n.status = None;
        }
        Object::Pod(p) => {
            strip_meta(&mut p.metadata, false);
            p.spec = p.spec.take().map(|s| PodSpec {
                host_network: s.host_network,
                node_name: s.node_name,
                ..PodSpec::default()
            });
            p.status = p.status.take().map(|s| PodStatus {
                phase: s.phase,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                ..PodStatus::default()
            });
        }
    }
}

/// Keeps identity, times and (when `labels`) labels; of the annotations only
/// [`MODE_ANNOTATION`].
fn strip_meta(m: &mut ObjectMeta, labels: bool) {
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    if !labels {
        m.labels = None;
    }
    if let Some(a) = &mut m.annotations {
        a.retain(|k, _| k == MODE_ANNOTATION);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
    use serde_json::json;

    #[test]
    fn keeps_what_the_index_reads_and_the_mode_annotation() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "labels": {"service.kubernetes.io/service-proxy-name": "x"},
                "annotations": {
                    "ghostbuster.io/mode": "report",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let mut o = Object::from(svc);
        strip(&mut o);
        let Object::Service(s) = o else { panic!() };
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(s.metadata.uid.as_deref(), Some("u1"));
        assert!(s.metadata.managed_fields.is_none());
        let a = s.metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[MODE_ANNOTATION], "report");
        assert!(s
            .metadata
            .labels
            .unwrap()
            .contains_key("service.kubernetes.io/service-proxy-name"));
        assert!(s.spec.is_some());

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": {"a": "b"}, "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "hostNetwork": true,
                     "containers": [{"name": "c", "image": "busybox", "env": [{"name": "X", "value": "y"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let mut o = Object::from(pod);
        strip(&mut o);
        let Object::Pod(p) = o else { panic!() };
        assert!(p.metadata.labels.is_none() && p.metadata.annotations.is_none());
        assert!(p.metadata.deletion_timestamp.is_some());
        let spec = p.spec.unwrap();
        assert!(spec.containers.is_empty());
        assert_eq!(spec.host_network, Some(true));
        let status = p.status.unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert!(status.conditions.is_none());
    }

    #[test]
    fn a_namespace_keeps_its_name_and_mode_annotation_only() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {
                "name": "shop", "uid": "u9", "resourceVersion": "12",
                "labels": {"kubernetes.io/metadata.name": "shop"},
                "annotations": {"ghostbuster.io/mode": "off", "owner": "team-a"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }))
        .unwrap();
        let mut o = Object::from(ns);
        strip(&mut o);
        let Object::Namespace(n) = o else { panic!() };
        assert_eq!(n.metadata.name.as_deref(), Some("shop"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("12"));
        assert!(n.metadata.labels.is_none() && n.metadata.managed_fields.is_none());
        let a = n.metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[MODE_ANNOTATION], "off");
        assert!(n.spec.is_none() && n.status.is_none());

        // Without annotations at all: nothing to keep, nothing to fail on.
        let mut o = Object::from(Namespace {
            metadata: ObjectMeta {
                name: Some("bare".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        });
        strip(&mut o);
        let Object::Namespace(n) = o else { panic!() };
        assert!(n.metadata.annotations.is_none());
    }
}
