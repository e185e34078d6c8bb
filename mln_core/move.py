"""Cold moves of hosts between servers (``mln upgrade`` of a host whose ``service_host``
changed): the disk of the stopped host is packed on the server it leaves (what its
storage plugin's ``mln_export_disk`` writes, in one compressed archive with its SHA-256),
fetched by the manager through that server's transport, sent on to the server it goes to,
checked there and made the host's disk by ``mln_import_disk``. The host is removed from
the server it left only after every server finished the upgrade
(:mod:`mln_core.remote_upgrade`).
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time

from .errors import MlnError
from .names import check_name
from .private import write_file


def inbox(ctx) -> str:
    return os.path.join(ctx.config.templates_dir, ".incoming")


def archive_name(project: str, host: str) -> str:
    return f"{project}.{host}.move.tar.gz"


def pack(engine, name: str, host: str) -> dict:
    """Pack the disk of ``host`` (stopped, not saved) into this server's inbox:
    ``{"archive", "sha256", "disk"}`` (the disk as recorded here)."""
    from .export import _export_host, _require_down
    from .serve import sha256_of
    ctx = engine.ctx
    check_name("host", host)
    with engine.locked(name) as loaded:
        if host not in loaded.project.hosts:
            raise MlnError(f"project '{name}' has no host '{host}' on this server")
        h = loaded.project.hosts[host]
        _require_down(engine, type(loaded.project)(name=name, hosts={host: h}), False)
        disk = dict(ctx.state["hosts"][host]["disk"])
        os.makedirs(inbox(ctx), mode=0o700, exist_ok=True)
        out = os.path.join(inbox(ctx), archive_name(name, host))
        work = tempfile.mkdtemp(prefix=f".{name}.{host}.pack-", dir=inbox(ctx))
        try:
            members: dict[str, str] = {}
            _export_host(ctx, h, ctx.project_dir, os.path.join(work, host), members)
            tmp = out + ".part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
                for arc, path in members.items():
                    tar.add(path, arcname=os.path.basename(arc))
            os.replace(tmp, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {"archive": out, "sha256": sha256_of(out), "disk": disk}


def unpack(ctx, name: str, moved: dict) -> dict:
    """The archives the manager sent (``{host: {"archive", "sha256", ...}}``), checked and
    unpacked into private directories: ``{host: dict(entry, src=DIRECTORY)}``."""
    from .serve import sha256_of
    out = {}
    for host, given in (moved or {}).items():
        check_name("host", host)
        entry = {k: given[k] for k in KEYS if k in given}       # never a path of the request's own
        archive = entry.get("archive")
        if not archive:                 # a plan (-s), a live move: nothing was sent
            out[host] = entry
            continue
        if os.path.dirname(os.path.abspath(archive)) != inbox(ctx) or not os.path.isfile(archive):
            raise MlnError(f"the disk of a moved host is taken only from {inbox(ctx)}, not {archive}")
        if sha256_of(archive) != entry.get("sha256"):
            raise MlnError(f"the disk of host {host} arrived damaged (its SHA-256 differs from the sender's)")
        dest = tempfile.mkdtemp(prefix=f".{name}.{host}.moved-", dir=ctx.config.projects_dir)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise MlnError(f"the disk of host {host} could not be unpacked: {e}") from None
        out[host] = dict(entry, src=dest)
    return out


#: live moves at once unless mln.conf says ``migrate_at_once N`` (the manager's own: one after the other)
AT_ONCE = 2
#: in the manager's project directory while live moves go on: {"hosts": {host: [from, to]}, "addresses"}
MOVES = "spread.moves"
NOT_RUNNING = ("inmigrate", "postmigrate")    # status details of a host whose guest runs elsewhere
#: what a move of an upgrade request may say (note_moves)
KEYS = ("from", "to", "run", "live", "shared", "disk", "archive", "sha256")


def shared_disk(disk: dict, config, pdir: str) -> dict | None:
    """A recorded disk on shared storage (:mod:`mln_core.sanpath`) marked ``extra["shared"]``,
    else None: the server a host moves to takes such a disk as it is. (One in the project
    directory, or with a swap disk beside it there, moves by copy.)"""
    from .sanpath import is_on_san
    path = str(disk.get("path") or "")
    if disk and (os.path.isabs(path) or "://" in path) and not (disk.get("extra") or {}).get("swap") \
            and is_on_san(disk, config=config, project_dir=pdir):
        return dict(disk, extra=dict(disk.get("extra") or {}, shared=True))
    return None


def shared_disks(engine, name: str) -> dict[str, dict]:
    """:func:`shared_disk` of each host of ``name`` on this server that has one."""
    if not engine.store.exists(name):
        return {}
    pdir = engine.store.project_dir(name)
    hosts = engine.store.read_state(pdir).get("hosts") or {}
    found = {h: shared_disk(entry.get("disk") or {}, engine.ctx.config, pdir) for h, entry in hosts.items()}
    return {h: d for h, d in found.items() if d}


def discard(ctx, name: str, moved: dict) -> None:
    """Delete what :func:`unpack` made and the archives it read."""
    for entry in moved.values():
        if entry.get("src"):
            shutil.rmtree(entry["src"], ignore_errors=True)
        if entry.get("archive") and os.path.isfile(entry["archive"]):
            os.unlink(entry["archive"])


def discard_packed(ctx, name: str) -> None:
    """The archives :func:`pack` left in this server's inbox for ``name`` (once every server
    settled the upgrade)."""
    box = inbox(ctx)
    if os.path.isdir(box):
        for f in os.listdir(box):
            if f.startswith(f"{name}.") and f.endswith(".move.tar.gz") and \
                    "." not in f[len(name) + 1:-len(".move.tar.gz")]:      # not project NAME.x's
                os.unlink(os.path.join(box, f))


# -- live moves, server side (the upgrade of each server holds at phase ready meanwhile) ----------

def at_once(config) -> int:
    """How many live moves at once: mln.conf ``migrate_at_once`` (1 to 64), else 2 (as oVirt)."""
    value = str(config.get("migrate_at_once") or AT_ONCE).strip()
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise MlnError(f"mln.conf migrate_at_once {value}: give a whole number from 1 to 64")
    return int(value)


def _lock(engine, name: str, wait: float = 60):
    """The project's lock, waited for (another guest's move may hold it for a moment)."""
    import contextlib
    from .store import ProjectBusy
    end = time.monotonic() + wait
    while True:
        held = contextlib.ExitStack()
        try:
            held.enter_context(engine.store.lock(name))
            return held
        except ProjectBusy:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def _host(engine, name: str, host: str, old: bool):
    """The host as this server's held upgrade has it (``old``: as it was before)."""
    from .project import load_project
    from .store import Store
    from .upgrade import WORK
    ctx = engine.ctx
    pdir = engine.store.require(name)
    was = os.path.join(pdir, WORK, "old")
    if old and os.path.isdir(was):          # (none: the upgrade was put back here already)
        project = load_project(os.path.join(was, f"{name}.mln"), ctx).project
        engine._bind(project, pdir, Store.read_state(was))
        h = ctx.project.hosts.get(check_name("host", host))
    else:
        h = engine.open(name).project.hosts.get(check_name("host", host))
    if h is None:
        raise MlnError(f"project '{name}' {'had' if old else 'has'} no host '{host}' on this server")
    return h


