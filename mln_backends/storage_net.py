"""What the network storage plugins ``nfs`` (:mod:`mln_backends.storage_nfs`) and ``iscsi``
(:mod:`mln_backends.storage_iscsi`) share: which hosts may use them, the checks of
``mln check``, the local swap disk, and the state of the project a build replaces.

Only hypervisors that open ``nfs://`` and ``iscsi://`` disks themselves can boot such a
disk: here QEMU (its libnfs and libiscsi drivers, Debian package qemu-block-extra).
"""
from __future__ import annotations

import os

from mln_core.errors import MlnError, Problem
from mln_core.private import protect_disk

#: the hypervisors whose guests can boot a network disk
HYPERVISORS = ("qemu",)
#: the keywords that choose a storage plugin (a host may have one of them)
STORAGE_KEYS = ("lvm", "nfs", "iscsi")


def common_problems(host, key: str) -> list[Problem]:
    """``mln check`` errors of a host with ``key`` (nfs or iscsi): not a QEMU host, or
    another storage keyword too; a warning for keywords that do nothing then."""
    tree = host.tree
    line = tree.line(key)
    out = []
    if host.hypervisor not in HYPERVISORS:
        out.append(Problem("error", f"host {host.name}: {key} disks can only be used by QEMU hosts "
                                    f"(hypervisor qemu), not {host.hypervisor} hosts", line.pos))
    others = [k for k in STORAGE_KEYS if k != key and tree.has(k)]
    if others:
        out.append(Problem("error", f"host {host.name}: {key} and {' and '.join(others)} both choose where "
                                    "the disk is; keep one of them", line.pos))
    for k in ("filepath", "cow_filesystem", "cow"):
        if tree.has(k):
            out.append(Problem("warning", f"host {host.name}: {k} is ignored for {key} hosts",
                               tree.line(k).pos))
    return out


def check_usable(host, key: str) -> None:
    """MlnError (for ``build``) if the host's hypervisor cannot boot a network disk."""
    if host.hypervisor not in HYPERVISORS:
        raise MlnError(f"{key} disks can only be used by QEMU hosts (hypervisor qemu), not "
                       f"{host.hypervisor} hosts")


def old_disks(host, ctx) -> list[dict]:
    """The disks the built project of the same name (the one this build replaces, if any)
    records, from its state in the projects directory."""
    from mln_core.store import Store
    projects = getattr(getattr(ctx, "config", None), "projects_dir", None)
    if not projects:
        return []
    try:
        state = Store.read_state(os.path.join(projects, host.project))
    except MlnError:
        return []
    return [e.get("disk") or {} for e in (state.get("hosts") or {}).values() if isinstance(e, dict)]


def make_swap(host, ctx, machine, extra: dict) -> None:
    """``swap SIZE``: a fresh local swap disk ``images/swap_<host>`` (recorded in ``extra``)."""
    extra.pop("swap", None)
    if not host.swap:
        return
    rel = os.path.join("images", f"swap_{host.name}")
    path = ctx.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(host.swap)
    protect_disk(path)
    machine.run(["mkswap", "-q", path], what=f"mkswap {path}")
    extra["swap"] = rel


def template_of(host, ctx):
    """The host's template, its format and size (MlnError if it cannot be read)."""
    from . import imagefs
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    machine = ctx.on(host)
    try:
        fmt = "qcow2" if imagefs.is_qcow2(template.path) else "raw"
        size = imagefs.image_size(template.path, machine)
        ext = fmt == "qcow2" or imagefs.is_ext_filesystem(template.path)
    except imagefs.ImageError as e:
        raise MlnError(str(e)) from None
    return template, fmt, size, ext


def driver_finding(driver: str, purpose: str) -> dict:
    """``mln doctor``: is QEMU's ``driver`` block driver (nfs, iscsi) installed? Debian builds
    them as modules (``block-<driver>.so``, package qemu-block-extra)."""
    import glob
    found = sorted(glob.glob(f"/usr/lib/*/qemu/block-{driver}.so")
                   + glob.glob(f"/usr/lib*/qemu/block-{driver}.so"))
    name = f"QEMU {driver} driver"
    if found:
        return {"name": name, "ok": True, "detail": f"{found[0]}: {purpose}", "remedy": ""}
    return {"name": name, "ok": False, "detail": f"no block-{driver}.so found ({purpose})",
            "remedy": "apt-get install qemu-block-extra"}
