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
  the kind of an image.

Every tool runs on the :class:`mln_core.machine.Machine` given as ``machine`` (plugins
pass ``ctx.on(host)``), by default this machine.
"""
from __future__ import annotations

import contextlib
import os

from mln_core.machine import Machine

from .guestfs_ext import Ext4Image
from .imageexport import raw_view
from .imageformat import ImageError, is_ext_filesystem, is_qcow2
from .imagesize import create_overlay, grow_image, grow_qcow2, image_size

__all__ = [
    "ImageError",
    "Ext4Image",
    "grow_image",
    "image_size",
    "create_overlay",
    "grow_qcow2",
    "raw_view",
    "open_image",
    "is_ext_filesystem",
    "is_qcow2",
]


def open_image(path: str | os.PathLike, on_helper=None, machine: Machine | None = None) -> Ext4Image:
    """Open a raw ext2/3/4 image or a qcow2 image (through :func:`raw_view`) as a GuestFS.

    For qcow2 the FUSE export is stopped when the returned object is closed;
    ``on_helper`` is passed to :func:`raw_view`."""
    path = os.fspath(path)
    if not is_qcow2(path):
        return Ext4Image(path, machine)
    stack = contextlib.ExitStack()
    try:
        raw = stack.enter_context(raw_view(path, on_helper=on_helper, machine=machine))
        img = Ext4Image(raw, machine)
    except BaseException:
        stack.close()
        raise
    img.source = path
    img._on_close.append(stack.close)
    return img
