"""Hypervisor backend ``vmware`` (keyword ``vmware``): VMware Workstation, Player, Fusion.

Build
-----
* Disk: the ``file`` storage plugin makes a raw sparse copy ``images/<host>`` of the
  template (VMware declares only ``vmdk``, which it cannot make), the guest is
  individualized in that raw copy, and then :func:`mln_build_host` converts it with
  ``qemu-img convert -O vmdk -o subformat=monolithicSparse,adapter_type=lsilogic`` into
  ``images/<host>.vmdk`` and deletes the raw copy. monolithicSparse is ONE growable
  file (no ``-flat.vmdk`` / ``-s001.vmdk`` extents to keep together) that Workstation,
  Player and Fusion open directly; ESXi needs it imported (``vmkfstools -i``). A swap
  disk (``swap SIZE``) is converted the same way to ``images/swap_<host>.vmdk``. The
  build records the VMDK as the host's disk (``state["hosts"][h]["disk"]``, which
  :func:`mln_core.lifecycle.disk_of` reads), replacing what the storage plugin recorded.
  ``filepath DIR`` hosts get ``DIR/<host>.<project>.vmdk``.
* ``<project>/<host>.vmx`` from ``templates/vmware.vmx.j2``: ``config.version "8"``,
  ``virtualHW.version "19"`` (Workstation/Player 16.2 and later, Fusion 12.2 and later,
  ESXi 7.0 U2 and later; ``vmware_hw_version`` in mln.conf overrides it), guestOS
  ``otherlinux-64`` (``vmware_guestos``), ``memsize`` (rounded up to 4 MB),
  ``numvcpus`` from ``vcpus``, the disk on ``scsi0:0`` (LSI Logic), the swap disk on
  ``scsi0:1``, extra ``mount`` disks (``.vmdk`` files) on the next units, the serial
  console into ``hosts/<host>/console.log``, and one ``ethernetN`` per interface
  ``ethN`` (``e1000``; ``vmware_nic`` overrides it): ``custom`` on the switch's vmnet,
  or ``bridged`` without a switch; ``static`` with ``mac`` (VMware accepts static MACs
  only in 00:50:56:00:00:00-00:50:56:3F:FF:FF), else ``generated``. Paths in the .vmx
  are relative to the project directory, so the project can be moved.
  VMware boots a disk through its BIOS: a template that is a bare filesystem (such as
  the busybox test template) has no boot loader and does not boot under VMware (QEMU
  boots such a VMDK with ``-kernel``); use whole-disk templates for VMware.

Switches
--------
A switch with ``vmware`` (or ``type vmware``) is a vmnet: the build takes the first
vmnet10..vmnet99 free in the mapping file (``vmware_vnet_mappings``, default
``/etc/mln/vmware/vnet_switch_mappings.dat``) and records ``vmnetNN <switch>.<project>``
there; ``mln remove`` (and a replacing build, for the old project) deletes that line.
Modern Workstation on Linux needs no helper process for a private vmnet: VMs attached
to the same vmnet device are switched by the vmnet kernel module. It only needs the
device node, so ``start`` makes ``/dev/vmnetNN`` (char 119, NN; ``vmware_dev_dir``
overrides /dev) when it is missing, and ``stop`` deletes the node again if start made
it. There is no ``vmnet-bridge``: that would bridge the project network onto a host
NIC, and a project switch is private. A switch is "up" while it is started.

Run
---
Through ``vmrun -T <vmware_type>`` (default ``ws``; ``player`` and ``fusion`` also):
``vmrun start <vmx> nogui``, ``vmrun stop <vmx> soft`` (without VMware Tools in the
guest a soft stop fails, and mln stops the VM hard at once, as the original's
``trysoft``), ``vmrun stop <vmx> hard``; a host is up while ``vmrun list`` lists its
.vmx. ``mln stop -S`` runs ``vmrun suspend <vmx>`` (VMware writes the memory into a
``.vmss`` file next to the .vmx and notes it as ``checkpoint.vmState`` in the .vmx: such
a host is "down: saved"); ``vmrun start`` resumes a suspended VM. Workstation needs no
registration, so nothing is unregistered at ``remove``. Without vmrun installed every
host is down.

The helper modules ``vmware_disk`` (VMDK files), ``vmware_vmx`` (the .vmx file) and
``vmware_vnet`` (vmnets and their device nodes) do the work; this module holds the hooks.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Attachment

from . import imagefs
from .vmware_disk import guest_devices, to_vmdk
from .vmware_vmx import check_mounts, is_suspended, vcpus, vmx_path, vmx_values, write_vmx
from .vmware_vnet import allocate_vmnet, is_up, make_device, release_vmnet, remove_device

NAME = "vmware"
DEFAULT_TYPE = "ws"
RUN_TYPES = ("ws", "player", "fusion")


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("vmware",), "VMware Workstation/Player/Fusion (vmrun); disks are VMDK",
                        disk_formats=("vmdk",))
    registry.keyword("switch", "vmware", "a VMware switch (a vmnet); needed on the switches of VMware hosts")


def _mine(host) -> bool:
    return host.hypervisor == NAME


# -- checks --------------------------------------------------------------------------------

def static_mac_ok(mac: str) -> bool:
    """VMware takes a static MAC only in 00:50:56:00:00:00-00:50:56:3F:FF:FF."""
    parts = mac.lower().split(":")
    return parts[:3] == ["00", "50", "56"] and int(parts[3], 16) <= 0x3F


def _mac_error(host, iface) -> str:
    return (f"host '{host.name}' {iface.name}: mac {iface.mac} cannot be a VMware static MAC; use one in "
            "00:50:56:00:00:00-00:50:56:3f:ff:ff (or no mac: VMware generates one)")


def is_vmware_switch(switch) -> bool:
    tree = switch.tree
    return tree is not None and (tree.has("vmware") or tree.get("type") == "vmware")


@hookimpl
def mln_validate(project, ctx):
    problems = []

    def error(message, iface, key):
        problems.append(Problem("error", message, _pos(iface, key)))

    for host in project.hosts.values():
        for i in host.interfaces:
            sw = project.switches.get(i.switch) if i.switch else None
            where = f"host '{host.name}' {i.name}"
            if not _mine(host):
                if sw is not None and is_vmware_switch(sw):
                    error(f"{where}: a {host.hypervisor} host cannot join VMware switch '{sw.name}'",
                          i, "switch")
                continue
            if i.mac and not static_mac_ok(i.mac):
                error(_mac_error(host, i), i, "mac")
            if i.switch and i.switch.startswith("/"):
                error(f"{where}: VMware hosts cannot use the external switch socket {i.switch}", i, "switch")
            elif sw is not None and not is_vmware_switch(sw):
                error(f"{where}: switch '{i.switch}' is not a VMware switch; write 'vmware' in "
                      f"'switch {i.switch} {{ }}'", i, "switch")
    return problems


def _pos(iface, key):
    line = iface.tree.line(key) if iface.tree is not None else None
    return line.pos if line is not None else None


# -- guest devices ---------------------------------------------------------------------------

@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    from .partitions import root_suffix
    return guest_devices(host, root_suffix(host, ctx))


# -- build -----------------------------------------------------------------------------------

def _vnet_of(host, iface, ctx) -> str:
    sw = ctx.project.switches.get(iface.switch) if ctx.project is not None else None
    if iface.switch.startswith("/") or sw is None:
        raise MlnError(f"{iface.name}: VMware hosts cannot use the switch {iface.switch}")
    st = ctx.switch_state(sw)
    if st.get("kind") != NAME:
        raise MlnError(f"{iface.name}: switch '{sw.name}' is not a VMware switch; write 'vmware' in "
                       f"'switch {sw.name} {{ }}'")
    return st["vmnet"]


@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    if disk.kind != "file":
        raise MlnError(f"VMware hosts need file storage (a VMDK in images/), not {disk.kind}")
    for i in host.interfaces:
        if i.mac and not static_mac_ok(i.mac):
            raise MlnError(_mac_error(host, i))
    nics = [{"name": i.name, "index": i.index, "mac": i.mac,
             "vnet": _vnet_of(host, i, ctx) if i.switch else None} for i in host.interfaces]
    ncpus = vcpus(host)
    check_mounts(host)

    if disk.format != "vmdk":
        if imagefs.is_ext_filesystem(ctx.path(disk.path)):
            ctx.log(f"warning: host {host.name}: template {host.template} is a bare filesystem with no boot "
                    "loader; VMware boots disks through its BIOS, so this VM will not boot under VMware")
        disk.path = to_vmdk(ctx, host, disk.path, "the disk")
        disk.format = "vmdk"
    if disk.extra.get("swap") and not disk.extra["swap"].endswith(".vmdk"):
        disk.extra["swap"] = to_vmdk(ctx, host, disk.extra["swap"], "the swap disk")
    # the lifecycle recorded the raw disk the storage plugin made; the host's disk is the VMDK now
    ctx.host_state(host)["disk"] = asdict(disk)

    ctx.host_dir(host)
    vmx = f"{host.name}.vmx"
    write_vmx(ctx.path(vmx), vmx_values(host, disk, nics, ncpus, ctx))
    return {"vmx": vmx, "disk": disk.path, "vnets": {n["name"]: n["vnet"] for n in nics if n["vnet"]}}


# -- vmnet switches -------------------------------------------------------------------------

@hookimpl(tryfirst=True)
def mln_build_switch(switch, ctx):
    if not is_vmware_switch(switch):
        return None
    return {"kind": NAME, "vmnet": allocate_vmnet(switch, ctx)}


def _switch_vmnet(switch, ctx) -> str | None:
    st = ctx.switch_state(switch)
    return st.get("vmnet") if st.get("kind") == NAME else None


@hookimpl
def mln_start_switch(switch, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    make_device(switch, vmnet, ctx)
    return True


@hookimpl
def mln_stop_switch(switch, ctx):
    if _switch_vmnet(switch, ctx) is None:
        return None
    remove_device(switch, ctx)
    return True


@hookimpl
def mln_switch_status(switch, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    return "up" if is_up(switch, vmnet, ctx) else "down"


@hookimpl
def mln_switch_attachment(switch, host, interface, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    return Attachment(NAME, network=vmnet)


@hookimpl
def mln_remove_switch(switch, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is not None:
        release_vmnet(switch, vmnet, ctx)


# -- run -------------------------------------------------------------------------------------

def _vmrun(ctx) -> list[str]:
    kind = ctx.config.get("vmware_type") or DEFAULT_TYPE
    if kind not in RUN_TYPES:
        raise MlnError(f"vmware_type in mln.conf must be one of {', '.join(RUN_TYPES)}, not '{kind}' "
                       "(ESXi and vCenter need a server and credentials, which mln does not handle)")
    return ["vmrun", "-T", kind]


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    vmx = vmx_path(host, ctx)
    if not os.path.isfile(vmx):
        raise MlnError(f"{vmx} is missing; build the project again")
    recorded = ctx.host_state(host).get("backend", {}).get("vnets", {})
    for i in host.interfaces:
        if not i.switch:
            continue
        att = ctx.attachment(host, i)
        if att is None or att.kind != NAME:
            raise MlnError(f"{i.name}: VMware cannot join a switch of kind {att and att.kind}")
        if recorded.get(i.name) not in (None, att.network):
            raise MlnError(f"{i.name}: the .vmx uses {recorded[i.name]} but switch '{i.switch}' is "
                           f"{att.network}; build the project again")
    ctx.on(host).run(_vmrun(ctx) + ["start", vmx, "nogui"], what="vmrun start")
    return True


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    vmx = vmx_path(host, ctx)
    if not hard:
        r = ctx.on(host).run(_vmrun(ctx) + ["stop", vmx, "soft"], what="vmrun stop", check=False)
        if r.returncode == 0:
            return True
        why = (r.stdout or r.stderr or b"").decode("utf-8", "replace").strip()
        ctx.log(f"+---> {host.name}: soft stop failed ({why or f'exit {r.returncode}'}); stopping it hard")
    ctx.on(host).run(_vmrun(ctx) + ["stop", vmx, "hard"], what="vmrun stop")
    return True


@hookimpl
def mln_save_host(host, ctx):
    if not _mine(host):
        return None
    ctx.on(host).run(_vmrun(ctx) + ["suspend", vmx_path(host, ctx)], what="vmrun suspend", timeout=900)
    return True


def running_vmx(ctx) -> list[str] | None:
    """The .vmx files ``vmrun list`` shows (real paths); None without vmrun."""
    if shutil.which("vmrun") is None:
        return None
    out = ctx.on().run(_vmrun(ctx) + ["list"], what="vmrun list", timeout=60).stdout.decode("utf-8", "replace")
    return [os.path.realpath(line.strip()) for line in out.splitlines()[1:] if line.strip()]


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    running = running_vmx(ctx)
    if running is not None and os.path.realpath(vmx_path(host, ctx)) in running:
        return "up"
    return "down: saved" if is_suspended(host, ctx) else "down"


@hookimpl
def mln_doctor(ctx):
    found = tool("vmrun", "runs VMware guests", "", hypervisor=NAME)
    if not found["ok"]:
        found["remedy"] = "install VMware Workstation or Server (vmrun); configurations are written without it"
    return [found]
