#!/usr/bin/env bash
# Ingest: OpenSSH `sftp put` (aes128-gcm) into sftpgw vs into OpenSSH sshd + internal-sftp,
# same machine, same disk, drain paused (sftpgw's S3 endpoint is a closed port on 127.0.0.1,
# so the drain only retries). Single 1 GiB put and 16 parallel 64 MiB puts, runs alternating
# between the servers, medians reported.
#
#   bench/ingest.sh            # RUNS=3 SIZE_MIB=1024 PAR=16 PAR_MIB=64 are the defaults
#
# Also reported, not a target: OpenSSH with `put -f` (fsync@openssh.com after the data), the
# durability sftpgw gives every CLOSE.
source "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-3}"
SIZE_MIB="${SIZE_MIB:-1024}"
PAR="${PAR:-16}"
PAR_MIB="${PAR_MIB:-64}"

build_sftpgw
machine_info

bench_client_key
make_file "$WORK/src.bin" "$SIZE_MIB"
make_file "$WORK/src-par.bin" "$PAR_MIB"

start_ingest_servers "$WORK/sshd-dst"

# one_put SERVER RUN: prints seconds of one `put` of src.bin.
one_put() {
    local batch="$WORK/batch.$1.$2" t0
    case "$1" in
        sftpgw) echo "put $WORK/src.bin /single-$2.bin" >"$batch"; port=$GW_PORT; user=bench ;;
        openssh) echo "put $WORK/src.bin $WORK/sshd-dst/single-$2.bin" >"$batch"; port=$SSHD_PORT; user=root ;;
        openssh-f) echo "put -f $WORK/src.bin $WORK/sshd-dst/single-f-$2.bin" >"$batch"; port=$SSHD_PORT; user=root ;;
        ls-sftpgw) echo "ls /" >"$batch"; port=$GW_PORT; user=bench ;;
        ls-openssh) echo "ls /" >"$batch"; port=$SSHD_PORT; user=root ;;
    esac
    t0=$(now)
    sftp_batch "$port" "$user" "$KEY" "$batch"
    elapsed "$t0"
}

# par_put SERVER RUN: prints seconds until PAR parallel puts of src-par.bin all finished.
par_put() {
    local i port user dst batches=()
    for i in $(seq "$PAR"); do
        case "$1" in
            sftpgw) dst="/par-$2-$i.bin"; port=$GW_PORT; user=bench ;;
            openssh) dst="$WORK/sshd-dst/par-$2-$i.bin"; port=$SSHD_PORT; user=root ;;
        esac
        echo "put $WORK/src-par.bin $dst" >"$WORK/pbatch.$1.$2.$i"
        batches+=("$WORK/pbatch.$1.$2.$i")
    done
    sftp_parallel "$port" "$user" "${batches[@]}"
}


declare -A T
SERVERS=(sftpgw openssh openssh-f)
settle
one_put sftpgw 0 >/dev/null # warm-up (page cache of the source, first-connection costs)
one_put openssh 0 >/dev/null
for run in $(seq "$RUNS"); do
    for s in "${SERVERS[@]}"; do
        settle
        l="$(loadavg)"
        t="$(one_put "$s" "$run")"
        T[$s]="${T[$s]:-} $t"
        log "single $s run $run: ${t}s ($(mibps $((SIZE_MIB * MIB)) "$t") MiB/s) load $l"
    done
    rm -f "$WORK"/sshd-dst/*
done
# What a session costs without data: connect, authenticate, start SFTP, `ls`, exit.
for run in $(seq "$RUNS"); do
    for s in ls-sftpgw ls-openssh; do
        T[$s]="${T[$s]:-} $(one_put "$s" "$run")"
    done
done
for run in $(seq "$RUNS"); do
    for s in sftpgw openssh; do
        settle
        l="$(loadavg)"
        t="$(par_put "$s" "$run")"
        T[par-$s]="${T[par-$s]:-} $t"
        log "parallel $s run $run: ${t}s ($(mibps $((PAR * PAR_MIB * MIB)) "$t") MiB/s) load $l"
    done
    rm -f "$WORK"/sshd-dst/*
done

# The drain must not have delivered anything: the endpoint is closed.
delivered="$("$SFTPGW" status --json --all --config "$WORK/gw/sftpgw.toml" | jq '.drain.files_delivered')"
[ "$delivered" = 0 ] || die "the drain was supposed to be paused but delivered $delivered files"

echo
echo "ingest: 1 x ${SIZE_MIB} MiB put and ${PAR} x ${PAR_MIB} MiB parallel puts, cipher $CIPHER, ${RUNS} runs alternating"
echo "load at end: $(loadavg)"
printf '%-40s %-28s %8s %9s\n' "case" "runs (s)" "median" "MiB/s"
row() { # row LABEL KEY BYTES
    local m
    m="$(median ${T[$2]})"
    printf '%-40s %-28s %8s %9s\n' "$1" "${T[$2]# }" "$m" "$(mibps "$3" "$m")"
}
row "sftpgw put" sftpgw $((SIZE_MIB * MIB))
row "OpenSSH internal-sftp put" openssh $((SIZE_MIB * MIB))
row "OpenSSH internal-sftp put -f (fsync)" openssh-f $((SIZE_MIB * MIB))
row "sftpgw session without data (ls)" ls-sftpgw 0
row "OpenSSH session without data (ls)" ls-openssh 0
row "sftpgw ${PAR} parallel puts" par-sftpgw $((PAR * PAR_MIB * MIB))
row "OpenSSH ${PAR} parallel puts" par-openssh $((PAR * PAR_MIB * MIB))
echo
echo "single-stream speed ratio sftpgw/OpenSSH (median OpenSSH time / median sftpgw time): $(div "$(median ${T[openssh]})" "$(median ${T[sftpgw]})")"
echo "single-stream speed ratio sftpgw/OpenSSH put -f: $(div "$(median ${T[openssh-f]})" "$(median ${T[sftpgw]})")"
echo "parallel aggregate ratio sftpgw/OpenSSH: $(div "$(median ${T[par-openssh]})" "$(median ${T[par-sftpgw]})")"
