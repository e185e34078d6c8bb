"""``mln stop -S`` on a QEMU guest saves its memory; ``mln start`` resumes it where it was.

One busybox guest counts on its console (a shell loop that only lives in memory: a
reboot would start again at 1). It is saved, resumed and must go on counting from where
it stopped, without booting again. The console log is appended to across the resume.
A save file that cannot be loaded makes the start fail and is kept.

The failures around the files (the part file cannot be made or synced; the resume fails
after the guest ran) are unit tests against a fake QEMU: a process that runs until QMP
``quit`` and a scripted QMP server on the host's QMP socket, which mln reaches through its
machine (``ctx.on(host)``) as it reaches the real one.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from mln_backends import qemu
from mln_core.errors import MlnError
from mln_core.machine import Machine

PROJECT = r"""
global {
    project sv
}
host counter {
    hypervisor qemu
    template busybox.ext4
    memory 96M
    startup {
        n=0
        while true
        do
        n=\$((\$n + 1))
        echo "MLN-TICK \$n"
        sleep 1
        done &
    }
}
"""

BANNER = re.compile(r"Linux version \d")


def ticks(text: str) -> list[int]:
    """The counter values of the complete lines of ``text`` (the last one may be half written)."""
    return [int(x) for x in re.findall(r"MLN-TICK (\d+)\r?\n", text)]


def wait_ticks(env, above: int, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = env.console("sv", "counter")
        if ticks(text) and max(ticks(text)) > above:
            return text
        time.sleep(0.5)
    raise AssertionError(f"the counter did not pass {above} in {timeout} s:\n"
                         f"{env.console('sv', 'counter')[-3000:]}")


@pytest.mark.guests
def test_save_and_resume_keeps_the_guest_memory(mln_env):
    path = mln_env.write("sv.mln", PROJECT)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    hdir = mln_env.projects / "sv" / "hosts" / "counter"
    ram = hdir / "counter.ram"

    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 0, r.output
    wait_ticks(mln_env, above=3)
    disk = mln_env.projects / "sv" / "images"

    r = mln_env.mln("stop", "-p", "sv", "-S")
    assert r.returncode == 0, r.output
    assert "counter: saved" in r.stderr, r.stderr
    assert "cannot be saved" not in r.stderr
    assert ram.is_file() and ram.stat().st_size > 0
    assert not (hdir / "counter.ram.part").exists()
    assert mln_env.processes() == [], "QEMU still runs after the save"
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 1 and r.stdout.strip() == "sv host counter down (saved)"
    before = mln_env.console("sv", "counter")
    last = ticks(before)[-1]
    assert ticks(before) == list(range(1, last + 1))
    assert len(BANNER.findall(before)) == 1
    disk_state = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()}
    time.sleep(2)                            # a tick or two of wall time while it is saved
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()} == disk_state

    # a save file that cannot be loaded (here: cut short) fails the start clearly, runs
    # nothing and is kept
    good = ram.read_bytes()
    ram.write_bytes(good[:len(good) // 2])
    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 1
    assert "host counter: start: resuming from the saved state" in r.stderr, r.stderr
    assert "The file is kept" in r.stderr
    assert ram.is_file() and mln_env.processes() == []
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.stdout.strip() == "sv host counter down (saved)"
    ram.write_bytes(good)
    # nothing wrote the guest's disk while it was saved (not even the failed resume)
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in disk.iterdir()} == disk_state

    r = mln_env.mln("start", "-p", "sv")
    assert r.returncode == 0, r.output
    assert "counter: started" in r.stderr
    assert not ram.exists(), "the save file was not deleted after the resume"
    cmdline = (hdir / "cmdline").read_text()
    assert "-incoming defer" in cmdline and "append=on" in cmdline
    after = wait_ticks(mln_env, above=last + 3)
    # the console log is appended to across the resume, not truncated
    assert after.startswith(before)
    new = after[len(before):]
    assert not BANNER.search(new), f"the guest booted again:\n{new[-3000:]}"
    # the loop went on from its in-memory counter: one unbroken sequence 1, 2, 3, ... across
    # the resume (a reboot would start again at 1); a line cut by the save is completed after it
    assert ticks(after) == list(range(1, ticks(after)[-1] + 1)), after[-3000:]
    assert ticks(after)[-1] > last + 3
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 0 and r.stdout.strip() == "sv host counter up"

    # a normal stop afterwards is a clean shutdown, and nothing is left
    r = mln_env.mln("stop", "-p", "sv", "-w", "30")
    assert r.returncode == 0, r.output
    assert "did not stop" not in r.stderr
    assert "mln-guest: shutting down" in mln_env.console("sv", "counter")
    r = mln_env.mln("status", "-p", "sv", "-h", "counter")
    assert r.returncode == 1 and r.stdout.strip() == "sv host counter down"
    r = mln_env.mln("remove", "-f", "-p", "sv")
    assert r.returncode == 0, r.output
    assert not (mln_env.projects / "sv").exists()
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []


class FakeQemu:
    """What mln sees of a running QEMU: a process (its pid in the host's pid file) and a QMP
    server on the host's QMP socket. ``query-status`` answers ``states`` in turn (the last one
    repeats), migrations complete at once, ``quit`` ends the process; ``sent`` records the
    commands, "(fd)" for a file descriptor passed."""

    GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                        "capabilities": []}}

    def __init__(self, sock: str, pidfile: str, *states: str):
        self.states, self.sent = list(states), []
        self.proc = subprocess.Popen(["sleep", "300"])
        with open(pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(sock)
        self.server.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop_answering(self) -> None:
        """Nothing listens on the QMP socket any more (the file stays)."""
        try:
            self.server.shutdown(socket.SHUT_RDWR)      # wakes the accept
        except OSError:
            pass
        self.server.close()

    def close(self) -> None:
        self.stop_answering()
        if self.running():
            self.proc.kill()
        self.proc.wait()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn) -> None:
        conn.sendall(json.dumps(self.GREETING).encode() + b"\n")
        buf = ""
        while True:
            data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * struct.calcsize("i")))
            for level, kind, fds in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for (fd,) in struct.iter_unpack("i", fds[:len(fds) - len(fds) % 4]):
                        os.close(fd)
                        self.sent.append("(fd)")
            if not data:
                return
            buf += data.decode()
            while buf.strip():                # a stream of JSON objects, as QEMU reads it
                try:
                    msg, end = json.JSONDecoder().raw_decode(buf.lstrip())
                except ValueError:            # not all of it yet
                    break
                buf = buf.lstrip()[end:]
                self._answer(conn, msg)

    def _answer(self, conn, msg: dict) -> None:
        command = msg["execute"]
        if command != "qmp_capabilities":
            self.sent.append(command)
        result = {}
        if command == "query-status":
            result = {"status": self.states.pop(0) if len(self.states) > 1 else self.states[0]}
        elif command == "query-migrate":
            result = {"status": "completed"}
        elif command == "quit":
            self.proc.kill()          # reaped by running() or close(), in the test's own thread
        conn.sendall(json.dumps({"return": result, "id": msg.get("id")}).encode() + b"\n")


@pytest.fixture
def fake_qemu(tmp_path):
    """Host ``counter`` of a project in ``tmp_path``, its QEMU the FakeQemu returned (running)."""
    project = tmp_path / "sv"
    (project / "hosts" / "counter").mkdir(parents=True)
    host = SimpleNamespace(name="counter", hypervisor="qemu", interfaces=[])
    machine = Machine(env={})
    ctx = SimpleNamespace(path=lambda *p: os.path.join(project, *p), project_dir=str(project),
                          on=lambda obj=None: machine)
    d, sock, pidfile = qemu._paths(host, ctx, create=True)
    fake = FakeQemu(sock, pidfile, "running")
    fake.host, fake.ctx, fake.runtime, fake.pidfile = host, ctx, d, pidfile
    fake.ram = project / "hosts" / "counter" / "counter.ram"
    yield fake
    fake.close()
    shutil.rmtree(d, ignore_errors=True)


def test_save_writes_the_part_file_and_renames_it(fake_qemu):
    assert qemu.mln_save_host(fake_qemu.host, fake_qemu.ctx) is True
    assert fake_qemu.ram.exists() and not os.path.exists(f"{fake_qemu.ram}.part")
    assert fake_qemu.sent[:5] == ["query-status", "stop", "(fd)", "getfd", "migrate-set-parameters"]
    assert "cont" not in fake_qemu.sent and fake_qemu.sent[-1] == "quit"
    assert not fake_qemu.running()


def test_save_that_cannot_sync_the_file_lets_the_guest_run_on(fake_qemu, monkeypatch):
    """fsync fails after the migration completed (the guest is in postmigrate): a clear
    error naming the host, no file left, and ``cont`` so that the guest runs on."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(MlnError) as e:
        qemu.mln_save_host(fake_qemu.host, fake_qemu.ctx)
    assert str(e.value) == ("host counter: saving failed: writing the save file failed: No space left on "
                            "device; the host keeps running")
    assert fake_qemu.sent[-1] == "cont" and "quit" not in fake_qemu.sent
    assert os.listdir(fake_qemu.ram.parent) == ["pid"] and fake_qemu.running()


