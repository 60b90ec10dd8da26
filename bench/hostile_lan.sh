#!/usr/bin/env bash
# A hostile LAN (issue 15): while one host holds IDLE idle TCP connections to the SSH port
# (reopening each one the box closes) and another guesses passwords with OpenSSH's ssh until
# it is banned and then keeps trying RATE times a second, a third logs in every second (time
# to a finished `sftp ls`) and puts SIZE_MIB. The same put and logins first run without the
# attack, for the baseline. The attackers run on the box's own two cores here; on a LAN they
# are other machines, so they are kept cheap (no key exchange after the ban).
#
#   bench/hostile_lan.sh        # IDLE=1000 RATE=200 SIZE_MIB=512 LOGINS=10
#
# Three sources need three addresses: the script runs itself inside a network namespace of
# its own (`unshare --net`, only `lo`), where 127.0.0.2 (idle flood), 127.0.0.3 (passwords)
# and 127.0.0.4 (the site's user) are its loopback's; nothing is reachable from outside.
# The gateway runs with the default limits and penalties of `[sftp]`.
# Targets: the user's login within 2 s at every sample; the put at ≥ 90 % of its rate.
if [ -z "${HOSTILE_LAN_NETNS:-}" ]; then
    exec unshare --net -- env HOSTILE_LAN_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"

IDLE="${IDLE:-1000}"
RATE="${RATE:-200}"
SIZE_MIB="${SIZE_MIB:-512}"
LOGINS="${LOGINS:-10}"
BAD_IDLE=127.0.0.2
BAD_PASSWORD=127.0.0.3
USER_ADDR=127.0.0.4

build_sftpgw
machine_info
bench_client_key
make_file "$WORK/src.bin" "$SIZE_MIB"

PORT="$(free_port)"
sftpgw_config "$WORK/gw" "$PORT" "http://127.0.0.1:1" bench-key bench-secret "$PUB"
# The default limits (lib.sh raises the per-source ones for one-host benchmarks), on [::],
# and a password for the attack to guess.
HASH="$(printf 'the right one\n' | "$SFTPGW" user passwd)"
sed -i -e '/^max_startups_per_source/d' -e '/^max_sessions_per_source/d' \
    -e "s/^listen = .*/listen = \"0.0.0.0:$PORT\"/" "$WORK/gw/sftpgw.toml"
printf 'password_hash = "%s"\n' "$HASH" >>"$WORK/gw/sftpgw.toml"
start_sftpgw "$WORK/gw" "$PORT"

ssh_opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o ConnectTimeout=10 -P "$PORT")

# login_secs: seconds from start to the end of an `sftp ls` by the site's user.
login_secs() {
    local t0
    t0=$(now)
    echo ls | sftp -q -b - -i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o BindAddress="$USER_ADDR" "${ssh_opts[@]}" "bench@127.0.0.1" >/dev/null 2>&1 || {
        echo fail
        return
    }
    elapsed "$t0"
}

# put_secs NAME: seconds for the site's user's put of src.bin.
put_secs() {
    local t0
    t0=$(now)
    echo "put $WORK/src.bin /$1" | sftp -q -b - -c "$CIPHER" -i "$KEY" -o IdentitiesOnly=yes \
        -o BatchMode=yes -o BindAddress="$USER_ADDR" "${ssh_opts[@]}" "bench@127.0.0.1" \
        >/dev/null || die "the site's user's put failed"
    elapsed "$t0"
}

# measure LABEL: a put with logins sampled every second during it and after, to LOGINS.
measure() {
    local put_pid samples=() s i
    put_secs "$1.bin" >"$WORK/put.$1" &
    put_pid=$!
    for i in $(seq "$LOGINS"); do
        s="$(login_secs)"
        samples+=("$s")
        sleep 1
    done
    wait "$put_pid"
    PUT[$1]="$(cat "$WORK/put.$1")"
    LOGIN[$1]="${samples[*]}"
    log "$1: put ${PUT[$1]} s; logins: ${LOGIN[$1]}"
}

declare -A PUT LOGIN
settle
measure baseline

# The attack.
cat >"$WORK/idle.py" <<'EOF'
import socket, sys, time, selectors
src, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
opened = [0]
def connect():
    s = socket.socket()
    s.bind((src, 0))
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    sel.register(s, selectors.EVENT_READ)
    opened[0] += 1
