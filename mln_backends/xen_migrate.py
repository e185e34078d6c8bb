"""Live migration of Xen guests between servers (``mln upgrade`` moving a running host) with
``xl migrate``; a helper module of the ``xen`` backend, not a plugin.

As the original (spec 6.6): a Xen host moves live only when its disk is on shared storage
(the ``san_path`` rule of :mod:`mln_core.sanpath`, the original's ``isOnSan``), so that both
servers reach the very same disk and only the memory travels. The original ran ``xm migrate
--live <host>.<project> <receiver>`` on the old server; with the xl toolstack that is ``xl
migrate <host>.<project> <receiver>`` (xl migrates live, there is no ``--live``): xl connects
over ssh as root to ``xl migrate-receive`` on the receiver, copies the memory while the
guest runs, pauses it for the last pages, starts it there and destroys it here. xl sends the
domain configuration the guest was created with (so no ``-C``: on shared storage its disk
lines name the same disks on both servers).

* :func:`can` (manager): how the host moves, or None (cold) when the core says its disk is
  not shared (``shared`` of ``mln_live_migration``: the old server's ``san_path`` rule on
  the disk it recorded); raises MlnError for a host whose root disk is shared but which
  still cannot move live (its swap, or a data disk, is not shared), naming the precondition;
* :func:`incoming` (new server): its configuration is there, its domain is not running,
  its disk is the shared one the guest runs on (``extra["shared"]``, which the core sets
  when it takes the old server's disk as it is) and this server's ``san_path`` lists that
  storage too, and Xen has the memory free (``xl info``); answers where to send it (the
  underlay address), this server's CPU vendor and the disk's path;
* :func:`send` (old server): same CPU vendor, the same disk, the domain runs here; then
  ``xl migrate``. If xl fails, the guest runs on here (xl resumes it), which ``xl list``
  confirms;
* :func:`arrived` (new server): the domain is there and runs (a paused one is unpaused), and
  a saved state left in the host's directory here is deleted (``mln start`` would restore it).

xl prints no downtime figure: :func:`send` returns ``downtime_ms`` 0 and ``total_ms``, the
time ``xl migrate`` took; the pause printed by ``mln upgrade`` is then the time from the end
of ``xl migrate`` until the upgrade finished (an upper bound: the guest runs on the new
server as soon as xl is done).

Preconditions of the original that mln does not check: xl's ssh login as root from the old
server to the new one without a password (xl's error says so when it fails), and that the
servers' CPUs are compatible beyond their vendor (Xen refuses an incompatible CPU itself,
and the guest runs on here).
"""
from __future__ import annotations

import os
import re
import time

from mln_core.errors import MlnError
from mln_core.sanpath import is_on_san, san_paths, why_not_on_san

from .xen_config import disk_mounts

XL = "xl"
TIMEOUT = 3600            # seconds for xl migrate (the memory is copied while the guest runs)
#: an address or name to hand to xl migrate (never an option)
_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}\Z")


def recorded_disk(host, ctx) -> dict | None:
    """The root disk the build recorded for ``host`` on this server (absolute path), or None."""
    entry = (ctx.state.get("hosts") or {}).get(host.name) or {}
    disk = dict(entry.get("disk") or {})
    if not disk.get("path"):
        return None
    if disk.get("kind", "file") in ("file", "lvm") and not os.path.isabs(disk["path"]) and ctx.project_dir:
        disk["path"] = os.path.join(ctx.project_dir, disk["path"])
    return disk


def _project_dir(host, ctx) -> str:
    if ctx.project_dir and os.path.basename(os.path.normpath(ctx.project_dir)) == host.project:
        return ctx.project_dir
    return os.path.join(ctx.config.projects_dir, host.project)


def can(host, shared: bool, ctx) -> str | None:
    """How the running Xen ``host`` moves live, or None (cold): live when its root disk is
    on shared storage (``shared``: the server it leaves says so by ``san_path``). A host
    whose root disk is shared but whose swap or a data disk is not cannot move live:
    MlnError naming what (stop it to move it cold)."""
    if not shared:
        return None
    pdir = _project_dir(host, ctx)
    entries = san_paths(ctx.config)
    failed = []
    if host.swap:
        swap = os.path.join(pdir, "images", f"swap_{host.name}")
        if not is_on_san({"path": swap, "kind": "file"}, entries):
            failed.append(f"its swap disk {swap} is made afresh on each server (not on shared storage), "
                          "and the running guest uses it")
    for m in disk_mounts(host):
        kind = "lvm" if m.source.startswith("/dev/") else "file"
        if not is_on_san({"path": m.source, "kind": kind}, entries):
            failed.append(f"its disk {m.source} (mount {m.mountpoint}) is not on shared storage "
                          f"({why_not_on_san({'path': m.source, 'kind': kind}, entries)})")
    if failed:
        raise MlnError(f"cannot move live while it runs: {'; '.join(failed)}; stop it to move it cold, "
                       "or put that disk on storage listed with san_path", f"host {host.name}")
    return "live: xl migrate (its disk is on shared storage)"


