"""Disks that QEMU reaches over the network (``nfs://`` and ``iscsi://``), worked on without a
kernel NFS client or iSCSI initiator: the tools mln runs are all userspace.

* :func:`parse_nfs` and :func:`parse_iscsi` read the locations the ``nfs`` and ``iscsi``
  storage plugins are given; :func:`nfs_blockdev` and :func:`iscsi_blockdev` say the same as
  QEMU ``--blockdev`` options.
* :func:`url_view` exports such a disk as a raw file through a ``qemu-storage-daemon``
  FUSE export (as :func:`mln_backends.imageexport.raw_view` does for files), so that
  debugfs, e2fsck and resize2fs work on it; :func:`open_url_image` opens it as a GuestFS.
* :func:`nfs_file` deletes, renames or looks up a file on an NFS export through libnfs (the
  library QEMU's nfs driver uses), in a ``python3`` process on the machine.
* :func:`read_head` and :func:`zero_head` read and clear the start of a disk (``qemu-img
  dd``, ``qemu-io``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote, unquote

from mln_core.errors import MlnError
from mln_core.machine import Machine, local

from .imageexport import _is_mounted, _stop_daemon
from .imageformat import ImageError, run_tool, text

# ---------------------------------------------------------------------------------------
# locations

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}\Z")
_PATH_OK = re.compile(r"[A-Za-z0-9._+@=%~/-]*\Z")
_IQN = re.compile(r"(iqn\.\d{4}-\d{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9.:_+-]+)?|eui\.[0-9A-Fa-f]{16}|"
                  r"naa\.[0-9A-Fa-f]{16,32})\Z")


def _server_problem(server: str) -> str | None:
    if not server:
        return "no server"
    if _IPV4.match(server):
        if any(int(x) > 255 for x in server.split(".")):
            return f"'{server}' is not an IPv4 address"
        return None
    if not _HOSTNAME.match(server) or len(server) > 253:
        return f"'{server}' is not a host name or IPv4 address"
    return None


@dataclass(frozen=True)
class NfsDir:
    """A directory on an NFS server: ``server:/path`` (the export, or a directory in it)."""

    server: str
    path: str

    def url(self, name: str = "") -> str:
        return f"nfs://{self.server}{quote(self.path.rstrip('/') + '/' + name if name else self.path)}"

    def __str__(self) -> str:
        return f"{self.server}:{self.path}"


def parse_nfs(value: str) -> NfsDir:
    """``SERVER:/export[/dir]`` or ``nfs://SERVER/export[/dir]``; MlnError saying what is wrong."""
    v = value.strip()
    if v.startswith("nfs://"):
        rest = v[len("nfs://"):]
        if "?" in rest or "#" in rest:
            raise MlnError(f"nfs '{value}': options in the URL (?...) are not supported; give "
                           "SERVER:/export/dir")
        server, slash, path = rest.partition("/")
        path = "/" + unquote(path) if slash else ""
    else:
        server, colon, path = v.partition(":")
        if not colon:
            raise MlnError(f"nfs '{value}': give the NFS directory as SERVER:/export[/dir] (e.g. "
                           "nfsserver:/srv/mln)")
    why = _server_problem(server)
    if why:
        raise MlnError(f"nfs '{value}': {why}")
    if not path.startswith("/"):
        raise MlnError(f"nfs '{value}': the path on the server must be absolute (SERVER:/export[/dir])")
    if not _PATH_OK.match(path) or "//" in path.rstrip("/") or any(c in (".", "..") for c in path.split("/")):
        raise MlnError(f"nfs '{value}': the path may hold letters, digits and . _ + - / only, without "
                       "empty, . or .. parts")
    return NfsDir(server, path.rstrip("/") or "/")


def nfs_blockdev(d: NfsDir, name: str) -> dict:
    return {"driver": "nfs", "server": {"type": "inet", "host": d.server},
            "path": d.path.rstrip("/") + "/" + name}


@dataclass(frozen=True)
class IscsiLun:
    """A LUN of an iSCSI target: ``iscsi://PORTAL[:PORT]/IQN/LUN``."""

    portal: str                 # host or host:port
    target: str
    lun: int

    @property
    def url(self) -> str:
        return f"iscsi://{self.portal}/{self.target}/{self.lun}"

    def __str__(self) -> str:
        return self.url


