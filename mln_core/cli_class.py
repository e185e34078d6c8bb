"""``mln class``: N copies of one lab from one project file and a table (docs/classes.md).

Registered on the ``cli`` group by the import at the bottom of :mod:`mln_core.cli`; the
work is in :mod:`mln_core.fanout`.
"""
from __future__ import annotations

import os
import sys
import time

import click

from .cli import _confirm, _engine, _quiet, cli, get_ctx, set_quiet
from .errors import MlnError, Pos
from .private import write_file


class _Later:
    """A module imported when first used: every ``mln`` command imports this one (for its
    commands' help), few run a class command."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        import importlib
        return getattr(importlib.import_module(self._name), attr)


fanout, classrecord = _Later("mln_core.fanout"), _Later("mln_core.classrecord")

_copies_jobs = click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
                            metavar="N", help="How many copies to work on at once (each in its own mln "
                                              "process).")
_patterns = click.argument("patterns", nargs=-1, metavar="[COPY]...")
_name = click.argument("name", metavar="CLASS")
_format = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                       show_default=True)


@cli.group("class")
def klass():
    """Copies of one lab for a class: one project file, a table with a row per copy.

    mln class check -f lab.mln -t groups.csv; mln class build -f lab.mln -t groups.csv;
    mln class start|stop|status|remove CLASS [COPY]...; mln class reset CLASS COPY.
    COPY is a copy id or a shell pattern of ids (g0*); without one, every copy. See
    docs/classes.md.
    """


def _lab_options(f):
    f = click.option("--name", metavar="CLASS", help="The class name (default: the lab's project name).")(f)
    f = click.option("-t", "table", type=click.Path(dir_okay=True), metavar="TABLE",
                     help="The table of copies, CSV with a header line (default: the lab's copies block).")(f)
    return click.option("-f", "file", required=True, type=click.Path(dir_okay=True), metavar="LAB",
                         help="The lab's project file.")(f)


def _child_args(click_ctx) -> list[str]:
    """The global options an ``mln`` process started for one copy needs."""
    obj = click_ctx.find_root().obj
    cfg = get_ctx(click_ctx).config
    args = ["-P", cfg.projects_dir, "-T", cfg.templates_dir, "-F", cfg.files_dir]
    for name in sorted(obj.get("disabled") or ()):
        args += ["--no-plugin", name]
    return (["--verbose"] if obj.get("verbose") else []) + args


def _print_findings(findings: fanout.Findings) -> tuple[int, int]:
    def key(f):
        w = f.where
        return (w.file, w.line, w.col) if isinstance(w, Pos) else (str(w or ""), 0, 0)
    for f in sorted(findings.items.values(), key=key):
        click.echo(str(f), err=True)
    return len(findings.errors), len(findings.warnings)


def _counted(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _copies(n: int) -> str:
    return _counted(n, "copy", "copies")


def _failed(verb: str, failed: list[dict], total: int) -> None:
    if failed:
        raise MlnError(f"{verb} failed for {len(failed)} of {_copies(total)}: "
                       f"{', '.join(c['copy'] for c in failed)}")


def _checked(engine, file, table, name, replace, patterns):
    """The plan of the class, checked (problems printed); with the record's projects."""
    p = fanout.plan(file, table, name)
    for note in p.notes:
        click.echo(f"mln: warning: {note}", err=True)
    old = classrecord.Classes(engine.store).read(p.name)
    members = {c.get("project") for c in (old or {}).get("copies", [])}
    chosen = {c["copy"] for c in classrecord.select(p.record(), patterns)} if patterns else None
    findings = fanout.check(engine, p, replace, members, chosen)
    return p, old, chosen, findings


def _listing(p: fanout.ClassPlan, chosen=None) -> None:
    def names(items: list[str]) -> str:
        text = ", ".join(items)
        return text if len(text) <= 40 else text[:37] + "..."
    _table(("COPY", "PROJECT", "OWNER", "HOSTS", "SWITCHES"),
           [(c.id, c.project or "?", c.owner or "-", names(c.hosts) or "-", names(c.switches) or "-")
            for c in p.copies if chosen is None or c.id in chosen])


