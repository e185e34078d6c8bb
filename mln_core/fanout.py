"""Class fan-out: N copies of one lab, built from one project file and a table.

A *class* is a lab file (an ordinary project file, or a file meant to be included, such
as the seed's ``oscourse.mln``) and a table with one row per *copy*: a CSV file with a
header line, or a ``copies { }`` block in the lab file. Each copy is an ordinary project
(``<class>-<copy id>`` unless the table names it): its file is the lab read again with
the row's values set as variables in its ``global`` block *before* anything else reads
it, so ``host linux$group {`` and ``address 10.0.$group.1`` differ from copy to copy,
and the stored project file of a copy (``<projects>/<project>/<project>.mln``) holds
them: ``mln start|stop|upgrade -p PROJECT`` work on one copy as on any project.

Columns: ``copy`` (the copy id; without it, the first column), ``project`` (the copy's
project name), ``owner`` (recorded and shown), ``service_host`` (the server of the
copy's hosts that name none); every column but ``project`` is also a variable, and
``$copy`` is always the copy id. An empty cell keeps the lab's default.

:func:`check` proves before anything is built that every copy reads and validates and
that no two copies (nor a copy and another project) share a project name, a MAC
address, a VXLAN network identifier, an address on an interface outside the copy's own
switches, a named bridge, a VNC display or a forwarded host port.

The class is recorded in ``<projects>/.classes/<name>.json`` (copies, projects, owners,
variables). The command line is :mod:`mln_core.cli_class`; the guide is docs/classes.md.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
from dataclasses import dataclass, field

from .errors import MlnError, Pos, Problems
from .lang.parser import Document, parse_file
from .lang.tree import ESC_DOLLAR, Block
from .names import name_problem, shown

INLINE = "copies"                  # the block of a lab file that holds its table
_VAR = re.compile(r"[A-Za-z0-9_]+\Z")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_SECRET_COLUMN = re.compile(r"pass|secret|token|key", re.I)
MAX_TABLE = 10 * 2**20
#: the OUI each backend puts before the hash of project, host and interface (mln_backends.runtime)
MAC_OUI = {"uml": "fe:fd:00", "qemu": "52:54:00", "xen": "00:16:3e", "libvirt": "52:54:00"}


# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------

@dataclass
class Copy:
    """One row of the table: a copy of the lab."""

    id: str
    pos: Pos
    variables: dict[str, str]
    owner: str | None = None
    project: str | None = None          # None: the lab's own 'project $...' line names it
    service_host: str | None = None
    text: str = ""                      # its self-contained project file, once loaded
    hosts: list[str] = field(default_factory=list)
    switches: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"copy": self.id, "project": self.project, "owner": self.owner, "variables": self.variables,
                "service_host": self.service_host, "row": str(self.pos)}


@dataclass
class Table:
    source: str
    columns: list[str]
    rows: list[tuple[Pos, list[str]]]

    @property
    def id_column(self) -> str:
        return "copy" if "copy" in self.columns else self.columns[0]


def read_table(path: str) -> Table:
    """A CSV table (``,``, ``;`` or tab between the values, as the header line has them;
    ``#`` lines and empty lines are skipped)."""
    try:
        if os.path.isdir(path):
            raise MlnError(f"'{path}' is a directory, not a table file")
        with open(path, "rb") as f:
            data = f.read(MAX_TABLE + 1)
    except FileNotFoundError:
        raise MlnError(f"no such table file: {path}") from None
    except OSError as e:
        raise MlnError(f"cannot read the table {path}: {e.strerror}") from None
    if len(data) > MAX_TABLE:
        raise MlnError(f"the table is more than {MAX_TABLE // 2**20} MB: is this a table of copies?", path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise MlnError("the table is not UTF-8 text", Pos(path, line, 1)) from None
    if "\x00" in text:
        raise MlnError("the table contains a NUL byte: is this a CSV file?", path)
    lines = ["" if ln.lstrip().startswith("#") else ln for ln in text.splitlines()]
    first = next((ln for ln in lines if ln.strip()), "")
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True, strict=True)
    records, start = [], 1
    try:
        for values in reader:
            if any(v.strip() for v in values):
                records.append((Pos(path, start, 1), [v.strip() for v in values]))
            start = reader.line_num + 1
    except csv.Error as e:
        raise MlnError(f"bad CSV: {e}", Pos(path, start, 1)) from None
    if not records:
        raise MlnError(f"the table {path} is empty: write a header line (copy,group,owner,...) and a line "
                       "per copy")
    return _table(path, records)


def inline_table(block: Block, path: str) -> Table:
    """The ``copies { }`` block of a lab file: its first line the header, then one line
    per copy, values separated by spaces (``\\ `` inside a value)."""
    records = [(ln.pos or Pos(path, 1, 1), list(ln.words)) for ln in block.lines]
    if block.vars:
        var = next(iter(block.vars.values()))
        raise MlnError(f"'${var.name} = ...' in the copies block: its lines are the table's header and rows",
                       var.pos)
    if not records:
        raise MlnError("the copies block is empty: write a header line (copy group owner ...) and a line "
                       "per copy", block.pos)
    return _table(f"{path} (copies block)", records)


def _table(source: str, records: list[tuple[Pos, list[str]]]) -> Table:
    (hpos, header), rows = records[0], records[1:]
    seen = set()
    for col in header:
        if not col:
            raise MlnError("an empty column name in the header", hpos)
        if not _VAR.match(col):
            raise MlnError(f"bad column name '{shown(col)}': each column is a variable, so use letters, "
                           "digits and '_'", hpos)
        if col in seen:
            raise MlnError(f"column '{col}' twice in the header", hpos)
        seen.add(col)
    if not rows:
        raise MlnError("the table has a header line but no copies", hpos)
    for pos, values in rows:
        if len(values) != len(header):
            raise MlnError(f"{len(values)} value{'s' * (len(values) != 1)}, but the header has {len(header)} "
                           f"columns ({', '.join(header)})", pos)
    return Table(source, header, rows)


def copies_of(table: Table, class_name: str, named_by_lab: bool) -> list[Copy]:
    """The copies of ``table``: ids, project names, variables checked (an error names the row)."""
    key = table.id_column
    out: list[Copy] = []
    first: dict[str, Pos] = {}
    for pos, values in table.rows:
        row = dict(zip(table.columns, values))
        cid = row[key]
        if not cid:
            raise MlnError(f"the copy id (column '{key}') is empty", pos)
        if not _ID.match(cid):
            raise MlnError(f"bad copy id '{shown(cid)}' (column '{key}'): use letters, digits, '.', '-' and "
                           "'_' (starting with a letter or digit)", pos)
        if cid in first:
            raise MlnError(f"copy id '{cid}' twice: also on line {first[cid].line}", pos)
        first[cid] = pos
        variables = {"copy": cid}
        variables.update({c: " ".join(v.split()) for c, v in row.items() if c != "project" and v})
        project = row.get("project") or (None if named_by_lab else f"{class_name}-{cid}")
        if project is not None and name_problem("project", project):
            raise MlnError(f"copy {cid}: {name_problem('project', project)}", pos)
        out.append(Copy(cid, pos, variables, row.get("owner") or None, project,
                        row.get("service_host") or None))
    return out


# ---------------------------------------------------------------------------------------
# the lab, read once per copy
# ---------------------------------------------------------------------------------------

def parse_lab(path: str, edit=None, finish: bool = True) -> Document:
    """The lab file as ``parse_file`` reads it, with ``edit`` (see there)."""
    return parse_file(path, edit=edit, finish=finish)


def _edit(copy: Copy, set_project: bool):
    def edit(root: Block) -> None:
        root.blocks.pop(INLINE, None)
        g = root.blocks.get("global")
        if g is None:                                  # a lab meant to be included: the copy's own global
            g = Block("global", None, copy.pos, "global")
            root.blocks = {"global": g, **root.blocks}
        if set_project:
            g.set("project", copy.project, copy.pos, "global")
        for name, value in copy.variables.items():            # '\$': a dollar, as in the lab
            g.add_var(name, value.replace("\\$", ESC_DOLLAR), copy.pos, "global")
        if copy.service_host:
            for h in root.named("host").values():
                if not h.has("service_host") and not h.has("location"):
                    h.add_line(["service_host", copy.service_host], copy.pos, h.origin)
    return edit


@dataclass
class ClassPlan:
    """A class to check or build: its name, lab file, table and copies."""

    name: str
    lab: str                            # absolute (recorded)
    table: str | None
    copies: list[Copy]
    named_by_lab: bool = False
    notes: list[str] = field(default_factory=list)
    path: str = ""                      # the lab as given (problems name it so)

    def record(self) -> dict:
        return {"class": self.name, "lab": self.lab, "table": self.table,
                "copies": [c.record() for c in self.copies]}


def plan(lab: str, table: str | None = None, name: str | None = None) -> ClassPlan:
    """Read the lab and its table (``table``, else the lab's ``copies { }`` block)."""
    if not os.path.exists(lab):
        raise MlnError(f"no such project file: {lab}")
    doc = parse_lab(lab, finish=False)
    inline = doc.root.blocks.get(INLINE)
    notes = []
    if table is not None:
        tbl = read_table(table)
        if inline is not None:
            notes.append(f"the copies block of {lab} is ignored: the table is {table}")
    elif inline is not None:
        tbl = inline_table(inline, lab)
    else:
        raise MlnError(f"{lab}: no table of copies: give one with -t TABLE.csv, or write a '{INLINE} {{ }}' "
                       "block in the lab file")
    g = doc.global_block
    line = g.line("project") if g is not None else None
    written = line.value if line is not None else None
    named_by_lab = bool(written and "$" in written and "project" not in tbl.columns)
    class_name = name or (written if written and "$" not in written else None)
    if not class_name:
        why = "has no 'project' line" if not written else f"names its project '{written}' with variables"
        raise MlnError(f"{lab} {why}: give the class a name with --name NAME")
    problem = name_problem("project", class_name)
    if problem:
        raise MlnError(f"class name: {problem}")
    copies = copies_of(tbl, class_name, named_by_lab)
    return ClassPlan(class_name, os.path.abspath(lab), os.path.abspath(table) if table else None, copies,
                     named_by_lab, notes, lab)


def load_copy(ctx, lab: str, copy: Copy, named_by_lab: bool):
    """The copy's project read from the lab (a :class:`mln_core.project.Loaded`); sets
    ``copy.text``, its self-contained project file, and ``copy.project``."""
    from .lang.writer import write_tree
    from .project import build_model, no_gc
    with no_gc():
        doc = parse_lab(lab, _edit(copy, not named_by_lab))
        copy.text = write_tree(doc.root)
        ctx.pm.hook.mln_post_parse(doc=doc, ctx=ctx)
        loaded = build_model(doc, ctx)
    if loaded.project is not None and loaded.project.name:
        copy.project = loaded.project.name
        copy.hosts, copy.switches = list(loaded.project.hosts), list(loaded.project.switches)
    return loaded


# ---------------------------------------------------------------------------------------
# check: every copy reads, and no two copies collide
# ---------------------------------------------------------------------------------------

@dataclass
class Finding:
    severity: str
    message: str
    where: object = None
    copies: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        ids, tag = self.copies, ""
        if ids:
            more = f" and {len(ids) - 3} more" if len(ids) > 4 else ""
            shown_ids = ", ".join(ids[:3] if more else ids)
            tag = f" [copy {ids[0]}]" if len(ids) == 1 else f" [copies {shown_ids}{more}]"
        return f"{prefix}{self.severity}: {self.message}{tag}"


class Findings:
    """Problems of all copies; the same problem in many copies is one finding."""

    def __init__(self):
        self.items: dict[tuple, Finding] = {}

    def add(self, severity: str, message: str, where=None, copy: str | None = None, key=None) -> None:
        """``key``: what makes two problems the same (default: severity, message, place)."""
        key = key or (severity, message, str(where or ""))
        f = self.items.setdefault(key, Finding(severity, message, where))
        if copy is not None and copy not in f.copies:
            f.copies.append(copy)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.items.values() if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.items.values() if f.severity == "warning"]