def test_save_that_cannot_create_the_file_does_not_stop_the_guest(fake_qemu, tmp_path):
    # the part file's place is in a directory that is not there
    os.symlink(tmp_path / "gone" / "counter.ram.part", f"{fake_qemu.ram}.part")
    with pytest.raises(MlnError) as e:
        qemu.mln_save_host(fake_qemu.host, fake_qemu.ctx)
    assert str(e.value).startswith(f"host counter: saving failed: cannot create {fake_qemu.ram}.part: "
                                   "No such file or directory")
    assert fake_qemu.sent == [] and fake_qemu.running()         # not even stopped


def test_save_of_a_qemu_that_does_not_answer_on_qmp(fake_qemu):
    """The QMP socket is there but nothing listens on it: the save fails as the QMP client
    says, and the guest is left alone."""
    fake_qemu.stop_answering()
    with pytest.raises(MlnError) as e:
        qemu.mln_save_host(fake_qemu.host, fake_qemu.ctx)
    assert str(e.value) == ("host counter: saving failed: ConnectError: Failed to establish connection: "
                            "[Errno 111] Connection refused; the host keeps running")
    assert not os.path.exists(f"{fake_qemu.ram}.part") and not fake_qemu.ram.exists()
    assert fake_qemu.running()


def _undone(fake) -> bool:
    """The failed start was undone: QEMU ended, its pid file and runtime directory gone."""
    return not fake.running() and not os.path.exists(fake.pidfile) and not os.path.exists(fake.runtime)


