"""Reading a project: text -> tree -> post-parse plugins -> effective trees -> model.

This is the one way every command reads a project file, so that ``check``, ``show``,
``build`` and ``upgrade`` see exactly the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import nickinds
from .errors import MlnError, Problems
from .lang.parser import Document, parse_file, parse_text
from .merge import Resolved
from .model import Project, build_host, build_switch, check_defaults
from .startup import no_gc


@dataclass(repr=False, eq=False)
class Loaded:
    """A project file read: its document, resolved project and the problems found."""

    doc: Document
    resolved: Resolved
    project: Project | None
    problems: Problems


def load_document(path: str | None, ctx, text: str | None = None, post_parse: bool = True) -> Document:
    with no_gc():
        return _load_document(path, ctx, text, post_parse)


def _load_document(path, ctx, text, post_parse) -> Document:
    doc = parse_text(text, path or "<text>") if text is not None else parse_file(path)
    if post_parse:
        ctx.pm.hook.mln_post_parse(doc=doc, ctx=ctx)
    return doc


def build_model(doc: Document, ctx, fragment_ok: bool = False) -> Loaded:
    """The resolved model of ``doc``; problems are collected, not raised."""
    with no_gc():
        return _build_model(doc, ctx, fragment_ok)


def _build_model(doc: Document, ctx, fragment_ok: bool) -> Loaded:
    problems = doc.problems
    registry = ctx.pm.keywords
    registry.check(doc, problems)
    g = doc.global_block
    name = None
    if g is None:
        if fragment_ok:
            problems.warn("no 'global' block: this file can only be included by another, so only "
                          "its syntax and keywords were checked", doc.files[0] if doc.files else None)
            return Loaded(doc, Resolved(doc, line_blocks=registry.line_blocks()), None, problems)
        else:
            problems.error("no project name found: add 'global { project NAME }'",
                           doc.files[0] if doc.files else None)
    elif g.get("project") is None:
        problems.error("the 'global' block has no 'project NAME' line", g.pos)
    resolved = Resolved(doc, line_blocks=registry.line_blocks())
    if g is not None and g.get("project") is not None:
        name = resolved.project
        from .names import name_problem
        problem = name_problem("project", name)
        if problem:
            problems.error(problem, g.line("project").pos)
            name = None
    project = Project(name=name or "", superclasses=list(doc.superclasses()),
                      source=doc.files[0] if doc.files else None)
    try:
        project.global_tree = resolved.effective("global", "")
    except MlnError as e:
        problems.error(e.message, e.where)
    defaults = ctx.config.values
    flags = registry.hypervisor_flags()
    switch_names = set(doc.switches())
    for sname in doc.switches():
        project.switches[sname] = build_switch(sname, resolved.effective("switch", sname), project.name)
    for sc in doc.superclasses():
        try:
            resolved.merged("superclass", sc)
        except MlnError as e:
            problems.error(e.message, e.where)
    for hname in doc.hosts():
        try:
            eff = resolved.effective("host", hname)
            chain = [b.name for b in resolved.chain("host", hname)[1:]]
        except MlnError as e:
            problems.error(e.message, e.where)
            continue
        host = build_host(hname, eff, project.name, defaults, flags, chain, switch_names, problems)
        project.hosts[hname] = host
        for iface in host.interfaces:
            if iface.switch in project.switches:
                project.switches[iface.switch].members.append((hname, iface.name))
    check_defaults(project, defaults, sorted(set(flags.values())), problems)
    _check_addresses(project, problems)
    _check_hypervisors(project, registry, problems)
    nickinds.check(project, registry, problems)
    from .private import Secrets, remember_project
    remember_project(project, Secrets(registry))     # traces print <secret> in their place
    for found in ctx.pm.hook.mln_validate(project=project, ctx=ctx):
        for p in found or []:
            problems.items.append(p)
    return Loaded(doc, resolved, project, problems)


def _check_addresses(project: Project, problems: Problems) -> None:
    seen: dict[str, str] = {}
    for h in project.hosts.values():
        for i in h.interfaces:
            if i.address and i.address != "dhcp" and nickinds.kind(i) != "slirp":   # each slirp is private
                if i.address in seen:
                    problems.warn(f"address {i.address} of {h.name} {i.name} is also used by "
                                  f"{seen[i.address]}", i.tree.line("address").pos)
                else:
                    seen[i.address] = f"{h.name} {i.name}"


def _check_hypervisors(project: Project, registry, problems: Problems) -> None:
    """Warn about hypervisors of the language that no installed backend builds (yet)."""
    flags = registry.hypervisor_flags()
    missing: dict = {}
    for h in project.hosts.values():
        hv = registry.hypervisors.get(h.hypervisor)
        if hv is not None and hv.plugin == "core":
            line = next((ln for kw, ln in h.tree.values.items()
                         if kw == "hypervisor" or flags.get(kw) == h.hypervisor), None)
            key = (h.hypervisor, line.pos if line is not None else f"host {h.name}")
            missing.setdefault(key, []).append(h.name)
    for (hv, where), hosts in missing.items():
        names = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
        problems.warn(f"no installed backend builds {hv} hosts yet, so 'mln build' will fail "
                      f"(hosts: {names})", where)


def load_project(path: str, ctx, text: str | None = None) -> Loaded:
    """Read and resolve a project; raise the first error (with its position)."""
    with no_gc():
        loaded = build_model(load_document(path, ctx, text), ctx)
    loaded.problems.raise_first_error()
    return loaded
