"""Whole-disk templates (MBR and GPT): mln individualizes their first Linux partition with
an ext2/3/4 filesystem (debugfs at an offset) and a QEMU guest boots it (root=/dev/vda1)."""
from __future__ import annotations

import subprocess
import uuid
import zlib

import pytest

from mln_backends import imagefs
from mln_backends.partitions import find_linux, read_table, root_partition

MiB = 2 ** 20
SECTOR = 512
LINUX_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"


def _mbr_entry(kind: int, first: int, count: int) -> bytes:
    chs = bytes([0, 0, 2, 0, kind, 0xFF, 0xFF, 0xFF])
    return chs + first.to_bytes(4, "little") + count.to_bytes(4, "little")


def _write_mbr(f, entries: list[bytes]) -> None:
    f.seek(446)
    f.write(b"".join(entries).ljust(64, b"\0") + b"\x55\xaa")


def _gpt_header(current: int, backup: int, entries_lba: int, last_usable: int, crc_entries: int) -> bytes:
    h = bytearray(92)
    h[0:8] = b"EFI PART"
    h[8:12] = (0x00010000).to_bytes(4, "little")
    h[12:16] = (92).to_bytes(4, "little")
    h[24:32] = current.to_bytes(8, "little")
    h[32:40] = backup.to_bytes(8, "little")
    h[40:48] = (34).to_bytes(8, "little")
    h[48:56] = last_usable.to_bytes(8, "little")
    h[56:72] = uuid.UUID("5b0f8c5e-0000-4000-8000-00000000d15c").bytes_le
    h[72:80] = entries_lba.to_bytes(8, "little")
    h[80:84] = (128).to_bytes(4, "little")
    h[84:88] = (128).to_bytes(4, "little")
    h[88:92] = crc_entries.to_bytes(4, "little")
    h[16:20] = zlib.crc32(bytes(h)).to_bytes(4, "little")
    return bytes(h)


def _write_gpt(f, size: int, parts: list[tuple[str, int, int]]) -> None:
    """A protective MBR and primary + backup GPT with ``parts`` (type GUID, first, last LBA)."""
    total = size // SECTOR
    _write_mbr(f, [_mbr_entry(0xEE, 1, min(total - 1, 0xFFFFFFFF))])
    table = bytearray(128 * 128)
    for k, (guid, first, last) in enumerate(parts):
        e = table[k * 128:(k + 1) * 128]
        e[0:16] = uuid.UUID(guid).bytes_le
        e[16:32] = uuid.UUID(int=k + 1).bytes_le
        e[32:40] = first.to_bytes(8, "little")
        e[40:48] = last.to_bytes(8, "little")
        e[56:56 + 8] = "root".encode("utf-16-le")
        table[k * 128:(k + 1) * 128] = e
    crc = zlib.crc32(bytes(table))
    for hdr_lba, other, entries_lba in ((1, total - 1, 2), (total - 1, 1, total - 33)):
        f.seek(entries_lba * SECTOR)
        f.write(table)
        f.seek(hdr_lba * SECTOR)
        f.write(_gpt_header(hdr_lba, other, entries_lba, total - 34, crc))


def make_disk(path, table: str, fs, size: int = 80 * MiB) -> None:
    """A sparse whole-disk image with the filesystem image ``fs`` in partition 1 at 1 MiB
    and a small swap partition 2 after it."""
    fs_size = fs.stat().st_size
    first, count = MiB // SECTOR, fs_size // SECTOR
    with open(path, "wb") as f:
        f.truncate(size)
        if table == "mbr":
            _write_mbr(f, [_mbr_entry(0x83, first, count), _mbr_entry(0x82, first + count, 2048)])
        else:
            _write_gpt(f, size, [(LINUX_GUID, first, first + count - 1),
                                 (SWAP_GUID, first + count, first + count + 2047)])
    subprocess.run(["dd", f"if={fs}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"],
                   check=True)