def parse_iscsi(url: str | None, portal: str | None = None, target: str | None = None,
                lun: str | None = None) -> IscsiLun:
    """A LUN from ``iscsi://PORTAL/IQN/LUN``, or from a portal, a target IQN and a LUN
    number; MlnError saying what is wrong or missing."""
    if url:
        if not url.startswith("iscsi://"):
            raise MlnError(f"iscsi '{url}': give the LUN as iscsi://PORTAL/IQN/LUN")
        parts = url[len("iscsi://"):].split("/")
        if len(parts) != 3 or "@" in parts[0]:
            raise MlnError(f"iscsi '{url}': give the LUN as iscsi://PORTAL/IQN/LUN (no user name, no "
                           "options), e.g. iscsi://san1/iqn.2026-01.org.example:vms/3")
        portal, target, lun = parts
    missing = [k for k, v in (("a portal (iscsi PORTAL)", portal), ("a target (iscsi_target IQN)", target),
                              ("a LUN number (iscsi_lun N)", lun)) if not v]
    if missing:
        raise MlnError(f"iscsi: the LUN is not complete, it lacks {' and '.join(missing)}; or give the "
                       "whole LUN as iscsi://PORTAL/IQN/LUN")
    host, _, port = portal.partition(":")
    why = _server_problem(host)
    if why:
        raise MlnError(f"iscsi portal '{portal}': {why}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise MlnError(f"iscsi portal '{portal}': '{port}' is not a port number")
    if not _IQN.match(target):
        raise MlnError(f"iscsi target '{target}' is not an iSCSI name (iqn.YYYY-MM.domain[:name])")
    if not str(lun).isdigit() or int(lun) > 16383:
        raise MlnError(f"iscsi LUN '{lun}' is not a LUN number (0 to 16383)")
    return IscsiLun(portal, target, int(lun))


def iscsi_blockdev(lun: IscsiLun) -> dict:
    return {"driver": "iscsi", "transport": "tcp", "portal": lun.portal if ":" in lun.portal
            else lun.portal + ":3260", "target": lun.target, "lun": lun.lun}


# ---------------------------------------------------------------------------------------
# the disk as a raw file

@contextlib.contextmanager
def url_view(blockdev: dict, fmt: str, what: str, on_helper=None,
             machine: Machine | None = None) -> Iterator[str]:
    """The network disk ``blockdev`` (a QEMU protocol node: nfs, iscsi) holding a ``fmt``
    image (qcow2 or raw), exported writable as a raw file; stopped and unmounted at the end."""
    machine = machine or local()
    tmpdir = os.path.realpath(tempfile.mkdtemp(prefix="mln-netview-"))
    raw = os.path.join(tmpdir, "disk.raw")
    pidfile = os.path.join(tmpdir, "qsd.pid")
    log = os.path.join(tmpdir, "qsd.log")
    started = False
    try:
        open(raw, "wb").close()
        argv = ["qemu-storage-daemon",
                "--blockdev", json.dumps({**blockdev, "node-name": "f0"}),
                "--blockdev", json.dumps({"driver": fmt, "node-name": "q0", "file": "f0"}),
                "--export", json.dumps({"type": "fuse", "id": "e0", "node-name": "q0", "mountpoint": raw,
                                        "writable": True}),
                "--pidfile", pidfile, "--daemonize"]
        if on_helper is not None:
            on_helper(pidfile, raw)
        started = True
        with open(log, "wb") as logf, open(os.devnull, "rb") as null:
            r = run_tool(machine, argv, stdin=null, stdout=logf, stderr=logf, timeout=60,
                         missing="qemu-storage-daemon is not installed (package qemu-utils)")
        if r.returncode != 0 or not _is_mounted(machine, raw):
            with open(log, "rb") as f:
                msg = text(f.read())
            raise ImageError(f"{what}: qemu-storage-daemon could not open it (rc {r.returncode}): {msg}")
        yield raw
    finally:
        problems = _stop_daemon(machine, pidfile, raw) if started else []
        if problems:
            raise ImageError(f"{what}: cleaning up the raw view failed: {'; '.join(problems)}")
        shutil.rmtree(tmpdir, ignore_errors=True)


def open_url_image(blockdev: dict, fmt: str, what: str, on_helper=None, machine: Machine | None = None):
    """The ext2/3/4 filesystem of the network disk as a GuestFS (the view ends when it is
    closed); a whole-disk image at its first Linux partition. ImageError/NoFilesystem."""
    from .imagefs import _open_raw
    stack = contextlib.ExitStack()
    try:
        raw = stack.enter_context(url_view(blockdev, fmt, what, on_helper, machine))
        img = _open_raw(raw, machine)
    except BaseException:
        stack.close()
        raise
    img.source = what
    img._on_close.append(stack.close)
    return img


def fsck_and_grow(blockdev: dict, fmt: str, what: str, size: int | None, on_helper=None,
                  machine: Machine | None = None, uuid: str | None = None) -> bool:
    """Grow the ext2/3/4 filesystem that starts the disk to ``size`` bytes (None: the whole
    disk; 0: keep its size) and give it the UUID ``uuid``, if given. False if the disk does
    not start with an ext2/3/4 filesystem (nothing done)."""
    from .imageformat import is_ext_filesystem
    machine = machine or local()
    with url_view(blockdev, fmt, what, on_helper, machine) as raw:
        if not is_ext_filesystem(raw):
            return False
        r = run_tool(machine, ["e2fsck", "-f", "-y", raw], timeout=3600)
        if r.returncode not in (0, 1):
            raise ImageError(f"{what}: e2fsck -f -y failed (rc {r.returncode}): {text(r.stdout + r.stderr)}")
        if size != 0:
            argv = ["resize2fs", raw] + ([f"{size // 1024}K"] if size else [])
            r = run_tool(machine, argv, timeout=3600)
            if r.returncode != 0:
                raise ImageError(f"{what}: resize2fs failed (rc {r.returncode}): {text(r.stdout + r.stderr)}")
        if uuid:
            r = run_tool(machine, ["tune2fs", "-U", uuid, raw], timeout=600)
            if r.returncode != 0:
                raise ImageError(f"{what}: tune2fs -U failed (rc {r.returncode}): "
                                 f"{text(r.stdout + r.stderr)}")
    return True


# ---------------------------------------------------------------------------------------
# reading and clearing the start of a disk

def qemu_size(machine: Machine, url: str, fmt: str = "raw") -> int:
    """The virtual size of the disk at ``url``; MlnError saying why it cannot be reached."""
    r = run_tool(machine, ["qemu-img", "info", "--output=json", "-f", fmt, url], timeout=60)
    if r.returncode != 0:
        raise MlnError(f"{url} cannot be opened: {_short(r.stderr)}")
    try:
        return int(json.loads(r.stdout)["virtual-size"])
    except (ValueError, KeyError, TypeError):
        raise MlnError(f"{url}: qemu-img info said no size") from None


def read_head(machine: Machine, url: str, n: int = 65536) -> bytes:
    """The first ``n`` bytes of the raw disk at ``url``."""
    tmpdir = tempfile.mkdtemp(prefix="mln-nethead-")
    try:
        out = os.path.join(tmpdir, "head")
        r = run_tool(machine, ["qemu-img", "dd", "-f", "raw", "-O", "raw", f"bs={n}", "count=1",
                               f"if={url}", f"of={out}"], timeout=60)
        if r.returncode != 0:
            raise MlnError(f"reading {url}: {_short(r.stderr)}")
        with open(out, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def zero_head(machine: Machine, url: str, n: int = 1 << 20) -> None:
    """Write zeros over the first ``n`` bytes of the raw disk at ``url``."""
    r = run_tool(machine, ["qemu-io", "-f", "raw", "-c", f"write -z 0 {n}", url], timeout=120)
    said = text(r.stdout + r.stderr)
    if r.returncode != 0 or "error" in said.lower() or "failed" in said.lower():
        raise MlnError(f"clearing the start of {url}: {_short(said)}")


EXPORTED = "disk.qcow2"      # what mln_export_disk writes for an nfs or iscsi disk


def export_qcow2(host, disk, dest: str, ctx, kind: str, fmt: str) -> dict:
    """``mln_export_disk`` of a disk reached by its URL: one compressed qcow2 file."""
    ctx.on(host).run(["qemu-img", "convert", "-q", "-c", "-f", fmt, "-O", "qcow2", disk.extra["url"],
                      os.path.join(dest, EXPORTED)], what=f"exporting {disk.extra['url']}", timeout=None)
    return {"storage": kind, "format": fmt, "file": EXPORTED}


def exported_image(host, src: str) -> str:
    """The file ``export_qcow2`` wrote, in an unpacked archive (an error if it is not there)."""
    image = os.path.join(src, EXPORTED)
    if not os.path.isfile(image):
        raise MlnError(f"the archive holds no disks/{host.name}/{EXPORTED}")
    return image


def ext_uuid(head: bytes) -> str | None:
    """The UUID of the ext2/3/4 filesystem whose first bytes are ``head``, or None."""
    if len(head) < 2048 or int.from_bytes(head[1024 + 56:1024 + 58], "little") != 0xEF53:
        return None
    import uuid
    return str(uuid.UUID(bytes=head[1024 + 104:1024 + 120]))


def _short(err) -> str:
    s = err.decode("utf-8", "replace") if isinstance(err, bytes) else (err or "")
    s = " ".join(s.split())
    return s[-400:] or "no message"


# ---------------------------------------------------------------------------------------
# files on an NFS export, through libnfs

_NFS_SCRIPT = r"""
import ctypes, json, sys
op, server, directory, *names = sys.argv[1:]
lib = ctypes.CDLL("libnfs.so.13")
lib.nfs_init_context.restype = ctypes.c_void_p
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [ctypes.c_void_p]
for f in ("nfs_mount", "nfs_unlink", "nfs_rename", "nfs_stat64", "nfs_mkdir"):
    getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
ctx = lib.nfs_init_context()
if not ctx:
    print(json.dumps({"error": "cannot make an NFS client context"})); sys.exit(0)
def err():
    return (lib.nfs_get_error(ctx) or b"").decode("utf-8", "replace")
out = {}
try:
    if lib.nfs_mount(ctx, server.encode(), directory.encode()) != 0:
        out["error"] = f"cannot mount {server}:{directory}: {err()}"
    elif op == "exists":
        st = ctypes.create_string_buffer(256)
        out["exists"] = [lib.nfs_stat64(ctx, ("/" + n).encode(), st) == 0 for n in names]
    elif op == "unlink":
        out["gone"] = []
        for n in names:
            rc = lib.nfs_unlink(ctx, ("/" + n).encode(), None)
            if rc != 0 and rc != -2:
                out["error"] = f"cannot delete {n}: {err()}"; break
            out["gone"].append(n)
    elif op == "rename":
        if lib.nfs_rename(ctx, ("/" + names[0]).encode(), ("/" + names[1]).encode()) != 0:
            out["error"] = f"cannot rename {names[0]} to {names[1]}: {err()}"
finally:
    lib.nfs_destroy_context(ctx)
print(json.dumps(out))
"""


def nfs_file(machine: Machine, d: NfsDir, op: str, *names: str) -> dict:
    """``op`` (exists, unlink, rename OLD NEW) on files of the NFS directory ``d`` (QEMU's
    way: the directory is mounted, not the export above it). MlnError on failure."""
    r = run_tool(machine, ["python3", "-c", _NFS_SCRIPT, op, d.server, d.path, *names], timeout=60)
    try:
        out = json.loads(r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout)
    except (ValueError, AttributeError):
        out = {"error": _short(r.stderr) if r.returncode else "no answer"}
    if r.returncode != 0 and "error" not in out:
        out["error"] = _short(r.stderr)
    if out.get("error"):
        if "libnfs" in out["error"] or "OSError" in out["error"]:
            raise MlnError(f"NFS {d}: libnfs (package libnfs13, with qemu-block-extra) is not usable: "
                           f"{out['error']}")
        raise MlnError(f"NFS {d}: {out['error']}")
    return out


def plain_qcow2(image: str, machine: Machine) -> None:
    """An imported image (``mln import``) is a qcow2 that reads no other file of this machine
    (a backing file or an external data file in an archive could name any)."""
    r = run_tool(machine, ["qemu-img", "info", "--output=json", "-f", "qcow2", image], timeout=60)
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
