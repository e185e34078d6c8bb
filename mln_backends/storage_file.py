"""Storage plugin ``file``: a disk file per host, made from its template.

* Hypervisors that boot qcow2 (QEMU) get a copy-on-write overlay over the template;
  the others a sparse copy. The filesystem is grown to ``size`` (or template size +
  ``free_space``) with resize2fs.
* ``filepath DIR`` puts the disk at ``DIR/<host>.<project>`` (an NFS or SAN mount)
  instead of the project's ``images/`` directory.
* ``swap SIZE`` adds a swap disk ``images/swap_<host>``.

It is the default storage: it handles every host that no other storage plugin takes
(hosts with ``lvm``, ``nfs`` or ``iscsi`` are left to those plugins).
"""
from __future__ import annotations

import os
import threading

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Disk, format_size
from mln_core.private import protect_disk

from . import imagefs

OTHER_STORAGE = ("lvm", "iscsi", "nfs")


_BASE_LOCK = threading.Lock()


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "filepath", "keep the disk at DIR/<host>.<project> (e.g. a shared mount)")
    registry.keyword("host", "cow_filesystem", "UML: share the base image images/BASE; each host keeps only "
                                               "its own changes in a copy-on-write file")
    registry.keyword("host", "cow", "alias of cow_filesystem")


@hookimpl
def mln_validate(project, ctx):
    """``filepath`` must be a path this machine can have; ``cow_filesystem`` a plain name
    of a file in the project's ``images/`` (mln_core.names)."""
    from mln_core.names import name_problem, path_problem
    out = []
    for host in project.hosts.values():
        tree = host.tree
        line = tree.line("filepath") if tree is not None else None
        if line is not None:
            problem = path_problem(line.value, "filepath")
            if problem:
                out.append(Problem("error", f"host {host.name}: {problem}", line.pos))
            elif not any(tree.has(k) for k in OTHER_STORAGE) and \
                    not os.path.isdir(project.local_path(line.value)):
                out.append(Problem("warning", f"host {host.name}: filepath {line.value} is not a directory on "
                                   "this machine, so 'mln build' will fail", line.pos))
            elif not any(tree.has(k) for k in OTHER_STORAGE):
                why = _owned_elsewhere(host, project.local_path(line.value), ctx)
                if why:
                    out.append(Problem("error", f"host {host.name}: {why}", line.pos))
        for key in ("cow_filesystem", "cow"):
            line = tree.line(key) if tree is not None else None
            if line is not None and name_problem("template", line.value):
                out.append(Problem("error", f"host {host.name}: {key} takes a plain file name (letters, digits, "
                                   f"'.', '+', '-' and '_'), not '{line.value[:40]}'", line.pos))
    return out


def _owned_elsewhere(host, directory: str, ctx) -> str | None:
    """Why the host's ``filepath`` disk cannot be built: its file is another project's
    (or no project's) disk (mln_core.owners); read only, for ``mln check``."""
    from mln_core.owners import problem, recorded_paths
    from mln_core.sanpath import is_on_san
    from mln_core.store import Store
    projects = getattr(getattr(ctx, "config", None), "projects_dir", None)
    if not projects:
        return None
    pdir = os.path.join(projects, host.project)
    try:
        mine = recorded_paths(Store.read_state(pdir))
    except MlnError:
        mine = set()
    for suffix in ("", ".qcow2"):
        path = os.path.join(directory, host.fqname + suffix)
        why = problem(path, pdir, host.name, mine, is_on_san({"kind": "file", "path": path}, config=ctx.config))
        if why:
            return why
    return None


