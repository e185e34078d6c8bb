"""``mln upgrade``: carry out a plan (:mod:`mln_core.plan`) on a built, maybe running,
project, all or nothing, also when killed.

The steps, each recorded in the journal (``<project>/upgrade.journal``) before it starts:

1. ``stop``: the running hosts that the plan restarts or rebuilds are stopped.
2. ``prepare``: new and changed switches and hosts are built into a staging directory
   beside the project (a changed host's disk is a copy of its old one, individualized
   again), hosts changed live or restarted get their configuration regenerated there.
3. ``commit``: each staged file is moved into the project; the file it replaces is moved
   aside into ``<project>/.upgrade/old`` first (same filesystem: renames only); the new
   project file, state and version go in the same way.
4. ``run``: removed hosts are stopped, new switches started, live changes applied
   (``mln_apply_live``), hosts started. Then the journal says ``done``.
5. ``cleanup``: removed hosts' disks and resources, removed switches, the set-aside files.

A failure in steps 1-4 undoes what was done, in reverse (hosts started are stopped, live
changes reversed, files moved back), and starts again every host that ran before: the
old project runs as it was. A killed upgrade is found by the next command on the project
(:func:`recover`): before ``done`` it is undone the same way; after, its cleanup is
finished. Running the same ``mln upgrade`` again then completes it.
"""
from __future__ import annotations

import copy
import os
import shutil

from . import respan
from .change import DISK_KINDS, Change
from .errors import MlnError
from .journal import Journal as _Journal
from .lang.writer import write_tree
from .lifecycle import recorded_disk
from .model import Disk, Project
from .move import NOT_RUNNING, arriving_disk, note_moves
from .plan import Plan, make_plan
from .private import make_dir, tighten, write_file
from .progress import Progress, parallel
from .project import load_project
from .servers import part
from .store import OutsideFiles, Store, record_helper

JOURNAL = "upgrade.journal"
WORK = ".upgrade"


class Journal(_Journal):
    """The record of an upgrade in progress, ``<project>/upgrade.journal`` (see
    :mod:`mln_core.journal`)."""

    def __init__(self, pdir: str, data: dict | None = None):
        super().__init__(os.path.join(pdir, JOURNAL), data)
        self.pdir = pdir

    @classmethod
    def read(cls, pdir: str) -> Journal | None:
        data = _Journal.load(os.path.join(pdir, JOURNAL), torn={"phase": "stop", "was_running": []})
        return None if data is None else cls(pdir, data)


