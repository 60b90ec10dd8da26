#!/usr/bin/env bash
# Small files: COUNT files of 1-8 KiB put by OpenSSH `sftp -b` into sftpgw and into OpenSSH
# sshd + internal-sftp, same machine, same disk, runs alternating; one client, then CLIENTS
# clients at once (COUNT/CLIENTS files each). sftpgw's drain is paused (its S3 endpoint is a
# closed port), as in ingest.sh. A time is the whole of every `sftp` process (connect,
# authenticate, all puts, exit): what the person at the client waits for.
#
#   bench/small_files.sh     # RUNS=3 COUNT=10000 CLIENTS=8
#
# sftpgw fsyncs every file (and journals it) before answering CLOSE; OpenSSH fsyncs nothing.
# `put -f` (fsync@openssh.com) is shown too, for the cost of durability alone.
source "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-3}"
COUNT="${COUNT:-10000}"
CLIENTS="${CLIENTS:-8}"

build_sftpgw
machine_info
bench_client_key

# 64 distinct sources of 1-8 KiB, each put under many names.
make_small_sources "$WORK/src"

start_ingest_servers "$WORK/sshd-dst"

# batch SERVER RUN CLIENT FILES [put flags]: writes a batch file, prints its path.
batch() {
    local f="$WORK/batch.$1.$2.$3" dir i
    case "$1" in
        sftpgw) dir="/r$2c$3" ;;
        *) dir="$WORK/sshd-dst/$1-r$2c$3" ;;
    esac
    {
        echo "mkdir $dir"
        for i in $(seq 0 $(($4 - 1))); do
            echo "put ${5:-} $WORK/src/f$((i % 64)) $dir/f$i"
        done
    } >"$f"
    echo "$f"
}

# run SERVER RUN CLIENTS: prints seconds until CLIENTS sessions putting COUNT files in all end.
run() {
    local port user flags="" c batches=() files=$((COUNT / $3))
    case "$1" in
        sftpgw) port=$GW_PORT; user=bench ;;
        openssh) port=$SSHD_PORT; user=root ;;
        openssh-f) port=$SSHD_PORT; user=root; flags="-f" ;;
    esac
    for c in $(seq "$3"); do batches+=("$(batch "$1" "$2" "$c" "$files" "$flags")"); done
    sftp_parallel "$port" "$user" "${batches[@]}"
}

declare -A T
SERVERS=(sftpgw openssh openssh-f)
for clients in 1 "$CLIENTS"; do
    for r in $(seq "$RUNS"); do
        for s in "${SERVERS[@]}"; do
            settle
            l="$(loadavg)"
            t="$(run "$s" "$r-$clients" "$clients")"
            T[$s-$clients]="${T[$s-$clients]:-} $t"
            log "$s, $clients client(s), run $r: ${t}s ($(div "$t" "$COUNT" 5) s a file) load $l"
        done
        rm -rf "$WORK"/sshd-dst/*
    done
done
delivered="$("$SFTPGW" status --json --config "$WORK/gw/sftpgw.toml" | jq '.drain.files_delivered')"
[ "$delivered" = 0 ] || die "the drain was supposed to be paused but delivered $delivered files"

echo
echo "small files: $COUNT files of 1-8 KiB, cipher $CIPHER, $RUNS runs alternating; load at end $(loadavg)"
printf '%-44s %-26s %8s %10s\n' "case" "runs (s)" "median" "ms a file"
for clients in 1 "$CLIENTS"; do
    for s in "${SERVERS[@]}"; do
        m="$(median ${T[$s-$clients]})"
        printf '%-44s %-26s %8s %10s\n' "$s, $clients client(s)" "${T[$s-$clients]# }" "$m" \
            "$(awk -v m="$m" -v n="$COUNT" 'BEGIN { printf "%.3f", m * 1000 / n }')"
    done
done
echo
for clients in 1 "$CLIENTS"; do
    echo "$clients client(s): sftpgw time / OpenSSH time = $(div "$(median ${T[sftpgw-$clients]})" "$(median ${T[openssh-$clients]})")" \
        "(target ≤ $([ "$clients" = 1 ] && echo 1.6 || echo 1.0)); / OpenSSH put -f = $(div "$(median ${T[sftpgw-$clients]})" "$(median ${T[openssh-f-$clients]})")"
done
