"""Is a host's disk on shared storage? The original's ``isOnSan`` (spec 6.6), for migration.

mln.conf lists shared storage with ``san_path`` lines (repeatable): each is an LVM volume
group name (``sanvg`` or ``/dev/sanvg``) or an absolute directory (``/mln/nfssan``). A
built host's disk is on shared storage when

* its storage plugin says so: the disk's ``extra["shared"]`` is true. The ``nfs`` and
  ``iscsi`` plugins mark every disk they make (an NFS export or a SAN LUN is reached over
  the network from any server);
* it is an LVM volume (kind ``lvm``) of a volume group listed in ``san_path``;
* it is a file (kind ``file``, a ``filepath`` disk) whose path is under a ``san_path``
  directory, or starts with a ``san_path`` entry (the original compared prefixes; here a
  directory entry matches whole path components only, so ``/san`` does not cover
  ``/san2/x``).

A disk in the project's own ``images/`` directory is on shared storage only if that
directory is under a ``san_path`` directory. The swap disk (always in the project
directory) is not considered: it is made afresh where the host runs.
"""
from __future__ import annotations

import os
from typing import Iterable

from .model import Disk


def san_paths(config) -> list[str]:
    """The ``san_path`` entries of mln.conf (``config``: a :class:`mln_core.config.Config`)."""
    return [p.strip() for p in config.getlist("san_path") if p.strip()]


def _vg(entry: str) -> str:
    e = entry.strip()
    if e.startswith("/dev/"):
        e = e[len("/dev/"):]
    return e.strip("/")


def _is_dir_entry(entry: str) -> bool:
    """An absolute path names a directory; a plain name or /dev/NAME a volume group."""
    return entry.startswith("/") and not entry.startswith("/dev/")


def _under(path: str, directory: str) -> bool:
    path = os.path.normpath(path)
    directory = os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def is_on_san(disk: Disk | dict, entries: Iterable[str] | None = None, *, config=None,
              project_dir: str | None = None) -> bool:
    """True if ``disk`` (a :class:`Disk` or the dict a project's state records) is on shared
    storage, by ``entries`` (the ``san_path`` values; default: those of ``config``).
    ``project_dir`` makes a path relative to the project directory absolute."""
    if entries is None:
        entries = san_paths(config) if config is not None else []
    entries = list(entries)
    d = disk if isinstance(disk, dict) else {"path": disk.path, "kind": disk.kind, "extra": disk.extra}
    extra = d.get("extra") or {}
    if extra.get("shared"):
        return True
    kind = d.get("kind") or "file"
    if kind == "lvm":
        vg = extra.get("vg")
        if not vg:
            parts = (d.get("path") or "").split("/")
            vg = parts[2] if len(parts) > 3 and parts[1] == "dev" else None
        return bool(vg) and any(_vg(e) == vg for e in entries if not _is_dir_entry(e))
    if kind == "file":
        path = d.get("path") or ""
        if not os.path.isabs(path):
            if project_dir is None:
                return False
            path = os.path.join(project_dir, path)
        return any(_under(path, e) for e in entries if _is_dir_entry(e))
    return False


def why_not_on_san(disk: Disk | dict, entries: Iterable[str] | None = None, *, config=None,
                   project_dir: str | None = None) -> str | None:
    """None if :func:`is_on_san`; else one sentence saying which ``san_path`` would make it shared."""
    if is_on_san(disk, entries, config=config, project_dir=project_dir):
        return None
    d = disk if isinstance(disk, dict) else {"path": disk.path, "kind": disk.kind, "extra": disk.extra}
    kind = d.get("kind") or "file"
    extra = d.get("extra") or {}
    if kind == "lvm":
        return f"its volume group {extra.get('vg', '?')} is not listed with san_path in mln.conf"
    if kind == "file":
        return (f"its disk {d.get('path')} is not under a directory listed with san_path in mln.conf "
                "(use filepath on shared storage, or nfs/iscsi)")
    return f"its {kind} disk is not on shared storage"
