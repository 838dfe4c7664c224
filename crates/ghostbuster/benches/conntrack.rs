//! The benchmark: fill a namespace's conntrack table with N cluster-shaped DNAT entries
//! (netlab::bulk, ~2 % pointing at deleted backends over ~200 services), then time, in the same
//! run and on the same table, ghostbuster's commands against the physical limit — `ctdump`
//! (../shared/bench/ctdump.c: one dump request and a receive loop, nothing else; compiled here with
//! `cc -O2`) — and against `conntrack -L` / `conntrack -C`, the anchor users know. The commands
//! take turns (round r runs each once), so a noisy machine hurts them alike. Prints wall time
//! (median of the rounds), peak RSS, and the ratios: this / ctdump's bare dump (lower is better,
//! 1.00× = the kernel's own speed) and `conntrack -L` / this. ctdump dumps the whole table
//! (`--family unspec`, as ghostbuster and `conntrack -L` do): its default, IPv4 only, reads about
//! a third of this table (the per-family counts are printed first) and is no floor for a tool
//! that must see every flow.
//!
//! `cargo bench -p ghostbuster --bench conntrack -- [--runs R] [--deletes-only] [N ...]` (default R
//! 5, N: 262144 and 1000000; `--deletes-only`: only the delete phases); `scripts/bench.sh` runs it with the agent benchmark. Needs root. When N exceeds the machine-wide `nf_conntrack_max`, the limit is raised
//! for the run and restored at the end (printed), since a child namespace cannot hold more.
//! Performance figures live here and in docs/performance.md, never in timed tests.
//! `GB_BENCH_PERF=1` adds a `perf record` profile of one `ghostbuster scan` per table size.

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

/// One measured command: how to make it, and a preparation run before each timing (outside it).
struct Case<'a> {
    name: String,
    make: Box<dyn Fn() -> Command + 'a>,
    prepare: Option<Box<dyn Fn() + 'a>>,
    walls: Vec<Duration>,
    rss_kib: u64,
}

impl<'a> Case<'a> {
    fn new(name: &str, make: impl Fn() -> Command + 'a) -> Self {
        Case {
            name: name.to_string(),
            make: Box::new(make),
            prepare: None,
            walls: Vec::new(),
            rss_kib: 0,
        }
    }

    fn prepared(mut self, prepare: impl Fn() + 'a) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }
}

/// `runs` rounds; in each, every case once, in order.
fn bench_rounds(cases: &mut [Case<'_>], runs: usize) -> Vec<Row> {
    for _ in 0..runs {
        for c in cases.iter_mut() {
            if let Some(p) = &c.prepare {
                p();
            }
            let s = run(&(c.make)());
            assert!(s.ok, "{} failed", c.name);
            c.walls.push(s.wall);
            c.rss_kib = c.rss_kib.max(s.rss_kib);
        }
    }
    cases
        .iter()
        .map(|c| Row {
            name: c.name.clone(),
            wall: median(c.walls.clone()),
            rss_kib: c.rss_kib,
        })
        .collect()
}

/// ctdump built from ../shared/bench (None, with the reason printed, when it cannot be).
fn ctdump() -> Option<PathBuf> {
    let src = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/bench/ctdump.c"
    ));
    if !src.is_file() {
        eprintln!(
            "no ctdump: {} not found (../shared beside the repository)",
            src.display()
        );
        return None;
    }
    let out = PathBuf::from(std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join("ctdump");
    let ok = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("no ctdump: cc -O2 {} failed", src.display());
        return None;
    }
    Some(out)
}

