"""``mln upgrade`` on real (User-Mode Linux) guests: the plan, what it changes and what it
leaves alone, and all or nothing when a step fails or mln is killed at any step."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.guests

HEAD = """global {{ project {project} }}
superclass node {{
    uml
    template busybox.ext4
    memory 64M
    startup {{
        echo "MLN-CHECK hostname $(hostname) mem $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
        do
        ping -c 1 -W 2 $peer > /dev/null && break
        done
        ping -c 2 $peer && echo "MLN-CHECK ping $peer ok"
    }}
}}
switch lan {{ }}
"""


def host(name: str, n: int, peer: int, switch: str = "lan", net: str = "10.0.0", extra: str = "") -> str:
    return (f"host {name} {{\n    superclass node\n    $peer = {net}.{peer}\n{extra}"
            f"    network eth0 {{\n        switch {switch}\n        address {net}.{n}\n"
            f"        netmask 255.255.255.0\n    }}\n}}\n")


def project(name: str, hosts: list[str], switches: str = "") -> str:
    return HEAD.format(project=name) + switches + "".join(hosts)


def pid(env, proj: str, h: str) -> int:
    return int((env.projects / proj / "hosts" / h / "pid").read_text())


def status(env, proj: str) -> dict[str, str]:
    r = env.mln("status", "-p", proj, "--format", "json")
    return {f"{x['kind']} {x['name']}": x["state"] for x in json.loads(r.stdout)}


def snapshot(env, proj: str) -> dict:
    """What a user would compare: the stored file, version, disks and what runs."""
    pdir = env.projects / proj
    return {"source": (pdir / f"{proj}.mln").read_text(), "version": (pdir / "version").read_text(),
            "images": sorted(p.name for p in (pdir / "images").iterdir()),
            "status": status(env, proj),
            "projects dir": sorted(p.name for p in env.projects.iterdir())}


OLD = ["a", "b", "c"]


def pings(env, proj: str, h: str) -> int:
    return len(re.findall(r"MLN-CHECK ping \S+ ok", env.console(proj, h)))


def settled(env, proj: str, before: dict[str, tuple[int, int]], timeout: float = 60) -> None:
    """Wait until every host that was started again since ``before`` ({host: (pid,
    pings)}) has run its startup block (a guest still booting is slow to shut down)."""
    end = time.monotonic() + timeout
    for h, (old_pid, n) in before.items():
        if pid(env, proj, h) == old_pid:
            continue
        while pings(env, proj, h) <= n:
            assert time.monotonic() < end, f"{h} did not boot again:\n{env.console(proj, h)[-2000:]}\n{disk_report(env, proj, h)}"
            time.sleep(0.3)


def disk_report(env, proj: str, h: str) -> str:
    """What a failed boot needs looked at: the project's images and a read-only fsck of the host's disk."""
    img = env.projects / proj / "images" / h
    listing = "\n".join(f"{p.name} {p.stat().st_size}" for p in sorted(img.parent.iterdir()))
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    return f"images:\n{listing}\ne2fsck -fn {img.name}: exit {fsck.returncode}\n{fsck.stdout[-1500:]}{fsck.stderr[-500:]}"


def old_project(name="up") -> str:
    return project(name, [host("a", 1, 2), host("b", 2, 1), host("c", 3, 1)])


def new_project(name="up") -> str:
    """c removed, b's memory raised, d added on a new switch, a untouched."""
    return project(name, [host("a", 1, 2), host("b", 2, 1, extra="    memory 96M\n"),
                          host("d", 4, 4, switch="lan2", net="10.0.1")], switches="switch lan2 { }\n")


@pytest.fixture
def running(mln_env):
    env = mln_env
    env.write("up.mln", old_project())
    r = env.mln("build", "-f", "up.mln")
    assert r.returncode == 0, r.output
    r = env.mln("start", "-p", "up")
    assert r.returncode == 0, r.output
    for h, peer in (("a", 2), ("b", 1), ("c", 1)):
        env.wait_console("up", h, rf"MLN-CHECK ping 10\.0\.0\.{peer} ok")
    return env


