//! `ghostbuster demo`: the failures of the field reports (`seeds/`), reproduced on one machine in
//! throwaway network namespaces ([`netlab`]), and removed by ghostbuster.
//!
//! Every act runs twice, each time in a fresh lab: a **control** run without ghostbuster, which
//! must show the seed's failure (a lab in which the problem never happens proves nothing), then a
//! **fixed** run of the same story in which ghostbuster scans and sweeps. Ghostbuster runs through
//! the product's code paths only ([`stage`]): the lab rendered as Kubernetes objects, the
//! `--from-file` loader, [`crate::scan::scan`], [`crate::sweep::sweep`], `stats` and `audit`. The
//! only thing the demo knows about the lab beyond what a user could see is the ground truth it
//! checks the results against (which pods are alive, what the clients saw).
//!
//! Act 0, the agent ([`agent_act`]), runs the real `ghostbuster agent` against the in-process API
//! server and the lab's kube-proxy instead: a rolling update, a scale-to-zero and an IP reuse
//! happen, and nobody types a command. Every lab runs kube-proxy's rules in `--proxy-mode`
//! (nftables or iptables).
//!
//! Acts: 1 the ghost pod ([`ghost_pod`], seed 000), 2 the wrong backend ([`wrong_backend`],
//! seed 003), 3 the UDP blackhole ([`udp_blackhole`], seed 001), 4 who fills the table
//! ([`table_fill`], seed 004). Everything the labs create is removed at the end, on failure and on
//! Ctrl-C ([`interrupt`]), unless `--keep`; a later run removes what an earlier one left behind.
//! Only the labs' own namespaces are changed (flow timestamps on the lab node); never a
//! machine-wide sysctl.

mod agent_act;
mod agent_rig;
mod ghost_pod;
mod interrupt;
mod narrator;
mod stage;
mod table_fill;
mod udp_blackhole;
mod wrong_backend;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use interrupt::{interrupted, reraise};
pub use narrator::Narrator;
pub use netlab::ProxyMode;

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not root, or a tool is missing: nothing was created.
    #[error("{0}")]
    Environment(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Netlab(#[from] netlab::Error),
    #[error(transparent)]
    Conntrack(#[from] ctnetlink::Error),
    #[error("loading the lab's Kubernetes objects: {0}")]
    Load(#[from] crate::cluster::file::Error),
    /// The lab did not behave as the story needs (a client never connected...).
    #[error("the lab misbehaved: {0}")]
    Lab(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Errors of the machine rather than of the demo: exit code 3.
    pub fn is_environment(&self) -> bool {
        match self {
            Error::Environment(_) => true,
            Error::Netlab(e) => matches!(
                e,
                netlab::Error::NotRoot | netlab::Error::Spawn { .. } | netlab::Error::SetNs { .. }
            ),
            Error::Conntrack(e) => e.is_environment(),
            _ => false,
        }
    }
}

/// The two runs of an act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Without ghostbuster: must show the seed's failure.
    Control,
    /// The same story with `ghostbuster scan` + `sweep`.
    Fixed,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Control => "control",
            Mode::Fixed => "fixed",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Mode::Control => "control — without ghostbuster",
            Mode::Fixed => "fixed — with ghostbuster scan + sweep",
        }
    }
}

/// One run's results (`control` / `fixed` in `-o json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The seed's failure showed (in a fixed run: before the sweep, if at all).
    pub failed: bool,
    /// At the end the clients worked, no ghost was left and nothing healthy was broken.
    pub recovered: bool,
    /// Flows ghostbuster reported as not healthy (in a control run: a read-only scan at the end).
    pub ghosts_seen: u64,
    /// Not-healthy flows a scan still finds at the end (after the sweep, in a fixed run).
    pub ghosts_left: u64,
    /// Flows the sweep removed.
    pub removed: u64,
    /// Healthy connections broken: errors or hangs on connections to live backends kept open
    /// through the sweep, plus deleted flows whose backend was alive. Must be 0.
    pub healthy_broken: u64,
    /// Errors the story's client saw (resets, timeouts of lost queries...).
    pub client_errors: u64,
    /// Time the story's client spent stuck, summed over its connections.
    pub stall_seconds: f64,
    /// Wall time of the run, lab setup included.
    pub seconds: f64,
    /// Verdict → flows, of the scan behind `ghosts_seen`.
    pub verdicts: BTreeMap<String, u64>,
    /// What the healthy connections saw.
    pub healthy: stage::HealthyReport,
    /// Act-specific numbers.
    pub details: serde_json::Value,
}

