"""Fixtures of the hardware-in-the-loop tests: the S3 server on the host (moto, behind a
throttling proxy), the SFTP client key, the box's configuration, and the box itself.

With env-qemu.yaml (the default of hil-tests/run) the box is the QEMU test image: every run
starts from a fresh, empty spool drive, so the first boot formats it; the configuration is the
Buildroot overlay's default with the test's S3 endpoint, credentials and client key filled in,
handed to the box through QEMU's fw_cfg. With env-box.yaml the box is a real one, already
provisioned (see that file)."""

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from appliance import Box
from s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, ThrottledProxy, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE_DIR = Path(os.environ.get("SFTPGW_IMAGE_DIR", REPO / "image" / "out"))
WORK = Path(os.environ.get("HIL_WORK", HERE / ".work"))
OVERLAY_CONFIG = REPO / "buildroot/board/sftpgw/rootfs-overlay/etc/sftpgw/sftpgw.toml"
SPOOL_DISK_BYTES = 1 << 30
BUCKET = "uploads"
PREFIX = "site-a/"
USER = "partner1"
# Parts in flight: two, so that a cut in the middle of a 64 MiB drain (four 16 MiB parts)
# finds some parts done and some not.
CONCURRENCY = 2

# Measured times, printed at the end of the run and written to .work/times.json.
TIMES: dict = {}
SUITE_START = pytest.StashKey[float]()


def pytest_configure(config):
    """Sets the LG_* variables env-qemu.yaml refers to, before labgrid's plugin reads it
    (its pytest_configure runs last)."""
    WORK.mkdir(parents=True, exist_ok=True)
    kvm = os.environ.get("SFTPGW_KVM", "0") == "1"
    # The decompressed kernel (PVH entry) boots faster under TCG; see image/build.sh.
    kernel = IMAGE_DIR / "vmlinux-pvh"
    if os.environ.get("SFTPGW_BZIMAGE", "0") == "1" or not kernel.exists():
        kernel = IMAGE_DIR / "vmlinuz"
    defaults = {
        "LG_KERNEL": str(kernel),
        "LG_INITRD": str(IMAGE_DIR / "initramfs.cpio.gz"),
        "LG_SPOOL_DISK": str(WORK / "spool.img"),
        "LG_SFTPGW_CONFIG": str(WORK / "sftpgw.toml"),
        "LG_SFTP_PORT": str(free_port()),
        "LG_QEMU_ACCEL": "kvm" if kvm else "tcg",
        "LG_QEMU_CPU": "host" if kvm else "max",
        "LG_BOOT_ARGS": "",
        "LG_ROOT_SHADOW": str(WORK / "root-shadow"),
        "LG_ROOT_PASSWORD": secrets.token_hex(12),
        "LG_OPS_PASSWORD": "sftpgw-ops",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    # Root has no password on the image: a random one for this run's shell, handed to the
    # box as a crypt hash through fw_cfg (image/rootfs/etc/init.d/rcS).
    password = os.environ["LG_ROOT_PASSWORD"]
    try:
        hashed = subprocess.run(
            ["/bin/busybox", "mkpasswd", "-m", "sha512", "--", password],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except FileNotFoundError:  # no busybox-static on this machine (a real-box run)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password, capture_output=True, text=True, check=True,
        ).stdout.strip()
    Path(os.environ["LG_ROOT_SHADOW"]).write_text(hashed + "\n")
    TIMES.clear()
    config.stash[SUITE_START] = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    start = terminalreporter.config.stash.get(SUITE_START, None)
    if start is not None:
        TIMES["suite_seconds"] = round(time.monotonic() - start, 1)
    terminalreporter.section("HIL measured times (seconds)")
    for k, v in TIMES.items():
        terminalreporter.write_line(f"{k}: {v}")
    (WORK / "times.json").write_text(json.dumps(TIMES, indent=2) + "\n")


@pytest.fixture(scope="session")
def options(env) -> dict:
    return env.config.data.get("options", {}) or {}


@pytest.fixture(scope="session")
def is_qemu(options) -> bool:
    return options.get("kind", "qemu") == "qemu"


@pytest.fixture(scope="session")
def s3(is_qemu, options):
    """(client, bucket, prefix, proxy or None) of the S3 store the box drains to."""
    if not is_qemu:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=options["s3_endpoint"] or None,
            aws_access_key_id=options["s3_access_key_id"],
            aws_secret_access_key=options["s3_secret_access_key"],
        )
        yield client, options["s3_bucket"], options["s3_prefix"], None
        return
    moto = MotoServer(WORK / "moto.log")
    proxy = ThrottledProxy(moto.port)
    # Versioning on: every PUT or Complete of a key adds a version, so "arrived once" can be
    # counted.
    moto.client.create_bucket(Bucket=BUCKET)
    moto.client.put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )
    yield moto.client, BUCKET, PREFIX, proxy
    proxy.stop()
    moto.stop()


@pytest.fixture(scope="session")
def client_key(is_qemu, options) -> Path:
    if not is_qemu:
        return Path(options["sftp_key"])
    key = WORK / "client_ed25519"
    for p in (key, key.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil@host", "-f", str(key)],
        check=True,
    )
    return key


def render_config(template: str, s3_port: int, public_key: str, s3_host: str) -> str:
    """The Buildroot overlay's default configuration, provisioned for this run. Each
    replacement must hit exactly once, so that a changed template fails loudly here."""
    replacements = [
        ('endpoint = "http://10.0.2.2:9000"', f'endpoint = "http://{s3_host}:{s3_port}"'),
        ('access_key_id = "REPLACE-ME"', f'access_key_id = "{ACCESS_KEY_ID}"'),
        ('secret_access_key = "REPLACE-ME"', f'secret_access_key = "{SECRET_ACCESS_KEY}"'),
        ("concurrency = 4", f"concurrency = {CONCURRENCY}"),
    ]
    for old, new in replacements:
        assert template.count(old) == 1, f"template line changed: {old!r}"
        template = template.replace(old, new)
    lines = template.splitlines()
    placeholder = [i for i, l in enumerate(lines) if "placeholder: replace me" in l]
    assert len(placeholder) == 1, "template's placeholder key changed"
    lines[placeholder[0]] = f'  "{public_key}",'
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def box_config(is_qemu, options, s3, client_key) -> Path | None:
    """The configuration handed to the QEMU box (fw_cfg), checked on the host with
    `sftpgw check-config` when the binary is at hand (SFTPGW_BIN)."""
    if not is_qemu:
        return None
    _, _, _, proxy = s3
    public_key = client_key.with_suffix(".pub").read_text().strip()
    text = render_config(
        OVERLAY_CONFIG.read_text(), proxy.port, public_key, options["s3_host_from_box"]
    )
    path = Path(os.environ["LG_SFTPGW_CONFIG"])
    path.write_text(text)
    binary = os.environ.get("SFTPGW_BIN")
    if binary and Path(binary).exists():
        p = subprocess.run([binary, "check-config", str(path)], capture_output=True, text=True)
        assert p.returncode == 0, f"check-config refused the test configuration:\n{p.stderr}"
    return path


@pytest.fixture(scope="session")
def box(target, options, is_qemu, box_config, s3):
    """The box, powered on lazily by the first test that needs it (ensure_serving)."""
    if is_qemu:
        disk = Path(os.environ["LG_SPOOL_DISK"])
        # A new, empty drive for every run: the first boot formats it.
        disk.unlink(missing_ok=True)
        with open(disk, "wb") as f:
            f.truncate(SPOOL_DISK_BYTES)
    b = Box(target, options)
    if is_qemu:
        b.sftp_host = options.get("sftp_host", "127.0.0.1")
        b.sftp_port = int(os.environ["LG_SFTP_PORT"])
        b.sftp_user = USER
    else:
        service = target.get_resource("NetworkService")
        b.sftp_host = service.address
        b.sftp_port = service.port
        b.sftp_user = service.username
    yield b
    b.power_off()


@pytest.fixture
def serving(box, is_qemu):
    """A box that is on and serving: boots it if it is not (QEMU), or checks that a real box
    answers."""
    if not box.powered:
        if is_qemu:
            t0 = box.power_on()
            times = box.wait_ready(t0, timeout=120)
            TIMES.setdefault("boots", []).append(
                {"ready_line": round(times.ready_line, 2), "sftp_banner": round(times.sftp_banner, 2)}
            )
        else:
            box.power_on()
            box.wait_sftp_banner(60)
    return box


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
