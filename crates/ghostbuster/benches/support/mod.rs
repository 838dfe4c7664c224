//! Shared by the benchmarks: the machine-wide table limit, raised for a run and restored after;
//! the rows of `scripts/bench.sh`'s summary table and the goals they are judged by.
// Each benchmark uses a part.
#![allow(dead_code)]

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores `nf_conntrack_max` when dropped.
pub struct MaxGuard(Option<String>);

impl Drop for MaxGuard {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(MAX_PATH, &old);
            println!("(restored nf_conntrack_max to {})", old.trim());
        }
    }
}

/// Makes room for `entries` (plus slack) in the machine-wide table, since a child namespace cannot
/// hold more than `nf_conntrack_max`; the returned guard puts the old limit back.
pub fn raise_conntrack_max(entries: u64) -> MaxGuard {
    let old_max = std::fs::read_to_string(MAX_PATH).unwrap_or_default();
    let want = entries + 1024;
    if old_max.trim().parse::<u64>().unwrap_or(0) >= want {
        return MaxGuard(None);
    }
    std::fs::write(MAX_PATH, want.to_string()).expect("raise nf_conntrack_max");
    println!(
        "(raised the machine-wide nf_conntrack_max from {} to {want} for this run)",
        old_max.trim()
    );
    MaxGuard(Some(old_max))
}

// The summary: `scripts/bench.sh` sets GB_BENCH_SUMMARY to a file; each benchmark appends one
// tab-separated row per headline figure (figure, this / ctdump, conntrack -L / this, value, what
// the value is over, goal, met) and the script prints them all as one table at the end. The goals'
// thresholds live here only; every value is measured.

/// What a headline figure must be.
#[derive(Clone, Copy)]
pub enum Goal {
    /// This / ctdump's bare dump of the same table at most `max`, as a median of ≥ `min` runs.
    ToCtdump { max: f64, min: usize },
    /// The value, in the row's unit, at most `max`, over ≥ `min` samples.
    AtMost { max: f64, min: usize },
    /// No threshold: the figure is shown.
    Reported,
    /// A yardstick the other rows are read against (ctdump, `conntrack -L`).
    Reference,
}

// Issue #15 (§ numbers), and for the RSS with kept stale flows issue #12 §3.
/// `scan` and `sweep` ≤ 1.05× the bare kernel dump (§3), medians of ≥ 5 (§4).
pub const SCAN_SWEEP: Goal = Goal::ToCtdump { max: 1.05, min: 5 };
/// `list --count` stays ≤ 1.0× (§3).
pub const LIST_COUNT: Goal = Goal::ToCtdump { max: 1.0, min: 5 };

/// One of the agent's headline figures: what the summary calls it, its unit, its goal.
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub goal: Goal,
}

/// kube-proxy's sync → the last flow of a removed backend gone: p99 ≤ 100 ms over ≥ 50 removals
/// (§1).
pub const REACTION_P99: Figure = Figure {
    name: "agent reaction p99",
    unit: "ms",
    goal: Goal::AtMost {
        max: 100.0,
        min: 50,
    },
};
/// The same bound for the other shapes of removal: a backend shared by many Services, 20 backends
/// at once (§1).
pub const REACTION_P99_SHAPES: Figure = Figure {
    goal: Goal::AtMost { max: 100.0, min: 1 },
    ..REACTION_P99
};
/// The flow index's memory per flow (§1).
pub const FLOW_INDEX_BYTES: Figure = Figure {
    name: "agent flow index, memory per flow",
    unit: "bytes",
    goal: Goal::Reported,
};
/// Ready on the big cluster ≤ 10 s (§2).
pub const READY: Figure = Figure {
    name: "agent ready",
    unit: "s",
    goal: Goal::AtMost { max: 10.0, min: 1 },
};
/// Idle CPU ≤ 1 % of a core (§2).
pub const CPU: Figure = Figure {
    name: "agent CPU, passes included",
    unit: "%",
    goal: Goal::AtMost { max: 1.0, min: 1 },
};
/// Steady RSS ≤ 64 MiB (§2).
pub const STEADY_RSS: Figure = Figure {
    name: "agent steady RSS (max of 1 s samples)",
    unit: "MiB",
    goal: Goal::AtMost { max: 64.0, min: 1 },
};
/// The start-up peak within the DaemonSet's memory limit, 128 Mi (§2).
pub const PEAK_RSS: Figure = Figure {
    name: "agent peak RSS (VmHWM, start-up included)",
    unit: "MiB",
    goal: Goal::AtMost { max: 128.0, min: 1 },
};
/// The effective full-pass interval, reported (§2).
pub const FULL_PASS_INTERVAL: Figure = Figure {
    name: "effective full-pass interval",
    unit: "s",
    goal: Goal::Reported,
};
/// The RSS with kept stale flows within the DaemonSet's limit, every pass (#12 §3).
pub const KEPT_RSS: Figure = Figure {
    name: "agent RSS with kept stale flows (max of 20 ms samples)",
    ..PEAK_RSS
};
/// ... and flat after the first pass: (max − min) / min ≤ 10 % (#12 §3).
pub const KEPT_SPREAD: Figure = Figure {
    name: "agent RSS with kept stale flows: spread after pass 1",
    unit: "%",
    goal: Goal::AtMost { max: 10.0, min: 1 },
};

