"""Moves of hosts between servers (``mln upgrade`` of a host whose ``service_host``
changed), the servers' side (the manager's: :mod:`mln_core.mover`). Cold: the disk of the
stopped host is packed on the server it leaves (what its
storage plugin's ``mln_export_disk`` writes, in one compressed archive with its SHA-256),
fetched by the manager through that server's transport, sent on to the server it goes to,
checked there and made the host's disk by ``mln_import_disk``. The host is removed from
the server it left only after every server finished the upgrade
(:mod:`mln_core.remote_upgrade`).
"""
from __future__ import annotations

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
        try:
            with _lock(engine, name):
                engine._detach_disk(h)
        except Exception as e:      # (the error that counts is the start's)
            ctx.log(f"warning: {host}: its disk stays attached here: {e}")
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
