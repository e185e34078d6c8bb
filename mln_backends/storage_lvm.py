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
Without the device-mapper driver LVM can change its metadata but cannot activate a
volume: there is no ``/dev/<vg>/<lv>``. The plugin then creates the volume in the
metadata only (``lvcreate --driverloaded n -an -Zn``) and reaches its data through a
loop device over the volume's extents: for a single-segment linear volume whose PV is
itself a loop device over a file, the volume's bytes are the range
``loop offset + pe_start + first_extent * extent_size`` of length ``extents *
extent_size`` in that file, and ``losetup --offset --sizelimit`` makes a block device of
exactly that range. This imitates activation for mln's own work (copying the template,
resizing, individualizing) and for each run of the host (``mln_attach_disk``: the
hypervisor opens the loop device, which is released when the host stops); other programs
still need real activation for ``/dev/<vg>/<lv>``. The recorded disk says which way it was made
(``extra["activation"]``: ``device-mapper`` or ``none``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError, Problem
from mln_core.model import Disk, format_size

from . import imagefs
from .imagefs import is_ext_filesystem as _is_ext
from .storage_file import _wanted_size

DEFAULT_VG = "mln-images"
LOCK_FILE = "/run/lock/mln-lvm.lock"
LOOP_MAJOR = 7
_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*\Z")
_LV_RESERVED = ("_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage",
                "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
_FLAG_VALUES = ("1", "yes", "true", "on")
# lvcreate options the plugin sets itself
_OWN_OPTIONS = ("-n", "--name", "-L", "--size", "-l", "--extents", "-s", "--snapshot", "-a", "--activate",
                "-an", "-ay", "--driverloaded", "-V", "--virtualsize", "-T", "--thin")
# what LVM prints on stderr when the kernel has no device-mapper: not worth repeating
_NOISE = ("/dev/mapper/control", "device-mapper", "libdevmapper", "Activation disabled",
          "Required device-mapper target", "not zeroed", "leaked on lvm invocation")


# ---------------------------------------------------------------------------------------
# settings

@dataclass
class Settings:
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


# ---------------------------------------------------------------------------------------
# running LVM

_dm_cache: bool | None = None


def have_device_mapper() -> bool:
    """True if the kernel's device-mapper driver is usable (so LVM can activate volumes)."""
    global _dm_cache
    if _dm_cache is None:
        ok = os.path.exists("/dev/mapper/control")
        if ok:
            try:
                ok = subprocess.run(["dmsetup", "version"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _dm_cache = ok
    return _dm_cache


def _clean(err: bytes | str) -> str:
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(n in ln for n in _NOISE)]
    return "; ".join(kept or lines)


def _lvm(ctx, argv: list[str], what: str, dm: bool, check: bool = True) -> subprocess.CompletedProcess:
    """Run an LVM command (with ``--driverloaded n`` when there is no device-mapper)."""
    argv = [argv[0]] + ([] if dm else ["--driverloaded", "n"]) + argv[1:]
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    try:
        p = ctx.run(argv, what=what, check=False, input=b"", env=env)
    except MlnError as e:
        if "command not found" in e.message:
            raise MlnError(f"{what}: the LVM tools are not installed ({argv[0]} not found; "
                           "apt-get install lvm2)") from None
        raise
    if check and p.returncode != 0:
        raise MlnError(f"{what}: '{shlex.join(argv)}' failed (exit {p.returncode}): "
                       f"{_clean(p.stderr or p.stdout or b'')}")
    return p


def _report(ctx, cmd: str, fields: str, target: list[str], dm: bool, what: str,
            segments: bool = False) -> list[dict] | None:
    """Rows of an LVM JSON report; None if the command failed (e.g. the VG does not exist)."""
    argv = [cmd, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields]
    if segments:
        argv.append("--segments")
    p = _lvm(ctx, argv + target, what, dm, check=False)
    if p.returncode != 0:
        return None
    try:
        report = json.loads(p.stdout)["report"][0]
        return next(iter(report.values()))
    except (ValueError, KeyError, IndexError, StopIteration):
        raise MlnError(f"{what}: cannot read the output of {cmd}: {p.stdout[:200]!r}") from None


def vg_info(ctx, vg: str, dm: bool) -> dict | None:
    """{"free": bytes, "free_count": extents, "extent_size": bytes, "size": bytes} or None if absent."""
    rows = _report(ctx, "vgs", "vg_name,vg_size,vg_free,vg_free_count,vg_extent_size", [vg], dm,
                   f"volume group {vg}")
    row = next((r for r in rows or [] if r.get("vg_name") == vg), None)
    if row is None:
        return None
    return {"size": int(row["vg_size"]), "free": int(row["vg_free"]), "free_count": int(row["vg_free_count"]),
            "extent_size": int(row["vg_extent_size"])}


def lv_info(ctx, vg: str, lv: str, dm: bool) -> dict | None:
    """{"uuid", "size", "segments": [{"segtype", "pe_ranges", "size_pe"}]} or None if absent."""
    rows = _report(ctx, "lvs", "lv_name,lv_uuid,lv_size,segtype,seg_size_pe,seg_pe_ranges", [vg], dm,
                   f"logical volume {vg}/{lv}", segments=True)
    rows = [r for r in rows or [] if r.get("lv_name") == lv]
    if not rows:
        return None
    return {"uuid": rows[0]["lv_uuid"], "size": int(rows[0]["lv_size"]),
            "segments": [{"segtype": r["segtype"], "pe_ranges": r["seg_pe_ranges"],
                          "size_pe": int(r["seg_size_pe"] or 0)} for r in rows]}


def _lvremove(ctx, vg: str, lv: str, dm: bool) -> None:
    _lvm(ctx, ["lvremove", "-f", "-y", f"{vg}/{lv}"], f"removing logical volume {vg}/{lv}", dm)


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
    me = {"localhost", socket.gethostname(), socket.getfqdn(), ctx.config.get("service_host") or ""}
    for entry in ctx.config.getlist("lvm_execute_server"):
        parts = entry.split()
        if len(parts) == 2 and _strip_vg(parts[0]) == vg and parts[1] not in me \
                and not parts[1].startswith("127."):
            raise MlnError(f"lvm lock: mln.conf says LVM commands for volume group {vg} run on "
                           f"{parts[1]} (lvm_execute_server), and this mln does not run commands on other "
                           f"servers; build on {parts[1]}, or remove that line to run them here")


# ---------------------------------------------------------------------------------------
# reaching the volume's data: the device node, or a loop device over its extents

_LOOP_INFO64 = "=QQQQQIIII64s64s32sQQ"   # struct loop_info64
_LOOP_SET_STATUS64, _LOOP_GET_STATUS64 = 0x4C04, 0x4C05
_LO_FLAGS_AUTOCLEAR = 4


def extent_range(ctx, vg: str, lv: str) -> tuple[str, int, int]:
    """(backing file, byte offset, length) of a single-segment linear LV on a loop-device PV."""
    dm = False
    info = lv_info(ctx, vg, lv, dm)
    if info is None:
        raise MlnError(f"logical volume {vg}/{lv} does not exist")
    why = ("this machine's kernel has no device-mapper, so LVM cannot activate it, and mln can "
           "only imitate activation for a single-segment linear volume on a PV that is a loop device "
           "over a file")
    segs = info["segments"]
    if len(segs) != 1 or segs[0]["segtype"] != "linear":
        kinds = ", ".join(s["segtype"] for s in segs)
        raise MlnError(f"cannot reach logical volume {vg}/{lv} ({len(segs)} segment(s): {kinds}): {why}")
    ranges = segs[0]["pe_ranges"].split()
    m = re.match(r"(.+):(\d+)-(\d+)\Z", ranges[0]) if len(ranges) == 1 else None
    if m is None:
        raise MlnError(f"cannot reach logical volume {vg}/{lv} (extents {segs[0]['pe_ranges']!r}): {why}")
    pv, first, last = m.group(1), int(m.group(2)), int(m.group(3))
    vgi = vg_info(ctx, vg, dm)
    pvs = _report(ctx, "pvs", "pv_name,pe_start,vg_name", [], dm, f"physical volumes of {vg}") or []
    row = next((r for r in pvs if r.get("pv_name") == pv), None)
    if vgi is None or row is None:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: LVM does not report its PV {pv}")
    try:
        st = os.stat(pv)
    except OSError as e:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: its PV {pv}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode) or os.major(st.st_rdev) != LOOP_MAJOR:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: its PV {pv} is not a loop device; {why}")
    sysdir = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/loop"
    try:
        with open(f"{sysdir}/backing_file") as f:
            backing = f.read().rstrip("\n")
        with open(f"{sysdir}/offset") as f:
            loop_offset = int(f.read())
        with open(f"{sysdir}/sizelimit") as f:
            loop_limit = int(f.read())
    except (OSError, ValueError) as e:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: reading {sysdir}: {e}") from None
    if backing.endswith(" (deleted)") or not os.path.exists(backing):
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: the file {backing} behind its PV {pv} "
                       "is gone")
    ext = vgi["extent_size"]
    start = int(row["pe_start"]) + first * ext
    length = (last - first + 1) * ext
    if loop_limit and start + length > loop_limit:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: its extents lie beyond the end of {pv}")
    return backing, loop_offset + start, length


class LoopView:
    """A loop device over a byte range of a file. It is set to detach itself when its last
    user closes it (autoclear) and this object holds it open until :meth:`release`, so it
    disappears also if mln is killed."""

    def __init__(self, ctx, backing: str, offset: int, length: int):
        p = ctx.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(length),
                     backing], what=f"making a loop device over {backing}")
        self.device = p.stdout.decode().strip()
        self._ctx = ctx
        try:
            self._fd: int | None = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            ctx.run(["losetup", "-d", self.device], check=False)
            raise MlnError(f"opening {self.device}: {e.strerror}") from None
        try:
            buf = bytearray(struct.calcsize(_LOOP_INFO64))
            fcntl.ioctl(self._fd, _LOOP_GET_STATUS64, buf)
            fields = list(struct.unpack(_LOOP_INFO64, buf))
            if fields[3] != offset or (fields[4] or length) != length:
                raise MlnError(f"{self.device} does not cover the expected range of {backing}")
            fields[8] |= _LO_FLAGS_AUTOCLEAR
            fcntl.ioctl(self._fd, _LOOP_SET_STATUS64, struct.pack(_LOOP_INFO64, *fields))
        except OSError as e:   # not fatal: release() detaches explicitly
            ctx.debug(f"{self.device}: cannot set autoclear: {e}")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        # While we hold the device open, losetup -d only marks it for detaching; our
        # close then detaches it (and nobody can have re-used the number before that).
        self._ctx.run(["losetup", "-d", self.device], check=False)
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def device(ctx, vg: str, lv: str, dm: bool | None = None):
    """A block device with the volume's data: ``/dev/<vg>/<lv>`` or an imitation loop device."""
    if dm is None:
        dm = have_device_mapper()
    if dm:
        yield _activate(ctx, vg, lv)
        return
    view = LoopView(ctx, *extent_range(ctx, vg, lv))
    try:
        yield view.device
    finally:
        view.release()


