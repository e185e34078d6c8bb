"""The resolved model: Project, Host, Switch, Interface — what plugins receive.

Built from the effective, variable-resolved trees; values are typed and validated
(sizes in bytes, addresses checked). ``origins`` on a host tells where each value came
from: ``host rome``, ``superclass basic``, ``global`` or ``default``.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field

from .errors import MlnError, Pos, Problems
from .lang.tree import Block, Line
from .limits import MAX_SIZE, MAX_UID, MAX_VCPUS, octal_mode, whole_number
from .names import guest_path_problem, inner_path_problem, name_problem, shown

_SIZE = re.compile(r"\s*([0-9]{1,40}(?:\.[0-9]{1,40})?)\s*(b|K|kB|KB|M|MB|G|GB|T|TB)?\s*\Z")
_UNITS = {None: 1, "b": 512, "K": 1024, "kB": 1000, "KB": 1000, "M": 2**20, "MB": 10**6,
          "G": 2**30, "GB": 10**9, "T": 2**40, "TB": 10**12}
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}\Z")
_IFACE = re.compile(r"eth(\d+)\Z")
FAMILIES = ("debian", "redhat", "busybox", "suse", "windows")


def parse_size(text: str, where: Pos | str | None = None, what: str = "size") -> int:
    """``128M`` -> bytes. Units as the original: b(512) K(1024) kB/KB(1000) M MB G GB; bare = bytes."""
    m = _SIZE.match(text)
    if not m:
        raise MlnError(f"bad {what} '{shown(text)}': use a number with a unit such as 512M or 2G "
                       "(units: b K kB KB M MB G GB)", where)
    if "." in m.group(1):
        from decimal import Decimal      # exact: 1.5G is 1610612736 bytes
        n = Decimal(m.group(1)) * _UNITS[m.group(2)]
    else:
        n = int(m.group(1)) * _UNITS[m.group(2)]
    if n > MAX_SIZE:
        raise MlnError(f"{what} '{shown(text)}' is too large (at most {MAX_SIZE // 2**40}T)", where)
    return int(n)


def format_size(n: int) -> str:
    for unit, mult in (("G", 2**30), ("M", 2**20), ("K", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


@dataclass
class Interface:
    """One network interface of a host (``network ethN { ... }``)."""

    name: str
    index: int
    switch: str | None = None
    address: str | None = None          # an IPv4/IPv6 address, "dhcp", or None
    netmask: str | None = None
    broadcast: str | None = None
    gateway: str | None = None
    mac: str | None = None
    bridge: str | None = None
    tree: Block | None = field(default=None, repr=False)

    @property
    def dhcp(self) -> bool:
        return self.address == "dhcp"

    @property
    def prefixlen(self) -> int | None:
        import ipaddress
        if self.netmask is None:
            return None
        return ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen


@dataclass
class User:
    """A guest user account (``users { name password group }``)."""

    name: str
    password: str | None = None
    home: str | None = None
    uid: int | None = None


@dataclass
class FileCopy:
    """A file or directory copied into the guest (``files { source target }``)."""

    source: str
    destination: str
    mode: str | None = None


@dataclass
class Mount:
    """A filesystem the guest mounts (``mount { ... }``)."""

    source: str
    mountpoint: str
    fstype: str
    options: str | None = None


@dataclass
class Disk:
    """What a storage plugin made for a host: ``path`` and its ``format`` (raw, qcow2...)."""

    path: str
    format: str = "raw"
    kind: str = "file"
    size: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(repr=False, eq=False)
class Host:
    """A host of the project, resolved: its effective settings as typed values."""

    name: str
    project: str
    hypervisor: str
    template: str
    memory: int
    size: int | None = None
    free_space: int | None = None
    swap: int | None = None
    service_host: str | None = None
    boot_order: int = 99
    interfaces: list[Interface] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    startup: list[str] = field(default_factory=list)
    shutdown: list[str] = field(default_factory=list)
    files: list[FileCopy] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    root_passwd: str | None = None
    nameserver: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    family: str | None = None
    term: str | None = None
    superclasses: list[str] = field(default_factory=list)
    defaults: dict = field(default_factory=dict, repr=False)   # keyword -> "default" or the Line used
    tree: Block | None = field(default=None, repr=False)

    @property
    def origins(self) -> dict[str, str]:
        """keyword -> where its value came from: ``superclass basic (p.mln:12:5)``, ``default``."""
        def label(ln):
            if isinstance(ln, str):
                return ln
            return f"{ln.origin} ({ln.pos})" if ln.pos else str(ln.origin)
        out = {kw: label(ln) for kw, ln in (self.tree.values.items() if self.tree is not None else ())}
        out.update((kw, label(v)) for kw, v in self.defaults.items())
        return out

    @property
    def fqname(self) -> str:
        """The host's external identity: ``<host>.<project>``."""
        return f"{self.name}.{self.project}"

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def disk_size(self, template_size: int, log=None) -> int:
        """The size of the host's disk made from a template of ``template_size`` bytes:
        template + ``free_space``, else ``size`` (never smaller than the template; ``log``
        gets the warning when ``size`` was)."""
        if self.free_space is not None:
            return template_size + self.free_space
        size = self.size or template_size
        if size < template_size:
            if log is not None:
                log(f"warning: host {self.name}: size {format_size(size)} is smaller than template "
                    f"{self.template} ({format_size(template_size)}); using the template's size")
            return template_size
        return size