def derived_mac(hypervisor: str, project: str, host: str, iface: str) -> str | None:
    """The MAC a backend gives an interface without ``mac`` (mln_backends.runtime.mac_address)."""
    oui = MAC_OUI.get(hypervisor)
    if oui is None:
        return None
    h = hashlib.sha256("\0".join((project, host, iface)).encode()).hexdigest()[:6]
    return f"{oui}:{h[0:2]}:{h[2:4]}:{h[4:6]}"


def check(engine, plan: ClassPlan, replace: bool | None = None, members=frozenset(), chosen=None) -> Findings:
    """Every copy read and validated, then compared with the others and with the projects
    of the projects directory. ``replace``: False for a build (a copy built before is an
    error), True for ``build -r`` (a running copy is an error), None for ``check``;
    ``members``: the projects recorded for this class (any other project is not ours);
    ``chosen``: the ids of the copies to build (default: all)."""
    found = Findings()
    loaded = [(copy, _load_checked(engine.ctx, plan, copy, found)) for copy in plan.copies]
    _check_projects(engine, plan, found, replace, members, chosen)
    names = [c.project for c in plan.copies]
    claims = Claims()
    for copy, (project, lay) in loaded:
        if project is not None:
            _claim_resources(claims, copy, project, lay, twin=names.count(project.name) > 1)
    claims.report(found)
    _check_vnis(engine.store, claims, members, found)
    return found


