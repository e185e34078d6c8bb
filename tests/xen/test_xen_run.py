"""start, status, stop of Xen hosts: the ``xl`` commands mln runs, against a FAKE ``xl``
(``fake_xl.py``, first on PATH). The project switch is a real Linux bridge, made on start
and deleted on stop (``mln_env`` fails the test if a bridge is left)."""
from __future__ import annotations

import json
import os
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


def test_stop_save_then_start_restores(ldaptest, fake_xl: FakeXl):
    """``stop -S`` saves every running guest to ``hosts/<host>/<host>.ram`` with ``xl save``;
    status says "down (saved)"; start runs ``xl restore`` instead of ``xl create`` and
    deletes the file (spec 7.1)."""
    env = ldaptest
    pdir = env.projects / "ldaptest"
    ram = {h: pdir / "hosts" / h / f"{h}.ram" for h in ("ldapclient", "ldapserver")}
    assert env.mln("start", "-p", "ldaptest").returncode == 0
    fake_xl.clear()
    r = env.mln("stop", "-p", "ldaptest", "-S")
    assert r.returncode == 0, r.output
    assert sorted(a for a in fake_xl.argvs() if a[0] != "list") == [
        ["save", "ldapclient.ldaptest", f"{ram['ldapclient']}.part"],    # renamed when saved
        ["save", "ldapserver.ldaptest", f"{ram['ldapserver']}.part"]]    # no shutdown
    assert "ldapclient: saved; 'mln start' resumes it" in r.stderr and "warning" not in r.stderr
    assert all(p.exists() for p in ram.values()) and fake_xl.domains() == {}
    assert not any(os.path.exists(f"{p}.part") for p in ram.values())
    assert not os.path.exists("/sys/class/net/lan.ldaptest")               # the switch stopped

    r = env.mln("status", "-p", "ldaptest")
    assert r.returncode == 1                                               # down is down
    assert r.stdout.splitlines() == ["ldaptest host ldapclient down (saved)",
                                     "ldaptest host ldapserver down (saved)", "ldaptest switch lan down"]
    r = env.mln("status", "-p", "ldaptest", "--format", "json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert (rows["ldapclient"]["state"], rows["ldapclient"]["detail"]) == ("down", "saved")
    assert env.mln("status", "-p", "ldaptest", "-d").returncode == 0      # nothing is up
    assert env.mln("status", "-p", "ldaptest", "-u").returncode == 1

    fake_xl.clear()
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode == 0, r.output
    restores = [c for c in fake_xl.calls() if c["argv"][0] in ("create", "restore")]
    assert [c["argv"] for c in restores] == [["restore", "hosts/ldapclient/ldapclient.ram"]]
    assert restores[0]["cwd"] == str(pdir)
    assert not ram["ldapclient"].exists() and ram["ldapserver"].exists()
    assert set(fake_xl.domains()) == {"ldapclient.ldaptest"}
    r = env.mln("status", "-p", "ldaptest")
    assert "ldaptest host ldapclient up" in r.stdout and "ldaptest host ldapserver down (saved)" in r.stdout

    # one host saved with -h, the other one restored by a whole-project start
    assert env.mln("stop", "-p", "ldaptest", "-h", "ldapclient", "-S").returncode == 0
    fake_xl.clear()
    assert env.mln("start", "-p", "ldaptest").returncode == 0
    assert sorted(a for a in fake_xl.argvs() if a[0] in ("create", "restore")) == [
        ["restore", "hosts/ldapclient/ldapclient.ram"], ["restore", "hosts/ldapserver/ldapserver.ram"]]
    assert not any(p.exists() for p in ram.values())
    assert set(fake_xl.domains()) == {"ldapclient.ldaptest", "ldapserver.ldaptest"}
    assert env.mln("stop", "-p", "ldaptest").returncode == 0


def test_failed_restore_keeps_the_saved_state(ldaptest, fake_xl: FakeXl):
    """When ``xl restore`` fails, start fails naming the host and xl's message, and the
    saved state is kept (not replaced by a fresh boot)."""
    env = ldaptest
    ram = env.projects / "ldaptest" / "hosts" / "ldapclient" / "ldapclient.ram"
    assert env.mln("start", "-p", "ldaptest", "-h", "ldapclient").returncode == 0
    assert env.mln("stop", "-p", "ldaptest", "-h", "ldapclient", "-S").returncode == 0
    ram.write_text("not a saved domain\n")                                # corrupt
    fake_xl.clear()
    r = env.mln("start", "-p", "ldaptest", "-h", "ldapclient")
    assert r.returncode == 1
    assert "host ldapclient: start: restore Xen guest ldapclient.ldaptest: 'xl restore " \
           "hosts/ldapclient/ldapclient.ram' failed (exit 1)" in r.stderr
    assert "File has wrong magic number" in r.stderr
    assert f"the saved state {ram} is kept: delete it to boot the host afresh" in r.stderr
    assert [a for a in fake_xl.argvs() if a[0] in ("create", "restore")] == [
        ["restore", "hosts/ldapclient/ldapclient.ram"]]                   # no xl create after it
    assert ram.exists() and fake_xl.domains() == {}
    assert "ldaptest host ldapclient down (saved)" in env.mln("status", "-p", "ldaptest").stdout
    ram.unlink()                                                           # boot afresh
    fake_xl.clear()
    assert env.mln("start", "-p", "ldaptest", "-h", "ldapclient").returncode == 0
    assert [a for a in fake_xl.argvs() if a[0] in ("create", "restore")] == [["create", "ldapclient_xen.cfg"]]
    assert env.mln("stop", "-p", "ldaptest").returncode == 0


def test_failed_save_leaves_no_saved_state(ldaptest, fake_xl: FakeXl):
    """When ``xl save`` fails (here: the disk is full), ``stop -S`` fails naming the host and
    xl's message, the partial file is deleted (no ``.ram`` for the next start to restore) and
    the guest, which xl keeps running, is still up."""
    env = ldaptest
    hdir = env.projects / "ldaptest" / "hosts" / "ldapclient"
    assert env.mln("start", "-p", "ldaptest", "-h", "ldapclient").returncode == 0
    env.env["FAKE_XL_FAIL_SAVE"] = "1"
    fake_xl.clear()
    r = env.mln("stop", "-p", "ldaptest", "-h", "ldapclient", "-S")
    assert r.returncode == 1, r.output
    assert "save Xen guest ldapclient.ldaptest: 'xl save" in r.stderr and "No space left" in r.stderr
    assert ["save", "ldapclient.ldaptest", f"{hdir / 'ldapclient.ram'}.part"] in fake_xl.argvs()
    assert sorted(p.name for p in hdir.iterdir() if ".ram" in p.name) == []
    assert set(fake_xl.domains()) == {"ldapclient.ldaptest"}
    assert "ldaptest host ldapclient up" in env.mln("status", "-p", "ldaptest", "-h", "ldapclient").stdout
    # a whole project: every host is tried, the ones not saved keep running, and so do the switches
    assert env.mln("start", "-p", "ldaptest").returncode == 0
    r = env.mln("stop", "-p", "ldaptest", "-S")
    assert r.returncode == 1, r.output
    assert r.stderr.count("No space left") == 2
    assert "ldapclient, ldapserver could not be saved and still run (the switches stay up)" in r.stderr \
        or "ldapserver, ldapclient could not be saved and still run (the switches stay up)" in r.stderr
    assert env.mln("status", "-p", "ldaptest").returncode == 0          # all still up
    del env.env["FAKE_XL_FAIL_SAVE"]
    assert env.mln("stop", "-p", "ldaptest").returncode == 0


MIXED = """global {
    project mixed
}
host x {
    xen
    template busybox.ext4
}
host u {
    uml
    template busybox.ext4
    memory 64M
}
"""


@pytest.mark.guests
def test_stop_save_of_a_mixed_project_shuts_down_what_cannot_be_saved(mln_env):
    """UML cannot save: ``stop -S`` shuts the UML host down with a warning and saves the
    Xen host; the next start boots the one and restores the other."""
    kernel = mln_env.root / "vmlinuz"
    kernel.write_bytes(b"not a kernel: Xen cannot run here\n")
    with open(mln_env.config, "a") as f:
        f.write(f"xen_kernel {kernel}\n")
    fake_xl = FakeXl(mln_env)
    path = mln_env.write("mixed.mln", MIXED)
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "mixed")
    assert r.returncode == 0, r.output
    fake_xl.clear()
    r = mln_env.mln("stop", "-p", "mixed", "-S")
    assert r.returncode == 0, r.output
    assert "warning: u: uml hosts cannot be saved; shutting it down" in r.stderr
    assert "x: saved" in r.stderr and "warning: x" not in r.stderr
    ram = mln_env.projects / "mixed" / "hosts" / "x" / "x.ram"
    assert [a for a in fake_xl.argvs() if a[0] != "list"] == [["save", "x.mixed", f"{ram}.part"]]
    r = mln_env.mln("status", "-p", "mixed")
    assert r.stdout.splitlines() == ["mixed host x down (saved)", "mixed host u down"]
    fake_xl.clear()
    r = mln_env.mln("start", "-p", "mixed")
    assert r.returncode == 0, r.output
    assert [a for a in fake_xl.argvs() if a[0] != "list"] == [["restore", "hosts/x/x.ram"]]
    assert not ram.exists()
    assert mln_env.mln("status", "-p", "mixed").returncode == 0            # both up
    # a rebuild of a project with a saved host says that the saved state goes
    assert mln_env.mln("stop", "-p", "mixed", "-S").returncode == 0
    r = mln_env.mln("build", "-r", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "warning: replacing the project discards the saved state of x (mln stop -S)" in r.stderr
    assert mln_env.mln("status", "-p", "mixed").stdout.splitlines() == ["mixed host x down", "mixed host u down"]


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
