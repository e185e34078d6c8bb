#!/usr/bin/env python3
"""Engine benchmark: ``mln build`` and ``mln start`` against the bare commands they stand for.

(a) build: a project of N hosts (half UML with raw disks, half QEMU with qcow2 overlays,
    all on one vde switch; N = 10, 60, 120) built with ``mln build``, against
    ``bench/bare_build.sh`` doing the same work with the bare primitives, as many hosts
    at a time as mln (``xargs -P``):

      UML:  cp --sparse=always T img; truncate -s SIZE; e2fsck -fy; resize2fs; debugfs -w -f CMDS
      QEMU: qemu-img create -f qcow2 -b T -F raw ov SIZE; qemu-storage-daemon FUSE export;
            e2fsck -fy; resize2fs; debugfs -w -f CMDS; kill the daemon

    (CMDS writes what mln writes into a busybox guest: hostname, rcS with the network and
    startup sections, shadow, hosts, fstab.) ``--kinds uml,qemu`` also builds projects of
    one kind only, which shows where the difference comes from.

(b) start: N UML guests (10, 20) and N QEMU TCG guests (4, 8), each on its own project
    with one vde switch. ``mln start -p P`` (default concurrency: one per CPU) is timed
    until every guest's console log shows the marker line its startup block prints
    (``MLN-BENCH-UP <host>``). Then the guests are stopped and started again by a bare
    shell script with the command lines mln used (``hosts/<host>/cmdline``), the same
    vde_switch command and the same concurrency (``xargs -P``), until the same markers.

Needs root, the test template (``contrib/templates/build-test-template.sh``, default
``/var/cache/mln/test-template``), vde2, user-mode-linux, qemu-system-x86, qemu-utils,
qemu-storage-daemon and e2fsprogs; without them it says why and exits 0.

Everything lives in ``--workdir`` (default /tmp/mlnbench, with its own mln.conf); the
projects are stopped (``mln stop -H``) and removed (``mln remove -f``) at the end, also
after an error or Ctrl-C, and the script then checks that none of its processes, runtime
directories or mounts are left.

    python bench/engine_bench.py --quick      # N=10 build, 4 UML and 2 QEMU guests
    python bench/engine_bench.py              # N=10,60,120; 10,20 UML; 4,8 QEMU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BARE_BUILD = os.path.join(HERE, "bare_build.sh")
MARK = "MLN-BENCH-UP"
ROOTHASH = ("$6$mlnbench$DJxEmK7GSDm/FNPsx0D1zsz10EvrZYLU7lDaZ8hYXWEUkWXvqkbpzL7cfj1ARIaoQywHqdD8LdpNDahiv"
            "XalB.")
TEMPLATE = "busybox.ext4"
DEFAULT_SIZE = 250 * 2**20          # mln.conf default_size: what both sides grow the disks to
TOOLS = ("vde_switch", "linux.uml", "uml_mconsole", "qemu-system-x86_64", "qemu-img",
         "qemu-storage-daemon", "debugfs", "e2fsck", "resize2fs", "setsid", "xargs")
PGREP = r"linux.uml|qemu-system|vde_switch|qemu-storage"
MEMORY = {"uml": "64M", "qemu": "128M"}


class BootFailure(Exception):
    """A guest's console shows a kernel panic: that run is void (and retried)."""


def _on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def mln_executable() -> list[str]:
    """The real ``mln`` script of this Python (a pyenv shim would add ~0.1 s per call)."""
    cand = os.path.join(os.path.dirname(sys.executable), "mln")
    if os.path.isfile(cand) and os.access(cand, os.X_OK):
        return [cand]
    found = shutil.which("mln")
    return [found] if found else [sys.executable, "-c", "import sys; from mln_core.cli import main; "
                                                         "sys.exit(main())"]


def run(argv, env=None, timeout=None, input=None, check=True, what=None) -> subprocess.CompletedProcess:
    """Run a command in its own session; on Ctrl-C pass SIGINT on and let it clean up."""
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except BaseException:
        try:
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=60)
        except BaseException:
            p.kill()
            p.communicate()
        raise
    r = subprocess.CompletedProcess(argv, p.returncode, out, err)
    if check and r.returncode != 0:
        raise RuntimeError(f"{what or shlex.join(argv)} failed (exit {r.returncode}):\n"
                           f"{(err or out)[-4000:]}")
    return r


