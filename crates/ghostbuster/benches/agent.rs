//! The agent benchmark (issue #4 §6): the real `ghostbuster agent` binary against a namespace
//! bulk-filled with cluster-shaped DNAT entries, the in-process fake API server and a fake
//! kube-proxy whose sync time the benchmark controls.
//!
//! 1. **Reaction** (default 1,000,000 entries): repeatedly remove live backends from their
//!    EndpointSlices (their pods are absent, so the agent's pod GETs answer 404), let kube-proxy
//!    "sync" `--sync-after-ms` later (200 ms by default), and time until every entry of them is
//!    gone. Four shapes of round: one IPv4 backend, one IPv6 backend, one backend that 20 more
//!    Services select too (it leaves 21 slices), and 20 backends of different Services at once
//!    (a rolling update's step). Two clocks: the agent's own `ghostbuster_reaction_seconds` (gate opening → flows
//!    deleted, one observation per removal, read as the histogram's sum difference) and an
//!    outside one (kube-proxy's sync visible → the last entry of the round's backends gone, seen
//!    as the namespace's entry count `nf_conntrack_count` reaching its target, polled every
//!    ~0.1 ms; the table holds nothing else that ends during the rounds), which adds the agent's
//!    polling of kube-proxy. The observer listens to no events: a DESTROY listener would make
//!    the kernel build a message per delete for it, taxing the deletes it measures. The table is
//!    filled while a DESTROY listener exists, as on a node where the agent runs: its entries
//!    carry the event extension, so the agent's own subscription costs what it costs there.
//! 2. **Steady state** (default 262,144 entries, 10,000 services / 100,000 endpoints and 50,000
//!    Pods on other nodes loaded, 1,000 new flows per second, default agent settings): how soon
//!    the agent is ready, its CPU (utime + stime from /proc over the window, which includes the
//!    periodic full resyncs), RSS, the effective full-pass interval and the flow index's size.
//! 3. **Kept stale flows** (issue #12 §3, default 100,000 kept + 100,000 healthy entries): flows
//!    to backends that left their Service before the agent started (no tombstone), on a node
//!    without `nf_conntrack_timestamp` (their age is unknown, so even the API server's "no pod at
//!    this IP" proves nothing: kept as `unknown_age`), TCP so that nothing else removes them.
//!    Every full pass judges all of them stale and keeps them; the agent's RSS is sampled after
//!    each pass and must stay flat (the reports carry exact counts and only a few details).
//!
//! `cargo bench -p ghostbuster --bench agent -- [--removals K] [--removals-v6 K]
//! [--shared-removals K] [--batch-removals K] [--sync-after-ms MS] [--entries N]
//! [--steady-entries N] [--services S] [--backends B] [--pods P] [--rate R] [--window SECONDS]
//! [--kept N] [--kept-healthy N] [--kept-passes P] [--skip-reaction] [--skip-steady] [--skip-kept]`.
//! Needs root; raises `nf_conntrack_max` for the run when needed and restores it. Figures belong
//! here and in docs/performance.md, never in timed tests.
//!
//! Diagnostics (environment): `GB_BENCH_VERBOSE=1` prints each round's timeline,
//! `GB_BENCH_WATCH_LATENCY=1` how long the agent took to count the EndpointSlice change,
//! `GB_BENCH_AGENT_LOG=debug` the agent's own log level, `GB_BENCH_AGENT_ARGS` extra agent flags.

mod support;

#[path = "../tests/agent_support/mod.rs"]
mod agent_support;
// agent_support's lab stories build on it.
#[path = "../tests/scan_support/mod.rs"]
mod scan_support;

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::{metric_sum, Agent, FakeKubeProxy};
use ctnetlink::{Conntrack, EventGroups, EventSocket, Filter, NewFlow, Tuple, TupleMatch};
use fake_apiserver::FakeApiServer;
use netlab::bulk::{self, BulkSpec};
use netlab::NetNs;
use serde_json::Value;