def _check_vnis(store, claims: Claims, members, found: Findings) -> None:
    """A VXLAN network of a copy that a switch of another project of this server has."""
    from .store import Store
    wanted = {key[1]: e for key, e in claims.taken.items() if key[0] == "vni"}
    for other in (store.list() if wanted else []):
        if other in members:
            continue
        with contextlib.suppress(MlnError):
            for name, data in Store.read_state(store.project_dir(other)).get("switches", {}).items():
                e = wanted.get((data.get("span") or {}).get("vni"))
                if e is not None:
                    cid, what = next(iter(e["by"].items()))
                    found.add("error", f"VXLAN network {data['span']['vni']}: copy {cid} ({what}) would have "
                                       f"the one of switch {name} of project {other}; {e['hint']}", e["where"])


def _load_checked(ctx, plan: ClassPlan, copy: Copy, found: Findings):
    """(project, layout) of a copy that reads without errors, else (None, None); its
    problems are added to ``found``."""
    from .doctor import check_runnable
    from .servers import aliases_of, check_servers, here, layout
    try:
        loaded = load_copy(ctx, plan.path, copy, plan.named_by_lab)
    except MlnError as e:
        found.add("error", e.message, e.where, copy.id)
        return None, None
    for p in loaded.problems.items:
        found.add(p.severity, p.message, p.where, copy.id)
    project = loaded.project
    if project is None or loaded.problems.errors:
        return None, None
    extra = Problems()
    check_runnable(project, ctx, extra)
    for p in extra.items:              # about this machine, not the copy: once, as the first copy has it
        if "mln.conf does not name" not in p.message:        # check_servers: an error
            found.add(p.severity, p.message, p.where, copy.id, ("runnable", p.severity, str(p.where or "")))
    me = here(ctx.config)
    try:
        lay = check_servers(project, ctx.config)
    except MlnError as e:
        found.add("error", e.message, e.where, copy.id)
        lay = layout(project, me, aliases_of(ctx.config))
    for h in project.hosts.values():
        if lay.hosts[h.name] == me:
            try:
                ctx.templates.resolve(h.template, f"host {h.name}")
            except MlnError as e:
                found.add("error", e.message, h.tree.pos if h.tree is not None else None, copy.id)
    return project, lay


