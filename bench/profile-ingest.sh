#!/usr/bin/env bash
# Where the CPU goes while PAR OpenSSH `sftp` clients put PAR_MIB each at once, into sftpgw
# (drain paused) and into OpenSSH sshd + internal-sftp: `perf record -a -g` over each run,
# then the share of CPU samples per process name and the hottest symbols of the server.
# Not a benchmark (perf slows everything); it says what a benchmark's time is spent on.
#
#   bench/profile-ingest.sh        # PAR=16 PAR_MIB=64; PERF_OUT=dir keeps perf.data files
source "$(dirname "$0")/lib.sh"

PAR="${PAR:-16}"
PAR_MIB="${PAR_MIB:-64}"
command -v perf >/dev/null || die "perf is not installed"

build_sftpgw
machine_info
bench_client_key
make_file "$WORK/src.bin" "$PAR_MIB"

start_ingest_servers "$WORK/dst"

# profile NAME PORT USER DSTDIR FILTER...: PAR parallel puts under perf; prints the report,
# the server's symbols selected by the perf report options FILTER.
profile() {
    local i batches=() perf_pid t
    for i in $(seq "$PAR"); do
        echo "put $WORK/src.bin $4/p-$i.bin" >"$WORK/batch.$1.$i"
        batches+=("$WORK/batch.$1.$i")
    done
    # (sftpgw's root is "/", so its DSTDIR is "")
    sync; sleep 1
    perf record -a -g -F 499 -o "$WORK/$1.data" -- sleep 3600 2>/dev/null &
    perf_pid=$!
    sleep 0.5
    t="$(sftp_parallel "$2" "$3" "${batches[@]}")"
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    echo
    echo "== $1: $PAR x $PAR_MIB MiB in ${t}s (under perf), load $(loadavg)"
    echo "-- CPU samples by process"
    perf report -i "$WORK/$1.data" --no-children --sort comm --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -12 || true
    echo "-- hottest symbols of the server (${*:5})"
    perf report -i "$WORK/$1.data" --no-children "${@:5}" --sort dso,symbol --stdio \
        -g none 2>/dev/null | grep -E '^ +[0-9]' | head -25 || true
    echo "-- hottest symbols of the ssh clients"
    perf report -i "$WORK/$1.data" --no-children --comm ssh --sort dso,symbol --stdio \
        -g none 2>/dev/null | grep -E '^ +[0-9]' | head -15 || true
    [ -z "${PERF_OUT:-}" ] || { mkdir -p "$PERF_OUT"; cp "$WORK/$1.data" "$PERF_OUT/"; }
}

profile sftpgw "$GW_PORT" bench "" --pid "$SFTPGW_PID"
profile openssh "$SSHD_PORT" root "$WORK/dst" --comm sshd
