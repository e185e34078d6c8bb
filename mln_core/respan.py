"""Switches of a project spread over servers whose span changes in an upgrade (they join
other servers than before): changed while they run where their plugin can
(``mln_respan_switch``: a bridge takes or drops its VXLAN device, the other servers'
forwarding entries change), so their guests run on; made again, their hosts restarted,
where it cannot. Used by :mod:`mln_core.upgrade`.
"""
from __future__ import annotations

from .errors import MlnError


def live(ctx, project, respanned, spans: dict) -> dict[str, list]:
    """``{switch: [old span, new span]}`` of the ``respanned`` switches of ``project`` (the
    stored one, ``ctx`` bound to it) that their plugin changes while they run."""
    out = {}
    for n in sorted(respanned):
        was = (ctx.state.get("switches", {}).get(n) or {}).get("span")
        if ctx.pm.hook.mln_respan_switch(switch=project.switches[n], old=was, new=spans.get(n), apply=False,
                                         ctx=ctx):
            out[n] = [was, spans.get(n)]
    return out


def note(plan, changes: dict) -> None:
    """The plan shows those switches as changed live (and carries them out: ``plan.respans``);
    not one whose own settings change too: that one is made again."""
    plan.respans = {}
    for sp in plan.switches:
        if sp.name in changes and sp.action == "untouched":
            sp.action, sp.reasons = "reconfigured_live", ["it joins other servers than before (while it runs)"]
            plan.respans[sp.name] = changes[sp.name]


def record(state: dict, journal, changes: dict) -> None:
    """The new spans in the new project's ``state``; the journal keeps what to undo."""
    if not changes:
        return
    journal.save(respans=changes)
    for n, (_was, now) in changes.items():
        entry = state.setdefault("switches", {}).setdefault(n, {})
        if now:
            entry["span"] = now
        else:
            entry.pop("span", None)


def apply(engine, project, changes: dict, journal) -> None:
    """Change the running switches (``ctx`` bound to the new ``project`` in its directory);
    the journal names each before it changes (``respanned``)."""
    _change(engine, project, changes, forward=True, journal=journal)


def undo(engine, project, changes: dict | None, done=()) -> None:
    """Back to the old spans, on the switches that run and were changed (``done``; ``ctx``
    bound to the old project)."""
    if changes:
        _change(engine, project, {n: c for n, c in changes.items() if n in done}, forward=False)


def _change(engine, project, changes: dict, forward: bool, journal=None) -> None:
    ctx = engine.ctx
    for n, (was, now) in changes.items():
        sw = project.switches.get(n)
        if sw is None or engine.switch_status(sw) != "up":
            continue                   # (a stopped switch takes its span when it starts)
        if journal is not None:
            journal.add("respanned", n)
        old, new = (was, now) if forward else (now, was)
        try:
            ctx.pm.hook.mln_respan_switch(switch=sw, old=old, new=new, apply=True, ctx=ctx)
        except MlnError as e:
            if forward:
                raise MlnError(f"changing the servers it spans: {e.message}", f"switch {n}") from None
            ctx.log(f"warning: switch {n}: putting back the servers it spans: {e.message}")
