"""mln: Manage Large Networks — the core (language, model, plugin manager, lifecycle)."""

__all__ = ["hookimpl", "__version__"]


def __getattr__(name: str):
    if name == "hookimpl":          # made when a plugin asks: mln --help imports no pluggy
        import pluggy
        marker = globals().setdefault("hookimpl", pluggy.HookimplMarker("mln"))
        return marker
    if name == "__version__":       # looked up when asked: reading package metadata is slow
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("mln")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
