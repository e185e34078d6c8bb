"""Linux bridges as switches: the naming rule and the switch record, shared by every plugin
that builds a bridge or puts guests on one.

Not a plugin (it has no hooks): the ``bridge`` switch plugin (which starts, stops and
removes bridges) and the ``xen`` backend (whose plain switches become bridges, and whose
guests join bridges) both import it, so neither depends on the other.

* A bridge is named by the switch's ``bridge`` keyword, else ``<switch>.<project>`` when
  that fits in 15 characters, else a shortened name with a hash (see ``runtime.ifname``).
* The record a build keeps for a bridge switch (``state["switches"][name]``) is
  ``{"kind": "bridge", "bridge": NAME}``, plus whatever the plugin that built it adds.
"""
from __future__ import annotations

from .runtime import ifname

KIND = "bridge"


def bridge_name(switch) -> str:
    """The Linux bridge of ``switch``."""
    explicit = switch.tree.get("bridge") if switch.tree is not None else None
    return explicit or ifname(f"{switch.name}.{switch.project}", "bridge", switch.project, switch.name)


def record(switch, **extra) -> dict:
    """The switch record of a bridge switch: ``{"kind": "bridge", "bridge": NAME, **extra}``."""
    return {"kind": KIND, "bridge": bridge_name(switch), **extra}


def bridge_of(record: dict | None) -> str | None:
    """The bridge a switch record names; None for a record of another kind (or none)."""
    if not record or record.get("kind") != KIND:
        return None
    return record.get("bridge") or None
