#!/usr/bin/env bash
# Memory of the sftpgw daemon (`sftpgw run`, its own process): resident set after start (idle),
# and the peak (VmHWM from /proc/PID/status) while 64 OpenSSH sftp sessions upload 64 MiB each
# at once:
#   paused  the S3 endpoint is a closed port on 127.0.0.1, the drain only retries
#   active  the S3 endpoint is the embedded s3s-fs server of a separate `sftpgw demo` process,
#           and the measurement ends when all files are delivered
#
#   bench/memory.sh            # SESSIONS=64 FILE_MIB=64 CASES="paused active" are the defaults
#   CASES=paused bench/memory.sh   # only the paused case (quicker iterations)
source "$(dirname "$0")/lib.sh"

SESSIONS="${SESSIONS:-64}"
FILE_MIB="${FILE_MIB:-64}"
CASES="${CASES:-paused active}"
has_case() { [[ " $CASES " == *" $1 "* ]]; }

build_sftpgw
machine_info

bench_client_key
make_file "$WORK/src.bin" "$FILE_MIB"

# sessions DIR PORT: SESSIONS parallel puts; prints the seconds until all finished.
sessions() {
    local i batches=()
    for i in $(seq "$SESSIONS"); do
        echo "put $WORK/src.bin /s-$i.bin" >"$1/batch.$i"
        batches+=("$1/batch.$i")
    done
    sftp_parallel "$2" bench "${batches[@]}"
}

kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Idle, and with the drain paused.
port="$(free_port)"
sftpgw_config "$WORK/paused" "$port" "http://127.0.0.1:1" x y "$PUB"
start_sftpgw "$WORK/paused" "$port"
sleep 2
IDLE_RSS="$(vm_kib "$SFTPGW_PID" VmRSS)"
IDLE_HWM="$(vm_kib "$SFTPGW_PID" VmHWM)"
IDLE_THREADS="$(vm_kib "$SFTPGW_PID" Threads)"
log "idle: VmRSS $IDLE_RSS KiB, VmHWM $IDLE_HWM KiB, $IDLE_THREADS threads"
PAUSED_HWM="" PAUSED_RSS="" T_PAUSED="" L_PAUSED=""
if has_case paused; then
sync
L_PAUSED="$(loadavg)"
T_PAUSED="$(sessions "$WORK/paused" "$port")"
PAUSED_HWM="$(vm_kib "$SFTPGW_PID" VmHWM)"
PAUSED_RSS="$(vm_kib "$SFTPGW_PID" VmRSS)"
sealed="$("$SFTPGW" status --json --all --config "$WORK/paused/sftpgw.toml" | jq '[.files[] | select(.state == "sealed")] | length')"
[ "$sealed" = "$SESSIONS" ] || die "expected $SESSIONS sealed files, found $sealed"
log "paused: ${T_PAUSED}s, VmHWM $PAUSED_HWM KiB, VmRSS after $PAUSED_RSS KiB, load before $L_PAUSED"
fi
stop_pid "$SFTPGW_PID"
rm -rf "$WORK/paused/spool"

ACTIVE_HWM="" ACTIVE_RSS="" T_ACTIVE_PUT="" T_ACTIVE_ALL="" L_ACTIVE=""
if has_case active; then
# Drain active, against a separate S3 server process.
S3_PORT="$(free_port)"
start_demo "$WORK/demo" "$(free_port)" "$S3_PORT"
port="$(free_port)"
sftpgw_config "$WORK/active" "$port" "http://127.0.0.1:$S3_PORT" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB"
start_sftpgw "$WORK/active" "$port"
sleep 2
sync
L_ACTIVE="$(loadavg)"
t0=$(now)
T_ACTIVE_PUT="$(sessions "$WORK/active" "$port")"
while :; do
    n="$("$SFTPGW" status --json --all --config "$WORK/active/sftpgw.toml" | jq '.drain.files_delivered')"
    [ "$n" = "$SESSIONS" ] && break
    [ "$(elapsed "$t0" | cut -d. -f1)" -lt 1200 ] || die "only $n files delivered after 1200 s"
    sleep 0.5
done
T_ACTIVE_ALL="$(elapsed "$t0")"
ACTIVE_HWM="$(vm_kib "$SFTPGW_PID" VmHWM)"
ACTIVE_RSS="$(vm_kib "$SFTPGW_PID" VmRSS)"
log "active: puts ${T_ACTIVE_PUT}s, all delivered ${T_ACTIVE_ALL}s, VmHWM $ACTIVE_HWM KiB, load before $L_ACTIVE"
stop_pid "$SFTPGW_PID"
fi

echo
echo "memory of the sftpgw daemon: ${SESSIONS} concurrent OpenSSH sftp sessions x ${FILE_MIB} MiB put"
echo "load at end: $(loadavg)"
printf '%-52s %10s %10s %s\n' case "VmHWM MiB" "VmRSS MiB" notes
printf '%-52s %10s %10s %s\n' "idle after start" "$(kib_mib "$IDLE_HWM")" "$(kib_mib "$IDLE_RSS")" "$IDLE_THREADS threads"
if has_case paused; then
    printf '%-52s %10s %10s %s\n' "${SESSIONS} sessions, drain paused (closed endpoint)" "$(kib_mib "$PAUSED_HWM")" "$(kib_mib "$PAUSED_RSS")" "puts took ${T_PAUSED}s; load before $L_PAUSED"
fi
if has_case active; then
    printf '%-52s %10s %10s %s\n' "${SESSIONS} sessions, drain active (separate S3 process)" "$(kib_mib "$ACTIVE_HWM")" "$(kib_mib "$ACTIVE_RSS")" "puts ${T_ACTIVE_PUT}s, all delivered ${T_ACTIVE_ALL}s; load before $L_ACTIVE"
fi
