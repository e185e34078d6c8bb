"""``mln console``: attach the terminal to a running guest's console.

A backend says where the console is (hook ``mln_console``): a Unix socket that carries it
both ways (QEMU), or a named pipe for keystrokes plus the log file the output goes to
(UML). On a terminal the session is raw, as on a serial line, until Ctrl-] is typed;
otherwise standard input is sent as it is and the output printed until the guest has
been quiet for a while, which makes ``echo cmd | mln console ...`` scriptable.

One session at a time: it holds ``console.lock`` next to the socket or pipe, so that a
second one fails at once instead of waiting on QEMU (which serves one client) or mixing
its keystrokes into the first one's. A console that closes (the guest halted or was
stopped) raises ``Closed``; a reader of the output that goes away (``| head``) just ends
the session.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
import termios
import time
import tty

from .errors import MlnError
from .machine import local

ESCAPE = b"\x1d"   # Ctrl-]
CONNECT_TIMEOUT = 5


class Closed(Exception):
    """The console went away: the guest halted, or was stopped."""


class _OutputClosed(Exception):
    """Whoever read our standard output has gone (``mln console ... | head``)."""


class _Socket:
    def __init__(self, path: str):
        try:
            self.sock = local().connect_unix(path, CONNECT_TIMEOUT)
        except OSError as e:
            raise MlnError(f"cannot connect to the console socket {path}: {e.strerror or e} (QEMU "
                           "serves one client at a time: is something else attached?)") from None
        self.sock.settimeout(None)
        self.fd = self.wfd = self.sock.fileno()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise Closed from None

    def read(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed
        return data

    def close(self) -> None:
        self.sock.close()


class _PipeAndLog:
    """Keystrokes into a named pipe; output read from where the log file grows."""

    fd = None

    def __init__(self, fifo: str, log: str):
        try:
            self.wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            gone = " (nothing reads it: has the guest stopped?)" if e.errno == errno.ENXIO else ""
            raise MlnError(f"cannot open the console input {fifo}: {e.strerror}{gone}") from None
        try:
            os.set_blocking(self.wfd, True)
            self.log = open(log, "rb")        # noqa: SIM115 (open for the session)
        except OSError as e:
            os.close(self.wfd)
            raise MlnError(f"cannot open the console log {log}: {e.strerror}") from None
        self.log.seek(0, os.SEEK_END)

    def send(self, data: bytes) -> None:
        try:
            os.write(self.wfd, data)
        except BrokenPipeError:
            raise Closed from None

    def read(self) -> bytes:
        # the guest has gone once nothing reads the pipe (its end then polls as an error);
        # asked before reading, so that the last words it logged are still printed
        poll = select.poll()
        poll.register(self.wfd, select.POLLOUT)
        gone = any(ev & select.POLLERR for _, ev in poll.poll(0))
        data = self.log.read()
        if gone and not data:
            raise Closed
        return data

    def close(self) -> None:
        os.close(self.wfd)
        self.log.close()


def open_console(where: dict):
    if "socket" in where:
        return _Socket(where["socket"])
    return _PipeAndLog(where["input"], where["log"])


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)      # unwinds, so that a raw terminal is restored


@contextlib.contextmanager
def session(where: dict, host: str):
    """The console of ``host`` for one session: locked against a second one, SIGTERM and
    SIGHUP turned into exceptions, OS errors into an MlnError. A closed output ends it quietly."""
    lock = os.path.join(os.path.dirname(where.get("socket") or where["input"]), "console.lock")
    try:
        lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise MlnError(f"cannot open {lock}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MlnError(f"another mln console is attached to {host}") from None
        con = open_console(where)
        saved = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            yield con
        except _OutputClosed:
            pass
        except (OSError, termios.error) as e:
            msg = getattr(e, "strerror", None) or (e.args[-1] if e.args else type(e).__name__)
            raise MlnError(f"console of {host}: {msg}") from None
        finally:
            for s, handler in saved.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
            con.close()
    finally:
        os.close(lock_fd)


def _print(out, data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        # the reader has gone: what is still buffered goes to /dev/null, else Python
        # complains about it on exit
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        raise _OutputClosed from None


def _wait(con, extra: list[int], timeout: float, sending: bool = False) -> tuple[list[int], bool]:
    """The file descriptors among ``extra`` and the console's that are ready to read (-1:
    poll the log), and whether the console can take ``select.PIPE_BUF`` bytes of input."""
    fds = extra + ([con.fd] if con.fd is not None else [])
    if con.fd is None:            # a growing log file cannot be waited on: poll it
        timeout = min(timeout, 0.05)
    ready, writable, _ = select.select(fds, [con.wfd] if sending else [], [], max(timeout, 0))
    return (ready if con.fd is not None else ready + [-1]), bool(writable)


def interactive(con, out=None, stdin_fd: int = 0) -> None:
    """Raw terminal session until Ctrl-] (or ``Closed``)."""
    out = sys.stdout.buffer if out is None else out
    saved = termios.tcgetattr(stdin_fd)
    try:
        tty.setraw(stdin_fd)
        while True:
            for fd in _wait(con, [stdin_fd], 1.0)[0]:
                if fd == stdin_fd:
                    data = os.read(stdin_fd, 1024)
                    if not data or ESCAPE in data:
                        con.send(data.split(ESCAPE)[0])
                        return
                    con.send(data)
                else:
                    data = con.read()
                    if data:
                        _print(out, data)
    finally:
        with contextlib.suppress(termios.error):      # a terminal that hung up stays as it is
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


def batch(con, data: bytes, quiet: float, out=None, limit: float = 600) -> None:
    """Type ``data`` while printing the output, until nothing was sent or came for ``quiet``
    seconds (at most ``limit`` seconds in all)."""
    out = sys.stdout.buffer if out is None else out
    todo = memoryview(data)
    last = start = time.monotonic()
    while (wait := min(last + quiet, start + limit) - time.monotonic()) > 0:
        ready, writable = _wait(con, [], wait, sending=bool(todo))
        if writable:              # never more than it can take, or this would block
            con.send(todo[:select.PIPE_BUF])
            todo, last = todo[select.PIPE_BUF:], time.monotonic()
        if ready:
            chunk = con.read()
            if chunk:
                _print(out, chunk)
                last = time.monotonic()
    if todo:
        raise MlnError(f"the console did not take all the input in time: the last {len(todo)} "
                       "bytes were not typed (-w waits longer)")
