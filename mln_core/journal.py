"""A journal: the record of a multi-step change in progress, kept so that the next command
on the project finishes or rolls back what a killed one left (``upgrade``, the commit of a
build, ``remove``).

It is one small JSON file, rewritten whole at each step (written to ``<path>.tmp``,
flushed to disk, renamed over ``<path>``), so it is always either the old record or the
new one, never a torn mix.
"""
from __future__ import annotations

import json
import os

from .private import write_file


class Journal:
    """The record at ``path``: ``data`` (a dict), saved whole by :meth:`save`."""

    def __init__(self, path: str, data: dict | None = None):
        self.path = path
        self.data = data or {}

    @staticmethod
    def load(path: str, torn: dict | None = None) -> dict | None:
        """The record at ``path``; None if there is none; ``torn`` (a copy) if the file is
        there but does not read (killed while it was first written, before the rename)."""
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return dict(torn or {})
        return data if isinstance(data, dict) else dict(torn or {})

    def save(self, **changes) -> None:
        self.data.update(changes)
        tmp = self.path + ".tmp"
        write_file(tmp, json.dumps(self.data, indent=1), sync=True)    # 0600: see mln_core.private
        os.replace(tmp, self.path)

    def add(self, key: str, item) -> None:
        self.data.setdefault(key, []).append(item)
        self.save()

    def remove(self) -> None:
        for p in (self.path, self.path + ".tmp"):
            if os.path.lexists(p):
                os.unlink(p)
