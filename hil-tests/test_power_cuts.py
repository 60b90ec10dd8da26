"""Power cuts in a loop: the box loses power HIL_POWER_CUTS times (default 20) at random
moments while files arrive over SFTP and while they drain to S3. Each cycle boots the box (if
the last cut left it off), uploads 3 to 5 files of random sizes (bytes to 2.5 parts, some right
at a part boundary) to paths picked from ten, so that paths are written again with other
bytes, in two parallel sessions (one `sftp` per file: its exit status is that file's
acknowledgement), with a random WAN rate (the proxy) and sometimes a slow client (`sftp -l`),
and cuts the power: in the middle of one file's transfer, at a random moment of the drain after
every CLOSE was answered, or right behind the first answer. After the last boot (WAN at full
speed):

- no acknowledged file is lost: the object of every path is, byte for byte (SHA-256), the
  newest acknowledged upload of it, or one sent after it whose CLOSE was sealed although its
  answer went down with the power;
- no version with other bytes: every version S3 holds is the bytes of one upload of its path
  (never torn or mixed), in upload order (versions with the same bytes twice are counted: a
  PutObject done but not yet journalled when the power went is sent again);
- no multipart upload left open but those of files left partial (their early upload stays open
  until the partial TTL, docs/SEMANTICS.md "Early drain"): keys whose newest upload was cut
  off, one upload each, every part the bytes of a cut-off upload after the newest acknowledged
  one;
- the box settles: nothing receiving, sealed, uploading or failed, and HEALTH OK (nothing
  quarantined by the recovery at boot).

Every random choice comes from one seed, printed first; HIL_POWER_CUT_SEED=<seed> replays the
plan (the box's timing still varies). For the loop the box gets 5 MiB parts
(HIL_POWER_CUT_PART_SIZE_MIB; the shipped value is 16) through fw_cfg, so that files of a few
MiB span parts and drain early while they arrive; the suite's configuration is back for the
next power-on.

The box's log is streamed to the serial console (`logread -F` from the root shell, every
boot), so that it survives the cuts: .work/power-cuts-console.log has it, with the test's notes
(cycle, uploads, cut); .work/power-cuts.json has every upload and its outcome."""

import faulthandler
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pexpect
import pytest

from appliance import sftp_argv, status_line
from conftest import TIMES, WORK

KIB = 1 << 10
MIB = 1 << 20
CUTS = int(os.environ.get("HIL_POWER_CUTS", "20"))
SEED_ENV = "HIL_POWER_CUT_SEED"
PART_SIZE_MIB = int(os.environ.get("HIL_POWER_CUT_PART_SIZE_MIB", "5"))
# The WAN of each cycle, drawn from these (bytes per second): slow, so that a cycle's
# 10-15 MiB drain for several seconds after the last CLOSE, or fast, so that early parts of a
# file still arriving are done when the power goes (and the file is left partial with them).
WAN_RATES = (2 * MIB, 4 * MIB, 8 * MIB, 32 * MIB)
# Paths the uploads pick from: each is written again about every other cycle.
PATH_COUNT = 10
FILES_PER_CYCLE = (3, 5)
# Parallel SFTP sessions per cycle; each uploads its files one after the other, one `sftp`
# process per file, so that each file's exit status is its own acknowledgement.
SESSIONS = 2
# The SFTP client's own bandwidth limit of a session (`sftp -l`, Kbit/s; None: as fast as
# the box takes it), drawn per session and cycle: a slow session keeps a file of a few parts
# arriving for seconds, long enough for its early parts to drain before the cut.
CLIENT_LIMITS_KBIT = (None, None, 16000, 40000)
# Where a cycle's cut falls (weights): at a random moment of one larger file's transfer (as
# far as the learnt estimates know), at a random moment of the drain once every upload was
# answered, or right behind the first answer (CLOSE acknowledged, its drain about to start).
CUT_MODES = {"sftp": 5, "drain": 4, "ack": 1}
CONFIG = "/data/sftpgw/sftpgw.toml"
STATUS = f"sftpgw status --config {CONFIG}"
QUARANTINE = f"sftpgw quarantine --config {CONFIG}"
BOOT_TIMEOUT_SECONDS = 120
SFTP_TIMEOUT_SECONDS = 120
INGEST_WAIT_MAX_SECONDS = 120
DELIVERY_TIMEOUT_SECONDS = 300
SETTLE_TIMEOUT_SECONDS = 120
# The start-up sweep of uploads the box created and did not record runs right after boot.
SWEEP_SECONDS = 30
CONSOLE_LOG = WORK / "power-cuts-console.log"
# The box's log on its console: the boot's lines first (-F), then as they come. Without the
# kernel's boot chatter (a few hundred lines a boot would hold up the emulated UART for
# seconds, and the lines that matter just before a cut with it), but with what it says about
# the file system and the drive. In a subshell: not a job of the login shell, whose job
# notices would land between ShellDriver's markers.
LOG_STREAM = (
    "(logread -F </dev/null | awk '!/ kernel: / || /EXT4|ext4|nvme|I\\/O error|Oops|BUG/' &)"
)
REPORT = WORK / "power-cuts.json"
FILES_RE = re.compile(
    r"receiving (\d+)\s+partial (\d+)\s+sealed (\d+)\s+uploading (\d+)\s+failed (\d+)\s+delivered (\d+)"
)


