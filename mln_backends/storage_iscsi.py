"""Storage plugin ``iscsi``: a QEMU host's disk is a LUN of an iSCSI target (a SAN volume).

Keywords (host or superclass):

* ``iscsi iscsi://PORTAL[:PORT]/IQN/LUN``: the whole LUN; or
* ``iscsi PORTAL[:PORT]`` with ``iscsi_target IQN`` and ``iscsi_lun N`` (the original's
  ``iscsi SERVER`` + ``iscsi_target IQN``); ``iscsi`` alone and a missing ``iscsi_target``
  take mln.conf's ``iscsi`` and ``iscsi_target`` lines, so that a project names only
  ``iscsi_lun`` per host.

Who makes the LUN: the administrator of the SAN. mln does not create, grow or delete
targets or LUNs (the original's iscsi plugin had its own "iscsi-backend" daemon for that);
it writes the template onto the LUN it is given (``qemu-img convert -n``), grows the ext2/3/4
filesystem to the whole LUN (or to ``size`` / the template's size + ``free_space`` when the
host sets them; more than the LUN is an error), gives it a new filesystem UUID, and
individualizes it through a ``qemu-storage-daemon`` FUSE export of an ``iscsi`` block node:
no kernel iSCSI initiator is needed, and QEMU opens the LUN itself at start (its libiscsi
driver, Debian package qemu-block-extra). The disk is on shared storage for migration.

What is never destroyed: a build writes only on a LUN that is blank (its first 64 KiB are
zeros) or holds the disk of a host of the same project that this mln built (the project
being rebuilt); any other content is refused with an error. ``mln remove`` leaves the LUN
in the target and clears only its first MiB (so the LUN is blank again and can be built on
again), and only while the LUN still holds the filesystem the build put there (same UUID):
a LUN someone has reused since is left alone. A rebuild writes the LUN in place, so a rebuild
that fails leaves the host without its old disk, and a build killed (SIGKILL) while it wrote
the LUN leaves data no project records, which the next build refuses until it is cleared.
``mln export``/``import`` carry the LUN's contents as a compressed qcow2. ``swap SIZE`` makes
a local swap disk in the project directory.
"""
from __future__ import annotations

import contextlib
import uuid

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Disk, format_size

from . import netdisk, storage_net

KEY = "iscsi"
KIND = "iscsi"
HEAD = 65536


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", KEY, "QEMU: the disk is an iSCSI LUN: iscsi://PORTAL/IQN/LUN, or a portal with "
                                  "iscsi_target and iscsi_lun (nothing: mln.conf's iscsi)")
    registry.keyword("host", "iscsi_target", "the iSCSI target (IQN) of an iscsi host's LUN (default: "
                                             "mln.conf's iscsi_target)")
    registry.keyword("host", "iscsi_lun", "the LUN number of an iscsi host's disk")


def lun_of(host, ctx) -> netdisk.IscsiLun | None:
    """The host's LUN, None if it does not use iscsi; MlnError if bad or incomplete."""
    tree = host.tree
    if tree is None or not tree.has(KEY):
        return None
    words = tree.line(KEY).words[1:]
    if len(words) > 1:
        raise MlnError(f"iscsi takes one value (iscsi://PORTAL/IQN/LUN or a portal), not '{' '.join(words)}'")
    value = words[0] if words else None
    if value and value.startswith("iscsi://"):
        for k in ("iscsi_target", "iscsi_lun"):
            if tree.has(k):
                raise MlnError(f"iscsi {value} names the whole LUN, so {k} is one too many; keep one of them")
        return netdisk.parse_iscsi(value)
    return netdisk.parse_iscsi(None, value or ctx.config.get("iscsi"),
                               tree.get("iscsi_target") or ctx.config.get("iscsi_target"),
                               tree.get("iscsi_lun"))


