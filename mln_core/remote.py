"""The manager's side of a project spread over servers: every command acts on every
server of the project at once, from the machine the user types on.

``build`` checks first that every server answers, sends each the templates it lacks, then
builds every part in parallel (this server's with its own engine, the others' through
their transports, see :mod:`mln_core.serve`); when one part fails, the parts built are
removed again. ``start``, ``stop``, ``status`` and ``remove`` go to every server of the
stored project. Progress lines are prefixed with the server they come from.

A transport is what the ``mln_remote_transport(server, ctx)`` hook returns: an object
with ``request(dict, log) -> dict`` (raises MlnError naming the server when it fails),
``put(local_path, remote_path)``, ``get(remote_path, local_path)`` and ``close()``.
"""
from __future__ import annotations

import os
import socket
import tarfile
import tempfile
import threading

from .errors import MlnError
from .servers import Layout, aliases_of, check_servers, configured, here, layout
from .serve import sha256_of, template_sha256
from .store import Store


def placement_of(engine, name: str) -> dict | None:
    """What the stored project records of its servers (None: all of it is here)."""
    try:
        placement = Store.read_state(engine.store.project_dir(name)).get("placement")
    except MlnError:
        return None
    if not placement or placement.get("here") != placement.get("default") or \
            not any(s != placement.get("here") for s in placement.get("servers", [])):
        return None                     # all here, or a part another server manages: act on it alone
    return placement


