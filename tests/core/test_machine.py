"""The execution seam: commands are traced, and faults (a failing command, a kill just
before one) can be injected from the environment or in-process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mln_core.errors import MlnError
from mln_core.machine import Machine


def test_run_returns_the_output_and_raises_a_clear_error():
    m = Machine(env={})
    assert m.run(["echo", "hi"]).stdout == b"hi\n"
    with pytest.raises(MlnError) as e:
        m.run(["sh", "-c", "echo broken >&2; exit 3"], what="step one")
    assert str(e.value) == "step one: 'sh -c 'echo broken >&2; exit 3'' failed (exit 3): broken"
    with pytest.raises(MlnError, match="command not found: no-such-program-here"):
        m.run(["no-such-program-here"])
    assert m.run(["false"], check=False).returncode == 1


def test_a_fault_makes_the_nth_matching_command_fail_unrun(tmp_path):
    m = Machine(env={"MLN_FAULTS": "fail@touch#2"})
    a, b, c = (tmp_path / n for n in "abc")
    m.run(["touch", str(a)])
    with pytest.raises(MlnError, match="injected fault"):
        m.run(["touch", str(b)])
    m.run(["touch", str(c)])
    assert a.exists() and not b.exists() and c.exists()
    m.inject("fail@echo")
    assert m.run(["echo", "x"], check=False).returncode == 1


def test_bad_fault_specs_are_refused():
    for spec in ("explode@x", "fail@", "fail"):
        with pytest.raises(MlnError, match="MLN_FAULTS"):
            Machine(env={"MLN_FAULTS": spec})


def test_kill_fault_kills_the_process_just_before_the_command(tmp_path):
    marker = tmp_path / "ran"
    code = f"from mln_core.machine import local; local().run(['touch', {str(marker)!r}]); print('after')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "MLN_FAULTS": "kill@touch"})
    assert r.returncode == -signal.SIGKILL and "after" not in r.stdout
    assert not marker.exists()


def test_every_command_is_traced(capsys):
    m = Machine(env={"MLN_TRACE_COMMANDS": "1"})
    m.run(["echo", "a b"])
    assert capsys.readouterr().err == "$ echo 'a b'\n"


def test_liveness_signals_and_cmdline():
    m = Machine(env={})
    p = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(100):                     # until the child has exec'd sleep
            if m.cmdline(p.pid) == ["sleep", "30"]:
                break
            time.sleep(0.02)
        assert m.alive(p.pid) and m.cmdline(p.pid) == ["sleep", "30"]
        m.kill_and_wait(p.pid, timeout=2)
        p.wait(5)
    finally:
        p.kill()
    assert not m.alive(p.pid) and m.cmdline(p.pid) is None
    assert m.send_signal(p.pid) is False
    assert not m.alive(None)


def test_killing_a_detached_program_takes_its_helpers_along(tmp_path):
    """As a killed UML guest's helper processes must not live on (they keep its disk locked)."""
    m = Machine(env={})
    script = tmp_path / "guest.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {tmp_path}/helper\nexec sleep 301\n")
    script.chmod(0o755)
    pid = m.start_detached([str(script)], stdout=str(tmp_path / "out"))
    for _ in range(200):
        if (tmp_path / "helper").exists() and m.cmdline(pid) == ["sleep", "301"]:
            break
        time.sleep(0.02)
    helper = int((tmp_path / "helper").read_text())
    assert m.alive(helper)
    m.kill_and_wait(pid, timeout=0.2)
    for _ in range(100):
        if not m.alive(helper):
            break
        time.sleep(0.02)
    assert not m.alive(pid) and not m.alive(helper)
    assert m.alive(os.getpid())             # the caller's own group is never signalled


def test_a_fault_reaches_a_real_command(mln, tmp_path, monkeypatch):
    """Through the CLI, as a test of another command would use it."""
    src = tmp_path / "t.img"
    src.write_bytes(b"\0" * 4096)
    monkeypatch.setenv("MLN_FAULTS", "fail@--sparse=always")
    import mln_core.machine as machine
    monkeypatch.setattr(machine, "_LOCAL", {})
    code, _, err = mln("-T", str(tmp_path / "templates"), "register_template", "-t", str(src), "-n", "x.img")
    assert code == 1 and "injected fault" in err and "Traceback" not in err
    assert not (tmp_path / "templates" / "x.img").exists()
