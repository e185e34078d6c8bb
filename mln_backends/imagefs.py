"""Read and write files inside ext2/3/4 guest images without booting or mounting them.

* :class:`Ext4Image` implements :class:`mln_core.guest.GuestFS` on a raw ext4 image file
  (or block device) with ``debugfs`` from e2fsprogs.
* :func:`grow_image`, :func:`image_size`, :func:`create_overlay`, :func:`grow_qcow2`
  manage raw and qcow2 images.
* :func:`raw_view` exports a qcow2 image as a raw file through a ``qemu-storage-daemon``
  FUSE export, so that :class:`Ext4Image` (and resize2fs/e2fsck) can work on it;
  :func:`open_image` opens either kind of image as a GuestFS.
* :func:`is_ext_filesystem` tells whether a raw image holds an ext2/3/4 filesystem.

How :class:`Ext4Image` works
----------------------------
It keeps an in-memory model of the directories it has looked at (one ``ls -p`` per
directory, fetched lazily and several at a time) plus the pending changes. Write
operations are checked against that model when they are called (so that, e.g., writing
below a regular file fails at once), turned into debugfs commands and queued; all queued
commands run in ONE ``debugfs -w`` process at :meth:`Ext4Image.flush` / ``close()``.
Queries (``read``, ``exists``, ``is_dir``, ``listdir``) are answered from the model,
from the data of pending writes, or from the unchanged image, so they never need to
flush. Symbolic links in the middle of paths are resolved here (debugfs's ``write``
does not follow them), e.g. ``/lib/systemd/...`` on a merged-/usr guest.

debugfs quirks handled here: it exits 0 on errors and reports them only on stderr
(often without the path), so every queued operation is preceded by a lookup of a
unique nonexistent "marker" path whose error line ("<marker>: File not found") delimits
the errors of that operation; ``write`` will not replace a file (``rm`` first) and
ignores the owner; mode/uid/gid are set with ``sif`` (``sif mode`` sets the file type
bits too, so the type must be known); ``mkdir`` of an existing name fails even if it
is a regular file; arguments are quoted with ``"`` (a literal ``"`` is written ``""``);
commands cannot contain newlines, so paths with CR/LF/NUL are refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat as _stat
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Iterator

from mln_core.errors import MlnError
from mln_core.guest import GuestFS

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


class ImageError(MlnError):
    """A guest image could not be opened, read or changed (a user-facing error: the core
    reports it with the host and the step, as any MlnError)."""


# --------------------------------------------------------------------------------------
# small helpers

_EXT_MAGIC = 0xEF53
_INCOMPAT_RECOVER = 0x0004
_INCOMPAT_64BIT = 0x0080
_QCOW_MAGIC = b"QFI\xfb"
_ROOT_INO = 2
_MAX_SYMLINKS = 40
_MAX_CMD_LINE = 8000  # debugfs reads command lines with fgets(buf, BUFSIZ=8192)


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _quote(arg: str | bytes) -> bytes:
    """Quote one argument for debugfs's command parser (libss)."""
    b = _enc(arg) if isinstance(arg, str) else arg
    if b"\n" in b or b"\r" in b or b"\0" in b:
        raise ValueError("newline, carriage return or NUL cannot be passed to debugfs")
    return b'"' + b.replace(b'"', b'""') + b'"'