@hookimpl
def mln_validate(project, ctx):
    out = []
    seen: dict[str, str] = {}
    for host in project.hosts.values():
        tree = host.tree
        if tree is None:
            continue
        if not tree.has(KEY):
            for k in ("iscsi_target", "iscsi_lun"):
                if tree.has(k):
                    out.append(Problem("warning", f"host {host.name}: {k} has no effect without iscsi",
                                       tree.line(k).pos))
            continue
        try:
            lun = lun_of(host, ctx)
        except MlnError as e:
            out.append(Problem("error", f"host {host.name}: {e.message}", tree.line(KEY).pos))
        else:
            if lun.url in seen:
                out.append(Problem("error", f"host {host.name}: {lun.url} is the disk of host "
                                            f"{seen[lun.url]} already; each host needs a LUN of its own",
                                   tree.line(KEY).pos))
            seen.setdefault(lun.url, host.name)
        out += storage_net.common_problems(host, KEY)
    return out


def _ours(head: bytes, lun: netdisk.IscsiLun, host, ctx) -> bool:
    """The LUN holds a disk that a build of this project put there."""
    fs = netdisk.ext_uuid(head)
    return fs is not None and any(o.get("kind") == KIND and (o.get("extra") or {}).get("url") == lun.url
                                  and (o.get("extra") or {}).get("fs_uuid") == fs
                                  for o in storage_net.old_disks(host, ctx))


def _check_free(lun: netdisk.IscsiLun, host, ctx, m) -> None:
    """MlnError unless the LUN is blank or holds a disk a build of this project wrote."""
    head = netdisk.read_head(m, lun.url, HEAD)
    if head.strip(b"\0") and not _ours(head, lun, host, ctx):
        raise MlnError(f"{lun.url} is not blank (its first 64 KiB hold data, such as a filesystem or "
                       f"a partition table) and holds no disk of project {host.project}; mln does not "
                       "overwrite it: give the host another LUN, or clear it yourself (e.g. qemu-io -f raw "
                       f"-c 'write -z 0 1M' {lun.url})")


@hookimpl
def mln_create_disk(host, ctx):
    lun = lun_of(host, ctx)
    if lun is None:
        return None
    storage_net.check_usable(host, KEY)
    template, tfmt, tsize, ext = storage_net.template_of(host, ctx)
    m = ctx.on(host)
    lun_size = netdisk.qemu_size(m, lun.url)
    if tsize > lun_size:
        raise MlnError(f"{lun.url} has {format_size(lun_size)}, less than template {template.name} "
                       f"({format_size(tsize)})")
    asked = host.tree.has("size") or host.tree.has("free_space")     # not mln.conf's default_size
    size = host.disk_size(tsize, ctx.log) if asked else lun_size
    if size > lun_size:
        raise MlnError(f"the disk should have {format_size(size)}, but {lun.url} has only "
                       f"{format_size(lun_size)}")
    size = max(size, tsize)
    _check_free(lun, host, ctx, m)
    fs_uuid = str(uuid.uuid4())
    try:
        m.run(["qemu-img", "convert", "-q", "-n", "-f", tfmt, "-O", "raw", template.path, lun.url],
              what=f"copying template {template.path} to {lun.url}", timeout=None)
        extra = {"url": lun.url, "lun_size": lun_size, "template": template.name, "shared": True}
        if ext:
            grow = None if size == lun_size else (size if size > tsize else 0)
            if netdisk.fsck_and_grow(netdisk.iscsi_blockdev(lun), "raw", lun.url, grow,
                                     getattr(ctx, "record_helper", None), m, uuid=fs_uuid):
                extra["fs_uuid"] = fs_uuid
            else:
                ctx.log(f"warning: host {host.name}: template {template.name} does not start with an "
                        "ext2/3/4 filesystem; its contents are not grown, and mln remove will not clear "
                        "the LUN")
        storage_net.make_swap(host, ctx, m, extra)
    except BaseException:
        with contextlib.suppress(Exception):
            netdisk.zero_head(m, lun.url)        # half written: ours, and worth nothing
        raise
    return Disk(path=lun.url, format="raw", kind=KIND, size=size, extra=extra)


