#!/usr/bin/env bash
# Every performance figure of docs/performance.md in one command, side by side with the physical
# limit (../shared/bench/ctdump.c) and the anchor users know (`conntrack -L`), medians of >= 5
# rounds on the same table in one run:
#   1. the CLI on 262,144 and 1,000,000 entries (benches/conntrack.rs): list, stats, scan, sweep
#      against ctdump's bare dump, parse and delete — ratios first — and a perf profile of a scan;
#   2. the agent (benches/agent.rs): reaction from kube-proxy's sync to a removed backend's last
#      flow gone at 1,000,000 entries (one backend, IPv6, shared by 21 Services, 20 at once),
#      steady-state readiness, CPU, RSS and full-pass interval, RSS with kept stale flows.
# Needs root (network namespaces, conntrack). Takes ~15-25 min on 2 cores; run it on a quiet
# machine (other builds make every figure noisy).
#
#   scripts/bench.sh                   # everything
#   scripts/bench.sh --cli-only        # only part 1
#   RUNS=7 SIZES="262144" scripts/bench.sh --cli-only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The profile of one scan per size (GB_BENCH_PERF): Debian's perf, if it can be had.
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null 2>&1 || true
export GB_BENCH_PERF=${GB_BENCH_PERF:-1}
runs=${RUNS:-5}
sizes=${SIZES:-262144 1000000}
cli_only=0
[ "${1:-}" = "--cli-only" ] && cli_only=1
echo "# ghostbuster benchmarks — $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
echo
# shellcheck disable=SC2086
cargo bench -p ghostbuster --bench conntrack -- --runs "$runs" $sizes
if [ "$cli_only" = 0 ]; then
  echo
  cargo bench -p ghostbuster --bench agent
fi
