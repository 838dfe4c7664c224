//! The lab's state as real Kubernetes objects (`kubectl get -o json` style `List` of Services,
//! EndpointSlices and Pods), so ghostbuster reads a lab exactly as it reads a cluster dump.
//! UIDs are derived from names plus a salt: fixtures are reproducible, yet a pod re-created under
//! the same name gets a new UID, as in Kubernetes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::chain_name::sha256;
use crate::model::{Protocol, Service};
use crate::node::NODE_NAME;
use crate::plan;

/// What a Pod object is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObject {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `status.podIPs`, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339).
    pub creation_timestamp: String,
    /// Container ports.
    pub ports: Vec<(u16, Protocol)>,
}

/// A UUID-shaped id derived from `parts` (stable across runs).
pub fn uid(parts: &[&str]) -> String {
    let digest = sha256(parts.join("\u{0}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Formats a time as `2024-05-01T12:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Now, as [`rfc3339`].
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The Service object.
pub fn service_object(svc: &Service, created: &str) -> Value {
    let svc_uid = uid(&["Service", &svc.namespace, &svc.name]);
    let mut ports = Vec::new();
    for p in &svc.ports {
        let mut port = json!({
            "name": p.name,
            "protocol": p.protocol.kubernetes(),
            "port": p.port,
            "targetPort": p.target_port,
        });
        if let (Some(node_port), Some(obj)) = (p.node_port, port.as_object_mut()) {
            obj.insert("nodePort".into(), json!(node_port));
        }
        ports.push(port);
    }
    let families: Vec<&str> = svc.cluster_ips.iter().map(family).collect();
    let policy = if families.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut spec = Map::new();
    spec.insert(
        "type".into(),
        json!(if svc.is_node_port() {
            "NodePort"
        } else {
            "ClusterIP"
        }),
    );
    if let Some(first) = svc.cluster_ips.first() {
        spec.insert("clusterIP".into(), json!(first.to_string()));
    }
    spec.insert(
        "clusterIPs".into(),
        json!(svc
            .cluster_ips
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()),
    );
    spec.insert("ipFamilies".into(), json!(families));
    spec.insert("ipFamilyPolicy".into(), json!(policy));
    spec.insert("ports".into(), json!(ports));
    spec.insert("selector".into(), json!({ "app": svc.name }));
    spec.insert("internalTrafficPolicy".into(), json!("Cluster"));
    if svc.is_node_port() {
        spec.insert("externalTrafficPolicy".into(), json!("Cluster"));
    }
    if !svc.external_ips.is_empty() {
        spec.insert(
            "externalIPs".into(),
            json!(svc
                .external_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()),
        );
    }
    match svc.session_affinity {
        Some(timeout) => {
            spec.insert("sessionAffinity".into(), json!("ClientIP"));
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({ "clientIP": { "timeoutSeconds": timeout } }),
            );
        }
        None => {
            spec.insert("sessionAffinity".into(), json!("None"));
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "uid": svc_uid,
            "resourceVersion": "1",
            "creationTimestamp": created,
            "labels": { "app": svc.name },
        },
        "spec": spec,
        "status": { "loadBalancer": {} },
    })
}

/// One EndpointSlice per address family that has endpoints (or, for a service without any, one
/// empty slice of its first family, as the controller keeps). `pods` supply targetRef UIDs.
pub fn endpoint_slice_objects(svc: &Service, pods: &[PodObject], created: &str) -> Vec<Value> {
    let svc_uid = uid(&["Service", &svc.namespace, &svc.name]);
    let mut families: Vec<bool> = Vec::new();
    for ip in svc
        .cluster_ips
        .iter()
        .chain(svc.endpoints.iter().map(|e| &e.ip))
    {
        if !families.contains(&ip.is_ipv6()) {
            families.push(ip.is_ipv6());
        }
    }
    let mut slices = Vec::new();
    for v6 in families {
        let endpoints: Vec<Value> = svc
            .endpoints
            .iter()
            .filter(|e| e.ip.is_ipv6() == v6)
            .map(|e| {
                let mut ep = json!({
                    "addresses": [e.ip.to_string()],
                    "conditions": {
                        "ready": e.ready,
                        "serving": e.serving,
                        "terminating": e.terminating,
                    },
                    "nodeName": NODE_NAME,
                });
                if let (Some(pod), Some(obj)) = (&e.pod, ep.as_object_mut()) {
                    let pod_uid = pods
                        .iter()
                        .find(|p| &p.name == pod && p.namespace == svc.namespace)
                        .map(|p| p.uid.clone())
                        .unwrap_or_else(|| uid(&["Pod", &svc.namespace, pod]));
                    obj.insert(
                        "targetRef".into(),
                        json!({
                            "kind": "Pod",
                            "namespace": svc.namespace,
                            "name": pod,
                            "uid": pod_uid,
                        }),
                    );
                }
                ep
            })
            .collect();
        let family_name = if v6 { "IPv6" } else { "IPv4" };
        let suffix = &uid(&["EndpointSlice", &svc.namespace, &svc.name, family_name])[..5];
        let name = format!("{}-{suffix}", svc.name);
        let ports: Vec<Value> = svc
            .ports
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "protocol": p.protocol.kubernetes(),
                    "port": p.target_port,
                })
            })
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "generateName": format!("{}-", svc.name),
                "namespace": svc.namespace,
                "uid": uid(&["EndpointSlice", &svc.namespace, &name]),
                "resourceVersion": "1",
                "creationTimestamp": created,
                "labels": {
                    "kubernetes.io/service-name": svc.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": svc.name,
                    "uid": svc_uid,
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "addressType": family_name,
            "endpoints": endpoints,
            "ports": ports,
        }));
    }
    slices
}