def _activate(ctx, vg: str, lv: str) -> str:
    node = f"/dev/{vg}/{lv}"
    if not os.path.exists(node):
        _lvm(ctx, ["lvchange", "-ay", f"{vg}/{lv}"], f"activating {vg}/{lv}", True)
        deadline = time.monotonic() + 10
        while not os.path.exists(node) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not os.path.exists(node):
            raise MlnError(f"logical volume {vg}/{lv} is active but {node} did not appear")
    return node


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
    dm = have_device_mapper()
    vg, lv = s.vg, host.fqname
    if s.snapshot:
        return _create_snapshot(host, s, ctx, dm)
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    try:
        template_size = imagefs.image_size(template.path)
    except imagefs.ImageError as e:
        raise MlnError(str(e)) from None
    size = _wanted_size(host, template_size, ctx)
    with _vg_lock(vg), _locked(s, ctx):
        _require_vg(ctx, vg, dm)
        lv, replacing = _staged_name(ctx, vg, lv, dm, host)
        vgi = _require_vg(ctx, vg, dm)        # after a leftover volume is gone
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
        _lvm(ctx, argv + s.options + [vg], f"creating logical volume {vg}/{lv}", dm)
        info = lv_info(ctx, vg, lv, dm)
        if info is None:
            raise MlnError(f"lvcreate reported success but {vg}/{lv} is not listed by lvs")
    if not dm:
        _note_no_activation(ctx)
    extra = {"vg": vg, "lv": lv, "lv_uuid": info["uuid"], "template": template.name,
             "activation": "device-mapper" if dm else "none", **_final(lv, host)}

    def fill():
        with device(ctx, vg, lv, dm) as dev:
            _fill(ctx, template.path, dev, template_size, info["size"])
    return _finish(host, s, ctx, info, extra, dm, fill)


