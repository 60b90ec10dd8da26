"""Checks of the QEMU test image itself (image/build.sh's output), on the host, before any
boot: every kernel module the box needs is there with its dependencies, every program finds
its libraries inside the image, and the files taken from the Buildroot overlay are the
overlay's, unchanged."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import IMAGE_DIR, REPO, TIMES

OVERLAY = REPO / "buildroot/board/sftpgw/rootfs-overlay"
REQUIRED_MODULES = ["virtio_pci", "virtio_net", "nvme", "ext4", "crc32c", "i6300esb", "qemu_fw_cfg"]
PROGRAMS = ["usr/bin/sftpgw", "usr/bin/socat", "sbin/mke2fs", "sbin/e2fsck", "usr/bin/install"]
OVERLAY_FILES = [
    "etc/sftpgw/sftpgw.toml",
    "usr/libexec/sftpgw/prepare-data",
    "usr/bin/sftpgw-console",
    "usr/lib/systemd/system/sftpgw.service",
    "usr/lib/systemd/system.conf.d/50-sftpgw-watchdog.conf",
]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    initramfs = IMAGE_DIR / "initramfs.cpio.gz"
    if not initramfs.exists():
        pytest.skip(f"no image at {IMAGE_DIR} (image/build.sh)")
    root = tmp_path_factory.mktemp("initramfs")
    # Device nodes need root to be made; they do not matter here.
    subprocess.run(
        f"zcat {initramfs} | cpio -id --quiet --no-absolute-filenames 2>/dev/null",
        shell=True,
        cwd=root,
    )
    assert (root / "init").is_symlink(), "the archive did not unpack"
    return root


def kernel_version(root: Path) -> str:
    (version,) = os.listdir(root / "lib/modules")
    return version


def test_image_has_every_module_and_its_dependencies(image_root):
    kver = kernel_version(image_root)
    load_order = (image_root / "etc/sftpgw/modules").read_text().split()
    for module in REQUIRED_MODULES:
        # modprobe resolves against the image's own modules.dep and softdeps (-d).
        p = subprocess.run(
            ["modprobe", "-d", str(image_root), "-S", kver, "--show-depends", module],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, f"{module}: {p.stderr}"
        for line in p.stdout.splitlines():
            kind, path = line.split()[:2]
            if kind != "insmod":
                continue
            inside = path.replace(str(image_root), "", 1)
            assert (image_root / inside.lstrip("/")).exists(), f"{module} needs {inside}"
            assert inside in load_order, f"{inside} ({module}) is not loaded by rcS"


def test_image_loads_every_module_after_its_dependencies(image_root):
    kver = kernel_version(image_root)
    base = f"/lib/modules/{kver}/"
    load_order = (image_root / "etc/sftpgw/modules").read_text().split()
    position = {path: i for i, path in enumerate(load_order)}
    depends = {}
    for line in (image_root / base.lstrip("/") / "modules.dep").read_text().splitlines():
        module, deps = line.split(":", 1)
        depends[base + module] = [base + d for d in deps.split()]
    for path in load_order:
        for dep in depends[path]:
            assert position[dep] < position[path], f"{path} is loaded before {dep}"
    # ext4 (and jbd2) checksum their metadata with crc32c: a softdep, not in modules.dep.
    crc32c = [i for p, i in position.items() if "crc32c" in p]
    assert crc32c and max(crc32c) < min(i for p, i in position.items() if "/jbd2.ko" in p)


def test_image_programs_find_their_libraries_inside_the_image(image_root):
    loader = image_root / "lib64/ld-linux-x86-64.so.2"
    libs = image_root / "lib/x86_64-linux-gnu"
    for program in PROGRAMS:
        p = subprocess.run(
            [str(loader), "--library-path", str(libs), "--list", str(image_root / program)],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0 and "not found" not in p.stdout, f"{program}:\n{p.stdout}{p.stderr}"
        for line in p.stdout.splitlines():
            if "=>" in line:
                resolved = line.split("=>")[1].split("(")[0].strip()
                assert resolved.startswith(str(image_root)), f"{program} uses the host's {resolved}"
    TIMES["sftpgw_stripped_bytes"] = (image_root / "usr/bin/sftpgw").stat().st_size


def test_image_carries_the_buildroot_overlay_files_unchanged(image_root):
    for f in OVERLAY_FILES:
        assert (image_root / f).read_bytes() == (OVERLAY / f).read_bytes(), f


def test_image_root_has_no_password_and_ops_logs_into_the_console(image_root):
    """Root cannot log in on the console (no password); ops can, and its shell is the
    console menu, listed in /etc/shells."""
    shadow = dict(l.split(":", 2)[:2] for l in (image_root / "etc/shadow").read_text().splitlines())
    assert shadow["root"] in ("!", "*"), "root must have no password on the image"
    assert shadow["ops"].startswith("$6$"), "ops has a SHA-512 crypt password"
    passwd = {l.split(":")[0]: l.split(":") for l in (image_root / "etc/passwd").read_text().splitlines()}
    assert passwd["ops"][6] == "/usr/bin/sftpgw-console"
    assert "/usr/bin/sftpgw-console" in (image_root / "etc/shells").read_text().split()
    wrapper = (image_root / "usr/bin/sftpgw-console").read_text()
    assert "exec /usr/bin/sftpgw console" in wrapper


def test_image_carries_ca_certificates_for_https_to_s3(image_root):
    # Without them the S3 client trusts no server over HTTPS (a debug build even aborts at
    # start on the SDK's assertion that native roots were found).
    bundle = image_root / "etc/ssl/certs/ca-certificates.crt"
    assert bundle.is_file(), "no CA bundle in the image"
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 50, "CA bundle nearly empty"
