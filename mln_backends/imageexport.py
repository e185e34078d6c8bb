"""A qcow2 (or raw) image as a raw file: a ``qemu-storage-daemon`` FUSE export.

:func:`raw_view` starts the daemon on a :class:`mln_core.machine.Machine` (by default this
machine), yields the exported file, and stops the daemon and makes sure its mount is gone
afterwards, also when the body raised, so that debugfs, e2fsck and resize2fs can work on
qcow2 images.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from typing import Iterator

from mln_core.errors import MlnError
from mln_core.machine import Machine, local

from .imageformat import ImageError, is_qcow2, run_tool, text


def _unescape_mount(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)


def _is_mounted(machine: Machine, mountpoint: str) -> bool:
    return any(_unescape_mount(point) == mountpoint for _, point, _ in machine.mounts())


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _ours(machine: Machine, pid: int | None, pidfile: str) -> bool:
    """True if ``pid`` runs and is really our daemon (its command line names our pidfile)."""
    return bool(pid) and machine.alive(pid) and any(pidfile in w for w in machine.cmdline(pid) or [])


def _stop_daemon(machine: Machine, pidfile: str, mountpoint: str) -> list[str]:
    """Stop the qemu-storage-daemon that wrote ``pidfile``; make sure its FUSE mount is gone."""
    problems = []
    pid = None
    with contextlib.suppress(OSError):
        pid = machine.read_pid(pidfile)
    if _ours(machine, pid, pidfile):
        machine.send_signal(pid, signal.SIGTERM)
        if not _wait(lambda: not machine.alive(pid), 10):
            machine.send_signal(pid, signal.SIGKILL)
            if not _wait(lambda: not machine.alive(pid), 5):
                problems.append(f"qemu-storage-daemon pid {pid} did not exit")
    if not _wait(lambda: not _is_mounted(machine, mountpoint), 5):
        for argv in (["fusermount3", "-u", mountpoint], ["fusermount", "-u", mountpoint],
                     ["umount", mountpoint], ["umount", "-l", mountpoint]):
            with contextlib.suppress(MlnError):
                machine.run(argv, check=False, timeout=None)
            if not _is_mounted(machine, mountpoint):
                break
        if _is_mounted(machine, mountpoint):
            problems.append(f"FUSE export {mountpoint} is still mounted")
    return problems


@contextlib.contextmanager
def raw_view(qcow2_path: str | os.PathLike, writable: bool = True, on_helper=None,
             machine: Machine | None = None) -> Iterator[str]:
    """Export a qcow2 (or raw) image as a raw file through a qemu-storage-daemon FUSE export.

    Yields the path of the raw file (in a private temporary directory). On exit the
    daemon is stopped, the FUSE mount is gone and the temporary directory removed, also
    when the body raised. Writes through the view go into the qcow2 image.
    ``on_helper(pidfile, mountpoint)``, if given, is called before the daemon starts, so
    that a caller can record where to find it and stop it should this process die at any
    moment (the daemon writes its pid into ``pidfile``)."""
    machine = machine or local()
    src = os.path.abspath(os.fspath(qcow2_path))
    if not os.path.exists(src):
        raise ImageError(f"{src}: image not found")
    fmt = "qcow2" if is_qcow2(src) else "raw"
    tmpdir = os.path.realpath(tempfile.mkdtemp(prefix="mln-rawview-"))
    raw = os.path.join(tmpdir, "disk.raw")
    pidfile = os.path.join(tmpdir, "qsd.pid")
    log = os.path.join(tmpdir, "qsd.log")
    started = False
    try:
        open(raw, "wb").close()
        ro = not writable
        argv = [
            "qemu-storage-daemon",
            "--blockdev", json.dumps({"driver": "file", "node-name": "f0", "filename": src, "read-only": ro}),
            "--blockdev", json.dumps({"driver": fmt, "node-name": "q0", "file": "f0", "read-only": ro}),
            "--export", json.dumps({"type": "fuse", "id": "e0", "node-name": "q0", "mountpoint": raw,
                                    "writable": writable}),
            "--pidfile", pidfile,
            "--daemonize",
        ]
        if on_helper is not None:
            on_helper(pidfile, raw)
        started = True
        with open(log, "wb") as logf, open(os.devnull, "rb") as null:
            r = run_tool(machine, argv, stdin=null, stdout=logf, stderr=logf, timeout=60,
                         missing="qemu-storage-daemon is not installed (needed for qcow2 images)")
        if r.returncode != 0 or not _is_mounted(machine, raw):
            with open(log, "rb") as f:
                msg = text(f.read())
            raise ImageError(f"{src}: qemu-storage-daemon could not export the image "
                             f"(rc {r.returncode}): {msg}")
        yield raw
    finally:
        problems = _stop_daemon(machine, pidfile, raw) if started else []
        if problems:
            # do not delete files under a live mount; report instead
            raise ImageError(f"{src}: cleaning up the raw view failed: {'; '.join(problems)}")
        shutil.rmtree(tmpdir, ignore_errors=True)
