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
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import asdict

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem

from . import imagefs

NAME = "vmware"
DEFAULT_MAPPINGS = "/etc/mln/vmware/vnet_switch_mappings.dat"
DEFAULT_TYPE = "ws"
RUN_TYPES = ("ws", "player", "fusion")
HW_VERSION = "19"
GUEST_OS = "otherlinux-64"
NIC_MODEL = "e1000"
VMNET_FIRST, VMNET_LAST = 10, 99
VMNET_MAJOR = 119
SCSI_UNITS = [u for u in range(16) if u != 7]      # scsi0:7 is the controller itself
VMDK_OPTIONS = "subformat=monolithicSparse,adapter_type=lsilogic"
_VMNET_LINE = re.compile(r"\s*(vmnet(\d+))\s+(\S+)\s*\Z")


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("vmware",), "VMware Workstation/Player/Fusion (vmrun); disks are VMDK",
                        disk_formats=("vmdk",))
    registry.keyword("switch", "vmware", "a VMware switch (a vmnet); needed on the switches of VMware hosts")
    if registry.lookup("host", "vcpus") is None:      # qemu declares it too
        registry.keyword("host", "vcpus", "number of virtual CPUs")


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

def _disk_letters(host) -> list[str]:
    """Linux names SCSI disks in unit order: root, swap (if any), then the mounts."""
    n = 1 + (1 if host.swap else 0) + len(host.mounts)
    return [f"/dev/sd{chr(ord('a') + k)}" for k in range(n)]


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    letters = _disk_letters(host)
    swap = letters[1] if host.swap else None
    return {"root": letters[0], "swap": swap, "extra": letters[2 if host.swap else 1:], "console": "ttyS0"}


# -- build -----------------------------------------------------------------------------------

