"""The context object every hook receives: configuration, plugins, output, commands."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from .config import Config
from .errors import MlnError

if TYPE_CHECKING:
    import subprocess


@dataclass(repr=False, eq=False)
class Context:
    """What every hook receives as ``ctx``: configuration, plugins, the project bound now."""

    config: Config
    pm: object                      # mln_core.plugins.PluginManager
    project_dir: str | None = None
    verbose: bool = False
    options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    project: object | None = None   # mln_core.model.Project of the running command
    store: object | None = None     # mln_core.store.Store
    templates: object | None = None  # mln_core.templates.TemplateRegistry
    staging: str | None = None      # set while a build writes into its staging directory
    record_helper: object | None = None  # (pidfile, mountpoint) -> None: lets a killed build be cleaned up
    outside_files: object | None = None  # mln_core.store.OutsideFiles of the build in progress
    placement: dict | None = None   # this server's part of a project spread over servers (a build)
    warnings: list = field(default_factory=list)  # every warning printed (``--strict`` counts them)

    @property
    def hook(self):
        return self.pm.hook

    def path(self, *parts: str) -> str:
        """An absolute path inside the project directory (relative paths stay portable).

        An absolute path stays as it is, except a file that the build in progress placed
        with :meth:`outside`: for it, the path where its bytes are until the build is done.
        """
        path = os.path.join(self.project_dir, *parts)
        return self.outside_files.where(path) if self.outside_files is not None else path

    def outside(self, final: str) -> str:
        """Where to write a file whose place is ``final``, outside the project directory.

        During a build, a staged path that the core moves to ``final`` only when the whole
        build succeeded (so a failed ``build -r`` leaves the old project's file alone); the
        file is recorded, and written into configuration files, as ``final``. Outside a
        build, ``final`` itself.
        """
        return self.outside_files.place(final) if self.outside_files is not None else final

    def host_dir(self, host) -> str:
        """``<project>/hosts/<host>/``: where a backend keeps a host's runtime files."""
        d = self.path("hosts", host.name)
        os.makedirs(d, exist_ok=True)
        return d

    def switch_dir(self, switch) -> str:
        d = self.path("switches", switch.name)
        os.makedirs(d, exist_ok=True)
        return d

    def host_state(self, host) -> dict:
        """What the build recorded for ``host``: {"disk": {...}, "backend": {...}}."""
        return self.state.setdefault("hosts", {}).setdefault(host.name, {})

    def switch_state(self, switch) -> dict:
        return self.state.setdefault("switches", {}).setdefault(switch.name, {})

    def span(self, switch) -> dict | None:
        """How ``switch`` is joined to the same switch on other servers, when its hosts sit
        on several: ``{"vni": N, "local": ADDRESS, "remotes": [ADDRESS...], "mtu": M}``
        (a VXLAN network identifier, this server's underlay address, the others', the MTU
        guests on it get); None for a switch on this server only."""
        return self.switch_state(switch).get("span")

    def attachment(self, host, interface):
        """How ``interface`` of ``host`` joins its switch (asks the switch's plugin): a
        :class:`mln_core.model.Attachment`, or None if the interface is on no project switch."""
        from .model import Attachment
        switch = self.project.switches.get(interface.switch) if interface.switch else None
        if switch is None:
            return None
        for answer in self.pm.hook.mln_switch_attachment(switch=switch, host=host, interface=interface,
                                                         ctx=self):
            if answer:
                return Attachment(**answer) if isinstance(answer, dict) else answer
        raise MlnError(f"no installed plugin attaches hosts to switch '{switch.name}'")

    def detach(self, host, interface) -> None:
        switch = self.project.switches.get(interface.switch) if interface.switch else None
        if switch is not None:
            self.pm.hook.mln_switch_detachment(switch=switch, host=host, interface=interface, ctx=self)

    def log(self, message: str) -> None:
        """A progress line for the user (stderr, so that stdout stays data); with ``-q``
        (``options["quiet"]``) only warnings and errors, not ``+--->`` lines."""
        if self.options.get("quiet") and message.startswith("+--->"):
            return
        first = message.split("\n", 1)[0]
        if first.startswith("warning:") or ": warning: " in first:
            self.warnings.append(message)
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str, where: str | None = None) -> None:
        """A warning for the user: something was skipped, the rest goes on. ``where``:
        what it is about ("host web14"). With ``--strict`` (``options["strict"]``) it is
        an error instead (:class:`MlnError`); otherwise it is printed and counted in
        :attr:`warnings` (a build with ``--strict`` also refuses to commit when any
        warning was printed, by a plugin that logs it itself, say)."""
        if self.options.get("strict"):
            raise MlnError(f"{message} (a warning, an error with --strict)", where)
        self.log(f"warning: {where}: {message}" if where else f"warning: {message}")

    def refuse_warnings(self, what: str) -> None:
        """With ``--strict``: an error if any warning was printed so far (called before a
        build, upgrade or reconfigure commits, so that nothing of it is kept)."""
        n = len(self.warnings)
        if self.options.get("strict") and n:
            raise MlnError(f"--strict: {n} warning{'s' * (n != 1)} (above) during the {what}, so nothing "
                           "of it was kept")

    def debug(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def on(self, host=None):
        """The :class:`mln_core.machine.Machine` that ``host`` (or switch) runs on: every
        process, signal, liveness check, device and socket of a plugin goes through it.
        Today every object of a project is on this machine."""
        from .machine import local
        return local(self.verbose)

    def disk(self, host, attached: bool = True):
        """The :class:`mln_core.model.Disk` recorded for ``host`` at build time, with an
        absolute path; while the host runs (``attached``), the path its storage plugin
        attached for the run, if any."""
        from .lifecycle import disk_of
        return disk_of(self, host, attached)

    def run(self, argv: list[str], what: str | None = None, check: bool = True, input: bytes | None = None,
            timeout: float | None = 300, **kw) -> "subprocess.CompletedProcess":
        """Run a command on this machine (``self.on().run``); on failure raise MlnError
        naming ``what`` and the command's stderr."""
        return self.on().run(argv, what=what, check=check, input=input, timeout=timeout, **kw)
