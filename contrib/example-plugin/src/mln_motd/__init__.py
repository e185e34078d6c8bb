"""mln plugin ``motd``: a message of the day (``/etc/motd``) in the guests that ask for one.

    global {
        project lab
        motd Welcome to %host% of project %project%. Changes are lost at the next build.
    }
    host web { motd %host%: the web server (template %template%) }
    host db  { motd no }

* ``motd TEXT`` in ``global`` is the default of every host; ``motd TEXT`` in a host (or
  a superclass) replaces it there, and ``motd no`` turns it off there.
* ``%host%``, ``%project%``, ``%template%`` and ``%hypervisor%`` in the text are replaced
  by the host's values. Any other ``%word%`` is an error, found by ``mln check``.
* ``/etc/motd`` is rewritten whole at every build (mode 0644, owned by root), so a
  rebuild or an upgrade gives the same file: the plugin is idempotent. Hosts without a
  message are left alone.
* A bare ``motd`` (no text), an unknown placeholder or a Windows guest stop the build
  with one error that names the host.
"""
from __future__ import annotations

import re

from mln_core import hookimpl
from mln_core.errors import MlnError, Problem

NAME = "motd"
PATH = "/etc/motd"
OFF = ("no", "off")
PLACEHOLDER = re.compile(r"%([A-Za-z_]+)%")


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("global", NAME, "default message of the day (/etc/motd) of every host; "
                                     "%host%, %project%, %template%, %hypervisor% are replaced")
    registry.keyword("host", NAME, "message of the day (/etc/motd) of this host; 'motd no' turns it off")


def setting(host, project):
    """The ``motd`` line that applies to ``host``: its own (or its superclass's), else the
    global one; None when there is none."""
    line = host.tree.line(NAME) if host.tree is not None else None
    if line is None and project is not None and project.global_tree is not None:
        line = project.global_tree.line(NAME)
    return line


def message(host, project) -> str | None:
    """The text of /etc/motd for ``host`` (ending with a newline), or None when it has no
    message; MlnError naming the host when the setting is wrong."""
    line = setting(host, project)
    if line is None or line.value.lower() in OFF:
        return None
    if len(line.words) < 2:
        raise MlnError("motd: 'motd' needs a text (or 'motd no' to have none)", f"host {host.name}")
    values = {"host": host.name, "project": host.project, "template": host.template or "",
              "hypervisor": host.hypervisor or ""}
    unknown = sorted({m for m in PLACEHOLDER.findall(line.value) if m not in values})
    if unknown:
        raise MlnError(f"motd: unknown placeholder %{unknown[0]}% in '{line.value}' "
                       f"(known: {', '.join(f'%{k}%' for k in values)})", f"host {host.name}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], line.value) + "\n"


@hookimpl
def mln_validate(project, ctx):
    """Wrong settings are found by ``mln check``, and stop ``mln build`` before any disk is
    made: one error per host whose setting is wrong, at the line's position and naming the
    host (a wrong ``global`` line is reported once)."""
    problems = []
    glob = project.global_tree.line(NAME) if project.global_tree is not None else None
    for host in project.hosts.values():
        try:
            message(host, project)
        except MlnError as e:
            line = setting(host, project)
            if line is not glob:
                problems.append(Problem("error", f"{e.where}: {e.message}", line.pos))
            elif not any(p.where == line.pos for p in problems):      # once for the global line
                problems.append(Problem("error", f"global: {e.message}", line.pos))
    return problems


@hookimpl
def mln_configure_image(host, guest, ctx):
    text = message(host, getattr(ctx, "project", None))
    if text is None:                      # act only on hosts that ask for a message
        return
    if guest.family == "windows":
        raise MlnError("motd: a Windows guest has no /etc/motd; write 'motd no' in this host",
                       f"host {host.name}")
    guest.write_text(PATH, text, 0o644, 0, 0)      # the whole file: idempotent
