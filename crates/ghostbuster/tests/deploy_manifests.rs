//! The deployment artefacts under `deploy/` (issue #6): the kustomize base and its components,
//! the alert rules and their promtool tests, the Grafana dashboard.
//!
//! - `kubectl kustomize` renders the base, each component and all of them together; every
//!   rendered object parses as its typed k8s-openapi struct (or, for the Prometheus Operator's
//!   CRDs, is checked field by field) and serializes back to exactly what was rendered, so a
//!   misspelt or misplaced field (which the API server would silently drop) fails here.
//! - The DaemonSet's security settings and the ClusterRole's grants are asserted one by one: what
//!   the issue promises is what the manifests say.
//! - `promtool check rules` and `promtool test rules`; every alert has a firing and a not-firing
//!   case, a runbook section, and names only metrics the agent exports.
//! - The PrometheusRule is `deploy/prometheus/rules.yaml` wrapped in a header;
//!   `GHOSTBUSTER_REGENERATE=1` rewrites it from that file.
//! - Every metric in the dashboard's queries is one the agent exports.
//!
//! kubectl and promtool are external tools: in CI (`CI` set) a missing one fails the test (CI
//! installs promtool through scripts/install-deps.sh); elsewhere the test says why it skips.

mod promql_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every metric the agent exports (issue #4 section 4, issue #5 section 1), by its exposed name.
/// Counters carry `_total`; histograms are listed in [`HISTOGRAMS`] as well.
const METRICS: &[&str] = &[
    "conntrack_stale_entries",
    "ghostbuster_flows_removed_total",
    "ghostbuster_flow_removal_failures_total",
    "ghostbuster_flows_recreated_total",
    "ghostbuster_sockets_terminated_total",
    "ghostbuster_ghost_age_seconds",
    "ghostbuster_reaction_seconds",
    "ghostbuster_gate_wait_seconds",
    "ghostbuster_kube_proxy_sync_lag_seconds",
    "ghostbuster_conntrack_entries",
    "ghostbuster_conntrack_entries_limit",
    "ghostbuster_scan_duration_seconds",
    "ghostbuster_conntrack_events_lost_total",
    "ghostbuster_cluster_synced",
    "ghostbuster_endpoint_changes_total",
    "ghostbuster_mode",
    "ghostbuster_circuit_open",
    "ghostbuster_build_info",
    "ghostbuster_report_only",
    "ghostbuster_conntrack_entries_by_state",
    "ghostbuster_conntrack_service_entries",
    "ghostbuster_conntrack_stat_found_total",
    "ghostbuster_conntrack_stat_invalid_total",
    "ghostbuster_conntrack_stat_insert_total",
    "ghostbuster_conntrack_stat_insert_failed_total",
    "ghostbuster_conntrack_stat_drop_total",
    "ghostbuster_conntrack_stat_early_drop_total",
    "ghostbuster_conntrack_stat_error_total",
    "ghostbuster_conntrack_stat_search_restart_total",
    "ghostbuster_conntrack_stat_clash_resolve_total",
    "ghostbuster_conntrack_stat_chaintoolong_total",
    "ghostbuster_conntrack_table_full_eta_seconds",
    "ghostbuster_sysctl_check",
];

/// The histograms among [`METRICS`]: queried through `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[
    "ghostbuster_ghost_age_seconds",
    "ghostbuster_reaction_seconds",
    "ghostbuster_gate_wait_seconds",
    "ghostbuster_scan_duration_seconds",
];

/// Series Prometheus itself makes, which rules may use (the dashboard does not).
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// The alerts issue #6 section 2 asks for, by name.
const ALERTS: &[&str] = &[
    "StaleConntrackEntries",
    "GhostbusterRemovalRateUnusual",
    "GhostbusterFlowsRecreated",
    "GhostbusterRemovalFailures",
    "ConntrackTableNearFull",
    "ConntrackTableCritical",
    "ConntrackTableFullSoon",
    "HighConntrackInsertFailed",
    "ConntrackPacketDrops",
    "ConntrackSysctlAudit",
    "GhostbusterAgentDown",
    "GhostbusterAgentAbsent",
    "GhostbusterNotReady",
    "GhostbusterReportOnly",
    "GhostbusterCircuitOpen",
];

const AGENT_PORT: i32 = 9477;