/// `GB_BENCH_PERF=1`: one more `ghostbuster scan` of the same table under `perf record` (Debian's
/// `linux-perf`), and where its time went, kernel and user space together, by symbol.
fn profile(ns: &str, export: &str) {
    let data = std::env::temp_dir().join(format!("gb-bench-perf-{}.data", std::process::id()));
    let data = data.to_string_lossy().to_string();
    let recorded = Command::new("perf")
        .args(["record", "-q", "-F", "4999", "-o", &data, "--"])
        .arg(env!("CARGO_BIN_EXE_ghostbuster"))
        .args(["scan", "--netns", ns, "--from-file", export])
        .stdout(Stdio::null())
        .status();
    if !recorded.is_ok_and(|s| s.success()) {
        println!(
            "(no profile: `perf record` failed or is not installed — apt-get install linux-perf)\n"
        );
        return;
    }
    let report = Command::new("perf")
        .args([
            "report",
            "-i",
            &data,
            "--stdio",
            "--sort",
            "dso,symbol",
            "--percent-limit",
            "1",
        ])
        .output()
        .expect("perf report");
    println!(
        "Profile of `ghostbuster scan` (perf record -F 4999; samples by where they landed):\n```"
    );
    for l in String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(25)
    {
        println!("{l}");
    }
    println!("```\n");
    let _ = std::fs::remove_file(&data);
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
    let mut runs = 5;
    let mut deletes_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--deletes-only" => deletes_only = true,
            other => match other.parse::<usize>() {
                Ok(n) => sizes.push(n),
                Err(_) => {
                    eprintln!("usage: conntrack [--runs R] [--deletes-only] [N ...]");
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
        one_size(n, runs, deletes_only);
    }
    drop(guard);
}

fn one_size(n: usize, runs: usize, deletes_only: bool) {
    let ns = NetNs::create("bnch").expect("namespace");
    let spec = BulkSpec {
        entries: n,
        services: 200,
        stale_fraction: 0.02,
        // The rounds at 1M take minutes: UDP entries must outlive them (the default 120 s
        // would expire a third of the table mid-run, and the sweep's check would count them).
        udp_timeout: 3600,
        ..BulkSpec::default()
    };
    // Entries carry their start time (docs/install.md recommends it): without it a flow's age is
    // unknown and a sweep from an export keeps it (`unknown_age`).
    let on = in_ns(
        ns.name(),
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1"],
    )
    .status()
    .is_ok_and(|s| s.success());
    assert!(
        on,
        "turn nf_conntrack_timestamp on in the bench's namespace"
    );
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
    let ips = dir.join("stale-ips.txt");
    let ip_list: String = cluster
        .deleted
        .iter()
        .map(|d| format!("{}\n", d.ip))
        .collect();
    std::fs::write(&ips, ip_list).expect("write stale IPs");
    let ips = ips.to_string_lossy().to_string();
    if deletes_only {
        let ct = Conntrack::open_in(Some(&name)).expect("open");
        delete_phases(ct, &name, &stale, &cluster);
        return;
    }
    // Sweeps delete: their stale entries are re-created before each run, outside the timing.
    let ct = std::cell::RefCell::new(Conntrack::open_in(Some(&name)).expect("open"));
    let recreate = &|| {
        ct.borrow_mut()
            .create(&stale)
            .expect("re-create stale entries");
    };
    let ctdump = ctdump();
    let mut cases = Vec::new();
    // ctdump over the whole table (`--family unspec`, as ghostbuster and `conntrack -L` ask; its
    // default is IPv4 only, a part of this table).
    let all = OsStr::new("--family");
    let unspec = OsStr::new("unspec");
    if let Some(bin) = &ctdump {
        cases.push(Case::new("ctdump (the bare kernel dump)", || {
            in_ns(&name, &[bin.as_os_str(), all, unspec])
        }));
        cases.push(Case::new("ctdump --parse", || {
            in_ns(
                &name,
                &[bin.as_os_str(), all, unspec, OsStr::new("--parse")],
            )
        }));
    }
    cases.push(Case::new("conntrack -L > /dev/null", || {
        in_ns(&name, &["conntrack", "-L"])
    }));
    cases.push(Case::new("ghostbuster list --count", || {
        gb(&name, &["list", "--count"])
    }));
    // The same on one CPU (`taskset`: no second core, so no decoding thread): what the
    // pipelined dump buys.
    cases.push(Case::new("ghostbuster list --count (one CPU)", || {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"])
            .arg(env!("CARGO_BIN_EXE_ghostbuster"))
            .args(["list", "--count", "--netns", &name]);
        c
    }));
    cases.push(Case::new("ghostbuster list -o ndjson", || {
        gb(&name, &["list", "-o", "ndjson"])
    }));
    cases.push(Case::new("ghostbuster stats", || gb(&name, &["stats"])));
    cases.push(Case::new("conntrack -C", || {
        in_ns(&name, &["conntrack", "-C"])
    }));
    cases.push(Case::new("ghostbuster scan", || {
        gb(&name, &["scan", "--from-file", &f])
    }));
    cases.push(Case::new("ghostbuster scan -o json", || {
        gb(&name, &["scan", "--from-file", &f, "-o", "json"])
    }));
    if let Some(bin) = &ctdump {
        cases.push(
            Case::new("ctdump --stale-ips --delete", || {
                in_ns(
                    &name,
                    &[
                        bin.as_os_str(),
                        all,
                        unspec,
                        OsStr::new("--stale-ips"),
                        OsStr::new(&ips),
                        OsStr::new("--delete"),
                    ],
                )
            })
            .prepared(recreate),
        );
    }
    cases.push(
        Case::new(
            &format!("ghostbuster sweep --trust-snapshot ({} stale)", stale.len()),
            || {
                gb(
                    &name,
                    // The bulk export holds no Namespaces (nothing is opted out).
                    &[
                        "sweep",
                        "--trust-snapshot",
                        "--ignore-namespace-modes",
                        "--clock-skew",
                        "0s",
                        "--from-file",
                        &f,
                    ],
                )
            },
        )
        // The re-created entries are new: absence from an export counts only for flows older
        // than it, so the export is taken again (its modification time) after they are.
        .prepared(|| {
            recreate();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()))
                .expect("touch the export");
        }),
    );
    if let Some(bin) = &ctdump {
        // What the kernel's dump costs per family asked (ctdump's own timing and counts).
        for fam in ["inet", "inet6", "unspec"] {
            let out = in_ns(
                &name,
                &[bin.as_os_str(), OsStr::new("--family"), OsStr::new(fam)],
            )
            .output()
            .expect("run ctdump");
            print!("{fam:>6}: {}", String::from_utf8_lossy(&out.stdout));
        }
        println!();
    }
    let rows = bench_rounds(&mut cases, runs);
    drop(cases);
    print_rows(&rows, ctdump.is_some());
    let walls: Vec<(&str, f64)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.wall.as_secs_f64()))
        .collect();
    support::cli_summary(n, runs, &walls);
    // Any value but empty or "0" (scripts/bench.sh sets 1 unless told GB_BENCH_PERF=0).
    if std::env::var("GB_BENCH_PERF").is_ok_and(|v| !v.is_empty() && v != "0") {
        profile(&name, &f);
    }
    let left = ct
        .borrow_mut()
        .dump_vec(&Filter::default())
        .expect("dump")
        .len();
    if left as u64 != truth.created - truth.stale {
        // Why: the same sweep's JSON report (what it kept, and why).
        let out = gb(
            &name,
            &[
                "sweep",
                "--trust-snapshot",
                "--ignore-namespace-modes",
                "--clock-skew",
                "0s",
                "--dry-run",
                "-o",
                "json",
                "--from-file",
                &f,
            ],
        )
        .output()
        .expect("run sweep");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut why = std::collections::BTreeMap::<String, usize>::new();
        for flow in report["flows"].as_array().into_iter().flatten() {
            *why.entry(format!("{} {}", flow["verdict"], flow["kept_because"]))
                .or_default() += 1;
        }
        panic!(
            "sweep left {left} entries, expected {}: {why:?} {}",
            truth.created - truth.stale,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let ct = ct.into_inner();

    delete_phases(ct, &name, &stale, &cluster);
}

/// The kernel's exact read (`CT_GET` by reply tuple, what the agent's removal reads through the
/// flow index) of the stale entries, on one thread and split over two (a socket each); best of
/// three.
fn read_phases(
    ct: &mut Conntrack,
    ns: &str,
    deleted: &std::collections::HashSet<std::net::IpAddr>,
) {
    // Reads carry no id (the kernel ignores one on a read).
    let mut keys = stale_keys(ct, deleted);
    keys.iter_mut().for_each(|k| k.id = None);
    let mut second = Conntrack::open_in(Some(ns)).expect("open");
    println!("| exact reads | entries | ms | µs per entry |\n|---|---:|---:|---:|");
    for threads in [1, 2, 1, 2] {
        let mut best = Duration::MAX;
        let mut found = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let out = if threads == 1 {
                ct.get(&keys).expect("get")
            } else {
                let half = keys.len() / 2;
                let (a, b) = keys.split_at(half);
                let sec = &mut second;
                std::thread::scope(|s| {
                    let h = s.spawn(move || sec.get(b).expect("get"));
                    let mut out = ct.get(a).expect("get");
                    out.extend(h.join().expect("reader"));
                    out
                })
            };
            best = best.min(t.elapsed());
            found = out
                .iter()
                .filter(|l| matches!(l, ctnetlink::Lookup::Found(_)))
                .count();
        }
        println!(
            "| {threads} thread(s) | {found} of {} | {:.1} | {:.2} |",
            keys.len(),
            best.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e6 / keys.len().max(1) as f64
        );
    }
    println!();
}