def _finish(host, s: Settings, ctx, info: dict, extra: dict, dm: bool, fill=None) -> Disk:
    """Fill the new volume and make the swap disk; the volume goes again if either fails."""
    try:
        if fill is not None:
            fill()
        if host.swap:
            extra["swap"] = _make_swap(host, ctx)
    except BaseException:
        with contextlib.suppress(Exception), _locked(s, ctx):
            _lvremove(ctx, extra["vg"], extra["lv"], dm)
        raise
    return Disk(path=f"/dev/{extra['vg']}/{host.fqname}", format="raw", kind="lvm", size=info["size"],
                extra=extra)


STAGED_SUFFIX = "+mln-new"      # '+' is in no host or project name, so in no other host's volume


def _staged_name(ctx, vg: str, lv: str, dm: bool, host) -> tuple[str, bool]:
    """The name to create the volume under, and whether it replaces one: while ``lv``
    exists (the project being replaced), the new volume is made as ``<lv>+mln-new`` and
    renamed at ``mln_commit_host``, so a failed rebuild leaves the old volume alone. A
    staged volume left by a killed build (the project lock excludes a running one) goes."""
    staged = lv + STAGED_SUFFIX
    if lv_info(ctx, vg, staged, dm):
        ctx.log(f"+---> {host.name}: removing {vg}/{staged}, left by an interrupted build")
        _lvremove(ctx, vg, staged, dm)
    if not lv_info(ctx, vg, lv, dm):
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
    dm = have_device_mapper()
    with _locked_for(host, vg, ctx):
        if lv_info(ctx, vg, final, dm):     # the replaced project could not be read: its volume
            _lvremove(ctx, vg, final, dm)
        try:
            _lvm(ctx, ["lvrename", vg, lv, final], f"renaming logical volume {vg}/{lv} to {final}", dm)
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