@pytest.fixture(scope="module")
def disks(tmp_path_factory, test_template):
    d = tmp_path_factory.mktemp("disks")
    out = {}
    for table in ("mbr", "gpt"):
        out[table] = d / f"{table}.img"
        make_disk(out[table], table, test_template / "busybox.ext4")
    return out


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_partition_table_is_read_and_partition_opened(disks, table, tmp_path):
    img = disks[table]
    parts = read_table(img)
    assert [(p.number, p.start, p.linux, p.table) for p in parts] == [
        (1, MiB, True, table.upper()), (2, MiB + 64 * MiB, False, table.upper())]
    part, _ = find_linux(img)
    assert part is parts[0] or part == parts[0]
    assert root_partition(img).number == 1
    assert "partition 1 (Linux" in part.describe() and "at 1 MiB, 64 MiB" in part.describe()
    copy = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(copy)], check=True)
    with imagefs.open_image(copy) as g:
        assert g.partition.number == 1
        assert g.exists("/etc/inittab")
        g.write("/etc/mln-test", b"hello\n")
    with imagefs.open_image(copy) as g:
        assert g.read("/etc/mln-test") == b"hello\n"
    # the partition table and the other partition are untouched
    assert read_table(copy) == parts
    r = subprocess.run(["e2fsck", "-fn", f"{copy}?offset={MiB}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_linux_partition_names_the_partitions(tmp_path, disks):
    img = tmp_path / "swaponly.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
        _write_mbr(f, [_mbr_entry(0x82, 2048, 4096)])
    with pytest.raises(imagefs.NoFilesystem, match=r"partition 1 \(Linux swap, MBR, at 1 MiB, 2 MiB\)"):
        imagefs.open_image(img)
    assert root_partition(img) is None


PROJECT = """global {
    project parts
}
superclass node {
    hypervisor qemu
    memory 96M
    size 200M
    startup {
        echo "MLN-CHECK hostname $(hostname)"
        echo "MLN-CHECK root $(grep ' / ' /proc/mounts | cut -d' ' -f1 | grep -v rootfs | xargs)"
    }
}
host mbrhost {
    superclass node
    template mbr.img
}
host gpthost {
    superclass node
    template gpt.img
}
"""


@pytest.mark.guests
def test_mbr_and_gpt_templates_are_individualized_and_boot_under_qemu(mln_env, disks, test_template):
    for table in ("mbr", "gpt"):
        mln_env.register_template(disks[table], name=f"{table}.img", kernel=test_template / "vmlinux",
                                  initrd=test_template / "initrd.gz")
    path = mln_env.write("parts.mln", PROJECT)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "host mbrhost: individualizing partition 1 (Linux, MBR, at 1 MiB, 64 MiB) of its disk" in r.output
    assert "host gpthost: individualizing partition 1 (Linux filesystem, GPT, at 1 MiB, 64 MiB)" in r.output
    assert "partitioned disk, which mln does not grow" in r.output      # size 200M: left as it is
    assert "holds no filesystem" not in r.output
    r = mln_env.mln("start", "-p", "parts")
    assert r.returncode == 0, r.output
    for host in ("mbrhost", "gpthost"):
        out = mln_env.wait_console("parts", host, r"MLN-CHECK root \S+")
        assert f"MLN-CHECK hostname {host}" in out
        assert "MLN-CHECK root /dev/vda1" in out
    # the mln_env fixture stops and removes the project


def test_logical_partition_in_an_extended_one(tmp_path, test_template):
    """MBR: 1 swap, 2 extended holding logical 5 (swap) and 6 (Linux, the filesystem)."""
    img = tmp_path / "logical.img"
    fs = test_template / "busybox.ext4"
    count = fs.stat().st_size // SECTOR
    ext_first = 4096
    with open(img, "wb") as f:
        f.truncate(80 * MiB)
        _write_mbr(f, [_mbr_entry(0x82, 2048, 2048), _mbr_entry(0x05, ext_first, 2048 + 2048 + count + 2048)])
        f.seek(ext_first * SECTOR)                  # EBR 1: logical 5, link to EBR 2
        _write_mbr_at(f, ext_first, [_mbr_entry(0x82, 2048, 2048), _mbr_entry(0x05, 4096, count + 2048)])
        _write_mbr_at(f, ext_first + 4096, [_mbr_entry(0x83, 2048, count)])
    fs_at = (ext_first + 4096 + 2048) * SECTOR
    subprocess.run(["dd", f"if={fs}", f"of={img}", "bs=1M", f"seek={fs_at // MiB}", "conv=notrunc,sparse",
                    "status=none"], check=True)
    part, parts = find_linux(img)
    assert [p.number for p in parts] == [1, 2, 5, 6]
    assert part.number == 6 and part.start == fs_at
    with imagefs.open_image(img) as g:
        assert g.exists("/etc/inittab")


def _write_mbr_at(f, lba: int, entries: list[bytes]) -> None:
    f.seek(lba * SECTOR + 446)
    f.write(b"".join(entries).ljust(64, b"\0") + b"\x55\xaa")


def make_boot_and_root_disk(path, tmp_path, root_fs) -> None:
    """MBR: partition 1 a small ext2 /boot (a kernel file, no /etc), partition 2 the root."""
    boot_dir = tmp_path / "bootfiles"
    boot_dir.mkdir()
    (boot_dir / "vmlinuz-test").write_bytes(b"\0" * 4096)
    boot = tmp_path / "boot.ext2"
    subprocess.run(["mkfs.ext2", "-q", "-F", "-d", str(boot_dir), str(boot), "8M"], check=True)
    count = root_fs.stat().st_size // SECTOR
    with open(path, "wb") as f:
        f.truncate(80 * MiB)
        _write_mbr(f, [_mbr_entry(0x83, 2048, 8 * MiB // SECTOR), _mbr_entry(0x83, 2048 + 16384, count)])
    for fs, at in ((boot, 1), (root_fs, 9)):
        subprocess.run(["dd", f"if={fs}", f"of={path}", "bs=1M", f"seek={at}", "conv=notrunc,sparse",
                        "status=none"], check=True)


def test_a_separate_boot_partition_is_passed_over_for_the_root(tmp_path, test_template, mln_env):
    """The root is the Linux partition with an /etc, not a /boot before it; a VMware guest's
    fstab names it (/dev/sda2)."""
    from tests.vmware.test_vmware import VM
    img = tmp_path / "bootroot.img"
    make_boot_and_root_disk(img, tmp_path, test_template / "busybox.ext4")
    part, parts = find_linux(img)
    assert [p.number for p in parts] == [1, 2] and part.number == 2
    vm = VM(mln_env, test_template)
    mln_env.register_template(img, name="bootroot.img")
    vm.build("br.mln", """global {
    project br
}
host h {
    vmware
    template bootroot.img
}
""")
    raw = tmp_path / "h.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(mln_env.projects / "br" / "images" / "h.vmdk"),
                    str(raw)], check=True)
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", f"{raw}?offset={part.start}"],
                           capture_output=True, text=True).stdout
    assert "/dev/sda2\t/\text4" in fstab, fstab
