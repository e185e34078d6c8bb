"""Hypervisor backend ``xen`` (keywords ``xen``, and ``hvm`` for full virtualization): Xen
guests run with the ``xl`` toolstack (spec 7.1, 7.2; ``xl`` instead of the original's ``xm``,
spec 8.3 item 6).

Build writes ``<project>/<host>_xen.cfg`` (PV) or ``<project>/<host>_xen.hvm`` (HVM) from
the Jinja templates ``templates/xen_pv.cfg.j2`` and ``templates/xen_hvm.cfg.j2`` (the helper
module ``xen_config`` renders them; ``xen_guest`` makes the guest image edits); ``mln
start`` runs ``xl create <file>`` in the project directory (``xl restore
hosts/<host>/<host>.ram`` when a saved state exists; the file is deleted once the guest
runs again), ``mln stop`` runs ``xl shutdown <host>.<project>`` (``xl destroy`` with
``-H``; HVM guests ``xl shutdown -F``, the ACPI power button, for guests without PV
drivers), ``mln stop -S`` runs ``xl save <host>.<project>
<project>/hosts/<host>/<host>.ram.part`` and renames the file to ``<host>.ram`` when xl
succeeded (``save``), ``mln status`` asks ``xl list <host>.<project>`` (exit 0: up; paused,
crashed, shutting down and dying domains are "up" with that detail; a host that is down
with a saved state is "down: saved"). Every command goes through the host's machine
(``ctx.on(host).run``). ``mln upgrade`` moves a running host whose disk is on shared
storage (``san_path``) to another server live, with ``xl migrate`` (the helper module
``xen_migrate``: preconditions, the command, what is returned); any other moves cold.

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
  of mln.conf (the mln.conf ramdisk is not combined with a host's own kernel), else none
  when a ``xen_extra`` line sets ``bootloader`` (pygrub), else, as the original, the running
  dom0 kernel ``<xen_boot_dir>/vmlinuz-$(uname -r)`` (``xen_boot_dir`` of mln.conf, default
  ``/boot``) with its initrd (``initrd.img-<r>``, ``initrd-<r>.img`` or ``initramfs-<r>.img``;
  a host's ``ramdisk`` wins). ``mln check`` says so per host (an ``info`` line). When that
  file is missing, check warns and a build refuses: "missing kernel", naming the path and any other
  ``vmlinuz-*`` there: mln does not guess among other kernels (after an upgrade the newest
  one may not be the one the administrator tested; ``xen_kernel`` names it).
  The command line is ``root=/dev/xvda1`` plus ``extra = "console=hvc0 <host extra>"``.
  HVM guests boot their own disk (``boot = "c"``, hvmloader is xl's default).
* **Network.** ``vif`` entries in interface order (eth0, eth2 stays eth2's entry: bug 15),
  each with ``bridge=`` of its switch, an explicit ``bridge NAME``, else ``xen_bridge`` of
  mln.conf (default ``xenbr0``); ``mac=`` the given one, else a stable one with Xen's OUI
  00:16:3e derived from project, host and interface (a random MAC on every boot renames
  interfaces in guests with persistent-net rules). HVM vifs are ``type=ioemu``.
* **Switches.** A switch without ``type``/``hub`` that a Xen host is on becomes a Linux
  bridge (spec 7.5): this plugin answers ``mln_build_switch`` first with a bridge switch
  record, and the ``bridge`` plugin starts, stops and removes it. The record and
  the bridge names come from the helper module ``bridges``, which both plugins share
  (``<switch>.<project>`` when it fits in 15 characters, else a shortened name with a hash).
  Xen's hotplug script puts the vifs on the bridge; mln makes no tap devices for Xen guests.
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
  kernel is the configured one, or dom0's: put its modules in the template).

mln.conf: ``xen_kernel``, ``xen_ramdisk``, ``xen_boot_dir``, ``xen_bridge``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.limits import whole_number

from . import bridges, xen_migrate
from .runtime import IFNAMSIZ, saved_state_path
from .xen_config import (HVM_DISKS, boot_dir, cfg_name, disk_mounts, dom0_kernel, guest_devices, host_value, is_hvm,
                         pv_kernel_source, render, vnc_password)
from .xen_guest import configure as configure_guest

NAME = "xen"
XL = "xl"
LINUX = ("debian", "redhat", "suse", "busybox")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")


# ---------------------------------------------------------------------------------------
# keywords and helpers
# ---------------------------------------------------------------------------------------

@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("xen", "hvm"), "Xen PV guests with the xl toolstack; hvm: fully virtualized",
                        disk_formats=("raw",))
    registry.keyword("host", "cpus", "Xen: host CPUs the guest may run on (xl cpus, e.g. 0-3)")
    registry.keyword("host", "vncdisplay", "Xen: VNC display number (port 5900+N)")
    registry.keyword("host", "vncpasswd", "Xen: VNC password", secret=True)
    registry.keyword("host", "vncpassword", "alias of vncpasswd", secret=True)
    registry.keyword("host", "vnckeymap", "Xen: keymap of the VNC display (e.g. de)")
    registry.block("host", "xen_extra", "lines", "lines copied verbatim into the Xen configuration file")
    registry.keyword("network", "bridge", "Xen: put this interface on an existing host bridge (e.g. xenbr0)")


def _mine(host) -> bool:
    return host.hypervisor == NAME


def _pos(host, key: str):
    line = host.tree.line(key) if host.tree is not None else None
    return line.pos if line is not None else f"host {host.name}"


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    return guest_devices(host)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

def _host_problems(host, project) -> list[Problem]:
    out: list[Problem] = []

    def err(msg, where):
        out.append(Problem("error", f"host {host.name}: {msg}", where))

    for key in ("vcpus", "vncdisplay"):
        value = host_value(host, key)
        if value is not None and whole_number(value, 0 if key == "vncdisplay" else 1, 59635 if key == "vncdisplay" else None) is None:
            err(f"{key} must be a number{' of at least 1' if key == 'vcpus' else ''}, not '{value}'",
                _pos(host, key))
    pw = vnc_password(host)
    pw_key = "vncpasswd" if host_value(host, "vncpasswd") is not None else "vncpassword"
    if pw is not None and len(pw) > 8:
        out.append(Problem("warning", f"host {host.name}: the VNC server uses only the first 8 characters of "
                           "the VNC password", _pos(host, pw_key)))
    if pw is not None and not is_hvm(host) and "," in pw:
        err("a PV guest's VNC password cannot contain a comma (it goes into a vfb device string)",
            _pos(host, pw_key))
    for i in host.interfaces:
        where = i.tree.pos if i.tree is not None else f"host {host.name}"
        if i.switch and i.switch.startswith("/"):
            err(f"{i.name}: a Xen guest cannot join the socket {i.switch} (that is for UML); "
                "use a project switch or 'bridge NAME'", where)
        elif i.switch and i.switch in project.switches:
            kind = project.switches[i.switch].explicit_kind()
            if kind not in (None, bridges.KIND):
                err(f"{i.name}: switch '{i.switch}' is of type {kind}, but Xen guests join Linux bridges; "
                    "remove its type line or write 'type bridge'", where)
        if i.bridge and not _IFNAME.match(i.bridge):
            err(f"{i.name}: bridge '{i.bridge}' is not a network interface name "
                f"(at most {IFNAMSIZ} letters, digits, '.', '-', '_')", where)
        if i.switch and i.bridge:
            out.append(Problem("warning", f"host {host.name} {i.name}: both 'switch' and 'bridge' are given; "
                               f"the interface goes on switch {i.switch}'s bridge", where))
    disks = disk_mounts(host)
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


def _kernel_problems(host, ctx) -> list[Problem]:
    """A PV guest without 'kernel', 'xen_kernel' or a bootloader boots dom0's running kernel:
    say which (info), or warn when there is none (the build then refuses it)."""
    if is_hvm(host) or pv_kernel_source(host, ctx) != "dom0":
        return []
    where = _pos(host, "xen" if host.tree is not None and host.tree.line("xen") else "hypervisor")
    try:
        kernel, initrd = dom0_kernel(boot_dir(ctx))
    except MlnError as e:       # this machine is no dom0 (yet): the file is fine, a build here refuses
        return [Problem("warning", f"host {host.name}: {e.message} (a build on this machine refuses it)", where)]
    ramdisk = (f"initrd {host.ramdisk} (the host's ramdisk)" if host.ramdisk else
               f"initrd {initrd}" if initrd else "no initrd (none found beside it)")
    return [Problem("info", f"host {host.name}: boots the dom0 kernel {kernel} with {ramdisk} (no 'kernel' "
                    "in the host, no 'xen_kernel' in mln.conf); the guest needs that kernel's modules",
                    where)]


@hookimpl
def mln_validate(project, ctx):
    out: list[Problem] = []
    for host in project.hosts.values():
        if _mine(host):
            out += _host_problems(host, project) + _kernel_problems(host, ctx)
    return out


# ---------------------------------------------------------------------------------------
# switches: a plain switch with Xen hosts on it is a Linux bridge
# ---------------------------------------------------------------------------------------

def has_xen_members(switch, project) -> bool:
    return any(h in project.hosts and _mine(project.hosts[h]) for h, _ in switch.members)


@hookimpl(tryfirst=True)
def mln_build_switch(switch, ctx):
    project = ctx.project
    if project is None or switch.explicit_kind() is not None or not has_xen_members(switch, project):
        return None
    # a bridge record (see the helper module bridges): the bridge plugin starts and stops it
    return bridges.record(switch, **{"for": "xen"})


# ---------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------

@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    text = render(host, disk, ctx)
    name = cfg_name(host)
    path = ctx.path(name)
    # a VNC password is in the file: only root may read it then
    mode = 0o600 if vnc_password(host) is not None else 0o644
    fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path + ".part", mode)
    os.replace(path + ".part", path)
    return {"cfg": name, "type": "hvm" if is_hvm(host) else "pv", "domain": host.fqname}


@hookimpl
def mln_configure_image(host, guest, ctx):
    """PV guests: a console on hvc0 and the vif names (see the helper module xen_guest)."""
    if not _mine(host) or is_hvm(host):
        return
    family = getattr(guest, "family", None)
    if family not in LINUX or family == "busybox":
        return
    configure_guest(host, guest, family)


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
            ctx.on(host).run([XL, "restore", os.path.relpath(ram, ctx.project_dir)],
                             what=_what(host, "restore"), cwd=ctx.project_dir, timeout=900)
        except MlnError as e:
            raise MlnError(f"{e.message}; the saved state {ram} is kept: delete it to boot the host "
                           "afresh") from None
        os.unlink(ram)
        return True
    if not os.path.exists(ctx.path(cfg)):
        raise MlnError(f"{ctx.path(cfg)} is missing; run 'mln build' again")
    ctx.on(host).run([XL, "create", cfg], what=_what(host, "create"), cwd=ctx.project_dir)
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
    ctx.on(host).run(argv, what=_what(host, "stop"))
    return True


STATES = {"p": "paused", "c": "crashed", "s": "shutting down", "d": "dying"}


def domain_state(host, ctx) -> str | None:
    """The xl state letters of the host's domain (``-b----``), or None if it does not exist."""
    if shutil.which(XL) is None:
        return None       # no Xen toolstack here: nothing of ours can be running
    p = ctx.on(host).run([XL, "list", host.fqname], what=_what(host, "status"), check=False, timeout=60)
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
        ctx.on(host).run([XL, "save", host.fqname, ram + ".part"], what=_what(host, "save"), timeout=900)
        os.replace(ram + ".part", ram)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ram + ".part")
        raise
    return ram


