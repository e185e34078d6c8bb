"""The xl configuration file of a Xen guest: devices, disks, vifs, kernel, VNC, rendering.

Not a plugin: the ``xen`` backend imports it (the decisions are described in that
module's docstring). ``render(host, disk, ctx)`` gives the text of
``<project>/<host>_xen.cfg`` (PV) or ``<project>/<host>_xen.hvm`` (HVM) from the Jinja
templates ``templates/xen_pv.cfg.j2`` and ``templates/xen_hvm.cfg.j2``.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING


from mln_core.errors import MlnError
from mln_core.limits import whole_number

from . import bridges
from .runtime import mac_address

XEN_OUI = "00:16:3e"
#: mount types that are no block device: fstab keeps their source, the guest gets no disk
NOT_DISK_FS = frozenset({"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "tmpfs", "proc", "sysfs", "devpts",
                         "sshfs", "fuse.sshfs", "glusterfs", "ceph", "virtiofs", "none"})
HVM_DISKS = ("hda", "hdb", "hdc", "hdd")

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
if TYPE_CHECKING:
    import jinja2

_env: jinja2.Environment | None = None


# ---------------------------------------------------------------------------------------
# what the project file says about a Xen host
# ---------------------------------------------------------------------------------------

def is_hvm(host) -> bool:
    return host.tree is not None and host.tree.has("hvm")


def host_value(host, key: str) -> str | None:
    """The value of the host's keyword ``key`` (None if it is not given)."""
    return host.tree.get(key) if host.tree is not None else None


def cfg_name(host) -> str:
    return f"{host.name}_xen.hvm" if is_hvm(host) else f"{host.name}_xen.cfg"


def xen_extra(host) -> list[str]:
    b = host.tree.block("xen_extra") if host.tree is not None else None
    return b.line_texts() if b is not None else []


def has_bootloader(host) -> bool:
    return any(re.match(r"bootloader\s*=", line) for line in xen_extra(host))


def vnc_password(host) -> str | None:
    pw = host_value(host, "vncpasswd")
    return pw if pw is not None else host_value(host, "vncpassword")


def disk_mounts(host) -> list:
    """The mounts that are disks (not network or pseudo filesystems), in file order."""
    return [m for m in host.mounts if m.fstype not in NOT_DISK_FS and m.fstype != "hostfs"]


def vdevs(host) -> dict:
    """Device names: {"root": vdev, "swap": vdev or None, "mounts": {id(mount): vdev}}."""
    disks = disk_mounts(host)
    if is_hvm(host):
        names = iter(HVM_DISKS[1:])
        swap = next(names, None) if host.swap else None
        mounts = {id(m): next(names, None) for m in disks}
        return {"root": HVM_DISKS[0], "swap": swap, "mounts": mounts}
    return {"root": "xvda1", "swap": "xvda2", "mounts": {id(m): f"xvda{3 + n}" for n, m in enumerate(disks)}}


def guest_devices(host) -> dict:
    """What the guest calls its disks and console (the answer to ``mln_guest_devices``)."""
    v = vdevs(host)
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
# the parts of the file
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
        import jinja2      # here, not at the top: only a Xen build renders configurations
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

    v = vdevs(host)
    specs = [_disk_spec(absolute(disk.path), v["root"])]
    swap = (disk.extra or {}).get("swap")
    if swap and v["swap"]:
        specs.append(_disk_spec(absolute(swap), v["swap"]))
    for m in disk_mounts(host):
        vdev = v["mounts"].get(id(m))
        if vdev is None:
            raise MlnError(f"mount {m.mountpoint}: no disk slot left (an HVM guest takes "
                           f"{len(HVM_DISKS)} disks)")
        specs.append(_disk_spec(absolute(m.source), vdev))
    return specs


def bridge_for(host, iface, ctx) -> str:
    """The bridge a vif goes on: its switch's (as the build recorded the switch), an
    explicit ``bridge NAME``, else ``xen_bridge`` of mln.conf (default ``xenbr0``)."""
    if iface.switch:
        project = ctx.project
        switch = project.switches.get(iface.switch) if project is not None else None
        if switch is None:
            raise MlnError(f"{iface.name}: switch '{iface.switch}' is not a switch of the project")
        st = ctx.state.get("switches", {}).get(switch.name, {})
        bridge = bridges.bridge_of(st)
        if bridge:
            return bridge
        if not st:
            return bridges.bridge_name(switch)
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
        parts += [f"bridge={bridge_for(host, i, ctx)}", f"mac={mac}"]
        out.append(",".join(parts))
    return out


#: where the dom0 kernels are (mln.conf ``xen_boot_dir``)
BOOT_DIR = "/boot"
#: the names of the initrd of kernel release {r}: Debian's, then Fedora's and dracut's
INITRD_NAMES = ("initrd.img-{r}", "initrd-{r}.img", "initramfs-{r}.img")


