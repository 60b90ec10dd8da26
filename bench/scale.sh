#!/usr/bin/env bash
# Scale: FILES small files (default 100000; the issue's target is 10^6) through one gateway
# (ingest by CLIENTS parallel OpenSSH `sftp -b` sessions, drain to a local S3 server, delivered),
# with the daemon's RSS, the latency of `sftpgw status --json` (the request behind the
# watchdog's health check) and the journal's size sampled every SAMPLE_SECS. At the end: the
# restart time (SIGTERM, start, first status answer).
#
# Writes bench/results/scale/scale-<date>.csv (one row a sample), scale-<date>.svg (RSS and
# status latency against files delivered) and prints a summary table.
#
# Knobs: FILES (100000), CLIENTS (8), BATCH (500 puts per sftp session), SAMPLE_SECS (2),
# SFTPGW_BIN, BENCH_KEEP, OUT (bench/results/scale).
source "$(dirname "$0")/lib.sh"

FILES="${FILES:-100000}"
CLIENTS="${CLIENTS:-8}"
BATCH="${BATCH:-500}"
SAMPLE_SECS="${SAMPLE_SECS:-2}"
OUT="${OUT:-$BENCH_DIR/results/scale}"
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >&2; }

build_sftpgw
machine_info | tee "$WORK/machine.txt" >&2
client_key "$WORK"
PUB="$(cat "$WORK/client_key.pub")"

# The S3 server: the embedded one of a separate `sftpgw demo` process, so that the gateway's
# RSS is its own.
S3DIR="$WORK/s3demo"
start_demo "$S3DIR" "$(free_port)" "$(free_port)"
S3_ENDPOINT="$(awk -F'"' '/^endpoint/ { print $2 }' "$S3DIR/sftpgw.toml")"

GW="$WORK/gw"
PORT="$(free_port)"
sftpgw_config "$GW" "$PORT" "$S3_ENDPOINT" "$DEMO_ACCESS" "$DEMO_SECRET" "$PUB" 16MiB 16
start_sftpgw "$GW" "$PORT"
CONF="$GW/sftpgw.toml"

# 64 distinct local files of 1-8 KiB; each is put under many names.
make_small_sources "$WORK/src"

# Batches: BATCH puts each, into a directory of their own (b<N>/), the local file cycling.
batches=$(((FILES + BATCH - 1) / BATCH))
mkdir -p "$WORK/batches"
for b in $(seq 0 $((batches - 1))); do
    {
        echo "mkdir b$b"
        for i in $(seq 0 $((BATCH - 1))); do
            n=$((b * BATCH + i))
            [ "$n" -lt "$FILES" ] || break
            echo "put $WORK/src/f$((n % 64)) b$b/f$n"
        done
    } >"$WORK/batches/$b"
done

CSV="$WORK/samples.csv"
echo "secs,rss_kib,hwm_kib,status_ms,delivered_total,queue_files,journal_bytes" >"$CSV"
T0="$(now)"
sampler() {
    while kill -0 "$SFTPGW_PID" 2>/dev/null; do
        local t0 t1 json
        t0="$(now)"
        json="$("$SFTPGW" status --json --config "$CONF" 2>/dev/null || true)"
        t1="$(now)"
        [ -n "$json" ] || { sleep "$SAMPLE_SECS"; continue; }
        printf '%s,%s,%s,%s,%s,%s,%s\n' \
            "$(elapsed "$T0" "$t0")" \
            "$(vm_kib "$SFTPGW_PID" VmRSS)" "$(vm_kib "$SFTPGW_PID" VmHWM)" \
            "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')" \
            "$(jq -r '.drain.files_delivered' <<<"$json")" \
            "$(jq -r '.queue.files' <<<"$json")" \
            "$(stat -c %s "$GW/spool/journal" 2>/dev/null || echo 0)" >>"$CSV"
        sleep "$SAMPLE_SECS"
    done
}
sampler &
SAMPLER_PID=$!
track_pid "$SAMPLER_PID"

log "ingest: $FILES files in $batches sessions, $CLIENTS at once"
ingest_start="$(now)"
export -f sftp_batch
export CIPHER
ls "$WORK/batches" | sort -n |
    xargs -P "$CLIENTS" -I{} bash -c 'sftp_batch "$0" bench "$1" "$2/{}" || exit 255' \
        "$PORT" "$WORK/client_key" "$WORK/batches"
ingest_secs="$(elapsed "$ingest_start")"
log "ingest done in ${ingest_secs} s; waiting for the drain"

while :; do
    json="$("$SFTPGW" status --json --config "$CONF")"
    [ "$(jq -r '.drain.files_delivered' <<<"$json")" -ge "$FILES" ] && break
    kill -0 "$SFTPGW_PID" 2>/dev/null || die "sftpgw exited: $(tail -5 "$GW/daemon.log")"
    sleep 1