/// What an entry's age and the order of the deletes cost the kernel's delete (no listener, one
/// thread). The agent deletes entries made long ago, in the flow index's order (by backend, then
/// client), not in the hash's order; the phases below re-create theirs just before, so they are
/// in the CPU's caches, at the head of their hash chains, and deleted in dump order (bucket by
/// bucket). Here, first, the entries as the fill made them (behind the newer ones in their
/// chains), half in dump order and half shuffled, each after the caches were flushed by touching
/// 256 MiB; then re-created ones, cold or warm, in either order, and cold ones read (`CT_GET`)
/// right before — what the agent's read while it waits does.
fn locality_phases(
    ct: &mut Conntrack,
    stale: &[ctnetlink::NewFlow],
    deleted: &std::collections::HashSet<std::net::IpAddr>,
) {
    println!(
        "| delete, by age and order (no listener) | entries | ms | µs per entry |\n|---|---:|---:|---:|"
    );
    let timed = |ct: &mut Conntrack, what: &str, keys: &[DeleteKey]| {
        let t = Instant::now();
        let out = ct.delete(keys).expect("delete");
        let d = t.elapsed();
        let ok = out
            .iter()
            .filter(|o| **o == ctnetlink::DeleteOutcome::Deleted)
            .count();
        println!(
            "| {what} | {ok} of {} | {:.1} | {:.2} |",
            keys.len(),
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e6 / ok.max(1) as f64
        );
    };
    let keys = stale_keys(ct, deleted);
    let (first, second) = keys.split_at(keys.len() / 2);
    evict_caches();
    timed(ct, "as filled, cold, dump order (half)", first);
    let mut second = second.to_vec();
    shuffle(&mut second);
    evict_caches();
    timed(ct, "as filled, cold, shuffled (the other half)", &second);
    for (cold, shuffled, read_first) in [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (true, true, true),
    ] {
        ct.create(stale).expect("re-create stale entries");
        let mut keys = stale_keys(ct, deleted);
        if shuffled {
            shuffle(&mut keys);
        }
        if cold {
            evict_caches();
        }
        let mut what = format!(
            "re-created, {}, {}",
            if cold { "cold" } else { "warm" },
            if shuffled { "shuffled" } else { "dump order" }
        );
        if read_first {
            let t = Instant::now();
            ct.get(&keys).expect("get");
            what.push_str(&format!(
                ", read first ({:.1} ms)",
                t.elapsed().as_secs_f64() * 1e3
            ));
        }
        timed(ct, &what, &keys);
    }
    // As found: the read phases that follow read them.
    ct.create(stale).expect("re-create stale entries");
    println!();
}

