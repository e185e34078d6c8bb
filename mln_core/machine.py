"""The execution seam: everything mln does to a machine goes through a :class:`Machine`.

Backends, storage and image plugins get one with ``ctx.on(host)`` and never call
``subprocess``, ``os.kill``, ``/proc``, ``/sys`` or raw sockets themselves. The machine acts
locally: in a project spread over servers each server carries out its own part of the plan
with its own engine, so this is not a remote executor; it is the one place where

* every command mln runs is traced (``--verbose``, or ``MLN_TRACE_COMMANDS=1``), and
* tests inject failures and kills at any step, through ``MLN_FAULTS`` (for mln running in
  another process) or :meth:`Machine.inject` (in-process): a comma-separated list of
  ``fail@TEXT`` (the first command whose words contain TEXT fails as if it had exited 1,
  without running), ``kill@TEXT`` (mln kills itself with SIGKILL just before running it)
  ``stop@TEXT`` (SIGTERM to itself) and ``pause@TEXT`` (waits 60 s just before it, so that a
  test can act while mln is in the middle of its work; a signal ends the wait as it would
  end the command); ``#N`` after TEXT picks the Nth such command.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from typing import TYPE_CHECKING

from .errors import MlnError

if TYPE_CHECKING:
    import socket
    import subprocess


PAUSE = 60          # seconds a ``pause@`` fault waits


class Fault:
    def __init__(self, spec: str):
        action, _, rest = spec.partition("@")
        text, _, nth = rest.rpartition("#") if "#" in rest else (rest, "", "1")
        if action not in ("fail", "kill", "stop", "pause") or not text:
            raise MlnError(f"MLN_FAULTS: '{spec}' is not fail@TEXT, kill@TEXT, stop@TEXT or pause@TEXT "
                           "(with an optional #N)")
        self.action, self.text, self.left = action, text, int(nth) if nth.isdigit() else 1

    def hit(self, words: str) -> bool:
        if self.left <= 0 or self.text not in words:
            return False
        self.left -= 1
        return self.left == 0


class Machine:
    """This machine, as mln's plugins see it."""

    name = "local"

    def __init__(self, env=os.environ, verbose: bool = False):
        self.trace = verbose or env.get("MLN_TRACE_COMMANDS", "") not in ("", "0")
        self.faults = [Fault(s.strip()) for s in env.get("MLN_FAULTS", "").split(",") if s.strip()]

    def inject(self, spec: str) -> None:
        """Add a fault (see the module's docstring) to this machine, for in-process tests."""
        self.faults.append(Fault(spec))

    # -- the one door every command goes through -----------------------------------------------
    def _enter(self, argv: list[str]) -> bool:
        """Trace ``argv`` and apply the faults; False if the command must fail unrun."""
        words = shlex.join(argv)
        if self.trace:
            from .private import redact
            print(f"$ {redact(words)}", file=sys.stderr, flush=True)
        for f in self.faults:
            if f.hit(words):
                if f.action == "fail":
                    return False
                if f.action == "pause":
                    print(f"mln: MLN_FAULTS: pausing at '{f.text}'", file=sys.stderr, flush=True)
                    time.sleep(PAUSE)
                    continue
                os.kill(os.getpid(), signal.SIGKILL if f.action == "kill" else signal.SIGTERM)
                time.sleep(5)          # SIGTERM is handled by Python's default: we do not get here
        return True

    def step(self, name: str) -> None:
        """A named step of mln's own work (no command runs): traced as ``$ mln-step NAME``
        and, like a command, where ``MLN_FAULTS`` fails (MlnError) or kills mln."""
        if not self._enter(["mln-step", name]):
            raise MlnError(f"{name}: injected fault")

    # -- processes (subprocess is imported when first needed: mln --help runs nothing) ---------
    def run(self, argv: list[str], what: str | None = None, check: bool = True, input: bytes | str | None = None,
            timeout: float | None = 300, **kw) -> "subprocess.CompletedProcess":
        """Run a command to its end and return its result (output captured unless ``kw``
        says otherwise); on failure with ``check`` raise MlnError naming ``what`` and the
        command's error output."""
        import subprocess

        prefix = f"{what}: " if what else ""
        if not self._enter(argv):
            if check:
                raise MlnError(f"{prefix}'{shlex.join(argv)}' failed (exit 1): injected fault")
            empty = "" if kw.get("text") else b""
            return subprocess.CompletedProcess(argv, 1, empty, empty)
        if "stdout" not in kw and "stderr" not in kw:
            kw["capture_output"] = True
        try:
            p = subprocess.run(argv, input=input, timeout=timeout, **kw)
        except FileNotFoundError:
            raise MlnError(f"{prefix}command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise MlnError(f"{prefix}'{shlex.join(argv)}' did not finish in {timeout} s") from None
        if check and p.returncode != 0:
            err = p.stderr or p.stdout or b""
            err = (err.decode("utf-8", "replace") if isinstance(err, bytes) else err).strip()
            raise MlnError(f"{prefix}'{shlex.join(argv)}' failed (exit {p.returncode}){': ' + err if err else ''}")
        return p

    def popen(self, argv: list[str], what: str | None = None, **kw) -> "subprocess.Popen":
        """Start a process mln talks to or waits for (``subprocess.Popen`` arguments)."""
        import subprocess

        if not self._enter(argv):
            raise MlnError(f"{what + ': ' if what else ''}'{shlex.join(argv)}' could not start: injected fault")
        try:
            return subprocess.Popen(argv, **kw)
        except FileNotFoundError:
            raise MlnError(f"{what + ': ' if what else ''}command not found: {argv[0]}") from None

    def start_detached(self, argv: list[str], stdin: str = "/dev/null", stdout: str = "/dev/null",
                       append: bool = True, fds: dict[int, str] | None = None) -> int:
        """Start ``argv`` in a session of its own, not as mln's child (it outlives mln), with
        standard input from ``stdin``, output and errors to ``stdout`` (appended), and file
        descriptor N opened read-write on the path ``fds[N]``; return its pid."""
        redirs = "".join(f" {n}<>{shlex.quote(p)}" for n, p in (fds or {}).items())
        out = ">>" if append else ">"
        script = (f"{shlex.join(argv)}{redirs} <{shlex.quote(stdin)} {out}{shlex.quote(stdout)} 2>&1 & "
                  "echo $!")
        if not self._enter(argv):
            raise MlnError(f"'{shlex.join(argv)}' could not start: injected fault")
        import subprocess

        r = subprocess.run(["setsid", "sh", "-c", script], capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip().isdigit():
            raise MlnError(f"'{shlex.join(argv)}' could not start: {r.stderr.strip()}")
        return int(r.stdout.strip())

    # -- signals and liveness -------------------------------------------------------------------
    @staticmethod
    def alive(pid: int | None) -> bool:
        """True if process ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def send_signal(self, pid: int | None, sig: int = signal.SIGTERM) -> bool:
        """Send ``sig`` to ``pid``; False if there is no such process."""
        if not pid:
            return False
        if self.trace:
            print(f"$ kill -{int(sig)} {pid}", file=sys.stderr, flush=True)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, pgid: int, sig: int = signal.SIGKILL) -> bool:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill_and_wait(self, pid: int | None, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; returns when the process is gone. A
        process :meth:`start_detached` started takes its helpers along when it is killed:
        what is left of its session (a UML guest's helper processes, which would keep its
        disk locked) is killed too."""
        if not self.alive(pid):
            return
        group = self._detached_group(pid)
        try:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if not self.send_signal(pid, sig):
                    return
                end = time.monotonic() + wait
                while time.monotonic() < end:
                    if not self.alive(pid):
                        return
                    time.sleep(0.05)
        finally:
            if group:
                self.signal_group(group, signal.SIGKILL)

    @staticmethod
    def _detached_group(pid: int) -> int | None:
        """The process group of ``pid`` if it is the session :meth:`start_detached` made for
        it (its own session, whose first process has exited or is ``pid``), else None."""
        try:
            group, session = os.getpgid(pid), os.getsid(pid)
        except OSError:
            return None
        if group != session or group == os.getpgid(0):
            return None
        return group if group == pid or not Machine.alive(group) else None

    @staticmethod
    def cmdline(pid: int | None) -> list[str] | None:
        """The words process ``pid`` was started with (None if it does not run)."""
        if not pid:
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return [w.decode("utf-8", "replace") for w in f.read().split(b"\0") if w]
        except OSError:
            return None

    @staticmethod
    def read_pid(path: str) -> int | None:
        try:
            with open(path) as f:
                text = f.read().strip()
            return int(text) if text.isdigit() else None
        except FileNotFoundError:
            return None

    # -- what the machine has -------------------------------------------------------------------
    @staticmethod
    def cpu() -> tuple[str, str]:
        """(model name, flags) of the first CPU."""
        model = flags = ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if not model and line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                    elif not flags and line.startswith("flags"):
                        flags = line.split(":", 1)[1].strip()
                    if model and flags:
                        break
        except OSError:
            pass
        return model, flags

    @staticmethod
    def net_device_exists(name: str) -> bool:
        return os.path.exists(f"/sys/class/net/{name}")

    @staticmethod
    def free_port(address: str) -> int:
        """A TCP port nothing listens on at ``address`` now (for a server about to listen)."""
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
            return s.getsockname()[1]

    @staticmethod
    def net_devices() -> list[str]:
        """The names of this machine's network devices (of mln's network namespace)."""
        try:
            return sorted(os.listdir("/sys/class/net"))
        except OSError:
            return []

    @staticmethod
    def net_device_alias(name: str) -> str | None:
        """The device's alias ("" if it has none), None if there is no such device."""
        try:
            with open(f"/sys/class/net/{name}/ifalias") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    @staticmethod
    def net_device_master(name: str) -> str | None:
        link = f"/sys/class/net/{name}/master"
        return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None

    @staticmethod
    def mounts() -> list[tuple[str, str, str]]:
        """(source, mount point, type) of every mount."""
        try:
            with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
                return [tuple(line.split()[:3]) for line in f if len(line.split()) >= 3]
        except OSError:
            return []

    @staticmethod
    def has_kernel_module(name: str) -> bool:
        return os.path.isdir(f"/sys/module/{name}")

    # -- sockets ---------------------------------------------------------------------------------
    @staticmethod
    def connect_unix(path: str, timeout: float = 5.0) -> socket.socket:
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s

    @staticmethod
    def connect_tcp(address: str, port: int, timeout: float = 10.0) -> socket.socket:
        """A TCP connection to another server, with keepalive (a dead peer is found)."""
        import socket
        s = socket.create_connection((address, port), timeout=timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                s.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        return s

    # -- names and storage devices (for the storage plugins) --------------------------------------
    @staticmethod
    def hostnames() -> set[str]:
        """The names this machine goes by: its host name and its fully qualified name."""
        import socket
        return {socket.gethostname(), socket.getfqdn()}

    @staticmethod
    def device_exists(path: str) -> bool:
        """True if the device node ``path`` exists (/dev/fuse, /dev/mapper/control, a volume's)."""
        return os.path.exists(path)

    @staticmethod
    def loop_device(path: str) -> tuple[str, int, int] | None:
        """(backing file, offset, size limit) of the loop device ``path``; None if ``path`` is
        no loop device. OSError (or ValueError) if it is missing or its state cannot be read."""
        import stat
        st = os.stat(path)
        if not stat.S_ISBLK(st.st_mode) or os.major(st.st_rdev) != 7:      # 7: the loop driver
            return None
        sysdir = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/loop"
        with open(f"{sysdir}/backing_file") as f:
            backing = f.read().rstrip("\n")
        with open(f"{sysdir}/offset") as f:
            offset = int(f.read())
        with open(f"{sysdir}/sizelimit") as f:
            return backing, offset, int(f.read())

    @staticmethod
    def hold_loop(device: str, offset: int, length: int, note=None) -> int:
        """Open the loop device ``device`` and return the descriptor that holds it until
        ``os.close``, after checking that it covers ``length`` bytes from ``offset`` of its
        file and setting it to detach itself when its last user closes it (autoclear: it goes
        also if mln is killed; if that cannot be set, ``note`` gets the reason). OSError if it
        cannot be opened; ValueError (descriptor closed) if it covers another range."""
        import fcntl
        import struct
        # struct loop_info64, LOOP_GET_STATUS64, LOOP_SET_STATUS64, LO_FLAGS_AUTOCLEAR
        info64, get_status64, set_status64, autoclear = "=QQQQQIIII64s64s32sQQ", 0x4C05, 0x4C04, 4
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            buf = bytearray(struct.calcsize(info64))
            fcntl.ioctl(fd, get_status64, buf)
            fields = list(struct.unpack(info64, buf))
            if fields[3] != offset or (fields[4] or length) != length:
                raise ValueError(f"{device} does not cover the expected range")
            fields[8] |= autoclear
            fcntl.ioctl(fd, set_status64, struct.pack(info64, *fields))
        except OSError as e:
            if note is not None:
                note(f"{device}: cannot set autoclear: {e}")
        except BaseException:
            os.close(fd)
            raise
        return fd


_LOCAL: dict[tuple, Machine] = {}


def local(verbose: bool = False) -> Machine:
    """This machine (one object per process and verbosity, so that faults count once)."""
    key = (verbose, os.environ.get("MLN_FAULTS", ""), os.environ.get("MLN_TRACE_COMMANDS", ""))
    if key not in _LOCAL:
        _LOCAL[key] = Machine(verbose=verbose)
    return _LOCAL[key]
