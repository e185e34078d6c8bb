"""The partitions of a whole-disk image: MBR (primary and logical) and GPT tables, read in
Python (no kernel partition scanner, no sfdisk), and the first Linux partition holding an
ext2/3/4 filesystem, which mln individualizes (debugfs opens it at its offset: see
:class:`mln_backends.guestfs_ext.Ext4Image`).

Sectors are 512 bytes (what QEMU, Xen and VMware give their virtual disks).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from .imageformat import ImageError, device_size, is_ext_filesystem

SECTOR = 512
MBR_LINUX = 0x83
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_GPT = 0xEE
GPT_LINUX = {
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "44479540-f297-41b2-9af7-d131d5f0458a": "Linux root (x86)",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (ARM64)",
}
GPT_NAMES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
}
MBR_NAMES = {0x83: "Linux", 0x82: "Linux swap", 0x8E: "Linux LVM", 0x07: "NTFS/exFAT", 0x0B: "FAT32",
             0x0C: "FAT32", 0x06: "FAT16", 0xEF: "EFI system", 0xFD: "Linux RAID"}
_MAX_LOGICAL = 128


@dataclass(frozen=True)
class Partition:
    number: int          # as Linux numbers it: vda1.. (MBR logical partitions from 5)
    start: int           # bytes from the start of the disk
    size: int            # bytes
    kind: str            # "83" (MBR type, hex) or the GPT type GUID
    table: str           # "MBR" or "GPT"

    @property
    def linux(self) -> bool:
        return self.kind == "83" if self.table == "MBR" else self.kind in GPT_LINUX

    @property
    def type_name(self) -> str:
        if self.table == "MBR":
            return MBR_NAMES.get(int(self.kind, 16), f"type 0x{self.kind}")
        return GPT_LINUX.get(self.kind) or GPT_NAMES.get(self.kind) or f"type {self.kind}"

    def describe(self) -> str:
        """E.g. ``partition 1 (Linux, MBR, at 1 MiB, 79 MiB)``."""
        return (f"partition {self.number} ({self.type_name}, {self.table}, at {_size(self.start)}, "
                f"{_size(self.size)})")


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= factor and n % (factor // 16 or 1) == 0:
            v = n / factor
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


def _read(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def read_table(path: str | os.PathLike) -> list[Partition]:
    """The partitions of a whole-disk image (raw file or block device), in table order;
    [] if it has no MBR/GPT partition table (e.g. it is a bare filesystem)."""
    path = os.fspath(path)
    try:
        disk = device_size(path)
        with open(path, "rb") as f:
            mbr = _read(f, 0, SECTOR)
            if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
                return []
            entries = [mbr[446 + 16 * k:462 + 16 * k] for k in range(4)]
            if any(e[4] == MBR_GPT for e in entries):
                return _gpt(f, disk)
            return _mbr(f, entries, disk)
    except OSError as e:
        raise ImageError(f"{path}: cannot read the partition table: {e.strerror or e}") from None


def _mbr(f, entries: list[bytes], disk: int) -> list[Partition]:
    out: list[Partition] = []
    if any(e[0] not in (0, 0x80) for e in entries):   # not a partition table (a boot sector, say)
        return []
    for k, e in enumerate(entries):
        kind, first, count = e[4], int.from_bytes(e[8:12], "little"), int.from_bytes(e[12:16], "little")
        if kind == 0 or count == 0:
            continue
        if kind in MBR_EXTENDED:
            out += _logical(f, first, disk)
        out.append(Partition(k + 1, first * SECTOR, count * SECTOR, f"{kind:02x}", "MBR"))
    return sorted(out, key=lambda p: p.number)


def _logical(f, ext_first: int, disk: int) -> list[Partition]:
    """The logical partitions: a chain of EBRs, each relative to the extended partition."""
    out: list[Partition] = []
    ebr_at = ext_first
    for n in range(5, 5 + _MAX_LOGICAL):
        ebr = _read(f, ebr_at * SECTOR, SECTOR)
        if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
            break
        e1, e2 = ebr[446:462], ebr[462:478]
        if e1[4] != 0 and int.from_bytes(e1[12:16], "little"):
            start = (ebr_at + int.from_bytes(e1[8:12], "little")) * SECTOR
            size = int.from_bytes(e1[12:16], "little") * SECTOR
            out.append(Partition(n, start, size, f"{e1[4]:02x}", "MBR"))
        nxt = int.from_bytes(e2[8:12], "little")
        if e2[4] not in MBR_EXTENDED or nxt == 0 or (ext_first + nxt) * SECTOR >= disk:
            break
        ebr_at = ext_first + nxt
    return out


def _gpt(f, disk: int) -> list[Partition]:
    hdr = _read(f, SECTOR, 92)
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        return []
    lba = int.from_bytes(hdr[72:80], "little")
    count = min(int.from_bytes(hdr[80:84], "little"), 1024)
    esize = int.from_bytes(hdr[84:88], "little")
    if not 128 <= esize <= 4096 or esize % 128:      # a damaged header: no partition table to trust
        return []
    table = _read(f, lba * SECTOR, count * esize)
    out = []
    for k in range(len(table) // esize):
        e = table[k * esize:(k + 1) * esize]
        if e[:16] == bytes(16):
            continue
        first, last = int.from_bytes(e[32:40], "little"), int.from_bytes(e[40:48], "little")
        if last < first:
            continue
        out.append(Partition(k + 1, first * SECTOR, (last - first + 1) * SECTOR,
                             str(uuid.UUID(bytes_le=e[:16])), "GPT"))
    return out


def find_linux(path: str | os.PathLike) -> tuple[Partition | None, list[Partition]]:
    """(the guest's root partition or None, all partitions): the first Linux partition
    holding an ext2/3/4 filesystem with an ``/etc`` (a separate ``/boot`` comes first on
    many disks), else the first Linux one with such a filesystem."""
    parts = read_table(path)
    found = [p for p in parts if p.linux and is_ext_filesystem(path, p.start)]
    if len(found) > 1:
        return next((p for p in found if _has_etc(path, p)), found[0]), parts
    return (found[0] if found else None), parts


def _has_etc(path, part: Partition) -> bool:
    from mln_core.machine import local
    r = local().run(["debugfs", "-c", "-R", "stat /etc", f"{os.fspath(path)}?offset={part.start}"],
                    check=False, text=True)
    return "Type: directory" in (r.stdout or "")


def root_suffix(host, ctx) -> str:
    """What follows the guest's disk device for its root (``mln_guest_devices``): "" for a
    bare filesystem template (or a qcow2 one, which mln does not read, or none yet), else
    the number of the partition mln individualizes ("1": /dev/vda1, /dev/sda1)."""
    from mln_core.errors import MlnError
    from .imageformat import is_qcow2
    try:
        path = ctx.templates.resolve(host.template, f"host {host.name}").path
        part = None if is_qcow2(path) else root_partition(path)
    except (MlnError, AttributeError, OSError, TypeError):     # no template (yet): the default
        return ""
    return str(part.number) if part else ""


def root_partition(path: str | os.PathLike) -> Partition | None:
    """For a template: None if it is a bare ext2/3/4 filesystem (or holds none mln can
    find), else the partition mln individualizes, which is the guest's root."""
    if is_ext_filesystem(path):
        return None
    return find_linux(path)[0]


def none_found(parts: list[Partition]) -> str:
    """Why no partition is individualized, naming the partitions found."""
    if not parts:
        return "it has no MBR or GPT partition table either"
    return "none of its partitions is a Linux partition with an ext2/3/4 filesystem: " + \
        "; ".join(p.describe() for p in parts)


class NoFilesystem(ImageError):
    """A whole-disk image has partitions, but no Linux one with an ext2/3/4 filesystem."""

    def __init__(self, message: str, partitions: list[Partition]):
        super().__init__(message)
        self.partitions = partitions