def test_plan_of_a_running_project_changes_nothing(running):
    env = running
    env.write("new.mln", new_project())
    before, pid_a = snapshot(env, "up"), pid(env, "up", "a")
    r = env.mln("upgrade", "-f", "new.mln", "-s", "--format", "json")
    assert r.returncode == 0, r.output
    plan = json.loads(r.stdout)
    assert set(plan) >= {"added", "removed", "rebuilt", "restarted", "reconfigured_live", "untouched"}
    names = {k: sorted(x.get("host") or "switch " + x["switch"] for x in plan[k])
             for k in ("added", "removed", "rebuilt", "restarted", "reconfigured_live", "untouched")}
    assert names == {"added": ["d", "switch lan2"], "removed": ["c"], "rebuilt": [], "restarted": ["b"],
                     "reconfigured_live": [], "untouched": ["a", "switch lan"]}
    b = plan["restarted"][0]
    assert [c["kind"] for c in b["changes"]] == ["memory"] and "64M -> 96M" in b["reasons"][0]
    assert plan["version"] == 1 and plan["new_version"] == 2
    # the text plan says the same; without a terminal and without -r nothing is done either
    r = env.mln("upgrade", "-f", "new.mln")
    assert r.returncode == 1 and "add -r" in r.stderr
    assert "host c" in r.stdout and "memory 64M -> 96M" in r.stdout
    assert snapshot(env, "up") == before and pid(env, "up", "a") == pid_a


def test_upgrade_adds_removes_restarts_and_leaves_the_rest_running(running):
    env = running
    env.write("new.mln", new_project())
    pid_a, pid_c = pid(env, "up", "a"), pid(env, "up", "c")
    console_a = env.console("up", "a")
    r = env.mln("upgrade", "-f", "new.mln", "-r")
    assert r.returncode == 0, r.output
    assert "UPGRADED (version 2)" in r.stderr
    assert status(env, "up") == {"host a": "up", "host b": "up", "host d": "up",
                                 "switch lan": "up", "switch lan2": "up"}
    # a: the same process, its console log goes on
    assert pid(env, "up", "a") == pid_a
    assert env.console("up", "a").startswith(console_a)
    # b: restarted with the new memory, and it still reaches a
    log_b = env.wait_console("up", "b", r"MLN-CHECK hostname b mem \d+[\s\S]*MLN-CHECK hostname b mem \d+")
    mems = [int(m) for m in re.findall(r"MLN-CHECK hostname b mem (\d+)", log_b)]
    assert mems[-1] > mems[0] + 10000, mems          # 32 MB more; what the kernel keeps varies
    # d: built and started on the new switch (it pings itself: alone there)
    env.wait_console("up", "d", r"MLN-CHECK ping 10\.0\.1\.4 ok")
    # c: its process and disk are gone
    assert not Path(f"/proc/{pid_c}").exists()
    assert sorted(p.name for p in (env.projects / "up" / "images").iterdir()) == ["a", "b", "d"]
    assert not (env.projects / "up" / "hosts" / "c").exists()
    assert (env.projects / "up" / "version").read_text().strip() == "2"
    assert "memory 96M" in (env.projects / "up" / "up.mln").read_text()
    # again: nothing to do
    r = env.mln("upgrade", "-f", "new.mln", "-r")
    assert r.returncode == 0 and "nothing changes" in r.stdout
    assert (env.projects / "up" / "version").read_text().strip() == "2"
    assert env.mln("stop", "-p", "up").returncode == 0


