"""``mln console``: typing into a running guest's console, on UML and on QEMU.

The busybox test template has a root shell on its console once Enter is pressed there
(``::askfirst:-/bin/sh``), so what comes back proves the guest itself ran the command.
"""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.guests

ONE_HOST = """global {{
    project con
}}
host box {{
    hypervisor {hv}
    template busybox.ext4
    memory 96M
}}
"""
PROMPT = r"Please press Enter to activate this console"


def _started(env, hv: str) -> None:
    path = env.write("con.mln", ONE_HOST.format(hv=hv))
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = env.mln("console", "-p", "con", "-h", "box")
    assert r.returncode == 1 and "host 'box' of project 'con' is not running" in r.stderr
    assert env.mln("start", "-p", "con").returncode == 0
    env.wait_console("con", "box", PROMPT, timeout=120)


@pytest.mark.parametrize("hv", ["uml", "qemu"])
def test_commands_typed_into_the_console_run_in_the_guest(mln_env, hv):
    _started(mln_env, hv)
    r = mln_env.mln("console", "-p", "con", "-h", "box", input="\necho MLN-CONSOLE-$((6*7)); hostname\n")
    assert r.returncode == 0, r.output
    out = r.stdout.replace("\r", "")
    assert "MLN-CONSOLE-42\n" in out                 # computed by the guest's shell
    assert "\nbox\n" in out                          # the individualized hostname
    assert "MLN-CONSOLE-42" in mln_env.console("con", "box")      # the log still records it all
    # unknown host: one clear error
    r = mln_env.mln("console", "-p", "con", "-h", "nobox")
    assert r.returncode == 1 and "project 'con' has no host 'nobox' (hosts: box)" in r.stderr
    assert mln_env.mln("stop", "-p", "con").returncode == 0


def _read_until(fd: int, needle: bytes, timeout: float = 30) -> bytes:
    got, end = b"", time.monotonic() + timeout
    while needle not in got and time.monotonic() < end:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                got += os.read(fd, 4096)
            except OSError:
                break
    return got


def test_interactive_session_on_a_terminal_ends_with_ctrl_bracket(mln_env):
    _started(mln_env, "uml")
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", "console", "-p", "con", "-h", "box"],
                         stdin=slave, stdout=slave, stderr=slave, env=mln_env.env, cwd=mln_env.root,
                         start_new_session=True)
    os.close(slave)
    try:
        assert b"Ctrl-] leaves" in _read_until(master, b"Ctrl-] leaves")
        os.write(master, b"\r")
        os.write(master, b"echo MLN-TTY-$((2*3))\r")
        assert b"MLN-TTY-6" in _read_until(master, b"MLN-TTY-6")
        os.write(master, b"\x1d")                      # Ctrl-]
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    assert mln_env.mln("status", "-p", "con", "-h", "box").returncode == 0    # the guest runs on
    assert mln_env.mln("stop", "-p", "con").returncode == 0
