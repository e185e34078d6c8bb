"""The ``capacity`` request of the server API (:mod:`mln_core.serve`), for ``mln
daemon_status``: this server's projects, running guests, memory, CPUs and free disk."""
from __future__ import annotations

import os
import shutil

from .errors import MlnError

MB = 2**20


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo's fields in bytes (MemTotal, MemAvailable, ...)."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                words = rest.split()
                if words and words[0].isdigit():
                    out[key] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def capacity(engine) -> dict:
    """What this server holds and has left (memory and disk in MB)."""
    from .lifecycle import _state
    from .servers import here
    projects = engine.store.list()
    vms, guest_memory, unreadable = 0, 0, []
    for name in projects:
        try:
            with engine.locked(name) as loaded:
                for h in loaded.project.hosts.values():
                    if _state(engine.host_status(h))[0] == "up":
                        vms += 1
                        guest_memory += h.memory
        except MlnError:
            unreadable.append(name)
    mem = meminfo()
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", mem.get("MemFree", 0))
    where = engine.store.root
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    disk = shutil.disk_usage(where)
    return {"server": here(engine.ctx.config), "projects": len(projects), "vms": vms,
            "guest_memory": guest_memory // MB, "memory_total": total // MB,
            "memory_used": (total - available) // MB, "memory_free": available // MB,
            "cpus": len(os.sched_getaffinity(0)), "disk_free": disk.free // MB, "unreadable": unreadable}
