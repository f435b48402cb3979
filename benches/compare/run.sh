#!/usr/bin/env bash
# Runs the side-by-side comparison in both build profiles and draws a chart of each.
#
#   benches/compare/run.sh                 # every scenario, three placements, 7 repetitions
#                                          # (3 of busy_main, rss_per_conn and corun, idle_cpu
#                                          # once), in each profile
#   benches/compare/run.sh --quick         # smoke test, about a minute per profile
#   benches/compare/run.sh rtt --reps 5    # any arguments of nwebsocket-compare
#
# Every client (and the server) is built with the same profile, once with cargo's default
# `release` and once with `release-lto` (the workspace's Cargo.toml: thin LTO, one codegen
# unit); PROFILES="release" (or "release-lto") runs one of them only. Both are built before
# either runs.
#
# Results, per profile P: target/compare/results-P.jsonl (JSON lines; every line says its
# profile), target/compare/chart-P.svg, and the table on stdout. Set OUT=dir/name.jsonl to
# keep a run elsewhere: dir/name-P.jsonl and dir/chart-P.svg.
set -euo pipefail
cd "$(dirname "$0")/../.."

profiles=${PROFILES:-release release-lto}
out=${OUT:-target/compare/results.jsonl}
for p in $profiles; do
    if [ "$p" = release ]; then
        cargo build --release -p nwebsocket-compare --bins
    else
        cargo build --profile "$p" -p nwebsocket-compare --bins
    fi
done
for p in $profiles; do
    res="${out%.jsonl}-$p.jsonl"
    echo "== profile $p; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "target/$p/nwebsocket-compare" --profile "$p" --out "$res" "$@"
    "target/$p/chart" "$res" "$(dirname "$res")/chart-$p.svg"
done