done
all_secs="$(elapsed "$ingest_start")"
sleep "$((SAMPLE_SECS + 1))" # one sample after the end

# Restart: SIGTERM, start again, time until status answers.
kill "$SAMPLER_PID" 2>/dev/null || true
stop_pid "$SFTPGW_PID"
journal_bytes="$(stat -c %s "$GW/spool/journal")"
restart_start="$(now)"
start_sftpgw "$GW" "$PORT"
restart_secs="$(elapsed "$restart_start")"
rss_after_restart="$(vm_kib "$SFTPGW_PID" VmRSS)"
listed="$("$SFTPGW" status --json --config "$CONF" | jq -r '.file_counts.delivered')"

mkdir -p "$OUT"
stamp="$(date -u +%Y%m%dT%H%MZ)"
cp "$CSV" "$OUT/scale-$stamp.csv"
python3 - "$CSV" "$OUT/scale-$stamp.svg" "$FILES" <<'EOF'
# RSS (MiB) and status latency (ms) against files delivered, as one SVG with two panels.
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
xs = [int(r["delivered_total"]) for r in rows]
panels = [("RSS of the daemon, MiB", [int(r["rss_kib"]) / 1024 for r in rows], 64),
          ("sftpgw status --json, ms", [float(r["status_ms"]) for r in rows], 50)]
W, H, M = 720, 260, 60
xmax = max(xs + [1])
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{2 * H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{2 * H}" fill="white"/>']
for p, (title, ys, target) in enumerate(panels):
    top = p * H
    ymax = max(ys + [target]) * 1.1
    def X(x): return M + (W - 2 * M) * x / xmax
    def Y(y): return top + H - 40 - (H - 70) * y / ymax
    out.append(f'<text x="{M}" y="{top + 20}">{title} against files delivered ({sys.argv[3]} files)</text>')
    out.append(f'<line x1="{M}" y1="{Y(0)}" x2="{W - M}" y2="{Y(0)}" stroke="black"/>')
    out.append(f'<line x1="{M}" y1="{Y(0)}" x2="{M}" y2="{Y(ymax)}" stroke="black"/>')
    out.append(f'<line x1="{M}" y1="{Y(target)}" x2="{W - M}" y2="{Y(target)}" stroke="red" stroke-dasharray="4"/>')
    out.append(f'<text x="{W - M + 4}" y="{Y(target) + 4}" fill="red">target {target}</text>')
    for frac in (0, 0.5, 1):
        out.append(f'<text x="{M - 8}" y="{Y(ymax * frac / 1.1) + 4}" text-anchor="end">{ymax * frac / 1.1:.0f}</text>')
        out.append(f'<text x="{X(xmax * frac)}" y="{Y(0) + 16}" text-anchor="middle">{int(xmax * frac)}</text>')
    pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{pts}" fill="none" stroke="steelblue" stroke-width="1.5"/>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out))
EOF

{
    cat "$WORK/machine.txt"
    echo "files: $FILES of 1-8 KiB, $CLIENTS sftp sessions at once, $BATCH puts a session"
    echo
    printf '| %-46s | %s |\n' "measure" "value"
    printf '|%s|%s|\n' "$(printf -- '-%.0s' $(seq 48))" "-------"
    printf '| %-46s | %s |\n' "ingest (all puts acknowledged), s" "$ingest_secs"
    printf '| %-46s | %s |\n' "put start to last object delivered, s" "$all_secs"
    printf '| %-46s | %s |\n' "RSS max of samples, MiB" "$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { printf "%.1f", m / 1024 }' "$CSV")"
    printf '| %-46s | %s |\n' "VmHWM (peak RSS) at the end, MiB" "$(awk -F, 'NR > 1 { m = $3 } END { printf "%.1f", m / 1024 }' "$CSV")"
    printf '| %-46s | %s |\n' "status latency, median / max of samples, ms" \
        "$(median $(awk -F, 'NR > 1 { print $4 }' "$CSV")) / $(awk -F, 'NR > 1 && $4 > m { m = $4 } END { print m }' "$CSV")"
    printf '| %-46s | %s |\n' "samples" "$(($(wc -l <"$CSV") - 1))"
    printf '| %-46s | %s |\n' "journal at the end, bytes (max while running)" \
        "$journal_bytes ($(awk -F, 'NR > 1 && $7 > m { m = $7 } END { print m }' "$CSV"))"
    printf '| %-46s | %s |\n' "restart to first status answer, s" "$restart_secs"
    printf '| %-46s | %s |\n' "RSS after restart, MiB" "$(div "$rss_after_restart" 1024 1)"
    printf '| %-46s | %s |\n' "delivered files still listed (retention)" "$listed"
    echo
    echo "samples: $OUT/scale-$stamp.csv, plot: $OUT/scale-$stamp.svg"
} | tee "$OUT/scale-$stamp.txt"
