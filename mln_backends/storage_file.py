"""Storage plugin ``file``: a disk file per host, made from its template.

* Hypervisors that boot qcow2 (QEMU) get a copy-on-write overlay over the template;
  the others a sparse copy. The filesystem is grown to ``size`` (or template size +
  ``free_space``) with resize2fs.
* ``filepath DIR`` puts the disk at ``DIR/<host>.<project>`` (an NFS or SAN mount)
  instead of the project's ``images/`` directory.
* ``swap SIZE`` adds a swap disk ``images/swap_<host>``.

It is the default storage: it handles every host that no other storage plugin takes
(hosts with ``lvm`` are left to the LVM plugin).
"""
from __future__ import annotations

import os
import subprocess

from mln_core import hookimpl
from mln_core.errors import MlnError
from mln_core.model import Disk, format_size

from . import imagefs

OTHER_STORAGE = ("lvm", "iscsi")
EXT_MAGIC_OFFSET = 1080


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "filepath", "keep the disk at DIR/<host>.<project> (e.g. a shared mount)")


def _is_ext(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(EXT_MAGIC_OFFSET)
            return f.read(2) == b"\x53\xef"
    except OSError:
        return False


def _wanted_size(host, template_size: int, ctx) -> int:
    if host.free_space is not None:
        return template_size + host.free_space
    size = host.size or template_size
    if size < template_size:
        ctx.log(f"warning: host {host.name}: size {format_size(size)} is smaller than template "
                f"{host.template} ({format_size(template_size)}); using the template's size")
        return template_size
    return size


def _disk_paths(host, ctx, fmt: str) -> tuple[str, str]:
    """(absolute path, path to record: relative to the project directory when inside it)."""
    suffix = ".qcow2" if fmt == "qcow2" else ""
    filepath = host.tree.get("filepath")
    if filepath:
        if not os.path.isdir(filepath):
            raise MlnError(f"filepath {filepath} is not a directory")
        path = os.path.join(filepath, f"{host.fqname}{suffix}")
        return path, path
    rel = os.path.join("images", host.name + suffix)
    return ctx.path(rel), rel


@hookimpl(trylast=True)
def mln_create_disk(host, ctx):
    if any(host.tree.has(k) for k in OTHER_STORAGE):
        return None
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    hv = ctx.pm.keywords.hypervisors.get(host.hypervisor)
    formats = hv.disk_formats if hv else ("raw",)
    fmt = "qcow2" if "qcow2" in formats else "raw"
    if imagefs.is_qcow2(template.path) and fmt != "qcow2":
        raise MlnError(f"template {host.template} is a qcow2 image, which {host.hypervisor} cannot boot")
    path, record = _disk_paths(host, ctx, fmt)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = _is_ext(template.path)
    template_size = imagefs.image_size(template.path)
    size = _wanted_size(host, template_size, ctx)
    try:
        if fmt == "qcow2":
            imagefs.create_overlay(template.path, path)
            if size > template_size:
                if ext or imagefs.is_qcow2(template.path):
                    imagefs.grow_qcow2(path, size)
                else:
                    subprocess.run(["qemu-img", "resize", "-q", path, str(size)], check=True,
                                   capture_output=True)
        else:
            _sparse_copy(template.path, path)
            if size > template_size and ext:
                imagefs.grow_image(path, size)
    except (imagefs.ImageError, subprocess.CalledProcessError) as e:
        raise MlnError(f"making {path} from template {template.path}: {e}") from None
    extra = {"template": template.name}
    if host.swap:
        swap_rel = os.path.join("images", f"swap_{host.name}")
        swap = ctx.path(swap_rel)
        with open(swap, "wb") as f:
            f.truncate(host.swap)
        r = subprocess.run(["mkswap", "-q", swap], capture_output=True, text=True)
        if r.returncode != 0:
            raise MlnError(f"mkswap {swap}: {r.stderr.strip()}")
        extra["swap"] = swap_rel
    return Disk(path=record, format=fmt, kind="file", size=size, extra=extra)


def _sparse_copy(src: str, dst: str) -> None:
    r = subprocess.run(["cp", "--sparse=always", "--reflink=auto", src, dst + ".part"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise MlnError(f"copying {src}: {r.stderr.strip()}")
    os.replace(dst + ".part", dst)


@hookimpl(trylast=True)
def mln_open_image(host, disk, ctx):
    if disk.kind != "file":
        return None
    path = disk.path if os.path.isabs(disk.path) else ctx.path(disk.path)
    if not _is_ext(path) and not imagefs.is_qcow2(path):
        return None
    try:
        return imagefs.open_image(path, on_helper=getattr(ctx, "record_helper", None))
    except imagefs.ImageError as e:
        raise MlnError(str(e)) from None


@hookimpl
def mln_remove_host(host, ctx):
    filepath = host.tree.get("filepath") if host.tree is not None else None
    if filepath:
        for suffix in ("", ".qcow2"):
            path = os.path.join(filepath, f"{host.fqname}{suffix}")
            if os.path.isfile(path):
                os.unlink(path)
