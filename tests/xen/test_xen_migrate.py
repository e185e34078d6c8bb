"""Live migration of Xen hosts (``mln upgrade`` moving a running host to another server):
the hooks ``mln_live_migration``, ``mln_migrate_in``, ``mln_migrate_out`` and
``mln_migrate_done`` driven as :mod:`mln_core.move` and :mod:`mln_core.upgrade` drive them,
against the FAKE ``xl`` (``fake_xl.py``). Xen cannot run here.

Two servers on one machine: the project is built once; the old server's domains are the
fake's ``domains.json``, the new server's those of ``$FAKE_XL_PEERS/<address>/`` (where the
fake's ``xl migrate`` delivers the guest, as ssh to ``xl migrate-receive`` would). A test
plays one server or the other by pointing the fake at that server's domain list.

Spec 6.6: the original migrates a running Xen host live only when its image is on shared
storage (``isOnSan``: ``san_path``), with ``xm migrate --live <host>.<project> <receiver>``;
xl migrates live by default: ``xl migrate <host>.<project> <receiver>``.
"""
from __future__ import annotations

import os
import shutil

import pytest

from mln_core.config import load_config
from mln_core.context import Context
from mln_core.errors import MlnError
from mln_core.lifecycle import Engine
from mln_core.move import migrate_in, shared_disks
from mln_core.plugins import make_plugin_manager
from mln_core.store import Store
from mln_core.upgrade import WORK, _let_run

from .conftest import FakeXl

TARGET = "10.0.0.2"           # the new server's underlay address (mln_migrate_in's address)

PROJECT = """\
global {
    project mig
}

superclass xenhost {
    xen
    memory 128M
    network eth0 {
        switch lan
    }
}

host shared {
    superclass xenhost
    filepath @SAN@
}

host local {
    superclass xenhost
}

host swapper {
    superclass xenhost
    filepath @SAN@
    swap 16M
}

switch lan {
}
"""


@pytest.fixture
def mig(xen_env, fake_xl: FakeXl, monkeypatch):
    """Project ``mig`` built, ``san_path`` naming the directory of host ``shared``'s disk; the
    fake xl on this process's PATH (the hooks run here, as in a server's mln)."""
    env = xen_env
    san = env.root / "san"
    san.mkdir()
    with open(env.config, "a") as f:
        f.write(f"san_path {san}\n")
    path = env.write("mig.mln", PROJECT.replace("@SAN@", str(san)))
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "Traceback" not in r.output
    fake_xl.clear()
    env.peers = env.root / "xen-peers"
    env.env["FAKE_XL_PEERS"] = str(env.peers)
    for key in ("PATH", "FAKE_XL_LOG", "FAKE_XL_STATE", "FAKE_XL_PEERS"):
        monkeypatch.setenv(key, env.env[key])
    env.san = san
    return env


def engine_of(env, project: str | None = "mig"):
    """A context and engine as a server's mln command has them (bound to the stored project)."""
    ctx = Context(config=load_config(env={"MLN_CONFIG": str(env.config)}), pm=make_plugin_manager())
    engine = Engine(ctx)
    if project:
        engine.open(project)
    return ctx, engine


class Server:
    """Which server's domains the fake xl sees (and where it logs): the old one ("source",
    the fake's own files) or the new one (``$FAKE_XL_PEERS/<TARGET>/``)."""

    def __init__(self, env, fake: FakeXl, monkeypatch):
        self.env, self.fake, self.mp = env, fake, monkeypatch
        self.peer = env.peers / TARGET
        self.peer.mkdir(parents=True, exist_ok=True)

    def be(self, which: str) -> None:
        state, log = ((self.fake.state_file, self.fake.log) if which == "source" else
                      (self.peer / "domains.json", self.peer / "calls.jsonl"))
        for key, value in (("FAKE_XL_STATE", state), ("FAKE_XL_LOG", log)):
            self.mp.setenv(key, str(value))
            self.env.env[key] = str(value)

    def target_domains(self) -> dict:
        import json
        f = self.peer / "domains.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def target_argvs(self) -> list[list[str]]:
        import json
        f = self.peer / "calls.jsonl"
        return [json.loads(line)["argv"] for line in f.read_text().splitlines()] if f.exists() else []


@pytest.fixture
def servers(mig, fake_xl, monkeypatch) -> Server:
    s = Server(mig, fake_xl, monkeypatch)
    s.be("source")
    return s


def migrate_out_as_mln(engine, name: str, host: str, incoming: dict) -> dict:
    """:func:`mln_core.move.migrate_out`: the host as the old project has it, which a held
    upgrade keeps in ``<project>/.upgrade/old`` (made here from the stored project)."""
    from mln_core.move import migrate_out
    pdir = engine.store.project_dir(name)
    old = os.path.join(pdir, WORK, "old")
    os.makedirs(old, exist_ok=True)
    shutil.copyfile(engine.store.source_path(name), os.path.join(old, f"{name}.mln"))
    Store.write_state(old, Store.read_state(pdir))
    try:
        return migrate_out(engine, name, host, incoming)
    finally:
        shutil.rmtree(os.path.join(pdir, WORK), ignore_errors=True)


