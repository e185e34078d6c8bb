"""Who owns a disk file outside the projects directory (a ``filepath`` disk, a VMDK).

A build that puts a file outside its project directory (:class:`mln_core.store.OutsideFiles`)
writes a small mark beside it, ``<dir>/.mln-owner.<file>``, naming the project directory
and the host whose disk it is. Before a build writes such a file, and when ``mln check``
reads a project, a file already there is refused unless it is the project's own:

* its mark names this project directory and this host, or
* it has no mark and the project's recorded state names it (a project built before marks
  existed), or nothing is there.

So two projects directories (two users, two configurations) with a project of the same
name and one ``filepath`` cannot overwrite each other's disks, and a file that belongs to
no project is never taken over.
"""
from __future__ import annotations

import os

MARK = ".mln-owner."


def mark_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), MARK + os.path.basename(path))


def owner(path: str) -> tuple[str, str] | None:
    """(project directory, host) the mark beside ``path`` names; None without a mark."""
    try:
        with open(mark_path(path)) as f:
            pdir, _, host = f.read(8192).strip().partition("\t")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    return (pdir, host) if pdir else None


def claim(path: str, project_dir: str, host: str | None) -> None:
    """Mark ``path`` as the disk of ``host`` of the project in ``project_dir``."""
    mark = mark_path(path)
    tmp = mark + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.path.abspath(project_dir)}\t{host or ''}\n")
    os.replace(tmp, mark)


def release(path: str, project_dir: str) -> None:
    """Delete the mark of ``path`` once the file is gone, if it names ``project_dir`` (or
    the same project on another server, which moved the disk here on shared storage)."""
    o = owner(path)
    if o is not None and os.path.basename(o[0]) == os.path.basename(os.path.abspath(project_dir)) and \
            not os.path.lexists(path):
        try:
            os.unlink(mark_path(path))
        except FileNotFoundError:
            pass


def problem(path: str, project_dir: str, host: str | None, mine=frozenset(), shared: bool = False) -> str | None:
    """Why ``path`` cannot become the disk of ``host`` of the project in ``project_dir``
    (None: it can). ``mine``: the absolute paths the project's recorded state names;
    ``shared``: the file is on shared storage (``san_path``), where the same host of the
    same project on another server (which moves it here) owns it too."""
    path = os.path.abspath(path)
    pdir = os.path.abspath(project_dir)
    project = os.path.basename(pdir)
    o = owner(path) if os.path.lexists(path) else None     # a mark without its file: stale
    if o is not None:
        opdir, ohost = o
        if opdir == pdir and (not host or not ohost or ohost == host):
            return None
        if shared and host and ohost == host and os.path.basename(opdir) == project:
            return None
        if opdir == pdir:
            return (f"the disk {path} of host {host} is already the disk of host {ohost} of this "
                    f"project ({pdir}); two hosts cannot share one disk")
        return (f"the disk {path} of host {host} of project {project} ({pdir}) is already the disk "
                f"of host {ohost or '?'} of project {os.path.basename(opdir)} ({opdir}); two projects "
                "cannot share a disk: give one of them another filepath, or remove the other project")
    if os.path.lexists(path) and path not in mine:
        return (f"the disk {path} of host {host} of project {project} ({pdir}) exists already and "
                "belongs to no project of this projects directory (another projects directory's, or "
                "left behind?): move it away or give the host another filepath")
    return None


def recorded_paths(state: dict) -> set[str]:
    """The absolute disk paths a project's state records (disks outside its directory)."""
    out = set()
    for entry in (state.get("hosts") or {}).values():
        path = ((entry or {}).get("disk") or {}).get("path")
        if isinstance(path, str) and os.path.isabs(path):
            out.add(os.path.normpath(path))
    return out