def cpu_vendor(m) -> str:
    """The CPU vendor of machine ``m`` (a guest keeps the CPU features it started with)."""
    model = m.cpu()[0]
    low = model.lower()
    for vendor in ("intel", "amd"):
        if vendor in low:
            return vendor
    return model or "unknown"


def free_memory_mb(host, ctx) -> int | None:
    """Xen's free memory in MB (``xl info``: ``free_memory``), None if xl does not say."""
    p = ctx.on(host).run([XL, "info"], what="xl info", check=False, timeout=60)
    if p.returncode != 0:
        return None
    m = re.search(r"^free_memory\s*:\s*(\d+)", p.stdout.decode(errors="replace"), re.M)
    return int(m.group(1)) if m else None


def incoming(host, disk, address: str, ctx, cfg: str, state) -> dict:
    """On the new server, after its part of the upgrade wrote ``cfg`` (not started): is it
    ready for the guest? ``state``: the backend's ``domain_state``."""
    where = f"host {host.name}"
    if not address or not _TARGET.match(str(address)):
        raise MlnError(f"not an address to send the guest to: {address!r}", where)
    if not os.path.isfile(ctx.path(cfg)):
        raise MlnError(f"cannot receive the running guest: its Xen configuration {ctx.path(cfg)} was not "
                       "written here", where)
    if state(host, ctx) is not None:
        raise MlnError(f"cannot receive the running guest: domain {host.fqname} already runs on this server",
                       where)
    extra = dict((disk.extra if disk is not None else None) or {})
    if not extra.get("shared"):
        raise MlnError("cannot receive the running guest: its disk here is not the shared disk it runs on "
                       f"({disk.path if disk is not None else 'none'} was made from its template)", where)
    kind = disk.kind or "file"
    if kind in ("file", "lvm"):                 # does this server list that storage too? (spec 6.6)
        extra.pop("shared")
        why = why_not_on_san({"path": disk.path, "kind": kind, "extra": extra}, config=ctx.config,
                             project_dir=ctx.project_dir)
        if why:
            raise MlnError("cannot receive the running guest: this server does not count its disk as shared "
                           f"storage (both servers must list it with san_path): {why}", where)
    need = max(16, host.memory // 2**20)
    free = free_memory_mb(host, ctx)
    if free is not None and free < need:
        raise MlnError(f"cannot receive the running guest: Xen has {free} MB free here, the guest needs "
                       f"{need} MB", where)
    return {"xen": str(address), "cpu": cpu_vendor(ctx.on(host)), "disk": disk.path}


def send(host, to: dict, ctx, state) -> dict:
    """On the old server: ``xl migrate <host>.<project> <to["xen"]>``. The guest runs on
    here if anything fails."""
    where = f"host {host.name}"
    target = to.get("xen") if isinstance(to, dict) else None
    if not target or not _TARGET.match(str(target)):
        raise MlnError(f"not a place to send a Xen guest to: {to!r}", where)
    m = ctx.on(host)
    if state(host, ctx) is None:
        raise MlnError(f"live migration refused: domain {host.fqname} does not run here", where)
    here, there = cpu_vendor(m), to.get("cpu")
    if there and there != here:
        raise MlnError(f"live migration refused: the servers' CPUs differ ({here} here, {there} there); a "
                       "running guest moves only between CPUs of one family: stop it to move it cold", where)
    mine = (recorded_disk(host, ctx) or {}).get("path")
    if to.get("disk") and mine and os.path.normpath(str(to["disk"])) != os.path.normpath(mine):
        raise MlnError(f"live migration refused: the other server has its disk as {to['disk']}, this one as "
                       f"{mine}: not the same shared disk", where)
    argv = [XL, "migrate", host.fqname, str(target)]
    start = time.monotonic()
    p = m.run(argv, what=f"migrate Xen guest {host.fqname} to {target}", check=False, timeout=TIMEOUT)
    total = int((time.monotonic() - start) * 1000)
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout or b"").decode(errors="replace").splitlines()
                 if ln.strip()]
        said = " / ".join(lines[-6:]) or f"xl exited with {p.returncode}"      # xl's last words
        if state(host, ctx) is None:
            raise MlnError(f"live migration failed, and domain {host.fqname} no longer runs here (xl list does "
                           f"not show it): {said}", where)
        raise MlnError(f"live migration failed, the guest runs on here: {said}", where)
    return {"downtime_ms": 0, "total_ms": total}


def arrived(host, ctx, state, ram: str) -> None:
    """On the new server once ``xl migrate`` succeeded: the domain is here and runs."""
    where = f"host {host.name}"
    st = state(host, ctx)
    if st is None:
        raise MlnError(f"its guest has not arrived (xl list does not show {host.fqname})", where)
    if "p" in st:
        ctx.on(host).run([XL, "unpause", host.fqname], what=f"unpause Xen guest {host.fqname}", timeout=60)
    if os.path.exists(ram):          # from an earlier life here: 'mln start' would restore it
        os.unlink(ram)
        ctx.log(f"+---> {host.name}: deleted its old saved state {ram} (the guest arrived running)")