# -- planning (manager) -----------------------------------------------------------------------------

def live(ctx, engine, host: str):
    """What the manager's Mover asks: ``shared`` is the old server's san_path verdict."""
    return ctx.pm.hook.mln_live_migration(host=ctx.project.hosts[host], shared=host in shared_disks(engine, "mig"),
                                          ctx=ctx)


def test_a_host_on_shared_storage_moves_live_one_on_its_server_cold(mig):
    ctx, engine = engine_of(mig)
    # (a disk with a swap disk beside it in the project directory moves by copy)
    assert set(shared_disks(engine, "mig")) == {"shared"}
    assert live(ctx, engine, "shared") == "live: xl migrate (its disk is on shared storage)"
    # a disk in the project's images/ directory (not under a san_path directory): cold
    assert live(ctx, engine, "local") is None


def test_a_failed_precondition_is_named(mig):
    """Root disk shared, but its swap disk is made afresh on each server: the running guest
    cannot keep it. The error names the host and the precondition."""
    ctx, engine = engine_of(mig)
    with pytest.raises(MlnError) as e:
        ctx.pm.hook.mln_live_migration(host=ctx.project.hosts["swapper"], shared=True, ctx=ctx)
    text = str(e.value)
    assert text.startswith("host swapper: cannot move live while it runs: its swap disk"), text
    assert "stop it to move it cold" in text


def test_no_san_path_no_live_move(mig):
    lines = [ln for ln in mig.config.read_text().splitlines() if not ln.startswith("san_path")]
    mig.config.write_text("\n".join(lines) + "\nsan_path /somewhere/else\n")
    ctx, engine = engine_of(mig)
    assert shared_disks(engine, "mig") == {}
    assert live(ctx, engine, "shared") is None and live(ctx, engine, "swapper") is None


def arriving_shared(env, engine, host: str = "shared") -> None:
    """The new server's record of the arriving host: the old server's disk as it is, marked
    shared (what mln_core.move.arriving_disk makes of the move's ``disk``)."""
    pdir = env.projects / "mig"
    disk = shared_disks(engine, "mig")[host]
    state = Store.read_state(str(pdir))
    state["hosts"][host]["disk"] = disk
    Store.write_state(str(pdir), state)
    engine.open("mig")


# -- the move itself (new server, old server, new server) ---------------------------------------------

def test_live_move_runs_xl_migrate_and_the_guest_runs_on_the_new_server(mig, servers: Server, fake_xl):
    env = mig
    fake_xl.set_domains({"shared.mig": "-b----", "local.mig": "-b----"})     # running on the old server
    ctx, engine = engine_of(env)
    shared = ctx.project.hosts["shared"]

    servers.be("target")
    arriving_shared(env, engine)
    incoming = migrate_in(engine, "mig", "shared", TARGET)
    assert incoming["xen"] == TARGET and incoming["disk"] == str(env.san / "shared.mig")
    assert servers.target_argvs() == [["list", "shared.mig"], ["info"]]       # not running there; memory

    servers.be("source")
    fake_xl.clear()
    sent = migrate_out_as_mln(engine, "mig", "shared", incoming)
    assert sent["downtime_ms"] == 0 and isinstance(sent["total_ms"], int) and sent["total_ms"] >= 0
    # spec 6.6: xm migrate --live <host>.<project> <receiver>; xl migrates live by default
    assert fake_xl.argvs() == [["list", "shared.mig"], ["migrate", "shared.mig", TARGET]]
    assert fake_xl.domains() == {"local.mig": "-b----"}                       # gone from the old server
    assert servers.target_domains() == {"shared.mig": "-b----"}
    assert ["migrate-receive"] in servers.target_argvs()

    # the new server: the upgrade's settle lets arrived guests run (mln_migrate_done)
    servers.be("target")
    ram = env.projects / "mig" / "hosts" / "shared" / "shared.ram"
    ram.parent.mkdir(parents=True, exist_ok=True)
    ram.write_text("Xen saved domain, xl format\nshared.mig\n")                # stale, from an earlier life
    _let_run(engine, [shared])
    assert not ram.exists()
    assert ctx.pm.hook.mln_host_status(host=shared, ctx=ctx) == "up"
    r = env.mln("status", "-p", "mig", "-h", "shared")
    assert "mig host shared up" in r.stdout and "Traceback" not in r.output, r.output
    r = env.mln("stop", "-p", "mig", "-h", "shared")
    assert r.returncode == 0 and "Traceback" not in r.output, r.output
    assert servers.target_argvs()[-1][0] == "list" and ["shutdown", "shared.mig"] in servers.target_argvs()
    assert servers.target_domains() == {}


