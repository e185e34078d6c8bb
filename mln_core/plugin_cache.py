"""Which plugins are installed, remembered between commands, and the plugin manager that
imports them only when a command needs one.

Plugins are discovered through stevedore: the ``mln.plugins`` entry points it lists. That
means reading the metadata of every installed distribution (20 to 50 ms, more than a
whole ``mln check``), so the
answer is kept per ``sys.path`` (the last 8 of each Python, in one file
``$XDG_CACHE_HOME/mln/plugins-*`` or ``~/.cache/mln/plugins-*``), valid while the
``*.dist-info`` and ``*.egg-info`` in the ``sys.path`` directories stay the same: their
names and the modification times of their ``entry_points.txt`` (and the modification
times of zip files on ``sys.path``). Installing, upgrading or removing a distribution
changes these, and the next command reads the metadata again: no manual refresh. A file
that another user owns, or that cannot be read, is ignored; one that cannot be written
only costs the next command the scan.

After every command that loaded the plugins, the cache also records which enabled plugins
loaded cleanly and which hooks they implement, with the modification times and sizes of
the files that importing them read. ``mln --help`` (and every command that calls no hook)
then imports no plugin at all when that record is still true and says that no enabled
plugin adds commands (``mln_register_commands``) and none failed: see
:meth:`Discovery.commands_possible`. Anything unknown (a new or changed plugin, a failure,
``MLN_TRACE_PLUGINS``) makes it load them all, as every command did before.
"""
from __future__ import annotations

import marshal
import os
import sys
import threading
from stat import S_ISDIR

NAMESPACE = "mln.plugins"
_META = (".dist-info", ".egg-info")
_FORMAT = 1
_KEEP = 8               # sys.path lists remembered per Python


def cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/mln``, or ``~/.cache/mln``; None without a home directory."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):                 # unset, or relative: not valid (XDG)
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "mln")


def _search_path() -> list[str]:
    cwd = None
    out = []
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        if not entry or not os.path.isabs(entry):
            cwd = cwd or os.getcwd()
            entry = os.path.join(cwd, entry) if entry else cwd
        out.append(entry)
    return out


def _stamps(paths: list[str]) -> list:
    """What installing, upgrading or removing a distribution changes: for each ``sys.path``
    directory, the names of its ``*.dist-info`` and ``*.egg-info`` and the modification
    times of their ``entry_points.txt``; for a zip file, its modification time. A directory
    without any (the current directory of ``python -m``, a script's directory) and a
    missing entry hold no distribution: they are left out, and the scan of the next
    command notices if one appears there."""
    out = []
    for entry in paths:
        try:
            st = os.stat(entry)
        except OSError:
            continue
        if not S_ISDIR(st.st_mode):
            out.append((entry, st.st_mtime_ns, ()))
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            names = sorted(n for n in os.listdir(fd) if n.lower().endswith(_META))
            if entry.lower().endswith(".egg"):      # an egg directory: its EGG-INFO
                names.append("EGG-INFO")
            found = []
            for name in names:
                try:
                    mtime = os.stat(f"{name}/entry_points.txt", dir_fd=fd).st_mtime_ns
                except OSError:
                    mtime = -1
                found.append((name, mtime))
        except OSError:
            continue
        finally:
            os.close(fd)
        if found:
            out.append((entry, None, tuple(found)))
    return out


def _scan() -> list[tuple[str, str]]:
    """The ``mln.plugins`` entry points of the installed distributions, as stevedore finds
    them (in its order, without repeats: a source tree on ``sys.path`` repeats an editable
    install). Only listed here, nothing imported: the plugin manager imports the enabled ones."""
    from stevedore import ExtensionManager
    ExtensionManager.ENTRY_POINT_CACHE.pop(NAMESPACE, None)    # its memo for this process: read again
    listing = ExtensionManager.make_test_instance([], namespace=NAMESPACE)     # a manager that loads nothing
    seen: set = set()
    found = []
    for ep in listing.list_entry_points():
        item = (ep.name, ep.value)
        if item not in seen:
            seen.add(item)
            found.append(item)
    return found


