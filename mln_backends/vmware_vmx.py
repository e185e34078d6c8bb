"""The ``.vmx`` file of a VMware guest: its values, its rendering, what VMware writes into it.

Not a plugin: the ``vmware`` backend imports it. ``<project>/<host>.vmx`` comes from
``templates/vmware.vmx.j2``: ``config.version "8"``, ``virtualHW.version "19"``
(``vmware_hw_version`` in mln.conf overrides it), guestOS ``otherlinux-64``
(``vmware_guestos``), ``memsize`` (rounded up to 4 MB), ``numvcpus`` from ``vcpus``, the
disk on ``scsi0:0`` (LSI Logic), the swap disk on ``scsi0:1``, extra ``mount`` disks on the
next units, the serial console into ``hosts/<host>/console.log`` and one ``ethernetN`` per
interface (``e1000``; ``vmware_nic`` overrides it). Paths in the .vmx are relative to the
project directory, so the project can be moved.
"""
from __future__ import annotations

import os
import re

from mln_core.errors import MlnError
from mln_core.limits import whole_number

HW_VERSION = "19"
GUEST_OS = "otherlinux-64"
NIC_MODEL = "e1000"
SCSI_UNITS = [u for u in range(16) if u != 7]      # scsi0:7 is the controller itself
_SUSPENDED = re.compile(r'\s*checkpoint\.vmState\s*=\s*"[^"]+"\s*')


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


def vcpus(host) -> int | None:
    """The host's ``vcpus`` as a number (None if it is not given)."""
    text = host.tree.get("vcpus") if host.tree is not None else None
    if text is None:
        return None
    if whole_number(text, 1) is None:
        raise MlnError(f"vcpus must be a number of at least 1, not '{text}'")
    return int(text)


def check_mounts(host) -> None:
    """Mount disks are VMDK files, and they fit on the one SCSI controller."""
    for m in host.mounts:
        if not m.source.endswith(".vmdk"):
            raise MlnError(f"mount {m.source}: VMware attaches only VMDK disks (a .vmdk file)")
    if len(host.mounts) + 2 > len(SCSI_UNITS):
        raise MlnError(f"too many mount disks for one SCSI controller ({len(host.mounts)})")


def vmx_values(host, disk, nics: list[dict], ncpus: int | None, ctx) -> dict:
    """The values of the template: ``disk`` is the host's VMDK disk, ``nics`` one dict per
    interface (name, index, mac, vnet)."""
    units = iter(SCSI_UNITS)
    disks = [{"unit": next(units), "path": disk.path}]     # relative: inside the project
    if disk.extra.get("swap"):
        disks.append({"unit": next(units), "path": disk.extra["swap"]})
    disks += [{"unit": next(units), "path": m.source} for m in host.mounts]
    return {
        "hw_version": ctx.config.get("vmware_hw_version") or HW_VERSION,
        "display_name": host.fqname,
        "guest_os": ctx.config.get("vmware_guestos") or GUEST_OS,
        "memsize": -(-max(4, host.memory // 2**20) // 4) * 4,
        "vcpus": ncpus,
        "nvram": f"{host.name}.nvram",
        "disks": disks,
        "console": f"hosts/{host.name}/console.log",
        "nic_model": ctx.config.get("vmware_nic") or NIC_MODEL,
        "nics": nics,
    }


def write_vmx(path: str, values: dict) -> None:
    """Write the .vmx file ``path`` (replacing it whole)."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(render_vmx(values))
    os.chmod(path + ".tmp", 0o755)       # as Workstation on Linux writes them (#!/usr/bin/vmware)
    os.replace(path + ".tmp", path)


def vmx_path(host, ctx) -> str:
    return ctx.path(ctx.host_state(host).get("backend", {}).get("vmx") or f"{host.name}.vmx")


def is_suspended(host, ctx) -> bool:
    """VMware writes ``checkpoint.vmState = "<vm>.vmss"`` into the .vmx of a suspended VM
    (and empties it when the VM resumes)."""
    try:
        with open(vmx_path(host, ctx), encoding="utf-8", errors="replace") as f:
            return any(_SUSPENDED.fullmatch(line) for line in f)
    except OSError:
        return False