for _ in range(count):
    connect()
while True:
    # Whatever the box closes (or answers) is dropped and opened again: COUNT stay open.
    for key, _ in sel.select(timeout=1):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(s)
            s.close()
            time.sleep(0.01)
            connect()
    with open(sys.argv[4], "w") as f:
        f.write(str(opened[0]))
EOF
python3 "$WORK/idle.py" "$BAD_IDLE" "$PORT" "$IDLE" "$WORK/idle.count" &
track_pid $!
printf '#!/bin/sh\necho wrong\n' >"$WORK/askpass"
chmod +x "$WORK/askpass"
# Wrong passwords with OpenSSH's ssh until the box stops answering that host...
GUESSES=0
while [ "$GUESSES" -lt 50 ]; do
    out="$(SSH_ASKPASS="$WORK/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=: setsid ssh \
        -o PreferredAuthentications=password -o PubkeyAuthentication=no \
        -o NumberOfPasswordPrompts=1 -o BindAddress="$BAD_PASSWORD" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o ConnectTimeout=5 -p "$PORT" bench@127.0.0.1 true </dev/null 2>&1 >/dev/null || true)"
    case "$out" in
        *"Permission denied"*) GUESSES=$((GUESSES + 1)) ;;
        *) break ;;
    esac
done
log "$GUESSES wrong passwords checked before the box stopped answering $BAD_PASSWORD: ${out:-}"
# ... then it keeps trying RATE times a second: a connection and an SSH version line each
# (what the box sees of a guess before any password; an attacker elsewhere on the LAN pays
# the rest on its own CPU, which here would be the box's).
cat >"$WORK/guess.py" <<'EOF'
import socket, sys, time
src, port, rate, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n, t0 = 0, time.monotonic()
while True:
    try:
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(1)
        s.connect(("127.0.0.1", port))
        s.sendall(b"SSH-2.0-guess\r\n")
        s.recv(256)
        s.close()
    except OSError:
        pass
    n += 1
    if n % 50 == 0:
        with open(out, "w") as f:
            f.write(str(n))
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
EOF
python3 "$WORK/guess.py" "$BAD_PASSWORD" "$PORT" "$RATE" "$WORK/attempts" &
track_pid $!
sleep 5
ATTACK_T0=$(now)
A0=$(cat "$WORK/attempts" 2>/dev/null || echo 0)
measure attack
ATTACK_SECS=$(elapsed "$ATTACK_T0")
A1=$(cat "$WORK/attempts" 2>/dev/null || echo 0)
status_json="$("$SFTPGW" status --json --config "$WORK/gw/sftpgw.toml")"
bans="$("$SFTPGW" bans list --config "$WORK/gw/sftpgw.toml")"

max_of() { printf '%s\n' "$@" | awk '$1 == "fail" { f = 1 } $1 > m { m = $1 } END { if (f) print "fail"; else print m }'; }
echo
echo "hostile LAN: $IDLE idle connections held from $BAD_IDLE, password guesses then $RATE"
echo "connections a second from $BAD_PASSWORD, the site's user at $USER_ADDR; load at end $(loadavg)"
printf '%-10s %10s %10s  %s\n' case "put (s)" "MiB/s" "logins (s)"
for c in baseline attack; do
    printf '%-10s %10s %10s  %s\n' "$c" "${PUT[$c]}" "$(mibps $((SIZE_MIB * MIB)) "${PUT[$c]}")" "${LOGIN[$c]}"
done
echo
echo "wrong passwords checked before the ban: $GUESSES; then connection attempts from that host: $((A1 - A0)) in ${ATTACK_SECS} s ($(div $((A1 - A0)) "$ATTACK_SECS" 1)/s)"
echo "idle connections opened by the flood in all: $(cat "$WORK/idle.count" 2>/dev/null || echo '?')"
echo "box: $(jq -c '.lan' <<<"$status_json")"
echo "bans: $bans"
echo "put rate under attack / baseline: $(div "${PUT[baseline]}" "${PUT[attack]}") (target ≥ 0.90)"
echo "slowest login under attack: $(max_of ${LOGIN[attack]}) s (target ≤ 2 s)"
