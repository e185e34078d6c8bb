"""Putting a finished build in place, and removing a project: journaled, so that a kill
at any moment leaves the complete old project or the complete new one (or, for
``remove``, none), never a mix, never none where there was one.

The journal is ``<projects>/.<project>.commit`` (:mod:`mln_core.journal`), beside the
project directory, which the commit renames. Its ``phase``:

``outside``  the files the build made outside the project directory (``filepath`` disks)
             are moved in, each replaced file aside (:class:`mln_core.store.OutsideFiles`).
             A kill here is rolled back: the files go back, the staging directory is
             deleted, the old project is as it was.
``replace``  the replaced project's resources outside its directory are removed (its
             set-aside files, volumes, switches). From here on a kill is finished:
``hosts``    plugins put in place what they made under a temporary name (``mln_commit_host``),
``swap``     the old project directory is renamed ``.<project>.old-<pid>``, the staging
             directory renamed into its place, the old one deleted.

``remove`` journals ``op: remove``: a removal that was killed is finished.

Each step is a named step of the seam (``build P: outside file 1``, ``build P: remove
replaced``, ``build P: commit hosts``, ``build P: set old aside``, ``build P: move in``,
``build P: delete replaced``, ``remove P: resources``, ``remove P: directory``), where
``MLN_FAULTS`` kills or fails mln in tests. The next command on the project (any command
that takes its lock: :meth:`Engine.locked`, ``build``) calls :func:`recover` first.
"""
from __future__ import annotations

import os
import shutil

from . import owners
from .errors import MlnError, Problems
from .journal import Journal
from .model import Host, Project, Switch
from .project import Loaded, load_project
from .store import OutsideFiles, Store

PHASES = ("outside", "replace", "hosts", "swap")


def journal_path(store: Store, project: str) -> str:
    return os.path.join(store.root, f".{project}.commit")


def pending(store: Store, project: str) -> bool:
    """A build commit or a removal of ``project`` was interrupted."""
    return os.path.lexists(journal_path(store, project))


def _step(ctx, op: str, project: str, what: str) -> None:
    ctx.on().step(f"{op} {project}: {what}")


# -- build ---------------------------------------------------------------------------------

def commit_build(engine, project: Project, staging: str, outside: OutsideFiles,
                 old: Loaded | None, existed: bool) -> None:
    """Put the build in ``staging`` in place of the project (lock held)."""
    store, ctx, name = engine.store, engine.ctx, project.name
    ctx.refuse_warnings("build")                  # --strict: before anything is put in place
    journal = Journal(journal_path(store, name))
    journal.save(op="build", pid=os.getpid(), project=name, phase="outside", staging=staging,
                 existed=existed, trash=os.path.join(store.root, f".{name}.old-{os.getpid()}"),
                 moves=outside.moves())
    try:
        for n, (final, staged, aside, _host) in enumerate(journal.data["moves"]):
            _step(ctx, "build", name, f"outside file {n + 1}")
            OutsideFiles.move_in(final, staged, aside)
    except BaseException:
        for final, staged, aside, _host in reversed(journal.data["moves"]):
            OutsideFiles.move_back(final, staged, aside)
        journal.remove()
        raise
    outside.committed()
    pdir = store.project_dir(name)
    for final, _staged, _aside, host in journal.data["moves"]:
        owners.claim(final, pdir, host)
    journal.save(phase="replace")
    _forward(engine, journal, project, outside, old)


def _forward(engine, journal: Journal, project: Project | None, outside: OutsideFiles,
             old: Loaded | None) -> None:
    """The build's commit from its journal's phase on (``replace`` or later) to the end."""
    store, ctx, data = engine.store, engine.ctx, journal.data
    name, staging, trash = data["project"], data["staging"], data["trash"]
    pdir = store.project_dir(name)
    if data["phase"] == "replace":
        if data.get("existed") and old is not None and os.path.isdir(pdir):
            _step(ctx, "build", name, "remove replaced")
            engine._bind(old.project, pdir)          # ctx.path names the replaced files, set aside
            ctx.outside_files = outside
            try:
                remove_outside(engine, old, best_effort=True)
            finally:
                ctx.outside_files = None
        journal.save(phase="hosts")
    if data["phase"] == "hosts":
        if os.path.isdir(staging):
            _step(ctx, "build", name, "commit hosts")
            if project is None:
                project = _load(store.source_path(name, staging), ctx) or Project(name=name)
            engine._commit(staging, project, outside)
        journal.save(phase="swap")
    if data.get("existed") and os.path.isdir(staging) and os.path.isdir(pdir) and not os.path.lexists(trash):
        _step(ctx, "build", name, "set old aside")
        os.replace(pdir, trash)
    if os.path.isdir(staging) and not os.path.lexists(pdir):
        _step(ctx, "build", name, "move in")
        os.replace(staging, pdir)
    if os.path.lexists(trash):
        _step(ctx, "build", name, "delete replaced")
        shutil.rmtree(trash, ignore_errors=True)
    journal.remove()


def _roll_back(engine, journal: Journal) -> None:
    """A build killed while its outside files moved in: put them back, drop the build."""
    data = journal.data
    for final, staged, aside, _host in reversed(data.get("moves", [])):
        OutsideFiles.move_back(final, staged, aside)
    if data.get("staging"):
        Store.discard_staging(data["staging"])
    journal.remove()


# -- remove --------------------------------------------------------------------------------

