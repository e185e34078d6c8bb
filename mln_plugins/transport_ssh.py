"""The ``ssh`` transport: another server reached over SSH (Fabric and paramiko), running
``mln serve`` there with each request on its standard input.

Authentication is the site's SSH keys: ``ssh_identity PATH`` in mln.conf (or
``identity=PATH`` on the ``server`` line), else the user's keys and agent. Host keys are
always checked, against ``ssh_known_hosts PATH`` (or ``known_hosts=PATH``), else
``~/.ssh/known_hosts``: an unknown or changed host key is refused, naming the server.
The command run there is ``mln`` (``remote_mln COMMAND`` in mln.conf or ``mln=COMMAND``
on the server line when it is elsewhere).
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import threading

from mln_core import hookimpl
from mln_core.errors import MlnError

CONNECT_TIMEOUT = 10
DEFAULT_TIMEOUT = 60        # seconds without a line from a server before it is taken as gone


@hookimpl
def mln_remote_transport(server, ctx):
    if server.transport != "ssh":
        return None
    return SshTransport(server, ctx.config)


def _chunks(recv):
    """What a channel's ``recv`` or ``recv_stderr`` gives, until it ends (a silence longer
    than the channel's timeout is no end: each request minds its own)."""
    while True:
        try:
            data = recv(1 << 16)
        except TimeoutError:
            continue
        if not data:
            return
        yield data


