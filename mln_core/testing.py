"""A pytest plugin for plugin authors: the ``mln_project`` fixture.

    def test_my_plugin(mln_project):
        p = mln_project('global { project t }\nhost a { apache { DocumentRoot /srv } }\n')
        r = p.run("check")
        assert r.exit_code == 0, r.output

``mln_project(text, name="project.mln")`` writes the project file in a temporary
directory whose ``projects``, ``templates`` and ``files`` directories are isolated from
the user's, and returns an object whose ``run(*args)`` runs an ``mln`` command on it
(``-f FILE`` is added for commands that take it) and returns ``exit_code``, ``stdout``,
``stderr`` and ``output`` (both).

Its ``mln.conf`` holds only this machine's settings (:func:`machine_config`: the UML
binary that boots here), so the user's directories and defaults never leak into a test.

The backend conformance suite (``mln_core.conformance``) is part of this plugin: describe
your backend with :class:`Backend` (and a storage plugin with :class:`Storage`) and assign
``conformance_tests(...)`` to a ``Test...`` name in a test module::

    from mln_core.testing import Backend, conformance_tests
    TestMine = conformance_tests(Backend("myhv", boot_log=r"login:", setup=register_my_template))

Its fixtures ``mln_conformance_env`` (override it to run the scenarios in your own set-up)
and ``mln_conformance_case`` are registered here; see docs/plugins.md.

``mln_image``: a tiny ext4 guest image (``mkfs.ext4 -d``, no guest is booted) on which
``configure(project_text)`` runs every enabled plugin's ``mln_configure_image`` through the
real plugin manager, as ``mln build`` does; ``read(path)`` gives a file back
(:class:`GuestImage`)::

    def test_my_plugin_writes_its_file(mln_image):
        img = mln_image()
        img.configure('global { project t }\nhost a { motd hello }\n')
        assert img.read("/etc/motd") == "hello\n"

``mln_servers``: three servers sh1, sh2, sh3 on this machine (network namespaces, each with
sshd, its own hostname, address, ``/etc/mln/mln.conf`` and ``/run/mln``) and a client
namespace whose mln.conf names them: a :class:`mln_core.nsservers.NamespaceServers`, up
for the test and removed after it (docs/servers.md). Skipped unless root with ``ip``,
``unshare``, ``nsenter``, ``ssh-keygen`` and ``/usr/sbin/sshd``.
"""
from __future__ import annotations

import io
import itertools
import os
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout

import pytest

from .conformance import (FILE, Backend, ConformanceEnv, Run, Storage, conformance_tests,  # noqa: F401
                          image_files, mln_conformance_case, mln_conformance_env)

_TAKES_FILE = {"parse", "check", "show", "build", "upgrade"}
MACHINE_KEYS = ("default_kernel",)     # what depends on this machine, not on the user


def machine_config() -> str:
    """The lines of this machine's mln.conf (``/etc/mln/mln.conf``, then ``~/.mln``) that
    say what runs here, for a test's own mln.conf: ``default_kernel`` (on an Intel CPU with
    AMX, the UML that install-uml.sh put in place). "" when they set nothing."""
    from .config import SYSTEM_CONFIG, USER_CONFIG, Config
    cfg = Config()
    cfg.read(SYSTEM_CONFIG)
    cfg.read(os.path.expanduser(USER_CONFIG))
    return "".join(f"{k} {cfg.values[k]}\n" for k in MACHINE_KEYS if k in cfg.values)


Result = Run     # what ``mln_project.run(...)`` gives: ``exit_code``, ``stdout``, ``stderr``, ``output``


