"""The plugin manager: pluggy hooks, plugins discovered through stevedore.

Built-in plugins and third-party ones are found the same way: entry points in the
``mln.plugins`` group, as stevedore lists them (remembered in a cache that notices every
install and removal:
:mod:`mln_core.plugin_cache`). They are registered in alphabetical order of their
entry-point name, and hooks called on all plugins run in that order.

Controls: ``MLN_DISABLE_PLUGINS=a,b`` (or ``mln --no-plugin a``) skips plugins by name;
a disabled plugin is not even imported. ``MLN_TRACE_PLUGINS=1`` prints every hook call
and its result on stderr (secret values replaced by ``<secret>``: see
:mod:`mln_core.private`). A plugin that fails to import, or implements a hook that does
not exist, is reported by name with the reason and left out; the others still load.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .keywords import KeywordRegistry, core_keywords
from .plugin_cache import NAMESPACE, Discovery, load_entry_point  # noqa: F401  (NAMESPACE re-exported)

from . import hookimpl  # noqa: E402,F401  (re-exported)


@dataclass(repr=False, eq=False)
class PluginInfo:
    """An installed plugin: its entry-point name, distribution and whether it is enabled."""

    name: str
    module: str
    hooks: list[str] = field(default_factory=list)

    @property
    def distribution(self) -> str | None:
        """The installed package the plugin comes from (looked up only when asked: it is slow)."""
        return _distribution_of(self.module)

    @property
    def version(self) -> str | None:
        dist = self.distribution
        if not dist:
            return None
        from importlib import metadata
        return metadata.version(dist)

    def as_dict(self) -> dict:
        return {"name": self.name, "module": self.module, "distribution": self.distribution,
                "version": self.version, "hooks": self.hooks}


class PluginManager(pluggy.PluginManager):
    def __init__(self):
        super().__init__("mln")
        self.add_hookspecs(hookspecs)
        self.failures: list[tuple[str, str]] = []
        self.infos: dict[str, PluginInfo] = {}
        self.disabled: set[str] = set()
        self._keywords: KeywordRegistry | None = None

    def load(self, disabled: set[str] | None = None, env=os.environ,
             discovery: Discovery | None = None) -> None:
        self.disabled = set(disabled or ())
        self.disabled |= {n.strip() for n in env.get("MLN_DISABLE_PLUGINS", "").split(",") if n.strip()}
        found = discovery if discovery is not None else Discovery(env)
        before = set(sys.modules)
        loaded = []
        for name, value in found.entry_points:
            if name in self.disabled:           # not even imported
                continue
            try:
                plugin = load_entry_point(name, value)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                self.failures.append((name, f"cannot import {value}: {type(exc).__name__}: {exc}"))
                continue
            loaded.append((name, plugin, value))
        # pluggy calls the last registered first: register in reverse order so that hooks
        # run in alphabetical order of plugin name.
        for name, plugin, value in sorted(loaded, key=lambda e: e[0], reverse=True):
            self.add(name, plugin, value)
        try:
            self._remember(found, before)
        except Exception:   # pragma: no cover  (only a cache: the next command scans again)
            pass
        if env.get("MLN_TRACE_PLUGINS", "") not in ("", "0"):
            from .private import redact       # secret values never reach a trace
            self.trace.root.setwriter(lambda text: sys.stderr.write(redact(text)))
            self.enable_tracing()

    def _remember(self, found: Discovery, before: set[str]) -> None:
        """Tell the cache which enabled plugins loaded cleanly and which hooks they have
        (``mln --help`` needs none of them if none adds commands)."""
        failed = {name for name, _ in self.failures}
        plugins = {}
        modules = [sys.modules.get(m) for m in list(sys.modules) if m not in before]
        for name, value in found.entry_points:
            if name in self.disabled:
                continue
            info = self.infos.get(name)
            ok = info is not None and name not in failed
            plugins[name] = (value, ok, tuple(info.hooks) if ok else ())
            mod = sys.modules.get(value.split("[", 1)[0].partition(":")[0].strip())
            if mod is not None:
                modules.append(mod)
        found.remember(plugins, modules)

    def add(self, name: str, plugin, entry_point=None) -> bool:
        """Register ``plugin`` under ``name``; on a bad plugin record the failure, return False."""
        try:
            self.register(plugin, name=name)
            self.check_pending()
        except (pluggy.PluginValidationError, ValueError) as e:
            if self.is_registered(plugin):
                self.unregister(plugin)
            self.failures.append((name, str(e)))
            return False
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.infos[name] = PluginInfo(
            name=name,
            module=module,
            hooks=sorted(h.name for h in self.get_hookcallers(plugin) or []),
        )
        self._keywords = None
        return True

    @property
    def keywords(self) -> KeywordRegistry:
        """The keyword registry: the core's keywords plus every plugin's declarations."""
        if self._keywords is None:
            reg = KeywordRegistry()
            core_keywords(reg)
            for impl in reversed(self.hook.mln_register_keywords.get_hookimpls()):   # in plugin order
                reg.current_plugin = impl.plugin_name
                impl.function(registry=reg)
            reg.current_plugin = "core"
            self._keywords = reg
        return self._keywords

    def plugin_names(self) -> list[str]:
        return sorted(self.infos)


@functools.lru_cache(maxsize=4)
def _packages_distributions(path: tuple) -> dict:
    from importlib import metadata
    return metadata.packages_distributions()


def _distribution_of(module: str) -> str | None:
    dists = _packages_distributions(tuple(sys.path)).get(module.split(".")[0])
    return dists[0] if dists else None


def make_plugin_manager(disabled: set[str] | None = None, env=os.environ,
                        discovery: Discovery | None = None) -> PluginManager:
    pm = PluginManager()
    pm.load(disabled, env, discovery)
    return pm