def _require_vg(ctx, vg: str, dm: bool) -> dict:
    vgi = vg_info(ctx, vg, dm)
    if vgi is None:
        raise MlnError(f"volume group '{vg}' does not exist (vgs does not list it): create it with "
                       "vgcreate, or name another one with lvm_vg in the host or in mln.conf")
    return vgi


def _fill(ctx, template: str, dev: str, template_size: int, lv_size: int) -> None:
    """Copy the template onto the volume and grow its filesystem to the volume's size."""
    if imagefs.is_qcow2(template):
        ctx.run(["qemu-img", "convert", "-n", "-O", "raw", template, dev],
                what=f"copying template {template}", timeout=3600)
    else:
        ctx.run(["dd", f"if={template}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"],
                what=f"copying template {template}", timeout=3600)
    if not _is_ext(dev):
        ctx.log(f"warning: template {template} holds no ext2/3/4 filesystem; not resized")
        return
    if lv_size > template_size:
        p = ctx.run(["e2fsck", "-f", "-y", dev], check=False, timeout=3600)
        if p.returncode not in (0, 1):
            raise MlnError(f"e2fsck -f -y {dev} (copy of {template}) failed (exit {p.returncode}): "
                           f"{_clean(p.stdout + p.stderr)[-500:]}")
        ctx.run(["resize2fs", dev], what=f"growing the filesystem of {dev}", timeout=3600)


def _make_swap(host, ctx) -> str:
    rel = os.path.join("images", f"swap_{host.name}")
    path = ctx.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(host.swap)
    ctx.run(["mkswap", "-q", path], what=f"mkswap {path}")
    return rel


