"""Live moves of running QEMU guests between servers (issue 10's targets: the guest paused
at most 50 ms, mln's moves at most 1.3x the same moves done by hand; mln's moves are the
time it prints, from the first move begun until the last guest runs on sh2, and the time
of the whole ``mln upgrade`` is shown beside it).

    python3 bench/migration_bench.py [--hosts 4] [--memory 96] [--shared]

Two servers sh1 and sh2 (network namespaces with sshd on this machine, mln_core.nsservers,
plus sh3 and the client). *mln*: a project of HOSTS QEMU guests on one switch, all
``service_host sh1``, built and started from the client; once every guest booted (its
startup block printed a line on its console), the project file says ``service_host sh2``
for all of them and ``mln upgrade -r -f FILE`` runs on the client: it moves them live,
two at a time, and prints how long each guest paused. *bare*: the same number of guests,
plain QEMU processes started by hand in sh1's namespace (mln's command line, without
mln's switch: their NICs have no backend), each target started paused in sh2's namespace
on a fresh qcow2 overlay over the same template, and mln's QMP sequence driven from here
with qemu.qmp, two at a time (as mln): ``nbd-server-start`` + ``block-export-add`` +
``migrate-incoming`` on the target; ``drive-mirror`` until ready, ``migrate`` until
completed, ``block-job-cancel`` on the source; ``block-export-del``, ``nbd-server-stop``
and ``cont`` on the target, then ``quit`` of the source. A bare guest's pause is QEMU's
``downtime`` (from ``query-migrate``) plus the time from the migration's completion
(``migrate`` + its ``total-time``) until ``cont`` returned on the target, as mln counts
its own (mln: QEMU's ``downtime``, the source's time from the completion until its
answer, and the time from that answer until the target let the guest run).

Every guest, on both sides, prints a line on its console every 10 ms (mln's: its startup
block; bare: typed into the console's shell), and another process times the growth of the
console logs (2 ms polls): the gap between the last line on sh1 and the first on sh2 is the
pause as seen from outside, whatever mln or QEMU say. It includes the guest's own restart
on the target (under TCG its code is translated again, some 60 ms).

With ``--shared`` the disks are on shared storage: mln's hosts have ``filepath SAN`` (a
directory that both servers list with ``san_path``, bind-mounted in both), the bare
guests' overlays are there too, and only the memory travels: the target waits with
``late-block-activate`` and runs as soon as the memory arrived (started without ``-S``),
the source only migrates. A guest's pause is then QEMU's ``downtime`` on both sides.

Both sides use the busybox test template (/var/cache/mln/test-template). Everything runs
in the kit's namespaces and a temporary directory, removed at the end. If ``mln upgrade``
fails, the bare side still runs, the script says where mln left each guest and exits 1.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mln_core.nsservers import NamespaceServers  # noqa: E402

TEMPLATE = Path("/var/cache/mln/test-template")
PROJECT = "migbench"
UP = "MLN-BENCH-UP"
BARE_UP = "Please press Enter"          # the template's console (askfirst) once init is done
QEMU = "qemu-system-x86_64"
# every guest prints a line every 10 ms on its console: the gap in its console logs (the one
# on the server it leaves, then the one on the server it reaches) is its pause as seen
# from outside, whatever mln or QEMU report
BEAT = "while true; do echo .; usleep 10000; done > /dev/console 2>&1 &"
HEARTBEAT = "        while true\n        do\n            echo .\n            usleep 10000\n" \
            "        done > /dev/console 2>&1 &\n"
WATCH = r"""
import json, os, select, sys, time
files = sys.argv[1:]
last, ev = dict.fromkeys(files, -1), {f: [] for f in files}
while not select.select([sys.stdin], [], [], 0.002)[0]:
    t = time.monotonic()
    for f in files:
        try:
            size = os.stat(f).st_size
        except OSError:
            size = -1
        if size != last[f]:
            ev[f].append((t, size))
            last[f] = size
