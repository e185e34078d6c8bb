"""``mln diff``: compare two project files, or a built project with a file (spec 4.2, 6.6).

Exit status as diff(1): 0 when there is no difference, 1 when there are differences, 2
on an error (``mln: error: ...``, one line naming the file and line or the project).

Registered on the ``cli`` group by the import at the bottom of :mod:`mln_core.cli`.
"""
from __future__ import annotations

import sys

import click

from . import cli as _CLI
from .errors import MlnError


class DiffError(MlnError):
    """An error of ``mln diff``: exit status 2, since 1 means "the projects differ"."""

    exit_code = 2


def _load(path: str, ctx, what: str | None = None):
    """The project of ``path``; every error becomes a DiffError that names the file."""
    from .project import load_project
    try:
        return load_project(_CLI._project_file(path), ctx).project
    except MlnError as e:
        where = e.where
        if where is None and path not in e.message:
            where = what or path
        raise DiffError(e.message, where) from None


@click.command("diff")
@click.argument("files", nargs=-1, metavar="[OLD.mln NEW.mln]")
@click.option("-p", "project", metavar="PROJECT",
              help="A built project: compare its stored copy with -f FILE.")
@click.option("-f", "file", metavar="FILE", help="The new project file (with -p).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def diff(click_ctx, files, project, file, fmt):
    """Show what differs between two versions of a project, host by host.

    mln diff OLD.mln NEW.mln compares two files; mln diff -p PROJECT -f NEW.mln compares
    a built project (its stored copy) with a file. Hosts are compared with superclasses
    and variables applied; switches too; the global block is not. Exit status: 0 no
    difference, 1 differences, 2 an error.
    """
    from .diff import WHOLE_BLOCKS, as_json, differs, project_diff, render_text
    if project is not None:
        if file is None or files:
            raise click.UsageError("with -p PROJECT give the new file as -f FILE (and no other file)")
    elif file is not None or len(files) != 2:
        raise click.UsageError("give two files (mln diff OLD.mln NEW.mln) or -p PROJECT -f NEW.mln")
    ctx = _CLI.get_ctx(click_ctx)
    if project is not None:
        from .store import Store
        store = Store(ctx.config.projects_dir)
        try:
            store.require(project)
        except MlnError as e:
            raise DiffError(e.message, e.where) from None
        old = _load(store.source_path(project), ctx, f"project '{project}'")
        new = _load(file, ctx)
    else:
        old, new = (_load(f, ctx) for f in files)
    from .private import Secrets
    d = project_diff(old, new, ctx.pm.keywords.line_blocks() | WHOLE_BLOCKS, Secrets(ctx.pm.keywords))
    if fmt == "json":
        import json
        click.echo(json.dumps(as_json(d), indent=2))
    else:
        click.echo(render_text(d), nl=False)
    sys.exit(1 if differs(d) else 0)


_CLI.cli.add_command(diff)
