"""The ``libvirt`` transport: a server that runs no mln, only a libvirtd, reached by URI.

    server sh2 libvirt root@10.0.0.12                   # qemu+ssh://root@10.0.0.12/system
    server sh3 libvirt sh3.example.org:2222 pool=vms    # another ssh port, another pool
    server sh4 libvirt sh4 uri=qemu+tls://sh4.example.org/system

The manager carries out that server's part of a project itself: its requests go to an
``mln serve --many`` of its own on the manager (:mod:`mln_core.serve`, one process for the
command, as over ssh), whose configuration (``<projects>/.server-<NAME>/mln.conf``, written from the manager's)
gives it its own projects directory (``<projects>/.server-<NAME>``, where the part's state and
records stay), ``service_host`` that server's name and ``libvirt_uri`` that server's libvirtd,
and the manager's templates and files directories. The
``libvirt`` backend sees a remote URI and does everything there through it
(:mod:`mln_backends.libvirt_remote`): disks are made and individualized here and sent into a
storage pool there, switches are libvirt networks there. Templates and ``files {}`` sources
are the manager's own, so nothing is sent for them. (A process of its own, not the manager's:
two engines in one process would share Python's temporary directory, which
``Store.private_tmp`` sets for the whole process.) ``mln console`` attaches to a guest's
serial console there through libvirt's console stream.

The URI is ``qemu+ssh://[USER@]ADDRESS[:PORT]/system?no_tty=1`` (``uri=URI`` on the server line
for another, e.g. TLS), with ``keyfile=`` mln.conf's ``ssh_identity`` (or ``identity=`` on the
server line). Host keys are always checked (``no_tty``: ssh never asks, an unknown key is
refused): against ``~/.ssh/known_hosts``, or, when mln.conf names ``ssh_known_hosts`` (or
the line ``known_hosts=``), against that file only: libvirt's ``ssh`` transport has no
parameter for it, so mln writes a two-line wrapper of ``ssh`` that names it
(``<projects>/.server-<NAME>/ssh``) and gives it as the URI's ``command=``.

Only ``libvirt`` hosts can run on such a server, and its switches cannot span servers:
``mln check`` and ``mln build`` say so, naming the host or switch and the server line.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import threading
from urllib.parse import quote

from mln_core import hookimpl
from mln_core.errors import MlnError, Problem
from mln_core.serve import answer_of

TRANSPORT = "libvirt"
PART = "libvirt_server_part"          # set in the configuration of a server's part (no checks there)
NOT_HERE = ("pack", "migrate_in", "migrate_out", "arrived", "left")


@hookimpl
def mln_remote_transport(server, ctx):
    if server.transport != TRANSPORT:
        return None
    return LibvirtTransport(server, ctx)


def _line(config, name: str) -> str:
    for value in config.getlist("server"):
        if value.split()[:1] == [name]:
            return f"'server {value}' in mln.conf"
    return f"server {name} of mln.conf"


def _libvirt_servers(config) -> dict:
    from mln_core.servers import configured
    try:
        return {n: s for n, s in configured(config).items() if s.transport == TRANSPORT}
    except MlnError:
        return {}                     # a bad server line: the core says so


def refusal(config, server: str, host: str | None = None, hypervisor: str | None = None,
            switch: str | None = None, servers: list[str] | None = None) -> str:
    if host is not None:
        return (f"host {host}: a {hypervisor} host cannot run on server {server} ({_line(config, server)}): "
                "no mln runs there, only its libvirtd; make it a libvirt host (hypervisor libvirt) or put it "
                "on another server")
    return (f"switch {switch}: it would join servers {', '.join(servers or [])}, but server {server} "
            f"({_line(config, server)}) runs only a libvirtd, whose networks mln cannot join to other "
            "servers yet; keep the switch's hosts on one server")


@hookimpl
def mln_validate(project, ctx):
    """Only libvirt hosts on a libvirt server, and none of its switches spanning servers."""
    config = getattr(ctx, "config", None)
    if config is None or config.get(PART):
        return []
    servers = _libvirt_servers(config)
    if not servers:
        return []
    from mln_core.placement import candidates
    from mln_core.servers import aliases_of, here, layout
    lay = layout(project, here(config), aliases_of(config))
    out = []
    for h in project.hosts.values():
        where = lay.hosts.get(h.name)
        if where not in servers or candidates(h.service_host) is not None:
            continue                    # (one placed at build: its part says so then)
        line = h.tree.line("service_host") if h.tree is not None else None
        pos = line.pos if line is not None else (h.tree.pos if h.tree is not None else None)
        if h.hypervisor != "libvirt":
            out.append(Problem("error", refusal(config, where, h.name, h.hypervisor), pos))
        elif any(m.fstype != "hostfs" for m in h.mounts):
            out.append(Problem("error", f"host {h.name}: the disks of its mount lines are not sent to server "
                                        f"{where} ({_line(config, where)}) yet", pos))
    for name, on in lay.switches.items():
        lv = [s for s in on if s in servers]
        if len(on) > 1 and lv:
            sw = project.switches[name]
            out.append(Problem("error", refusal(config, lv[0], switch=name, servers=on),
                               sw.tree.pos if sw.tree is not None else None))
    return out


HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")     # a host name, an IPv4 address
IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def checked(server, config) -> str:
    """The server line's address as the URI has it (an IPv6 address in brackets), its user
    and known_hosts file checked: nothing that would change the URI or ssh's options."""
    where = _line(config, server.name)
    address = server.address
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
        if not IPV6.match(address):
            raise MlnError(f"{where}: '{server.address}' is not an IPv6 address in brackets")
    if not (HOST_NAME.match(address) or IPV6.match(address)):
        raise MlnError(f"{where}: the address '{server.address}' must be a host name, an IPv4 address or an "
                       "IPv6 address (letters, digits, '.', '-'; ':' in an IPv6 address)")
    if server.user is not None and not USER.match(server.user):
        raise MlnError(f"{where}: the user name '{server.user}' holds characters a user name has not")
    known = server.options.get("known_hosts") or config.get("ssh_known_hosts")
    if known and ("${" in known or any(c in known for c in '%"\n')):
        raise MlnError(f"{where}: the known_hosts file {known} holds '%', '\"' or '${{', which ssh would "
                       "read as its own; name it by another path")
    return f"[{address}]" if ":" in address else address


