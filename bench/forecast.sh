#!/usr/bin/env bash
# The spool forecast, the watermarks and the daily budget, measured on a spool of its own
# (a tmpfs of SPOOL_MIB, so that it fills in seconds; needs root to mount it):
#
#  1. fill: one `sftp` batch puts 16 MiB files at INGEST_MIB/s (`sftp -l`) while the drain is
#     shaped to DRAIN_MIB/s; `sftpgw status --json` is sampled every 0.5 s. The forecast
#     ("uploads refused in N s", a moving average over the last minute) at a quarter, half and
#     three quarters of the fill is set against the time the spool really began refusing.
#     Target: within 20 % at half the fill.
#  2. watermarks: at the high watermark (90 %) an upload is refused and status says why; the
#     drain alone takes the spool down, and an upload tried every 0.5 s is accepted again only
#     once the fill is below the low watermark (80 %).
#  3. daily budget: a gateway with `daily_budget = BUDGET_MIB` and 5 MiB parts is given 64 MiB;
#     the drain must stop within one part of the budget (and never above it).
#
#   bench/forecast.sh            # SPOOL_MIB=256 INGEST_MIB=16 DRAIN_MIB=4 BUDGET_MIB=20
source "$(dirname "$0")/lib.sh"

SPOOL_MIB="${SPOOL_MIB:-256}"
INGEST_MIB="${INGEST_MIB:-16}"
DRAIN_MIB="${DRAIN_MIB:-4}"
BUDGET_MIB="${BUDGET_MIB:-20}"
PART_MIB=5
[ "$(id -u)" = 0 ] || die "needs root: the spool is a tmpfs mounted for the run"