@dataclass
class Attempt:
    """One `put` of one file: what was sent and what the client saw."""

    idx: int
    cycle: int
    path: str
    key: str
    size: int
    sha256: str
    # MD5 of every full part (the ETag S3 gives a part), to tell whose bytes an open upload has.
    part_md5: list = field(default_factory=list)
    session: int = 0
    started: float | None = None
    ended: float | None = None
    rc: int | None = None
    error: str = ""
    # sftp got as far as its `put` (the session was up): the file was being written.
    transferring: bool = False
    limit_kbit: int | None = None

    @property
    def acked(self) -> bool:
        return self.rc == 0

    @property
    def sent(self) -> bool:
        return self.started is not None


class ConsoleLog:
    """Keeps what the serial console prints (the box's log, streamed) in a file, with the
    test's own notes, and samples the proxy's upstream byte count (is a drain moving?)."""

    def __init__(self, box, path: Path, proxy):
        self.box = box
        self.proxy = proxy
        self.t0 = time.monotonic()
        self.samples: deque = deque(maxlen=400)
        self.f = open(path, "wb")

    def note(self, text: str):
        self.f.write(f"\n=== [{time.monotonic() - self.t0:8.2f}s] {text}\n".encode())
        self.f.flush()

    def take_expect_buffer(self):
        console = self.box.console
        buf = getattr(console, "_expect", None) and console._expect.buffer
        if buf:
            self.f.write(buf)
            console._expect.buffer = b""

    def pump(self, until: float):
        """Reads the console until `until` (host monotonic time)."""
        while True:
            now = time.monotonic()
            if self.proxy is not None:
                self.samples.append((now, self.proxy.upstream_bytes))
            left = until - now
            if left <= 0:
                return
            if not self.box.powered:
                time.sleep(min(0.1, left))
                continue
            try:
                self.f.write(self.box.console.read(size=4096, timeout=min(0.1, left)))
            except pexpect.TIMEOUT:
                pass

    def pump_until(self, cond, deadline: float) -> bool:
        while not cond():
            if time.monotonic() >= deadline:
                return False
            self.pump(time.monotonic() + 0.1)
        return True

    def upstream_bytes_in_last(self, seconds: float) -> int | None:
        if self.proxy is None or not self.samples:
            return None
        now, last = self.samples[-1]
        first = last
        for t, b in reversed(self.samples):
            if now - t > seconds:
                break
            first = b
        return last - first

    def close(self):
        self.f.close()


