//! Fuzzes the ctnetlink codec on the stable toolchain, in release mode.
//!
//! `cargo run --release -p ctnetlink --features fuzzing --example fuzz_stable -- [INPUTS] [SEED]`
//! (default 10,000,000 inputs, seed 1). Build it with overflow checks on to turn an arithmetic
//! overflow into a finding too: `CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
//! CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true`. Exits 1 and writes the first panicking input to
//! `fuzz-crash.bin` on a finding; 2 on bad arguments.

use ctnetlink::fuzzing as engine;

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.replace('_', "")
                .parse()
                .map_err(|e| format!("argument {s:?}: {e}"))
        })
    };
    let (inputs, seed) = match (parse(0, 10_000_000), parse(1, 1)) {
        (Ok(n), Ok(s)) => (n, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fuzz_stable: {e}; usage: fuzz_stable [INPUTS] [SEED]");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    // In chunks, so that a long run shows progress.
    let chunk = 1_000_000u64;
    let mut total = engine::Summary::default();
    let mut done = 0u64;
    while done < inputs {
        let n = chunk.min(inputs - done);
        let s = engine::run(seed.wrapping_add(done / chunk), n);
        total.inputs += s.inputs;
        total.panics += s.panics;
        total.checksum = total.checksum.wrapping_add(s.checksum);
        total.max_len = total.max_len.max(s.max_len);
        if total.first_panic.is_none() {
            total.first_panic = s.first_panic;
        }
        done += n;
        eprintln!(
            "{done} inputs, {} panics, {:.1} s",
            total.panics,
            start.elapsed().as_secs_f64()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz_stable: {} inputs (seed {seed}) in {secs:.1} s ({:.0}/s), {} panics, longest input {} \
         bytes, checksum {:x}",
        total.inputs,
        total.inputs as f64 / secs,
        total.panics,
        total.max_len,
        total.checksum
    );
    if let Some(crash) = total.first_panic {
        let _ = std::fs::write("fuzz-crash.bin", &crash);
        eprintln!("fuzz_stable: the first panicking input is in fuzz-crash.bin; replaying it:");
        // Outside catch_unwind and with the default hook: prints the panic and its location.
        let _ = std::panic::catch_unwind(|| engine::exercise(&crash));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
