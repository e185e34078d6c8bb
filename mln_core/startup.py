"""What every ``mln`` command does before its own work, kept light (docs/benchmarks.md,
"Start-up"): the plugin manager, made when a command first needs a plugin
(:class:`mln_core.plugin_cache.LazyPluginManager`); the plugins' commands, added before the
command line is parsed, but only if an enabled plugin may add one; the garbage collector
off for the command's short life. Used by :mod:`mln_core.cli`.
"""
from __future__ import annotations

import contextlib
import gc

import click

from .plugin_cache import LazyPluginManager


def report_failures(pm) -> None:
    for name, reason in pm.failures:
        click.echo(f"mln: warning: plugin '{name}' not loaded: {reason}", err=True)


def plugin_manager(disabled: set[str]) -> LazyPluginManager:
    """The plugin manager; the plugins are imported (and those that failed reported) when
    a command first uses it."""
    return LazyPluginManager(disabled, on_load=report_failures)


def register_commands(pm: LazyPluginManager, cli: click.Group) -> None:
    """Let the plugins add their commands to ``cli``. When the cache of installed plugins
    shows that no enabled plugin adds one (and none fails), nothing is imported: ``mln
    --help`` stays fast."""
    if pm.may_add_commands():
        pm.hook.mln_register_commands.call_historic(kwargs={"cli": cli})
    else:
        pm.commands_skipped = True


def plugin_command(cli: click.Group, click_ctx: click.Context, name: str):
    """A command that no built-in has, asked for after :func:`register_commands` skipped the
    plugins: load them and let them add their commands after all (should the cache ever be
    wrong, a plugin's command still works), then look again. None if there is none."""
    pm = (click_ctx.find_root().obj or {}).get("pm")
    if not getattr(pm, "commands_skipped", False):
        return None
    pm.commands_skipped = False
    pm.hook.mln_register_commands.call_historic(kwargs={"cli": cli})
    return click.Group.get_command(cli, click_ctx, name)


@contextlib.contextmanager
def no_gc():
    """The cyclic garbage collector off. Reading a project makes millions of small objects
    that all live on: the collector would walk them again and again (60% of the time for
    10,000 hosts) and find nothing to free. Off while a project is read
    (:mod:`mln_core.project`), and for the whole short life of an ``mln`` command."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run() -> None:
    """The ``mln`` command (and ``python -m mln_core.cli``): :func:`mln_core.cli.main`, then
    the process ends at once: its output flushed and the ``atexit`` handlers run, without
    the collector's last walk over every object nor the interpreter's teardown (a tenth of
    a second and more on a busy server, paid by every command)."""
    import atexit
    import os
    import sys

    from .cli import _main
    gc.disable()                    # (as main: off for the command's short life, and not on again)
    code = _main(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:         # (a reader that stopped early, as with | head)
            pass
        except (OSError, ValueError):   # (a full disk): as Python itself would end
            code = code or 120
    atexit._run_exitfuncs()
    os._exit(code)
