"""The plan of ``mln upgrade``: from the stored project (and what runs) and a new file,
what happens to every host and switch, and why.

A plan is data: :func:`make_plan` computes it without changing anything, ``upgrade -s``
prints it (``--format json`` as data, one key per kind of action), and
:mod:`mln_core.upgrade` carries it out. Each host is in exactly one of:

``added``              new: built, and started if the project runs (or with ``-S``)
``removed``            gone from the file: stopped, its disk and files removed
``rebuilt``            its disk is individualized again (a copy of it, grown if asked) or
                       made afresh from a new template, or only its configuration changed
                       while it is down; restarted if it was running
``restarted``          running, and a change needs a restart (memory raised, ...)
``reconfigured_live``  running, and every change is applied to the running guest
``untouched``          nothing changed: not stopped, not touched
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .change import DISK_KINDS, LIVE_KINDS, Change
from .diff import diff_blocks
from .errors import MlnError
from .model import Host, Project, Switch, format_size

ACTIONS = ("added", "removed", "rebuilt", "restarted", "reconfigured_live", "untouched")
# Settings with a change kind of their own; every other difference is "configuration".
_OWN = {"memory", "template", "size", "free_space", "service_host", "hypervisor", "network", "superclass"}


@dataclass
class HostPlan:
    name: str
    action: str
    running: bool = False
    changes: list[Change] = field(default_factory=list)
    live: dict[int, str] = field(default_factory=dict)   # index in changes -> how the backend applies it
    disk: str | None = None          # "template": made afresh; "copy": a copy individualized again;
                                     # "moved": the disk it had on another server
    restart: bool = False            # stopped before the new project is in place, started after
    start: bool = False              # started after (an added host, or one that ran)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"host": self.name, "running": self.running, "reasons": self.reasons,
               "changes": [c.as_dict() for c in self.changes]}
        if self.live:
            out["live"] = [{"kind": self.changes[i].kind, "how": how} for i, how in self.live.items()]
        if self.disk:
            out["disk"] = self.disk
        return out


@dataclass
class SwitchPlan:
    name: str
    action: str                      # added | removed | rebuilt | untouched
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"switch": self.name, "reasons": self.reasons}


@dataclass
class Plan:
    project: str
    version: int                     # the stored project's; the upgrade makes version + 1
    running: bool                    # some host of the stored project runs
    hosts: list[HostPlan] = field(default_factory=list)
    switches: list[SwitchPlan] = field(default_factory=list)

    def host(self, name: str) -> HostPlan | None:
        return next((h for h in self.hosts if h.name == name), None)

    def of(self, action: str) -> list[HostPlan]:
        return [h for h in self.hosts if h.action == action]

    @property
    def empty(self) -> bool:
        return all(h.action == "untouched" for h in self.hosts) and \
            all(s.action == "untouched" for s in self.switches)

    def as_json(self) -> dict:
        out = {"project": self.project, "version": self.version, "new_version": self.version + 1,
               "running": self.running}
        for action in ACTIONS:
            out[action] = [h.as_dict() for h in self.hosts if h.action == action] + \
                [s.as_dict() for s in self.switches if s.action == action]
        return out

    def render_text(self) -> str:
        lines = [f"plan for project {self.project} (version {self.version} -> {self.version + 1}):"]
        if self.empty:
            return lines[0] + " nothing changes\n"
        for action in ACTIONS:
            items = [(f"host {h.name}", h.reasons) for h in self.hosts if h.action == action] + \
                    [(f"switch {s.name}", s.reasons) for s in self.switches if s.action == action]
            if not items:
                continue
            if action == "untouched":
                lines.append(f"  untouched: {', '.join(what for what, _ in items)}")
                continue
            lines.append(f"  {action.replace('_', ' ')}:")
            for what, reasons in items:
                lines.append(f"    {what}" + (f": {reasons[0]}" if reasons else ""))
                lines += [f"      {r}" for r in reasons[1:]]
        return "\n".join(lines) + "\n"


# -- computing a plan ---------------------------------------------------------------------

def host_changes(old: Host, new: Host, old_switches: dict[str, Switch], new_switches: dict[str, Switch],
                 default_switch: str, flags=(), respanned=frozenset()) -> list[Change]:
    """Every difference between ``old`` and ``new`` that matters to the host, by kind
    (``respanned``: switches that join other servers than before)."""
    ch: list[Change] = []
    if (old.service_host or None) != (new.service_host or None):
        ch.append(Change("service_host", f"service_host {old.service_host or '(this server)'} -> "
                                          f"{new.service_host or '(this server)'}",
                         old=old.service_host, new=new.service_host))
    if old.hypervisor != new.hypervisor:
        ch.append(Change("hypervisor", f"hypervisor {old.hypervisor} -> {new.hypervisor}",
                         old=old.hypervisor, new=new.hypervisor))
    if old.template != new.template:
        ch.append(Change("template", f"template {old.template} -> {new.template}",
                         old=old.template, new=new.template))
    elif (old.size, old.free_space) != (new.size, new.free_space):
        smaller = ((old.size is not None and new.size is not None and new.size < old.size) or
                   (old.free_space is not None and new.free_space is not None and new.free_space < old.free_space))
        what = "size" if new.free_space is None else "free_space"
        before = format_size(old.free_space if what == "free_space" and old.free_space is not None else
                             old.size or 0) if (old.size or old.free_space) else "the template's"
        after = format_size(new.free_space if what == "free_space" else new.size or 0)
        ch.append(Change("disk_shrunk" if smaller else "disk_grown", f"disk {what} {before} -> {after}",
                         old=before, new=after))
    if old.memory != new.memory:
        ch.append(Change("memory", f"memory {old.memory // 2**20}M -> {new.memory // 2**20}M",
                         old=str(old.memory // 2**20), new=str(new.memory // 2**20)))
    olds = {i.name: i for i in old.interfaces}
    news = {i.name: i for i in new.interfaces}
    for name, i in news.items():
        o = olds.get(name)
        if o is None:
            ch.append(Change("interface_added", f"{name} added" + (f" on switch {i.switch}" if i.switch else ""),
                             interface=name, new=i.switch))
            continue
        same_rest = _differing(o.tree, i.tree) in ([], ["switch"])
        if o.switch != i.switch and same_rest:
            ch.append(Change("interface_moved", f"{name} moved from switch {o.switch} to {i.switch}",
                             interface=name, old=o.switch, new=i.switch))
        elif not same_rest or o.switch != i.switch:
            keys = _differing(o.tree, i.tree)
            ch.append(Change("interface_changed", f"{name}: {', '.join(keys)} changed", interface=name))
        elif i.switch in new_switches and i.switch in old_switches and \
                (_switch_differs(old_switches[i.switch], new_switches[i.switch], default_switch) or
                 i.switch in respanned):
            ch.append(Change("switch_changed", f"switch {i.switch} of {name} changed", interface=name,
                             new=i.switch))
    for name, o in olds.items():
        if name not in news:
            ch.append(Change("interface_removed", f"{name} removed", interface=name, old=o.switch))
    hv_words = {old.hypervisor, new.hypervisor, *flags}
    keys = [k for k in _differing(old.tree, new.tree) if k not in _OWN and k not in hv_words]
    if keys:
        ch.append(Change("configuration", f"{', '.join(keys)} changed", old=None, new=None))
    return ch


def make_plan(old: Project, new: Project, status: dict[str, str], version: int, ctx,
              live_hosts: set[str] = frozenset(), start_new: bool = False, respanned=frozenset()) -> Plan:
    """The plan that turns ``old`` (whose hosts have ``status``: "up...", "down...") into
    ``new`` (``respanned``: switches of a project spread over servers that join other
    servers than before, so are made again). Backends are asked (``mln_plan_live``) which changes of running hosts they
    can apply live. Raises MlnError for a change mln refuses (a disk that would shrink, a
    host moving to another server)."""
    if old.name != new.name:
        raise MlnError(f"the file names project '{new.name}', not '{old.name}'; the project name "
                       "cannot change in an upgrade")
    default_switch = ctx.config.get("default_switch", "vde")
    flags = set(ctx.pm.keywords.hypervisor_flags())
    running = any(st.startswith("up") for st in status.values())
    plan = Plan(new.name, version, running)
    for name, s in new.switches.items():
        o = old.switches.get(name)
        if o is None:
            plan.switches.append(SwitchPlan(name, "added", ["new switch"]))
        elif _switch_differs(o, s, default_switch):
            plan.switches.append(SwitchPlan(name, "rebuilt", [f"{', '.join(_differing(o.tree, s.tree))} changed"]))
        elif name in respanned:
            plan.switches.append(SwitchPlan(name, "rebuilt", ["it joins other servers than before"]))
        else:
            plan.switches.append(SwitchPlan(name, "untouched"))
    for name in old.switches:
        if name not in new.switches:
            plan.switches.append(SwitchPlan(name, "removed", ["not in the file any more"]))
    for name, h in new.hosts.items():
        o = old.hosts.get(name)
        if o is None:
            hp = HostPlan(name, "added", start=running or start_new, disk="template",
                          reasons=["new host" + (" (started: the project runs)" if running else
                                                 " (started: -S)" if start_new else "")])
            plan.hosts.append(hp)
            continue
        up = status.get(name, "down").startswith("up")
        changes = [c for c in host_changes(o, h, old.switches, new.switches, default_switch, flags, respanned)
                   if c.kind != "service_host"]    # a host here in both: another name of this server
                                                   # (moves between servers: mln_core.remote_upgrade)
        if changes and status.get(name, "").partition(":")[2].strip().startswith("saved"):
            raise MlnError(f"it was saved with 'mln stop -S' and a saved guest cannot take changes; start "
                           f"it first (mln start -p {new.name} -h {name}), then upgrade", f"host {name}")
        plan.hosts.append(_host_plan(name, o, h, changes, up, name in live_hosts, ctx))
    for name, o in old.hosts.items():
        if name not in new.hosts:
            up = status.get(name, "down").startswith("up")
            plan.hosts.append(HostPlan(name, "removed", running=up,
                                       reasons=["not in the file any more" + (" (stopped first)" if up else "")]))
    return plan


def _host_plan(name: str, old: Host, new: Host, changes: list[Change], up: bool, treat_live: bool,
               ctx) -> HostPlan:
    hp = HostPlan(name, "untouched", running=up, changes=changes)
    if not changes:
        return hp
    for c in changes:
        if c.kind == "disk_shrunk":
            raise MlnError(f"{c.reason}: mln never shrinks a disk (give the old size, or remove the host "
                           "and add it again)", f"host {name}")
    hp.reasons = [c.reason for c in changes]
    guest_files = any(c.kind in DISK_KINDS for c in changes)
    later = "the guest's files are brought up to date at its next cold start"
    if treat_live:                      # -l: configuration regenerated, disk untouched, no restart
        hp.action = "reconfigured_live" if up else "rebuilt"
        hp.reasons.append("treated as live (-l): configuration regenerated, disk untouched" +
                          (f"; {later}" if guest_files else ""))
        return hp
    cold_only = [c for c in changes if c.kind in DISK_KINDS and c.kind not in LIVE_KINDS]
    if up and not cold_only and all(c.kind in LIVE_KINDS for c in changes):
        for n, c in enumerate(changes):
            how = ctx.pm.hook.mln_plan_live(host=new, old=old, change=c, ctx=ctx)
            if how:
                hp.live[n] = how
        if len(hp.live) == len(changes):
            hp.action = "reconfigured_live"
            hp.reasons = [f"{c.reason}: live, {hp.live[n]}" for n, c in enumerate(changes)]
            if guest_files:
                hp.reasons.append(later)
            return hp
        hp.live.clear()
    if guest_files:
        hp.action = "rebuilt"
        hp.disk = "template" if any(c.kind == "template" for c in changes) else "copy"
        hp.reasons.append("disk made afresh from the new template" if hp.disk == "template" else
                          "a copy of its disk individualized again" +
                          (" and grown" if any(c.kind == "disk_grown" for c in changes) else ""))
    else:
        hp.action = "restarted" if up else "rebuilt"
        if not up:
            hp.reasons.append("configuration regenerated (the host is down)")
    if up:
        hp.restart = hp.start = True
        live_asked = [c for c in changes if c.kind in LIVE_KINDS]
        hp.reasons.append("restarted: it runs" + ("; its backend cannot apply every change to the "
                                                   "running guest" if live_asked and not cold_only else ""))
    return hp


def _differing(old, new) -> list[str]:
    """The keywords and blocks (top level) whose effective value differs, in file order:
    what ``mln diff`` shows, by first word of its path."""
    keys: list[str] = []
    for e in diff_blocks(old, new):
        key = e.path.split(" / ")[0].split(" ")[0]
        if key not in keys:
            keys.append(key)
    return keys


def _switch_differs(old: Switch, new: Switch, default_switch: str) -> bool:
    if old.kind(default_switch) != new.kind(default_switch):
        return True
    return bool(set(_differing(old.tree, new.tree)) - {"service_host"})
