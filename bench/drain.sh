#!/usr/bin/env bash
# Drain alone: one 1 GiB file already on the spool, to a local S3-compatible server (the
# embedded s3s-fs server of `sftpgw demo`), against `aws s3 cp` (8 MiB parts, 10 in flight)
# and `rclone copyto` (16 MiB parts, 4 in flight) of a 1 GiB file to the same server.
#
#   bench/drain.sh             # RUNS=3 SIZE_MIB=1024 are the defaults
#
# How sftpgw is measured: a gateway whose endpoint is a closed port receives the file with
# `sftp put` (it is sealed but cannot drain) and is stopped; a new gateway process on the same
# spool, pointed at the demo's S3 server, is started. Wall time runs from its start until
# `sftpgw status` says "delivered" (after its HEAD check); CPU time is the daemon's user+system
# time from /proc/PID/stat at that moment. The gateway is a process of its own, so the S3
# server's CPU (in the demo process) is not counted for any tool; it is shown separately.
source "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-3}"
SIZE_MIB="${SIZE_MIB:-1024}"
BYTES=$((SIZE_MIB * MIB))

setup_anchored_bench "$SIZE_MIB"


# drain_TOOL RUN: sets RES_W (wall seconds) and RES_C (CPU seconds). No subshell, so that a
# daemon it starts stays known to the EXIT trap.
drain_sftpgw() {
    local dir="$WORK/gw-$1" port t0 state
    port="$(free_port)"
    sftpgw_config "$dir" "$port" "http://127.0.0.1:1" x y "$PUB"
    start_sftpgw "$dir" "$port"
    echo "put $WORK/src.bin /drain-$1.bin" >"$dir/batch"
    sftp_batch "$port" bench "$KEY" "$dir/batch"
    [ "$(file_state "$dir/sftpgw.toml" "/drain-$1.bin")" = sealed ] ||
        die "expected a sealed file, got $(file_state "$dir/sftpgw.toml" "/drain-$1.bin")"
    stop_pid "$SFTPGW_PID"
    sftpgw_config "$dir" "$port" "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB"
    settle
    t0=$(now)
    start_sftpgw "$dir" "$port"
    # Cheap polling first (the object file appears by rename at Complete), then the status.
    until [ -e "$OBJECTS/bench/bench/drain-$1.bin" ]; do
        kill -0 "$SFTPGW_PID" 2>/dev/null || die "sftpgw exited: $(tail -5 "$dir/daemon.log")"
        [ "$(elapsed "$t0" | cut -d. -f1)" -lt 600 ] || die "no object after 600 s"
        sleep 0.05
    done
    while :; do
        state="$(file_state "$dir/sftpgw.toml" "/drain-$1.bin")"
        [ "$state" = delivered ] && break
        [ "$state" = failed ] && die "drain failed: $("$SFTPGW" status --config "$dir/sftpgw.toml")"
        sleep 0.05
    done
    RES_C="$(cpu_seconds "$SFTPGW_PID")"
    RES_W="$(elapsed "$t0")"
    stop_pid "$SFTPGW_PID"
}

drain_aws() {
    local r
    r="$(timed "$AWS" s3 cp --endpoint-url "$AWS_ENDPOINT" --only-show-errors --no-progress \
        "$WORK/src.bin" "s3://uploads/aws/drain-$1.bin")"
    read -r RES_W RES_C < <(awk '{ printf "%s %.2f\n", $1, $2 + $3 }' <<<"$r")
}

drain_rclone() {
    local r
    r="$(timed rclone copyto --s3-chunk-size 16M --s3-upload-concurrency 4 \
        "$WORK/src.bin" "bs3:uploads/rclone/drain-$1.bin")"
    read -r RES_W RES_C < <(awk '{ printf "%s %.2f\n", $1, $2 + $3 }' <<<"$r")
}

declare -A WALL CPU SRV
read -r -a TOOLS <<<"${TOOLS:-sftpgw aws rclone}"
for run in $(seq "$RUNS"); do
    for tool in "${TOOLS[@]}"; do
        [ "$tool" = sftpgw ] || settle
        drain_round "$tool" "$run" drain
    done
done
for tool in "${TOOLS[@]}"; do
    case "$tool" in
        sftpgw) obj="$OBJECTS/bench/bench/drain-1.bin" ;;
        *) obj="$OBJECTS/$tool/drain-1.bin" ;;
    esac
    cmp -s "$obj" "$WORK/src.bin" || die "$tool: the object differs from the source file"
done

echo
echo "drain: 1 x ${SIZE_MIB} MiB to the embedded s3s-fs server on 127.0.0.1, ${RUNS} runs alternating"
echo "load at end: $(loadavg)"
printf '%-34s %-22s %8s %7s %-18s %8s %9s %12s\n' tool "wall runs (s)" "median" "MiB/s" "CPU runs (s)" "CPU med" "CPU-s/GiB" "S3 srv CPU-s"
for tool in "${TOOLS[@]}"; do
    case "$tool" in
        sftpgw) label="sftpgw (16 MiB parts, 4 in flight)" ;;
        aws) label="aws s3 cp (8 MiB parts, 10)" ;;
        rclone) label="rclone copyto (16 MiB parts, 4)" ;;
    esac
    w="$(median ${WALL[$tool]})"
    c="$(median ${CPU[$tool]})"
    printf '%-34s %-22s %8s %7s %-18s %8s %9s %12s\n' "$label" "${WALL[$tool]# }" "$w" "$(mibps "$BYTES" "$w")" \
        "${CPU[$tool]# }" "$c" "$(div "$c" "$(div "$BYTES" $((1024 * MIB)) 6)")" "$(median ${SRV[$tool]})"
done
echo
echo "speed ratio sftpgw/aws (median aws time / median sftpgw time): $(div "$(median ${WALL[aws]})" "$(median ${WALL[sftpgw]})")"
echo "CPU ratio sftpgw/aws: $(div "$(median ${CPU[sftpgw]})" "$(median ${CPU[aws]})")"
