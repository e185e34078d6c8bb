"""``mln class`` on real (User-Mode Linux) guests: the documented classroom lab
(contrib/classroom: per group two hosts and a switch, ``$group`` in names and
addresses) copied 10 times from one table with one command; every copy started; each
guest reaches its partner and not another copy's guest; one copy reset while the
others run on; everything removed again."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.guests

CLASSROOM = Path(__file__).resolve().parents[2] / "contrib" / "classroom"
N = 10                      # (CI time: 20 copies took a minute; the isolation shows with 10)
PROJECTS = [f"oscourse-g{g:02d}" for g in range(1, N + 1)]


def hosts(g: int) -> list[str]:
    return [f"linux{g}", f"desktop{g}"]


def pids(env) -> dict[tuple[str, str], int]:
    out = {}
    for g, p in enumerate(PROJECTS, 1):
        for h in hosts(g):
            out[(p, h)] = int((env.projects / p / "hosts" / h / "pid").read_text())
    return out


def class_status(env) -> dict[str, str]:
    r = env.mln("class", "status", "oscourse", "--format", "json")
    return {row["copy"]: row["state"] for row in json.loads(r.stdout)}


def typed(env, project: str, host: str, lines: str, marker: str) -> str:
    """Type ``lines`` into the host's console; the console log once ``marker`` is in it."""
    r = env.mln("console", "-p", project, "-h", host, "-w", "3", input="\n" + lines)
    assert r.returncode == 0, r.output
    return env.wait_console(project, host, marker, timeout=30)


def test_ten_copies_of_a_course_lab(mln_env):
    env = mln_env
    # one command, one table: N copies, each its own project
    rows = (CLASSROOM / "groups.csv").read_text().splitlines(keepends=True)
    head = [x for x in rows if x.startswith("#") or x.startswith("copy,")]
    table = env.root / "groups.csv"                 # the documented table's first N groups
    table.write_text("".join(head + [x for x in rows if x not in head and x.strip()][:N]))
    r = env.mln("class", "build", "-f", str(CLASSROOM / "lab.mln"), "-t", str(table), "-j", "2", "-q")
    assert r.returncode == 0, r.output
    assert sorted(p.name for p in env.projects.iterdir() if p.is_dir() and not p.name.startswith(".")) == PROJECTS
    assert "host linux7 {" in (env.projects / "oscourse-g07" / "oscourse-g07.mln").read_text()

    r = env.mln("class", "start", "oscourse", "-j", "4", "-q")
    assert r.returncode == 0, r.output
    assert class_status(env) == {f"g{g:02d}": "up" for g in range(1, N + 1)}
    assert env.mln("class", "status", "oscourse", "g0*").returncode == 0      # every copy listed is up

    # every guest reaches its partner, and at boot did not reach the neighbouring group
    for g, p in enumerate(PROJECTS, 1):
        for h in hosts(g):
            log = env.wait_console(p, h, rf"LAB {h} (reaches group|is cut off from group) \d+", timeout=150)
            assert f"LAB {h}: group {g}, owner " in log
            assert re.search(rf"LAB {h} reaches its partner 10\.0\.{g}\.[12]\b", log), log[-2000:]
            assert re.search(rf"LAB {h} is cut off from group {g + 1 if g % 2 else g - 1}\b", log), log[-2000:]

    # now that every copy runs: a guest reaches its partner and not another copy's guests,
    # though they are all in one /16 (only the switches keep them apart); then leave a mark
    log = typed(env, "oscourse-g05", "linux5",
                "P=PROBE\n"          # the output says PROBE-..., the command typed (echoed) $P-...
                "ping -c 1 -W 2 10.0.5.2 > /dev/null && echo $P-partner-ok\n"
                "ping -c 2 -W 1 10.0.6.1 > /dev/null && echo $P-reached-g06 || echo $P-isolated-g06\n"
                "ping -c 2 -W 1 10.0.10.2 > /dev/null && echo $P-reached-g10 || echo $P-isolated-g10\n"
                "echo student-work > /root/marker; sync; echo $P-marked\n",
                r"PROBE-(reached|isolated)-g10[\s\S]*PROBE-marked")
    assert "PROBE-partner-ok" in log and "PROBE-isolated-g06" in log and "PROBE-isolated-g10" in log, log[-2000:]
    assert "PROBE-reached" not in log

    # reset g05 while the others run: new disks, started again; nobody else touched
    before = pids(env)
    r = env.mln("class", "reset", "oscourse", "g05")
    assert r.returncode == 1 and "add -f to confirm" in r.stderr
    start = time.monotonic()
    r = env.mln("class", "reset", "oscourse", "g05", "-f")
    assert r.returncode == 0, r.output
    assert "copy g05: made anew and started again" in r.stderr
    reset_took = time.monotonic() - start
    after = pids(env)
    assert {k: v for k, v in after.items() if k[0] != "oscourse-g05"} == \
           {k: v for k, v in before.items() if k[0] != "oscourse-g05"}
    assert all(after[("oscourse-g05", h)] != before[("oscourse-g05", h)] for h in hosts(5))
    assert (env.projects / "oscourse-g05" / "version").read_text().strip() == "2"
    assert class_status(env) == {f"g{g:02d}": "up" for g in range(1, N + 1)}
    env.wait_console("oscourse-g05", "linux5", r"LAB linux5 reaches its partner 10\.0\.5\.2", timeout=90)
    log = typed(env, "oscourse-g05", "linux5", "P=PROBE; cat /root/marker 2>/dev/null || echo $P-no-marker\n",
                r"PROBE-no-marker|student-work\r?\n")
    assert "PROBE-no-marker" in log and "student-work" not in log, log[-1500:]
    assert reset_took < 30, reset_took

    # stop and remove: nothing is left
    r = env.mln("class", "stop", "oscourse", "-H", "-j", "4", "-q")
    assert r.returncode == 0, r.output
    assert set(class_status(env).values()) == {"down"}
    r = env.mln("class", "remove", "oscourse", "-f", "-j", "4", "-q")
    assert r.returncode == 0, r.output
    assert [p.name for p in env.projects.iterdir() if not p.name.endswith(".lock")] == []
    r = env.mln("class", "list")
    assert (r.returncode, r.stdout) == (0, "")
