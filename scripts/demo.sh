#!/usr/bin/env bash
# The README's first command: install what the lab needs, build the release binary, run the demo.
# Needs root (network namespaces). Extra arguments go to `ghostbuster demo` (e.g. --act 1, -o json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p ghostbuster
exec target/release/ghostbuster demo "$@"
