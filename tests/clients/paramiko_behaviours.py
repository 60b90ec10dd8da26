#!/usr/bin/env python3
"""Request sequences of GUI SFTP clients (FileZilla, WinSCP, Cyberduck), sent with paramiko.

Driven by tests/client_behaviours.rs: one subcommand per behaviour. Every subcommand prints one
JSON object on stdout, with the status code and message of each request it sent, and exits 0;
it exits 1 (traceback on stderr) only when the session itself breaks (connection, protocol).
The test checks the JSON and the objects in S3.

Requests whose exact bytes matter (open flags, offsets, no CLOSE, extended requests) are sent
with `Raw`, which builds each packet field by field and reads its reply without paramiko's
error conversion (so that the SSH_FX_* code is reported); the rest uses paramiko's own API
(`open(.., 'a')`, `put`, `get`, `posix_rename`) as an application would.

    paramiko_behaviours.py --host H --port P --user U --key K SUBCOMMAND ARGS...
"""

import argparse
import errno
import json
import sys

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_HANDLE,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_REALPATH,
    CMD_RENAME,
    CMD_SETSTAT,
    CMD_FSETSTAT,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
)
from paramiko.sftp_attr import SFTPAttributes

# SSH_FXF_* (draft-ietf-secsh-filexfer-02, SFTP version 3).
FXF_READ = 0x01
FXF_WRITE = 0x02
FXF_APPEND = 0x04
FXF_CREAT = 0x08
FXF_TRUNC = 0x10

# What most clients send per WRITE (paramiko, WinSCP, FileZilla: 32 KiB).
CHUNK = 32768
# Seconds any single read from the server may take before the script gives up.
TIMEOUT = 20


def connect(args):
    key = paramiko.Ed25519Key.from_private_key_file(args.key)
    client = paramiko.SSHClient()
    # Loopback test server with a fresh host key.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        args.host,
        port=args.port,
        username=args.user,
        pkey=key,
        look_for_keys=False,
        allow_agent=False,
        timeout=TIMEOUT,
        banner_timeout=TIMEOUT,
        auth_timeout=TIMEOUT,
    )
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(TIMEOUT)
    return client, sftp


class Raw:
    """Sends one request at a time and returns its reply, decoded, as a dict."""

    def __init__(self, sftp):
        self.sftp = sftp

    def request(self, name, t, fields):
        s = self.sftp
        with s._lock:
            num = s.request_number
            s.request_number += 1
        msg = Message()
        msg.add_int(num)
        for kind, value in fields:
            if kind == "u32":
                msg.add_int(value)
            elif kind == "u64":
                msg.add_int64(value)
            elif kind == "str":
                msg.add_string(value)
            elif kind == "attrs":
                value._pack(msg)
            else:
                raise ValueError(kind)
        s._send_packet(t, msg)
        rt, data = s._read_packet()
        reply = Message(data)
        rid = reply.get_int()
        if rid != num:
            raise RuntimeError("reply to request %d while waiting for %d" % (rid, num))
        out = {"request": name}
        if rt == CMD_STATUS:
            out["status"] = reply.get_int()
            out["message"] = reply.get_text()
        elif rt == CMD_HANDLE:
            out["status"] = 0
            out["handle"] = reply.get_binary()
        elif rt == CMD_NAME:
            out["status"] = 0
            count = reply.get_int()
            names = []
            for _ in range(count):
                filename = reply.get_text()
                reply.get_text()  # longname
                SFTPAttributes._from_msg(reply)
                names.append(filename)
            out["names"] = names
        elif rt == CMD_ATTRS:
            out["status"] = 0
            attrs = SFTPAttributes._from_msg(reply)
            out["size"] = attrs.st_size
            out["mtime"] = attrs.st_mtime
            out["atime"] = attrs.st_atime
        elif rt == CMD_EXTENDED_REPLY:
            out["status"] = 0
            out["reply"] = reply
        else:
            raise RuntimeError("unexpected reply type %d to %s" % (rt, name))
        return out

    def open(self, path, pflags):
        return self.request(
            "OPEN", CMD_OPEN, [("str", path), ("u32", pflags), ("attrs", SFTPAttributes())]
        )

    def write(self, handle, offset, data):
        return self.request(
            "WRITE", CMD_WRITE, [("str", handle), ("u64", offset), ("str", data)]
        )

    def close(self, handle):
        return self.request("CLOSE", CMD_CLOSE, [("str", handle)])

    def stat(self, path):
        return self.request("STAT", CMD_STAT, [("str", path)])

    def realpath(self, path):
        return self.request("REALPATH", CMD_REALPATH, [("str", path)])

    def mkdir(self, path):
        return self.request("MKDIR", CMD_MKDIR, [("str", path), ("attrs", SFTPAttributes())])

    def rename(self, old, new):
        return self.request("RENAME", CMD_RENAME, [("str", old), ("str", new)])

    def posix_rename(self, old, new):
        # The very packet paramiko's SFTPClient.posix_rename sends.
        return self.request(
            "posix-rename@openssh.com",
            CMD_EXTENDED,
            [("str", "posix-rename@openssh.com"), ("str", old), ("str", new)],
        )

    def setstat(self, path, attrs):
        return self.request("SETSTAT", CMD_SETSTAT, [("str", path), ("attrs", attrs)])

    def fsetstat(self, handle, attrs):
        return self.request("FSETSTAT", CMD_FSETSTAT, [("str", handle), ("attrs", attrs)])

    def write_all(self, handle, offset, data):
        """WRITEs of CHUNK bytes at explicit offsets, each awaited; returns the failed ones."""
        failed = []
        for start in range(0, len(data), CHUNK):
            r = self.write(handle, offset + start, data[start : start + CHUNK])
            if r["status"] != 0:
                r["offset"] = offset + start
                failed.append(r)
                break
        return failed


