"""``mln diff``: what differs between two versions of a project, host by host (spec 6.6).

Pure: compares already loaded trees and projects, reads and writes nothing.

Hosts are compared by their *effective* trees (superclasses and variables applied), so a
change to a superclass or a global variable shows in exactly the hosts that end up with
another value, and a variable definition never shows by itself. For each host the diff
holds the keywords whose value changed or that were added (new value) or removed (old
value), sub-blocks added or removed whole, and changed sub-blocks recursively. Line
blocks (``startup``, ``users``, ``files``... and ``groups``) are compared as a whole list.
Switches are compared the same way, in their own section (the original did not diff
them); the global block is not compared.

Secret values (passwords: :mod:`mln_core.private`) are compared as they are, but an
entry shows ``<secret>`` in their place, and ``secret`` says that a secret differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lang.tree import Block
from .lang.writer import write_block
from .merge import LINE_BLOCKS
from .private import SECRET, Secrets, redact_block

#: Blocks compared as one list of lines: the core's line blocks and ``groups`` (a block
#: per group). The command adds the line blocks plugins declare.
WHOLE_BLOCKS = LINE_BLOCKS | {"groups"}

_EMPTY = Block("-")


@dataclass
class Entry:
    """One difference: at ``path`` (``memory``, ``network eth0 / switch``, ``startup``)
    something was ``changed``, ``added`` or ``removed``. ``kind`` says what ``old`` and
    ``new`` hold: a keyword's ``value``, a whole ``block`` or a line block's ``lines``,
    both as project-file text without the header."""

    path: str
    what: str
    old: str | None = None
    new: str | None = None
    kind: str = "value"
    secret: bool = False    # old and new show <secret> in place of a secret value
    #: a line block with secrets: its real lines (old, new), to tell which lines changed;
    #: in memory only, never printed
    real: tuple | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        d = {"path": self.path, "what": self.what, "kind": self.kind, "old": self.old, "new": self.new}
        if self.secret:
            d["secret"] = True
        return d


def _value(line) -> str:
    return " ".join(line.words[1:])


def _values(b: Block) -> dict[str, str]:
    """keyword -> its effective value (the last line), in the order of the lines."""
    vals = b.values
    return {ln.words[0]: _value(vals[ln.words[0]]) for ln in b.lines}


def _children(b: Block) -> dict[str, tuple[str, Block]]:
    """label -> (key, block): ``network eth0`` for a named block, the key for the others."""
    out = {}
    for key, child in b.blocks.items():
        if child.container:
            for name, named in child.blocks.items():
                out[f"{child.kind} {name}"] = ("", named)
        else:
            out[key] = (key, child)
    return out


def block_text(b: Block, context: str | None = None, secrets: Secrets | None = None,
               secret_word: int | None = None) -> str:
    """A block's body as project-file text, without its variable definitions; with
    ``context`` (``host``, ``network``, ``host.users``...), its secrets as ``<secret>``."""
    if any(blk.vars for blk, _ in b.walk()):
        b = b.copy()
        for blk, _ in b.walk():
            blk.vars = {}
    if context is not None:
        b = redact_block(b, context, secrets, secret_word)
    return write_block(b, header=False).rstrip("\n")


def diff_blocks(old: Block | None, new: Block | None, whole=WHOLE_BLOCKS, context: str = "host",
                secrets: Secrets | None = None) -> list[Entry]:
    """The differences from ``old`` to ``new`` (None: no block, so all added or removed),
    in the new block's order, then what was removed. ``whole``: the keys of blocks
    compared as one list; ``context`` (``host``, ``switch``) and ``secrets`` (the core's
    by default) say which values are secrets, shown as ``<secret>``."""
    out: list[Entry] = []
    _diff(old if old is not None else _EMPTY, new if new is not None else _EMPTY, "", whole, out,
          context, secrets or Secrets.core())
    return out


def _diff(old: Block, new: Block, prefix: str, whole, out: list[Entry], context: str,
          secrets: Secrets) -> None:
    ov, nv = _values(old), _values(new)
    oc, nc = _children(old), _children(new)
    for kw, val in nv.items():
        hide = secrets.keyword(context, kw)
        if kw not in ov:
            out.append(Entry(prefix + kw, "added", None, SECRET if hide else val, secret=hide))
        elif ov[kw] != val:
            out.append(Entry(prefix + kw, "changed", SECRET if hide else ov[kw], SECRET if hide else val,
                             secret=hide))
    for label, (key, nb) in nc.items():
        kind = "lines" if key in whole else "block"
        sub = "network" if label.startswith("network ") and context == "host" else f"{context}.{key}"
        word = secrets.word(context, key) if key else None
        if label not in oc:
            out.append(Entry(prefix + label, "added", None, block_text(nb, sub, secrets, word), kind))
            continue
        ob = oc[label][1]
        if kind == "lines":
            ot, nt = block_text(ob), block_text(nb)
            if ot != nt:
                shown_old, shown_new = block_text(ob, sub, secrets, word), block_text(nb, sub, secrets, word)
                hidden = (shown_old, shown_new) != (ot, nt)
                out.append(Entry(prefix + label, "changed", shown_old, shown_new, kind, secret=hidden,
                                 real=(ot.splitlines(), nt.splitlines()) if hidden else None))
        else:
            _diff(ob, nb, f"{prefix}{label} / ", whole, out, sub, secrets)
    for kw, val in ov.items():
        if kw not in nv:
            hide = secrets.keyword(context, kw)
            out.append(Entry(prefix + kw, "removed", SECRET if hide else val, None, secret=hide))
    for label, (key, ob) in oc.items():
        if label not in nc:
            sub = "network" if label.startswith("network ") and context == "host" else f"{context}.{key}"
            word = secrets.word(context, key) if key else None
            out.append(Entry(prefix + label, "removed", block_text(ob, sub, secrets, word), None,
                             "lines" if key in whole else "block"))


def _section(old: dict, new: dict, whole, context: str, secrets) -> dict:
    """name -> {"status", "changes"} for the hosts (or switches) that differ."""
    out = {}
    for name, obj in new.items():
        if name not in old:
            out[name] = {"status": "added", "changes": diff_blocks(None, obj.tree, whole, context, secrets)}
        else:
            changes = diff_blocks(old[name].tree, obj.tree, whole, context, secrets)
            if changes:
                out[name] = {"status": "changed", "changes": changes}
    for name, obj in old.items():
        if name not in new:
            out[name] = {"status": "removed", "changes": diff_blocks(obj.tree, None, whole, context, secrets)}
    return out


def project_diff(old, new, whole=WHOLE_BLOCKS, secrets: Secrets | None = None) -> dict:
    """The differences from project ``old`` (a :class:`mln_core.model.Project`, or None:
    everything is new) to ``new``: ``hosts`` and ``switches``, each name -> {"status":
    added|removed|changed, "changes": [Entry]}; unchanged ones are absent. ``project``
    gives both names (two different projects may be compared). ``secrets``: which
    keywords are secrets (the core's by default; the command passes the plugins' too)."""
    return {
        "project": {"old": old.name if old is not None else None, "new": new.name},
        "hosts": _section(old.hosts if old is not None else {}, new.hosts, whole, "host", secrets),
        "switches": _section(old.switches if old is not None else {}, new.switches, whole, "switch", secrets),
    }


def differs(d: dict) -> bool:
    """Is there any difference (hosts, switches or the project's name)?"""
    renamed = d["project"]["old"] is not None and d["project"]["old"] != d["project"]["new"]
    return bool(d["hosts"] or d["switches"] or renamed)


def as_json(d: dict) -> dict:
    """Plain data for ``--format json``."""
    return {
        "project": dict(d["project"]),
        "differ": differs(d),
        **{sec: {name: {"status": x["status"], "changes": [e.as_dict() for e in x["changes"]]}
                 for name, x in d[sec].items()} for sec in ("hosts", "switches")},
    }


def _show(v: str) -> str:
    return v if v else '""'


def _body(text: str, prefix: str = "    ") -> list[str]:
    return [prefix + ln.expandtabs(2) for ln in text.splitlines()]


def _entry_text(e: Entry) -> list[str]:
    head = f"  {e.path}: "
    if e.kind == "value":
        if e.what == "changed" and e.secret:
            return [f"{head}{SECRET} (changed)"]
        if e.what == "changed":
            return [f"{head}{_show(e.old)} -> {_show(e.new)}"]
        val = e.new if e.what == "added" else e.old
        return [f"{head}{e.what}" + (f" {val}" if val else "")]
    if e.what != "changed":
        return [f"{head}{e.what}"] + _body(e.new if e.what == "added" else e.old)
    import difflib
    a, b = e.old.splitlines(), e.new.splitlines()
    out = [f"{head}changed"]
    ka, kb = e.real if e.real is not None else (a, b)       # compared as they are, shown masked
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes():
        if tag == "equal":
            out += _body("\n".join(a[i1:i2]), "      ")
        else:
            out += _body("\n".join(a[i1:i2]), "    - ") + _body("\n".join(b[j1:j2]), "    + ")
    return out


def render_text(d: dict) -> str:
    """The differences as readable text, a paragraph per host, then per switch; "" when
    there are none::

        host web (changed)
          memory: 256M -> 512M
          network eth1: added
            switch lan2
            address 10.0.1.5
        host old (removed)
    """
    out = []
    p = d["project"]
    if p["old"] is not None and p["old"] != p["new"]:
        out.append(f"project {p['old']} -> {p['new']}")
    for sec, label in (("hosts", "host"), ("switches", "switch")):
        for name, x in d[sec].items():
            out.append(f"{label} {name} ({x['status']})")
            if x["status"] != "removed":
                for e in x["changes"]:
                    out += _entry_text(e)
    return "".join(ln + "\n" for ln in out)
