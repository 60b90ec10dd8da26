#!/usr/bin/env bash
# Where the time of `bench/e2e.sh` goes in `sftpgw demo` (the gateway and its embedded s3s-fs
# server are one process): a SIZE_MIB put with the drain paused, then the drain alone, each
# with its wall time and the demo process's CPU time; then the same drain under `perf record`
# and its hottest symbols. Not a benchmark (perf slows the profiled run).
#
#   bench/profile-e2e.sh           # SIZE_MIB=1024
source "$(dirname "$0")/lib.sh"

SIZE_MIB="${SIZE_MIB:-1024}"
command -v perf >/dev/null || die "perf is not installed"

build_sftpgw
machine_info
make_file "$WORK/src.bin" "$SIZE_MIB"
DEMO_PORT="$(free_port)"
S3_PORT="$(free_port)"
start_demo "$WORK/demo" "$DEMO_PORT" "$S3_PORT"
CFG="$WORK/demo/sftpgw.toml"
HZ="$(getconf CLK_TCK)"
cpu_secs() { awk -v hz="$HZ" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$DEMO_PID/stat"; }

for run in 1 2; do
    "$SFTPGW" drain pause --config "$CFG" >/dev/null
    echo "put $WORK/src.bin /p-$run.bin" >"$WORK/batch"
    sync
    sleep 1
    c0="$(cpu_secs)"
    t0="$(now)"
    sftp_batch "$DEMO_PORT" demo "$WORK/demo/client_ed25519" "$WORK/batch"
    echo "run $run put:   $(elapsed "$t0") s wall, $(elapsed "$c0" "$(cpu_secs)") CPU-s"
    sync
    sleep 1
    [ "$run" = 2 ] && { perf record -F 499 -g -p "$DEMO_PID" -o "$WORK/perf.data" 2>/dev/null & }
    PERF_PID=$!
    c0="$(cpu_secs)"
    t0="$(now)"
    "$SFTPGW" drain resume --config "$CFG" >/dev/null
    until [ "$(stat -c %s "$WORK/demo/s3/uploads/site-a/demo/p-$run.bin" 2>/dev/null || echo 0)" \
        = $((SIZE_MIB * MIB)) ]; do
        sleep 0.02
    done
    echo "run $run drain: $(elapsed "$t0") s wall, $(elapsed "$c0" "$(cpu_secs)") CPU-s$([ "$run" = 2 ] && echo ' (under perf)')"
done
kill -INT "$PERF_PID"
wait "$PERF_PID" 2>/dev/null || true
echo
echo "hottest symbols of the demo process while it drains (run 2):"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
    grep -v '^#' | grep '%' | head -15 | sed 's/ *- *- *$//' 