def boot_dir(ctx) -> str:
    return ctx.config.get("xen_boot_dir") or BOOT_DIR


def dom0_kernel(boot: str, release: str | None = None) -> tuple[str, str | None]:
    """(kernel, initrd or None) of the running kernel in ``boot`` (``vmlinuz-<uname -r>``, as
    the original). An error naming what was looked for when it is missing, and the other
    ``vmlinuz-*`` files of ``boot`` if there are any (no guess among them)."""
    release = release or os.uname().release
    kernel = os.path.join(boot, f"vmlinuz-{release}")
    if not os.path.isfile(kernel):
        try:
            others = sorted(n for n in os.listdir(boot)
                            if n.startswith("vmlinuz-") and os.path.isfile(os.path.join(boot, n)))
        except OSError:
            others = []
        found = (f"; {boot} has {', '.join(others)}, but not that of the running kernel {release}"
                 if others else "")
        raise MlnError(f"missing kernel: no 'kernel PATH' in the host, no 'xen_kernel PATH' in mln.conf, "
                       f"and no dom0 kernel {kernel}{found}; set one of those, or a "
                       f"'bootloader = \"pygrub\"' line in xen_extra")
    for name in INITRD_NAMES:
        initrd = os.path.join(boot, name.format(r=release))
        if os.path.isfile(initrd):
            return kernel, initrd
    return kernel, None


def pv_kernel_source(host, ctx) -> str:
    """Where a PV guest's kernel comes from: "host", "mln.conf", "bootloader" or "dom0"."""
    if host.kernel:
        return "host"
    if ctx.config.get("xen_kernel"):
        return "mln.conf"
    return "bootloader" if has_bootloader(host) else "dom0"


def pv_kernel(host, ctx) -> tuple[str | None, str | None]:
    """(kernel, ramdisk) of a PV guest: the host's, else mln.conf's, else none with a
    bootloader (pygrub), else dom0's running kernel and its initrd (see :func:`dom0_kernel`)."""
    source = pv_kernel_source(host, ctx)
    if source == "bootloader":
        return None, None
    if source == "dom0":
        kernel, initrd = dom0_kernel(boot_dir(ctx))
        ramdisk = host.ramdisk or initrd
    else:
        kernel = host.kernel or ctx.config.get("xen_kernel")
        ramdisk = host.ramdisk or (ctx.config.get("xen_ramdisk") if not host.kernel else None)
    for path, what, key in ((kernel, "kernel", "xen_kernel"), (ramdisk, "ramdisk", "xen_ramdisk")):
        if path is not None and (getattr(host, what) or source == "mln.conf") and not os.path.isfile(path):
            raise MlnError(f"missing {what}: {path} does not exist (from "
                           f"{'the host' if getattr(host, what) else 'mln.conf ' + key})")
    return kernel, ramdisk


def _vfb(vncdisplay: str | None, pw: str | None, keymap: str | None) -> str | None:
    """The ``vfb`` device of a PV guest (only when a VNC keyword is given)."""
    if vncdisplay is None and pw is None and keymap is None:
        return None
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
    return ",".join(parts)


def render(host, disk, ctx) -> str:
    """The text of the host's xl configuration file."""
    if disk.format != "raw":
        raise MlnError(f"Xen guests boot raw disks, not {disk.format}")
    vcpus = host_value(host, "vcpus")
    if vcpus is not None and whole_number(vcpus, 1) is None:
        raise MlnError(f"vcpus must be a number of at least 1, not '{vcpus}'")
    vncdisplay = host_value(host, "vncdisplay")
    if vncdisplay is not None and whole_number(vncdisplay, 0, 59635) is None:
        raise MlnError(f"vncdisplay must be a number, not '{vncdisplay}'")
    values = {
        "host": host.name, "project": host.project, "cfg": cfg_name(host), "name": host.fqname,
        "memory": max(16, host.memory // 2**20), "vcpus": int(vcpus) if vcpus else None,
        "cpus": host_value(host, "cpus"), "disks": disk_specs(host, disk, ctx), "vifs": vif_specs(host, ctx),
        "xen_extra": xen_extra(host),
    }
    pw = vnc_password(host)
    keymap = host_value(host, "vnckeymap")
    if is_hvm(host):
        values.update(vncdisplay=int(vncdisplay) if vncdisplay is not None else None, vncpasswd=pw,
                      keymap=keymap)
        return _environment().get_template("xen_hvm.cfg.j2").render(**values)
    kernel_path, ramdisk = pv_kernel(host, ctx)
    vfb = _vfb(vncdisplay, pw, keymap)
    extra = " ".join(x for x in ("console=hvc0", host_value(host, "extra")) if x)
    values.update(kernel=kernel_path, ramdisk=ramdisk, root=guest_devices(host)["root"], extra=extra, vfb=vfb)
    return _environment().get_template("xen_pv.cfg.j2").render(**values)
