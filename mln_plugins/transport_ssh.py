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

import io
import json
import os
import shlex
import threading

from mln_core import hookimpl
from mln_core.errors import MlnError
from mln_core.serve import answer_of

CONNECT_TIMEOUT = 10
DEFAULT_TIMEOUT = 60        # seconds without a line from a server before it is taken as gone
SESSIONS = 8                # mln serve there at once per command at most (sshd's MaxSessions: 10)


@hookimpl
def mln_remote_transport(server, ctx):
    if server.transport != "ssh":
        return None
    return SshTransport(server, ctx.config)


class _Lines(io.TextIOBase):
    """Fabric's output stream: complete lines go to ``each(line)``."""

    def __init__(self, each):
        self.each, self.buf = each, ""

    def write(self, text):
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.each(line)
        return len(text)


class _Session:
    """One ``mln serve --many`` there: a channel, and what it printed of a line so far;
    ``generation``: the transport's connection it belongs to."""

    def __init__(self, chan, generation: int):
        self.chan, self.lines, self.err, self.generation = chan, _Lines(None), [], generation

    def alive(self) -> bool:
        return not self.chan.closed and not self.chan.exit_status_ready()

    def drain(self) -> None:
        while self.chan.recv_stderr_ready():
            self.err.append(self.chan.recv_stderr(65536).decode("utf-8", "replace"))

    def end(self, wait: bool = True) -> str:
        """Close it (its standard input ends: it exits); what it said on standard error, or
        its exit status (``wait``: it ended without an answer)."""
        status = None
        try:
            self.chan.shutdown_write()
            if wait:
                status = self.chan.recv_exit_status()
                self.drain()
        finally:
            self.chan.close()
        return " ".join("".join(self.err).split())[-300:] or f"exit status {status}"


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
        self.idle: list[_Session] = []          # the mln serve processes there waiting for a request
        self.count = 0                          # how many there are: idle, busy or being started
        self.starting = 0                       # of those, being started by prepare()
        self.generation = 0                     # how many times the connection was closed
        self.ready = threading.Condition()      # guards the four above
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
        """Ask one ``mln serve --many`` there (an idle one of this command, else a new one:
        no process start per request) to carry out ``request``; its JSON lines come back as
        they are printed. A server silent for longer than the timeout (it prints a heartbeat
        while it works) is taken as gone."""
        conn = self._connection()
        session = self._take()
        try:
            if session is None:
                session = self._spawn(conn)
            answer = self._exchange(session, request, log)
        except TimeoutError:
            self._drop(session)
            raise MlnError(f"{self.server.address} stopped answering (nothing for {self.timeout:g} s)") from None
        except Exception as e:      # the connection broke: paramiko's own errors and OSError
            self._drop(session)
            link = conn.client.get_transport()
            if self.conn is conn and not (link and link.is_active()):   # (not one made anew meanwhile)
                self.close()
            raise MlnError(f"the connection to {self.server.address} broke: {type(e).__name__}: {e}") from None
        if answer:
            self._give_back(session)
            if answer[-1].get("ok"):
                return answer[-1].get("result") or {}
            raise MlnError(answer[-1].get("error", "failed"))
        said = self._drop(session, wait=True)
        raise MlnError(f"'{self.command} serve' did not answer ({said}); is mln installed there "
                       f"(remote_mln in mln.conf names the command)?")

    @staticmethod
    def _exchange(session: _Session, request: dict, log) -> list[dict]:
        """Send ``request`` to the session's mln serve; its answer ([] if it ended first)."""
        answer: list[dict] = []
        session.err = []
        session.lines.each = lambda text: answer.extend(filter(None, [answer_of(text, log)]))
        session.chan.sendall(json.dumps(request).encode() + b"\n")
        while not answer:
            data = session.chan.recv(65536)
            if not data:
                break
            session.lines.write(data.decode("utf-8", "replace"))
            session.drain()
        return answer

    def _take(self) -> _Session | None:
        """An idle session, or None: the caller starts one (counted already). Waits for one
        that prepare() starts, or for a busy one when there are SESSIONS already."""
        with self.ready:
            waited = 0.0
            while True:
                while self.idle:
                    session = self.idle.pop()
                    if session.alive():
                        return session
                    self.count -= 1                 # (its mln serve ended: stopped there)
                    session.chan.close()
                if (not self.starting or waited >= CONNECT_TIMEOUT) and self.count < SESSIONS:
                    self.count += 1
                    return None
                self.ready.wait(1)
                waited += 1

    def _give_back(self, session: _Session) -> None:
        with self.ready:
            if session.generation == self.generation and session.alive():
                self.idle.append(session)
                self.ready.notify()
                return
        self._drop(session)

    def _drop(self, session: _Session | None, wait: bool = False) -> str:
        """Close ``session`` (None: the one a request could not start); what it said."""
        with self.ready:
            if session is None or session.generation == self.generation:
                self.count -= 1
            self.ready.notify()
        return session.end(wait) if session is not None else ""

    def _spawn(self, conn) -> _Session:
        session = _Session(conn.client.get_transport().open_session(timeout=CONNECT_TIMEOUT), self.generation)
        session.chan.settimeout(self.timeout)
        session.chan.exec_command(f"{self.command} serve --many")
        return session

    def prepare(self, n: int, wait: bool = False) -> None:
        """Have ``n`` ``mln serve`` there (SESSIONS at most) ready for requests sent at once,
        started in the background now (each is idle once it answered a ``ping``): a request
        waits for one of them rather than starting its own. ``wait``: return once they are
        ready."""
        conn = self._connection()
        with self.ready:
            missing = max(0, min(n - len(self.idle) - self.starting, SESSIONS - self.count))
            self.starting += missing
            self.count += missing
            generation = self.generation
        for _ in range(missing):
            threading.Thread(target=self._prepared, args=(conn, generation), daemon=True).start()
        if wait:                    # until every one started answered (or could not start)
            with self.ready:
                self.ready.wait_for(lambda: not self.starting or self.generation != generation,
                                    timeout=CONNECT_TIMEOUT)

    def _prepared(self, conn, generation: int) -> None:
        session = None
        try:            # ready once its mln serve answered (a request would wait for its start)
            session = self._spawn(conn)
            if not (self._exchange(session, {"verb": "ping"}, lambda line: None) or [{}])[-1].get("ok"):
                raise MlnError("no answer")
        except Exception:           # (a request that needs it starts its own)
            if session is not None:
                try:
                    session.end(wait=False)
                except Exception:   # (a broken connection)
                    pass
            session = None
        with self.ready:
            if generation == self.generation:
                self.starting -= 1
                if session is not None and session.generation == generation:
                    self.idle.append(session)
                    session = None
                else:
                    self.count -= 1
            self.ready.notify_all()
        if session is not None:     # the connection was closed meanwhile
            session.end(wait=False)

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
        with self.ready:
            idle, self.idle = self.idle, []
            self.count, self.starting, self.generation = 0, 0, self.generation + 1
            self.ready.notify_all()
        for session in idle:                    # standard input ends: each mln serve there exits
            try:
                session.end(wait=False)
            except Exception:               # (a broken connection ends them anyway)
                pass
        with self.connecting:           # (one being made in the background: closed once made)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