def upgrade(engine, path: str, simulate: bool = False, start_new: bool = False, yes: bool = False,
            live_hosts: set[str] = frozenset(), keep: bool = False, confirm=None, show=None,
            project: str | None = None, placement: dict | None = None, hold: bool = False,
            moves: dict | None = None) -> Plan:
    """Plan the upgrade of the stored project named in ``path`` to that file and, unless
    ``simulate``, carry it out. ``show(plan)`` prints the plan; ``confirm(question)`` asks
    (None: no terminal, so nothing is done without ``yes``). ``project``: the project the
    user named (``-p``); an error if the file names another. ``placement``: this server's
    part of a project spread over servers (:mod:`mln_core.remote_upgrade` sends it);
    ``hold``: stop short of the cleanup, at phase ``ready``, until :func:`settle`.
    ``moves``: hosts moving between servers (:mod:`mln_core.move`): ``{host: {"from",
    "run", "src", "disk"}}`` for those arriving here, ``{host: {"to"}}`` for those leaving."""
    ctx, store = engine.ctx, engine.store
    loaded = load_project(path, ctx)
    new = loaded.project = part(loaded.project, placement)
    if project is not None and new.name != project:
        raise MlnError(f"{path} names project '{new.name}', not '{project}'")
    for p in loaded.problems.warnings:
        ctx.log(str(p))
    if not store.exists(new.name):
        raise MlnError(f"there is no built project '{new.name}' in {store.root} to upgrade; build it "
                       f"first: mln build -f {path}")
    unknown = sorted(set(live_hosts) - set(new.hosts))
    if unknown:
        raise MlnError(f"-l names hosts that are not in the file: {', '.join(unknown)}")
    with engine.locked(new.name) as old_loaded:
        old = old_loaded.project
        if held(engine, new.name) is not None:
            raise MlnError(f"an upgrade of project '{new.name}' is held on this server, waiting for the word of "
                           f"its manager ({(ctx.state.get('placement') or {}).get('default', '?')}): run the "
                           "upgrade there again")
        had = ctx.state.get("placement") or {}
        if placement is None and len(had.get("servers", [])) > 1:
            raise MlnError(f"project '{new.name}' is spread over servers and managed from "
                           f"{had.get('default')}: upgrade it there")
        status = {h.name: engine.host_status(h) for h in old.hosts.values()}
        spans = (placement or {}).get("spans") or {}
        respanned = {n for n in new.switches if n in old.switches and
                     _span_key((ctx.state.get("switches", {}).get(n) or {}).get("span")) != _span_key(spans.get(n))}
        changing = respan.live(ctx, old, respanned, spans)         # (the others are made again)
        plan = make_plan(old, new, status, store.version(new.name), ctx, set(live_hosts), start_new,
                         respanned - set(changing))
        respan.note(plan, changing)
        note_moves(plan, moves or {})
        if show is not None:
            show(plan)
        keys = ("servers", "hosts", "default")      # a part whose hosts stay, of a project that changes servers
        regrouped = placement is not None and any(had.get(k) != placement.get(k) for k in keys)
        if simulate or (plan.empty and not regrouped):
            if plan.empty and not simulate:
                ctx.log(f"+---> project {new.name}: nothing to change")
            return plan
        if not yes:
            if confirm is None:
                raise MlnError("nothing was changed: add -r to carry out this plan without a terminal "
                               "to confirm it")
            if not confirm("carry out this upgrade?"):
                raise MlnError("nothing was changed")
        _Run(engine, old, old_loaded.doc, new, loaded.doc, plan, keep, placement, hold, moves).run()
    ctx.log(f"+---> PROJECT {new.name} UPGRADED (version {plan.version + 1})")
    return plan


def _span_key(span: dict | None):
    """What matters of a switch's span over servers (not the order of the other servers)."""
    return span and (span.get("vni"), span.get("local"), sorted(span.get("remotes", [])), span.get("mtu"))


