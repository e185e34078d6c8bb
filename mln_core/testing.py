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

``mln_servers``: three servers sh1, sh2, sh3 on this machine (network namespaces, each with
sshd, its own hostname, address, ``/etc/mln/mln.conf`` and ``/run/mln``) and a client
namespace whose mln.conf names them: a :class:`mln_core.nsservers.NamespaceServers`, up
for the test and removed after it (docs/servers.md). Skipped unless root with ``ip``,
``unshare``, ``nsenter``, ``ssh-keygen`` and ``/usr/sbin/sshd``.
"""
from __future__ import annotations

import io
import os
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
