"""The plugin kit of contrib/: the example plugin package (contrib/example-plugin) and a
package generated from the copier template (contrib/plugin-template) install with pip,
show in ``mln plugins`` and pass their own tests.

Each package goes into a fresh virtual environment made with ``--system-site-packages``
(it sees the installed mln, pytest, pip and setuptools) and ``--without-pip`` (fast, and
Debian's python3-venv is not needed), never into the environment running these tests: a
plugin installed there would change ``mln plugins`` for every other test. ``pip install
--no-deps --no-build-isolation --no-index`` needs no network. Everything is built in
tmp_path (a copy of the example, not the source tree), so nothing is left in the
repository. No guest is booted.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contrib" / "example-plugin"
TEMPLATE = ROOT / "contrib" / "plugin-template"
HOOKS = "mln_configure_image, mln_register_keywords, mln_validate"
# what a pip build or a pytest run leaves in a source tree: never copied
LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                   ".benchmarks")
# setuptools builds wheels (also without build isolation) if it has bdist_wheel: its own
# from 70.1, else the wheel package's (scripts/install-deps.sh installs it)
CAN_BUILD = ("import importlib.util as u, setuptools; assert u.find_spec('pip'); "
             "assert u.find_spec('wheel') or u.find_spec('setuptools.command.bdist_wheel')")


def _env() -> dict:
    """This environment without mln's and pytest's variables of the running test, and no
    bytecode written into the packages' trees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLN_", "PYTEST_"))}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(argv, env, cwd=None, what="") -> str:
    r = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=180)
    assert r.returncode == 0, f"{what or argv} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _plugins(python, env, tmp_path: Path) -> str:
    """``mln plugins`` as run with ``python`` (with an empty mln.conf)."""
    conf = tmp_path / "mln.conf"
    conf.touch()
    return _run([python, "-m", "mln_core.cli", "plugins"], {**env, "MLN_CONFIG": str(conf)},
                what=f"{python} -m mln_core.cli plugins")


@pytest.fixture
def venv(tmp_path):
    """(python of a fresh venv that sees this environment's packages, its environment)."""
    env = {**_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}     # the venv's plugin cache goes with it
    path = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path], env)
    python = path / "bin" / "python"
    r = subprocess.run([python, "-c", CAN_BUILD], env=env, capture_output=True, text=True)
    assert r.returncode == 0, ("the venv cannot build packages: pip, setuptools and (before "
                               f"setuptools 70.1) wheel are needed (scripts/install-deps.sh)\n{r.stderr}")
    return python, env


def _install_and_test(python, env, package: Path, plugin_line: str) -> str:
    """pip-install ``package`` into the venv, check ``mln plugins`` there shows
    ``plugin_line`` (a regular expression of one whole line), run the package's tests with
    the venv's python; return pytest's output."""
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "--no-cache-dir", package], env, what=f"pip install {package.name}")
    listing = _plugins(python, env, package.parent)
    assert re.search(rf"^{plugin_line}$", listing, re.M), listing
    # (hypothesis and benchmark: plugins of mln's own test set-up, unused here, slow to load)
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                "-p", "no:benchmark"], env, cwd=package, what=f"the tests of {package.name}")
    assert re.search(r"^\d+ passed", out.splitlines()[-1].strip("= ")), out
    if shutil.which("mkfs.ext4") and shutil.which("debugfs"):      # the image tests ran too
        assert "skipped" not in out.splitlines()[-1], out
    return out


def test_the_example_plugin_installs_shows_in_mln_plugins_and_passes_its_tests(tmp_path, venv):
    python, env = venv
    package = tmp_path / "example-plugin"
    shutil.copytree(EXAMPLE, package, ignore=LEFTOVERS)
    _install_and_test(python, env, package, rf"motd +mln-motd 1\.0\.0 +{HOOKS}")
    # the environment running mln's own tests does not have it
    assert not re.search(r"^motd ", _plugins(sys.executable, env, tmp_path), re.M)


def test_a_plugin_generated_from_the_template_installs_and_passes_its_tests(tmp_path, venv):
    python, env = venv
    package = tmp_path / "mln-kitcheck"
    _run([sys.executable, "-m", "copier", "copy", "--quiet", "--defaults", "--data", "plugin_name=kitcheck",
          "--data", "keyword=kit_note", "--data", "author=The mln CI", TEMPLATE, package], env,
         what="copier copy contrib/plugin-template")
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == [".copier-answers.yml", ".gitignore", "README.md", "pyproject.toml",
                     "src/mln_kitcheck/__init__.py", "tests/test_mln_kitcheck.py"], files
    assert "kit_note" in (package / "src/mln_kitcheck/__init__.py").read_text()
    assert 'authors = [{ name = "The mln CI" }]' in (package / "pyproject.toml").read_text()
    _install_and_test(python, env, package, rf"kitcheck +mln-kitcheck 0\.1\.0 +{HOOKS}")
