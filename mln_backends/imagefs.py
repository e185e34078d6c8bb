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
    """Open a raw ext2/3/4 image or a qcow2 image (through :func:`raw_view`) as a GuestFS.

    For qcow2 the FUSE export is stopped when the returned object is closed;
    ``on_helper`` is passed to :func:`raw_view`."""
    from .guestfs_ext import Ext4Image
    from .imageexport import raw_view
    from .imageformat import is_qcow2

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
