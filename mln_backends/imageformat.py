"""What a guest image is, and the ground the image helpers share.

* :class:`ImageError`: an image could not be opened, read or changed.
* :func:`is_qcow2` and :func:`is_ext_filesystem` tell the kind of an image file (or block
  device) from its first bytes; :func:`superblock` reads the ext2/3/4 superblock of a raw
  one, :func:`device_size` its size, :func:`qemu_info` what ``qemu-img info`` says.
* :func:`run_tool` runs the image tools (debugfs, e2fsck, resize2fs, qemu-img,
  qemu-storage-daemon) on a :class:`mln_core.machine.Machine`, by default this machine.
"""
from __future__ import annotations

import json
import os
import stat as _stat
from dataclasses import dataclass

from mln_core.errors import MlnError
from mln_core.machine import Machine, local

EXT_MAGIC = 0xEF53
INCOMPAT_RECOVER = 0x0004
INCOMPAT_64BIT = 0x0080
QCOW_MAGIC = b"QFI\xfb"


class ImageError(MlnError):
    """A guest image could not be opened, read or changed (a user-facing error: the core
    reports it with the host and the step, as any MlnError)."""


def run_tool(machine: Machine | None, argv: list[str], *, input: bytes | None = None, env=None,
             timeout: float | None = None, missing: str | None = None, **kw):
    """Run an image tool to its end on ``machine`` (default: this machine) and return its
    result, whatever its exit status (output captured unless ``kw`` redirects it).
    ImageError if the tool is not installed (``missing`` says so, if given) or times out."""
    try:
        return (machine or local()).run(argv, check=False, input=input, env=env, timeout=timeout, **kw)
    except MlnError as e:
        if e.message == f"command not found: {argv[0]}":
            missing = missing or f"{argv[0]} is not installed (needed to work on guest images)"
            raise ImageError(missing) from None
        if e.message.endswith(f" did not finish in {timeout} s"):
            raise ImageError(f"{argv[0]} timed out after {timeout} s: {' '.join(argv)}") from None
        raise


def text(b: bytes) -> str:
    return b.decode("utf-8", "replace").strip()


def read_head(path: str, n: int, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read(n)
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {e.strerror or e}") from None


def is_qcow2(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the qcow2 magic."""
    return read_head(os.fspath(path), 4) == QCOW_MAGIC


def is_ext_filesystem(path: str | os.PathLike, offset: int = 0) -> bool:
    """True if ``path`` (a raw image or device) starts with an ext2/3/4 filesystem (at
    ``offset``: a partition's)."""
    head = read_head(os.fspath(path), 2048, offset)
    return len(head) >= 2048 and int.from_bytes(head[1024 + 56:1024 + 58], "little") == EXT_MAGIC


@dataclass(frozen=True)
class Super:
    block_size: int
    blocks: int
    incompat: int

    @property
    def size(self) -> int:
        return self.block_size * self.blocks


def superblock(path: str, offset: int = 0) -> Super:
    """Parse the ext2/3/4 superblock of a raw image (of its partition at ``offset``);
    ImageError if there is none."""
    head = read_head(path, 2048, offset)
    if head[:4] == QCOW_MAGIC and not offset:
        raise ImageError(f"{path}: is a qcow2 image, not a raw ext2/3/4 filesystem "
                         "(use open_image() or raw_view())")
    if len(head) < 2048 or int.from_bytes(head[1024 + 56:1024 + 58], "little") != EXT_MAGIC:
        at = f" at offset {offset}" if offset else ""
        raise ImageError(f"{path}: not an ext2/ext3/ext4 filesystem image (no ext superblock{at})")
    sb = head[1024:]
    blocks = int.from_bytes(sb[4:8], "little")
    log_bs = int.from_bytes(sb[24:28], "little")
    incompat = int.from_bytes(sb[96:100], "little")
    if incompat & INCOMPAT_64BIT:
        blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
    return Super(1024 << log_bs, blocks, incompat)


def device_size(path: str) -> int:
    """The size of a raw image file or block device."""
    st = os.stat(path)
    if _stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    return st.st_size


def qemu_info(path: str, machine: Machine | None = None) -> dict:
    """What ``qemu-img info`` says of an image (format, virtual-size, ...)."""
    r = run_tool(machine, ["qemu-img", "info", "-U", "--output=json", path])
    if r.returncode != 0:
        raise ImageError(f"{path}: qemu-img info failed: {text(r.stderr)}")
    return json.loads(r.stdout)
