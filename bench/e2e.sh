#!/usr/bin/env bash
# End to end: from the start of a 1 GiB `sftp put` (aes128-gcm) until the object is in the
# local S3-compatible server (the embedded s3s-fs server of `sftpgw demo`, on 127.0.0.1).
#
# Every contender is done when its object is visible in the server (the object file in place,
# full size; for the two OpenSSH pipelines, when the uploader exits).
#
#   sftpgw            `sftpgw demo`: put, then its drain (early drain overlaps the two); also
#                     reported: until `sftpgw status` says "delivered" (after its HEAD check)
#   OpenSSH + aws     put to sshd/internal-sftp, then `aws s3 cp` (8 MiB parts, 10 in flight)
#   OpenSSH + rclone  put to sshd/internal-sftp, then `rclone copyto` (16 MiB parts, 4)
#   rclone serve sftp an S3 remote, --vfs-cache-mode writes --vfs-write-back 0s (16 MiB parts,
#                     4); done when the object file appears in the S3 server's directory
#
#   bench/e2e.sh               # RUNS=3 SIZE_MIB=1024 are the defaults
source "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-3}"
SIZE_MIB="${SIZE_MIB:-1024}"
BYTES=$((SIZE_MIB * MIB))

setup_anchored_bench "$SIZE_MIB"

SSHD_PORT="$(free_port)"
start_sshd "$WORK/sshd" "$SSHD_PORT" "$PUB"
mkdir -p "$WORK/sshd-dst"

RSERVE_PORT="$(free_port)"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/rserve_host_key"
rclone serve sftp "bs3:uploads/rserve" --addr "127.0.0.1:$RSERVE_PORT" \
    --authorized-keys "$WORK/client_key.pub" --key "$WORK/rserve_host_key" \
    --vfs-cache-mode writes --vfs-write-back 0s --cache-dir "$WORK/rserve-cache" \
    --s3-chunk-size 16M --s3-upload-concurrency 4 >"$WORK/rserve.log" 2>&1 &
RSERVE_PID=$!
track_pid "$RSERVE_PID"
wait_tcp "$RSERVE_PORT"


