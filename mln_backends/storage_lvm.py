"""Storage plugin ``lvm``: a host's disk on an LVM logical volume ``/dev/<vg>/<host>.<project>``.

Keywords (host or superclass):

* ``lvm`` - put the disk on a logical volume. The value may be empty (a flag), extra
  ``lvcreate`` options (``lvm --stripes 2 --stripesize 64``), or ``lock`` (optionally
  followed by options): LVM commands then run under a server-wide lock file, for a
  volume group shared by several servers (the original's ``lvm_execute_server``, which
  ran the commands on another server through its daemon, is not supported).
* ``lvm_vg VG`` - the volume group; default ``lvm_vg`` of mln.conf, else ``mln-images``;
  a ``/dev/`` prefix is stripped.
* ``lvm_snapshot`` - make the volume an LVM snapshot of the logical volume named like the
  template in the same group (copy-on-write space: half the origin). Snapshots are made
  by the kernel's device-mapper, so this needs a machine that has it.

The volume gets ``size`` (or the template's size + ``free_space``), rounded up to whole
extents; the template is copied in and its ext2/3/4 filesystem grown with resize2fs. A
rebuild that replaces a project makes the new volume as ``<host>.<project>+mln-new`` beside
the old one (the volume group needs room for both) and renames it once the whole build has
succeeded and the old volume is removed; a failed rebuild leaves the old volume as it was.

Machines without device-mapper
------------------------------
Without the device-mapper driver LVM cannot activate a volume (there is no
``/dev/<vg>/<lv>``): the plugin then creates the volume in LVM's metadata only and reaches
its data through a loop device over the volume's extents (:mod:`mln_backends.lvmloop`),
for its own work and for each run of the host. The recorded disk says which way it was
made (``extra["activation"]``: ``device-mapper`` or ``none``). LVM's commands and reports
are in :mod:`mln_backends.lvmcmd`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from dataclasses import dataclass

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Disk, format_size
from mln_core.private import protect_disk

from . import imagefs, lvmloop
from .lvmcmd import activate as _activate
from .lvmcmd import clean as _clean
from .lvmcmd import have_device_mapper, lv_info, vg_info
from .lvmcmd import lvm as _lvm
from .lvmcmd import lvremove as _lvremove

DEFAULT_VG = "mln-images"
LOCK_FILE = "/run/lock/mln-lvm.lock"
_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*\Z")
_LV_RESERVED = ("_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage",
                "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
_FLAG_VALUES = ("1", "yes", "true", "on")
# lvcreate options the plugin sets itself
_OWN_OPTIONS = ("-n", "--name", "-L", "--size", "-l", "--extents", "-s", "--snapshot", "-a", "--activate",
                "-an", "-ay", "--driverloaded", "-V", "--virtualsize", "-T", "--thin")


# ---------------------------------------------------------------------------------------
# settings

@dataclass(repr=False, eq=False)
class Settings:
    """The LVM settings of one host: volume group and the access mode."""

    vg: str
    options: list[str]
    lock: bool
    snapshot: bool


def _strip_vg(name: str) -> str:
    name = name.strip()
    if name.startswith("/dev/"):
        name = name[len("/dev/"):]
    return name.strip("/")


def settings(host, ctx) -> Settings | None:
    """What ``host`` asks for, or None if it does not use LVM. MlnError on bad values."""
    tree = host.tree
    if tree is None or not tree.has("lvm"):
        return None
    words = list(tree.line("lvm").words[1:])
    lock = False
    if words and words[0] == "lock":
        lock, words = True, words[1:]
    elif len(words) == 1 and words[0].lower() in _FLAG_VALUES:
        words = []
    if words and not words[0].startswith("-"):
        raise MlnError(f"lvm '{' '.join(words)}': the value of lvm is empty, 'lock' or lvcreate options "
                       "such as '--stripes 2'")
    for w in words:
        opt = w.split("=", 1)[0]
        if opt in _OWN_OPTIONS or (re.match(r"-[A-Za-z]", opt) and not opt.startswith("--")
                                   and opt[1] in "nLlsaVT"):
            raise MlnError(f"lvm: option {w} is set by mln (the volume's name, size, activation and "
                           "snapshot origin come from the host; use size/free_space and lvm_snapshot)")
    vg = _strip_vg(tree.get("lvm_vg") or ctx.config.get("lvm_vg") or DEFAULT_VG)
    if not _NAME.match(vg) or vg in (".", ".."):
        raise MlnError(f"lvm_vg '{vg}' is not a valid volume group name (letters, digits and + _ . -)")
    return Settings(vg=vg, options=words, lock=lock, snapshot=tree.has("lvm_snapshot"))


def _check_lv_name(name: str) -> str | None:
    if not _NAME.match(name) or name in (".", ".."):
        return "may hold only letters, digits and + _ . - and must not start with -"
    if len(name) > 127:
        return "is longer than 127 characters"
    if name.startswith(("snapshot", "pvmove")) or any(r in name for r in _LV_RESERVED):
        return "is reserved by LVM (it starts with snapshot/pvmove or contains a suffix such as _mlog)"
    return None


_vg_locks: dict[str, threading.Lock] = {}
_vg_locks_guard = threading.Lock()


def _vg_lock(vg: str) -> threading.Lock:
    """Hosts are built in parallel threads: one free-space check and lvcreate at a time per
    VG, so that the second of two hosts that do not both fit gets the clear message."""
    with _vg_locks_guard:
        return _vg_locks.setdefault(vg, threading.Lock())


@contextlib.contextmanager
def _locked(s: Settings, ctx):
    """With ``lvm lock``: serialize this server's LVM changes on the shared VG."""
    if not s.lock:
        yield
        return
    _check_execute_server(s.vg, ctx)
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_execute_server(vg: str, ctx) -> None:
    me = {"localhost", *ctx.on().hostnames(), ctx.config.get("service_host") or ""}
    for entry in ctx.config.getlist("lvm_execute_server"):
        parts = entry.split()
        if len(parts) == 2 and _strip_vg(parts[0]) == vg and parts[1] not in me \
                and not parts[1].startswith("127."):
            raise MlnError(f"lvm lock: mln.conf says LVM commands for volume group {vg} run on "
                           f"{parts[1]} (lvm_execute_server), and this mln does not run commands on other "
                           f"servers; build on {parts[1]}, or remove that line to run them here")


