"""The projects directory: saved project, version, state, lock, staging of builds.

    <projects>/<project>/
        <project>.mln      the normalized project file every later command reads
        version            incremented by every build and upgrade
        state.json         what was built: per host its disk and backend data, per switch its data
        images/            disks made by the file storage plugin
        hosts/<host>/      runtime files: console.log, pid, control sockets
        switches/<switch>/ runtime files of a switch
    <projects>/.<project>.lock        the project lock (fcntl), held by any command working on it
    <projects>/.<project>.build-<pid> a build in progress; renamed into place when it succeeds
    <projects>/.<project>.commit      the journal of a build being put in place, or of a removal
                                      (mln_core.commit: the next command finishes or rolls it back)
    <projects>/.mln-tmp-<pid>         a command's temporary files (:meth:`Store.private_tmp`)

A build writes everything into its staging directory and renames it into place only
when every host was built, so a failed or killed build never touches the project that
was there before; the next command on that project removes stale staging directories
(after stopping any helper process they recorded).

Files a build makes outside the project directory (``filepath`` disks) are staged too,
by :class:`OutsideFiles`: each is written under its own name into a hidden folder
``.<project>.build-<pid>`` beside its place and moved there when the build is put in place.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import threading
import time

from .machine import Machine, local
from .errors import MlnError
from .names import check_name, name_problem, path_problem
from .private import write_file

STATE = "state.json"
OUTSIDE = "outside"   # in a staging directory: the folders its build staged files in, one per line


class ProjectBusy(MlnError):
    """Another mln command holds the project's lock."""


