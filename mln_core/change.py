"""What differs between a host as it was built (and may run) and as a new project file
wants it: the :class:`Change` values that ``mln upgrade`` plans with and that backends
are asked about (``mln_plan_live``, ``mln_apply_live``).

Kinds, in the order a plan lists them:

=====================  ===================================================================
``service_host``       the host's server changes (mln_core.remote_upgrade moves it between servers)
``hypervisor``         another hypervisor: rebuilt, restarted
``template``           another template: the disk is made afresh from it
``disk_grown``         a larger ``size``/``free_space``: the disk is grown
``disk_shrunk``        a smaller one: refused (mln never shrinks a disk)
``memory``             ``memory`` changed: live through a balloon if the backend can, else
                       a restart
``interface_added``    a new ``network ethN``: hot-plugged if the backend can
``interface_removed``  a ``network ethN`` removed: a restart
``interface_moved``    only the switch of an interface changed: its host side rewired live
                       if the backend can
``interface_changed``  anything else of an interface (address, netmask, mac...)
``configuration``      any other setting the guest or backend reads (users, files,
                       startup, a plugin's block...): the disk is individualized again
``switch_changed``     a switch the host is on was changed (its type, say): a restart
=====================  ===================================================================

``old`` and ``new`` are the values as text (memory in MiB, the switch names), ``interface``
the interface's name (``eth1``) for the interface kinds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

KINDS = ("service_host", "hypervisor", "template", "disk_grown", "disk_shrunk", "memory",
         "interface_added", "interface_removed", "interface_moved", "interface_changed",
         "configuration", "switch_changed")

# Kinds a backend may apply to a running guest (it is asked through mln_plan_live).
LIVE_KINDS = ("memory", "interface_added", "interface_moved")
# Kinds that need the disk individualized again (on a fresh copy of it).
DISK_KINDS = ("template", "disk_grown", "configuration", "interface_added", "interface_removed",
              "interface_changed", "hypervisor")


@dataclass
class Change:
    """One difference of a host between the stored project and the new file."""

    kind: str
    reason: str                     # readable: "memory 256M -> 192M"
    interface: str | None = None    # ethN, for the interface kinds
    old: str | None = None
    new: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
