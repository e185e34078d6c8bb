"""Progress of a real ``mln build`` of three hosts: a rich bar on a terminal (a pseudo-
terminal here), the plain ``+--->`` lines otherwise, nothing with ``-q``."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

PROJECT = """global {
    project bars
}
superclass node {
    hypervisor uml
    template busybox.ext4
    memory 64M
}
host one {
    superclass node
}
host two {
    superclass node
}
host three {
    superclass node
}
"""
HOSTS = ("one", "two", "three")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]")
BAR = re.compile(r"building hosts \S*━+\S* +(\d)/3 +\d+:\d\d:\d\d")


def on_terminal(env, *args: str, columns: int = 100, timeout: float = 60) -> tuple[int, str]:
    """Run ``mln ARGS`` with a pseudo-terminal as its standard input, output and error;
    its exit code and everything it wrote (terminal control sequences and all)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    term_env = {k: v for k, v in env.env.items()
                if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES")}
    term_env.update(TERM="xterm", COLUMNS=str(columns))
    p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", *args], stdin=slave, stdout=slave,
                         stderr=slave, env=term_env, cwd=env.root, start_new_session=True)
    os.close(slave)
    out, end = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:            # EIO: every end of the terminal's other side is closed
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        code = p.wait(timeout=max(1.0, end - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return code, out.decode(errors="replace")


def screen_lines(raw: str) -> list[str]:
    """What was written, control sequences removed, cut into its lines and redrawings."""
    return [s.rstrip() for s in re.split(r"[\r\n]+", ANSI.sub("", raw)) if s.strip()]


def test_build_progress_on_a_terminal_plain_and_quiet(mln_env):
    path = mln_env.write("bars.mln", PROJECT)

    # on a terminal: rich's bar (done/total, elapsed time, the hosts and their steps) and
    # one "+---> host: built" line per host above it
    code, raw = on_terminal(mln_env, "build", "-f", str(path))
    lines = screen_lines(raw)
    assert code == 0, raw
    assert "\x1b[" in raw                               # drawn, not printed line by line
    counts = [int(m.group(1)) for m in map(BAR.search, lines) if m]
    assert counts and counts[-1] == 3, lines            # the bar's last state: 3/3
    assert counts == sorted(counts), counts
    for host in HOSTS:
        assert f"+---> {host}: built" in lines, lines
    assert any(re.search(r"\b(one|two|three) \((create disk|configure image|uml configuration)", s)
               for s in lines), lines                   # what is being worked on
    assert not any(re.fullmatch(r"\+---> \w+: (create disk|configure image|uml configuration)", s)
                   for s in lines), lines               # steps are on the bar, not on lines of their own

    # without a terminal: exactly the plain lines, no bar, no control sequences
    r = mln_env.mln("build", "-r", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "\x1b" not in r.stderr and "━" not in r.stderr
    for host in HOSTS:
        steps = [s for s in r.stderr.splitlines() if s.startswith(f"+---> {host}: ")]
        assert steps == [f"+---> {host}: create disk", f"+---> {host}: configure image",
                         f"+---> {host}: uml configuration", f"+---> {host}: built"], r.stderr

    # -q on a terminal: no bar, no progress lines
    code, raw = on_terminal(mln_env, "build", "-r", "-q", "-f", str(path))
    assert code == 0, raw
    assert "━" not in raw and "+--->" not in raw and not BAR.search(ANSI.sub("", raw)), raw
