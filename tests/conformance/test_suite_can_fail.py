"""The conformance suite fails backends that misbehave: it is run (pytest in a
subprocess, in the plugin's own environment, as a third party runs it) against Xen hosts
whose ``xl`` is broken on purpose, and must report each fault at its step.

* ``no_shutdown``: ``xl shutdown`` does nothing (only ``xl destroy`` stops a guest);
* ``save_runs_on``: ``xl save`` writes the file but the domain runs on (mln then destroys it);
* ``kill_nowhere``: a healthy backend, described with a kill point its build never reaches.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_XL = HERE.parent / "xen" / "fake_xl.py"

pytestmark = [pytest.mark.guests, pytest.mark.root]

BROKEN_XL = r'''#!{python}
"""fake_xl with a fault (BROKEN_XL): the backend is wrong, not the suite."""
import json, os, subprocess, sys
argv, mode = sys.argv[1:], os.environ.get("BROKEN_XL", "")
if mode == "no_shutdown" and argv[:1] == ["shutdown"]:
    sys.exit(0)
rc = subprocess.call([sys.executable, {fake!r}, *argv])
if mode == "save_runs_on" and argv[:1] == ["save"] and rc == 0:
    path = os.environ["FAKE_XL_STATE"]
    with open(path) as f:
        state = json.load(f)
    state[argv[1]] = "-b----"
    with open(path, "w") as f:
        json.dump(state, f)
sys.exit(rc)
'''

MODULE = r'''
import os
from pathlib import Path
from mln_core.testing import Backend, conformance_tests

TEMPLATE = Path({template!r})


def setup(env, request, mode):
    env.register_template(TEMPLATE / "busybox.ext4")
    xen = env.root / "xen"
    xen.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (xen / name).write_text("not a kernel: Xen cannot run here\n")
    with open(env.config, "a") as f:
        f.write(f"xen_kernel {{xen / 'vmlinuz'}}\nxen_ramdisk {{xen / 'initrd.img'}}\n")
    bindir = env.root / "bin"
    bindir.mkdir()
    (bindir / "xl").write_text(Path({broken!r}).read_text())
    (bindir / "xl").chmod(0o755)
    env.env.update(PATH=f"{{bindir}}:{{os.environ['PATH']}}", BROKEN_XL=mode,
                   FAKE_XL_LOG=str(env.root / "xl.log"), FAKE_XL_STATE=str(env.root / "xl.json"))


def xen(name, **kw):
    return Backend(name, hypervisor="xen", console=False, can_save=True, stop_wait=1,
                   setup=lambda env, request: setup(env, request, name), **kw)


TestBroken = conformance_tests(xen("no_shutdown"), xen("save_runs_on"),
                               xen("kill_nowhere", kill_at="no-such-command"))
'''


def test_the_suite_fails_broken_backends(tmp_path, test_template):
    broken = tmp_path / "broken_xl.py"
    broken.write_text(BROKEN_XL.format(python=sys.executable, fake=str(FAKE_XL)))
    module = tmp_path / "test_broken.py"
    module.write_text(MODULE.format(template=str(test_template), broken=str(broken)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    ids = [f"{module}::TestBroken::{t}" for t in ("test_lifecycle[no_shutdown-file]",
                                                 "test_lifecycle[save_runs_on-file]",
                                                 "test_kill_9_during_build[kill_nowhere-file]")]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = p.stdout
    assert p.returncode == 1, out[-5000:]
    assert re.search(r"^3 failed in ", out, re.M), out[-5000:]         # no pass, no error
    # each failure's report: from its header to the next one
    parts = re.split(r"^_+ TestBroken\.test_\w+\[(\w+)-file\] _+$", out, flags=re.M)
    report = dict(zip(parts[1::2], parts[2::2]))
    assert report.keys() == {"no_shutdown", "save_runs_on", "kill_nowhere"}, out[-5000:]
    assert "AssertionError: box did not shut down cleanly" in report["no_shutdown"], report["no_shutdown"]
    assert "AssertionError: after `mln stop -S`: box did not stop, mln destroyed it" in \
        report["save_runs_on"], report["save_runs_on"]
    assert "AssertionError: the build was not killed by MLN_FAULTS=kill@no-such-command (exit 0)" in \
        report["kill_nowhere"], report["kill_nowhere"]
