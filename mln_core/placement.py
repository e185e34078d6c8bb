"""Placement of hosts that name several servers, or ``any``: ``service_host sh1 sh2`` or
``service_host any`` (every server mln.conf names, and this one).

At ``build`` the manager asks each candidate server how much memory it has free (the
``capacity`` request) and places the hosts before anything is built:

* hosts that share a switch are kept together: a group of such hosts goes, whole, to the
  server that already has most of its switch partners (hosts with a fixed server, or a
  rebuilt host's earlier server), else to the candidate with the most memory free that
  holds the whole group;
* a group no server holds whole is split, its largest hosts first, each on the candidate
  with the most memory free that holds it;
* a host that no candidate holds is an error naming it, its memory and what each server
  has free; a server that does not answer is left out, with a warning.

The result (``{host: server}``) travels in the placement every server gets and is stored
in the project's state, so ``start``, ``stop`` and ``status`` find each host where it was
built; ``build -r`` keeps a host on its earlier server while that is still a candidate.
"""
from __future__ import annotations

from .errors import MlnError

ANY = "any"
MB = 2**20


def candidates(value: str | None) -> list[str] | None:
    """The servers a ``service_host`` value names when it names several, ``[ANY]`` for
    ``any``; None for none or one (a fixed server)."""
    words = (value or "").split()
    if words == [ANY] or len(words) > 1:
        return words
    return None


def flexible(project) -> dict[str, list[str]]:
    """{host: candidate servers} of the hosts whose place mln chooses."""
    out = {}
    for h in project.hosts.values():
        c = candidates(h.service_host)
        if c is not None:
            out[h.name] = c
    return out


def place(project, wanted: dict[str, list[str]], fixed: dict[str, str], free: dict[str, int],
          previous: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Choose a server for each host of ``wanted`` ({host: candidates}, already expanded:
    no ``any``), given the hosts with a ``fixed`` server, each server's ``free`` memory in
    MB and a rebuilt project's ``previous`` places; returns ({host: server}, what was
    decided, as lines to show)."""
    free = dict(free)
    hosts = project.hosts
    need = {h: max(1, hosts[h].memory // MB) for h in wanted}
    chosen: dict[str, str] = {}
    said: list[str] = []
    for h, cands in wanted.items():                 # a rebuild keeps its host where it was
        was = (previous or {}).get(h)
        if was in cands:
            chosen[h] = was
            said.append(f"host {h} stays on {was}")
    for h, server in {**fixed, **chosen}.items():     # their memory is spoken for, running or not
        if server in free:
            free[server] -= need.get(h) or max(1, hosts[h].memory // MB)
    where = {**fixed, **chosen}
    for group in _groups(project, [h for h in wanted if h not in chosen]):
        cands = [s for s in wanted[group[0]] if all(s in wanted[h] for h in group) and s in free]
        total = sum(need[h] for h in group)
        partners = _partners(project, group, where)
        fits = [s for s in cands if free[s] >= total]
        if fits:
            best = max(fits, key=lambda s: (partners.get(s, 0), free[s], -cands.index(s)))
            for h in group:
                chosen[h] = where[h] = best
            free[best] -= total
            why = "with its switch partners" if partners.get(best) else f"{free[best] + total} MB free"
            said.append(f"host{'s' * (len(group) > 1)} {', '.join(group)} on {best} ({why})")
            continue
        for h in sorted(group, key=lambda h: -need[h]):
            fits = [s for s in wanted[h] if s in free and free[s] >= need[h]]
            if not fits:
                have = ", ".join(f"{s} {free[s]} MB" for s in wanted[h] if s in free) or "no server answered"
                raise MlnError(f"host {h} needs {need[h]} MB of memory and no server it may run on has that "
                               f"much free ({have})", f"host {h}")
            best = max(fits, key=lambda s: (free[s], -wanted[h].index(s)))
            chosen[h] = where[h] = best
            free[best] -= need[h]
            said.append(f"host {h} on {best} ({free[best] + need[h]} MB free; its group did not fit on one server)")
    return chosen, said


def _groups(project, names: list[str]) -> list[list[str]]:
    """``names`` in groups of hosts joined by switches, the biggest groups first."""
    switches: dict[str, list[str]] = {}
    for n in names:
        for i in project.hosts[n].interfaces:
            if i.switch:
                switches.setdefault(i.switch, []).append(n)
    parent = {n: n for n in names}

    def root(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n
    for members in switches.values():
        for other in members[1:]:
            parent[root(other)] = root(members[0])
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(root(n), []).append(n)
    return sorted(groups.values(), key=lambda g: -sum(project.hosts[h].memory for h in g))


def _partners(project, group: list[str], where: dict[str, str]) -> dict[str, int]:
    """{server: how many placed hosts share a switch with ``group``}."""
    mine = {i.switch for h in group for i in project.hosts[h].interfaces if i.switch}
    count: dict[str, int] = {}
    for h in project.hosts.values():
        if h.name in where and h.name not in group and any(i.switch in mine for i in h.interfaces):
            count[where[h.name]] = count.get(where[h.name], 0) + 1
    return count


def resolve(engine, project, me: str, known: dict, aliases: dict[str, str],
            previous: dict[str, str] | None = None) -> dict[str, str] | None:
    """{host: server} for every host of ``project`` when some name several servers or
    ``any`` (None when none do): asks the candidates for their free memory (``capacity``)
    and :func:`place`\\ s them; progress lines say what was decided."""
    wanted = flexible(project)
    if not wanted:
        return None
    everyone = [me] + [n for n, s in known.items() if s.transport != "local" and n != me]
    expanded = {}
    for h, cands in wanted.items():
        names = everyone if cands == [ANY] else [aliases.get(c, c) for c in cands]
        unknown = [c for c in names if c != me and c not in known]
        if unknown:
            raise MlnError(f"service host {', '.join(unknown)} is not a server mln.conf knows (add 'server NAME "
                           f"ssh ADDRESS' to mln.conf; this server is '{me}')", f"host {h}")
        expanded[h] = list(dict.fromkeys(names))
    asked = sorted({s for c in expanded.values() for s in c})
    free = _free_memory(engine, me, [s for s in asked if s != me])
    if me in asked:
        from .capacity import capacity
        free[me] = capacity(engine)["memory_free"]
    fixed = {h.name: aliases.get(h.service_host, h.service_host) if h.service_host else me
             for h in project.hosts.values() if h.name not in wanted}
    chosen, said = place(project, expanded, fixed, free, previous)
    for line in said:
        engine.ctx.log(f"+---> placing {line}")
    return {**fixed, **chosen}


def _free_memory(engine, me: str, others: list[str]) -> dict[str, int]:
    if not others:
        return {}
    from .remote import Fleet
    with Fleet(engine, others) as fleet:
        results = fleet.each({s: {"verb": "capacity"} for s in others})
        free = {}
        for s, r in results.items():
            if isinstance(r, MlnError):
                fleet.say(s, f"warning: left out of the placement: {r}")
            else:
                free[s] = int(r.get("memory_free", 0))
    return free
