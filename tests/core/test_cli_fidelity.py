"""Fidelity to the original, from the user's side: ``mln setup`` and ``mln version``,
``parse`` answers (``-H`` prints the block's contents; the keys filled in after parsing),
``start -s`` / ``stop -s`` pauses, ``stop -w`` (``i`` waits for ever), ``status -s``,
``-q`` and exit codes.

The lifecycle tests run a fake hypervisor plugin (installed with the ``site`` fixture)
whose guests are marker files, so that ``build``, ``start``, ``stop`` and ``status``
run for real, in-process, without booting anything.
"""
from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mln_core.config import SYSTEM_CONFIG, load_config
from mln_core.setup_config import config_target

from .test_plugins import site  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------
# version
# ---------------------------------------------------------------------------------------

def test_version_prints_what_dash_dash_version_prints(mln):
    code, out, _ = mln("version")
    code2, out2, _ = mln("--version")
    assert (code, code2) == (0, 0)
    assert out == out2 and out.startswith("mln, version ")


# ---------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------

@pytest.fixture
def target(tmp_path, monkeypatch):
    """MLN_CONFIG names a file that does not exist yet: what ``mln setup`` writes."""
    path = tmp_path / "conf" / "mln.conf"
    monkeypatch.setenv("MLN_CONFIG", str(path))
    return path


def _dirs(tmp_path) -> list[str]:
    return ["-P", str(tmp_path / "p"), "--templates", str(tmp_path / "t"), "--files", str(tmp_path / "f")]


def test_setup_writes_the_configuration_makes_the_directories_and_checks_the_host(mln, tmp_path, target):
    code, out, err = mln("setup", *_dirs(tmp_path))
    assert code == 0, err
    cfg = load_config(env={"MLN_CONFIG": str(target)})
    assert (cfg.projects_dir, cfg.templates_dir, cfg.files_dir) == \
        (str(tmp_path / "p"), str(tmp_path / "t"), str(tmp_path / "f"))
    for d in "ptf":
        assert (tmp_path / d).is_dir()
    assert f"+---> wrote {target}\n" in err
    assert f"+---> projects  {tmp_path / 'p'} (created)" in err
    # the host check of mln doctor, on stdout
    code_d, doctor, _ = mln("doctor")
    assert out == doctor
    assert out.splitlines()[-1].startswith(("the default hypervisor", "no installed plugin"))
    assert "# default_memory 128M" in target.read_text()         # mln's defaults, as comments


def test_setup_without_a_terminal_never_changes_an_existing_configuration(mln, tmp_path, target):
    target.parent.mkdir()
    target.write_text("projects /srv/old\ndefault_memory 512M\n")
    code, out, err = mln("setup", *_dirs(tmp_path))
    assert code == 1
    assert err == (f"mln: error: {target} exists; mln setup changes it only when asked on a terminal, "
                   "or with --force (the old file is kept as .bak)\n")
    assert target.read_text() == "projects /srv/old\ndefault_memory 512M\n"
    assert not (tmp_path / "p").exists() and out == ""


def test_setup_force_changes_the_three_directories_and_keeps_the_rest(mln, tmp_path, target):
    target.parent.mkdir()
    target.write_text("# mine\nprojects /srv/old\nprojects /srv/older\ndefault_memory 512M\n")
    code, _, err = mln("setup", "--force", *_dirs(tmp_path))
    assert code == 0, err
    assert target.read_text() == (f"# mine\nprojects {tmp_path / 'p'}\ndefault_memory 512M\n"
                                  f"templates {tmp_path / 't'}\nfiles {tmp_path / 'f'}\n")
    assert Path(f"{target}.bak").read_text().startswith("# mine\nprojects /srv/old\n")
    assert f"(the old one is {target}.bak)" in err


def test_setup_keeps_the_existing_values_it_is_not_given(mln, tmp_path, target):
    target.parent.mkdir()
    target.write_text(f"projects {tmp_path / 'keep'}\n")
    code, _, err = mln("setup", "-f", "-T", str(tmp_path / "t"), "-F", str(tmp_path / "f"))
    assert code == 0, err
    assert f"projects {tmp_path / 'keep'}\n" in target.read_text()
    assert (tmp_path / "keep").is_dir()


