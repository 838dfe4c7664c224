#!/usr/bin/env bash
# The README's first command: install what the lab needs, build the release binary, run the demo.
# Needs root (network namespaces). The agent act (act 0: the real agent at work) runs first, then
# acts 1-4. Extra arguments go to `ghostbuster demo` (e.g. --act agent, --proxy-mode iptables, -o json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p ghostbuster
exec target/release/ghostbuster demo "$@"