class _Run:
    """One upgrade being carried out (or undone); ``mln reconfigure`` carries out its plan
    with it too (``what``: the name of the command, in messages)."""

    what = "upgrade"

    def __init__(self, engine, old: Project, old_doc, new: Project, new_doc, plan: Plan, keep: bool,
                 placement: dict | None = None, hold: bool = False, moves: dict | None = None):
        self.e, self.ctx, self.store = engine, engine.ctx, engine.store
        self.placement, self.hold, self.moves = placement, hold, moves or {}
        self.old, self.new, self.plan, self.keep = old, new, plan, keep
        self.pdir = self.store.project_dir(new.name)
        self.work = os.path.join(self.pdir, WORK)
        self.old_state = copy.deepcopy(self.ctx.state)
        self.old_text = write_tree(old_doc.root)
        self.new_text = write_tree(new_doc.root)
        self.journal = Journal(self.pdir)

    # -- the steps ----------------------------------------------------------------------
    def run(self) -> None:
        plan = self.plan
        shutil.rmtree(self.work, ignore_errors=True)
        tighten(self.pdir)                      # a project of an older mln: made private
        make_dir(self.work)
        make_dir(os.path.join(self.work, "old"))
        write_file(os.path.join(self.work, "new.mln"), self.new_text)
        self.journal.save(pid=os.getpid(), phase="stop", project=self.new.name, version=plan.version + 1,
                          keep=self.keep, was_running=[h.name for h in plan.hosts if h.running],
                          stopped=[], moves=[], started=[], live=[], staging=None,
                          live_moves=sorted(h for h, m in self.moves.items() if m.get("live")),
                          shared_away=sorted(h for h, m in self.moves.items() if m.get("shared") and "to" in m))
        try:
            self._stop_changed()
            self._prepare()
            self._commit()
            self._run_new()
        except BaseException as exc:
            self.ctx.log(f"+---> the {self.what} failed ({exc}); putting project {self.new.name} back as it was")
            try:
                undo(self.e, self.new.name, self.journal)
            except Exception as e2:
                self.ctx.log(f"warning: undoing the upgrade: {e2}")
            raise
        self.journal.save(phase="ready" if self.hold else "done")
        self.e._bind(self.new, self.pdir)
        if not self.hold:
            cleanup(self.e, self.journal)

    def _step(self, name: str) -> None:
        """A named step: traced, and where MLN_FAULTS can fail or kill the upgrade."""
        self.ctx.on().step(f"upgrade {self.new.name}: {name}")

    def _stop_changed(self) -> None:
        todo = [self.old.hosts[h.name] for h in self.plan.hosts if h.restart]
        for h in todo:
            self._step(f"stop {h.name}")
            self.journal.add("stopped", h.name)
        if todo:
            self.e._stop_hosts(todo, hard=False, wait_s=60)
        for sp in self.plan.switches:             # a changed switch is made again: stopped now
            sw = self.old.switches.get(sp.name)
            if sp.action == "rebuilt" and self.e.switch_status(sw) == "up":
                self._step(f"stop switch {sp.name}")
                self.journal.add("switches_stopped", sp.name)
                self.ctx.pm.hook.mln_stop_switch(switch=sw, ctx=self.ctx)

    def _prepare(self) -> None:
        ctx, plan, new = self.ctx, self.plan, self.new
        staging = os.path.join(self.store.root, f".{new.name}.upgrade-{os.getpid()}")
        Store.discard_staging(staging)
        self.journal.save(phase="prepare", staging=staging)
        make_dir(staging)
        for d in ("images", "hosts", "switches"):
            os.makedirs(os.path.join(staging, d))
        self.e._write_hook_scripts(new, staging)
        state = copy.deepcopy(self.old_state)
        if self.placement:                          # where the new file puts the project's hosts
            from .servers import PLACEMENT_KEYS
            state["placement"] = {k: self.placement.get(k) for k in PLACEMENT_KEYS}
        for name in [h.name for h in plan.of("removed")]:
            state.get("hosts", {}).pop(name, None)
        for s in plan.switches:
            if s.action == "removed":
                state.get("switches", {}).pop(s.name, None)
        self.e._bind(new, staging)
        ctx.state = state
        ctx.staging = staging
        ctx.record_helper = lambda pidfile, mountpoint=None: record_helper(staging, pidfile, mountpoint)
        ctx.outside_files = self.outside = OutsideFiles(staging)
        try:
            for s in plan.switches:
                if s.action in ("added", "rebuilt"):
                    self._step(f"build switch {s.name}")
                    sw = new.switches[s.name]
                    span = ((self.placement or {}).get("spans") or {}).get(s.name)
                    state.setdefault("switches", {})[s.name] = {"span": span} if span else {}
                    data = ctx.pm.hook.mln_build_switch(switch=sw, ctx=ctx)
                    if data is None:
                        raise MlnError(f"switch '{s.name}': no installed plugin builds switches of this kind")
                    state["switches"][s.name].update(data if isinstance(data, dict) else {})
            built = [h for h in plan.hosts if h.action in ("added", "rebuilt") and
                     (h.disk or h.action == "added")]
            progress = Progress("building hosts", len(built))
            try:
                for hp in built:
                    self._step(f"build host {hp.name}")
                    make = {"copy": self._copy_disk, "moved": self._moved_disk,
                            "arriving": arriving_disk(self.ctx, self.moves)}.get(hp.disk)
                    self.e._build_host(new.hosts[hp.name], progress, make)
            finally:
                progress.close()
            respan.record(state, self.journal, getattr(plan, "respans", {}))
            for hp in plan.hosts:
                if hp.action in ("restarted", "reconfigured_live", "rebuilt") and not hp.disk:
                    self._step(f"configure host {hp.name}")
                    self._reconfigure(hp)
        finally:
            ctx.outside_files = None
        Store.write_state(staging, state)
        self.new_state = state

    def _copy_disk(self, host) -> Disk:
        old = recorded_disk(self.old_state["hosts"][host.name], self.pdir)
        disk = self.ctx.pm.hook.mln_copy_disk(host=host, disk=old, ctx=self.ctx)
        if disk is None:
            self.ctx.log(f"warning: host {host.name}: its storage cannot copy its disk; it is made afresh "
                         "from its template")
            disk = self.ctx.pm.hook.mln_create_disk(host=host, ctx=self.ctx)
        return disk

    def _moved_disk(self, host) -> Disk:
        """The disk the host had on the server it left (unpacked by :func:`mln_core.move.unpack`)."""
        move = self.moves[host.name]
        try:
            recorded = Disk(**move["disk"])
        except TypeError:
            raise MlnError("the server it left recorded its disk wrongly") from None
        disk = self.ctx.pm.hook.mln_import_disk(host=host, disk=recorded, src=move["src"], ctx=self.ctx)
        if disk is None:
            raise MlnError(f"no installed storage plugin takes its {recorded.kind} disk")
        return disk

    def _reconfigure(self, hp) -> None:
        """Configuration only: the disk stays; the hypervisor configuration is written again."""
        host = self.new.hosts[hp.name]
        entry = self.ctx.state["hosts"][host.name]
        disk = recorded_disk(entry, self.pdir)
        data = self.ctx.pm.hook.mln_build_host(host=host, disk=disk, ctx=self.ctx)
        if data is None:
            raise MlnError(f"no installed backend builds '{host.hypervisor}' hosts", f"host {host.name}")
        entry["hypervisor"] = host.hypervisor
        entry["backend"] = data if isinstance(data, dict) else {}
        if any(c.kind in DISK_KINDS for c in hp.changes):
            entry["individualize"] = True          # guest files: at the next cold start

    def _commit(self) -> None:
        self.ctx.refuse_warnings(self.what)       # --strict: undone before anything is moved in
        staging = self.ctx.staging
        for name, text in ((f"{self.new.name}.mln", self.new_text), ("version", f"{self.plan.version + 1}\n")):
            write_file(os.path.join(staging, name), text)
        moves = []
        for root, _dirs, files in os.walk(staging):
            for fn in files:
                src = os.path.join(root, fn)
                rel = os.path.relpath(src, staging)
                if rel in ("outside", "helpers"):
                    continue
                dst = os.path.join(self.pdir, rel)
                moves.append([src, dst, os.path.join(self.work, "old", rel), os.path.lexists(dst)])
        for final, staged in self.outside.staged.items():
            if os.path.lexists(staged):
                aside = os.path.join(os.path.dirname(staged), OutsideFiles.ASIDE + os.path.basename(final))
                moves.append([staged, final, aside, os.path.lexists(final)])
        self.journal.save(phase="commit", moves=moves)
        for n, (src, dst, aside, existed) in enumerate(moves):
            self._step(f"commit file {n + 1}")
            _move_in(src, dst, aside, existed)
        self.e._bind(self.new, self.pdir)
        self.ctx.state = Store.read_state(self.pdir)
        self.ctx.staging = None

    def _run_new(self) -> None:
        e, ctx, plan, new = self.e, self.ctx, self.plan, self.new
        self.journal.save(phase="run")
        removed = [self.old.hosts[h.name] for h in plan.of("removed")        # leaving live: they run on
                   if h.running and not self.moves.get(h.name, {}).get("live")]  # until they arrived
        if removed:
            self.e._bind(self.old, self.pdir)       # their definitions are the old project's
            ctx.state = self.old_state
            for h in removed:
                self._step(f"stop removed {h.name}")
                self.journal.add("stopped", h.name)
            e._stop_hosts(removed, hard=False, wait_s=60)
            e._bind(new, self.pdir)
        respan.apply(e, new, getattr(plan, "respans", {}), self.journal)
        to_start = [new.hosts[h.name] for h in plan.hosts if h.start]
        live = [h for h in plan.hosts if h.action == "reconfigured_live"]
        arriving = [new.hosts[h.name] for h in plan.hosts if h.disk == "arriving"]
        if to_start or live or arriving:
            needed = [h for h in to_start] + [new.hosts[h.name] for h in live] + arriving
            self._step("start switches")
            wanted = {i.switch for h in needed for i in h.interfaces if i.switch in new.switches}
            self.journal.save(switches_started=sorted(n for n in wanted
                                                      if e.switch_status(new.switches[n]) != "up"))
            e._start_switches(new, needed, [])
        for hp in live:
            host, oldh = new.hosts[hp.name], self.old.hosts[hp.name]
            for n, how in hp.live.items():
                change = hp.changes[n]
                self._step(f"live {hp.name} {change.kind}")
                self.journal.add("live", [hp.name, change.as_dict()])
                if not ctx.pm.hook.mln_apply_live(host=host, old=oldh, change=change, ctx=ctx):
                    raise MlnError(f"{change.reason}: no backend applied it", f"host {hp.name}")
                ctx.log(f"+---> {hp.name}: {change.reason} (live: {how})")
        for h in to_start:
            self._step(f"start {h.name}")
            self.journal.add("started", h.name)
        parallel(to_start, e._start_host, e.jobs)


