"""Start-up: what ``mln --help`` and ``mln check`` import, and the cache of installed plugins
that lets ``--help`` import none (mln_core.plugin_cache).

Every command runs in a fresh interpreter, as ``mln`` does; the timings are measured by
bench/startup_bench.py, not here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ssl", "asyncio", "jinja2", "ruamel.yaml", "fabric", "paramiko", "rich")
PLUGIN_PACKAGES = ("mln_backends", "mln_plugins")

TWO_HOSTS = """global { project startup }
switch lan { }
host a { network eth0 { switch lan; address 10.0.0.1; netmask 255.255.255.0 } }
host b { network eth0 { switch lan; address 10.0.0.2; netmask 255.255.255.0 } }
"""

# Runs mln as the console script does and writes the names of the imported modules.
RUN = """import sys
from mln_core.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(sorted(sys.modules)))
sys.exit(code)
"""

COMMAND_PLUGIN = '''
import click
from mln_core import hookimpl

@hookimpl
def mln_register_commands(cli):
    @cli.command("hello")
    def hello():
        """Say hello (a plugin's command)."""
        click.echo("hello from a plugin")
'''

KEYWORD_PLUGIN = '''
from mln_core import hookimpl

@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "colour", "the colour of the host's console")
'''


class Mln:
    """``mln`` in a fresh interpreter with its own plugin cache (and a directory on
    PYTHONPATH where tests install distributions)."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.site = tmp_path / "site"
        self.site.mkdir()
        self.cache = tmp_path / "cache"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("MLN_DISABLE_PLUGINS", "MLN_TRACE_PLUGINS", "PYTHONDONTWRITEBYTECODE")}
        self.env.update(XDG_CACHE_HOME=str(self.cache), PYTHONPATH=str(self.site))

    def __call__(self, *args: str, env: dict | None = None):
        """(exit code, stdout, stderr, the modules it imported)."""
        mods = self.dir / "modules.txt"
        r = subprocess.run([sys.executable, "-c", RUN, str(mods), *args], cwd=self.dir, capture_output=True,
                           text=True, env={**self.env, **(env or {})}, timeout=120)
        imported = set(mods.read_text().split("\n")) if mods.exists() else set()
        mods.unlink(missing_ok=True)
        return r.returncode, r.stdout, r.stderr, imported

    def install(self, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
        info = self.site / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[mln.plugins]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
        for module, source in modules.items():
            (self.site / f"{module}.py").write_text(source)

    def uninstall(self, dist: str) -> None:
        info = self.site / f"{dist}-1.0.dist-info"
        for f in info.iterdir():
            f.unlink()
        info.rmdir()


@pytest.fixture
def mln_proc(tmp_path):
    return Mln(tmp_path)


def plugin_modules(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m.split(".")[0] in PLUGIN_PACKAGES)


def heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY))


# ---------------------------------------------------------------------------------------
# what the commands import
# ---------------------------------------------------------------------------------------

def test_help_imports_no_plugin_and_no_heavy_library(mln_proc):
    cold = mln_proc("--help")            # the first command finds the plugins and remembers them
    assert cold[0] == 0, cold[2]
    code, out, err, imported = mln_proc("--help")
    assert code == 0, err
    assert (out, err) == (cold[1], cold[2])
    assert out.startswith("Usage: mln ")
    assert plugin_modules(imported) == []
    assert "mln_core.plugins" not in imported and "pluggy" not in imported
    assert heavy(imported) == []


def test_check_of_two_hosts_imports_no_heavy_library(mln_proc):
    path = mln_proc.dir / "two.mln"
    path.write_text(TWO_HOSTS)
    for _ in range(2):                   # without the cache, then with it
        code, _, err, imported = mln_proc("check", "-f", str(path))
        assert code == 0, err
        assert err.endswith("0 errors, 0 warnings\n")
        assert heavy(imported) == []
        assert "mln_plugins.autoenum" in imported      # check needs the plugins' keywords


def test_plugins_lists_the_plugins_with_a_warm_cache(mln_proc):
    first = mln_proc("plugins", "--format", "json")
    second = mln_proc("plugins", "--format", "json")
    assert first[0] == second[0] == 0
    assert json.loads(first[1]) == json.loads(second[1])
    assert "autoenum" in [p["name"] for p in json.loads(second[1])["plugins"]]


# ---------------------------------------------------------------------------------------
# the cache notices what changes
# ---------------------------------------------------------------------------------------

def test_a_plugin_installed_later_adds_its_command(mln_proc):
    mln_proc("--help")
    mln_proc.install("hello-plugin", {"hello_plug": COMMAND_PLUGIN}, {"hello": "hello_plug"})
    code, out, err, imported = mln_proc("--help")
    assert code == 0, err
    assert "hello " in out and "Say hello" in out
    assert "hello_plug" in imported
    code, out, err, _ = mln_proc("hello")
    assert (code, out) == (0, "hello from a plugin\n"), err
    # with a cache that knows it: still there (the plugins are loaded because one adds commands)
    code, out, _, imported = mln_proc("--help")
    assert "Say hello" in out and "hello_plug" in imported
    mln_proc.uninstall("hello-plugin")
    code, out, _, imported = mln_proc("--help")
    assert "Say hello" not in out and "hello_plug" not in imported
    assert plugin_modules(imported) == []


def test_a_plugin_changed_in_place_to_add_a_command(mln_proc):
    mln_proc.install("colour-plugin", {"colour_plug": KEYWORD_PLUGIN}, {"colour": "colour_plug"})
    mln_proc("--help")
    code, out, _, imported = mln_proc("--help")
    assert "colour_plug" not in imported and "Say hello" not in out
    # an editable install: the module changes, the distribution's metadata does not
    source = KEYWORD_PLUGIN + COMMAND_PLUGIN.replace("from mln_core", "#")
    (mln_proc.site / "colour_plug.py").write_text(source)
    code, out, err, imported = mln_proc("--help")
    assert code == 0, err
    assert "Say hello" in out and "colour_plug" in imported


def test_a_disabled_plugin_is_not_imported_and_adds_no_command(mln_proc):
    mln_proc.install("hello-plugin", {"hello_plug": COMMAND_PLUGIN}, {"hello": "hello_plug"})
    for warm in (False, True):
        code, out, _, imported = mln_proc("--help", env={"MLN_DISABLE_PLUGINS": "hello"})
        assert code == 0
        assert "Say hello" not in out and "hello_plug" not in imported
        assert (plugin_modules(imported) == []) == warm     # the first finds and loads the others
    code, out, _, imported = mln_proc("--help")
    assert "Say hello" in out


def test_a_broken_plugin_is_reported_by_help_every_time(mln_proc):
    mln_proc.install("broken-plugin", {"broken_plug": "import no_such_module_for_mln_tests\n"},
                     {"broken": "broken_plug"})
    for _ in range(2):
        code, out, err, _ = mln_proc("--help")
        assert code == 0 and out.startswith("Usage: mln ")
        assert "mln: warning: plugin 'broken' not loaded: cannot import broken_plug: " \
               "ModuleNotFoundError: No module named 'no_such_module_for_mln_tests'" in err


def test_a_damaged_cache_is_read_again(mln_proc):
    mln_proc("--help")
    files = list((mln_proc.cache / "mln").glob("plugins-*"))
    assert files
    for f in files:
        f.write_bytes(b"\x00 not a cache")
    code, out, err, _ = mln_proc("--help")
    assert code == 0 and err == "" and out.startswith("Usage: mln ")
    code, _, _, imported = mln_proc("--help")
    assert plugin_modules(imported) == []


# ---------------------------------------------------------------------------------------
# in-process: the command line's safety net
# ---------------------------------------------------------------------------------------

def test_a_command_the_cache_did_not_announce_is_still_found(mln, monkeypatch, tmp_path):
    """Should the cache ever say wrongly that no plugin adds commands, asking for a command
    that no built-in has loads the plugins and finds it."""
    from mln_core import plugin_cache
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello_plug2.py").write_text(COMMAND_PLUGIN)
    info = root / "hello2-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello2\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mln.plugins]\nhello = hello_plug2\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(plugin_cache.Discovery, "commands_possible", lambda self, disabled: False)
    try:
        code, out, err = mln("hello")
        assert (code, out) == (0, "hello from a plugin\n"), err
    finally:
        sys.modules.pop("hello_plug2", None)
        from mln_core.cli import cli
        cli.commands.pop("hello", None)
