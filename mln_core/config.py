"""mln.conf: ``/etc/mln/mln.conf``, then ``~/.mln``; or the one file named by ``MLN_CONFIG``.

Each line is ``keyword value`` (``#`` starts a comment). Keywords are matched exactly
(the original matched prefixes, so ``daemon_projects`` also set ``projects``). ``$VAR``
in a value is replaced from the environment. Repeatable keywords (``san_path``,
``daemon_allow``, ``daemon_status_query``) collect every value. Command-line options
``-P``, ``-T`` and ``-F`` override the directories.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import MlnError, Pos

SYSTEM_CONFIG = "/etc/mln/mln.conf"
USER_CONFIG = "~/.mln"
REPEATABLE = {"server", "san_path", "daemon_allow", "daemon_status_query", "lvm_execute_server"}

DEFAULTS = {
    "projects": "~/mln/projects",
    "templates": "~/mln/templates",
    "files": "~/mln/files",
    "default_template": "busybox.ext4",
    "default_memory": "128M",
    "default_size": "250M",
    "default_term": "none",
    "default_hypervisor": "uml",
    "default_switch": "vde",
    "default_family": "debian",
    "lvm_vg": "mln-images",
    "xen_bridge": "xenbr0",
}


@dataclass
class Config:
    """The settings of mln.conf (and ~/.mln), with command-line overrides."""

    values: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    lists: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def getlist(self, key: str) -> list[str]:
        return list(self.lists.get(key, []))

    def path(self, key: str) -> str:
        """A directory setting as an absolute path; an error naming where it was set if it
        cannot be a path (a NUL byte, a part longer than the filesystem allows)."""
        from .names import path_problem
        value = self.values[key]
        problem = path_problem(value, f"'{key}'")
        if problem:
            raise MlnError(f"{problem} (set in {self.origins.get(key, 'the defaults')})")
        return os.path.abspath(os.path.expanduser(value))

    @property
    def projects_dir(self) -> str:
        return self.path("projects")

    @property
    def templates_dir(self) -> str:
        return self.path("templates")

    @property
    def files_dir(self) -> str:
        return self.path("files")

    def read(self, path: str) -> None:
        if os.path.exists(path) and not os.path.isfile(path):      # a FIFO would block, /dev/zero never end
            raise MlnError(f"configuration file {path} is not a regular file")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            raise MlnError(f"cannot read configuration file {path}: {e}") from None
        self.files.append(path)
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) == 1:
                raise MlnError(f"'{parts[0]}' needs a value", Pos(path, n, 1))
            key, value = parts[0], os.path.expandvars(parts[1].strip())
            if key in REPEATABLE:
                self.lists.setdefault(key, []).append(value)
            self.values[key] = value
            self.origins[key] = f"{path}:{n}"

    def override(self, key: str, value: str | None, origin: str) -> None:
        if value is not None:
            self.values[key] = value
            self.origins[key] = origin


def load_config(projects: str | None = None, templates: str | None = None,
                files: str | None = None, env=os.environ) -> Config:
    cfg = Config()
    explicit = env.get("MLN_CONFIG")
    if explicit:
        if not os.path.isfile(explicit):
            raise MlnError(f"MLN_CONFIG names {explicit}, which is not a file")
        cfg.read(explicit)
    else:
        cfg.read(SYSTEM_CONFIG)
        cfg.read(os.path.expanduser(USER_CONFIG))
    cfg.override("projects", projects, "-P")
    cfg.override("templates", templates, "-T")
    cfg.override("files", files, "-F")
    return cfg