def _run(argv: list[str], *, input: bytes | None = None, env=None, timeout=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=input, capture_output=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise ImageError(f"{argv[0]} is not installed (needed to work on guest images)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{argv[0]} timed out after {timeout} s: {' '.join(argv)}") from None


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace").strip()


def _read_head(path: str, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {e.strerror or e}") from None


def is_qcow2(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the qcow2 magic."""
    return _read_head(os.fspath(path), 4) == _QCOW_MAGIC


@dataclass(frozen=True)
class _Super:
    block_size: int
    blocks: int
    incompat: int

    @property
    def size(self) -> int:
        return self.block_size * self.blocks


def _superblock(path: str) -> _Super:
    """Parse the ext2/3/4 superblock of a raw image; ImageError if there is none."""
    head = _read_head(path, 2048)
    if head[:4] == _QCOW_MAGIC:
        raise ImageError(f"{path}: is a qcow2 image, not a raw ext2/3/4 filesystem "
                         "(use open_image() or raw_view())")
    if len(head) < 2048 or int.from_bytes(head[1024 + 56:1024 + 58], "little") != _EXT_MAGIC:
        raise ImageError(f"{path}: not an ext2/ext3/ext4 filesystem image (no ext superblock)")
    sb = head[1024:]
    blocks = int.from_bytes(sb[4:8], "little")
    log_bs = int.from_bytes(sb[24:28], "little")
    incompat = int.from_bytes(sb[96:100], "little")
    if incompat & _INCOMPAT_64BIT:
        blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
    return _Super(1024 << log_bs, blocks, incompat)


def _device_size(path: str) -> int:
    st = os.stat(path)
    if _stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    return st.st_size


# --------------------------------------------------------------------------------------
# Ext4Image

@dataclass(slots=True)
class _Ent:
    ino: int | None  # None: created by a pending (or flushed) operation of ours
    mode: int  # full i_mode, type bits included
    uid: int
    gid: int


class _Need(Exception):
    """Internal: the walk needs information that is not cached yet."""

    def __init__(self, kind: str, path: str, rest: list[str] | None = None):
        super().__init__(kind, path)
        self.kind = kind  # "dir" (a listing of path) or "link" (the target of path)
        self.path = path
        self.rest = rest or []


_LS_RE = re.compile(rb"^/(\d+)/([0-7]+)/(\d+)/(\d+)/([^/]*)/(\d*)/$")
_STAT_RE = re.compile(rb"^Inode: (\d+)\s+Type: (\S+)", re.M)
_FAST_LINK_RE = re.compile(rb'^Fast link dest: "(.*)"$', re.M)


def _join(d: str, name: str) -> str:
    return "/" + name if d == "/" else d + "/" + name


class Ext4Image(GuestFS):
    """A raw ext2/3/4 image file or block device, edited with debugfs."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        sb = _superblock(self.path)
        if sb.incompat & _INCOMPAT_RECOVER:
            # Changes made with debugfs would be undone by a later journal replay.
            r = _run(["e2fsck", "-E", "journal_only", "-p", self.path])
            if r.returncode not in (0, 1):
                raise ImageError(f"{self.path}: journal recovery failed (e2fsck rc {r.returncode}): "
                                 f"{_text(r.stdout + r.stderr)}")
        self._closed = False
        self._tmpdir: str | None = None
        self._finalizer = None
        self._token = secrets.token_hex(8)
        self._nfile = 0
        # model (valid for the image plus the pending operations)
        self._dirs: dict[str, dict[str, _Ent]] = {}
        self._root: _Ent | None = None
        self._links: dict[str, str] = {}
        self._data: dict[str, bytes | str] = {}  # pending contents of written files (str: a host file's)
        # speculative results of the last prefetch (validated by inode number before use)
        self._spec_dirs: dict[str, tuple[int, _Ent, dict[str, _Ent]]] = {}
        self._spec_stat: dict[str, tuple[int, str, str | None]] = {}
        self._spec_data: dict[str, bytes] = {}
        # queued write operations
        self._cmds: list[bytes] = []
        self._ops: list[tuple[str, str]] = []  # (what, guest path) per queued operation
        self._files: list[str] = []
        self._on_close: list = []
        self.stats = {"debugfs_runs": 0}

    def __repr__(self) -> str:
        return f"Ext4Image({self.path!r})"

    # ---- plumbing ----------------------------------------------------------------

    def _err(self, gpath: str, msg: str) -> ImageError:
        return ImageError(f"{self.path}: {gpath}: {msg}")

    def _check_open(self):
        if self._closed:
            raise ImageError(f"{self.path}: image is already closed")

    def _tmp(self, prefix: str) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="mln-imagefs-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self._nfile += 1
        return os.path.join(self._tmpdir, f"{prefix}{self._nfile}")

    def _debugfs(self, cmds: list[bytes], write: bool = False) -> tuple[bytes, bytes]:
        for c in cmds:
            if len(c) > _MAX_CMD_LINE:
                raise ImageError(f"{self.path}: debugfs command too long ({len(c)} bytes)")
        argv = ["debugfs"] + (["-w"] if write else []) + ["-f", "-", self.path]
        env = dict(os.environ, DEBUGFS_PAGER="__none__", PAGER="__none__", LC_ALL="C")
        self.stats["debugfs_runs"] += 1
        r = _run(argv, input=b"".join(c + b"\n" for c in cmds), env=env)
        err = r.stderr
        for line in err.splitlines():
            if b"while trying to open" in line or b"Filesystem not open" in line \
                    or b"while opening filesystem" in line:
                raise ImageError(f"{self.path}: debugfs cannot open the filesystem: {_text(line)}")
        if r.returncode != 0:
            raise ImageError(f"{self.path}: debugfs failed (rc {r.returncode}): {_text(err)}")
        return r.stdout, err

    @staticmethod
    def _segments(out: bytes, cmds: list[bytes]) -> list[bytes]:
        """Split debugfs -f output into the output of each command (it echoes each one)."""
        pos = 0
        bounds = []
        for c in cmds:
            echo = b"debugfs: " + c + b"\n"
            i = out.find(echo, pos)
            while i > 0 and out[i - 1:i] != b"\n":
                i = out.find(echo, i + 1)
            if i < 0:
                raise ImageError(f"unexpected debugfs output (no echo of {c!r})")
            bounds.append((i, i + len(echo)))
            pos = i + len(echo)
        segs = []
        for k, (_, end) in enumerate(bounds):
            nxt = bounds[k + 1][0] if k + 1 < len(bounds) else len(out)
            segs.append(out[end:nxt])
        return segs

    @staticmethod
    def _parse_ls(seg: bytes) -> tuple[int, _Ent, dict[str, _Ent]] | None:
        dot = None
        entries: dict[str, _Ent] = {}
        for line in seg.split(b"\n"):
            m = _LS_RE.match(line)
            if not m:
                continue
            ent = _Ent(int(m[1]), int(m[2], 8), int(m[3]), int(m[4]))
            name = m[5]
            if not name or ent.ino == 0:  # unused slots (mkfs pre-allocates lost+found's)
                continue
            if name == b".":
                dot = ent
            elif name != b"..":
                entries[_dec(name)] = ent
        if dot is None:
            return None
        return dot.ino, dot, entries

    @staticmethod
    def _parse_stat(seg: bytes) -> tuple[int, str, str | None] | None:
        m = _STAT_RE.search(seg)
        if not m:
            return None
        fm = _FAST_LINK_RE.search(seg)
        return int(m[1]), _dec(m[2]), (_dec(fm[1]) if fm else None)

    def _split(self, path: str) -> list[str]:
        if not isinstance(path, str):
            path = os.fsdecode(path)
        if not path.startswith("/"):
            raise self._err(path, "guest paths must be absolute")
        if "\0" in path or "\n" in path or "\r" in path:
            raise self._err(repr(path), "NUL, newline and carriage return are not supported in guest paths")
        return [c for c in path.split("/") if c not in ("", ".")]

    # ---- fetching ------------------------------------------------------------------

    def _prefetch_dirs(self, start: str, rest: list[str], want_data: bool):
        """One debugfs run: `ls -p` and `stat` of ``start`` and its lexical continuations."""
        chain = [start]
        cur = start
        for c in rest:
            if c == "..":
                break
            cur = _join(cur, c)
            chain.append(cur)
        cmds: list[bytes] = []
        for p in chain:
            cmds.append(b"ls -p " + _quote(p))
            cmds.append(b"stat " + _quote(p))
        dump = None
        if want_data and len(chain) == len(rest) + 1 and len(chain) > 1:
            dump = self._tmp("r")
            cmds.append(b"dump " + _quote(chain[-1]) + b" " + _quote(dump))
        try:
            out, _ = self._debugfs(cmds)
            segs = self._segments(out, cmds)
            for k, p in enumerate(chain):
                ls = self._parse_ls(segs[2 * k])
                if ls is not None:
                    self._spec_dirs[p] = ls
                st = self._parse_stat(segs[2 * k + 1])
                if st is not None:
                    self._spec_stat[p] = st
            if dump is not None and os.path.exists(dump):
                with open(dump, "rb") as f:
                    self._spec_data[chain[-1]] = f.read()
        finally:
            if dump is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dump)

    def _fetch_link(self, path: str):
        tmp = self._tmp("l")
        cmds = [b"stat " + _quote(path), b"dump " + _quote(path) + b" " + _quote(tmp)]
        try:
            out, _ = self._debugfs(cmds)
            segs = self._segments(out, cmds)
            st = self._parse_stat(segs[0])
            if st is None:
                return
            ino, typ, fast = st
            if fast is None and os.path.exists(tmp):
                with open(tmp, "rb") as f:
                    fast = _dec(f.read())
            self._spec_stat[path] = (ino, typ, fast)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # ---- the model -----------------------------------------------------------------

    def _root_entry(self) -> _Ent:
        if self._root is None:
            self._listing("/", [])
        assert self._root is not None
        return self._root

    def _entry_of(self, canon: str) -> _Ent:
        if canon == "/":
            return self._root_entry()
        parent, name = posixpath.split(canon)
        return self._dirs[parent][name]

    def _listing(self, cur: str, rest: list[str]) -> dict[str, _Ent]:
        d = self._dirs.get(cur)
        if d is not None:
            return d
        ino = _ROOT_INO if cur == "/" else self._entry_of(cur).ino
        spec = self._spec_dirs.get(cur)
        if spec is not None and ino is not None and spec[0] == ino:
            self._dirs[cur] = spec[2]
            if cur == "/":
                self._root = spec[1]
            return spec[2]
        raise _Need("dir", cur, rest)

    def _link_target(self, canon: str, ent: _Ent) -> str:
        t = self._links.get(canon)
        if t is not None:
            return t
        st = self._spec_stat.get(canon)
        if st is not None and ent.ino is not None and st[0] == ent.ino and st[2] is not None:
            self._links[canon] = st[2]
            return st[2]
        raise _Need("link", canon)

    def _walk(self, comps: list[str], follow_last: bool):
        """Resolve a path in the model. Returns one of
        ("found", canon, entry), ("missing", parent_canon, name),
        ("missing_anc", dir_canon, remaining_components), ("notdir", canon, entry)."""
        cur = "/"
        todo = list(comps)
        nlinks = 0
        while todo:
            c = todo.pop(0)
            last = not todo
            if c == "..":
                cur = posixpath.dirname(cur)
                if last:
                    return ("found", cur, self._entry_of(cur))
                continue
            listing = self._listing(cur, [c] + todo)
            p = _join(cur, c)
            e = listing.get(c)
            if e is None:
                if last:
                    return ("missing", cur, c)
                return ("missing_anc", cur, [c] + todo)
            if _stat.S_ISLNK(e.mode) and (follow_last or not last):
                nlinks += 1
                if nlinks > _MAX_SYMLINKS:
                    raise ImageError(f"{self.path}: {'/' + '/'.join(comps)}: too many levels of symbolic links")
                target = self._link_target(p, e)
                if target.startswith("/"):
                    cur = "/"
                todo = [x for x in target.split("/") if x not in ("", ".")] + todo
                if not todo:
                    return ("found", cur, self._entry_of(cur))
                continue
            if last:
                return ("found", p, e)
            if not _stat.S_ISDIR(e.mode):
                return ("notdir", p, e)
            cur = p
        return ("found", cur, self._entry_of(cur))

    def _resolve(self, path: str, follow_last: bool, want_data: bool = False):
        comps = self._split(path)
        self._spec_dirs.clear()
        self._spec_stat.clear()
        self._spec_data.clear()
        seen: set[tuple[str, str]] = set()
        while True:
            try:
                return self._walk(comps, follow_last)
            except _Need as need:
                key = (need.kind, need.path)
                if key in seen:
                    raise self._err(path, f"debugfs could not {'list' if need.kind == 'dir' else 'read link'} "
                                          f"{need.path} (image changed behind our back?)")
                seen.add(key)
                if need.kind == "dir":
                    self._prefetch_dirs(need.path, need.rest, want_data)
                else:
                    self._fetch_link(need.path)

    # ---- queries -------------------------------------------------------------------

    def read(self, path: str) -> bytes | None:
        self._check_open()
        status, canon, e = self._resolve(path, follow_last=True, want_data=True)
        if status != "found" or not _stat.S_ISREG(e.mode):
            return None
        if canon in self._data:
            pending = self._data[canon]
            if isinstance(pending, str):
                with open(pending, "rb") as f:
                    return f.read()
            return pending
        st = self._spec_stat.get(canon)
        if canon in self._spec_data and st is not None and e.ino is not None and st[0] == e.ino:
            return self._spec_data[canon]
        tmp = self._tmp("r")
        try:
            _, err = self._debugfs([b"dump " + _quote(canon) + b" " + _quote(tmp)])
            if not os.path.exists(tmp):
                raise self._err(path, f"debugfs could not read the file: {_text(err)}")
            with open(tmp, "rb") as f:
                return f.read()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def exists(self, path: str) -> bool:
        self._check_open()
        return self._resolve(path, follow_last=False)[0] == "found"

    def is_dir(self, path: str) -> bool:
        self._check_open()
        status, _, e = self._resolve(path, follow_last=True)
        return status == "found" and _stat.S_ISDIR(e.mode)

    def listdir(self, path: str) -> list[str]:
        self._check_open()
        status, canon, e = self._resolve(path, follow_last=True)
        if status != "found" or not _stat.S_ISDIR(e.mode):
            return []
        try:
            return sorted(self._listing(canon, []))
        except _Need as need:  # the walk ended on this directory without listing it
            self._prefetch_dirs(need.path, [], False)
        try:
            return sorted(self._listing(canon, []))
        except _Need:
            raise self._err(path, "debugfs could not list the directory") from None

    # ---- write operations ----------------------------------------------------------

    def _emit(self, what: str, gpath: str, cmds: list[bytes]):
        k = len(self._ops)
        self._ops.append((what, gpath))
        self._cmds.append(b"stat " + _quote(f"/.mln-op-{self._token}-{k}"))
        self._cmds.extend(cmds)

    def _place(self, path: str, res, cmds: list[bytes], what: str):
        """For a creating operation: check the walk result, create missing parent
        directories (mode 0755, root) and return (parent_canon, name, existing_entry)."""
        status, where, x = res
        if status == "notdir":
            raise self._err(path, f"cannot {what}: {where} is not a directory")
        if status == "found":
            if where == "/":
                raise self._err(path, f"cannot {what} the root directory")
            parent, name = posixpath.split(where)
            return parent, name, x
        if status == "missing":
            return where, x, None
        # missing_anc
        comps = x
        if ".." in comps:
            raise self._err(path, f"cannot {what}: '..' after a missing directory")
        cur = where
        listing = self._dirs[cur]
        for c in comps[:-1]:
            p = _join(cur, c)
            cmds.append(b"mkdir " + _quote(p))
            listing[c] = _Ent(None, _stat.S_IFDIR | 0o755, 0, 0)
            listing = self._dirs[p] = {}
            cur = p
        return cur, comps[-1], None

    @staticmethod
    def _check_ids(mode: int, uid: int, gid: int):
        if not (isinstance(mode, int) and 0 <= mode <= 0o7777):
            raise ValueError(f"mode must be an int in 0..0o7777, not {mode!r}")
        for v in (uid, gid):
            if not (isinstance(v, int) and 0 <= v < 2 ** 32):
                raise ValueError(f"uid/gid must be an int in 0..2**32-1, not {v!r}")

    @staticmethod
    def _sif(p: str, mode: int | None, uid: int | None = None, gid: int | None = None) -> list[bytes]:
        q = _quote(p)
        cmds = []
        if mode is not None:
            cmds.append(b"sif " + q + b" mode 0%o" % mode)
        if uid is not None:
            cmds.append(b"sif " + q + b" uid %d" % uid)
        if gid is not None:
            cmds.append(b"sif " + q + b" gid %d" % gid)
        return cmds

    def _forget(self, canon: str, ent: _Ent | None):
        self._data.pop(canon, None)
        self._links.pop(canon, None)
        if ent is not None and _stat.S_ISDIR(ent.mode):
            self._dirs.pop(canon, None)

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self._check_open()
        data = bytes(data)
        local = self._tmp("w")
        with open(local, "wb") as f:
            f.write(data)
        self._files.append(local)        # deleted at the next flush, also if this write fails
        canon = self._write_from(path, local, mode, uid, gid)
        self._data[canon] = data

    def write_file(self, path: str, source: str, mode: int | None = None, uid: int = 0, gid: int = 0) -> None:
        """debugfs copies ``source`` itself at the next flush: no copy, nothing kept in memory."""
        self._check_open()
        source = os.path.abspath(source)
        canon = self._write_from(path, source, os.stat(source).st_mode & 0o7777 if mode is None else mode, uid, gid)
        self._data[canon] = source

    def _replace(self, path: str, what: str, is_dir: str) -> tuple[str, str, str, list[bytes]]:
        """Make room for a new file or symlink at ``path`` (not over a directory: ``is_dir``
        says so): (parent, name, canonical path, the debugfs commands so far)."""
        res = self._resolve(path, follow_last=False)
        if res[0] == "found" and _stat.S_ISDIR(res[2].mode):
            raise self._err(path, is_dir)
        cmds: list[bytes] = []
        parent, name, old = self._place(path, res, cmds, what)
        canon = _join(parent, name)
        if old is not None:
            cmds.append(b"rm " + _quote(canon))
            self._forget(canon, old)
        return parent, name, canon, cmds

    def _write_from(self, path: str, local: str, mode: int, uid: int, gid: int) -> str:
        self._check_ids(mode, uid, gid)
        parent, name, canon, cmds = self._replace(path, "write", "cannot write a file: it is a directory")
        cmds.append(b"write " + _quote(local) + b" " + _quote(canon))
        mode_full = _stat.S_IFREG | mode
        cmds += self._sif(canon, mode_full, uid, gid)
        self._dirs[parent][name] = _Ent(None, mode_full, uid, gid)
        self._emit("write", path, cmds)
        return canon

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._check_open()
        self._check_ids(mode, uid, gid)
        res = self._resolve(path, follow_last=True)
        cmds: list[bytes] = []
        if res[0] == "found":
            canon, e = res[1], res[2]
            if not _stat.S_ISDIR(e.mode):
                raise self._err(path, "cannot create directory: a non-directory with that name exists")
        else:
            parent, name, _ = self._place(path, res, cmds, "create directory")
            canon = _join(parent, name)
            cmds.append(b"mkdir " + _quote(canon))
            e = self._dirs[parent][name] = _Ent(None, _stat.S_IFDIR | 0o755, 0, 0)
            self._dirs[canon] = {}
        e.mode, e.uid, e.gid = _stat.S_IFDIR | mode, uid, gid
        if canon == "/" and self._root is not None:
            self._root.mode, self._root.uid, self._root.gid = e.mode, uid, gid
        cmds += self._sif(canon, e.mode, uid, gid)
        self._emit("mkdir", path, cmds)

    def symlink(self, target: str, path: str) -> None:
        self._check_open()
        if not isinstance(target, str) or not target:
            raise self._err(path, f"invalid symlink target {target!r}")
        try:
            qtarget = _quote(target)
        except ValueError as e:
            raise self._err(path, f"invalid symlink target {target!r}: {e}") from None
        parent, name, canon, cmds = self._replace(path, "create symlink",
                                                  "cannot create symlink: a directory with that name exists")
        cmds.append(b"symlink " + _quote(canon) + b" " + qtarget)
        self._dirs[parent][name] = _Ent(None, _stat.S_IFLNK | 0o777, 0, 0)
        self._links[canon] = target
        self._emit("symlink", path, cmds)

    def remove(self, path: str) -> None:
        self._check_open()
        status, canon, e = self._resolve(path, follow_last=False)
        if status != "found":
            return
        if canon == "/":
            raise self._err(path, "cannot remove the root directory")
        parent, name = posixpath.split(canon)
        if _stat.S_ISDIR(e.mode):
            children = self.listdir(canon)
            if children:
                raise self._err(path, f"cannot remove: directory is not empty ({len(children)} entries)")
            cmd = b"rmdir " + _quote(canon)
        else:
            cmd = b"rm " + _quote(canon)
        del self._dirs[parent][name]
        self._forget(canon, e)
        self._emit("remove", path, [cmd])

    def _existing(self, path: str, what: str) -> tuple[str, _Ent]:
        status, canon, e = self._resolve(path, follow_last=True)
        if status != "found":
            raise self._err(path, f"cannot {what}: no such file or directory")
        return canon, e

    def chmod(self, path: str, mode: int) -> None:
        self._check_open()
        self._check_ids(mode, 0, 0)
        canon, e = self._existing(path, "chmod")
        e.mode = _stat.S_IFMT(e.mode) | mode
        self._emit("chmod", path, self._sif(canon, e.mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._check_open()
        self._check_ids(0, uid, gid)
        canon, e = self._existing(path, "chown")
        e.uid, e.gid = uid, gid
        self._emit("chown", path, self._sif(canon, None, uid, gid))

    # ---- flushing ------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Number of queued write operations."""
        return len(self._ops)

    def flush(self) -> None:
        """Apply all queued write operations in one debugfs run."""
        if not self._cmds:
            return
        cmds, ops, files = self._cmds, self._ops, self._files
        self._cmds, self._ops, self._files = [], [], []
        self._data.clear()
        try:
            _, err = self._debugfs(cmds, write=True)
        except ImageError:
            self._invalidate()
            raise
        finally:
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
        marker = re.compile(rb"^/\.mln-op-" + self._token.encode() + rb"-(\d+): ")
        errors: list[tuple[int | None, str]] = []
        k: int | None = None
        for line in err.splitlines():
            m = marker.match(line)
            if m:
                k = int(m[1])
                continue
            if not line.strip() or re.match(rb"^debugfs \d", line):
                continue
            errors.append((k, _text(line)))
        if errors:
            self._invalidate()
            parts = []
            for k, msg in errors:
                if k is None:
                    parts.append(msg)
                else:
                    what, gpath = ops[k]
                    parts.append(f"{gpath}: {what} failed: {msg}")
            full = "the filesystem is full (give the host a larger size or free_space): " \
                if any("Could not allocate" in msg for _, msg in errors) else ""
            more = f" (and {len(parts) - 3} more errors)" if len(parts) > 3 else ""
            raise ImageError(f"{self.path}: {full}" + "; ".join(parts[:3]) + more)

    def _invalidate(self):
        self._dirs.clear()
        self._links.clear()
        self._data.clear()
        self._root = None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()
            callbacks, self._on_close = self._on_close, []
            for cb in reversed(callbacks):
                cb()


# --------------------------------------------------------------------------------------
# sizes and growing

def image_size(path: str | os.PathLike) -> int:
    """Virtual size in bytes: qcow2 virtual size, block device size or raw file size."""
    path = os.fspath(path)
    if is_qcow2(path):
        return int(_qemu_info(path)["virtual-size"])
    return _device_size(path)


def _fsck_and_resize(path: str):
    r = _run(["e2fsck", "-f", "-y", path])
    if r.returncode not in (0, 1):
        raise ImageError(f"{path}: e2fsck -f -y failed (rc {r.returncode}): {_text(r.stdout + r.stderr)}")
    r = _run(["resize2fs", path])
    if r.returncode != 0:
        raise ImageError(f"{path}: resize2fs failed (rc {r.returncode}): {_text(r.stdout + r.stderr)}")


def grow_image(path: str | os.PathLike, size_bytes: int) -> None:
    """Grow a raw ext2/3/4 image file sparsely to ``size_bytes`` and its filesystem with it."""
    path = os.fspath(path)
    sb = _superblock(path)
    st = os.stat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path}: grow_image works on image files only")
    cur = st.st_size
    if size_bytes < cur:
        raise ImageError(f"{path}: cannot shrink the image to {size_bytes} bytes: the template image is "
                         f"larger ({cur} bytes); choose a size of at least {cur} bytes")
    if size_bytes > cur:
        os.truncate(path, size_bytes)
    if sb.size + sb.block_size <= size_bytes:  # the filesystem does not fill the file yet
        _fsck_and_resize(path)


# --------------------------------------------------------------------------------------
# qcow2

def _qemu_info(path: str) -> dict:
    r = _run(["qemu-img", "info", "-U", "--output=json", path])
    if r.returncode != 0:
        raise ImageError(f"{path}: qemu-img info failed: {_text(r.stderr)}")
    return json.loads(r.stdout)


def create_overlay(template: str | os.PathLike, overlay: str | os.PathLike, size_bytes: int | None = None,
                   backing_format: str | None = None) -> None:
    """Create (or re-create) the qcow2 copy-on-write ``overlay`` on top of ``template``.

    ``size_bytes`` (if given) must not be smaller than the template; the filesystem inside
    is not grown (see :func:`grow_qcow2`)."""
    template = os.path.abspath(os.fspath(template))
    overlay = os.fspath(overlay)
    if not os.path.exists(template):
        raise ImageError(f"{template}: template image not found")
    info = None
    if backing_format is None:
        info = _qemu_info(template)
        backing_format = info["format"]
    if size_bytes is not None:
        if info is None:
            info = _qemu_info(template)
        if size_bytes < int(info["virtual-size"]):
            raise ImageError(f"{overlay}: size {size_bytes} is smaller than the template {template} "
                             f"({info['virtual-size']} bytes)")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", template, "-F", backing_format, overlay]
    if size_bytes is not None:
        argv.append(str(size_bytes))
    r = _run(argv)
    if r.returncode != 0:
        raise ImageError(f"{overlay}: qemu-img create failed: {_text(r.stdout + r.stderr)}")


def grow_qcow2(path: str | os.PathLike, size_bytes: int, on_helper=None) -> None:
    """Grow a qcow2 image (virtual size) and the ext2/3/4 filesystem inside it.
    ``on_helper`` is passed to :func:`raw_view`."""
    path = os.fspath(path)
    cur = image_size(path)
    if size_bytes < cur:
        raise ImageError(f"{path}: cannot shrink the image to {size_bytes} bytes: it is larger "
                         f"({cur} bytes); choose a size of at least {cur} bytes")
    if size_bytes > cur:
        r = _run(["qemu-img", "resize", "-q", "-f", "qcow2", path, str(size_bytes)])
        if r.returncode != 0:
            raise ImageError(f"{path}: qemu-img resize failed: {_text(r.stdout + r.stderr)}")
    with raw_view(path, on_helper=on_helper) as raw:
        sb = _superblock(raw)
        if sb.size + sb.block_size <= size_bytes:
            _fsck_and_resize(raw)


def _unescape_mount(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)


def _is_mounted(mountpoint: str) -> bool:
    try:
        with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 1 and _unescape_mount(fields[1]) == mountpoint:
                    return True
    except OSError:
        pass
    return False


def _proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = st[st.rfind(b")") + 2:st.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _proc_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _stop_daemon(pidfile: str, mountpoint: str) -> list[str]:
    """Stop the qemu-storage-daemon that wrote ``pidfile``; make sure its FUSE mount is gone."""
    problems = []
    pid = None
    with contextlib.suppress(OSError, ValueError):
        with open(pidfile) as f:
            pid = int(f.read().strip())
    # only signal the process if it is really our daemon (its command line names our pidfile)
    if pid and _proc_alive(pid) and os.fsencode(pidfile) in _proc_cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: not _proc_alive(pid), 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait(lambda: not _proc_alive(pid), 5):
                problems.append(f"qemu-storage-daemon pid {pid} did not exit")
    if not _wait(lambda: not _is_mounted(mountpoint), 5):
        for argv in (["fusermount3", "-u", mountpoint], ["fusermount", "-u", mountpoint],
                     ["umount", mountpoint], ["umount", "-l", mountpoint]):
            with contextlib.suppress(OSError):
                subprocess.run(argv, capture_output=True)
            if not _is_mounted(mountpoint):
                break
        if _is_mounted(mountpoint):
            problems.append(f"FUSE export {mountpoint} is still mounted")
    return problems


@contextlib.contextmanager
def raw_view(qcow2_path: str | os.PathLike, writable: bool = True, on_helper=None) -> Iterator[str]:
    """Export a qcow2 (or raw) image as a raw file through a qemu-storage-daemon FUSE export.

    Yields the path of the raw file (in a private temporary directory). On exit the
    daemon is stopped, the FUSE mount is gone and the temporary directory removed, also
    when the body raised. Writes through the view go into the qcow2 image.
    ``on_helper(pidfile, mountpoint)``, if given, is called before the daemon starts, so
    that a caller can record where to find it and stop it should this process die at any
    moment (the daemon writes its pid into ``pidfile``)."""
    src = os.path.abspath(os.fspath(qcow2_path))
    if not os.path.exists(src):
        raise ImageError(f"{src}: image not found")
    fmt = "qcow2" if is_qcow2(src) else "raw"
    tmpdir = os.path.realpath(tempfile.mkdtemp(prefix="mln-rawview-"))
    raw = os.path.join(tmpdir, "disk.raw")
    pidfile = os.path.join(tmpdir, "qsd.pid")
    log = os.path.join(tmpdir, "qsd.log")
    started = False
    try:
        open(raw, "wb").close()
        ro = not writable
        argv = [
            "qemu-storage-daemon",
            "--blockdev", json.dumps({"driver": "file", "node-name": "f0", "filename": src, "read-only": ro}),
            "--blockdev", json.dumps({"driver": fmt, "node-name": "q0", "file": "f0", "read-only": ro}),
            "--export", json.dumps({"type": "fuse", "id": "e0", "node-name": "q0", "mountpoint": raw,
                                    "writable": writable}),
            "--pidfile", pidfile,
            "--daemonize",
        ]
        if on_helper is not None:
            on_helper(pidfile, raw)
        started = True
        with open(log, "wb") as logf:
            try:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                   timeout=60)
            except FileNotFoundError:
                raise ImageError("qemu-storage-daemon is not installed (needed for qcow2 images)") from None
        if r.returncode != 0 or not _is_mounted(raw):
            with open(log, "rb") as f:
                msg = _text(f.read())
            raise ImageError(f"{src}: qemu-storage-daemon could not export the image "
                             f"(rc {r.returncode}): {msg}")
        yield raw
    finally:
        problems = _stop_daemon(pidfile, raw) if started else []
        if problems:
            # do not delete files under a live mount; report instead
            raise ImageError(f"{src}: cleaning up the raw view failed: {'; '.join(problems)}")
        shutil.rmtree(tmpdir, ignore_errors=True)


def open_image(path: str | os.PathLike, on_helper=None) -> Ext4Image:
    """Open a raw ext2/3/4 image or a qcow2 image (through :func:`raw_view`) as a GuestFS.

    For qcow2 the FUSE export is stopped when the returned object is closed;
    ``on_helper`` is passed to :func:`raw_view`."""
    path = os.fspath(path)
    if not is_qcow2(path):
        return Ext4Image(path)
    stack = contextlib.ExitStack()
    try:
        raw = stack.enter_context(raw_view(path, on_helper=on_helper))
        img = Ext4Image(raw)
    except BaseException:
        stack.close()
        raise
    img.source = path
    img._on_close.append(stack.close)
    return img


# --------------------------------------------------------------------------------------
# what kind of image

def is_ext_filesystem(path: str | os.PathLike) -> bool:
    """True if ``path`` (a raw image or device) starts with an ext2/3/4 filesystem."""
    head = _read_head(str(path), 2048)
    return len(head) >= 2048 and int.from_bytes(head[1024 + 56:1024 + 58], "little") == _EXT_MAGIC
