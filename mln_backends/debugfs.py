"""Talking to ``debugfs`` (e2fsprogs): quoting its arguments, running a batch of commands
in one process, splitting the output per command and parsing ``ls -p`` and ``stat``.

debugfs quirks handled here: it exits 0 on errors and reports them only on stderr;
arguments are quoted with ``"`` (a literal ``"`` is written ``""``); commands cannot
contain newlines, so CR/LF/NUL are refused; a command line is at most BUFSIZ bytes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mln_core.machine import Machine

from .imageformat import ImageError, run_tool, text

MAX_CMD_LINE = 8000  # debugfs reads command lines with fgets(buf, BUFSIZ=8192)

_LS_RE = re.compile(rb"^/(\d+)/([0-7]+)/(\d+)/(\d+)/([^/]*)/(\d*)/$")
_STAT_RE = re.compile(rb"^Inode: (\d+)\s+Type: (\S+)", re.M)
_FAST_LINK_RE = re.compile(rb'^Fast link dest: "(.*)"$', re.M)


def enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def quote(arg: str | bytes) -> bytes:
    """Quote one argument for debugfs's command parser (libss)."""
    b = enc(arg) if isinstance(arg, str) else arg
    if b"\n" in b or b"\r" in b or b"\0" in b:
        raise ValueError("newline, carriage return or NUL cannot be passed to debugfs")
    return b'"' + b.replace(b'"', b'""') + b'"'


@dataclass(slots=True)
class Ent:
    """A directory entry as ``ls -p`` shows it."""
    ino: int | None  # None: created by a pending (or flushed) operation of ours
    mode: int  # full i_mode, type bits included
    uid: int
    gid: int


def check_lengths(image: str, cmds: list[bytes]) -> None:
    """ImageError if a command is longer than debugfs reads."""
    for c in cmds:
        if len(c) > MAX_CMD_LINE:
            raise ImageError(f"{image}: debugfs command too long ({len(c)} bytes)")


def run(machine: Machine | None, image: str, cmds: list[bytes], write: bool = False) -> tuple[bytes, bytes]:
    """Run ``cmds`` in one ``debugfs -f -`` on ``image``; (stdout, stderr). ImageError if a
    command is too long, debugfs cannot open the filesystem or fails."""
    check_lengths(image, cmds)
    argv = ["debugfs"] + (["-w"] if write else []) + ["-f", "-", image]
    env = dict(os.environ, DEBUGFS_PAGER="__none__", PAGER="__none__", LC_ALL="C")
    r = run_tool(machine, argv, input=b"".join(c + b"\n" for c in cmds), env=env)
    err = r.stderr
    for line in err.splitlines():
        if b"while trying to open" in line or b"Filesystem not open" in line \
                or b"while opening filesystem" in line:
            raise ImageError(f"{image}: debugfs cannot open the filesystem: {text(line)}")
    if r.returncode != 0:
        raise ImageError(f"{image}: debugfs failed (rc {r.returncode}): {text(err)}")
    return r.stdout, err


def segments(out: bytes, cmds: list[bytes]) -> list[bytes]:
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


def parse_ls(seg: bytes) -> tuple[int, Ent, dict[str, Ent]] | None:
    """(inode, entry of ".", {name: entry}) from the output of ``ls -p DIR``; None if it
    listed no directory."""
    dot = None
    entries: dict[str, Ent] = {}
    for line in seg.split(b"\n"):
        m = _LS_RE.match(line)
        if not m:
            continue
        ent = Ent(int(m[1]), int(m[2], 8), int(m[3]), int(m[4]))
        name = m[5]
        if not name or ent.ino == 0:  # unused slots (mkfs pre-allocates lost+found's)
            continue
        if name == b".":
            dot = ent
        elif name != b"..":
            entries[dec(name)] = ent
    if dot is None:
        return None
    return dot.ino, dot, entries


def parse_stat(seg: bytes) -> tuple[int, str, str | None] | None:
    """(inode, type, fast symlink target or None) from the output of ``stat PATH``."""
    m = _STAT_RE.search(seg)
    if not m:
        return None
    fm = _FAST_LINK_RE.search(seg)
    return int(m[1]), dec(m[2]), (dec(fm[1]) if fm else None)
