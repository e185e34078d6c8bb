"""``mln export`` and ``mln import``: a project, its state and its disks as one archive
(see :mod:`mln_core.export`).

Registered on the ``cli`` group by the import at the bottom of :mod:`mln_core.cli`.
"""
from __future__ import annotations

import click

from . import cli as _CLI


@click.command("export")
@click.option("-p", "project", required=True, metavar="PROJECT", help="The project to export.")
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The archive to write: FILE.tar, FILE.tar.gz (.tgz) or FILE.tar.zst.")
@click.option("-s", "stop_first", is_flag=True, help="Stop the project's running hosts first.")
@click.option("-f", "force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="Print no progress lines.")
@click.pass_context
def export(click_ctx, project, output, stop_first, force, quiet):
    """Write a stopped project to one archive: its file, version, state and every disk.

    The compression follows FILE's name. Each member has its SHA-256 in the archive's
    manifest. A project with running hosts is refused (a running guest's disk is not
    consistent) unless -s stops them first. Restore it with: mln import -i FILE.
    """
    from .export import export_project
    engine = _CLI._engine(click_ctx)
    _CLI.set_quiet(engine.ctx, quiet)
    export_project(engine, project, output, stop_first=stop_first, force=force)


@click.command("import")
@click.option("-i", "archive", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="An archive written by mln export.")
@click.option("-p", "project", metavar="NEWNAME", help="Import under this name (default: the archive's).")
@click.option("-q", "--quiet", is_flag=True, help="Print no progress lines.")
@click.pass_context
def import_(click_ctx, archive, project, quiet):
    """Restore a project from an archive of mln export, on this or another machine.

    Every member is checked against its SHA-256 before anything is placed; an existing
    project of that name is never replaced. Then: mln start -p PROJECT.
    """
    from .export import import_archive
    engine = _CLI._engine(click_ctx)
    _CLI.set_quiet(engine.ctx, quiet)
    import_archive(engine, archive, project)


_CLI.cli.add_command(export)
_CLI.cli.add_command(import_)
