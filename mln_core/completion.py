"""Shell completion of option values (``shell_complete=`` of click options): project
names for ``-p``, the hosts of that project for ``-h``. Cheap: only mln.conf and the
projects directory are read; any problem completes nothing rather than failing."""
from __future__ import annotations


def _store(click_ctx):
    """The projects directory of this command line (``-P``, else mln.conf)."""
    from .config import load_config
    from .store import Store
    params = click_ctx.find_root().params
    cfg = load_config(params.get("projects"), params.get("templates"), params.get("files"))
    return Store(cfg.projects_dir)


def projects(click_ctx, param, incomplete: str) -> list[str]:
    """The built projects whose name starts with what was typed."""
    try:
        return [n for n in _store(click_ctx).list() if n.startswith(incomplete)]
    except Exception:     # a broken mln.conf or projects directory: no completions
        return []


def hosts(click_ctx, param, incomplete: str) -> list[str]:
    """The hosts of the project that ``-p`` names (as its build recorded them)."""
    project = click_ctx.params.get("project")
    if not project:
        return []
    try:
        store = _store(click_ctx)
        if not store.exists(project):
            return []
        names = store.read_state(store.project_dir(project)).get("hosts") or {}
        return sorted(n for n in names if n.startswith(incomplete))
    except Exception:
        return []