// ---------------------------------------------------------------------------------------------
// Paths and external tools

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `Some(path)` of `tool` on PATH; `None` (after saying why) when it is missing outside CI.
fn tool_or_skip(tool: &str, test: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: `{tool}` is not on PATH, and CI must run this test: {install}")
        }
        None => {
            eprintln!("SKIP {test}: `{tool}` is not on PATH ({install})");
            None
        }
    }
}

fn kubectl_or_skip(test: &str) -> Option<PathBuf> {
    tool_or_skip(
        "kubectl",
        test,
        "install kubectl: 1.21 or later embeds kustomize with components",
    )
}

fn promtool_or_skip(test: &str) -> Option<PathBuf> {
    tool_or_skip(
        "promtool",
        test,
        "scripts/install-deps.sh installs it: Debian package `prometheus`",
    )
}

/// Runs a tool and returns its stdout; panics with its stderr when it fails.
fn run(tool: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{} {}` in {} failed ({}):\n{stdout}\n{}",
        tool.display(),
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `to` relative to `from` (both absolute): kustomize refuses absolute resource paths.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// The component directories under deploy/components, by name.
fn components() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(deploy().join("components"))
        .expect("deploy/components")
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What `kubectl kustomize` makes of the base plus `with` components, as JSON values. `test`
/// names the overlay's directory: tests run in parallel and must not share one.
fn render(kubectl: &Path, with: &[String], test: &str) -> Vec<Value> {
    let yaml = if with.is_empty() {
        run(kubectl, &["kustomize", "."], &deploy())
    } else {
        // An overlay the way a user writes one; kustomize wants relative paths.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("deploy_manifests")
            .join(test)
            .join(with.join("+"));
        std::fs::create_dir_all(&dir).expect("overlay dir");
        let dir = dir.canonicalize().expect("overlay dir");
        let base = relative(&dir, &deploy());
        let mut k = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
            base.display()
        );
        for c in with {
            k.push_str(&format!(
                "  - {}\n",
                base.join("components").join(c).display()
            ));
        }
        std::fs::write(dir.join("kustomization.yaml"), k).expect("write overlay");
        run(kubectl, &["kustomize", "."], &dir)
    };
    yaml_documents(&yaml)
}

fn yaml_documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_of(obj: &Value) -> (String, String) {
    let s = |k: &str| obj[k].as_str().unwrap_or_default().to_string();
    (s("apiVersion"), s("kind"))
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<T: DeserializeOwned + Serialize>(objs: &[Value], kind: &str) -> T {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    typed(found[0])
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Parses `obj` as `T` and checks that serializing it back gives `obj` again: a field `T` does
/// not know (a typo, a field at the wrong level) would be dropped, as the API server drops it.
fn typed<T: DeserializeOwned + Serialize>(obj: &Value) -> T {
    let what = format!("{} {}", obj["kind"], name_of(obj));
    let t: T = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its k8s-openapi type: {e}"));
    let back = serde_json::to_value(&t).expect("serialize");
    if let Some(diff) = first_difference(obj, &back, "") {
        panic!("{what} does not round-trip through its k8s-openapi type: {diff}");
    }
    t
}

/// Where `a` and `b` first differ, as a path and both sides; `None` when equal.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("{p} is unknown (dropped)")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k} appeared"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: rendered {a}, re-serialized {b}")),
    }
}

/// Checks every rendered object: known kinds parse and round-trip; CRDs are checked by hand.
fn check_objects(objs: &[Value]) {
    for obj in objs {
        let (api, kind) = kind_of(obj);
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                let _: Namespace = typed(obj);
            }
            ("v1", "ServiceAccount") => {
                let _: ServiceAccount = typed(obj);
            }
            ("v1", "Service") => {
                let _: Service = typed(obj);
            }
            ("v1", "ResourceQuota") => {
                let _: ResourceQuota = typed(obj);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                let _: ClusterRole = typed(obj);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                let _: ClusterRoleBinding = typed(obj);
            }
            ("apps/v1", "DaemonSet") => {
                let _: DaemonSet = typed(obj);
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(obj, objs),
            ("monitoring.coreos.com/v1", "PrometheusRule") => check_prometheus_rule(obj),
            _ => panic!("unexpected object {api} {kind} {}", name_of(obj)),
        }
        let ns = obj["metadata"]["namespace"].as_str();
        let cluster_scoped = matches!(
            kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        assert_eq!(
            ns.is_none(),
            cluster_scoped,
            "{kind} {}: namespace {ns:?}",
            name_of(obj)
        );
        if let Some(ns) = ns {
            assert_eq!(ns, "ghostbuster", "{kind} {}", name_of(obj));
        }
    }
}

/// `keys` of `obj` must all be in `allowed`: the CRD's schema, for the fields we use.
fn only_keys(obj: &Value, allowed: &[&str], what: &str) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a map"));
    for k in map.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}.{k} is not a field of the CRD (allowed here: {allowed:?})"
        );
    }
}

fn check_service_monitor(sm: &Value, objs: &[Value]) {
    only_keys(
        sm,
        &["apiVersion", "kind", "metadata", "spec"],
        "ServiceMonitor",
    );
    only_keys(
        &sm["metadata"],
        &["name", "namespace", "labels", "annotations"],
        "ServiceMonitor.metadata",
    );
    let spec = &sm["spec"];
    only_keys(
        spec,
        &["selector", "namespaceSelector", "endpoints", "jobLabel"],
        "ServiceMonitor.spec",
    );
    // It selects the metrics Service, in its namespace, by labels the Service has.
    let svc: Service = one(objs, "Service");
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor.spec.selector.matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            svc_labels.get(k).map(String::as_str),
            v.as_str(),
            "ServiceMonitor selects label {k}={v}, which the Service lacks"
        );
    }
    assert_eq!(
        spec["namespaceSelector"]["matchNames"],
        serde_json::json!(["ghostbuster"])
    );
    let port_names: Vec<String> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let endpoints = spec["endpoints"]
        .as_array()
        .expect("ServiceMonitor.spec.endpoints");
    assert!(!endpoints.is_empty());
    for ep in endpoints {
        only_keys(
            ep,
            &[
                "port",
                "path",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
            ],
            "ServiceMonitor.spec.endpoints[]",
        );
        let port = ep["port"].as_str().expect("endpoint port name");
        assert!(
            port_names.iter().any(|p| p == port),
            "ServiceMonitor scrapes port {port:?}, the Service has {port_names:?}"
        );
        assert_eq!(ep["path"], "/metrics");
        // The agent's `namespace` and `service` labels must win over the target's.
        assert_eq!(ep["honorLabels"], true);
        for r in ep["relabelings"].as_array().into_iter().flatten() {
            only_keys(
                r,
                &[
                    "sourceLabels",
                    "targetLabel",
                    "action",
                    "regex",
                    "replacement",
                    "separator",
                ],
                "ServiceMonitor relabeling",
            );
        }
    }
}

fn check_prometheus_rule(pr: &Value) {
    only_keys(
        pr,
        &["apiVersion", "kind", "metadata", "spec"],
        "PrometheusRule",
    );
    only_keys(&pr["spec"], &["groups"], "PrometheusRule.spec");
    let rules: Value = serde_yaml_ng::from_str(&read(&rules_path())).expect("rules.yaml");
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "the PrometheusRule's groups differ from deploy/prometheus/rules.yaml"
    );
}

// ---------------------------------------------------------------------------------------------
// The base

#[test]
fn base_and_every_component_render_and_round_trip() {
    let Some(kubectl) = kubectl_or_skip("base_and_every_component_render_and_round_trip") else {
        return;
    };
    let base = render(&kubectl, &[], "base");
    check_objects(&base);
    let base_ids: BTreeSet<(String, String)> =
        base.iter().map(|o| (kind_of(o).1, name_of(o))).collect();
    let expected: BTreeSet<(String, String)> = [
        ("Namespace", "ghostbuster"),
        ("ResourceQuota", "ghostbuster-critical-pods"),
        ("ServiceAccount", "ghostbuster"),
        ("ClusterRole", "ghostbuster"),
        ("ClusterRoleBinding", "ghostbuster"),
        ("DaemonSet", "ghostbuster"),
        ("Service", "ghostbuster"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(base_ids, expected, "the base's objects");

    let all = components();
    assert_eq!(
        all,
        [
            "prometheus-operator",
            "report-only",
            "sysctl-tuning",
            "terminate-sockets"
        ],
        "the components (a new one needs its assertions here)"
    );
    let mut sets: Vec<Vec<String>> = all.iter().map(|c| vec![c.clone()]).collect();
    sets.push(all.clone());
    for set in sets {
        let objs = render(&kubectl, &set, "components");
        check_objects(&objs);
        let ids: BTreeSet<(String, String)> =
            objs.iter().map(|o| (kind_of(o).1, name_of(o))).collect();
        assert!(
            ids.is_superset(&base_ids),
            "{set:?} removes objects of the base"
        );
        // Whatever else a component changes, the agent keeps its least privilege.
        let sockets = set.iter().any(|c| c == "terminate-sockets");
        check_daemonset(&one(&objs, "DaemonSet"), &objs, sockets);
        check_cluster_role(&one(&objs, "ClusterRole"));
        let dry_runs = agent(&one(&objs, "DaemonSet"))
            .args
            .unwrap_or_default()
            .iter()
            .filter(|a| *a == "--dry-run")
            .count();
        let report_only = set.iter().any(|c| c == "report-only");
        assert_eq!(dry_runs, usize::from(report_only), "{set:?}: --dry-run");
        let monitors = find(&objs, "ServiceMonitor").len() + find(&objs, "PrometheusRule").len();
        let operator = set.iter().any(|c| c == "prometheus-operator");
        assert_eq!(monitors, if operator { 2 } else { 0 }, "{set:?}");
        let init = one::<DaemonSet>(&objs, "DaemonSet")
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.init_containers)
            .unwrap_or_default();
        if set.iter().any(|c| c == "sysctl-tuning") {
            assert_eq!(init.len(), 1, "{set:?}: the sysctl init container");
            check_sysctl_init(&init[0]);
        } else {
            assert!(init.is_empty(), "{set:?}: no init container");
        }
    }
}

fn agent(ds: &DaemonSet) -> Container {
    let containers = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    assert_eq!(containers.len(), 1, "one container, the agent");
    assert_eq!(containers[0].name, "agent");
    containers[0].clone()
}

/// Everything the issue says about the DaemonSet.
/// `terminate_sockets`: the terminate-sockets component is in (SYS_ADMIN, /run/netns, the flag).
fn check_daemonset(ds: &DaemonSet, objs: &[Value], terminate_sockets: bool) {
    let spec = ds.spec.as_ref().expect("DaemonSet.spec");
    let update = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    match update
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_unavailable.as_ref())
    {
        Some(IntOrString::String(p)) => assert!(
            p.ends_with('%')
                && p[..p.len() - 1]
                    .parse::<u8>()
                    .is_ok_and(|n| n > 0 && n <= 100),
            "maxUnavailable {p:?} is not a percentage"
        ),
        other => panic!("maxUnavailable must be a percentage, is {other:?}"),
    }
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(pod_labels.get(k), Some(v), "selector label {k}");
    }

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(
        pod.node_selector
            .clone()
            .unwrap_or_default()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux"),
        "Linux nodes only"
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert_eq!(tolerations.len(), 1, "one toleration, of every taint");
    let t = &tolerations[0];
    assert_eq!(t.operator.as_deref(), Some("Exists"));
    assert!(
        t.key.is_none() && t.effect.is_none(),
        "tolerate every taint: {t:?}"
    );
    assert!(
        pod.host_pid != Some(true) && pod.host_ipc != Some(true),
        "no host PID or IPC"
    );
    if terminate_sockets {
        check_netns_mount(pod, &agent(ds));
    } else {
        assert!(pod.volumes.is_none(), "no volumes (nothing from the host)");
    }

    // The ServiceAccount it runs as is the one bound to the ClusterRole.
    let sa: ServiceAccount = one(objs, "ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let binding: ClusterRoleBinding = one(objs, "ClusterRoleBinding");
    let role: ClusterRole = one(objs, "ClusterRole");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);

    // system-node-critical outside kube-system: a quota that admits that class.
    let quota: ResourceQuota = one(objs, "ResourceQuota");
    let quota_spec = quota.spec.expect("ResourceQuota.spec");
    assert!(quota_spec.hard.is_some_and(|h| h.contains_key("pods")));
    let scopes = quota_spec
        .scope_selector
        .and_then(|s| s.match_expressions)
        .unwrap_or_default();
    assert!(
        scopes.iter().any(|e| e.scope_name == "PriorityClass"
            && e.operator == "In"
            && e.values
                .iter()
                .flatten()
                .any(|v| v == "system-node-critical")),
        "the ResourceQuota must cover the system-node-critical PriorityClass: {scopes:?}"
    );
    // hostNetwork + NET_ADMIN are outside the baseline Pod Security Standard.
    let ns: Namespace = one(objs, "Namespace");
    assert_eq!(
        ns.metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );

    let seccomp_pod = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.clone());
    let c = agent(ds);
    let sc = c.security_context.clone().expect("agent securityContext");
    assert_eq!(sc.privileged, Some(false), "the agent is not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "root: a non-root user gets no effective capability from `add`"
    );
    let caps = sc.capabilities.clone().expect("capabilities");
    let mut want = vec!["NET_ADMIN".to_string()];
    if terminate_sockets {
        want.push("SYS_ADMIN".to_string());
    }
    assert_eq!(caps.add, Some(want), "the capabilities");
    let flags = c.args.clone().unwrap_or_default();
    assert_eq!(
        flags.iter().filter(|a| *a == "--terminate-sockets").count(),
        usize::from(terminate_sockets),
        "--terminate-sockets only with its component"
    );
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .map(|p| p.type_.clone())
        .or(seccomp_pod);
    assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"));

    let resources = c.resources.clone().expect("resources");
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    assert!(requests.contains_key("cpu"), "a CPU request");
    assert!(
        !limits.contains_key("cpu"),
        "no CPU limit: throttling a large dump ruins reaction time"
    );
    assert!(limits.contains_key("memory"), "a memory limit");
    assert_eq!(
        requests.get("memory"),
        limits.get("memory"),
        "memory request = limit"
    );

    let env: BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let path = e.value_from?.field_ref?.field_path;
            Some((e.name, path))
        })
        .collect();
    assert_eq!(
        env.get("NODE_NAME").map(String::as_str),
        Some("spec.nodeName")
    );
    assert_eq!(
        env.get("HOST_IP").map(String::as_str),
        Some("status.hostIP")
    );

    let ports = c.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("metrics"));
    assert_eq!(ports[0].container_port, AGENT_PORT);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    assert!(args.iter().any(|a| a == "--node-name=$(NODE_NAME)"));
    assert!(
        args.iter()
            .any(|a| *a == format!("--listen=$(HOST_IP):{AGENT_PORT}")),
        "metrics on the node's address: {args:?}"
    );

    for (probe, path) in [
        (c.liveness_probe.clone(), "/healthz"),
        (c.readiness_probe.clone(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get)
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert!(
            matches!(&get.port, IntOrString::String(p) if p == "metrics")
                || get.port == IntOrString::Int(AGENT_PORT),
            "probe {path} on port {:?}",
            get.port
        );
        assert!(get.host.is_none(), "the kubelet probes the pod (node) IP");
    }

    // The metrics Service: headless, port 9477 of the agent pods.
    let svc: Service = one(objs, "Service");
    let svc_spec = svc.spec.expect("Service.spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"), "headless");
    for (k, v) in svc_spec.selector.iter().flatten() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector label {k}");
    }
    let svc_ports = svc_spec.ports.unwrap_or_default();
    assert_eq!(svc_ports.len(), 1);
    assert_eq!(svc_ports[0].port, AGENT_PORT);
    assert_eq!(svc_ports[0].name.as_deref(), Some("metrics"));

    // The image follows the crate's version and is pinned by a digest: the all-zero placeholder
    // until scripts/image.sh writes the built image's.
    let image = c.image.clone().unwrap_or_default();
    let (tag, digest) = image
        .split_once('@')
        .unwrap_or_else(|| panic!("{image}: not pinned by a digest"));
    assert_eq!(
        tag,
        format!("ghostbuster:{}", env!("CARGO_PKG_VERSION")),
        "deploy/kustomization.yaml's images: newTag must be the crate version"
    );
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest}: not a sha256 digest"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{digest}: not a sha256 digest"
    );
}

/// The issue's list, exactly: (API group, resource) → verbs.
fn check_cluster_role(role: &ClusterRole) {
    let read = ["get", "list", "watch"];
    let expected: BTreeSet<(String, String, String)> = [
        ("", "services", &read[..]),
        ("", "nodes", &read[..]),
        ("", "pods", &read[..]),
        ("", "namespaces", &read[..]),
        ("discovery.k8s.io", "endpointslices", &read[..]),
        ("networking.k8s.io", "servicecidrs", &read[..]),
        ("events.k8s.io", "events", &["create", "patch"][..]),
    ]
    .iter()
    .flat_map(|(g, r, verbs)| {
        verbs
            .iter()
            .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
    })
    .collect();
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
            "no non-resource URLs, no per-name rules: {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(g != "*" && r != "*" && v != "*", "no wildcards: {rule:?}");
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    assert!(role.aggregation_rule.is_none());
    assert_eq!(
        granted, expected,
        "the ClusterRole grants exactly the issue's list"
    );
}

/// The one privileged piece: a privileged init container that only writes per-namespace
/// conntrack sysctls.
fn check_sysctl_init(c: &Container) {
    assert_eq!(c.name, "sysctl-tuning");
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(
        sc.privileged,
        Some(true),
        "the kubelet refuses net.* sysctls for hostNetwork pods: privileged, explicitly"
    );
    let script = c.command.clone().unwrap_or_default().join(" ");
    assert!(script.contains("sysctl -w"), "{script}");
    // The keys it may change: the arguments of its `ceiling` and `enable` calls.
    let set: BTreeSet<&str> = script
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next() {
                Some("ceiling" | "enable") => words.next(),
                _ => None,
            }
        })
        .collect();
    for global in ["nf_conntrack_max", "nf_conntrack_buckets"] {
        // Machine-wide keys are the node's business, not a pod's.
        assert!(
            !set.contains(global),
            "the init container must not set {global}"
        );
    }
    for key in [
        "nf_conntrack_tcp_be_liberal",
        "nf_conntrack_tcp_timeout_established",
        "nf_conntrack_tcp_timeout_syn_sent",
        "nf_conntrack_tcp_timeout_close_wait",
        "nf_conntrack_tcp_timeout_time_wait",
        "nf_conntrack_tcp_timeout_fin_wait",
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        assert!(set.contains(key), "the init container sets {key}: {set:?}");
    }
}

#[test]
fn daemonset_args_parse_with_the_agent_cli() {
    let Some(kubectl) = kubectl_or_skip("daemonset_args_parse_with_the_agent_cli") else {
        return;
    };
    for set in [vec![], vec!["report-only".to_string()]] {
        let objs = render(&kubectl, &set, "args");
        let c = agent(&one(&objs, "DaemonSet"));
        // What the kubelet makes of $(VAR) references.
        let args: Vec<String> = c
            .args
            .unwrap_or_default()
            .iter()
            .map(|a| {
                a.replace("$(NODE_NAME)", "node-1")
                    .replace("$(HOST_IP)", "192.0.2.10")
            })
            .collect();
        let argv = std::iter::once("ghostbuster".to_string()).chain(args.iter().cloned());
        if let Err(e) = ghostbuster::cli::Cli::try_parse_from(argv) {
            panic!("the DaemonSet's args {args:?} ({set:?}) do not parse: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Alert rules

fn rules_path() -> PathBuf {
    deploy().join("prometheus/rules.yaml")
}

fn prometheus_rule_path() -> PathBuf {
    deploy().join("components/prometheus-operator/prometheusrule.yaml")
}

const PROMETHEUS_RULE_HEADER: &str = "\
# GENERATED from deploy/prometheus/rules.yaml: do not edit; edit that file and run
#   GHOSTBUSTER_REGENERATE=1 cargo test -p ghostbuster --test deploy_manifests
# (the test fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ghostbuster
  namespace: ghostbuster
  labels:
    app.kubernetes.io/name: ghostbuster
    app.kubernetes.io/part-of: ghostbuster
spec:
";

/// The PrometheusRule's text: the header, then rules.yaml (comments too) indented under `spec:`.
fn prometheus_rule_text(rules: &str) -> String {
    let mut out = PROMETHEUS_RULE_HEADER.to_string();
    for line in rules.split_inclusive('\n') {
        if !line.trim().is_empty() {
            out.push_str("  ");
        }
        out.push_str(line);
    }
    out
}

#[test]
fn prometheus_rule_is_generated_from_rules_yaml() {
    let want = prometheus_rule_text(&read(&rules_path()));
    let path = prometheus_rule_path();
    if std::env::var_os("GHOSTBUSTER_REGENERATE").is_some() {
        std::fs::write(&path, &want).expect("write the PrometheusRule");
        eprintln!("regenerated {}", path.display());
    }
    assert!(
        read(&path) == want,
        "{} is out of date with deploy/prometheus/rules.yaml: run \
         GHOSTBUSTER_REGENERATE=1 cargo test -p ghostbuster --test deploy_manifests",
        path.display()
    );
    // And it means the same: the groups parse identically.
    let pr: Value = serde_yaml_ng::from_str(&want).expect("PrometheusRule YAML");
    check_prometheus_rule(&pr);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn alert_rules() -> Vec<Rule> {
    let file: RuleFile = serde_yaml_ng::from_str(&read(&rules_path())).expect("rules.yaml");
    let mut names = BTreeSet::new();
    for g in &file.groups {
        assert!(names.insert(g.name.clone()), "group {} twice", g.name);
    }
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

#[test]
fn every_alert_is_documented_and_uses_known_metrics() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let mut want = ALERTS.to_vec();
    want.sort_unstable();
    assert_eq!(sorted, want, "the alerts");

    let runbook = read(&repo().join("docs/runbook.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(github_anchor)
        .collect();
    let base = format!("{}/blob/main/docs/runbook.md#", repository_url());
    for r in &rules {
        let a = &r.alert;
        assert!(r.for_.is_some(), "{a}: a `for` duration");
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{a}: severity {severity:?}"
        );
        let keys: Vec<&str> = r.annotations.keys().map(String::as_str).collect();
        assert_eq!(keys, ["description", "runbook_url", "summary"], "{a}");
        let url = &r.annotations["runbook_url"];
        let anchor = url
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{a}: runbook_url {url} does not start with {base}"));
        assert_eq!(
            anchor,
            a.to_lowercase(),
            "{a}: the anchor is the alert's name"
        );
        assert!(
            anchors.contains(anchor),
            "{a}: docs/runbook.md has no `## {a}` section"
        );
        for m in promql_support::metric_names(&r.expr) {
            assert!(
                is_exported(&m) || PROMETHEUS_SERIES.contains(&m.as_str()),
                "{a}: `{m}` is not a metric the agent exports"
            );
        }
    }
}

