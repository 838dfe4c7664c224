//! A short slice of the stable fuzzer (`examples/fuzz_stable`) in every `cargo test`: 200,000
//! generated and mutated inputs (a few seconds in release mode) through every public parse entry
//! point, no panic. `GB_FUZZ_INPUTS` and `GB_FUZZ_SEED` change the count and the seed.

#[path = "../examples/fuzz_stable/engine.rs"]
mod engine;

#[test]
fn generated_and_mutated_inputs_never_panic_the_parsers() {
    let inputs = std::env::var("GB_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000u64);
    let seed = std::env::var("GB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // A new seed every day: the slice explores, and the seed is printed to reproduce it.
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() / 86_400)
        });
    let s = engine::run(seed, inputs);
    eprintln!(
        "fuzz slice: {} inputs, seed {seed}, {} panics, longest {} bytes",
        s.inputs, s.panics, s.max_len
    );
    assert_eq!(s.inputs, inputs);
    assert_eq!(
        s.panics, 0,
        "seed {seed}: a parser panicked; first input: {:02x?}",
        s.first_panic
    );
}

/// The engine's mutations really reach the parsers' error paths and success paths (a fuzzer
/// whose inputs all fail at the first header would prove nothing).
#[test]
fn the_mutator_reaches_both_parsed_and_rejected_entries() {
    let corpus = engine::seeds();
    let mut rng = engine::Rng::new(7);
    let (mut parsed, mut rejected) = (0, 0);
    let mut buf = Vec::new();
    let mut lens = Vec::new();
    for i in 0..20_000 {
        buf.clear();
        buf.extend_from_slice(&corpus[i % corpus.len()]);
        engine::mutate(&mut rng, &mut buf, &corpus, &mut lens);
        match ctnetlink::parse_message(&buf) {
            Ok(Some(_)) => parsed += 1,
            Err(_) => rejected += 1,
            Ok(None) => {}
        }
    }
    assert!(parsed > 1000, "only {parsed} mutated inputs parsed");
    assert!(
        rejected > 1000,
        "only {rejected} mutated inputs were rejected"
    );
}
