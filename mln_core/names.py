"""Names that become parts of paths, checked in one place.

A project name becomes a directory of the projects directory (and ``<project>.mln``,
``.<project>.lock``); a host or switch name a directory of the project
(``hosts/<host>/``) and a disk file (``<host>.<project>``); a template name a file of the
templates directory; a ``files {}`` source a path inside the files directory. The
parser, the model, the projects directory (:mod:`mln_core.store`) and the template
registry (:mod:`mln_core.templates`) all check them here, so that no name can reach
outside the directory it belongs to: no ``/``, no ``..``, no NUL, nothing longer than
the filesystem allows.
"""
from __future__ import annotations

import os
import re

from .errors import MlnError, Pos
from .limits import MAX_COMPONENT, MAX_NAME, MAX_PATH

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_PLAIN_RULE = "letters, digits, '-' and '_' (starting with a letter or digit)"
_RULES = {
    "host": (_PLAIN, _PLAIN_RULE),
    "switch": (_PLAIN, _PLAIN_RULE),
    "superclass": (_PLAIN, _PLAIN_RULE),
    "interface": (_PLAIN, _PLAIN_RULE),
    "project": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z"),
                "letters, digits, '.', '-' and '_' (starting with a letter or digit)"),
    # a file of the templates directory: one path component, never '.', '..' or hidden
    "template": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z"),
                 "letters, digits, '.', '+', '-' and '_' (starting with a letter, digit or '_'; "
                 "no '/': a template is a file of the templates directory)"),
}


def shown(text: str, width: int = 40) -> str:
    """``text`` for a message: cut short, control characters made visible."""
    text = text if len(text) <= width else text[:width] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def name_problem(kind: str, name: str) -> str | None:
    """What is wrong with ``name`` as a ``kind`` name (host, switch, superclass, interface,
    project, template), or None."""
    rx, rule = _RULES[kind]
    if len(name) > MAX_NAME and rx.match(name[:MAX_NAME]):
        return f"{kind} name '{shown(name)}' is {len(name)} characters long (the limit is {MAX_NAME})"
    if not rx.match(name):
        if kind == "interface":
            return f"bad interface name '{shown(name)}'"
        return f"bad {kind} name '{shown(name)}': use {rule}"
    return None


def check_name(kind: str, name: str, where: Pos | str | None = None) -> str:
    """``name`` if it is a good ``kind`` name; an MlnError (at ``where``) if not."""
    problem = name_problem(kind, name)
    if problem:
        raise MlnError(problem, where)
    return name


def path_problem(text: str, what: str) -> str | None:
    """What is wrong with ``text`` as a path on this machine (``what`` names it in the
    message): a NUL byte, or longer than the filesystem allows. None if nothing."""
    if "\x00" in text:
        return f"{what} '{shown(text)}' contains a NUL byte"
    data = os.fsencode(text) if _encodable(text) else None
    if data is None:
        return f"{what} '{shown(text)}' cannot be a file name on this machine"
    if len(data) > MAX_PATH:
        return f"{what} is {len(data)} bytes long (the limit is {MAX_PATH})"
    for part in data.split(b"/"):
        if len(part) > MAX_COMPONENT:
            return (f"{what} '{shown(text)}' has a part of {len(part)} bytes (a file name is at most "
                    f"{MAX_COMPONENT} bytes)")
    return None


def _encodable(text: str) -> bool:
    try:
        os.fsencode(text)
        return True
    except UnicodeError:
        return False


def inner_path_problem(text: str, what: str, directory: str) -> str | None:
    """What is wrong with ``text`` as a path inside ``directory`` (named in the message):
    it must be relative and must not go up with ``..``. None if nothing."""
    problem = path_problem(text, what)
    if problem:
        return problem
    if text.startswith("/") or text.startswith("~"):
        return f"{what} '{shown(text)}' must be a path inside the {directory}, relative to it"
    if ".." in text.split("/"):
        return f"{what} '{shown(text)}' goes up with '..': it must stay inside the {directory}"
    return None


def guest_path_problem(text: str, what: str) -> str | None:
    """What is wrong with ``text`` as a path inside a guest: it must be absolute."""
    if not text.startswith("/"):
        return f"{what} '{shown(text)}' must be an absolute path in the guest (starting with '/')"
    return path_problem(text, what)


def inside(base: str, path: str) -> bool:
    """True if ``path`` is ``base`` or below it, with symbolic links followed."""
    base, path = os.path.realpath(base), os.path.realpath(path)
    return path == base or path.startswith(base.rstrip("/") + "/")
