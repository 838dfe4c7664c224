//! Memory of the index at the budget's scale: 10,000 Services / 100,000 endpoints in 64 MiB
//! (issue #3 section 1, issue #4 section 1). Measured with a counting allocator: the bytes the
//! index keeps alive after every API object has been streamed through it and dropped.
//! Run with `--nocapture` to see the numbers.

use std::collections::BTreeMap;

use ghostbuster::cluster::{Index, IndexConfig, Object};
use k8s_openapi::api::core::v1::{
    ObjectReference, Pod, PodIP, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

mod memory_support;

#[global_allocator]
static ALLOC: memory_support::Counting = memory_support::Counting;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const BUDGET: usize = 64 << 20;
/// The index measured 151 bytes an endpoint (services, slices and reverse tables included) when
/// this bound was set: ~15 % of margin.
const MAX_BYTES_PER_ENDPOINT: usize = 175;

fn uuid(kind: u8, i: usize) -> String {
    format!("{kind:02x}{:06x}-9b1d-4c3e-8a7f-{:012x}", i & 0xff_ffff, i)
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn meta(ns: &str, name: &str, uid: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(uid),
        resource_version: Some("123456789".into()),
        creation_timestamp: Some(Time("2025-06-01T10:00:00Z".parse().unwrap())),
        ..ObjectMeta::default()
    }
}

fn namespace(s: usize) -> String {
    format!("team-{:03}", s % 200)
}

fn pod_name(s: usize, e: usize) -> String {
    format!("service-{s:05}-7d9f8b6c4d-{e:05x}")
}

fn pod_ip(s: usize, e: usize) -> String {
    let n = s * ENDPOINTS_PER_SERVICE + e;
    format!("10.{}.{}.{}", 64 + n / 65536, (n / 256) % 256, n % 256)
}

fn service(s: usize) -> Object {
    let name = format!("service-{s:05}");
    let mut m = meta(&namespace(s), &name, uuid(1, s));
    m.labels = labels(&[("app", &name)]);
    let ip = format!("10.96.{}.{}", s / 256, s % 256);
    Object::from(Service {
        metadata: m,
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(9090)),
                    ..ServicePort::default()
                },
            ]),
            selector: labels(&[("app", &name)]),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn slice(s: usize) -> Object {
    let svc = format!("service-{s:05}");
    let ns = namespace(s);
    let mut m = meta(&ns, &format!("{svc}-x7k2p"), uuid(2, s));
    m.labels = labels(&[
        ("kubernetes.io/service-name", &svc),
        (
            "endpointslice.kubernetes.io/managed-by",
            "endpointslice-controller.k8s.io",
        ),
    ]);
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| Endpoint {
            addresses: vec![pod_ip(s, e)],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(format!("node-{:04}", (s + e) % 1000)),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod_name(s, e)),
                namespace: Some(ns.clone()),
                uid: Some(uuid(3, s * ENDPOINTS_PER_SERVICE + e)),
                ..ObjectReference::default()
            }),
            zone: Some("zone-a".into()),
            ..Endpoint::default()
        })
        .collect();
    Object::from(EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: m,
        ports: Some(vec![
            EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
            EndpointPort {
                name: Some("metrics".into()),
                port: Some(9090),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
        ]),
    })
}

fn pod(s: usize, e: usize) -> Object {
    let ip = pod_ip(s, e);
    Object::from(Pod {
        metadata: meta(
            &namespace(s),
            &pod_name(s, e),
            uuid(3, s * ENDPOINTS_PER_SERVICE + e),
        ),
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            ..PodStatus::default()
        }),
    })
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[test]
fn index_of_10k_services_and_100k_endpoints_fits_64_mib() {
    let now = "2025-06-01T12:00:00Z".parse().unwrap();
    let before = memory_support::live();
    let mut index = Index::new(IndexConfig::default());
    for s in 0..SERVICES {
        index.insert(&service(s), now).unwrap();
        index.insert(&slice(s), now).unwrap();
    }
    let services_and_endpoints = memory_support::live() - before;
    let counts = index.counts();
    assert_eq!(counts.services, SERVICES);
    assert_eq!(counts.endpoints, SERVICES * ENDPOINTS_PER_SERVICE);
    println!(
        "index: {} services, {} endpoints: {:.1} MiB ({} bytes/endpoint)",
        counts.services,
        counts.endpoints,
        mib(services_and_endpoints),
        services_and_endpoints / counts.endpoints
    );
    assert!(
        services_and_endpoints < BUDGET,
        "{:.1} MiB over the 64 MiB budget",
        mib(services_and_endpoints)
    );
    assert!(
        services_and_endpoints / counts.endpoints <= MAX_BYTES_PER_ENDPOINT,
        "{} bytes an endpoint, over {MAX_BYTES_PER_ENDPOINT}",
        services_and_endpoints / counts.endpoints
    );

    // With every pod too (a `--from-file` export with Pods; the agent only keeps its node's).
    for s in 0..SERVICES {
        for e in 0..ENDPOINTS_PER_SERVICE {
            index.insert(&pod(s, e), now).unwrap();
        }
    }
    let with_pods = memory_support::live() - before;
    println!(
        "index with {} pods: {:.1} MiB",
        index.counts().pods,
        mib(with_pods)
    );
    drop(index);
}
