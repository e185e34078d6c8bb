"""Shared fixtures: an isolated mln set-up per test, the test template, and leak checks.

Tests that boot guests use ``mln_env``: its own config file (MLN_CONFIG), projects,
templates and files directories under the test's tmp_path, the busybox test template
registered (with its kernel and initrd for QEMU), and a runner for ``mln`` commands in a
subprocess. At the end it stops and removes whatever the test left and then fails the
test if any process, socket directory, tap, bridge or FUSE mount of it survived.
"""
from __future__ import annotations

import os
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mln_core.conformance import ConformanceEnv, isolated

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = Path(os.environ.get("MLN_TEST_TEMPLATE_DIR", "/var/cache/mln/test-template"))
QUICKSTART = ROOT / "contrib" / "quickstart" / "quickstart.mln"


def _have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


@pytest.fixture(scope="session")
def test_template() -> Path:
    """The busybox test template (built once per machine, cached in TEMPLATE_DIR)."""
    if os.geteuid() != 0:
        pytest.skip("guest tests need root")
    if not _have("debugfs", "qemu-img", "linux.uml", "vde_switch"):
        pytest.skip("guest tools are not installed (scripts/install-deps.sh)")
    r = subprocess.run(["bash", str(ROOT / "contrib/templates/build-test-template.sh"), str(TEMPLATE_DIR)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return TEMPLATE_DIR


class MlnEnv(ConformanceEnv):
    """The conformance suite's isolated set-up (its own mln.conf, directories, ``mln(...)``
    in a subprocess, leak checks), with the busybox test template registered (with its
    kernel and initrd for QEMU), the quickstart project and waiting for console lines."""

    def __init__(self, root: Path, template_dir: Path | None):
        super().__init__(root)
        if template_dir is not None:
            r = self.mln("register_template", "-t", str(template_dir / "busybox.ext4"),
                         "--kernel", str(template_dir / "vmlinux"), "--initrd", str(template_dir / "initrd.gz"),
                         "-m", "busybox test template")
            assert r.returncode == 0, r.output

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mln_core.cli", *args], env=self.env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def quickstart(self, hypervisor: str = "uml", project: str = "quickstart", switch_type: str | None = None,
                   node: str | None = None) -> Path:
        """The quickstart project under another name; ``node``: a line added to the
        superclass both hosts share (``filepath /x``, say)."""
        text = QUICKSTART.read_text().replace("$hypervisor = uml", f"$hypervisor = {hypervisor}")
        text = text.replace("project quickstart", f"project {project}")
        if node:
            text = text.replace("    template busybox.ext4\n", f"    template busybox.ext4\n    {node}\n", 1)
        if switch_type:
            text = text.replace("switch lan {\n}", f"switch lan {{\n    type {switch_type}\n}}")
        return self.write(f"{project}.mln", text)

    def wait_console(self, project: str, host: str, pattern: str, timeout: float = 90) -> str:
        """Wait until the host's console log matches ``pattern``; return the log."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.console(project, host)
            if rx.search(text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"{host}: no {pattern!r} in the console within {timeout} s:\n"
                             f"{self.console(project, host)[-3000:]}")


@pytest.fixture
def mln_env(tmp_path, test_template):
    """An isolated mln set-up with the test template registered; checks for leaks after
    (tests of two pytest runs on one machine take turns: network devices are counted
    machine-wide)."""
    with isolated(MlnEnv(tmp_path, test_template)) as env:
        yield env


@pytest.fixture
def mln_plain(tmp_path):
    """An isolated mln set-up without a template (for commands that boot nothing)."""
    return MlnEnv(tmp_path, None)
