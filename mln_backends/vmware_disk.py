"""The disks of a VMware guest: VMDK files made from mln's raw images, and the names the
guest gives them.

Not a plugin: the ``vmware`` backend imports it. The ``file`` storage plugin makes a raw
copy of the template, the guest is individualized in that raw copy, and then
:func:`to_vmdk` converts it with ``qemu-img convert -O vmdk -o
subformat=monolithicSparse,adapter_type=lsilogic`` and deletes the raw copy.
monolithicSparse is ONE growable file (no ``-flat.vmdk`` / ``-s001.vmdk`` extents to keep
together) that Workstation, Player and Fusion open directly; ESXi needs it imported
(``vmkfstools -i``).
"""
from __future__ import annotations

import contextlib
import os

VMDK_OPTIONS = "subformat=monolithicSparse,adapter_type=lsilogic"


def disk_letters(host) -> list[str]:
    """Linux names SCSI disks in unit order: root, swap (if any), then the mounts."""
    n = 1 + (1 if host.swap else 0) + len(host.mounts)
    return [f"/dev/sd{chr(ord('a') + k)}" for k in range(n)]


def guest_devices(host, root_suffix: str = "") -> dict:
    """What the guest calls its disks and console (the answer to ``mln_guest_devices``);
    ``root_suffix``: the root partition's number on a whole-disk template ("1": /dev/sda1)."""
    letters = disk_letters(host)
    swap = letters[1] if host.swap else None
    return {"root": letters[0] + root_suffix, "swap": swap, "extra": letters[2 if host.swap else 1:], "console": "ttyS0"}


def image_format(path: str) -> str:
    """The format of the image ``path`` from its first bytes: vmdk, qcow2 or raw."""
    with open(path, "rb") as f:
        head = f.read(4)
    return {b"KDMV": "vmdk", b"QFI\xfb": "qcow2"}.get(head, "raw")


def to_vmdk(ctx, host, src_record: str, what: str) -> str:
    """Convert the image ``src_record`` (relative to the project or absolute) into
    ``<same>.vmdk`` and delete the source; return the record of the VMDK."""
    dst_record = src_record + ".vmdk"
    src = ctx.path(src_record)
    dst = ctx.outside(dst_record) if os.path.isabs(dst_record) else ctx.path(dst_record)
    # written under its final file name (a filepath disk in the build's staging folder, which
    # keeps the name): a monolithicSparse VMDK names its own file in its embedded descriptor
    try:
        ctx.on(host).run(["qemu-img", "convert", "-q", "-f", image_format(src), "-O", "vmdk",
                          "-o", VMDK_OPTIONS, src, dst], what=f"converting {what} {src} to VMDK", timeout=3600)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        raise
    os.unlink(src)
    return dst_record
