"""Live migration of QEMU guests between servers (``mln upgrade`` moving a running host);
a helper module of the ``qemu`` backend, not a plugin.

Without shared storage, as libvirt does it:

* the target starts the guest's QEMU paused, waiting for it (``-incoming defer`` and
  ``-S``), on a fresh qcow2 overlay over the same template (the servers' templates are the
  same, checked by SHA-256), exports that disk over NBD on its underlay address and
  listens for the migration there (:func:`incoming`);
* the source mirrors its disk's top layer into that export (``drive-mirror``, ``sync:
  top``) while the guest runs; once the mirror is in step it migrates the memory, and when
  the migration completed (the guest is paused here) it finishes the mirror
  (``block-job-cancel`` of a ready mirror: the last writes reach the target) (:func:`send`);
* the target drops the export and lets the guest run (:func:`arrived`).

On shared storage (an ``nfs`` or ``iscsi`` disk, or one that ``san_path`` in mln.conf
names: :mod:`mln_core.sanpath`) both servers open the same disk: the target's QEMU waits
with it inactive, the source migrates the memory alone (it flushes the disk before the
target takes it over), and nothing is exported or mirrored. The target runs the guest as
soon as its memory arrived (its QEMU is started without ``-S``: a ``cont`` while it waits
would take the disk over at once, while the source still writes it), so the guest pauses
only for QEMU's own switch-over; putting such a move back is a migration the other way
(:mod:`mln_core.move`).

If anything fails before the migration completed, the source cancels what it started and
the guest keeps running there.
"""
from __future__ import annotations

import time

from mln_core.errors import MlnError

from . import qemu_qmp

TIMEOUT = 600.0            # seconds for the disk mirror and the migration together
EXPORT = "mln-migration"
PORT_TRIES = 3             # ports chosen for the disk and the migration, at most, on the target
ARRIVAL = 30               # seconds the target may take to read the end of what the source sent
DOWNTIME_MS = 20           # mln.conf migrate_downtime_ms: the pause QEMU aims at
BANDWIDTH_MB = 8192        # mln.conf migrate_bandwidth_mb: MiB/s at most (QEMU's own default: 128)


def tuning(config) -> dict:
    """QEMU's migration parameters from mln.conf (``migrate_downtime_ms``,
    ``migrate_bandwidth_mb``): a clear error for a value that is not a positive number."""
    out = {}
    for key, param, default, scale in (("migrate_downtime_ms", "downtime-limit", DOWNTIME_MS, 1),
                                       ("migrate_bandwidth_mb", "max-bandwidth", BANDWIDTH_MB, 2**20)):
        value = str(config.get(key) or default).strip()
        if not value.isdigit() or not 0 < int(value) <= 2**20:
            raise MlnError(f"mln.conf {key} {value}: give a whole number from 1 to {2**20}")
        out[param] = int(value) * scale
    return out


def can(host, shared: bool, ctx) -> str | None:
    """How the running host moves live, or None (a cold move): a host whose only disk is on
    shared storage, or is the qcow2 overlay of the ``file`` storage (no swap, no extra
    disks)."""
    tree = host.tree
    if host.swap or any(m.fstype != "hostfs" for m in host.mounts):
        return None
    if shared:
        return "live: its disk is on shared storage, its memory is sent"
    if tree is not None and any(tree.has(k) for k in ("lvm", "nfs", "iscsi")):
        return None
    return "live: its disk is mirrored to the other server, then its memory"


def incoming(m, qmp_sock: str, address: str, shared: bool = False) -> dict:
    """On the target, QEMU started paused with ``-incoming defer``: export its root disk
    over NBD (unless ``shared``: the source writes the same disk) and listen for the
    migration."""
    import ipaddress
    try:
        address = str(ipaddress.IPv4Address(address))
    except ValueError:
        raise MlnError(f"not an IPv4 address to wait for the guest on: {address!r}") from None
    async def work(c):
        node = next((b["inserted"]["node-name"] for b in await c.execute("query-block")
                     if b.get("device") == "drive0" and b.get("inserted")), None)
        if node is None:
            raise qemu_qmp.QmpFailure("the guest's root disk (drive0) is not in QEMU")
        ram = (await c.execute("query-memory-size-summary"))["base-memory"]     # (send compares)
        if tries < PORT_TRIES:
            await _no_export(c)     # (of the try whose port was taken meanwhile)
        if shared:                  # the disk is taken over only once the guest runs here
            await c.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "late-block-activate", "state": True}]})
            await c.execute("migrate-incoming", {"uri": f"tcp:{address}:{mig}"})
            return ram                # started without -S: it runs as soon as it arrived
        await c.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": address,
                                                                              "port": str(nbd)}}})
        await c.execute("block-export-add", {"type": "nbd", "id": EXPORT, "node-name": node,
                                             "name": "drive0", "writable": True})
        await c.execute("migrate-incoming", {"uri": f"tcp:{address}:{mig}"})
        return ram
    for tries in range(PORT_TRIES, 0, -1):     # (a port free when chosen may be taken before QEMU listens)
        nbd = mig = m.free_port(address)
        while mig == nbd:
            mig = m.free_port(address)
        try:
            ram = qemu_qmp.run(m, qmp_sock, work, timeout=10)
            break
        except Exception as e:
            if tries == 1 or "Address already in use" not in qemu_qmp.describe(e):
                raise MlnError(f"waiting for the guest: {qemu_qmp.describe(e)}") from None
    where = {"migration": f"tcp:{address}:{mig}", "ram": ram}
    return where if shared else dict(where, disk=f"nbd://{address}:{nbd}/drive0")