class _Serve:
    """The ``mln serve --many`` there of one connection: requests are sent to it at once,
    each with an ``id``, and a thread reads its lines and hands each to the request whose
    ``id`` it carries (``None``: to every request waiting, once it ended); another keeps
    the end of what it says on standard error."""

    def __init__(self, chan, timeout: float):
        self.chan = chan
        chan.settimeout(timeout)            # (a send that cannot go on for this long: gone)
        self.lock, self.sending = threading.Lock(), threading.Lock()
        self.waiting: dict[int, queue.SimpleQueue] = {}
        self.count, self.err, self.ended = 0, "", None      # ended: why it did (an exception), or ""
        self.reading_err = threading.Thread(target=self._read_err, daemon=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.reading_err.start()

    def _read(self) -> None:
        buf, why = "", ""
        try:
            for data in _chunks(self.chan.recv):
                buf += data.decode("utf-8", "replace")
                *lines, buf = buf.split("\n")
                why = next(filter(None, map(self._line, lines)), "")
                if why:
                    break
        except Exception as e:      # the connection broke: paramiko's own errors and OSError
            why = e
        with self.lock:
            self.ended = why        # ("": it ended; the next request starts another)
            for q in self.waiting.values():
                q.put(None)

    def _read_err(self) -> None:
        try:
            for data in _chunks(self.chan.recv_stderr):
                self.err = (self.err + data.decode("utf-8", "replace"))[-4096:]
        except Exception:           # (the connection broke: the other reader says so)
            return

    def _line(self, line: str) -> MlnError | None:
        try:
            obj = json.loads(line)
        except ValueError:          # (not mln serve's: whatever printed it, every request shows it)
            obj = {"log": line}
        if not isinstance(obj, dict):
            return None
        if "ok" in obj and "id" not in obj:     # (an mln that answers one request at a time)
            return MlnError("its mln is older than this one's (it answers one request at a time): install "
                            "the same mln version on every server")
        with self.lock:
            for q in [self.waiting.get(obj["id"])] if "id" in obj else self.waiting.values():
                if q is not None:
                    q.put(obj)
        return None

    def ask(self, request: dict, log, timeout: float) -> dict | None:
        """The answer to ``request`` (None: mln serve ended first); TimeoutError when no line
        of it came for ``timeout`` seconds (it prints one every few seconds while it works)."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self.lock:
            if self.ended is not None:
                return self._ended()
            self.count += 1
            n = self.count
            self.waiting[n] = q
        try:
            with self.sending:
                self.chan.sendall(json.dumps(dict(request, id=n)).encode() + b"\n")
            while True:
                try:
                    obj = q.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError from None
                if obj is None:
                    return self._ended()
                if "ok" in obj:
                    return obj
                if "log" in obj:
                    log(str(obj["log"]))
        finally:
            with self.lock:
                self.waiting.pop(n, None)

    def _ended(self) -> None:
        if isinstance(self.ended, Exception):
            raise self.ended
        return None

    def end(self, wait: bool = True) -> str:
        """Close it (its standard input ends: it exits once its requests are done); what it
        said on standard error, or its exit status (``wait``: it ended without an answer)."""
        status = None
        try:
            self.chan.shutdown_write()
            if wait:
                status = self.chan.recv_exit_status()
                self.reading_err.join(5)
        finally:
            self.chan.close()
        return " ".join(self.err.split())[-300:] or f"exit status {status}"


class SshTransport:
    def __init__(self, server, config):
        self.server = server
        opt = server.options
        self.identity = opt.get("identity") or config.get("ssh_identity")
        self.known_hosts = os.path.expanduser(opt.get("known_hosts") or config.get("ssh_known_hosts")
                                              or "~/.ssh/known_hosts")
        self.command = opt.get("mln") or config.get("remote_mln") or "mln"
        self.timeout = float(opt.get("timeout") or config.get("remote_timeout") or DEFAULT_TIMEOUT)
        self.conn = None
        self.serving: _Serve | None = None      # the mln serve --many there of this command
        self.lock = threading.Lock()
        self.connecting = threading.Lock()
        self.tries, self.failure = 0, None      # connections tried (ended), and why the last failed

    def _connection(self):
        tries = self.tries
        with self.connecting:   # one that failed while this waited for it: its answer (no second timeout)
            if self.conn is None and self.tries != tries and self.failure is not None:
                raise self.failure
            return self.conn if self.conn is not None else self._connect()

    def _connect(self):
        import fabric
        import paramiko
        s = self.server
        kwargs = {"banner_timeout": CONNECT_TIMEOUT, "auth_timeout": CONNECT_TIMEOUT,
                  "compress": True}         # disk images are mostly zeros
        if self.identity:
            kwargs.update(key_filename=[self.identity], look_for_keys=False, allow_agent=False)
        conn = fabric.Connection(s.address, user=s.user or "root", port=s.port or 22,
                                 connect_timeout=CONNECT_TIMEOUT, connect_kwargs=kwargs)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if os.path.isfile(self.known_hosts):
            conn.client.load_host_keys(self.known_hosts)
        where = f"{s.address}{':' + str(s.port) if s.port else ''}"
        try:
            conn.open()
        except paramiko.BadHostKeyException:
            self.failure = MlnError(f"the SSH host key of {where} has CHANGED (it is not the one in "
                                    f"{self.known_hosts}); refusing to connect: if the server was reinstalled, "
                                    "replace its line there")
        except paramiko.SSHException as e:
            self.failure = MlnError(f"the SSH host key of {where} is unknown (not in {self.known_hosts}); add it "
                                    f"(ssh-keyscan {s.address} >> {self.known_hosts}, after checking it)"
                                    if "not found in known_hosts" in str(e) else f"ssh to {where}: {e}")
        except OSError as e:
            self.failure = MlnError(f"cannot reach {where} over ssh: {e.strerror or e}")
        else:
            self.conn, self.failure, self.tries = conn, None, self.tries + 1
            return conn
        self.tries += 1
        raise self.failure

    def request(self, request: dict, log) -> dict:
        """Ask the ``mln serve --many`` there (one for the command, started with its first
        request) to carry out ``request``, beside any others this command sends it; its
        JSON lines come back as they are printed. A server silent for longer than the
        timeout (it prints a heartbeat while it works) is taken as gone."""
        conn = self._connection()
        serve = None
        try:
            serve = self._serve(conn)
            answer = serve.ask(request, log, self.timeout)
        except TimeoutError:
            raise MlnError(f"{self.server.address} stopped answering (nothing for {self.timeout:g} s)") from None
        except MlnError:
            raise
        except Exception as e:      # the connection broke: paramiko's own errors and OSError
            raise self._broken(conn, e) from None
        if answer is not None:
            if answer.get("ok"):
                return answer.get("result") or {}
            raise MlnError(answer.get("error", "failed"))
        link = conn.client.get_transport()
        if not (link and link.is_active()):     # (the channel closed with the connection)
            raise self._broken(conn, EOFError("the connection closed"))
        with self.lock:
            if self.serving is serve:
                self.serving = None
        said = serve.end(wait=True)
        raise MlnError(f"'{self.command} serve' did not answer ({said}); is mln installed there "
                       f"(remote_mln in mln.conf names the command)?")

    def _broken(self, conn, e: Exception) -> MlnError:
        link = conn.client.get_transport()
        if self.conn is conn and not (link and link.is_active()):   # (not one made anew meanwhile)
            self.close()
        return MlnError(f"the connection to {self.server.address} broke: {type(e).__name__}: {e}")

    def _serve(self, conn) -> _Serve:
        """This command's ``mln serve --many`` there (started now if it is not, or ended)."""
        with self.lock:
            if self.serving is None or self.serving.ended is not None:
                chan = conn.client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
                chan.exec_command(f"{self.command} serve --many")
                self.serving = _Serve(chan, self.timeout)
            return self.serving

    def prepare(self) -> None:
        """Connect and start ``mln serve`` there (in the background: Fleet.prepare)."""
        self._serve(self._connection())

    def console(self, project: str, host: str, options: list[str]) -> int:
        """``mln console`` run there: with a terminal, on a remote terminal (Ctrl-] leaves);
        without one, standard input typed into the console and the output printed. Its
        exit status (its messages are printed as they come)."""
        import sys
        conn = self._connection()
        cmd = shlex.join([*shlex.split(self.command), "console", "-p", project, "-h", host, *options])
        try:
            r = conn.run(cmd, pty=sys.stdin.isatty(), warn=True, hide=False, echo_stdin=False)
        except Exception as e:      # the connection broke
            raise MlnError(f"the connection to {self.server.address} broke: {type(e).__name__}: {e}") from None
        return r.exited

    def put(self, local_path: str, remote_path: str) -> None:
        conn = self._connection()
        conn.run(f"mkdir -p {shlex.quote(os.path.dirname(remote_path))}", hide=True)
        conn.put(local_path, remote_path)

    def get(self, remote_path: str, local_path: str) -> None:
        self._connection().get(remote_path, local_path)
        os.chmod(local_path, 0o600)

    def close(self) -> None:
        with self.lock:
            serve, self.serving = self.serving, None
        if serve is not None:           # standard input ends: mln serve there exits
            try:
                serve.end(wait=False)
            except Exception:           # (a broken connection ends it anyway)
                pass
        with self.connecting:           # (one being made in the background: closed once made)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
