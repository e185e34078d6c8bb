"""The ``libvirt`` backend on a private libvirtd (tests/libvirt/conftest.py): the quickstart
project's two guests reach each other, ``virsh`` shows their domains while they are
defined, and ``mln remove`` leaves no domain, saved image, tap, runtime directory or file.
Bad input: one error line naming the host, with the position where there is one.
The conformance suite runs the backend too (tests/conformance/builtins.py)."""
from __future__ import annotations

import os

import pytest

from mln_core.conformance import net_devices

pytestmark = [pytest.mark.root]


def _one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("mln: ")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def _doctor(env) -> dict:
    """The libvirt line of ``mln doctor`` (its hook alone: the whole command probes every plugin)."""
    from types import SimpleNamespace

    from mln_backends import libvirt
    from mln_core.config import Config
    from mln_core.machine import local
    cfg = Config()
    cfg.read(str(env.config))
    [found] = libvirt.mln_doctor(SimpleNamespace(config=cfg, on=lambda host=None: local()))
    assert found["name"] == "libvirt" and found["hypervisor"] == "libvirt"
    return found


@pytest.mark.guests
def test_quickstart_on_libvirt(libvirt_env):
    from tests.engine.test_e2e_guests import _check_quickstart_consoles
    env, lv = libvirt_env, libvirt_env.libvirtd
    devices = net_devices()
    found = _doctor(env)
    assert found["ok"] and "libvirt " in found["detail"] and lv.uri in found["detail"], found
    path = env.quickstart("libvirt")
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = env.mln("start", "-p", "quickstart")
    assert r.returncode == 0, r.output
    names = sorted(lv.running())
    assert [n.split("-")[0] for n in names] == ["alpha.quickstart", "beta.quickstart"], names
    _check_quickstart_consoles(env, "quickstart")
    r = env.mln("status", "-p", "quickstart")
    assert r.stdout.splitlines() == ["quickstart host alpha up", "quickstart host beta up",
                                     "quickstart switch lan up"], r.output
    out = env.mln("console", "-p", "quickstart", "-h", "beta", input="\necho MLN-$((6*7)); hostname\n")
    text = out.stdout.replace("\r", "")
    assert "MLN-42\n" in text and "\nbeta\n" in text, out.output
    xml = lv.virsh("dumpxml", names[0])
    assert "<domain type='qemu'" in xml and "managed='no'" in xml, xml

    r = env.mln("stop", "-p", "quickstart", "-w", "30")
    assert r.returncode == 0 and "did not stop" not in r.stderr, r.output   # ACPI shutdown worked
    assert "mln-guest: shutting down" in env.console("quickstart", "alpha")
    assert lv.running() == [] and sorted(lv.domains()) == names     # still defined
    r = env.mln("status", "-p", "quickstart")
    assert r.returncode == 1 and "quickstart host alpha down" in r.stdout, r.output

    # a cold start redefines the domain (same name and UUID); a hard stop destroys it; a
    # managed save is removed with the domain
    r = env.mln("start", "-p", "quickstart")
    assert r.returncode == 0 and lv.running() == names, r.output
    r = env.mln("stop", "-p", "quickstart", "-h", "beta", "-H")
    assert r.returncode == 0 and lv.running() == names[:1], r.output
    r = env.mln("stop", "-p", "quickstart", "-S")
    assert r.returncode == 0 and "alpha: saved" in r.stderr and lv.running() == [], r.output
    assert lv.saved_images() != []
    r = env.mln("status", "-p", "quickstart")
    assert r.stdout.splitlines()[:2] == ["quickstart host alpha down (saved)", "quickstart host beta down"], \
        r.output

    r = env.mln("remove", "-f", "-p", "quickstart")
    assert r.returncode == 0, r.output
    assert lv.domains() == [] and lv.saved_images() == []
    assert not (env.projects / "quickstart").exists()
    assert env.processes() == [] and env.runtime_dirs() == []
    assert net_devices() - devices == set()


def test_bad_input_is_one_line_naming_the_host(mln_plain, tmp_path):
    env = mln_plain
    text = ("global { project badlv }\nswitch hub1 { type vde }\n"
            "host a {\n  hypervisor libvirt\n  accel fast\n  vcpus none\n"
            "  network eth0 {\n    switch hub1\n  }\n  network eth22 {\n    switch /tmp/vde.ctl\n  }\n}\n")
    path = env.write("bad.mln", text)
    r = env.mln("check", "-f", str(path))
    assert r.returncode != 0 and "Traceback" not in r.output, r.output
    out = r.output
    assert "bad.mln:8:5: error: host a: eth0: switch 'hub1' is of type vde" in out, out
    assert "bad.mln:5:3: error: host a: accel must be auto, kvm or tcg, not 'fast'" in out, out
    assert "host a: eth22: libvirt hosts have interfaces eth0 to eth21 only" in out, out
    assert "bad.mln:11:5: error: host a: eth22: libvirt guests cannot join the vde socket" in out, out
    slirp = env.write("slirp.mln", "global { project slv }\nhost a {\n  hypervisor libvirt\n"
                                   "  network eth0 {\n    slirp\n  }\n}\n")
    r = env.mln("check", "-f", str(slirp))
    assert r.returncode != 0, r.output
    assert "host a eth0: libvirt hosts cannot have a slirp interface" in r.output, r.output


def test_unreachable_libvirt(mln_env, tmp_path):
    env = mln_env
    with open(env.config, "a") as f:
        f.write(f"libvirt_uri qemu:///system?socket={tmp_path}/none/libvirt-sock\n")
    path = env.quickstart("libvirt", project="nolv")
    r = env.mln("check", "-f", str(path))
    assert "hosts alpha, beta: cannot connect to libvirt" in r.output, r.output
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output           # building needs no libvirtd
    r = env.mln("start", "-p", "nolv")
    msg = _one_error_line(r)
    assert r.returncode == 1 and ("host alpha" in msg or "host beta" in msg), r.output
    assert "cannot connect to libvirt" in msg, r.output
    r = env.mln("status", "-p", "nolv")          # never started: down, without asking libvirt
    assert r.returncode == 1 and "nolv host alpha down" in r.stdout, r.output
    found = _doctor(env)
    assert not found["ok"] and "cannot connect to libvirt" in found["detail"] and found["remedy"], found
    r = env.mln("remove", "-f", "-p", "nolv")    # never started: nothing in libvirt to remove
    assert r.returncode == 0, r.output
    assert not os.path.exists(env.projects / "nolv")
