"""Limits that no real project reaches, so that no input can make mln work for hours or
eat the machine's memory. Each is checked before the work it bounds and reported with a
position (docs/language.md, "Limits"; docs/security.md).
"""
from __future__ import annotations

MAX_PROJECT_TEXT = 64 * 2**20     # bytes of project text: the file and everything it includes
MAX_LINE = 65536                  # characters of one physical line
MAX_BLOCK_DEPTH = 64              # blocks nested in blocks
MAX_INCLUDE_DEPTH = 32            # #include nested in included files
MAX_VALUE = 2**20                 # characters of one line or name after its variables are expanded
MAX_EXPANDED = 256 * 2**20        # characters all variable expansions of one project add together
MAX_VAR_DEPTH = 16                # variables whose values use variables whose values use ...
MAX_HOSTS = 100_000               # hosts of a project (explicit and autoenum); as many switches,
                                  # as many superclasses
MAX_CHAIN = 100                   # superclasses in one chain (host -> superclass -> ... )
MAX_NAME = 100                    # characters of a project, host, switch or superclass name
MAX_COMPONENT = 255               # bytes of one part of a path (the filesystem's limit)
MAX_PATH = 4096                   # bytes of a whole path (PATH_MAX)
MAX_SIZE = 2**50                  # bytes of a size (memory, size, free_space, swap): 1024T
MAX_VCPUS = 1024
MAX_UID = 2**32 - 2               # the largest valid user id (2**32 - 1 is "no user")
MAX_MODE = 0o7777


def whole_number(text: str, lo: int = 0, hi: int | None = None) -> int | None:
    """The value of ``text`` if it is a decimal whole number (ASCII digits only: ``'²'``
    and Arabic-Indic digits pass ``str.isdigit`` but are no numbers here) from ``lo`` to
    ``hi``; None otherwise. Long texts are refused before they are converted."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    limit = len(str(hi)) if hi is not None else 30
    stripped = text.lstrip("0") or "0"
    if len(stripped) > limit:
        return None
    n = int(stripped)
    if n < lo or (hi is not None and n > hi):
        return None
    return n


def octal_mode(text: str) -> int | None:
    """``644`` or ``0640`` -> the mode; None if it is not octal or above 7777."""
    if not text or len(text) > 5 or any(c not in "01234567" for c in text):
        return None
    n = int(text, 8)
    return n if n <= MAX_MODE else None
