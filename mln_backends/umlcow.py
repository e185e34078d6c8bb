"""User-Mode Linux copy-on-write files, written without booting the guest.

UML's ``ubd0=<cow>,<backing>`` reads sectors whose bit is set in the COW file's bitmap
from the COW file and every other sector from the shared backing file. mln makes the
COW file from an individualized copy: every 4 KiB page that differs from the backing
file goes into the COW file (whole pages: UML reads a COW disk page by page, and a page
stored only in part came back corrupted), so it holds what makes the host itself.

Format (UML ``arch/um/drivers/cow_user.c``, version 3, big-endian, packed header):
magic ``MOOO``, version 3, the backing file's mtime (32 bits) and size, sector size,
alignment, format 0 (bitmap), the backing file's absolute path (4096 bytes); the bitmap
(one bit per sector, least significant bit first) at the header size rounded up to the
alignment; the data at the end of the bitmap rounded up to the alignment, each sector at
``data_offset + sector * 512`` (the file is sparse where sectors are not present).
"""
from __future__ import annotations

import os
import struct

from mln_core.private import protect_disk

MAGIC = 0x4F4F4F4D
VERSION = 3
SECTOR = 512
ALIGN = 4096
PATH_LEN = 4096
_HEADER = struct.Struct(">IIIQIII")
HEADER_SIZE = _HEADER.size + PATH_LEN
CHUNK = 1 << 20
GRAIN = 4096


def _round_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def layout(size: int) -> tuple[int, int, int]:
    """(bitmap_offset, bitmap_len, data_offset) for a backing file of ``size`` bytes."""
    bitmap_offset = _round_up(HEADER_SIZE, ALIGN)
    bitmap_len = (size + SECTOR - 1) // SECTOR
    bitmap_len = (bitmap_len + 7) // 8
    return bitmap_offset, bitmap_len, _round_up(bitmap_offset + bitmap_len, ALIGN)


def write_cow(changed: str, backing: str, cow: str, backing_name: str | None = None) -> int:
    """Write ``cow`` holding the pages of ``changed`` that differ from ``backing``.

    Both files must have the same size. ``backing_name`` is the path written into the
    header (default: ``backing``), for a backing file that will be moved (same mtime and
    size). Returns the number of sectors stored.
    """
    st = os.stat(backing)
    name = os.path.abspath(backing_name or backing)
    size = st.st_size
    if os.path.getsize(changed) != size:
        raise ValueError(f"{changed} and {backing} differ in size")
    if len(name.encode()) >= PATH_LEN:
        raise ValueError(f"backing path too long: {name}")
    bitmap_offset, bitmap_len, data_offset = layout(size)
    bitmap = bytearray(bitmap_len)
    stored = 0
    with open(changed, "rb") as a, open(backing, "rb") as b, open(cow + ".part", "wb") as out:
        header = _HEADER.pack(MAGIC, VERSION, int(st.st_mtime) & 0xFFFFFFFF, size, SECTOR, ALIGN, 0)
        out.write(header + name.encode().ljust(PATH_LEN, b"\0"))
        pos = 0
        while pos < size:
            x = a.read(CHUNK)
            y = b.read(CHUNK)
            if x != y:
                for off in range(0, len(x), GRAIN):
                    gx = x[off:off + GRAIN]
                    if gx != y[off:off + GRAIN]:
                        first = (pos + off) // SECTOR
                        for k in range((len(gx) + SECTOR - 1) // SECTOR):
                            sector = first + k
                            bitmap[sector // 8] |= 1 << (sector % 8)
                        out.seek(data_offset + first * SECTOR)
                        out.write(gx)
                        stored += (len(gx) + SECTOR - 1) // SECTOR
            pos += len(x)
        out.seek(bitmap_offset)
        out.write(bitmap)
        out.truncate(max(out.seek(0, os.SEEK_END), data_offset))
    protect_disk(cow + ".part")
    os.replace(cow + ".part", cow)
    return stored


def read_header(cow: str) -> dict:
    with open(cow, "rb") as f:
        raw = f.read(HEADER_SIZE)
    magic, version, mtime, size, sector, align, fmt = _HEADER.unpack_from(raw)
    path = raw[_HEADER.size:].split(b"\0", 1)[0].decode()
    return {"magic": magic, "version": version, "mtime": mtime, "size": size, "sectorsize": sector,
            "alignment": align, "format": fmt, "backing_file": path}
