"""Sizes of guest images: how big an image is, a qcow2 overlay of a given size over a
template, and growing raw and qcow2 images together with the ext2/3/4 filesystem inside.

The tools (qemu-img, e2fsck, resize2fs, qemu-storage-daemon) run on a
:class:`mln_core.machine.Machine`, by default this machine.
"""
from __future__ import annotations

import os
import stat as _stat

from mln_core.machine import Machine

from .imageexport import raw_view
from .imageformat import (ImageError, device_size, is_ext_filesystem, is_qcow2, qemu_info, run_tool, superblock,
                          text)
from .partitions import find_linux


def image_size(path: str | os.PathLike, machine: Machine | None = None) -> int:
    """Virtual size in bytes: qcow2 virtual size, block device size or raw file size."""
    path = os.fspath(path)
    if is_qcow2(path):
        return int(qemu_info(path, machine)["virtual-size"])
    return device_size(path)


def _fsck_and_resize(path: str, machine: Machine | None):
    r = run_tool(machine, ["e2fsck", "-f", "-y", path])
    if r.returncode not in (0, 1):
        raise ImageError(f"{path}: e2fsck -f -y failed (rc {r.returncode}): {text(r.stdout + r.stderr)}")
    r = run_tool(machine, ["resize2fs", path])
    if r.returncode != 0:
        raise ImageError(f"{path}: resize2fs failed (rc {r.returncode}): {text(r.stdout + r.stderr)}")


def grow_image(path: str | os.PathLike, size_bytes: int, machine: Machine | None = None) -> None:
    """Grow a raw ext2/3/4 image file sparsely to ``size_bytes`` and its filesystem with it."""
    path = os.fspath(path)
    sb = superblock(path)
    st = os.stat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path}: grow_image works on image files only")
    cur = st.st_size
    if size_bytes < cur:
        raise ImageError(f"{path}: cannot shrink the image to {size_bytes} bytes: the template image is "
                         f"larger ({cur} bytes); choose a size of at least {cur} bytes")
    if size_bytes > cur:
        os.truncate(path, size_bytes)
    if sb.size + sb.block_size <= size_bytes:  # the filesystem does not fill the file yet
        _fsck_and_resize(path, machine)


def create_overlay(template: str | os.PathLike, overlay: str | os.PathLike, size_bytes: int | None = None,
                   backing_format: str | None = None, machine: Machine | None = None) -> None:
    """Create (or re-create) the qcow2 copy-on-write ``overlay`` on top of ``template``.

    ``size_bytes`` (if given) must not be smaller than the template; the filesystem inside
    is not grown (see :func:`grow_qcow2`)."""
    template = os.path.abspath(os.fspath(template))
    overlay = os.fspath(overlay)
    if not os.path.exists(template):
        raise ImageError(f"{template}: template image not found")
    info = None
    if backing_format is None:
        info = qemu_info(template, machine)
        backing_format = info["format"]
    if size_bytes is not None:
        if info is None:
            info = qemu_info(template, machine)
        if size_bytes < int(info["virtual-size"]):
            raise ImageError(f"{overlay}: size {size_bytes} is smaller than the template {template} "
                             f"({info['virtual-size']} bytes)")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", template, "-F", backing_format, overlay]
    if size_bytes is not None:
        argv.append(str(size_bytes))
    r = run_tool(machine, argv)
    if r.returncode != 0:
        raise ImageError(f"{overlay}: qemu-img create failed: {text(r.stdout + r.stderr)}")


def grow_qcow2(path: str | os.PathLike, size_bytes: int, on_helper=None,
               machine: Machine | None = None) -> None:
    """Grow a qcow2 image (virtual size) and the ext2/3/4 filesystem inside it.
    ``on_helper`` is passed to :func:`mln_backends.imageexport.raw_view`."""
    path = os.fspath(path)
    cur = image_size(path, machine)
    if size_bytes < cur:
        raise ImageError(f"{path}: cannot shrink the image to {size_bytes} bytes: it is larger "
                         f"({cur} bytes); choose a size of at least {cur} bytes")
    if size_bytes > cur:
        r = run_tool(machine, ["qemu-img", "resize", "-q", "-f", "qcow2", path, str(size_bytes)])
        if r.returncode != 0:
            raise ImageError(f"{path}: qemu-img resize failed: {text(r.stdout + r.stderr)}")
    with raw_view(path, on_helper=on_helper, machine=machine) as raw:
        if not is_ext_filesystem(raw) and find_linux(raw)[1]:
            raise ImageError(f"{path}: a partitioned (whole-disk) image, whose partitions mln does not grow; "
                             "leave out size and free_space for this host")
        sb = superblock(raw)
        if sb.size + sb.block_size <= size_bytes:
            _fsck_and_resize(raw, machine)