def _image_format(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    return {b"KDMV": "vmdk", b"QFI\xfb": "qcow2"}.get(head, "raw")


def to_vmdk(ctx, src_record: str, what: str) -> str:
    """Convert the image ``src_record`` (relative to the project or absolute) into
    ``<same>.vmdk`` and delete the source; return the record of the VMDK."""
    dst_record = src_record + ".vmdk"
    src = ctx.path(src_record)
    dst = ctx.outside(dst_record) if os.path.isabs(dst_record) else ctx.path(dst_record)
    # written under its final file name (a filepath disk in the build's staging folder, which
    # keeps the name): a monolithicSparse VMDK names its own file in its embedded descriptor
    try:
        ctx.run(["qemu-img", "convert", "-q", "-f", _image_format(src), "-O", "vmdk", "-o", VMDK_OPTIONS,
                 src, dst], what=f"converting {what} {src} to VMDK", timeout=3600)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        raise
    os.unlink(src)
    return dst_record


def _vnet_of(host, iface, ctx) -> str:
    sw = ctx.project.switches.get(iface.switch) if ctx.project is not None else None
    if iface.switch.startswith("/") or sw is None:
        raise MlnError(f"{iface.name}: VMware hosts cannot use the switch {iface.switch}")
    st = ctx.switch_state(sw)
    if st.get("kind") != NAME:
        raise MlnError(f"{iface.name}: switch '{sw.name}' is not a VMware switch; write 'vmware' in "
                       f"'switch {sw.name} {{ }}'")
    return st["vmnet"]


def vmx_escape(value) -> str:
    """A .vmx value: VMware writes '"', '|', '#' and control characters as |XX."""
    return "".join(f"|{ord(c):02X}" if c in '"|#' or ord(c) < 0x20 else c for c in str(value))


def _jinja():
    import jinja2
    here = os.path.join(os.path.dirname(__file__), "templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(here),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["vmx"] = vmx_escape
    return env


def render_vmx(values: dict) -> str:
    return _jinja().get_template("vmware.vmx.j2").render(**values)


def _vcpus(host) -> int | None:
    text = host.tree.get("vcpus") if host.tree is not None else None
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise MlnError(f"vcpus must be a number of at least 1, not '{text}'")
    return int(text)


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
    vcpus = _vcpus(host)
    for m in host.mounts:
        if not m.source.endswith(".vmdk"):
            raise MlnError(f"mount {m.source}: VMware attaches only VMDK disks (a .vmdk file)")
    if len(host.mounts) + 2 > len(SCSI_UNITS):
        raise MlnError(f"too many mount disks for one SCSI controller ({len(host.mounts)})")

    if disk.format != "vmdk":
        if imagefs.is_ext_filesystem(ctx.path(disk.path)):
            ctx.log(f"warning: host {host.name}: template {host.template} is a bare filesystem with no boot "
                    "loader; VMware boots disks through its BIOS, so this VM will not boot under VMware")
        disk.path = to_vmdk(ctx, disk.path, "the disk")
        disk.format = "vmdk"
    if disk.extra.get("swap") and not disk.extra["swap"].endswith(".vmdk"):
        disk.extra["swap"] = to_vmdk(ctx, disk.extra["swap"], "the swap disk")
    # the lifecycle recorded the raw disk the storage plugin made; the host's disk is the VMDK now
    ctx.host_state(host)["disk"] = asdict(disk)

    units = iter(SCSI_UNITS)
    disks = [{"unit": next(units), "path": disk.path}]     # relative: inside the project
    if disk.extra.get("swap"):
        disks.append({"unit": next(units), "path": disk.extra["swap"]})
    disks += [{"unit": next(units), "path": m.source} for m in host.mounts]
    ctx.host_dir(host)
    values = {
        "hw_version": ctx.config.get("vmware_hw_version") or HW_VERSION,
        "display_name": host.fqname,
        "guest_os": ctx.config.get("vmware_guestos") or GUEST_OS,
        "memsize": -(-max(4, host.memory // 2**20) // 4) * 4,
        "vcpus": vcpus,
        "nvram": f"{host.name}.nvram",
        "disks": disks,
        "console": f"hosts/{host.name}/console.log",
        "nic_model": ctx.config.get("vmware_nic") or NIC_MODEL,
        "nics": nics,
    }
    vmx = f"{host.name}.vmx"
    path = ctx.path(vmx)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(render_vmx(values))
    os.chmod(path + ".tmp", 0o755)       # as Workstation on Linux writes them (#!/usr/bin/vmware)
    os.replace(path + ".tmp", path)
    return {"vmx": vmx, "disk": disk.path, "vnets": {n["name"]: n["vnet"] for n in nics if n["vnet"]}}


# -- vmnet switches -------------------------------------------------------------------------

def mappings_path(ctx) -> str:
    return ctx.config.get("vmware_vnet_mappings") or DEFAULT_MAPPINGS


@contextlib.contextmanager
def _mappings(ctx):
    """The mapping file's lines, locked (flock on its directory) and written back on exit."""
    path = mappings_path(ctx)
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise MlnError(f"cannot create {d} for the vmnet mapping file: {e.strerror}") from None
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        before = list(lines)
        yield lines
        if lines != before:
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in lines))
            os.replace(tmp, path)
    finally:
        os.close(fd)


def _entries(lines):
    for n, line in enumerate(lines):
        m = _VMNET_LINE.match(line)
        if m:
            yield n, m.group(1), int(m.group(2)), m.group(3)


def _held_by_stored_project(switch, vmnet: str, ctx) -> bool:
    """Does the project as it is stored (not the build in progress) use ``vmnet``?"""
    store = ctx.store
    if store is None or not store.exists(switch.project):
        return False
    from mln_core.store import Store
    state = Store.read_state(store.project_dir(switch.project))
    return state.get("switches", {}).get(switch.name, {}).get("vmnet") == vmnet


def allocate_vmnet(switch, ctx) -> str:
    """The first free vmnet10..vmnet99, recorded as ``vmnetNN <switch>.<project>``.

    A line for this switch that the stored project does not use is left over from a build
    that failed: it is taken again. A line the stored project uses stays its own until the
    replacing build has succeeded (then ``mln_remove_switch`` of the old project deletes it),
    so a rebuild gets another vmnet."""
    name = f"{switch.name}.{switch.project}"
    with _mappings(ctx) as lines:
        taken = set()
        for _, vmnet, num, owner in _entries(lines):
            if owner == name and not _held_by_stored_project(switch, vmnet, ctx):
                return vmnet
            taken.add(num)
        for num in range(VMNET_FIRST, VMNET_LAST + 1):
            if num not in taken:
                vmnet = f"vmnet{num}"
                lines.append(f"{vmnet} {name}")
                return vmnet
    raise MlnError(f"no free vmnet left (vmnet{VMNET_FIRST}..vmnet{VMNET_LAST} are all in "
                   f"{mappings_path(ctx)})", f"switch {switch.name}")


def release_vmnet(switch, vmnet: str, ctx) -> None:
    name = f"{switch.name}.{switch.project}"
    with _mappings(ctx) as lines:
        for n, v, _, owner in reversed(list(_entries(lines))):
            if v == vmnet and owner == name:
                del lines[n]


@hookimpl(tryfirst=True)
def mln_build_switch(switch, ctx):
    if not is_vmware_switch(switch):
        return None
    return {"kind": NAME, "vmnet": allocate_vmnet(switch, ctx)}


def _switch_vmnet(switch, ctx) -> str | None:
    st = ctx.switch_state(switch)
    return st.get("vmnet") if st.get("kind") == NAME else None


def _device(ctx, vmnet: str) -> str:
    return os.path.join(ctx.config.get("vmware_dev_dir") or "/dev", vmnet)


def _marker(switch, ctx) -> str:
    return os.path.join(ctx.path("switches", switch.name), "vmnet.json")


@hookimpl
def mln_start_switch(switch, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    dev = _device(ctx, vmnet)
    made = False
    if not os.path.exists(dev):
        ctx.run(["mknod", "-m", "600", dev, "c", str(VMNET_MAJOR), vmnet[len("vmnet"):]],
                what=f"switch {switch.name}: making {dev}")
        made = True
    with open(os.path.join(ctx.switch_dir(switch), "vmnet.json"), "w") as f:
        json.dump({"vmnet": vmnet, "device": dev, "made": made}, f)
    return True


@hookimpl
def mln_stop_switch(switch, ctx):
    if _switch_vmnet(switch, ctx) is None:
        return None
    marker = _marker(switch, ctx)
    try:
        with open(marker) as f:
            info = json.load(f)
    except FileNotFoundError:
        return True
    if info.get("made"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info["device"])
    os.unlink(marker)
    return True


@hookimpl
def mln_switch_status(switch, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    return "up" if os.path.exists(_marker(switch, ctx)) and os.path.exists(_device(ctx, vmnet)) else "down"


@hookimpl
def mln_switch_attachment(switch, host, interface, ctx):
    vmnet = _switch_vmnet(switch, ctx)
    if vmnet is None:
        return None
    return {"kind": NAME, "vnet": vmnet}


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


def vmx_path(host, ctx) -> str:
    return ctx.path(ctx.host_state(host).get("backend", {}).get("vmx") or f"{host.name}.vmx")


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
        if att is None or att.get("kind") != NAME:
            raise MlnError(f"{i.name}: VMware cannot join a switch of kind {att and att.get('kind')}")
        if recorded.get(i.name) not in (None, att["vnet"]):
            raise MlnError(f"{i.name}: the .vmx uses {recorded[i.name]} but switch '{i.switch}' is "
                           f"{att['vnet']}; build the project again")
    ctx.run(_vmrun(ctx) + ["start", vmx, "nogui"], what="vmrun start")
    return True


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    vmx = vmx_path(host, ctx)
    if not hard:
        r = ctx.run(_vmrun(ctx) + ["stop", vmx, "soft"], what="vmrun stop", check=False)
        if r.returncode == 0:
            return True
        why = (r.stdout or r.stderr or b"").decode("utf-8", "replace").strip()
        ctx.log(f"+---> {host.name}: soft stop failed ({why or f'exit {r.returncode}'}); stopping it hard")
    ctx.run(_vmrun(ctx) + ["stop", vmx, "hard"], what="vmrun stop")
    return True


@hookimpl
def mln_save_host(host, ctx):
    if not _mine(host):
        return None
    ctx.run(_vmrun(ctx) + ["suspend", vmx_path(host, ctx)], what="vmrun suspend", timeout=900)
    return True


def is_suspended(host, ctx) -> bool:
    """VMware writes ``checkpoint.vmState = "<vm>.vmss"`` into the .vmx of a suspended VM
    (and empties it when the VM resumes)."""
    try:
        with open(vmx_path(host, ctx), encoding="utf-8", errors="replace") as f:
            return any(re.fullmatch(r'\s*checkpoint\.vmState\s*=\s*"[^"]+"\s*', line) for line in f)
    except OSError:
        return False


def running_vmx(ctx) -> list[str] | None:
    """The .vmx files ``vmrun list`` shows (real paths); None without vmrun."""
    if shutil.which("vmrun") is None:
        return None
    out = ctx.run(_vmrun(ctx) + ["list"], what="vmrun list", timeout=60).stdout.decode("utf-8", "replace")
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
