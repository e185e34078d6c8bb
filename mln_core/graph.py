"""``mln graph``: a project's network as data, Graphviz DOT or Mermaid — pure, no I/O.

``network(project)`` gives the plain data that ``--format json`` prints: every host,
switch and link (one per interface) with its service host; ``to_dot`` and
``to_mermaid`` draw that data. Hosts are boxes, switches hexagons; an interface on no
project switch goes to its external switch (a socket path), its bridge (``bridge
NAME``), or a dot. When any host or switch names a service host, each service host is a
cluster, and those without one are in the cluster ``local server``.

Names never become syntax: DOT node names are quoted with every character that could
end or escape the quotes %-encoded, labels are HTML-escaped; Mermaid ids are made up
(h1, s1, ...) and labels use Mermaid's ``#NNN;`` entity codes.
"""
from __future__ import annotations

import html
import ipaddress
import re
from urllib.parse import quote

from .model import Project, format_size

LOCAL = "local server"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MERMAID_SAFE = re.compile(r"[A-Za-z0-9 .,:/_=+@()-]")


def address_text(address: str | None, netmask: str | None) -> str | None:
    """``10.0.0.1/24``, ``dhcp``, the bare address, or None when the interface has none."""
    if address in (None, "dhcp") or netmask is None:
        return address
    try:
        return f"{address}/{ipaddress.ip_network(f'0.0.0.0/{netmask}').prefixlen}"
    except ValueError:
        return f"{address}/{netmask}"


def network(project: Project) -> dict:
    """The project as plain data: hosts, switches, links and the service hosts named."""
    hosts = [{"name": h.name, "hypervisor": h.hypervisor, "memory": format_size(h.memory),
              "template": h.template, "service_host": h.service_host} for h in project.hosts.values()]
    switches = [{"name": s.name, "service_host": s.service_host,
                 "members": [f"{h}.{i}" for h, i in s.members]} for s in project.switches.values()]
    links = [{"host": h.name, "interface": i.name, "switch": i.switch, "bridge": i.bridge,
              "address": i.address, "netmask": i.netmask, "service_host": h.service_host}
             for h in project.hosts.values() for i in h.interfaces]
    named = [x["service_host"] for x in hosts + switches if x["service_host"]]
    return {"project": project.name, "service_hosts": list(dict.fromkeys(named)),
            "hosts": hosts, "switches": switches, "links": links}


def _layout(data: dict) -> tuple[dict, list]:
    """Every node, keyed ``(kind, name)`` -> (cluster or None, label lines, shape), and the
    links as (host key, target key, label lines)."""
    clustered = bool(data["service_hosts"])

    def where(service_host):
        return (service_host or LOCAL) if clustered else None

    nodes: dict = {}
    for h in data["hosts"]:
        nodes[("host", h["name"])] = (where(h["service_host"]),
                                      [h["name"], f"{h['hypervisor']}, {h['memory']}"], "host")
    switches = {s["name"] for s in data["switches"]}
    for s in data["switches"]:
        nodes[("switch", s["name"])] = (where(s["service_host"]), [s["name"]], "switch")
    edges = []
    for ln in data["links"]:
        sh = ln["service_host"]
        if ln["switch"] in switches:
            target = ("switch", ln["switch"])
        elif ln["switch"]:                      # an external switch: a socket path
            target = ("external", f"{sh or ''}\0{ln['switch']}")
            nodes.setdefault(target, (where(sh), [ln["switch"]], "external"))
        elif ln["bridge"]:
            target = ("bridge", f"{sh or ''}\0{ln['bridge']}")
            nodes.setdefault(target, (where(sh), [f"bridge {ln['bridge']}"], "bridge"))
        else:
            target = ("none", f"{ln['host']}\0{ln['interface']}")
            nodes[target] = (where(sh), [], "none")
        addr = address_text(ln["address"], ln["netmask"])
        edges.append((("host", ln["host"]), target, [ln["interface"]] + ([addr] if addr else [])))
    return nodes, edges


def _clusters(nodes: dict) -> dict:
    """cluster name (or None) -> node keys, None first, then in order of appearance."""
    out: dict = {None: []}
    for key, (cluster, _, _) in nodes.items():
        out.setdefault(cluster, []).append(key)
    if LOCAL in out:                            # the local server first
        out = {None: out.pop(None), LOCAL: out.pop(LOCAL), **out}
    return out


