//! The agent's image (scripts/image.sh: an OCI archive built from scratch) run with podman, as a
//! node would run it: `--version`, no lab code and no shell inside, its labels and size, `audit`
//! and an agent that gets ready in the network namespace of a lab node (hostNetwork), with only
//! NET_ADMIN, a read-only root filesystem, against the in-process API fixture and a fake
//! kube-proxy listening on that node's 127.0.0.1.
//!
//! The archive is `GB_IMAGE_ARCHIVE`, else `target/image/ghostbuster-<version>.oci.tar`
//! (scripts/test.sh builds it before the tests). Needs root and podman (with runc: this
//! machine's cgroups are v1/hybrid, which crun refuses). Outside CI a missing piece is a skip with
//! a printed reason; in CI (`CI` set) it is a failure.

mod agent_support;
mod scan_support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent_support::*;
use scan_support::*;
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The goal for the image (uncompressed, as `podman image inspect` counts it).
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

fn archive() -> PathBuf {
    match std::env::var_os("GB_IMAGE_ARCHIVE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/image"))
            .join(format!("ghostbuster-{VERSION}.oci.tar")),
    }
}

fn skip_or_fail(test: &str, why: String) -> Option<String> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}; in CI this is a failure, not a skip");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// The loaded image's name, once per test binary (`podman load` of the archive); `None`: skipped.
fn image(test: &str) -> Option<String> {
    if !lab_available(test) {
        return None;
    }
    static LOADED: OnceLock<Result<String, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let path = archive();
        if !path.is_file() {
            return Err(format!(
                "no image archive at {} (build it with scripts/image.sh)",
                path.display()
            ));
        }
        let out = Command::new("podman")
            .args(["load", "-q", "-i"])
            .arg(&path)
            .output()
            .map_err(|e| format!("podman: {e} (install podman and runc)"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "podman load failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        text.lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .map(|s| s.trim().to_string())
            .ok_or_else(|| format!("podman load said {text:?}"))
    });
    match loaded {
        Ok(name) => Some(name.clone()),
        Err(why) => skip_or_fail(test, why.clone()),
    }
}

/// The open-files and processes limits podman may set: at most this machine's own (the root here
/// has no CAP_SYS_RESOURCE, so podman's defaults above them are refused).
fn ulimits() -> Vec<String> {
    let soft = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct we own.
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_cur
    };
    // Measured here: any nproc up to 32768 is accepted, 48000 is refused (EPERM) although the
    // limit is 96367; 16384 is far more than the agent's threads.
    let nofile = soft(libc::RLIMIT_NOFILE).min(1 << 16);
    let nproc = soft(libc::RLIMIT_NPROC).min(16384);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

