#!/usr/bin/env bash
# Shaping accuracy: the drain rate averaged over 30 s at 1, 4 and 16 MiB/s, and how long a rate
# change takes to apply, against the local S3 server (the embedded s3s-fs server of a separate
# `sftpgw demo` process).
#
#   bench/shaping.sh           # RATES="1 4 16" WINDOW_SECS=30 WARMUP_SECS=3 are the defaults
#
# How: one gateway (`sftpgw run`, 16 MiB parts, 4 in flight) starts with `rate = "paused"`,
# receives one large file over SFTP (the LAN side is not shaped), then gets
# `sftpgw drain rate R` for each rate in turn. After WARMUP_SECS the bytes the S3 server has
# written into its part files (`wchar` of /proc/PID/io of the demo process, which does nothing
# else meanwhile: no Complete happens before the file's last part; its sockets are read with
# recv(2), which `rchar` does not count) are sampled, and again WINDOW_SECS later: the rate is
# their difference over the measured time. That counter is the receiving side's, so it cannot
# be flattered by what the gateway thinks it sent; it lags by the server's write buffers, a
# constant that cancels out of the difference.
# Rate changes: from 1 to 16 MiB/s and back, the time from the `sftpgw drain rate` command
# until the S3 server's receive rate (sampled every 50 ms over a 250 ms window) crosses the
# midpoint of the two rates.
#
# The rates are far below what the drain can do (about 130 MiB/s here), so a debug build is
# used unless SFTPGW_BIN names another binary.
source "$(dirname "$0")/lib.sh"

RATES="${RATES:-1 4 16}"
WINDOW_SECS="${WINDOW_SECS:-30}"
WARMUP_SECS="${WARMUP_SECS:-3}"

if [ -z "${SFTPGW_BIN:-}" ]; then
    log "cargo build (debug)"
    (cd "$REPO_DIR" && cargo build --locked -q) >&2
    SFTPGW_BIN="${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/sftpgw"
fi
cp "$SFTPGW_BIN" "$WORK/sftpgw"
SFTPGW="$WORK/sftpgw"
machine_info

# Enough data for every window plus the rate-change probes.
total_mib=0
for r in $RATES; do total_mib=$((total_mib + r * (WINDOW_SECS + WARMUP_SECS + 2))); done
SIZE_MIB=$((total_mib + 16 * 8 + 64))
bench_client_key
make_file "$WORK/src.bin" "$SIZE_MIB"

start_demo_s3

GW="$WORK/gw"
PORT="$(free_port)"
sftpgw_config "$GW" "$PORT" "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB" 16MiB 4
printf '[shaping]\nrate = "paused"\n' >>"$GW/sftpgw.toml"
start_sftpgw "$GW" "$PORT"
CONF="$GW/sftpgw.toml"
log "put $SIZE_MIB MiB (drain paused)"
t0=$(now)
echo "put $WORK/src.bin /shaping.bin" >"$WORK/batch"
sftp_batch "$PORT" bench "$KEY" "$WORK/batch"
echo "sftp put of $SIZE_MIB MiB while paused: $(elapsed "$t0") s"

wchar() { awk '$1 == "wchar:" { print $2 }' "/proc/$DEMO_PID/io"; }

printf '\n| set rate | measured over %s s | error |\n|---|---|---|\n' "$WINDOW_SECS"
for r in $RATES; do
    "$SFTPGW" drain -c "$CONF" rate "${r}MiB/s" >/dev/null
    sleep "$WARMUP_SECS"
    b0=$(wchar)
    t0=$(now)
    sleep "$WINDOW_SECS"
    b1=$(wchar)
    secs=$(elapsed "$t0")
    awk -v b="$((b1 - b0))" -v s="$secs" -v r="$r" 'BEGIN {
        got = b / s / 1048576
        printf "| %d MiB/s | %.4f MiB/s | %+.2f%% |\n", r, got, (got / r - 1) * 100 }'
    log "rate $r MiB/s done; load $(loadavg)"
done

# change_latency FROM TO: seconds from `drain rate TO` until the receive rate crosses the midpoint.
change_latency() {
    "$SFTPGW" drain -c "$CONF" rate "${1}MiB/s" >/dev/null
    sleep 3
    python3 - "$DEMO_PID" "$1" "$2" "$SFTPGW" "$CONF" <<'EOF'
import subprocess, sys, time
pid, old, new, exe, conf = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
mid = (old + new) / 2 * 1048576
def wchar():
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
window = []
t0 = time.monotonic()
subprocess.run([exe, "drain", "-c", conf, "rate", f"{int(new)}MiB/s"], check=True, stdout=subprocess.DEVNULL)
while True:
    now = time.monotonic()
    window.append((now, wchar()))
    window = [(t, b) for (t, b) in window if now - t <= 0.25]
    if len(window) >= 2 and now - window[0][0] >= 0.2:
        rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        if (new > old and rate > mid) or (new < old and rate < mid):
            # The window's middle is when the rate crossed, on average.
            print(f"{max(0.0, now - 0.125 - t0):.2f}")
            break
    if now - t0 > 10:
        print("more than 10")
        break
    time.sleep(0.05)
EOF
}

printf '\n| rate change | time to apply |\n|---|---|\n'
echo "| 1 -> 16 MiB/s | $(change_latency 1 16) s |"
echo "| 16 -> 1 MiB/s | $(change_latency 16 1) s |"
echo
echo "gateway: $("$SFTPGW" drain -c "$CONF" pause)"