def migrate_in(engine, name: str, host: str, address: str, back: bool = False) -> dict:
    """On the server the host moves to: start it waiting for its guest (``mln_migrate_in``);
    ``back``: on the server it left, to take back a guest that already runs on the other
    (the held upgrade is put back)."""
    from .lifecycle import _attached
    from .upgrade import Journal
    ctx = engine.ctx
    with _lock(engine, name):              # not engine.locked: no recovery of the held upgrade
        h = _host(engine, name, host, old=back)
        journal = Journal.read(ctx.project_dir)
        if journal is not None and not back:    # undone with the upgrade if the move fails
            journal.add("started", host)
        disk = ctx.disk(h)
        if back and shared_disk(ctx.host_state(h).get("disk") or {}, ctx.config, ctx.project_dir):
            disk.extra = dict(disk.extra or {}, shared=True)     # (as the other server took it)
        engine._detach_disk(h)
        path = ctx.pm.hook.mln_attach_disk(host=h, disk=disk, ctx=ctx)    # as a start does
        if path:
            write_file(_attached(ctx, h), path + "\n")
    try:        # without the lock: another guest of the project may be started here at the same time
        answer = ctx.pm.hook.mln_migrate_in(host=h, disk=disk, address=address, ctx=ctx)
    except BaseException:
        with _lock(engine, name):
            engine._detach_disk(h)
        raise
    if answer is None:
        raise MlnError(f"no installed backend takes a running '{h.hypervisor}' guest", f"host {host}")
    return answer