SPOOLFS="$WORK/spoolfs"
mkdir -p "$SPOOLFS"
unmount_spool() { umount -l "$SPOOLFS" 2>/dev/null || true; }
mount_spool() {
    unmount_spool
    mount -t tmpfs -o "size=${SPOOL_MIB}m,mode=0700" sftpgw-bench-spool "$SPOOLFS" ||
        die "cannot mount a tmpfs on $SPOOLFS"
}
finish() {
    local pid
    for pid in "${TRACKED_PIDS[@]:-}"; do [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    unmount_spool
    cleanup
}
trap finish EXIT

build_sftpgw
machine_info
bench_client_key
make_file "$WORK/f16.bin" 16
make_file "$WORK/small.bin" 1

start_demo_s3

# gw_config DIR PORT RATE [BUDGET_LINE]
gw_config() {
    mkdir -p "$1"
    cat >"$1/sftpgw.toml" <<EOF
[sftp]
listen = "127.0.0.1:$2"
host_key = "$1/host_key"
[spool]
dir = "$SPOOLFS/spool"
high_watermark = "90%"
low_watermark = "80%"
[s3]
endpoint = "$S3_EP"
region = "us-east-1"
bucket = "uploads"
prefix = "forecast/"
path_style = true
access_key_id = "$DEMO_ACCESS"
secret_access_key = "$DEMO_SECRET"
part_size = "${PART_MIB}MiB"
concurrency = 2
[shaping]
rate = "$3"
timezone = "UTC"
${4:-}
[control]
socket = "$1/control.sock"
[[users]]
name = "bench"
authorized_keys = ["$PUB"]
EOF
}

status_json() { "$SFTPGW" status --json --config "$1/sftpgw.toml" 2>/dev/null; }
put_one() { # put_one PORT LOCAL REMOTE: exit status of one sftp put
    echo "put $2 $3" >"$WORK/batch-one"
    sftp_batch "$1" bench "$KEY" "$WORK/batch-one" 2>/dev/null
}

# ---- 1 and 2: fill, forecast, watermarks ---------------------------------------------------
mount_spool
GW="$WORK/gw"
GW_PORT="$(free_port)"
gw_config "$GW" "$GW_PORT" "${DRAIN_MIB}MiB/s"
start_sftpgw "$GW" "$GW_PORT"

# The fill: more files than fit; '-' lets the batch go on past a refused one.
: >"$WORK/batch-fill"
for i in $(seq $((SPOOL_MIB / 16 + 4))); do echo "-put $WORK/f16.bin /fill-$i.bin" >>"$WORK/batch-fill"; done
CSV="$WORK/samples.csv"
echo "t_s,used_bytes,total_bytes,ingest_Bps,drain_Bps,forecast,forecast_secs,refusing" >"$CSV"
T0="$(now)"
sftp -q -b "$WORK/batch-fill" -i "$KEY" -P "$GW_PORT" -c "$CIPHER" -l $((INGEST_MIB * 8192)) \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes \
    -o BatchMode=yes -o LogLevel=ERROR bench@127.0.0.1 >/dev/null 2>"$WORK/fill.err" &
FILL_PID=$!
track_pid "$FILL_PID"
REFUSED_AT=""
while :; do
    t="$(elapsed "$T0")"
    j="$(status_json "$GW")" || die "status failed"
    line="$(jq -r --arg t "$t" '[$t, (.spool.total_bytes - .spool.free_bytes), .spool.total_bytes,
        .rates.ingest_bytes_per_sec, .rates.drain_bytes_per_sec, .rates.forecast.kind,
        (.rates.forecast.secs // ""),
        ([.health.reasons[] | select(test("full|refuses"))] | length > 0)] | @csv' <<<"$j")"
    echo "$line" >>"$CSV"
    if [ -z "$REFUSED_AT" ] && [ "${line##*,}" = true ]; then REFUSED_AT="$t"; fi
    [ -n "$REFUSED_AT" ] && break
    kill -0 "$FILL_PID" 2>/dev/null || die "the fill ended before the spool refused: $(tail -3 "$WORK/fill.err")"
    awk -v t="$t" 'BEGIN { exit !(t < 300) }' || die "no refusal in 300 s"
    sleep 0.5
done
log "spool refusing at ${REFUSED_AT}s"

# 2: refused now, with the reason in status; accepted again only below the low watermark.
put_one "$GW_PORT" "$WORK/small.bin" /probe-high.bin && die "an upload was accepted at the high watermark"
reason="$(status_json "$GW" | jq -r '[.health.reasons[] | select(test("full|refuses"))][0]')"
kill -TERM "$FILL_PID" 2>/dev/null || true
wait "$FILL_PID" 2>/dev/null || true
fill_pct() { status_json "$GW" | jq -r '(.spool.total_bytes - .spool.free_bytes) * 100 / .spool.total_bytes'; }
ACCEPT_LINES=()
attempts=0
while :; do
    pct="$(fill_pct)"
    if put_one "$GW_PORT" "$WORK/small.bin" "/probe-$attempts.bin"; then
        ACCEPT_LINES+=("accepted at ${pct} % full (attempt $attempts)")
        break
    fi
    # Refused: it must be above the low watermark (or just crossing it).
    ACCEPT_LINES+=("refused at ${pct} % full")
    attempts=$((attempts + 1))
    [ "$attempts" -lt 600 ] || die "uploads never accepted again"
    sleep 0.5
done
accepted_pct="$pct"
highest_refused=""
refused_below=0
for l in "${ACCEPT_LINES[@]}"; do
    case "$l" in refused*)
        p="$(awk '{ print $3 }' <<<"$l")"
        awk -v p="$p" 'BEGIN { exit !(p < 79) }' && refused_below=$((refused_below + 1))
        ;;
    esac
done
stop_pid "$SFTPGW_PID"

