#!/usr/bin/env bash
# Runs the side-by-side comparison and draws its chart.
#
#   benches/compare/run.sh                 # every scenario, three placements, 7 repetitions
#                                          # (3 of busy_main and rss_per_conn, idle_cpu once)
#   benches/compare/run.sh --quick         # smoke test, under a minute
#   benches/compare/run.sh rtt --reps 5    # any arguments of nwebsocket-compare
#
# Results: target/compare/results.jsonl (JSON lines), target/compare/chart.svg, and the
# table on stdout. Set OUT=path.jsonl to keep a run elsewhere (chart.svg goes beside it).
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${OUT:-target/compare/results.jsonl}
cargo build --release -p nwebsocket-compare --bins
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
target/release/nwebsocket-compare --out "$out" "$@"
target/release/chart "$out" "$(dirname "$out")/chart.svg"