class ProjectLock:
    """An exclusive fcntl lock on one project; a second command gets a clear message."""

    def __init__(self, projects_dir: str, project: str):
        check_name("project", project)
        _make_root(projects_dir)
        self.path = os.path.join(projects_dir, f".{project}.lock")
        self.project = project
        self.fd: int | None = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise MlnError(f"cannot lock project '{self.project}': {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise ProjectBusy(f"project '{self.project}' is busy: another mln command "
                              f"({holder or 'unknown pid'}) is working on it; try again when it is done")
        try:
            same = os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:       # unlinked by a remove that held it: this lock protects nothing; again
            os.close(self.fd)
            self.fd = None
            return self.__enter__()
        os.ftruncate(self.fd, 0)
        with contextlib.suppress(OSError):          # (who holds it, for the message above: not on a full disk)
            os.pwrite(self.fd, f"pid {os.getpid()}\n".encode(), 0)
        return self

    def unlink(self) -> None:
        """Delete the lock file while it is held (``remove``): a command that opened it in
        the meantime finds it gone once it gets the lock, and takes a new one."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _make_root(projects_dir: str) -> None:
    """Make the projects directory; a clear error when it cannot be one."""
    problem = path_problem(projects_dir, "the projects directory")
    if problem:
        raise MlnError(problem)
    if os.path.lexists(projects_dir) and not os.path.isdir(projects_dir):
        raise MlnError(f"the projects directory {projects_dir} is not a directory (see 'projects' in "
                       "mln.conf, or -P)")
    try:
        os.makedirs(projects_dir, exist_ok=True)
    except OSError as e:
        raise MlnError(f"cannot make the projects directory {projects_dir}: {e.strerror}") from None


class Store:
    """Paths and files of the projects directory. Every project name that reaches a path
    here is checked (:mod:`mln_core.names`): ``-p x/../../victim`` names no directory."""

    def __init__(self, projects_dir: str):
        self.root = projects_dir

    def project_dir(self, project: str) -> str:
        check_name("project", project)
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            _make_root(self.root)          # raises: the projects directory is a file
        return os.path.join(self.root, project)

    def identity(self) -> str:
        """This projects directory's own random name (``.mln-id``, made once): what a server
        records of the manager that built a part there."""
        path = os.path.join(self.root, ".mln-id")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            import uuid
            _make_root(self.root)
            ident = uuid.uuid4().hex
            write_file(path, ident + "\n")
            return ident

    def exists(self, project: str) -> bool:
        return os.path.isfile(os.path.join(self.project_dir(project), f"{project}.mln"))

    def require(self, project: str) -> str:
        if not self.exists(project):
            known = ", ".join(self.list()) or "there are none"
            raise MlnError(f"no project '{project}' in {self.root} (projects: {known})")
        return self.project_dir(project)

    def list(self) -> list[str]:
        if not os.path.isdir(self.root):
            if os.path.lexists(self.root):
                _make_root(self.root)      # raises: the projects directory is a file
            return []
        names = os.listdir(self.root)
        found = {n for n in names if not n.startswith(".") and name_problem("project", n) is None and self.exists(n)}
        found |= {n[1:-7] for n in names if n.startswith(".") and n.endswith(".commit") and      # interrupted:
                  name_problem("project", n[1:-7]) is None}                                      # put right
        return sorted(found)

    def lock(self, project: str) -> ProjectLock:
        return ProjectLock(self.root, project)

    # -- saved files ---------------------------------------------------------------------
    def source_path(self, project: str, base: str | None = None) -> str:
        check_name("project", project)
        return os.path.join(base or self.project_dir(project), f"{project}.mln")

    def version(self, project: str) -> int:
        try:
            with open(os.path.join(self.project_dir(project), "version")) as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def read_state(pdir: str) -> dict:
        try:
            with open(os.path.join(pdir, STATE)) as f:
                state = json.load(f)
        except FileNotFoundError:
            return {"hosts": {}, "switches": {}}
        except (ValueError, OSError) as e:
            raise MlnError(f"cannot read {os.path.join(pdir, STATE)}: {e}") from None
        if not isinstance(state, dict):
            raise MlnError(f"{os.path.join(pdir, STATE)} is damaged: it holds no JSON object")
        return state

    @staticmethod
    def write_state(pdir: str, state: dict) -> None:
        tmp = os.path.join(pdir, STATE + ".tmp")
        write_file(tmp, json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, os.path.join(pdir, STATE))

    # -- staging ---------------------------------------------------------------------------
    def staging_dir(self, project: str) -> str:
        check_name("project", project)
        return os.path.join(self.root, f".{project}.build-{os.getpid()}")

    def clean_stale_builds(self, project: str, log=None) -> None:
        """Remove staging directories of builds that died (their helper processes too)."""
        check_name("project", project)
        if os.path.lexists(os.path.join(self.root, f".{project}.commit")):
            return                         # a build being put in place: mln_core.commit recovers it
        for path, pid in self.stale_builds(project):
            if log:
                log(f"removing what an interrupted build left: {path}")
            self.discard_staging(path)
        self.clean_stale_tmp()

    def stale_builds(self, project: str) -> list[tuple[str, int]]:
        """(path, pid) of the staging directories of ``project``'s builds that died."""
        check_name("project", project)
        return self.leftovers(rf"\.{re.escape(project)}\.build-(\d{{1,9}})")

    def leftovers(self, pattern: str) -> list[tuple[str, int]]:
        """(path, pid) of the entries of the projects directory whose whole name matches
        ``pattern`` (its group: a pid) and whose process is gone: exactly the names mln
        gives, never another project's (``p.build-1`` is a project, not a build of ``p``)."""
        if not os.path.isdir(self.root):
            return []
        out = []
        for name in sorted(os.listdir(self.root)):
            m = re.fullmatch(pattern, name)
            if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
                out.append((os.path.join(self.root, name), int(m.group(1))))
        return out

    # -- temporary files: under the projects directory, per process -----------------------
    TMP = ".mln-tmp-{pid}"

    @contextlib.contextmanager
    def private_tmp(self):
        """While it is entered, ``<projects>/.mln-tmp-<pid>`` is this process's temporary
        directory (Python's ``tempfile``: image scratch files, FUSE views); deleted at the
        end, and a killed command's by the next one (:meth:`clean_stale_tmp`), so nothing
        of a build stays behind in /tmp."""
        import tempfile
        path = os.path.join(self.root, self.TMP.format(pid=os.getpid()))
        if tempfile.tempdir == path:
            yield path
            return
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            yield None                     # /tmp it is
            return
        was, tempfile.tempdir = tempfile.tempdir, path
        try:
            yield path
        finally:
            tempfile.tempdir = was
            shutil.rmtree(path, ignore_errors=True)

    def clean_stale_tmp(self) -> None:
        """Delete the temporary directories of mln commands that died (none with a mount
        in it: a helper still holds it; the build that recorded the helper stops it first)."""
        mounts = [m for _, m, _ in Machine.mounts()]
        for path, _pid in self.leftovers(r"\.mln-tmp-(\d{1,9})"):
            if not any(m == path or m.startswith(path + os.sep) for m in mounts):
                shutil.rmtree(path, ignore_errors=True)
        # what a killed 'mln serve' left: a request's project text, the files {} it received
        for path, _pid in self.leftovers(r"\.[A-Za-z0-9][A-Za-z0-9_.-]*\.(?:request|files)-(\d{1,9})(?:\.mln)?"):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    @staticmethod
    def discard_staging(path: str) -> None:
        """Delete a staging directory, its helpers' processes and its staged outside files."""
        kill_recorded_helpers(path)
        OutsideFiles.discard_recorded(path)
        shutil.rmtree(path, ignore_errors=True)


