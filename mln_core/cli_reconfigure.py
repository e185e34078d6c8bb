"""``mln reconfigure`` / ``mln rc``, and the ``--strict`` option of ``build``, ``upgrade``
and ``reconfigure`` (warnings become errors; for CI)."""
from __future__ import annotations

import click

from . import completion as _completion
from .cli import _engine, _jobs, _quiet, cli, get_ctx, set_quiet

STRICT_HELP = ("Treat warnings as errors: a plugin that would skip something (a user the template "
               "lacks, a template without Apache...) fails the command, and nothing of it is kept.")


def _set_strict(click_ctx, _param, value):
    if value:
        get_ctx(click_ctx).options["strict"] = True
    return value


def strict_option() -> click.Option:
    return click.Option(["--strict"], is_flag=True, expose_value=False, callback=_set_strict, help=STRICT_HELP)


@cli.command()
@click.option("-p", "project", required=True, metavar="PROJECT", help="Project name.",
              shell_complete=_completion.projects)
@click.option("-h", "hosts", metavar="H1:H2", default="",
              help="Only these hosts, separated by ':' (default: every host of the project).")
@click.option("-B", "rebuild", is_flag=True,
              help="Rebuild the filesystems: make the disks afresh from their templates (what the guests "
                   "wrote is lost) instead of individualizing their present disks again.")
@click.option("-S", "start", is_flag=True,
              help="Start the reconfigured hosts afterwards, also those that were not running.")
@_jobs
@_quiet
@click.pass_context
def reconfigure(click_ctx, project, hosts, rebuild, start, jobs, quiet):
    """Individualize existing hosts again from the stored project file.

    Running hosts among them are stopped first and started again afterwards; the others
    are left alone. An error leaves every disk as it was.
    """
    from .reconfigure import reconfigure as run
    engine = _engine(click_ctx, jobs)
    set_quiet(engine.ctx, quiet)
    run(engine, project, [h for h in hosts.split(":") if h] or None, rebuild=rebuild, start=start)


reconfigure.params.append(strict_option())
cli.add_command(reconfigure, "rc")
for _name in ("build", "upgrade"):
    if _name in cli.commands:
        cli.commands[_name].params.append(strict_option())