def default_uri(server, config, root: str) -> str:
    """``qemu+ssh://[USER@]ADDRESS[:PORT]/system`` with mln.conf's key and host keys (see the
    module's doc); ``root``: where the ``ssh`` wrapper goes when one is needed."""
    opt = server.options
    host = checked(server, config)
    netloc = (f"{server.user}@" if server.user else "") + host + (f":{server.port}" if server.port else "")
    params = [("no_tty", "1")]
    identity = opt.get("identity") or config.get("ssh_identity")
    if identity:                    # absolute: the URI is used from other directories
        params.append(("keyfile", os.path.abspath(os.path.expanduser(identity))))
    known = opt.get("known_hosts") or config.get("ssh_known_hosts")
    if known:
        params.append(("command", _ssh_wrapper(root, os.path.abspath(os.path.expanduser(known)))))
    return f"qemu+ssh://{netloc}/system?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in params)


def _ssh_wrapper(root: str, known_hosts: str) -> str:
    """An ``ssh`` that checks host keys against ``known_hosts`` only (libvirt's ssh
    transport cannot name that file)."""
    path = os.path.join(root, "ssh")
    text = ("#!/bin/sh\n# written by mln: libvirt's ssh, with the host keys of mln.conf's ssh_known_hosts\n"
            f"exec ssh -o {shlex.quote(f'UserKnownHostsFile={chr(34)}{known_hosts}{chr(34)}')} "
            "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \"$@\"\n")
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700), "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def part_config(config, server, root: str, uri: str):
    """The manager's configuration as that server's part sees it."""
    from mln_core.config import Config
    values = {k: v for k, v in config.values.items() if k != "server"}
    values.update(projects=root, templates=config.templates_dir, files=config.files_dir,
                  service_host=server.name, libvirt_uri=uri, **{PART: server.name})
    for key, opt in (("libvirt_pool", "pool"), ("libvirt_pool_path", "pool_path")):
        if server.options.get(opt):
            values[key] = server.options[opt]
    origin = f"the server line of {server.name}"
    origins = dict(config.origins, **{k: origin for k in ("projects", "service_host", "libvirt_uri")})
    lists = {k: list(v) for k, v in config.lists.items() if k != "server"}
    return Config(values=values, lists=lists, origins=origins, files=list(config.files))


