"""Storage plugin ``nfs``: a QEMU host's disk is a qcow2 file on an NFS export.

Keywords:

* host (or superclass) ``nfs SERVER:/export[/dir]``: the disk is
  ``/export[/dir]/<host>.<project>.qcow2`` on SERVER, which QEMU opens itself as
  ``nfs://SERVER/export[/dir]/<host>.<project>.qcow2`` (its libnfs driver, NFSv3; Debian
  package qemu-block-extra). ``nfs`` alone takes the directory from mln.conf's ``nfs``
  line. The directory must exist on the server.
* mln.conf ``nfs SERVER:/export[/dir]``: that default.

The disk is a full copy of the template in qcow2 (only the blocks the template uses are
written), not an overlay: it needs nothing outside the export, so every server that
mounts nothing but reaches the NFS server can run the guest (the disk is on shared storage
for migration, :mod:`mln_core.sanpath`). Its ext2/3/4 filesystem is grown to ``size`` (or
the template's size + ``free_space``) and individualized like any other.

Nothing needs a kernel NFS client: qemu-img writes ``nfs://`` URLs, the individualization
opens the disk through a ``qemu-storage-daemon`` FUSE export of an ``nfs`` block node
(:mod:`mln_backends.netdisk`), and files are deleted and renamed through libnfs. On a
server that mounts the export, ``filepath /mountpoint`` (the ``file`` plugin) reaches the
same files through the kernel instead.

A build makes the disk as ``<host>.<project>+mln-new.qcow2`` and renames it once the whole
build has succeeded (and the disk of the project it replaces is deleted), so that a failed or
killed build leaves only such a file, which the next build deletes. ``mln remove`` deletes
the disk file. A file ``<host>.<project>.qcow2`` that no build of this project made is never
overwritten.
``swap SIZE`` makes a local swap disk in the project directory. ``mln export``/``import``
carry the disk as a compressed qcow2. ``mln upgrade`` does not call ``mln_commit_host``: a
disk it makes keeps its temporary name (recorded as such; the next build uses the other
temporary name ``+mln-new2`` then).
"""
from __future__ import annotations

import contextlib

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Disk

from . import netdisk, storage_net

KEY = "nfs"
KIND = "nfs"
STAGED = "+mln-new"


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", KEY, "QEMU: keep the disk as <host>.<project>.qcow2 in the NFS directory "
                                  "SERVER:/export[/dir] (nothing: mln.conf's nfs)")


def nfs_dir(host, ctx) -> netdisk.NfsDir | None:
    """The NFS directory of the host's disk, None if it does not use nfs; MlnError if bad."""
    tree = host.tree
    if tree is None or not tree.has(KEY):
        return None
    words = tree.line(KEY).words[1:]
    if len(words) > 1:
        raise MlnError(f"nfs takes one NFS directory SERVER:/export[/dir], not '{' '.join(words)}'")
    value = words[0] if words else None
    if value is None:
        value = ctx.config.get("nfs")
        if not value:
            raise MlnError("nfs without a value needs an 'nfs SERVER:/export' line in mln.conf, and there is "
                           "none; give the directory: nfs SERVER:/export[/dir]")
    return netdisk.parse_nfs(value)


@hookimpl
def mln_validate(project, ctx):
    out = []
    for host in project.hosts.values():
        tree = host.tree
        if tree is None or not tree.has(KEY):
            continue
        try:
            nfs_dir(host, ctx)
        except MlnError as e:
            out.append(Problem("error", f"host {host.name}: {e.message}", tree.line(KEY).pos))
        out += storage_net.common_problems(host, KEY)
    return out


def _disk(d: netdisk.NfsDir, name: str, **extra) -> dict:
    return {"server": d.server, "dir": d.path, "file": name, "url": d.url(name), "shared": True, **extra}


def _names(host, d: netdisk.NfsDir, ctx, m) -> tuple[str, str]:
    """The file name to write the new disk under, and its final name; deletes a killed
    build's leftovers; MlnError if the final name is taken by a file this project did not make."""
    final = f"{host.fqname}.qcow2"
    staged = [f"{host.fqname}{STAGED}{n}.qcow2" for n in ("", "2")]
    old = {(o.get("extra") or {}).get("url") for o in storage_net.old_disks(host, ctx)
           if o.get("kind") == KIND}
    have = dict(zip([final, *staged], netdisk.nfs_file(m, d, "exists", final, *staged)["exists"]))
    for n in staged:                    # a killed build's: the '+' is in no host's or project's name
        if have[n] and d.url(n) not in old:
            ctx.log(f"+---> {host.name}: deleting {d.url(n)}, left by an interrupted build")
            netdisk.nfs_file(m, d, "unlink", n)
    if have[final]:
        if d.url(final) not in old:
            raise MlnError(f"{d.url(final)} exists already and is no disk of project {host.project}: move it "
                           "away, or give the host another nfs directory")
    # renamed by mln_commit_host, so a killed build leaves only this name; the other one if the
    # project records this one (an upgrade, which does not rename, made it)
    name = next(n for n in staged if d.url(n) not in old)
    if have[final]:
        ctx.log(f"+---> {host.name}: replacing {d.url(final)} (the new disk is {name} until the build "
                "succeeds)")
    return name, final