def remove(engine, loaded: Loaded, lock=None) -> None:
    """Remove the stored project ``loaded`` (lock held, ``ctx`` bound to it, nothing runs)."""
    store, ctx, name = engine.store, engine.ctx, loaded.project.name
    journal = Journal(journal_path(store, name))
    journal.save(op="remove", pid=os.getpid(), project=name, phase="remove")
    try:
        _step(ctx, "remove", name, "resources")
        remove_outside(engine, loaded)
    except MlnError:
        journal.remove()                    # a plugin refused: the project stays, as it said
        raise
    _finish_remove(engine, journal, loaded, lock)


def _finish_remove(engine, journal: Journal, loaded: Loaded | None, lock=None) -> None:
    store, ctx, name = engine.store, engine.ctx, journal.data["project"]
    pdir = store.project_dir(name)
    paths = owners.recorded_paths(ctx.state or {}) if loaded is not None else set()
    if os.path.lexists(pdir):
        _step(ctx, "remove", name, "directory")
        trash = os.path.join(store.root, f".{name}.removed-{os.getpid()}")
        os.replace(pdir, trash)              # gone at once for every other command
        shutil.rmtree(trash, ignore_errors=True)
    for path in paths:
        owners.release(path, pdir)
    for stale, _pid in store.leftovers(rf"\.{_re(name)}\.removed-(\d{{1,9}})"):
        shutil.rmtree(stale, ignore_errors=True)
    if lock is not None:
        lock.unlink()                       # still held: no second command can take it meanwhile
    journal.remove()


def remove_outside(engine, loaded: Loaded, best_effort: bool = False) -> None:
    """Let plugins delete what they made outside the project directory (``engine.ctx``
    must be bound to that project). ``best_effort`` (a project being replaced by a build
    that has succeeded, or a removal being finished): a failure is a warning, and the rest
    is still removed."""
    project, hook, ctx = loaded.project, engine.hook, engine.ctx
    steps = [(f"host {h.name}", lambda h=h: engine._detach_disk(h)) for h in project.hosts.values()]
    steps += [(f"host {h.name}", lambda h=h: hook.mln_remove_host(host=h, ctx=ctx))
              for h in project.hosts.values()]
    steps += [(f"switch {s.name}", lambda s=s: hook.mln_remove_switch(switch=s, ctx=ctx))
              for s in project.switches.values()]
    steps.append((f"project {project.name}", lambda: hook.mln_remove_project(project=project, ctx=ctx)))
    for what, step in steps:
        try:
            step()
        except Exception as e:
            if not best_effort:
                raise
            ctx.log(f"warning: removing the project's {what}: {e}")


def _re(text: str) -> str:
    import re
    return re.escape(text)


# -- recovery ------------------------------------------------------------------------------

def recover(engine, name: str) -> None:
    """Finish or roll back a build commit or a removal of ``name`` that was killed (lock held)."""
    store, ctx = engine.store, engine.ctx
    path = journal_path(store, name)
    if not os.path.lexists(path):
        if os.path.lexists(path + ".tmp"):
            os.unlink(path + ".tmp")        # killed while the first record was written
        return
    data = Journal.load(path)
    journal = Journal(path, data)
    if not data or data.get("project") != name:
        journal.remove()                   # damaged before it said anything: nothing was done
        return
    pdir = store.project_dir(name)
    if data.get("op") == "remove":
        ctx.log(f"+---> project {name}: a removal was interrupted (finishing it)")
        loaded = None
        if os.path.isdir(pdir):
            loaded = read_or_recorded(engine, name, pdir)
            remove_outside(engine, loaded, best_effort=True)
        _finish_remove(engine, journal, loaded)
        return
    if data.get("phase") not in PHASES[1:]:
        ctx.log(f"+---> project {name}: a build was interrupted while it was put in place "
                "(rolling it back: the old project stays)")
        _roll_back(engine, journal)
        return
    ctx.log(f"+---> project {name}: a build was interrupted while it was put in place (finishing it)")
    outside = OutsideFiles(data["staging"])
    outside.staged = {final: staged for final, staged, _aside, _host in data.get("moves", [])}
    outside.committed()
    old = None
    if data["phase"] == "replace" and data.get("existed") and os.path.isdir(pdir):
        old = read_or_recorded(engine, name, pdir)
    _forward(engine, journal, None, outside, old)


def read_or_recorded(engine, name: str, pdir: str) -> Loaded:
    """The project stored in ``pdir``, bound to the context; if its file no longer reads,
    a project made from its recorded state (its hosts and switches by name and
    hypervisor), enough to remove what was built."""
    ctx = engine.ctx
    try:
        loaded = load_project(engine.store.source_path(name, pdir), ctx)
    except (MlnError, OSError) as e:
        ctx.log(f"warning: project {name}: its saved file cannot be read ({e}); using what its "
                f"recorded state ({os.path.join(pdir, 'state.json')}) names")
        loaded = recorded_project(name, pdir)
    try:
        engine._bind(loaded.project, pdir)
    except MlnError as e:
        ctx.log(f"warning: {e}")
        engine._bind(loaded.project, pdir, state={"hosts": {}, "switches": {}})
    return loaded


def recorded_project(name: str, pdir: str) -> Loaded:
    """A project with the hosts and switches ``pdir``'s state records (no settings)."""
    try:
        state = Store.read_state(pdir)
    except MlnError:
        state = {}
    hosts = {h: Host(name=h, project=name, hypervisor=str((e or {}).get("hypervisor") or ""),
                     template="", memory=0)
             for h, e in (state.get("hosts") or {}).items() if isinstance(h, str)}
    switches = {s: Switch(name=s, project=name) for s in (state.get("switches") or {}) if isinstance(s, str)}
    return Loaded(doc=None, resolved=None, project=Project(name=name, hosts=hosts, switches=switches),
                  problems=Problems())


def _load(path: str, ctx) -> Project | None:
    try:
        return load_project(path, ctx).project
    except (MlnError, OSError):
        return None