def _create_snapshot(host, s: Settings, ctx, dm: bool) -> Disk:
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
        vgi = _require_vg(ctx, vg, dm)
        origin = next(((n, i) for n in dict.fromkeys(names) if (i := lv_info(ctx, vg, n, dm))), None)
        if origin is None:
            raise MlnError(f"lvm_snapshot: volume group {vg} has no logical volume named "
                           f"'{host.template}' to take a snapshot of (make one holding the template first)")
        oname, oinfo = origin
        if (host.size or 0) > oinfo["size"] or host.free_space:
            ctx.log(f"warning: host {host.name}: a snapshot has the size of its origin {vg}/{oname} "
                    f"({format_size(oinfo['size'])}); size/free_space are ignored")
        extents = max(1, -(-oinfo["size"] // vgi["extent_size"] // 2))
        lv, _ = _staged_name(ctx, vg, lv, dm, host)
        if extents > vgi["free_count"]:
            raise MlnError(f"volume group {vg} has {format_size(vgi['free'])} free, but the snapshot needs "
                           f"{format_size(extents * vgi['extent_size'])} (half of {oname})")
        _lvm(ctx, ["lvcreate", "-y", "-s", "-n", lv, "-l", str(extents)] + s.options + [f"{vg}/{oname}"],
             f"creating snapshot {vg}/{lv} of {vg}/{oname}", dm)
        info = lv_info(ctx, vg, lv, dm)
        if info is None:
            raise MlnError(f"lvcreate reported success but {vg}/{lv} is not listed by lvs")
    extra = {"vg": vg, "lv": lv, "lv_uuid": info["uuid"], "snapshot_of": oname, "activation": "device-mapper",
             **_final(lv, host)}
    return _finish(host, s, ctx, info, extra, dm)


@hookimpl
def mln_attach_disk(host, disk, ctx):
    """For a run: with device-mapper, the activated ``/dev/<vg>/<lv>``; without, a loop
    device over the volume's extents (kept until ``mln_detach_disk``)."""
    if disk.kind != "lvm":
        return None
    vg, lv = disk.extra["vg"], disk.extra["lv"]
    if have_device_mapper():
        return _activate(ctx, vg, lv)
    backing, offset, length = extent_range(ctx, vg, lv)
    p = ctx.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(length), backing],
                what=f"making a loop device over {vg}/{lv}")
    return p.stdout.decode().strip()


@hookimpl
def mln_detach_disk(host, disk, path, ctx):
    if disk.kind != "lvm" or not path.startswith("/dev/loop"):
        return
    # only the loop device made for this volume: the number may have been reused since
    try:
        backing, offset, length = extent_range(ctx, disk.extra["vg"], disk.extra["lv"])
    except MlnError:
        return
    sysdir = f"/sys/block/{os.path.basename(path)}/loop"
    try:
        with open(f"{sysdir}/backing_file") as f:
            same = f.read().rstrip("\n") == backing
        with open(f"{sysdir}/offset") as f:
            same = same and int(f.read()) == offset
    except (OSError, ValueError):
        return
    if same:
        ctx.run(["losetup", "-d", path], what=f"releasing {path} ({host.name}'s volume)", check=False)


class LvmImage(imagefs.Ext4Image):
    """An Ext4Image on a volume's device; ``close()`` also releases the imitation loop device."""

    def __init__(self, path: str, release=None):
        self._release = release
        super().__init__(path)

    def close(self) -> None:
        try:
            super().close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


@hookimpl
def mln_open_image(host, disk, ctx):
    if disk.kind != "lvm":
        return None
    vg = disk.extra.get("vg") or disk.path.split("/")[2]
    lv = disk.extra.get("lv") or os.path.basename(disk.path)
    if have_device_mapper():
        dev, release = _activate(ctx, vg, lv), None
    else:
        view = LoopView(ctx, *extent_range(ctx, vg, lv))
        dev, release = view.device, view.release
    try:
        if not _is_ext(dev):
            if release:
                release()
            return None
        return LvmImage(dev, release)
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
    dm = have_device_mapper()
    try:
        with _locked_for(host, vg, ctx):
            leftover = lv + STAGED_SUFFIX          # a killed build's (during a build: this build's)
            if ctx.staging is None and not lv.endswith(STAGED_SUFFIX) and lv_info(ctx, vg, leftover, dm):
                _lvremove(ctx, vg, leftover, dm)
            info = lv_info(ctx, vg, lv, dm)
            if info is None:
                ctx.debug(f"{host.name}: logical volume {vg}/{lv} is already gone")
                return None
            if extra.get("lv_uuid") and info["uuid"] != extra["lv_uuid"]:
                ctx.debug(f"{host.name}: {vg}/{lv} was made by a later build (uuid {info['uuid']}); kept")
                return None
            _lvremove(ctx, vg, lv, dm)
    except MlnError as e:
        raise MlnError(f"host {host.name}: {e.message}") from None
    return None


@hookimpl
def mln_doctor(ctx):
    found = tool("lvcreate", "logical volumes for hosts with 'lvm'", "lvm2")
    if found["ok"]:
        dm = os.path.exists("/dev/mapper/control")
        found["detail"] += ("; device-mapper: yes" if dm else
                            "; no device-mapper: volumes are reached through loop devices over their extents")
    return [found]
