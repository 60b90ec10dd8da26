#!/usr/bin/env bash
# ssh-audit (from PyPI, in a virtualenv of its own) against `sftpgw demo` with the default
# algorithm profile ("modern"). Issue 15's bar: no failure, and no warning but the notes about
# post-quantum key exchange. Prints the report without colours and exits 1 otherwise.
#
#   bench/ssh_audit.sh
source "$(dirname "$0")/lib.sh"

build_sftpgw
venv="$BENCH_TMP_ROOT/ssh-audit-venv"
[ -x "$venv/bin/ssh-audit" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q ssh-audit; }
PORT="$(free_port)"
S3_PORT="$(free_port)"
start_demo "$WORK/demo" "$PORT" "$S3_PORT"
"$venv/bin/ssh-audit" --no-colors -p "$PORT" 127.0.0.1 >"$WORK/report.txt" 2>&1 || true
cat "$WORK/report.txt"
fails="$(grep -c -- '\[fail\]' "$WORK/report.txt" || true)"
warns="$(grep -- '\[warn\]' "$WORK/report.txt" | grep -vc 'post-quantum' || true)"
echo
version="$("$venv/bin/pip" show ssh-audit 2>/dev/null | awk '/^Version:/ { print $2 }')"
echo "ssh-audit $version: $fails failure(s), $warns warning(s) other than post-quantum notes"
[ "$fails" = 0 ] && [ "$warns" = 0 ]
