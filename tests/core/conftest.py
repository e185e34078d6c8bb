"""Shared fixtures of the core tests.

Every test runs with ``MLN_CONFIG`` naming a file with only this machine's settings
(``machine_config``: the UML that boots here), so that the user's /etc/mln/mln.conf and
~/.mln never change what a test sees, and without plugin controls from the caller's
environment.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from mln_core.cli import main
from mln_core.testing import machine_config

HERE = Path(__file__).parent
EXAMPLES = HERE / "examples"
GOLDEN = HERE / "golden"


_DIST_CACHE: dict = {}


@pytest.fixture(autouse=True)
def fast_plugin_metadata(monkeypatch):
    """Every plugin manager asks importlib.metadata which distribution holds each plugin
    (a scan of every installed package, ~50 ms per plugin). Remember the answers for as
    long as sys.path is the same, so that the many in-process ``mln`` runs stay fast."""
    import sys

    import mln_core.plugins as plugins
    original = plugins._distribution_of

    def cached(module: str):
        key = (module, tuple(sys.path))
        if key not in _DIST_CACHE:
            _DIST_CACHE[key] = original(module)
        return _DIST_CACHE[key]

    monkeypatch.setattr(plugins, "_distribution_of", cached)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    conf = tmp_path_factory.mktemp("conf") / "mln.conf"
    conf.write_text(machine_config())
    monkeypatch.setenv("MLN_CONFIG", str(conf))
    for var in ("MLN_DISABLE_PLUGINS", "MLN_TRACE_PLUGINS", "MLN_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return conf


@pytest.fixture
def mln(capsys):
    """``mln(*argv)`` runs the CLI in-process and returns (exit code, stdout, stderr)."""
    def run(*argv: str):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def write(tmp_path):
    """``write(text, name='p.mln')`` writes a file in tmp_path and returns its path."""
    def make(text: str | bytes, name: str = "p.mln") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path
    return make


def example_names(include_fragments: bool = False) -> list[str]:
    names = sorted(p.stem for p in EXAMPLES.glob("*.mln"))
    if not include_fragments:
        names.remove("oscourse")
    return names


_PM = []


def plugin_manager():
    """The installed plugins, loaded once (tests of discovery make their own managers)."""
    if not _PM:
        from mln_core.plugins import make_plugin_manager
        _PM.append(make_plugin_manager(env={}))
    return _PM[0]


def context():
    """A Context with the test's (empty) configuration and the installed plugins."""
    from mln_core.config import load_config
    from mln_core.context import Context
    return Context(config=load_config(), pm=plugin_manager())
