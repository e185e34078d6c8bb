"""What mln keeps from other users: the modes of what it stores, and its secrets.

**Files.** A project directory is ``0700``; every file mln writes into it (the saved
project, ``version``, ``state.json``, journals, the work files of an upgrade) goes
through :func:`write_file` and is ``0600``; a guest disk is made ``0600`` by
:func:`protect_disk` (a service user that must read disks, such as libvirt's QEMU user,
will get a grant for that user alone).

**Secrets.** A keyword is a secret when the plugin that declares it says so
(``registry.keyword(..., secret=True)``; for a block of lines ``secret_word=N``: the
N-th word of each line, as the password of a ``users`` line). :class:`Secrets` answers
which lines hold one; :func:`redact_block` gives a block with ``<secret>`` in their
place, for everything that prints settings (``show``, ``parse``, ``diff``). The values
of a loaded project are remembered (:func:`remember_project`) so that traces
(``MLN_TRACE_PLUGINS``, ``MLN_TRACE_COMMANDS``) and internal errors print
:func:`redact` of their text.
"""
from __future__ import annotations

import os
import re
import threading

from .lang.tree import Block, Line

DIR_MODE = 0o700
FILE_MODE = 0o600
DISK_MODE = 0o600
SECRET = "<secret>"


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------

def make_dir(path: str, exist_ok: bool = False) -> None:
    """A directory of the projects directory (a project, its staging or work directory):
    ``0700`` whatever the umask, also when it existed."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=exist_ok)
    os.chmod(path, DIR_MODE)


def write_file(path: str, text: str, mode: int = FILE_MODE, sync: bool = False) -> None:
    """Write ``text`` to ``path`` with ``mode`` (``0600``), also when the file existed with
    another mode; the file is never readable by others, not even for a moment.
    ``sync``: flushed to the disk before it returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, mode)
        f.write(text)
        if sync:
            f.flush()
            os.fsync(fd)


def protect_disk(path: str) -> None:
    """Make a guest disk (or a file that holds guest data) readable by its owner only."""
    os.chmod(path, DISK_MODE)


def tighten(project_dir: str) -> None:
    """Make a project written by an older mln (``0755``, ``0644`` files) private."""
    try:
        os.chmod(project_dir, DIR_MODE)
        for name in os.listdir(project_dir):
            path = os.path.join(project_dir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & FILE_MODE | (os.stat(path).st_mode & 0o100))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# which keywords are secrets
# ---------------------------------------------------------------------------------------

class Secrets:
    """Which keywords of a :class:`mln_core.keywords.KeywordRegistry` are secrets."""

    _core: Secrets | None = None

    def __init__(self, registry=None):
        if registry is None:
            from .keywords import KeywordRegistry, core_keywords
            registry = KeywordRegistry()
            core_keywords(registry)
        self.registry = registry

    @classmethod
    def core(cls) -> Secrets:
        """The core's secret keywords alone (when no plugin manager is at hand)."""
        if cls._core is None:
            cls._core = cls()
        return cls._core

    def keyword(self, context: str, name: str) -> bool:
        spec = self.registry.lookup(context, name)
        return spec is not None and spec.secret

    def word(self, context: str, block: str) -> int | None:
        """The index of the secret word in each line of the line block ``block``."""
        spec = self.registry.lookup(context, block)
        return spec.secret_word if spec is not None else None

    def values(self, block: Block, context: str) -> list[str]:
        """The secret values of ``block`` (an effective host, switch or global block)."""
        out: list[str] = []
        _walk_any(self, block, context, lambda ln, value, masked: out.append(value))
        return out


def _child_context(context: str, child: Block) -> str:
    return "network" if child.kind == "network" and context == "host" else f"{context}.{child.kind}"


def _walk(secrets: Secrets, block: Block, context: str, secret_word: int | None, found) -> None:
    """Call ``found(line, secret_value, masked_line)`` for every line of ``block`` (of
    ``context``; ``secret_word``: the block is a line block with a secret word) that
    holds a secret."""
    for ln in block.lines:
        w = ln.words
        if secret_word is not None:
            if len(w) > secret_word:
                found(ln, w[secret_word], Line(w[:secret_word] + [SECRET] + w[secret_word + 1:],
                                                ln.pos, ln.origin))
        elif len(w) > 1 and secrets.keyword(context, w[0]):
            found(ln, " ".join(w[1:]), Line([w[0], SECRET], ln.pos, ln.origin))
    for key, child in block.blocks.items():
        if child.container:
            for named in child.blocks.values():
                _walk(secrets, named, _child_context(context, child), None, found)
        else:
            _walk(secrets, child, f"{context}.{key}", secrets.word(context, key), found)


