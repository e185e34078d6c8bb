"""Lexer and parser: project text -> block tree (with ``#include`` done in place).

Lexical rules (spec 2.1, without the original's bugs):

* a line ends at a newline or ``;``; ``{`` opens a block, ``}`` closes one, and both may
  stand anywhere on a line (``host a { memory 64M; network eth0 { address dhcp } }``);
* ``#`` starts a comment to the end of the physical line; a ``;``, ``{`` or ``}`` inside a
  comment is comment; ``#include FILE`` at the start of a line includes FILE right there;
* a backslash makes the next character literal (``echo a\\; b`` -> ``echo a; b``,
  ``\\$`` a literal dollar); a backslash at the end of a physical line continues it;
* runs of white space collapse to one space; quotes are ordinary characters; an escaped
  white space character (``my\\ password``) is part of the word;
* CRLF line ends read as LF; a UTF-8 byte order mark at the start of a file is ignored;
* the last line of a file counts even without a final newline.
"""
from __future__ import annotations

import os
import re
import stat

from ..errors import MlnError, Pos, Problems
from ..limits import MAX_BLOCK_DEPTH as MAX_DEPTH
from ..limits import MAX_HOSTS, MAX_INCLUDE_DEPTH, MAX_LINE, MAX_PROJECT_TEXT
from ..names import name_problem
from .tree import ESC_DOLLAR, NAMED_KINDS, NESTED_NAMED_KINDS, Block, new_root

_SPECIAL = re.compile(r"[{};#\\]")
_SPLIT = re.compile(r"([{};])")
_VAR_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


class Document:
    """A parsed project: the root block, the files read, and what was found on the way."""

    def __init__(self, root: Block, files: list[str], problems: Problems):
        self.root = root
        self.files = files
        self.problems = problems
        #: (severity, message, where) of the variable problems already reported, so that a
        #: line resolved more than once (by a plugin and for the global block) warns once.
        self.reported: set = set()
        #: characters variable expansions added so far (bounded: mln_core.limits.MAX_EXPANDED)
        self.expanded = 0

    @property
    def global_block(self) -> Block | None:
        return self.root.blocks.get("global")

    def hosts(self) -> dict[str, Block]:
        return self.root.named("host")

    def switches(self) -> dict[str, Block]:
        return self.root.named("switch")

    def superclasses(self) -> dict[str, Block]:
        return self.root.named("superclass")

    def resolve_global(self, text: str, pos: Pos | None = None) -> str:
        """``text`` with variables resolved in the global scope (for project-level plugins);
        ``pos``, where the text stands, is where an undefined variable is reported."""
        from .variables import Resolver
        return Resolver(self).resolve_in_scopes(text, [self._global_vars()], {}, pos)

    def _global_vars(self):
        g = self.global_block
        return g.vars if g is not None else {}


# ---------------------------------------------------------------------------------------
# Lexer: yields items (kind, words, pos) with kind in "line", "open", "close", "include".
# ---------------------------------------------------------------------------------------

def _decode(data: bytes, filename: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise MlnError(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})",
                       Pos(filename, line, col)) from None
    if "\x00" in text:
        i = text.index("\x00")
        line = text.count("\n", 0, i) + 1
        raise MlnError("the file contains a NUL byte: is this a project file?",
                       Pos(filename, line, i - text.rfind("\n", 0, i)))
    return normalize(text)