@dataclass(frozen=True)
class Attachment:
    """How one interface of a host joins its switch: what ``mln_switch_attachment`` answers
    and ``ctx.attachment(host, interface)`` gives the hypervisor backend."""
    kind: str                    # "vde": a vde_switch socket; "tap": a tap device on a bridge; or a backend's own
    socket: str | None = None    # vde: the switch's control socket
    tap: str | None = None       # tap: the tap device made for this interface
    bridge: str | None = None    # tap: the bridge the tap is on
    network: str | None = None   # a hypervisor's own network (VMware's vmnetN)


@dataclass(repr=False, eq=False)
class Switch:
    """A virtual switch of the project."""

    name: str
    project: str
    service_host: str | None = None
    members: list[tuple[str, str]] = field(default_factory=list)   # (host, interface)
    tree: Block | None = field(default=None, repr=False)

    def kind(self, default: str = "vde") -> str:
        """What the switch is: ``hub`` (the ``hub`` keyword), its ``type``, else ``default``
        (mln.conf's ``default_switch``); the switch plugin of that kind builds it."""
        if self.tree is not None and self.tree.has("hub"):
            return "hub"
        return (self.tree.get("type") if self.tree is not None else None) or default

    def explicit_kind(self) -> str | None:
        """The kind the project file gives (``type`` or ``hub``), None if it gives none."""
        if self.tree is None or not (self.tree.has("hub") or self.tree.get("type")):
            return None
        return self.kind()


@dataclass(repr=False, eq=False)
class Project:
    """A whole project, resolved: its global settings, hosts and switches."""

    name: str
    hosts: dict[str, Host] = field(default_factory=dict)
    switches: dict[str, Switch] = field(default_factory=dict)
    superclasses: list[str] = field(default_factory=list)
    global_tree: Block | None = field(default=None, repr=False)
    source: str | None = None

    def hook_lines(self, name: str) -> list[str]:
        """Lines of a global hook block such as ``beforeProjectStart``."""
        b = self.global_tree.block(name) if self.global_tree else None
        return b.line_texts() if b else []

    def boot_sequence(self) -> list[Host]:
        """Hosts in start order: boot_order, then the order of the file."""
        return sorted(self.hosts.values(), key=lambda h: h.boot_order)

    def local_path(self, text: str) -> str:
        """A path written in the project file, on the managing host: ``~`` expanded, and a
        relative one taken from the project file's directory (as ``#include`` does)."""
        path = os.path.expanduser(text)
        if not os.path.isabs(path):
            base = os.path.dirname(os.path.abspath(self.source)) if self.source else os.getcwd()
            path = os.path.join(base, path)
        return os.path.normpath(path)


# ---------------------------------------------------------------------------------------

_PADDED_V4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}\Z")


def _ip(value: str, line: Line, what: str, problems: Problems) -> str | None:
    """An IP address; zero-padded IPv4 parts (10.0.07.1, from $group = 07) are decimal."""
    import ipaddress
    if _PADDED_V4.match(value):
        value = ".".join(str(int(part)) for part in value.split("."))
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        problems.error(f"bad {what} '{value}': not an IP address", line.pos)
        return None


@functools.lru_cache(maxsize=256)
def _netmask_text(value: str) -> str | None:
    """``255.255.255.0`` or ``24`` -> ``255.255.255.0``; None if it is no netmask."""
    import ipaddress
    try:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)
    except ValueError:
        return None


def _netmask(value: str, line: Line, problems: Problems) -> str | None:
    mask = _netmask_text(value)
    if mask is None:
        problems.error(f"bad netmask '{value}'", line.pos)
    return mask


