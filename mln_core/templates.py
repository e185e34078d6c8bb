"""The template registry: ``<templates>/templates.list`` (spec 4.7).

One line per template: ``<name> <real-name> <size>MB <compression> "<message>"``. A
template is a filesystem image in the templates directory; versioned names
``NAME-V1.2.ext4`` are chosen for ``NAME.ext4`` (highest version wins). A template may
come with a kernel and an initrd for direct kernel boot, kept beside it as
``<real-name>.kernel`` and ``<real-name>.initrd``.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import tarfile
from dataclasses import dataclass

from .machine import local
from .errors import MlnError
from .names import check_name, name_problem, path_problem

LIST = "templates.list"
_VERSIONED = re.compile(r"(?P<base>.+)-V(?P<major>\d+)\.(?P<minor>\d+)(?P<ext>\.[^.]+)?\Z")


@dataclass
class Template:
    """A registered template image."""

    name: str
    real_name: str
    size_mb: int
    compression: str
    message: str
    path: str

    @property
    def kernel(self) -> str | None:
        p = self.path + ".kernel"
        return p if os.path.exists(p) else None

    @property
    def initrd(self) -> str | None:
        p = self.path + ".initrd"
        return p if os.path.exists(p) else None


def _copy(src: str, dest: str) -> None:
    """Copy keeping holes (templates are sparse images), then rename into place."""
    local().run(["cp", "--sparse=always", "--reflink=auto", src, dest + ".part"],
                what=f"cannot copy {src} to {dest}", timeout=None)
    os.replace(dest + ".part", dest)


class TemplateRegistry:
    def __init__(self, templates_dir: str):
        self.dir = templates_dir

    def entries(self) -> dict[str, Template]:
        path = os.path.join(self.dir, LIST)
        out: dict[str, Template] = {}
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                w = shlex.split(line)
                name, real, size = w[0], w[1], w[2]
                comp = w[3] if len(w) > 3 and w[3] != "-" else ""
                msg = w[4] if len(w) > 4 else ""
                size_mb = int(size.rstrip("MB") or 0)
            except (ValueError, IndexError):
                raise MlnError(f"{path}:{n}: cannot read this templates.list line: {line!r}") from None
            if "/" in real or real in ("", ".", "..") or "\x00" in real:   # it would reach outside
                raise MlnError(f"{path}:{n}: the file of template '{name}' must be a file of the templates "
                               f"directory, not '{real}'")
            out[name] = Template(name, real, size_mb, comp, msg, os.path.join(self.dir, real))
        return out

    def resolve(self, name: str, who: str | None = None) -> Template:
        """The template a host's ``template NAME`` means; an error lists the registered ones."""
        check_name("template", name, who)
        entries = self.entries()
        if name in entries:
            t = entries[name]
        else:
            base, ext = os.path.splitext(name)
            best = None
            for entry in entries.values():
                m = _VERSIONED.match(entry.name)
                if m and m.group("base") == base and (m.group("ext") or "") == ext:
                    key = (int(m.group("major")), int(m.group("minor")))
                    if best is None or key > best[0]:
                        best = (key, entry)
            if best is not None:
                t = best[1]
            elif os.path.isfile(os.path.join(self.dir, name)):
                path = os.path.join(self.dir, name)
                t = Template(name, name, os.path.getsize(path) // 2**20, "", "", path)
            else:
                known = ", ".join(sorted(entries)) or "none; register one with 'mln register_template -t FILE'"
                prefix = f"{who}: " if who else ""
                raise MlnError(f"{prefix}unknown template '{name}' (registered in {self.dir}: {known})")
        if not os.path.isfile(t.path):
            raise MlnError(f"template '{name}' is registered but its file {t.path} is missing")
        return t

    def register(self, source: str, name: str | None = None, message: str = "",
                 kernel: str | None = None, initrd: str | None = None) -> Template:
        """Copy ``source`` (an image, or a .tar.gz/.tar.bz2 holding one) into the registry."""
        for text, what in ((source, "the template file"), (kernel, "the kernel file"),
                           (initrd, "the initrd file")):
            problem = path_problem(text, what) if text is not None else None
            if problem:
                raise MlnError(problem)
        if name is not None:
            check_name("template", name)
        if not os.path.isfile(source):
            raise MlnError(f"no such template file: {source}")
        for extra, what in ((kernel, "kernel"), (initrd, "initrd")):
            if extra is not None and not os.path.isfile(extra):
                raise MlnError(f"no such {what} file: {extra}")
        if os.path.lexists(self.dir) and not os.path.isdir(self.dir):
            raise MlnError(f"the templates directory {self.dir} is not a directory (see 'templates' in "
                           "mln.conf, or -T)")
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise MlnError(f"cannot make the templates directory {self.dir}: {e.strerror}") from None
        base = os.path.basename(source)
        compression = ""
        if base.endswith((".tar.gz", ".tgz", ".tar.bz2")):
            compression = "bzip2" if base.endswith(".bz2") else "gzip"
            with tarfile.open(source) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                if len(members) != 1:
                    raise MlnError(f"{source} must hold exactly one image file, not {len(members)}")
                real = self._real_name(os.path.basename(members[0].name), source)
                dest = os.path.join(self.dir, real)
                with tar.extractfile(members[0]) as src, open(dest + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(dest + ".part", dest)
        else:
            real = self._real_name(base, source)
            dest = os.path.join(self.dir, real)
            if os.path.abspath(source) != os.path.abspath(dest):
                _copy(source, dest)
        for extra, suffix in ((kernel, ".kernel"), (initrd, ".initrd")):
            if extra is not None:
                _copy(extra, dest + suffix)
        name = name or real
        size_mb = max(1, (os.path.getsize(dest) + 2**20 - 1) // 2**20)
        t = Template(name, real, size_mb, compression, message, dest)
        entries = self.entries()
        entries[name] = t
        self._write(entries)
        return t

    @staticmethod
    def _real_name(real: str, source: str) -> str:
        """The file name the image gets in the templates directory: a good template name,
        and not the registry's own files."""
        problem = name_problem("template", real)
        if problem:
            raise MlnError(f"{source}: the image's file name is no template name: {problem}; rename it")
        if real == LIST or real.endswith((".part", ".tmp", ".kernel", ".initrd")):
            raise MlnError(f"{source}: an image cannot be named '{real}' (the registry uses that name); "
                           "rename it")
        return real

    def _write(self, entries: dict[str, Template]) -> None:
        path = os.path.join(self.dir, LIST)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for t in entries.values():
                f.write(f"{t.name} {t.real_name} {t.size_mb}MB {t.compression or '-'} "
                        f"{shlex.quote(t.message)}\n")
        os.replace(path + ".tmp", path)
