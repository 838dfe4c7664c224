//! Feeds arbitrary bytes to every parser that sees kernel input: netlink framing, error
//! messages, nfgenmsg and conntrack entries. Run: `cd crates/ctnetlink/fuzz && cargo fuzz run
//! parse_message -- -max_total_time=60` (seed the corpus with ../tests/fixtures/*.bin).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every parse entry point, public and internal (the `fuzzing` feature exposes them).
    let _ = ctnetlink::fuzzing::exercise(data);
});
