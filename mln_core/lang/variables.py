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
from ..limits import MAX_EXPANDED, MAX_VALUE, MAX_VAR_DEPTH
from .tree import ESC_DOLLAR

_USE = re.compile(r"\$\[([A-Za-z0-9_]+)\]|\$([A-Za-z0-9_]+)")
_CRYPT = re.compile(r"\$(?:1|2[abxy]?|5|6|7|y|gy|md5|sha1)\$[./A-Za-z0-9=,]*(?:\$[./A-Za-z0-9=,]*)*")
MAX_DEPTH = MAX_VAR_DEPTH


class _TooLong(Exception):
    """A value grew past MAX_VALUE: the expansion is abandoned."""


class Resolver:
    """Resolves variable uses; records undefined names and cycles in the document's problems.

    Bounded (``mln_core.limits``): a value is expanded once per resolution (so that
    ``$a = $b$b``, ``$b = $c$c``, ... costs its length, not more); a variable on its own
    expansion path is a cycle, found at once; nesting stops at MAX_VAR_DEPTH; no value
    grows past MAX_VALUE characters; all expansions of a document add at most
    MAX_EXPANDED characters. Past a limit the text stays as written and an error says so.
    """

    def __init__(self, doc, report: bool = True):
        self.doc = doc
        self.report = report
        self._seen: set = doc.reported

    def resolve_in_scopes(self, text: str, scopes: list, builtins: dict, pos: Pos | None = None) -> str:
        """Resolve ``text`` with ``scopes`` (dicts name -> Var, innermost first) and builtins."""
        if "$" not in text:
            return text
        doc = self.doc
        if getattr(doc, "expanded", 0) > MAX_EXPANDED:
            return text
        memo: dict[int, str] = {}
        try:
            out = self._text(text, scopes, builtins, pos, memo, ())
        except _TooLong as e:
            self._grew(MAX_VALUE, pos)
            self._problem("error", f"{e.args[0]} is longer than {MAX_VALUE:,} characters after its "
                          "variables are expanded", pos)
            return text
        return out

    def _grew(self, n: int, pos) -> None:
        """Count ``n`` characters added by expansions against the document's budget."""
        total = getattr(self.doc, "expanded", 0) + n
        try:
            self.doc.expanded = total
        except AttributeError:     # a document of someone else's making: no budget kept
            return
        if total > MAX_EXPANDED and total - n <= MAX_EXPANDED:
            self._problem("error", f"variables of this project expand to more than {MAX_EXPANDED // 2**20} "
                          "MB of text in all; the rest stays as written", pos)

    def _text(self, text, scopes, builtins, pos, memo, stack) -> str:
        if "$" not in text:
            return text
        if _CRYPT.search(text):
            parts = []
            last = 0
            for m in _CRYPT.finditer(text):
                parts.append(self._sub(text[last:m.start()], scopes, builtins, pos, memo, stack))
                parts.append(m.group(0))
                last = m.end()
            parts.append(self._sub(text[last:], scopes, builtins, pos, memo, stack))
            out = "".join(parts)
            if len(out) > MAX_VALUE:
                raise _TooLong(f"${stack[-1].name}" if stack else "the value")
            return out
        return self._sub(text, scopes, builtins, pos, memo, stack)

    def _sub(self, text: str, scopes, builtins, pos, memo, stack) -> str:
        if "$" not in text:
            return text
        grown = [len(text)]

        def repl(m):
            name = m.group(1) or m.group(2)
            value = None
            for scope in scopes:
                var = scope.get(name)
                if var is not None:
                    key = id(var)
                    value = memo.get(key)
                    if value is not None:
                        break
                    if any(v is var for v in stack):
                        self._problem("error", f"variable ${name} refers to itself (directly or "
                                      "through other variables)", pos or var.pos)
                        return m.group(0)
                    if len(stack) >= MAX_VAR_DEPTH:
                        self._problem("error", f"variables nested more than {MAX_VAR_DEPTH} deep "
                                      f"(at ${name})", pos or var.pos)
                        return m.group(0)
                    value = memo[key] = self._text(var.value, scopes, builtins, pos or var.pos, memo,
                                                   stack + (var,))
                    break
            else:
                if name in builtins:
                    value = builtins[name]
                else:
                    self._problem("warning", f"variable ${name} is not defined; it is left as text "
                                  "(write \\$ for a literal dollar)", pos)
                    return m.group(0)
            grown[0] += len(value) - len(m.group(0))
            if grown[0] > MAX_VALUE:
                raise _TooLong(f"${stack[-1].name}" if stack else "the value")
            return value

        out = _USE.sub(repl, text)
        if len(out) > len(text):
            self._grew(len(out) - len(text), pos)
        return out

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
