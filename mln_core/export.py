"""``mln export`` / ``mln import``: a whole project as one archive (spec 4.2, ``export``).

The archive is a tar file (plain, gzip or zstd), readable with plain ``tar`` too::

    manifest.json              first: what the archive holds, with a SHA-256 per member
    project/<project>.mln      the saved project file
    project/version            its version
    project/state.json         what its build recorded
    project/<hook>.sh          its hook scripts
    disks/<host>/...           each host's disk, as its storage plugin wrote it
                               (``mln_export_disk``; the file plugin: a compressed qcow2)

Every path in it is relative; the machine it was made on shows only where the recorded
state names it (the hypervisor configuration is made afresh on import). An import reads
the manifest, refuses a project that exists, unpacks every member into a staging
directory while checking its path, type, size and checksum, and only then lets the
storage plugins make the disks (``mln_import_disk``), the backends the configuration
(``mln_build_host``) and renames the staging directory into place, as a build does.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict

from .errors import MlnError
from .lifecycle import HOOK_SCRIPTS, _state, recorded_disk
from .names import name_problem
from .private import make_dir, write_file
from .store import OutsideFiles, Store, record_helper

FORMAT = "mln-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20          # a manifest is a few KB per host
CHUNK = 1 << 20
COMPRESSIONS = {".tar": "none", ".tar.gz": "gzip", ".tgz": "gzip", ".tar.zst": "zstd", ".tzst": "zstd"}


def compression_of(path: str) -> str:
    for suffix, kind in COMPRESSIONS.items():
        if path.endswith(suffix):
            return kind
    raise MlnError(f"{path}: the archive's name must end in .tar, .tar.gz (.tgz) or .tar.zst")


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------

def export_project(engine, name: str, out: str, stop_first: bool = False, force: bool = False,
                   wait_s: float = 60) -> dict:
    """Write project ``name`` to the archive ``out``; returns the manifest."""
    ctx, store = engine.ctx, engine.store
    store.require(name)
    out = os.path.abspath(out)
    kind = compression_of(out)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise MlnError(f"cannot write {out}: no such directory {folder}")
    if os.path.isdir(out) or (os.path.lexists(out) and not force):
        raise MlnError(f"{out} exists; use -f to overwrite it")
    if stop_first and any(r["state"] == "up" for r in engine.status(name) if r["kind"] == "host"):
        ctx.log(f"+---> stopping project {name} first (-s)")
        engine.stop(name, wait_s=wait_s)
    with engine.locked(name) as loaded:
        project, pdir = loaded.project, ctx.project_dir
        if len((ctx.state.get("placement") or {}).get("servers", [])) > 1:
            raise MlnError(f"project '{name}' is spread over servers: export holds the disks of one server "
                           "only, so it is refused (not supported yet)")
        _require_down(engine, project, stop_first)
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=folder)
        try:
            members = {f"project/{f}": os.path.join(pdir, f)
                       for f in [f"{name}.mln", "version", "state.json"] + [f"{h}.sh" for h in HOOK_SCRIPTS]
                       if os.path.isfile(os.path.join(pdir, f))}
            hosts = {}
            for host in project.hosts.values():
                hosts[host.name] = _export_host(ctx, host, pdir, os.path.join(work, host.name), members)
            from . import __version__
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "mln_version": __version__,
                        "project": name, "version": store.version(name),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hosts": hosts,
                        "members": {arc: {"size": os.path.getsize(p), "sha256": _sha256_file(p)}
                                    for arc, p in members.items()}}
            _write_archive(ctx, out, kind, manifest, members)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    size = os.path.getsize(out)
    ctx.log(f"+---> project {name} (version {manifest['version']}) exported to {out} ({_mb(size)})")
    return manifest


def _require_down(engine, project, stop_first: bool) -> None:
    """A running guest's disk is not consistent, nor one whose memory was saved."""
    states = {h.name: _state(engine.host_status(h)) for h in project.hosts.values()}
    up = [n for n, (st, _) in states.items() if st == "up"]
    if up:
        raise MlnError(f"project '{project.name}' is running ({', '.join(up)}): a running guest's disk is "
                       f"not consistent; stop it first (mln stop -p {project.name}) or export with -s, "
                       "which stops it")
    saved = [n for n, (st, detail) in states.items() if detail.startswith("saved")]
    if saved:
        raise MlnError(f"{', '.join(saved)} of project '{project.name}' {'is' if len(saved) == 1 else 'are'} "
                       "saved (mln stop -S): the disk goes with the saved memory, which is not exported; "
                       f"start {'it' if len(saved) == 1 else 'them'} and stop without -S first")


