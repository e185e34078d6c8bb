"""Read and write files inside a raw ext2/3/4 guest image without booting or mounting it.

:class:`Ext4Image` implements :class:`mln_core.guest.GuestFS` on a raw ext4 image file (or
block device) with ``debugfs`` from e2fsprogs (see :mod:`mln_backends.debugfs`), run on a
:class:`mln_core.machine.Machine` (by default this machine).

How it works
------------
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
is a regular file; paths with CR/LF/NUL are refused.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import shutil
import stat as _stat
import tempfile
import weakref

from mln_core.guest import GuestFS
from mln_core.machine import Machine

from . import debugfs
from .debugfs import Ent, dec, quote
from .imageformat import INCOMPAT_RECOVER, ImageError, run_tool, superblock, text

_ROOT_INO = 2
_MAX_SYMLINKS = 40


class _Need(Exception):
    """Internal: the walk needs information that is not cached yet."""

    def __init__(self, kind: str, path: str, rest: list[str] | None = None):
        super().__init__(kind, path)
        self.kind = kind  # "dir" (a listing of path) or "link" (the target of path)
        self.path = path
        self.rest = rest or []


def _join(d: str, name: str) -> str:
    return "/" + name if d == "/" else d + "/" + name


class Ext4Image(GuestFS):
    """A raw ext2/3/4 image file or block device, edited with debugfs; ``offset``: the
    filesystem is a partition's, that many bytes into the disk image (debugfs and e2fsck
    open ``PATH?offset=N``, the unix I/O manager's syntax: no loop device needed)."""

    def __init__(self, path: str | os.PathLike, machine: Machine | None = None, offset: int = 0):
        self.path = os.fspath(path)
        self.offset = offset
        self.partition = None            # the partitions.Partition opened, if any (set by open_image)
        self._machine = machine
        if offset and "?" in self.path:
            raise ImageError(f"{self.path}: a disk image whose path holds '?' cannot be opened at an offset")
        self._dev = f"{self.path}?offset={offset}" if offset else self.path
        sb = superblock(self.path, offset)
        if sb.incompat & INCOMPAT_RECOVER:
            # Changes made with debugfs would be undone by a later journal replay.
            r = run_tool(self._machine, ["e2fsck", "-E", "journal_only", "-p", self._dev])
            if r.returncode not in (0, 1):
                raise ImageError(f"{self.path}: journal recovery failed (e2fsck rc {r.returncode}): "
                                 f"{text(r.stdout + r.stderr)}")
        self._closed = False
        self._tmpdir: str | None = None
        self._finalizer = None
        self._token = secrets.token_hex(8)
        self._nfile = 0
        # model (valid for the image plus the pending operations)
        self._dirs: dict[str, dict[str, Ent]] = {}
        self._root: Ent | None = None
        self._links: dict[str, str] = {}
        self._data: dict[str, bytes | str] = {}  # pending contents of written files (str: a host file's)
        # speculative results of the last prefetch (validated by inode number before use)
        self._spec_dirs: dict[str, tuple[int, Ent, dict[str, Ent]]] = {}
        self._spec_stat: dict[str, tuple[int, str, str | None]] = {}
        self._spec_data: dict[str, bytes] = {}
        # queued write operations
        self._cmds: list[bytes] = []
        self._ops: list[tuple[str, str]] = []  # (what, guest path) per queued operation
        self._files: list[str] = []
        self._on_close: list = []
        self.stats = {"debugfs_runs": 0}

    def __repr__(self) -> str:
        at = f", offset={self.offset}" if self.offset else ""
        return f"Ext4Image({self.path!r}{at})"

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
        debugfs.check_lengths(self.path, cmds)
        self.stats["debugfs_runs"] += 1
        return debugfs.run(self._machine, self._dev, cmds, write)

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
            cmds.append(b"ls -p " + quote(p))
            cmds.append(b"stat " + quote(p))
        dump = None
        if want_data and len(chain) == len(rest) + 1 and len(chain) > 1:
            dump = self._tmp("r")
            cmds.append(b"dump " + quote(chain[-1]) + b" " + quote(dump))
        try:
            out, _ = self._debugfs(cmds)
            segs = debugfs.segments(out, cmds)
            for k, p in enumerate(chain):
                ls = debugfs.parse_ls(segs[2 * k])
                if ls is not None:
                    self._spec_dirs[p] = ls
                st = debugfs.parse_stat(segs[2 * k + 1])
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
        cmds = [b"stat " + quote(path), b"dump " + quote(path) + b" " + quote(tmp)]
        try:
            out, _ = self._debugfs(cmds)
            segs = debugfs.segments(out, cmds)
            st = debugfs.parse_stat(segs[0])
            if st is None:
                return
            ino, typ, fast = st
            if fast is None and os.path.exists(tmp):
                with open(tmp, "rb") as f:
                    fast = dec(f.read())
            self._spec_stat[path] = (ino, typ, fast)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # ---- the model -----------------------------------------------------------------

    def _root_entry(self) -> Ent:
        if self._root is None:
            self._listing("/", [])
        assert self._root is not None
        return self._root

    def _entry_of(self, canon: str) -> Ent:
        if canon == "/":
            return self._root_entry()
        parent, name = posixpath.split(canon)
        return self._dirs[parent][name]

    def _listing(self, cur: str, rest: list[str]) -> dict[str, Ent]:
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

    def _link_target(self, canon: str, ent: Ent) -> str:
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
            _, err = self._debugfs([b"dump " + quote(canon) + b" " + quote(tmp)])
            if not os.path.exists(tmp):
                raise self._err(path, f"debugfs could not read the file: {text(err)}")
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
        self._cmds.append(b"stat " + quote(f"/.mln-op-{self._token}-{k}"))
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
            cmds.append(b"mkdir " + quote(p))
            listing[c] = Ent(None, _stat.S_IFDIR | 0o755, 0, 0)
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
        q = quote(p)
        cmds = []
        if mode is not None:
            cmds.append(b"sif " + q + b" mode 0%o" % mode)
        if uid is not None:
            cmds.append(b"sif " + q + b" uid %d" % uid)
        if gid is not None:
            cmds.append(b"sif " + q + b" gid %d" % gid)
        return cmds

    def _forget(self, canon: str, ent: Ent | None):
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
            cmds.append(b"rm " + quote(canon))
            self._forget(canon, old)
        return parent, name, canon, cmds

    def _write_from(self, path: str, local: str, mode: int, uid: int, gid: int) -> str:
        self._check_ids(mode, uid, gid)
        parent, name, canon, cmds = self._replace(path, "write", "cannot write a file: it is a directory")
        cmds.append(b"write " + quote(local) + b" " + quote(canon))
        mode_full = _stat.S_IFREG | mode
        cmds += self._sif(canon, mode_full, uid, gid)
        self._dirs[parent][name] = Ent(None, mode_full, uid, gid)
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
            cmds.append(b"mkdir " + quote(canon))
            e = self._dirs[parent][name] = Ent(None, _stat.S_IFDIR | 0o755, 0, 0)
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
            qtarget = quote(target)
        except ValueError as e:
            raise self._err(path, f"invalid symlink target {target!r}: {e}") from None
        parent, name, canon, cmds = self._replace(path, "create symlink",
                                                  "cannot create symlink: a directory with that name exists")
        cmds.append(b"symlink " + quote(canon) + b" " + qtarget)
        self._dirs[parent][name] = Ent(None, _stat.S_IFLNK | 0o777, 0, 0)
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
            cmd = b"rmdir " + quote(canon)
        else:
            cmd = b"rm " + quote(canon)
        del self._dirs[parent][name]
        self._forget(canon, e)
        self._emit("remove", path, [cmd])

    def _existing(self, path: str, what: str) -> tuple[str, Ent]:
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
            errors.append((k, text(line)))
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
