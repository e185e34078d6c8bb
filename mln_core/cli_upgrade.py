"""``mln upgrade``: apply an edited project file to a built, maybe running, project."""
from __future__ import annotations

import sys

import click

from .cli import _engine, _jobs, _project_file, cli


@cli.command()
@click.option("-f", "file", required=True, type=click.Path(dir_okay=False), help="The edited project file.")
@click.option("-p", "project", metavar="PROJECT", help="The project to upgrade (default: the one the file names; "
                                                      "an error if the file names another).")
@click.option("-s", "simulate", is_flag=True, help="Only print the plan; change nothing.")
@click.option("-S", "start_new", is_flag=True, help="Start new hosts even if the project is not running.")
@click.option("-r", "yes", is_flag=True, help="Carry out the plan without asking.")
@click.option("-l", "live", metavar="H1:H2", default="",
              help="Treat these hosts as live: regenerate their configuration, leave their disks and "
                   "running guests alone.")
@click.option("-k", "keep", is_flag=True, help="Keep the disks of removed hosts (in <project>/kept/).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="How to print the plan.")
@_jobs
@click.pass_context
def upgrade(click_ctx, file, project, simulate, start_new, yes, live, keep, fmt, jobs):
    """Change a built project, running or not, to match an edited project file.

    mln compares the file with the stored project, prints the plan (what is added,
    removed, rebuilt, restarted, changed in the running guest, left alone, and why) and,
    once confirmed (or with -r), carries it out: all of it, or nothing.
    """
    from .remote_upgrade import upgrade as run_upgrade
    engine = _engine(click_ctx, jobs)
    path = _project_file(file)

    def show(plan):
        if fmt == "json":
            import json
            click.echo(json.dumps(plan.as_json(), indent=2))
        else:
            click.echo(plan.render_text(), nl=False)

    def confirm(question: str) -> bool:
        return click.confirm(question, default=False, err=True)

    run_upgrade(engine, path, simulate=simulate, start_new=start_new, yes=yes,
                live_hosts={h for h in live.split(":") if h}, keep=keep,
                confirm=confirm if sys.stdin.isatty() and fmt == "text" else None, show=show,
                project=project)