print(json.dumps(ev))
"""


class Watch:
    """Times the growth of console logs from another process (2 ms polls); ``gap(src, dst)``:
    from the last growth of ``src`` to the first of ``dst``, in ms."""

    def __init__(self, files):
        self.p = subprocess.Popen([sys.executable, "-c", WATCH, *map(str, files)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.ev = None

    def stop(self):
        if self.ev is None:
            out, _ = self.p.communicate("", timeout=30)
            self.ev = json.loads(out)
        return self

    def gap(self, src, dst) -> int | None:
        first = next((t for t, size in self.ev[str(dst)] if size > 0), None)
        before = [t for t, size in self.ev[str(src)] if size > 0 and first is not None and t < first]
        return None if first is None or not before else int((first - max(before)) * 1000)

    def beat(self, src) -> float:
        """The median time between two growths of ``src`` before the move (ms): the resolution."""
        ts = [t for t, size in self.ev[str(src)] if size > 0]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        return statistics.median(gaps) * 1000 if gaps else float("nan")



def project(n: int, server: str, memory: int, san: Path | None = None) -> str:
    out = [f"global {{ project {PROJECT} }}\nswitch lan {{ }}\n"]
    where = f"    filepath {san}\n" if san else ""
    for i in range(1, n + 1):
        out.append(f"host g{i} {{\n    kvm\n    template busybox.ext4\n    memory {memory}M\n{where}"
                   f"    service_host {server}\n    startup {{\n        echo {UP}\n{HEARTBEAT}    }}\n"
                   f"    network eth0 {{ switch lan\n        address 10.0.0.{i}\n"
                   f"        netmask 255.255.255.0 }}\n}}\n")
    return "".join(out)


def ok(r, what):
    if r.returncode != 0:
        raise SystemExit(f"{what} failed:\n{r.stdout[-1000:]}\n{r.stderr[-3000:]}")
    return r


def wait_for(paths: list[Path], text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    for p in paths:
        while text not in (p.read_text(errors="replace") if p.exists() else ""):
            if time.monotonic() > end:
                tail = p.read_text(errors="replace")[-1500:] if p.exists() else "(no console log)"
                raise SystemExit(f"{p}: no '{text}' after {timeout:g} s:\n{tail}")
            time.sleep(0.2)


# -- mln ----------------------------------------------------------------------------------------------

TIMED = r"""
import subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE, text=True)
for line in p.stderr:
    sys.stderr.write(f"{time.monotonic() - t:6.2f}s {line}")