class Fleet:
    """The other servers of one project, each reached through its transport."""

    def __init__(self, engine, names: list[str], reuse: "Fleet | None" = None):
        """``reuse``: a fleet of the same command whose connections this one uses too (and
        leaves open)."""
        self.engine, self.ctx = engine, engine.ctx
        known = configured(self.ctx.config)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise MlnError(f"service host {', '.join(unknown)} is not a server mln.conf knows "
                           "(add 'server NAME ssh ADDRESS')")
        self.servers = {n: known[n] for n in names}
        self.me = here(self.ctx.config)
        self.transports: dict = reuse.transports if reuse else {}
        self.owner = reuse is None
        self.sums: dict[str, str] = reuse.sums if reuse else {}
        self.inboxes: dict[str, str] = reuse.inboxes if reuse else {}      # (send_templates asks)
        self.lock = reuse.lock if reuse else threading.Lock()      # (one line at a time, whichever fleet)
        self.making = reuse.making if reuse else threading.Lock()
        self.closed = False
        self._log, self._before = (reuse._log if reuse else self.ctx.log), self.ctx.log
        self.ctx.log = lambda message: self.say(self.me, message)   # this server's lines, prefixed

    def say(self, server: str, message: str) -> None:
        with self.lock:
            self._log(f"[{server}] {message}")

    def prepare(self) -> None:
        """Let every server's transport make ready for this command's requests while this
        server works on its own (a transport's optional ``prepare()``: the ssh one connects
        and starts ``mln serve`` there), all servers at once, in the background."""
        def one(name: str) -> None:
            if self.closed:         # (the command ended before this thread began)
                return
            try:
                prepare = getattr(self.transport(name), "prepare", None)
                if prepare is not None:
                    prepare()
            except Exception:       # (only time is at stake: the request itself says what is wrong)
                pass
        for name in self.servers:
            threading.Thread(target=one, args=(name,), daemon=True).start()

    def note(self, message: str) -> None:
        """A line of the whole command (of no one server)."""
        with self.lock:
            self._log(message)

    def close(self) -> None:
        self.closed = True
        for t in self.transports.values() if self.owner else ():
            try:
                t.close()
            except Exception:       # closing must not hide what happened
                pass
        self.ctx.log = self._before

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def transport(self, name: str):
        with self.making:               # (one per server: prepare() asks from other threads)
            if name not in self.transports:
                server = self.servers[name]
                t = self.ctx.pm.hook.mln_remote_transport(server=server, ctx=self.ctx)
                if t is None:
                    raise MlnError(f"server {name}: no installed plugin speaks its transport '{server.transport}'")
                self.transports[name] = t
            return self.transports[name]

    def request(self, name: str, req: dict) -> dict:
        if self.ctx.options.get("strict"):          # --strict holds on every server
            req = dict(req, strict=True)
        try:
            return self.transport(name).request(req, lambda line: self.say(name, line))
        except MlnError as e:
            raise MlnError(f"server {name}: {e.message}", e.where) from None
        except OSError as e:
            raise MlnError(f"server {name} ({self.servers[name].address}): {e}") from None

    def put(self, name: str, local_path: str, remote_path: str) -> None:
        try:
            self.transport(name).put(local_path, remote_path)
        except MlnError as e:
            raise MlnError(f"server {name}: {e.message}", e.where) from None
        except Exception as e:          # the transport's own failure (a full disk there, a broken link)
            raise MlnError(f"server {name}: sending {os.path.basename(local_path)} failed: "
                           f"{type(e).__name__}: {e}") from None

    def get(self, name: str, remote_path: str, local_path: str) -> None:
        try:
            self.transport(name).get(remote_path, local_path)
        except MlnError as e:
            raise MlnError(f"server {name}: {e.message}", e.where) from None
        except Exception as e:          # the transport's own failure
            raise MlnError(f"server {name}: fetching {os.path.basename(remote_path)} failed: "
                           f"{type(e).__name__}: {e}") from None

    def each(self, requests: dict[str, dict], local=None, work=None) -> dict[str, object]:
        """Send every server its request at once (and run ``local()`` here meanwhile);
        {server: result or the MlnError it raised}. ``work(server)``: what to do for each
        server instead of sending its request."""
        results: dict[str, object] = {}

        def run(name, work):
            try:
                results[name] = work()
            except MlnError as e:
                results[name] = e
            except Exception as e:      # a transport's own failure: reported, not a traceback
                results[name] = MlnError(f"server {name}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=run, args=(n, (lambda n=n: work(n)) if work else
                                                      (lambda n=n, r=r: self.request(n, r))))
                   for n, r in requests.items()]
        for t in threads:
            t.start()
        if local is not None:
            run(self.me, local)
        for t in threads:
            t.join()
        return results

    def check_all(self, requests: dict[str, dict] | None = None) -> dict[str, dict]:
        """Ask every server (``ping``, or its request of ``requests``); an error naming
        every server that does not answer; else the answers."""
        results = self.each(requests or {n: {"verb": "ping"} for n in self.servers})
        failed = [str(r) for r in results.values() if isinstance(r, MlnError)]
        if failed:
            raise MlnError("not every server of the project answers; nothing was done:\n  " + "\n  ".join(failed))
        return results

    def addresses(self) -> dict[str, str]:
        """Every server's underlay address (this server's: the one its route to the others uses)."""
        out = {}
        for name, s in self.servers.items():
            try:
                out[name] = socket.getaddrinfo(s.address, None, socket.AF_INET)[0][4][0]
            except OSError as e:
                raise MlnError(f"server {name}: cannot resolve {s.address}: {e}") from None
        first = next(iter(out.values()))
        r = self.ctx.on().run(["ip", "-o", "-4", "route", "get", first], check=False, text=True)
        words = r.stdout.split()
        if r.returncode != 0 or "src" not in words:
            raise MlnError(f"no route from this server to {first} (server {next(iter(out))})")
        out[self.me] = words[words.index("src") + 1]
        return out

    def send_templates(self, project, lay: Layout) -> None:
        """Ask every server which templates its hosts need that it lacks (compared by
        SHA-256): an error naming each server that does not answer, before anything is
        done; then send each what it lacks."""
        registry = self.ctx.templates
        found, asks = {}, {}
        for name in self.servers:
            wanted = sorted({h.template for h in project.hosts.values() if lay.hosts[h.name] == name})
            found.update({t: registry.resolve(t, f"server {name}") for t in wanted if t not in found})
            asks[name] = {"verb": "need", "templates": [{"name": t, "sha256": self._sum(found[t].path)}
                                                        for t in wanted]}
        answers = self.check_all(asks)
        for n, a in answers.items():
            self.inboxes[n] = os.path.join(a["templates_dir"], ".incoming")
        failed = [str(r) for r in self.each({n: None for n in self.servers}, work=lambda n: self._send_templates(
            n, found, answers[n])).values() if isinstance(r, MlnError)]
        if failed:
            raise MlnError("templates could not be sent; nothing was built:\n  " + "\n  ".join(failed))

    def _send_templates(self, name: str, found: dict, answer: dict) -> None:
        for t in answer.get("missing", []):
            tpl = found[t]
            inbox = self.inboxes[name]
            sent = {"image": os.path.join(inbox, tpl.real_name)}
            self.say(name, f"sending template {t} ({os.path.getsize(tpl.path) // 2**20} MB)")
            self.put(name, tpl.path, sent["image"])
            for kind in ("kernel", "initrd"):
                extra = getattr(tpl, kind)
                if extra:
                    sent[kind] = sent["image"] + "." + kind
                    self.put(name, extra, sent[kind])
            self.request(name, {"verb": "register", "name": t, "message": tpl.message, "files": sent,
                                "sha256": {k: self._sum(p) for k, p in (("image", tpl.path), ("kernel", tpl.kernel),
                                                                        ("initrd", tpl.initrd)) if p}})

    def send_files(self, project, lay: Layout, tmp: str) -> dict[str, dict]:
        """Send every server the ``files {}`` sources of its hosts (one archive each, the
        sources as paths of the files directory); {server: what its build request names}."""
        base = self.ctx.config.files_dir
        sent = {}
        for name in self.servers:
            sources = sorted({f.source for h in project.hosts.values() if lay.hosts[h.name] == name
                              for f in h.files})
            if not sources:
                continue
            archive = os.path.join(tmp, f"{name}.tar.gz")
            with tarfile.open(archive, "w:gz") as tar:
                for src in sources:
                    path = os.path.join(base, src)
                    if not os.path.lexists(path):
                        raise MlnError(f"files: '{src}' does not exist in the files directory {base}")
                    tar.add(path, arcname=src, filter=self._inside)
            inbox = os.path.join(self.inboxes[name], f"{project.name}.{name}.files.tar.gz")  # send_templates asked
            self.put(name, archive, inbox)
            sent[name] = {"archive": inbox, "sha256": sha256_of(archive)}
        return sent

    def _inside(self, info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        """A link that leads out of the files directory stays behind (as it would here)."""
        if info.issym() and (os.path.isabs(info.linkname) or ".." in info.linkname.split("/")):
            self.ctx.log(f"warning: files: the link {info.name} -> {info.linkname} leads out of the files "
                         "directory; it is not sent")
            return None
        return info

    def _sum(self, path: str) -> str:
        """A template file's SHA-256 (remembered beside it: :func:`template_sha256`)."""
        with self.lock:
            if path not in self.sums:
                self.sums[path] = template_sha256(path)
            return self.sums[path]


def build(engine, path: str, replace: bool, simulate: bool, confirm):
    """``mln build`` of a project, on every server it names."""
    from .lang.writer import write_tree
    from .project import load_project
    ctx = engine.ctx
    if simulate:
        return engine.build(path, replace=replace, simulate=simulate, confirm=confirm)
    loaded = load_project(path, ctx)
    me = here(ctx.config)
    check_servers(loaded.project, ctx.config)       # every server it names is known, before asking any
    from .placement import resolve
    previous = (placement_of(engine, loaded.project.name) or {}).get("hosts")
    placed = resolve(engine, loaded.project, me, configured(ctx.config), aliases_of(ctx.config), previous)
    lay = check_servers(loaded.project, ctx.config, placed)
    others = [s for s in lay.servers if s != me]
    if not others:
        return engine.build(path, replace=replace, simulate=simulate, confirm=confirm)
    name = loaded.project.name
    base = ctx.config.files_dir
    for h in loaded.project.hosts.values():          # what the servers will ask for is here
        for f in h.files:
            if lay.hosts[h.name] != me and not os.path.lexists(os.path.join(base, f.source)):
                raise MlnError(f"files: '{f.source}' does not exist in the files directory {base}",
                               f"host {h.name}")
    fresh = not engine.store.exists(name)
    if not fresh and not replace:               # asked once, here, before any server is told
        if confirm is None or not confirm(f"project '{name}' exists; replace it on every server?"):
            raise MlnError(f"project '{name}' exists in {engine.store.root}; use -r to replace it")
        replace = True
    with Fleet(engine, others) as fleet:
        fleet.prepare()
        addresses = fleet.addresses()
        fleet.send_templates(loaded.project, lay)      # also: does every server answer?
        text = write_tree(loaded.doc.root)
        manager = engine.store.identity()
        requests = {s: {"verb": "build", "project": name, "text": text, "replace": replace, "fresh": fresh,
                        "placement": dict(lay.placement(name, s, addresses), manager=manager)} for s in others}
        with tempfile.TemporaryDirectory(prefix="mln-files-") as tmp:
            sent = fleet.send_files(loaded.project, lay, tmp)
            for s, files in sent.items():
                requests[s]["files"] = files
            mine = dict(lay.placement(name, me, addresses), manager=manager)
            results = fleet.each(requests, lambda: engine.build(path, replace=replace, placement=mine))
        failed = {s: r for s, r in results.items() if isinstance(r, MlnError)}
        if failed:
            built = [s for s in results if s not in failed]
            if fresh:                 # a new project: the parts built go again
                undo = fleet.each({s: {"verb": "remove", "project": name} for s in built if s != me},
                                  (lambda: engine.remove(name)) if me in built else None)
                for s, r in undo.items():
                    if isinstance(r, MlnError):
                        fleet.say(s, f"warning: removing the part built: {r}")
            if fresh:
                said = f"\n(removed again from {', '.join(built)})" if built else ""
            else:                     # a rebuild: each server kept its old part or has the new one
                said = (f"\n(rebuilt on {', '.join(built) or 'no server'}; the others keep the project as it "
                        "was: build -r again once they answer)")
            raise MlnError(f"project '{name}' was not built on every server:\n  " +
                           "\n  ".join(str(r) for r in failed.values()) + said)
    return loaded.project


def _fan_out(engine, name: str, verb: str, local, **fields) -> dict[str, object]:
    placement = placement_of(engine, name)
    if placement is None:
        return {here(engine.ctx.config): local()}
    others = [s for s in placement["servers"] if s != placement["here"]]
    with Fleet(engine, others) as fleet:
        results = fleet.each({s: {"verb": verb, "project": name, **fields} for s in others}, local)
    return results


def _raise_failed(name: str, verb: str, results: dict) -> None:
    failed = [str(r) for r in results.values() if isinstance(r, MlnError)]
    if failed:
        raise MlnError(f"{verb} of project '{name}' failed on {len(failed)} of {len(results)} servers:\n  " +
                       "\n  ".join(failed))


def start(engine, name: str, host: str | None = None, pause: float = 0) -> None:
    """``pause``: seconds between hosts, on each server (the servers start theirs at once)."""
    where = _host_server(engine, name, host)
    if where is not None:
        with Fleet(engine, [where]) as fleet:
            fleet.request(where, {"verb": "start", "project": name, "host": host})
        return
    if host is not None:                # a host of this server (or an error naming it)
        engine.start(name, host, pause=pause)
        return
    _raise_failed(name, "start", _fan_out(engine, name, "start", lambda: engine.start(name, host, pause=pause),
                                          pause=pause))


def stop(engine, name: str, host: str | None = None, hard: bool = False, wait_s: float = 60,
         save: bool = False, pause: float = 0) -> None:
    import math
    wait = None if wait_s == math.inf else wait_s
    where = _host_server(engine, name, host)
    if where is not None:
        with Fleet(engine, [where]) as fleet:
            fleet.request(where, {"verb": "stop", "project": name, "host": host, "hard": hard, "wait": wait,
                                  "save": save})
        return
    if host is not None:                # a host of this server (or an error naming it)
        engine.stop(name, host, hard=hard, wait_s=wait_s, save=save, pause=pause)
        return
    _raise_failed(name, "stop", _fan_out(engine, name, "stop", lambda: engine.stop(
        name, host, hard=hard, wait_s=wait_s, save=save, pause=pause), hard=hard, wait=wait, save=save,
        pause=pause))


def status(engine, name: str, host: str | None = None, switch: str | None = None) -> list[dict]:
    placement = placement_of(engine, name)
    if placement is None:
        return engine.status(name, host, switch)
    if host is not None:
        where = _host_server(engine, name, host)
        if where is not None:
            with Fleet(engine, [where]) as fleet:
                rows = fleet.request(where, {"verb": "status", "project": name})["rows"]
            return [dict(r, server=where) for r in rows if r["kind"] == "host" and r["name"] == host]
        return [dict(r, server=placement["here"]) for r in engine.status(name, host, switch)]
    results = _fan_out(engine, name, "status", lambda: {"rows": engine.status(name)})
    rows = []
    for server, r in results.items():
        if isinstance(r, MlnError):
            rows.append({"project": name, "kind": "server", "name": server, "state": "unknown",
                         "detail": r.message, "server": server})
            continue
        rows += [dict(x, server=server) for x in r["rows"]
                 if switch is None or (x["kind"] == "switch" and x["name"] == switch)]
    return rows


def remove(engine, name: str, confirm=None) -> None:
    placement = placement_of(engine, name)
    if placement is None:
        engine.remove(name, confirm=confirm)
        return
    if confirm is not None and not confirm(f"remove project '{name}' and all its disks on every server?"):
        raise MlnError("not removed")
    others = [s for s in placement["servers"] if s != placement["here"]]
    with Fleet(engine, others) as fleet:
        answers = fleet.check_all({s: {"verb": "status", "project": name} for s in others})   # all, or nothing
        rows = [r for a in answers.values() for r in a["rows"]] + engine.status(name)
        up = [f"{r['kind']} {r['name']}" for r in rows if r["state"] == "up"]
        if up:
            raise MlnError(f"project '{name}' is running ({', '.join(up)}); stop it first: mln stop -p {name}")
        results = fleet.each({s: {"verb": "remove", "project": name} for s in others})
        _raise_failed(name, "remove", results)
        engine.remove(name)


def _host_server(engine, name: str, host: str | None) -> str | None:
    """The server of ``host`` when it is not this one."""
    placement = placement_of(engine, name)
    if host is None or placement is None:
        return None
    from .project import load_project
    project = load_project(engine.store.source_path(name), engine.ctx).project
    if host not in project.hosts:
        return None                     # the engine says there is no such host
    server = layout(project, placement["default"], placement.get("aliases"), placement.get("hosts")).hosts[host]
    return None if server == placement["here"] else server


def console_elsewhere(engine, name: str, host: str, options: list[str]) -> int | None:
    """Attach to the console of ``host`` when it runs on another server, through its
    transport's ``console(project, host, options) -> exit status``; None: the host is here."""
    where = _host_server(engine, name, host)
    if where is None:
        return None
    with Fleet(engine, [where]) as fleet:
        transport = fleet.transport(where)
        if not hasattr(transport, "console"):
            raise MlnError(f"host '{host}' of project '{name}' runs on server {where}, whose transport "
                           f"'{fleet.servers[where].transport}' cannot carry a console: attach there "
                           f"(mln console -p {name} -h {host} on {where})")
        return transport.console(name, host, options)
