#!/usr/bin/env bash
# The churn soak (crates/ghostbuster/tests/agent_soak.rs), longer than CI's: the same test with
# its size from the environment. Needs root (network namespaces).
#
#   scripts/soak.sh --minutes 30                # keep rolling for 30 minutes
#   scripts/soak.sh --minutes 5 --disable api_silent_watch   # every part but one (all are on by default)
#   scripts/soak.sh --connections 400 --updates 200 --disable api_410
#
# The invariant table is printed at the end and written to target/soak-report.txt (or --report).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --minutes N  --connections N  --udp N  --updates N  --enable a,b|all  --disable a,b"
    echo "         --agent-args '...'  --report FILE"
    exit 2
}

report="target/soak-report.txt"
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) export SOAK_MINUTES="${2:?}"; shift 2 ;;
        --connections) export SOAK_CONNECTIONS="${2:?}"; shift 2 ;;
        --udp) export SOAK_UDP_CLIENTS="${2:?}"; shift 2 ;;
        --updates) export SOAK_ROLLING_UPDATES="${2:?}"; shift 2 ;;
        --enable) export SOAK_ENABLE="${2:?}"; shift 2 ;;
        --disable) export SOAK_DISABLE="${2:?}"; shift 2 ;;
        --agent-args) export SOAK_AGENT_ARGS="${2:?}"; shift 2 ;;
        --report) report="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "soak.sh: unknown option $1" >&2; usage ;;
    esac
done
for n in SOAK_MINUTES SOAK_CONNECTIONS SOAK_UDP_CLIENTS SOAK_ROLLING_UPDATES; do
    v="${!n:-0}"
    if ! [[ "$v" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        echo "soak.sh: $n must be a number, not '$v'" >&2
        exit 2
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "soak.sh: needs root (network namespaces)" >&2
    exit 2
fi
mkdir -p "$(dirname "$report")"
export SOAK_REPORT="$report"
# CI=true: a missing privilege is a failure, not a skip.
CI=true cargo test --release -p ghostbuster --test agent_soak -- --nocapture
