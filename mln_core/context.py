"""The context object every hook receives: configuration, plugins, output, commands."""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from .config import Config
from .errors import MlnError


@dataclass
class Context:
    config: Config
    pm: object                      # mln_core.plugins.PluginManager
    project_dir: str | None = None
    verbose: bool = False
    options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    @property
    def hook(self):
        return self.pm.hook

    def log(self, message: str) -> None:
        """A progress line for the user (stderr, so that stdout stays data)."""
        print(message, file=sys.stderr, flush=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def run(self, argv: list[str], what: str | None = None, check: bool = True, input: bytes | None = None,
            timeout: float | None = 300, **kw) -> subprocess.CompletedProcess:
        """Run a command; on failure raise MlnError naming ``what`` and the command's stderr."""
        self.debug("$ " + shlex.join(argv))
        try:
            p = subprocess.run(argv, capture_output=True, input=input, timeout=timeout, **kw)
        except FileNotFoundError:
            raise MlnError(f"{what + ': ' if what else ''}command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise MlnError(f"{what + ': ' if what else ''}'{shlex.join(argv)}' did not finish in "
                           f"{timeout} s") from None
        if check and p.returncode != 0:
            err = (p.stderr or p.stdout or b"").decode("utf-8", "replace").strip()
            raise MlnError(f"{what + ': ' if what else ''}'{shlex.join(argv)}' failed "
                           f"(exit {p.returncode}){': ' + err if err else ''}")
        return p
