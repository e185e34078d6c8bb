"""Shell completion of ``mln`` (click's): the scripts, and the values it completes
(project names for ``-p``, the project's hosts for ``-h``), asked as bash asks them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "mln"       # the console script of this Python


def mln_command() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mln_core.cli"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A projects directory with two built projects (as the store sees them) and an
    mln.conf naming it."""
    projects = tmp_path / "projects"
    for name, hosts in (("alpha", ["web", "db", "dns"]), ("beta", ["one"])):
        pdir = projects / name
        pdir.mkdir(parents=True)
        (pdir / f"{name}.mln").write_text(f"global {{\n    project {name}\n}}\n")
        (pdir / "state.json").write_text(json.dumps({"hosts": {h: {} for h in hosts}, "switches": {}}))
    (projects / "not-a-project").mkdir()                    # no project file: not listed
    conf = tmp_path / "mln.conf"
    conf.write_text(f"projects {projects}\n")
    monkeypatch.setenv("MLN_CONFIG", str(conf))
    return projects


def complete(words: str, env_extra: dict | None = None) -> list[str]:
    """What ``mln`` answers bash's request for the last of ``words``."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**os.environ, "_MLN_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword),
           **(env_extra or {})}
    r = subprocess.run(mln_command(), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_the_bash_script_comes_from_click_variable():
    r = subprocess.run(mln_command(), env={**os.environ, "_MLN_COMPLETE": "bash_source"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "_MLN_COMPLETE=bash_complete" in r.stdout
    assert "complete -o nosort -F _mln_completion mln" in r.stdout
    for shell in ("zsh", "fish"):
        r = subprocess.run(mln_command(), env={**os.environ, "_MLN_COMPLETE": f"{shell}_source"},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and f"_MLN_COMPLETE={shell}_complete" in r.stdout, r.stdout + r.stderr


def test_commands_projects_and_hosts_complete(store):
    assert {"plain,start", "plain,status", "plain,stop"} <= set(complete("mln st"))
    assert complete("mln start -p ") == ["plain,alpha", "plain,beta"]
    assert complete("mln status -p a") == ["plain,alpha"]
    assert complete("mln remove -p x") == []
    assert complete("mln stop -p alpha -h ") == ["plain,db", "plain,dns", "plain,web"]
    assert complete("mln console -p alpha -h d") == ["plain,db", "plain,dns"]
    assert complete("mln start -h ") == []                  # no -p: no hosts
    assert complete("mln start -p nosuch -h ") == []


def test_projects_of_the_projects_directory_of_minus_P(store, tmp_path):
    other = tmp_path / "other"
    (other / "gamma").mkdir(parents=True)
    (other / "gamma" / "gamma.mln").write_text("global {\n    project gamma\n}\n")
    assert complete(f"mln -P {other} start -p ") == ["plain,gamma"]
    assert complete(f"mln start -P {other} -p ") == ["plain,gamma"]     # -P after the command too
    assert complete("mln start -p ", {"MLN_CONFIG": str(tmp_path / "missing.conf")}) == []


@pytest.mark.skipif(not SCRIPT.exists() or not shutil.which("bash"), reason="no mln console script or bash")
def test_bash_completes_a_project_name_with_the_script(store):
    """The script itself, in bash: Tab after ``mln start -p b`` offers ``beta``."""
    source = subprocess.run([str(SCRIPT)], env={**os.environ, "_MLN_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60).stdout
    program = source + '\nCOMP_WORDS=(mln start -p b); COMP_CWORD=3; _mln_completion mln\n' \
                       'printf "%s\\n" "${COMPREPLY[@]}"\n'
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["beta"], r.stdout + r.stderr
