#!/usr/bin/env bash
# Runs the four benchmarks one after another; each one's table goes to bench/results/NAME.txt
# and its per-run log (with the load before every run) to bench/results/NAME.log.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
for b in ${BENCHES:-ingest drain e2e memory}; do
    echo "== $b (load $(cut -d' ' -f1-3 /proc/loadavg))"
    ./"$b".sh >"results/$b.txt" 2>"results/$b.log" || { echo "$b failed:"; tail -5 "results/$b.log"; exit 1; }
    cat "results/$b.txt"
done