def normalize(text: str) -> str:
    """Project text as the lexer reads it: without a UTF-8 byte order mark at the start,
    CRLF line ends as LF (so ``\\`` at the end of a CRLF line continues it, as in a LF file)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n") if "\r" in text else text


def _slow_split(text: str, lineno: int, start_col: int, filename: str, out: list) -> bool:
    """Tokenize one logical line containing backslashes. Returns True if it ended in a
    continuation (a backslash at the very end)."""
    words: list[str] = []
    cur: list[str] = []
    first_col = None
    i, n = 0, len(text)

    def flush_word():
        if cur:
            words.append("".join(cur))
            cur.clear()

    def flush_item(kind, col):
        nonlocal first_col
        flush_word()
        if kind == "line":
            if words:
                out.append(("line", list(words), Pos(filename, lineno, first_col)))
        else:
            out.append((kind, list(words), Pos(filename, lineno, col if not words else first_col)))
        words.clear()
        first_col = None

    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                flush_word()
                if words:
                    out.append(("cont", list(words), Pos(filename, lineno, first_col)))
                return True
            nxt = text[i + 1]
            if first_col is None:
                first_col = start_col + i
            cur.append(ESC_DOLLAR if nxt == "$" else nxt)
            i += 2
            continue
        if c == "#":
            if not words and not cur and text.startswith("#include", i) and \
                    (i + 8 == n or text[i + 8] in " \t"):
                out.append(("include", [text[i + 8:].strip()], Pos(filename, lineno, start_col + i)))
                return False
            break
        if c.isspace():
            flush_word()
        elif c == ";":
            flush_item("line", start_col + i)
        elif c == "{":
            flush_item("open", start_col + i)
        elif c == "}":
            flush_item("line", start_col + i)
            out.append(("close", [], Pos(filename, lineno, start_col + i)))
        else:
            if first_col is None:
                first_col = start_col + i
            cur.append(c)
        i += 1
    flush_item("line", start_col + i)
    return False


def tokenize(text: str, filename: str) -> list:
    """Return the items of ``text``: (kind, words, pos)."""
    out: list = []
    append = out.append
    pending: list | None = None  # words carried over by a backslash continuation
    for lineno, raw in enumerate(text.split("\n"), 1):
        if len(raw) > MAX_LINE:
            raise MlnError(f"line is {len(raw)} characters long (the limit is {MAX_LINE}): "
                           "is this a project file?", Pos(filename, lineno, 1))
        if pending is not None:
            prev_words, prev_pos = pending
            pending = None
            sub: list = []
            cont = _slow_split(raw, lineno, 1, filename, sub)
            if not prev_words:
                pass  # the continued line ended in '{', '}' or ';': nothing to join
            elif sub and sub[0][0] == "line":
                sub[0] = ("line", prev_words + sub[0][1], prev_pos)
            elif sub and sub[0][0] == "open":
                sub[0] = ("open", prev_words + sub[0][1], prev_pos)
            elif sub and sub[0][0] == "cont":
                sub[0] = ("cont", prev_words + sub[0][1], prev_pos)
            elif cont and not sub:
                sub.append(("cont", prev_words, prev_pos))  # a line of only a backslash
            else:
                sub.insert(0, ("line", prev_words, prev_pos))
            raw_items = sub
        elif not _SPECIAL.search(raw):
            words = raw.split()
            if words:
                col = len(raw) - len(raw.lstrip()) + 1
                append(("line", words, Pos(filename, lineno, col)))
            continue
        elif "\\" in raw:
            raw_items = []
            cont = _slow_split(raw, lineno, 1, filename, raw_items)
        else:
            raw_items = []
            cont = False
            hash_at = raw.find("#")
            body = raw if hash_at < 0 else raw[:hash_at]
            include = None
            if hash_at >= 0 and raw.startswith("#include", hash_at) and \
                    (len(raw) == hash_at + 8 or raw[hash_at + 8] in " \t") and \
                    (not body.strip() or body.rstrip()[-1] in ";{}"):
                include = ("include", [raw[hash_at + 8:].strip()], Pos(filename, lineno, hash_at + 1))
            offset = 0
            words_before: list[str] = []
            wpos = None
            for piece in _SPLIT.split(body):
                if piece in ("{", "}", ";"):
                    if piece == "{":
                        raw_items.append(("open", words_before,
                                          wpos if words_before else Pos(filename, lineno, offset + 1)))
                    else:
                        if words_before:
                            raw_items.append(("line", words_before, wpos))
                        if piece == "}":
                            raw_items.append(("close", [], Pos(filename, lineno, offset + 1)))
                    words_before = []
                else:
                    w = piece.split()
                    if w:
                        wpos = Pos(filename, lineno, offset + len(piece) - len(piece.lstrip()) + 1)
                        words_before = w
                offset += len(piece)
            if words_before:
                raw_items.append(("line", words_before, wpos))
            if include:
                raw_items.append(include)
        if cont:
            last = raw_items.pop() if raw_items and raw_items[-1][0] == "cont" else None
            out.extend(raw_items)
            pending = (last[1], last[2]) if last else ([], Pos(filename, lineno, 1))
        else:
            out.extend(raw_items)
    if pending is not None and pending[0]:
        append(("line", pending[0], pending[1]))
    return out


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, problems: Problems, search_cwd: str):
        self.problems = problems
        self.root = new_root()
        self.stack: list[Block] = [self.root]
        self.open_pos: list[Pos | None] = [None]
        self.files: list[str] = []
        self.include_stack: list[str] = []
        self.cwd = search_cwd
        self.renames: list[tuple[Block, Block, Pos]] = []
        self.text_left = MAX_PROJECT_TEXT     # bytes of project text still allowed

    def take_text(self, size: int, display: str, pos: Pos | None) -> None:
        """Count ``size`` bytes of project text against the limit (before they are read)."""
        if size > self.text_left:
            raise MlnError(f"the project text is more than {MAX_PROJECT_TEXT // 2**20} MB (with '{display}'): "
                           "is this a project file?", pos or Pos(display, 1, 1))
        self.text_left -= size

    # ---- files ---------------------------------------------------------------------
    def feed_file(self, path: str, display: str, text: str | None = None, pos: Pos | None = None) -> None:
        real = os.path.realpath(path)
        if text is None:
            text = _decode(self.read_file(path, display, pos), display)
        self.files.append(display)
        self.include_stack.append(real)
        try:
            self.feed(tokenize(text, display), os.path.dirname(os.path.abspath(path)))
        finally:
            self.include_stack.pop()

    def read_file(self, path: str, display: str, pos: Pos | None) -> bytes:
        """The bytes of a regular file, at most as many as the limit leaves. A FIFO, a
        device such as /dev/zero or a directory is refused before anything is read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except IsADirectoryError:
            raise MlnError(f"'{display}' is a directory, not a project file", pos or display) from None
        except OSError as e:
            raise MlnError(f"cannot read '{display}': {e.strerror}", pos or display) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise MlnError(f"'{display}' is a directory, not a project file", pos or display)
            if not stat.S_ISREG(st.st_mode):
                raise MlnError(f"'{display}' is not a regular file (a FIFO, socket or device): "
                               "mln reads project files only", pos or display)
            self.take_text(st.st_size, display, pos)
            chunks, left = [], st.st_size + self.text_left + 1
            while left > 0:       # the file may grow while it is read: never more than the limit
                chunk = os.read(fd, min(left, 2**20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > st.st_size:
                self.take_text(len(data) - st.st_size, display, pos)
            return data
        except OSError as e:
            raise MlnError(f"cannot read '{display}': {e.strerror}", pos or display) from None
        finally:
            os.close(fd)

    def include(self, arg: str, pos: Pos, base_dir: str) -> None:
        if not arg:
            raise MlnError("#include needs a file name", pos)
        if len(self.include_stack) >= MAX_INCLUDE_DEPTH:
            raise MlnError(f"includes nested more than {MAX_INCLUDE_DEPTH} deep", pos)
        candidates = [arg] if os.path.isabs(arg) else [os.path.join(base_dir, arg),
                                                        os.path.join(self.cwd, arg)]
        for cand in candidates:
            if os.path.isfile(cand):
                real = os.path.realpath(cand)
                if real in self.include_stack:
                    chain = " -> ".join(os.path.basename(p) for p in self.include_stack + [real])
                    raise MlnError(f"include cycle: {chain}", pos)
                display = cand if os.path.isabs(arg) else os.path.relpath(cand, self.cwd) \
                    if not os.path.relpath(cand, self.cwd).startswith("..") else cand
                self.feed_file(cand, display, pos=pos)
                return
        where = arg if os.path.isabs(arg) else f"{arg} (looked in {base_dir} and {self.cwd})"
        raise MlnError(f"cannot open include file {where}", pos)

    # ---- items ---------------------------------------------------------------------
    def feed(self, items: list, base_dir: str) -> None:
        for kind, words, pos in items:
            if kind == "line":
                self.line(words, pos)
            elif kind == "open":
                self.open(words, pos)
            elif kind == "close":
                self.close(pos)
            elif kind == "include":
                self.include(words[0], pos, base_dir)

    def line(self, words: list[str], pos: Pos) -> None:
        block = self.stack[-1]
        if len(words) >= 2 and words[1] == "=" and words[0].startswith("$"):
            name = words[0][1:]
            if not _VAR_NAME.match(name):
                raise MlnError(f"bad variable name '${name}': use letters, digits and '_'", pos)
            if block is self.root:
                self.problems.warn(f"variable ${name} is defined outside any block, where no "
                                   "host can see it: move it into 'global'", pos)
            block.add_var(name, " ".join(words[2:]), pos)
            return
        if block is self.root:
            self.problems.warn(f"'{words[0]}' outside any block has no meaning", pos)
        block.add_line(words, pos)

    def open(self, words: list[str], pos: Pos) -> None:
        parent = self.stack[-1]
        if len(self.stack) > MAX_DEPTH:
            raise MlnError(f"blocks nested more than {MAX_DEPTH} deep", pos)
        at_top = parent is self.root
        if not words:
            raise MlnError("'{' without a block name before it", pos)
        if len(words) == 1:
            kind = words[0]
            if kind in NAMED_KINDS + NESTED_NAMED_KINDS:
                example = "eth0" if kind == "network" else "NAME"
                raise MlnError(f"'{kind}' needs a name: {kind} {example} {{", pos)
            origin = "global" if at_top and kind == "global" else (kind if at_top else parent.origin)
            if kind in parent.blocks:
                old = parent.blocks[kind]
                self.problems.warn(f"'{kind}' block defined again; it replaces the one at {old.pos}", pos)
            b = Block(kind, None, pos, origin)
            parent.blocks[kind] = b
        elif len(words) == 2:
            kind, name = words
            if kind in NAMED_KINDS:
                if not at_top:
                    raise MlnError(f"'{kind} {name}' must be at the top level, not inside "
                                   f"'{parent.label}'", pos)
                origin = f"{kind} {name}"
            elif kind in NESTED_NAMED_KINDS:
                if at_top:
                    raise MlnError(f"'{kind} {name}' must be inside a host or superclass", pos)
                origin = parent.origin
            else:
                raise MlnError(f"unexpected '{kind} {name} {{': a block header is one word "
                               "('users {') or host/switch/superclass/network and a name", pos)
            cont = parent.blocks.get(kind)
            if cont is None:
                cont = parent.blocks[kind] = Block(kind, None, pos, origin, container=True)
            elif not cont.container:
                raise MlnError(f"'{kind} {name}' conflicts with the block '{kind}' at {cont.pos}", pos)
            if len(cont.blocks) >= MAX_HOSTS:
                raise MlnError(f"more than {MAX_HOSTS:,} {kind} blocks in one project", pos)
            b = Block(kind, name, pos, origin)
            if "$" in name:
                self.renames.append((cont, b, pos))
                cont.blocks[f"\0{len(self.renames)}"] = b
            else:
                self._check_name(kind, name, pos)
                if name in cont.blocks:
                    old = cont.blocks[name]
                    self.problems.warn(f"{kind} '{name}' defined again; it replaces the one at {old.pos}",
                                       pos)
                    del cont.blocks[name]
                cont.blocks[name] = b
        else:
            raise MlnError(f"too many words before '{{': '{' '.join(words)}'", pos)
        self.stack.append(b)
        self.open_pos.append(pos)

    def close(self, pos: Pos) -> None:
        if len(self.stack) == 1:
            raise MlnError("'}' without a matching '{'", pos)
        self.stack.pop()
        self.open_pos.pop()

    def _check_name(self, kind: str, name: str, pos: Pos) -> None:
        problem = name_problem("interface" if kind == "network" else kind, name)
        if problem:
            raise MlnError(problem, pos)

    def finish(self) -> Block:
        if len(self.stack) > 1:
            b, p = self.stack[-1], self.open_pos[-1]
            raise MlnError(f"'{b.label}' is never closed (missing '}}')", p)
        self._resolve_names()
        return self.root

    def _resolve_names(self) -> None:
        """Names with variables (``host linux$group {``) are resolved with the block's own
        and the global variables once the whole file is read."""
        if not self.renames:
            return
        from .variables import Resolver
        doc = Document(self.root, self.files, self.problems)
        resolver = Resolver(doc)
        gvars = doc._global_vars()
        for cont, b, pos in self.renames:
            new = resolver.resolve_in_scopes(b.name, [b.vars, gvars], {}, pos).replace(ESC_DOLLAR, "$")
            self._check_name(b.kind, new, pos)
            items = list(cont.blocks.items())
            cont.blocks.clear()
            for key, val in items:
                if val is b:
                    key = new
                    b.name = new
                    b.origin = f"{b.kind} {new}" if b.kind in NAMED_KINDS else b.origin
                    if new in cont.blocks:
                        self.problems.warn(f"{b.kind} '{new}' defined again; it replaces the one at "
                                           f"{cont.blocks[new].pos}", pos)
                        del cont.blocks[new]
                cont.blocks[key] = val
            for line_block, _ in b.walk():
                for ln in line_block.lines:
                    if ln.origin and ln.origin.startswith(b.kind + " "):
                        ln.origin = b.origin


def parse_text(text: str, filename: str = "<text>", cwd: str | None = None) -> Document:
    """Parse project text (``#include`` relative to ``cwd``)."""
    problems = Problems()
    p = _Parser(problems, cwd or os.getcwd())
    p.take_text(len(text), filename, None)
    p.files.append(filename)
    p.include_stack.append(filename)
    p.feed(tokenize(normalize(text), filename), cwd or os.getcwd())
    return Document(p.finish(), p.files, problems)


def parse_file(path: str, cwd: str | None = None, edit=None, finish: bool = True) -> Document:
    """Parse a project file and everything it includes. ``edit(root)`` runs once the text
    is read, before names with variables (``host linux$group``) are resolved (class
    fan-out sets each copy's variables there); ``finish=False``: the tree as read, names
    not resolved."""
    problems = Problems()
    p = _Parser(problems, cwd or os.getcwd())
    p.feed_file(path, path)
    if edit is not None:
        edit(p.root)
    return Document(p.finish() if finish else p.root, p.files, problems)
