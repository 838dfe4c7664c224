#!/usr/bin/env bash
# Every performance figure of docs/performance.md in one command, side by side with the physical
# limit (../shared/bench/ctdump.c) and the anchor users know (`conntrack -L`), medians of >= 5
# rounds on the same table in one run:
#   1. the CLI on 262,144 and 1,000,000 entries (benches/conntrack.rs): list, stats, scan, sweep
#      against ctdump's bare dump, parse and delete — ratios first — and a perf profile of a scan;
#   2. the agent (benches/agent.rs): reaction from kube-proxy's sync to a removed backend's last
#      flow gone at 1,000,000 entries (one backend, IPv6, shared by 21 Services, 20 at once),
#      readiness, CPU, RSS and full-pass interval on the big cluster (1,000,000 entries + 10,000
#      Services / 100,000 endpoints / 50,000 Pods), RSS with kept stale flows.
# Each benchmark prints its own tables; at the end one summary table gathers every headline figure
# of issue #15: ratios first, the value and what it is over, the goal (its threshold from
# crates/ghostbuster/benches/support/mod.rs) and whether it is met ("?": too few samples to say).
# Needs root (network namespaces, conntrack). Takes ~20-30 min on 2 cores; run it on a quiet
# machine (other builds make every figure noisy).
#
#   scripts/bench.sh                   # everything
#   scripts/bench.sh --cli-only        # only part 1
#   RUNS=7 SIZES="262144" scripts/bench.sh --cli-only
#   AGENT_ARGS="--entries 20000 --steady-entries 20000 ..." scripts/bench.sh  # the agent bench's
#                                      # flags (see benches/agent.rs), instead of the default's
#   GB_BENCH_SUMMARY=rows.tsv scripts/bench.sh   # keep the summary's rows (tab-separated)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The profile of one scan per size (GB_BENCH_PERF): Debian's perf, if it can be had.
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null 2>&1 || true
export GB_BENCH_PERF=${GB_BENCH_PERF:-1}
runs=${RUNS:-5}
sizes=${SIZES:-262144 1000000}
# The issue's sizes: >= 50 removals of one IPv4 backend, the big cluster at 1,000,000 entries.
agent_args=${AGENT_ARGS:---removals 50 --steady-entries 1000000}
cli_only=0
[ "${1:-}" = "--cli-only" ] && cli_only=1
# Both benchmarks append their summary rows here.
summary=${GB_BENCH_SUMMARY:-}
if [ -z "$summary" ]; then
  summary=$(mktemp)
  trap 'rm -f "$summary"' EXIT
fi
: >"$summary"
export GB_BENCH_SUMMARY=$summary
echo "# ghostbuster benchmarks — $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
echo
# shellcheck disable=SC2086
cargo bench -p ghostbuster --bench conntrack -- --runs "$runs" $sizes
if [ "$cli_only" = 0 ]; then
  echo
  # shellcheck disable=SC2086
  cargo bench -p ghostbuster --bench agent -- $agent_args
fi
echo
echo "## Summary: every headline figure (issue #15)"
echo
echo "Ratios first: this / ctdump's bare dump of the same table (1.00× = the kernel's own speed;"
echo "lower is better) and \`conntrack -L\` / this (higher is better). Goals: benches/support/mod.rs."
echo
echo "| figure | this / ctdump | conntrack -L / this | value | over | goal | met |"
echo "|---|---:|---:|---:|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$summary"