def _cow_base(host, template, size: int, ctx, machine) -> str | None:
    """For ``cow_filesystem BASE`` (UML): make the shared base once; its path, relative."""
    base = host.tree.get("cow_filesystem") or host.tree.get("cow")
    if base is None:
        return None
    if host.hypervisor != "uml":
        raise MlnError("cow_filesystem is for UML hosts (QEMU hosts get qcow2 overlays anyway)")
    if "/" in base or base.startswith("."):
        raise MlnError(f"cow_filesystem takes a plain name, not '{base}'")
    rel = os.path.join("images", base)
    with _BASE_LOCK:
        made = ctx.state.setdefault("cow_bases", {})
        if base in made:
            if made[base] != [template.name, size]:
                raise MlnError(f"cow_filesystem {base}: every host sharing it needs the same template and "
                               f"size ({made[base][0]}, {format_size(made[base][1])})")
            return rel
        _sparse_copy(template.path, ctx.path(rel), machine)
        if size > imagefs.image_size(template.path, machine) and imagefs.is_ext_filesystem(template.path):
            imagefs.grow_image(ctx.path(rel), size, machine)
        made[base] = [template.name, size]
    return rel


def _disk_paths(host, ctx, fmt: str) -> tuple[str, str]:
    """(absolute path, path to record: relative to the project directory when inside it)."""
    suffix = ".qcow2" if fmt == "qcow2" else ""
    filepath = host.tree.get("filepath")
    if filepath:
        directory = ctx.project.local_path(filepath)
        if not os.path.isdir(directory):
            raise MlnError(f"filepath {filepath} is not a directory" +
                           (f" ({directory})" if directory != filepath else ""))
        final = os.path.join(directory, f"{host.fqname}{suffix}")
        return ctx.outside(final), final      # written aside, moved in place when the build succeeds
    rel = os.path.join("images", host.name + suffix)
    return ctx.path(rel), rel


@hookimpl(trylast=True)
def mln_create_disk(host, ctx):
    if any(host.tree.has(k) for k in OTHER_STORAGE):
        return None
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    machine = ctx.on(host)
    hv = ctx.pm.keywords.hypervisors.get(host.hypervisor)
    formats = hv.disk_formats if hv else ("raw",)
    fmt = "qcow2" if "qcow2" in formats else "raw"
    if imagefs.is_qcow2(template.path) and fmt != "qcow2":
        raise MlnError(f"template {host.template} is a qcow2 image, which {host.hypervisor} cannot boot")
    path, record = _disk_paths(host, ctx, fmt)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = imagefs.is_ext_filesystem(template.path)
    template_size = imagefs.image_size(template.path, machine)
    size = _partitioned_size(host, template, host.disk_size(template_size, ctx.log), template_size, ext, ctx)
    try:
        if fmt == "qcow2":
            imagefs.create_overlay(template.path, path, machine=machine)
            protect_disk(path)
            if size > template_size:
                _grow(path, "qcow2", size, ext or imagefs.is_qcow2(template.path), ctx, machine)
        else:
            base = _cow_base(host, template, size, ctx, machine)
            if base is not None:
                _sparse_copy(ctx.path(base), path, machine)   # individualized, then made a COW file
            else:
                _sparse_copy(template.path, path, machine)
                if size > template_size:
                    _grow(path, "raw", size, ext, ctx, machine)
    except imagefs.ImageError as e:
        raise MlnError(f"making {path} from template {template.path}: {e}") from None
    extra = {"template": template.name}
    if fmt == "raw" and (host.tree.get("cow_filesystem") or host.tree.get("cow")):
        extra["cow_base"] = os.path.join("images", host.tree.get("cow_filesystem") or host.tree.get("cow"))
    _swap(host, ctx, machine, extra)
    return Disk(path=record, format=fmt, kind="file", size=size, extra=extra)


def _partitioned_size(host, template, size: int, template_size: int, ext: bool, ctx) -> int:
    """A whole-disk raw template (MBR/GPT) is not grown: mln grows filesystems, not
    partitions (a larger disk would leave the partition as it is, and a GPT's backup
    table away from the disk's end), so the disk keeps the template's size, with a
    warning."""
    if size <= template_size or ext or imagefs.is_qcow2(template.path) \
            or not imagefs.find_linux(template.path)[1]:
        return size
    ctx.log(f"warning: host {host.name}: template {template.name} is a partitioned disk, which mln does "
            f"not grow: the disk keeps the template's size ({format_size(template_size)}), "
            f"not {format_size(size)}")
    return template_size


