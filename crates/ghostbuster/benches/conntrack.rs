//! The benchmark: fill a namespace's conntrack table with N cluster-shaped DNAT entries
//! (netlab::bulk, ~2 % pointing at deleted backends over ~200 services), then time, in the same
//! run and on the same table, ghostbuster's commands against `conntrack -L` / `conntrack -C`.
//! Prints wall time (median of the runs), peak RSS and the ratio to `conntrack -L`.
//!
//! `cargo bench -p ghostbuster --bench conntrack -- [--runs R] [N ...]` (default N: 262144 and
//! 1000000). Needs root. When N exceeds the machine-wide `nf_conntrack_max`, the limit is raised
//! for the run and restored at the end (printed), since a child namespace cannot hold more.
//! Performance figures live here and in docs/performance.md, never in timed tests.

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, DeleteKey, Filter};
use netlab::bulk::{self, BulkSpec};
use netlab::NetNs;

struct Sample {
    wall: Duration,
    rss_kib: u64,
    ok: bool,
}

/// Runs a command with stdout to /dev/null under GNU time, returning wall time and the child's
/// peak RSS. (wait4's ru_maxrss would include this process's own footprint copied at fork.)
fn run(cmd: &Command) -> Sample {
    let rss_file = std::env::temp_dir().join(format!("gb-bench-rss-{}", std::process::id()));
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-o")
        .arg(&rss_file)
        .args(["-f", "%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let status = timed
        .status()
        .expect("run /usr/bin/time (apt-get install time)");
    let wall = start.elapsed();
    let rss_kib = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    let _ = std::fs::remove_file(&rss_file);
    Sample {
        wall,
        rss_kib,
        ok: status.success(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Row {
    name: String,
    wall: Duration,
    rss_kib: u64,
}

fn bench(name: &str, runs: usize, mut make: impl FnMut() -> Command) -> Row {
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let s = run(&make());
        assert!(s.ok, "{name} failed");
        walls.push(s.wall);
        rss = rss.max(s.rss_kib);
    }
    Row {
        name: name.to_string(),
        wall: median(walls),
        rss_kib: rss,
    }
}

fn gb(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ghostbuster"));
    c.args(args).arg("--netns").arg(ns);
    c
}

fn in_ns<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn main() {
    let mut sizes = Vec::new();
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            other => match other.parse::<usize>() {
                Ok(n) => sizes.push(n),
                Err(_) => {
                    eprintln!("usage: conntrack [--runs R] [N ...]");
                    std::process::exit(2);
                }
            },
        }
    }
    if sizes.is_empty() {
        sizes = vec![262_144, 1_000_000];
    }
    if !netlab::is_root() {
        eprintln!("SKIP: the benchmark needs root (network namespaces, conntrack)");
        return;
    }
    let _ = netlab::cleanup_leftovers();
    let biggest = *sizes.iter().max().unwrap_or(&0) as u64;
    let guard = support::raise_conntrack_max(biggest);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("ghostbuster benchmark: {cpus} CPUs, median of {runs} runs\n");
    for n in sizes {
        one_size(n, runs);
    }
    drop(guard);
}

fn one_size(n: usize, runs: usize) {
    let ns = NetNs::create("bnch").expect("namespace");
    let spec = BulkSpec {
        entries: n,
        services: 200,
        stale_fraction: 0.02,
        ..BulkSpec::default()
    };
    let t = Instant::now();
    let (cluster, truth) = bulk::fill(Some(ns.name()), &spec).expect("fill");
    let fill = t.elapsed();
    assert_eq!(truth.failed, 0, "fill failed: {truth:?}");
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join(format!("gb-bench-{n}"));
    bulk::write_truth(&dir, &spec, &cluster, &truth, false).expect("truth");
    println!(
        "## {n} entries ({} stale, {} services); filled in {:.2}s ({:.0} creates/s)\n",
        truth.stale,
        spec.services,
        fill.as_secs_f64(),
        truth.created as f64 / fill.as_secs_f64()
    );
    let name = ns.name().to_string();
    let f = dir.join("cluster.json").to_string_lossy().to_string();
    let mut stale = Vec::new();
    bulk::for_each_flow(&spec, &cluster, |p| {
        if p.stale {
            stale.push(p.flow);
        }
    });
    let mut rows = vec![
        bench("conntrack -L > /dev/null", runs, || {
            in_ns(&name, &["conntrack", "-L"])
        }),
        bench("ghostbuster list --count", runs, || {
            gb(&name, &["list", "--count"])
        }),
        bench("ghostbuster list -o ndjson", runs, || {
            gb(&name, &["list", "-o", "ndjson"])
        }),
        bench("ghostbuster stats", runs, || gb(&name, &["stats"])),
        bench("conntrack -C", runs, || in_ns(&name, &["conntrack", "-C"])),
        bench("ghostbuster scan", runs, || {
            gb(&name, &["scan", "--from-file", &f])
        }),
        bench("ghostbuster scan -o json", runs, || {
            gb(&name, &["scan", "--from-file", &f, "-o", "json"])
        }),
    ];
    // Sweep: the stale entries are re-created before each run, outside the timing.
    let mut ct = Conntrack::open_in(Some(&name)).expect("open");
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        ct.create(&stale).expect("re-create stale entries");
        let s = run(&gb(
            &name,
            // The bulk export holds no Namespaces (nothing is opted out).
            &[
                "sweep",
                "--trust-snapshot",
                "--ignore-namespace-modes",
                "--from-file",
                &f,
            ],
        ));
        assert!(s.ok, "sweep failed");
        walls.push(s.wall);
        rss = rss.max(s.rss_kib);
    }
    let left = ct.dump_vec(&Filter::default()).expect("dump").len();
    assert_eq!(
        left as u64,
        truth.created - truth.stale,
        "sweep removed exactly the stale entries"
    );
    rows.push(Row {
        name: format!("ghostbuster sweep --trust-snapshot ({} stale)", stale.len()),
        wall: median(walls),
        rss_kib: rss,
    });
    print_rows(&rows);

    // Delete phase alone (in process): exact deletes of the stale entries.
    ct.create(&stale).expect("re-create stale entries");
    let deleted: std::collections::HashSet<std::net::IpAddr> =
        cluster.deleted.iter().map(|d| d.ip).collect();
    let mut keys = Vec::new();
    ct.dump(&Filter::default(), |f| {
        if deleted.contains(&f.reply.src) {
            keys.push(DeleteKey::from(f));
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("dump");
    let t = Instant::now();
    let out = ct.delete(&keys).expect("delete");
    let d = t.elapsed();
    let ok = out
        .iter()
        .filter(|o| **o == ctnetlink::DeleteOutcome::Deleted)
        .count();
    println!(
        "\ndelete phase: {ok} of {} stale entries deleted in {:.1} ms = {:.0} deletes/s\n",
        keys.len(),
        d.as_secs_f64() * 1e3,
        ok as f64 / d.as_secs_f64()
    );
}

fn print_rows(rows: &[Row]) {
    let base = rows[0].wall.as_secs_f64();
    println!("| command | wall (median) | peak RSS | conntrack -L time / this |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| `{}` | {:.3} s | {:.1} MiB | {:.2}× |",
            r.name,
            r.wall.as_secs_f64(),
            r.rss_kib as f64 / 1024.0,
            base / r.wall.as_secs_f64()
        );
    }
}
