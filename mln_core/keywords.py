"""The keyword registry: which keywords and blocks exist, and who declared them.

Contexts name where a keyword may stand: ``global``, ``host`` (hosts and superclasses),
``network`` (a host's ``network IFACE`` block), ``switch``, ``root`` (top level), and for
a block with checked contents ``<context>.<block>`` (``global.autoenum``).

Block contents:

* ``keywords``: its lines are keywords of the context ``<context>.<block>``;
* ``lines``: free lines (``startup``, ``users``); merged as a union with superclasses;
* ``free``: anything goes (plugin blocks such as ``apache``); merged like keywords.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import MlnError, Problems
from .lang.parser import Document
from .lang.tree import Block
from .merge import LINE_BLOCKS


@dataclass
class Keyword:
    """A keyword or block a plugin (or the core) accepts in a context."""

    context: str
    name: str
    help: str = ""
    plugin: str = "core"
    block: str | None = None  # None for a keyword line; "keywords" | "lines" | "free" for a block
    no_effect: str | None = None  # accepted (the original's language) but not acted on: why
    secret: bool = False          # its value is a secret (a password): never printed or readable by others
    secret_word: int | None = None  # a block of lines: the index of each line's secret word (users: 1)


@dataclass
class Hypervisor:
    """A hypervisor a backend provides: its name, flags and disk formats."""

    name: str
    flags: tuple[str, ...]
    plugin: str = "core"
    disk_formats: tuple[str, ...] = ("raw",)
    nic_kinds: tuple[str, ...] = ()   # interface kinds besides a switch it provides: "slirp", "tun"


@dataclass(repr=False, eq=False)
class KeywordRegistry:
    """Every keyword, block and hypervisor, with the plugin that declared it."""

    entries: dict[str, dict[str, Keyword]] = field(default_factory=dict)
    hypervisors: dict[str, Hypervisor] = field(default_factory=dict)
    current_plugin: str = "core"

    def keyword(self, context: str, name: str, help: str = "", no_effect: str | None = None,
                secret: bool = False) -> None:
        """Declare a keyword line; ``no_effect`` says why a keyword of the original's language
        is accepted but does nothing here (``check`` then warns once where it is used);
        ``secret``: its value is a secret such as a password (see :mod:`mln_core.private`).
        A keyword another plugin (or the core) declared already is refused."""
        self._claim(context, name, "keyword")
        self.entries.setdefault(context, {})[name] = Keyword(context, name, help, self.current_plugin,
                                                             no_effect=no_effect, secret=secret)

    def block(self, context: str, name: str, contents: str = "free", help: str = "",
              secret_word: int | None = None) -> None:
        """Declare a block; ``secret_word`` (a block of ``lines``): the index of the word of
        each line that is a secret (``users``: 1, the password after the user name)."""
        if contents not in ("keywords", "lines", "free"):
            raise ValueError(f"block contents must be keywords, lines or free, not {contents!r}")
        if secret_word is not None and contents != "lines":
            raise ValueError("secret_word is for a block of lines")
        self._claim(context, name, "block")
        self.entries.setdefault(context, {})[name] = Keyword(context, name, help, self.current_plugin,
                                                             contents, secret_word=secret_word)

    def _claim(self, context: str, name: str, what: str) -> None:
        old = self.entries.get(context, {}).get(name)
        if old is not None and old.plugin != self.current_plugin:
            raise MlnError(f"plugin '{self.current_plugin}' declares the {context} {what} '{name}', which "
                           f"{_who(old.plugin)} declares already: two plugins cannot own one name")

    def hypervisor(self, name: str, flags: tuple[str, ...] = (), help: str = "",
                   disk_formats: tuple[str, ...] | None = None,
                   nic_kinds: tuple[str, ...] | None = None) -> None:
        """Declare a hypervisor; any of ``flags`` in a host selects it (default: its name).

        ``disk_formats``: the disk formats it boots, preferred first ("qcow2", "raw", "vmdk");
        storage plugins make the first one they can. Declaring a known hypervisor again
        (as its backend does) keeps the flags and updates the formats. ``nic_kinds``: the
        interface kinds besides a switch its guests can have ("slirp", "tun"; see
        :mod:`mln_core.nickinds`), which ``check`` holds the project to."""
        flags = tuple(flags) or (name,)
        old = self.hypervisors.get(name)
        if old is not None and old.plugin not in ("core", self.current_plugin):
            raise MlnError(f"plugin '{self.current_plugin}' declares the hypervisor '{name}', which "
                           f"{_who(old.plugin)} declares already: two plugins cannot own one name")
        if disk_formats is None:
            disk_formats = old.disk_formats if old else ("raw",)
        if nic_kinds is None:
            nic_kinds = old.nic_kinds if old else ()
        self.hypervisors[name] = Hypervisor(name, flags, self.current_plugin, tuple(disk_formats),
                                            tuple(nic_kinds))
        for f in flags:
            known = self.entries.get("host", {}).get(f)
            if known is not None and known.plugin == "core" and old is not None and old.plugin == "core":
                del self.entries["host"][f]    # the backend takes over the core's declaration of its flags
            self.keyword("host", f, help or f"build this host for {name}")

    def lookup(self, context: str, name: str) -> Keyword | None:
        return self.entries.get(context, {}).get(name)

    def line_blocks(self) -> frozenset[str]:
        names = {k.name for ctx in self.entries.values() for k in ctx.values() if k.block == "lines"}
        return frozenset(names | LINE_BLOCKS)

    def hypervisor_flags(self) -> dict[str, str]:
        return {f: h.name for h in self.hypervisors.values() for f in h.flags}

    # -- checking ----------------------------------------------------------------------
    def check(self, doc: Document, problems: Problems) -> None:
        """Warn about every keyword and block that nobody declared, and once about each
        keyword that is accepted but has no effect."""
        root = doc.root
        no_effect: dict[tuple[str, str], list] = {}
        for key, child in root.blocks.items():
            if child.container:
                ctx = {"host": "host", "superclass": "host", "switch": "switch"}.get(child.kind)
                for named in child.blocks.values():
                    self._check_block(named, ctx, problems, no_effect)
            else:
                spec = self.lookup("root", key)
                if spec is None:
                    self._unknown("block", key, "root", child, problems, "at the top level")
                elif spec.block == "keywords":
                    self._check_block(child, f"root.{key}" if key != "global" else "global", problems,
                                      no_effect)
        for (name, why), lines in no_effect.items():
            more = f" (and {len(lines) - 1} more line{'s' * (len(lines) > 2)})" if len(lines) > 1 else ""
            first = min(lines, key=lambda ln: (ln.pos.file, ln.pos.line, ln.pos.col)).pos
            problems.warn(f"'{name}' has no effect in this version{more}: {why}", first)

    def _check_block(self, block: Block, ctx: str, problems: Problems, no_effect: dict) -> None:
        where = f"in {block.label}"
        for line in block.lines:
            kw = line.words[0]
            if kw.startswith("$"):
                continue
            spec = self.lookup(ctx, kw)
            if spec is None:
                self._unknown("keyword", kw, ctx, line, problems, where)
            elif spec.no_effect:
                no_effect.setdefault((kw, spec.no_effect), []).append(line)
        for key, child in block.blocks.items():
            if child.container:
                sub_ctx = "network" if child.kind == "network" and ctx == "host" else f"{ctx}.{child.kind}"
                spec = self.lookup(ctx, child.kind)
                if spec is None and sub_ctx != "network":
                    self._unknown("block", child.kind, ctx, child, problems, where)
                    continue
                for named in child.blocks.values():
                    self._check_block(named, sub_ctx, problems, no_effect)
                continue
            spec = self.lookup(ctx, key)
            if spec is None or spec.block is None:
                self._unknown("block", key, ctx, child, problems, where)
            elif spec.block == "keywords":
                self._check_block(child, f"{ctx}.{key}", problems, no_effect)

    def _unknown(self, what: str, name: str, ctx: str, node, problems: Problems, where: str) -> None:
        import difflib
        known = list(self.entries.get(ctx, {}))
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.warn(f"unknown {what} '{name}' {where}{hint}", node.pos)


def _who(plugin: str) -> str:
    return "the core" if plugin == "core" else f"plugin '{plugin}'"


def core_keywords(reg: KeywordRegistry) -> None:
    """The keywords of the MLN language that the core itself gives meaning to."""
    reg.current_plugin = "core"
    reg.block("root", "global", "keywords", "project-wide settings")
    reg.block("root", "copies", "free", "the table of a class's copies: one line per copy (mln class; "
              "building the file as one project ignores it)")
    reg.keyword("global", "project", "the project name (required)")
    reg.keyword("global", "project_password", "lets a daemon accept upgrades from this project", secret=True)
    for hook in ("beforeProjectStart", "beforeHostsStart", "afterHostsStart", "afterProjectStart",
                 "beforeProjectStop", "beforeHostsStop", "afterHostsStop", "afterProjectStop"):
        reg.block("global", hook, "lines", "shell lines run at that point of start/stop")
    host = {
        "superclass": "inherit from this superclass",
        "template": "filesystem template the disk is made from",
        "memory": "RAM, e.g. 128M",
        "size": "disk size, e.g. 2G",
        "free_space": "disk = template size + this (overrides size)",
        "swap": "size of a swap disk",
        "boot_order": "start order 1..99 (low first); stop runs in reverse",
        "kernel": "kernel for UML/QEMU/Xen guests",
        "ramdisk": "initial ramdisk",
        "family": "guest OS family, normally detected from the image",
        "root_passwd": "root password (a crypt hash is installed as-is)",
        "root_password": "alias of root_passwd",
        "nameserver": "written to /etc/resolv.conf",
        "hypervisor": "the hypervisor backend by name (instead of a flag such as xen)",
        "vcpus": "number of virtual CPUs",
        "extra": "extra kernel command line arguments",
    }
    for name, text in host.items():
        reg.keyword("host", name, text, secret=name in ("root_passwd", "root_password"))
    reg.keyword("host", "service_host", "the server that builds and runs this host (mln.conf 'server' lines)")
    reg.keyword("host", "location", "alias of service_host")
    console = ("no terminal is opened at start: 'mln console' attaches to a guest's console, which is also "
               "written to hosts/<host>/console.log")
    as_caller = "guests run as the user who runs mln"
    for name, text, why in (
            ("term", "console: xterm, screen or none", console),
            ("color", "xterm foreground colour", console),
            ("owner", "owner of the host's files and process", as_caller),
            ("group", "group of the host's files", as_caller),
            ("sudo", "run the host as this user", as_caller)):
        reg.keyword("host", name, text, no_effect=why)
    reg.block("host", "users", "lines", "users: name passwordhash [homedir] [uid]", secret_word=1)
    for name, text in {
                       "startup": "shell lines run at the end of boot",
                       "shutdown": "shell lines run at shutdown",
                       "modules": "kernel modules to load at boot",
                       "files": "files to copy: source destination [mode]",
                       "mount": "extra disks: source mountpoint fstype [options]"}.items():
        reg.block("host", name, "lines", text)
    reg.block("host", "groups", "free", "groups: a block per group listing its users")
    reg.block("host", "network", "keywords", "a network interface: network eth0 { ... }")
    for name, text in {"switch": "the project switch this interface is on",
                       "address": "static address, or dhcp",
                       "netmask": "netmask", "broadcast": "broadcast address",
                       "gateway": "default gateway", "mac": "fixed MAC address",
                       "auto": "'no' to leave the interface down at boot",
                       "slirp": "user-mode networking (NAT in the hypervisor's process) instead of a switch; "
                                "'slirp restrict' (QEMU) isolates the guest",
                       "tun_iface": "a tap device on the managing host for this interface (UML, QEMU)",
                       "tun_address": "the address of the tun_iface tap on the managing host"}.items():
        reg.keyword("network", name, text)
    reg.keyword("switch", "service_host", "a server that also has this switch (its hosts' servers have it)")
    reg.block("switch", "hosts", "free", "filled in automatically: which hosts are on the switch")
    reg.hypervisor("uml", ("uml",), "User-Mode Linux (the default)")
    reg.hypervisor("qemu", ("qemu", "kvm"), "QEMU with KVM, or TCG where KVM does not work")
    reg.hypervisor("xen", ("xen", "hvm"), "Xen PV, or HVM with hvm")
    reg.hypervisor("vmware", ("vmware",), "VMware")
