"""Interface kinds besides a switch: ``slirp`` and ``tun_iface``.

* ``slirp`` in a network block: user-mode networking, a NAT that lives in the hypervisor's
  own process (QEMU's ``-netdev user``; for UML the vde transport plugged into
  ``slirp://`` of libvdeplug-slirp). The network is always 10.0.2.0/24: the gateway is
  10.0.2.2 (also the managing host), the DNS forwarder 10.0.2.3, and each guest has a
  private one, so two guests may both be 10.0.2.15. An interface without ``address``
  gets :data:`SLIRP_DEFAULTS` in the guest (static, so that it works without a DHCP
  client; ``address dhcp`` asks slirp's DHCP server instead).
* ``tun_iface NAME`` / ``tun_address IP``: the original's tap on the managing host with an
  address, routed to the guest (UML and QEMU: ``mln_backends.tun``). :func:`check` holds
  the names to what Linux accepts and to one interface each, and ``tun_address`` to an
  IPv4 address that is not the guest's.

A backend says which kinds its guests can have with ``registry.hypervisor(...,
nic_kinds=("slirp",))``; :func:`check` makes ``check`` name (with the position) every
interface whose hypervisor cannot provide its kind, so that none is dropped silently.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re

#: a network device name Linux accepts (IFNAMSIZ: 15 characters)
DEVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")

SLIRP_DEFAULTS = {"address": "10.0.2.15", "netmask": "255.255.255.0", "gateway": "10.0.2.2"}
SLIRP_DNS = "10.0.2.3"
SLIRP_GATEWAY = "10.0.2.2"


def slirp(iface) -> str | None:
    """The value of the interface's ``slirp`` ("1" for the bare flag), or None."""
    return iface.tree.get("slirp") if iface.tree is not None else None


def kind(iface) -> str:
    """"slirp", "tun" or "switch" (a switch, a bridge, or nothing)."""
    if slirp(iface) is not None:
        return "slirp"
    if iface.tree is not None and iface.tree.get("tun_iface") is not None:
        return "tun"
    return "switch"


def effective(iface):
    """The interface as the guest is configured: a slirp interface without an address gets
    :data:`SLIRP_DEFAULTS` (the others are returned as they are)."""
    if kind(iface) != "slirp" or iface.address:
        return iface
    return dataclasses.replace(iface, **{k: getattr(iface, k) or v for k, v in SLIRP_DEFAULTS.items()})


def check(project, registry, problems) -> None:
    """Errors for interfaces whose kind the host's hypervisor cannot provide, or that mix kinds."""
    able = {hv.name: hv.nic_kinds for hv in registry.hypervisors.values()}
    taps: dict[str, str] = {}
    for h in project.hosts.values():
        for i in h.interfaces:
            if i.tree is None:
                continue
            k = kind(i)
            where = f"host {h.name} {i.name}"
            if k == "switch":
                line = i.tree.line("tun_address")
                if line is not None:
                    problems.error(f"{where}: tun_address needs tun_iface", line.pos)
                continue
            line = i.tree.line("slirp" if k == "slirp" else "tun_iface")
            others = [w for w in ("switch", "bridge") + (("tun_iface",) if k == "slirp" else ())
                      if i.tree.get(w) is not None]
            if others:
                problems.error(f"{where}: {line.words[0]} and {others[0]} exclude each other (an interface "
                               "is on one network)", line.pos)
            if k not in able.get(h.hypervisor, ()):
                can = sorted(n for n, kinds in able.items() if k in kinds)
                what = ("a slirp interface" if k == "slirp" else
                        "a tun_iface interface (a tap on the managing host)")
                alt = (f"hypervisors that can: {', '.join(can)}" if can else
                       "no backend provides it yet: put it on a switch ('type bridge' gives the guest a tap "
                       "on a Linux bridge of the managing host)")
                problems.error(f"{where}: {h.hypervisor} hosts cannot have {what}; {alt}", line.pos)
            if k == "tun":
                _check_tun(i, where, line, taps, problems)


def _check_tun(i, where: str, line, taps: dict, problems) -> None:
    name = line.value
    if not DEVICE_NAME.fullmatch(name or ""):
        problems.error(f"{where}: tun_iface '{name}' is not a network device name (up to 15 letters, "
                       "digits, '_', '.' or '-')", line.pos)
    elif name in taps:
        problems.error(f"{where}: tun_iface {name} is also {taps[name]}'s (a tap serves one interface)",
                       line.pos)
    else:
        taps[name] = where[5:]
    addr = i.tree.line("tun_address")
    if addr is None:
        return
    try:
        ipaddress.IPv4Address(addr.value)
    except ValueError:
        problems.error(f"{where}: tun_address '{addr.value}' is not an IPv4 address", addr.pos)
        return
    if addr.value == i.address:
        problems.error(f"{where}: tun_address {addr.value} is the guest's own address; give the tap "
                       "(the managing host's end) another one", addr.pos)
