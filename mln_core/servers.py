"""Projects over several servers: which server runs each host and switch, the part of a
project that one server carries out, and the switches that span servers.

A host (or switch, or superclass) with ``service_host NAME`` runs on server ``NAME``; one
without, on the server the user types on (its mln.conf ``service_host``, ``localhost`` if
it has none). mln.conf names every other server and how to reach it::

    service_host manager
    server sh1 ssh 10.0.0.11            # NAME TRANSPORT ADDRESS[:PORT] [key=value ...]
    server sh2 ssh root@sh2.example.org:2222 mln=/usr/local/bin/mln
    server bigvmbox local               # another name of this server

A server's *part* of a project is the project with only that server's hosts and the
switches they use; each server builds and runs its part with its own engine. A switch
whose hosts sit on several servers is joined across them with VXLAN: its *span* (VNI,
this server's underlay address, the other servers' addresses) is recorded in the switch's
state, where the switch plugin finds it (``ctx.span(switch)``).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .errors import MlnError

LOCAL = "localhost"
VXLAN_OVERHEAD = 50          # outer Ethernet, IPv4, UDP and VXLAN headers
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


@dataclass
class Server:
    """A server of mln.conf's ``server`` lines."""
    name: str
    transport: str
    address: str                  # how the transport reaches it (an IP address or a DNS name)
    port: int | None = None
    user: str | None = None
    options: dict = field(default_factory=dict)


def here(config) -> str:
    """The name of the server mln runs on."""
    return config.get("service_host") or LOCAL


def configured(config) -> dict[str, Server]:
    """The servers mln.conf names (``server NAME TRANSPORT [USER@]ADDRESS[:PORT] [k=v ...]``)."""
    servers = {}
    for n, value in enumerate(config.getlist("server")):
        words = value.split()
        where = f"mln.conf server line {n + 1} ('{value}')"
        if len(words) == 2 and words[1] == "local":          # another name of this server
            words.append("-")
        if len(words) < 3:
            raise MlnError(f"{where}: give NAME TRANSPORT ADDRESS, e.g. 'server sh1 ssh 10.0.0.11' "
                           "(or 'server NAME local': another name of this server)")
        name, transport, address = words[:3]
        if not _NAME.match(name):
            raise MlnError(f"{where}: '{name}' is not a server name (letters, digits, '.', '_', '-')")
        user = None
        if "@" in address:
            user, address = address.rsplit("@", 1)
        port = None
        m = re.match(r"\[(.+)\]:(\d+)\Z|([^:]+):(\d+)\Z", address)
        if m:
            address, port = (m.group(1) or m.group(3)), int(m.group(2) or m.group(4))
            if not 0 < port < 65536:
                raise MlnError(f"{where}: port {port} is out of range")
        options = {}
        for w in words[3:]:
            if "=" not in w:
                raise MlnError(f"{where}: '{w}' is not KEY=VALUE")
            k, v = w.split("=", 1)
            options[k] = v
        servers[name] = Server(name, transport, address, port, user, options)
    return servers


@dataclass
class Layout:
    """Where the hosts and switches of a whole project run."""
    default: str                                  # the server of hosts without service_host
    hosts: dict[str, str]                         # host -> server
    switches: dict[str, list[str]]                # switch -> servers it is on
    aliases: dict[str, str] = field(default_factory=dict)    # other names of servers

    @property
    def servers(self) -> list[str]:
        names = list(self.hosts.values()) + [s for on in self.switches.values() for s in on]
        return list(dict.fromkeys(names))

    def spanning(self) -> list[str]:
        return [s for s, on in self.switches.items() if len(on) > 1]

    def placement(self, project: str, server: str, addresses: dict[str, str] | None = None,
                  underlay_mtu: int = 1500) -> dict:
        """What ``server`` is told about the project: which server it is, which server has
        the hosts without ``service_host``, and the spans of its switches that cross servers
        (``addresses``: every server's underlay address)."""
        spans = {}
        for s in self.spanning():
            on = self.switches[s]
            if server not in on:
                continue
            if addresses is None or any(x not in addresses for x in on):
                missing = [x for x in on if addresses is None or x not in addresses]
                raise MlnError(f"switch '{s}' spans servers {', '.join(on)}: no address for "
                               f"{', '.join(missing)}")
            spans[s] = {"vni": vni(project, s), "local": addresses[server],
                        "remotes": [addresses[x] for x in on if x != server],
                        "mtu": underlay_mtu - VXLAN_OVERHEAD}
        return {"here": server, "default": self.default, "servers": self.servers, "spans": spans,
                "aliases": self.aliases, "hosts": self.hosts}


