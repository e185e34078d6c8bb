"""``mln reconfigure`` (``mln rc``): individualize existing hosts again from the stored
project file, without an edited file (spec 4.2).

Every selected host (all of them, or ``-h H1:H2``) gets its guest files written again by
the plugins (``mln_configure_image``) and its hypervisor configuration regenerated; with
``-B`` its disk is first made afresh from its template (what the original called
"rebuild filesystems"), otherwise the individualization goes into a copy of its present
disk, so files the guest has of its own stay. A running host is stopped first and
started again afterwards; with ``-S`` the selected hosts that were not running are
started too. The other hosts are not touched (a running one keeps running).

It is carried out as an upgrade whose plan rebuilds the selected hosts
(:mod:`mln_core.upgrade`): the new disks are made beside the old ones and moved in only
when every selected host was done, journaled, so an error (or a kill) leaves the old
disks in place, untouched and usable, and starts again the hosts that ran. Errors name
the host and the step.

A host saved with ``mln stop -S`` is refused: its saved memory belongs to its old disk.
"""
from __future__ import annotations

from .errors import MlnError
from .plan import HostPlan, Plan, SwitchPlan
from .upgrade import _Run


class _Reconfigure(_Run):
    what = "reconfigure"


def select_hosts(project, wanted: list[str] | None) -> list[str]:
    """The hosts ``-h`` names, in the project's order (all if none); an unknown one is an
    error that lists the project's hosts."""
    if not wanted:
        return list(project.hosts)
    unknown = [h for h in dict.fromkeys(wanted) if h not in project.hosts]
    if unknown:
        known = ", ".join(project.hosts) or "none"
        raise MlnError(f"project '{project.name}' has no host{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                       f"(its hosts: {known}); nothing was changed")
    return [h for h in project.hosts if h in wanted]


def reconfigure(engine, project_name: str, hosts: list[str] | None = None, rebuild: bool = False,
                start: bool = False) -> Plan:
    """Individualize ``hosts`` (default: all) of the stored project again; ``rebuild``:
    from fresh disks (``-B``); ``start``: start them afterwards also if they were not
    running (``-S``). Returns the plan that was carried out."""
    ctx, store = engine.ctx, engine.store
    with engine.locked(project_name) as loaded:
        project = loaded.project
        names = select_hosts(project, hosts)
        servers = (ctx.state.get("placement") or {}).get("servers", [])
        if len(servers) > 1:
            raise MlnError(f"project '{project_name}' is spread over servers ({', '.join(servers)}): "
                           "mln reconfigure of such a project is not supported yet")
        status = {h.name: engine.host_status(h) for h in project.hosts.values()}
        for name in names:
            if name not in ctx.state.get("hosts", {}):
                raise MlnError("was not built (no disk recorded); nothing was changed", f"host {name}")
            state, _, detail = status[name].partition(":")
            if state.strip() == "down" and detail.strip().startswith("saved"):
                raise MlnError("was saved with 'mln stop -S' and its saved memory belongs to its present "
                               f"disk: start it and stop it without -S first (mln start -p {project_name} -h "
                               f"{name}); nothing was changed", f"host {name}")
        up = {n for n, st in status.items() if st.startswith("up")}
        plan = Plan(project.name, store.version(project.name), running=bool(up))
        for h in project.hosts:
            if h not in names:
                plan.hosts.append(HostPlan(h, "untouched", running=h in up))
                continue
            how = "a new disk from its template (-B)" if rebuild else "a copy of its disk"
            reasons = [f"individualized again into {how}"]
            if h in up:
                reasons.append("running: stopped first, started again after")
            elif start:
                reasons.append("started after (-S)")
            plan.hosts.append(HostPlan(h, "rebuilt", running=h in up, disk="template" if rebuild else "copy",
                                       restart=h in up, start=h in up or start, reasons=reasons))
        plan.switches = [SwitchPlan(s, "untouched") for s in project.switches]
        for hp in plan.hosts:
            if hp.action == "rebuilt":
                ctx.log(f"+---> {hp.name}: {'; '.join(hp.reasons)}")
        _Reconfigure(engine, project, loaded.doc, project, loaded.doc, plan, keep=False).run()
    ctx.log(f"+---> PROJECT {project_name} RECONFIGURED ({', '.join(names)}; version {plan.version + 1})")
    return plan
