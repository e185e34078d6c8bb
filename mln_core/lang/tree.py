"""The block tree: what the parser produces and what the rest of the core reads.

A project file is a tree of blocks. Every block has ordered keyword lines (a keyword
may repeat; its value is the last one), variable definitions, and child blocks by
name. Two-word headers (``host NAME {``, ``switch NAME {``, ``superclass NAME {``,
``network IFACE {``) create a *container* child named after the kind that holds the
named blocks, so that paths read as in the original: ``/host/web14/network/eth0/address``.

Every line and block keeps its position (file, line, column) and its origin, the label
of the top-level stanza it was written in (``host rome``, ``superclass basic``,
``global``), which later tells ``show --explain`` where an effective value came from.
"""
from __future__ import annotations

from ..errors import Pos

#: An escaped dollar (``\\$`` in a file). Variable resolution never touches it; it is
#: written back as ``\\$`` by the writer and becomes a plain ``$`` in resolved values.
ESC_DOLLAR = "\ue000"

#: Header kinds that take a name: ``kind NAME {``. ``network`` may appear in any block,
#: the others only at the top level.
NAMED_KINDS = ("host", "switch", "superclass")
NESTED_NAMED_KINDS = ("network",)


class Line:
    """One keyword line: ``keyword rest of the line``. A bare keyword has the value "1"."""

    __slots__ = ("words", "pos", "origin")

    def __init__(self, words: list[str], pos: Pos | None = None, origin: str | None = None):
        self.words = words
        self.pos = pos
        self.origin = origin

    @property
    def keyword(self) -> str:
        return self.words[0]

    @property
    def value(self) -> str:
        return " ".join(self.words[1:]) if len(self.words) > 1 else "1"

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Line) and self.words == other.words

    def __hash__(self):
        return hash(tuple(self.words))

    def __repr__(self) -> str:
        return f"Line({self.text!r} @ {self.pos})"


class Var:
    """A variable definition ``$name = value``."""

    __slots__ = ("name", "value", "pos", "origin")

    def __init__(self, name: str, value: str, pos: Pos | None = None, origin: str | None = None):
        self.name = name
        self.value = value
        self.pos = pos
        self.origin = origin

    def __eq__(self, other) -> bool:
        return isinstance(other, Var) and (self.name, self.value) == (other.name, other.value)

    def __repr__(self) -> str:
        return f"Var(${self.name} = {self.value!r})"


class Block:
    """A block of the tree. ``name`` is set for named blocks (``host rome``) and None otherwise.

    ``container`` blocks (the ``host`` under the root, ``network`` under a host) only hold
    named children and have no lines of their own.
    """

    __slots__ = ("kind", "name", "pos", "origin", "lines", "vars", "blocks", "container", "_values")

    def __init__(self, kind: str, name: str | None = None, pos: Pos | None = None,
                 origin: str | None = None, container: bool = False):
        self.kind = kind
        self.name = name
        self.pos = pos
        self.origin = origin
        self.lines: list[Line] = []
        self.vars: dict[str, Var] = {}
        self.blocks: dict[str, Block] = {}
        self.container = container
        self._values: dict[str, Line] | None = None

    # -- reading ------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" if self.name is not None else self.kind

    @property
    def values(self) -> dict[str, Line]:
        """keyword -> the line that gives its value (the last one, or the nearest after a merge)."""
        if self._values is None:
            self._values = {line.words[0]: line for line in self.lines}
        return self._values

    def get(self, keyword: str, default: str | None = None) -> str | None:
        """The value of ``keyword`` ("1" for a bare flag), or ``default``."""
        line = self.values.get(keyword)
        return line.value if line is not None else default

    def line(self, keyword: str) -> Line | None:
        return self.values.get(keyword)

    def has(self, keyword: str) -> bool:
        return keyword in self.values or keyword in self.blocks

    def block(self, *path: str) -> Block | None:
        """The descendant block at ``path`` (e.g. ``block("network", "eth0")``), or None."""
        b: Block | None = self
        for part in path:
            if b is None:
                return None
            b = b.blocks.get(part)
        return b

    def named(self, kind: str) -> dict[str, Block]:
        """The named children of ``kind`` (``named("network")`` -> {"eth0": Block, ...})."""
        c = self.blocks.get(kind)
        return c.blocks if c is not None and c.container else {}

    def line_texts(self) -> list[str]:
        """The block's lines as text (for line blocks such as ``startup``)."""
        return [line.text for line in self.lines]

    def walk(self):
        """Yield (block, path) for this block and every descendant, depth first."""
        stack = [(self, ())]
        while stack:
            b, path = stack.pop()
            yield b, path
            for key, child in reversed(list(b.blocks.items())):
                stack.append((child, path + (key,)))

    # -- building (parser and post-parse plugins) ---------------------------------------
    def add_line(self, words: list[str], pos: Pos | None = None, origin: str | None = None) -> Line:
        line = Line(list(words), pos, origin if origin is not None else self.origin)
        self.lines.append(line)
        self._values = None
        return line

    def set(self, keyword: str, value: str | None = None, pos: Pos | None = None,
            origin: str | None = None) -> Line:
        """Replace every ``keyword`` line by one line ``keyword value`` (a flag if value is None)."""
        self.lines = [ln for ln in self.lines if ln.words[0] != keyword]
        words = [keyword] + (value.split() if value is not None else [])
        return self.add_line(words, pos, origin)

    def add_var(self, name: str, value: str, pos: Pos | None = None, origin: str | None = None) -> None:
        self.vars[name] = Var(name, value, pos, origin if origin is not None else self.origin)

    def child(self, kind: str, name: str | None = None, pos: Pos | None = None,
              origin: str | None = None) -> Block:
        """Get or create the child block ``kind`` (or the named block ``kind name``)."""
        origin = origin if origin is not None else self.origin
        if name is None:
            b = self.blocks.get(kind)
            if b is None:
                b = self.blocks[kind] = Block(kind, None, pos, origin)
            return b
        cont = self.blocks.get(kind)
        if cont is None:
            cont = self.blocks[kind] = Block(kind, None, pos, origin, container=True)
        b = cont.blocks.get(name)
        if b is None:
            b = cont.blocks[name] = Block(kind, name, pos, origin)
        return b

    def copy(self) -> Block:
        """A shallow structural copy: new block objects, shared Line/Var objects."""
        b = Block(self.kind, self.name, self.pos, self.origin, self.container)
        b.lines = list(self.lines)
        b.vars = dict(self.vars)
        b.blocks = {k: v.copy() for k, v in self.blocks.items()}
        if self._values is not None:
            b._values = dict(self._values)
        return b

    # -- comparison (for round-trip tests) ------------------------------------------------
    def structure(self):
        """A plain nested value for equality tests: ignores positions and origins."""
        return (
            self.kind, self.name, self.container,
            tuple(tuple(ln.words) for ln in self.lines),
            tuple((v.name, v.value) for v in self.vars.values()),
            tuple((k, b.structure()) for k, b in self.blocks.items()),
        )

    def __repr__(self) -> str:
        return f"Block({self.label!r}, {len(self.lines)} lines, {list(self.blocks)})"


def new_root() -> Block:
    return Block("/", None, None, None)
