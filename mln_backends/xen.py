"""Hypervisor backend ``xen`` (keywords ``xen``, and ``hvm`` for full virtualization): Xen
guests run with the ``xl`` toolstack (spec 7.1, 7.2; ``xl`` instead of the original's ``xm``,
spec 8.3 item 6).

Build writes ``<project>/<host>_xen.cfg`` (PV) or ``<project>/<host>_xen.hvm`` (HVM) from
the Jinja templates ``templates/xen_pv.cfg.j2`` and ``templates/xen_hvm.cfg.j2``; ``mln
start`` runs ``xl create <file>`` in the project directory (``xl restore
hosts/<host>/<host>.ram`` when a saved state exists; the file is deleted once the guest
runs again), ``mln stop`` runs ``xl shutdown <host>.<project>`` (``xl destroy`` with
``-H``; HVM guests ``xl shutdown -F``, the ACPI power button, for guests without PV
drivers), ``mln stop -S`` runs ``xl save <host>.<project>
<project>/hosts/<host>/<host>.ram.part`` and renames the file to ``<host>.ram`` when xl
succeeded (``save``), ``mln status`` asks ``xl list <host>.<project>`` (exit 0: up; paused,
crashed, shutting down and dying domains are "up" with that detail; a host that is down
with a saved state is "down: saved"). Every command goes through ``ctx.run``. ``migrate(host,
target, ctx)`` (``xl migrate``) is a helper for a command that does not exist yet.

Decisions (see also docs and the golden files in ``tests/xen/golden``):

* **Disks and devices.** Every mln disk is a *filesystem* image, so it is given to a PV
  guest as a partition-style VBD, as xen-vbd-interface(7) says for storage managed by the
  host: root ``xvda1``, swap ``xvda2`` (the slot is kept when there is no swap, so that data
  disks never move), each disk ``mount`` ``xvda3``, ``xvda4``... (spec 7.1 with Xen 4 names;
  the original's hda1/hda2/hda3.. numbering). The guest's fstab (written by guestconfig from
  ``mln_guest_devices``) uses the very same names, one device per mount (the original gave
  every mount ``hda3``, bug 7). Mounts of network or pseudo filesystems (nfs, cifs, tmpfs...)
  are no disks: fstab keeps their source. HVM guests get whole disks: ``hda`` for the root
  image, then ``hdb``... for swap and mounts (at most 4 IDE disks). Targets are absolute:
  ``phy:`` for paths under ``/dev/`` (LVM volumes), ``file:`` otherwise, relative paths
  resolved against the project's final directory (xl 4.17 accepts these prefixes as
  deprecated and ignores them: it picks the backend itself; the disk format is raw).
* **Kernel (PV).** ``kernel``/``ramdisk`` of the host, else ``xen_kernel``/``xen_ramdisk``
  of mln.conf (the mln.conf ramdisk is not combined with a host's own kernel). There is no
  guessed default (the original's ``/boot/vmlinuz-$(uname -r)`` is the dom0 kernel of the
  machine that builds, not necessarily one that boots the guest): without a kernel the build
  fails with "missing kernel", unless a ``xen_extra`` line sets ``bootloader`` (pygrub).
  The command line is ``root=/dev/xvda1`` plus ``extra = "console=hvc0 <host extra>"``.
  HVM guests boot their own disk (``boot = "c"``, hvmloader is xl's default).
* **Network.** ``vif`` entries in interface order (eth0, eth2 stays eth2's entry: bug 15),
  each with ``bridge=`` of its switch, an explicit ``bridge NAME``, else ``xen_bridge`` of
  mln.conf (default ``xenbr0``); ``mac=`` the given one, else a stable one with Xen's OUI
  00:16:3e derived from project, host and interface (a random MAC on every boot renames
  interfaces in guests with persistent-net rules). HVM vifs are ``type=ioemu``.
* **Switches.** A switch without ``type``/``hub`` that a Xen host is on becomes a Linux
  bridge (spec 7.5): this plugin answers ``mln_build_switch`` first with the ``bridge``
  plugin's record, and the ``bridge`` plugin starts, stops and removes it. Bridge names are
  the bridge plugin's (``<switch>.<project>`` when it fits in 15 characters, else a
  shortened name with a hash). Xen's hotplug script puts the vifs on the bridge; mln makes
  no tap devices for Xen guests.
* **VNC** lines only when a VNC keyword is given (bug 6): for PV a ``vfb`` device, for HVM
  the emulated display (always ``vnc = 1``: it is an HVM guest's console) with
  ``vncdisplay``/``vncunused = 0``, ``vncpasswd`` (alias ``vncpassword``; only root may
  read a file with a password in it; ``mln check`` warns that VNC uses only 8 characters),
  ``keymap`` (from ``vnckeymap``).
* ``xen_extra`` lines are copied verbatim at the end, so they can override any generated
  setting (xl uses the last one); lines with ``=`` are kept (bug 5).
* **Guest (PV only).** A getty on ``hvc0`` in ``/etc/inittab`` for sysvinit guests (an
  existing hvc0 line is replaced; systemd guests get one from systemd's getty generator,
  busybox guests run their console shell on /dev/console = hvc0), and ``hvc0`` in
  ``/etc/securetty`` when that file exists. A guest whose interfaces have a gap (eth0 and
  eth2) would call its second vif eth1: a udev rule per MAC gives it its configured name.
  The original's copying of dom0's kernel modules into the guest is not done (the guest's
  kernel is the configured one; put its modules in the template).

mln.conf: ``xen_kernel``, ``xen_ramdisk``, ``xen_bridge``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil

import jinja2

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem

from .runtime import IFNAMSIZ, mac_address, saved_state_path
from .switch_bridge import bridge_name

NAME = "xen"
XL = "xl"
XEN_OUI = "00:16:3e"
LINUX = ("debian", "redhat", "suse", "busybox")
#: mount types that are no block device: fstab keeps their source, the guest gets no disk
NOT_DISK_FS = frozenset({"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "tmpfs", "proc", "sysfs", "devpts",
                         "sshfs", "fuse.sshfs", "glusterfs", "ceph", "virtiofs", "none"})
HVM_DISKS = ("hda", "hdb", "hdc", "hdd")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_env: jinja2.Environment | None = None


# ---------------------------------------------------------------------------------------
# keywords and helpers
# ---------------------------------------------------------------------------------------

@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("xen", "hvm"), "Xen PV guests with the xl toolstack; hvm: fully virtualized",
                        disk_formats=("raw",))
    registry.keyword("host", "vcpus", "number of virtual CPUs")
    registry.keyword("host", "cpus", "Xen: host CPUs the guest may run on (xl cpus, e.g. 0-3)")
    registry.keyword("host", "vncdisplay", "Xen: VNC display number (port 5900+N)")
    registry.keyword("host", "vncpasswd", "Xen: VNC password")
    registry.keyword("host", "vncpassword", "alias of vncpasswd")
    registry.keyword("host", "vnckeymap", "Xen: keymap of the VNC display (e.g. de)")
    registry.keyword("host", "extra", "extra kernel command line arguments")
    registry.block("host", "xen_extra", "lines", "lines copied verbatim into the Xen configuration file")
    registry.keyword("network", "bridge", "Xen: put this interface on an existing host bridge (e.g. xenbr0)")


def _mine(host) -> bool:
    return host.hypervisor == NAME


def is_hvm(host) -> bool:
    return host.tree is not None and host.tree.has("hvm")


def _get(host, key: str) -> str | None:
    return host.tree.get(key) if host.tree is not None else None


def _pos(host, key: str):
    line = host.tree.line(key) if host.tree is not None else None
    return line.pos if line is not None else f"host {host.name}"


def cfg_name(host) -> str:
    return f"{host.name}_xen.hvm" if is_hvm(host) else f"{host.name}_xen.cfg"


def _xen_extra(host) -> list[str]:
    b = host.tree.block("xen_extra") if host.tree is not None else None
    return b.line_texts() if b is not None else []


def _has_bootloader(host) -> bool:
    return any(re.match(r"bootloader\s*=", line) for line in _xen_extra(host))


def _disk_mounts(host) -> list:
    """The mounts that are disks (not network or pseudo filesystems), in file order."""
    return [m for m in host.mounts if m.fstype not in NOT_DISK_FS and m.fstype != "hostfs"]


def _vdevs(host) -> dict:
    """Device names: {"root": vdev, "swap": vdev or None, "mounts": {id(mount): vdev}}."""
    disks = _disk_mounts(host)
    if is_hvm(host):
        names = iter(HVM_DISKS[1:])
        swap = next(names, None) if host.swap else None
        mounts = {id(m): next(names, None) for m in disks}
        return {"root": HVM_DISKS[0], "swap": swap, "mounts": mounts}
    return {"root": "xvda1", "swap": "xvda2", "mounts": {id(m): f"xvda{3 + n}" for n, m in enumerate(disks)}}


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    v = _vdevs(host)
    if is_hvm(host):
        # Linux with PV-on-HVM drivers sees hdX as /dev/xvdX; guestconfig writes no fstab for hvm
        dev = lambda name: f"/dev/xvd{name[2:]}" if name else None  # noqa: E731
        console = "ttyS0"
    else:
        dev = lambda name: f"/dev/{name}" if name else None  # noqa: E731
        console = "hvc0"
    return {"root": dev(v["root"]), "swap": dev(v["swap"]),
            "extra": [dev(v["mounts"][id(m)]) if id(m) in v["mounts"] else m.source for m in host.mounts],
            "console": console}


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

def explicit_switch_kind(switch) -> str | None:
    """The kind a switch asks for itself (``type X`` or ``hub``), None for a plain switch."""
    if switch.tree is None:
        return None
    if switch.tree.has("hub"):
        return "hub"
    return switch.tree.get("type")


def _host_problems(host, project) -> list[Problem]:
    out: list[Problem] = []

    def err(msg, where):
        out.append(Problem("error", f"host {host.name}: {msg}", where))

    for key in ("vcpus", "vncdisplay"):
        value = _get(host, key)
        if value is not None and not (value.isdigit() and (int(value) >= 1 or key == "vncdisplay")):
            err(f"{key} must be a number{' of at least 1' if key == 'vcpus' else ''}, not '{value}'",
                _pos(host, key))
    pw = _vnc_password(host)
    if pw is not None and len(pw) > 8:
        out.append(Problem("warning", f"host {host.name}: the VNC server uses only the first 8 characters of "
                           "the VNC password", _pos(host, "vncpasswd" if _get(host, "vncpasswd") is not None
                                                    else "vncpassword")))
    if pw is not None and not is_hvm(host) and "," in pw:
        err("a PV guest's VNC password cannot contain a comma (it goes into a vfb device string)",
            _pos(host, "vncpasswd" if _get(host, "vncpasswd") is not None else "vncpassword"))
    for i in host.interfaces:
        where = i.tree.pos if i.tree is not None else f"host {host.name}"
        if i.switch and i.switch.startswith("/"):
            err(f"{i.name}: a Xen guest cannot join the socket {i.switch} (that is for UML); "
                "use a project switch or 'bridge NAME'", where)
        elif i.switch and i.switch in project.switches:
            kind = explicit_switch_kind(project.switches[i.switch])
            if kind not in (None, "bridge"):
                err(f"{i.name}: switch '{i.switch}' is of type {kind}, but Xen guests join Linux bridges; "
                    "remove its type line or write 'type bridge'", where)
        if i.bridge and not _IFNAME.match(i.bridge):
            err(f"{i.name}: bridge '{i.bridge}' is not a network interface name "
                f"(at most {IFNAMSIZ} letters, digits, '.', '-', '_')", where)
        if i.switch and i.bridge:
            out.append(Problem("warning", f"host {host.name} {i.name}: both 'switch' and 'bridge' are given; "
                               f"the interface goes on switch {i.switch}'s bridge", where))
    disks = _disk_mounts(host)
    for m in host.mounts:
        where = _pos(host, "mount")
        if m.fstype == "hostfs":
            err(f"mount {m.mountpoint}: hostfs exists only for UML guests", where)
        elif m in disks and not os.path.isabs(m.source):
            err(f"mount {m.mountpoint}: the source of a disk mount must be an absolute path of an image "
                f"file or a device, not '{m.source}'", where)
        elif m in disks and ("," in m.source or "\n" in m.source):
            err(f"mount {m.mountpoint}: a comma in '{m.source}' cannot be written in a Xen disk line", where)
    if is_hvm(host) and 1 + bool(host.swap) + len(disks) > len(HVM_DISKS):
        err(f"an HVM guest takes at most {len(HVM_DISKS)} IDE disks (root, swap and mount disks: "
            f"{1 + bool(host.swap) + len(disks)})", _pos(host, "hvm"))
    return out


@hookimpl
def mln_validate(project, ctx):
    out: list[Problem] = []
    for host in project.hosts.values():
        if _mine(host):
            out += _host_problems(host, project)
    return out


# ---------------------------------------------------------------------------------------
# switches: a plain switch with Xen hosts on it is a Linux bridge
# ---------------------------------------------------------------------------------------

def has_xen_members(switch, project) -> bool:
    return any(h in project.hosts and _mine(project.hosts[h]) for h, _ in switch.members)


@hookimpl(tryfirst=True)
def mln_build_switch(switch, ctx):
    project = ctx.project
    if project is None or explicit_switch_kind(switch) is not None or not has_xen_members(switch, project):
        return None
    # the record of the bridge plugin (switch_bridge), which starts and stops it
    return {"kind": "bridge", "bridge": bridge_name(switch), "for": "xen"}


# ---------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------

def xl_quote(value) -> str:
    """A double-quoted string of the xl configuration language (libxlutil dequotes \\\\ and \\")."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise MlnError(f"a Xen configuration value cannot contain a line break: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=True, autoescape=False)
        _env.filters["xq"] = xl_quote
    return _env


def final_project_dir(host, ctx) -> str:
    """Where the project directory will be when the build is done (not the staging dir)."""
    store = getattr(ctx, "store", None)
    return store.project_dir(host.project) if store is not None else ctx.project_dir


def _disk_spec(path: str, vdev: str) -> str:
    if "," in path:
        raise MlnError(f"the disk path {path} contains a comma, which a Xen disk line cannot hold")
    prefix = "phy:" if path.startswith("/dev/") else "file:"
    return f"{prefix}{path},{vdev},w"


def disk_specs(host, disk, ctx) -> list[str]:
    """The ``disk`` list: root, swap, disk mounts, with absolute targets."""
    base = final_project_dir(host, ctx)

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    v = _vdevs(host)
    specs = [_disk_spec(absolute(disk.path), v["root"])]
    swap = (disk.extra or {}).get("swap")
    if swap and v["swap"]:
        specs.append(_disk_spec(absolute(swap), v["swap"]))
    for m in _disk_mounts(host):
        vdev = v["mounts"].get(id(m))
        if vdev is None:
            raise MlnError(f"mount {m.mountpoint}: no disk slot left (an HVM guest takes "
                           f"{len(HVM_DISKS)} disks)")
        specs.append(_disk_spec(absolute(m.source), vdev))
    return specs


def _bridge_for(host, iface, ctx) -> str:
    if iface.switch:
        project = ctx.project
        switch = project.switches.get(iface.switch) if project is not None else None
        if switch is None:
            raise MlnError(f"{iface.name}: switch '{iface.switch}' is not a switch of the project")
        st = ctx.state.get("switches", {}).get(switch.name, {})
        if st.get("kind") == "bridge" and st.get("bridge"):
            return st["bridge"]
        if not st:
            return bridge_name(switch)
        raise MlnError(f"{iface.name}: switch '{iface.switch}' is a {st.get('kind')} switch, but Xen guests "
                       "join Linux bridges; remove its type line or write 'type bridge'")
    if iface.bridge:
        return iface.bridge
    return ctx.config.get("xen_bridge") or "xenbr0"


def vif_mac(host, iface) -> str:
    """The given MAC, else a stable one with Xen's OUI (not a new random one at every boot)."""
    return iface.mac or mac_address(XEN_OUI, host.project, host.name, iface.name)


def vif_specs(host, ctx) -> list[str]:
    out = []
    for i in sorted(host.interfaces, key=lambda i: i.index):
        mac = vif_mac(host, i)
        parts = ["type=ioemu"] if is_hvm(host) else []
        parts += [f"bridge={_bridge_for(host, i, ctx)}", f"mac={mac}"]
        out.append(",".join(parts))
    return out


def _vnc_password(host) -> str | None:
    pw = _get(host, "vncpasswd")
    return pw if pw is not None else _get(host, "vncpassword")


def _kernel(host, ctx) -> tuple[str | None, str | None]:
    kernel = host.kernel or ctx.config.get("xen_kernel")
    ramdisk = host.ramdisk or (ctx.config.get("xen_ramdisk") if not host.kernel else None)
    if kernel is None:
        if _has_bootloader(host):
            return None, None
        raise MlnError("missing kernel: a Xen PV guest boots a kernel from dom0; set 'kernel PATH' in the "
                       "host, or 'xen_kernel PATH' (and 'xen_ramdisk PATH') in mln.conf, or a "
                       "'bootloader = \"pygrub\"' line in xen_extra")
    for path, what, key in ((kernel, "kernel", "xen_kernel"), (ramdisk, "ramdisk", "xen_ramdisk")):
        if path is not None and not os.path.isfile(path):
            raise MlnError(f"missing {what}: {path} does not exist (from "
                           f"{'the host' if getattr(host, what) else 'mln.conf ' + key})")
    return kernel, ramdisk


def render(host, disk, ctx) -> str:
    """The text of the host's xl configuration file."""
    if disk.format != "raw":
        raise MlnError(f"Xen guests boot raw disks, not {disk.format}")
    vcpus = _get(host, "vcpus")
    if vcpus is not None and not (vcpus.isdigit() and int(vcpus) >= 1):
        raise MlnError(f"vcpus must be a number of at least 1, not '{vcpus}'")
    vncdisplay = _get(host, "vncdisplay")
    if vncdisplay is not None and not vncdisplay.isdigit():
        raise MlnError(f"vncdisplay must be a number, not '{vncdisplay}'")
    values = {
        "host": host.name, "project": host.project, "cfg": cfg_name(host), "name": host.fqname,
        "memory": max(16, host.memory // 2**20), "vcpus": int(vcpus) if vcpus else None,
        "cpus": _get(host, "cpus"), "disks": disk_specs(host, disk, ctx), "vifs": vif_specs(host, ctx),
        "xen_extra": _xen_extra(host),
    }
    pw = _vnc_password(host)
    keymap = _get(host, "vnckeymap")
    if is_hvm(host):
        values.update(vncdisplay=int(vncdisplay) if vncdisplay is not None else None, vncpasswd=pw,
                      keymap=keymap)
        return _environment().get_template("xen_hvm.cfg.j2").render(**values)
    kernel, ramdisk = _kernel(host, ctx)
    vfb = None
    if vncdisplay is not None or pw is not None or keymap is not None:
        parts = ["vnc=1"]
        if vncdisplay is not None:
            parts += [f"vncdisplay={int(vncdisplay)}", "vncunused=0"]
        if pw is not None:
            if "," in pw:
                raise MlnError("a PV guest's VNC password cannot contain a comma")
            parts.append(f"vncpasswd={pw}")
        if keymap is not None:
            if "," in keymap:
                raise MlnError(f"vnckeymap '{keymap}' cannot contain a comma")
            parts.append(f"keymap={keymap}")
        vfb = ",".join(parts)
    devices = mln_guest_devices(host, ctx)
    extra = " ".join(x for x in ("console=hvc0", _get(host, "extra")) if x)
    values.update(kernel=kernel, ramdisk=ramdisk, root=devices["root"], extra=extra, vfb=vfb)
    return _environment().get_template("xen_pv.cfg.j2").render(**values)


@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    text = render(host, disk, ctx)
    name = cfg_name(host)
    path = ctx.path(name)
    # a VNC password is in the file: only root may read it then
    mode = 0o600 if _vnc_password(host) is not None else 0o644
    fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path + ".part", mode)
    os.replace(path + ".part", path)
    return {"cfg": name, "type": "hvm" if is_hvm(host) else "pv", "domain": host.fqname}


# ---------------------------------------------------------------------------------------
# guest image (PV): a console on hvc0
# ---------------------------------------------------------------------------------------

def _getty(guest) -> str:
    for path, args in (("/sbin/getty", "38400 hvc0"), ("/sbin/agetty", "38400 hvc0 vt100"),
                       ("/sbin/mingetty", "hvc0")):
        if guest.exists(path):
            return f"{path} {args}"
    return "/sbin/getty 38400 hvc0"


def xen_inittab(text: str, getty: str) -> str:
    """``text`` with mln's hvc0 getty at the end; other lines running a getty on hvc0 go."""
    from mln_plugins.guestconfig import set_section
    lines = set_section(text, "xen-console", None).splitlines()

    def runs_on_hvc0(line: str) -> bool:
        fields = line.split(":", 3)
        return len(fields) == 4 and not line.lstrip().startswith("#") and "hvc0" in fields[3].split()

    kept = [line for line in lines if not runs_on_hvc0(line)]
    return set_section("".join(line + "\n" for line in kept), "xen-console", f"hvc:2345:respawn:{getty}")


@hookimpl
def mln_configure_image(host, guest, ctx):
    if not _mine(host) or is_hvm(host):
        return
    family = getattr(guest, "family", None)
    if family not in LINUX or family == "busybox":
        return
    from mln_plugins.guestconfig import set_section
    inittab = guest.read_text("/etc/inittab")
    if inittab is not None:
        new = xen_inittab(inittab, _getty(guest))
        if new != inittab:
            guest.write_text("/etc/inittab", new)
    securetty = guest.read_text("/etc/securetty")
    if securetty is not None:
        outside = set_section(securetty, "xen-console", None)
        new = set_section(securetty, "xen-console", None if "hvc0" in outside.split() else "hvc0")
        if new != securetty:
            guest.write_text("/etc/securetty", new, 0o600 if family == "redhat" else 0o644)
    _interface_names(host, guest)


NET_RULES = "/etc/udev/rules.d/70-mln-xen-net.rules"


def _interface_names(host, guest) -> None:
    """The guest names its vifs eth0, eth1... in list order; when the project file leaves a
    gap (eth0 and eth2), a udev rule per MAC gives each interface the name it was configured
    under."""
    indices = [i.index for i in sorted(host.interfaces, key=lambda i: i.index)]
    if indices == list(range(len(indices))):
        guest.remove(NET_RULES)
        return
    lines = ["# Written by mln: this Xen guest's interfaces are not numbered from eth0 without gaps,",
             "# so each vif is named after its MAC as in the project file."]
    lines += [f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{vif_mac(host, i)}", NAME="{i.name}"'
              for i in sorted(host.interfaces, key=lambda i: i.index)]
    guest.write_text(NET_RULES, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# run: everything through xl
# ---------------------------------------------------------------------------------------

def _what(host, verb: str) -> str:
    return f"{verb} Xen guest {host.fqname}"


def _need_xl() -> None:
    if shutil.which(XL) is None:
        raise MlnError("xl is not installed: Xen guests run on a Xen dom0 with the xl toolstack "
                       "(Debian package xen-utils)")


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    _need_xl()
    backend = ctx.host_state(host).get("backend", {})
    cfg = backend.get("cfg") or cfg_name(host)
    ram = saved_state_path(host, ctx)
    if os.path.exists(ram):
        try:
            ctx.run([XL, "restore", os.path.relpath(ram, ctx.project_dir)], what=_what(host, "restore"),
                    cwd=ctx.project_dir, timeout=900)
        except MlnError as e:
            raise MlnError(f"{e.message}; the saved state {ram} is kept: delete it to boot the host "
                           "afresh") from None
        os.unlink(ram)
        return True
    if not os.path.exists(ctx.path(cfg)):
        raise MlnError(f"{ctx.path(cfg)} is missing; run 'mln build' again")
    ctx.run([XL, "create", cfg], what=_what(host, "create"), cwd=ctx.project_dir)
    return True


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    _need_xl()
    if hard:
        argv = [XL, "destroy", host.fqname]
    else:   # an HVM guest without PV drivers only reacts to the ACPI power button (-F)
        argv = [XL, "shutdown"] + (["-F"] if is_hvm(host) else []) + [host.fqname]
    ctx.run(argv, what=_what(host, "stop"))
    return True


STATES = {"p": "paused", "c": "crashed", "s": "shutting down", "d": "dying"}


def domain_state(host, ctx) -> str | None:
    """The xl state letters of the host's domain (``-b----``), or None if it does not exist."""
    if shutil.which(XL) is None:
        return None       # no Xen toolstack here: nothing of ours can be running
    p = ctx.run([XL, "list", host.fqname], what=_what(host, "status"), check=False, timeout=60)
    if p.returncode != 0:
        return None
    for line in p.stdout.decode(errors="replace").splitlines():
        w = line.split()
        if w and w[0] == host.fqname:
            return w[4] if len(w) > 4 else ""
    return ""


@hookimpl
def mln_save_host(host, ctx):
    if not _mine(host):
        return None
    save(host, ctx)
    return True


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    state = domain_state(host, ctx)
    if state is None:
        return "down: saved" if os.path.exists(saved_state_path(host, ctx)) else "down"
    detail = [text for letter, text in STATES.items() if letter in state]
    return f"up: {', '.join(detail)}" if detail else "up"


@hookimpl
def mln_remove_host(host, ctx):
    if _mine(host) and ctx.project_dir:
        ram = saved_state_path(host, ctx)
        if os.path.exists(ram):
            os.unlink(ram)


def save(host, ctx) -> str:
    """Suspend a running guest to ``<project>/hosts/<host>/<host>.ram`` (``mln stop -S``);
    the next start restores it. xl writes ``<ram>.part``, renamed when the save succeeded and
    deleted when it failed (xl keeps the guest running then), so no partial file is restored."""
    _need_xl()
    ctx.host_dir(host)
    ram = saved_state_path(host, ctx)
    try:
        ctx.run([XL, "save", host.fqname, ram + ".part"], what=_what(host, "save"), timeout=900)
        os.replace(ram + ".part", ram)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ram + ".part")
        raise
    return ram


def migrate(host, target: str, ctx, ssh: str | None = None) -> None:
    """Move a running guest to the dom0 ``target`` (``xl migrate``: live, over ssh by default;
    ``ssh`` replaces the ssh command). The disks must be shared (LVM on a SAN, NFS)."""
    _need_xl()
    argv = [XL, "migrate"] + (["-s", ssh] if ssh else []) + [host.fqname, target]
    ctx.run(argv, what=_what(host, f"migrate to {target}"), timeout=3600)


@hookimpl
def mln_doctor(ctx):
    found = tool(XL, "runs Xen guests", "xen-utils", hypervisor=NAME)
    if found["ok"] and not os.path.exists("/proc/xen/capabilities"):
        found.update(ok=False, detail=f"{found['detail']}, but this machine is not a Xen dom0 "
                     "(no /proc/xen/capabilities): configurations are written, guests cannot start",
                     remedy="run Xen hosts on a server booted into Xen")
    return [found]