def _swap(host, ctx, machine, extra: dict) -> None:
    """``swap SIZE``: a fresh swap disk ``images/swap_<host>`` (recorded in ``extra``)."""
    extra.pop("swap", None)
    if not host.swap:
        return
    swap_rel = os.path.join("images", f"swap_{host.name}")
    swap = ctx.path(swap_rel)
    with open(swap, "wb") as f:
        f.truncate(host.swap)
    protect_disk(swap)
    r = machine.run(["mkswap", "-q", swap], check=False, timeout=None, text=True)
    if r.returncode != 0:
        raise MlnError(f"mkswap {swap}: {r.stderr.strip()}")
    extra["swap"] = swap_rel


@hookimpl(trylast=True)
def mln_copy_disk(host, disk, ctx):
    """A copy of the host's disk file (a qcow2 overlay stays an overlay of its template),
    grown to the host's new size if that is larger. A UML copy-on-write disk over a shared
    base is not copied: the host is made afresh."""
    if disk.kind != "file" or any(host.tree.has(k) for k in OTHER_STORAGE) or disk.extra.get("cow_base"):
        return None
    machine = ctx.on(host)
    path, record = _disk_paths(host, ctx, disk.format)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _sparse_copy(disk.path, path, machine)
    size = disk.size or imagefs.image_size(path, machine)
    try:
        template = ctx.templates.resolve(host.template, f"host {host.name}")
        ext = imagefs.is_ext_filesystem(template.path) or imagefs.is_qcow2(template.path)
        tsize = imagefs.image_size(template.path, machine)
        wanted = _partitioned_size(host, template, host.disk_size(tsize, ctx.log), tsize, ext, ctx)
    except MlnError:                     # the template is gone: the disk keeps its size
        wanted, ext = size, False
    try:
        if wanted > size:
            _grow(path, disk.format, wanted, ext, ctx, machine)
            size = wanted
    except imagefs.ImageError as e:
        raise MlnError(f"growing the copy {path} of {disk.path}: {e}") from None
    extra = dict(disk.extra)
    _swap(host, ctx, machine, extra)
    return Disk(path=record, format=disk.format, kind="file", size=size, extra=extra)


def _grow(path: str, fmt: str, size: int, ext: bool, ctx, machine) -> None:
    """Grow the disk file ``path`` to ``size`` bytes, and its ext filesystem with it when it
    holds one (``ext``); raises imagefs.ImageError."""
    if fmt == "qcow2" and ext:
        imagefs.grow_qcow2(path, size, getattr(ctx, "record_helper", None), machine)
    elif fmt == "qcow2":
        try:
            machine.run(["qemu-img", "resize", "-q", path, str(size)], timeout=None)
        except MlnError as e:
            raise imagefs.ImageError(e.message) from None
    elif ext:
        imagefs.grow_image(path, size, machine)


def _sparse_copy(src: str, dst: str, machine) -> None:
    r = machine.run(["cp", "--sparse=always", "--reflink=auto", src, dst + ".part"], check=False,
                    timeout=None, text=True)
    if r.returncode != 0:
        raise MlnError(f"copying {src}: {r.stderr.strip()}")
    protect_disk(dst + ".part")                   # a guest's disk: readable by its owner only
    os.replace(dst + ".part", dst)


@hookimpl(trylast=True)
def mln_open_image(host, disk, ctx):
    """The disk's ext2/3/4 filesystem: the whole image's, or (a whole-disk MBR/GPT image)
    its first Linux partition's, which the build output names."""
    if disk.kind != "file":
        return None
    path = ctx.path(disk.path)
    if not imagefs.is_ext_filesystem(path) and not imagefs.is_qcow2(path):
        part, parts = imagefs.find_linux(path)
        if part is None:
            from .partitions import none_found
            ctx.log(f"host {host.name}: no filesystem to individualize: {none_found(parts)}")
            return None
    try:
        image = imagefs.open_image(path, on_helper=getattr(ctx, "record_helper", None), machine=ctx.on(host))
    except imagefs.NoFilesystem as e:
        from .partitions import none_found
        ctx.log(f"host {host.name}: no filesystem to individualize: {none_found(e.partitions)}")
        return None
    except imagefs.ImageError as e:
        raise MlnError(str(e)) from None
    if image.partition is not None:
        ctx.log(f"host {host.name}: individualizing {image.partition.describe()} of its disk")
    return image


