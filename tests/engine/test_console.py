"""``mln console``: typing into a running guest's console, on UML and on QEMU.

The busybox test template has a root shell on its console once Enter is pressed there
(``::askfirst:-/bin/sh``), so what comes back proves the guest itself ran the command.
"""
from __future__ import annotations

import io
import os
import pty
import select
import shlex
import signal
import socket
import subprocess
import sys
import termios
import threading
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


def test_one_session_at_a_time_and_signals_restore_the_terminal(mln_env):
    """A second client fails at once while one is attached; SIGTERM ends a raw session
    with the terminal restored; a reader of the output that goes away ends it quietly."""
    _started(mln_env, "uml")
    master, slave = pty.openpty()
    cooked = termios.tcgetattr(slave)
    p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", "console", "-p", "con", "-h", "box"],
                         stdin=slave, stdout=slave, stderr=slave, env=mln_env.env, cwd=mln_env.root,
                         start_new_session=True)
    try:
        assert b"Ctrl-] leaves" in _read_until(master, b"Ctrl-] leaves")
        os.write(master, b"\r")
        os.write(master, b"echo MLN-FIRST-$((3*3))\r")
        assert b"MLN-FIRST-9" in _read_until(master, b"MLN-FIRST-9")
        assert not termios.tcgetattr(slave)[3] & termios.ICANON          # the session is raw
        start = time.monotonic()
        r = mln_env.mln("console", "-p", "con", "-h", "box", input="echo MLN-SECOND\n", timeout=30)
        assert r.returncode == 1, r.output
        assert "mln: error: another mln console is attached to box" in r.stderr, r.output
        assert time.monotonic() - start < 10 and "Traceback" not in r.stderr
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave)[3] == cooked[3]                 # restored
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(slave)
        os.close(master)
    # the lock went with the session; a reader that stops after 10 bytes ends it quietly
    mln = shlex.join([sys.executable, "-m", "mln_core.cli", "console", "-p", "con", "-h", "box"])
    script = (f"printf '\\nfor i in 1 2 3 4 5 6 7 8; do echo MLN-LINE-$i; sleep 0.2; done\\n' | {mln} "
              "| head -c 10; echo rc=${PIPESTATUS[1]} >&2")
    r = subprocess.run(["bash", "-c", script], capture_output=True, env=mln_env.env, cwd=mln_env.root,
                       check=False, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert len(r.stdout) == 10 and err == "rc=0\n", (r.stdout, err)   # no traceback, no complaint
    assert mln_env.mln("stop", "-p", "con").returncode == 0


@pytest.mark.parametrize("hv", ["uml", "qemu"])
def test_a_guest_that_halts_during_a_session_ends_it_cleanly(mln_env, hv):
    _started(mln_env, hv)
    r = mln_env.mln("console", "-p", "con", "-h", "box", "-w", "30", input="\necho MLN-BYE\npoweroff -f\n")
    assert r.returncode == 0, r.output
    assert "MLN-BYE" in r.stdout and r.stderr == "mln: the console of box closed\n", r.output
    deadline = time.monotonic() + 30        # the guest is gone: no console any more
    while mln_env.mln("status", "-p", "con", "-h", "box").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    r = mln_env.mln("console", "-p", "con", "-h", "box", input="\n")
    assert r.returncode == 1 and "is not running" in r.stderr and "Traceback" not in r.stderr, r.output


def test_batch_reads_the_output_while_it_types_the_input(tmp_path):
    """A console that echoes what it is sent, and waits for its output to be taken before it
    reads on (as a serial line does): typing more than the socket holds before reading
    anything would leave both sides waiting for ever."""
    from mln_core.console import batch, open_console
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def echo():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    data = b"".join(b"line %06d\n" % i for i in range(200_000))            # 2.2 MB
    out = io.BytesIO()
    con = open_console({"socket": path})
    typing = threading.Thread(target=batch, args=(con, data, 1.0, out), daemon=True)
    typing.start()
    typing.join(timeout=60)
    assert not typing.is_alive(), f"stuck after {len(out.getvalue())} bytes"
    con.close()
    server.close()
    assert out.getvalue() == data