def test_setup_defaults_for_a_user(mln, tmp_path, target, monkeypatch):
    # the UML probe's verdict stays where it is cached (no new probe boot under the new HOME)
    monkeypatch.setenv("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, _, err = mln("setup")
    assert code == 0, err
    text = target.read_text()
    assert "projects ~/mln/projects\ntemplates ~/mln/templates\nfiles ~/mln/files\n" in text
    for d in ("projects", "templates", "files"):
        assert (tmp_path / "home" / "mln" / d).is_dir()


def test_setup_relative_directories_are_written_absolute(mln, tmp_path, target, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = mln("setup", "-P", "rel/p", "-T", "rel/t", "-F", "~/files-of-mine")
    assert code == 0, err
    assert f"projects {tmp_path / 'rel' / 'p'}\n" in target.read_text()
    assert "files ~/files-of-mine\n" in target.read_text()


def test_setup_warns_about_an_unset_variable(mln, tmp_path, target, monkeypatch):
    monkeypatch.delenv("MLN_NO_SUCH_VAR", raising=False)
    code, _, err = mln("setup", "-P", str(tmp_path / "p/$MLN_NO_SUCH_VAR"), "-T", str(tmp_path / "t"),
                       "-F", str(tmp_path / "f"))
    assert code == 0, err
    assert "$MLN_NO_SUCH_VAR is not set here, so mln reads it literally" in err


def test_setup_writes_the_system_file_as_root_and_the_user_file_otherwise():
    assert config_target({}, euid=0) == SYSTEM_CONFIG == "/etc/mln/mln.conf"
    assert config_target({}, euid=1000) == os.path.expanduser("~/.mln")
    assert config_target({"MLN_CONFIG": "/x/y.conf"}, euid=0) == "/x/y.conf"


def _on_terminal(args: list[str], answers: str, env: dict, cwd: Path) -> tuple[int, str]:
    """Run ``mln ARGS`` with a pseudo-terminal as stdin/stdout/stderr, typing ``answers``."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", *args], stdin=slave, stdout=slave,
                         stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    os.write(master, answers.encode())
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:          # EIO: the command ended
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    try:
        return p.wait(timeout=10), out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"mln {' '.join(args)} still waits on the terminal: {out!r}") from None


def test_setup_asks_on_a_terminal(tmp_path, target):
    env = {**os.environ, "MLN_CONFIG": str(target), "HOME": str(tmp_path / "home"),
           "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")}
    code, out = _on_terminal(["setup", "-T", str(tmp_path / "t")],
                             f"{tmp_path / 'p'}\n\n", env, tmp_path)       # projects typed, files default
    assert code == 0, out
    assert "Projects directory [~/mln/projects]:" in out
    assert "Templates directory" not in out                               # given with -T
    assert "Files directory [~/mln/files]:" in out
    assert f"projects {tmp_path / 'p'}\ntemplates {tmp_path / 't'}\nfiles ~/mln/files\n" in target.read_text()
    # an existing file: asked first; 'no' leaves it alone
    before = target.read_text()
    code, out = _on_terminal(["setup"], "n\n", env, tmp_path)
    assert code == 1
    assert f"{target} exists; change its projects, templates and files lines? [y/N]:" in out
    assert f"mln: error: {target} left as it was" in out
    assert target.read_text() == before
    # -n: no questions, so the existing file is refused as without a terminal
    code, out = _on_terminal(["setup", "-n"], "", env, tmp_path)
    assert code == 1 and "or with --force" in out
    # 'yes', then the directories (the file's values are the defaults)
    code, out = _on_terminal(["setup"], f"y\n\n{tmp_path / 't2'}\n\n", env, tmp_path)
    assert code == 0, out
    assert f"Projects directory [{tmp_path / 'p'}]:" in out
    assert f"templates {tmp_path / 't2'}\n" in target.read_text()


# ---------------------------------------------------------------------------------------
# parse: -H prints contents; what the original fills in after parsing
# ---------------------------------------------------------------------------------------

SWITCHES = """global {
    project ldaptest
}
switch lan {
}
switch back {
    type bridge
}
switch dmz {
    bridge br-dmz
}
switch plain {
}
switch longnamedswitch {
}
host ldap {
    xen
    network eth0 {
        switch lan
        address 10.0.0.1
    }
    network eth1 {
        switch dmz
    }
}
host client {
    network eth0 {
        switch lan
    }
    network eth1 {
        switch plain
    }
    network eth2 {
        switch back
    }
    network eth3 {
        switch plain
    }
}
host far {
    xen
    network eth0 {
        switch longnamedswitch
    }
}
"""


def test_parse_H_prints_the_contents_of_the_block_only(mln, write):
    path = write(SWITCHES)
    code, out, err = mln("parse", "-f", path, "-H", "/host/ldap")
    assert code == 0, err
    assert out == ("xen\nnetwork eth0 {\n\tswitch lan\n\taddress 10.0.0.1\n}\n"
                   "network eth1 {\n\tswitch dmz\n}\n")
    code, out, _ = mln("parse", "-f", path, "-H", "/host/ldap/network/eth0")
    assert (code, out) == (0, "switch lan\naddress 10.0.0.1\n")


@pytest.mark.parametrize("query, expected", [
    ("/switch/lan/hosts/ldap", "eth0"),
    ("/switch/lan/hosts/client", "eth0"),
    ("/switch/back/hosts/client", "eth2"),
    ("/switch/plain/hosts/client", "eth3"),        # two NICs on one switch: the last, as a keyword
    ("/switch/lan/hosts", "1"),
    ("/switch/lan/xen", "1"),                      # a Xen host is on it
    ("/switch/lan/bridge", "lan.ldaptest"),
    ("/switch/dmz/bridge", "br-dmz"),              # the switch names its bridge
    ("/switch/dmz/xen", "1"),
    ("/switch/back/bridge", "back.ldaptest"),      # type bridge: a bridge without Xen hosts
])
def test_parse_answers_what_the_original_fills_in(mln, write, query, expected):
    code, out, err = mln("parse", "-f", write(SWITCHES), "-S", query)
    assert (code, out) == (0, expected + "\n"), err


@pytest.mark.parametrize("query", ["/switch/plain/xen", "/switch/plain/bridge", "/switch/back/xen",
                                   "/switch/lan/hosts/far", "/switch/nosuch/hosts"])
def test_parse_fills_in_nothing_else(mln, write, query):
    code, out, err = mln("parse", "-f", write(SWITCHES), "-S", query)
    assert (code, out, err) == (1, "", f"mln: error: nothing at {query}\n")


def test_parse_lists_a_switch_with_its_hosts(mln, write):
    path = write(SWITCHES)
    code, out, _ = mln("parse", "-f", path, "-A", "/switch/plain/hosts")
    assert (code, out) == (0, "client eth1\nclient eth3\n")
    code, out, _ = mln("parse", "-f", path, "-H", "/switch/lan")
    assert (code, out) == (0, "xen\nbridge lan.ldaptest\nhosts {\n\tldap eth0\n\tclient eth0\n}\n")
    # the tree itself (no query) is the file, nothing filled in
    code, out, _ = mln("parse", "-f", path)
    assert "hosts {" not in out and "lan.ldaptest" not in out


def test_parse_bridge_name_is_the_one_the_backends_use(mln, write):
    from mln_backends.bridges import bridge_name
    from mln_core.model import Switch
    from mln_core.parse_fill import bridge_name as core_bridge_name
    code, out, _ = mln("parse", "-f", write(SWITCHES), "-S", "/switch/longnamedswitch/bridge")
    assert code == 0 and len(out.strip()) <= 15
    assert out.strip() == bridge_name(Switch(name="longnamedswitch", project="ldaptest"))
    for name, project in [("lan", "p"), ("a-very-long-switch", "and-project"), ("s_1", "x.y")]:
        switch = Switch(name=name, project=project)
        assert core_bridge_name(switch) == bridge_name(switch)


# ---------------------------------------------------------------------------------------
# start / stop / status with a fake hypervisor
# ---------------------------------------------------------------------------------------

FAKE = '''
import os, time
from mln_core import hookimpl
from mln_core.model import Disk

RUN = os.environ["FAKE_RUN"]

def _log(*words):
    with open(os.path.join(RUN, "log"), "a") as f:
        f.write(" ".join(map(str, (time.monotonic(), *words))) + "\\n")

def _marker(kind, name):
    return os.path.join(RUN, f"{kind}.{name}")

@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor("fake", ("fake",), "a test hypervisor: guests are marker files")

@hookimpl(tryfirst=True)
def mln_create_disk(host, ctx):
    return Disk(path=f"images/{host.name}", kind="fake") if host.hypervisor == "fake" else None

@hookimpl
def mln_build_host(host, disk, ctx):
    return {"fake": 1} if host.hypervisor == "fake" else None

@hookimpl
def mln_build_switch(switch, ctx):
    return {"kind": "fake"} if switch.tree.get("type") == "fake" else None

@hookimpl
def mln_start_switch(switch, ctx):
    if ctx.switch_state(switch).get("kind") == "fake":
        open(_marker("switch", switch.name), "w").close()
        return True

@hookimpl
def mln_switch_status(switch, ctx):
    if ctx.switch_state(switch).get("kind") == "fake":
        return "up" if os.path.exists(_marker("switch", switch.name)) else "down"

@hookimpl
def mln_stop_switch(switch, ctx):
    if ctx.switch_state(switch).get("kind") == "fake":
        os.unlink(_marker("switch", switch.name))
        return True

@hookimpl
def mln_start_host(host, ctx):
    if host.hypervisor == "fake":
        with open(_marker("host", host.name), "w") as f:
            f.write("up")
        _log("start", host.name)
        return True

@hookimpl
def mln_host_status(host, ctx):
    if host.hypervisor != "fake":
        return None
    try:
        with open(_marker("host", host.name)) as f:
            text = f.read()
    except FileNotFoundError:
        return "down"
    if text.startswith("stopping "):      # a clean shutdown that takes FAKE_SHUTDOWN seconds
        if time.monotonic() >= float(text.split()[1]):
            os.unlink(_marker("host", host.name))
            return "down"
    return "up"

@hookimpl
def mln_stop_host(host, hard, ctx):
    if host.hypervisor != "fake":
        return None
    _log("stop", host.name, "hard" if hard else "clean")
    slow = float(os.environ.get("FAKE_SHUTDOWN", "0"))
    if hard or not slow:
        os.unlink(_marker("host", host.name))
    else:
        with open(_marker("host", host.name), "w") as f:
            f.write(f"stopping {time.monotonic() + slow}")
    return True
'''

PROJECT = """global {
    project fid
}
switch lan {
    type fake
}
switch wan {
    type fake
}
superclass node {
    fake
    network eth0 {
        switch lan
    }
}
host one {
    superclass node
    boot_order 1
}
host two {
    superclass node
    boot_order 2
}
host three {
    superclass node
    boot_order 2
}
"""


@pytest.fixture
def fake(mln, write, site, tmp_path, isolated_env, monkeypatch):  # noqa: F811
    """The fake hypervisor installed and the project ``fid`` built; returns its run dir."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("FAKE_RUN", str(run))
    with open(isolated_env, "a") as f:
        f.write(f"\nprojects {tmp_path / 'projects'}\ntemplates {tmp_path / 'templates'}\n")
    site("fakehv", {"fakehv_mod": FAKE}, {"fakehv": "fakehv_mod"})
    code, _, err = mln("build", "-f", write(PROJECT))
    assert code == 0, err
    return run


def _log(run: Path) -> list[tuple[float, str, str]]:
    path = run / "log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(float(t), what, host) for t, what, host, *_ in (ln.split() for ln in lines)]


def _gaps(entries) -> list[float]:
    return [b[0] - a[0] for a, b in zip(entries, entries[1:])]


def test_start_s_pauses_between_hosts(mln, fake):
    code, _, err = mln("start", "-p", "fid", "-s", "0.4")
    assert code == 0, err
    log = _log(fake)
    assert [h for _, what, h in log if what == "start"] == ["one", "two", "three"]   # boot order, 1 at a time
    assert all(g >= 0.39 for g in _gaps(log)), _gaps(log)
    code, _, err = mln("stop", "-p", "fid")
    assert code == 0, err


def test_start_without_s_does_not_pause(mln, fake):
    code, _, err = mln("start", "-p", "fid")
    assert code == 0, err
    assert sum(_gaps(_log(fake))) < 0.39
    mln("stop", "-p", "fid")


def test_stop_s_pauses_between_hosts(mln, fake):
    assert mln("start", "-p", "fid")[0] == 0
    (fake / "log").unlink()
    code, _, err = mln("stop", "-p", "fid", "-s", "0.4")
    assert code == 0, err
    log = _log(fake)
    assert {h for _, _, h in log[:2]} == {"two", "three"} and log[2][2] == "one"   # reverse boot order
    assert all(g >= 0.39 for g in _gaps(log)), _gaps(log)


@pytest.mark.parametrize("forever", ["i", "inf"])
def test_stop_w_i_waits_for_ever(mln, fake, monkeypatch, forever):
    import math

    from mln_core.lifecycle import Engine
    asked = []
    real_stop = Engine.stop

    def stop(self, *args, **kwargs):
        asked.append(kwargs["wait_s"])
        return real_stop(self, *args, **kwargs)
    monkeypatch.setattr(Engine, "stop", stop)
    assert mln("start", "-p", "fid", "-h", "one")[0] == 0
    monkeypatch.setenv("FAKE_SHUTDOWN", "1.2")      # a guest that takes 1.2 s to shut down
    code, _, err = mln("stop", "-p", "fid", "-h", "one", "-w", forever)
    assert code == 0, err
    assert asked == [math.inf]
    assert [w for _, w, _ in _log(fake)] == ["start", "stop"]          # never destroyed
    assert "destroying" not in err and "+---> one: stopped" in err


def test_stop_w_destroys_after_the_wait(mln, fake, monkeypatch):
    assert mln("start", "-p", "fid", "-h", "one")[0] == 0
    monkeypatch.setenv("FAKE_SHUTDOWN", "30")
    code, _, err = mln("stop", "-p", "fid", "-h", "one", "-w", "0.3")
    assert code == 0, err
    assert "+---> one: did not stop in 0.3 s; destroying it" in err
    assert (fake / "log").read_text().splitlines()[-1].endswith("stop one hard")


@pytest.mark.parametrize("bad", ["x", "-1", "nan"])
def test_stop_w_rejects_what_is_not_a_time(mln, fake, bad):
    code, _, err = mln("stop", "-p", "fid", "-w", bad)
    assert code == 2
    assert "is not a number of seconds (0 or more) or 'i' (wait for ever)" in err


def test_status_of_one_switch(mln, fake):
    code, out, _ = mln("status", "-p", "fid", "-s", "lan")
    assert (code, out) == (1, "fid switch lan down\n")
    assert mln("start", "-p", "fid", "-h", "one")[0] == 0       # starts lan (one's switch), not wan
    code, out, _ = mln("status", "-p", "fid", "-s", "lan")
    assert (code, out) == (0, "fid switch lan up\n")
    code, out, _ = mln("status", "-p", "fid", "-s", "wan")
    assert (code, out) == (1, "fid switch wan down\n")
    code, _, err = mln("status", "-p", "fid", "-s", "nosuch")
    assert code == 1 and err == "mln: error: project 'fid' has no switch 'nosuch' (switches: lan, wan)\n"
    code, _, err = mln("status", "-s", "lan")
    assert code == 2 and "-s needs -p PROJECT" in err
    code, _, err = mln("status", "-p", "fid", "-s", "lan", "-h", "one")
    assert code == 2 and "give -h HOST or -s SWITCH, not both" in err
    mln("stop", "-p", "fid")


def test_status_quiet_answers_with_the_exit_code_only(mln, fake):
    assert mln("status", "-p", "fid", "-q") == (1, "", "")
    assert mln("status", "-p", "fid", "-d", "-q") == (0, "", "")
    assert mln("start", "-p", "fid")[0] == 0
    assert mln("status", "-p", "fid", "-q") == (0, "", "")
    assert mln("status", "-p", "fid", "-h", "two", "-q") == (0, "", "")
    assert mln("status", "-p", "fid", "-s", "lan", "-q") == (0, "", "")
    assert mln("status", "-p", "fid", "--format", "json", "-q") == (0, "", "")
    mln("stop", "-p", "fid")


def test_status_exit_codes_as_the_original(mln, fake):
    # nothing up
    assert mln("status", "-p", "fid", "-q")[0] == 1
    assert mln("status", "-p", "fid", "-u", "-q")[0] == 1
    assert mln("status", "-p", "fid", "-d", "-q")[0] == 0
    assert mln("status", "-q")[0] == 0                          # no -p: 0 unless an error
    # some up: -p says 1 (not everything is up), -u says 0 (something is), -d says 1
    assert mln("start", "-p", "fid", "-h", "two")[0] == 0
    code, out, _ = mln("status", "-p", "fid")
    assert code == 1 and "fid host two up\n" in out and "fid host one down\n" in out
    code, out, _ = mln("status", "-p", "fid", "-u")
    assert (code, out) == (0, "fid host two up\nfid switch lan up\n")
    code, out, _ = mln("status", "-p", "fid", "-d")
    assert code == 1 and "two" not in out
    assert mln("status", "-p", "fid", "-h", "two", "-q")[0] == 0
    assert mln("status", "-p", "fid", "-h", "one", "-q")[0] == 1
    assert mln("status", "-p", "fid", "-h", "one", "-u", "-q")[0] == 1
    mln("stop", "-p", "fid")
