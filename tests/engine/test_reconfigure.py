"""``mln reconfigure`` / ``mln rc`` on real (User-Mode Linux) guests: guest files are
written again from the stored project, running hosts are stopped and started again, the
others keep running, ``-h`` selects hosts, ``-B`` makes the disks afresh, ``-S`` starts
them, an unknown host changes nothing and a failure leaves the disks as they were."""
from __future__ import annotations

import json

import pytest

from mln_backends.imagefs import Ext4Image
from tests.plugins.helpers import read

pytestmark = pytest.mark.guests

PROJECT = """global { project rc }
superclass node {
    uml
    template busybox.ext4
    memory 64M
    startup {
        echo "MLN-CHECK up $(hostname)"
    }
}
host a { superclass node }
host b { superclass node }
host c { superclass node }
"""


def pid(env, h: str) -> int:
    return int((env.projects / "rc" / "hosts" / h / "pid").read_text())


def up(env) -> dict[str, str]:
    r = env.mln("status", "-p", "rc", "--format", "json")
    return {x["name"]: x["state"] for x in json.loads(r.stdout) if x["kind"] == "host"}


def disk(env, h: str):
    return env.projects / "rc" / "images" / h


def version(env) -> str:
    return (env.projects / "rc" / "version").read_text()


def test_reconfigure_restores_guest_files_restarts_running_hosts_only(mln_env):
    env = mln_env
    env.write("rc.mln", PROJECT)
    assert env.mln("build", "-f", "rc.mln").returncode == 0
    for h in ("a", "b"):
        assert env.mln("start", "-p", "rc", "-h", h).returncode == 0
    for h in ("a", "b"):
        env.wait_console("rc", h, rf"MLN-CHECK up {h}")
    pids, v = {h: pid(env, h) for h in ("a", "b")}, version(env)
    with Ext4Image(str(disk(env, "c"))) as g:          # c is down: its guest files changed by hand
        g.remove("/etc/hostname")
        g.write_text("/root/mine", "written by the guest\n")

    # an unknown host is refused before anything is done
    r = env.mln("rc", "-p", "rc", "-h", "a:nope")
    assert r.returncode == 1 and "no host nope" in r.stderr and "its hosts: a, b, c" in r.stderr, r.output
    assert {h: pid(env, h) for h in ("a", "b")} == pids and version(env) == v
    assert read(disk(env, "c"), "/etc/hostname") is None

    # -h a:c: a (running) is stopped and started again, c (down) stays down, b is not touched
    r = env.mln("reconfigure", "-p", "rc", "-h", "a:c")
    assert r.returncode == 0, r.output
    assert "a: individualized again into a copy of its disk; running: stopped first" in r.stderr
    assert "PROJECT rc RECONFIGURED (a, c; version 2)" in r.stderr
    assert read(disk(env, "c"), "/etc/hostname") == "c\n"
    assert read(disk(env, "c"), "/root/mine") == "written by the guest\n"   # a copy of its disk: kept
    assert up(env) == {"a": "up", "b": "up", "c": "down"}
    assert pid(env, "a") != pids["a"] and pid(env, "b") == pids["b"]
    assert not (env.projects / "rc" / "upgrade.journal").exists()
    env.wait_console("rc", "a", r"MLN-CHECK up a")

    # a failure names the host, leaves the disks as they were and starts again what ran
    template = env.templates / "busybox.ext4"
    aside = env.root / "busybox.aside"
    template.rename(aside)
    try:
        pid_a = pid(env, "a")
        r = env.mln("rc", "-p", "rc", "-B", "-h", "a:c")
    finally:
        aside.rename(template)
    assert r.returncode == 1 and "mln: error: host a: create disk" in r.stderr, r.output
    assert "putting project rc back as it was" in r.stderr
    assert up(env) == {"a": "up", "b": "up", "c": "down"} and pid(env, "a") != pid_a
    assert read(disk(env, "c"), "/root/mine") == "written by the guest\n" and version(env) == "2\n"

    # -B: c's disk made afresh from the template; -S: started although it was down
    r = env.mln("rc", "-p", "rc", "-B", "-S", "-h", "c")
    assert r.returncode == 0, r.output
    assert read(disk(env, "c"), "/root/mine") is None and read(disk(env, "c"), "/etc/hostname") == "c\n"
    assert up(env)["c"] == "up" and pid(env, "b") == pids["b"]
    env.wait_console("rc", "c", r"MLN-CHECK up c")
    assert env.mln("stop", "-p", "rc").returncode == 0