class Estimates:
    """What one SFTP session achieves, learnt from the acknowledged uploads: the time of a
    small file (SSH handshake and all), and the rate of a large one."""

    def __init__(self):
        self.overhead = 0.8
        self.rate = 5.0 * MIB

    def learn(self, a: Attempt):
        d = a.ended - a.started
        if a.size < 256 * KIB:
            self.overhead = 0.7 * self.overhead + 0.3 * d
        elif a.limit_kbit is None:
            self.rate = 0.7 * self.rate + 0.3 * a.size / max(0.2, d - self.overhead)

    def transfer_seconds(self, a: Attempt) -> float:
        rate = self.rate if a.limit_kbit is None else min(self.rate, a.limit_kbit * 1000 / 8)
        return a.size / rate


def draw_size(rng: random.Random, part: int) -> int:
    """Mostly small files, some of a few parts, some right at the part boundary. A quarter are
    at most 32 KiB: sealed inline (their bytes in the journal, the spool copy unsynced)."""
    r = rng.random()
    if r < 0.25:
        return rng.randint(1, 32 * KIB)
    if r < 0.45:
        return rng.randint(32 * KIB + 1, 256 * KIB)
    if r < 0.65:
        return rng.randint(256 * KIB, part - 1)
    if r < 0.75:
        return rng.choice([part - 1, part, part + 1])
    return rng.randint(part + 1, part * 5 // 2)


def content_of(seed: int, idx: int, size: int) -> bytes:
    return random.Random(f"{seed}/{idx}").randbytes(size)


def part_md5s(data: bytes, part: int) -> list:
    return [
        hashlib.md5(data[i : i + part]).hexdigest()
        for i in range(0, len(data) - part + 1, part)
    ]


def run_session(box, key: Path, attempts, cut: threading.Event, cwd: Path):
    for a in attempts:
        if cut.is_set():
            return
        a.started = time.monotonic()
        try:
            argv = sftp_argv(box, key)
            if a.limit_kbit:
                argv[-1:-1] = ["-l", str(a.limit_kbit)]
            p = subprocess.run(
                argv,
                input=f"put a{a.idx:04d}.bin {a.path}\n",
                text=True,
                capture_output=True,
                cwd=cwd,
                timeout=SFTP_TIMEOUT_SECONDS,
            )
            a.rc = p.returncode
            a.transferring = "sftp> put" in p.stdout
            a.error = (p.stdout + p.stderr)[-400:] if p.returncode else ""
        except subprocess.TimeoutExpired:
            a.error = f"sftp still running after {SFTP_TIMEOUT_SECONDS}s"
        a.ended = time.monotonic()


def object_sha256(client, bucket: str, key: str, version_id: str | None = None) -> str:
    kw = {"VersionId": version_id} if version_id else {}
    body = client.get_object(Bucket=bucket, Key=key, **kw)["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def box_warnings(path: Path, count_max: int = 40) -> list:
    """The daemon's WARN and ERROR lines in the console log (the last count_max)."""
    lines = path.read_bytes().decode(errors="replace").splitlines()
    hits = [l for l in lines if " sftpgw: " in l and re.search(r"Z +(WARN|ERROR) ", l)]
    return hits[-count_max:]


def provision_part_size(config: Path, part_mib: int) -> str:
    """Rewrites the configuration handed to the QEMU box with another part size; returns the
    original text (restored after the loop)."""
    original = config.read_text()
    lines = original.splitlines(keepends=True)
    hits = [i for i, l in enumerate(lines) if re.match(r'part_size = "[^"]*"\s*$', l)]
    assert len(hits) == 1, "the configuration's part_size line changed"
    lines[hits[0]] = f'part_size = "{part_mib}MiB"\n'
    config.write_text("".join(lines))
    binary = os.environ.get("SFTPGW_BIN")
    if binary and Path(binary).exists():
        p = subprocess.run([binary, "check-config", str(config)], capture_output=True, text=True)
        if p.returncode != 0:
            config.write_text(original)
            raise AssertionError(f"check-config refused part_size {part_mib}MiB:\n{p.stderr}")
    return original


def configured_part_mib(config: Path | None, options: dict) -> int:
    if config is None:
        return int(options.get("part_size_mib", 16))
    m = re.search(r'^part_size = "(\d+)MiB"', config.read_text(), re.M)
    assert m, "no part_size in MiB in the box's configuration"
    return int(m.group(1))


def test_power_cut_loop_loses_no_acknowledged_file(
    box, s3, client_key, box_config, options, is_qemu, tmp_path
):
    if not box.can_cut_power:
        pytest.skip("no power switch in this labgrid environment")
    client, bucket, prefix, proxy = s3
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 32))
    print(f"power-cut loop: seed {seed} (replay: {SEED_ENV}={seed}), {CUTS} cuts", flush=True)
    TIMES["power_cut_loop_seed"] = seed
    rng = random.Random(seed)
    # The suite's faulthandler prints every stack after 600 s; this test is longer by design.
    faulthandler.cancel_dump_traceback_later()
    try:
        faulthandler.dump_traceback_later(300 + 45 * CUTS, exit=False, file=sys.__stderr__)
    except (ValueError, OSError, AttributeError):
        pass

    part = configured_part_mib(box_config, options)
    original_config = None
    if is_qemu and box_config is not None and part != PART_SIZE_MIB:
        original_config = provision_part_size(box_config, PART_SIZE_MIB)
        part = PART_SIZE_MIB
    part *= MIB

    log = ConsoleLog(box, CONSOLE_LOG, proxy)
    run_dir = f"pcut-{time.strftime('%H%M%S')}"
    paths = [f"{run_dir}/f{i:02d}.bin" for i in range(PATH_COUNT)]
    key_prefix = f"{prefix}{box.sftp_user}/{run_dir}/"
    attempts: list[Attempt] = []
    cycles: list[dict] = []
    problems: list[str] = []
    boot_seconds: list[float] = []
    login_seconds: list[float] = []
    streaming = False
    duplicates: list[dict] = []
    sealed_unanswered: set[int] = set()
    est = Estimates()

    def boot():
        nonlocal streaming
        log.note("power on")
        t0 = box.power_on()
        times = box.wait_ready(t0, timeout=BOOT_TIMEOUT_SECONDS)
        boot_seconds.append(times.sftp_banner)
        log.note(f"SFTP banner {times.sftp_banner:.1f}s after power-on")
        # The box's log on the console, so that it survives the next cut on the host.
        t1 = time.monotonic()
        try:
            box.send(LOG_STREAM)
            streaming = True
            login_seconds.append(time.monotonic() - t1)
        except Exception as e:  # a login that fails must not hide what the test is about
            log.note(f"no log stream this boot: {e!r}")
        log.take_expect_buffer()

    def stop_streaming():
        nonlocal streaming
        if streaming and box.powered:
            box.send("kill $(pidof logread)")
            log.pump(time.monotonic() + 1.5)
        streaming = False

    def cut():
        nonlocal streaming
        log.take_expect_buffer()
        box.power_cut()
        streaming = False

    loop_start = time.monotonic()
    try:
        if original_config is not None and box.powered:
            # The new part size reaches the box through fw_cfg at its next power-on.
            log.note("power cut to provision the loop's configuration (not counted)")
            cut()
        if not box.powered:
            boot()
        mkdir = subprocess.run(
            sftp_argv(box, client_key), input=f"mkdir {run_dir}\n", text=True,
            capture_output=True, timeout=SFTP_TIMEOUT_SECONDS,
        )
        assert mkdir.returncode == 0, mkdir.stdout + mkdir.stderr

        for cycle in range(1, CUTS + 1):
            if not box.powered:
                boot()
            # Every draw from rng comes here, before anything that depends on timing.
            n = rng.randint(*FILES_PER_CYCLE)
            picked = rng.sample(paths, n)
            mode = rng.choices(list(CUT_MODES), weights=list(CUT_MODES.values()))[0]
            u, u_target = rng.random(), rng.random()
            wan_rate = rng.choice(WAN_RATES)
            limits = [rng.choice(CLIENT_LIMITS_KBIT) for _ in range(SESSIONS)]
            batch = []
            for path in picked:
                size = draw_size(rng, part)
                idx = len(attempts)
                data = content_of(seed, idx, size)
                (tmp_path / f"a{idx:04d}.bin").write_bytes(data)
                a = Attempt(
                    idx=idx, cycle=cycle, path=path, key=f"{prefix}{box.sftp_user}/{path}",
                    size=size, sha256=hashlib.sha256(data).hexdigest(),
                    part_md5=part_md5s(data, part),
                )
                batch.append(a)
                attempts.append(a)
            sessions = [batch[i::SESSIONS] for i in range(SESSIONS)]
            for s, group in enumerate(sessions):
                for a in group:
                    a.session = s
                    a.limit_kbit = limits[s]
            cut_event = threading.Event()
            log.note(
                f"cycle {cycle}/{CUTS}: mode {mode}, WAN {wan_rate // MIB} MiB/s, uploads "
                + ", ".join(
                    f"#{a.idx} {a.path} {a.size} B (session {a.session}"
                    + (f", -l {a.limit_kbit}" if a.limit_kbit else "") + ")"
                    for a in batch
                )
            )
            if proxy is not None:
                proxy.rate = wan_rate
            t0 = time.monotonic()
            threads = [
                threading.Thread(
                    target=run_session, args=(box, client_key, g, cut_event, tmp_path), daemon=True
                )
                for g in sessions
            ]
            for t in threads:
                t.start()
            all_ended = lambda: all(a.ended is not None for a in batch)  # noqa: E731
            if mode == "sftp":
                # A random moment of one of the larger files' transfer (after its SSH
                # handshake, as far as the estimates know).
                larger = [a for a in batch if a.size >= 256 * KIB] or batch
                target = larger[int(u_target * len(larger))]
                log.pump_until(
                    lambda: target.started is not None or all_ended(), t0 + INGEST_WAIT_MAX_SECONDS
                )
                start = target.started or time.monotonic()
                log.pump(
                    start + 0.6 * est.overhead
                    + u * (0.4 * est.overhead + est.transfer_seconds(target))
                )
            elif mode == "drain":
                if not log.pump_until(all_ended, t0 + INGEST_WAIT_MAX_SECONDS):
                    problems.append(
                        f"cycle {cycle}: the uploads were not done after {INGEST_WAIT_MAX_SECONDS}s"
                    )
                acked_bytes = sum(a.size for a in batch if a.acked)
                log.pump(time.monotonic() + u * (acked_bytes / wan_rate + 1.0))
            else:
                log.pump_until(
                    lambda: all_ended() or any(a.acked for a in batch),
                    t0 + INGEST_WAIT_MAX_SECONDS,
                )
                log.pump(time.monotonic() + 0.3 * u)
            in_flight = [a.idx for a in batch if a.started is not None and a.ended is None]
            drain_bytes = log.upstream_bytes_in_last(0.5)
            t_cut = time.monotonic()
            cut_event.set()
            cut()
            for t in threads:
                t.join(SFTP_TIMEOUT_SECONDS + 10)
            for a in batch:
                (tmp_path / f"a{a.idx:04d}.bin").unlink(missing_ok=True)
                if a.ended is None and a.started is not None:
                    problems.append(f"#{a.idx} {a.path}: sftp did not end after the cut")
                elif a.sent and not a.acked and a.ended < t_cut:
                    problems.append(
                        f"cycle {cycle}: #{a.idx} {a.path} failed while the box was up:"
                        f" {a.error.strip()}"
                    )
                if a.acked:
                    est.learn(a)
            record = {
                "cycle": cycle,
                "mode": mode,
                "wan_mib_per_second": wan_rate // MIB,
                "cut_after_seconds": round(t_cut - t0, 2),
                "sftp_in_flight_at_cut": in_flight,
                "upstream_bytes_in_last_half_second": drain_bytes,
                "acknowledged": [a.idx for a in batch if a.acked],
                "cut_off": [a.idx for a in batch if a.sent and not a.acked],
                "cut_off_mid_transfer": [a.idx for a in batch if a.transferring and not a.acked],
                "not_started": [a.idx for a in batch if not a.sent],
            }
            cycles.append(record)
            log.note(f"cut: {json.dumps(record)}")
            print(f"cut {cycle}: {json.dumps(record)}", flush=True)

        # After the last cut: boot, the WAN at full speed, and everything must arrive.
        boot()
        if proxy is not None:
            proxy.rate = None
        t_final = time.monotonic()
        history: dict[str, list[Attempt]] = {}
        for a in attempts:
            if a.sent:
                history.setdefault(a.path, []).append(a)

        def allowed(path: str) -> list[Attempt]:
            """The versions S3 may hold at the end: the newest acknowledged one, or one sent
            after it whose CLOSE may have been sealed when the power went (the answer lost)."""
            h = history[path]
            acked = [i for i, a in enumerate(h) if a.acked]
            return h[acked[-1]:] if acked else h
        must_arrive = {p: h for p, h in history.items() if any(a.acked for a in h)}

        seen: dict[str, tuple] = {}  # key -> (ETag, sha256) of the last look

        def current_sha(key: str) -> str | None:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except client.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            if key in seen and seen[key][0] == head["ETag"]:
                return seen[key][1]
            sha = object_sha256(client, bucket, key)
            seen[key] = (head["ETag"], sha)
            return sha

        def delivered(path: str) -> bool:
            sha = current_sha(history[path][0].key)
            return sha is not None and sha in {a.sha256 for a in allowed(path)}

        waiting = set(must_arrive)
        deadline = t_final + DELIVERY_TIMEOUT_SECONDS
        while waiting and time.monotonic() < deadline:
            waiting = {p for p in waiting if not delivered(p)}
            log.pump(time.monotonic() + 1.0)
        TIMES["power_cut_loop_last_boot_to_all_in_s3_seconds"] = round(time.monotonic() - t_final, 1)

        # The box's own view once everything is out: nothing sealed, uploading or failed.
        stop_streaming()
        files_line = health_line = ""
        counts = None
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while True:
            out, code = box.run(STATUS)
            assert code == 0, out
            files_line = status_line(out, "FILES ")
            health_line = status_line(out, "HEALTH ")
            m = FILES_RE.search(files_line)
            assert m, files_line
            counts = dict(
                zip(("receiving", "partial", "sealed", "uploading", "failed", "delivered"),
                    map(int, m.groups()))
            )
            if counts["receiving"] + counts["sealed"] + counts["uploading"] == 0:
                break
            if time.monotonic() > deadline:
                problems.append(f"not settled {SETTLE_TIMEOUT_SECONDS}s after delivery: {files_line}")
                break
            time.sleep(2)
        log.note(f"status at the end:\n{out}")
        if counts["failed"]:
            problems.append(f"failed files at the end: {files_line}\n{out}")
        if not health_line.split()[1] == "OK":
            problems.append(f"not healthy at the end: {health_line}\n{out}")
        if "quarantine" in health_line:
            # What recovery quarantined (its reasons), then emptied: the console tests after
            # this one expect a healthy box.
            listing, _ = box.run(f"{QUARANTINE} list")
            problems.append(f"quarantined by recovery after a cut:\n{listing}")
            log.note(f"quarantine at the end:\n{listing}")
            for line in listing.splitlines():
                name = line.split()[0] if line.split() else ""
                if name.isdigit():
                    box.run(f"{QUARANTINE} delete {name}")

        # 1. No acknowledged file lost: the newest acknowledged version (or a later one that
        # was sealed) is the object.
        lost = []
        for path, h in sorted(must_arrive.items()):
            ok = allowed(path)
            sha = current_sha(h[0].key)
            if sha not in {a.sha256 for a in ok}:
                last = ok[0]
                got = "no object" if sha is None else next(
                    (f"the bytes of #{a.idx} (cycle {a.cycle}, {'acked' if a.acked else 'cut off'})"
                     for a in h if a.sha256 == sha), "bytes no upload sent")
                lost.append(
                    f"LOST {path}: acknowledged #{last.idx} (cycle {last.cycle}, {last.size} B)"
                    f" but S3 has {got}"
                )
            elif sha != ok[0].sha256:
                later = next(a for a in ok if a.sha256 == sha)
                log.note(f"{path}: #{later.idx} was sealed although its answer was lost in the cut")
        problems += lost

        # 2. Every version is the bytes of an upload of its path, in upload order; count the
        # versions that arrived more than once with the same bytes.
        versions, markers = [], []
        for page in client.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=key_prefix
        ):
            versions += page.get("Versions", [])
            markers += page.get("DeleteMarkers", [])
        if markers:
            problems.append(f"delete markers: {[m['Key'] for m in markers]}")
        by_key: dict[str, list] = {}
        for v in versions:  # newest first per key
            by_key.setdefault(v["Key"], []).append(v)
        for key, vs in sorted(by_key.items()):
            path = key[len(prefix) + len(box.sftp_user) + 1 :]
            if path not in history:
                problems.append(f"unexpected object {key}")
                continue
            order = []
            for v in reversed(vs):  # oldest first
                sha = object_sha256(client, bucket, key, v["VersionId"])
                match = [a for a in history[path] if a.sha256 == sha]
                if not match:
                    problems.append(
                        f"DIFFERENT BYTES {key} version {v['VersionId']} ({v['Size']} B,"
                        f" {v['LastModified']}): no upload of this path sent them"
                    )
                    continue
                order.append(match[0].idx)
                if not match[0].acked:
                    # The CLOSE was sealed (or the spool sealed it again at boot from the
                    # file's identity) but its answer was lost with the power: delivering it
                    # is allowed, the client will send it again anyway.
                    sealed_unanswered.add(match[0].idx)
            for idx in sorted(set(order)):
                if order.count(idx) > 1:
                    a = attempts[idx]
                    duplicates.append({
                        "key": key, "upload": idx, "cycle": a.cycle, "size": a.size,
                        "times": order.count(idx),
                        "how": "multipart upload" if a.size >= part else "PutObject",
                    })
            if order != sorted(order):
                problems.append(f"OUT OF ORDER {key}: versions arrived as uploads {order}")
        # Allowed: a PutObject that was done, but not journalled as delivered, when the power
        # went is sent again (src/drain/upload.rs, deliver_single); with bucket versioning
        # that is a second version with the same bytes.
        TIMES["power_cut_loop_same_bytes_duplicates"] = len(duplicates)
        TIMES["power_cut_loop_cut_off_but_delivered"] = len(sealed_unanswered)
        if duplicates:
            log.note(f"versions with the same bytes more than once: {duplicates}")

        # 3. Open multipart uploads: only of files left partial, one per key, its own bytes.
        def bad_uploads():
            found = []
            uploads = []
            for page in client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=key_prefix
            ):
                uploads += page.get("Uploads", [])
            per_key: dict[str, int] = {}
            for up in uploads:
                key = up["Key"]
                per_key[key] = per_key.get(key, 0) + 1
                path = key[len(prefix) + len(box.sftp_user) + 1 :]
                h = history.get(path)
                if not h:
                    found.append(f"open upload of unknown key {key}")
                    continue
                if h[-1].acked:
                    found.append(
                        f"OPEN UPLOAD {key} ({up['UploadId']}): its newest upload #{h[-1].idx}"
                        " was acknowledged, nothing of it can be partial"
                    )
                    continue
                parts = client.list_parts(
                    Bucket=bucket, Key=key, UploadId=up["UploadId"]
                ).get("Parts", [])
                # A partial file is resumed by the next `put` of its path (the same spool
                # file and early upload, truncated: src/spool/handles.rs), so one open upload
                # may hold parts of several cut-off uploads; each part must be of one that
                # came after the newest acknowledged upload of the key.
                acked_at = max((i for i, a in enumerate(h) if a.acked), default=-1)
                for part_info in parts:
                    n, etag = part_info["PartNumber"], part_info["ETag"].strip('"')
                    whose = [
                        i for i, a in enumerate(h)
                        if n <= len(a.part_md5) and a.part_md5[n - 1] == etag
                    ]
                    if not whose:
                        found.append(
                            f"OPEN UPLOAD {key} ({up['UploadId']}): part {n} holds bytes no"
                            " upload of this path sent"
                        )
                    elif max(whose) <= acked_at:
                        found.append(
                            f"OPEN UPLOAD {key} ({up['UploadId']}): part {n} holds bytes of"
                            f" #{h[max(whose)].idx}, older than the acknowledged"
                            f" #{h[acked_at].idx} (leaked)"
                        )
            for key, n in per_key.items():
                if n > 1:
                    found.append(f"OPEN UPLOADS {key}: {n} at once")
            return found, uploads

        deadline = time.monotonic() + SWEEP_SECONDS
        while True:
            found, uploads = bad_uploads()
            if not found or time.monotonic() > deadline:
                break
            time.sleep(2)
        problems += found
        partial_keys = {p for p, h in history.items() if not h[-1].acked}
        if counts["partial"] > len(partial_keys):
            problems.append(
                f"{counts['partial']} partial files on the box, but only {len(partial_keys)}"
                f" paths whose newest upload was cut off: {files_line}"
            )
        TIMES["power_cut_loop_open_uploads_of_partial_files"] = len(uploads)
        TIMES["power_cut_loop_partial_files_at_end"] = counts["partial"]
    finally:
        if proxy is not None:
            proxy.rate = None
        try:
            stop_streaming()
        except Exception as e:
            log.note(f"could not stop the log stream: {e!r}")
        if original_config is not None:
            # Back to the suite's configuration from the next power-on.
            box_config.write_text(original_config)
        elapsed = time.monotonic() - loop_start
        TIMES["power_cut_loop_cuts"] = len(cycles)
        TIMES["power_cut_loop_seconds"] = round(elapsed, 1)
        if boot_seconds:
            TIMES["power_cut_loop_boot_to_sftp_banner_min_median_max"] = [
                round(min(boot_seconds), 1), round(statistics.median(boot_seconds), 1),
                round(max(boot_seconds), 1),
            ]
        if login_seconds:
            TIMES["power_cut_loop_console_login_median_seconds"] = round(
                statistics.median(login_seconds), 1
            )
        TIMES["power_cut_loop_cuts_mid_sftp"] = sum(1 for c in cycles if c["sftp_in_flight_at_cut"])
        TIMES["power_cut_loop_cuts_mid_drain"] = sum(
            1 for c in cycles if (c["upstream_bytes_in_last_half_second"] or 0) > 0
        )
        TIMES["power_cut_loop_files_acknowledged"] = sum(1 for a in attempts if a.acked)
        TIMES["power_cut_loop_files_cut_off"] = sum(1 for a in attempts if a.sent and not a.acked)
        TIMES["power_cut_loop_files_cut_off_mid_transfer"] = sum(
            1 for a in attempts if a.transferring and not a.acked
        )
        REPORT.write_text(json.dumps({
            "seed": seed,
            "cuts": len(cycles),
            "part_size": part,
            "seconds": round(elapsed, 1),
            "cycles": cycles,
            "attempts": [{k: v for k, v in asdict(a).items() if k != "part_md5"} | {
                "acked": a.acked,
                "started": None if a.started is None else round(a.started - loop_start, 2),
                "ended": None if a.ended is None else round(a.ended - loop_start, 2),
            } for a in attempts],
            "same_bytes_duplicates": duplicates,
            "cut_off_but_delivered": sorted(sealed_unanswered),
            "problems": problems,
        }, indent=1) + "\n")
        log.note(f"problems: {problems}")
        log.close()

    assert len(cycles) == CUTS
    assert TIMES["power_cut_loop_files_acknowledged"] > 0, "no upload was ever acknowledged"
    if CUTS >= 10:
        assert TIMES["power_cut_loop_cuts_mid_sftp"] > 0, "no cut came while a file was arriving"
        assert TIMES["power_cut_loop_cuts_mid_drain"] > 0, "no cut came while a drain was moving"
    assert not problems, (
        "\n".join(problems)
        + "\nthe box's warnings and errors (all cycles):\n"
        + "\n".join(box_warnings(CONSOLE_LOG))
        + f"\n(replay: {SEED_ENV}={seed}; the box's log: {CONSOLE_LOG}; uploads: {REPORT})"
    )