# --- DOT --------------------------------------------------------------------------------

_DOT_SHAPES = {"host": 'shape=box, style="rounded,filled", fillcolor="#e8f0fe"',
               "switch": 'shape=hexagon, style=filled, fillcolor="#fff4d6"',
               "external": 'shape=hexagon, style=dashed',
               "bridge": 'shape=octagon, style=filled, fillcolor="#eeeeee"',
               "none": 'shape=point, width=0.08'}


def dot_id(key: tuple) -> str:
    """A quoted DOT id such as ``"host:a-b.c"``: '"', '\\', '%', control characters and
    anything not ASCII are %-encoded, so no name can end the quotes."""
    kind, name = key
    return f'"{kind}:' + quote(name, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~") + '"'


def _html(lines: list[str], bold_first: bool = False) -> str:
    parts = [html.escape(_CONTROL.sub("?", ln), quote=True) for ln in lines]
    if bold_first and parts:
        parts[0] = f"<B>{parts[0]}</B>"
    return "<" + "<BR/>".join(parts) + ">"


def to_dot(data: dict) -> str:
    """The network as a Graphviz graph (render it with ``dot -Tsvg``)."""
    nodes, edges = _layout(data)
    out = [f"graph {dot_id(('project', data['project']))} {{",
           f'  graph [rankdir=LR, labelloc=t, fontname="Helvetica", '
           f'label={_html(["project " + data["project"]])}];',
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    for n, (cluster, keys) in enumerate(_clusters(nodes).items()):
        indent = "  " if cluster is None else "    "
        if cluster is not None:
            out += [f'  subgraph "cluster_{n}" {{',
                    f'    label={_html([cluster])}; style="rounded,dashed"; color="#888888";']
        for key in keys:
            _, label, shape = nodes[key]
            text = f", label={_html(label, shape == 'host')}" if label else ', label=""'
            out.append(f"{indent}{dot_id(key)} [{_DOT_SHAPES[shape]}{text}];")
        if cluster is not None:
            out.append("  }")
    for a, b, label in edges:
        out.append(f"  {dot_id(a)} -- {dot_id(b)} [label={_html(label)}];")
    return "\n".join(out + ["}"]) + "\n"


# --- Mermaid ----------------------------------------------------------------------------

_MERMAID_SHAPES = {"host": '["{}"]', "switch": '{{{{"{}"}}}}', "external": '{{{{"{}"}}}}',
                   "bridge": '[("{}")]', "none": '((" "))'}


def mermaid_text(text: str) -> str:
    """Text for a quoted Mermaid label: every character that is not plainly safe becomes
    an entity code ``#NNN;`` (so '"', '#', '<', ']', '|' cannot end or open anything)."""
    return "".join(c if _MERMAID_SAFE.match(c) else f"#{ord(c)};" for c in text)


def to_mermaid(data: dict) -> str:
    """The network as a Mermaid flowchart: a ``graph LR`` header, node declarations (in a
    ``subgraph`` per service host), then one ``---`` line per link."""
    nodes, edges = _layout(data)
    ids: dict = {}
    count = dict.fromkeys(_MERMAID_SHAPES, 0)
    for key, (_, _, shape) in nodes.items():
        count[shape] += 1
        ids[key] = f"{shape[0]}{count[shape]}"    # h1, s1, e1, b1, n1
    out = ["graph LR", f"  %% project {mermaid_text(data['project'])}"]
    for n, (cluster, keys) in enumerate(_clusters(nodes).items()):
        indent = "  " if cluster is None else "    "
        if cluster is not None:
            out.append(f'  subgraph c{n}["{mermaid_text(cluster)}"]')
        for key in keys:
            _, label, shape = nodes[key]
            out.append(indent + ids[key] + _MERMAID_SHAPES[shape].format(
                "<br/>".join(mermaid_text(ln) for ln in label)))
        if cluster is not None:
            out.append("  end")
    for a, b, label in edges:
        out.append(f'  {ids[a]} ---|"{"<br/>".join(mermaid_text(ln) for ln in label)}"| {ids[b]}')
    return "\n".join(out) + "\n"
