"""The ``mln`` command line (click). Plugins add commands with ``mln_register_commands``.

Global options ``-P DIR`` (projects), ``-T DIR`` (templates), ``-F DIR`` (files) and
``--no-plugin NAME`` may stand before or after the subcommand, as in the original.
"""
from __future__ import annotations

import os
import sys

import click

from . import completion as complete
from .config import load_config
from .context import Context
from .errors import MlnError, Pos
from . import startup

_GLOBAL_WITH_VALUE = {"-P": "--projects", "-T": "--templates", "-F": "--files",
                      "--projects": "--projects", "--templates": "--templates", "--files": "--files",
                      "--no-plugin": "--no-plugin"}


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options that follow the subcommand to the front."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        key, eq, val = a.partition("=")
        if a in _GLOBAL_WITH_VALUE and i + 1 < len(args):
            front += [_GLOBAL_WITH_VALUE[a], args[i + 1]]
            i += 2
            continue
        if eq and key in _GLOBAL_WITH_VALUE and key.startswith("--"):
            front += [key, val]
        elif len(a) > 2 and a[:2] in ("-P", "-T", "-F") and not a.startswith("--"):
            front += [_GLOBAL_WITH_VALUE[a[:2]], a[2:]]
        else:
            rest.append(a)
        i += 1
    return front + rest


class MlnGroup(click.Group):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_global_options(list(args)))

    def get_command(self, ctx, cmd_name):       # or a plugin's, if they were not loaded (startup)
        return super().get_command(ctx, cmd_name) or startup.plugin_command(self, ctx, cmd_name)


def get_ctx(click_ctx: click.Context) -> Context:
    obj = click_ctx.find_root().obj
    if obj.get("ctx") is None:
        cfg = load_config(obj["projects"], obj["templates"], obj["files"])
        obj["ctx"] = Context(config=cfg, pm=obj["pm"], verbose=obj["verbose"])
    return obj["ctx"]


@click.group(cls=MlnGroup, context_settings={"help_option_names": ["--help"]})
@click.option("-P", "--projects", metavar="DIR", help="Projects directory (overrides mln.conf).")
@click.option("-T", "--templates", metavar="DIR", help="Templates directory (overrides mln.conf).")
@click.option("-F", "--files", metavar="DIR", help="Directory of files for files {} blocks.")
@click.option("--no-plugin", "no_plugin", multiple=True, metavar="NAME",
              help="Do not load this plugin (repeatable); see also MLN_DISABLE_PLUGINS.")
@click.option("--verbose", is_flag=True, help="Print the commands mln runs.")
@click.version_option(None, "--version", package_name="mln", prog_name="mln")
@click.pass_context
def cli(click_ctx, projects, templates, files, no_plugin, verbose):
    """mln: build and run projects of virtual machines and switches from one file.

    Typical use: mln build -f project.mln; mln start -p project; mln status -p project.
    Configuration: /etc/mln/mln.conf, then ~/.mln (or the file MLN_CONFIG names).
    """
    obj = click_ctx.ensure_object(dict)
    obj.update(projects=projects, templates=templates, files=files, verbose=verbose, ctx=None)
    if obj.get("pm") is None or set(no_plugin) != obj.get("disabled", set()):
        obj["pm"] = _plugin_manager(set(no_plugin))
        obj["disabled"] = set(no_plugin)


def _plugin_manager(disabled):      # the plugins are imported when a command first needs one
    return startup.plugin_manager(disabled)


def _project_file(path: str) -> str:
    if not os.path.exists(path):
        raise MlnError(f"no such project file: {path}")
    return path


def _print_problems(problems) -> tuple[int, int]:
    def key(p):
        w = p.where
        return (w.file, w.line, w.col) if isinstance(w, Pos) else (str(w or ""), 0, 0)
    for p in sorted(problems.items, key=key):
        click.echo(str(p), err=True)
    return len(problems.errors), len(problems.warnings)


# ---------------------------------------------------------------------------------------
# parse / check / show
# ---------------------------------------------------------------------------------------