def _move_in(src: str, dst: str, aside: str, existed: bool) -> None:
    if not os.path.lexists(src):
        return                                   # moved by an earlier run of this commit
    if existed and os.path.lexists(dst) and not os.path.lexists(aside):
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(dst, aside)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)


def undo(engine, name: str, journal: Journal) -> None:
    """Put the project back as it was before the upgrade the journal records, and start
    again the hosts that ran then."""
    ctx, store = engine.ctx, engine.store
    pdir, data = journal.pdir, journal.data
    work = os.path.join(pdir, WORK)
    new = new_state = None
    if data.get("phase") in ("commit", "run", "ready"):
        new = _load(os.path.join(work, "new.mln"), ctx)
        if new is not None:                      # what the new project started: stopped
            engine._bind(new, pdir)
            new_state = copy.deepcopy(ctx.state)
            started = [new.hosts[n] for n in data.get("started", []) if n in new.hosts]
            said = {h.name: engine.host_status(h) for h in started}
            up = [h for h in started if said[h.name].startswith("up")]
            runs = [h.name for h in up if h.name in data.get("live_moves", []) and
                    said[h.name] not in [f"up: {w}" for w in NOT_RUNNING]]
            if runs:                             # arrived live and runs: its only guest (mover.bring_back)
                raise MlnError(f"host {', '.join(runs)}: its guest arrived here live and runs here; it is not "
                               "ended to put the upgrade back (run the upgrade again: it takes the guest back)")
            if up:
                engine._stop_hosts(up, hard=True, wait_s=5)
    for src, dst, aside, existed in reversed(data.get("moves", [])):
        if os.path.lexists(aside):
            os.replace(aside, dst)
        elif not existed and os.path.lexists(dst):
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst, ignore_errors=True)
            else:
                os.unlink(dst)
    if data.get("staging"):
        Store.discard_staging(data["staging"])
    old = engine.open(name) if store.exists(name) else None
    for n in (new.hosts if new is not None else ()):     # what added hosts left: console log, pid file
        if old is not None and n not in old.project.hosts:
            shutil.rmtree(os.path.join(pdir, "hosts", n), ignore_errors=True)
    if old is not None and new is not None:      # live changes reversed, on the old project
        for hname, change in reversed(data.get("live", [])):
            host, was = old.project.hosts.get(hname), new.hosts.get(hname)
            if host is not None and was is not None and engine.host_status(host).startswith("up"):
                _undo_live(engine, host, was, Change(**change), new, new_state)
    if new is not None:                          # switches the upgrade started and nothing uses
        saved = ctx.project, ctx.state
        ctx.project, ctx.state = new, new_state
        try:
            for sname in data.get("switches_started", []):
                sw = new.switches.get(sname)
                if sw is None or engine.switch_status(sw) != "up" or \
                        (old is not None and sname in old.project.switches and
                         any(i.switch == sname for n in data.get("was_running", [])
                             for i in (old.project.hosts[n].interfaces if n in old.project.hosts else ()))):
                    continue
                try:
                    ctx.pm.hook.mln_stop_switch(switch=sw, ctx=ctx)
                except MlnError as e:
                    ctx.log(f"warning: switch {sname}: {e}")
                if old is None or sname not in old.project.switches:
                    shutil.rmtree(os.path.join(pdir, "switches", sname), ignore_errors=True)
        finally:
            ctx.project, ctx.state = saved
    if old is not None:
        respan.undo(engine, old.project, data.get("respans"), data.get("respanned", []))
        for n in data.get("switches_stopped", []):
            sw = old.project.switches.get(n)
            if sw is not None and engine.switch_status(sw) != "up":
                ctx.pm.hook.mln_start_switch(switch=sw, ctx=ctx)
        sent = set(data.get("live_moves", [])) & set(data.get("shared_away", []))   # (it may run there)
        for n in data.get("was_running", []):
            h = old.project.hosts.get(n)
            if h is not None and n not in sent and not engine.host_status(h).startswith("up"):
                engine._start_switches(old.project, [h], [])
                engine._start_host(h)
    shutil.rmtree(work, ignore_errors=True)
    journal.remove()


