//! Feeds arbitrary bytes to every parser that sees kernel input: netlink framing, error
//! messages, nfgenmsg and conntrack entries. Run: `cd crates/ctnetlink/fuzz && cargo fuzz run
//! parse_message -- -max_total_time=60` (seed the corpus with ../tests/fixtures/*.bin).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctnetlink::parse_message(data);
    for m in ctnetlink::nl::Messages::new(data).flatten() {
        let _ = m.error();
        let _ = m.error_seq();
        if let Ok((g, attrs)) = m.nfgen() {
            let _ = ctnetlink::parse_flow(g.family, attrs);
        }
    }
});
