//! What the production build leaves out (issue #12 §4 "Security", issue #13 item 7), checked
//! without building anything:
//!
//! - the `demo` cargo feature pulls in netlab (the lab that builds namespaces and traffic); without
//!   it netlab is not in the binary's dependency tree (`cargo tree --offline`, from Cargo.lock);
//! - the Dockerfile builds with `--no-default-features`, pins every base by digest, and its
//!   runtime stage has no shell (distroless or scratch);
//! - the DaemonSet never needs a shell in the agent's container (exec-form args, HTTP probes).
//!
//! Nothing here needs root, the network or a container engine.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Probe;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The crates in ghostbuster's normal (non-dev, non-build) dependency tree, by name.
fn normal_dependencies(features: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "ghostbuster",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(features)
        .current_dir(repo())
        .output()
        .expect("run cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let names: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    // The tree is not empty and starts at ghostbuster: the command really listed something.
    assert_eq!(
        names.first().map(String::as_str),
        Some("ghostbuster"),
        "{stdout}"
    );
    assert!(names.iter().any(|n| n == "ctnetlink"), "{stdout}");
    names.into_iter().collect()
}

#[test]
fn netlab_is_in_the_binary_only_with_the_demo_feature() {
    let without = normal_dependencies(&["--no-default-features"]);
    assert!(
        !without.contains("netlab"),
        "netlab is a normal dependency without the `demo` feature: {without:?}"
    );
    let default = normal_dependencies(&[]);
    assert!(
        default.contains("netlab"),
        "the default build (the CLI people install) must keep the demo and netlab: {default:?}"
    );
    let with = normal_dependencies(&["--no-default-features", "--features", "demo"]);
    assert!(
        with.contains("netlab"),
        "`--features demo` must bring netlab: {with:?}"
    );
}

/// A Dockerfile's instructions: continuation lines joined, comments and blank lines dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `image@sha256:<64 lowercase hex>`.
fn pinned(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(name, digest)| {
        !name.is_empty()
            && digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One `FROM [--platform=...] image [AS name]`: (image, stage name).
fn from_parts(instruction: &str) -> (String, Option<String>) {
    let words: Vec<&str> = instruction
        .split_whitespace()
        .skip(1)
        .filter(|w| !w.starts_with("--"))
        .collect();
    let image = words.first().expect("FROM without an image").to_string();
    let name = match words.get(1..) {
        Some([as_, name]) if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
        Some([]) => None,
        other => panic!("unexpected FROM: {instruction:?} ({other:?})"),
    };
    (image, name)
}

fn keyword(instruction: &str) -> String {
    instruction
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

#[test]
fn dockerfile_pins_its_bases_and_ships_no_shell_and_no_demo() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");

    // The syntax frontend is an image too: pinned when named.
    if let Some(syntax) = text.lines().find_map(|l| l.strip_prefix("# syntax=")) {
        assert!(
            pinned(syntax.trim()),
            "syntax frontend not pinned: {syntax}"
        );
    }

    let all = instructions(&text);
    let mut stages: Vec<String> = Vec::new();
    let mut last_from = None;
    for (i, ins) in all.iter().enumerate() {
        if keyword(ins) != "FROM" {
            continue;
        }
        let (image, name) = from_parts(ins);
        let earlier_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(&image));
        assert!(
            image == "scratch" || earlier_stage || pinned(&image),
            "FROM {image}: not pinned by digest (image:tag@sha256:<64 hex>)"
        );
        stages.extend(name);
        last_from = Some(i);
    }
    let last_stage_start = last_from.expect("no FROM in the Dockerfile");

    // The runtime stage: distroless (not a :debug variant, which has busybox) or scratch.
    let (runtime, _) = from_parts(&all[last_stage_start]);
    let base = runtime.split('@').next().unwrap_or_default();
    assert!(
        runtime == "scratch" || (base.starts_with("gcr.io/distroless/") && !base.contains("debug")),
        "the runtime stage must have no shell (distroless or scratch), is {runtime}"
    );
    let runtime_stage = &all[last_stage_start + 1..];
    for ins in runtime_stage {
        let kw = keyword(ins);
        assert_ne!(kw, "RUN", "a RUN in the runtime stage needs a shell: {ins}");
        if kw == "ENTRYPOINT" || kw == "CMD" {
            let arg = ins[kw.len()..].trim();
            assert!(
                arg.starts_with('[') && serde_json::from_str::<Vec<String>>(arg).is_ok(),
                "{kw} must be exec form (a JSON array); shell form needs /bin/sh: {ins}"
            );
        }
    }
    assert!(
        runtime_stage
            .iter()
            .any(|i| keyword(i) == "ENTRYPOINT" && i.contains("ghostbuster")),
        "the runtime stage's ENTRYPOINT runs ghostbuster"
    );

    // The binary it ships is built without the demo, from the lock file.
    let builds: Vec<&String> = all
        .iter()
        .filter(|i| keyword(i) == "RUN" && i.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "no cargo build in the Dockerfile");
    for b in builds {
        for flag in [
            "--release",
            "-p ghostbuster",
            "--locked",
            "--no-default-features",
        ] {
            assert!(
                b.contains(flag),
                "the image's cargo build lacks {flag}: {b}"
            );
        }
        assert!(
            !b.contains("--features") && !b.contains("--all-features"),
            "the image's cargo build turns a feature back on: {b}"
        );
    }
}

fn http_only(probe: Option<&Probe>, what: &str) {
    if let Some(p) = probe {
        assert!(
            p.exec.is_none(),
            "{what}: an exec probe needs a shell or tool in the image"
        );
        assert!(
            p.http_get.is_some(),
            "{what}: expected an httpGet probe: {p:?}"
        );
    }
}

#[test]
fn daemonset_runs_the_agent_without_a_shell() {
    let text =
        std::fs::read_to_string(repo().join("deploy/daemonset.yaml")).expect("read daemonset");
    let ds: DaemonSet = serde_yaml_ng::from_str(&text).expect("parse deploy/daemonset.yaml");
    let pod = ds.spec.and_then(|s| s.template.spec).expect("pod spec");
    let agent = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("the agent container");
    // No `command`: the image's ENTRYPOINT (the binary) runs, with args in exec form.
    assert_eq!(
        agent.command, None,
        "the agent's command overrides the ENTRYPOINT"
    );
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("agent"), "{args:?}");
    for a in &args {
        assert!(
            !["sh", "/bin/sh", "bash", "-c"].contains(&a.as_str()),
            "the agent's args run a shell: {args:?}"
        );
    }
    http_only(agent.liveness_probe.as_ref(), "livenessProbe");
    http_only(agent.readiness_probe.as_ref(), "readinessProbe");
    http_only(agent.startup_probe.as_ref(), "startupProbe");
    assert!(
        agent.liveness_probe.is_some() && agent.readiness_probe.is_some(),
        "both probes exist"
    );
    if let Some(l) = &agent.lifecycle {
        for (what, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            assert!(
                h.as_ref().is_none_or(|h| h.exec.is_none()),
                "{what}: an exec hook needs a shell in the image"
            );
        }
    }
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read a source directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Issue #13 item 1: dependency arrows point one way, cli → library. The agent, the demo, the
/// telemetry and every other library module take plain values (`agent::Config`, `audit::gather`,
/// `stats::collect`), never clap's argument structs or a subcommand's code.
#[test]
fn no_library_module_imports_the_cli() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let cli = src.join("cli");
    let mut wrong = Vec::new();
    let mut library_files = 0;
    for f in files {
        if f.starts_with(&cli) || f.ends_with("main.rs") || f.ends_with("lib.rs") {
            continue;
        }
        library_files += 1;
        let text = std::fs::read_to_string(&f).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if line.contains("crate::cli") || line.contains("super::cli") {
                wrong.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(library_files > 50, "found {library_files} library files");
    assert!(
        wrong.is_empty(),
        "library code imports the CLI:\n{}",
        wrong.join("\n")
    );
}