# wait_object PATH T0: until PATH exists with the full size (s3s-fs renames it into place).
wait_object() {
    until [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" = "$BYTES" ]; do
        [ "$(elapsed "$2" | cut -d. -f1)" -lt 900 ] || die "no object $1 after 900 s"
        sleep 0.01
    done
}

# e2e_TOOL RUN: prints seconds from the start of the put until the object is in S3 (visible
# to a reader: the end every contender is measured at).
e2e_sftpgw() {
    local t0 visible state cfg="$WORK/demo/sftpgw.toml"
    echo "put $WORK/src.bin /e2e-$1.bin" >"$WORK/batch"
    t0=$(now)
    sftp_batch "$DEMO_PORT" demo "$WORK/demo/client_ed25519" "$WORK/batch"
    log "e2e sftpgw run $1: put done after $(elapsed "$t0")s"
    wait_object "$OBJECTS/site-a/demo/e2e-$1.bin" "$t0"
    visible="$(elapsed "$t0")"
    # Then until the box has checked it (HEAD) and freed its spool copy: reported beside it.
    while :; do
        state="$(file_state "$cfg" "/e2e-$1.bin")"
        [ "$state" = delivered ] && break
        [ "$state" = failed ] && die "sftpgw: delivery failed"
        sleep 0.01
    done
    elapsed "$t0" >"$WORK/delivered-$1"
    echo "$visible"
}

# e2e_via_sshd TOOL RUN: a put to sshd, then TOOL's upload of the file (upload_TOOL PATH RUN);
# prints the seconds of both.
e2e_via_sshd() {
    local t0 dst="$WORK/sshd-dst/$1-$2.bin"
    echo "put $WORK/src.bin $dst" >"$WORK/batch"
    t0=$(now)
    sftp_batch "$SSHD_PORT" root "$KEY" "$WORK/batch"
    log "e2e openssh_$1 run $2: put done after $(elapsed "$t0")s"
    "upload_$1" "$dst" "$2"
    elapsed "$t0"
    rm -f "$dst"
}

upload_aws() {
    "$AWS" s3 cp --endpoint-url "$AWS_ENDPOINT" --only-show-errors --no-progress \
        "$1" "s3://uploads/aws/e2e-$2.bin" >/dev/null
}

upload_rclone() {
    rclone copyto --s3-chunk-size 16M --s3-upload-concurrency 4 \
        "$1" "bs3:uploads/rclone/e2e-$2.bin" >/dev/null 2>"$WORK/rclone.err" ||
        die "rclone copyto: $(tail -3 "$WORK/rclone.err")"
}

e2e_openssh_aws() { e2e_via_sshd aws "$1"; }
e2e_openssh_rclone() { e2e_via_sshd rclone "$1"; }

e2e_rclone_serve() {
    local t0
    echo "put $WORK/src.bin /e2e-$1.bin" >"$WORK/batch"
    t0=$(now)
    sftp_batch "$RSERVE_PORT" bench "$KEY" "$WORK/batch"
    log "e2e rclone_serve run $1: put done after $(elapsed "$t0")s"
    wait_object "$OBJECTS/rserve/e2e-$1.bin" "$t0"
    elapsed "$t0"
}

declare -A T
TOOLS=(sftpgw openssh_aws openssh_rclone rclone_serve)
for run in $(seq "$RUNS"); do
    for tool in "${TOOLS[@]}"; do
        settle
        l="$(loadavg)"
        t="$("e2e_$tool" "$run")"
        T[$tool]="${T[$tool]:-} $t"
        log "e2e $tool run $run: ${t}s, load before $l"
    done
    if [ "$run" = 1 ]; then
        cmp -s "$OBJECTS/site-a/demo/e2e-1.bin" "$WORK/src.bin" || die "sftpgw: the object differs"
        cmp -s "$OBJECTS/rserve/e2e-1.bin" "$WORK/src.bin" || die "rclone serve: the object differs"
    fi
    # Each run leaves 4 GiB of objects: removed, so that the disk does not fill over the runs
    # (the gateway's spool refuses uploads above its 90 % high watermark).
    rm -f "$OBJECTS/site-a/demo/e2e-$run.bin" "$OBJECTS/aws/e2e-$run.bin" \
        "$OBJECTS/rclone/e2e-$run.bin" "$OBJECTS/rserve/e2e-$run.bin"
done

echo
echo "end to end: 1 x ${SIZE_MIB} MiB, put start -> object in the embedded s3s-fs server, ${RUNS} runs alternating"
echo "load at end: $(loadavg)"
printf '%-40s %-26s %8s %7s\n' path "runs (s)" median "MiB/s"
for tool in "${TOOLS[@]}"; do
    case "$tool" in
        sftpgw) label="sftpgw demo (put + drain)" ;;
        openssh_aws) label="OpenSSH put + aws s3 cp" ;;
        openssh_rclone) label="OpenSSH put + rclone copyto" ;;
        rclone_serve) label="rclone serve sftp (VFS writes, 0s)" ;;
    esac
    m="$(median ${T[$tool]})"
    printf '%-40s %-26s %8s %7s\n' "$label" "${T[$tool]# }" "$m" "$(mibps "$BYTES" "$m")"
done
delivered=()
for run in $(seq "$RUNS"); do delivered+=("$(cat "$WORK/delivered-$run")"); done
printf '%-40s %-26s %8s\n' "sftpgw, until status says delivered" "${delivered[*]}" "$(median "${delivered[@]}")"
echo "(delivered: the object checked with HEAD, its delivery logged and its spool copy freed)"
echo
best=""
for tool in openssh_aws openssh_rclone rclone_serve; do
    m="$(median ${T[$tool]})"
    if [ -z "$best" ] || awk -v a="$m" -v b="$best" 'BEGIN { exit !(a < b) }'; then best="$m"; fi
done
echo "speed ratio sftpgw / fastest anchor (anchor median / sftpgw median): $(div "$best" "$(median ${T[sftpgw]})")"
echo "time ratio sftpgw / fastest anchor (sftpgw median / anchor median): $(div "$(median ${T[sftpgw]})" "$best")"
read -ra gw <<<"${T[sftpgw]}"
read -ra aws <<<"${T[openssh_aws]}"
pairs=""
for i in "${!gw[@]}"; do pairs="$pairs $(div "${gw[$i]}" "${aws[$i]}")"; done
echo "time ratio sftpgw / OpenSSH + aws of each run (same round):$pairs"