# ---- 3: daily budget -----------------------------------------------------------------------
mount_spool
GB="$WORK/gw-budget"
GB_PORT="$(free_port)"
gw_config "$GB" "$GB_PORT" unlimited "daily_budget = \"${BUDGET_MIB}MiB\""
start_sftpgw "$GB" "$GB_PORT"
: >"$WORK/batch-budget"
for i in 1 2 3 4; do echo "put $WORK/f16.bin /budget-$i.bin" >>"$WORK/batch-budget"; done
sftp_batch "$GB_PORT" bench "$KEY" "$WORK/batch-budget" || die "budget puts failed"
last=-1
stable=0
for _ in $(seq 600); do
    sent="$(status_json "$GB" | jq -r '.drain.bytes_sent')"
    if [ "$sent" = "$last" ]; then stable=$((stable + 1)); else stable=0; last="$sent"; fi
    [ "$stable" -ge 6 ] && break
    sleep 0.5
done
budget_json="$(status_json "$GB" | jq -c '.shaping.daily_budget')"

# ---- report --------------------------------------------------------------------------------
mkdir -p "$REPO_DIR/bench/results/forecast"
stamp="$(date -u +%Y%m%dT%H%MZ)"
cp "$CSV" "$REPO_DIR/bench/results/forecast/fill-$stamp.csv"

echo
echo "spool: tmpfs of $SPOOL_MIB MiB; ingest ${INGEST_MIB} MiB/s (sftp -l), drain shaped to ${DRAIN_MIB} MiB/s, 5 MiB parts"
echo "samples: bench/results/forecast/fill-$stamp.csv"
echo "uploads refused from ${REFUSED_AT} s after the fill began (status: $reason)"
printf '%-28s %10s %16s %12s %8s\n' "forecast read at" "t (s)" "said (s ahead)" "real (s)" error
FAIL=0
for frac in 0.25 0.50 0.75; do
    want="$(awk -v r="$REFUSED_AT" -v f="$frac" 'BEGIN { printf "%.3f", r * f }')"
    row="$(awk -F, -v w="$want" 'NR > 1 && $6 == "\"full_in\"" { gsub(/"/, ""); t = $1 + 0;
        if (t >= w) { print t, $7; exit } }' "$CSV")"
    [ -n "$row" ] || { echo "no forecast near ${want}s"; FAIL=1; continue; }
    read -r t secs <<<"$row"
    real="$(awk -v r="$REFUSED_AT" -v t="$t" 'BEGIN { printf "%.1f", r - t }')"
    err="$(awk -v s="$secs" -v r="$real" 'BEGIN { printf "%+.0f %%", (s - r) * 100 / r }')"
    printf '%-28s %10s %16s %12s %8s\n' "$(awk -v f="$frac" 'BEGIN { printf "%d %% of the fill", f * 100 }')" "$t" "$secs" "$real" "$err"
    if [ "$frac" = 0.50 ] && ! awk -v s="$secs" -v r="$real" 'BEGIN { d = (s - r) / r; exit !(d <= 0.2 && d >= -0.2) }'; then
        FAIL=1
    fi
done
echo "after the high watermark, uploads tried every 0.5 s while the drain alone emptied the spool:"
printf '  %s\n' "${ACCEPT_LINES[0]}" "..." "${ACCEPT_LINES[@]: -2}"
echo "  refused below 79 % full: $refused_below time(s); accepted at ${accepted_pct} % (low watermark 80 %)"
awk -v p="$accepted_pct" 'BEGIN { exit !(p < 80) }' || { echo "FAIL: accepted above the low watermark"; FAIL=1; }
[ "$refused_below" = 0 ] || { echo "FAIL: refused below the low watermark"; FAIL=1; }
echo "daily budget ${BUDGET_MIB} MiB, 64 MiB waiting: the drain stopped after $sent bytes ($(div "$sent" "$MIB") MiB); status: $budget_json"
budget=$((BUDGET_MIB * MIB))
if [ "$sent" -gt "$budget" ] || [ "$sent" -lt $((budget - PART_MIB * MIB)) ]; then
    echo "FAIL: not within one part ($PART_MIB MiB) below the budget"
    FAIL=1
fi
[ "$FAIL" = 0 ] && echo "all checks passed" || die "a check failed"