# ---------------------------------------------------------------------------------------
# reaching the volume's data: the device node, or a loop device over its extents

@contextlib.contextmanager
def device(machine, vg: str, lv: str, dm: bool | None = None, note=None):
    """A block device with the volume's data: ``/dev/<vg>/<lv>`` or an imitation loop device."""
    if dm is None:
        dm = have_device_mapper(machine)
    if dm:
        yield _activate(machine, vg, lv)
        return
    view = lvmloop.LoopView(machine, *lvmloop.extent_range(machine, vg, lv), note=note)
    try:
        yield view.device
    finally:
        view.release()


# ---------------------------------------------------------------------------------------
# hooks

@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "lvm", "disk on the logical volume /dev/<vg>/<host>.<project>; value: "
                     "nothing, lvcreate options, or 'lock' (shared volume group)")
    registry.keyword("host", "lvm_vg", "volume group for lvm (default: lvm_vg of mln.conf, else mln-images)")
    registry.keyword("host", "lvm_snapshot", "make the lvm volume a snapshot of the volume named like the "
                     "template (needs device-mapper)")


@hookimpl
def mln_validate(project, ctx):
    problems = []
    for host in project.hosts.values():
        tree = host.tree
        if tree is None:
            continue
        if not tree.has("lvm"):
            for key in ("lvm_snapshot", "lvm_vg"):
                if tree.has(key):
                    problems.append(Problem("warning", f"host '{host.name}': {key} has no effect without lvm",
                                            tree.line(key).pos))
            continue
        try:
            settings(host, ctx)
        except MlnError as e:
            problems.append(Problem("error", f"host '{host.name}': {e.message}", tree.line("lvm").pos))
        why = _check_lv_name(host.fqname)
        if why:
            problems.append(Problem("error", f"host '{host.name}': the logical volume name '{host.fqname}' "
                                             f"{why}", tree.line("lvm").pos))
        if tree.has("filepath"):
            problems.append(Problem("warning", f"host '{host.name}': filepath is ignored for lvm hosts",
                                    tree.line("filepath").pos))
    return problems