def _size(block: Block, key: str, problems: Problems) -> int | None:
    line = block.line(key)
    if line is None:
        return None
    try:
        return parse_size(line.value, line.pos, key)
    except MlnError as e:
        problems.error(e.message, e.where)
        return None


def build_host(name: str, eff: Block, project: str, defaults: dict, hypervisor_flags: dict,
               superclasses: list[str], switches: set[str], problems: Problems) -> Host:
    """One Host from its effective, resolved tree."""
    origins: dict = {}   # only what did not come from a line of its own

    def get(key, default=None):
        line = eff.values.get(key)
        if line is None:
            if default is not None:
                origins[key] = "default"
            return default
        return line.value

    # hypervisor: an explicit "hypervisor NAME", a flag such as "xen", or the default
    hv_line = eff.line("hypervisor")
    found = sorted({hypervisor_flags[k] for k in eff.values if k in hypervisor_flags})
    if hv_line is not None:
        hypervisor = hv_line.value
        known = sorted(set(hypervisor_flags.values()))
        if hypervisor not in known:
            problems.error(f"unknown hypervisor '{hypervisor}' (known: {', '.join(known)})", hv_line.pos)
    elif len(found) > 1:
        problems.error(f"host '{name}' asks for more than one hypervisor: {', '.join(found)}", eff.pos)
        hypervisor = found[0]
    elif found:
        hypervisor = found[0]
        flag = next(k for k in eff.values if hypervisor_flags.get(k) == hypervisor)
        origins["hypervisor"] = eff.values[flag]
    else:
        hypervisor = defaults.get("default_hypervisor", "uml")
        origins["hypervisor"] = "default"

    mem_text = get("memory", defaults.get("default_memory", "128M"))
    try:
        memory = parse_size(mem_text, eff.line("memory").pos if eff.line("memory") else "mln.conf",
                            "memory")
    except MlnError as e:
        problems.error(e.message, e.where)
        memory = 128 * 2**20
    if memory < 16 * 2**20 and eff.line("memory") is not None:
        problems.warn(f"memory {mem_text} is only {memory} bytes: did you mean {mem_text}M?",
                      eff.line("memory").pos)
    size = _size(eff, "size", problems)
    if size is None and eff.line("free_space") is None:
        try:
            size = parse_size(defaults.get("default_size", "250M"), "mln.conf", "default_size")
            origins["size"] = "default"
        except MlnError as e:
            problems.error(e.message, e.where)
    host = Host(
        name=name, project=project, hypervisor=hypervisor,
        template=get("template", defaults.get("default_template", "busybox.ext4")),
        memory=memory, size=size,
        free_space=_size(eff, "free_space", problems), swap=_size(eff, "swap", problems),
        service_host=get("service_host") or get("location"),
        root_passwd=get("root_passwd") or get("root_password"),
        nameserver=get("nameserver"), kernel=get("kernel"), ramdisk=get("ramdisk"),
        family=get("family"), term=get("term"),
        superclasses=superclasses, defaults=origins, tree=eff,
    )
    fam = eff.line("family")
    if fam is not None and fam.value not in FAMILIES:
        problems.error(f"unknown family '{fam.value}' (one of {', '.join(FAMILIES)})", fam.pos)
    bo = eff.line("boot_order")
    if bo is not None:
        n = whole_number(bo.value, 1, 99)
        if n is not None:
            host.boot_order = n
        else:
            problems.error(f"boot_order must be a number from 1 to 99, not '{shown(bo.value)}'", bo.pos)
    _check_values(host, eff, problems)
    if host.nameserver:
        _ip(host.nameserver, eff.line("nameserver"), "nameserver", problems)

    for iname, ib in eff.named("network").items():
        m = _IFACE.match(iname)
        if not m:
            problems.error(f"interface '{iname}' of host '{name}': interfaces are named eth0, eth1, ...",
                           ib.pos)
            continue
        iface = Interface(name=iname, index=int(m.group(1)), tree=ib)
        for key in ("switch", "bridge"):
            setattr(iface, key, ib.get(key))
        if iface.switch and not iface.switch.startswith("/") and iface.switch not in switches:
            known = ", ".join(sorted(switches)) or "none is defined"
            problems.error(f"host '{name}' {iname}: switch '{iface.switch}' is not defined "
                           f"(switches: {known})", ib.line("switch").pos)
        addr = ib.line("address")
        if addr is not None:
            if addr.value == "dhcp":
                iface.address = "dhcp"
            elif addr.value == "auto":
                problems.error("'address auto' is only meaningful in an autoenum block", addr.pos)
            else:
                iface.address = _ip(addr.value, addr, "address", problems)
        for key in ("broadcast", "gateway"):
            line = ib.line(key)
            if line is not None:
                setattr(iface, key, _ip(line.value, line, key, problems))
        nm = ib.line("netmask")
        if nm is not None:
            iface.netmask = _netmask(nm.value, nm, problems)
        mac = ib.line("mac")
        if mac is not None:
            if _MAC.match(mac.value):
                iface.mac = ":".join(f"{int(x, 16):02x}" for x in mac.value.split(":"))
            else:
                problems.error(f"bad MAC address '{mac.value}'", mac.pos)
        host.interfaces.append(iface)
    host.interfaces.sort(key=lambda i: i.index)

    users = eff.block("users")
    for line in users.lines if users else []:
        w = line.words
        uid = None
        if len(w) > 3:
            uid = whole_number(w[3], 0, MAX_UID)
            if uid is None:
                problems.error(f"user '{shown(w[0])}': uid must be a number from 0 to {MAX_UID}, not "
                               f"'{shown(w[3])}'", line.pos)
        if not re.match(r"[a-z_][a-z0-9_-]{0,31}\$?\Z", w[0]):
            problems.error(f"bad user name '{shown(w[0])}' (at most 32 lower-case letters, digits, '_' "
                           "and '-', starting with a letter or '_')", line.pos)
        if len(w) > 2:
            _path_error(guest_path_problem(w[2], "home directory"), line, problems)
        host.users.append(User(w[0], w[1] if len(w) > 1 else None, w[2] if len(w) > 2 else None, uid))
    groups = eff.block("groups")
    if groups:
        for gname, gb in groups.blocks.items():
            host.groups[gname] = [w for ln in gb.lines for w in ln.words]
        for line in groups.lines:
            host.groups.setdefault(line.words[0], []).extend(line.words[1:])
    for key in ("startup", "shutdown", "modules"):
        b = eff.block(key)
        if b:
            setattr(host, key, b.line_texts())
    files = eff.block("files")
    for line in files.lines if files else []:
        w = line.words
        if len(w) < 2:
            problems.error("a files line is: source destination [mode]", line.pos)
            continue
        bad = _path_error(inner_path_problem(w[0], "files source", "files directory"), line, problems)
        bad |= _path_error(guest_path_problem(w[1], "files destination"), line, problems)
        if len(w) > 2 and octal_mode(w[2]) is None:
            problems.error(f"files mode must be octal, 0 to 7777 (such as 644), not '{shown(w[2])}'", line.pos)
            bad = True
        if not bad:
            host.files.append(FileCopy(w[0], w[1], w[2] if len(w) > 2 else None))
    mounts = eff.block("mount")
    for line in mounts.lines if mounts else []:
        w = line.words
        if len(w) < 3:
            problems.error("a mount line is: source mountpoint fstype [options]", line.pos)
            continue
        if _path_error(guest_path_problem(w[1], "mount point"), line, problems):
            continue
        host.mounts.append(Mount(w[0], w[1], w[2], " ".join(w[3:]) or None))
    return host