def arrived(engine, name: str, host: str) -> dict:
    """On the server a host moved to, once its send completed: its guest runs here now
    (``mln_migrate_done``), before the upgrade is settled (a put back sends it back)."""
    with _lock(engine, name):
        h = _host(engine, name, host, old=False)
        engine.ctx.pm.hook.mln_migrate_done(host=h, ctx=engine.ctx)
    return {}


def left(engine, name: str, host: str) -> dict:
    """On the server a host left, once its guest runs on the new one: end what is left of
    it here (a QEMU whose guest went away holds its memory, and slows the moves that
    follow). Only a host whose status says its guest went elsewhere (``postmigrate``) is
    ended (else the settle ends it). ``{"ended": bool}``."""
    with _lock(engine, name):
        h = _host(engine, name, host, old=True)
        if engine.host_status(h) != f"up: {NOT_RUNNING[1]}":
            return {"ended": False}
        engine._stop_hosts([h], hard=True, wait_s=5)     # (as the settle would: its taps, disk, files)
    return {"ended": True}


def migrate_out(engine, name: str, host: str, incoming: dict, back: bool = False) -> dict:
    """On the server the host leaves: send its running guest (``mln_migrate_out``); the
    host is the project's as it was before the held upgrade (``back``: as it is in it, the
    guest going back to the server it came from)."""
    ctx = engine.ctx
    with _lock(engine, name):
        h = _host(engine, name, host, old=not back)
    # the transfer itself without the lock: the held upgrade changes nothing meanwhile, and
    # another guest of the project may be sent or received at the same time
    answer = ctx.pm.hook.mln_migrate_out(host=h, incoming=incoming, ctx=ctx)
    if answer is None:
        raise MlnError(f"no installed backend sends a running '{h.hypervisor}' guest", f"host {host}")
    return answer


# -- the plan of a server a host leaves or reaches (mln_core.upgrade) -------------------------

def arriving_disk(ctx, moves: dict):
    """The disk of a host whose running guest arrives from another server: the one it runs
    on if that is on shared storage, else fresh from its template; not individualized
    (the guest's own disk is copied into it)."""
    from .model import Disk

    def make(host):
        move = moves.get(host.name) or {}
        if move.get("shared"):
            try:
                disk = Disk(**move["disk"])
            except (KeyError, TypeError):
                raise MlnError("the server it leaves recorded its shared disk wrongly") from None
            return _reachable(ctx, host, disk)
        return ctx.pm.hook.mln_create_disk(host=host, ctx=ctx)
    make.individualizes = False
    return make


def _reachable(ctx, host, disk):
    """The shared disk the server a host leaves names, if this server counts it as shared
    by its own rules (``san_path``; for ``nfs``/``iscsi``, the storage the host names)."""
    from .sanpath import is_on_san
    extra = {k: v for k, v in (disk.extra or {}).items() if k != "shared"}
    tree, path = host.tree, str(disk.path)
    if disk.kind in ("nfs", "iscsi"):
        ok = tree is not None and tree.has(disk.kind) and path == extra.get("url") and \
            path.startswith(f"{disk.kind}://") and \
            (disk.kind == "iscsi" or os.path.basename(path).startswith(f"{host.fqname}.") or
             os.path.basename(path).startswith(f"{host.fqname}+"))
    else:
        ok = os.path.isabs(path) and is_on_san({"kind": disk.kind, "path": path, "extra": extra},
                                               config=ctx.config)
    if not ok:
        raise MlnError(f"its disk {path} is not on storage this server shares (san_path, nfs, iscsi)")
    disk.extra = dict(extra, shared=True)
    return disk


def note_moves(plan, moves: dict) -> None:
    """Hosts arriving from another server get the disk they had there (and start if they
    ran there); hosts leaving say where to."""
    for hp in plan.hosts:
        move = moves.get(hp.name)
        if move is None:
            continue
        if hp.action == "added" and "from" in move and move.get("live"):
            hp.disk, hp.start = "arriving", False        # it runs here once its guest arrived
            hp.reasons = [f"moved from server {move['from']}, {move['live']}"]
        elif hp.action == "added" and "from" in move and move.get("shared"):
            hp.disk, hp.start = "arriving", bool(move.get("run"))
            hp.reasons = [f"moved from server {move['from']}, cold: it keeps its disk on shared storage" +
                          (" and it is started here" if hp.start else "")]
        elif hp.action == "added" and "from" in move:
            hp.disk, hp.start = "moved", bool(move.get("run"))
            hp.reasons = [f"moved from server {move['from']}, cold: its disk is copied" +
                          (" and it is started here" if hp.start else "")]
        elif hp.action == "removed" and "to" in move:
            hp.reasons = [f"moves to server {move['to']}" + (" while it runs" if move.get("live") else "") +
                          ": removed here once every server finished" +
                          (" (its disk stays on shared storage)" if move.get("shared") else "")]


