#!/usr/bin/env bash
# Nightly-style fuzzing (issue 15): every target of src/fuzz.rs with FUZZ_CASES inputs each
# (default 10^6), release build. CI runs the same targets with 2 000 cases each in
# `cargo test`. A failing input is shrunk and saved by proptest in
# proptest-regressions/fuzz.txt: commit that file, it replays first on every later run.
#
#   bench/fuzz.sh              # FUZZ_CASES=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_CASES="${FUZZ_CASES:-1000000}"
start=$(date +%s)
echo "fuzz targets, $FUZZ_CASES cases each, $(nproc) cores, $(date -u +%FT%TZ)"
cargo test --release --locked --lib fuzz:: -- --test-threads="$(nproc)" 2>&1 |
    grep -E '^test |test result|panicked|minimal failing input' 
echo "took $(($(date +%s) - start)) s"
