"""Plugin ``hostsfile``: ``/etc/hosts`` lists the hosts a guest can reach (spec 5.4 hostsFile).

guestconfig writes every static address of the project into each guest's
``/etc/hosts``. That is wrong for multi-homed hosts: a gateway ``gw`` on switches
``lan`` and ``dmz`` appears twice, and a host on ``dmz`` resolves ``gw`` to whichever
line comes first, perhaps the ``lan`` address it cannot reach directly. With
``hostsfile`` enabled, ``/etc/hosts`` is rewritten (after guestconfig) to list:

* ``127.0.0.1 localhost`` and the guest's own static addresses;
* the hosts reachable through the guest's switches, breadth-first: first the hosts on
  its own switches, with their address on that switch; then, through every multi-homed
  host found so far, the hosts on that host's other switches (with their address
  there), and so on. Each host appears once, with the address on the switch nearest to
  the guest, so a LAN node sees a gateway's LAN address;
* the usual IPv6 lines.

Hosts that no chain of switches leads to, interfaces on no project switch (``slirp``,
``bridge``) and DHCP addresses (unknown at build time) are left out.

Enable it for every host with ``hostsfile`` in ``global``, or per host (or superclass)
with ``hostsfile``; ``hostsfile no`` in a host turns it off there. Only Linux guests
with at least one interface are changed (as with guestconfig). Idempotent: the whole
file is rewritten from the project.
"""
from __future__ import annotations

from collections import deque

from mln_core import hookimpl

NAME = "hostsfile"
LINUX = ("debian", "redhat", "busybox", "suse")
OFF = ("no", "off", "0", "false")


@hookimpl
def mln_register_keywords(registry):
    text = "write only the reachable hosts into /etc/hosts ('hostsfile no' in a host turns it off)"
    registry.keyword("global", NAME, text)
    registry.keyword("host", NAME, text)


def enabled(host, project) -> bool:
    own = host.tree.get(NAME) if host.tree is not None else None
    if own is not None:
        return own.lower() not in OFF
    glob = project.global_tree.get(NAME) if project is not None and project.global_tree is not None else None
    return glob is not None and glob.lower() not in OFF


def _static(iface) -> bool:
    return bool(iface.address) and not iface.dhcp


def reachable(host, project) -> list[tuple[str, str]]:
    """(address, host name) of every host reachable from ``host``, nearest first."""
    switches = project.switches
    on_switch: dict[str, list[tuple[str, object]]] = {}      # switch -> [(host name, interface)]
    for h in project.hosts.values():
        for i in h.interfaces:
            if i.switch in switches:
                on_switch.setdefault(i.switch, []).append((h.name, i))
    seen_hosts = {host.name}
    seen_switches: set[str] = set()
    queue = deque(i.switch for i in host.interfaces if i.switch in switches)
    out = []
    while queue:
        sw = queue.popleft()
        if sw in seen_switches:
            continue
        seen_switches.add(sw)
        for name, iface in on_switch.get(sw, []):
            if name in seen_hosts:
                continue
            seen_hosts.add(name)
            if _static(iface):
                out.append((iface.address, name))
            # a multi-homed host leads on to its other switches
            for other in project.hosts[name].interfaces:
                if other.switch in switches and other.switch not in seen_switches:
                    queue.append(other.switch)
    return out


def hosts_text(host, project) -> str:
    own = [i.address for i in host.interfaces if _static(i)]
    lines = ["# /etc/hosts written by mln (hostsfile): the hosts reachable through this host's switches",
             "127.0.0.1\tlocalhost" if own else f"127.0.0.1\tlocalhost {host.name}"]
    lines += [f"{a}\t{host.name}" for a in own]
    lines += [f"{a}\t{n}" for a, n in reachable(host, project)]
    lines += ["", "::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes",
              "ff02::2\tip6-allrouters"]
    return "\n".join(lines) + "\n"


@hookimpl(trylast=True)
def mln_configure_image(host, guest, ctx):
    project = getattr(ctx, "project", None)
    if project is None or not host.interfaces or getattr(guest, "family", None) not in LINUX:
        return
    if not enabled(host, project):
        return
    guest.write_text("/etc/hosts", hosts_text(host, project))
