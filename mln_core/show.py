"""``mln show``: the resolved project as plain data (for YAML/JSON) and as text.

Secret values (passwords: see :mod:`mln_core.private`) are shown as ``<secret>``."""
from __future__ import annotations

from .model import Host, Project, format_size
from .private import SECRET, Secrets

_SCALARS = ("hypervisor", "template", "memory", "size", "free_space", "swap", "service_host",
            "boot_order", "root_passwd", "nameserver", "kernel", "ramdisk", "family", "term")
def _line_origin(line) -> str:
    if line is None:
        return "default"
    return f"{line.origin} ({line.pos})" if line.pos else str(line.origin)


def host_to_dict(h: Host, explain: bool, secrets: Secrets | None = None) -> dict:
    secrets = secrets if secrets is not None else Secrets.core()
    d: dict = {}
    for key in _SCALARS:
        v = getattr(h, key)
        if v is None:
            continue
        if key == "root_passwd":
            v = SECRET
        if key in ("memory", "size", "free_space", "swap"):
            v = format_size(v)
        if explain:
            origin = h.origins.get(key) or (h.origins.get("root_password") if key == "root_passwd" else None)
            d[key] = {"value": v, "from": origin or "default"}
        else:
            d[key] = v
    if h.superclasses:
        d["superclasses"] = list(h.superclasses)
    ifaces = {}
    for i in h.interfaces:
        entry = {}
        for key in ("switch", "address", "netmask", "broadcast", "gateway", "mac", "bridge"):
            v = getattr(i, key)
            if v is None:
                continue
            entry[key] = {"value": v, "from": _line_origin(i.tree.line(key))} if explain else v
        ifaces[i.name] = entry
    if ifaces:
        d["interfaces"] = ifaces
    if h.users:
        d["users"] = [{k: (SECRET if k == "password" else v) for k, v in vars(u).items() if v is not None}
                      for u in h.users]
    if h.groups:
        d["groups"] = dict(h.groups)
    for key in ("startup", "shutdown", "modules"):
        if getattr(h, key):
            d[key] = list(getattr(h, key))
    if h.files:
        d["files"] = [{k: v for k, v in vars(f).items() if v is not None} for f in h.files]
    if h.mounts:
        d["mounts"] = [{k: v for k, v in vars(m).items() if v is not None} for m in h.mounts]
    extra = {}
    known = set(_SCALARS) | {"superclass", "network", "users", "groups", "startup", "shutdown",
                             "modules", "files", "mount", "root_password", "location", "xen", "hvm",
                             "uml", "qemu", "kvm", "vmware"}
    for kw, line in (h.tree.values.items() if h.tree is not None else ()):
        if kw not in known:
            value = SECRET if secrets.keyword("host", kw) else line.value
            extra[kw] = {"value": value, "from": _line_origin(line)} if explain else value
    for name, b in (h.tree.blocks.items() if h.tree is not None else ()):
        if name not in known and not b.container:
            extra[name] = {ln.words[0]: SECRET if secrets.keyword(f"host.{name}", ln.words[0]) else ln.value
                           for ln in b.values.values()}
    if extra:
        d["other"] = extra
    return d


def project_to_dict(p: Project, explain: bool = False, secrets: Secrets | None = None) -> dict:
    secrets = secrets if secrets is not None else Secrets.core()
    return {
        "project": p.name,
        "switches": {s.name: {**({"service_host": s.service_host} if s.service_host else {}),
                              "members": [f"{h}.{i}" for h, i in s.members]}
                     for s in p.switches.values()},
        "hosts": {h.name: host_to_dict(h, explain, secrets) for h in p.hosts.values()},
    }


def render_text(data: dict, explain: bool = False) -> str:
    nh, ns = len(data["hosts"]), len(data["switches"])
    out = [f"project {data['project']}: {nh} host{'s' * (nh != 1)}, {ns} switch{'es' * (ns != 1)}"]
    for name, s in data["switches"].items():
        where = f" on {s['service_host']}" if s.get("service_host") else ""
        out.append(f"switch {name}{where}: {' '.join(s['members']) or '(no members)'}")
    for name, h in data["hosts"].items():
        out.append(f"host {name}")
        for key, v in h.items():
            if isinstance(v, dict) and "value" in v and "from" in v:
                out.append(f"  {key:<13} {v['value']!s:<28} # {v['from']}")
            elif key == "interfaces":
                for iname, entry in v.items():
                    out.append(f"  {iname}")
                    for k, iv in entry.items():
                        if isinstance(iv, dict):
                            out.append(f"    {k:<11} {iv['value']!s:<28} # {iv['from']}")
                        else:
                            out.append(f"    {k:<11} {iv}")
            elif key == "other":
                for k, ov in v.items():
                    if isinstance(ov, dict) and "value" in ov:
                        out.append(f"  {k:<13} {ov['value']!s:<28} # {ov['from']}")
                    elif isinstance(ov, dict):
                        out.append(f"  {k:<13} {' ; '.join(f'{a} {b}' for a, b in ov.items())}")
                    else:
                        out.append(f"  {k:<13} {ov}")
            elif isinstance(v, list):
                items = [x if isinstance(x, str) else " ".join(str(y) for y in x.values()) for x in v]
                out.append(f"  {key:<13} {items[0]}")
                out.extend(f"  {'':<13} {item}" for item in items[1:])
            elif isinstance(v, dict):
                out.append(f"  {key:<13} " + "; ".join(f"{a}: {' '.join(b)}" for a, b in v.items()))
            else:
                out.append(f"  {key:<13} {v}")
    return "\n".join(out) + "\n"