def _ours(directory: str) -> bool:
    """Whether ``directory``, or the nearest of its parents that exists, belongs to this
    user (root run with another user's HOME, as some sudo do, leaves that home alone)."""
    while True:
        try:
            return os.stat(directory).st_uid == os.geteuid()
        except FileNotFoundError:
            parent = os.path.dirname(directory)
            if parent == directory:
                return False
            directory = parent
        except OSError:
            return False


def _record_ok(plugins, files) -> bool:
    """Whether what a cache file says of the plugins has the shape :meth:`Discovery.remember`
    writes (anything else is ignored)."""
    if plugins is None and files is None:
        return True
    if not (isinstance(plugins, dict) and isinstance(files, dict)):
        return False
    for name, known in plugins.items():
        if not (isinstance(name, str) and isinstance(known, tuple) and len(known) == 3
                and isinstance(known[0], str) and isinstance(known[2], tuple)):
            return False
    return all(isinstance(p, str) and isinstance(s, tuple) for p, s in files.items())


def _file_stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def load_entry_point(name: str, value: str):
    """What ``importlib.metadata.EntryPoint(name, value, ...).load()`` returns (``module``
    or ``module:attr.attr``), without reading any metadata."""
    target = value.split("[", 1)[0]
    module, _, attrs = target.partition(":")
    module, attrs = module.strip(), attrs.strip()
    words = [w for w in attrs.split(".") if w]
    if not all(p.isidentifier() for p in module.split(".")) or not all(w.isidentifier() for w in words):
        from importlib.metadata import EntryPoint       # an odd value: importlib's own error
        return EntryPoint(name, value, NAMESPACE).load()
    import importlib
    obj = importlib.import_module(module)
    for w in words:
        obj = getattr(obj, w)
    return obj


class Discovery:
    """The entry points of ``mln.plugins`` (``entry_points``: ``(name, value)`` pairs) and
    what the cache knows about them."""

    def __init__(self, env=os.environ):
        self._env = env
        self._stamps = _stamps(_search_path())
        self._key = repr((NAMESPACE, [entry for entry, _, _ in self._stamps]))
        self._plugins: dict | None = None      # name -> (value, loaded cleanly, hooks)
        self._files: dict | None = None        # path -> (mtime_ns, size)
        self._files_ok: bool | None = None
        cached = self._read()
        self.from_cache = cached is not None
        if cached is not None:
            self.entry_points = [tuple(e) for e in cached["entry_points"]]
            self._plugins, self._files = cached.get("plugins"), cached.get("files")
        else:
            self.entry_points = _scan()

    # -- the file -------------------------------------------------------------------
    # One file per Python holds the entries of its last few ``sys.path`` lists (those that
    # differ only in directories without distributions share one).

    def _path(self) -> str | None:
        import zlib
        where = cache_dir()
        which = repr((sys.executable, sys.prefix, sys.version)).encode()
        return where and os.path.join(where, f"plugins-{zlib.crc32(which):08x}")

    def _entries(self) -> list:
        """The file's entries (none if it is missing, unreadable or not this user's)."""
        path = self._path()
        if path is None:
            return []
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    return []
                data = marshal.loads(f.read())     # (marshal.load(f) reads piecewise: slow)
            if data["format"] == _FORMAT and isinstance(data["entries"], list):
                return data["entries"]
        except Exception:       # missing, damaged, written by another format: scan again
            pass
        return []

    def _read(self) -> dict | None:
        try:
            for entry in self._entries():
                if entry["key"] == self._key:
                    if entry["stamps"] != self._stamps:
                        return None
                    for name, value in entry["entry_points"]:
                        if not (isinstance(name, str) and isinstance(value, str)):
                            return None
                    if not _record_ok(entry.get("plugins"), entry.get("files")):
                        entry = dict(entry, plugins=None, files=None)
                    return entry
        except Exception:
            pass
        return None

    def _write(self) -> None:
        mine = {"key": self._key, "stamps": self._stamps, "entry_points": list(self.entry_points),
                "plugins": self._plugins, "files": self._files}
        path = self._path()
        if path is None or not _ours(os.path.dirname(path)):
            return
        others = [e for e in self._entries() if isinstance(e, dict) and e.get("key") != self._key]
        data = {"format": _FORMAT, "entries": [mine] + others[:_KEEP - 1]}
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps(data))
            os.replace(tmp, path)           # readers see the old file or the new one, whole
        except (OSError, ValueError):
            try:
                os.unlink(tmp)
            except OSError:
                pass

    # -- what the plugins do --------------------------------------------------------

    def _files_unchanged(self) -> bool:
        if self._files_ok is None:
            self._files_ok = self._files is not None and all(
                _file_stamp(p) == tuple(s) for p, s in self._files.items())
        return self._files_ok

    def commands_possible(self, disabled: set[str]) -> bool:
        """False only if the cache shows that no enabled plugin adds commands and every
        enabled one loads cleanly: then a command that calls no hook needs no plugin."""
        if self._env.get("MLN_TRACE_PLUGINS", "") not in ("", "0"):
            return True             # the trace shows the mln_register_commands call
        if self._plugins is None or not self._files_unchanged():
            return True
        names = [name for name, _ in self.entry_points]
        if len(names) != len(set(names)):
            return True
        for name, value in self.entry_points:
            if name in disabled:
                continue
            known = self._plugins.get(name)
            if known is None or known[0] != value or not known[1] or "mln_register_commands" in known[2]:
                return True
        return False

    def remember(self, plugins: dict, modules: list) -> None:
        """Record what loading the enabled plugins gave: ``plugins`` maps each to ``(value,
        loaded cleanly, hooks)``; ``modules`` are the modules that loading imported, whose
        files decide whether the record still holds. Writes the cache only if it changed."""
        files = {}
        for m in modules:
            path = getattr(m, "__file__", None)
            if isinstance(path, str) and path not in files:
                stamp = _file_stamp(path)
                if stamp is not None:
                    files[path] = stamp
        if self._plugins is not None and self._files_unchanged():
            merged_plugins = {**self._plugins, **plugins}
            merged_files = {**self._files, **files}
            if self.from_cache and merged_plugins == self._plugins and merged_files == self._files:
                return
            plugins, files = merged_plugins, merged_files
        self._plugins, self._files, self._files_ok = plugins, files, True
        self._write()
        self.from_cache = True