class Claims:
    """What each copy takes that must be its own; :meth:`report`: an error for every value
    that several copies take, naming them (the first few), the host and interface."""

    def __init__(self):
        self.taken: dict[tuple, dict] = {}

    def __call__(self, kind: str, key: tuple, copy: Copy, what: str, where, hint: str) -> None:
        entry = self.taken.setdefault(key, {"kind": kind, "hint": hint, "where": where or copy.pos, "by": {}})
        entry["by"].setdefault(copy.id, what)

    def report(self, found: Findings) -> None:
        for key, e in self.taken.items():
            by = [f"copy {cid} ({what})" for cid, what in e["by"].items()]
            if len(by) < 2:
                continue
            head, last = (by[:3], f"{len(by) - 3} more copies") if len(by) > 4 else (by[:-1], by[-1])
            who = f"{', '.join(head)} and {last} would {'both' if len(by) == 2 else 'all'}"
            found.add("error", f"{e['kind']} {key[-1]}: {who} have it; {e['hint']}", e["where"])


def _claim_resources(claim: Claims, copy: Copy, project, lay, twin: bool) -> None:
    """MACs, outside addresses, VNC displays, forwarded ports, bridges and VXLAN networks
    of one copy (``twin``: its project name is another copy's too, an error already)."""
    from .servers import vni
    for h in project.hosts.values():
        server, tree = lay.hosts[h.name], h.tree
        display = tree.get("vncdisplay") if tree is not None else None
        if display:
            claim("VNC display", ("vnc", server, display), copy, f"host {h.name}",
                  tree.line("vncdisplay").pos, "give each copy its own (a column of the table)")
        for i in h.interfaces:
            what = f"host {h.name} {i.name}"
            mac = i.mac or (None if twin else derived_mac(h.hypervisor, project.name, h.name, i.name))
            if mac:
                claim("MAC address", ("mac", mac), copy, what, i.tree.line("mac").pos if i.mac else None,
                      "a 'mac' line gives every copy the same one: use a variable, or no 'mac' line")
            outside = not i.switch or i.switch not in project.switches or bool(i.bridge)
            if outside and i.address and i.address != "dhcp":
                claim("address", ("address", i.address), copy, what, i.tree.line("address").pos,
                      "an interface outside the copy's own switches needs an address of its own "
                      "(a column of the table)")
            for rule in (i.tree.get("hostfwd") or "").replace(",", " ").split():
                outer = rule.split("-", 1)[0].split(":")
                if len(outer) >= 2 and outer[-1]:
                    claim("forwarded port", ("hostfwd", server, outer[0], outer[-1]), copy, what,
                          i.tree.line("hostfwd").pos, "give each copy its own port (a column of the table)")
    for s in project.switches.values():
        bridge = s.tree.get("bridge") if s.tree is not None else None
        if bridge:
            claim("bridge", ("bridge", lay.switches[s.name][0], bridge), copy, f"switch {s.name}",
                  s.tree.line("bridge").pos, "leave 'bridge' out, or use a variable")
        if len(lay.switches[s.name]) > 1 and not twin:
            claim("VXLAN network", ("vni", vni(project.name, s.name)), copy, f"switch {s.name}", None,
                  "rename the switch (a variable in its name)")