def test_a_superclass_change_reaches_exactly_its_hosts(mln_env):
    env = mln_env
    text = project("sc", [host("a", 1, 2), host("b", 2, 1)]) + \
        "superclass big { superclass node\n memory 64M }\nhost e { superclass big\n $peer = 10.0.0.1\n" \
        " network eth0 { switch lan\n address 10.0.0.5\n netmask 255.255.255.0 } }\n" \
        "host f { superclass node\n $peer = 10.0.0.1\n memory 80M\n" \
        " network eth0 { switch lan\n address 10.0.0.6\n netmask 255.255.255.0 } }\n"
    env.write("sc.mln", text)
    assert env.mln("build", "-f", "sc.mln").returncode == 0
    env.write("sc2.mln", text.replace("    memory 64M\n", "    memory 72M\n", 1))   # in superclass node
    r = env.mln("upgrade", "-f", "sc2.mln", "-s", "--format", "json")
    assert r.returncode == 0, r.output
    plan = json.loads(r.stdout)
    changed = sorted(x["host"] for x in plan["rebuilt"])
    # a, b use node's memory; e's superclass big sets its own; f overrides it
    assert changed == ["a", "b"]
    assert sorted(x["host"] for x in plan["untouched"] if "host" in x) == ["e", "f"]
    r = env.mln("diff", "-p", "sc", "-f", "sc2.mln", "--format", "json")
    assert sorted(json.loads(r.stdout)["hosts"]) == ["a", "b"]
    r = env.mln("upgrade", "-f", "sc2.mln", "-r")
    assert r.returncode == 0, r.output
    assert "memory 72M" in (env.projects / "sc" / "sc.mln").read_text()
    # a host removed with -k: its disk is kept, named in the output
    without_f = text[:text.index("host f {")]
    env.write("sc3.mln", without_f.replace("    memory 64M\n", "    memory 72M\n", 1))
    r = env.mln("upgrade", "-f", "sc3.mln", "-r", "-k")
    assert r.returncode == 0, r.output
    kept = env.projects / "sc" / "kept" / "f" / "f"
    assert kept.is_file() and str(kept.parent) in r.stderr
    assert not (env.projects / "sc" / "images" / "f").exists()
    assert (env.projects / "sc" / "version").read_text().strip() == "3"


def test_upgrade_refuses_what_it_cannot_do(mln_env):
    env = mln_env
    env.write("x.mln", project("x", [host("a", 1, 2, extra="    size 200M\n")]))
    r = env.mln("upgrade", "-f", "x.mln", "-r")
    assert r.returncode == 1 and "no built project 'x'" in r.stderr and "mln build" in r.stderr
    assert env.mln("build", "-f", "x.mln").returncode == 0
    env.write("x2.mln", project("x", [host("a", 1, 2, extra="    size 100M\n")]))
    r = env.mln("upgrade", "-f", "x2.mln", "-r")
    assert r.returncode == 1 and "never shrinks" in r.stderr and "host a" in r.stderr
    env.write("x3.mln", project("x", [host("a", 1, 2, extra="    size 200M\n    service_host far\n")]))
    r = env.mln("upgrade", "-f", "x3.mln", "-s")
    assert r.returncode == 1 and "service host far is not a server mln.conf knows" in r.stderr
    env.write("y.mln", project("y", [host("a", 1, 2)]))
    r = env.mln("upgrade", "-f", "y.mln", "-p", "x", "-r")
    assert r.returncode == 1 and "names project 'y', not 'x'" in r.stderr
    for r in (env.mln("upgrade", "-f", "x2.mln", "-r"), env.mln("upgrade", "-f", "y.mln", "-p", "x")):
        assert "Traceback" not in r.output
    assert (env.projects / "x" / "version").read_text().strip() == "1"