def _path_error(problem: str | None, line: Line, problems: Problems) -> bool:
    if problem:
        problems.error(problem, line.pos)
    return bool(problem)


def _check_values(host: Host, eff: Block, problems: Problems) -> None:
    """Values that become file names or numbers of a backend: checked here, so that what
    ``check`` accepts builds."""
    line = eff.line("template")        # default_template: checked once, by check_defaults
    problem = name_problem("template", host.template) if line is not None else None
    if problem:
        problems.error(problem, line.pos)
    line = eff.line("vcpus")
    if line is not None and whole_number(line.value, 1, MAX_VCPUS) is None:
        problems.error(f"vcpus must be a number from 1 to {MAX_VCPUS}, not '{shown(line.value)}'", line.pos)


def check_defaults(project: Project, defaults: dict, hypervisors: list[str], problems: Problems) -> None:
    """The defaults of mln.conf that hosts use, once (not once per host)."""
    used = {key for h in project.hosts.values() for key, v in h.defaults.items() if v == "default"}
    template = defaults.get("default_template", "")
    if "template" in used and name_problem("template", template):
        problems.error(f"default_template: {name_problem('template', template)}", "mln.conf")
    hv = defaults.get("default_hypervisor", "uml")
    if "hypervisor" in used and hv not in hypervisors:
        problems.error(f"unknown default_hypervisor '{shown(hv)}' (known: {', '.join(sorted(hypervisors))})",
                       "mln.conf")


def build_switch(name: str, block: Block, project: str) -> Switch:
    return Switch(name=name, project=project, service_host=block.get("service_host"), tree=block)