EXPORTED = "disk.qcow2"


@hookimpl(trylast=True)
def mln_export_disk(host, disk, dest, ctx):
    """The disk as one compressed qcow2 file without a backing file (a qcow2 overlay is
    flattened: the template is not needed where it is imported); holes stay holes."""
    if disk.kind != "file":
        return None
    if disk.extra.get("cow_base"):
        raise MlnError("a cow_filesystem disk (a UML copy-on-write file over a shared base) cannot be "
                       "exported yet; build the host without cow_filesystem to export it")
    if not os.path.isfile(disk.path):
        raise MlnError(f"its disk {disk.path} is missing")
    ctx.on(host).run(["qemu-img", "convert", "-q", "-c", "-f", disk.format, "-O", "qcow2", disk.path,
                      os.path.join(dest, EXPORTED)], what=f"exporting {disk.path}", timeout=None)
    return {"storage": "file", "format": disk.format, "file": EXPORTED}


@hookimpl(trylast=True)
def mln_import_disk(host, disk, src, ctx):
    """The exported qcow2 back as the host's disk, raw (sparse) or qcow2 as it was, in
    ``images/`` or under ``filepath``; a new swap disk."""
    if disk.kind != "file" or any(host.tree.has(k) for k in OTHER_STORAGE):
        return None
    if disk.format not in ("raw", "qcow2") or disk.extra.get("cow_base"):
        raise MlnError(f"the archive's {disk.format} file disk cannot be imported")
    image = os.path.join(src, EXPORTED)
    if not os.path.isfile(image):
        raise MlnError(f"the archive holds no disks/{host.name}/{EXPORTED}")
    machine = ctx.on(host)
    _plain_qcow2(image, machine)
    path, record = _disk_paths(host, ctx, disk.format)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    machine.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", disk.format, image, path + ".part"],
                what=f"importing the disk of host {host.name}", timeout=None)
    protect_disk(path + ".part")
    os.replace(path + ".part", path)
    extra = dict(disk.extra)
    _swap(host, ctx, machine, extra)
    return Disk(path=record, format=disk.format, kind="file", size=disk.size, extra=extra)


def _plain_qcow2(image: str, machine) -> None:
    """An imported image is a qcow2 that reads no other file of this machine (a backing
    file or an external data file in an archive could name any)."""
    import json
    r = machine.run(["qemu-img", "info", "--output=json", "-f", "qcow2", image], check=False, text=True)
    try:
        info = json.loads(r.stdout) if r.returncode == 0 else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise MlnError(f"the archive's {os.path.basename(image)} is not a qcow2 image")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or info.get("full-backing-filename") or specific.get("data-file"):
        raise MlnError(f"the archive's {os.path.basename(image)} refers to another file (a backing or data "
                       "file); refused")


@hookimpl
def mln_remove_host(host, ctx):
    """Delete a ``filepath`` disk (a failed build's is still in its staging folder, which
    ``ctx.path`` names; the old project's file in its place is not touched)."""
    disk = ctx.host_state(host).get("disk") or {}
    if disk.get("kind") == "file" and os.path.isabs(disk.get("path", "")):
        path = ctx.path(disk["path"])
        if os.path.isfile(path):
            os.unlink(path)


@hookimpl
def mln_doctor(ctx):
    fuse = ctx.on().device_exists("/dev/fuse")
    return [tool("debugfs", "individualizes ext2/3/4 guest filesystems without mounting", "e2fsprogs"),
            tool("qemu-storage-daemon", "opens qcow2 and partitioned images for individualization", "qemu-utils"),
            {"name": "FUSE", "ok": fuse, "detail": "/dev/fuse: qemu-storage-daemon's exports" if fuse
             else "no /dev/fuse: qcow2 images cannot be individualized", "remedy": "modprobe fuse"}]
