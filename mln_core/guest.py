"""The guest filesystem handle that configuration plugins write through.

A storage or hypervisor backend opens a host's disk image (hook ``mln_open_image``)
and returns an object with this interface; every ``mln_configure_image``
implementation then reads and writes the guest's files through it, never through
host paths. Paths are absolute paths inside the guest (``/etc/hostname``).

Implementations batch writes where that is cheaper (debugfs) and must make all of
them visible to ``read`` calls and durable after ``close``. Every method is
idempotent in the sense that repeating the same sequence of calls on the same
image gives the same image.
"""
from __future__ import annotations

import abc
import os
import posixpath


def set_section(text: str, name: str, body: str | None) -> str:
    """``text`` (a guest file) with mln's marked section ``name`` (``# >>> mln NAME >>>`` ...
    ``# <<< mln NAME <<<``) replaced by ``body``, added at the end, or removed when ``body``
    is None; the rest of the file stays as it was, so that edits are idempotent."""
    begin, end = f"# >>> mln {name} >>>", f"# <<< mln {name} <<<"
    lines = text.splitlines()
    if begin in lines and end in lines[lines.index(begin):]:
        i = lines.index(begin)
        j = lines.index(end, i)
        new = [] if body is None else [begin, *body.rstrip("\n").splitlines(), end]
        lines[i:j + 1] = new
    elif body is not None:
        lines += [begin, *body.rstrip("\n").splitlines(), end]
    return "\n".join(lines) + "\n" if lines else ""


class GuestFS(abc.ABC):
    """Read and write files inside a guest image without running the guest."""

    @abc.abstractmethod
    def read(self, path: str) -> bytes | None:
        """Return the contents of the regular file ``path``, or None if it does not exist."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """True if ``path`` exists (file, directory or symlink)."""

    @abc.abstractmethod
    def is_dir(self, path: str) -> bool:
        """True if ``path`` is a directory."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path`` (without ``.`` and ``..``), sorted; [] if absent."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Create or replace the regular file ``path`` with ``data``, mode and owner.

        Missing parent directories are created (mode 0755, root)."""

    @abc.abstractmethod
    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Create directory ``path`` and its missing parents; set mode/owner of ``path``
        also when it already exists."""

    @abc.abstractmethod
    def symlink(self, target: str, path: str) -> None:
        """Create or replace the symbolic link ``path`` pointing at ``target``."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove the file or symlink ``path``; nothing happens if it does not exist."""

    @abc.abstractmethod
    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of ``path``."""

    @abc.abstractmethod
    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set the owner of ``path``."""

    def close(self) -> None:
        """Flush pending changes and release the image. Called once by the core."""

    # Helpers built on the primitives above -------------------------------------------------

    def write_file(self, path: str, source: str, mode: int | None = None, uid: int = 0, gid: int = 0) -> None:
        """Write the managing host's file ``source`` into the guest as ``path`` (default
        mode: the source's). Implementations may copy without reading it into memory."""
        with open(source, "rb") as f:
            data = f.read()
        self.write(path, data, os.stat(source).st_mode & 0o7777 if mode is None else mode, uid, gid)

    def copy_tree(self, source: str, path: str) -> int:
        """Copy the managing host's directory ``source`` into the guest as ``path``:
        directories, files and symlinks with their modes, owned by root. Returns the number
        of bytes of file data copied."""
        total = 0
        for top, dirs, files in os.walk(source):
            rel = os.path.relpath(top, source)
            gdir = path if rel == "." else posixpath.join(path, *rel.split(os.sep))
            self.mkdir(gdir, os.stat(top).st_mode & 0o7777)
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(top, d))):
                src = os.path.join(top, name)
                if os.path.islink(src):
                    self.symlink(os.readlink(src), posixpath.join(gdir, name))
                else:
                    self.write_file(posixpath.join(gdir, name), src)
                    total += os.path.getsize(src)
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(top, d)))
        return total

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode("utf-8", "surrogateescape")

    def write_text(self, path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self.write(path, text.encode("utf-8", "surrogateescape"), mode, uid, gid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Marker files of guest OS families, in the order they are tested (a later match wins).
FAMILY_MARKERS = (
    ("/bin/busybox", "busybox"),
    ("/etc/network/interfaces", "debian"),
    ("/etc/sysconfig/network-scripts", "redhat"),
    ("/boot.ini", "windows"),
    ("/etc/suseRegister.conf", "suse"),
)


def detect_family(fs: GuestFS) -> str | None:
    """The guest's OS family from marker files (spec 2.8.7), or None if none is found."""
    found = None
    for path, family in FAMILY_MARKERS:
        if fs.exists(path):
            found = family
    return found
