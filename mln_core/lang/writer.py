"""The normalized writer: a block tree back to project text in the original's layout.

Tabs indent, one keyword line per line, variables kept as ``$x = v`` lines before the
keyword lines, then child blocks; comments and ``#include`` lines are gone (the included
text is written in place). Characters the lexer treats specially are escaped (also white
space inside a word, such as a password with spaces), so ``parse(write(tree))`` gives
the same tree: the saved copy of a project is what was built.
"""
from __future__ import annotations

import re

from .tree import ESC_DOLLAR, Block

_NEEDS_ESCAPE = re.compile(r"[\\{};#\s]")


def _word(w: str) -> str:
    if _NEEDS_ESCAPE.search(w):
        w = _NEEDS_ESCAPE.sub(lambda m: "\\" + m.group(0), w)
    if ESC_DOLLAR in w:
        w = w.replace(ESC_DOLLAR, "\\$")
    return w


def _words(words) -> str:
    text = " ".join(_word(w) for w in words)
    # an escaped CR at the end would read as a CRLF line end (a continuation): end the line with ';'
    return text + ";" if text.endswith("\r") else text


def _value(v: str) -> str:
    """A variable's value (its definition's words joined by one space): a space between two
    other characters separates words, every other white space character is escaped."""
    out = []
    for i, c in enumerate(v):
        if c == " " and 0 < i < len(v) - 1 and not v[i - 1].isspace() and not v[i + 1].isspace():
            out.append(c)
        else:
            out.append(_word(c))
    return "".join(out) + (";" if v.endswith("\r") else "")


def write_block_body(block: Block, depth: int, out: list[str]) -> None:
    ind = "\t" * depth
    for var in block.vars.values():
        out.append(f"{ind}${var.name} = {_value(var.value)}" if var.value else f"{ind}${var.name} =")
    for line in block.lines:
        out.append(ind + _words(line.words))
    for key, child in block.blocks.items():
        if child.container:
            for name, named in child.blocks.items():
                out.append(f"{ind}{child.kind} {_word(name)} {{")
                write_block_body(named, depth + 1, out)
                out.append(ind + "}")
        else:
            out.append(f"{ind}{_word(key)} {{")
            write_block_body(child, depth + 1, out)
            out.append(ind + "}")


def write_tree(root: Block) -> str:
    """The whole document, in the order it was written."""
    out: list[str] = []
    write_block_body(root, 0, out)
    return "\n".join(out) + "\n"


def write_block(block: Block, header: bool = True) -> str:
    """One block (e.g. an effective host) in the tree layout."""
    out: list[str] = []
    if header and block.kind != "/":
        out.append(f"{block.label} {{")
        write_block_body(block, 1, out)
        out.append("}")
    else:
        write_block_body(block, 0, out)
    return "\n".join(out) + "\n"