def _undo_live(engine, host, was, change: Change, new: Project, new_state: dict) -> None:
    """Reverse a live change (``host``: as the old project has it, ``was``: as the new one
    had it); if the backend cannot, the host is stopped and starts again on the old project."""
    back = Change(change.kind, f"undo: {change.reason}", change.interface, change.new, change.old)
    ctx = engine.ctx
    try:
        if back.kind in ("memory", "interface_moved") and \
                ctx.pm.hook.mln_apply_live(host=host, old=was, change=back, ctx=ctx):
            return
    except MlnError:
        pass
    engine._stop_hosts([host], hard=True, wait_s=5)   # started again by undo, with the old project
    iface = was.interface(change.interface) if change.kind == "interface_added" else None
    if iface is not None:                             # the hot-plugged NIC's side of its switch
        saved = ctx.project, ctx.state
        ctx.project, ctx.state = new, new_state
        try:
            ctx.detach(was, iface)
        except MlnError as e:
            ctx.log(f"warning: {was.name} {iface.name}: {e}")
        finally:
            ctx.project, ctx.state = saved


def cleanup(engine, journal: Journal) -> None:
    """After ``done``: delete what the old project had and the new one does not."""
    ctx, data, pdir = engine.ctx, journal.data, journal.pdir
    work = os.path.join(pdir, WORK)
    new = engine.ctx.project
    try:
        old_state = Store.read_state(os.path.join(work, "old"))
    except MlnError:
        old_state = None
    old = _load(os.path.join(work, "old", f"{data['project']}.mln"), ctx)
    if old is not None:                          # this server's part of it
        old = part(old, (old_state or {}).get("placement"))
    if old is not None and new is not None:
        saved = ctx.project, ctx.state
        ctx.project, ctx.state = old, old_state or {}
        try:
            for h in old.hosts.values():
                if h.name not in new.hosts:
                    if engine.host_status(h).startswith("up"):      # paused here after it moved live
                        engine._stop_hosts([h], hard=True, wait_s=5)
                    if h.name in data.get("shared_away", []) and h.name in (ctx.state.get("hosts") or {}):
                        ctx.state["hosts"][h.name]["disk"] = {"kind": "moved", "path": ""}  # it went along
                    _remove_host(engine, h, data.get("keep"), pdir)
            for s in old.switches.values():
                if s.name not in new.switches:
                    try:
                        if engine.switch_status(s) == "up":
                            ctx.pm.hook.mln_stop_switch(switch=s, ctx=ctx)
                        ctx.pm.hook.mln_remove_switch(switch=s, ctx=ctx)
                    except MlnError as e:
                        ctx.log(f"warning: removing switch {s.name}: {e}")
        finally:
            ctx.project, ctx.state = saved
    for _src, _dst, aside, _existed in data.get("moves", []):
        if os.path.lexists(aside) and not aside.startswith(work + os.sep):
            os.unlink(aside)                      # an outside file set aside
    if data.get("staging"):
        Store.discard_staging(data["staging"])
    shutil.rmtree(work, ignore_errors=True)
    journal.remove()