class Mover:
    """The manager's side of the cold moves of one upgrade: ``moved`` is ``{host: (the
    server it leaves, the server it goes to)}``."""

    def __init__(self, engine, fleet, name: str, was: dict[str, str], now: dict[str, str], project=None,
                 only_moving=frozenset()):
        """``was``: where the stored project has each host; ``now``: where the file puts it;
        ``only_moving``: the hosts of which nothing else changes (those may move live).
        Every server is asked what it has (which also lets each finish or undo an upgrade
        that was interrupted there): a host is moved from where it is."""
        self.e, self.fleet, self.name = engine, fleet, name
        self.me, self.at_once = fleet.me, at_once(engine.ctx.config)
        self.sent: dict[str, dict] = {}
        self.stopped: list[str] = []
        self.switched: list[str] = []            # live hosts whose guests run on their new servers
        self.switching = False                   # live moves began (spread.moves is written)
        self.span = (0.0, 0.0)                   # when the first live move began, the last ended
        rows = {s: r for s, r in fleet.each({s: {"verb": "status", "project": name, "disks": True}
                                             for s in fleet.servers},
                                            lambda: {"rows": engine.status(name),
                                                     "disks": shared_disks(engine, name)}).items()}
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
        there, what is left of it on the old server ends (``left``). {host: (its pause in
        ms so far, the time its send ended, None if it runs already)}; an error puts the upgrade back
        everywhere (:meth:`bring_back`, then the settle: the guests run on where they were).
        Which hosts move is written down first (``spread.moves``), for a rerun after a kill."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
        e, name, out = self.e, self.name, {}
        write_file(os.path.join(e.store.project_dir(name), MOVES), json.dumps(
            {"hosts": {h: list(m) for h, m in self._may_switch().items()}, "addresses": addresses}) + "\n",
            sync=True)
        self.switching = True
        self.ready(wait=True)
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
            out[h] = (pause, None if h in self.switched else time.monotonic())
            if h in self.switched and src == self.me:
                self._left(src, h)
            elif h in self.switched:            # (meanwhile the next move begins)
                leaving.append(ends.submit(self._left, src, h))
            e.ctx.on().step(f"move {h}: sent")        # paused on both servers until the word, or runs there
            self.fleet.say(dst, f"+---> {h}: its {'memory' if h in self.shared else 'disk and memory'} arrived "
                                f"from {src} in {time.monotonic() - start:.1f} s" +
                                (" (it runs here)" if h in self.switched else ""))
        mine = sorted(h for h in self.live if self.me in self.moved[h])     # this server's: one engine
        leaving: list = []
        with ThreadPoolExecutor(max_workers=self.at_once) as pool, ThreadPoolExecutor(self.at_once) as ends:
            for h in mine:
                one(h)
            futures = [pool.submit(one, h) for h in sorted(set(self.live) - set(mine))]
            try:            # the first move that fails: those not begun yet do not begin
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    if f.done() and f.exception() is not None:
                        raise f.exception()
            finally:
                for f in futures:
                    f.cancel()
                self.span = (self.span[0], time.monotonic())
            wait(leaving)
        return out

    def _left(self, src: str, h: str) -> None:
        """The guest of ``h`` runs on its new server: what is left of it on ``src`` ends
        (else the settle ends it)."""
        try:
            self._on(src, {"verb": "left", "project": self.name, "host": h}, lambda: left(self.e, self.name, h))
        except MlnError as e:
            self.fleet.say(src, f"warning: {h}: what is left of it here ends with the upgrade: {e}")

    def ready(self, wait: bool = False) -> None:
        """Have the servers of the live moves ready for as many requests at once as moves
        go on (their ``mln serve`` started in the background, while the plans are made;
        ``wait``: until they are, before the first move begins)."""
        ends = [s for h in self.live for s in self.moved[h] if s != self.me]
        self.fleet.prepare({s: min(self.at_once, ends.count(s)) for s in ends}, wait=wait)

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
