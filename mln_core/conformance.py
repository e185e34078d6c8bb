"""The backend conformance suite: the scenarios every hypervisor and storage backend must pass.

A backend is described by a :class:`Backend` (and each storage it runs over by a
:class:`Storage`); :func:`conformance_tests` turns descriptions into a pytest test class,
one test per scenario and (backend, storage) pair::

    # test_conformance.py of your package
    from mln_core.testing import Backend, conformance_tests

    def setup(env, request):                   # once per scenario, before anything runs
        env.register_template("/srv/images/debian.ext4", name="debian.ext4")

    TestMyHypervisor = conformance_tests(
        Backend("myhv", template="debian.ext4", can_save=True, boot_log=r"login:", setup=setup))

Every scenario works like a user: it writes a project file and runs ``mln`` commands in
subprocesses (``mln_conformance_env``: an isolated mln.conf, projects, templates and files
directory), and checks what a user would see: exit codes, ``mln status`` lines, the
consoles, the disks (:attr:`Storage.disks`), that nothing runs after a stop and that
nothing at all is left after ``mln remove``. The scenarios:

* ``test_lifecycle``: build, status, start, "it runs", console, ``stop -S`` and start
  again (resumed from the saved memory if the backend saves, else booted afresh), stop,
  remove;
* ``test_rebuild``: ``build -r`` (new disks), rebuilds that fail (a missing ``files {}``
  source; the commands named by ``fail_at``) and leave the old project as it was, which
  then still starts;
* ``test_kill_9_during_build``: ``mln`` killed with SIGKILL in the middle of a build
  (``MLN_FAULTS=kill@...``, see ``mln_core.machine``), then a build that works; the same
  in the middle of a ``build -r``, which must leave the old project as it was.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

#: where a build is killed unless the backend or storage names another command (the
#: write of the second host's image: the first host is complete, the build is half done)
DEFAULT_KILL_AT = "debugfs -w#2"
#: tests that count the machine's network devices take turns on this lock
LOCK_FILE = "/tmp/mln-tests.lock"
PROJECT = "conform"


@dataclass(frozen=True)
class Backend:
    """A hypervisor backend under test.

    ``setup(env, request)`` prepares the environment once per scenario (register a
    template, put a tool on ``env.env["PATH"]``, add lines to ``env.config``); ``running(env,
    project, host)`` says from outside mln whether the guest runs; ``leftovers(env)`` lists
    what the backend keeps outside the project that must be gone after ``mln remove``."""
    name: str
    hypervisor: str = ""                 # the value of ``hypervisor`` (default: name)
    storages: tuple[str, ...] = ("file",)
    template: str = "busybox.ext4"
    memory: str = "96M"
    size: str = "100M"
    host_lines: str = ""                 # more lines in every host block
    switch_lines: str = ""               # lines in the switch block (``vmware``, say)
    can_save: bool = False               # ``stop -S`` saves the memory and start resumes it
    console: bool = True                 # ``mln console`` types into the guest's shell
    boot_log: str | None = None          # regex in hosts/<host>/console.log once it has booted
    boot_timeout: float = 180
    stop_wait: float = 30                # ``mln stop -w``
    running: Callable[[Any, str, str], bool] | None = None
    leftovers: Callable[[Any], list] | None = None
    setup: Callable[[Any, Any], None] | None = None
    kill_at: str | None = None           # command text to kill the build at (MLN_FAULTS kill@)
    fail_at: str | None = None           # a command of the build made to fail (fail@), or None

    @property
    def keyword(self) -> str:
        return self.hypervisor or self.name


def image_files(env, project: str, value=None) -> dict:
    """The disks of the default storage: the files in ``<project>/images``, as (inode,
    size, mtime): which file, and whether it was written."""
    d = env.projects / project / "images"
    if not d.is_dir():
        return {}
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


@dataclass(frozen=True)
class Storage:
    """A storage plugin under test. ``fixture`` names a pytest fixture whose value (a
    volume group, say) is given to ``host_lines``, ``disks`` and ``in_use``;
    ``disks(env, project, value)`` is {name: (identity, state...)} of the project's disks:
    the identity (an inode, a volume's UUID) is new when a disk is made again, the rest
    (size, mtime) changes when it is written; ``in_use(env, value)`` lists what a running host holds (loop
    devices...) and must be gone once it stops; ``leftovers(env, value)`` lists what must
    be gone once the project is removed (volumes of any name, say)."""
    name: str
    fixture: str | None = None
    host_lines: str | Callable[[Any], str] = ""
    disks: Callable[[Any, str, Any], dict] = image_files
    in_use: Callable[[Any, Any], list] | None = None
    leftovers: Callable[[Any, Any], list] | None = None
    kill_at: str | None = None
    fail_at: str | None = None


FILE = Storage("file")


# -- the environment: mln in subprocesses, isolated, with leak checks ----------------------------

@dataclass
class Run:
    """What an ``mln`` command gave: its exit status, standard output and error."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def exit_code(self) -> int:
        return self.returncode

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class ConformanceEnv:
    """An isolated mln set-up under ``root``: its own mln.conf (``MLN_CONFIG``; only this
    machine's settings), projects, templates and files directories; ``mln(*args)`` runs
    a command in a subprocess."""

    def __init__(self, root: Path):
        from .testing import machine_config
        self.root = Path(root)
        self.projects, self.templates, self.files = (self.root / d
                                                     for d in ("projects", "templates", "files"))
        for d in (self.projects, self.templates, self.files):
            d.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "mln.conf"
        self.config.write_text(f"projects {self.projects}\ntemplates {self.templates}\nfiles {self.files}\n"
                               + machine_config())
        self.env = {**os.environ, "MLN_CONFIG": str(self.config)}
        self.env.pop("MLN_DISABLE_PLUGINS", None)
        self.project_names: set[str] = set()

    def mln(self, *args: str, timeout: float = 300, input: str | None = None) -> Run:
        p = subprocess.run([sys.executable, "-m", "mln_core.cli", *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout, input=input, cwd=self.root)
        return Run(p.returncode, p.stdout, p.stderr)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def register_template(self, image, name: str | None = None, kernel=None, initrd=None) -> None:
        args = ["register_template", "-t", str(image)] + (["-n", name] if name else [])
        args += (["--kernel", str(kernel)] if kernel else []) + (["--initrd", str(initrd)] if initrd else [])
        r = self.mln(*args)
        assert r.returncode == 0, r.output

    def console(self, project: str, host: str) -> str:
        path = self.projects / project / "hosts" / host / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def processes(self) -> list[str]:
        """Processes whose command line names this environment or its runtime directories."""
        marks = [str(self.root)] + self.runtime_dirs()
        mine, pid = set(), os.getpid()
        while pid > 1:                      # pytest and its parents do not count
            mine.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z" and int(pid) not in mine and any(m in cmd for m in marks):
                found.append(f"{pid} {cmd.strip()}")
        return found

    def runtime_dirs(self) -> list[str]:
        """The projects' socket directories: ``/run/mln/<hash of the project directory>-...``
        (``mln_backends.runtime.runtime_dir``; the core does not import the backends)."""
        def digest(path) -> str:
            return hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:10]
        prefixes = {digest(p) for p in self.projects.glob("*") if p.is_dir()}
        prefixes |= {digest(self.projects / p) for p in self.project_names}
        bases = [b for b in ("/run/mln", f"/tmp/mln-{os.getuid()}") if os.path.isdir(b)]
        return [os.path.join(b, n) for b in bases for n in os.listdir(b) if n.split("-")[0] in prefixes]

    def fuse_mounts(self) -> list[str]:
        mine = {line.split("\t")[1].strip() for f in self.projects.glob(".*.build-*/helpers")
                for line in f.read_text().splitlines() if "\t" in line}
        with open("/proc/mounts") as f:
            return [line for line in f if "fuse" in line.split()[2] and
                    (str(self.root) in line or line.split()[1] in mine)]

    def cleanup(self) -> list[str]:
        """Stop and remove every project; kill what still runs; return what was left."""
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


def net_devices() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@contextlib.contextmanager
def isolated(env: ConformanceEnv):
    """Hold ``/tmp/mln-tests.lock`` while ``env`` is used (network devices are counted
    machine-wide, so two test runs on one machine take turns); at the end stop and remove
    what is left and fail if a process, runtime directory, FUSE mount or network device
    survived."""
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = net_devices()
        yield env
        left = env.cleanup()
        new = net_devices() - before
        for dev in new:
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        assert not left, f"the test left these behind: {left}"
        assert not new, f"the test left network devices behind: {sorted(new)}"


@pytest.fixture
def mln_conformance_env(tmp_path):
    """The environment the scenarios run in (override it to use your own), isolated and
    checked for leaks (:func:`isolated`)."""
    with isolated(ConformanceEnv(tmp_path)) as env:
        yield env


# -- one scenario's view: the project, the commands, the checks ---------------------------------

class Case:
    def __init__(self, env, backend: Backend, storage: Storage, value=None):
        self.env, self.backend, self.storage, self.value = env, backend, storage, value
        self.project = PROJECT
        self.net_before = net_devices()

    # project files
    def text(self, hosts=("box",), extra: dict[str, str] | None = None) -> str:
        b, extra = self.backend, extra or {}
        lines = self.storage.host_lines
        lines = lines(self.value) if callable(lines) else lines
        out = [f"global {{\n    project {self.project}\n}}\n",
               f"switch lan {{\n{_indent(b.switch_lines)}}}\n"]
        for i, h in enumerate(hosts):
            out.append(f"host {h} {{\n    hypervisor {b.keyword}\n    template {b.template}\n"
                       f"    memory {b.memory}\n    size {b.size}\n{_indent(lines)}{_indent(b.host_lines)}"
                       f"{_indent(extra.get(h, ''))}    network eth0 {{\n        switch lan\n"
                       f"        address 10.0.0.{i + 1}\n        netmask 255.255.255.0\n    }}\n}}\n")
        return "".join(out)

    def write(self, name: str, hosts=("box",), extra=None) -> str:
        return str(self.env.write(name, self.text(hosts, extra)))

    # commands
    def run(self, *args: str, faults: str | None = None, input: str | None = None,
            timeout: float = 300) -> Run:
        old = self.env.env.get("MLN_FAULTS")
        if faults:
            self.env.env["MLN_FAULTS"] = faults
        try:
            return self.env.mln(*args, input=input, timeout=timeout)
        finally:
            self.env.env.pop("MLN_FAULTS", None)
            if old is not None:
                self.env.env["MLN_FAULTS"] = old

    def ok(self, *args: str, **kw) -> Run:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"`mln {' '.join(args)}` failed (exit {r.returncode}):\n{r.output}"
        return r

    def status(self, *args: str) -> tuple[int, list[str]]:
        r = self.run("status", "-p", self.project, *args)
        return r.returncode, r.stdout.splitlines()

    def lines(self, state: str, hosts=("box",), detail: str = "") -> list[str]:
        sw = "up" if state == "up" else "down"
        return [f"{self.project} host {h} {state}{f' ({detail})' if detail else ''}" for h in hosts] + \
               [f"{self.project} switch lan {sw}"]

    def disks(self) -> dict:
        return self.storage.disks(self.env, self.project, self.value)

    def projects_dir(self) -> list[str]:
        """What is in the projects directory (lock files aside): staging directories of
        builds, trash of replaced projects, projects."""
        return sorted(p.name for p in self.env.projects.iterdir() if not p.name.endswith(".lock"))

    # running guests
    def start(self, resume: bool = False) -> None:
        offset = self.env.console(self.project, "box")
        self.ok("start", "-p", self.project)
        self.wait_running("box", since=offset, boot=not resume)

    def wait_running(self, host: str, since: str = "", boot: bool = True) -> None:
        b = self.backend
        if b.running is not None:
            assert b.running(self.env, self.project, host), f"{host} is not running after `mln start`"
        if b.boot_log and boot:
            rx, end = re.compile(b.boot_log), time.monotonic() + b.boot_timeout
            while time.monotonic() < end:
                if rx.search(_new_part(self.env.console(self.project, host), since)):
                    return
                assert b.running is None or b.running(self.env, self.project, host), \
                    f"{host} died while booting"
                time.sleep(0.5)
            raise AssertionError(f"{host}: no {b.boot_log!r} in its console within {b.boot_timeout} s:\n"
                                 f"{self.env.console(self.project, host)[-3000:]}")

    def type(self, host: str, text: str) -> str:
        """Type ``text`` into the host's console; what came back (without CRs)."""
        r = self.ok("console", "-p", self.project, "-h", host, input=text, timeout=120)
        return r.stdout.replace("\r", "")

    def assert_stopped(self, host: str = "box", when: str = "after `mln stop`") -> None:
        b, s = self.backend, self.storage
        if b.running is not None:
            assert not b.running(self.env, self.project, host), f"{when}: {host} still runs"
        assert self.env.processes() == [], f"{when}: processes still run: {self.env.processes()}"
        assert self.env.runtime_dirs() == [], f"{when}: runtime directories left: {self.env.runtime_dirs()}"
        held = s.in_use(self.env, self.value) if s.in_use else []
        assert held == [], f"{when}: the {s.name} storage still holds {held}"

    def assert_nothing_left(self, when: str = "after `mln remove`") -> None:
        """Nothing of the project is left: no process, runtime directory, FUSE mount,
        staging directory, disk, storage resource or network device."""
        assert self.projects_dir() == [], f"{when}: left in the projects directory: {self.projects_dir()}"
        assert self.disks() == {}, f"{when}: disks left: {self.disks()}"
        self.assert_stopped(when=when)
        assert self.env.fuse_mounts() == [], f"{when}: FUSE mounts left: {self.env.fuse_mounts()}"
        left = self.backend.leftovers(self.env) if self.backend.leftovers else []
        assert left == [], f"{when}: the {self.backend.name} backend left {left}"
        left = self.storage.leftovers(self.env, self.value) if self.storage.leftovers else []
        assert left == [], f"{when}: the {self.storage.name} storage left {left}"
        new = net_devices() - self.net_before
        assert not new, f"{when}: network devices left: {sorted(new)}"


def _indent(text: str) -> str:
    return "".join(f"    {line.strip()}\n" for line in text.strip().splitlines() if line.strip())


def _which(disks: dict) -> dict:
    """{disk: its identity}, without the state that a running guest changes."""
    return {k: v[0] for k, v in disks.items()}


def _new_part(text: str, before: str) -> str:
    """What a console log got since ``before`` (all of it if it was started afresh)."""
    return text[len(before):] if before and text.startswith(before) else text


# -- the scenarios ---------------------------------------------------------------------------

def scenario_lifecycle(c: Case) -> None:
    """build, status, start, it runs, console, stop -S and start again, stop, remove."""
    b, P = c.backend, c.project
    path = c.write("conform.mln")
    r = c.ok("build", "-f", path)
    assert f"PROJECT {P} FINISHED" in r.stderr, r.stderr
    disks = c.disks()
    assert disks, f"the build made no disk that the {c.storage.name} storage shows"
    assert c.projects_dir() == [P]
    assert str(c.env.projects / P) in c.ok("list").stdout.splitlines()
    assert c.status() == (1, c.lines("down")), "status of a project just built"
    r = c.run("console", "-p", P, "-h", "box")
    assert r.returncode == 1 and "is not running" in r.stderr, f"console of a stopped host:\n{r.output}"

    c.start()
    assert c.status() == (0, c.lines("up")), "status after `mln start`"
    rows = json.loads(c.ok("status", "-p", P, "--format", "json").stdout)
    assert [(x["kind"], x["name"], x["state"]) for x in rows] == [("host", "box", "up"),
                                                                   ("switch", "lan", "up")]
    r = c.run("start", "-p", P)
    assert r.returncode == 0 and "already running" in r.stderr, f"starting a running project:\n{r.output}"
    r = c.run("start", "-p", P, "-h", "box")
    assert r.returncode == 1 and "already running" in r.stderr, f"starting a running host:\n{r.output}"
    assert c.status() == (0, c.lines("up")), "status after starting a running project again"
    r = c.run("build", "-r", "-f", path)
    assert r.returncode == 1 and "running hosts (box)" in r.stderr, \
        f"build -r of a running project:\n{r.output}"
    r = c.run("remove", "-f", "-p", P)
    assert r.returncode == 1 and "stop it first" in r.stderr, f"removing a running project:\n{r.output}"
    assert _which(c.disks()) == _which(disks), "a refused build -r or remove replaced the disks"

    if b.console:
        out = c.type("box", "\necho MLN-CONFORMANCE-$((6*7)); hostname\n")
        assert "MLN-CONFORMANCE-42\n" in out and "\nbox\n" in out, f"the console did not answer:\n{out}"
        if b.can_save:
            c.type("box", "MLN_MARK=kept-$((20+22))\n")
    else:
        r = c.run("console", "-p", P, "-h", "box")
        assert r.returncode == 1 and "mln: error:" in r.stderr and "Traceback" not in r.output \
            and "internal error" not in r.output, f"console of a backend without one:\n{r.output}"

    # stop -S and start again
    before = c.env.console(P, "box")
    r = c.ok("stop", "-p", P, "-S", "-w", f"{b.stop_wait:g}")
    assert "did not stop" not in r.stderr, \
        f"after `mln stop -S`: box did not stop, mln destroyed it:\n{r.stderr}"
    if b.can_save:
        assert "box: saved" in r.stderr, f"stop -S did not save box:\n{r.stderr}"
        assert c.status() == (1, c.lines("down", detail="saved")), "status after `mln stop -S`"
    else:
        assert "cannot be saved" in r.stderr, f"stop -S of a backend that cannot save:\n{r.stderr}"
        assert c.status() == (1, c.lines("down")), "status after `mln stop -S` (not saved)"
    assert c.run("status", "-p", P, "-d").returncode == 0
    c.assert_stopped(when="after `mln stop -S`")
    assert c.disks().keys() == disks.keys()
    c.start(resume=b.can_save)
    assert c.status() == (0, c.lines("up")), "status after starting again"
    if b.can_save and b.boot_log:
        new = _new_part(c.env.console(P, "box"), before)
        assert not re.search(b.boot_log, new), f"box booted again instead of resuming:\n{new[-3000:]}"
    if b.console:
        out = c.type("box", "echo mark=$MLN_MARK\n" if b.can_save else "\nhostname\n")
        expect = "mark=kept-42\n" if b.can_save else "\nbox\n"
        assert expect in out, f"the console after starting again: no {expect!r} in\n{out}"

    r = c.ok("stop", "-p", P, "-w", f"{b.stop_wait:g}")
    assert "did not stop" not in r.stderr, f"box did not shut down cleanly:\n{r.stderr}"
    assert c.status() == (1, c.lines("down")), "status after `mln stop`"
    c.assert_stopped()
    c.ok("remove", "-f", "-p", P)
    assert not (c.env.projects / P).exists()
    assert str(c.env.projects / P) not in c.ok("list").stdout.splitlines()
    c.assert_nothing_left()


def scenario_rebuild(c: Case) -> None:
    """build -r makes new disks; failing rebuilds leave the old project as it was; it starts."""
    b, s, P = c.backend, c.storage, c.project
    path = c.write("conform.mln")
    c.ok("build", "-f", path)
    first = c.disks()
    r = c.ok("build", "-r", "-f", path)
    assert f"PROJECT {P} FINISHED (version 2)" in r.stderr, r.stderr
    disks = c.disks()
    assert disks.keys() == first.keys(), f"build -r made other disks: {sorted(first)} -> {sorted(disks)}"
    same = [k for k in disks if disks[k][0] == first[k][0]]
    assert not same, f"build -r kept the old disks {same}"
    status = c.status()
    assert status == (1, c.lines("down"))

    def unchanged(what: str) -> None:
        assert c.disks() == disks, f"{what} changed the old project's disks"
        assert c.status() == status, f"{what} changed the old project's status"
        assert c.projects_dir() == [P], f"{what} left {c.projects_dir()} in the projects directory"
        assert c.env.processes() == [] and c.env.fuse_mounts() == [], f"{what} left processes or mounts"
        held = s.in_use(c.env, c.value) if s.in_use else []
        assert held == [], f"{what}: the {s.name} storage still holds {held}"

    # a host whose files {} source is missing: the build fails after box was made again
    broken = c.write("broken.mln", ("box", "broken"), {"broken": "files {\n not-in-files-dir /root/x\n}"})
    r = c.run("build", "-r", "-j", "1", "-f", broken)
    assert r.returncode == 1 and "broken" in r.stderr and "not-in-files-dir" in r.stderr, r.output
    unchanged("a rebuild that failed (missing files {} source)")
    two = c.write("two.mln", ("box", "box2"))
    for fault in [f for f in (b.fail_at, s.fail_at) if f]:
        r = c.run("build", "-r", "-j", "1", "-f", two, faults=f"fail@{fault}")
        assert r.returncode == 1 and "box2" in r.stderr, f"MLN_FAULTS=fail@{fault}:\n{r.output}"
        unchanged(f"a rebuild that failed (MLN_FAULTS=fail@{fault})")

    # the old project still works
    c.start()
    assert c.status() == (0, c.lines("up"))
    c.ok("stop", "-p", P, "-w", f"{b.stop_wait:g}")
    c.assert_stopped()
    c.ok("remove", "-f", "-p", P)
    c.assert_nothing_left()


def scenario_kill_9_during_build(c: Case) -> None:
    """mln killed (SIGKILL) in the middle of a build, then built again; the same during a
    build -r, which leaves the old project as it was."""
    b, s, P = c.backend, c.storage, c.project
    kill = f"kill@{b.kill_at or s.kill_at or DEFAULT_KILL_AT}"
    path = c.write("two.mln", ("box", "box2"))

    r = c.run("build", "-j", "1", "-f", path, faults=kill)
    assert r.returncode == -9, (f"the build was not killed by MLN_FAULTS={kill} (exit {r.returncode}); no "
                                f"command of it matched: give Backend(kill_at=...)\n{r.output}")
    assert P not in c.projects_dir(), "a killed build left a project in place"
    r = c.run("status", "-p", P)
    assert r.returncode == 1 and f"no project '{P}'" in r.stderr, r.output
    r = c.ok("build", "-j", "1", "-f", path)
    assert f"PROJECT {P} FINISHED (version 1)" in r.stderr, r.stderr
    assert c.projects_dir() == [P], f"the build after a killed one left {c.projects_dir()}"
    assert c.env.fuse_mounts() == [], f"left mounted: {c.env.fuse_mounts()}"
    c.assert_stopped(when="after the build that followed a killed one")
    disks = c.disks()
    assert len(disks) >= 2, f"two hosts, disks {sorted(disks)}"
    status = c.status()
    assert status == (1, c.lines("down", ("box", "box2")))

    r = c.run("build", "-r", "-j", "1", "-f", path, faults=kill)
    assert r.returncode == -9, \
        f"build -r was not killed by MLN_FAULTS={kill} (exit {r.returncode}):\n{r.output}"
    assert c.disks() == disks, "a killed build -r changed the old project's disks"
    assert c.status() == status, "a killed build -r changed the old project's status"
    r = c.ok("build", "-r", "-j", "1", "-f", path)
    assert f"PROJECT {P} FINISHED (version 2)" in r.stderr, r.stderr
    assert c.projects_dir() == [P], f"build -r after a killed one left {c.projects_dir()}"
    assert c.disks().keys() == disks.keys(), f"disks after the rebuild: {sorted(c.disks())}"
    c.assert_stopped(when="after the build -r that followed a killed one")
    c.ok("remove", "-f", "-p", P)
    c.assert_nothing_left()


# -- pytest: the fixture and the test class -----------------------------------------------------

@pytest.fixture
def mln_conformance_case(request, mln_conformance_env):
    """One (backend, storage) pair, set up in ``mln_conformance_env``; parametrized by
    :func:`conformance_tests`."""
    backend, storage = request.param
    value = request.getfixturevalue(storage.fixture) if storage.fixture else None
    if backend.setup is not None:
        backend.setup(mln_conformance_env, request)
    case = Case(mln_conformance_env, backend, storage, value)
    yield case
    left = mln_conformance_env.cleanup()      # before the storage's fixture goes away
    assert not left, f"left behind: {left}"


class ConformanceScenarios:
    """The scenarios; :func:`conformance_tests` parametrizes a subclass."""

    def test_lifecycle(self, mln_conformance_case):
        scenario_lifecycle(mln_conformance_case)

    def test_rebuild(self, mln_conformance_case):
        scenario_rebuild(mln_conformance_case)

    def test_kill_9_during_build(self, mln_conformance_case):
        scenario_kill_9_during_build(mln_conformance_case)


def conformance_tests(*backends: Backend, storages=(FILE,), name: str = "TestConformance") -> type:
    """A test class running every scenario on every (backend, storage) pair: each backend
    over each of its ``storages`` (names of the :class:`Storage` objects given here).
    Assign it to a ``Test...`` name in a test module."""
    known = {s.name: s for s in storages}
    params = []
    for b in backends:
        for sname in b.storages:
            if sname not in known:
                raise ValueError(f"backend {b.name}: storage '{sname}' is not among the storages given "
                                 f"({', '.join(known)})")
            params.append(pytest.param((b, known[sname]), id=f"{b.name}-{sname}"))
    cls = type(name, (ConformanceScenarios,), {"__doc__": ConformanceScenarios.__doc__})
    cls = pytest.mark.parametrize("mln_conformance_case", params, indirect=True)(cls)
    return pytest.mark.mln_conformance(cls)