class MlnProject:
    def __init__(self, root, text, name):
        self.root = str(root)
        self.path = os.path.join(self.root, name)
        for d in ("projects", "templates", "files"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        with open(self.path, "w") as f:
            f.write(text)

    def run(self, *args: str, env: dict | None = None) -> Result:
        from .cli import main
        argv = list(args)
        if argv and argv[0] in _TAKES_FILE and "-f" not in argv:
            argv[1:1] = ["-f", self.path]
        argv = ["-P", os.path.join(self.root, "projects"), "-T", os.path.join(self.root, "templates"),
                "-F", os.path.join(self.root, "files")] + argv
        out, err = io.StringIO(), io.StringIO()
        old = dict(os.environ)
        os.environ.update(env or {})
        os.environ.setdefault("MLN_CONFIG", os.path.join(self.root, "mln.conf"))
        if not os.path.exists(os.environ["MLN_CONFIG"]):
            with open(os.environ["MLN_CONFIG"], "w") as f:
                f.write(machine_config())
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = main(argv)
        finally:
            os.environ.clear()
            os.environ.update(old)
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def mln_project(tmp_path):
    """Factory: ``mln_project(text, name='project.mln')`` -> MlnProject."""
    def make(text: str, name: str = "project.mln") -> MlnProject:
        return MlnProject(tmp_path, text, name)
    return make


#: The root of :class:`GuestImage` by default: just enough for a Debian guest.
DEBIAN_ROOT = {"/etc/network/interfaces": "auto lo\niface lo inet loopback\n",
               "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "/etc/group": "root:x:0:\n",
               "/etc/hostname": "debian\n", "/root/": "", "/bin/bash": ""}


class GuestImage:
    """A tiny ext4 guest image at ``path`` whose root holds ``files`` ({guest path: text or
    bytes}; a path ending in ``/`` is a directory; default :data:`DEBIAN_ROOT`), made with
    ``mkfs.ext4 -d``. ``configure(text, hosts=None)`` loads the project ``text`` and, for
    each host (default: all), opens the image with ``mln_open_image`` and runs every
    enabled plugin's ``mln_configure_image`` on it, as ``mln build`` does (a plugin's
    MlnError propagates); it returns the :class:`mln_core.model.Project`. ``read(path)``:
    the text of a file in the image, None if there is none."""

    def __init__(self, path, files: dict | None = None, size: str = "16M"):
        self.path = str(path)
        self.dir = os.path.dirname(self.path)
        root = self.path + ".root"
        for name, data in (DEBIAN_ROOT if files is None else files).items():
            target = os.path.join(root, name.lstrip("/"))
            os.makedirs(target if name.endswith("/") else os.path.dirname(target), exist_ok=True)
            if not name.endswith("/"):
                with open(target, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
        os.makedirs(root, exist_ok=True)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", root, self.path, size],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(root)
        if r.returncode != 0:
            raise RuntimeError(f"mkfs.ext4 -d {root} {self.path} failed: {r.stderr.strip()}")

    def _context(self):
        from .config import Config
        from .context import Context
        from .plugins import make_plugin_manager
        cfg = Config()
        cfg.values["files"] = os.path.join(self.dir, "files")
        os.makedirs(cfg.values["files"], exist_ok=True)
        return Context(config=cfg, pm=make_plugin_manager(), project_dir=self.dir)

    def _open(self, ctx, host):
        from .errors import MlnError
        from .model import Disk
        guest = ctx.hook.mln_open_image(host=host, disk=Disk(self.path), ctx=ctx)
        if guest is None:
            raise MlnError(f"no plugin opens {self.path}")
        return guest

    def configure(self, text: str, hosts=None, name: str = "project.mln"):
        from .guest import detect_family
        from .project import load_project
        ctx = self._context()
        ctx.project = project = load_project(os.path.join(self.dir, name), ctx, text=text).project
        for host in (project.hosts[h] for h in (hosts or list(project.hosts))):
            guest = self._open(ctx, host)
            try:
                guest.family = host.family or detect_family(guest) or ctx.config.get("default_family")
                ctx.hook.mln_configure_image(host=host, guest=guest, ctx=ctx)
            finally:
                guest.close()
        return project

    def read(self, path: str) -> str | None:
        from .model import Host
        with self._open(self._context(), Host("test", "test", "", "", 0)) as guest:
            return guest.read_text(path)


@pytest.fixture
def mln_image(tmp_path):
    """Factory: ``mln_image(files=None, size="16M")`` -> :class:`GuestImage` (skips the test
    when e2fsprogs' ``mkfs.ext4`` or ``debugfs`` is missing)."""
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("mln_image needs mkfs.ext4 and debugfs (e2fsprogs)")
    count = itertools.count(1)

    def make(files: dict | None = None, size: str = "16M") -> GuestImage:
        return GuestImage(tmp_path / f"guest{next(count)}.ext4", files, size)
    return make


@pytest.fixture
def mln_servers(tmp_path):
    """Servers sh1, sh2, sh3 and a client as namespaces: a NamespaceServers, up for the test."""
    from .nsservers import NamespaceServers, missing_tools
    if os.geteuid() != 0:
        pytest.skip("mln_servers needs root (network, mount and UTS namespaces)")
    if missing_tools():
        pytest.skip(f"mln_servers needs {', '.join(missing_tools())} (scripts/install-deps.sh)")
    with NamespaceServers(tmp_path / "servers") as kit:
        yield kit


def pytest_configure(config):
    config.addinivalue_line("markers", "mln_conformance: a scenario of mln's backend conformance suite")