@hookimpl
def mln_create_disk(host, ctx):
    s = settings(host, ctx)
    if s is None:
        return None
    why = _check_lv_name(host.fqname)
    if why:
        raise MlnError(f"the logical volume name '{host.fqname}' {why}")
    hv = ctx.pm.keywords.hypervisors.get(host.hypervisor)
    if hv is not None and "raw" not in hv.disk_formats:
        raise MlnError(f"{host.hypervisor} does not boot raw volumes (it boots "
                       f"{', '.join(hv.disk_formats)}), so its disk cannot be an LVM volume")
    m = ctx.on(host)
    dm = have_device_mapper(m)
    vg, lv = s.vg, host.fqname
    if s.snapshot:
        return _create_snapshot(host, s, ctx, m, dm)
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    try:
        template_size = imagefs.image_size(template.path, m)
    except imagefs.ImageError as e:
        raise MlnError(str(e)) from None
    size = host.disk_size(template_size, ctx.log)
    with _vg_lock(vg), _locked(s, ctx):
        _require_vg(m, vg, dm)
        lv, replacing = _staged_name(ctx, m, vg, lv, dm, host)
        vgi = _require_vg(m, vg, dm)        # after a leftover volume is gone
        ext = vgi["extent_size"]
        extents = -(-size // ext)
        free = vgi["free_count"]
        if extents > free:
            rounded = f" ({format_size(size)} rounded up to {format_size(ext)} extents)" \
                if extents * ext != size else ""
            kept = f" (the old volume {host.fqname} is kept until the new one is built)" if replacing else ""
            raise MlnError(f"volume group {vg} has {format_size(free * ext)} free{kept}, but the disk needs "
                           f"{format_size(extents * ext)}{rounded}")
        argv = ["lvcreate", "-y", "-n", lv, "-l", str(extents)]
        argv += ["-Wy"] if dm else ["-an", "-Zn"]
        _lvm(m, argv + s.options + [vg], f"creating logical volume {vg}/{lv}", dm)
        info = lv_info(m, vg, lv, dm)
        if info is None:
            raise MlnError(f"lvcreate reported success but {vg}/{lv} is not listed by lvs")
    if not dm:
        _note_no_activation(ctx)
    extra = {"vg": vg, "lv": lv, "lv_uuid": info["uuid"], "template": template.name,
             "activation": "device-mapper" if dm else "none", **_final(lv, host)}

    def fill():
        with device(m, vg, lv, dm, ctx.debug) as dev:
            _fill(ctx, m, template.path, dev, template_size, info["size"])
    return _finish(host, s, ctx, m, info, extra, dm, fill)


def _finish(host, s: Settings, ctx, m, info: dict, extra: dict, dm: bool, fill=None) -> Disk:
    """Fill the new volume and make the swap disk; the volume goes again if either fails."""
    try:
        if fill is not None:
            fill()
        if host.swap:
            extra["swap"] = _make_swap(host, ctx, m)
    except BaseException:
        with contextlib.suppress(Exception), _locked(s, ctx):
            _lvremove(m, extra["vg"], extra["lv"], dm)
        raise
    return Disk(path=f"/dev/{extra['vg']}/{host.fqname}", format="raw", kind="lvm", size=info["size"],
                extra=extra)


STAGED_SUFFIX = "+mln-new"      # '+' is in no host or project name, so in no other host's volume


def _staged_name(ctx, m, vg: str, lv: str, dm: bool, host) -> tuple[str, bool]:
    """The name to create the volume under, and whether it replaces one: while ``lv``
    exists (the project being replaced), the new volume is made as ``<lv>+mln-new`` and
    renamed at ``mln_commit_host``, so a failed rebuild leaves the old volume alone. A
    staged volume left by a killed build (the project lock excludes a running one) goes."""
    staged = lv + STAGED_SUFFIX
    if lv_info(m, vg, staged, dm):
        ctx.log(f"+---> {host.name}: removing {vg}/{staged}, left by an interrupted build")
        _lvremove(m, vg, staged, dm)
    if not lv_info(m, vg, lv, dm):
        return lv, False
    if _check_lv_name(staged):
        raise MlnError(f"cannot replace {vg}/{lv}: the temporary name {staged} {_check_lv_name(staged)}")
    ctx.log(f"+---> {host.name}: replacing logical volume {vg}/{lv} (the new one is {staged} until "
            "the build succeeds)")
    return staged, True


def _locked_for(host, vg: str, ctx):
    """The lock of ``host``'s volume group (its own settings, or plain ones if they no
    longer read)."""
    try:
        s = settings(host, ctx)
    except MlnError:
        s = None
    return _locked(s or Settings(vg, [], False, False), ctx)


def _final(lv: str, host) -> dict:
    return {"final_lv": host.fqname} if lv != host.fqname else {}


@hookimpl
def mln_commit_host(host, ctx):
    """Rename a volume made under its temporary name to the host's (the old project's
    volume of that name has been removed by now)."""
    disk = ctx.host_state(host).get("disk") or {}
    extra = disk.get("extra") or {}
    if disk.get("kind") != "lvm" or "final_lv" not in extra:
        return
    vg, lv, final = extra["vg"], extra["lv"], extra["final_lv"]
    m = ctx.on(host)
    dm = have_device_mapper(m)
    with _locked_for(host, vg, ctx):
        if not lv_info(m, vg, lv, dm) and lv_info(m, vg, final, dm):
            extra["lv"] = final           # renamed already, by a commit that was killed after
            del extra["final_lv"]
            return
        if lv_info(m, vg, final, dm):     # the replaced project could not be read: its volume
            _lvremove(m, vg, final, dm)
        try:
            _lvm(m, ["lvrename", vg, lv, final], f"renaming logical volume {vg}/{lv} to {final}", dm)
        except MlnError as e:
            raise MlnError(f"{e.message}; the new volume stays {vg}/{lv} (rebuild, or rename it with "
                           f"lvrename {vg} {lv} {final})") from None
    extra["lv"] = final
    del extra["final_lv"]


_noted = threading.Event()


def _note_no_activation(ctx) -> None:
    if not _noted.is_set():
        _noted.set()
        ctx.log("note: this machine has no device-mapper: LVM volumes are made in LVM's metadata only and "
                "reached through loop devices over their extents (also by the hypervisor at start); "
                "/dev/<vg>/<lv> exists only where the volume group can be activated")


def _require_vg(m, vg: str, dm: bool) -> dict:
    vgi = vg_info(m, vg, dm)
    if vgi is None:
        raise MlnError(f"volume group '{vg}' does not exist (vgs does not list it): create it with "
                       "vgcreate, or name another one with lvm_vg in the host or in mln.conf")
    return vgi


def _fill(ctx, m, template: str, dev: str, template_size: int, lv_size: int) -> None:
    """Copy the template onto the volume and grow its filesystem to the volume's size."""
    if imagefs.is_qcow2(template):
        m.run(["qemu-img", "convert", "-n", "-O", "raw", template, dev],
              what=f"copying template {template}", timeout=3600)
    else:
        m.run(["dd", f"if={template}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"],
              what=f"copying template {template}", timeout=3600)
    if not imagefs.is_ext_filesystem(dev):
        ctx.log(f"warning: template {template} holds no ext2/3/4 filesystem; not resized")
        return
    if lv_size > template_size:
        p = m.run(["e2fsck", "-f", "-y", dev], check=False, timeout=3600)
        if p.returncode not in (0, 1):
            raise MlnError(f"e2fsck -f -y {dev} (copy of {template}) failed (exit {p.returncode}): "
                           f"{_clean(p.stdout + p.stderr)[-500:]}")
        m.run(["resize2fs", dev], what=f"growing the filesystem of {dev}", timeout=3600)


def _make_swap(host, ctx, m) -> str:
    rel = os.path.join("images", f"swap_{host.name}")
    path = ctx.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(host.swap)
    protect_disk(path)
    m.run(["mkswap", "-q", path], what=f"mkswap {path}")
    return rel


def _create_snapshot(host, s: Settings, ctx, m, dm: bool) -> Disk:
    vg, lv = s.vg, host.fqname
    if not dm:
        raise MlnError(f"lvm_snapshot: LVM snapshots are made by the kernel's device-mapper driver "
                       f"(dm-snapshot), and this machine has none (no /dev/mapper/control, or 'dmsetup "
                       f"version' fails), so {vg}/{lv} cannot be a snapshot of the template's volume. "
                       "Remove lvm_snapshot to get a full copy of the template on a logical volume instead, "
                       "or build on a server with device-mapper")
    names = [host.template]
    with contextlib.suppress(MlnError):
        names.append(ctx.templates.resolve(host.template, f"host {host.name}").name)
    with _vg_lock(vg), _locked(s, ctx):
        vgi = _require_vg(m, vg, dm)
        origin = next(((n, i) for n in dict.fromkeys(names) if (i := lv_info(m, vg, n, dm))), None)
        if origin is None:
            raise MlnError(f"lvm_snapshot: volume group {vg} has no logical volume named "
                           f"'{host.template}' to take a snapshot of (make one holding the template first)")
        oname, oinfo = origin
        if (host.size or 0) > oinfo["size"] or host.free_space:
            ctx.log(f"warning: host {host.name}: a snapshot has the size of its origin {vg}/{oname} "
                    f"({format_size(oinfo['size'])}); size/free_space are ignored")
        extents = max(1, -(-oinfo["size"] // vgi["extent_size"] // 2))
        lv, _ = _staged_name(ctx, m, vg, lv, dm, host)
        if extents > vgi["free_count"]:
            raise MlnError(f"volume group {vg} has {format_size(vgi['free'])} free, but the snapshot needs "
                           f"{format_size(extents * vgi['extent_size'])} (half of {oname})")
        _lvm(m, ["lvcreate", "-y", "-s", "-n", lv, "-l", str(extents)] + s.options + [f"{vg}/{oname}"],
             f"creating snapshot {vg}/{lv} of {vg}/{oname}", dm)
        info = lv_info(m, vg, lv, dm)
        if info is None:
            raise MlnError(f"lvcreate reported success but {vg}/{lv} is not listed by lvs")
    extra = {"vg": vg, "lv": lv, "lv_uuid": info["uuid"], "snapshot_of": oname, "activation": "device-mapper",
             **_final(lv, host)}
    return _finish(host, s, ctx, m, info, extra, dm)


@hookimpl
def mln_attach_disk(host, disk, ctx):
    """For a run: with device-mapper, the activated ``/dev/<vg>/<lv>``; without, a loop
    device over the volume's extents (kept until ``mln_detach_disk``)."""
    if disk.kind != "lvm":
        return None
    vg, lv = disk.extra["vg"], disk.extra["lv"]
    m = ctx.on(host)
    if have_device_mapper(m):
        return _activate(m, vg, lv)
    return lvmloop.attach(m, vg, lv)


@hookimpl
def mln_detach_disk(host, disk, path, ctx):
    if disk.kind != "lvm" or not path.startswith("/dev/loop"):
        return
    # only the loop device made for this volume: the number may have been reused since
    lvmloop.detach(ctx.on(host), path, disk.extra["vg"], disk.extra["lv"],
                   what=f"releasing {path} ({host.name}'s volume)")


@hookimpl
def mln_open_image(host, disk, ctx):
    if disk.kind != "lvm":
        return None
    vg = disk.extra.get("vg") or disk.path.split("/")[2]
    lv = disk.extra.get("lv") or os.path.basename(disk.path)
    m = ctx.on(host)
    if have_device_mapper(m):
        dev, release = _activate(m, vg, lv), None
    else:
        view = lvmloop.LoopView(m, *lvmloop.extent_range(m, vg, lv), note=ctx.debug)
        dev, release = view.device, view.release
    try:
        part = None
        if not imagefs.is_ext_filesystem(dev):
            part, _ = imagefs.find_linux(dev)            # a whole-disk template: its Linux partition
            if part is None:
                if release:
                    release()
                return None
        image = imagefs.Ext4Image(dev, m, part.start if part else 0)
        if part is not None:
            image.partition = part
            ctx.log(f"host {host.name}: individualizing {part.describe()} of its volume")
        if release:
            image._on_close.append(release)      # closing the image releases the loop device
        return image
    except imagefs.ImageError as e:
        if release:
            release()
        raise MlnError(str(e)) from None
    except BaseException:
        if release:
            release()
        raise


@hookimpl
def mln_remove_host(host, ctx):
    """Remove the volume recorded for ``host``, if it is still the one that build made
    (same uuid: a volume someone made later under that name is kept)."""
    entry = (ctx.state or {}).get("hosts", {}).get(host.name) or {}
    disk = entry.get("disk") or {}
    if disk.get("kind") != "lvm":
        return None
    extra = disk.get("extra") or {}
    vg, lv = extra.get("vg"), extra.get("lv")
    if not vg or not lv:
        return None
    m = ctx.on(host)
    dm = have_device_mapper(m)
    try:
        with _locked_for(host, vg, ctx):
            leftover = lv + STAGED_SUFFIX          # a killed build's (during a build: this build's)
            if ctx.staging is None and not lv.endswith(STAGED_SUFFIX) and lv_info(m, vg, leftover, dm):
                _lvremove(m, vg, leftover, dm)
            info = lv_info(m, vg, lv, dm)
            if info is None:
                ctx.debug(f"{host.name}: logical volume {vg}/{lv} is already gone")
                return None
            if extra.get("lv_uuid") and info["uuid"] != extra["lv_uuid"]:
                ctx.debug(f"{host.name}: {vg}/{lv} was made by a later build (uuid {info['uuid']}); kept")
                return None
            _lvremove(m, vg, lv, dm)
    except MlnError as e:
        raise MlnError(f"host {host.name}: {e.message}") from None
    return None


@hookimpl
def mln_doctor(ctx):
    found = tool("lvcreate", "logical volumes for hosts with 'lvm'", "lvm2")
    if found["ok"]:
        dm = ctx.on().device_exists("/dev/mapper/control")
        found["detail"] += ("; device-mapper: yes" if dm else
                            "; no device-mapper: volumes are reached through loop devices over their extents")
    return [found]
