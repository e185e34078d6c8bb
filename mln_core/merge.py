"""Superclass resolution: the effective tree of a host, with where each value came from.

A host (or superclass) names one parent with ``superclass NAME``; chains may be of any
depth. Merging a parent P into a child C (spec 2.4):

* keyword blocks (the host itself, ``network eth0``, ``apache``): the nearest
  definition of a keyword wins, so C's ``memory`` line replaces P's;
* sub-blocks present in both are merged recursively (``network eth0`` from the
  superclass plus the host's own);
* line blocks (``startup``, ``users``, plugin line lists...: ``LINE_BLOCKS`` plus the
  blocks plugins declare as lines): P's lines first, then C's lines that are not
  literally the same;
* variables: C's definitions override P's.

Every line keeps its position and origin (``host rome``, ``superclass basic``), so the
effective tree says where each value came from. Variables are resolved afterwards in
the effective tree, from the host's point of view (see ``variables``).
"""
from __future__ import annotations

import re

from .errors import MlnError
from .lang.parser import Document
from .lang.tree import ESC_DOLLAR, Block, Line
from .lang.variables import Resolver


#: Blocks whose lines are a list (union on merge), not keyword settings (override).
LINE_BLOCKS = frozenset({"startup", "shutdown", "users", "modules", "files", "mount", "xen_extra",
                         "beforeProjectStart", "beforeHostsStart", "afterHostsStart",
                         "afterProjectStart", "beforeProjectStop", "beforeHostsStop",
                         "afterHostsStop", "afterProjectStop", "service_hosts"})


def merge(parent: Block, child: Block, line_blocks=LINE_BLOCKS) -> Block:
    """The effective block of ``child`` given its parent's effective block."""
    b = Block(child.kind, child.name, child.pos, child.origin, child.container)
    if parent.lines and child.lines:
        if child.kind in line_blocks:
            seen = {tuple(ln.words) for ln in parent.lines}
            b.lines = parent.lines + [ln for ln in child.lines if tuple(ln.words) not in seen]
        else:
            own = child.values
            b.lines = [ln for ln in parent.lines if ln.words[0] not in own] + child.lines
        values = dict(parent.values)
        values.update(child.values)
        b._values = values
    elif parent.lines:
        b.lines = list(parent.lines)
        b._values = dict(parent.values)
    else:
        b.lines = list(child.lines)
    if parent.vars:
        b.vars = {**parent.vars, **child.vars}
    else:
        b.vars = child.vars
    if parent.blocks:
        blocks = {}
        for k, pb in parent.blocks.items():
            cb = child.blocks.get(k)
            blocks[k] = merge(pb, cb, line_blocks) if cb is not None else pb
        for k, cb in child.blocks.items():
            if k not in blocks:
                blocks[k] = cb
        b.blocks = blocks
    else:
        b.blocks = child.blocks
    return b


# A white space character inside a word (escaped in the file: ``my\\ pass``) is hidden as a
# character of Unicode plane 16 (private use) while a line's variables are resolved and the
# result is split into words, then shown again.
_HAS_SPACE = re.compile(r"\s")
_SPACE_MARK = re.compile("[\U00100000-\U00103000]")


def _hide_space(m) -> str:
    return chr(0x100000 + ord(m.group(0)))


def _show_space(m) -> str:
    c = chr(ord(m.group(0)) - 0x100000)
    return c if c.isspace() else m.group(0)


