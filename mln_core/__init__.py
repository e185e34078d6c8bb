"""mln: Manage Large Networks — the core (language, model, plugin manager, lifecycle)."""
from importlib.metadata import PackageNotFoundError, version as _version

import pluggy as _pluggy

hookimpl = _pluggy.HookimplMarker("mln")

try:
    __version__ = _version("mln")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