/// The repository URL from the workspace's Cargo.toml (runbook links start there).
fn repository_url() -> String {
    read(&repo().join("Cargo.toml"))
        .lines()
        .find_map(|l| {
            let v = l
                .strip_prefix("repository")?
                .trim_start()
                .strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .expect("workspace.package.repository")
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, other punctuation dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test() {
    let tests: Value = serde_yaml_ng::from_str(&read(&deploy().join("prometheus/rules_test.yaml")))
        .expect("rules_test.yaml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            if fires {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for a in ALERTS {
        assert!(
            firing.contains(*a),
            "rules_test.yaml: no case where {a} fires"
        );
        assert!(
            quiet.contains(*a),
            "rules_test.yaml: no case where {a} stays quiet"
        );
    }
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let Some(promtool) = promtool_or_skip("promtool_checks_and_tests_the_rules") else {
        return;
    };
    let dir = deploy().join("prometheus");
    let out = run(&promtool, &["check", "rules", "rules.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(&promtool, &["test", "rules", "rules_test.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Dashboard

/// Every `expr` in the dashboard (rows nest panels) and every variable query.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
                out.push(expr.to_string());
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let path = deploy().join("grafana/ghostbuster.json");
    let dash: Value = serde_json::from_str(&read(&path)).expect("dashboard JSON parses");
    assert_eq!(dash["uid"], "ghostbuster");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` (node) variable");
    let q = instance["query"]["query"]
        .as_str()
        .or(instance["query"].as_str())
        .expect("instance variable query");
    let (metric, label) = q
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.split_once(','))
        .expect("label_values(metric, label)");
    assert!(is_exported(metric.trim()), "variable uses {metric}");
    assert_eq!(label.trim(), "instance");

    let mut ids = BTreeSet::new();
    fn panel_ids(panels: &Value, ids: &mut BTreeSet<i64>) {
        for p in panels.as_array().into_iter().flatten() {
            let id = p["id"].as_i64().expect("panel id");
            assert!(ids.insert(id), "panel id {id} twice");
            panel_ids(&p["panels"], ids);
        }
    }
    panel_ids(&dash["panels"], &mut ids);

    let queries = dashboard_queries(&dash);
    assert!(!queries.is_empty());
    let mut used = BTreeSet::new();
    for q in &queries {
        assert!(
            q.contains("instance=~\"$instance\""),
            "query does not follow the node selection: {q}"
        );
        for m in promql_support::metric_names(q) {
            assert!(
                is_exported(&m),
                "dashboard query uses `{m}`, not an agent metric: {q}"
            );
            used.insert(base_metric(&m).to_string());
        }
    }
    // The issue's panels: utilization and forecast, states, non-healthy flows, removals, gate
    // wait and reaction, kube-proxy lag, per-CPU insert_failed/drop, scan duration, audit, mode.
    for m in [
        "ghostbuster_conntrack_entries",
        "ghostbuster_conntrack_entries_limit",
        "ghostbuster_conntrack_table_full_eta_seconds",
        "ghostbuster_conntrack_entries_by_state",
        "conntrack_stale_entries",
        "ghostbuster_flows_removed_total",
        "ghostbuster_gate_wait_seconds",
        "ghostbuster_reaction_seconds",
        "ghostbuster_kube_proxy_sync_lag_seconds",
        "ghostbuster_conntrack_stat_insert_failed_total",
        "ghostbuster_conntrack_stat_drop_total",
        "ghostbuster_scan_duration_seconds",
        "ghostbuster_sysctl_check",
        "ghostbuster_mode",
    ] {
        assert!(used.contains(m), "no dashboard panel shows {m}");
    }
}

// ---------------------------------------------------------------------------------------------
// Metric names in PromQL

fn base_metric(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

fn is_exported(name: &str) -> bool {
    METRICS.contains(&base_metric(name))
}

#[test]
fn metric_names_finds_metrics_and_nothing_else() {
    let q = r#"histogram_quantile(0.99, sum by (le, kind) (rate(ghostbuster_scan_duration_seconds_bucket{instance=~"$instance", kind!="x"}[$__rate_interval])))"#;
    assert_eq!(
        promql_support::metric_names(q),
        BTreeSet::from(["ghostbuster_scan_duration_seconds_bucket".to_string()])
    );
    let q = "sum(a_total) by (x) / on (instance) group_left (node) b > 5 * c offset 1d and d or vector(0)";
    let want: BTreeSet<String> = ["a_total", "b", "c", "d"].map(String::from).into();
    assert_eq!(promql_support::metric_names(q), want);
    assert!(is_exported("ghostbuster_gate_wait_seconds_count"));
    assert!(!is_exported("ghostbuster_mode_bucket"));
    assert!(!is_exported("ghostbuster_flows_removed"));
}

// ---------------------------------------------------------------------------------------------
// Docs

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(github_anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn install_and_runbook_links_resolve() {
    let docs = repo().join("docs");
    for file in ["install.md", "runbook.md"] {
        let text = read(&docs.join(file));
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').expect("closing parenthesis")];
            if target.starts_with("http") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() {
                docs.join(file)
            } else {
                docs.join(path)
            };
            assert!(linked.exists(), "{file}: link to missing {target}");
            if !anchor.is_empty() {
                assert!(
                    anchors(&read(&linked)).contains(anchor),
                    "{file}: link to missing anchor {target}"
                );
            }
        }
    }
}

/// The terminate-sockets component's one volume: the host's /run/netns (where containerd and
/// CRI-O pin pod sandboxes' namespaces), read-only, with new pins propagated.
fn check_netns_mount(pod: &k8s_openapi::api::core::v1::PodSpec, c: &Container) {
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), 1, "one volume: {volumes:?}");
    let host = volumes[0].host_path.as_ref().expect("a hostPath volume");
    assert_eq!(host.path, "/run/netns");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    assert_eq!(
        (m.name.as_str(), m.mount_path.as_str()),
        ("netns", "/run/netns")
    );
    assert_eq!(m.read_only, Some(true), "read-only");
    assert_eq!(m.mount_propagation.as_deref(), Some("HostToContainer"));
}