# -- live migration between servers (mln upgrade, mln_backends.xen_migrate) ----------------

@hookimpl
def mln_live_migration(host, shared, ctx):
    return xen_migrate.can(host, shared, ctx) if _mine(host) else None


@hookimpl
def mln_migrate_in(host, disk, address, ctx):
    if not _mine(host):
        return None
    _need_xl()
    cfg = ctx.host_state(host).get("backend", {}).get("cfg") or cfg_name(host)
    return xen_migrate.incoming(host, disk, address, ctx, cfg, domain_state)


@hookimpl
def mln_migrate_out(host, incoming, ctx):
    if not _mine(host):
        return None
    _need_xl()
    return xen_migrate.send(host, incoming, ctx, domain_state)


@hookimpl
def mln_migrate_done(host, ctx):
    if not _mine(host):
        return None
    xen_migrate.arrived(host, ctx, domain_state, saved_state_path(host, ctx))
    return True


def is_xen_kernel(machine) -> bool:
    """Does ``machine`` run under Xen? Its xenfs (Xen's control files, capabilities among them)
    is mounted then, which the Debian packages do at boot."""
    return any(fstype == "xenfs" for _, _, fstype in machine.mounts())


@hookimpl
def mln_doctor(ctx):
    found = tool(XL, "runs Xen guests", "xen-utils", hypervisor=NAME)
    if found["ok"] and not is_xen_kernel(ctx.on()):
        found.update(ok=False, detail=f"{found['detail']}, but this machine is not a Xen dom0 "
                     "(no xenfs, Xen's control files, is mounted): configurations are written, guests "
                     "cannot start", remedy="run Xen hosts on a server booted into Xen")
    return [found]
