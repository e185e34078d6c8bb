"""``mln upgrade`` of a project spread over servers: one plan, split by server.

From the manager (the server the project was built from), in two rounds:

1. every server plans its part against the edited file (``upgrade`` with ``simulate``,
   :mod:`mln_core.serve`) while this server plans its own; templates and ``files {}``
   sources a server lacks are sent first. An unreachable server, or one whose part cannot
   be planned, stops the upgrade here: nothing has changed anywhere. The plans are shown
   together, each under its server, and confirmed once;
2. every server carries out its part at once, each all or nothing (:mod:`mln_core.upgrade`),
   and holds it at phase ``ready`` with what it replaced set aside;
3. when every part is ready, every server is told to finish (the cleanup); when one failed,
   the others are told to put theirs back (``settle``): the whole project is then as it was.
   A server that never hears (the manager was killed) finishes at its next command, and
   running the same upgrade again completes the work.

A server new to the project gets its part built (and started if the project runs); a
server the file no longer uses has its part removed, after the others finished. A switch
that joins other servers than before is made again on each (its hosts restart). Moving a
host to another server (migration) is refused before anything is asked of a server.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import MlnError
from .move import MOVES
from .mover import Mover, bring_back, statuses
from .private import write_file
from .remote import Fleet, placement_of
from .servers import aliases_of, check_servers, configured, here, layout
from .upgrade import held


DECISION = "spread.decision"     # in the manager's project directory: the word to finish, being given
HELD = "spread.held"             # there too: servers may hold parts of an upgrade (until all settled)


class SpreadPlan:
    """The plans of every server, shown as one (duck-types :class:`mln_core.plan.Plan`)."""

    def __init__(self, project: str, answers: dict[str, dict]):
        self.project, self.answers = project, answers

    @property
    def empty(self) -> bool:
        return all(a["empty"] for a in self.answers.values())

    def as_json(self) -> dict:
        return {"project": self.project, "servers": {s: a["plan"] for s, a in self.answers.items()}}

    def render_text(self) -> str:
        return "".join(f"[{s}] {a['text']}" if a["empty"] else
                       f"[{s}] " + a["text"].replace("\n  ", f"\n[{s}]   ") for s, a in self.answers.items())


def _local(plan) -> dict:
    return {"plan": plan.as_json(), "text": plan.render_text(), "empty": plan.empty}


def upgrade(engine, path: str, simulate: bool = False, start_new: bool = False, yes: bool = False,
            live_hosts=frozenset(), keep: bool = False, confirm=None, show=None, project: str | None = None,
            fleet=None):
    """``mln upgrade``: of a project spread over servers, on all of them; else as on one
    (``fleet``: the :class:`Fleet` of a first round, whose connections the second uses)."""
    from .lang.writer import write_tree
    from .placement import resolve
    from .project import load_project
    from .upgrade import upgrade as upgrade_here
    ctx = engine.ctx
    loaded = load_project(path, ctx)
    new, name, me = loaded.project, loaded.project.name, here(ctx.config)
    args = dict(start_new=start_new, live_hosts=set(live_hosts), keep=keep, project=project)
    placement = placement_of(engine, name) if engine.store.exists(name) else None
    if placement is not None and held(engine, name):     # an earlier upgrade was killed: its word first,
        _resolve_first(engine, name, placement)          # then the project as that leaves it
        placement = placement_of(engine, name)
    check_servers(new, ctx.config)                 # every server it names is known
    if placement is None:
        if engine.store.exists(name) and not _spread(engine, name):
            placed = resolve(engine, new, me, configured(ctx.config), aliases_of(ctx.config), None)
            others = [s for s in check_servers(new, ctx.config, placed).servers if s != me]
            if others:
                raise MlnError(f"project '{name}' runs on this server alone; the file puts hosts on "
                               f"{', '.join(others)}: upgrading it onto other servers is not supported yet "
                               f"(stop it, then mln build -r -f {path})")
        return upgrade_here(engine, path, simulate=simulate, yes=yes, confirm=confirm, show=show, **args)
    old = load_project(engine.store.source_path(name), ctx).project
    old_lay = layout(old, placement["default"], placement.get("aliases"), placement.get("hosts"))
    placed = resolve(engine, new, me, configured(ctx.config), aliases_of(ctx.config), placement.get("hosts"))
    lay = check_servers(new, ctx.config, placed)
    joining = [s for s in lay.servers if s not in old_lay.servers and s != me]
    others = [s for s in dict.fromkeys(lay.servers + old_lay.servers) if s != me]
    followed = [s for s in placement.get("servers") or []       # only switches that followed moved hosts
                if s not in others and s != me]                  # are left there: removed
    leaving = [s for s in old_lay.servers if s not in lay.servers and s != me] + followed
    text = write_tree(loaded.doc.root)
    first = fleet is None                   # (else the second round of the same file: templates sent)
    with Fleet(engine, others + followed, reuse=fleet) as fleet, ThreadPoolExecutor(1) as asking:
        addresses = fleet.addresses()
        early = None            # (what every server has, asked meanwhile, unless held parts settle first)
        if first:
            fleet.prepare()
            if not _held_here(engine, name):        # (the other servers': this one's is asked below)
                early = asking.submit(statuses, engine, fleet, name, here=False)
            fleet.send_templates(new, lay)       # also: does every server answer?
        resolve_held(engine, fleet, name)
        rows = dict(early.result(), **statuses(engine, fleet, name, there=False)) if early else None
        if not first and not joining and old_lay.hosts == lay.hosts:    # (this command's second round:
            rows = dict.fromkeys([*fleet.servers, me], {"rows": []})     # nothing moves, all settled)
        mover = Mover(engine, fleet, name, old_lay.hosts, lay.hosts, old, _only_moving(ctx, old, new), rows)
        manager = engine.store.identity()
        during = _during(new, lay, old_lay, mover.live)
        parts = {s: dict(during.placement(name, s, addresses), manager=manager) for s in [*others, me]}
        with tempfile.TemporaryDirectory(prefix="mln-files-") as tmp:
            ask = {s: {"verb": "upgrade", "project": name, "text": text, "placement": parts[s], "simulate": True,
                       "start_new": start_new or (s in joining and mover.project_runs), "live": sorted(live_hosts),
                       "keep": keep, "join": s in joining, "moves": mover.moves(s)} for s in others}
            plans = fleet.each(ask, lambda: _local(upgrade_here(engine, path, simulate=True, placement=parts[me],
                                                                moves=mover.moves(me), **args)))
            _raise_failed(name, "planned", plans, "nothing was changed")
            shown = [s for s in lay.servers if s != me] + [s for s in leaving if s in plans] + \
                [me] * (me in lay.servers or not plans[me]["empty"])
            plan = SpreadPlan(name, {s: plans[s] for s in shown})
            if show is not None:
                show(plan)
            if simulate or plan.empty:
                if plan.empty and not simulate:
                    ctx.log(f"+---> project {name}: nothing to change")
                return plan
            if not yes:
                if confirm is None:
                    raise MlnError("nothing was changed: add -r to carry out this plan without a terminal "
                                   "to confirm it")
                if not confirm("carry out this upgrade on every server?"):
                    raise MlnError("nothing was changed")
            files = fleet.send_files(new, lay, tmp)   # (not for a plan only: it would stay in the inboxes)
            mover.carry(tmp)                      # disks packed, fetched and sent: nothing changed yet
            for s in others:
                ask[s].update(simulate=False, hold=True, files=files.get(s), moves=mover.moves(s))
            write_file(os.path.join(engine.store.project_dir(name), HELD), "held\n", sync=True)
            failed: dict = {}
            unsure: dict = {}
            try:
                results = fleet.each(ask, lambda: mover.here(lambda moves: upgrade_here(
                    engine, path, yes=True, placement=parts[me], hold=True, moves=moves, **args)))
                failed = {s: r for s, r in results.items() if isinstance(r, MlnError)}
                sent = mover.migrate(addresses) if not failed and mover.live else {}
            except BaseException as e:            # Ctrl-C, a migration that failed: put back everywhere
                failed = failed or {"upgrade": e if isinstance(e, MlnError) else MlnError(f"interrupted ({e!r})")}
                stuck = mover.bring_back(addresses) if mover.switching else []   # those that run there: back
                if stuck:
                    raise MlnError(_stuck(name, stuck, failed)) from None
                unsure = _settle(engine, fleet, name, [*others, me], joining, keep=False, first=mover.arriving())
                mover.back(unsure)
                if not isinstance(e, MlnError):
                    raise
            else:
                unsure = _settle(engine, fleet, name, [*others, me], joining, keep=not failed,
                                 first=mover.arriving())
                if failed:
                    mover.back(unsure)
            if failed:
                state = "it is as it was on all of them" if not unsure else \
                    f"it is as it was on all of them but {', '.join(unsure)} (run the upgrade again once " \
                    "they answer: it puts them back too)"
                raise MlnError(f"project '{name}' was not upgraded on every server; {state}:\n  " +
                               "\n  ".join(str(r) for r in failed.values()))
            mover.report(sent)
        removed: dict = {}          # (its switches stopped first; meanwhile the switches stop spanning)
        asks = {s: {"verb": "remove", "project": name, "stopped": {"hard": True, "wait": 10}}
                for s in leaving} if first else {}
        removing = threading.Thread(target=lambda: removed.update(fleet.each(asks)), daemon=True)
        removing.start()
        interrupted = False
        try:
            fleet.note(f"+---> PROJECT {name} UPGRADED on {', '.join(lay.servers)}")
            if during.switches != lay.switches:       # the moved hosts arrived: their switches follow them
                narrower = [s for s in lay.switches if during.switches[s] != lay.switches[s]]
                fleet.note(f"+---> switches {', '.join(narrower)}: now only where their hosts are")
                upgrade(engine, path, yes=True, start_new=start_new, live_hosts=live_hosts, keep=keep,
                        project=project, fleet=fleet)     # (its own leaving servers are these: not asked again)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:
                removing.join()
            elif removing.is_alive():       # (Ctrl-C: not waited for)
                fleet.note(f"+---> {', '.join(leaving)}: the project's part is still being removed there")
            for s, r in removed.items():
                if isinstance(r, MlnError):
                    fleet.say(s, f"warning: its part is gone, but the project's directory stays there: {r}")
    return plan


def _stuck(name: str, stuck: list[str], failed: dict) -> str:
    return (f"project '{name}' was not upgraded: " + "; ".join(str(r) for r in failed.values()) +
            f"\n  and host{'s' * (len(stuck) > 1)} {', '.join(stuck)} could not be taken back: "
            f"{'they run' if len(stuck) > 1 else 'it runs'} on the new server, so the upgrade is held on every "
            "server (run it again: it takes them back first, then puts everything back)")


def _during(new, lay, old_lay, live: dict):
    """The layout while hosts move live: a switch one of them is on spans the servers it
    spanned before too, so that its guests keep reaching each other until all arrived."""
    import dataclasses
    moving = {i.switch for h in live if h in new.hosts for i in new.hosts[h].interfaces if i.switch}
    switches = {s: list(dict.fromkeys(on + (old_lay.switches.get(s, []) if s in moving else [])))
                for s, on in lay.switches.items()}
    return dataclasses.replace(lay, switches=switches)


def _only_moving(ctx, old, new) -> set[str]:
    """The hosts whose server is all that changes (the others cannot move live: spec 6.6)."""
    from .plan import host_changes
    default_switch = ctx.config.get("default_switch", "vde")
    flags = set(ctx.pm.keywords.hypervisor_flags())
    return {n for n, h in new.hosts.items() if n in old.hosts and
            all(c.kind == "service_host" for c in host_changes(old.hosts[n], h, old.switches, new.switches,
                                                              default_switch, flags))}


def _spread(engine, name: str) -> bool:
    """Is the stored project a part of one spread over servers (managed elsewhere)?"""
    state = engine.store.read_state(engine.store.project_dir(name))
    return len((state.get("placement") or {}).get("servers") or []) > 1


def _raise_failed(name: str, what: str, results: dict, said: str) -> None:
    failed = [str(r) for r in results.values() if isinstance(r, MlnError)]
    if failed:
        raise MlnError(f"project '{name}' could not be {what} on every server; {said}:\n  " + "\n  ".join(failed))


def _settle(engine, fleet, name: str, servers: list[str], joining: list[str], keep: bool, first=()) -> dict:
    """Give every server the word on its held part: finish it (``keep``) or put it back (a
    server that joined the project with this upgrade then has its part removed). The word
    to finish is written down first (``spread.decision`` in this server's project): if this
    command is killed before every server has it, the next upgrade gives it again
    (:func:`resolve_held`); without it, held parts are put back: the servers in ``first``
    (where guests arrived live) before the others, so that no guest runs on two servers at
    once. The servers that did not take the word, with their errors."""
    from .upgrade import settle
    me = here(engine.ctx.config)
    decision = os.path.join(engine.store.project_dir(name), DECISION)
    if keep:
        write_file(decision, "keep\n", sync=True)
        engine.ctx.on().step("upgrade: decided")    # where MLN_FAULTS can kill it before any server heard
    results: dict = {}
    for group in ([s for s in servers if s in first], [s for s in servers if s not in first]):
        word = {s: {"verb": "settle", "project": name, "keep": keep} for s in group if s != me}
        if not keep and any(isinstance(r, MlnError) for r in results.values()):
            results.update({s: MlnError("not put back: a server where guests arrived was not") for s in group})
            break                   # (a guest may run there: the ones it left stay as they are)
        if group:
            results.update(fleet.each(word, (lambda: settle(engine, name, keep)) if me in group else None))
    if not keep:
        for s in [s for s in joining if not isinstance(results.get(s), MlnError)]:   # (not one that holds)
            for req in ({"verb": "stop", "project": name, "hard": True, "wait": 10},
                        {"verb": "remove", "project": name}):
                try:
                    fleet.request(s, req)
                except MlnError as e:
                    results[s] = e
                    break
    failed = {s: r for s, r in results.items() if isinstance(r, MlnError)}
    for s, r in failed.items():
        fleet.say(s, f"warning: {'finishing' if keep else 'putting back'} its part: {r} (run the upgrade again "
                     "once it answers: it gives the same word)")
    if not failed:
        for done in ([decision] if keep else []) + [os.path.join(engine.store.project_dir(name), f)
                                                    for f in (MOVES, HELD)]:
            if os.path.exists(done):
                os.unlink(done)
    return failed


def _resolve_first(engine, name: str, placement: dict) -> None:
    """:func:`resolve_held` over the servers of the held upgrade and of the one before it."""
    from .store import Store
    from .upgrade import WORK
    try:
        before = Store.read_state(os.path.join(engine.store.project_dir(name), WORK, "old")).get("placement") or {}
    except MlnError:
        before = {}
    me = here(engine.ctx.config)
    servers = [s for s in dict.fromkeys((placement.get("servers") or []) + (before.get("servers") or []) +
                                        list((placement.get("hosts") or {}).values()) +
                                        list((before.get("hosts") or {}).values())) if s != me]
    with Fleet(engine, servers) as fleet:
        resolve_held(engine, fleet, name)


def _held_here(engine, name: str) -> bool:
    """Was a server asked to hold a part of project ``name`` since all last settled?"""
    pdir = engine.store.project_dir(name)
    return any(os.path.exists(os.path.join(pdir, f)) for f in (DECISION, MOVES, HELD)) or held(engine, name)


def resolve_held(engine, fleet, name: str) -> None:
    """Parts an earlier upgrade left held (it was killed, or a server did not answer): the
    word it wrote down (finish), else put them back, on every server, before anything else."""
    pdir = engine.store.project_dir(name)
    if not _held_here(engine, name):
        return                          # no server was asked to hold a part since all last settled
    keep = os.path.exists(os.path.join(pdir, DECISION))
    if not keep and os.path.exists(os.path.join(pdir, MOVES)):   # guests that already run where they went
        try:                                                     # go back first
            with open(os.path.join(pdir, MOVES)) as f:
                moves = json.load(f)
            hosts = {str(h): (str(m[0]), str(m[1])) for h, m in moves["hosts"].items()}
            addresses = {str(s): str(a) for s, a in moves["addresses"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise MlnError(f"project '{name}': the record of the moves of the last upgrade ({pdir}/{MOVES}) is "
                           f"unreadable ({e}); nothing was changed") from None
        stuck = bring_back(engine, fleet, name, hosts, addresses)
        if stuck:
            raise MlnError(_stuck(name, stuck, {"": "an earlier upgrade was interrupted"}))
    _settle(engine, fleet, name, [*fleet.servers, here(engine.ctx.config)], [], keep)


