"""``mln stop -S`` on a QEMU guest saves its memory; ``mln start`` resumes it where it was.

One busybox guest counts on its console (a shell loop that only lives in memory: a
reboot would start again at 1). It is saved, resumed and must go on counting from where
it stopped, without booting again. The console log is appended to across the resume.
A save file that cannot be loaded makes the start fail and is kept.
"""
from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.guests

PROJECT = r"""
global {
    project sv
}
host counter {
    hypervisor qemu
    template busybox.ext4
    memory 96M
    startup {
        n=0
        while true
        do
        n=\$((\$n + 1))
        echo "MLN-TICK \$n"
        sleep 1
        done &
    }
}
"""

BANNER = re.compile(r"Linux version \d")


def ticks(text: str) -> list[int]:
    """The counter values of the complete lines of ``text`` (the last one may be half written)."""
    return [int(x) for x in re.findall(r"MLN-TICK (\d+)\r?\n", text)]


def wait_ticks(env, above: int, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = env.console("sv", "counter")
        if ticks(text) and max(ticks(text)) > above:
            return text
        time.sleep(0.5)
    raise AssertionError(f"the counter did not pass {above} in {timeout} s:\n"
                         f"{env.console('sv', 'counter')[-3000:]}")


def test_save_and_resume_keeps_the_guest_memory(mln_env):
    path = mln_env.write("sv.mln", PROJECT)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    hdir = mln_env.projects / "sv" / "hosts" / "counter"
    ram = hdir / "counter.ram"

    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 0, r.output
    wait_ticks(mln_env, above=3)
    disk = mln_env.projects / "sv" / "images"

    r = mln_env.mln("stop", "-p", "sv", "-S")
    assert r.returncode == 0, r.output
    assert "counter: saved" in r.stderr, r.stderr
    assert "cannot be saved" not in r.stderr
    assert ram.is_file() and ram.stat().st_size > 0
    assert not (hdir / "counter.ram.part").exists()
    assert mln_env.processes() == [], "QEMU still runs after the save"
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 1 and r.stdout.strip() == "sv host counter down (saved)"
    before = mln_env.console("sv", "counter")
    last = ticks(before)[-1]
    assert ticks(before) == list(range(1, last + 1))
    assert len(BANNER.findall(before)) == 1
    disk_state = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()}
    time.sleep(2)                            # a tick or two of wall time while it is saved
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()} == disk_state

    # a save file that cannot be loaded (here: cut short) fails the start clearly, runs
    # nothing and is kept
    good = ram.read_bytes()
    ram.write_bytes(good[:len(good) // 2])
    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 1
    assert "host counter: start: resuming from the saved state" in r.stderr, r.stderr
    assert "The file is kept" in r.stderr
    assert ram.is_file() and mln_env.processes() == []
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.stdout.strip() == "sv host counter down (saved)"
    ram.write_bytes(good)
    # nothing wrote the guest's disk while it was saved (not even the failed resume)
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()} == disk_state

    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 0, r.output
    assert "counter: started" in r.stderr
    assert not ram.exists(), "the save file was not deleted after the resume"
    cmdline = (hdir / "cmdline").read_text()
    assert "-incoming defer" in cmdline and "append=on" in cmdline
    after = wait_ticks(mln_env, above=last + 3)
    # the console log is appended to across the resume, not truncated
    assert after.startswith(before)
    new = after[len(before):]
    assert not BANNER.search(new), f"the guest booted again:\n{new[-3000:]}"
    # the loop went on from its in-memory counter: one unbroken sequence 1, 2, 3, ... across
    # the resume (a reboot would start again at 1); a line cut by the save is completed after it
    assert ticks(after) == list(range(1, ticks(after)[-1] + 1)), after[-3000:]
    assert ticks(after)[-1] > last + 3
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 0 and r.stdout.strip() == "sv host counter up"

    # a normal stop afterwards is a clean shutdown, and nothing is left
    r = mln_env.mln("stop", "-p", "sv", "-w", "30")
    assert r.returncode == 0, r.output
    assert "did not stop" not in r.stderr
    assert "mln-guest: shutting down" in mln_env.console("sv", "counter")
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 1 and r.stdout.strip() == "sv host counter down"
    r = mln_env.mln("remove", "-f", "-p", "sv")
    assert r.returncode == 0, r.output
    assert not (mln_env.projects / "sv").exists()
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []
