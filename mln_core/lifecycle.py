"""Build, start, stop, status and remove: the core's lifecycle, carried out through hooks.

Every command takes the project lock first. ``build`` works in a staging directory and
renames it into place only when every host was built (see ``store``).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict

from . import commit, owners
from .errors import MlnError
from .progress import Pacer, Progress, parallel as _parallel
from .guest import detect_family
from .lang.writer import write_tree
from .private import make_dir, tighten, write_file
from .model import Disk, Host, Project, Switch
from .project import Loaded, load_project
from .servers import part, vni_clash
from .store import OutsideFiles, Store, record_helper
from .templates import TemplateRegistry

HOOK_SCRIPTS = ("beforeProjectStart", "beforeHostsStart", "afterHostsStart", "afterProjectStart",
                "beforeProjectStop", "beforeHostsStop", "afterHostsStop", "afterProjectStop")


ASK_AGAIN = 5          # seconds: a guest still shutting down is asked again (one that was booting missed it)


class Engine:
    """The lifecycle of projects in one projects directory."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.store = Store(ctx.config.projects_dir)
        ctx.store = self.store
        ctx.templates = TemplateRegistry(ctx.config.templates_dir)
        self.jobs = ctx.options.get("jobs") or os.cpu_count() or 2

    @property
    def hook(self):
        return self.ctx.pm.hook

    # -- loading a stored project ------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, project_name: str, recorded: bool = False):
        """Hold the project's lock and yield the stored project, read afresh; ``recorded``:
        if its file no longer reads, a project made from its recorded state (``remove``)."""
        if not commit.pending(self.store, project_name) and not self.store.stale_builds(project_name):
            self.store.require(project_name)
        with self.store.lock(project_name) as lock, self.store.private_tmp():
            self.recover(project_name)
            if not self.store.exists(project_name):
                self.store.clean_stale_builds(project_name, self.ctx.log)   # a first build, killed
            self.store.require(project_name)
            tighten(self.store.project_dir(project_name))     # a project of an older mln: made private
            try:
                loaded = self.open(project_name)
            except MlnError:
                if not recorded:
                    raise
                loaded = commit.read_or_recorded(self, project_name, self.store.project_dir(project_name))
            self.held = lock
            try:
                yield loaded
            finally:
                self.held = None

    def recover(self, project_name: str) -> None:
        """Finish or undo a build commit, removal or upgrade of the project that was killed
        (lock held)."""
        commit.recover(self, project_name)
        from .upgrade import JOURNAL, recover
        if os.path.exists(os.path.join(self.store.project_dir(project_name), JOURNAL)):
            recover(self, project_name)

    def open(self, project: str) -> Loaded:
        pdir = self.store.require(project)
        self.store.clean_stale_builds(project, self.ctx.log)
        loaded = load_project(self.store.source_path(project), self.ctx)
        self._bind(loaded.project, pdir)
        loaded.project = self.ctx.project        # this server's part of it
        return loaded

    def _bind(self, project: Project, pdir: str, state: dict | None = None) -> None:
        self.ctx.project_dir = pdir
        self.ctx.state = Store.read_state(pdir) if state is None else state
        self.ctx.project = part(project, self.ctx.state.get("placement"))

    # -- build -------------------------------------------------------------------------------
    def build(self, path: str, replace: bool = False, simulate: bool = False,
              confirm=None, placement: dict | None = None) -> Project:
        """Build the project of ``path`` (``placement``: this server's part of a project
        spread over servers, see :mod:`mln_core.servers`)."""
        loaded = load_project(path, self.ctx)
        self.ctx.placement = placement
        project = loaded.project = part(loaded.project, placement)
        for p in loaded.problems.warnings:
            self.ctx.log(str(p))
        self.summary(project)
        if simulate:
            return project
        with self.store.lock(project.name), self.store.private_tmp():
            self.recover(project.name)
            self.store.clean_stale_builds(project.name, self.ctx.log)
            old_dir = self.store.project_dir(project.name)
            existed = self.store.exists(project.name)
            old = None
            if existed:
                old = self._refuse_if_running(project.name)
                if not replace:
                    if confirm is None or not confirm(f"project '{project.name}' exists; replace it?"):
                        raise MlnError(f"project '{project.name}' exists in {self.store.root}; use -r to "
                                       "replace it")
            elif os.path.exists(old_dir):
                raise MlnError(f"{old_dir} exists but is not an mln project; move it away first")
            version = self.store.version(project.name) + 1
            staging = self.store.staging_dir(project.name)
            Store.discard_staging(staging)      # one of an earlier build that had our pid
            make_dir(staging)                    # 0700: it becomes the project directory
            mine = owners.recorded_paths(self.ctx.state) if old is not None else ()
            outside = self.ctx.outside_files = OutsideFiles(staging, old_dir, mine)
            try:
                self.ctx.on().step(f"build {project.name}: stage")
                self._build_into(staging, loaded, version)
                commit.commit_build(self, project, staging, outside, old, existed)
            except BaseException:
                if os.path.isdir(staging) and not commit.pending(self.store, project.name):
                    self._discard(staging, project)      # ctx: still the build's state and files
                raise
            finally:
                self.ctx.outside_files = None
        self.ctx.log(f"+---> PROJECT {project.name} FINISHED (version {version})")
        return project

    def _build_into(self, staging: str, loaded: Loaded, version: int) -> None:
        project = loaded.project
        self._bind(project, staging)
        self.ctx.staging = staging
        self.ctx.record_helper = lambda pidfile, mountpoint=None: record_helper(staging, pidfile, mountpoint)
        for d in ("images", "hosts", "switches"):
            os.makedirs(os.path.join(staging, d))
        write_file(self.store.source_path(project.name, staging), write_tree(loaded.doc.root))
        write_file(os.path.join(staging, "version"), f"{version}\n")
        self._write_hook_scripts(project, staging)
        state = self.ctx.state = {"hosts": {}, "switches": {}}
        placement = self.ctx.placement
        if placement:
            vni_clash(self.store, project.name, placement["spans"])
            from .servers import PLACEMENT_KEYS
            state["placement"] = {k: placement.get(k) for k in PLACEMENT_KEYS}
        for switch in project.switches.values():
            span = placement["spans"].get(switch.name) if placement else None
            state["switches"][switch.name] = {"span": span} if span else {}
            data = self.hook.mln_build_switch(switch=switch, ctx=self.ctx)
            if data is None:
                raise MlnError(f"switch '{switch.name}': no installed plugin builds switches of this kind")
            state["switches"][switch.name].update(data if isinstance(data, dict) else {})
        progress = Progress("building hosts", len(project.hosts),
                            quiet=self.ctx.options.get("quiet", False))
        try:
            _parallel(list(project.hosts.values()), lambda h: self._build_host(h, progress), self.jobs)
        finally:
            progress.close()
        Store.write_state(staging, state)

    def _build_host(self, host: Host, progress: Progress, make_disk=None) -> None:
        """Make the host's disk (``make_disk(host)``, by default from its template),
        individualize it and write its hypervisor configuration."""
        step = "create disk"
        try:
            progress.step(host.name, step)
            if self.ctx.outside_files is not None:
                self.ctx.outside_files.current.host = host.name    # whose disk ctx.outside places
            disk = make_disk(host) if make_disk else self.hook.mln_create_disk(host=host, ctx=self.ctx)
            if disk is None:
                raise MlnError("no installed storage plugin handles this host")
            entry = self.ctx.state["hosts"][host.name] = {"disk": asdict(disk)}
            step = "configure image"
            progress.step(host.name, step)
            if getattr(make_disk, "individualizes", True):    # a guest's disk on its way here: not
                self.individualize(host, disk)
            step = f"{host.hypervisor} configuration"
            progress.step(host.name, step)
            data = self.hook.mln_build_host(host=host, disk=disk, ctx=self.ctx)
            if data is None:
                raise MlnError(f"no installed backend builds '{host.hypervisor}' hosts")
            entry["hypervisor"] = host.hypervisor
            entry["backend"] = data if isinstance(data, dict) else {}
            progress.finish(host.name, "built")
        except MlnError as e:
            raise MlnError(f"{step}: {e.message}", f"host {host.name}") from None
        except OSError as e:
            raise MlnError(f"{step}: {e}", f"host {host.name}") from None

    def individualize(self, host: Host, disk: Disk) -> None:
        """Open the host's disk and let every plugin write the guest's identity into it."""
        guest = self.hook.mln_open_image(host=host, disk=disk, ctx=self.ctx)
        if guest is None:
            self.ctx.log(f"warning: host {host.name}: its {disk.format} disk holds no filesystem mln "
                         "can open (a whole-disk image?), so the guest is not individualized")
            return
        try:
            guest.family = host.family or detect_family(guest) or self.ctx.config.get("default_family")
            self.hook.mln_configure_image(host=host, guest=guest, ctx=self.ctx)
        finally:
            guest.close()

    def _commit(self, staging: str, project: Project, outside: OutsideFiles) -> None:
        """Let plugins put in place what they made outside the project directory under a
        temporary name (the replaced project's has been removed). A plugin that fails here
        leaves its resource under the temporary name, recorded in the state, and says so."""
        self._bind(project, staging)
        for host in project.hosts.values():
            try:
                self.hook.mln_commit_host(host=host, ctx=self.ctx)
            except MlnError as e:
                self.ctx.log(f"warning: host {host.name}: {e.message}")
        outside.discard()                         # the replaced files, if still there
        Store.write_state(staging, self.ctx.state)

    def _discard(self, staging: str, project: Project) -> None:
        from .store import kill_recorded_helpers
        kill_recorded_helpers(staging)
        for host in project.hosts.values():
            try:
                self.hook.mln_remove_host(host=host, ctx=self.ctx)
            except Exception as e:  # cleanup must not hide the original error
                self.ctx.log(f"warning: cleaning up host {host.name}: {e}")
        for switch in project.switches.values():
            try:
                self.hook.mln_remove_switch(switch=switch, ctx=self.ctx)
            except Exception as e:
                self.ctx.log(f"warning: cleaning up switch {switch.name}: {e}")
        Store.discard_staging(staging)

    def _write_hook_scripts(self, project: Project, pdir: str) -> None:
        for name in HOOK_SCRIPTS:
            lines = project.hook_lines(name)
            if lines:
                path = os.path.join(pdir, f"{name}.sh")
                write_file(path, "#!/bin/bash\n" + "\n".join(lines) + "\n", mode=0o700)

    def run_hook_script(self, name: str, abort: bool = False) -> None:
        path = os.path.join(self.ctx.project_dir, f"{name}.sh")
        if not os.path.exists(path):
            return
        self.ctx.log(f"+---> running {name}")
        p = self.ctx.on().run(["bash", path], check=False, timeout=None, stdout=None, stderr=None,
                              cwd=self.ctx.project_dir,
                              env={**os.environ, "MLN_PROJECT": self.ctx.project.name,
                                   "MLN_PROJECT_DIR": self.ctx.project_dir})
        if p.returncode != 0:
            msg = f"{name} script failed (exit {p.returncode})"
            if abort:
                raise MlnError(msg, f"project {self.ctx.project.name}")
            self.ctx.log(f"warning: {msg}")

    def summary(self, project: Project) -> None:
        hv = sorted({h.hypervisor for h in project.hosts.values()})
        nh, ns = len(project.hosts), len(project.switches)
        self.ctx.log(f"+---> project {project.name}: {nh} host{'s' * (nh != 1)} ({', '.join(hv) or '-'}), "
                     f"{ns} switch{'es' * (ns != 1)}")

    # -- status --------------------------------------------------------------------------
    def host_status(self, host: Host) -> str:
        res = self.hook.mln_host_status(host=host, ctx=self.ctx)
        return res or "down"

    def switch_status(self, switch: Switch) -> str:
        return self.hook.mln_switch_status(switch=switch, ctx=self.ctx) or "down"

    def _refuse_if_running(self, project_name: str) -> Loaded | None:
        """The stored project (None if it cannot be read); an error if any host runs."""
        try:
            loaded = self.open(project_name)
        except MlnError:
            return None  # an unreadable old project cannot be running anything we know of
        status = {h.name: self.host_status(h) for h in loaded.project.hosts.values()}
        up = [name for name, st in status.items() if st.startswith("up")]
        if up:
            raise MlnError(f"project '{project_name}' has running hosts ({', '.join(up)}); stop them "
                           f"first: mln stop -p {project_name}")
        saved = [name for name, st in status.items() if _state(st) == ("down", "saved")]
        if saved:
            self.ctx.log(f"warning: replacing the project discards the saved state of {', '.join(saved)} "
                         "(mln stop -S); the rebuilt hosts boot afresh")
        return loaded

    def status(self, project_name: str, host: str | None = None, switch: str | None = None) -> list[dict]:
        """Rows of every host and switch; of one host (``host``) or one switch (``switch``)."""
        with self.locked(project_name) as loaded:
            project = loaded.project
        rows = []
        if switch is not None and switch not in project.switches:
            known = ", ".join(project.switches) or "none"
            raise MlnError(f"project '{project.name}' has no switch '{switch}' (switches: {known})")
        hosts = [self._host(project, host)] if host else [] if switch else list(project.hosts.values())
        for h in hosts:
            st = self.host_status(h)
            state, detail = _state(st)
            rows.append({"project": project.name, "kind": "host", "name": h.name, "state": state,
                         "detail": detail, "hypervisor": h.hypervisor})
        if host is None:
            for s in project.switches.values() if switch is None else [project.switches[switch]]:
                rows.append({"project": project.name, "kind": "switch", "name": s.name,
                             "state": self.switch_status(s), "detail": ""})
        return rows

    @staticmethod
    def _host(project: Project, name: str) -> Host:
        if name not in project.hosts:
            known = ", ".join(project.hosts) or "none"
            raise MlnError(f"project '{project.name}' has no host '{name}' (hosts: {known})")
        return project.hosts[name]

    # -- start / stop --------------------------------------------------------------------------
    def start(self, project_name: str, host: str | None = None, pause: float = 0) -> None:
        """Start the project (or one host). ``pause``: seconds between two hosts, which then
        start one at a time (``start -s``)."""
        pace = Pacer(pause)
        with self.locked(project_name) as loaded:
            project = loaded.project
            started: list[Switch] = []
            try:
                if host is not None:
                    h = self._host(project, host)
                    if self.host_status(h).startswith("up"):
                        raise MlnError(f"host '{host}' of project '{project.name}' is already running")
                    self._runnable([h])
                    self._start_switches(project, [h], started)
                    self._start_host(h)
                    return
                self._runnable([h for h in project.hosts.values() if not self.host_status(h).startswith("up")])
                self.run_hook_script("beforeProjectStart", abort=True)
                self._start_switches(project, list(project.hosts.values()), started)
                self.run_hook_script("beforeHostsStart")
                for group in _boot_groups(project.boot_sequence()):
                    todo = []
                    for h in group:
                        if self.host_status(h).startswith("up"):
                            self.ctx.log(f"+---> {h.name}: already running")
                        else:
                            todo.append(h)
                    if pause:
                        for h in todo:
                            pace()
                            self._start_host(h)
                    else:
                        _parallel(todo, self._start_host, self.jobs)
            except BaseException:
                self._stop_unused(project, started)
                raise
            self.run_hook_script("afterHostsStart")
            self.run_hook_script("afterProjectStart")

    def _runnable(self, hosts: list[Host]) -> None:
        """Refuse the start before anything starts if a host cannot run here (``mln_runnable``)."""
        why: dict[str, list[str]] = {}
        for h in hosts:
            said = self.hook.mln_runnable(host=h, ctx=self.ctx)
            if said:
                why.setdefault(said, []).append(h.name)
        if why:
            also = {w: f" (and {', '.join(n[1:])})" if len(n) > 1 else "" for w, n in why.items()}
            raise MlnError("; ".join(f"host {n[0]}{also[w]}: {w}" for w, n in why.items()))

    def _start_switches(self, project: Project, hosts: list[Host], started: list[Switch]) -> None:
        needed = {i.switch for h in hosts for i in h.interfaces if i.switch in project.switches}
        for name in project.switches:
            if name in needed or len(hosts) == len(project.hosts):
                s = project.switches[name]
                if self.switch_status(s) == "up":
                    continue
                if not self.hook.mln_start_switch(switch=s, ctx=self.ctx):
                    raise MlnError("no installed plugin starts this switch", f"switch {name}")
                started.append(s)
                self.ctx.log(f"+---> switch {name}: up")

    def _stop_unused(self, project: Project, switches: list[Switch]) -> None:
        """After a failed start: stop the switches it started that no running host uses."""
        used = {i.switch for h in project.hosts.values() if self.host_status(h).startswith("up")
                for i in h.interfaces}
        for s in switches:
            if s.name not in used:
                try:
                    self.hook.mln_stop_switch(switch=s, ctx=self.ctx)
                    self.ctx.log(f"+---> switch {s.name}: stopped again")
                except MlnError as e:
                    self.ctx.log(f"warning: switch {s.name}: {e}")

    def _start_host(self, h: Host) -> None:
        try:
            self._detach_disk(h)                   # left by a run that ended without mln
            self._catch_up(h)
            path = self.hook.mln_attach_disk(host=h, disk=disk_of(self.ctx, h), ctx=self.ctx)
            if path:
                write_file(_attached(self.ctx, h), path + "\n")
            try:
                if not self.hook.mln_start_host(host=h, ctx=self.ctx):
                    raise MlnError(f"no installed backend starts '{h.hypervisor}' hosts")
            except BaseException:
                self._detach_disk(h)
                raise
        except MlnError as e:
            raise MlnError(f"start: {e.message}", f"host {h.name}") from None
        self.ctx.log(f"+---> {h.name}: started")

    def _catch_up(self, h: Host) -> None:
        """A host changed live by ``upgrade`` (or with ``-l``) has its guest files brought
        up to date at its next cold start (not when it resumes a saved state)."""
        entry = self.ctx.state.get("hosts", {}).get(h.name, {})
        if not entry.get("individualize") or _state(self.host_status(h))[1].startswith("saved"):
            return
        self.ctx.log(f"+---> {h.name}: bringing its guest files up to date (changed while it ran)")
        self.individualize(h, disk_of(self.ctx, h, attached=False))
        del entry["individualize"]
        Store.write_state(self.ctx.project_dir, self.ctx.state)

    def _detach_disk(self, h: Host) -> None:
        record = _attached(self.ctx, h)
        try:
            with open(record) as f:
                path = f.read().strip()
        except FileNotFoundError:
            return
        self.hook.mln_detach_disk(host=h, disk=disk_of(self.ctx, h, attached=False), path=path, ctx=self.ctx)
        os.unlink(record)

    def stop(self, project_name: str, host: str | None = None, hard: bool = False,
             wait_s: float = 60.0, save: bool = False, pause: float = 0) -> None:
        """Stop the project (or one host). ``wait_s``: how long a guest may take to shut
        down before it is destroyed (``math.inf``: wait for ever); ``pause``: seconds
        between asking two hosts to stop (``stop -s``)."""
        pace = Pacer(pause)
        with self.locked(project_name) as loaded:
            project = loaded.project
            if host is not None:
                h = self._host(project, host)
                if not self.host_status(h).startswith("up"):
                    raise MlnError(f"host '{host}' of project '{project.name}' is not running")
                self._not_saved(self._stop_hosts([h], hard, wait_s, save))
                return
            self.run_hook_script("beforeProjectStop")
            self.run_hook_script("beforeHostsStop")
            unsaved = []
            for group in reversed(_boot_groups(project.boot_sequence())):
                status = {h.name: _state(self.host_status(h)) for h in group}
                for h in group:
                    if status[h.name][0] == "down" and status[h.name][1].startswith("crashed"):
                        self._stopped(h)          # what its run left: taps, sockets, a loop device
                        self.ctx.log(f"+---> {h.name}: had crashed ({status[h.name][1][8:].strip()[:200]})")
                running = [h for h in group if status[h.name][0] == "up"]
                unsaved += self._stop_hosts(running, hard, wait_s, save, pace)
            self._not_saved(unsaved)
            self.run_hook_script("afterHostsStop")
            for s in project.switches.values():
                if self.switch_status(s) == "up":
                    self.hook.mln_stop_switch(switch=s, ctx=self.ctx)
                    self.ctx.log(f"+---> switch {s.name}: stopped")
            self.run_hook_script("afterProjectStop")

    @staticmethod
    def _not_saved(hosts: list[Host]) -> None:
        if hosts:
            raise MlnError(f"{', '.join(h.name for h in hosts)} could not be saved and still "
                           f"run{'s' * (len(hosts) == 1)} (the switches stay up); the errors are above")

    def _stop_hosts(self, hosts: list[Host], hard: bool, wait_s: float, save: bool = False,
                    pace=None) -> list[Host]:
        """Stop (or save) ``hosts`` and wait for them; returns the ones whose save failed,
        which keep running. ``pace()`` is called before each host is asked."""
        unsaved = []
        for h in hosts:
            if pace is not None:
                pace()
            if save:
                try:
                    saved = self.hook.mln_save_host(host=h, ctx=self.ctx)
                except MlnError as e:
                    self.ctx.log(f"mln: error: {e}")
                    unsaved.append(h)
                    continue
                if saved:
                    self.ctx.log(f"+---> {h.name}: saved; 'mln start' resumes it")
                    continue
                self.ctx.log(f"warning: {h.name}: {h.hypervisor} hosts cannot be saved; shutting it down")
            if not self.hook.mln_stop_host(host=h, hard=hard, ctx=self.ctx):
                raise MlnError(f"no installed backend stops '{h.hypervisor}' hosts", f"host {h.name}")
        hosts = [h for h in hosts if h not in unsaved]
        deadline = time.monotonic() + (5 if hard else wait_s)
        pending = list(hosts)
        ask_again = time.monotonic() + ASK_AGAIN
        while pending and time.monotonic() < deadline:
            pending = [h for h in pending if self.host_status(h).startswith("up")]
            if pending and not hard and time.monotonic() >= ask_again:
                for h in pending:            # one still booting when asked did not hear it
                    self.hook.mln_stop_host(host=h, hard=False, ctx=self.ctx)
                ask_again = time.monotonic() + ASK_AGAIN
            if pending:
                time.sleep(0.3)
        for h in pending:
            self.ctx.log(f"+---> {h.name}: did not stop in {wait_s:g} s; destroying it")
            self.hook.mln_stop_host(host=h, hard=True, ctx=self.ctx)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            pending = [h for h in pending if self.host_status(h).startswith("up")]
            if pending:
                time.sleep(0.2)
        if pending:
            raise MlnError(f"hosts still running after a hard stop: {', '.join(h.name for h in pending)}")
        for h in hosts:
            self._stopped(h)
            self.ctx.log(f"+---> {h.name}: stopped")
        return unsaved

    def _stopped(self, h: Host) -> None:
        """The host is down: detach its interfaces and disk, remove its runtime files."""
        for i in h.interfaces:
            self.ctx.detach(h, i)
        self.hook.mln_host_stopped(host=h, ctx=self.ctx)
        self._detach_disk(h)

    # -- console --------------------------------------------------------------------------------
    def console(self, project_name: str, host: str) -> dict:
        """Where the console of a running host is (see ``mln_console``); the lock is not
        kept for the session."""
        with self.locked(project_name) as loaded:
            h = self._host(loaded.project, host)
            if not self.host_status(h).startswith("up"):
                raise MlnError(f"host '{host}' of project '{project_name}' is not running")
            where = self.hook.mln_console(host=h, ctx=self.ctx)
        if not where:
            raise MlnError(f"mln cannot attach to the console of {h.hypervisor} hosts (use the "
                           "hypervisor's own tool, such as 'xl console')", f"host {host}")
        return where

    # -- remove ---------------------------------------------------------------------------------
    def remove(self, project_name: str, confirm=None) -> None:
        """Remove a stopped project, journaled (:mod:`mln_core.commit`); one whose file no
        longer reads is removed from its recorded state."""
        with self.locked(project_name, recorded=True) as loaded:
            project = loaded.project
            up = [h.name for h in project.hosts.values() if self.host_status(h).startswith("up")]
            up += [f"switch {s.name}" for s in project.switches.values() if self.switch_status(s) == "up"]
            if up:
                raise MlnError(f"project '{project_name}' is running ({', '.join(up)}); stop it first: "
                               f"mln stop -p {project_name}")
            if confirm is not None and not confirm(f"remove project '{project_name}' and all its disks?"):
                raise MlnError("not removed")
            commit.remove(self, loaded, self.held)
        self.ctx.log(f"+---> project {project_name} removed")


