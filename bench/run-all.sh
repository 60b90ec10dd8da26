#!/usr/bin/env bash
# Runs the four benchmarks one after another; each one's table goes to $OUT/NAME.txt and its
# per-run log (with the load before every run) to $OUT/NAME.log (OUT defaults to
# bench/results). BENCHES selects some of them.
set -euo pipefail
cd "$(dirname "$0")"
OUT="${OUT:-results}"
mkdir -p "$OUT"
for b in ${BENCHES:-ingest drain e2e memory}; do
    echo "== $b (load $(cut -d' ' -f1-3 /proc/loadavg))"
    ./"$b".sh >"$OUT/$b.txt" 2>"$OUT/$b.log" || { echo "$b failed:"; tail -5 "$OUT/$b.log"; exit 1; }
    cat "$OUT/$b.txt"
done