def _export_host(ctx, host, pdir: str, dest: str, members: dict) -> dict:
    entry = ctx.state.get("hosts", {}).get(host.name)
    if not entry or "disk" not in entry:
        raise MlnError("was not built (no disk recorded); run 'mln build' again", f"host {host.name}")
    disk = recorded_disk(entry, pdir)
    os.makedirs(dest)
    try:
        info = ctx.hook.mln_export_disk(host=host, disk=disk, dest=dest, ctx=ctx)
    except MlnError as e:
        raise MlnError(f"export: {e.message}", f"host {host.name}") from None
    if info is None:
        raise MlnError(f"no installed storage plugin exports its {disk.kind} disk", f"host {host.name}")
    total = 0
    for f in sorted(os.listdir(dest)):
        path = os.path.join(dest, f)
        if name_problem("template", f) or not os.path.isfile(path) or os.path.islink(path):
            raise MlnError(f"its storage plugin wrote '{f}', which is not a plain file name",
                           f"host {host.name}")
        members[f"disks/{host.name}/{f}"] = path
        total += os.path.getsize(path)
    ctx.log(f"+---> {host.name}: disk exported ({_mb(total)})")
    return {"disk": info if isinstance(info, dict) else {}}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _write_archive(ctx, out: str, kind: str, manifest: dict, members: dict) -> None:
    """Manifest first, then every member; written aside and renamed into place."""
    part = f"{out}.part-{os.getpid()}"
    proc = None
    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))   # it holds secrets and disks
    try:
        if kind == "zstd":
            import subprocess
            proc = ctx.on().popen(["zstd", "-q", "-f", "-T0", "-o", part], what="zstd",
                                  stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            tf = tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT)
        else:
            tf = tarfile.open(part, "w:gz" if kind == "gzip" else "w", format=tarfile.PAX_FORMAT,
                              **({"compresslevel": 6} if kind == "gzip" else {}))
        with tf:
            data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tf.addfile(info, io.BytesIO(data))
            for arc, path in members.items():
                tf.add(path, arcname=arc, recursive=False, filter=_plain)
        if proc is not None:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise MlnError(f"zstd could not write {out}: {err}")
        os.replace(part, out)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.name.endswith(".sh") else 0o644
    return info


# ---------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------

