"""The server side of a project spread over servers: one request, carried out by this
server's own engine on its part of the project.

Every transport carries the same requests (JSON objects) to :func:`handle`: ``ssh`` runs
``mln serve --many`` on the server, one for the whole command, and writes each request as a
line on its standard input, with an ``id`` (requests sent at once are carried out at once,
by worker processes it forks, and every line of an answer carries its request's ``id``);
the daemon runs ``mln serve`` for each request it admits, the request on its standard input.
``mln serve`` writes one JSON object per line: ``{"log": LINE}`` for each progress line,
``{"alive": true}`` every few seconds while it works, then ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": MESSAGE}``.

Requests (``verb`` and its fields)::

    ping                                        -> {"server", "version"}
    need     templates: [{name, sha256}]        -> {"missing": [names], "templates_dir"}
    register name, message, files: {image, kernel, initrd} (sent into templates_dir/.incoming)
    build    project, text, placement, replace, fresh -> {}  (fresh: the manager has no such
             project, so one here is what a build cut off from it left, and goes first)
    start    project, host, pause               -> {}
    stop     project, host, hard, wait, save, pause -> {}
    status   project                            -> {"rows": [...]}
    upgrade  project, text, placement, simulate, start_new, live, keep, files, hold, join, moves
                                                -> {"plan": plan JSON, "text": plan text, "empty"}
             (join: this server is new to the project; moves: mln_core.move, mln_core.upgrade)
    pack     project, host                      -> {"archive", "sha256", "disk"} (mln_core.move)
    migrate_in project, host, address, back  -> what migrate_out needs; migrate_out project, host,
             incoming, back -> {"downtime_ms", "total_ms", "tail_ms", "switched", "resumable"} (the
             guest runs there at the settle, or at once if "switched" or "resumable"; back: a
             switched guest returns, mln_core.move)
    arrived  project, host                      -> {} (a guest sent runs there now: let run if "resumable")
    left     project, host                      -> {"ended"} (on the server it left, once it runs on the
             new one: what is left of it ends, mln_core.move.left)
             (hold: carried out up to phase ready, then the manager's word:)
    settle   project, keep                      -> {"settled"}  (keep: finish it; else undo it)
    remove   project, stopped                   -> {} (stopped: {hard, wait}: stopped first, as by stop)
    capacity                                    -> {"projects", "vms", "memory_free", ...} (mln_core.capacity)

Any request may carry ``strict: true`` (the manager's ``--strict``: warnings are errors here too).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tarfile
import threading

from .errors import MlnError
from .names import check_name
from .servers import here

HEARTBEAT = 5          # seconds between the lines that say this server still works
VERBS = ("ping", "need", "register", "build", "upgrade", "settle", "pack", "migrate_in", "migrate_out", "arrived",
         "left", "start", "stop", "status", "remove", "capacity")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def template_sha256(path: str) -> str:
    """:func:`sha256_of` a template, remembered beside it (``.NAME.sha256``: the digest, and
    the file's inode, size, modification and change times, taken before it was read; any of
    them different: read again)."""
    st = os.stat(path)
    key = f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    note = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.sha256")
    try:
        with open(note) as f:
            seen, _, digest = f.read().strip().rpartition(" ")
        if seen == key and len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = sha256_of(path)
    try:                            # (a directory this user cannot write: read each time)
        import tempfile
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".sha256-")
        with os.fdopen(fd, "w") as f:
            f.write(f"{key} {digest}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, note)
    except OSError:
        pass
    return digest


def handle(request: dict, engine) -> dict:
    """Carry out one request on this server; the result's fields are the verb's."""
    ctx = engine.ctx
    verb = request.get("verb")
    if verb not in VERBS:
        raise MlnError(f"unknown request '{verb}' (known: {', '.join(VERBS)})")
    if request.get("strict"):                       # the manager's --strict
        ctx.options["strict"] = True
    me = here(ctx.config)
    placement = request.get("placement")
    if placement and ctx.config.get("service_host") and placement.get("here") != me:
        raise MlnError(f"this server is '{me}', not '{placement.get('here')}' (check the 'server' lines of "
                       "the manager's mln.conf)")
    if verb == "ping":
        from . import __version__
        return {"server": me, "version": __version__}
    if verb == "capacity":
        from .capacity import capacity
        return capacity(engine)
    if verb == "need":
        missing = []
        for t in request.get("templates", []):
            name = check_name("template", t["name"])
            try:
                have = ctx.templates.resolve(name)
            except MlnError:
                missing.append(name)
                continue
            if template_sha256(have.path) != t["sha256"]:      # never replaced: other projects' disks use it
                raise MlnError(f"template {name} here ({have.path}) is not the manager's (their SHA-256 "
                               "differ); register the same image on both, or give one another name")
        return {"missing": missing, "templates_dir": ctx.config.templates_dir}
    if verb == "register":
        inbox = os.path.join(ctx.config.templates_dir, ".incoming")
        files = {}
        for kind, path in request.get("files", {}).items():
            if kind not in ("image", "kernel", "initrd") or os.path.dirname(os.path.abspath(path)) != inbox:
                raise MlnError(f"template files are taken only from {inbox}, not {path}")
            files[kind] = path
        try:
            if request["name"] in ctx.templates.entries():
                raise MlnError(f"template {request['name']} is registered here already; it is not replaced")
            for kind, path in files.items():
                if sha256_of(path) != request.get("sha256", {}).get(kind):
                    raise MlnError(f"the {kind} of template {request['name']} arrived damaged (its SHA-256 "
                                   "differs from the sender's)")
            ctx.templates.register(files["image"], check_name("template", request["name"]),
                                   request.get("message", ""), files.get("kernel"), files.get("initrd"))
        finally:
            for path in files.values():
                if os.path.exists(path):
                    os.unlink(path)
        return {}
    name = check_name("project", request.get("project", ""))
    if verb == "build" and request.get("fresh") and engine.store.exists(name):
        _remove_leftover(engine, name, placement)
    if verb in ("build", "upgrade"):
        return _with_text(engine, name, request, placement)
    if verb == "settle":
        from .move import discard_packed
        from .upgrade import settle
        discard_packed(ctx, name)
        return {"settled": settle(engine, name, bool(request.get("keep")))}
    if verb == "pack":
        from .move import pack
        return pack(engine, name, str(request.get("host", "")))
    if verb in ("arrived", "left"):
        from . import move
        return getattr(move, verb)(engine, name, str(request.get("host", "")))
    if verb in ("migrate_in", "migrate_out"):
        from . import move
        args = {"migrate_in": ("address",), "migrate_out": ("incoming",)}[verb]
        return getattr(move, verb)(engine, name, str(request.get("host", "")), *(request.get(a) for a in args),
                                   back=bool(request.get("back")))
    if verb == "start":
        engine.start(name, request.get("host"), pause=float(request.get("pause") or 0))
    elif verb == "stop":
        wait = request.get("wait")
        engine.stop(name, request.get("host"), hard=bool(request.get("hard")),
                    wait_s=math.inf if wait is None else float(wait), save=bool(request.get("save")),
                    pause=float(request.get("pause") or 0))
    elif verb == "status":
        out = {"rows": engine.status(name) if engine.store.exists(name) else []}
        if request.get("disks"):                # a move's status round (mln_core.mover.Mover)
            from .move import shared_disks
            out["disks"] = shared_disks(engine, name)
        return out
    elif verb == "remove":
        stop = request.get("stopped")
        if stop is not None and engine.store.exists(name):
            try:                        # (still running: the remove says so)
                engine.stop(name, hard=bool(stop.get("hard")), wait_s=float(stop.get("wait", math.inf)))
            except MlnError as e:
                ctx.log(f"warning: {e}")
        if engine.store.exists(name):
            engine.remove(name)
    return {}


def _with_text(engine, name: str, request: dict, placement: dict | None) -> dict:
    """``build`` or ``upgrade`` of this server's part, from the project text (and
    ``files {}`` sources) the manager sent."""
    ctx = engine.ctx
    os.makedirs(engine.store.root, exist_ok=True)
    path = os.path.join(engine.store.root, f".{name}.request-{os.getpid()}.mln")
    files = None
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(request["text"])
        files = _received_files(ctx, name, request.get("files"))
        if files:                   # the manager's files {} sources, for this build
            ctx.config.values["files"] = files
        if request["verb"] == "build":
            engine.build(path, replace=bool(request.get("replace")), placement=placement)
            return {}
        from .move import discard, unpack
        from .move import note_moves
        from .upgrade import upgrade
        if not engine.store.exists(name) and request.get("simulate") and placement:
            from .model import Project          # a server new to the project: all of its part is added
            from .plan import make_plan
            plan = make_plan(Project(name=name), engine.build(path, simulate=True, placement=placement), {}, 0,
                             ctx, start_new=bool(request.get("start_new")))
            note_moves(plan, request.get("moves") or {})
            return {"plan": plan.as_json(), "text": plan.render_text(), "empty": plan.empty}
        if not engine.store.exists(name) and request.get("join") and placement:
            _build_empty(engine, name, placement)          # a server new to the project: upgraded from nothing
        moves = unpack(ctx, name, request.get("moves"))
        try:
            plan = upgrade(engine, path, simulate=bool(request.get("simulate")), yes=True,
                           start_new=bool(request.get("start_new")), live_hosts=set(request.get("live", [])),
                           keep=bool(request.get("keep")), project=name, placement=placement,
                           hold=bool(request.get("hold")), moves=moves)
        finally:
            discard(ctx, name, moves)
        return {"plan": plan.as_json(), "text": plan.render_text(), "empty": plan.empty}
    finally:
        if os.path.exists(path):
            os.unlink(path)
        if files:
            shutil.rmtree(files, ignore_errors=True)


def _build_empty(engine, name: str, placement: dict) -> None:
    """The project with none of its hosts here yet, for a server that joins it."""
    path = os.path.join(engine.store.root, f".{name}.empty-{os.getpid()}.mln")
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"global {{\n    project {name}\n}}\n")
        engine.build(path, placement=placement)
    finally:
        os.unlink(path)


def _received_files(ctx, name: str, files: dict | None) -> str | None:
    """Unpack the ``files {}`` sources the manager sent (checked by SHA-256) into a
    directory of their own; its path (None if none were sent)."""
    if not files:
        return None
    inbox = os.path.join(ctx.config.templates_dir, ".incoming")
    archive = files.get("archive", "")
    if os.path.dirname(os.path.abspath(archive)) != inbox or not os.path.isfile(archive):
        raise MlnError(f"the files {{}} sources are taken only from {inbox}, not {archive}")
    try:
        if sha256_of(archive) != files.get("sha256"):
            raise MlnError("the files {} sources arrived damaged (their SHA-256 differs from the sender's)")
        dest = os.path.join(ctx.config.projects_dir, f".{name}.files-{os.getpid()}")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest, mode=0o700)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")     # nothing outside dest, no devices
        except (tarfile.TarError, OSError) as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise MlnError(f"the files {{}} sources could not be unpacked: {e}") from None
        return dest
    finally:
        os.unlink(archive)


def _remove_leftover(engine, name: str, placement: dict | None) -> None:
    """The manager builds ``name`` afresh, yet this server has it: what a build cut off
    from its manager left. It goes, if that manager made it and nothing of it runs."""
    from .store import Store
    had = Store.read_state(engine.store.project_dir(name)).get("placement") or {}
    if not placement or not had.get("manager") or had.get("manager") != placement.get("manager"):
        raise MlnError(f"project '{name}' exists on this server already, built by another manager than "
                       f"'{placement.get('default') if placement else '?'}'; remove it there first")
    up = [r["name"] for r in engine.status(name) if r["state"] == "up"]
    if up:
        raise MlnError(f"project '{name}' exists on this server and runs ({', '.join(up)}); stop it first")
    engine.ctx.log(f"+---> removing what an earlier build of project {name} left here")
    engine.remove(name)


def answer_of(line: str, log) -> dict | None:
    """For a transport: one line ``mln serve`` printed; its answer, or None (a progress
    line, given to ``log``; a heartbeat; anything else printed, given to ``log`` as it is)."""
    try:
        obj = json.loads(line)
    except ValueError:
        log(line.rstrip("\n"))
        return None
    if not isinstance(obj, dict) or "alive" in obj:
        return None
    if "log" in obj:
        log(str(obj["log"]))
        return None
    return obj


def serve_lines(make_engine, many: bool = False) -> int:
    """``mln serve``: one request from standard input, the answer as JSON lines; ``many``
    (``--many``): one request per line, until standard input ends, each carried out at once
    by an idle worker process (forked from this one when all are busy: no start-up per
    request) with a fresh engine (``make_engine()``); every line of its answer carries the
    request's ``id`` (a transport keeps one such process per server and command and sends
    its requests at once)."""
    if not many:
        return _serve(sys.stdin.read(), make_engine, sys.stdout)
    sys.stdout.flush()
    requests = os.dup(0)                    # (not inherited:) what a request runs, hook scripts
    answers = os.dup(1)                     # too, neither reads the next request nor writes
    null = os.open(os.devnull, os.O_RDONLY)  # into the answers
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:                                    # (what every request needs, loaded once: each fork has it)
        make_engine()
    except Exception:                       # (a broken mln.conf here: each request says so)
        pass
    return _Workers(requests, answers).run(make_engine)


class _Worker:
    """A process forked by ``mln serve --many``: it carries out the requests it is given,
    one after the other (and keeps what they imported)."""

    def __init__(self, pid: int, to: int):
        self.pid, self.to, self.buf = pid, to, bytearray()
        self.busy, self.line, self.answered = False, b"", False     # its request, and whether it answered


class _Workers:
    """``mln serve --many``: reads requests and gives each to an idle worker, forking a new
    one when all are busy; passes on the lines they print (whole lines only, so that
    answers never mix). A worker ends once standard input has ended and it is idle. The
    exit status: 0 if every request succeeded, 130 if interrupted (SIGINT), else 1."""

    def __init__(self, requests: int, answers: int):
        import selectors
        self.requests, self.answers = requests, answers
        self.sel = selectors.DefaultSelector()
        self.workers: dict[int, _Worker] = {}       # the pipe it prints on -> the worker
        self.failed = self.interrupted = False
        self.reading = True
        self.learnt: list[str] = []         # the modules the workers imported for their requests

    def run(self, make_engine) -> int:
        import selectors
        import signal

        def interrupted(signum, frame):     # (acted on in the loop: the workers answer, each its own)
            self.interrupted = True
        signal.signal(signal.SIGINT, interrupted)
        self.sel.register(self.requests, selectors.EVENT_READ)
        pending = bytearray()
        while self.reading or self.workers:
            if self.interrupted:            # this server is stopping: no request begins
                self._stop_reading()
            for key, _ in self.sel.select(1):
                if key.fd in self.workers:
                    self._relay(self.workers[key.fd], os.read(key.fd, 1 << 16))
                    continue
                data = os.read(key.fd, 1 << 16)
                pending += data if data else b"\n"     # (at the end: the last line, if it has no \n)
                while b"\n" in pending:
                    line, _, rest = bytes(pending).partition(b"\n")
                    pending = bytearray(rest)
                    if line.strip() and not self.interrupted:
                        self._give(line + b"\n", make_engine)
                if not data:
                    self._stop_reading()
        return 130 if self.interrupted else int(self.failed)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.sel.unregister(self.requests)
            os.close(self.requests)
            for w in self.workers.values():
                if not w.busy:
                    os.close(w.to)          # (it ends)
                    w.to = -1

    def _give(self, line: bytes, make_engine) -> None:
        while True:
            try:
                w = next((w for w in self.workers.values() if not w.busy and w.to >= 0), None) or \
                    self._fork(make_engine)
            except OSError as e:            # (no memory, no process left): this request is refused
                self._answer(line, f"this server cannot start a process for the request: {e.strerror or e}; "
                                   "run it again")
                return
            try:
                _write_all(w.to, line)
                break
            except OSError:                 # (it ended meanwhile: another takes it)
                os.close(w.to)
                w.to = -1
        w.busy, w.line, w.answered = True, line, False

    def _answer(self, line: bytes, error: str) -> None:
        """Answer the request ``line`` (whose worker could not): with ``error``."""
        try:                                # (read only now: the worker reads the request)
            request_id = json.loads(line).get("id")
        except (ValueError, AttributeError):
            request_id = None
        self.failed = True
        with contextlib.suppress(OSError):
            _write_all(self.answers, json.dumps({"ok": False, "error": error, "id": request_id}).encode() + b"\n")

    def _fork(self, make_engine) -> _Worker:
        import selectors
        self._learn()
        r, w = os.pipe()
        try:
            rq, wq = os.pipe()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in (r, w, rq, wq):
                os.close(fd)
            raise
        if pid == 0:
            import signal
            signal.signal(signal.SIGINT, signal.default_int_handler)
            status = 1
            try:
                for fd in (r, wq, self.requests, self.answers, *self.workers,
                           *(x.to for x in self.workers.values())):
                    if fd >= 0:
                        os.close(fd)
                with os.fdopen(rq, "r") as requests, os.fdopen(w, "w") as out:
                    for line in requests:
                        before = set(sys.modules)
                        status = _serve(line, make_engine, out, many=True)
                        out.write("\0" + " ".join(m for m in list(sys.modules) if m not in before) + "\n")
                        out.flush()
                        if status == 130:
                            break
            finally:
                os._exit(status)
        os.close(w)
        os.close(rq)
        worker = self.workers[r] = _Worker(pid, wq)
        self.sel.register(r, selectors.EVENT_READ)
        return worker

    def _relay(self, w: _Worker, data: bytes) -> None:
        w.buf += data
        whole = w.buf.rfind(b"\n") + 1
        lines = bytes(w.buf[:whole]).splitlines(keepends=True)
        del w.buf[:whole if data else len(w.buf)]      # (at its end: half a line is dropped)
        for x in lines:                     # (an answer: _serve's emit puts "ok" first)
            if x.startswith(b'{"ok": '):
                w.answered = True
                self.failed |= not x.startswith(b'{"ok": true')
        with contextlib.suppress(OSError):          # (the manager is gone: the request still finishes here)
            _write_all(self.answers, b"".join(x for x in lines if not x.startswith(b"\0")))
        for done in (x for x in lines if x.startswith(b"\0")):
            self.learnt += done[1:].decode().split()
            w.busy = False
            if not self.reading:
                os.close(w.to)
                w.to = -1
        if not data:                    # it ended
            fd = next(fd for fd, x in self.workers.items() if x is w)
            self.sel.unregister(fd)
            os.close(fd)
            if w.to >= 0:
                os.close(w.to)
            del self.workers[fd]
            code = os.waitstatus_to_exitcode(os.waitpid(w.pid, 0)[1])
            if w.busy and not w.answered:       # (killed, out of memory): its request is answered all the same
                how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                self._answer(w.line, f"'mln serve' ended ({how}) before it answered; the request may be partly "
                                   "done: run it again")

    def _learn(self) -> None:
        """Import here what the workers imported for their requests (mln's modules and
        Python's own): a worker forked from now on has them from the start."""
        import importlib
        ours = ("mln_core", "mln_backends", "mln_plugins", "qemu")
        for name in sorted(set(self.learnt)):
            if name.partition(".")[0] in ours or name.partition(".")[0] in sys.stdlib_module_names:
                try:
                    importlib.import_module(name)
                except Exception:       # (one that imports only under its own conditions)
                    pass
        self.learnt = []


def _write_all(fd: int, data: bytes) -> None:
    out = memoryview(data)
    while out:
        out = out[os.write(fd, out):]


def _serve(text: str, make_engine, out, many: bool = False) -> int:
    """Carry out the request ``text`` (JSON) with the engine ``make_engine()`` gives; its
    log lines, then its answer, on ``out``; the exit status."""

    lock = threading.Lock()
    tag: dict = {"id": None} if many else {}        # (--many: every answer says which request it is)

    def emit(obj: dict) -> None:
        with lock:
            out.write(json.dumps({**obj, **tag}) + "\n")
            out.flush()

    done = threading.Event()

    def heartbeat():                 # the manager takes a silent server as gone
        while not done.wait(HEARTBEAT):
            emit({"alive": True})
    request = None
    try:
        request = json.loads(text)
        if not isinstance(request, dict):
            raise MlnError("a request is a JSON object")
        if "id" in request:                 # (mln serve --many: its lines say which request they answer)
            tag["id"] = request["id"]
        threading.Thread(target=heartbeat, daemon=True).start()
        engine = make_engine()
        engine.ctx.log = lambda message: emit({"log": message})
        result = handle(request, engine)
        done.set()
        emit({"ok": True, "result": result})
        return 0
    except KeyboardInterrupt:       # SIGINT: the daemon is stopping
        verb = request.get("verb") if isinstance(request, dict) else None
        emit({"ok": False, "error": "interrupted: this server is stopping; " + (
            "the build was undone here" if verb == "build" else "the request may be partly done: run it again")})
        return 130
    except json.JSONDecodeError as e:
        emit({"ok": False, "error": f"the request is not JSON: {e}"})
    except MlnError as e:
        emit({"ok": False, "error": str(e)})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        emit({"ok": False, "error": f"a malformed request: {type(e).__name__}: {e}"})
    except OSError as e:            # this server's disk full, a file it cannot write: said plainly
        emit({"ok": False, "error": f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")})
    except Exception as e:          # an internal error: said plainly, secrets never in it
        from .private import redact
        emit({"ok": False, "error": redact(f"internal error: {type(e).__name__}: {e}")})
    finally:
        done.set()
    return 1
