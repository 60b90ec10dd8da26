"""Hardware-in-the-loop tests of the serial console (issue 5): the banner before the login
prompt, the ops login whose shell is the `sftpgw console` menu (never a shell), its entries
(status, pause, network, diagnostics bundle, reboot), Ctrl-C, Ctrl-D and logout. They run
after test_appliance.py on the same box and drive the console directly (labgrid's raw
console), switching to the tests' root shell only to look inside the diagnostics bundle."""

import re
import time

import pexpect
import pytest

from conftest import TIMES
from s3server import SECRET_ACCESS_KEY

LOGIN_PROMPT = r"sftpgw login: "
MENU_PROMPT = r"choice> "
ROOT_PROMPT = r"root@sftpgw:[^ ]* # "
PASSWORD_PROMPT = r"Password: "
CONSOLE_TIMEOUT_SECONDS = 60
BOOT_TIMEOUT_SECONDS = 120


def raw_console(box):
    """The serial console without the root shell driver, its buffer emptied."""
    box.logout()
    box.target.activate(box.console)
    try:
        box.console.expect("a pattern that never appears: drain", timeout=0.5)
    except pexpect.TIMEOUT:
        pass
    box.console._expect.buffer = b""
    return box.console


def expect(console, pattern, timeout=CONSOLE_TIMEOUT_SECONDS) -> str:
    """Waits for pattern; returns what came before it (without terminal escapes)."""
    _, before, _, _ = console.expect(pattern, timeout=timeout)
    return before.decode(errors="replace")


def reach_login_prompt(box) -> str:
    """Leaves whatever session the console has (root shell, console menu, a prompt inside
    it) and returns what was printed before the login prompt."""
    console = raw_console(box)
    console.sendcontrol("c")
    console.sendline("")
    index, before, _, _ = console.expect(
        [ROOT_PROMPT, MENU_PROMPT, LOGIN_PROMPT, PASSWORD_PROMPT], timeout=CONSOLE_TIMEOUT_SECONDS
    )
    if index == 0:
        console.sendline("exit")
    elif index == 1:
        console.sendline("9")
    elif index == 3:
        console.sendline("")  # a wrong (empty) password: back to the prompt
    else:
        return before.decode(errors="replace")
    return expect(console, LOGIN_PROMPT)


def login_ops(box, options):
    """Logs in as ops; returns the console at its menu prompt."""
    reach_login_prompt(box)
    console = box.console
    console.sendline(options.get("ops_user", "ops"))
    expect(console, PASSWORD_PROMPT)
    console.sendline(options["ops_password"])
    text = expect(console, MENU_PROMPT)
    assert "sftpgw console on" in text, text
    return console


def choose(console, line: str, until: str = MENU_PROMPT) -> str:
    console.sendline(line)
    return expect(console, until)


def test_console_banner_before_login_shows_name_address_health_and_queue(serving, options):
    box = serving
    console = login_ops(box, options)
    console.sendline("9")
    banner = expect(console, LOGIN_PROMPT)
    assert "sftpgw transfer box sftpgw" in banner, banner
    assert re.search(r"address: .*10\.0\.2\.15 \(eth0\)", banner), banner
    assert "health:  OK" in banner, banner
    assert re.search(r"queue:   \d+ file\(s\), ", banner), banner


def test_console_ops_gets_the_menu_and_no_shell(serving, options):
    console = login_ops(serving, options)
    for attempt in ("sh", "ls", "/bin/sh -i"):
        text = choose(console, attempt)
        assert f'unknown choice "{attempt}"' in text, text
    text = choose(console, "1")
    assert "ENGINE " in text and "QUEUE " in text, text


def test_console_pause_then_status_says_paused(serving, options):
    console = login_ops(serving, options)
    console.sendline("2")
    expect(console, r"for how long\? ")
    text = choose(console, "")
    assert "Drain PAUSED" in text, text
    status = choose(console, "1")
    assert "paused" in status.lower(), status
    text = choose(console, "3")
    assert "PAUSED" not in text, text


def test_console_network_shows_address_route_and_s3_endpoint(serving, options):
    console = login_ops(serving, options)
    text = choose(console, "6")
    assert "eth0       10.0.2.15/24" in text, text
    assert "default route: 10.0.2.2 via eth0" in text, text
    assert "DNS servers:" in text, text
    assert "=> reachable" in text, text


def test_console_diagnostics_bundle_is_written_without_secrets(serving, options):
    box = serving
    console = login_ops(box, options)
    console.sendline("7")
    _, _, match, _ = console.expect(r"Diagnostics written to (\S+\.tar\.gz)", timeout=120)
    path = match.group(1).decode()
    expect(console, MENU_PROMPT)
    console.sendline("9")
    expect(console, LOGIN_PROMPT)
    assert path.startswith("/data/diagnostics/"), path

    listing, code = box.run(f"tar -tzf {path}")
    assert code == 0, listing
    for member in ("config.toml", "status.json", "logs.txt", "network.txt", "system.txt"):
        assert f"/{member}" in listing, listing
    out, code = box.run(f"zcat {path} | grep -c '{SECRET_ACCESS_KEY}'")
    assert out.strip() == "0", f"the bundle holds the S3 secret ({out})"
    out, code = box.run(f"tar -xzOf {path} | grep -c 'secret_access_key = \"<redacted>\"'")
    assert code == 0 and int(out.strip()) == 1, out
    logs = next(l for l in listing.splitlines() if l.endswith("/logs.txt"))
    out, code = box.run(f"tar -xzOf {path} {logs} | head -n 5")
    assert "# source: logread" in out, f"no logs in the bundle:\n{out}"


def test_console_ctrl_c_and_friends_stay_in_the_menu(serving, options):
    console = login_ops(serving, options)
    # Ctrl-C, Ctrl-\ (labgrid's sendcontrol knows letters only), Ctrl-Z.
    console.sendcontrol("c")
    console.write(b"\x1c")
    console.sendcontrol("z")
    expect(console, r"\(interrupted\)")
    expect(console, MENU_PROMPT)
    text = choose(console, "1")
    assert "ENGINE " in text, text


def test_console_logout_and_ctrl_d_return_to_the_login_prompt(serving, options):
    console = login_ops(serving, options)
    console.sendline("9")
    text = expect(console, LOGIN_PROMPT)
    assert "logged out" in text, text
    console = login_ops(serving, options)
    console.sendcontrol("d")
    text = expect(console, LOGIN_PROMPT)
    assert "end of input: logged out" in text, text


def test_console_reboot_asks_then_the_box_comes_back_serving(serving, options):
    box = serving
    console = login_ops(box, options)
    text = choose(console, "8", until=r"Type yes: ")
    text = choose(console, "no")
    assert "not rebooting" in text, text
    console.sendline("8")
    expect(console, r"Type yes: ")
    console.sendline("yes")
    expect(console, r"Reboot requested")
    expect(console, options["boot_pattern"], timeout=BOOT_TIMEOUT_SECONDS)
    t0 = time.monotonic()
    times = box.wait_ready(t0, timeout=BOOT_TIMEOUT_SECONDS)
    TIMES["console_reboot_boot_to_sftp_banner"] = round(times.sftp_banner, 2)