/// The conntrack benchmark's rows that make the summary, in its order: the row's name (a name
/// ending in a space is a prefix), what the summary calls it, its goal.
const CLI_FIGURES: &[(&str, &str, Goal)] = &[
    (
        "ctdump (the bare kernel dump)",
        "ctdump, the bare kernel dump",
        Goal::Reference,
    ),
    (
        "conntrack -L > /dev/null",
        "`conntrack -L`",
        Goal::Reference,
    ),
    ("ghostbuster list --count", "`list --count`", LIST_COUNT),
    ("ghostbuster scan", "`scan`", SCAN_SWEEP),
    (
        "ghostbuster sweep --trust-snapshot ",
        "`sweep --trust-snapshot`",
        SCAN_SWEEP,
    ),
    (
        "ctdump --stale-ips --delete",
        "ctdump's dump and delete (a sweep's floor)",
        Goal::Reference,
    ),
];

/// The conntrack benchmark's summary rows for one table size: `walls` are its rows (name, median
/// wall time in seconds over `runs` rounds).
pub fn cli_summary(entries: usize, runs: usize, walls: &[(&str, f64)]) {
    let wall = |key: &str| walls.iter().find(|(n, _)| *n == key).map(|(_, w)| *w);
    let floor = wall(CLI_FIGURES[0].0);
    let anchor = wall(CLI_FIGURES[1].0);
    for (key, label, goal) in CLI_FIGURES {
        let found = walls
            .iter()
            .find(|(n, _)| *n == *key || (key.ends_with(' ') && n.starts_with(key)));
        let Some((name, w)) = found else { continue };
        // What a prefix left out, e.g. the sweep's "(5113 stale)".
        let rest = name.get(key.len()..).unwrap_or("").trim();
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!(" {rest}")
        };
        emit(&Line {
            figure: &format!("{label}, {} entries{rest}", thousands(entries)),
            to_ctdump: floor.map(|f| w / f),
            from_anchor: anchor.map(|a| a / w),
            value: *w,
            unit: "s",
            over: &format!("median of {runs}"),
            samples: runs,
            goal: *goal,
        });
    }
}

/// The summary row of one of the agent's figures: `context` follows its name (may be empty),
/// `value` is in its unit, `over` says what it was taken over (e.g. "p99 of 50 rounds"), and
/// `samples` how many that is.
pub fn summary(f: &Figure, context: &str, value: f64, over: &str, samples: usize) {
    let figure = match context {
        "" => f.name.to_string(),
        c => format!("{}, {c}", f.name),
    };
    emit(&Line {
        figure: &figure,
        to_ctdump: None,
        from_anchor: None,
        value,
        unit: f.unit,
        over,
        samples,
        goal: f.goal,
    });
}

/// `1000000` as `1,000,000`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Line<'a> {
    figure: &'a str,
    to_ctdump: Option<f64>,
    from_anchor: Option<f64>,
    value: f64,
    unit: &'a str,
    over: &'a str,
    samples: usize,
    goal: Goal,
}

/// Three significant digits (`0.699`, `7.30`, `71.7`, `590`; `0`).
fn sig3(v: f64) -> String {
    let a = v.abs();
    let dp = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.dp$}")
}

/// Appends the row to `$GB_BENCH_SUMMARY`, if set. A goal is judged on the figure as shown (a
/// ratio shown as 1.05× meets ≤ 1.05×); with fewer samples than it asks for, a figure within the
/// bound is "?" (more rounds can only raise a p99), one past it is "no".
fn emit(l: &Line<'_>) {
    let Some(path) = std::env::var_os("GB_BENCH_SUMMARY") else {
        return;
    };
    let ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}×"));
    let measured = l.value.is_finite();
    let value = if measured {
        format!("{} {}", sig3(l.value), l.unit)
    } else {
        "–".to_string()
    };
    let shown = |s: String| s.parse::<f64>().ok();
    let judge = |x: Option<f64>, max: f64, min: usize| match x {
        None if matches!(l.goal, Goal::ToCtdump { .. }) => "? (no ctdump)".to_string(),
        None => "? (not measured)".to_string(),
        Some(x) if x > max => "no".to_string(),
        Some(_) if l.samples < min => format!("? (needs ≥ {min})"),
        Some(_) => "yes".to_string(),
    };
    let (goal, met) = match l.goal {
        Goal::ToCtdump { max, min } => (
            format!("≤ {max:.2}× ctdump"),
            judge(l.to_ctdump.and_then(|r| shown(format!("{r:.2}"))), max, min),
        ),
        Goal::AtMost { max, min } => (
            format!("≤ {max} {}", l.unit),
            judge(measured.then(|| sig3(l.value)).and_then(shown), max, min),
        ),
        Goal::Reported => ("reported".to_string(), "–".to_string()),
        Goal::Reference => ("reference".to_string(), "–".to_string()),
    };
    let fields = [
        l.figure.to_string(),
        ratio(l.to_ctdump),
        ratio(l.from_anchor),
        value,
        l.over.to_string(),
        goal,
        met,
    ];
    let row: Vec<String> = fields
        .iter()
        .map(|f| f.replace(['\t', '\n'], " "))
        .collect();
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{}", row.join("\t")));
    if let Err(e) = written {
        eprintln!(
            "(summary row not written to {}: {e})",
            path.to_string_lossy()
        );
    }
}