@cli.command()
@click.option("-f", "file", required=True, type=click.Path(dir_okay=False), help="Project file.")
@click.option("-S", "scalar", metavar="PATH", help="Print the value at PATH ('1' for a block).")
@click.option("-A", "array", metavar="PATH", help="Print the lines of the block at PATH.")
@click.option("-H", "subtree", metavar="PATH", help="Print the contents of the merged block at PATH.")
@click.pass_context
def parse(click_ctx, file, scalar, array, subtree):
    """Print the parsed project, or query one path with inheritance and variables applied.

    PATH looks like /host/web14/network/eth0/address, /global/project or /switch/lan.
    As in the original, a switch also answers what is filled in after parsing:
    /switch/S/hosts/H (the interface of host H on S), /switch/S/xen, /switch/S/bridge.
    Without a query the tree is printed in normalized form (includes done, comments gone).
    """
    from .lang.writer import write_block, write_tree
    from .merge import Resolved
    from .parse_fill import switch_filler
    from .private import Secrets, query_context, redact_block
    ctx = get_ctx(click_ctx)
    queries = [q for q in (scalar, array, subtree) if q is not None]
    if len(queries) > 1:
        raise click.UsageError("give only one of -S, -A and -H")
    doc = _load_doc(file, ctx, post_parse=bool(queries))
    secrets = Secrets(ctx.pm.keywords)
    if not queries:            # the whole tree: secrets shown as <secret> (-S asks for one value)
        click.echo(write_tree(redact_block(doc.root, "/", secrets)), nl=False)
        return
    resolved = Resolved(doc, line_blocks=ctx.pm.keywords.line_blocks())
    block, keyword = resolved.lookup(queries[0], switch_filler(doc, ctx))
    if block is None:
        raise MlnError(f"nothing at {queries[0]}")
    if scalar is not None:
        click.echo("1" if keyword is None else block.get(keyword))
    elif array is not None:
        if keyword is not None:
            lines = [ln for ln in block.lines if ln.words[0] == keyword]
            click.echo("\n".join(ln.value for ln in lines))
        else:
            for ln in block.lines:
                click.echo(ln.text)
    else:
        if keyword is not None:
            click.echo(f"{keyword} {block.get(keyword)}")
        else:      # the contents only, as the original: no 'host NAME {' line, no closing brace
            context, word = query_context(queries[0], secrets)
            text = write_block(redact_block(block, context, secrets, word), header=False)
            click.echo(text if text.strip() else "", nl=False)


def _load_doc(file, ctx, post_parse=True):
    from .project import load_document
    return load_document(_project_file(file), ctx, post_parse=post_parse)


@cli.command()
@click.option("-f", "file", required=True, type=click.Path(dir_okay=False), help="Project file.")
@click.pass_context
def check(click_ctx, file):
    """Report every error and warning in a project file (exit 1 if there are errors)."""
    from .errors import Problems
    from .project import build_model
    ctx = get_ctx(click_ctx)
    try:
        loaded = build_model(_load_doc(file, ctx), ctx, fragment_ok=True)
        problems = loaded.problems
        if loaded.project is not None:
            from .doctor import check_runnable
            check_runnable(loaded.project, ctx, problems)
    except MlnError as e:
        problems = Problems()
        problems.error(e.message, e.where)
    errors, warnings = _print_problems(problems)
    summary = f"{file}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    click.echo(summary, err=True)
    sys.exit(1 if errors else 0)


@cli.command()
@click.option("-f", "file", required=True, type=click.Path(dir_okay=False), help="Project file.")
@click.option("--format", "fmt", type=click.Choice(["text", "yaml", "json"]), default="text",
              show_default=True)
@click.option("--explain", is_flag=True, help="Show where each value came from.")
@click.pass_context
def show(click_ctx, file, fmt, explain):
    """Show the resolved project: every host and switch with its effective settings."""
    import json
    from .project import build_model
    from .private import Secrets
    from .show import project_to_dict, render_text
    ctx = get_ctx(click_ctx)
    loaded = build_model(_load_doc(file, ctx), ctx)
    for p in loaded.problems.warnings:
        click.echo(str(p), err=True)
    loaded.problems.raise_first_error()
    data = project_to_dict(loaded.project, explain, Secrets(ctx.pm.keywords))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        from ruamel.yaml import YAML
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(data, sys.stdout)
    else:
        click.echo(render_text(data, explain), nl=False)


# ---------------------------------------------------------------------------------------
# the lifecycle: build / start / stop / status / list / remove
# ---------------------------------------------------------------------------------------

def _engine(click_ctx, jobs=None):
    from .lifecycle import Engine
    ctx = get_ctx(click_ctx)
    if jobs:
        ctx.options["jobs"] = jobs
    return Engine(ctx)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return click.confirm(question, default=False)


def set_quiet(ctx, quiet: bool) -> None:
    """``-q``: no ``+--->`` progress lines (warnings and errors are still printed)."""
    if quiet:
        ctx.options["quiet"] = True


_quiet = click.option("-q", "--quiet", is_flag=True,
                      help="Print no progress lines (warnings and errors still).")
