"""What can run on this machine: ``mln doctor`` and the host check of ``mln check``.

Every plugin answers for itself through ``mln_doctor`` (findings) and, for a host of its
hypervisor, ``mln_runnable``; this module only gathers and prints the answers.
"""
from __future__ import annotations

import shutil

from .errors import MlnError, Problems


def tool(command: str, purpose: str, package: str, **extra) -> dict:
    """A finding for a program a plugin runs: found on PATH or not."""
    path = shutil.which(command)
    if path:
        return {"name": command, "ok": True, "detail": f"{path}: {purpose}", "remedy": "", **extra}
    return {"name": command, "ok": False, "detail": f"not installed ({purpose})",
            "remedy": f"apt-get install {package}", **extra}


def findings(ctx) -> list[dict]:
    """Every plugin's findings, each with the plugin's name, in plugin order."""
    out = []
    for impl in reversed(ctx.pm.hook.mln_doctor.get_hookimpls()):    # pluggy lists the last called first
        try:
            found = impl.function(ctx=ctx) or []
        except Exception as e:        # a broken check is a finding, not a crash of the whole report
            found = [{"name": impl.plugin_name, "ok": False, "detail": f"the check failed: "
                      f"{type(e).__name__}: {e}", "remedy": "report this to the plugin's authors"}]
        for f in found:
            out.append({"plugin": impl.plugin_name, "name": f.get("name", impl.plugin_name),
                        "ok": bool(f.get("ok")), "detail": f.get("detail", ""),
                        "remedy": f.get("remedy", "") if not f.get("ok") else "",
                        "hypervisor": f.get("hypervisor")})
    return out


def default_hypervisor_problem(ctx, found: list[dict]) -> str | None:
    """Why the configured default hypervisor cannot run here (None if it can)."""
    name = ctx.config.get("default_hypervisor") or "uml"
    name = ctx.pm.keywords.hypervisor_flags().get(name, name)
    mine = [f for f in found if f["hypervisor"] == name]
    if not mine:
        return f"no installed plugin runs the default hypervisor '{name}'"
    bad = [f for f in mine if not f["ok"]]
    return f"the default hypervisor '{name}' cannot run here: {bad[0]['detail']}" if bad else None


def render_text(found: list[dict], problem: str | None) -> str:
    width = max((len(f["name"]) for f in found), default=0)
    pw = max((len(f["plugin"]) for f in found), default=0)
    lines = []
    for f in found:
        lines.append(f"{f['plugin']:<{pw}}  {'ok' if f['ok'] else 'NO'}  {f['name']:<{width}}  {f['detail']}")
        if f["remedy"]:
            lines.append(f"{'':<{pw}}      {'':<{width}}  -> {f['remedy']}")
    lines.append(problem or "the default hypervisor can run here")
    return "\n".join(lines) + "\n"


def check_runnable(project, ctx, problems: Problems) -> None:
    """Warn about hosts whose hypervisor cannot run on this machine (hosts of other
    servers are checked there), once per reason, and about service hosts mln.conf does
    not name (a build refuses them)."""
    from .servers import configured, here
    me = here(ctx.config)
    try:
        known = configured(ctx.config)
    except MlnError as e:
        problems.error(e.message, e.where)
        known = {}
    reasons: dict[str, list] = {}
    unknown: dict[str, list] = {}
    from .placement import ANY, candidates
    for h in project.hosts.values():
        many = candidates(h.service_host)
        if many is not None:            # placed at build: check the names it gives
            for c in many:
                if c not in (ANY, me) and c not in known:
                    unknown.setdefault(c, []).append(h)
            if me not in many and ANY not in many:
                continue
        elif h.service_host and h.service_host != me and \
                (h.service_host not in known or known[h.service_host].transport != "local"):
            if h.service_host not in known:
                unknown.setdefault(h.service_host, []).append(h)
            continue
        why = ctx.pm.hook.mln_runnable(host=h, ctx=ctx)
        if why:
            reasons.setdefault(why, []).append(h)
    for why, hosts in reasons.items():
        names = ", ".join(h.name for h in hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
        first = hosts[0]
        where = first.tree.pos if first.tree is not None and getattr(first.tree, "pos", None) else f"host {first.name}"
        problems.warn(f"host{'s' * (len(hosts) > 1)} {names}: {why}", where)
    for server, hosts in unknown.items():
        first = hosts[0]
        line = first.tree.line("service_host") or first.tree.line("location") if first.tree is not None else None
        where = line.pos if line is not None else f"host {first.name}"
        problems.warn(f"service host {server} (of {len(hosts)} host{'s' * (len(hosts) > 1)}) is not a server "
                      f"mln.conf knows: a build here refuses it (add 'server {server} ssh ADDRESS')", where)