def send(m, qmp_sock: str, to: dict, name: str, shared: bool = False, params: dict | None = None) -> dict:
    """On the source: mirror the disk (unless ``shared``), migrate (with QEMU's migration
    ``params``, :func:`tuning`, and auto-converge: a guest that writes its memory faster
    than it can be sent is slowed down until it can), finish the mirror. The guest keeps
    running here if anything fails."""
    import asyncio
    import re
    if not (isinstance(to, dict) and re.fullmatch(r"tcp:\d{1,3}(\.\d{1,3}){3}:\d{1,5}", str(to.get("migration")))
            and (to.get("disk") is None or
                 re.fullmatch(r"nbd://\d{1,3}(\.\d{1,3}){3}:\d{1,5}/drive0", str(to.get("disk"))))):
        raise MlnError(f"not a place to send a guest to: {to!r}")
    mirror = not shared                          # else both reach the same disk
    if mirror != (to.get("disk") is not None):
        raise MlnError("the other server waits for the guest as if its disk were " +
                       ("not " if mirror else "") + "on shared storage, and it is" + (" not" if mirror else ""))

    async def until(c, check, what: str, end: float):
        while True:
            done = await check(c)
            if done:
                return done
            if time.monotonic() > end:
                raise qemu_qmp.QmpFailure(f"{what} did not finish in {TIMEOUT:g} s")
            await asyncio.sleep(0.05)

    async def mirror_ready(c):
        jobs = {j["device"]: j for j in await c.execute("query-block-jobs")}
        job = jobs.get("mln-mirror")
        if job is None:
            raise qemu_qmp.QmpFailure("the disk mirror stopped (the other server's disk export went away?)")
        return job.get("ready")

    async def migrated(c):
        info = await c.execute("query-migrate")
        status = info.get("status")
        if status in ("failed", "cancelled"):
            raise qemu_qmp.QmpFailure(f"the migration {status}: {info.get('error-desc', 'no reason given')}")
        return info if status == "completed" else None

    async def work(c):
        start = time.monotonic()
        end = start + TIMEOUT
        ram = (await c.execute("query-memory-size-summary"))["base-memory"]
        if isinstance(to.get("ram"), int) and to["ram"] != ram:
            raise qemu_qmp.QmpFailure(
                f"the other server's QEMU waits for a guest of {to['ram'] // 1024} KiB of RAM, and it has "
                f"{ram // 1024} KiB here (its memory was changed live, or it was started by an older mln, "
                "or one server runs KVM and the other not): restart it (mln stop, mln start) to move it live")
        await _no_export(c)       # (one left from its arrival here: a guest sent back before it ran)
        try:
            if mirror:
                await c.execute("drive-mirror", {"device": "drive0", "job-id": "mln-mirror", "target": to["disk"],
                                                 "format": "raw", "sync": "top", "mode": "existing"})
                await until(c, mirror_ready, "the disk mirror", end)
            m.step(f"migrate: memory of {name}")          # where MLN_FAULTS can break a migration
            await c.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "auto-converge", "state": True}]})
            if params:
                await c.execute("migrate-set-parameters", params)
            await c.execute("migrate", {"uri": to["migration"]})
            info = await until(c, migrated, "the migration", end)
            completed = time.monotonic()          # the guest is paused on both sides from here
        except BaseException:
            for cmd, args in (("migrate_cancel", {}), ("block-job-cancel", {"device": "mln-mirror",
                                                                            "force": True})):
                try:
                    await c.execute(cmd, args)
                except Exception:
                    pass
            try:
                for _ in range(200):            # the cancel may come too late: wait for the end
                    if (await c.execute("query-migrate")).get("status") in (None, "none", "completed", "failed",
                                                                           "cancelled"):
                        break
                    await asyncio.sleep(0.05)
                status = (await c.execute("query-status"))["status"]
                gone.append(shared and status == "postmigrate")     # it runs there now
                if status != "running" and not gone[-1]:
                    try:
                        await c.execute("cont")
                    except Exception as e:
                        held.append(qemu_qmp.describe(e))
            except Exception:
                pass
            raise
        if mirror:
            await c.execute("block-job-cancel", {"device": "mln-mirror"})   # ready: the last writes go over
            await until(c, lambda c: _no_jobs(c), "finishing the disk mirror", end + 60)
        return {"downtime_ms": int(info.get("downtime", 0)), "total_ms": int((time.monotonic() - start) * 1000),
                "tail_ms": int((time.monotonic() - completed) * 1000),    # (the mirror's end)
                "switched": shared,           # shared: it runs there now (started without -S)
                "resumable": not shared}      # else it may run there now (arrived): its disk is complete
    gone: list[bool] = []
    held: list[str] = []
    try:
        return qemu_qmp.run(m, qmp_sock, work, timeout=TIMEOUT + 120)
    except Exception as e:
        where = "it was sent already and runs on the other server" if any(gone) else \
            f"the guest is paused here (it could not run on: {held[0]})" if held else "the guest runs on here"
        raise MlnError(f"live migration failed, {where}: {qemu_qmp.describe(e)}") from None