def _remove_host(engine, h, keep: bool, pdir: str) -> None:
    ctx = engine.ctx
    entry = (ctx.state.get("hosts") or {}).get(h.name, {})
    disk = entry.get("disk") or {}
    if keep and disk.get("kind") != "file":
        ctx.log(f"+---> {h.name}: removed from the project; its {disk.get('kind')} disk {disk.get('path')} is kept")
        shutil.rmtree(os.path.join(pdir, "hosts", h.name), ignore_errors=True)
        return
    if keep and disk.get("kind") == "file":
        src = disk["path"] if os.path.isabs(disk["path"]) else os.path.join(pdir, disk["path"])
        kept = os.path.join(pdir, "kept", h.name)
        os.makedirs(kept, exist_ok=True)
        if os.path.exists(src):
            os.replace(src, os.path.join(kept, os.path.basename(src)))
            ctx.log(f"+---> {h.name}: removed; its disk is kept in {kept}")
    try:
        engine._detach_disk(h)
        ctx.pm.hook.mln_remove_host(host=h, ctx=ctx)
    except MlnError as e:
        ctx.log(f"warning: removing host {h.name}: {e}")
    if not keep and disk.get("path") and not os.path.isabs(disk["path"]):
        for rel in (disk["path"], (disk.get("extra") or {}).get("swap")):
            if rel and os.path.isfile(os.path.join(pdir, rel)):
                os.unlink(os.path.join(pdir, rel))
    shutil.rmtree(os.path.join(pdir, "hosts", h.name), ignore_errors=True)
    if not keep:
        ctx.log(f"+---> {h.name}: removed")


