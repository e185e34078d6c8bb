"""start, status, stop of Xen hosts: the ``xl`` commands mln runs, against a FAKE ``xl``
(``fake_xl.py``, first on PATH). The project switch is a real Linux bridge, made on start
and deleted on stop (``mln_env`` fails the test if a bridge is left)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import FakeXl, copy_case

pytestmark = pytest.mark.root


@pytest.fixture
def ldaptest(xen_env, fake_xl):
    if os.geteuid() != 0:
        pytest.skip("bridges need root")
    path = copy_case(xen_env, "ldaptest")
    r = xen_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    fake_xl.clear()
    return xen_env


def _is_bridge(name: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{name}/bridge")


def test_start_status_stop(ldaptest, fake_xl: FakeXl):
    env = ldaptest
    pdir = str(env.projects / "ldaptest")
    r = env.mln("start", "-p", "ldaptest")
    assert r.returncode == 0, r.output
    creates = [c for c in fake_xl.calls() if c["argv"][0] == "create"]
    assert sorted(c["argv"] for c in creates) == [["create", "ldapclient_xen.cfg"],
                                                  ["create", "ldapserver_xen.cfg"]]
    assert all(c["cwd"] == pdir for c in creates)          # run in the project directory
    # before creating, mln asked whether the hosts were up
    assert ["list", "ldapclient.ldaptest"] in fake_xl.argvs()
    assert _is_bridge("lan.ldaptest")                       # the switch: a real Linux bridge
    assert set(fake_xl.domains()) == {"ldapclient.ldaptest", "ldapserver.ldaptest"}

    fake_xl.clear()
    r = env.mln("status", "-p", "ldaptest")
    assert r.returncode == 0, r.output
    assert "ldaptest host ldapclient up" in r.stdout and "ldaptest host ldapserver up" in r.stdout
    assert "ldaptest switch lan up" in r.stdout
    assert sorted(fake_xl.argvs()) == [["list", "ldapclient.ldaptest"], ["list", "ldapserver.ldaptest"]]

    # the client's domain goes away (crashed and destroyed): status says so
    fake_xl.set_domains({"ldapserver.ldaptest": "-b----"})
    r = env.mln("status", "-p", "ldaptest")
    assert r.returncode == 1
    assert "ldaptest host ldapclient down" in r.stdout and "ldaptest host ldapserver up" in r.stdout
    # a paused domain is up, with a detail
    fake_xl.set_domains({"ldapserver.ldaptest": "--p---"})
    r = env.mln("status", "-p", "ldaptest", "-h", "ldapserver")
    assert "ldaptest host ldapserver up (paused)" in r.stdout
    fake_xl.set_domains({"ldapserver.ldaptest": "-b----"})

    fake_xl.clear()
    r = env.mln("stop", "-p", "ldaptest")
    assert r.returncode == 0, r.output
    stops = [a for a in fake_xl.argvs() if a[0] in ("shutdown", "destroy")]
    assert stops == [["shutdown", "ldapserver.ldaptest"]]   # only the running one, cleanly
    assert fake_xl.domains() == {}
    assert not os.path.exists("/sys/class/net/lan.ldaptest")

    # start again, then a hard stop
    assert env.mln("start", "-p", "ldaptest").returncode == 0
    fake_xl.clear()
    r = env.mln("stop", "-p", "ldaptest", "-H")
    assert r.returncode == 0, r.output
    assert sorted(a for a in fake_xl.argvs() if a[0] in ("shutdown", "destroy")) == [
        ["destroy", "ldapclient.ldaptest"], ["destroy", "ldapserver.ldaptest"]]
    assert fake_xl.domains() == {} and not os.path.exists("/sys/class/net/lan.ldaptest")


def test_slow_shutdown_is_waited_for_then_destroyed(ldaptest, fake_xl: FakeXl):
    env = ldaptest
    assert env.mln("start", "-p", "ldaptest", "-h", "ldapserver").returncode == 0
    env.env["FAKE_XL_SLOW_SHUTDOWN"] = "1"           # the guest never finishes shutting down
    fake_xl.clear()
    r = env.mln("stop", "-p", "ldaptest", "-h", "ldapserver", "-w", "1")
    assert r.returncode == 0, r.output
    argvs = fake_xl.argvs()
    assert ["shutdown", "ldapserver.ldaptest"] in argvs and ["destroy", "ldapserver.ldaptest"] in argvs
    assert argvs.index(["shutdown", "ldapserver.ldaptest"]) < argvs.index(["destroy", "ldapserver.ldaptest"])
    assert "did not stop" in r.output
    del env.env["FAKE_XL_SLOW_SHUTDOWN"]
    assert env.mln("stop", "-p", "ldaptest").returncode == 0      # takes the bridge down


SAVE = """
import sys
from mln_core.config import load_config
from mln_core.context import Context
from mln_core.lifecycle import Engine
from mln_core.plugins import PluginManager
from mln_backends import xen
pm = PluginManager()
pm.load()
ctx = Context(config=load_config(), pm=pm)
loaded = Engine(ctx).open(sys.argv[1])
print(xen.save(loaded.project.hosts[sys.argv[2]], ctx))
"""


def test_saved_state_is_restored(ldaptest, fake_xl: FakeXl):
    """A ``<host>.ram`` (from the backend's ``save`` helper) makes start restore the guest
    instead of creating it, and the file is removed (spec 7.1)."""
    env = ldaptest
    assert env.mln("start", "-p", "ldaptest", "-h", "ldapclient").returncode == 0
    p = subprocess.run([sys.executable, "-c", SAVE, "ldaptest", "ldapclient"], env=env.env, cwd=env.root,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ram = env.projects / "ldaptest" / "ldapclient.ram"
    assert p.stdout.strip() == str(ram) and ram.exists()
    assert ["save", "ldapclient.ldaptest", str(ram)] in fake_xl.argvs()
    assert fake_xl.domains() == {}
    fake_xl.clear()
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode == 0, r.output
    assert [a for a in fake_xl.argvs() if a[0] in ("create", "restore")] == [["restore", "ldapclient.ram"]]
    assert not ram.exists()
    assert set(fake_xl.domains()) == {"ldapclient.ldaptest"}
    assert env.mln("stop", "-p", "ldaptest").returncode == 0


def test_xl_failure_is_reported(ldaptest, fake_xl: FakeXl):
    """A failing ``xl create`` is one clear error naming the host and xl's message."""
    env = ldaptest
    (env.projects / "ldaptest" / "ldapclient_xen.cfg").rename(env.projects / "ldaptest" / "moved.cfg")
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode != 0
    assert "ldapclient" in r.output and "ldapclient_xen.cfg is missing" in r.output
    (env.projects / "ldaptest" / "moved.cfg").rename(env.projects / "ldaptest" / "ldapclient_xen.cfg")
    # xl's own complaint reaches the user
    cfg = env.projects / "ldaptest" / "ldapclient_xen.cfg"
    text = cfg.read_text()
    cfg.write_text(text.replace('name = "ldapclient.ldaptest"', ""))
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode != 0
    assert "host ldapclient" in r.output and "'xl create ldapclient_xen.cfg' failed (exit 1)" in r.output
    assert "Domain name must be specified." in r.output
    cfg.write_text(text)
    fake_xl.set_domains({"ldapclient.ldaptest": "-b----"})      # someone else started it
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode != 0 and "already running" in r.output
    fake_xl.set_domains({})
    r = env.mln("stop", "-p", "ldaptest")
    assert r.returncode == 0, r.output


def test_status_without_xl_is_down(xen_env):
    """Where no xl is installed, no Xen guest of ours can run: status says down, no error."""
    path = copy_case(xen_env, "ldaptest")
    assert xen_env.mln("build", "-f", str(path)).returncode == 0
    xen_env.env["PATH"] = os.path.dirname(sys.executable) + ":/nonexistent"
    r = xen_env.mln("status", "-p", "ldaptest")
    assert "ldaptest host ldapclient down" in r.stdout, r.output