def settled(m, qmp_sock: str) -> str | None:
    """QEMU's status here once a guest it is receiving arrived (:func:`_arrival`): a move
    whose manager was killed may still be under way, and what runs where is known only
    after it (None: QEMU does not answer)."""
    import os

    async def work(c):
        return (await _arrival(c, answer=3))[0]
    if not os.path.exists(qmp_sock):
        return None
    try:
        return qemu_qmp.run(m, qmp_sock, work, timeout=3)
    except Exception:
        return None


async def _arrival(c, answer: float | None = None) -> tuple[str, dict]:
    """Wait (up to :data:`ARRIVAL` seconds) while a guest is being received here; QEMU's
    status and the incoming migration's (``answer``: seconds QEMU has for each reply)."""
    import asyncio

    async def ask(command: str) -> dict:
        return await asyncio.wait_for(c.execute(command), answer)
    end = time.monotonic() + ARRIVAL
    while True:         # (the migration first: a status read after it is not older than it)
        info = await ask("query-migrate")
        status = (await ask("query-status"))["status"]
        if status != "inmigrate" or info.get("status") != "active" or time.monotonic() > end:
            return status, info
        await asyncio.sleep(0.05)


async def _no_export(c) -> None:
    """End the export of the disk to the server it came from, and its NBD server (none on
    shared storage, or once it ran here)."""
    for cmd, args in (("block-export-del", {"id": EXPORT}), ("nbd-server-stop", {})):
        try:
            await c.execute(cmd, args)
        except Exception:
            pass


async def _no_jobs(c) -> bool:
    return not await c.execute("query-block-jobs")


def arrived(m, qmp_sock: str, shared: bool = False) -> None:
    """On the target, once the source finished: drop the export, let the guest run. (On
    the source, after a move put back: the guest runs on here; not if it was sent on
    ``shared`` storage: then it runs on the other server.)"""
    async def work(c):
        status, info = await _arrival(c)      # (cont would only set autostart): the source sent
        if status == "inmigrate":             # all, the last of it may still be being read
            if info.get("status", "none") in ("none", "setup"):
                raise qemu_qmp.QmpFailure("its guest has not arrived")
            if info.get("status") in ("failed", "cancelled"):
                raise qemu_qmp.QmpFailure(f"its guest did not arrive: {info.get('error-desc', info['status'])}")
            raise qemu_qmp.QmpFailure(f"its guest has not arrived ({ARRIVAL:g} s after it was sent)")
        if status == "postmigrate" and shared:
            raise qemu_qmp.QmpFailure("its guest was sent to the other server and runs there")
        await _no_export(c)
        if (await c.execute("query-status"))["status"] != "running":
            await c.execute("cont")
    try:
        qemu_qmp.run(m, qmp_sock, work, timeout=ARRIVAL + 10)
    except Exception as e:
        raise MlnError(f"the guest does not run here: {qemu_qmp.describe(e)}") from None