def _state(status: str) -> tuple[str, str]:
    """A backend's "up" / "down: saved" as (state, detail)."""
    state, _, detail = status.partition(":")
    return state.strip(), detail.strip()


def _boot_groups(hosts: list[Host]) -> list[list[Host]]:
    groups: list[list[Host]] = []
    for h in hosts:
        if groups and groups[-1][0].boot_order == h.boot_order:
            groups[-1].append(h)
        else:
            groups.append([h])
    return groups


def _attached(ctx, host: Host) -> str:
    """``hosts/<host>/attached-disk``: the path ``mln_attach_disk`` gave for the current run."""
    return os.path.join(ctx.host_dir(host), "attached-disk")


def recorded_disk(entry: dict, project_dir: str) -> Disk:
    """The Disk of a host's state entry, its path made absolute against ``project_dir``."""
    d = Disk(**entry["disk"])
    if not os.path.isabs(d.path):
        d.path = os.path.join(project_dir, d.path)
    return d


def disk_of(ctx, host: Host, attached: bool = True) -> Disk:
    """The disk recorded for ``host`` at build time, with an absolute path; while the host
    runs (``attached``), the path its storage plugin attached for the run, if any."""
    entry = ctx.state.get("hosts", {}).get(host.name)
    if not entry:
        raise MlnError("was not built (no disk recorded); run 'mln build' again", f"host {host.name}")
    d = recorded_disk(entry, ctx.project_dir)
    if attached:
        try:
            with open(_attached(ctx, host)) as f:
                d.path = f.read().strip() or d.path
        except FileNotFoundError:
            pass
    return d
