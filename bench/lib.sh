# Shared helpers of the benchmark scripts in bench/. Sourced, not run.
#
# Everything listens on 127.0.0.1 only. Every process a script starts is registered with
# `track_pid` and ended by the EXIT trap, which also removes the scratch directory.

set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# Scratch space on the same disk as the repository (/work): spool, sshd target, S3 data.
BENCH_TMP_ROOT="${BENCH_TMP_ROOT:-$BENCH_DIR/.tmp}"
CIPHER="aes128-gcm@openssh.com"
MIB=$((1024 * 1024))

mkdir -p "$BENCH_TMP_ROOT"
WORK="$(mktemp -d "$BENCH_TMP_ROOT/run.XXXXXX")"
TRACKED_PIDS=()

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

track_pid() { TRACKED_PIDS+=("$1"); }

cleanup() {
    local pid
    for pid in "${TRACKED_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${TRACKED_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        # Give each process up to 10 s to stop, then SIGKILL it.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# elapsed START [END]: seconds between two `now` values, 3 decimals.
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.3f", b - a }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# div A B [DECIMALS]
div() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { printf "%.*f", d, a / b }'; }
mibps() { awk -v bytes="$1" -v s="$2" 'BEGIN { if (bytes == 0) print "-"; else printf "%.0f", bytes / 1048576 / s }'; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_tcp() { # wait_tcp PORT [SECONDS]
    local deadline=$((SECONDS + ${2:-30}))
    until (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "nothing listens on 127.0.0.1:$1"
        sleep 0.05
    done
}

machine_info() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
    echo "disk:    $(findmnt -no SOURCE,FSTYPE --target "$WORK" | tr -s ' ') ($(df -h --output=size,avail "$WORK" | tail -1 | tr -s ' ' | sed 's/^ //;s/ / total, /') free)"
    echo "date:    $(date -u +%Y-%m-%dT%H:%MZ); load at start: $(loadavg)"
}

# make_file PATH MIB: random content, so that nothing compresses or dedups it.
make_file() {
    [ -s "$1" ] || head -c $(($2 * MIB)) /dev/urandom >"$1"
}

client_key() { # client_key DIR: writes DIR/client_key(.pub) once
    [ -f "$1/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C bench -f "$1/client_key"
}

# bench_client_key: the benchmark's client key in $WORK; sets KEY (private key path) and PUB
# (the public key line, for authorized_keys).
bench_client_key() {
    client_key "$WORK"
    KEY="$WORK/client_key"
    PUB="$(cat "$WORK/client_key.pub")"
}

# make_small_sources DIR: 64 distinct local files DIR/f0..f63 of 1-8 KiB, which small-file
# benchmarks put under many names (cheap to make, nothing compresses them).
make_small_sources() {
    local i
    mkdir -p "$1"
    for i in $(seq 0 63); do
        head -c $((1024 + (i * 7919) % 7169)) /dev/urandom >"$1/f$i"
    done
}

# Before each timed run: write back dirty pages of the previous one, so no run pays for another.
settle() { sync; sleep 1; }

# sftp_batch PORT USER KEY BATCHFILE: OpenSSH sftp with the benchmark cipher, non-interactive.
sftp_batch() {
    sftp -q -b "$4" -i "$3" -P "$1" -c "$CIPHER" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes \
        -o BatchMode=yes -o LogLevel=ERROR "$2@127.0.0.1" >/dev/null
}

# sftp_parallel PORT USER BATCHFILE...: one `sftp_batch` session per batch file, all at once
# with $KEY; prints the seconds from the first start until the last ends; dies if any fails.
sftp_parallel() {
    local port="$1" user="$2" t0 pid batch pids=()
    shift 2
    t0=$(now)
    for batch in "$@"; do
        sftp_batch "$port" "$user" "$KEY" "$batch" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || die "a put to 127.0.0.1:$port failed"; done
    elapsed "$t0"
}

# ---- sftpgw -------------------------------------------------------------------------------

# setup_anchored_bench SIZE_MIB: the set-up of a benchmark that races sftpgw against the S3
# clients it is compared with (aws CLI in bench/.venv, rclone): the release binary, the tools,
# the machine and tool versions printed, the client key (KEY, PUB), a random $WORK/src.bin of
# SIZE_MIB, and `sftpgw demo` as the S3 server (start_demo_s3) with both clients pointed at it.
setup_anchored_bench() {
    build_sftpgw
    ensure_awscli
    ensure_rclone
    machine_info
    echo "tools:   $("$AWS" --version 2>&1 | cut -d' ' -f1-2), $(rclone version | head -1), $(ssh -V 2>&1 | cut -d, -f1)"
    bench_client_key
    make_file "$WORK/src.bin" "$1"
    start_demo_s3
    aws_env "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET"
    rclone_env "$S3_EP" "$DEMO_ACCESS" "$DEMO_SECRET"
}

# Builds the release binary and copies it into $WORK, so that another build in a shared
# target directory cannot swap it during the run.
build_sftpgw() {
    local target="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
    if [ -n "${SFTPGW_BIN:-}" ]; then
        cp "$SFTPGW_BIN" "$WORK/sftpgw"
    else
        log "cargo build --release"
        (cd "$REPO_DIR" && cargo build --release --locked -q) >&2
        cp "$target/release/sftpgw" "$WORK/sftpgw"
    fi
    SFTPGW="$WORK/sftpgw"
}

# sftpgw_config DIR PORT ENDPOINT ACCESS SECRET PUBKEY [PART_SIZE] [CONCURRENCY]
sftpgw_config() {
    mkdir -p "$1"
    cat >"$1/sftpgw.toml" <<EOF
[sftp]
listen = "127.0.0.1:$2"
host_key = "$1/host_key"
# Every client of a benchmark is one host (127.0.0.1), up to 64 sessions at once: the
# per-source limits meant for a hostile LAN (16 connecting, 32 logged in) would refuse them.
max_startups_per_source = 200
max_sessions_per_source = 64
[spool]
dir = "$1/spool"
[s3]
endpoint = "$3"
region = "us-east-1"
bucket = "uploads"
prefix = "bench/"
path_style = true
access_key_id = "$4"
secret_access_key = "$5"
part_size = "${7:-16MiB}"
concurrency = ${8:-4}
early_drain = ${EARLY_DRAIN:-true}
[control]
socket = "$1/control.sock"
[[users]]
name = "bench"
authorized_keys = ["$6"]
EOF
}

# start_sftpgw DIR PORT: runs `sftpgw run` on DIR/sftpgw.toml; sets SFTPGW_PID.
start_sftpgw() {
    SFTPGW_LOG="${SFTPGW_LOG_LEVEL:-warn}" "$SFTPGW" run --config "$1/sftpgw.toml" \
        >>"$1/daemon.log" 2>&1 &
    SFTPGW_PID=$!
    track_pid "$SFTPGW_PID"
    wait_tcp "$2"
    until "$SFTPGW" status --config "$1/sftpgw.toml" >/dev/null 2>&1; do
        kill -0 "$SFTPGW_PID" 2>/dev/null || die "sftpgw exited: $(tail -5 "$1/daemon.log")"
        sleep 0.05
    done
}

stop_pid() { # SIGTERM and wait
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_demo DIR PORT S3PORT: `sftpgw demo`; sets DEMO_PID. Bucket uploads, keys below.
DEMO_ACCESS="sftpgw-demo"
DEMO_SECRET="sftpgw-demo-secret"
start_demo() {
    SFTPGW_LOG="${SFTPGW_LOG_LEVEL:-warn}" "$SFTPGW" demo --dir "$1" --port "$2" --s3-port "$3" \
        >>"$1.log" 2>&1 &
    DEMO_PID=$!
    track_pid "$DEMO_PID"
    wait_tcp "$3"
    wait_tcp "$2"
    until "$SFTPGW" status --config "$1/sftpgw.toml" >/dev/null 2>&1; do
        kill -0 "$DEMO_PID" 2>/dev/null || die "sftpgw demo exited: $(tail -5 "$1.log")"
        sleep 0.05
    done
}

# start_demo_s3: `sftpgw demo` in $WORK/demo as the S3 server of a benchmark; sets DEMO_PORT,
# S3_PORT, S3_EP (its endpoint URL) and OBJECTS (the directory that holds the bucket's objects).
start_demo_s3() {
    DEMO_PORT="$(free_port)"
    S3_PORT="$(free_port)"
    start_demo "$WORK/demo" "$DEMO_PORT" "$S3_PORT"
    S3_EP="http://127.0.0.1:$S3_PORT"
    OBJECTS="$WORK/demo/s3/uploads"
}

# start_ingest_servers DSTDIR: the two servers of an ingest benchmark side by side: sftpgw on
# GW_PORT with a closed S3 endpoint (127.0.0.1:1, so the drain never competes with the puts),
# and OpenSSH's sshd on SSHD_PORT writing below DSTDIR. Needs PUB (bench_client_key).
start_ingest_servers() {
    if (: </dev/tcp/127.0.0.1/1) 2>/dev/null; then die "something listens on 127.0.0.1:1"; fi
    GW_PORT="$(free_port)"
    sftpgw_config "$WORK/gw" "$GW_PORT" "http://127.0.0.1:1" bench-key bench-secret "$PUB"
    start_sftpgw "$WORK/gw" "$GW_PORT"
    SSHD_PORT="$(free_port)"
    start_sshd "$WORK/sshd" "$SSHD_PORT" "$PUB"
    mkdir -p "$1"
}

# drain_round TOOL RUN LABEL: runs `drain_TOOL RUN` (which sets RES_W and RES_C) and appends
# its wall time, its CPU time and the S3 server's CPU time during it to the caller's
# associative arrays WALL, CPU and SRV.
drain_round() {
    local l s0 s1
    l="$(loadavg)"
    s0="$(cpu_seconds "$DEMO_PID")"
    "drain_$1" "$2"
    s1="$(cpu_seconds "$DEMO_PID")"
    WALL[$1]="${WALL[$1]:-} $RES_W"
    CPU[$1]="${CPU[$1]:-} $RES_C"
    SRV[$1]="${SRV[$1]:-} $(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }')"
    log "$3 $1 run $2: ${RES_W}s, ${RES_C} CPU-s, load before $l"
}

# file_state CONFIG PATH: the state of one file in `sftpgw status --json --all`.
file_state() {
    "$SFTPGW" status --json --all --config "$1" 2>/dev/null |
        jq -r --arg p "$2" '[.files[] | select(.path == $p) | .state] | last // "absent"'
}

# wait_delivered CONFIG PATH [SECONDS]: polls every 0.1 s.
wait_delivered() {
    local deadline=$((SECONDS + ${3:-600})) state
    while :; do
        state="$(file_state "$1" "$2")"
        case "$state" in
            delivered) return 0 ;;
            failed) die "$2 failed: $("$SFTPGW" status --config "$1")" ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || die "$2 not delivered in time (state $state)"
        sleep 0.1
    done
}

# cpu_seconds PID: user + system CPU time of a process so far (from /proc/PID/stat).
cpu_seconds() {
    # Fields 14 and 15 (utime, stime) in clock ticks; the command name may hold spaces.
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# ---- OpenSSH sshd -------------------------------------------------------------------------

ensure_sshd() {
    if [ ! -x /usr/sbin/sshd ]; then
        log "installing openssh-server"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >&2
    fi
    mkdir -p /run/sshd # privilege separation directory
}

# start_sshd DIR PORT PUBKEY: sshd -D with a private config, internal-sftp, root login by key.
start_sshd() {
    ensure_sshd
    mkdir -p "$1"
    ssh-keygen -q -t ed25519 -N '' -f "$1/host_key"
    echo "$3" >"$1/authorized_keys"
    cat >"$1/sshd_config" <<EOF
Port $2
ListenAddress 127.0.0.1
HostKey $1/host_key
PidFile none
UsePAM no
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $1/authorized_keys
Subsystem sftp internal-sftp
Ciphers $CIPHER
MaxStartups 200
MaxSessions 200
EOF
    /usr/sbin/sshd -D -e -f "$1/sshd_config" >>"$1/sshd.log" 2>&1 &
    SSHD_PID=$!
    track_pid "$SSHD_PID"
    wait_tcp "$2"
}

# ---- S3 clients ---------------------------------------------------------------------------

# Sets AWS to an aws CLI in bench/.venv (created on first use).
ensure_awscli() {
    local venv="$BENCH_DIR/.venv"
    if [ ! -x "$venv/bin/aws" ]; then
        log "creating $venv with awscli"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q awscli >&2
    fi
    AWS="$venv/bin/aws"
}

# aws_env ENDPOINT ACCESS SECRET: environment for `aws s3 cp` (8 MiB parts, 10 in flight).
aws_env() {
    cat >"$WORK/aws_config" <<EOF
[default]
region = us-east-1
s3 =
    multipart_chunksize = 8MB
    multipart_threshold = 8MB
    max_concurrent_requests = 10
    addressing_style = path
EOF
    export AWS_CONFIG_FILE="$WORK/aws_config" AWS_SHARED_CREDENTIALS_FILE=/dev/null
    export AWS_ACCESS_KEY_ID="$2" AWS_SECRET_ACCESS_KEY="$3" AWS_DEFAULT_REGION=us-east-1
    AWS_ENDPOINT="$1"
}

ensure_rclone() {
    if ! command -v rclone >/dev/null; then
        log "installing rclone"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >&2
    fi
}

# rclone_env ENDPOINT ACCESS SECRET: remote "bs3:" without a config file.
rclone_env() {
    export RCLONE_CONFIG=/dev/null
    # rclone 1.60 refuses to start with AWS_CA_BUNDLE set; the endpoint is plain http anyway.
    unset AWS_CA_BUNDLE
    export RCLONE_CONFIG_BS3_TYPE=s3 RCLONE_CONFIG_BS3_PROVIDER=Other
    export RCLONE_CONFIG_BS3_ENDPOINT="$1" RCLONE_CONFIG_BS3_REGION=us-east-1
    export RCLONE_CONFIG_BS3_ACCESS_KEY_ID="$2" RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY="$3"
    export RCLONE_CONFIG_BS3_FORCE_PATH_STYLE=true
}

# timed CMD...: runs CMD under /usr/bin/time; prints "wall user sys".
timed() {
    local out="$WORK/time.$$"
    /usr/bin/time -o "$out" -f '%e %U %S' "$@" >/dev/null 2>"$WORK/timed.err" ||
        die "$* failed: $(tail -5 "$WORK/timed.err")"
    tail -1 "$out"
}