const FULL_PASSES: &str = "ghostbuster_scan_duration_seconds_count{kind=\"full\"}";
const TARGETED_PASSES: &str = "ghostbuster_scan_duration_seconds_count{kind=\"targeted\"}";
struct Args {
    removals: usize,
    removals_v6: usize,
    shared_removals: usize,
    batch_removals: usize,
    sync_after: Duration,
    entries: usize,
    steady_entries: usize,
    services: usize,
    backends: usize,
    rate: usize,
    window: Duration,
    kept: usize,
    kept_healthy: usize,
    kept_passes: usize,
    pods: usize,
    reaction: bool,
    steady: bool,
    kept_phase: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        removals: 30,
        removals_v6: 10,
        shared_removals: 10,
        batch_removals: 5,
        sync_after: Duration::from_millis(200),
        entries: 1_000_000,
        steady_entries: 262_144,
        services: 10_000,
        backends: 10,
        rate: 1_000,
        window: Duration::from_secs(120),
        kept: 100_000,
        kept_healthy: 100_000,
        kept_passes: 6,
        pods: 50_000,
        reaction: true,
        steady: true,
        kept_phase: true,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, flag: &str| -> usize {
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{flag} needs a number");
            std::process::exit(2)
        })
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--bench" => {}
            "--removals" => a.removals = num(it.next(), &x),
            "--removals-v6" => a.removals_v6 = num(it.next(), &x),
            "--shared-removals" => a.shared_removals = num(it.next(), &x),
            "--batch-removals" => a.batch_removals = num(it.next(), &x),
            "--sync-after-ms" => a.sync_after = Duration::from_millis(num(it.next(), &x) as u64),
            "--entries" => a.entries = num(it.next(), &x),
            "--steady-entries" => a.steady_entries = num(it.next(), &x),
            "--services" => a.services = num(it.next(), &x),
            "--backends" => a.backends = num(it.next(), &x),
            "--rate" => a.rate = num(it.next(), &x),
            "--window" => a.window = Duration::from_secs(num(it.next(), &x) as u64),
            "--skip-reaction" => a.reaction = false,
            "--skip-steady" => a.steady = false,
            "--kept" => a.kept = num(it.next(), &x),
            "--kept-healthy" => a.kept_healthy = num(it.next(), &x),
            "--kept-passes" => a.kept_passes = num(it.next(), &x).max(2),
            "--pods" => a.pods = num(it.next(), &x),
            "--skip-kept" => a.kept_phase = false,
            _ => {
                eprintln!(
                    "usage: agent [--removals K] [--removals-v6 K] [--shared-removals K] [--batch-removals K] [--sync-after-ms MS] [--entries N] [--steady-entries N] [--services S] \
                     [--backends B] [--pods P] [--rate R] [--window SECONDS] [--kept N] [--kept-healthy N] \
                     [--kept-passes P] [--skip-reaction] [--skip-steady] [--skip-kept]"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();
    if !netlab::is_root() {
        eprintln!("SKIP: the benchmark needs root (network namespaces, conntrack)");
        return;
    }
    let _ = netlab::cleanup_leftovers();
    let biggest = [
        if args.reaction { args.entries } else { 0 },
        if args.steady {
            // The generated flows live 30 s on top of the table.
            args.steady_entries + args.rate * 40
        } else {
            0
        },
        if args.kept_phase {
            args.kept + args.kept_healthy
        } else {
            0
        },
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as u64;
    let guard = support::raise_conntrack_max(biggest);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("ghostbuster agent benchmark: {cpus} CPUs\n");
    if args.reaction {
        reaction(&args);
    }
    if args.steady {
        steady(&args);
    }
    if args.kept_phase {
        kept(&args);
    }
    drop(guard);
}

/// Publishes the cluster's Services and EndpointSlices (no Pods: none of them is on the agent's
/// node, and an absent pod is what the agent's GET must find for a removed backend).
fn publish(api: &FakeApiServer, cluster: &bulk::Cluster) {
    let objects = cluster.kubernetes_objects();
    let mut n = 0;
    for item in objects["items"].as_array().into_iter().flatten() {
        if item["kind"] == "Pod" {
            continue;
        }
        api.apply(item.clone());
        n += 1;
    }
    println!("published {n} Services and EndpointSlices");
}

/// The agent, ready, and how long that took.
fn start_agent(
    api: &FakeApiServer,
    ns: &str,
    kp: &FakeKubeProxy,
    extra: &[&str],
) -> (Agent, Duration) {
    // GB_BENCH_AGENT_LOG=debug shows the agent's reasoning (noisy); GB_BENCH_AGENT_ARGS adds
    // flags (e.g. "--resync-interval 300s" to measure the cost between full passes).
    let log = std::env::var("GB_BENCH_AGENT_LOG").ok();
    let more = std::env::var("GB_BENCH_AGENT_ARGS").unwrap_or_default();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(more.split_whitespace());
    if let Some(l) = &log {
        args.extend(["--log", l.as_str()]);
    }
    let started = Instant::now();
    let agent = Agent::start(api, ns, kp, &args);
    assert!(
        agent.wait_ready(Duration::from_secs(120)),
        "the agent never became ready"
    );
    // `/readyz` answers 200 once every watch synced and the first full pass over that view
    // finished.
    let ready = started.elapsed();
    // Ready means synced; wait for the first full pass too (it sweeps nothing here).
    let until = Instant::now() + Duration::from_secs(120);
    while metric_sum(&agent.metrics(), "ghostbuster_scan_duration_seconds_count") < 1.0 {
        assert!(Instant::now() < until, "no full pass within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "agent started; /readyz 200 after {:.1} s (lists, watches, the first full pass)",
        ready.as_secs_f64()
    );
    (agent, ready)
}

/// Publishes the first `n` of the cluster's Pods (they run on other nodes); how many.
fn publish_pods(api: &FakeApiServer, cluster: &bulk::Cluster, n: usize) -> usize {
    let objects = cluster.kubernetes_objects();
    let mut published = 0;
    for item in objects["items"].as_array().into_iter().flatten() {
        if published >= n {
            break;
        }
        if item["kind"] == "Pod" {
            api.apply(item.clone());
            published += 1;
        }
    }
    published
}

/// Removes `ip` from the EndpointSlice that lists it; returns whether one did.
fn remove_endpoint(api: &FakeApiServer, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    for mut slice in api.objects("endpointslices") {
        let Some(eps) = slice["endpoints"].as_array() else {
            continue;
        };
        let keep: Vec<Value> = eps
            .iter()
            .filter(|e| {
                !e["addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
            })
            .cloned()
            .collect();
        if keep.len() != eps.len() {
            slice["endpoints"] = Value::Array(keep);
            api.apply(slice);
            return true;
        }
    }
    false
}

fn count_to(ct: &mut Conntrack, ip: IpAddr) -> usize {
    let f = Filter::new().with_reply(TupleMatch::new().with_src(ip));
    let mut n = 0;
    ct.dump(&f, |_| {
        n += 1;
        ControlFlow::Continue(())
    })
    .expect("dump");
    n
}

/// The namespace's entry count (`nf_conntrack_count`), read by an observer that listens to no
/// events. The file is opened inside the namespace: a sysctl file reads the namespace it was
/// opened in.
struct EntryCount(std::fs::File);

impl EntryCount {
    fn open(ns: &str) -> EntryCount {
        let file = netlab::ns::in_netns(ns, || {
            std::fs::File::open("/proc/sys/net/netfilter/nf_conntrack_count")
        })
        .expect("enter the namespace")
        .expect("open nf_conntrack_count");
        EntryCount(file)
    }

    fn read(&mut self) -> usize {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 32];
        let n = self
            .0
            .read_at(&mut buf, 0)
            .expect("read nf_conntrack_count");
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("a count")
    }

    /// Polls until the count is at most `target`: when it first was, or `None` at `deadline`.
    fn wait_at_most(&mut self, target: usize, deadline: Instant) -> Option<Instant> {
        loop {
            if self.read() <= target {
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// A DESTROY subscription held while the table is filled: with `nf_conntrack_events=2` (the
/// default) the kernel gives an entry its event extension only if some socket listens to
/// conntrack events when the entry is created — on a node, the agent. Never read; dropped once
/// the table is full.
fn primer(ns: &str) -> EventSocket {
    EventSocket::open_in(Some(ns), EventGroups::DESTROY, 64 << 10).expect("subscribe to DESTROY")
}

/// The value of one exact series (`name{labels}`), 0 when absent.
fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        percentile(&v, 50.0) * 1e3,
        percentile(&v, 90.0) * 1e3,
        percentile(&v, 99.0) * 1e3,
        v.last().copied().unwrap_or(f64::NAN) * 1e3,
    );
}

fn reaction(args: &Args) {
    let ns = NetNs::create("bnag").expect("namespace");
    let name = ns.name().to_string();
    let spec = BulkSpec {
        entries: args.entries,
        services: 200,
        stale_fraction: 0.0,
        // UDP entries must outlive the run, or their expiry reads as missing deletes.
        udp_timeout: 3600,
        ..BulkSpec::default()
    };
    let primed = primer(&name);
    let t = Instant::now();
    let (cluster, truth) = bulk::fill(Some(&name), &spec).expect("fill");
    assert_eq!(truth.failed, 0, "fill failed: {truth:?}");
    drop(primed);
    let mut count = EntryCount::open(&name);
    println!(
        "## Reaction: {} entries, {} services; filled in {:.1} s; kube-proxy syncs {} ms after each removal",
        truth.created,
        spec.services,
        t.elapsed().as_secs_f64(),
        args.sync_after.as_millis()
    );
    let api = FakeApiServer::start_in_thread().expect("fake API server");
    publish(&api, &cluster);
    // Live backends of a family, one per service first, so consecutive removals hit different
    // services.
    let order_of = |v6: bool| -> Vec<IpAddr> {
        let per_service: Vec<Vec<IpAddr>> = cluster
            .services
            .iter()
            .map(|s| {
                s.endpoints
                    .iter()
                    .map(|e| e.ip)
                    .filter(|ip| ip.is_ipv6() == v6)
                    .collect()
            })
            .collect();
        let mut order = Vec::new();
        for k in 0..spec.backends {
            for s in &per_service {
                if let Some(ip) = s.get(k) {
                    order.push(*ip);
                }
            }
        }
        order
    };
    let mut order = order_of(false).into_iter();
    let mut order6 = order_of(true).into_iter();
    let singles: Vec<Vec<IpAddr>> = order
        .by_ref()
        .take(args.removals)
        .map(|ip| vec![ip])
        .collect();
    let singles6: Vec<Vec<IpAddr>> = order6
        .by_ref()
        .take(args.removals_v6)
        .map(|ip| vec![ip])
        .collect();
    // Backends that other Services select too: each also listed by SHARED_BY more Services
    // (API objects only; their flows are the first Service's).
    let shared: Vec<Vec<IpAddr>> = order
        .by_ref()
        .take(args.shared_removals)
        .map(|ip| vec![ip])
        .collect();
    for (k, round) in shared.iter().enumerate() {
        publish_sharing(&api, round[0], k);
    }
    // A rolling update's step: BATCH backends of different Services leave at once.
    let batches: Vec<Vec<IpAddr>> = (0..args.batch_removals)
        .map(|_| order.by_ref().take(BATCH).collect())
        .collect();
    let kp = FakeKubeProxy::start("nftables");
    // ~1,650 deletes a round, a round a second: far past the default budget of 20,000 a minute.
    let (agent, _) = start_agent(&api, &name, &kp, &["--max-deletes-per-minute", "0"]);
    let mut ct = Conntrack::open_in(Some(&name)).expect("open");

    println!("| clock | removals | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut all_outside = Vec::new();
    for (label, rounds) in [
        ("IPv4, one backend", singles),
        ("IPv6, one backend", singles6),
        (SHARED_LABEL, shared),
        (BATCH_LABEL, batches),
    ] {
        let r = measure_rounds(args, &api, &kp, &agent, &mut ct, &mut count, &rounds);
        if r.entries.is_empty() {
            continue;
        }
        summary(
            &format!(
                "{label}, {}..{} entries per round: agent, gate open → deleted (`ghostbuster_reaction_seconds`)",
                r.entries.iter().min().unwrap_or(&0),
                r.entries.iter().max().unwrap_or(&0),
            ),
            r.agent_side,
        );
        let mut sorted = r.outside.clone();
        sorted.sort_by(f64::total_cmp);
        let figure = match label {
            "IPv4, one backend" => &support::REACTION_P99,
            _ => &support::REACTION_P99_SHAPES,
        };
        let context = format!("{label}, {} entries", support::thousands(args.entries));
        let (p99, over) = (
            percentile(&sorted, 99.0) * 1e3,
            format!("p99 of {} rounds", sorted.len()),
        );
        support::summary(figure, &context, p99, &over, sorted.len());
        all_outside.extend(r.outside.iter().copied());
        summary(
            &format!("{label}: outside, kube-proxy sync visible → last entry gone"),
            r.outside,
        );
        summary(
            &format!("{label}: agent, removal seen → gate open (`ghostbuster_gate_wait_seconds`)"),
            r.gate_waits,
        );
    }
    summary(
        "every round: outside, kube-proxy sync visible → last entry gone",
        all_outside,
    );
    // Targeted dump alone, for comparison: what a pass that must walk the table costs.
    let mut walks = Vec::new();
    for ip in order.take(5) {
        let t = Instant::now();
        count_to(&mut ct, ip);
        walks.push(t.elapsed().as_secs_f64());
    }
    summary("reference: filtered dump of one IPv4 backend", walks);
    let m = agent.metrics();
    println!(
        "\nfull passes during the run (incl. the first): {}; targeted passes read through the flow index: {}, by a walk: {}; flow index: {} entries, {:.1} MiB ({:.1} bytes/entry), trusted {}\n",
        series(&m, FULL_PASSES),
        series(&m, "ghostbuster_backend_reads_total{how=\"index\"}"),
        series(&m, "ghostbuster_backend_reads_total{how=\"walk\"}"),
        series(&m, "ghostbuster_flow_index_entries"),
        series(&m, "ghostbuster_flow_index_bytes") / 1048576.0,
        series(&m, "ghostbuster_flow_index_bytes") / series(&m, "ghostbuster_flow_index_entries").max(1.0),
        series(&m, "ghostbuster_flow_index_trusted"),
    );
    let flows = series(&m, "ghostbuster_flow_index_entries");
    let context = format!("{} entries", support::thousands(args.entries));
    let per_flow = series(&m, "ghostbuster_flow_index_bytes") / flows.max(1.0);
    let indexed = format!("{} flows", support::thousands(flows as usize));
    support::summary(&support::FLOW_INDEX_BYTES, &context, per_flow, &indexed, 1);
    agent.stop();
}

/// Backends removed together in a rolling update's step.
const BATCH: usize = 20;
const BATCH_LABEL: &str = "IPv4, 20 backends at once";
/// How many more Services select a shared backend.
const SHARED_BY: usize = 20;
const SHARED_LABEL: &str = "IPv4, one backend in 21 Services";

/// Publishes SHARED_BY Services (`shared-K-J`, no ports of their own that matter) whose
/// EndpointSlices list `ip`: the backend is in 1 + SHARED_BY Services when it leaves.
fn publish_sharing(api: &FakeApiServer, ip: IpAddr, k: usize) {
    let family = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
    for j in 0..SHARED_BY {
        let name = format!("shared-{k}-{j}");
        api.apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}")},
            "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }));
        api.apply(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "namespace": "bench",
                         "uid": format!("uid-{name}-x"),
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "endpoints": [{"addresses": [ip.to_string()],
                           "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
    }
}

/// What the rounds of one shape measured, in seconds (and entries per round).
#[derive(Default)]
struct Rounds {
    agent_side: Vec<f64>,
    gate_waits: Vec<f64>,
    outside: Vec<f64>,
    entries: Vec<usize>,
}

/// Each round removes its backends from every slice at once, lets kube-proxy "sync"
/// `--sync-after-ms` later, and waits for the DESTROY event of every entry of them.
fn measure_rounds(
    args: &Args,
    api: &FakeApiServer,
    kp: &FakeKubeProxy,
    agent: &Agent,
    ct: &mut Conntrack,
    count: &mut EntryCount,
    rounds: &[Vec<IpAddr>],
) -> Rounds {
    let mut out = Rounds::default();
    for ips in rounds {
        let total: usize = ips.iter().map(|ip| count_to(ct, *ip)).sum();
        if total == 0 {
            continue;
        }
        let before = count.read();
        let m0 = agent.metrics();
        let (sum0, n0) = (
            metric_sum(&m0, "ghostbuster_reaction_seconds_sum"),
            metric_sum(&m0, "ghostbuster_reaction_seconds_count"),
        );
        let (wsum0, wn0) = (
            metric_sum(&m0, "ghostbuster_gate_wait_seconds_sum"),
            metric_sum(&m0, "ghostbuster_gate_wait_seconds_count"),
        );
        let removed = Instant::now();
        for ip in ips {
            while remove_endpoint(api, *ip) {}
        }
        std::thread::sleep(args.sync_after);
        let now = agent_support::now_secs();
        kp.synced(now - 0.01, now);
        let synced = Instant::now();
        let last = count.wait_at_most(before - total, Instant::now() + Duration::from_secs(30));
        // The count says how many went, the backends' own counts that it was these: nothing
        // else in the table ends during the rounds, and the agent must delete nothing else.
        let left: usize = ips.iter().map(|ip| count_to(ct, *ip)).sum();
        let after = count.read();
        assert_eq!(
            after,
            before - total,
            "the table lost {} entries for {total} of the round's backends",
            before - after
        );
        if last.is_none() || left > 0 {
            let m = agent.metrics();
            let lines: Vec<&str> = m
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                .collect();
            panic!(
                "{} of {total} entries of {ips:?} removed within 30 s; the agent's metrics:\n{}\n/readyz: {:?}",
                total - left,
                lines.join("\n"),
                agent.get("/readyz"),
            );
        }
        let last = last.expect("the round's entries gone");
        if std::env::var_os("GB_BENCH_VERBOSE").is_some() {
            eprintln!(
                "{ips:?}: {total} entries; sync {:?} after the removal, the last gone {:?} after the sync",
                synced - removed,
                last.saturating_duration_since(synced)
            );
        }
        out.outside
            .push(last.saturating_duration_since(synced).as_secs_f64());
        // The agent's own observations of this round (one per backend).
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let m = agent.metrics();
            let n = metric_sum(&m, "ghostbuster_reaction_seconds_count");
            let wn = metric_sum(&m, "ghostbuster_gate_wait_seconds_count");
            if n >= n0 + ips.len() as f64 && wn >= wn0 + ips.len() as f64 {
                let s = metric_sum(&m, "ghostbuster_reaction_seconds_sum");
                out.agent_side.push((s - sum0) / (n - n0));
                let ws = metric_sum(&m, "ghostbuster_gate_wait_seconds_sum");
                out.gate_waits.push((ws - wsum0) / (wn - wn0));
                break;
            }
            if Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out.entries.push(total);
    }
    out
}

/// Reads (utime, stime) in seconds and the RSS/peak RSS in KiB of `pid`.
fn usage(pid: u32) -> ((f64, f64), u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state field 3.
    let cpu = (ticks(11) / hz, ticks(12) / hz);
    let [rss, hwm] = status_kib(pid, ["VmRSS:", "VmHWM:"]);
    (cpu, rss, hwm)
}

/// RssAnon and RssFile of `pid`, KiB.
fn rss_split(pid: u32) -> (u64, u64) {
    let [anon, file] = status_kib(pid, ["RssAnon:", "RssFile:"]);
    (anon, file)
}

/// Values (KiB) of `/proc/PID/status` lines, 0 when absent.
fn status_kib<const N: usize>(pid: u32, keys: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.map(|key| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

fn steady(args: &Args) {
    let ns = NetNs::create("bnst").expect("namespace");
    let name = ns.name().to_string();
    let spec = BulkSpec {
        entries: args.steady_entries,
        services: args.services,
        backends: args.backends,
        deleted_per_service: 0,
        stale_fraction: 0.0,
        // The table must not shrink during the window: UDP entries outlive it.
        udp_timeout: 3600,
        ..BulkSpec::default()
    };
    let t = Instant::now();
    let (cluster, truth) = bulk::fill(Some(&name), &spec).expect("fill");
    assert_eq!(truth.failed, 0, "fill failed: {truth:?}");
    let endpoints: usize = cluster.services.iter().map(|s| s.endpoints.len()).sum();
    println!(
        "## Steady state: {} entries ({:?}), {} services / {endpoints} endpoints, {} new flows/s; \
         filled in {:.1} s",
        truth.created,
        truth.per_family,
        cluster.services.len(),
        args.rate,
        t.elapsed().as_secs_f64()
    );
    let api = FakeApiServer::start_in_thread().expect("fake API server");
    publish(&api, &cluster);
    let pods = publish_pods(&api, &cluster, args.pods);
    println!("published {pods} Pods (on other nodes: the agent lists only its own node's)");
    let kp = FakeKubeProxy::start("nftables");
    let (agent, ready) = start_agent(&api, &name, &kp, &[]);
    let pid = agent.child.id();

    // New flows: UDP entries DNAT'd to live backends, created in batches every 100 ms, that
    // expire after 30 s (so the table stays near its size). Source ports far above the fill's.
    let stop = Arc::new(AtomicBool::new(false));
    let gen = {
        let stop = stop.clone();
        let name = name.clone();
        let targets: Vec<(IpAddr, IpAddr)> = cluster
            .services
            .iter()
            .filter_map(|s| Some((s.cluster_ips[0], s.endpoints.first()?.ip)))
            .collect();
        let per_batch = (args.rate / 10).max(1);
        std::thread::spawn(move || {
            let mut ct = Conntrack::open_in(Some(&name)).expect("open");
            let mut n: usize = 0;
            let mut created = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<NewFlow> = (0..per_batch)
                    .map(|_| {
                        n += 1;
                        let (vip, backend) = targets[n % targets.len()];
                        let client = match vip {
                            IpAddr::V4(_) => IpAddr::from([192, 0, 2, (n % 254) as u8 + 1]),
                            IpAddr::V6(_) => {
                                IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, 0, (n % 254) as u16 + 1])
                            }
                        };
                        let sport = 40_000 + ((n / 254) % 20_000) as u16;
                        let orig = Tuple::ports(client, sport, vip, 53, libc::IPPROTO_UDP as u8);
                        let mut f = NewFlow::established(orig, Some((backend, 5353)));
                        f.timeout = 30;
                        f
                    })
                    .collect();
                if let Ok(s) = ct.create(&batch) {
                    created += s.created;
                }
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            created
        })
    };
    // Let the generator reach its rate, then measure over the window.
    std::thread::sleep(Duration::from_secs(5));
    let (c0, _, _) = usage(pid);
    let t0 = Instant::now();
    let m0 = agent.metrics();
    let mut rss_max = 0;
    while t0.elapsed() < args.window {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(usage(pid).1);
    }
    let (c1, rss, hwm) = usage(pid);
    let wall = t0.elapsed().as_secs_f64();
    let m1 = agent.metrics();
    stop.store(true, Ordering::Relaxed);
    let created = gen.join().expect("generator");
    let full = series(&m1, FULL_PASSES) - series(&m0, FULL_PASSES);
    let targeted = series(&m1, TARGETED_PASSES) - series(&m0, TARGETED_PASSES);
    println!(
        "window {wall:.0} s; {created} flows generated in all; full passes during the window: \
         {full}, targeted: {targeted}\n"
    );
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    let (user, sys) = (c1.0 - c0.0, c1.1 - c0.1);
    println!(
        "| agent CPU ((utime+stime) / wall) | {:.2} % of one core (user {:.2} s, sys {:.2} s) | ≤ 1 % |",
        (user + sys) / wall * 100.0,
        user,
        sys
    );
    println!(
        "| agent RSS (max sampled / at end) | {:.1} / {:.1} MiB | ≤ 64 MiB |",
        rss_max as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!(
        "| agent peak RSS (VmHWM, includes start-up) | {:.1} MiB | |",
        hwm as f64 / 1024.0
    );
    println!(
        "| effective full-pass interval (`ghostbuster_full_pass_interval_seconds`, stretched by `--resync-cpu-percent`) | {:.0} s | as designed |",
        series(&m1, "ghostbuster_full_pass_interval_seconds")
    );
    println!(
        "| flow index | {} entries, {:.1} MiB ({:.1} bytes/entry), trusted {} | |",
        series(&m1, "ghostbuster_flow_index_entries"),
        series(&m1, "ghostbuster_flow_index_bytes") / 1048576.0,
        series(&m1, "ghostbuster_flow_index_bytes")
            / series(&m1, "ghostbuster_flow_index_entries").max(1.0),
        series(&m1, "ghostbuster_flow_index_trusted"),
    );
    let (anon, file) = rss_split(pid);
    println!(
        "| of the RSS at the end: heap and stacks (RssAnon) / mapped binary (RssFile) | {:.1} / {:.1} MiB | |",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    println!();
    let t = support::thousands;
    let big = format!(
        "{} entries + {} Services / {} endpoints / {} Pods",
        t(truth.created as usize),
        t(cluster.services.len()),
        t(endpoints),
        t(pods)
    );
    let (mib, w) = (1.0 / 1024.0, format!("{wall:.0} s window"));
    let rate = format!("{} new flows/s", t(args.rate));
    support::summary(&support::READY, &big, ready.as_secs_f64(), "once", 1);
    support::summary(&support::CPU, &rate, (user + sys) / wall * 100.0, &w, 1);
    support::summary(&support::STEADY_RSS, "", rss_max as f64 * mib, &w, 1);
    support::summary(&support::PEAK_RSS, "", hwm as f64 * mib, "since start", 1);
    let interval = series(&m1, "ghostbuster_full_pass_interval_seconds");
    support::summary(&support::FULL_PASS_INTERVAL, "", interval, "at the end", 1);
    let flows = series(&m1, "ghostbuster_flow_index_entries");
    let per_flow = series(&m1, "ghostbuster_flow_index_bytes") / flows.max(1.0);
    let indexed = format!("{} flows", support::thousands(flows as usize));
    support::summary(
        &support::FLOW_INDEX_BYTES,
        "steady state",
        per_flow,
        &indexed,
        1,
    );
    agent.stop();
}

/// The TCP Service ports that lead to each deleted backend: (VIP, port, backend, target port).
fn ghost_targets(cluster: &bulk::Cluster) -> Vec<(IpAddr, u16, IpAddr, u16)> {
    let mut out = Vec::new();
    for d in &cluster.deleted {
        let Some(svc) = cluster
            .services
            .iter()
            .find(|s| format!("{}/{}", s.namespace, s.name) == d.service)
        else {
            continue;
        };
        let Some(vip) = svc
            .cluster_ips
            .iter()
            .find(|v| v.is_ipv6() == d.ip.is_ipv6())
        else {
            continue;
        };
        for p in &svc.ports {
            if p.protocol.number() == libc::IPPROTO_TCP as u8 {
                out.push((*vip, p.port, d.ip, p.target_port));
            }
        }
    }
    out
}

/// Creates `n` established TCP flows to the deleted backends (clients in 198.51.100.0/24 and
/// 2001:db8:3::/64, distinct from the fill's); returns how many the kernel created.
fn create_ghosts(ct: &mut Conntrack, targets: &[(IpAddr, u16, IpAddr, u16)], n: usize) -> u64 {
    let mut created = 0;
    let mut k = 0usize;
    while k < n {
        let batch: Vec<NewFlow> = (k..(k + 2_000).min(n))
            .map(|i| {
                let (vip, port, backend, target) = targets[i % targets.len()];
                // Client `i mod 254`, source port from `i / 254`: tuples never repeat.
                let host = (i % 254) as u8 + 1;
                let client = match vip {
                    IpAddr::V4(_) => IpAddr::from([198, 51, 100, host]),
                    IpAddr::V6(_) => IpAddr::from([0x2001, 0xdb8, 3, 0, 0, 0, 0, host as u16]),
                };
                let sport = 1024 + ((i / 254) % 64_000) as u16;
                let orig = Tuple::ports(client, sport, vip, port, libc::IPPROTO_TCP as u8);
                let mut f = NewFlow::established(orig, Some((backend, target)));
                f.timeout = 86_400;
                f
            })
            .collect();
        k += batch.len();
        created += ct.create(&batch).expect("create ghost flows").created;
    }
    created
}

fn kept(args: &Args) {
    let ns = NetNs::create("bnkp").expect("namespace");
    let name = ns.name().to_string();
    // A node without conntrack timestamps: a flow's start is unknown, and unknown is not old.
    const TSTAMP: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";
    netlab::in_netns(&name, || std::fs::write(TSTAMP, "0"))
        .expect("enter the namespace")
        .expect("turn nf_conntrack_timestamp off in the bench's namespace");
    let spec = BulkSpec {
        entries: args.kept_healthy,
        services: 200,
        stale_fraction: 0.0,
        // Healthy UDP entries must outlive the run: an expiry is no change of the agent's.
        udp_timeout: 3600,
        ..BulkSpec::default()
    };
    let t = Instant::now();
    let (cluster, truth) = bulk::fill(Some(&name), &spec).expect("fill");
    assert_eq!(truth.failed, 0, "fill failed: {truth:?}");
    let targets = ghost_targets(&cluster);
    assert!(
        !targets.is_empty(),
        "no TCP port leads to a deleted backend"
    );
    let mut ct = Conntrack::open_in(Some(&name)).expect("open");
    let ghosts = create_ghosts(&mut ct, &targets, args.kept);
    assert_eq!(ghosts, args.kept as u64, "not every ghost flow was created");
    let ghost_ips: std::collections::BTreeSet<IpAddr> =
        targets.iter().map(|(_, _, b, _)| *b).collect();
    println!(
        "## Kept stale flows: {} kept (TCP, {} gone backends, no timestamps) + {} healthy entries, \
         {} services; filled in {:.1} s",
        ghosts,
        ghost_ips.len(),
        truth.created,
        spec.services,
        t.elapsed().as_secs_f64()
    );
    let api = FakeApiServer::start_in_thread().expect("fake API server");
    publish(&api, &cluster);
    let kp = FakeKubeProxy::start("nftables");
    // Short full-pass interval, never stretched: many passes in a short run.
    let (agent, _) = start_agent(
        &api,
        &name,
        &kp,
        &["--resync-interval", "5s", "--resync-cpu-percent", "0"],
    );
    // kube-proxy has synced since the agent started: from now on the agent asks the API server
    // who holds each gone backend's IP (nobody), and still keeps the flows (their age is unknown).
    kp.synced_now();
    let pid = agent.child.id();
    // The RSS within the passes too (every 20 ms), not only between them: a pass's transient
    // peak is what would hit a memory limit.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while sampling.load(Ordering::Relaxed) {
                max = max.max(status_kib(pid, ["VmRSS:"])[0]);
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        })
    };
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new();
    let mut passes_seen = series(&agent.metrics(), FULL_PASSES);
    let first = passes_seen;
    println!("| after full pass | VmRSS MiB | stale flows (gauge) | flows removed (total) |");
    println!("|---:|---:|---:|---:|");
    while samples.len() < args.kept_passes {
        let until = Instant::now() + Duration::from_secs(120);
        let m = loop {
            let m = agent.metrics();
            if series(&m, FULL_PASSES) > passes_seen {
                break m;
            }
            assert!(Instant::now() < until, "no full pass within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        passes_seen = series(&m, FULL_PASSES);
        let rss = status_kib(pid, ["VmRSS:"])[0];
        // (`as u64`: a sum over no series is -0.0.)
        let stale = metric_sum(&m, "conntrack_stale_entries") as u64;
        let removed = metric_sum(&m, "ghostbuster_flows_removed_total") as u64;
        println!(
            "| {passes_seen} | {:.1} | {stale} | {removed} |",
            rss as f64 / 1024.0
        );
        samples.push((passes_seen, rss, stale, removed));
    }
    sampling.store(false, Ordering::Relaxed);
    let in_passes = sampler.join().expect("sampler");
    let [hwm, anon, file] = status_kib(pid, ["VmHWM:", "RssAnon:", "RssFile:"]);
    // One dump of the whole table (a filtered one per backend would walk it 180 times).
    let mut left = 0usize;
    ct.dump(&Filter::default(), |f| {
        left += ghost_ips.contains(&f.reply.src) as usize;
        ControlFlow::Continue(())
    })
    .expect("dump");
    let passes = passes_seen - first + 1.0;
    // Flat after the first pass (the allocator's arenas settle during it).
    let after_first: Vec<u64> = samples.iter().skip(1).map(|s| s.1).collect();
    let (min, max) = (
        *after_first.iter().min().unwrap_or(&0),
        *after_first.iter().max().unwrap_or(&0),
    );
    let last = samples.last().map(|s| s.1).unwrap_or(0);
    let spread = (max - min) as f64 / min.max(1) as f64 * 100.0;
    let judged_kept =
        samples.iter().all(|s| s.2 == args.kept as u64 && s.3 == 0) && left == args.kept;
    let mib = |k: u64| k as f64 / 1024.0;
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!("| kept stale flows (N) | {} | |", args.kept);
    println!("| full passes (incl. the first) | {passes} | ≥ 5 |");
    println!(
        "| agent RSS after passes 2..: min / max / last | {:.1} / {:.1} / {:.1} MiB | < 128 MiB |",
        mib(min),
        mib(max),
        mib(last)
    );
    println!("| spread (max − min) / min | {spread:.1} % | ≤ 10 % |");
    println!(
        "| agent RSS max, sampled every 20 ms from the start (every pass) | {:.1} MiB | < 128 MiB |",
        mib(in_passes)
    );
    println!(
        "| agent peak RSS (VmHWM, includes start-up) | {:.1} MiB | < 128 MiB |",
        mib(hwm)
    );
    println!(
        "| of the RSS at the end: RssAnon / RssFile | {:.1} / {:.1} MiB | |",
        mib(anon),
        mib(file)
    );
    println!(
        "| every pass: stale gauge = N, 0 removed; N still in the table at the end | {} ({left} left) | yes |",
        if judged_kept { "yes" } else { "NO" }
    );
    println!();
    let n = format!("N = {}", support::thousands(args.kept));
    let over = format!("{passes} full passes");
    support::summary(&support::KEPT_RSS, &n, mib(in_passes), &over, 1);
    support::summary(&support::KEPT_SPREAD, &n, spread, &over, 1);
    agent.stop();
}