def _walk_any(secrets: Secrets, block: Block, context: str, found, secret_word: int | None = None) -> None:
    if context.startswith("container:"):         # the ``host`` or ``network`` holding named blocks
        for named in block.blocks.values():
            _walk(secrets, named, context.split(":", 1)[1], None, found)
        return
    if context != "/":
        _walk(secrets, block, context, secret_word, found)
        return
    for key, child in block.blocks.items():      # a whole document
        if child.container:
            ctx = {"host": "host", "superclass": "host", "switch": "switch"}.get(child.kind, child.kind)
            for named in child.blocks.values():
                _walk(secrets, named, ctx, None, found)
        else:
            _walk(secrets, child, key, None, found)


def query_context(path: str, secrets: Secrets) -> tuple[str, int | None]:
    """The context of the block a query path (``/host/a/network/eth0``) names, and its
    secret word if it is a line block (``/host/a/users``): what :func:`redact_block` takes."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "/", None
    head = parts[0]
    if head in ("host", "superclass", "switch"):
        ctx = "switch" if head == "switch" else "host"
        if len(parts) == 1:
            return f"container:{ctx}", None
        rest = parts[2:]
    elif head == "global":
        ctx, rest = "global", parts[1:]
    else:
        return head, None
    word, i = None, 0
    while i < len(rest):
        if ctx == "host" and rest[i] == "network":
            if i + 1 == len(rest):
                return "container:network", None
            ctx, i = "network", i + 2
            continue
        word = secrets.word(ctx, rest[i])
        ctx, i = f"{ctx}.{rest[i]}", i + 1
    return ctx, word


def redact_block(block: Block, context: str, secrets: Secrets | None = None,
                 secret_word: int | None = None) -> Block:
    """A copy of ``block`` (of ``context``: ``host``, ``switch``, ``global``, ``/`` for a
    whole document; ``secret_word``: a line block's secret word) with every secret value
    replaced by ``<secret>``; ``block`` itself when it holds none."""
    masks: dict[int, Line] = {}
    _walk_any(secrets or Secrets.core(), block, context, lambda ln, value, masked: masks.setdefault(id(ln), masked),
              secret_word)
    if not masks:
        return block
    copy = block.copy()
    _replace(copy, block, masks)
    return copy


def _replace(copy: Block, orig: Block, masks: dict) -> None:
    """Put the masked lines into ``copy`` (a copy of ``orig``)."""
    if any(id(ln) in masks for ln in orig.lines):
        copy.lines = [masks.get(id(ln), ln) for ln in orig.lines]
        copy._values = None
    for key, child in orig.blocks.items():
        _replace(copy.blocks[key], child, masks)


# ---------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------

_known: set[str] = set()
_known_lock = threading.Lock()
_pattern: re.Pattern | None = None


def remember(value: str) -> None:
    """A secret value that traces and error messages must never print."""
    global _pattern
    if not value or value == SECRET:
        return
    with _known_lock:
        if value not in _known:
            _known.add(value)
            _pattern = None


def remember_project(project, secrets: Secrets) -> None:
    """Remember every secret value of a loaded project (its hosts, switches, global)."""
    for host in project.hosts.values():
        if host.tree is not None:
            for v in secrets.values(host.tree, "host"):
                remember(v)
        for u in host.users:
            if u.password:
                remember(u.password)
        if host.root_passwd:
            remember(host.root_passwd)
    for sw in project.switches.values():
        if sw.tree is not None:
            for v in secrets.values(sw.tree, "switch"):
                remember(v)
    if getattr(project, "global_tree", None) is not None:
        for v in secrets.values(project.global_tree, "global"):
            remember(v)


def redact(text: str) -> str:
    """``text`` with every remembered secret value replaced by ``<secret>``."""
    global _pattern
    if not _known or not text:
        return text
    with _known_lock:
        if _pattern is None:
            _pattern = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))
        pattern = _pattern
    return pattern.sub(SECRET, text)
