"""Switches that span servers: a VXLAN device joins this server's part of a switch to the
same switch on the other servers (``ctx.span(switch)``: VNI, this server's underlay
address, the others', the MTU).

Not a plugin (it has no hooks): the ``bridge`` and ``vde`` switch plugins both use it.
A bridge switch puts the VXLAN device on its bridge; a vde switch gets a tap (``vde_switch
-t``) on a small bridge of its own with the VXLAN device. Frames to every other server are
sent to each (head-end replication: one all-zero forwarding entry per remote), so no
multicast is needed in the underlay. Names are hashed from the project and switch.

The VXLAN traffic (UDP port 4789) is neither encrypted nor authenticated: anyone who can
send to that port on a server can put frames on its spanning switches. Keep the underlay
(the servers' own network) closed to others, or filter the port to the servers' addresses.
"""
from __future__ import annotations

import json

from mln_core.errors import MlnError

from .runtime import digest

PORT = 4789


def names(switch) -> dict[str, str]:
    """The devices of ``switch``'s span: the VXLAN device, and for vde its tap and bridge."""
    d = digest("span", switch.project, switch.name, n=10)
    return {"vxlan": f"vx-{d}", "tap": f"vt-{d}", "bridge": f"vb-{d}"}


def _users(machine, vni: int) -> list[str]:
    """VXLAN devices of this server that use ``vni``."""
    r = machine.run(["ip", "-d", "-j", "link", "show", "type", "vxlan"], check=False, text=True)
    try:
        links = json.loads(r.stdout or "[]")
    except ValueError:
        return []
    return [x["ifname"] for x in links
            if (x.get("linkinfo", {}).get("info_data", {}) or {}).get("id") == vni]


def join(machine, switch, span: dict, bridge: str) -> None:
    """Put the VXLAN device of ``span`` on ``bridge`` (made and brought up here)."""
    vx = names(switch)["vxlan"]
    what = f"switch {switch.name}"
    others = [x for x in _users(machine, span["vni"]) if x != vx]
    if others:
        raise MlnError(f"VXLAN network {span['vni']} is already used on this server by {', '.join(others)} "
                       "(another project's switch?)", what)
    if machine.net_device_exists(vx):           # what an interrupted start left: made again, whole
        machine.run(["ip", "link", "del", vx], what=what, check=False)
    machine.run(["ip", "link", "add", vx, "mtu", str(span["mtu"]), "type", "vxlan", "id", str(span["vni"]),
                 "local", span["local"], "dstport", str(PORT)], what=what)
    try:
        for remote in span["remotes"]:
            machine.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", remote], what=what)
        machine.run(["ip", "link", "set", vx, "master", bridge], what=what)
        machine.run(["ip", "link", "set", vx, "up"], what=what)
    except MlnError:
        machine.run(["ip", "link", "del", vx], what=what, check=False)
        raise


def leave(machine, switch) -> None:
    """Delete the span's devices (those that exist)."""
    for dev in names(switch).values():
        if machine.net_device_exists(dev):
            machine.run(["ip", "link", "del", dev], what=f"switch {switch.name}", check=False)


def same_network(old: dict | None, new: dict | None) -> bool:
    """Do two spans differ only in the other servers (one VXLAN device serves both)?"""
    return bool(old and new) and all(old.get(k) == new.get(k) for k in ("vni", "local", "mtu"))


def respan(machine, switch, old: dict | None, new: dict | None, bridge: str) -> None:
    """Change the span of a running switch from ``old`` to ``new`` (either may be None: not
    spanning) without touching its guests' taps: the forwarding entries of the other
    servers change, or the VXLAN device comes or goes on ``bridge``."""
    vx, what = names(switch)["vxlan"], f"switch {switch.name}"
    if same_network(old, new) and machine.net_device_exists(vx):
        for remote in [r for r in new["remotes"] if r not in old["remotes"]]:
            machine.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", remote], what=what)
        for remote in [r for r in old["remotes"] if r not in new["remotes"]]:
            machine.run(["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", vx, "dst", remote], what=what,
                        check=False)
        return
    if machine.net_device_exists(vx):
        machine.run(["ip", "link", "del", vx], what=what, check=False)
    if new:
        join(machine, switch, new, bridge)
