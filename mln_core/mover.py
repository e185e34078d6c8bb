"""The manager's side of the moves of one ``mln upgrade`` (:class:`Mover`): which hosts
move and how, the cold ones' disks carried, the live ones sent two at a time, and put
back when the upgrade is. The servers' side is :mod:`mln_core.move`.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from .errors import MlnError
from .move import (MOVES, NOT_RUNNING, archive_name, arrived, at_once, discard, discard_packed, inbox, left,
                   migrate_in, migrate_out, pack, shared_disks, unpack)
from .private import write_file


class Mover:
    """The manager's side of the moves of one upgrade, cold and live: ``moved`` is
    ``{host: (the server it leaves, the server it goes to)}``."""

    def __init__(self, engine, fleet, name: str, was: dict[str, str], now: dict[str, str], project=None,
                 only_moving=frozenset(), rows=None):
        """``was``: where the stored project has each host; ``now``: where the file puts it;
        ``only_moving``: the hosts of which nothing else changes (those may move live).
        Every server is asked what it has (``rows``: its answers, if :func:`statuses`
        asked already): a host is moved from where it is."""
        self.e, self.fleet, self.name = engine, fleet, name
        self.me, self.at_once = fleet.me, at_once(engine.ctx.config)
        self.sent: dict[str, dict] = {}
        self.stopped: list[str] = []
        self.switched: list[str] = []            # live hosts whose guests run on their new servers
        self.switching = False                   # live moves began (spread.moves is written)
        self.span = (0.0, 0.0)                   # when the first live move began, the last ended
        rows = statuses(engine, fleet, name) if rows is None else rows
        failed = [str(r) for r in rows.values() if isinstance(r, MlnError)]
        if failed:
            raise MlnError("not every server of the project answers; nothing was done:\n  " + "\n  ".join(failed))
        hosts = {(s, r["name"]): r for s, a in rows.items() for r in a["rows"] if r["kind"] == "host"}
        self.project_runs = any(r["state"] == "up" for r in hosts.values())
        where = {}
        for (s, h), r in hosts.items():
            if h not in where or r["state"] == "up":
                where[h] = s
        self.moved = moved = {h: (where.get(h, was.get(h)), dst) for h, dst in now.items()
                              if where.get(h, was.get(h)) not in (None, dst)}
        self.running, self.live = {}, {}
        self.shared = {h: rows[src]["disks"][h] for h, (src, _dst) in moved.items()
                       if isinstance((rows[src].get("disks") or {}).get(h), dict)}
        for h in set(self.shared) - set(only_moving):
            raise MlnError(f"host {h}: its disk is on shared storage, so it moves only if nothing but its "
                           "service_host changes; move it first, then change the rest", f"host {h}")
        for h, (src, _dst) in moved.items():
            row = hosts.get((src, h), {})
            if "saved" in str(row.get("detail", "")):
                raise MlnError(f"host {h} was saved with 'mln stop -S' on {src}: a saved guest does not move; "
                               f"start it (or stop it) first", f"host {h}")
            self.running[h] = row.get("state") == "up"
            if self.running[h] and project is not None and h in project.hosts and h in only_moving:
                how = engine.ctx.pm.hook.mln_live_migration(host=project.hosts[h], shared=h in self.shared,
                                                            ctx=engine.ctx)
                if how:
                    self.live[h] = how

    def _on(self, server: str, request: dict, local):
        return local() if server == self.me else self.fleet.request(server, request)

    def moves(self, server: str) -> dict:
        """What the upgrade request of ``server`` says of the hosts that leave or reach it."""
        out = {}
        for h, (src, dst) in self.moved.items():
            live = {"live": self.live[h]} if h in self.live else {}
            if h in self.shared:
                live["shared"] = True
            if src == server:
                out[h] = {"to": dst, **live}
            if dst == server:
                out[h] = dict(self.sent.get(h, {}), **{"from": src, "run": self.running[h]}, **live,
                              **({"disk": self.shared[h]} if h in self.shared else {}))
        return out

    def carry(self, tmp: str) -> None:
        """Stop each moving host that runs, pack its disk where it is, fetch it and send it
        where it goes (checked by SHA-256 at each step); on any failure the hosts stopped
        are started again and nothing else has changed."""
        from .serve import sha256_of
        e, name, ctx = self.e, self.name, self.e.ctx
        try:
            for h, (src, dst) in self.moved.items():
                if h in self.live:
                    continue                      # it moves once every server is ready (migrate)
                if h in self.shared:              # stopped; the other server takes the disk as it is
                    if self.running[h]:
                        self.fleet.say(src, f"+---> {h}: stopping it, to move it to {dst}")
                        self._on(src, {"verb": "stop", "project": name, "host": h, "wait": 60},
                                 lambda h=h: e.stop(name, h))
                        self.stopped.append(h)
                    continue
                if self.running[h]:
                    self.fleet.say(src, f"+---> {h}: stopping it, to move it to {dst}")
                    self._on(src, {"verb": "stop", "project": name, "host": h, "wait": 60},
                             lambda h=h: e.stop(name, h))
                    self.stopped.append(h)
                packed = self._on(src, {"verb": "pack", "project": name, "host": h}, lambda h=h: pack(e, name, h))
                local = packed["archive"]
                if src != self.me:
                    local = os.path.join(tmp, archive_name(name, h))
                    self.fleet.get(src, packed["archive"], local)
                if sha256_of(local) != packed["sha256"]:
                    raise MlnError(f"the disk of host {h} arrived damaged from {src} (its SHA-256 differs)")
                size = os.path.getsize(local)
                if dst == self.me:
                    dest = os.path.join(inbox(ctx), archive_name(name, h))
                    os.makedirs(inbox(ctx), mode=0o700, exist_ok=True)
                    if local != dest:
                        shutil.copyfile(local, dest)
                else:
                    dest = os.path.join(self.fleet.inboxes[dst], archive_name(name, h))
                    self.fleet.put(dst, local, dest)
                self.fleet.say(dst, f"+---> {h}: its disk arrived from {src} ({max(1, size // 2**20)} MB packed)")
                self.sent[h] = {"archive": dest, "sha256": packed["sha256"], "disk": packed["disk"]}
        except BaseException:
            self.back()
            raise

    def here(self, upgrade):
        """This server's part: ``upgrade(moves)`` with the disks that reached it unpacked."""
        moves = unpack(self.e.ctx, self.name, self.moves(self.me))
        try:
            return upgrade(moves)
        finally:
            discard(self.e.ctx, self.name, moves)
            discard_packed(self.e.ctx, self.name)

    def migrate(self, addresses: dict[str, str]) -> dict[str, tuple[int, float | None]]:
        """Send the live hosts, two at a time (:func:`at_once`), once every server's part is
        ready: each waits on its new server and is sent by its old one (disk, then memory). On shared
        storage it runs there as soon as it arrived (:attr:`switched`, seen by ``arrived``);
        a guest whose disk and memory are complete there (``resumable``) is let run there
        at once; else it waits paused until the manager settles the upgrade. Once it runs
        there, what is left of it on the old server ends (``left``, while the next move
        begins). {host: (its pause in ms so far, the time its send ended, None if it runs
        already)}; an error puts the upgrade back
        everywhere (:meth:`bring_back`, then the settle: the guests run on where they were).
        Which hosts move is written down first (``spread.moves``), for a rerun after a kill."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
        e, name, out = self.e, self.name, {}
        write_file(os.path.join(e.store.project_dir(name), MOVES), json.dumps(
            {"hosts": {h: list(m) for h, m in self._may_switch().items()}, "addresses": addresses}) + "\n",
            sync=True)
        self.switching = True
        self.span = (time.monotonic(), time.monotonic())

        def one(h):
            src, dst = self.moved[h]
            start = time.monotonic()
            self.fleet.say(dst, f"+---> {h}: moving here from {src} while it runs")
            incoming = self._on(dst, {"verb": "migrate_in", "project": name, "host": h, "address": addresses[dst]},
                                lambda: migrate_in(e, name, h, addresses[dst]))
            e.ctx.on().step(f"move {h}: send")        # where MLN_FAULTS can kill the manager mid-move
            sent = self._on(src, {"verb": "migrate_out", "project": name, "host": h, "incoming": incoming},
                            lambda: migrate_out(e, name, h, incoming))
            ended = time.monotonic()
            e.ctx.on().step(f"move {h}: received")    # there, not yet let run (unless on shared storage)
            # complete there: seen running (switched: shared storage) or let run (resumable)
            if sent.get("switched") or sent.get("resumable"):
                self._on(dst, {"verb": "arrived", "project": name, "host": h}, lambda: arrived(e, name, h))
                self.switched.append(h)
            pause = int(sent.get("downtime_ms", 0))
            if sent.get("resumable"):             # paused from the migration's end until let run there
                pause += int(sent.get("tail_ms", 0)) + int((time.monotonic() - ended) * 1000)
            out[h] = (pause, None if h in self.switched else ended)
            if h in self.switched and src == self.me:
                self._left(src, h)
            elif h in self.switched:            # (meanwhile the next move begins)
                after.append(ends.submit(self._left, src, h))
            e.ctx.on().step(f"move {h}: sent")        # paused on both servers until the word, or runs there
            self.fleet.say(dst, f"+---> {h}: its {'memory' if h in self.shared else 'disk and memory'} arrived "
                                f"from {src} in {time.monotonic() - start:.1f} s" +
                                (" (it runs here)" if h in self.switched else ""))
        mine = sorted(h for h in self.live if self.me in self.moved[h])     # this server's: one engine
        after: list = []                    # what is left on the old servers ending, in the background
        with ThreadPoolExecutor(max_workers=self.at_once) as pool, ThreadPoolExecutor(self.at_once) as ends:
            for h in mine:
                one(h)
            futures = [pool.submit(one, h) for h in sorted(set(self.live) - set(mine))]
            try:            # the first move that fails: those not begun yet do not begin
                wait(futures, return_when=FIRST_EXCEPTION)
                _raise_first(futures)
                moved = time.monotonic()
            finally:
                for f in futures:
                    f.cancel()
        _raise_first(after)             # (all ended with the pool)
        self.span = (self.span[0], moved)
        return out

    def _left(self, src: str, h: str) -> None:
        """The guest of ``h`` runs on its new server: what is left of it on ``src`` ends
        (else the settle ends it)."""
        try:
            self._on(src, {"verb": "left", "project": self.name, "host": h}, lambda: left(self.e, self.name, h))
        except MlnError as e:
            self.fleet.say(src, f"warning: {h}: what is left of it here ends with the upgrade: {e}")

    def bring_back(self, addresses: dict[str, str]) -> list[str]:
        """Before the upgrade is put back: each guest that already runs on its new server
        (:attr:`switched`, or one whose answer got lost: the new server's status says) is
        sent back live to the server it left (a new QEMU there takes it; the one it left
        from has ended, or is an empty shell). The hosts that could not go back (they run on where they
        are: the upgrade must stay held)."""
        return bring_back(self.e, self.fleet, self.name, self._may_switch(), addresses)

    def _may_switch(self) -> dict:
        """The live hosts that may run on their new servers before the upgrade is settled."""
        return {h: self.moved[h] for h in self.live}

    def report(self, sent: dict[str, tuple[int, float | None]]) -> None:
        """Each live host's pause: QEMU's downtime, and (unless it ran on at once) from the
        end of its send until it runs on its new server (after the settle)."""
        now = time.monotonic()
        downs = {h: down + (int((now - ended) * 1000) if ended is not None else 0)
                 for h, (down, ended) in sent.items()}
        for h, down in sorted(downs.items()):
            self.fleet.say(self.moved[h][1], f"+---> {h}: moved live from {self.moved[h][0]} "
                                             f"(the guest paused {down} ms)")
        if downs:
            last = now if any(ended is not None for _, ended in sent.values()) else self.span[1]
            self.fleet.say(self.me, f"+---> {len(downs)} host{'s' * (len(downs) != 1)} moved live in "
                                    f"{last - self.span[0]:.1f} s; guests paused "
                                    f"{min(downs.values())} to {max(downs.values())} ms")

    def arriving(self) -> set[str]:
        """The servers that hosts reach with their guests (live) or their shared disks."""
        return {self.moved[h][1] for h in set(self.live) | set(self.shared)}

    def back(self, unsure=()) -> None:
        """Start again, where they were, the hosts stopped to move (not one on shared storage
        whose new server did not answer: it may run there)."""
        for h in self.stopped:
            src, dst = self.moved[h]
            if h in self.shared and dst in unsure:
                self.fleet.say(src, f"warning: {h} is not started again here: {dst} did not say it stopped it "
                                    "there (run the upgrade again)")
                continue
            try:
                self._on(src, {"verb": "start", "project": self.name, "host": h},
                         lambda h=h: self.e.start(self.name, h))
            except MlnError as e:
                self.fleet.say(src, f"warning: starting {h} again: {e}")
        self.stopped = []


def statuses(engine, fleet, name: str, here: bool = True, there: bool = True) -> dict:
    """What the servers have of project ``name`` (``here``: this one; ``there``: the
    others): the status rows and the hosts' disks on shared storage ({server: answer or
    the MlnError it raised})."""
    asks = {s: {"verb": "status", "project": name, "disks": True} for s in fleet.servers if there}
    return fleet.each(asks, (lambda: {"rows": engine.status(name), "disks": shared_disks(engine, name)})
                      if here else None)


def _raise_first(futures) -> None:
    """The error of the first of ``futures`` that failed, if one did."""
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()


def bring_back(engine, fleet, name: str, moved: dict, addresses: dict[str, str]) -> list[str]:
    """:meth:`Mover.bring_back` of the hosts ``moved`` ({host: (from, to)}) whose guests
    run on the server they went to (its status says so)."""
    me, stuck, rows = fleet.me, [], {}

    def on(server, request, local):
        return local() if server == me else fleet.request(server, request)
    for h, (src, dst) in sorted(moved.items()):
        try:
            if dst not in rows:
                rows[dst] = on(dst, {"verb": "status", "project": name},
                               lambda: {"rows": engine.status(name)})["rows"]
            if not any(r["kind"] == "host" and r["name"] == h and r["state"] == "up" and
                       r["detail"] not in NOT_RUNNING for r in rows[dst]):
                continue                          # it does not run there: the put back ends it there
            fleet.say(src, f"+---> {h}: taking its guest back from {dst}")
            incoming = on(src, {"verb": "migrate_in", "project": name, "host": h, "address": addresses[src],
                                "back": True}, lambda: migrate_in(engine, name, h, addresses[src], back=True))
            sent = on(dst, {"verb": "migrate_out", "project": name, "host": h, "incoming": incoming, "back": True},
                      lambda: migrate_out(engine, name, h, incoming, back=True))
            fleet.say(src, f"+---> {h}: back from {dst} (the guest paused {int(sent.get('downtime_ms', 0))} ms)")
        except (MlnError, KeyError, TypeError) as e:
            fleet.say(dst, f"warning: {h} stays here, running: taking it back to {src} failed: {e}")
            stuck.append(h)
    return stuck