/// One act (`acts[]` in `-o json`).
#[derive(Debug, Clone, Serialize)]
pub struct ActReport {
    pub act: u8,
    pub name: &'static str,
    pub title: &'static str,
    pub seed: &'static str,
    pub control: RunReport,
    pub fixed: RunReport,
    /// The control run failed as the seed describes and the fixed run recovered.
    pub passed: bool,
    pub seconds: f64,
}

impl ActReport {
    fn new(
        (act, name, title, seed): ActInfo,
        control: RunReport,
        fixed: RunReport,
        started: Instant,
    ) -> Self {
        let passed = control.failed
            && !control.recovered
            && control.healthy_broken == 0
            && fixed.recovered
            && fixed.ghosts_left == 0
            && fixed.healthy_broken == 0;
        ActReport {
            act,
            name,
            title,
            seed,
            control,
            fixed,
            passed,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Number, `name`, title and seed file of an act.
type ActInfo = (u8, &'static str, &'static str, &'static str);

/// A lab left in place by `--keep`.
#[derive(Debug, Clone, Serialize)]
pub struct KeptLab {
    pub act: u8,
    pub run: &'static str,
    pub node_netns: String,
    pub client_netns: Option<String>,
    /// The lab's Services, EndpointSlices and Pods, for `ghostbuster scan --from-file`.
    pub objects_file: String,
}

/// The `demo -o json` document.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Every act that ran passed.
    pub passed: bool,
    pub acts: Vec<ActReport>,
    /// The lab's kube-proxy mode (`--proxy-mode`).
    pub proxy_mode: ProxyMode,
    /// Acts 1 to 3 with their control runs (present when all three ran).
    pub acts_1_to_3_seconds: Option<f64>,
    pub total_seconds: f64,
    /// How long the control runs of acts 1 and 3 watch the failure.
    pub window_seconds: f64,
    pub kept: Vec<KeptLab>,
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Acts to run, in this order (empty: all).
    pub acts: Vec<u8>,
    pub keep: bool,
    pub window: Duration,
    /// Narrate on stderr (stdout carries JSON).
    pub narrate_to_stderr: bool,
    /// The rules the lab's kube-proxy renders.
    pub proxy_mode: ProxyMode,
}

/// Shared by the acts.
pub struct Context {
    pub narrator: Narrator,
    pub window: Duration,
    pub proxy_mode: ProxyMode,
    /// Where `--keep` writes the labs' objects.
    keep_dir: Option<PathBuf>,
    kept: Mutex<Vec<KeptLab>>,
}

/// Every act, in order: 0 is the agent act.
pub const ACTS: [u8; 5] = [0, 1, 2, 3, 4];

/// Runs the demo. Labs are removed when this returns, whatever happened, unless `--keep`.
pub fn run(opts: &Options) -> Result<DemoReport, Error> {
    check_environment(opts.proxy_mode)?;
    interrupt::install();
    let result = run_acts(opts);
    if interrupt::interrupted() || (result.is_err() && !opts.keep) {
        // The labs' destructors ran while unwinding; this catches anything they could not.
        let _ = netlab::cleanup_own();
    }
    if interrupt::interrupted() {
        return Err(Error::Interrupted);
    }
    result
}

fn run_acts(opts: &Options) -> Result<DemoReport, Error> {
    let started = Instant::now();
    let narrator = Narrator::new(opts.narrate_to_stderr);
    let removed = netlab::cleanup_leftovers()?;
    let old_dirs = remove_old_keep_dirs();
    let keep_dir = if opts.keep {
        let dir = keep_dir_of(std::process::id());
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        Some(dir)
    } else {
        None
    };
    let acts: Vec<u8> = if opts.acts.is_empty() {
        ACTS.to_vec()
    } else {
        opts.acts.clone()
    };
    intro(&narrator, opts, removed.len() + old_dirs);
    let ctx = Context {
        narrator,
        window: opts.window,
        proxy_mode: opts.proxy_mode,
        keep_dir,
        kept: Mutex::new(Vec::new()),
    };
    let mut reports = Vec::new();
    for act in acts {
        let report = match act {
            0 => agent_act::run(&ctx)?,
            1 => ghost_pod::run(&ctx)?,
            2 => wrong_backend::run(&ctx)?,
            3 => udp_blackhole::run(&ctx)?,
            4 => table_fill::run(&ctx)?,
            n => return Err(Error::Lab(format!("there is no act {n} (agent or 0 to 4)"))),
        };
        verdict_line(&ctx.narrator, &report);
        reports.push(report);
    }
    let first_three: Vec<&ActReport> = reports
        .iter()
        .filter(|r| (1..=3).contains(&r.act))
        .collect();
    let acts_1_to_3_seconds =
        (first_three.len() == 3).then(|| first_three.iter().map(|r| r.seconds).sum::<f64>());
    let kept = ctx.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = DemoReport {
        passed: reports.iter().all(|r| r.passed),
        acts: reports,
        proxy_mode: opts.proxy_mode,
        acts_1_to_3_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        window_seconds: opts.window.as_secs_f64(),
        kept,
    };
    summary(&ctx.narrator, &report);
    Ok(report)
}

fn intro(n: &Narrator, opts: &Options, removed: usize) {
    n.line("ghostbuster demo — the ghost-pod failures of the field reports, reproduced in throwaway network namespaces");
    n.line(&format!(
        "  lab: a \"node\" namespace with kube-proxy-shaped {} DNAT and \"pods\" attached by veths;",
        opts.proxy_mode
    ));
    n.line("  each act runs twice in a fresh lab: CONTROL without ghostbuster (it must show the failure),");
    n.line("  then with ghostbuster: act 0 the agent on its own, acts 1-4 scan + sweep fed with the lab's objects");
    n.line(&format!(
        "  control runs of acts 0, 1 and 3 watch the failure for {:.0} s (--window)",
        opts.window.as_secs_f64()
    ));
    if removed > 0 {
        n.line(&format!(
            "  removed {removed} leftovers of an earlier run (namespaces, --keep files)"
        ));
    }
}

fn verdict_line(n: &Narrator, r: &ActReport) {
    let mark = if r.passed { "PASSED" } else { "FAILED" };
    n.line(&format!(
        "\n  → act {} {mark} in {:.1} s: control {} (stuck {:.1} s, {} ghosts left), fixed {} (stuck {:.1} s, {} ghosts left, {} healthy connections broken)",
        r.act,
        r.seconds,
        if r.control.failed { "failed as in the seed" } else { "did NOT fail: the lab did not reproduce the seed" },
        r.control.stall_seconds,
        r.control.ghosts_left,
        if r.fixed.recovered { "recovered" } else { "did NOT recover" },
        r.fixed.stall_seconds,
        r.fixed.ghosts_left,
        r.fixed.healthy_broken,
    ));
}

fn summary(n: &Narrator, r: &DemoReport) {
    n.line("");
    n.line("summary");
    for a in &r.acts {
        n.line(&format!(
            "  act {}  {:<22} {}  {:>5.1} s   control: ghosts {:>3}, stuck {:>5.1} s, errors {:>3}   fixed: ghosts {:>3} → {} left, stuck {:>4.1} s, healthy broken {}",
            a.act,
            a.title,
            if a.passed { "passed" } else { "FAILED" },
            a.seconds,
            a.control.ghosts_seen,
            a.control.stall_seconds,
            a.control.client_errors,
            a.fixed.ghosts_seen,
            a.fixed.ghosts_left,
            a.fixed.stall_seconds,
            a.fixed.healthy_broken,
        ));
    }
    if let Some(s) = r.acts_1_to_3_seconds {
        n.line(&format!(
            "  acts 1–3 with their control runs: {s:.1} s; everything: {:.1} s",
            r.total_seconds
        ));
    } else {
        n.line(&format!("  total: {:.1} s", r.total_seconds));
    }
    if r.kept.is_empty() {
        n.line("  every lab namespace was removed");
    } else {
        explore(n, &r.kept);
    }
}

fn explore(n: &Narrator, kept: &[KeptLab]) {
    n.line("\nthe labs were kept (--keep); their servers stopped with this process, their conntrack entries remain:");
    for k in kept {
        n.line(&format!(
            "  act {} {:<8} node {}  client {}  objects {}",
            k.act,
            k.run,
            k.node_netns,
            k.client_netns.as_deref().unwrap_or("-"),
            k.objects_file
        ));
    }
    // A control lab still holds its ghosts: the most interesting one to look at.
    let example = kept
        .iter()
        .rev()
        .find(|k| k.run == "control")
        .or(kept.last());
    if let Some(k) = example {
        let node = &k.node_netns;
        n.line(&format!(
            "explore act {} {} (its ghosts are still in the table), e.g.:",
            k.act, k.run
        ));
        n.line(&format!("  ip netns exec {node} ghostbuster list"));
        n.line(&format!(
            "  ghostbuster stats --netns {node} --from-file {} --top 5",
            k.objects_file
        ));
        n.line(&format!(
            "  ghostbuster scan --netns {node} --from-file {} --service-cidr {} --min-age 0s -o wide",
            k.objects_file,
            netlab::plan::SERVICE_CIDR_V4
        ));
        n.line(&format!("  ghostbuster audit --netns {node}"));
        n.line(&format!("  ip netns exec {node} nft list ruleset"));
        n.line("remove them: run `ghostbuster demo` again (it removes leftovers first), or `ip netns del NAME`");
    }
}

/// What is missing for the demo, as one message naming the fix; `None` when nothing is.
pub fn environment_problem(root: bool, missing: &[(&str, &str)]) -> Option<String> {
    let mut parts = Vec::new();
    if !root {
        parts.push(
            "ghostbuster demo needs root: it creates network namespaces (CAP_SYS_ADMIN) and reads and \
             deletes conntrack entries in them (CAP_NET_ADMIN); run it as root, e.g. \
             `sudo ghostbuster demo`"
                .to_string(),
        );
    }
    if !missing.is_empty() {
        let tools: Vec<String> = missing
            .iter()
            .map(|(tool, pkg)| format!("`{tool}` ({pkg})"))
            .collect();
        let packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
        parts.push(format!(
            "ghostbuster demo needs {} to build its lab: install with `apt-get install -y {}`",
            tools.join(" and "),
            packages.join(" ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Root and the lab's tools (for `mode`), checked before anything is created.
fn check_environment(mode: ProxyMode) -> Result<(), Error> {
    let mut tools = vec![("ip", "iproute2", "-V"), ("nft", "nftables", "--version")];
    if mode == ProxyMode::Iptables {
        tools.push(("iptables-restore", "iptables", "--version"));
    }
    let missing: Vec<(&str, &str)> = tools
        .into_iter()
        .filter(|(tool, _, flag)| Command::new(tool).arg(flag).output().is_err())
        .map(|(tool, pkg, _)| (tool, pkg))
        .collect();
    match environment_problem(netlab::is_root(), &missing) {
        Some(msg) => Err(Error::Environment(msg)),
        None => Ok(()),
    }
}

const KEEP_PREFIX: &str = "ghostbuster-demo-";

fn keep_dir_of(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{KEEP_PREFIX}{pid}"))
}

/// Removes the `--keep` directories of demo processes that no longer run (their namespaces are
/// removed by [`netlab::cleanup_leftovers`]). Returns how many went.
fn remove_old_keep_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(KEEP_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if pid != me && !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_messages_name_the_fix() {
        assert_eq!(environment_problem(true, &[]), None);
        let not_root = environment_problem(false, &[]).unwrap();
        assert!(not_root.contains("needs root") && not_root.contains("sudo"));
        let tools = environment_problem(true, &[("nft", "nftables"), ("ip", "iproute2")]).unwrap();
        assert!(
            tools.contains("apt-get install -y nftables iproute2"),
            "{tools}"
        );
        let both = environment_problem(false, &[("nft", "nftables")]).unwrap();
        assert!(both.contains("root") && both.contains("apt-get install -y nftables"));
    }

    #[test]
    fn an_act_passes_only_when_the_control_failed_and_the_fixed_run_recovered() {
        let info: ActInfo = (1, "ghost_pod", "the ghost pod", "000");
        let failed = RunReport {
            failed: true,
            ..RunReport::default()
        };
        let recovered = RunReport {
            failed: true,
            recovered: true,
            ..RunReport::default()
        };
        assert!(ActReport::new(info, failed.clone(), recovered.clone(), Instant::now()).passed);
        // A control that did not fail proves nothing.
        assert!(
            !ActReport::new(
                info,
                RunReport::default(),
                recovered.clone(),
                Instant::now()
            )
            .passed
        );
        // Ghosts left, or a healthy connection broken, is not a recovery.
        let left = RunReport {
            ghosts_left: 1,
            ..recovered.clone()
        };
        assert!(!ActReport::new(info, failed.clone(), left, Instant::now()).passed);
        let broken = RunReport {
            healthy_broken: 1,
            ..recovered
        };
        assert!(!ActReport::new(info, failed, broken, Instant::now()).passed);
    }
}
