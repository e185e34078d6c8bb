"""``mln setup``: which configuration file to write, its directories, and its text.

* The file: the one ``MLN_CONFIG`` names; else ``/etc/mln/mln.conf`` for root and
  ``~/.mln`` for anybody else (the files every mln command reads, see ``config``).
* The directories: the system-wide defaults of the original for ``/etc/mln/mln.conf``
  (``/opt/mln/projects/$USER``, ``/opt/mln/templates``, ``/opt/mln/files/$USER``),
  else mln's own (``~/mln/projects`` ...); an existing file's values come first.
* The text: an existing file keeps every line but its ``projects``, ``templates`` and
  ``files`` lines, which are replaced; a new file gets the three lines and mln's other
  defaults as comments.
"""
from __future__ import annotations

import os
import re

from .config import DEFAULTS, SYSTEM_CONFIG, USER_CONFIG

DIRS = ("projects", "templates", "files")
SYSTEM_DIRS = {"projects": "/opt/mln/projects/$USER", "templates": "/opt/mln/templates",
               "files": "/opt/mln/files/$USER"}


def config_target(env=os.environ, euid: int | None = None) -> str:
    """The configuration file ``mln setup`` writes."""
    if env.get("MLN_CONFIG"):
        return env["MLN_CONFIG"]
    if (os.geteuid() if euid is None else euid) == 0:
        return SYSTEM_CONFIG
    return os.path.expanduser(USER_CONFIG)


def read_dirs(text: str) -> dict[str, str]:
    """The ``projects``/``templates``/``files`` values of a configuration text (as written)."""
    found = {}
    for raw in text.splitlines():
        parts = raw.split("#", 1)[0].split(None, 1)
        if len(parts) == 2 and parts[0] in DIRS:
            found[parts[0]] = parts[1].strip()
    return found


def default_dirs(target: str, old_text: str | None = None) -> dict[str, str]:
    """The directories to propose: the existing file's, else the defaults for ``target``."""
    base = dict(SYSTEM_DIRS) if target == SYSTEM_CONFIG else {k: DEFAULTS[k] for k in DIRS}
    base.update(read_dirs(old_text or ""))
    return base


def as_written(value: str) -> str:
    """A directory as the file should hold it: ``~``, ``$VAR`` and absolute paths as they
    are, a relative one made absolute (mln reads the file from anywhere)."""
    value = value.strip()
    if value.startswith(("~", "$", "/")):
        return value
    return os.path.abspath(value)


def expand(value: str) -> str:
    """The directory a value names, as mln reads it (``$VAR`` and ``~`` expanded)."""
    return os.path.abspath(os.path.expanduser(os.path.expandvars(value)))


def unset_variables(value: str, env=os.environ) -> list[str]:
    """The ``$VAR``/``${VAR}`` names in ``value`` that ``env`` does not set (mln would read
    them literally)."""
    return [a or b for a, b in re.findall(r"\$(\w+)|\$\{(\w+)\}", value) if (a or b) not in env]


def render(dirs: dict[str, str], old_text: str | None, version: str) -> str:
    """The new configuration text."""
    if old_text is not None:
        out, done = [], set()
        for raw in old_text.splitlines():
            words = raw.split("#", 1)[0].split()
            key = words[0] if words else None
            if key in DIRS:
                if key not in done:
                    out.append(f"{key} {dirs[key]}")
                    done.add(key)
                continue
            out.append(raw)
        out += [f"{k} {dirs[k]}" for k in DIRS if k not in done]
        return "\n".join(out) + "\n"
    lines = [f"# mln configuration, written by 'mln setup' (mln {version}).",
             "# One 'keyword value' a line; $VAR is taken from the environment.",
             "# See 'Configuration files' in mln's docs/commands.md.",
             *(f"{k} {dirs[k]}" for k in DIRS),
             "",
             "# mln's defaults for what is not set here:"]
    lines += [f"# {k} {v}" for k, v in DEFAULTS.items() if k not in DIRS]
    return "\n".join(lines) + "\n"


def write(target: str, text: str) -> str | None:
    """Write ``text`` to ``target`` (its directory made); an existing file is kept as
    ``target.bak``, whose name is returned."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    backup = None
    if os.path.exists(target):
        backup = target + ".bak"
        with open(target, "rb") as src, open(backup, "wb") as dst:
            dst.write(src.read())
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return backup