/// `podman run` as the DaemonSet runs the agent: all capabilities dropped but NET_ADMIN, a
/// read-only root, in `netns` (a lab node's, `None`: no network).
fn run_args(name: &str, netns: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = ["--runtime", "runc", "run", "--rm", "--name", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(ulimits());
    a.extend(
        ["--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--read-only"]
            .iter()
            .map(|s| s.to_string()),
    );
    a.push("--network".into());
    a.push(match netns {
        Some(ns) => format!("ns:/run/netns/{ns}"),
        None => "none".into(),
    });
    a
}

fn podman(args: &[String]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

fn container_name(what: &str) -> String {
    format!("gb-image-{what}-{}", std::process::id())
}

/// Runs the image with `args` (no network) and returns its output.
fn run_image(image: &str, what: &str, extra: &[&str], args: &[&str]) -> Output {
    let mut a = run_args(&container_name(what), None);
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(image.to_string());
    a.extend(args.iter().map(|s| s.to_string()));
    podman(&a)
}

#[test]
fn the_image_runs_the_production_binary_and_nothing_else() {
    let Some(image) = image("image_binary") else {
        return;
    };
    let out = run_image(&image, "version", &[], &["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ghostbuster {VERSION}")
    );
    // Built without the `demo` feature: no demo subcommand (the lab is not in the binary).
    let demo = run_image(&image, "demo", &[], &["demo"]);
    assert_eq!(demo.status.code(), Some(2), "{demo:?}");
    // No shell.
    let shell = run_image(
        &image,
        "shell",
        &["--entrypoint", "/bin/sh"],
        &["-c", "true"],
    );
    assert!(
        !shell.status.success(),
        "a shell ran in the image: {shell:?}"
    );

    let inspect = podman(&["image".into(), "inspect".into(), image.clone()]);
    assert!(inspect.status.success(), "{inspect:?}");
    let v: Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
    let img = &v[0];
    let labels = &img["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"], VERSION,
        "{labels}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );
    assert_eq!(
        img["Config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/ghostbuster"])
    );
    let size = img["Size"].as_u64().expect("Size");
    eprintln!(
        "image {image}: {:.1} MiB uncompressed; archive {} KiB",
        size as f64 / (1024.0 * 1024.0),
        std::fs::metadata(archive())
            .map(|m| m.len() / 1024)
            .unwrap_or(0)
    );
    assert!(size <= MAX_IMAGE_BYTES, "the image is {size} bytes");
}

#[test]
fn audit_in_the_image_reads_a_lab_node() {
    let Some(image) = image("image_audit") else {
        return;
    };
    let Some(s) = Story::start("image_audit", true) else {
        return;
    };
    let node = s.node();
    let kp = FakeKubeProxy::start_in("nftables", Some(&node));
    let mut a = run_args(&container_name("audit"), Some(&node));
    a.push(image);
    a.extend(
        [
            "audit",
            "-o",
            "json",
            "--kube-proxy-url",
            &format!("http://{}/proxyMode", kp.addr),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = podman(&a);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    assert_eq!(report["facts"]["kube_proxy_mode"], "nftables", "{report:#}");
    assert!(
        report["checks"].as_array().is_some_and(|c| !c.is_empty()),
        "{report:#}"
    );
}

#[test]
fn the_agent_in_the_image_gets_ready_and_stops_on_sigterm() {
    let Some(image) = image("image_agent") else {
        return;
    };
    let Some(s) = Story::start("image_agent", true) else {
        return;
    };
    let node = s.node();
    let api = NsApiServer::start(&node);
    publish(&api, &s.lab.kubernetes_objects());
    let kp = FakeKubeProxy::start_in("nftables", Some(&node));
    kp.synced_now();
    let kubeconfig = Agent::kubeconfig_file(&api.kubeconfig());
    let port = free_port_in(Some(&node));
    let name = container_name("agent");
    let mut a = run_args(&name, Some(&node));
    // Kept after it exits, for its exit code; removed by the guard below.
    a.retain(|x| x != "--rm");
    a.push("-d".into());
    a.push("-v".into());
    a.push(format!("{}:/kubeconfig:ro", kubeconfig.0.display()));
    a.push(image);
    let kp_url = |p: &str| format!("http://{}{p}", kp.addr);
    a.extend(
        [
            "agent",
            "--node-name",
            netlab::node::NODE_NAME,
            "--kubeconfig",
            "/kubeconfig",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kube-proxy-metrics-url",
            &kp_url("/metrics"),
            "--kube-proxy-healthz-url",
            &kp_url("/healthz"),
            "--kube-proxy-mode-url",
            &kp_url("/proxyMode"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let started = podman(&a);
    assert!(started.status.success(), "{started:?}");
    // Removed whatever happens below.
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", &self.0])
                .output();
        }
    }
    let container = Container(name);

    let ready = wait_for_every(Duration::from_millis(100), Duration::from_secs(30), || {
        http_get_in(Some(&node), port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    if !ready {
        let logs = podman(&["logs".into(), container.0.clone()]);
        panic!(
            "the agent in the image never got ready: /readyz {:?}\n{}",
            http_get_in(Some(&node), port, "/readyz"),
            String::from_utf8_lossy(&logs.stderr)
        );
    }
    let (_, metrics) = http_get_in(Some(&node), port, "/metrics").expect("metrics");
    assert_eq!(metric_sum(&metrics, "ghostbuster_ready"), 1.0, "{metrics}");

    // SIGTERM (podman stop, 10 s like the DaemonSet's grace period): a clean exit, quickly.
    let t = Instant::now();
    let stop = podman(&["stop".into(), "-t".into(), "10".into(), container.0.clone()]);
    assert!(stop.status.success(), "{stop:?}");
    let took = t.elapsed();
    let state = podman(&[
        "inspect".into(),
        "--format".into(),
        "{{.State.ExitCode}}".into(),
        container.0.clone(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "0",
        "the agent's exit code after SIGTERM: {state:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the agent took {took:?} to stop"
    );
}