class Resolved:
    """Effective, variable-resolved views of a parsed document, computed on demand."""

    def __init__(self, doc: Document, project: str | None = None, line_blocks=LINE_BLOCKS):
        self.doc = doc
        self.line_blocks = line_blocks
        self.resolver = Resolver(doc)
        g = doc.global_block
        self.global_vars = g.vars if g is not None else {}
        if project is None:
            project = self._raw_global_scalar("project") or ""
        self.project = project
        self._merged: dict[tuple[str, str], Block] = {}
        self._resolved: dict[tuple[str, str], Block] = {}
        self._chains: dict[tuple[str, str], list[Block]] = {}
        self._parents: dict[int, str | None] = {}

    def _raw_global_scalar(self, key: str) -> str | None:
        g = self.doc.global_block
        if g is None or g.get(key) is None:
            return None
        line = g.line(key)
        return self.resolver.resolve_in_scopes(line.value, [self.global_vars], {}, line.pos) \
            .replace(ESC_DOLLAR, "$")

    # -- superclass chains ---------------------------------------------------------------
    def parent_name(self, block: Block) -> str | None:
        key = id(block)
        if key in self._parents:
            return self._parents[key]
        line = block.line("superclass")
        name = None if line is None else self.resolver.resolve_in_scopes(
            line.value, [block.vars, self.global_vars], {}, line.pos).replace(ESC_DOLLAR, "$")
        self._parents[key] = name
        return name

    def chain(self, kind: str, name: str) -> list[Block]:
        """[the block, its superclass, that one's superclass, ...]."""
        hit = self._chains.get((kind, name))
        if hit is not None:
            return hit
        from .limits import MAX_CHAIN
        table = self.doc.root.named(kind)
        if name not in table:
            raise MlnError(f"no {kind} named '{name}'")
        block = table[name]
        parent = self.parent_name(block)
        if kind != "superclass" and parent is not None and parent in self.doc.superclasses():
            out = [block] + self.chain("superclass", parent)   # superclass chains are shared
            self._chains[(kind, name)] = out
            return out
        out = [block]
        seen = {(kind, name)}
        supers = self.doc.superclasses()
        while True:
            parent = self.parent_name(block)
            if parent is None:
                self._chains[(kind, name)] = out
                return out
            if parent not in supers:
                line = block.line("superclass")
                known = ", ".join(sorted(supers)) or "none are defined"
                raise MlnError(f"unknown superclass '{parent}' (known: {known})", line.pos)
            if ("superclass", parent) in seen:
                line = block.line("superclass")
                names = " -> ".join([b.name for b in out] + [parent])
                raise MlnError(f"superclass cycle: {names}", line.pos)
            seen.add(("superclass", parent))
            if len(out) > MAX_CHAIN:       # before any merge walks it
                line = block.line("superclass")
                raise MlnError(f"superclass chain longer than {MAX_CHAIN}: {out[0].name} -> "
                               f"{out[1].name} -> ... -> {block.name} -> {parent}", line.pos)
            block = supers[parent]
            out.append(block)

    def merged(self, kind: str, name: str) -> Block:
        """The effective (merged) tree, variables not yet resolved."""
        key = (kind, name)
        hit = self._merged.get(key)
        if hit is not None:
            return hit
        table = self.doc.root.named(kind)
        if name not in table:
            raise MlnError(f"no {kind} named '{name}'")
        block = table[name]
        parent = self.parent_name(block) if kind in ("host", "superclass") else None
        if parent is None:
            eff = block
        else:
            self.chain(kind, name)  # raises on unknown superclasses and cycles
            eff = merge(self.merged("superclass", parent), block, self.line_blocks)
        self._merged[key] = eff
        return eff

    def effective(self, kind: str, name: str) -> Block:
        """The effective tree with every variable resolved from this block's point of view."""
        key = (kind, name)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        if kind == "global":
            block = self.doc.global_block or Block("global")
            res = self.resolve_block(block, [], {"project": self.project})
        elif kind == "switch":
            block = self.doc.switches()[name]
            res = self.resolve_block(block, [self.global_vars], {"project": self.project})
        else:
            builtins = {"project": self.project}
            if kind == "host":
                builtins["hostname"] = name
            res = self.resolve_block(self.merged(kind, name), [self.global_vars], builtins)
        self._resolved[key] = res
        return res

    def resolve_block(self, block: Block, outer: list, builtins: dict) -> Block:
        scopes = [block.vars, *outer] if block.vars else outer
        changed = False
        mapping: dict[int, Line] = {}
        new_lines = []
        for ln in block.lines:
            text = ln.text
            if "$" in text or ESC_DOLLAR in text:
                spaced = any(_HAS_SPACE.search(w) for w in ln.words)
                if spaced:        # escaped white space in a word stays in it (not split below)
                    text = " ".join(_HAS_SPACE.sub(_hide_space, w) for w in ln.words)
                new_text = self.resolver.resolve_in_scopes(text, scopes, builtins, ln.pos)
                new_text = new_text.replace(ESC_DOLLAR, "$")
                words = new_text.split() or ln.words
                if spaced:
                    words = [_SPACE_MARK.sub(_show_space, w) for w in words]
                if words != ln.words:
                    nl = Line(words, ln.pos, ln.origin)
                    mapping[id(ln)] = nl
                    new_lines.append(nl)
                    changed = True
                    continue
            new_lines.append(ln)
        new_blocks = {}
        for k, child in block.blocks.items():
            rc = self.resolve_block(child, scopes, builtins)
            changed = changed or rc is not child
            new_blocks[k] = rc
        if not changed:
            return block
        b = Block(block.kind, block.name, block.pos, block.origin, block.container)
        b.lines = new_lines
        b.vars = block.vars
        b.blocks = new_blocks
        b._values = {mapping.get(id(ln), ln).words[0]: mapping.get(id(ln), ln)
                     for ln in block.values.values()}
        return b

    # -- queries by path (mln parse -S/-A/-H) ----------------------------------------------
    def lookup(self, path: str, fill=None) -> tuple[Block | None, str | None]:
        """Resolve ``/host/X/network/eth0/address``: returns (block, None) for a block or
        (parent block, keyword) for a keyword; (None, None) if absent. ``fill(kind, name,
        block)`` may add to a host's, superclass's or switch's effective block what the
        original fills in after parsing (``mln parse``: see ``parse_fill``)."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self.doc.root, None
        head = parts[0]
        if head in ("host", "superclass", "switch"):
            if len(parts) == 1:
                return self.doc.root.blocks.get(head), None
            if parts[1] not in self.doc.root.named(head):
                return None, None
            block = self.effective(head, parts[1])
            if fill is not None:
                block = fill(head, parts[1], block)
            rest = parts[2:]
        elif head == "global":
            if self.doc.global_block is None:
                return None, None
            block = self.effective("global", "")
            rest = parts[1:]
        else:
            block = self.doc.root
            rest = parts
        for i, part in enumerate(rest):
            if part in block.blocks:
                block = block.blocks[part]
            elif i == len(rest) - 1 and part in block.values:
                return block, part
            else:
                return None, None
        return block, None