#: what each server of a project spread over servers records of the whole, in its state
PLACEMENT_KEYS = ("here", "default", "servers", "aliases", "manager", "hosts", "spans")


def layout(project, default: str, aliases: dict[str, str] | None = None,
           placed: dict[str, str] | None = None) -> Layout:
    """Where each host and switch of ``project`` runs (``default``: the server of the hosts
    and switches that name none; ``aliases``: other names of servers; ``placed``: where
    :mod:`mln_core.placement` put the hosts that name several servers or ``any``)."""
    from .placement import candidates
    aliases = aliases or {}

    def server(name):
        many = candidates(name)
        if many is not None:        # not placed yet (mln check): the first it names, or here
            name = many[0] if many[0] != "any" else None
        return aliases.get(name, name) if name else default
    hosts = {h.name: (placed or {}).get(h.name) or server(h.service_host) for h in project.hosts.values()}
    switches = {}
    for s in project.switches.values():
        on = [hosts[h.name] for h in project.hosts.values() for i in h.interfaces if i.switch == s.name]
        if s.service_host:
            on.append(server(s.service_host))
        switches[s.name] = list(dict.fromkeys(on)) or [default]
    return Layout(default, hosts, switches, aliases)


def aliases_of(config) -> dict[str, str]:
    """The other names of this server (``server NAME local`` lines)."""
    me = here(config)
    return {n: me for n, s in configured(config).items() if s.transport == "local"}


def part(project, placement: dict | None):
    """The part of ``project`` that the server of ``placement`` carries out (the project
    itself when it is not spread over servers)."""
    if not placement:
        return project
    lay = layout(project, placement["default"], placement.get("aliases"), placement.get("hosts"))
    me = placement["here"]
    hosts = {n: h for n, h in project.hosts.items() if lay.hosts[n] == me}
    switches = {n: s for n, s in project.switches.items()       # (or its manager spans it here: moves)
                if me in lay.switches[n] or n in (placement.get("spans") or {})}
    return dataclasses.replace(project, hosts=hosts, switches=switches)


def vni(project: str, switch: str) -> int:
    """The VXLAN network identifier of a project's switch: derived from both names, so
    that every server computes the same one (1 to 16,777,215)."""
    import hashlib      # here: every mln check imports this module, few need a VNI
    digest = hashlib.sha256(f"mln:{project}:{switch}".encode()).digest()
    return int.from_bytes(digest[:3], "big") % 0xFFFFFE + 1


def check_servers(project, config, placed: dict[str, str] | None = None) -> Layout:
    """The layout of ``project`` seen from this server (``placed``: see :func:`layout`); an
    error naming a service host mln.conf does not know."""
    from .placement import ANY, flexible
    me = here(config)
    aliases = aliases_of(config)
    lay = layout(project, me, aliases, placed)
    known = configured(config)
    named = [aliases.get(c, c) for cands in flexible(project).values() for c in cands if c != ANY]
    unknown = list(dict.fromkeys(s for s in lay.servers + named if s != me and s not in known))
    if unknown:
        raise MlnError(f"project '{project.name}': service host {', '.join(unknown)} is not a server "
                       f"mln.conf knows (add 'server NAME ssh ADDRESS' to mln.conf; this server is '{me}')")
    return lay


def vni_clash(store, project: str, spans: dict) -> None:
    """An error when a switch of ``project`` would get the VXLAN network identifier that a
    switch of another project of this server has (checked before anything is built)."""
    wanted = {span["vni"]: switch for switch, span in spans.items()}
    if not wanted:
        return
    from .store import Store
    for other in store.list():
        if other == project:
            continue
        try:
            switches = Store.read_state(store.project_dir(other)).get("switches", {})
        except MlnError:
            continue
        for name, data in switches.items():
            vni_used = (data.get("span") or {}).get("vni")
            if vni_used in wanted:
                raise MlnError(f"switch '{wanted[vni_used]}' of project '{project}' would get VXLAN network "
                               f"{vni_used}, which switch '{name}' of project '{other}' has on this server; "
                               "rename one of the switches")