def public(step):
    """A step as JSON: handles and extended replies are not printable."""
    return {k: v for k, v in step.items() if k not in ("handle", "reply")}


def times_attrs(atime, mtime, mode=None):
    attrs = SFTPAttributes()
    attrs.st_atime = atime
    attrs.st_mtime = mtime
    if mode is not None:
        attrs.st_mode = mode
    return attrs


def os_error(e):
    return {"errno": getattr(e, "errno", None), "error": str(e), "type": type(e).__name__}


def read_local(path, count=None):
    with open(path, "rb") as f:
        data = f.read()
    return data if count is None else data[:count]


def upload_raw(raw, path, data):
    """OPEN WRITE|CREAT|TRUNC, WRITEs, CLOSE; the steps."""
    steps = []
    opened = raw.open(path, FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    steps.append(public(opened))
    if opened["status"] != 0:
        return steps, False
    failed = raw.write_all(opened["handle"], 0, data)
    steps.extend(public(f) for f in failed)
    closed = raw.close(opened["handle"])
    steps.append(public(closed))
    return steps, not failed and closed["status"] == 0


# --- behaviours -----------------------------------------------------------------------------


def cmd_upload_partial(args, client, sftp):
    """The first COUNT bytes of LOCAL, then the connection is dropped without CLOSE."""
    raw = Raw(sftp)
    data = read_local(args.local, args.count)
    opened = raw.open(args.remote, FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    out = {"open": public(opened)}
    if opened["status"] == 0:
        out["write_errors"] = [public(f) for f in raw.write_all(opened["handle"], 0, data)]
        out["written"] = len(data)
    # No CLOSE: the transport goes away with the handle still open (a killed client, a
    # dropped Wi-Fi). No SFTPFile object exists, so nothing sends CLOSE behind our back.
    client.close()
    return out


def cmd_resume(args, client, sftp):
    """Resume an interrupted upload of LOCAL to REMOTE at the size the server reports.

    --style winscp: STAT, then OPEN with exactly SSH_FXF_WRITE|SSH_FXF_APPEND (no CREAT, no
    TRUNC), WRITEs at explicit offsets from the size, CLOSE.
    --style paramiko: stat(), open(REMOTE, 'ab') (WRITE|CREAT|APPEND; paramiko FSTATs the
    handle for its position), pipelined writes, close() (FileZilla's resume is the same
    sequence).
    """
    data = read_local(args.local)
    out = {"style": args.style}
    if args.style == "winscp":
        raw = Raw(sftp)
        stat = raw.stat(args.remote)
        out["stat"] = public(stat)
        if stat["status"] != 0:
            return out
        size = stat["size"]
        out["resumed_from"] = size
        opened = raw.open(args.remote, FXF_WRITE | FXF_APPEND)
        out["open"] = public(opened)
        if opened["status"] != 0:
            return out
        out["write_errors"] = [
            public(f) for f in raw.write_all(opened["handle"], size, data[size:])
        ]
        out["close"] = public(raw.close(opened["handle"]))
        return out
    try:
        size = sftp.stat(args.remote).st_size
        out["resumed_from"] = size
        f = sftp.open(args.remote, "ab")
        out["handle_position"] = f.tell()
        f.set_pipelined(True)
        f.write(data[size:])
        f.close()
        out["close"] = {"status": 0}
    except (IOError, OSError) as e:
        out["close"] = os_error(e)
    return out


def cmd_setstat(args, client, sftp):
    """Upload, FSETSTAT of the times before CLOSE, CLOSE, SETSTAT of the times after it."""
    raw = Raw(sftp)
    data = read_local(args.local)
    atime, mtime = args.mtime - 3600, args.mtime
    out = {}
    opened = raw.open(args.remote, FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    out["open"] = public(opened)
    if opened["status"] != 0:
        return out
    out["write_errors"] = [public(f) for f in raw.write_all(opened["handle"], 0, data)]
    # WinSCP ("preserve timestamp") sets the times on the handle before it closes it.
    out["fsetstat_times"] = public(raw.fsetstat(opened["handle"], times_attrs(atime, mtime)))
    out["close"] = public(raw.close(opened["handle"]))
    # FileZilla and WinSCP set them by name after CLOSE; WinSCP with "set permissions" sends
    # the permissions in the same SETSTAT.
    out["setstat_times"] = public(raw.setstat(args.remote, times_attrs(atime, mtime)))
    out["setstat_mode_times"] = public(
        raw.setstat(args.remote, times_attrs(atime, mtime, 0o100644))
    )
    try:
        sftp.utime(args.remote, (atime, mtime))
        out["paramiko_utime"] = {"status": 0}
    except (IOError, OSError) as e:
        out["paramiko_utime"] = os_error(e)
    out["stat"] = public(raw.stat(args.remote))
    return out


def cmd_realpath(args, client, sftp):
    """REALPATH as GUI clients send it, then requests that climb above the root."""
    raw = Raw(sftp)
    out = {"realpath": {}}
    for path in [".", "/", "..", "/a/..", "/..", "../..", "/./"]:
        out["realpath"][path] = public(raw.realpath(path))
    steps, ok = upload_raw(raw, "/inside.txt", b"inside\n")
    out["upload_inside"] = {"ok": ok, "steps": steps}
    out["open_above_root"] = public(raw.open("/../x", FXF_WRITE | FXF_CREAT | FXF_TRUNC))
    out["mkdir_above_root"] = public(raw.mkdir("/../d"))
    out["rename_above_root"] = public(raw.rename("/inside.txt", "/../inside.txt"))
    out["posix_rename_above_root"] = public(raw.posix_rename("/inside.txt", "../inside.txt"))
    try:
        with sftp.open("/../x", "w") as f:
            f.write(b"x")
        out["paramiko_open_above_root"] = {"status": 0}
    except (IOError, OSError) as e:
        r = os_error(e)
        r["permission_error"] = isinstance(e, PermissionError) and e.errno == errno.EACCES
        out["paramiko_open_above_root"] = r
    return out


STATVFS_FIELDS = [
    "bsize",
    "frsize",
    "blocks",
    "bfree",
    "bavail",
    "files",
    "ffree",
    "favail",
    "fsid",
    "flag",
    "namemax",
]


def cmd_statvfs(args, client, sftp):
    """statvfs@openssh.com for each PATH (what FileZilla and WinSCP show as free space)."""
    raw = Raw(sftp)
    results = {}
    for path in args.paths:
        r = raw.request(
            "statvfs@openssh.com",
            CMD_EXTENDED,
            [("str", "statvfs@openssh.com"), ("str", path)],
        )
        if r["status"] == 0:
            msg = r["reply"]
            r["statvfs"] = {name: msg.get_int64() for name in STATVFS_FIELDS}
        results[path] = public(r)
    return {"results": results}


def cmd_upload(args, client, sftp):
    """An upload the way an application writes a file: open 'wb', write, close."""
    data = read_local(args.local)
    try:
        with sftp.open(args.remote, "wb") as f:
            f.set_pipelined(True)
            f.write(data)
        return {"status": 0, "size": len(data)}
    except (IOError, OSError) as e:
        return os_error(e)


def cmd_temp_rename(args, client, sftp):
    """Upload to TARGET.filepart, then posix-rename it over TARGET (WinSCP's "transfer to
    temporary filename", Cyberduck's atomic upload); then a plain RENAME over TARGET."""
    raw = Raw(sftp)
    out = {}
    if args.first:
        steps, ok = upload_raw(raw, args.target, read_local(args.first))
        out["first"] = {"ok": ok, "steps": steps}
    temp = args.target + ".filepart"
    steps, ok = upload_raw(raw, temp, read_local(args.local))
    out["temp_upload"] = {"ok": ok, "steps": steps}
    out["posix_rename"] = public(raw.posix_rename(temp, args.target))
    out["stat_target"] = public(raw.stat(args.target))
    out["stat_temp"] = public(raw.stat(temp))
    if args.plain_source:
        source, local = args.plain_source
        steps, ok = upload_raw(raw, source, read_local(local))
        out["plain_source_upload"] = {"ok": ok, "steps": steps}
        out["plain_rename"] = public(raw.rename(source, args.target))
    return out


def cmd_put(args, client, sftp):
    """paramiko's put: open 'wb', pipelined 32 KiB writes, close, stat to confirm the size."""
    try:
        attrs = sftp.put(args.local, args.remote, confirm=True)
        return {"status": 0, "size": attrs.st_size}
    except (IOError, OSError) as e:
        return os_error(e)


def cmd_get(args, client, sftp):
    """paramiko's get: stat, open 'rb', prefetched (pipelined) reads, close."""
    try:
        sftp.get(args.remote, args.local)
        return {"status": 0}
    except (IOError, OSError) as e:
        return os_error(e)


def cmd_receipt(args, client, sftp):
    """What an upload script does to know its file is in S3: put, then poll for the receipt
    (stat until it exists), read it; then a look around the directory, and the refusals."""
    import time

    sftp.put(args.local, args.remote, confirm=True)
    receipt = "/.sftpgw/receipts" + args.remote + ".json"
    deadline = time.time() + args.wait
    polls = 0
    while True:
        polls += 1
        try:
            attrs = sftp.stat(receipt)
            break
        except IOError as e:
            if e.errno != errno.ENOENT or time.time() > deadline:
                return {"status": -1, "polls": polls, "error": str(e)}
            time.sleep(0.2)
    with sftp.open(receipt, "rb") as f:
        text = f.read().decode()
    with sftp.open("/.sftpgw/queue.txt", "rb") as f:
        queue = f.read().decode()
    out = {
        "status": 0,
        "polls": polls,
        "stat_size": attrs.st_size,
        "receipt": json.loads(text),
        "receipt_bytes": len(text.encode()),
        "top": sorted(sftp.listdir("/.sftpgw")),
        "receipts": sorted(sftp.listdir("/.sftpgw/receipts")),
        "root": sorted(sftp.listdir("/")),
        "queue": queue,
    }
    refusals = {}
    for name, attempt in [
        ("write", lambda: sftp.open(receipt, "wb").close()),
        ("create", lambda: sftp.open("/.sftpgw/receipts/new.json", "wb").close()),
        ("mkdir", lambda: sftp.mkdir("/.sftpgw")),
        ("remove", lambda: sftp.remove(receipt)),
        ("rename", lambda: sftp.rename(receipt, "/stolen.json")),
    ]:
        try:
            attempt()
            refusals[name] = {"errno": 0}
        except (IOError, OSError) as e:
            refusals[name] = os_error(e)
    out["refusals"] = refusals
    return out


def command(sub, name, run, *positionals):
    """Adds subcommand NAME, run by RUN, with POSITIONALS in order; returns its parser for
    more arguments."""
    s = sub.add_parser(name)
    for arg in positionals:
        s.add_argument(arg)
    s.set_defaults(run=run)
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--key", required=True)
    sub = p.add_subparsers(dest="command", required=True)

    command(sub, "upload-partial", cmd_upload_partial, "remote", "local").add_argument(
        "count", type=int
    )
    s = command(sub, "resume", cmd_resume, "remote", "local")
    s.add_argument("--style", choices=["winscp", "paramiko"], required=True)
    s = command(sub, "setstat", cmd_setstat, "remote", "local")
    s.add_argument("--mtime", type=int, default=1_600_000_000)
    command(sub, "realpath", cmd_realpath)
    command(sub, "statvfs", cmd_statvfs).add_argument("paths", nargs="+")
    command(sub, "upload", cmd_upload, "remote", "local")
    s = command(sub, "temp-rename", cmd_temp_rename, "target", "local")
    s.add_argument("--first", metavar="LOCAL", help="upload this to TARGET first")
    s.add_argument("--plain-source", nargs=2, metavar=("REMOTE", "LOCAL"))
    command(sub, "put", cmd_put, "local", "remote")
    command(sub, "get", cmd_get, "remote", "local")
    s = command(sub, "receipt", cmd_receipt, "local", "remote")
    s.add_argument("--wait", type=float, default=20.0, help="seconds to poll for the receipt")

    args = p.parse_args()
    client, sftp = connect(args)
    try:
        out = args.run(args, client, sftp)
    finally:
        client.close()
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