_jobs = click.option("-j", "--jobs", type=click.IntRange(1, 256), metavar="N",
                     help="How many hosts to work on at once (default: the number of CPUs).")


@cli.command()
@click.option("-f", "file", required=True, type=click.Path(dir_okay=False), help="Project file (.mln).")
@click.option("-r", "replace", is_flag=True, help="Replace an existing project of that name without asking.")
@click.option("-s", "simulate", is_flag=True, help="Only read the project and print the plan.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="With -s: how to print the plan.")
@_jobs
@_quiet
@click.pass_context
def build(click_ctx, file, replace, simulate, fmt, jobs, quiet):
    """Build a project: disks from templates, individualized guests, hypervisor configuration."""
    from . import remote
    engine = _engine(click_ctx, jobs)
    set_quiet(engine.ctx, quiet)
    project = remote.build(engine, _project_file(file), replace=replace, simulate=simulate, confirm=_confirm)
    if simulate:
        import json

        from .model import Project
        from .plan import make_plan
        plan = make_plan(Project(name=project.name), project, {}, engine.store.version(project.name),
                         engine.ctx)
        click.echo(json.dumps(plan.as_json(), indent=2) if fmt == "json" else plan.render_text(), nl=fmt == "json")


def _project_option(f):
    return click.option("-p", "project", required=True, metavar="PROJECT", help="Project name.",
                        shell_complete=complete.projects)(f)


def _projects(engine, project: str | None, every: bool, host: str | None) -> list[str]:
    """The projects of ``-p PROJECT`` or ``-a``."""
    if every == bool(project):
        raise click.UsageError("give -p PROJECT or -a (all projects)")
    if every and host:
        raise click.UsageError("-h needs -p PROJECT, not -a")
    return [project] if project else engine.store.list()


def _each(names: list[str], work) -> None:
    """``work(name)`` for every project; with several, a failure does not stop the others,
    and each is reported (exit code 1)."""
    if len(names) == 1:
        work(names[0])
        return
    failed = []
    for name in names:
        click.echo(f"+---> project {name}", err=True)
        try:
            work(name)
        except MlnError as e:
            click.echo(f"mln: error: {e}", err=True)
            failed.append(name)
    if failed:
        raise MlnError(f"{len(failed)} of {len(names)} projects failed: {', '.join(failed)}")


_all_option = click.option("-a", "every", is_flag=True, help="All projects (instead of -p).")


class _Wait(click.ParamType):
    """``stop -w``: seconds, or ``i`` (as in the original; also ``inf``) to wait for ever."""
    name = "seconds"

    def convert(self, value, param, ctx):
        import math
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        try:
            seconds = math.inf if text in ("i", "inf", "infinity") else float(text)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:
            self.fail(f"'{value}' is not a number of seconds (0 or more) or 'i' (wait for ever)", param, ctx)
        return seconds


_WAIT = _Wait()


@cli.command()
@click.option("-p", "project", metavar="PROJECT", help="Project name.", shell_complete=complete.projects)
@_all_option
@click.option("-h", "host", metavar="HOST", help="Start only this host.", shell_complete=complete.hosts)
@click.option("-s", "pause", type=click.FloatRange(0), default=0, metavar="SEC",
              help="Pause SEC seconds between two hosts (they then start one at a time).")
@_jobs
@_quiet
@click.pass_context
def start(click_ctx, project, every, host, pause, jobs, quiet):
    """Start a project's switches, then its hosts in boot order (or one host)."""
    from . import remote
    engine = _engine(click_ctx, jobs)
    set_quiet(engine.ctx, quiet)

    def work(name):
        if every and all(r["state"] == "up" for r in remote.status(engine, name) if r["kind"] == "host"):
            click.echo("+---> every host is running already", err=True)
        else:
            remote.start(engine, name, host, pause=pause)
    _each(_projects(engine, project, every, host), work)


@cli.command()
@click.option("-p", "project", metavar="PROJECT", help="Project name.", shell_complete=complete.projects)
@_all_option
@click.option("-h", "host", metavar="HOST", help="Stop only this host.", shell_complete=complete.hosts)
@click.option("-H", "hard", is_flag=True, help="Hard stop: destroy the virtual machines at once.")
@click.option("-S", "save", is_flag=True,
              help="Save each host's memory instead of shutting it down (Xen, QEMU, VMware); start "
                   "resumes it.")
@click.option("-w", "wait_s", type=_WAIT, default=60, show_default=True, metavar="SEC|i",
              help="Wait this long for guests to shut down, then destroy them; 'i': wait for ever.")
@click.option("-s", "pause", type=click.FloatRange(0), default=0, metavar="SEC",
              help="Pause SEC seconds between asking two hosts to stop.")
@_quiet
@click.pass_context
def stop(click_ctx, project, every, host, hard, save, wait_s, pause, quiet):
    """Stop a project's hosts in reverse boot order, then its switches (or one host)."""
    if hard and save:
        raise click.UsageError("give -H (destroy) or -S (save), not both")
    from . import remote
    engine = _engine(click_ctx)
    set_quiet(engine.ctx, quiet)

    def work(name):
        if every and not any(r["state"] == "up" for r in remote.status(engine, name)):
            click.echo("+---> nothing is running", err=True)
        else:
            remote.stop(engine, name, host, hard=hard, wait_s=wait_s, save=save, pause=pause)
    _each(_projects(engine, project, every, host), work)


@cli.command()
@click.option("-p", "project", metavar="PROJECT", help="Only this project (default: all).",
              shell_complete=complete.projects)
@click.option("-h", "host", metavar="HOST", help="Only this host (with -p).", shell_complete=complete.hosts)
@click.option("-s", "switch", metavar="SWITCH", help="Only this switch (with -p).")
@click.option("-u", "only_up", is_flag=True, help="List only what is up; exit 0 if anything is up.")
@click.option("-d", "only_down", is_flag=True, help="List only what is down; exit 0 if nothing is up.")
@click.option("-q", "quiet", is_flag=True, help="Print nothing: the exit status answers.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def status(click_ctx, project, host, switch, only_up, only_down, quiet, fmt):
    """Print '<project> host|switch <name> up|down' lines.

    Exit status: with -p (or -h, -s) 0 if everything listed is up, else 1; with -u 0 if
    anything is up; with -d 0 if nothing is up. Of all projects, one that is busy or cannot
    be read gets a line '<project> project <name> busy|unreadable (why)' and exit status 1.
    """
    import json
    if (host or switch) and not project:
        raise click.UsageError(f"{'-h' if host else '-s'} needs -p PROJECT")
    if host and switch:
        raise click.UsageError("give -h HOST or -s SWITCH, not both")
    if only_up and only_down:
        raise click.UsageError("give -u or -d, not both")
    from . import remote
    engine = _engine(click_ctx)
    names = [project] if project else engine.store.list()
    rows, broken = [], []
    for name in names:
        if project:
            rows += remote.status(engine, name, host, switch)
            continue
        try:        # all projects: one busy or unreadable project does not hide the others
            rows += remote.status(engine, name, host, switch)
        except MlnError as e:
            if engine.store.exists(name):
                from .store import ProjectBusy
                broken.append({"project": name, "kind": "project", "name": name, "detail": str(e),
                               "state": "busy" if isinstance(e, ProjectBusy) else "unreadable"})
    shown = [r for r in rows if (not only_up or r["state"] == "up") and (not only_down or r["state"] != "up")]
    shown += broken
    if quiet:
        pass
    elif fmt == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        for r in shown:
            detail = f" ({r['detail']})" if r["detail"] else ""
            server = f" [{r['server']}]" if r.get("server") else ""
            click.echo(f"{r['project']} {r['kind']} {r['name']} {r['state']}{detail}{server}")
    any_up = any(r["state"] == "up" for r in rows)
    if broken:
        sys.exit(1)
    if only_up:
        sys.exit(0 if any_up else 1)
    if only_down:
        sys.exit(0 if not any_up else 1)
    if project:
        sys.exit(0 if rows and all(r["state"] == "up" for r in rows) else 1)


@cli.command()
@_project_option
@click.option("-h", "host", required=True, metavar="HOST", help="The host whose console to attach to.",
              shell_complete=complete.hosts)
@click.option("-w", "quiet", type=click.FloatRange(0.1), default=2, show_default=True, metavar="SEC",
              help="Without a terminal: print the output until the guest was quiet this long.")
@click.pass_context
def console(click_ctx, project, host, quiet):
    """Attach to a running host's console (Ctrl-] leaves).

    Without a terminal, standard input is typed into the console and the output printed:
    echo hostname | mln console -p P -h HOST
    """
    from . import remote
    from .console import Closed, batch, interactive, session
    on_tty = sys.stdin.isatty()
    code = remote.console_elsewhere(_engine(click_ctx), project, host, ["-w", str(quiet)])
    if code is not None:                    # it ran on the host's server
        sys.exit(code)
    try:
        with session(_engine(click_ctx).console(project, host), host) as con:
            if on_tty:
                click.echo(f"console of {host} ({project}): Ctrl-] leaves; press Enter for a prompt",
                           err=True)
                interactive(con)
            else:
                batch(con, sys.stdin.buffer.read(), quiet)
        if on_tty:
            click.echo("", err=True)
    except Closed:     # the guest halted or was stopped: the session is over, not failed
        click.echo(("\n" if on_tty else "") + f"mln: the console of {host} closed", err=True)


@cli.command("list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def list_(click_ctx, fmt):
    """List the projects (one directory per line)."""
    engine = _engine(click_ctx)
    if fmt == "json":
        import json
        from .classrecord import Classes      # a copy of a class: which, and whose
        copies = Classes(engine.store).copies()
        click.echo(json.dumps([{"project": n, "directory": engine.store.project_dir(n), "version": engine.store.version(n),
                                **copies.get(n, {})} for n in engine.store.list()], indent=2))
        return
    for name in engine.store.list():
        click.echo(engine.store.project_dir(name))


@cli.command()
@_project_option
@click.option("-f", "force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def remove(click_ctx, project, force):
    """Delete a stopped project and its disks."""
    engine = _engine(click_ctx)
    if not force and not sys.stdin.isatty():
        engine.store.require(project)
        raise MlnError(f"removing project '{project}' deletes its disks: add -f to confirm")
    from . import remote
    remote.remove(engine, project, confirm=None if force else _confirm)


# ---------------------------------------------------------------------------------------
# help / completion (setup, version, templates, plugins and doctor: cli_admin)
# ---------------------------------------------------------------------------------------

@cli.command(hidden=True)
@click.option("--many", is_flag=True, help="One request per line, until standard input ends.")
@click.pass_context
def serve(click_ctx, many):
    """Carry out one request of another server (a JSON object on standard input)."""
    from .serve import serve_lines
    sys.exit(serve_lines(lambda: click_ctx.find_root().obj.update(ctx=None) or _engine(click_ctx), many))


@cli.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_(click_ctx, command):
    """Show help for mln or for one command."""
    root = click_ctx.find_root()
    if command is None:
        click.echo(root.get_help())
        return
    cmd = cli.get_command(root, command)
    if cmd is None:
        raise click.UsageError(f"no such command '{command}'")
    with click.Context(cmd, info_name=command, parent=root) as sub:
        click.echo(cmd.get_help(sub))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script: eval "$(mln completion bash)"."""
    from click.shell_completion import get_completion_class
    comp = get_completion_class(shell)(cli, {}, "mln", "_MLN_COMPLETE")
    click.echo(comp.source())


# ---------------------------------------------------------------------------------------

def _register_plugin_commands():
    pm = _plugin_manager(set(os.environ.get("MLN_DISABLE_PLUGINS", "").split(",")) - {""})
    startup.register_commands(pm, cli)     # if no enabled plugin adds one, none is imported
    return pm


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mln`` console script: errors become one message and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    with startup.no_gc():   # a short-lived command: the collector would only walk the project again
        return _main(args)


def _main(args: list[str]) -> int:
    pm = _register_plugin_commands()
    try:
        rv = cli.main(args=args, prog_name="mln", standalone_mode=False, obj={"pm": pm, "disabled": set()})
        return rv if isinstance(rv, int) else 0
    except MlnError as e:
        click.echo(f"mln: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("mln: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("mln: interrupted", err=True)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # an internal error: say so plainly, trace only on request
        import traceback
        from .private import redact       # secret values never reach a trace
        if os.environ.get("MLN_DEBUG"):
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        click.echo(redact(f"mln: internal error: {type(e).__name__}: {e} (set MLN_DEBUG=1 for a traceback; "
                          "please report it)"), err=True)
        return 70


if __name__ == "__main__":   # python -m mln_core.cli: the commands below join this very module's group
    sys.modules.setdefault("mln_core.cli", sys.modules[__name__])
from . import cli_diff  # noqa: E402,F401  (mln diff)
from . import cli_upgrade  # noqa: E402,F401  (mln upgrade)
from . import cli_admin  # noqa: E402,F401  (mln setup, version, templates, plugins, doctor)
from . import cli_graph  # noqa: E402,F401  (mln graph)
from . import cli_export  # noqa: E402,F401  (mln export, import)
from . import cli_daemon  # noqa: E402,F401  (mln daemon, daemon_ca, daemon_status)
from . import cli_class  # noqa: E402,F401  (mln class: copies of one lab)
from . import cli_reconfigure  # noqa: E402,F401  (mln reconfigure, rc; --strict)
if __name__ == "__main__":  # pragma: no cover
    startup.run()