def test_a_failure_or_a_kill_at_each_step_leaves_the_old_project_running(running):
    env = running
    env.write("new.mln", new_project())
    env.write("old.mln", old_project())
    before = snapshot(env, "up")
    pid_a = pid(env, "up", "a")
    # the steps of this upgrade (the complete run at the end shows there are no others); a
    # fault at each step around the running guests (a stopped project's upgrade has one at
    # every step: the test below)
    steps = ["stop b", "build switch lan2", "build host d", "configure host b", "commit file 1", "commit file 3",
             "stop removed c", "start switches", "start b", "start d"]
    around_guests = ["stop b", "start d"]     # (CI time: a fault at every step of a stopped project's: below)
    for n, step in enumerate(around_guests):
        mode = "fail" if n % 2 == 0 else "kill"
        env.env["MLN_FAULTS"] = f"{mode}@upgrade up: {step}#1"
        was = {h: (pid(env, "up", h), pings(env, "up", h)) for h in OLD}
        r = env.mln("upgrade", "-f", "new.mln", "-r")
        assert r.returncode != 0, f"{mode} at {step}: {r.output}"
        del env.env["MLN_FAULTS"]
        if mode == "kill":
            st = env.mln("status", "-p", "up")          # any command puts the project back
            assert "interrupted" in st.stderr, st.output
        after = snapshot(env, "up")
        assert after == before, f"after a {mode} at '{step}':\n{r.output}"
        assert pid(env, "up", "a") == pid_a, f"a was restarted by a {mode} at '{step}'"
        settled(env, "up", was)
    env.env["MLN_TRACE_COMMANDS"] = "1"
    r = env.mln("upgrade", "-f", "new.mln", "-r")
    del env.env["MLN_TRACE_COMMANDS"]
    assert r.returncode == 0, r.output
    traced = re.findall(r"^\$ mln-step 'upgrade up: (.*)'$", r.stderr, re.M)
    assert set(traced) - set(steps) <= {f"commit file {n}" for n in range(1, 100)}, traced
    assert set(steps) <= set(traced), traced
    assert status(env, "up") == {"host a": "up", "host b": "up", "host d": "up",
                                 "switch lan": "up", "switch lan2": "up"}
    assert pid(env, "up", "a") == pid_a
    assert env.mln("stop", "-p", "up").returncode == 0


def test_a_failure_or_a_kill_at_every_step_of_a_stopped_project(mln_env):
    env = mln_env
    env.write("old.mln", old_project("st"))
    env.write("new.mln", new_project("st"))
    assert env.mln("build", "-f", "old.mln").returncode == 0
    env.env["MLN_TRACE_COMMANDS"] = "1"                       # a complete run, traced
    r = env.mln("upgrade", "-f", "new.mln", "-r")
    del env.env["MLN_TRACE_COMMANDS"]
    assert r.returncode == 0, r.output
    steps = re.findall(r"^\$ mln-step 'upgrade st: (.*)'$", r.stderr, re.M)
    assert "build host d" in steps and "commit file 1" in steps and "stop b" not in steps, steps
    assert env.mln("upgrade", "-f", "old.mln", "-r").returncode == 0     # back again
    before = snapshot(env, "st")
    disks = {p.name: p.read_bytes() for p in (env.projects / "st" / "images").iterdir()}
    for n, step in enumerate(steps):          # (CI time: at each step a failure or a kill, in turn)
        for mode in (("fail", "kill") if n % 2 == 0 else ("kill", "fail"))[:1]:
            env.env["MLN_FAULTS"] = f"{mode}@upgrade st: {step}#1"
            r = env.mln("upgrade", "-f", "new.mln", "-r")
            del env.env["MLN_FAULTS"]
            assert r.returncode != 0, f"{mode} at {step}: {r.output}"
            if mode == "kill":
                assert "interrupted" in env.mln("status", "-p", "st").stderr, f"kill at {step}"
            assert snapshot(env, "st") == before, f"after a {mode} at '{step}'"
            now = {p.name: p.read_bytes() for p in (env.projects / "st" / "images").iterdir()}
            assert now == disks, f"a disk changed after a {mode} at '{step}'"
            assert not list(env.projects.glob(".st.upgrade-*")), f"staging left after a {mode} at '{step}'"
    assert env.mln("upgrade", "-f", "new.mln", "-r").returncode == 0
    assert sorted(p.name for p in (env.projects / "st" / "images").iterdir()) == ["a", "b", "d"]
