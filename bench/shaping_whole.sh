#!/usr/bin/env bash
# Shaping over the whole transfer (issue 16): at each set rate, a file of RATE x SECS MiB is put
# over SFTP (the LAN is not shaped) and the rate is its size over the time from the end of the
# put (the file is sealed) until the object is visible in the S3 server (its file appears, at
# full size, in the embedded s3s-fs server's directory: Complete or PutObject has returned).
# Side by side, in the same run: `rclone copyto --bwlimit RATE` of the same file into the same
# server, timed from its start to its exit.
#
#   bench/shaping_whole.sh        # RATES="1 4 16" SECS=20 RUNS=1
#
# The gateway runs with `early_drain = false`, so that no byte leaves before the seal (early
# drain would send the first parts while the file still arrives, which this measure would
# count as faster than the rate). 16 MiB parts, 4 in flight.
source "$(dirname "$0")/lib.sh"

RATES="${RATES:-1 4 16}"
SECS="${SECS:-20}"
RUNS="${RUNS:-1}"

build_sftpgw
ensure_rclone
machine_info
bench_client_key

start_demo_s3
rclone_env "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET"

GW="$WORK/gw"
PORT="$(free_port)"
EARLY_DRAIN=false sftpgw_config "$GW" "$PORT" "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB" 16MiB 4
start_sftpgw "$GW" "$PORT"
CONF="$GW/sftpgw.toml"

# wait_full PATH BYTES: until PATH exists with BYTES bytes (polled every 5 ms).
wait_full() {
    until [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" = "$2" ]; do sleep 0.005; done
}

printf '\n| set rate | file | sftpgw: seal -> visible | error | rclone --bwlimit | error |\n'
printf '|---|---|---|---|---|---|\n'
for r in $RATES; do
    mib=$((r * SECS))
    make_file "$WORK/src-$r.bin" "$mib"
    bytes=$((mib * MIB))
    "$SFTPGW" drain -c "$CONF" rate "${r}MiB/s" >/dev/null
    for run in $(seq "$RUNS"); do
        sync
        sleep 1
        echo "put $WORK/src-$r.bin /whole-$r-$run.bin" >"$WORK/batch"
        sftp_batch "$PORT" bench "$KEY" "$WORK/batch"
        t0=$(now)
        wait_full "$OBJECTS/bench/bench/whole-$r-$run.bin" "$bytes"
        gw=$(elapsed "$t0")
        sleep 1
        t0=$(now)
        rclone copyto --bwlimit "${r}M" --s3-chunk-size 16M --s3-upload-concurrency 4 \
            "$WORK/src-$r.bin" "bs3:uploads/rclone/whole-$r-$run.bin" 2>"$WORK/rclone.err" ||
            die "rclone: $(tail -3 "$WORK/rclone.err")"
        rc=$(elapsed "$t0")
        awk -v b="$bytes" -v g="$gw" -v c="$rc" -v r="$r" -v m="$mib" 'BEGIN {
            gr = b / g / 1048576; cr = b / c / 1048576
            printf "| %d MiB/s | %d MiB | %.3f s = %.3f MiB/s | %+.2f%% | %.3f s = %.3f MiB/s | %+.2f%% |\n",
                r, m, g, gr, (gr / r - 1) * 100, c, cr, (cr / r - 1) * 100 }'
        log "rate $r run $run: sftpgw $gw s, rclone $rc s; load $(loadavg)"
    done
done