@hookimpl
def mln_attach_disk(host, disk, ctx):
    """QEMU logs in to the target itself: give it the URL (the recorded path is no local file)."""
    if disk.kind != KIND:
        return None
    return disk.extra["url"]


@hookimpl
def mln_open_image(host, disk, ctx):
    if disk.kind != KIND:
        return None
    from . import imagefs
    try:
        lun = netdisk.parse_iscsi(disk.extra["url"])
        return netdisk.open_url_image(netdisk.iscsi_blockdev(lun), "raw", lun.url,
                                      getattr(ctx, "record_helper", None), ctx.on(host))
    except imagefs.NoFilesystem as e:
        ctx.log(f"host {host.name}: no filesystem to individualize: {e}")
        return None


@hookimpl
def mln_remove_host(host, ctx):
    """Clear the first MiB of the LUN if it still holds the filesystem the build wrote (the
    LUN itself stays in the target); a LUN that cannot be reached is a warning."""
    disk = (((ctx.state or {}).get("hosts") or {}).get(host.name) or {}).get("disk") or {}
    extra = disk.get("extra") or {}
    if disk.get("kind") != KIND or not extra.get("url"):
        return
    m = ctx.on(host)
    try:
        head = netdisk.read_head(m, extra["url"], HEAD)
        if not extra.get("fs_uuid") or netdisk.ext_uuid(head) != extra["fs_uuid"]:
            ctx.debug(f"{host.name}: {extra['url']} holds another disk than the one built; left as it is")
            return
        netdisk.zero_head(m, extra["url"])
    except MlnError as e:
        ctx.log(f"warning: host {host.name}: its LUN {extra['url']} was not cleared: {e.message}")


@hookimpl
def mln_doctor(ctx):
    return [storage_net.driver_finding("iscsi", "QEMU hosts with 'iscsi' open their disks on iSCSI LUNs"),
            tool("qemu-io", "clears the start of a removed host's LUN", "qemu-utils")]


@hookimpl
def mln_export_disk(host, disk, dest, ctx):
    """The whole LUN as one compressed qcow2 file (zeros take no room)."""
    return netdisk.export_qcow2(host, disk, dest, ctx, KIND, "raw") if disk.kind == KIND else None


@hookimpl
def mln_import_disk(host, disk, src, ctx):
    """The exported qcow2 (of any storage that wrote ``disk.qcow2``) written onto the host's
    LUN, which must be blank (or hold this project's disk) and large enough."""
    lun = lun_of(host, ctx)
    if lun is None:
        return None
    storage_net.check_usable(host, KEY)
    image = netdisk.exported_image(host, src)
    m = ctx.on(host)
    netdisk.plain_qcow2(image, m)
    size = netdisk.qemu_size(m, image, "qcow2")
    lun_size = netdisk.qemu_size(m, lun.url)
    if size > lun_size:
        raise MlnError(f"the archive's disk has {format_size(size)}, more than {lun.url} "
                       f"({format_size(lun_size)})")
    _check_free(lun, host, ctx, m)
    fs_uuid = str(uuid.uuid4())
    try:
        m.run(["qemu-img", "convert", "-q", "-n", "-f", "qcow2", "-O", "raw", image, lun.url],
              what=f"importing the disk of host {host.name} to {lun.url}", timeout=None)
        extra = {"url": lun.url, "lun_size": lun_size, "shared": True}
        if disk.extra.get("template"):
            extra["template"] = disk.extra["template"]
        if netdisk.fsck_and_grow(netdisk.iscsi_blockdev(lun), "raw", lun.url, 0,
                                 getattr(ctx, "record_helper", None), m, uuid=fs_uuid):
            extra["fs_uuid"] = fs_uuid
        storage_net.make_swap(host, ctx, m, extra)
    except BaseException:
        with contextlib.suppress(Exception):
            netdisk.zero_head(m, lun.url)
        raise
    return Disk(path=lun.url, format="raw", kind=KIND, size=size, extra=extra)