def _check_projects(engine, plan: ClassPlan, found: Findings, replace, members, chosen) -> None:
    seen: dict[str, str] = {}
    for copy in plan.copies:
        if not copy.project:
            continue
        if copy.project in seen:
            found.add("error", f"copies {seen[copy.project]} and {copy.id} would both be project "
                               f"'{copy.project}'", copy.pos)
            continue
        seen[copy.project] = copy.id
        if not engine.store.exists(copy.project):
            continue
        if copy.project not in members:
            from .classrecord import Classes
            owner = next((c for c in Classes(engine.store).names() if c != plan.name and copy.project in
                          Classes(engine.store).projects(c)), None)
            found.add("error", f"project '{copy.project}' exists and is not a copy of class {plan.name}"
                               f"{f' (it is a copy of class {owner})' if owner else ''}: name the copy "
                               "otherwise, or remove that project", copy.pos, copy.id)
        elif chosen is not None and copy.id not in chosen:
            continue
        elif replace is False:
            found.add("error", f"project '{copy.project}' was built before: add -r to build it again (its "
                               "disks are made anew)", copy.pos, copy.id)
        elif replace:
            from . import remote
            try:
                up = [r["name"] for r in remote.status(engine, copy.project) if r["state"] == "up"]
            except MlnError as e:
                found.add("error", str(e), copy.pos, copy.id)
                continue
            if up:
                found.add("error", f"project '{copy.project}' is running ({', '.join(up)}): stop it first "
                                   f"(mln class stop {plan.name} {copy.id})", copy.pos, copy.id)