def test_resume_deletes_the_file_as_soon_as_the_guest_ran(fake_qemu):
    """After a successful ``cont`` the guest writes its disk, so the saved memory must never
    be loaded again, even if the resume fails afterwards."""
    fake_qemu.states = ["inmigrate", "paused", "internal-error"]
    fake_qemu.ram.write_bytes(b"saved")
    with pytest.raises(MlnError) as e:
        qemu._resume(fake_qemu.host, fake_qemu.ctx, str(fake_qemu.ram))
    assert "the guest is 'internal-error'" in str(e.value)
    assert "The guest had already run on, so the file is deleted" in str(e.value)
    assert not fake_qemu.ram.exists() and _undone(fake_qemu)


def test_resume_that_fails_before_the_guest_ran_keeps_the_file(fake_qemu):
    fake_qemu.states = ["inmigrate", "shutdown"]
    fake_qemu.ram.write_bytes(b"saved")
    with pytest.raises(MlnError) as e:
        qemu._resume(fake_qemu.host, fake_qemu.ctx, str(fake_qemu.ram))
    assert "The file is kept; delete it to boot counter afresh" in str(e.value)
    assert fake_qemu.ram.exists() and "cont" not in fake_qemu.sent and _undone(fake_qemu)


def test_resume_that_works_deletes_the_file(fake_qemu):
    fake_qemu.states = ["inmigrate", "paused", "running"]
    fake_qemu.ram.write_bytes(b"saved")
    qemu._resume(fake_qemu.host, fake_qemu.ctx, str(fake_qemu.ram))
    assert not fake_qemu.ram.exists() and fake_qemu.sent.count("cont") == 1
    assert fake_qemu.sent[:4] == ["(fd)", "getfd", "migrate-incoming", "query-status"] and fake_qemu.running()