def import_archive(engine, path: str, new_name: str | None = None) -> str:
    """Restore the archive ``path`` as a project (``new_name``, else its own name);
    returns the project's name. Nothing is placed unless everything checks out."""
    ctx, store = engine.ctx, engine.store
    if not os.path.isfile(path):
        raise MlnError(f"no such archive: {path}")
    with _Reader(ctx, path) as archive:
        manifest = _read_manifest(archive, path)
        name = new_name or manifest["project"]
        problem = name_problem("project", name)
        if problem:
            raise MlnError(problem if new_name else f"{path}: the archive names a bad project: {problem}")
        _refuse_clash(store, name)
        lock_path = store.lock(name).path
        made_lock = not os.path.exists(lock_path)
        try:
            with store.lock(name):
                store.clean_stale_builds(name, ctx.log)
                _refuse_clash(store, name)
                staging = store.staging_dir(name)
                Store.discard_staging(staging)
                make_dir(staging)                # 0700, as every project directory (mln_core.private)
                project = None
                try:
                    unpacked = os.path.join(staging, ".import")
                    _unpack(archive, manifest, unpacked, path)
                    project = _place(engine, manifest, name, unpacked, staging)
                    shutil.rmtree(unpacked)
                    os.replace(staging, store.project_dir(name))
                except BaseException:
                    if project is not None:
                        engine._discard(staging, project)     # what plugins made outside, too
                    ctx.outside_files = None
                    Store.discard_staging(staging)
                    raise
        except BaseException:
            if made_lock and not store.exists(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
            raise
    ctx.log(f"+---> project {name} (version {manifest['version']}) imported from {path}"
            + (f" (exported as {manifest['project']})" if name != manifest["project"] else ""))
    return name


def _refuse_clash(store, name: str) -> None:
    if store.exists(name):
        raise MlnError(f"project '{name}' exists in {store.root}; remove it first, or import under "
                       "another name with -p NEWNAME")
    if os.path.lexists(store.project_dir(name)):
        raise MlnError(f"{store.project_dir(name)} exists but is not an mln project; move it away or import "
                       "under another name with -p NEWNAME")


def _magic(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


class _Reader:
    """The archive as a tar stream (gzip and zstd recognized by their magic bytes). Its
    reads (``next``, ``read``) turn every error of the archive into one message."""

    def __init__(self, ctx, path: str):
        self.ctx, self.path, self.proc, self.tf = ctx, path, None, None

    def __enter__(self):
        magic = self._guard(lambda: _magic(self.path))
        if magic == b"\x28\xb5\x2f\xfd":
            import subprocess
            self.proc = self.ctx.on().popen(["zstd", "-d", "-c", "-q", self.path], what="zstd",
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if self.proc is not None:
                self.tf = self._guard(lambda: tarfile.open(fileobj=self.proc.stdout, mode="r|"))
            else:
                self.tf = self._guard(lambda: tarfile.open(self.path, mode="r|gz" if magic[:2] == b"\x1f\x8b"
                                                           else "r|"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.tf is not None:
            with contextlib.suppress(Exception):
                self.tf.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def _guard(self, read):
        try:
            return read()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise MlnError(f"{self.path}: not an mln export archive, or a damaged one ({_reason(e)}); "
                           "nothing was imported") from None

    def next(self):
        return self._guard(self.tf.next)

    def read(self, member, size: int = -1) -> bytes:
        f = self._guard(lambda: self.tf.extractfile(member))
        return self._guard(lambda: f.read(size))

    def blocks(self, member):
        f = self._guard(lambda: self.tf.extractfile(member))
        while True:
            block = self._guard(lambda: f.read(CHUNK))
            if not block:
                return
            yield block

    def finish(self) -> None:
        """The whole archive was read: a zstd that failed on the rest is an error."""
        if self.proc is not None:
            self._guard(lambda: self.proc.stdout.read())
            if self.proc.wait() != 0:
                raise MlnError(f"{self.path}: the archive is damaged (zstd cannot decompress it); "
                               "nothing was imported")


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[:200]


def _read_manifest(archive, path: str) -> dict:
    first = archive.next()
    if first is None or first.name != MANIFEST or not first.isreg() or first.size > MANIFEST_LIMIT:
        raise MlnError(f"{path}: not an mln export archive (it does not start with {MANIFEST}); nothing was "
                       "imported")
    try:
        manifest = json.loads(archive.read(first))
    except ValueError as e:
        raise MlnError(f"{path}: its {MANIFEST} is damaged ({_reason(e)}); nothing was imported") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise MlnError(f"{path}: {MANIFEST}: {problem}; nothing was imported")
    return manifest


def _manifest_problem(m) -> str | None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"not an mln export (no \"format\": \"{FORMAT}\")"
    if m.get("format_version") != FORMAT_VERSION:
        return (f"format version {m.get('format_version')!r}, but this mln reads version {FORMAT_VERSION} "
                "(a newer mln wrote it?)")
    project = m.get("project")
    if not isinstance(project, str) or name_problem("project", project):
        return f"a bad project name {str(project)[:40]!r}"
    if not isinstance(m.get("version"), int) or not isinstance(m.get("hosts"), dict):
        return "no version or hosts"
    members = m.get("members")
    if not isinstance(members, dict):
        return "no members"
    for arc, info in members.items():
        problem = member_problem(arc)
        if problem:
            return f"member '{arc[:80]}' {problem}"
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and info["size"] >= 0
                and isinstance(info.get("sha256"), str) and len(info["sha256"]) == 64):
            return f"member '{arc[:80]}' has no size and sha256"
    for f in (f"{project}.mln", "version", "state.json"):
        if f"project/{f}" not in members:
            return f"no project/{f}"
    return None


def member_problem(arc: str) -> str | None:
    """Why a member's path is not one an export writes (absolute, ``..``, elsewhere), or None."""
    if not isinstance(arc, str) or not arc:
        return "has no name"
    if arc.startswith("/") or "\\" in arc:
        return "is an absolute path"
    parts = arc.split("/")
    if ".." in parts or "." in parts or "" in parts:
        return "has '..' (or '.', '//') in its path"
    if len(parts) == 2 and parts[0] == "project" and not name_problem("template", parts[1]):
        return None
    if len(parts) == 3 and parts[0] == "disks" and not name_problem("host", parts[1]) \
            and not name_problem("template", parts[2]):
        return None
    return "is not in project/ or disks/<host>/"


def _unpack(archive, manifest: dict, dest: str, path: str) -> None:
    """Every member into ``dest``, checked: path, type, size and SHA-256 as the manifest
    says; every member of the manifest present once."""
    expected, seen = manifest["members"], set()
    while (m := archive.next()) is not None:
        problem = member_problem(m.name)
        if problem:
            raise MlnError(f"{path}: unsafe member '{m.name[:100]}': it {problem}; nothing was imported")
        if not m.isreg():
            raise MlnError(f"{path}: member '{m.name}' is not a regular file (a link or device); nothing was "
                           "imported")
        if m.name not in expected or m.name in seen:
            raise MlnError(f"{path}: member '{m.name}' is {'twice in' if m.name in seen else 'not in'} the "
                           "manifest; nothing was imported")
        seen.add(m.name)
        if m.size != expected[m.name]["size"]:
            raise MlnError(f"{path}: member '{m.name}' has {m.size} bytes, the manifest says "
                           f"{expected[m.name]['size']}; nothing was imported")
        target = os.path.join(dest, *m.name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        h = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            for block in archive.blocks(m):
                h.update(block)
                out.write(block)
        if h.hexdigest() != expected[m.name]["sha256"]:
            raise MlnError(f"{path}: member '{m.name}' does not match its SHA-256 in the manifest "
                           "(the archive is damaged); nothing was imported")
    archive.finish()
    missing = sorted(set(expected) - seen)
    if missing:
        raise MlnError(f"{path}: the archive ends before {', '.join(missing[:5])} (it is truncated); nothing "
                       "was imported")


def _place(engine, manifest: dict, name: str, unpacked: str, staging: str):
    """The project in ``staging``: its files, then disks and configuration from the plugins."""
    from .lang.writer import write_tree
    from .project import load_document, load_project
    ctx, old_name = engine.ctx, manifest["project"]
    src = os.path.join(unpacked, "project")
    source = engine.store.source_path(name, staging)
    if name == old_name:
        shutil.copyfile(os.path.join(src, f"{old_name}.mln"), source)
    else:                                    # -p NEWNAME: the saved file names the new project
        doc = load_document(os.path.join(src, f"{old_name}.mln"), ctx, post_parse=False)
        if doc.global_block is None:
            raise MlnError("the archive's project file has no global block", f"project {old_name}")
        doc.global_block.set("project", name)
        write_file(source, write_tree(doc.root))
    shutil.copyfile(os.path.join(src, "version"), os.path.join(staging, "version"))
    for d in ("images", "hosts", "switches"):
        os.makedirs(os.path.join(staging, d))
    old_state = Store.read_state(src)
    project = load_project(source, ctx).project
    engine._write_hook_scripts(project, staging)     # from the project file, not from the archive
    engine._bind(project, staging)
    state = ctx.state = {"hosts": {}, "switches": {}}
    ctx.staging = staging
    ctx.record_helper = lambda pidfile, mountpoint=None: record_helper(staging, pidfile, mountpoint)
    outside = ctx.outside_files = OutsideFiles(staging)
    for switch in project.switches.values():
        data = ctx.hook.mln_build_switch(switch=switch, ctx=ctx)
        if data is None:
            raise MlnError(f"switch '{switch.name}': no installed plugin builds switches of this kind")
        state["switches"][switch.name] = data if isinstance(data, dict) else {}
    for host in project.hosts.values():
        _import_host(ctx, host, old_state, unpacked, state)
    Store.write_state(staging, state)
    outside.commit()                       # disks outside the project move in
    ctx.outside_files = None
    engine._commit(staging, project, outside)
    return project


def _import_host(ctx, host, old_state: dict, unpacked: str, state: dict) -> None:
    from .model import Disk
    old = old_state.get("hosts", {}).get(host.name)
    src = os.path.join(unpacked, "disks", host.name)
    if not isinstance(old, dict) or not isinstance(old.get("disk"), dict) or not os.path.isdir(src):
        raise MlnError("the archive holds no disk for it", f"host {host.name}")
    try:
        recorded = Disk(**old["disk"])
    except TypeError:
        raise MlnError("the archive's state.json records its disk wrongly", f"host {host.name}") from None
    kinds = {"path": str, "format": str, "kind": str, "extra": dict}
    if any(not isinstance(getattr(recorded, k), t) for k, t in kinds.items()) or \
            not (recorded.size is None or isinstance(recorded.size, int)):
        raise MlnError("the archive's state.json records its disk wrongly", f"host {host.name}")
    step = "import disk"
    try:
        disk = ctx.hook.mln_import_disk(host=host, disk=recorded, src=src, ctx=ctx)
        if disk is None:
            raise MlnError(f"no installed storage plugin imports its {recorded.kind} disk")
        entry = state["hosts"][host.name] = {k: v for k, v in old.items() if k not in ("disk", "backend")}
        entry["disk"] = asdict(disk)
        step = f"{host.hypervisor} configuration"
        data = ctx.hook.mln_build_host(host=host, disk=disk, ctx=ctx)
        if data is None:
            raise MlnError(f"no installed backend builds '{host.hypervisor}' hosts")
        entry["hypervisor"] = host.hypervisor
        entry["backend"] = data if isinstance(data, dict) else {}
    except MlnError as e:
        raise MlnError(f"{step}: {e.message}", f"host {host.name}") from None
    ctx.log(f"+---> {host.name}: imported")