/// The Pod object.
pub fn pod_object(pod: &PodObject) -> Value {
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|(port, proto)| json!({ "containerPort": port, "protocol": proto.kubernetes() }))
        .collect();
    let host_ip = plan::NODE_IPV4.to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "resourceVersion": "1",
            "creationTimestamp": pod.creation_timestamp,
            "labels": pod.labels,
        },
        "spec": {
            "nodeName": pod.node_name,
            "containers": [{ "name": "app", "image": "netlab.invalid/server:1", "ports": ports }],
        },
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": pod.ips.first().map(|ip| ip.to_string()),
            "podIPs": pod.ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect::<Vec<_>>(),
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

/// A `kind: List` of the services, their EndpointSlices and the pods, as `kubectl get -o json`
/// prints it.
pub fn list(services: &[Service], pods: &[PodObject], created: &str) -> Value {
    let mut items = Vec::new();
    for svc in services {
        items.push(service_object(svc, created));
    }
    for svc in services {
        items.extend(endpoint_slice_objects(svc, pods, created));
    }
    for pod in pods {
        items.push(pod_object(pod));
    }
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": "" },
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServicePort};

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn uid_is_uuid_shaped_and_stable() {
        let a = uid(&["Pod", "default", "web-1"]);
        assert_eq!(a.len(), 36);
        assert_eq!(a, uid(&["Pod", "default", "web-1"]));
        assert_ne!(a, uid(&["Pod", "default", "web-2"]));
    }

    #[test]
    fn slices_carry_port_names_and_target_refs() {
        let svc = Service::new("shop", "web")
            .cluster_ip(crate::plan::vip_v4(10))
            .port(ServicePort::tcp("http", 80, 8080))
            .endpoint(Endpoint::ready("203.0.113.11".parse().unwrap(), "web-1"));
        let slices = endpoint_slice_objects(&svc, &[], "2024-01-01T00:00:00Z");
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s["ports"][0]["name"], "http");
        assert_eq!(s["ports"][0]["port"], 8080);
        assert_eq!(s["endpoints"][0]["targetRef"]["name"], "web-1");
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    }
}