def _table(head: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------------------------------
# carrying a command out over many copies
# ---------------------------------------------------------------------------------------

def _header(copy: dict) -> str:
    owner = f", {copy['owner']}" if copy.get("owner") else ""
    return f"+---> project {copy['project']} (copy {copy['copy']}{owner})"


def _each(copies: list[dict], work, log, jobs: int = 1, command=None) -> list[dict]:
    """``work(copy)`` for every copy, one after another; with ``jobs`` > 1 and ``command``
    (copy -> the arguments of an ``mln`` command), up to ``jobs`` ``mln`` processes at
    once, each one's output printed when it is done. A failure does not stop the others;
    the copies that failed are returned."""
    failed = []
    if jobs <= 1 or command is None or len(copies) == 1:
        for c in copies:
            log(_header(c))
            try:
                work(c)
            except MlnError as e:
                log(f"mln: error: {e}")
                failed.append(c)
        return failed
    import subprocess
    import tempfile
    pending, running = list(copies), []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                c = pending.pop(0)
                out = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
                p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", *command(c)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
                running.append((p, c, out))
            time.sleep(0.05)
            for item in [r for r in running if r[0].poll() is not None]:
                p, c, out = item
                running.remove(item)
                out.seek(0)
                log(_header(c))
                for line in out.read().splitlines():
                    log(line)
                out.close()
                if p.returncode != 0:
                    failed.append(c)
    finally:            # interrupted: the copies under way stop as an interrupted mln does (undoing)
        for p, c, out in running:
            p.send_signal(2)        # SIGINT
        for p, c, out in running:
            p.wait()
            out.seek(0)
            log(_header(c))
            for line in out.read().splitlines():
                log(line)
            out.close()
    return [c for c in copies if c in failed]


def _copy_state(engine, copy: dict) -> dict:
    """A copy's row of ``mln class status``: its hosts' and switches' states and in all
    ``up``, ``down``, ``partial``, ``not built``, ``busy`` or ``unreadable``."""
    from . import remote
    from .store import ProjectBusy
    row = {"copy": copy["copy"], "project": copy["project"], "owner": copy.get("owner"), "state": "",
           "hosts": {}, "switches": {}, "detail": ""}
    if not engine.store.exists(copy["project"]):
        row["state"] = "not built"
        return row
    try:
        rows = remote.status(engine, copy["project"])
    except MlnError as e:
        row["state"], row["detail"] = ("busy" if isinstance(e, ProjectBusy) else "unreadable"), str(e)
        return row
    for r in rows:
        if r["kind"] in ("host", "switch"):
            row["hosts" if r["kind"] == "host" else "switches"][r["name"]] = r["state"]
    up = sum(1 for s in row["hosts"].values() if s == "up")
    row["state"] = "up" if row["hosts"] and up == len(row["hosts"]) else "down" if up == 0 else "partial"
    return row


def _write_sources(directory: str, copies: list[fanout.Copy]) -> dict[str, str]:
    paths = {}
    for c in copies:
        paths[c.id] = os.path.join(directory, f"{c.project}.mln")
        write_file(paths[c.id], c.text)
    return paths


@klass.command("check")
@_lab_options
@click.pass_context
def check(click_ctx, file, table, name):
    """Check a class before it is built: every copy reads, and no two collide.

    Prints the copies (stdout), every error and warning (stderr; a problem many copies
    share once, with the copies named) and exits 1 if there are errors. Copies collide
    when they share a project name, a MAC address, a VXLAN network, an address on an
    interface outside the copy's own switches, a bridge, a VNC display or a forwarded port.
    """
    engine = _engine(click_ctx)
    p, _, _, findings = _checked(engine, file, table, name, None, ())
    _listing(p)
    errors, warnings = _print_findings(findings)
    click.echo(f"{file} with {table or 'its copies block'}: class {p.name}, "
               f"{_copies(len(p.copies))}, {_counted(errors, 'error')}, "
               f"{_counted(warnings, 'warning')}", err=True)
    sys.exit(1 if errors else 0)


@klass.command("build")
@_lab_options
@click.option("-r", "replace", is_flag=True, help="Build copies that were built before again (new disks).")
@click.option("-s", "simulate", is_flag=True, help="Only check the class and list its copies.")
@_copies_jobs
@_quiet
@_patterns
@click.pass_context
def build(click_ctx, file, table, name, replace, simulate, jobs, quiet, patterns):
    """Build every copy of a class (or the copies named), after checking them all.

    Nothing is built when the check finds an error. A copy that fails does not stop the
    others; they are named at the end (exit code 1).
    """
    engine = _engine(click_ctx)
    set_quiet(engine.ctx, quiet)
    p, old, chosen, findings = _checked(engine, file, table, name,
                                        None if simulate else replace, patterns)
    errors, warnings = _print_findings(findings)
    if simulate:
        _listing(p, chosen)
    if errors:
        raise MlnError(f"class {p.name}: {_counted(errors, 'error')}; nothing was built")
    if simulate:
        return
    todo = [c for c in p.copies if chosen is None or c.id in chosen]
    classes = classrecord.Classes(engine.store)
    with classes.lock(p.name):
        record, kept = classrecord.merged(classes.read(p.name) or old, p, todo)
        record["secret_variables"] = classrecord.secret_variables(p.lab, engine.ctx.pm.keywords)
        classes.write(p.name, record)
        if kept:
            click.echo(f"mln: warning: class {p.name}: copies {', '.join(kept)} are not in the table any "
                       f"more; they are left as they are (mln class remove {p.name} {' '.join(kept)})",
                       err=True)
        import tempfile

        from . import remote
        base = _child_args(click_ctx)
        with engine.store.private_tmp(), tempfile.TemporaryDirectory(prefix=f"class-{p.name}-") as tmp:
            paths = _write_sources(tmp, todo)
            failed = _each([c.record() for c in todo],
                           lambda c: remote.build(engine, paths[c["copy"]], replace=replace, simulate=False,
                                                  confirm=None),
                           engine.ctx.log, jobs,
                           lambda c: base + ["build", "-f", paths[c["copy"]]] + ["-r"] * replace
                           + ["-q"] * quiet)
    _failed("build", failed, len(todo))
    engine.ctx.log(f"+---> CLASS {p.name}: {len(todo)} of {len(p.copies)} copies built")


def _record(click_ctx, name, patterns):
    engine = _engine(click_ctx)
    record = classrecord.Classes(engine.store).require(name)
    return engine, record, classrecord.select(record, patterns)


@klass.command("start")
@_name
@_patterns
@_copies_jobs
@_quiet
@click.pass_context
def start(click_ctx, name, patterns, jobs, quiet):
    """Start the copies of a class (every copy, or those named)."""
    from . import remote
    engine, record, copies = _record(click_ctx, name, patterns)
    set_quiet(engine.ctx, quiet)
    failed = _each(copies, lambda c: remote.start(engine, c["project"]), engine.ctx.log, jobs,
                   lambda c: _child_args(click_ctx) + ["start", "-p", c["project"]] + ["-q"] * quiet)
    _failed("start", failed, len(copies))


@klass.command("stop")
@_name
@_patterns
@click.option("-H", "hard", is_flag=True, help="Hard stop: destroy the virtual machines at once.")
@click.option("-w", "wait_s", type=click.FloatRange(0), default=60, show_default=True, metavar="SEC",
              help="Wait this long for guests to shut down, then destroy them.")
@_copies_jobs
@_quiet
@click.pass_context
def stop(click_ctx, name, patterns, hard, wait_s, jobs, quiet):
    """Stop the copies of a class (every copy, or those named)."""
    from . import remote
    engine, record, copies = _record(click_ctx, name, patterns)
    set_quiet(engine.ctx, quiet)
    failed = _each(copies, lambda c: remote.stop(engine, c["project"], hard=hard, wait_s=wait_s),
                   engine.ctx.log, jobs,
                   lambda c: _child_args(click_ctx) + ["stop", "-p", c["project"], "-w", f"{wait_s:g}"]
                   + ["-H"] * hard + ["-q"] * quiet)
    _failed("stop", failed, len(copies))


@klass.command("status")
@_name
@_patterns
@_format
@click.pass_context
def status(click_ctx, name, patterns, fmt):
    """Each copy's project, owner and state (up, down, partial, not built).

    Exit status 0 if every copy listed is up, else 1.
    """
    engine, record, copies = _record(click_ctx, name, patterns)
    rows = [_copy_state(engine, c) for c in copies]
    if fmt == "json":
        import json
        click.echo(json.dumps([{"class": record["class"], **r} for r in rows], indent=2))
    else:
        _table(("COPY", "PROJECT", "OWNER", "STATE", "HOSTS UP"),
               [(r["copy"], r["project"], r["owner"] or "-",
                 r["state"] + (f" ({r['detail']})" if r["detail"] else ""),
                 f"{sum(s == 'up' for s in r['hosts'].values())}/{len(r['hosts'])}") for r in rows])
    sys.exit(0 if rows and all(r["state"] == "up" for r in rows) else 1)


@klass.command("list")
@click.argument("name", metavar="[CLASS]", required=False)
@_patterns
@_format
@click.pass_context
def list_(click_ctx, name, patterns, fmt):
    """The classes; with CLASS, its copies: project, owner, variables, version built."""
    import json
    engine = _engine(click_ctx)
    classes = classrecord.Classes(engine.store)
    if name is None:
        if patterns:
            raise click.UsageError("copies need a class: mln class list CLASS COPY...")
        records = [classes.require(n) for n in classes.names()]
        data = [{"class": r["class"], "copies": len(r["copies"]), "lab": r.get("lab"),
                 "table": r.get("table"), "built": r.get("built")} for r in records]
        if fmt == "json":
            click.echo(json.dumps(data, indent=2))
        elif data:
            _table(("CLASS", "COPIES", "LAB", "TABLE"),
                   [(d["class"], d["copies"], d["lab"] or "-", d["table"] or "(copies block)") for d in data])
        return
    record = classes.require(name)
    data = []
    for c in classrecord.select(record, patterns):
        built = engine.store.exists(c["project"])
        data.append({"copy": c["copy"], "project": c["project"], "owner": c.get("owner"),
                     "variables": classrecord.shown_variables(c.get("variables") or {},
                                                                 record.get("secret_variables", ())),
                     "service_host": c.get("service_host"), "built": built,
                     "version": engine.store.version(c["project"]) if built else 0})
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    _table(("COPY", "PROJECT", "OWNER", "VERSION", "VARIABLES"),
           [(d["copy"], d["project"], d["owner"] or "-", d["version"] or "not built",
             " ".join(f"{k}={v}" for k, v in d["variables"].items() if k != "copy")) for d in data])


def _sure(what: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise MlnError(f"{what}: add -f to confirm")
    if not _confirm(f"{what}?"):
        raise MlnError("nothing was done")


@klass.command("reset")
@_name
@click.argument("patterns", nargs=-1, required=True, metavar="COPY...")
@click.option("-f", "force", is_flag=True, help="Do not ask for confirmation.")
@_quiet
@click.pass_context
def reset(click_ctx, name, patterns, force, quiet):
    """Make copies as they were when built: stopped at once, new disks from the stored
    project file, started again if they ran. The other copies are not touched."""
    engine, record, copies = _record(click_ctx, name, patterns)
    set_quiet(engine.ctx, quiet)
    _sure(f"resetting {', '.join(c['copy'] for c in copies)} of class {name} replaces their disks", force)

    def work(c):
        again = classrecord.reset(engine, c["project"])
        engine.ctx.log(f"+---> copy {c['copy']}: made anew{' and started again' if again else ''}")
    _failed("reset", _each(copies, work, engine.ctx.log), len(copies))


@klass.command("remove")
@_name
@_patterns
@click.option("-f", "force", is_flag=True, help="Do not ask for confirmation.")
@_copies_jobs
@_quiet
@click.pass_context
def remove(click_ctx, name, patterns, force, jobs, quiet):
    """Delete stopped copies and their disks (every copy, or those named); the class is
    forgotten with its last copy."""
    from . import remote
    engine, record, copies = _record(click_ctx, name, patterns)
    set_quiet(engine.ctx, quiet)
    _sure(f"removing {_copies(len(copies))} of class {name} deletes their disks", force)
    classes = classrecord.Classes(engine.store)
    with classes.lock(name):
        built = [c for c in copies if engine.store.exists(c["project"])]
        failed = _each(built, lambda c: remote.remove(engine, c["project"]), engine.ctx.log, jobs,
                       lambda c: _child_args(click_ctx) + ["remove", "-f", "-p", c["project"]])
        for c in copies:
            if c not in built:
                engine.ctx.log(f"+---> copy {c['copy']}: was not built (or was removed); forgotten")
        record = classes.require(name)
        gone = {c["copy"] for c in copies if not engine.store.exists(c["project"])}
        record["copies"] = [c for c in record["copies"] if c["copy"] not in gone]
        if record["copies"]:
            classes.write(name, record)
        else:
            classes.delete(name)
            engine.ctx.log(f"+---> class {name} removed")
    _failed("remove", failed, len(built))
