"""What the original fills in after parsing, for ``mln parse`` queries (spec 4.4 step 2).

The original records, for every host interface with ``switch S``,
``/switch/S/hosts/<host> = <interface>``, and marks a switch with a Xen host on it
``xen`` and gives it its bridge name. mln keeps these out of the project tree (they
follow from the hosts) and answers them when a query asks:

* ``/switch/S/hosts``: one line ``<host> <interface>`` per interface on S, in the order
  of the file; ``/switch/S/hosts/H`` the interface of H (the last, if several are on S,
  as a repeated keyword);
* ``/switch/S/xen``: ``1`` when a Xen host is on S;
* ``/switch/S/bridge``: the Linux bridge of S when it is one (a Xen host on it, as in the
  original, or ``type bridge``): the ``bridge`` keyword, else ``<switch>.<project>`` when
  that fits in 15 characters, else a shortened name with a hash (as the backends name it).
"""
from __future__ import annotations

import hashlib
import re

from .lang.tree import Block, Line

IFNAMSIZ = 15
_IFNAME_OK = re.compile(r"[A-Za-z0-9_.-]+\Z")
ORIGIN = "filled in by mln"


def bridge_name(switch) -> str:
    """The Linux bridge of ``switch``: the rule of ``mln_backends.bridges.bridge_name``
    (the core does not import the backends; a test keeps the two equal)."""
    explicit = switch.tree.get("bridge") if switch.tree is not None else None
    if explicit:
        return explicit
    readable = f"{switch.name}.{switch.project}"
    if len(readable) <= IFNAMSIZ and _IFNAME_OK.match(readable):
        return readable
    head = re.sub(r"[^A-Za-z0-9]", "", readable)[:IFNAMSIZ - 9] or "mln"
    digest = hashlib.sha256("\0".join(("bridge", switch.project, switch.name)).encode()).hexdigest()
    return f"{head}-{digest[:IFNAMSIZ - len(head) - 1]}"


def switch_filler(doc, ctx):
    """``fill(kind, name, block)`` for :meth:`mln_core.merge.Resolved.lookup`: a switch's
    effective block with the keys above added. The project model is made on first use."""
    made: dict = {}

    def fill(kind: str, name: str, block: Block) -> Block:
        if kind != "switch":
            return block
        if "project" not in made:
            from .project import build_model
            made["project"] = build_model(doc, ctx).project
        project = made["project"]
        switch = project.switches.get(name) if project is not None else None
        if switch is None:
            return block
        return filled(block, switch, project, ctx.config.get("default_switch", "vde"))
    return fill


def filled(block: Block, switch, project, default_switch: str) -> Block:
    b = Block(block.kind, block.name, block.pos, block.origin, block.container)
    b.lines = list(block.lines)
    b.vars = block.vars
    b.blocks = dict(block.blocks)
    xen = any(project.hosts[h].hypervisor == "xen" for h, _ in switch.members if h in project.hosts)
    if xen and not block.has("xen"):
        b.lines.append(Line(["xen"], origin=ORIGIN))
    if (xen or switch.kind(default_switch) == "bridge") and block.get("bridge") is None:
        b.lines.append(Line(["bridge", bridge_name(switch)], origin=ORIGIN))
    if switch.members:
        old = block.blocks.get("hosts")
        hosts = Block("hosts", origin=ORIGIN)
        hosts.lines = (list(old.lines) if old is not None else []) + \
            [Line([h, iface], origin=ORIGIN) for h, iface in switch.members]
        b.blocks["hosts"] = hosts
    return b
