"""Variables: ``$name = value`` definitions and ``$name`` / ``$[name]`` uses (spec 2.6).

A use is resolved from the point of view of the host: the innermost enclosing block,
then the enclosing blocks up to the host, the host itself with its superclass chain
(nearest first: that is what the merged, *effective* tree holds), then ``global``.
Built-ins: ``$hostname`` and ``$project``.

An undefined name is left as it is (and reported by ``mln check``); crypt hashes such as
``$6$salt$hash`` are never touched; ``\\$`` is a literal dollar.
"""
from __future__ import annotations

import re

from ..errors import Pos
from .tree import ESC_DOLLAR

_USE = re.compile(r"\$\[([A-Za-z0-9_]+)\]|\$([A-Za-z0-9_]+)")
_CRYPT = re.compile(r"\$(?:1|2[abxy]?|5|6|7|y|gy|md5|sha1)\$[./A-Za-z0-9=,]*(?:\$[./A-Za-z0-9=,]*)*")
MAX_DEPTH = 16


class Resolver:
    """Resolves variable uses; records undefined names and cycles in the document's problems."""

    def __init__(self, doc, report: bool = True):
        self.doc = doc
        self.report = report
        self._seen: set = doc.reported

    def resolve_in_scopes(self, text: str, scopes: list, builtins: dict, pos: Pos | None = None,
                          _depth: int = 0) -> str:
        """Resolve ``text`` with ``scopes`` (dicts name -> Var, innermost first) and builtins."""
        if "$" not in text:
            return text
        if _CRYPT.search(text):
            parts = []
            last = 0
            for m in _CRYPT.finditer(text):
                parts.append(self._sub(text[last:m.start()], scopes, builtins, pos, _depth))
                parts.append(m.group(0))
                last = m.end()
            parts.append(self._sub(text[last:], scopes, builtins, pos, _depth))
            return "".join(parts)
        return self._sub(text, scopes, builtins, pos, _depth)

    def _sub(self, text: str, scopes, builtins, pos, depth) -> str:
        if "$" not in text:
            return text

        def repl(m):
            name = m.group(1) or m.group(2)
            for scope in scopes:
                var = scope.get(name)
                if var is not None:
                    if depth >= MAX_DEPTH:
                        self._problem("error", f"variable ${name} refers to itself (directly or "
                                      "through other variables)", pos or var.pos)
                        return m.group(0)
                    return self.resolve_in_scopes(var.value, scopes, builtins, pos or var.pos, depth + 1)
            if name in builtins:
                return builtins[name]
            self._problem("warning", f"variable ${name} is not defined; it is left as text "
                          "(write \\$ for a literal dollar)", pos)
            return m.group(0)

        return _USE.sub(repl, text)

    def _problem(self, severity: str, message: str, pos) -> None:
        if not self.report:
            return
        key = (severity, message, pos)
        if key in self._seen:
            return
        self._seen.add(key)
        if severity == "error":
            self.doc.problems.error(message, pos)
        else:
            self.doc.problems.warn(message, pos)


def unescape(text: str) -> str:
    """A resolved value as the user means it: escaped dollars become plain ones."""
    return text.replace(ESC_DOLLAR, "$") if ESC_DOLLAR in text else text
