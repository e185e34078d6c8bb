"""Guest images without booting or mounting them: the one module the plugins import.

* :class:`Ext4Image` (:mod:`mln_backends.guestfs_ext`) implements
  :class:`mln_core.guest.GuestFS` on a raw ext4 image file (or block device) with
  ``debugfs`` from e2fsprogs.
* :func:`grow_image`, :func:`image_size`, :func:`create_overlay`, :func:`grow_qcow2`
  (:mod:`mln_backends.imagesize`) manage raw and qcow2 images.
* :func:`raw_view` (:mod:`mln_backends.imageexport`) exports a qcow2 image as a raw file
  through a ``qemu-storage-daemon`` FUSE export, so that :class:`Ext4Image` (and
  resize2fs/e2fsck) can work on it; :func:`open_image` opens either kind of image as a
  GuestFS.
* :func:`is_ext_filesystem` and :func:`is_qcow2` (:mod:`mln_backends.imageformat`) tell
  the kind of an image; :func:`find_linux` (:mod:`mln_backends.partitions`) finds the
  first Linux partition with an ext2/3/4 filesystem of a whole-disk (MBR or GPT) image,
  which :func:`open_image` opens at its offset.

The parts are imported on first use (``imagefs.grow_image`` imports
:mod:`mln_backends.imagesize`), so that commands that touch no image, such as ``mln
check``, do not pay for them.

Every tool runs on the :class:`mln_core.machine.Machine` given as ``machine`` (plugins
pass ``ctx.on(host)``), by default this machine.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mln_core.machine import Machine

    from .guestfs_ext import Ext4Image

_PARTS = {
    "ImageError": "imageformat",
    "is_ext_filesystem": "imageformat",
    "is_qcow2": "imageformat",
    "Ext4Image": "guestfs_ext",
    "raw_view": "imageexport",
    "grow_image": "imagesize",
    "image_size": "imagesize",
    "create_overlay": "imagesize",
    "grow_qcow2": "imagesize",
    "find_linux": "partitions",
    "NoFilesystem": "partitions",
}
__all__ = [*_PARTS, "open_image"]


def __getattr__(name: str):
    part = _PARTS.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{part}", __package__), name)
    globals()[name] = value
    return value


def open_image(path: str | os.PathLike, on_helper=None, machine: Machine | None = None) -> Ext4Image:
    """Open a raw ext2/3/4 image or a qcow2 image (through :func:`raw_view`) as a GuestFS;
    a whole-disk image (MBR or GPT) at its first Linux partition with an ext2/3/4
    filesystem (the returned image's ``partition`` says which), NoFilesystem if it has
    partitions but none of them.

    For qcow2 the FUSE export is stopped when the returned object is closed;
    ``on_helper`` is passed to :func:`raw_view`."""
    from .imageexport import raw_view
    from .imageformat import is_qcow2

    path = os.fspath(path)
    if not is_qcow2(path):
        return _open_raw(path, machine)
    stack = contextlib.ExitStack()
    try:
        raw = stack.enter_context(raw_view(path, on_helper=on_helper, machine=machine))
        img = _open_raw(raw, machine)
    except BaseException:
        stack.close()
        raise
    img.source = path
    img._on_close.append(stack.close)
    return img


def _open_raw(path: str, machine: Machine | None) -> Ext4Image:
    from .guestfs_ext import Ext4Image
    from .imageformat import is_ext_filesystem
    from .partitions import NoFilesystem, find_linux, none_found

    if is_ext_filesystem(path):
        return Ext4Image(path, machine)
    part, parts = find_linux(path)
    if part is None:
        if not parts:
            return Ext4Image(path, machine)      # ImageError: not an ext filesystem
        raise NoFilesystem(f"{path}: {none_found(parts)}", parts)
    img = Ext4Image(path, machine, part.start)
    img.partition = part
    return img