@hookimpl
def mln_create_disk(host, ctx):
    d = nfs_dir(host, ctx)
    if d is None:
        return None
    storage_net.check_usable(host, KEY)
    template, tfmt, tsize, ext = storage_net.template_of(host, ctx)
    m = ctx.on(host)
    name, final = _names(host, d, ctx, m)
    url = d.url(name)
    size = max(host.disk_size(tsize, ctx.log), tsize)
    try:
        m.run(["qemu-img", "convert", "-q", "-f", tfmt, "-O", "qcow2", template.path, url],
              what=f"copying template {template.path} to {url}", timeout=None)
        if size > tsize:
            m.run(["qemu-img", "resize", "-q", "-f", "qcow2", url, str(size)], what=f"growing {url}",
                  timeout=None)
            if ext and not netdisk.fsck_and_grow(netdisk.nfs_blockdev(d, name), "qcow2", url, None,
                                                 getattr(ctx, "record_helper", None), m):
                ctx.log(f"warning: host {host.name}: template {template.name} does not start with an "
                        "ext2/3/4 filesystem; the disk is larger but its contents are not grown")
        extra = _disk(d, name, template=template.name, final=final)
        storage_net.make_swap(host, ctx, m, extra)
    except BaseException:
        with contextlib.suppress(Exception):
            netdisk.nfs_file(m, d, "unlink", name)
        raise
    return Disk(path=url, format="qcow2", kind=KIND, size=size, extra=extra)


@hookimpl
def mln_commit_host(host, ctx):
    """Rename a disk made under its temporary name (the replaced project's disk is deleted by now)."""
    disk = ctx.host_state(host).get("disk") or {}
    extra = disk.get("extra") or {}
    if disk.get("kind") != KIND or "final" not in extra:
        return
    d = netdisk.NfsDir(extra["server"], extra["dir"])
    try:
        netdisk.nfs_file(ctx.on(host), d, "rename", extra["file"], extra["final"])
    except MlnError as e:
        raise MlnError(f"{e.message}; the new disk stays {d.url(extra['file'])}") from None
    final = extra.pop("final")
    extra.update(file=final, url=d.url(final))
    disk["path"] = d.url(final)


@hookimpl
def mln_attach_disk(host, disk, ctx):
    """QEMU opens the URL itself: give it that (the recorded path is not a local file)."""
    if disk.kind != KIND:
        return None
    return disk.extra["url"]


@hookimpl
def mln_open_image(host, disk, ctx):
    if disk.kind != KIND:
        return None
    from . import imagefs
    d = netdisk.NfsDir(disk.extra["server"], disk.extra["dir"])
    try:
        return netdisk.open_url_image(netdisk.nfs_blockdev(d, disk.extra["file"]), "qcow2", disk.extra["url"],
                                      getattr(ctx, "record_helper", None), ctx.on(host))
    except imagefs.NoFilesystem as e:
        ctx.log(f"host {host.name}: no filesystem to individualize: {e}")
        return None


@hookimpl
def mln_remove_host(host, ctx):
    """Delete the disk file recorded for the host (and a killed build's staged one); a
    server that cannot be reached is a warning: the file is then left on the export."""
    disk = (((ctx.state or {}).get("hosts") or {}).get(host.name) or {}).get("disk") or {}
    extra = disk.get("extra") or {}
    if disk.get("kind") != KIND or not extra.get("file"):
        return
    d = netdisk.NfsDir(extra["server"], extra["dir"])
    names = [extra["file"]]
    if ctx.staging is None:             # mln remove: a killed build's leftovers too
        names += [n for n in (f"{host.fqname}{STAGED}{x}.qcow2" for x in ("", "2")) if n != extra["file"]]
    try:
        netdisk.nfs_file(ctx.on(host), d, "unlink", *names)
    except MlnError as e:
        ctx.log(f"warning: host {host.name}: its disk {d.url(extra['file'])} was not deleted: {e.message}")


@hookimpl
def mln_doctor(ctx):
    return [storage_net.driver_finding("nfs", "QEMU hosts with 'nfs' open their disks on NFS exports"),
            tool("python3", "deletes and renames disks on NFS exports through libnfs", "python3")]


@hookimpl
def mln_export_disk(host, disk, dest, ctx):
    """The disk as one compressed qcow2 file (read over NFS)."""
    return netdisk.export_qcow2(host, disk, dest, ctx, KIND, "qcow2") if disk.kind == KIND else None


@hookimpl
def mln_import_disk(host, disk, src, ctx):
    """The exported qcow2 (of any storage that wrote ``disk.qcow2``) as the host's disk on the export."""
    d = nfs_dir(host, ctx)
    if d is None:
        return None
    storage_net.check_usable(host, KEY)
    image = netdisk.exported_image(host, src)
    m = ctx.on(host)
    netdisk.plain_qcow2(image, m)
    name, final = _names(host, d, ctx, m)
    url = d.url(name)
    try:
        m.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", image, url],
              what=f"importing the disk of host {host.name} to {url}", timeout=None)
        extra = _disk(d, name, final=final, **({"template": disk.extra["template"]}
                                               if disk.extra.get("template") else {}))
        storage_net.make_swap(host, ctx, m, extra)
    except BaseException:
        with contextlib.suppress(Exception):
            netdisk.nfs_file(m, d, "unlink", name)
        raise
    return Disk(path=url, format="qcow2", kind=KIND, size=disk.size, extra=extra)