code = p.wait()
sys.stderr.write(f"{time.monotonic() - t:6.2f}s (mln exited {code})\n")
sys.exit(code)
"""


def run_mln(kit, n: int, memory: int, boot_timeout: float, san: Path | None = None, show: bool = False):
    path = kit.client_dir / f"{PROJECT}.mln"
    path.write_text(project(n, "sh1", memory, san))
    ok(kit.mln("client", "build", "-f", str(path)), "mln build")
    ok(kit.mln("client", "start", "-p", PROJECT), "mln start")
    hosts = kit.dir("sh1") / "projects" / PROJECT / "hosts"
    wait_for([hosts / f"g{i}" / "console.log" for i in range(1, n + 1)], UP, boot_timeout)
    model = (hosts / "g1" / "cmdline").read_text()
    time.sleep(2)                        # let the guests settle (their heartbeats only, as the bare ones)
    path.write_text(project(n, "sh2", memory, san))
    logs = [(hosts / f"g{i}" / "console.log", kit.dir("sh2") / "projects" / PROJECT / "hosts" / f"g{i}" /
             "console.log") for i in range(1, n + 1)]
    watch = Watch([f for pair in logs for f in pair])
    t = time.monotonic()
    if show:        # each line with the time since the start
        r = kit.client_run([sys.executable, "-c", TIMED, sys.executable, "-m", "mln_core.cli", "upgrade", "-r",
                            "-f", str(path)])
    else:
        r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    total = time.monotonic() - t
    watch.stop()
    arrived = dict(re.findall(r"\[sh2\] \+---> (\S+): its (?:disk and )?memory arrived from sh1 in ([\d.]+) s",
                              r.stderr))
    moved = {h: (float(arrived.get(h, 0)), int(ms)) for h, ms in re.findall(
        r"\[sh2\] \+---> (\S+): moved live from sh1 \(the guest paused (\d+) ms\)", r.stderr)}
    took = re.search(r"\+---> \d+ hosts? moved live in ([\d.]+) s", r.stderr)
    out = {"total": total, "down": [ms for _, ms in moved.values()], "each": [s for s, _ in moved.values()],
           "moves": float(took.group(1)) if took else None,
           "model": model, "stderr": r.stderr, "error": None,
           "seen": [watch.gap(a, b) for a, b in logs],
           "beat": statistics.median(watch.beat(a) for a, _ in logs)}
    if r.returncode != 0 or sorted(moved) != [f"g{i}" for i in range(1, n + 1)]:
        out["error"] = (f"mln upgrade exited {r.returncode} after {total:.1f} s and reported "
                        f"{len(moved)} of {n} live moves; its stderr:\n{r.stderr}\n" + guests(kit, n))
        return out
    ps = [p for p in processes(kit, "sh1") if QEMU in p]
    if ps:
        raise SystemExit(f"QEMU left on sh1 after the move: {ps}")
    if len([p for p in processes(kit, "sh2") if QEMU in p]) != n:
        raise SystemExit(f"not {n} QEMU on sh2 after the move: {processes(kit, 'sh2')}")
    return out


def leftovers(kit) -> None:
    """End the QEMU processes of the mln project that mln left (after a failed upgrade)."""
    for s in ("sh1", "sh2"):
        pids = subprocess.run(["ip", "netns", "pids", kit.netns(s)], capture_output=True, text=True).stdout
        for pid in map(int, pids.split()):
            with contextlib.suppress(OSError):
                if QEMU in (cmd := Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")) \
                        and f".{PROJECT}" in cmd:
                    print(f"warning: QEMU {pid} of the mln project left on {s}; ending it", file=sys.stderr)
                    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)


def guests(kit, n: int) -> str:
    """Where the guests are and what their QEMUs say (after a failed upgrade)."""
    r = kit.mln("client", "status", "-p", PROJECT)
    lines = ["mln status -p " + PROJECT + " from the client:", (r.stdout + r.stderr).rstrip()]
    for s in ("sh1", "sh2"):
        for i in range(1, n + 1):
            q = [p for p in processes(kit, s) if QEMU in p and f"g{i}.{PROJECT}" in p]
            socks = sorted((kit.dir(s) / "run").glob(f"*-qemu-g{i}/qmp.sock"))
            state = "-"
            if q and socks:
                async def status(c):
                    return (await c.execute("query-status"))["status"]
                try:
                    state = Bare.qmp(socks[0].parent, status, 5)
                except Exception as e:       # noqa: BLE001 (a diagnosis, whatever QEMU says)
                    state = f"no answer ({type(e).__name__})"
            lines.append(f"  {s}: g{i}: {len(q)} QEMU process(es), QMP status {state}")
    return "\n".join(lines)


def processes(kit, server: str) -> list[str]:
    pids = subprocess.run(["ip", "netns", "pids", kit.netns(server)], capture_output=True, text=True).stdout
    out = []
    for pid in pids.split():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


# -- bare ---------------------------------------------------------------------------------------------

def bare_argv(model: str, name: str, d: Path, overlay: Path, incoming: bool, shared: bool = False) -> list[str]:
    """mln's QEMU command line (``model``) for a guest of ours in ``d``: our paths, the NICs
    without a backend (no switch), and ``-incoming defer -S`` for a target (without ``-S``
    on shared storage: it runs as soon as it arrived)."""
    old = shlex.split(model)
    argv, i = [old[0]], 1
    while i < len(old):
        a = old[i]
        if not a.startswith("-"):
            raise SystemExit(f"cannot read mln's QEMU command line at {a!r}: {model}")
        if _flag(a):
            if a != "-S":
                argv.append(a)
            i += 1
            continue
        v = old[i + 1]
        i += 2
        if a in ("-incoming", "-netdev"):
            continue
        if a == "-name":
            v = name
        elif a == "-pidfile":
            v = str(d / "pid")
        elif a == "-qmp":
            v = f"unix:{d / 'qmp.sock'},server=on,wait=off"
        elif a == "-chardev" and v.startswith("socket,id=serial0,"):
            v = (f"socket,id=serial0,path={d / 'console.sock'},server=on,wait=off,"
                 f"logfile={d / 'console.log'},logappend={'on' if incoming else 'off'}")
        elif a == "-chardev" and v.startswith("socket,id=mlnch,"):
            v = f"socket,id=mlnch,path={d / 'channel.sock'},server=on,wait=off"
        elif a == "-drive" and "id=drive0" in v:
            v = re.sub(r"^file=([^,]|,,)*", f"file={overlay}", v)
        elif a == "-device" and "netdev=" in v:
            v = re.sub(r",netdev=[^,]*", "", v)
        argv += [a, v]
    if incoming:
        argv += ["-incoming", "defer"] + ["-S"] * (not shared)
    return argv


def _flag(a: str) -> bool:
    return a in ("-nodefaults", "-no-user-config", "-daemonize", "-S", "-no-reboot", "-no-shutdown")


class Bare:
    """The hand-made guests: everything under ``root``; ``stop()`` ends every QEMU it started."""

    def __init__(self, kit, root: Path, model: str, n: int, san: Path | None = None):
        self.kit, self.root, self.model, self.n, self.san = kit, root, model, n, san
        self.dirs: list[Path] = []
        self.addr = kit.address("sh2")

    def _qemu(self, server: str, name: str, incoming: bool) -> Path:
        d = self.root / server / name
        d.mkdir(parents=True)
        self.dirs.append(d)
        overlay = self.san / f"{name}.bare.qcow2" if self.san else d / "disk.qcow2"
        if not incoming or not self.san:      # (shared: the target opens the source's disk)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(TEMPLATE / "busybox.ext4"),
                            "-F", "raw", str(overlay)], check=True)
        argv = bare_argv(self.model, f"{name}.bare", d, overlay, incoming, bool(self.san))
        r = subprocess.run(["ip", "netns", "exec", self.kit.netns(server), *argv],
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{QEMU} for {name} on {server} did not start: {r.stderr}\n{shlex.join(argv)}")
        return d

    def start_sources(self, boot_timeout: float) -> None:
        ds = [self._qemu("sh1", f"g{i}", False) for i in range(1, self.n + 1)]
        wait_for([d / "console.log" for d in ds], BARE_UP, boot_timeout)
        for d in ds:                      # the console's shell (askfirst) starts the heartbeat
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(str(d / "console.sock"))
                c.sendall(b"\r")
                time.sleep(0.5)
                c.sendall(BEAT.encode() + b"\r")
                time.sleep(0.5)
        time.sleep(1)
        for d in ds:
            size = (d / "console.log").stat().st_size
            time.sleep(0.3)
            if (d / "console.log").stat().st_size <= size:
                raise SystemExit(f"bare guest {d.name}: no heartbeat on its console:\n"
                                 f"{(d / 'console.log').read_text(errors='replace')[-1000:]}")

    @staticmethod
    def qmp(d: Path, work, timeout: float = 600):
        from qemu.qmp import QMPClient

        async def go():
            c = QMPClient("bench")
            await asyncio.wait_for(c.connect(str(d / "qmp.sock")), 10)
            try:
                return await asyncio.wait_for(work(c), timeout)
            finally:
                with contextlib.suppress(Exception):
                    await c.disconnect()
        return asyncio.run(go())

    def move(self, i: int) -> dict:
        name = f"g{i}"
        start = time.monotonic()
        src = self.root / "sh1" / name
        dst = self._qemu("sh2", name, True)
        nbd, mig = 20000 + 2 * i, 20001 + 2 * i
        marks = {}

        if self.san:
            return self._move_shared(name, src, dst, mig, start)

        async def incoming(c):
            node = next(b["inserted"]["node-name"] for b in await c.execute("query-block")
                        if b.get("device") == "drive0" and b.get("inserted"))
            await c.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": self.addr,
                                                                                  "port": str(nbd)}}})
            await c.execute("block-export-add", {"type": "nbd", "id": "bench", "node-name": node,
                                                 "name": "drive0", "writable": True})
            await c.execute("migrate-incoming", {"uri": f"tcp:{self.addr}:{mig}"})
        self.qmp(dst, incoming, 10)

        async def send(c):
            await c.execute("drive-mirror", {"device": "drive0", "job-id": "bench-mirror",
                                             "target": f"nbd://{self.addr}:{nbd}/drive0",
                                             "format": "raw", "sync": "top", "mode": "existing"})
            while True:
                jobs = {j["device"]: j for j in await c.execute("query-block-jobs")}
                if jobs["bench-mirror"].get("ready"):
                    break
                await asyncio.sleep(0.05)
            marks["migrate"] = time.monotonic()
            await self.tune(c)
            await c.execute("migrate", {"uri": f"tcp:{self.addr}:{mig}"})
            while True:
                info = await c.execute("query-migrate")
                if info.get("status") == "completed":
                    break
                if info.get("status") in ("failed", "cancelled"):
                    raise RuntimeError(f"migration of {name} {info.get('status')}: {info.get('error-desc')}")
                await asyncio.sleep(0.05)
            await c.execute("block-job-cancel", {"device": "bench-mirror"})
            while await c.execute("query-block-jobs"):
                await asyncio.sleep(0.05)
            return info
        info = self.qmp(src, send)

        async def arrived(c):
            for cmd in (("block-export-del", {"id": "bench"}), ("nbd-server-stop", {})):
                with contextlib.suppress(Exception):
                    await c.execute(*cmd)
            await c.execute("cont")
        self.qmp(dst, arrived, 10)
        running = time.monotonic()

        self.quit(src)
        qemu_down = int(info.get("downtime", 0))
        # QEMU stopped the guest downtime ms before the migration completed, at migrate + total-time
        completed = marks["migrate"] + info.get("total-time", 0) / 1000
        return {"down": qemu_down + int((running - completed) * 1000),
                "qemu_downtime": qemu_down, "each": time.monotonic() - start}

    def quit(self, d: Path) -> None:
        """End the QEMU in ``d`` (a source whose guest went away) and wait until it is gone."""
        async def quit_(c):
            with contextlib.suppress(Exception):
                await c.execute("quit")
        self.qmp(d, quit_, 10)
        self._wait_gone(d)

    @staticmethod
    async def tune(c):
        """mln's migration settings (its defaults: mln_backends.qemu_migrate.tuning)."""
        from mln_backends.qemu_migrate import tuning
        await c.execute("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge",
                                                                       "state": True}]})
        await c.execute("migrate-set-parameters", tuning({}))

    def _move_shared(self, name: str, src: Path, dst: Path, mig: int, start: float) -> dict:
        """Only the memory: the target runs as soon as it arrived (its disk taken over then)."""
        async def incoming(c):
            await c.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "late-block-activate", "state": True}]})
            await c.execute("migrate-incoming", {"uri": f"tcp:{self.addr}:{mig}"})
        self.qmp(dst, incoming, 10)

        async def send(c):
            await self.tune(c)
            await c.execute("migrate", {"uri": f"tcp:{self.addr}:{mig}"})
            while True:
                info = await c.execute("query-migrate")
                if info.get("status") == "completed":
                    return info
                if info.get("status") in ("failed", "cancelled"):
                    raise RuntimeError(f"migration of {name} {info.get('status')}: {info.get('error-desc')}")
                await asyncio.sleep(0.05)
        info = self.qmp(src, send)

        self.quit(src)
        down = int(info.get("downtime", 0))
        return {"down": down, "qemu_downtime": down, "each": time.monotonic() - start}

    def move_all(self) -> tuple[float, list[dict]]:
        logs = [(self.root / "sh1" / f"g{i}" / "console.log", self.root / "sh2" / f"g{i}" / "console.log")
                for i in range(1, self.n + 1)]
        watch = Watch([f for pair in logs for f in pair])
        try:
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=2) as pool:       # as mln: two at a time
                out = list(pool.map(self.move, range(1, self.n + 1)))
            total = time.monotonic() - t
            time.sleep(1)                 # the guests' first lines on their new consoles
        finally:
            watch.stop()
        for x, (a, b) in zip(out, logs):
            x["seen"] = watch.gap(a, b)
        self.beat = statistics.median(watch.beat(a) for a, _ in logs)
        return total, out

    def check_running(self) -> None:
        async def status(c):
            return (await c.execute("query-status"))["status"]
        for d in self.dirs:
            if d.parent.name == "sh2" and self.qmp(d, status, 5) != "running":
                raise SystemExit(f"bare guest {d.name} does not run on sh2")

    def _pid(self, d: Path) -> int | None:
        try:
            pid = int((d / "pid").read_text())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(d).encode() in cmd else None      # still our QEMU, not a reused pid

    def _wait_gone(self, d: Path, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while self._pid(d) is not None and time.monotonic() < end:
            time.sleep(0.05)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for d in self.dirs:
                pid = self._pid(d)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            for d in self.dirs:
                self._wait_gone(d, 3)


# -- report -------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=4, help="QEMU guests moved (default 4)")
    ap.add_argument("--memory", type=int, default=96, help="MB of RAM per guest (default 96)")
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--shared", action="store_true", help="the disks on shared storage (san_path)")
    ap.add_argument("--show", action="store_true", help="print what mln upgrade printed, each line timed")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="mln-migbench-") as tmp, contextlib.ExitStack() as stack:
        san = Path(tmp) / "san" if a.shared else None
        conf = {}
        if san:
            (Path(tmp) / "san-real").mkdir()
            san.mkdir()
            conf = {s: f"san_path {san}\n" for s in ("sh1", "sh2")}
        kit = stack.enter_context(NamespaceServers(Path(tmp) / "kit", conf=conf))
        for s in conf:      # both servers see the directory, the client does not (as two servers on a SAN)
            ok(kit.run(s, ["mount", "--bind", str(Path(tmp) / "san-real"), str(san)]), f"the SAN on {s}")
        try:
            for where in ("client", "sh1", "sh2", "sh3"):
                ok(kit.mln(where, "register_template", "-t", str(TEMPLATE / "busybox.ext4"),
                           "--kernel", str(TEMPLATE / "vmlinux"), "--initrd", str(TEMPLATE / "initrd.gz")),
                   f"register_template on {where}")
            m = run_mln(kit, a.hosts, a.memory, a.boot_timeout, san, a.show)
        finally:
            for where in ("sh1", "sh2"):
                kit.mln(where, "stop", "-a", "-H")
        r = kit.mln("client", "remove", "-f", "-p", PROJECT)
        if r.returncode:
            print(f"warning: mln remove -f -p {PROJECT}: {r.stderr.strip()}", file=sys.stderr)
        leftovers(kit)
        bare = Bare(kit, Path(tmp) / "bare", m["model"], a.hosts, Path(tmp) / "san-real" if san else None)
        try:
            bare.start_sources(a.boot_timeout)
            time.sleep(2)
            b_total, b = bare.move_all()
            bare.check_running()
        finally:
            bare.stop()
        print(f"live move of {a.hosts} running QEMU guests ({a.memory} MB, TCG) from sh1 to sh2, "
              f"two at a time, " + ("on shared storage (memory only)" if san else "disks mirrored"))
        print(f"{'':5} {'paused median':>14} {'paused max':>11} {'per guest':>10} {'total':>8}")
        rows = [("bare", [x["down"] for x in b], b_total, [x["each"] for x in b])]
        if m["error"] is None:
            rows.insert(0, ("mln", m["down"], m["total"], m["each"]))
        else:
            print(f"{'mln':5} {'failed (see below)':>36} {m['total']:>7.2f}s")
        for what, down, total, each in rows:
            print(f"{what:5} {statistics.median(down):>11.0f} ms {max(down):>8d} ms "
                  f"{statistics.median(each):>8.1f} s {total:>7.2f}s")
        for what, _, _, each in rows:
            print(f"{what} per guest (s, from its move begun to its guest running on sh2): "
                  + ", ".join(f"{x:.2f}" for x in each))
        if m["down"]:
            print(f"mln per guest (ms paused, as mln reports it): {', '.join(map(str, m['down']))}")
        print(f"bare per guest (ms paused): {', '.join(str(x['down']) for x in b)}; QEMU's downtime alone: "
              f"{', '.join(str(x['qemu_downtime']) for x in b)}")
        seen = lambda xs: ", ".join("-" if x is None else str(x) for x in xs)   # noqa: E731
        print(f"seen on the consoles (ms from the last heartbeat line on sh1 to the first on sh2; a line "
              f"every {m['beat']:.0f} ms (mln), {bare.beat:.0f} ms (bare) while running): "
              f"mln {seen(m['seen'])}; bare {seen(x['seen'] for x in b)}")
        if m["error"] is None:
            ratio = m["total"] / b_total
            print(f"the whole mln upgrade / bare: {ratio:.2f} ({m['total']:.2f} s: with the client's start, "
                  "the connections and the plans, paid once per command)")
            if m["moves"] is not None:      # (what mln prints: the first move begun to the last guest running)
                ratio = m["moves"] / b_total
                print(f"the moves (mln: 'moved live in {m['moves']:.1f} s') / bare: {ratio:.2f} "
                      f"(goal <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
        for what, down, _, _ in rows:
            print(f"{what}: guests paused at most {max(down)} ms (goal <= 50 ms: "
                  f"{'met' if max(down) <= 50 else 'NOT met'})")
        if a.show:
            print("\nmln upgrade printed:\n" + m["stderr"])
        if m["error"] is not None:
            print(f"\nmln FAILED: {m['error']}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