/// The delete keys (reply tuple, zone, id) of the entries toward the deleted backends, in dump
/// order.
fn stale_keys(
    ct: &mut Conntrack,
    deleted: &std::collections::HashSet<std::net::IpAddr>,
) -> Vec<DeleteKey> {
    let mut keys = Vec::new();
    ct.dump(&Filter::default(), |f| {
        if deleted.contains(&f.reply.src) {
            keys.push(DeleteKey::from(f));
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("dump");
    keys
}

/// Pushes the kernel's conntrack entries out of the CPU's caches (32 MiB of L3 here) by writing
/// a line in every 64 bytes of 256 MiB.
fn evict_caches() {
    let mut buf = vec![0u8; 256 << 20];
    for i in (0..buf.len()).step_by(64) {
        buf[i] = i as u8;
    }
    std::hint::black_box(&buf);
}

/// A fixed permutation (Fisher–Yates over a xorshift sequence): the same order every run.
fn shuffle<T>(items: &mut [T]) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// The kernel's delete alone, in process: exact, batched deletes of the stale entries (re-created
/// first), with 0, 1 and 2 DESTROY listeners subscribed while they were created — the agent's
/// event thread is one, an exporter or `conntrack -E` another. This is the floor of a removal's
/// deletes: with `nf_conntrack_events=2` (the default) an entry created while someone listens
/// carries the event extension, and each delete then builds a DESTROY message and hands a copy
/// to every listener.
fn delete_phases(
    mut ct: Conntrack,
    ns: &str,
    stale: &[ctnetlink::NewFlow],
    cluster: &bulk::Cluster,
) {
    let deleted: std::collections::HashSet<std::net::IpAddr> =
        cluster.deleted.iter().map(|d| d.ip).collect();
    locality_phases(&mut ct, stale, &deleted);
    read_phases(&mut ct, ns, &deleted);
    println!("| delete phase | entries | ms | µs per entry |\n|---|---:|---:|---:|");
    for (listeners, paused, threads) in [
        (0, false, 1),
        (1, false, 1),
        (2, false, 1),
        (1, true, 1),
        (0, false, 2),
        (1, true, 2),
    ] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drains: Vec<_> = (0..listeners)
            .map(|_| {
                let mut ev = ctnetlink::EventSocket::open_in(
                    Some(ns),
                    ctnetlink::EventGroups::DESTROY,
                    64 << 20,
                )
                .expect("subscribe to DESTROY events");
                ev.set_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let stop = stop.clone();
                let handle = ev.filter_handle();
                let thread = std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match ev.recv(|_, _| n += 1) {
                            Ok(_) | Err(ctnetlink::Error::EventsLost) => {}
                            Err(e) => panic!("events: {e}"),
                        }
                    }
                    n
                });
                (handle, thread)
            })
            .collect();
        ct.create(stale).expect("re-create stale entries");
        let keys = stale_keys(&mut ct, &deleted);
        let mut socks: Vec<Conntrack> = (1..threads)
            .map(|_| Conntrack::open_in(Some(ns)).expect("open"))
            .collect();
        let t = Instant::now();
        if paused {
            for (h, _) in &drains {
                h.set_destroy_events(false).expect("leave DESTROY");
            }
        }
        let out = if threads == 1 {
            ct.delete(&keys).expect("delete")
        } else {
            // The same deletes split over `threads` sockets on as many threads.
            let chunk = keys.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = keys[chunk..]
                    .chunks(chunk)
                    .map(|part| {
                        let mut own = socks.pop().expect("a socket per thread");
                        s.spawn(move || own.delete(part).expect("delete"))
                    })
                    .collect();
                let mut out = ct.delete(&keys[..chunk]).expect("delete");
                for h in handles {
                    out.extend(h.join().expect("deleter"));
                }
                out
            })
        };
        if paused {
            for (h, _) in &drains {
                h.set_destroy_events(true).expect("join DESTROY");
            }
        }
        let d = t.elapsed();
        let ok = out
            .iter()
            .filter(|o| **o == ctnetlink::DeleteOutcome::Deleted)
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let events: u64 = drains.into_iter().map(|(_, t)| t.join().unwrap_or(0)).sum();
        let mut how = String::new();
        if paused {
            how.push_str(", out of the group during the deletes");
        }
        if threads > 1 {
            how.push_str(&format!(", {threads} deleting threads"));
        }
        println!(
            "| {listeners} DESTROY listener(s){how} ({events} events read) | {ok} of {} | {:.1} | {:.2} |",
            keys.len(),
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e6 / ok.max(1) as f64
        );
    }
    println!();
}

/// The table: ratios first (this / ctdump's bare dump, `conntrack -L` / this), then the figures.
fn print_rows(rows: &[Row], with_ctdump: bool) {
    let secs = |name: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(name))
            .map(|r| r.wall.as_secs_f64())
    };
    let floor = if with_ctdump { secs("ctdump (") } else { None };
    let anchor = secs("conntrack -L").expect("conntrack -L row");
    println!("| command | this / ctdump | conntrack -L / this | wall (median) | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        let w = r.wall.as_secs_f64();
        let to_floor = floor.map_or("–".to_string(), |f| format!("{:.2}×", w / f));
        println!(
            "| `{}` | {} | {:.2}× | {:.3} s | {:.1} MiB |",
            r.name,
            to_floor,
            anchor / w,
            w,
            r.rss_kib as f64 / 1024.0
        );
    }
}