class LibvirtTransport:
    def __init__(self, server, ctx):
        self.server, self.ctx = server, ctx
        self.root = os.path.join(ctx.config.projects_dir, f".server-{server.name}")
        self._uri = None
        self.proc = None                # its part's mln serve --many, for the whole command
        self.lock = threading.Lock()

    @property
    def uri(self) -> str:
        if self._uri is None:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self._uri = self.server.options.get("uri") or default_uri(self.server, self.ctx.config, self.root)
        return self._uri

    def _config(self):
        return part_config(self.ctx.config, self.server, self.root, self.uri)

    def _conf_file(self, config) -> str:
        """The part's configuration as a file for ``mln serve`` (MLN_CONFIG)."""
        from mln_core.config import REPEATABLE
        lines = []
        for key, value in sorted(config.values.items()):
            values = config.lists.get(key, [value]) if key in REPEATABLE else [value]
            for v in values:
                if "#" in str(v) or "\n" in str(v):
                    where = config.origins.get(key, "set on the command line")
                    raise MlnError(f"mln.conf's {key} ({where}) holds a '#' or a line break, which the part "
                                   f"of server {self.server.name} cannot be given")
                lines.append(f"{key} {v}\n")
        path = os.path.join(self.root, "mln.conf")
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("# written by mln: the configuration of the part of server "
                    f"{self.server.name} that this manager carries out\n" + "".join(lines))
        os.replace(tmp, path)
        return path

    def _reachable(self) -> None:
        from mln_backends.libvirt_domain import HINT, connect
        try:
            connect(self.uri)
        except MlnError as e:
            raise MlnError(e.message.replace(HINT, f"{_line(self.ctx.config, self.server.name)}: its address, "
                                                   "user, key and known_hosts")) from None

    def _check_part(self, config, request: dict) -> None:
        """Only libvirt hosts here, and no switch that spans servers."""
        from mln_core.context import Context
        from mln_core.project import load_project
        from mln_core.servers import part
        placement = request.get("placement") or {}
        for switch, span in (placement.get("spans") or {}).items():
            servers = [self.server.name] + [f"the server at {a}" for a in span.get("remotes", [])]
            raise MlnError(refusal(self.ctx.config, self.server.name, switch=switch, servers=servers))
        text = request.get("text")
        if not text:
            return
        ctx = Context(config=config, pm=self.ctx.pm)
        ctx.log = lambda message: None          # the build prints them
        path = os.path.join(self.root, f".{request.get('project', 'p')}.check.mln")
        loaded = load_project(path, ctx, text=text)
        for h in part(loaded.project, placement or None).hosts.values():
            if h.hypervisor != "libvirt":
                raise MlnError(refusal(self.ctx.config, self.server.name, h.name, h.hypervisor))

    def request(self, request: dict, log) -> dict:
        """Carry out ``request`` as that server's ``mln serve`` would, in an ``mln serve
        --many`` of its own on this machine (one for the command, as over ssh; not in this
        process: two engines in one would share Python's temporary directory setting)."""
        verb = request.get("verb")
        if verb in NOT_HERE:
            raise MlnError(f"'{verb}' is not available for server {self.server.name}: it runs no mln, only a "
                           "libvirtd (moving hosts to or from it is not supported yet)")
        config = self._config()
        if verb in ("ping", "need", "build", "start", "capacity"):
            self._reachable()            # before anything is done: the libvirtd answers
        if verb in ("build", "upgrade"):
            self._check_part(config, request)
        if verb in ("ping", "need"):        # no engine at work: answered here
            from mln_core.context import Context
            from mln_core.lifecycle import Engine
            from mln_core.serve import handle
            result = handle(request, Engine(Context(config=config, pm=self.ctx.pm)))
        else:
            result = self._serve(request, self._conf_file(config), log)
        if verb == "capacity":          # that machine's, and the pool of its line (not the manager's disk)
            from types import SimpleNamespace

            from mln_backends.libvirt_remote import node
            result.update(node(self.uri, SimpleNamespace(config=config, log=lambda message: None)))
        return result

    def _serve(self, request: dict, conf: str, log) -> dict:
        import json
        import sys
        with self.lock:
            if self.proc is not None and self.proc.poll() is not None:
                self._end()                 # it ended (Ctrl-C reached it too): a new one
            if self.proc is None:
                argv = [sys.executable, "-m", "mln_core.cli"] + (["--verbose"] if self.ctx.verbose else [])
                for name in sorted(getattr(self.ctx.pm, "disabled", ()) or ()):
                    argv += ["--no-plugin", name]
                env = dict(os.environ, MLN_CONFIG=conf)       # (read again for each request)
                self.proc = self.ctx.on().popen([*argv, "serve", "--many"], stdin=-1, stdout=-1, env=env,
                                                text=True, what=f"the part of server {self.server.name}")
            p, answer = self.proc, None
            try:
                p.stdin.write(json.dumps(request) + "\n")
                p.stdin.flush()
                while answer is None and (line := p.stdout.readline()):
                    answer = answer_of(line, log)
            except OSError:             # (it ended: said below)
                pass
            if answer is None:
                status = self._end()
                raise MlnError(f"'mln serve' for its part ended without an answer (exit status {status})")
        if not answer.get("ok"):
            raise MlnError(str(answer.get("error", "failed")))
        return answer.get("result") or {}

    def put(self, local_path: str, remote_path: str) -> None:
        """The 'server' keeps its files here: a copy."""
        os.makedirs(os.path.dirname(remote_path), exist_ok=True)
        shutil.copyfile(local_path, remote_path)
        os.chmod(remote_path, 0o600)

    def get(self, remote_path: str, local_path: str) -> None:
        shutil.copyfile(remote_path, local_path)
        os.chmod(local_path, 0o600)

    def console(self, project: str, host: str, options: list[str]) -> int:
        """The guest's serial console through libvirt's stream (``mln console`` there, as
        mln_core.console does it here): on a terminal until Ctrl-]; without one, standard
        input typed into it and the output printed until the guest is quiet for ``-w``."""
        import json
        import sys

        from mln_backends.libvirt_remote import StreamConsole
        from mln_core.console import Closed, _OutputClosed, batch, interactive
        try:
            with open(os.path.join(self.root, project, "hosts", host, "libvirt.json")) as f:
                rec = json.load(f)
            domain = rec["domain"]      # at the URI of now (a key rotated, another known_hosts)
        except (OSError, ValueError, KeyError, TypeError):
            raise MlnError(f"host '{host}' of project '{project}' on server {self.server.name} has not been "
                           "started") from None
        quiet = float(options[options.index("-w") + 1]) if "-w" in options[:-1] else 2.0
        on_tty = sys.stdin.isatty()
        con = StreamConsole(self.uri, domain)
        try:
            if on_tty:
                print(f"console of {host} ({project}) on {self.server.name}: Ctrl-] leaves; press Enter "
                      "for a prompt", file=sys.stderr, flush=True)
                interactive(con)
                print("", file=sys.stderr)
            else:
                batch(con, sys.stdin.buffer.read(), quiet)
        except Closed:
            print(("\n" if on_tty else "") + f"mln: the console of {host} closed", file=sys.stderr)
        except _OutputClosed:
            pass
        finally:
            con.close()
        return 0

    def close(self) -> None:
        if self.lock.acquire(timeout=5):    # (else a request of a thread given up still reads
            try:                            # its answers: the process ends when this one does)
                self._end()
            finally:
                self.lock.release()

    def _end(self) -> int | None:
        """The ``mln serve --many`` of its part ends (its exit status)."""
        p, self.proc = self.proc, None
        if p is None:
            return None
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            return p.wait(timeout=30)
        except Exception:                   # (timed out) a request it still carries out: ended
            p.kill()
            return p.wait()
