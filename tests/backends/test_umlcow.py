"""The UML copy-on-write writer: header, bitmap and data as UML reads them."""
import os

from mln_backends.umlcow import SECTOR, layout, read_header, write_cow


def _apply(cow: bytes, base: bytes, size: int) -> bytes:
    bo, bl, do = layout(size)
    out = bytearray(base)
    for i, byte in enumerate(cow[bo:bo + bl]):
        for j in range(8):
            if byte >> j & 1:
                s = (i * 8 + j) * SECTOR
                out[s:s + SECTOR] = cow[do + s:do + s + SECTOR]
    return bytes(out)


def test_cow_round_trip_and_header(tmp_path):
    size = 3 * 2**20
    base = bytearray(os.urandom(size))
    (tmp_path / "base").write_bytes(base)
    changed = bytearray(base)
    changed[5000:5010] = b"individual"
    changed[size - 1] ^= 0xFF
    (tmp_path / "host").write_bytes(changed)
    stored = write_cow(str(tmp_path / "host"), str(tmp_path / "base"), str(tmp_path / "host.cow"),
                       backing_name="/final/place/base")
    assert stored == 16                                   # two 4 KiB pages
    h = read_header(str(tmp_path / "host.cow"))
    assert (h["magic"], h["version"], h["size"], h["sectorsize"], h["alignment"], h["format"]) == \
        (0x4F4F4F4D, 3, size, 512, 4096, 0)
    assert h["backing_file"] == "/final/place/base"
    assert h["mtime"] == int(os.stat(tmp_path / "base").st_mtime)
    cow = (tmp_path / "host.cow").read_bytes()
    assert _apply(cow, bytes(base), size) == bytes(changed)
    assert os.path.getsize(tmp_path / "host.cow") >= layout(size)[2]


def test_unchanged_copy_stores_nothing(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 8192)
    (tmp_path / "b").write_bytes(b"x" * 8192)
    assert write_cow(str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c.cow")) == 0
