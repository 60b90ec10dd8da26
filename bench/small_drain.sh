#!/usr/bin/env bash
# Drain of many small objects: COUNT files of 1-8 KiB already on the spool, to a local
# S3-compatible server (the embedded s3s-fs server of `sftpgw demo`), against
# `aws s3 cp --recursive` of a directory holding the same files (10 requests in flight).
#
#   bench/small_drain.sh      # RUNS=3 COUNT=20000 CONCURRENCY=4
#
# sftpgw: a gateway whose endpoint is a closed port receives the files (8 `sftp -b` sessions)
# and is stopped; a new gateway on the same spool, pointed at the S3 server, is started. Wall
# time runs from its start until `sftpgw status` counts COUNT files delivered (each after its
# HEAD check). aws: the wall time of `aws s3 cp --recursive`. The S3 server is a separate
# process, its CPU shown apart.
source "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-3}"
COUNT="${COUNT:-20000}"
CONCURRENCY="${CONCURRENCY:-4}"

build_sftpgw
ensure_awscli
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >&2; }
machine_info
echo "tools:   $("$AWS" --version 2>&1 | cut -d' ' -f1-2)"
bench_client_key

# The same COUNT files for both: 64 sources of 1-8 KiB, hard-linked under COUNT names.
make_small_sources "$WORK/src"
mkdir -p "$WORK/tree"
for n in $(seq 0 $((COUNT - 1))); do ln "$WORK/src/f$((n % 64))" "$WORK/tree/f$n"; done

start_demo_s3
aws_env "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET"

drain_sftpgw() {
    local dir="$WORK/gw-$1" port t0 c per batches=()
    port="$(free_port)"
    sftpgw_config "$dir" "$port" "http://127.0.0.1:1" x y "$PUB" 16MiB "$CONCURRENCY"
    start_sftpgw "$dir" "$port"
    per=$(((COUNT + 7) / 8))
    for c in $(seq 0 7); do
        seq $((c * per)) $(((c + 1) * per - 1)) | awk -v n="$COUNT" -v t="$WORK/tree" \
            '$1 < n { print "put " t "/f" $1 " /f" $1 }' >"$dir/batch$c"
        batches+=("$dir/batch$c")
    done
    sftp_parallel "$port" bench "${batches[@]}" >/dev/null
    stop_pid "$SFTPGW_PID"
    sftpgw_config "$dir" "$port" "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB" 16MiB "$CONCURRENCY"
    settle
    t0=$(now)
    start_sftpgw "$dir" "$port"
    while [ "$("$SFTPGW" status --json --config "$dir/sftpgw.toml" | jq '.drain.files_delivered')" -lt "$COUNT" ]; do
        kill -0 "$SFTPGW_PID" 2>/dev/null || die "sftpgw exited: $(tail -5 "$dir/daemon.log")"
        [ "$(elapsed "$t0" | cut -d. -f1)" -lt 1800 ] || die "not delivered after 1800 s"
        sleep 0.2
    done
    RES_W="$(elapsed "$t0")"
    RES_C="$(cpu_seconds "$SFTPGW_PID")"
    stop_pid "$SFTPGW_PID"
    rm -rf "$dir/spool"
}

drain_aws() {
    local r
    r="$(timed "$AWS" s3 cp --recursive --endpoint-url "$AWS_ENDPOINT" --only-show-errors --no-progress \
        "$WORK/tree" "s3://uploads/aws-$1/")"
    read -r RES_W RES_C < <(awk '{ printf "%s %.2f\n", $1, $2 + $3 }' <<<"$r")
}

declare -A WALL CPU SRV
for run in $(seq "$RUNS"); do
    for tool in sftpgw aws; do
        settle
        drain_round "$tool" "$run" "small drain"
    done
done
got="$(find "$WORK/demo/s3/uploads/bench/bench" -type f | wc -l)"
[ "$got" -ge "$COUNT" ] || die "sftpgw: $got objects in the bucket, expected $COUNT"

echo
echo "small-object drain: $COUNT objects of 1-8 KiB to the embedded s3s-fs server, $RUNS runs alternating"
echo "load at end: $(loadavg)"
printf '%-36s %-24s %8s %9s %-20s %10s\n' tool "wall runs (s)" median "objects/s" "CPU runs (s)" "S3 srv CPU"
for tool in sftpgw aws; do
    case "$tool" in
        sftpgw) label="sftpgw (concurrency $CONCURRENCY)" ;;
        aws) label="aws s3 cp --recursive (10 in flight)" ;;
    esac
    w="$(median ${WALL[$tool]})"
    printf '%-36s %-24s %8s %9s %-20s %10s\n' "$label" "${WALL[$tool]# }" "$w" \
        "$(div "$COUNT" "$w" 0)" "${CPU[$tool]# }" "$(median ${SRV[$tool]})"
done
echo
echo "time ratio sftpgw/aws (target ≤ 1.0): $(div "$(median ${WALL[sftpgw]})" "$(median ${WALL[aws]})")"