class OutsideFiles:
    """The files one build writes outside its project directory.

    ``place(final)`` gives the path to write instead: the same name in a hidden folder
    beside ``final`` (same filesystem, so moving it is a rename, and a file that names
    itself, such as a VMDK, keeps its name). ``commit()`` moves every staged file to its
    place once the whole build succeeded, and the file it replaces into the folder, where
    the replaced project's removal finds it (``where``); ``discard()`` deletes the folders.
    The folders are recorded in the staging directory before they are made, so the build
    that finds a killed build's staging directory deletes them.
    """

    ASIDE = ".replaced."

    def __init__(self, staging: str, project_dir: str | None = None, mine=frozenset()):
        self.staging = staging
        self.folder = os.path.basename(staging)           # .<project>.build-<pid>
        self.staged: dict[str, str] = {}                  # final path -> staged path
        self.now: dict[str, str] = {}                     # final path -> where its bytes are now
        self.hosts: dict[str, str | None] = {}            # final path -> the host that placed it
        self.project_dir, self.mine = project_dir, set(mine)
        self.current = threading.local()                  # .host: the host being built (engine)
        self._folders: set[str] = set()
        self._lock = threading.Lock()

    def place(self, final: str) -> str:
        """``project_dir`` given: a file another project (or another host) owns is refused
        (:mod:`mln_core.owners`)."""
        final = os.path.abspath(final)
        host = getattr(self.current, "host", None)
        with self._lock:
            if final in self.hosts and host and self.hosts[final] and self.hosts[final] != host:
                raise MlnError(f"the disk {final} of host {host} is also the disk of host "
                               f"{self.hosts[final]} of this project; two hosts cannot share one disk")
            if final not in self.staged and self.project_dir is not None:
                from .owners import problem
                why = problem(final, self.project_dir, host, self.mine)
                if why:
                    raise MlnError(why)
            self.hosts.setdefault(final, host)
            if final not in self.staged:
                folder = os.path.join(os.path.dirname(final), self.folder)
                if folder not in self._folders:
                    with open(os.path.join(self.staging, OUTSIDE), "a") as f:
                        f.write(folder + "\n")
                    os.makedirs(folder, exist_ok=True)
                    self._folders.add(folder)
                self.staged[final] = self.now[final] = os.path.join(folder, os.path.basename(final))
            return self.staged[final]

    def where(self, path: str) -> str:
        """Where the bytes of ``path`` are: while building, its staged copy; after
        ``commit``, the file it replaced (which may not exist)."""
        return self.now.get(os.path.normpath(path), path) if self.now else path

    def moves(self) -> list[list]:
        """[final, staged, aside, host] of every staged file to move in (for a journal)."""
        return [[final, staged, os.path.join(os.path.dirname(staged), self.ASIDE + os.path.basename(final)),
                 self.hosts.get(final)] for final, staged in self.staged.items() if os.path.lexists(staged)]

    @staticmethod
    def move_in(final: str, staged: str, aside: str) -> None:
        """Move one staged file in, the file it replaces aside; again after a kill: what
        was done is not done twice."""
        if not os.path.lexists(staged):
            return                                        # moved in already
        if os.path.lexists(final) and not os.path.lexists(aside):
            os.replace(final, aside)
        os.replace(staged, final)

    @staticmethod
    def move_back(final: str, staged: str, aside: str) -> None:
        """Undo :meth:`move_in` (also a half-done one)."""
        if not os.path.lexists(staged) and os.path.lexists(final):
            os.replace(final, staged)
        if os.path.lexists(aside):
            os.replace(aside, final)

    def committed(self) -> None:
        """The files were moved in: from now on ``where`` names the ones they replaced."""
        self.now = {final: os.path.join(os.path.dirname(staged), self.ASIDE + os.path.basename(final))
                    for final, staged in self.staged.items()}

    def commit(self) -> None:
        """Move the staged files in; on a failure, move back what was moved and raise."""
        moved: list[tuple[str, str, str | None]] = []
        try:
            for final, staged in self.staged.items():
                if not os.path.lexists(staged):
                    continue
                aside = os.path.join(os.path.dirname(staged), self.ASIDE + os.path.basename(final))
                if os.path.lexists(final):
                    os.replace(final, aside)
                    moved.append((final, staged, aside))
                    os.replace(staged, final)
                else:
                    moved.append((final, staged, None))
                    os.replace(staged, final)
        except OSError:
            for final, staged, aside in reversed(moved):
                with contextlib.suppress(OSError):
                    if not os.path.lexists(staged):
                        os.replace(final, staged)
                    if aside is not None:
                        os.replace(aside, final)
            raise
        self.now = {final: os.path.join(os.path.dirname(staged), self.ASIDE + os.path.basename(final))
                    for final, staged in self.staged.items()}

    def discard(self) -> None:
        self.discard_recorded(self.staging)

    @staticmethod
    def discard_recorded(staging: str) -> None:
        try:
            with open(os.path.join(staging, OUTSIDE)) as f:
                folders = f.read().splitlines()
        except FileNotFoundError:
            return
        name = os.path.basename(staging)
        for folder in folders:
            if os.path.basename(folder) == name:     # never anything but our own hidden folders
                shutil.rmtree(folder, ignore_errors=True)