class LazyPluginManager:
    """Stands for :class:`mln_core.plugins.PluginManager` and makes it (importing the
    enabled plugins) the first time anything of it is used: a command that calls no hook
    (``mln --help``) imports no plugin. ``on_load(pm)`` runs once it is made (the command
    line reports the plugins that failed there)."""

    commands_skipped = False    # set by the command line when no plugin's commands were added

    def __init__(self, disabled: set[str] | None = None, env=os.environ, on_load=None):
        self._disabled = set(disabled or ())
        self._env = env
        self._on_load = on_load
        self._discovery: Discovery | None = None
        self._pm = None
        self._lock = threading.RLock()

    def discovery(self) -> Discovery:
        if self._discovery is None:
            self._discovery = Discovery(self._env)
        return self._discovery

    def may_add_commands(self) -> bool:
        """Whether a plugin may add commands (then they must all be loaded before the command
        line is parsed); see :meth:`Discovery.commands_possible`."""
        if self._pm is not None:
            return True
        disabled = self._disabled | {n.strip() for n in self._env.get("MLN_DISABLE_PLUGINS", "").split(",")}
        return self.discovery().commands_possible(disabled)

    @property
    def is_loaded(self) -> bool:
        return self._pm is not None

    def loaded(self):
        """The plugin manager itself, made now if not yet."""
        if self._pm is None:
            with self._lock:
                if self._pm is None:
                    from .plugins import make_plugin_manager
                    pm = make_plugin_manager(self._disabled, self._env, discovery=self._discovery)
                    self._pm = pm
                    if self._on_load is not None:
                        self._on_load(pm)
        return self._pm

    def __getattr__(self, name: str):
        if name in ("_disabled", "_env", "_on_load", "_discovery", "_pm", "_lock"):
            raise AttributeError(name)      # not made yet (copy, pickle): no loading for that
        return getattr(self.loaded(), name)

    def __repr__(self) -> str:
        return f"<LazyPluginManager {'loaded' if self._pm is not None else 'not loaded yet'}>"
