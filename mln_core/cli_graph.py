"""``mln graph``: draw a project's network (hosts, switches, links, service hosts).

The drawing itself is :mod:`mln_core.graph` (pure); this module reads the project,
runs Graphviz's ``dot`` for SVG and writes the result. Registered on the ``cli`` group by
the import at the bottom of :mod:`mln_core.cli`.
"""
from __future__ import annotations

import shutil

import click

from . import cli as _CLI
from .errors import MlnError

FORMATS = ("dot", "mermaid", "svg", "json")


class GraphUsageError(MlnError):
    """A wrong command line: one line, exit status 2 (as click's usage errors)."""

    exit_code = 2


class _Format(click.Choice):
    """click.Choice whose refusal is one ``mln: error: ...`` line, not a usage screen."""

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        raise GraphUsageError(f"unknown format '{value}': use {', '.join(self.choices)}")


def render_svg(dot_text: str) -> str:
    """SVG from DOT with Graphviz's ``dot -Tsvg``; a clear error when it is not installed."""
    import subprocess       # here, not at the top: every mln command imports this module
    exe = shutil.which("dot")
    if exe is None:
        raise MlnError("--format svg needs Graphviz's 'dot' program, which is not installed "
                       "(apt-get install graphviz); --format dot prints the graph to render elsewhere")
    try:
        r = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MlnError(f"dot -Tsvg failed: {e}") from None
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[0]
        raise MlnError(f"dot -Tsvg failed: {first}")
    return r.stdout


def _project(ctx, file: str | None, project: str | None):
    from .project import load_project
    if project is not None:
        from .store import Store
        store = Store(ctx.config.projects_dir)
        store.require(project)
        return load_project(store.source_path(project), ctx).project
    return load_project(_CLI._project_file(file), ctx).project


@click.command("graph")
@click.option("-f", "file", metavar="FILE", help="A project file.")
@click.option("-p", "project", metavar="PROJECT", help="A built project (its stored copy of the file).")
@click.option("--format", "fmt", type=_Format(FORMATS), default="dot", show_default=True,
              help="dot (Graphviz), mermaid, svg (needs Graphviz's dot) or json.")
@click.option("-o", "output", metavar="FILE", help="Write to FILE instead of standard output.")
@click.pass_context
def graph(click_ctx, file, project, fmt, output):
    """Draw a project's network: hosts, switches, one link per interface.

    Give a project file (-f FILE) or a built project (-p PROJECT). Hosts show their
    hypervisor and memory, links their interface and address; each service host is a
    cluster. Formats: dot (Graphviz, the default), mermaid, svg (rendered with
    Graphviz's dot) and json (every host, switch and link).
    """
    from .graph import network, to_dot, to_mermaid
    if file is not None and project is not None:
        raise GraphUsageError("give a project file (-f FILE) or a built project (-p PROJECT), not both")
    if file is None and project is None:
        raise GraphUsageError("give a project file (-f FILE) or a built project (-p PROJECT)")
    data = network(_project(_CLI.get_ctx(click_ctx), file, project))
    if fmt == "json":
        import json
        text = json.dumps(data, indent=2) + "\n"
    elif fmt == "mermaid":
        text = to_mermaid(data)
    elif fmt == "svg":
        text = render_svg(to_dot(data))
    else:
        text = to_dot(data)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise MlnError(f"cannot write {output}: {e.strerror}") from None


_CLI.cli.add_command(graph)
