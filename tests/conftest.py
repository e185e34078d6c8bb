"""Shared fixtures: an isolated mln set-up per test, the test template, and leak checks.

Tests that boot guests use ``mln_env``: its own config file (MLN_CONFIG), projects,
templates and files directories under the test's tmp_path, the busybox test template
registered (with its kernel and initrd for QEMU), and a runner for ``mln`` commands in a
subprocess. At the end it stops and removes whatever the test left and then fails the
test if any process, socket directory, tap, bridge or FUSE mount of it survived.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mln_core.testing import machine_config

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


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self):
        return self.stdout + self.stderr


class MlnEnv:
    def __init__(self, root: Path, template_dir: Path | None):
        self.root = root
        self.projects = root / "projects"
        self.templates = root / "templates"
        self.files = root / "files"
        for d in (self.projects, self.templates, self.files):
            d.mkdir(parents=True, exist_ok=True)
        self.config = root / "mln.conf"
        self.config.write_text(f"projects {self.projects}\ntemplates {self.templates}\nfiles {self.files}\n"
                               + machine_config())
        self.env = {**os.environ, "MLN_CONFIG": str(self.config)}
        self.env.pop("MLN_DISABLE_PLUGINS", None)
        self.project_names: set[str] = set()
        if template_dir is not None:
            r = self.mln("register_template", "-t", str(template_dir / "busybox.ext4"),
                         "--kernel", str(template_dir / "vmlinux"), "--initrd", str(template_dir / "initrd.gz"),
                         "-m", "busybox test template")
            assert r.returncode == 0, r.output

    def mln(self, *args: str, timeout: float = 300, input: str | None = None) -> Run:
        p = subprocess.run([sys.executable, "-m", "mln_core.cli", *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout, input=input, cwd=self.root)
        return Run(p.returncode, p.stdout, p.stderr)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "mln_core.cli", *args], env=self.env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

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

    def console(self, project: str, host: str) -> str:
        path = self.projects / project / "hosts" / host / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

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

    # -- cleanup and leak checks ------------------------------------------------------------
    def processes(self) -> list[str]:
        """Processes whose command line mentions this environment or its runtime dirs."""
        marks = [str(self.root)] + self.runtime_dirs()
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state != "Z" and any(m in cmd for m in marks) and int(pid) not in _ancestors():
                found.append(f"{pid} {cmd.strip()}")
        return found

    def runtime_dirs(self) -> list[str]:
        from mln_backends.runtime import digest
        out = []
        for base in ("/run/mln", f"/tmp/mln-{os.getuid()}"):
            if not os.path.isdir(base):
                continue
            prefixes = {digest(os.path.realpath(p), n=10) for p in self.projects.glob("*") if p.is_dir()}
            prefixes |= {digest(os.path.realpath(self.projects / p), n=10) for p in self.project_names}
            out += [os.path.join(base, n) for n in os.listdir(base) if n.split("-")[0] in prefixes]
        return out

    def fuse_mounts(self) -> list[str]:
        """FUSE exports of this environment's images (their mount points are elsewhere)."""
        mine = {line.split("\t")[1].strip() for f in self.projects.glob(".*.build-*/helpers")
                for line in f.read_text().splitlines() if "\t" in line}
        with open("/proc/mounts") as f:
            return [line for line in f if "fuse" in line.split()[2] and
                    (str(self.root) in line or line.split()[1] in mine)]

    def cleanup(self) -> list[str]:
        """Stop and remove every project; return what was still left afterwards."""
        for pdir in list(self.projects.glob("*")):
            if pdir.is_dir() and not pdir.name.startswith("."):
                self.project_names.add(pdir.name)
                self.mln("stop", "-p", pdir.name, "-H", timeout=120)
                self.mln("remove", "-f", "-p", pdir.name, timeout=120)
        left = self.processes() + self.runtime_dirs() + self.fuse_mounts()
        for line in self.processes():
            try:
                os.kill(int(line.split()[0]), 9)
            except ProcessLookupError:
                pass
        for d in self.runtime_dirs():
            shutil.rmtree(d, ignore_errors=True)
        return left


def _ancestors() -> set[int]:
    """This process and its parents (pytest itself must not count as a leftover)."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            break
    return out


def _net_devices() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@pytest.fixture
def mln_env(tmp_path, test_template):
    """An isolated mln set-up with the test template registered; checks for leaks after.

    Network devices are checked machine-wide, so tests of two pytest runs on one machine
    take turns (a file lock), or each would count (and delete) the other's devices."""
    with open("/tmp/mln-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = _net_devices()
        env = MlnEnv(tmp_path, test_template)
        yield env
        left = env.cleanup()
        new_devices = _net_devices() - before
        for dev in new_devices:
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        assert not left, f"the test left these behind: {left}"
        assert not new_devices, f"the test left network devices behind: {sorted(new_devices)}"


@pytest.fixture
def mln_plain(tmp_path):
    """An isolated mln set-up without a template (for commands that boot nothing)."""
    return MlnEnv(tmp_path, None)