alive = Machine.alive   # (pid) -> bool: the process runs (a zombie does not count)



HELPERS = "helpers"


def record_helper(staging: str, pidfile: str, mountpoint: str | None = None) -> None:
    """Remember a helper process (e.g. a FUSE export) before it starts: where it will
    write its pid, and what it mounts, so that a later cleanup can stop it."""
    with open(os.path.join(staging, HELPERS), "a") as f:
        f.write(f"{pidfile}\t{mountpoint or '-'}\n")


def kill_recorded_helpers(staging: str) -> None:
    """Stop the recorded helpers of a dead build, unmount what they mounted, remove their
    temporary directories. A pid is signalled only if that process names its pidfile."""
    try:
        with open(os.path.join(staging, HELPERS)) as f:
            entries = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return
    for pidfile, mnt in entries:
        pid = _pid_from(pidfile)
        machine = local()
        if pid is not None and machine.send_signal(pid, signal.SIGTERM):
            for _ in range(100):
                if not alive(pid) or _pid_from(pidfile) is None:
                    break
                time.sleep(0.05)
        if mnt != "-" and _is_mounted(mnt):
            machine.run(["umount", "-l", mnt], check=False)
        tmp = os.path.dirname(pidfile)
        if os.path.basename(tmp).startswith("mln-") and not (mnt != "-" and _is_mounted(mnt)):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_from(pidfile: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and was started with that pidfile."""
    pid = Machine.read_pid(pidfile)
    if pid is None or not any(pidfile in word for word in Machine.cmdline(pid) or []):
        return None
    return pid if alive(pid) else None


def _is_mounted(path: str) -> bool:
    return any(mountpoint == path for _, mountpoint, _ in Machine.mounts())
