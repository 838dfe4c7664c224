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
# Without cross-crate LTO: every one of the ~50 test binaries would otherwise be thin-LTO-linked
# against the whole dependency graph, which cost more than half of CI (measured: the cold release
# build of all test targets took 9 min without it, 13.5 min *warm* with it, on 2 cores). No test
# depends on LTO; the shipped binary (`cargo build --release`, the image) keeps the profile's LTO.
export CARGO_PROFILE_RELEASE_LTO=false
# The agent's image (no `demo` feature), for tests/image_runtime.rs: built first, from the same
# dependency builds the tests use; the manifests keep their digest placeholder (GB_IMAGE_PIN=0).
GB_IMAGE_ARCHIVE=$(GB_IMAGE_PIN=0 scripts/image.sh | tail -1)
export GB_IMAGE_ARCHIVE
# --nocapture so that a skipped kernel test's reason is visible.
cargo test --workspace --release -- --nocapture
