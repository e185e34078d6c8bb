"""``mln console``: attach the terminal to a running guest's console.

A backend says where the console is (hook ``mln_console``): a Unix socket that carries it
both ways (QEMU), or a named pipe for keystrokes plus the log file the output goes to
(UML). On a terminal the session is raw, as on a serial line, until Ctrl-] is typed;
otherwise standard input is sent as it is and the output printed until the guest has
been quiet for a while, which makes ``echo cmd | mln console ...`` scriptable.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty

from .errors import MlnError

ESCAPE = b"\x1d"   # Ctrl-]


class _Socket:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise MlnError(f"cannot connect to the console socket {path}: {e.strerror} (is another "
                           "mln console attached? QEMU takes one at a time)") from None
        self.fd = self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError
        return data

    def close(self) -> None:
        self.sock.close()


class _PipeAndLog:
    """Keystrokes into a named pipe; output read from where the log file grows."""

    fd = None

    def __init__(self, fifo: str, log: str):
        try:
            self.out = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            raise MlnError(f"cannot open the console input {fifo}: {e.strerror}") from None
        os.set_blocking(self.out, True)
        self.log = open(log, "rb")
        self.log.seek(0, os.SEEK_END)

    def send(self, data: bytes) -> None:
        os.write(self.out, data)

    def read(self) -> bytes:
        return self.log.read()

    def close(self) -> None:
        os.close(self.out)
        self.log.close()


def open_console(where: dict):
    if "socket" in where:
        return _Socket(where["socket"])
    return _PipeAndLog(where["input"], where["log"])


def _wait(con, extra: list[int], timeout: float) -> list[int]:
    """File descriptors among ``extra`` (and the console's) that are ready to read."""
    fds = extra + ([con.fd] if con.fd is not None else [])
    if con.fd is None:            # a growing log file cannot be waited on: poll it
        timeout = min(timeout, 0.05)
    ready, _, _ = select.select(fds, [], [], timeout)
    return ready if con.fd is not None else ready + [-1]


def interactive(con, out=sys.stdout.buffer, stdin_fd: int = 0) -> None:
    """Raw terminal session until Ctrl-] or the console closes."""
    saved = termios.tcgetattr(stdin_fd)
    try:
        tty.setraw(stdin_fd)
        while True:
            for fd in _wait(con, [stdin_fd], 1.0):
                if fd == stdin_fd:
                    data = os.read(stdin_fd, 1024)
                    if not data or ESCAPE in data:
                        con.send(data.split(ESCAPE)[0])
                        return
                    con.send(data)
                else:
                    data = con.read()
                    if data:
                        out.write(data)
                        out.flush()
    except EOFError:
        return
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


def batch(con, data: bytes, quiet: float, out=sys.stdout.buffer, limit: float = 600) -> None:
    """Send ``data``, then print the output until none came for ``quiet`` seconds."""
    con.send(data)
    last = start = time.monotonic()
    with contextlib.suppress(EOFError):
        while time.monotonic() - last < quiet and time.monotonic() - start < limit:
            if _wait(con, [], quiet - (time.monotonic() - last)):
                chunk = con.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                    last = time.monotonic()
