"""Administration commands: ``setup``, ``version``, ``register_template``/``rt``,
``list_templates``, ``plugins`` and ``doctor``."""
from __future__ import annotations

import os
import sys

import click

from .cli import cli, get_ctx
from .errors import MlnError


# ---------------------------------------------------------------------------------------
# setup / version
# ---------------------------------------------------------------------------------------

@cli.command()
@click.option("-n", "no_questions", is_flag=True, help="Ask nothing, even on a terminal.")
@click.option("-f", "--force", is_flag=True,
              help="Change an existing configuration file without asking (it is kept as FILE.bak).")
@click.pass_context
def setup(click_ctx, no_questions, force):
    """Write the configuration and make the projects, templates and files directories.

    The file is the one MLN_CONFIG names, else /etc/mln/mln.conf for root and ~/.mln for
    anybody else. The directories come from the global options --projects DIR (-P),
    --templates DIR (-T) and --files DIR (-F); the others are asked on a terminal and
    otherwise take their defaults. An existing file is changed only when confirmed on a
    terminal, or with --force; it keeps its other lines. Then the host check of 'mln
    doctor' is printed.
    """
    from . import __version__
    from . import setup_config as sc
    obj = click_ctx.find_root().obj
    target = sc.config_target()
    old_text = None
    if os.path.exists(target):
        try:
            with open(target, encoding="utf-8") as f:
                old_text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise MlnError(f"cannot read {target}: {e}") from None
    ask = sys.stdin.isatty() and not no_questions
    if old_text is not None and not force:
        if not ask:
            raise MlnError(f"{target} exists; mln setup changes it only when asked on a terminal, "
                           "or with --force (the old file is kept as .bak)")
        if not click.confirm(f"{target} exists; change its projects, templates and files lines?",
                             default=False, err=True):
            raise MlnError(f"{target} left as it was")
    dirs = sc.default_dirs(target, old_text)
    for key in sc.DIRS:
        given = obj.get(key)
        if given is not None:
            dirs[key] = given
        elif ask:
            dirs[key] = click.prompt(f"{key.capitalize()} directory", default=dirs[key], err=True)
        dirs[key] = sc.as_written(dirs[key])
        for name in sc.unset_variables(dirs[key]):
            click.echo(f"mln: warning: {key} {dirs[key]}: ${name} is not set here, so mln reads it "
                       f"literally; set {name} or give the directory", err=True)
    made = []
    for key in sc.DIRS:
        path = sc.expand(dirs[key])
        existed = os.path.isdir(path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise MlnError(f"cannot make the {key} directory {path}: {e.strerror}") from None
        made.append((key, path, "exists" if existed else "created"))
    try:
        backup = sc.write(target, sc.render(dirs, old_text, __version__))
    except OSError as e:
        raise MlnError(f"cannot write {target}: {e.strerror or e}") from None
    click.echo(f"+---> wrote {target}" + (f" (the old one is {backup})" if backup else ""), err=True)
    for key, path, what in made:
        click.echo(f"+---> {key:<9} {path} ({what})", err=True)
    click.echo("+---> checking what can run on this machine (mln doctor)", err=True)
    from .doctor import default_hypervisor_problem, findings, render_text
    obj.update(projects=dirs["projects"], templates=dirs["templates"], files=dirs["files"], ctx=None)
    ctx = get_ctx(click_ctx)
    found = findings(ctx)
    click.echo(render_text(found, default_hypervisor_problem(ctx, found)), nl=False)


@cli.command()
def version():
    """Print mln's version (the same as mln --version)."""
    from . import __version__
    click.echo(f"mln, version {__version__}")


# ---------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------

@cli.command("register_template")
@click.option("-t", "source", required=True, type=click.Path(dir_okay=False),
              help="Image file (or .tar.gz/.tar.bz2 holding one).")
@click.option("-n", "name", help="Name to register it under (default: the file name).")
@click.option("-m", "message", default="", help="A description.")
@click.option("--kernel", type=click.Path(dir_okay=False), help="Kernel for direct boot (QEMU).")
@click.option("--initrd", type=click.Path(dir_okay=False), help="Initrd for direct boot (QEMU).")
@click.pass_context
def register_template(click_ctx, source, name, message, kernel, initrd):
    """Copy a template into the templates directory and register it."""
    from .templates import TemplateRegistry
    ctx = get_ctx(click_ctx)
    t = TemplateRegistry(ctx.config.templates_dir).register(source, name, message, kernel, initrd)
    click.echo(f"registered {t.name} ({t.real_name}, {t.size_mb} MB) in {ctx.config.templates_dir}")


cli.add_command(register_template, "rt")


@cli.command("list_templates")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def list_templates(click_ctx, fmt):
    """List the registered templates: name, file, size."""
    from .templates import TemplateRegistry
    ctx = get_ctx(click_ctx)
    entries = TemplateRegistry(ctx.config.templates_dir).entries().values()
    if fmt == "json":
        import json
        click.echo(json.dumps([{"name": t.name, "file": t.real_name, "size_mb": t.size_mb,
                                "compression": None if t.compression in ("", "-") else t.compression,
                                "message": t.message, "kernel": bool(t.kernel), "initrd": bool(t.initrd)}
                               for t in entries], indent=2))
        return
    for t in entries:
        extra = " +kernel" if t.kernel else ""
        click.echo(f"{t.name:<28} {t.real_name:<28} {t.size_mb:>6} MB{extra}  {t.message}")


# ---------------------------------------------------------------------------------------
# doctor / plugins
# ---------------------------------------------------------------------------------------

@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def doctor(click_ctx, fmt):
    """Check what can run on this machine: every hypervisor, switch and storage plugin.

    A UML is probed with a real boot of a tiny image (remembered per UML binary and CPU).
    Exit status 1 when the configured default hypervisor cannot run here.
    """
    import json
    from .doctor import default_hypervisor_problem, findings, render_text
    ctx = get_ctx(click_ctx)
    found = findings(ctx)
    problem = default_hypervisor_problem(ctx, found)
    if fmt == "json":
        click.echo(json.dumps({"checks": found, "default_hypervisor_ok": problem is None,
                               "problem": problem}, indent=2))
    else:
        click.echo(render_text(found, problem), nl=False)
    sys.exit(1 if problem else 0)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def plugins(click_ctx, fmt):
    """List the loaded plugins, their package and version, and the hooks each implements."""
    import json
    pm = click_ctx.find_root().obj["pm"]
    infos = [pm.infos[n] for n in pm.plugin_names()]
    if fmt == "json":
        click.echo(json.dumps({"plugins": [i.as_dict() for i in infos],
                               "failed": [{"name": n, "reason": r} for n, r in pm.failures],
                               "disabled": sorted(pm.disabled)}, indent=2))
        return
    for info in infos:
        pkg = f"{info.distribution} {info.version}" if info.distribution else info.module
        click.echo(f"{info.name:<14} {pkg:<20} {', '.join(info.hooks)}")
    for name in sorted(pm.disabled):
        click.echo(f"{name:<14} (disabled)")
    for name, reason in pm.failures:
        click.echo(f"{name:<14} (failed) {reason}")