# ---------------------------------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.realpath(a.workdir)
        self.projects_dir = os.path.join(self.work, "projects")
        self.templates_dir = os.path.join(self.work, "templates")
        self.bare_dir = os.path.join(self.work, "bare")
        self.conf = os.path.join(self.work, "mln.conf")
        self.env = {**os.environ, "MLN_CONFIG": self.conf}
        for k in ("MLN_TRACE_PLUGINS", "MLN_DISABLE_PLUGINS"):
            self.env.pop(k, None)
        self.mln_argv = mln_executable()
        self.jobs = a.jobs or os.cpu_count() or 2
        self.made: list[str] = []           # projects this run created
        self.runtime_prefixes: set[str] = set()
        self.rawview_before = self._rawview_mounts()
        self.results: dict = {"build": [], "start": []}

    # -- helpers -------------------------------------------------------------------------
    def mln(self, *args, check=True, timeout=3600) -> subprocess.CompletedProcess:
        return run(self.mln_argv + list(args), env=self.env, timeout=timeout, check=check,
                   what="mln " + " ".join(args))

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def setup(self) -> None:
        for d in (self.projects_dir, self.templates_dir, os.path.join(self.work, "files"), self.bare_dir):
            os.makedirs(d, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"projects {self.projects_dir}\ntemplates {self.templates_dir}\n"
                    f"files {os.path.join(self.work, 'files')}\n")
        listed = os.path.join(self.templates_dir, "templates.list")
        have = os.path.exists(listed) and any(ln.split()[:1] == [TEMPLATE] for ln in open(listed))
        if not have:
            t = self.a.template_dir
            self.mln("register_template", "-t", os.path.join(t, "busybox.ext4"),
                     "--kernel", os.path.join(t, "vmlinux"), "--initrd", os.path.join(t, "initrd.gz"))
        self.template = os.path.join(self.templates_dir, TEMPLATE)

    def pdir(self, name: str) -> str:
        return os.path.join(self.projects_dir, name)

    def write_project(self, name: str, hosts: list[tuple[str, str, str]]) -> str:
        out = [f"# generated by bench/engine_bench.py\nglobal {{\n    project {name}\n}}\n\n"
               f"switch lan {{\n}}\n\n"
               f"superclass node {{\n    template {TEMPLATE}\n    root_passwd {ROOTHASH}\n"
               f"    network eth0 {{\n        switch lan\n        netmask 255.255.0.0\n    }}\n"
               f"    startup {{\n        echo \"{MARK} $(hostname)\"\n    }}\n}}\n"]
        for kind, host, addr in hosts:
            out.append(f"\nhost {host} {{\n    superclass node\n    hypervisor {kind}\n"
                       f"    memory {MEMORY[kind]}\n"
                       f"    network eth0 {{\n        address {addr}\n    }}\n}}\n")
        path = os.path.join(self.work, f"{name}.mln")
        with open(path, "w") as f:
            f.write("".join(out))
        return path

    @staticmethod
    def host_list(kinds: list[str], n: int) -> list[tuple[str, str, str]]:
        w = max(3, len(str(n)))
        return [(kinds[i % len(kinds)], f"h{i + 1:0{w}d}", f"10.1.{i // 250}.{i % 250 + 1}")
                for i in range(n)]

    def build_project(self, name: str, hosts) -> float:
        path = self.write_project(name, hosts)
        self.forget(name)
        self.made.append(name)
        from mln_backends.runtime import digest
        self.runtime_prefixes.add(digest(os.path.realpath(self.pdir(name)), n=10))
        os.sync()  # do not let the previous run's dirty pages slow this one down
        t0 = time.perf_counter()
        self.mln("build", "-f", path)
        return time.perf_counter() - t0

    def forget(self, name: str) -> None:
        """Stop and remove a project of ours, if it exists."""
        if os.path.isdir(self.pdir(name)):
            self.mln("stop", "-p", name, "-H", check=False, timeout=300)
            r = self.mln("remove", "-f", "-p", name, check=False, timeout=300)
            if r.returncode != 0 and os.path.isdir(self.pdir(name)):
                self.log(f"warning: mln remove -f -p {name}: {(r.stderr or r.stdout).strip()[-500:]}")

    @staticmethod
    def _hostname_in(image: str) -> str | None:
        r = subprocess.run(["debugfs", "-R", "cat /etc/hostname", image], capture_output=True, text=True)
        return r.stdout.strip() or None

    # -- (a) build -------------------------------------------------------------------------
    def bench_build(self, n: int, kind: str) -> dict:
        kinds = ["uml", "qemu"] if kind == "mixed" else [kind]
        hosts = self.host_list(kinds, n)
        name = f"bb-{kind}-{n}"
        best_mln = best_bare = None
        for rep in range(self.a.repeat):
            self.log(f"build: {name}: mln build ({n} hosts, run {rep + 1})")
            t_mln = self.build_project(name, hosts)
            uml = next((h for k, h, _ in hosts if k == "uml"), None)
            if uml and self._hostname_in(os.path.join(self.pdir(name), "images", uml)) != uml:
                raise RuntimeError(f"{name}: the mln-built image of {uml} has no hostname {uml}")
            self.forget(name)
            self.log(f"build: {name}: bare primitives")
            out = os.path.join(self.bare_dir, name)
            shutil.rmtree(out, ignore_errors=True)
            hl = "".join(f"{k} {h} {a}\n" for k, h, a in hosts)
            os.sync()
            t0 = time.perf_counter()
            run(["bash", BARE_BUILD, out, self.template, str(DEFAULT_SIZE), str(self.jobs), ROOTHASH],
                input=hl, timeout=3600, what="bare_build.sh")
            t_bare = time.perf_counter() - t0
            if uml and self._hostname_in(os.path.join(out, uml, "disk.img")) != uml:
                raise RuntimeError(f"{name}: the bare image of {uml} has no hostname {uml}")
            shutil.rmtree(out, ignore_errors=True)
            best_mln = t_mln if best_mln is None else min(best_mln, t_mln)
            best_bare = t_bare if best_bare is None else min(best_bare, t_bare)
        label = {"mixed": f"{(n + 1) // 2} uml + {n // 2} qemu"}.get(kind, f"{n} {kind}")
        row = {"hosts": n, "kind": kind, "label": label, "mln_s": best_mln, "bare_s": best_bare,
               "ratio": best_mln / best_bare, "jobs": self.jobs}
        self.results["build"].append(row)
        return row

    # -- (b) start -------------------------------------------------------------------------
    def _console(self, name: str, host: str) -> str:
        return os.path.join(self.pdir(name), "hosts", host, "console.log")

    def _clear_consoles(self, name: str, hosts) -> None:
        for _, h, _ in hosts:
            try:
                os.unlink(self._console(name, h))
            except FileNotFoundError:
                pass

    def _wait_markers(self, name: str, hosts, t0: float) -> dict[str, float]:
        todo = {h for _, h, _ in hosts}
        seen: dict[str, float] = {}
        deadline = t0 + self.a.boot_timeout
        while todo:
            now = time.perf_counter()
            for h in list(todo):
                try:
                    with open(self._console(name, h), errors="replace") as f:
                        text = f.read()
                except FileNotFoundError:
                    continue
                if f"{MARK} {h}" in text:
                    seen[h] = now - t0
                    todo.discard(h)
                elif "Kernel panic" in text:
                    line = next((ln for ln in text.splitlines() if "Kernel panic" in ln), "")
                    raise BootFailure(f"{name}: {h}: {line.strip()} (after {now - t0:.1f} s)")
            if not todo:
                break
            if now > deadline:
                raise RuntimeError(f"{name}: no marker after {self.a.boot_timeout:g} s from "
                                   f"{', '.join(sorted(todo))} (see {self._console(name, sorted(todo)[0])})")
            time.sleep(0.05)
        return seen

    def _mln_start(self, name: str, hosts) -> dict:
        self._clear_consoles(name, hosts)
        t0 = time.perf_counter()
        self.mln("start", "-p", name, timeout=self.a.boot_timeout)
        returned = time.perf_counter() - t0
        seen = self._wait_markers(name, hosts, t0)
        return {"returned": returned, "all_up": max(seen.values()), "first_up": min(seen.values())}

    def _bare_script(self, name: str, hosts) -> str:
        """A shell script starting the switch and the guests as mln did, JOBS at a time."""
        sdir = os.path.join(self.bare_dir, f"{name}-start")
        shutil.rmtree(sdir, ignore_errors=True)
        os.makedirs(sdir)
        ctl = None
        scripts = []
        for kind, h, _ in hosts:
            hdir = os.path.join(self.pdir(name), "hosts", h)
            with open(os.path.join(hdir, "cmdline")) as f:
                line = f.read().strip()
            argv = shlex.split(line)
            m = next((re.search(r"(?:^eth\d+=vde,|sock=)([^,]+)", x) for x in argv
                      if re.search(r"(?:^eth\d+=vde,|sock=)", x)), None)
            if m is None:
                raise RuntimeError(f"{name}: no vde socket in the command line of {h}: {line}")
            ctl = m.group(1)
            if kind == "uml":
                rundir = next(x.split("=", 1)[1] for x in argv if x.startswith("uml_dir="))
                inner = f"{line} </dev/null >>{shlex.quote(self._console(name, h))} 2>&1 & " \
                        f"echo $! >{shlex.quote(os.path.join(hdir, 'pid'))}"
                body = f"mkdir -p {shlex.quote(rundir)}\nsetsid sh -c {shlex.quote(inner)}\n"
            else:
                qmp = next(x for x in argv if x.startswith("unix:") and "qmp" in x)
                rundir = os.path.dirname(qmp[len("unix:"):].split(",")[0])
                body = f"mkdir -p {shlex.quote(rundir)}\n{line}\n"
            path = os.path.join(sdir, f"{h}.sh")
            with open(path, "w") as f:
                f.write(body)
            scripts.append(path)
        swdir = os.path.dirname(ctl)
        main = os.path.join(sdir, "start.sh")
        with open(main, "w") as f:
            f.write("set -e\n"
                    f"mkdir -p {shlex.quote(swdir)}\n"
                    f"vde_switch -s {shlex.quote(ctl)} -d -p {shlex.quote(os.path.join(swdir, 'pid'))} "
                    f"-m 0770\n"
                    f"while [ ! -S {shlex.quote(os.path.join(ctl, 'ctl'))} ]; do sleep 0.01; done\n"
                    f"printf '%s\\n' {' '.join(shlex.quote(s) for s in scripts)} | "
                    f"xargs -P {self.jobs} -n 1 sh\n")
        return main

    def _bare_start(self, name: str, hosts, script: str) -> dict:
        self._clear_consoles(name, hosts)
        t0 = time.perf_counter()
        run(["bash", script], timeout=self.a.boot_timeout, what="bare start script")
        returned = time.perf_counter() - t0
        seen = self._wait_markers(name, hosts, t0)
        return {"returned": returned, "all_up": max(seen.values()), "first_up": min(seen.values())}

    def _stop(self, name: str) -> None:
        self.mln("stop", "-p", name, "-H", timeout=300)
        left = self.my_processes()
        if left:
            raise RuntimeError(f"after mln stop -H, still running: {left}")

    def bench_start(self, kind: str, n: int) -> dict:
        name = f"bs-{kind}-{n}"
        hosts = self.host_list([kind], n)
        self.log(f"start: {name}: building {n} {kind} hosts")
        self.build_project(name, hosts)
        mln_runs, bare_runs = [], []
        script = None
        failures: list[str] = []

        def attempt(what, fn):
            for _ in range(self.a.retries + 1):
                try:
                    return fn()
                except BootFailure as e:
                    failures.append(f"{what}: {e}")
                    self.log(f"  boot failure, run void: {e}")
                    self._stop(name)
            raise RuntimeError(f"{name}: {what}: {self.a.retries + 1} runs in a row had a guest that "
                               f"did not boot: {failures[-1]}")

        for rep in range(self.a.start_repeat):
            self.log(f"start: {name}: mln start (run {rep + 1})")
            mln_runs.append(attempt("mln start", lambda: self._mln_start(name, hosts)))
            if script is None:
                script = self._bare_script(name, hosts)
            self._stop(name)
            self.log(f"start: {name}: bare start (run {rep + 1})")
            bare_runs.append(attempt("bare start", lambda: self._bare_start(name, hosts, script)))
            self._stop(name)
        shutil.rmtree(os.path.dirname(script), ignore_errors=True)
        self.forget(name)
        best_m = min(mln_runs, key=lambda r: r["all_up"])
        best_b = min(bare_runs, key=lambda r: r["all_up"])
        row = {"kind": kind, "guests": n, "jobs": self.jobs, "mln_returned_s": best_m["returned"],
               "mln_all_up_s": best_m["all_up"], "mln_first_up_s": best_m["first_up"],
               "bare_returned_s": best_b["returned"], "bare_all_up_s": best_b["all_up"],
               "bare_first_up_s": best_b["first_up"], "ratio": best_m["all_up"] / best_b["all_up"],
               "mln_runs": mln_runs, "bare_runs": bare_runs, "boot_failures": failures}
        self.results["start"].append(row)
        return row

    # -- cleanup and checks ---------------------------------------------------------------------
    def my_processes(self) -> list[str]:
        """Processes of ours: their command line names our work directory or our runtime dirs."""
        keys = [self.work] + [f"/{p}-" for p in self.runtime_prefixes]
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if re.search(PGREP, cmd) and any(k in cmd for k in keys):
                out.append(f"{pid} {cmd.strip()[:160]}")
        return out

    def my_runtime_dirs(self) -> list[str]:
        found = []
        for base in ("/run/mln", f"/tmp/mln-{os.getuid()}"):
            try:
                names = os.listdir(base)
            except OSError:
                continue
            found += [os.path.join(base, x) for x in names
                      if any(x.startswith(p + "-") for p in self.runtime_prefixes)]
        return found

    def my_mounts(self) -> list[str]:
        with open("/proc/mounts") as f:
            return [ln.split()[1] for ln in f if self.work in ln.split()[1]]

    @staticmethod
    def _export_daemons() -> dict[str, str]:
        """FUSE mountpoint -> command line of the qemu-storage-daemon exporting it."""
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if "qemu-storage-daemon" in cmd:
                for m in re.findall(r'"mountpoint": "([^"]+)"|mountpoint=([^,\s]+)', cmd):
                    out[m[0] or m[1]] = cmd
        return out

    @staticmethod
    def _rawview_mounts() -> set[str]:
        with open("/proc/mounts") as f:
            return {ln.split()[1] for ln in f if "mln-rawview-" in ln.split()[1]}

    def cleanup(self) -> list[str]:
        for name in reversed(self.made):
            try:
                self.forget(name)
            except BaseException as e:  # keep cleaning
                self.log(f"warning: cleaning up {name}: {e}")
        # a safety net: anything of ours still running is ended by its pid
        for entry in self.my_processes():
            pid = int(entry.split()[0])
            self.log(f"warning: ending leftover process {entry}")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.my_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for entry in self.my_processes():
            try:
                os.kill(int(entry.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for m in self.my_mounts():
            subprocess.run(["fusermount3", "-u", m], capture_output=True)
            if m in self.my_mounts():
                subprocess.run(["umount", "-l", m], capture_output=True)
        for d in self.my_runtime_dirs():
            shutil.rmtree(d, ignore_errors=True)
        for name in self.made:
            for x in os.listdir(self.projects_dir) if os.path.isdir(self.projects_dir) else []:
                if x == name or x.startswith(f".{name}."):
                    shutil.rmtree(os.path.join(self.projects_dir, x), ignore_errors=True)
            try:
                os.unlink(os.path.join(self.work, f"{name}.mln"))
            except FileNotFoundError:
                pass
        shutil.rmtree(self.bare_dir, ignore_errors=True)
        problems = []
        problems += [f"process: {p}" for p in self.my_processes()]
        problems += [f"runtime dir: {d}" for d in self.my_runtime_dirs()]
        problems += [f"mount: {m}" for m in self.my_mounts()]
        # mln's own FUSE exports (mln-rawview-*): ours if the daemon serving one opened an
        # image of our work directory, or if no daemon serves it any more (an orphan that
        # appeared while we ran); those of other users of this machine are left alone
        daemons = self._export_daemons()
        for m in sorted(self._rawview_mounts() - self.rawview_before):
            cmd = daemons.get(m)
            if cmd is None:
                problems.append(f"orphaned mln-rawview mount (ours?): {m}")
            elif self.work in cmd:
                problems.append(f"mln-rawview mount of ours: {m}")
        if self.a.clean:
            shutil.rmtree(self.work, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------------------

def why_not(a) -> str | None:
    if os.geteuid() != 0:
        return "needs root (qemu-storage-daemon FUSE exports, /run/mln)"
    missing = [t for t in TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    for f in ("busybox.ext4", "vmlinux", "initrd.gz"):
        if not os.path.isfile(os.path.join(a.template_dir, f)):
            return (f"no test template in {a.template_dir} (make it with "
                    f"contrib/templates/build-test-template.sh {a.template_dir})")
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (qcow2 images are opened through FUSE exports)"
    return None


def print_tables(b: Bench) -> None:
    r = b.results
    if r["build"]:
        print(f"\n## build (mln build vs bare primitives; {b.jobs} at a time; disks grown to "
              f"{DEFAULT_SIZE // 2**20}M)")
        hdr = (f"{'hosts':>5}  {'project':<18} {'mln s':>7} {'bare s':>7} {'mln/bare':>8} {'mln s/host':>10} "
               f"{'bare s/host':>11}")
        print(hdr)
        print("-" * len(hdr))
        for x in r["build"]:
            print(f"{x['hosts']:>5}  {x['label']:<18} {x['mln_s']:7.2f} {x['bare_s']:7.2f} {x['ratio']:8.2f} "
                  f"{x['mln_s'] / x['hosts']:10.3f} {x['bare_s'] / x['hosts']:11.3f}")
    if r["start"]:
        print(f"\n## start (until every guest's console shows its startup marker; {b.jobs} starts at a time)")
        hdr = (f"{'kind':<5} {'guests':>6}  {'mln: returns':>12} {'first up':>8} {'all up':>7}   "
               f"{'bare: returns':>13} {'first up':>8} {'all up':>7}  {'mln/bare':>8}")
        print(hdr)
        print("-" * len(hdr))
        for x in r["start"]:
            print(f"{x['kind']:<5} {x['guests']:>6}  {x['mln_returned_s']:12.2f} {x['mln_first_up_s']:8.2f} "
                  f"{x['mln_all_up_s']:7.2f}   {x['bare_returned_s']:13.2f} {x['bare_first_up_s']:8.2f} "
                  f"{x['bare_all_up_s']:7.2f}  {x['ratio']:8.2f}")
        for x in r["start"]:
            for f in x["boot_failures"]:
                print(f"  void run (redone): {f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="N=10 build, 4 UML guests, 2 QEMU guests")
    ap.add_argument("--build-sizes", default="10,60,120")
    ap.add_argument("--kinds", default="mixed", help="build projects: mixed, uml, qemu (comma-separated)")
    ap.add_argument("--uml-guests", default="10,20")
    ap.add_argument("--qemu-guests", default="4,8")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-start", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="build runs per case (best shown)")
    ap.add_argument("--start-repeat", type=int, default=1, help="start runs per case (best shown)")
    ap.add_argument("--jobs", type=int, help="concurrency of the bare loops (default: CPUs, as mln)")
    ap.add_argument("--retries", type=int, default=2,
                    help="start runs to redo when a guest's kernel panics (reported)")
    ap.add_argument("--boot-timeout", type=float, default=900, help="seconds to wait for all markers")
    ap.add_argument("--workdir", default="/tmp/mlnbench")
    ap.add_argument("--template-dir", default="/var/cache/mln/test-template")
    ap.add_argument("--clean", action="store_true", help="also delete the work directory (and its template)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args(argv)
    if a.quick:
        a.build_sizes, a.uml_guests, a.qemu_guests = "10", "4", "2"
    reason = why_not(a)
    if reason:
        print(f"SKIP: engine benchmark: {reason}")
        return 0
    sizes = [int(x) for x in a.build_sizes.split(",") if x.strip()]
    kinds = [x.strip() for x in a.kinds.split(",") if x.strip()]
    uml = [int(x) for x in a.uml_guests.split(",") if x.strip()]
    qemu = [int(x) for x in a.qemu_guests.split(",") if x.strip()]
    sys.path.insert(0, ROOT)
    signal.signal(signal.SIGTERM, _on_term)
    b = Bench(a)
    print(f"# mln engine benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"load average {loadavg()}, jobs {b.jobs}, mln = {' '.join(b.mln_argv)}", flush=True)
    status = 0
    error = None
    try:
        b.setup()
        if not a.skip_build:
            for n in sizes:
                for kind in kinds:
                    x = b.bench_build(n, kind)
                    b.log(f"  -> mln {x['mln_s']:.2f} s, bare {x['bare_s']:.2f} s, ratio {x['ratio']:.2f}")
        if not a.skip_start:
            for kind, counts in (("uml", uml), ("qemu", qemu)):
                for n in counts:
                    x = b.bench_start(kind, n)
                    b.log(f"  -> mln all up {x['mln_all_up_s']:.2f} s, bare {x['bare_all_up_s']:.2f} s, "
                          f"ratio {x['ratio']:.2f}")
    except KeyboardInterrupt:
        b.log("interrupted: cleaning up")
        status = 130
    except Exception as e:
        import traceback
        traceback.print_exc()
        error = f"ERROR: {e}"
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = b.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print_tables(b)
    if error:
        print(f"\n{error}")
    if status == 130:
        print("\nINTERRUPTED: the tables hold what was measured before")
    print(f"\n# load average at the end: {loadavg()}")
    if left:
        print("LEFT BEHIND:\n  " + "\n  ".join(left))
        status = status or 1
    else:
        print("# cleanup: no processes, runtime directories or mounts of this benchmark are left")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "jobs": b.jobs,
                       **b.results, "left_behind": left}, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
