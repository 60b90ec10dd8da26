"""The box under test, as the tests see it: power, the serial console (login shell, boot and
ready lines), and its SFTP endpoint. Two kinds behind one class: the QEMU test image driven by
labgrid's QEMUDriver, and a real box on a serial port (labgrid's SerialDriver) with an
optional labgrid power driver."""

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from labgrid.protocol import PowerProtocol

# How long a booted box may take to answer on its SFTP port after its ready line.
SFTP_BANNER_TIMEOUT_SECONDS = 30
SHELL_COMMAND_TIMEOUT_SECONDS = 60


@dataclass
class BootTimes:
    """Seconds from power-on (host clock) to each milestone of one boot."""

    ready_line: float = 0.0
    sftp_banner: float = 0.0
    guest_uptime_at_ready: float | None = None
    extra: dict = field(default_factory=dict)


class Box:
    def __init__(self, target, options: dict):
        self.target = target
        self.options = options
        self.kind = options.get("kind", "qemu")
        self.ready_re = options["ready_pattern"]
        self.boot_re = options["boot_pattern"]
        self.sftp_host = options.get("sftp_host", "127.0.0.1")
        self.sftp_port = int(options.get("sftp_port", 22))
        self.sftp_user = options.get("sftp_user", "partner1")
        self.shell = target.get_driver("ShellDriver", activate=False)
        if self.kind == "qemu":
            self.qemu = target.get_driver("QEMUDriver", activate=False)
            self.console = self.qemu
            self.power = self.qemu
        else:
            self.qemu = None
            self.console = target.get_driver("SerialDriver", activate=False)
            try:
                self.power = target.get_driver(PowerProtocol, activate=False)
            except Exception:  # labgrid raises NoDriverFoundError: no power switch
                self.power = None
        self.powered = False

    # --- power -------------------------------------------------------------------------

    @property
    def can_cut_power(self) -> bool:
        return self.power is not None

    def power_on(self) -> float:
        """Powers the box on; returns the host's monotonic time of the power-on."""
        self.target.activate(self.console)
        t0 = time.monotonic()
        if self.power is not None:
            self.target.activate(self.power)
            self.power.on()
        self.powered = True
        return t0

    def power_cut(self):
        """Cuts the power at once: QEMU gets SIGKILL (nothing is flushed, the guest is told
        nothing), a real box its power switch's off."""
        self.target.deactivate(self.shell)
        if self.qemu is not None:
            child = self.qemu._child
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            # QEMUDriver has no power cut of its own: mark it off as its off() would after
            # a clean quit, then deactivate it so that the next power_on starts afresh (new
            # serial socket, nothing left from the last boot in the expect buffer).
            self.qemu._child = None
            self.qemu.status = 0
            self.target.deactivate(self.qemu)
            self.qemu._expect.buffer = b""
        else:
            self.power.off()
        self.powered = False

    def power_off(self):
        if self.powered and self.power is not None:
            self.target.deactivate(self.shell)
            self.power.off()
        self.powered = False

    # --- console -----------------------------------------------------------------------

    def expect(self, pattern: str, timeout: float):
        _, before, match, _ = self.console.expect(pattern, timeout=timeout)
        return before, match

    def wait_ready(self, t0: float, timeout: float) -> BootTimes:
        """Waits for the ready line on the console, then for the SFTP server's SSH banner;
        returns how long each took since t0."""
        times = BootTimes()
        _, match = self.expect(self.ready_re, timeout=timeout)
        times.ready_line = time.monotonic() - t0
        if match is not None and match.groups():
            times.guest_uptime_at_ready = float(match.group(1))
        self.wait_sftp_banner(SFTP_BANNER_TIMEOUT_SECONDS)
        times.sftp_banner = time.monotonic() - t0
        return times

    def wait_sftp_banner(self, timeout: float):
        """QEMU's port forward accepts a connection even while nothing listens in the guest
        (then closes it): only the server's "SSH-2.0-" banner says it serves."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.sftp_host, self.sftp_port), timeout=5) as s:
                    s.settimeout(5)
                    banner = s.recv(64)
                    if banner.startswith(b"SSH-2.0-"):
                        return banner
                    last = banner
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"no SSH banner on {self.sftp_host}:{self.sftp_port}: {last!r}")

    def login(self):
        self.target.activate(self.shell)

    def logout(self):
        self.target.deactivate(self.shell)

    def run(self, cmd: str, timeout: float = SHELL_COMMAND_TIMEOUT_SECONDS) -> tuple[str, int]:
        """Runs a command in the console's shell; returns its output and exit code."""
        self.login()
        out, _, code = self.shell.run(cmd, timeout=timeout)
        return "\n".join(out), code

    def send(self, line: str):
        """Types a line on the console without waiting for the command to end."""
        self.login()
        self.console.sendline(line)


def sftp_argv(box: Box, key: Path) -> list[str]:
    """OpenSSH sftp in batch mode (commands on stdin) against the box, with the test's key."""
    return [
        "sftp",
        "-b", "-",
        "-i", str(key),
        "-P", str(box.sftp_port),
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=20",
        "-o", "LogLevel=ERROR",
        f"{box.sftp_user}@{box.sftp_host}",
    ]


def sftp_batch(box: Box, key: Path, commands: str, cwd: Path, timeout: float):
    """Runs OpenSSH sftp in batch mode against the box; raises with its output on failure."""
    p = subprocess.run(
        sftp_argv(box, key), input=commands, text=True, capture_output=True, cwd=cwd, timeout=timeout
    )
    if p.returncode != 0:
        raise AssertionError(
            f"sftp exited {p.returncode}\ncommands:\n{commands}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def status_line(text: str, prefix: str) -> str:
    """The line of `sftpgw status` that starts with prefix."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r} in:\n{text}")


ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
