"""``mln daemon``: this server's requests over TLS, from authenticated and allowed peers.

The daemon listens on port 34001 (``-p``) and speaks TLS 1.2 or later only. Every
connection carries one message, a JSON object on one line:

* a request of :mod:`mln_core.serve` (``{"verb": ...}``): the daemon runs ``mln serve`` as a
  child process with the request on its standard input and relays its JSON lines
  (``{"log": ...}``, then ``{"ok": ...}``), so no request's engine state stays in the daemon;
* ``{"get": PATH}``: a file of that inbox (a host's disk packed for a move), answered with
  ``{"ready": true, "size": N, "sha256": HEX}`` and its bytes;
* ``{"put": PATH, "size": N, "sha256": HEX}``: a file for the templates directory's
  ``.incoming/`` inbox (any other path is refused); the daemon answers ``{"ready": true}``,
  the client sends the N bytes, the daemon checks their SHA-256 and answers ``{"ok": ...}``.

Before anything else, the peer's address must match ``daemon_allow`` (repeatable in
mln.conf; no entry: nobody) and the peer must authenticate: a client certificate signed
by the site CA (``daemon_ca``), or the token of ``daemon_token_file`` in the message's
``"token"`` field. Each refusal is logged with the peer's address. SIGTERM (or SIGINT):
no new connection is accepted; a running ``build`` is interrupted at once (SIGINT: its engine
undoes it here, the manager undoes it on the other servers, and the same command works
again once this server is back); other running requests get ``grace`` seconds to finish,
then are interrupted the same way (SIGKILL 10 s later); the pid file goes; exit status 0.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .errors import MlnError
from .names import check_name

DEFAULT_PORT = 34001
MAX_MESSAGE = 128 * 2**20        # one JSON line: a build request carries the whole project text
MAX_CONNECTIONS = 64
HANDSHAKE_TIMEOUT = 20
MESSAGE_TIMEOUT = 300
KILL_AFTER = 10                  # seconds between SIGINT and SIGKILL of an interrupted request


# ---------------------------------------------------------------------------------------
# daemon_allow
# ---------------------------------------------------------------------------------------

_PATTERN = re.compile(r"[0-9*]+(\.[0-9*]+){3}\Z")


def _rule(entry: str):
    """One ``daemon_allow`` entry as a test of an address; an MlnError if it is not one."""
    bad = MlnError(f"daemon_allow '{entry}' is not an address, a pattern such as 192.168.10.* "
                   "or a network such as 10.0.0.0/24")
    if "/" in entry:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise bad from None
        return lambda ip: ip.version == net.version and ip in net
    if "*" in entry:
        if not _PATTERN.match(entry):
            raise bad
        rx = re.compile(r"\.".join(p.replace("*", "[0-9]+") for p in entry.split(".")) + r"\Z")
        return lambda ip: ip.version == 4 and rx.match(str(ip)) is not None
    try:
        one = ipaddress.ip_address(entry)
    except ValueError:
        raise bad from None
    return lambda ip: ip == one


class AllowList:
    """``daemon_allow`` entries: an address (``10.0.0.7``), a pattern where ``*`` is one
    run of digits (``10.0.0.*``), or a network (``10.0.0.0/24``). The whole address must
    match (the original matched anywhere in it: ``1.2.3.4`` let ``11.2.3.45`` in). No
    entry admits nobody."""

    def __init__(self, entries):
        self.entries = [e.strip() for e in entries]
        self.rules = [_rule(e) for e in self.entries]

    def admits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(rule(ip) for rule in self.rules)


# ---------------------------------------------------------------------------------------
# shared with the daemon transport
# ---------------------------------------------------------------------------------------

def read_token(path: str) -> bytes:
    """The token of a token file: a regular file only its owner can read or write
    (mode 0600 or stricter), at least 16 characters."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise MlnError(f"token file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise MlnError(f"token file {path} may be read by others (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"chmod 600 {path}")
        with open(path, "rb") as f:
            token = f.read(4096).strip()
    except OSError as e:
        raise MlnError(f"cannot read token file {path}: {e.strerror or e}") from None
    if len(token) < 16:
        raise MlnError(f"token file {path} holds fewer than 16 characters (make one: "
                       f"head -c 32 /dev/urandom | base64 > {path})")
    return token


def send_json(sock, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def read_json(stream, limit: int = MAX_MESSAGE) -> dict | None:
    """One JSON object from one line of ``stream``; None at the end of the stream."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if len(line) > limit:
        raise MlnError(f"a message longer than {limit} bytes")
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise MlnError("a message is a JSON object")
    return obj


# ---------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------

@dataclass
class Settings:
    listen: str
    port: int
    cert: str
    key: str
    ca: str | None
    token: bytes | None
    allow: AllowList
    templates_dir: str
    child_args: list          # global options for the ``mln serve`` children (-P, -T, -F, --no-plugin)
    grace: float = 60


def settings(config, listen: str | None, port: int | None, child_args=(), grace: float = 60) -> Settings:
    """The daemon's settings from mln.conf; an error for each missing or unsafe one."""
    cert, key, ca = config.get("daemon_cert"), config.get("daemon_key"), config.get("daemon_ca")
    token_file = config.get("daemon_token_file")
    if not cert or not key:
        raise MlnError("mln daemon needs daemon_cert and daemon_key in mln.conf (the server's certificate "
                       "and key: mln daemon_ca issue DIR NAME --address ADDRESS makes them)")
    if not ca and not token_file:
        raise MlnError("mln daemon needs daemon_ca (client certificates signed by the site CA) or "
                       "daemon_token_file (a shared token) in mln.conf: it admits no client without one")
    for what, path in (("daemon_cert", cert), ("daemon_key", key), ("daemon_ca", ca)):
        if path and not os.path.isfile(path):
            raise MlnError(f"{what} {path} is not a file")
    if os.stat(key).st_mode & 0o077:
        raise MlnError(f"daemon_key {key} may be read by others; chmod 600 {key}")
    allow = AllowList(config.getlist("daemon_allow"))
    if not allow.entries:
        raise MlnError("no daemon_allow line in mln.conf: the daemon would admit nobody (add e.g. "
                       "'daemon_allow 10.0.0.0/24')")
    port = port or int(config.get("daemon_port") or DEFAULT_PORT)
    return Settings(listen or config.get("daemon_listen") or "0.0.0.0", port, cert, key, ca,
                    read_token(token_file) if token_file else None, allow, config.templates_dir,
                    list(child_args), grace)


def server_context(s: Settings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(s.cert, s.key)
        if s.ca:
            ctx.load_verify_locations(s.ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL      # a certificate, if sent, must verify; else a token
    except (ssl.SSLError, OSError) as e:
        raise MlnError(f"cannot load the daemon's certificate {s.cert}, key {s.key} or CA {s.ca}: {e}") from None
    return ctx


class Refused(Exception):
    """A peer turned away: the message for it and for the log."""


def _subject(cert: dict) -> str:
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"


def _refuse(tls, message: str) -> None:
    """Answer ``message`` and let the peer read it: what it sent and we did not read (up
    to 1 MB, 2 s) is read first, so that closing does not reset the connection."""
    send_json(tls, {"ok": False, "error": message})
    _drain(tls)


def _drain(sock) -> None:
    sock.settimeout(2)
    left = 2**20
    try:
        while left > 0:
            block = sock.recv(min(left, 65536))
            if not block:
                break
            left -= len(block)
    except (OSError, ValueError):
        pass
    finally:
        sock.close()


class Daemon:
    def __init__(self, s: Settings, log):
        self.s, self.log = s, log
        self.context = server_context(s)
        self.stopping = threading.Event()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.lock = threading.Lock()
        self.threads: set[threading.Thread] = set()
        self.children: dict[subprocess.Popen, str] = {}       # running ``mln serve``: its verb
        self.listener: socket.socket | None = None

    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.s.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.s.listen, self.s.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise MlnError(f"cannot listen on {self.s.listen} port {self.s.port}: {e.strerror or e}") from None
        sock.settimeout(0.25)
        self.listener = sock

    # -- the accept loop and the stop --------------------------------------------------
    def run(self) -> int:
        def stop(signum, frame):
            self.stopping.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        how = "a client certificate of the site CA" if self.s.ca else ""
        how += (" or " if how else "") + ("the token" if self.s.token else "")
        self.log(f"listening on {self.s.listen} port {self.s.port} (TLS; clients authenticate with {how}; "
                 f"daemon_allow {', '.join(self.s.allow.entries)})")
        while not self.stopping.is_set():
            try:
                conn, peer = self.listener.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError as e:
                self.log(f"accept: {e}")
                time.sleep(0.1)
                continue
            if not self.slots.acquire(blocking=False):
                self.log(f"refused {peer[0]}: {MAX_CONNECTIONS} connections are open")
                conn.close()
                continue
            t = threading.Thread(target=self._connection, args=(conn, peer[0]), daemon=True)
            with self.lock:
                self.threads.add(t)
            t.start()
        self.listener.close()
        self._finish()
        self.log("stopped")
        return 0

    def _finish(self) -> None:
        with self.lock:
            running = list(self.threads)
            builds = [(p, verb) for p, verb in self.children.items()
                      if verb in ("build", "upgrade") and p.poll() is None]
        for p, verb in builds:  # all or nothing: the manager undoes the whole build, to be run again
            self.log(f"interrupting a {verb} (pid {p.pid}): this server is stopping; the {verb} is undone here")
            p.send_signal(signal.SIGINT)
        if running:
            self.log(f"stopping: waiting up to {self.s.grace:g} s for {len(running)} connection(s)")
        end = time.monotonic() + self.s.grace
        for t in running:
            t.join(max(0, end - time.monotonic()))
        with self.lock:
            children = [p for p in self.children if p.poll() is None]
        for p in children:
            if p not in builds:         # an interrupted build is undoing: a second SIGINT would cut that short
                self.log(f"interrupting request (pid {p.pid}) after {self.s.grace:g} s")
                p.send_signal(signal.SIGINT)
        end = time.monotonic() + KILL_AFTER
        for p in children:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in running:
            t.join(5)

    # -- one connection ------------------------------------------------------------------
    def _connection(self, conn: socket.socket, ip: str) -> None:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            allowed = self.s.allow.admits(ip)
            if not allowed:
                self.log(f"refused {ip}: not in daemon_allow")
            keep = conn.dup()          # a failed handshake closes conn: read on through this one
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                if allowed:
                    self.log(f"refused {ip}: TLS handshake failed: {getattr(e, 'reason', None) or e}")
                _drain(keep)           # the peer reads the TLS alert, not a reset connection
                return
            keep.close()
            with tls:
                if not allowed:
                    _refuse(tls, f"refused: address {ip} is not in the daemon's daemon_allow")
                    return
                self._message(tls, ip)
        except Exception as e:        # one connection's failure never stops the daemon
            self.log(f"{ip}: {type(e).__name__}: {e}")
        finally:
            conn.close()
            self.slots.release()
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _message(self, tls, ip: str) -> None:
        tls.settimeout(MESSAGE_TIMEOUT)
        stream = tls.makefile("rb")
        try:
            msg = read_json(stream)
        except (MlnError, ValueError) as e:
            self.log(f"refused {ip}: not a message: {e}")
            _refuse(tls, f"not a message: {e}")
            return
        if msg is None:
            return
        try:
            who = self._authenticate(tls, msg)
        except Refused as e:
            self.log(f"refused {ip}: {e}")
            send_json(tls, {"ok": False, "error": f"refused: {e}"})
            return
        tls.settimeout(None)
        if "put" in msg:
            self.log(f"{ip} ({who}): put {msg.get('put')}")
            try:
                self._put(tls, stream, msg)
                send_json(tls, {"ok": True, "result": {}})
            except MlnError as e:
                self.log(f"{ip}: put refused: {e}")
                send_json(tls, {"ok": False, "error": str(e)})
        elif "get" in msg:
            self.log(f"{ip} ({who}): get {msg.get('get')}")
            try:
                self._get(tls, msg)
            except MlnError as e:
                self.log(f"{ip}: get refused: {e}")
                send_json(tls, {"ok": False, "error": str(e)})
        elif "verb" in msg:
            self.log(f"{ip} ({who}): {msg.get('verb')} {msg.get('project') or ''}".rstrip())
            self._request(tls, msg)
        else:
            send_json(tls, {"ok": False, "error": "a message is a request ('verb') or a file ('put', 'get')"})

    def _authenticate(self, tls, msg: dict) -> str:
        token = msg.pop("token", None)
        cert = tls.getpeercert()
        if cert:
            return f"certificate {_subject(cert)}"
        if self.s.token is None:
            raise Refused("no client certificate (this daemon takes certificates of its site CA only)")
        if token is None:
            raise Refused("no client certificate and no token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.s.token):
            raise Refused("bad token")
        return "token"

    def _request(self, tls, msg: dict) -> None:
        argv = [sys.executable, "-m", "mln_core.cli", *self.s.child_args, "serve"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        with self.lock:
            self.children[p] = str(msg.get("verb"))
        gone = False
        answered = False
        try:
            p.stdin.write(json.dumps(msg).encode())
            p.stdin.close()
            for line in p.stdout:       # the final line ends it: guests may hold the pipe open
                try:
                    answered = "ok" in json.loads(line)
                except ValueError:
                    pass
                if not gone:
                    try:
                        tls.sendall(line if line.endswith(b"\n") else line + b"\n")
                    except OSError:
                        gone = True
                        self.log("the client went away; the request goes on")
                if answered:
                    break
            code = p.wait()
            if not answered and not gone:
                send_json(tls, {"ok": False, "error": f"mln serve ended without an answer (exit status {code})"})
        finally:
            p.stdout.close()
            with self.lock:
                self.children.pop(p, None)

    def _get(self, tls, msg: dict) -> None:
        """Send a file of the inbox (what a ``pack`` request left there): its size and
        SHA-256 first, then its bytes."""
        path = msg.get("get")
        inbox = os.path.join(self.s.templates_dir, ".incoming")
        if not isinstance(path, str) or ".." in path.split("/") or os.path.dirname(path) != inbox:
            raise MlnError(f"files are sent only from {inbox}/, not {path}")
        try:
            f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
        except OSError as e:
            raise MlnError(f"{path}: {e.strerror}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            send_json(tls, {"ready": True, "size": size, "sha256": h.hexdigest()})
            f.seek(0)
            for block in iter(lambda: f.read(1 << 20), b""):
                tls.sendall(block)

    def _put(self, tls, stream, msg: dict) -> None:
        path, size, digest = msg.get("put"), msg.get("size"), msg.get("sha256")
        if not isinstance(path, str) or not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise MlnError("a put names 'put' (a path), 'size' (bytes) and 'sha256'")
        inbox = os.path.join(self.s.templates_dir, ".incoming")
        name = os.path.basename(path)
        if ".." in path.split("/") or os.path.dirname(path) != inbox:
            raise MlnError(f"files are taken only into {inbox}/, not {path}")
        check_name("template", name)
        os.makedirs(self.s.templates_dir, exist_ok=True)
        try:
            os.mkdir(inbox, 0o700)
        except FileExistsError:
            pass
        try:
            fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            raise MlnError(f"{inbox} is not a directory (a symbolic link?)") from None
        try:
            if shutil.disk_usage(inbox).free < size + 2**26:
                raise MlnError(f"not enough free space in {inbox} for {size} bytes")
            send_json(tls, {"ready": True})
            tmp = f".put-{secrets.token_hex(8)}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
            h, left = hashlib.sha256(), size
            try:
                with os.fdopen(out, "wb") as f:
                    while left:
                        block = stream.read(min(left, 1 << 20))
                        if not block:
                            raise MlnError(f"the file ended after {size - left} of {size} bytes")
                        h.update(block)
                        f.write(block)
                        left -= len(block)
                if not hmac.compare_digest(h.hexdigest(), digest.lower()):
                    raise MlnError(f"{name}: the SHA-256 of what arrived is not the one announced")
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=fd)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------

def make_logger(stream):
    lock = threading.Lock()

    def log(message: str) -> None:
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)   # one line each
        with lock:
            stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} mln daemon[{os.getpid()}]: {message}\n")
            stream.flush()
    return log


def _check_pidfile(pidfile: str) -> None:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise MlnError(f"pid file {pidfile} names process {pid}, which runs: is a daemon running already?")


def _detach(pidfile: str, log_path: str) -> None:
    """Become a daemon: fork twice, a new session, stdio to /dev/null and the log; write the
    pid file. The first process exits 0 once the pid file is written (1 if it is not)."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        said = os.read(r, 4096)
        if said != b"ok":
            sys.stderr.write(f"mln: error: {said.decode(errors='replace') or 'the daemon did not start'}\n")
        os._exit(0 if said == b"ok" else 1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        with open(os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
            f.write(f"{os.getpid()}\n")
        os.write(w, b"ok")
    except OSError as e:
        os.write(w, f"cannot detach: {e}".encode())
        os._exit(1)
    os.close(w)


def run_daemon(s: Settings, pidfile: str | None, log_path: str | None) -> int:
    """``mln daemon``: listen, then (with a pid file) detach; serve until SIGTERM."""
    if pidfile:
        pidfile = os.path.abspath(pidfile)
        _check_pidfile(pidfile)
        if os.environ.get("MLN_CONFIG"):            # the daemon and its children run in /
            os.environ["MLN_CONFIG"] = os.path.abspath(os.environ["MLN_CONFIG"])
        log_path = os.path.abspath(log_path or "/var/log/mln-daemon.log")
    stream = open(log_path, "a") if log_path and not pidfile else sys.stderr
    daemon = Daemon(s, make_logger(stream))
    daemon.bind()
    if pidfile:
        _detach(pidfile, log_path)
    try:
        return daemon.run()
    finally:
        if pidfile:
            try:
                with open(pidfile) as f:
                    mine = f.read().strip() == str(os.getpid())
                if mine:
                    os.unlink(pidfile)
            except OSError:
                pass