def test_a_guest_that_arrived_paused_is_unpaused(mig, servers: Server):
    ctx, engine = engine_of(mig)
    servers.be("target")
    (servers.peer / "domains.json").write_text('{"shared.mig": "--p---"}')
    assert ctx.pm.hook.mln_migrate_done(host=ctx.project.hosts["shared"], ctx=ctx) is True
    assert ["unpause", "shared.mig"] in servers.target_argvs()
    assert servers.target_domains() == {"shared.mig": "-b----"}
    (servers.peer / "domains.json").write_text("{}")
    with pytest.raises(MlnError, match="its guest has not arrived"):
        ctx.pm.hook.mln_migrate_done(host=ctx.project.hosts["shared"], ctx=ctx)


def test_failing_xl_migrate_leaves_the_guest_running_on_the_old_server(mig, servers: Server, fake_xl):
    env = mig
    fake_xl.set_domains({"shared.mig": "-b----"})
    ctx, engine = engine_of(env)
    servers.be("target")
    arriving_shared(env, engine)
    incoming = migrate_in(engine, "mig", "shared", TARGET)
    servers.be("source")
    fake_xl.clear()
    env.env["FAKE_XL_FAIL_MIGRATE"] = "1"
    os.environ["FAKE_XL_FAIL_MIGRATE"] = "1"
    try:
        with pytest.raises(MlnError) as e:
            migrate_out_as_mln(engine, "mig", "shared", incoming)
    finally:
        del os.environ["FAKE_XL_FAIL_MIGRATE"]
    text = str(e.value)
    assert text.startswith("host shared: live migration failed, the guest runs on here: "), text
    assert "Migration failed, resuming at sender." in text and "Traceback" not in text
    # xl list after the failure: the domain is still listed, running, on the old server
    assert fake_xl.argvs() == [["list", "shared.mig"], ["migrate", "shared.mig", TARGET], ["list", "shared.mig"]]
    assert fake_xl.domains() == {"shared.mig": "-b----"} and servers.target_domains() == {}
    assert ctx.pm.hook.mln_host_status(host=ctx.project.hosts["shared"], ctx=ctx) == "up"


def test_the_new_server_checks_it_is_ready(mig, servers: Server, fake_xl, monkeypatch):
    ctx, engine = engine_of(mig)
    servers.be("target")
    # a disk made here from the template (not the shared one the guest runs on)
    with pytest.raises(MlnError, match="its disk here is not the shared disk it runs on"):
        migrate_in(engine, "mig", "local", TARGET)
    arriving_shared(mig, engine)
    # already running there
    (servers.peer / "domains.json").write_text('{"shared.mig": "-b----"}')
    with pytest.raises(MlnError, match="domain shared.mig already runs on this server"):
        migrate_in(engine, "mig", "shared", TARGET)
    (servers.peer / "domains.json").write_text("{}")
    # not enough memory free for the guest (128 MB)
    monkeypatch.setenv("FAKE_XL_FREE_MEMORY", "64")
    with pytest.raises(MlnError, match="Xen has 64 MB free here, the guest needs 128 MB"):
        migrate_in(engine, "mig", "shared", TARGET)
    monkeypatch.delenv("FAKE_XL_FREE_MEMORY")
    # its configuration was not written here
    cfg = mig.projects / "mig" / "shared_xen.cfg"
    cfg.rename(cfg.with_suffix(".away"))
    try:
        with pytest.raises(MlnError, match="its Xen configuration .*shared_xen.cfg was not written here"):
            migrate_in(engine, "mig", "shared", TARGET)
    finally:
        cfg.with_suffix(".away").rename(cfg)
    with pytest.raises(MlnError, match="not an address"):
        migrate_in(engine, "mig", "shared", "-oProxyCommand=x")
    # this server does not list the shared storage with san_path
    lines = [ln for ln in mig.config.read_text().splitlines() if not ln.startswith("san_path")]
    mig.config.write_text("\n".join(lines) + "\n")
    ctx, engine = engine_of(mig)
    with pytest.raises(MlnError, match=r"this server does not count its disk as shared storage \(both servers "
                                       r"must list it with san_path\): its disk .*/shared.mig is not under"):
        migrate_in(engine, "mig", "shared", TARGET)
    assert not any(a[0] == "migrate" for a in fake_xl.argvs())


def test_the_old_server_checks_before_anything_moves(mig, servers: Server, fake_xl):
    ctx, engine = engine_of(mig)
    fake_xl.set_domains({"shared.mig": "-b----"})
    servers.be("target")
    arriving_shared(mig, engine)
    incoming = migrate_in(engine, "mig", "shared", TARGET)
    servers.be("source")
    for bad, said in ((dict(incoming, cpu="some other vendor"), "the servers' CPUs differ"),
                      (dict(incoming, disk="/elsewhere/shared.mig"), "not the same shared disk"),
                      (dict(incoming, xen="-s evil"), "not a place to send a Xen guest to")):
        fake_xl.clear()
        with pytest.raises(MlnError, match=said):
            migrate_out_as_mln(engine, "mig", "shared", bad)
        assert not any(a[0] == "migrate" for a in fake_xl.argvs())
    fake_xl.set_domains({})
    with pytest.raises(MlnError, match="domain shared.mig does not run here"):
        migrate_out_as_mln(engine, "mig", "shared", incoming)
    assert fake_xl.domains() == {} and servers.target_domains() == {}
