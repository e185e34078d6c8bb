"""``tun_iface NAME`` / ``tun_address IP``: the original's tap on the managing host, for UML
and QEMU guests (a helper of those backends, not a plugin).

At start the backend asks :func:`up` for the interface's tap: it is made if it does not
exist (``ip tuntap add NAME mode tap``), marked as this host's with the device alias
``mln:<project>/<host>``, given ``tun_address`` (with the interface's ``netmask``, or as
a point-to-point link to the guest's ``address`` without one) and brought up. A device of
that name that is not this host's (another host's, or the machine's own) is never touched:
the start fails naming it. After the guest stopped, and at remove, :func:`down` deletes the
taps marked as the host's.
"""
from __future__ import annotations

import ipaddress

from mln_core.errors import MlnError


def name(iface) -> str | None:
    """The interface's ``tun_iface``, or None."""
    return iface.tree.get("tun_iface") if iface.tree is not None else None


def mark(host) -> str:
    return f"mln:{host.project}/{host.name}"


def _address(iface) -> list[str]:
    """The ``ip addr`` arguments that give the tap its ``tun_address`` ([] without one)."""
    addr = iface.tree.get("tun_address")
    if not addr:
        return []
    if iface.netmask:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{iface.netmask}").prefixlen
        return [f"{addr}/{prefix}"]
    if iface.address and not iface.dhcp:
        return [addr, "peer", f"{iface.address}/32"]
    return [f"{addr}/32"]


def up(m, host, iface) -> str:
    """Make (or reuse) the host's tap for ``iface`` with its address, up; its name."""
    tap, what = name(iface), f"host {host.name} {iface.name}"
    owner = m.net_device_alias(tap)
    if owner is None:
        m.run(["ip", "tuntap", "add", tap, "mode", "tap"], what=what)
        try:
            m.run(["ip", "link", "set", tap, "alias", mark(host)], what=what)
        except MlnError:                 # unmarked, it would never be taken or removed again
            m.run(["ip", "link", "del", tap], what=what, check=False)
            raise
    elif owner != mark(host):
        whose = f"it belongs to {owner[4:]}" if owner.startswith("mln:") else "mln did not make it"
        raise MlnError(f"{iface.name}: tun_iface {tap}: a network device {tap} already exists on this "
                       f"machine and {whose}; choose another name")
    address = _address(iface)
    if address:
        m.run(["ip", "addr", "flush", "dev", tap], what=what)
        m.run(["ip", "addr", "add", *address, "dev", tap], what=what)
    m.run(["ip", "link", "set", tap, "up"], what=what)
    return tap


def down(m, host) -> None:
    """Delete the taps :func:`up` made for ``host`` (one with a ``tun_iface``): every device
    still marked as its own (also one of a ``tun_iface`` since renamed)."""
    if not any(name(i) for i in host.interfaces):
        return
    mine = mark(host)
    for tap in m.net_devices():
        if m.net_device_alias(tap) == mine:
            m.run(["ip", "link", "del", tap], what=f"host {host.name}", check=False)
