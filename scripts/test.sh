#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, then format check, lints, tests.
# Kernel tests need root; outside CI they skip with a printed reason, in CI (CI=true) they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The image's build (no `demo` feature: no netlab, no demo) must compile clean too. Re-checks only
# the ghostbuster crate's targets: 20-70 s on 2 busy cores after the step above.
cargo clippy -p ghostbuster --no-default-features --all-targets -- -D warnings
# Release profile: the end-to-end tests drive the real binary at realistic table sizes.
# --nocapture so that a skipped kernel test's reason is visible.
cargo test --workspace --release -- --nocapture