def recover(engine, name: str) -> None:
    """Finish or undo an upgrade of ``name`` that was killed (called with the lock held).
    A part held at ``ready`` is left alone: only its manager decides (``settle``)."""
    pdir = engine.store.project_dir(name)
    journal = Journal.read(pdir)
    if journal is None or journal.data.get("pid") == os.getpid():
        return
    if journal.data.get("phase") == "ready":
        return
    finish = journal.data.get("phase") == "done"
    engine.ctx.log(f"+---> project {name}: an upgrade was interrupted ({'finishing' if finish else 'undoing'} it)")
    if finish:
        engine.open(name)
        cleanup(engine, journal)
    else:
        undo(engine, name, journal)


def held(engine, name: str) -> dict | None:
    """The journal of an upgrade of ``name`` held here at ``ready`` (a part of a project
    spread over servers, waiting for its manager's word), or None."""
    journal = Journal.read(engine.store.project_dir(name)) if engine.store.exists(name) else None
    return journal.data if journal is not None and journal.data.get("phase") == "ready" else None


def settle(engine, name: str, keep: bool) -> bool:
    """An upgrade held at ``ready`` (a part of a project spread over servers): finished
    (``keep``: the guests that arrived live run, then the cleanup) or undone (the guests
    that were leaving live run on here), as the manager says; False if none is held."""
    if not engine.store.exists(name):
        return False
    with engine.store.lock(name), engine.store.private_tmp():
        journal = Journal.read(engine.store.project_dir(name))
        if journal is None or journal.data.get("phase") != "ready":
            return False
        live = journal.data.get("live_moves", [])
        if keep:
            journal.save(phase="done")
            loaded = engine.open(name)
            _let_run(engine, [loaded.project.hosts[h] for h in live if h in loaded.project.hosts])
            cleanup(engine, journal)
        else:
            engine.ctx.log(f"+---> project {name}: putting it back as it was (another server's part failed)")
            undo(engine, name, journal)
            if live and engine.store.exists(name):
                loaded = engine.open(name)
                _let_run(engine, [loaded.project.hosts[h] for h in live if h in loaded.project.hosts])
    return True


def _let_run(engine, hosts) -> None:
    """Guests a live move left paused here (arrived, or back after a move that did not
    happen) run again (``mln_migrate_done``); one that cannot is named, the rest go on."""
    for h in hosts:
        if not engine.host_status(h).startswith("up"):
            continue
        try:
            engine.ctx.pm.hook.mln_migrate_done(host=h, ctx=engine.ctx)
        except MlnError as e:
            engine.ctx.log(f"warning: host {h.name}: {e.message}")


def _load(path: str, ctx) -> Project | None:
    try:
        return load_project(path, ctx).project
    except (MlnError, OSError):
        return None
