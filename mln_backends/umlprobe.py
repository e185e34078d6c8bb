"""What a User-Mode Linux binary is and whether it runs on this machine.

``inspect(kernel)`` answers three questions about a UML binary and remembers the answers
per binary and CPU (the same binary can boot on one CPU and crash on another):

* its version (``linux.uml --version``);
* its network drivers (``--help``): ``eth`` (the legacy ``ethN=vde|tuntap,...``
  transports, removed from Linux in 6.16) and ``vec`` (the vector driver, ``vecN:...``);
* whether it boots: a probe boot of a tiny ext4 image whose init prints a line and powers
  off. UML 6.1 and 6.12 die there on Intel CPUs with AMX (``ptrace set fp regs failed``);
  the probe names that cause and the remedy.

``python3 -m mln_backends.umlprobe KERNEL`` prints the verdict and exits 0 when it boots
(the UML install script uses it). Everything it runs and asks of the machine goes through
a :class:`mln_core.machine.Machine` (``machine``; this machine if none is given).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from mln_core.errors import MlnError
from mln_core.machine import local

PROBE_TIMEOUT = 60          # seconds; a probe boot takes 1-3 s
PROBE_REVISION = 2          # raised when the probe changes, so that cached verdicts are redone
MARK = "MLN-UML-PROBE-OK"
INSTALL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "install-uml.sh")
INSTALLED_KERNEL = "/opt/mln/uml/current/linux.uml"

# Known ways a UML dies at boot, with what it means for the user.
CAUSES = [
    (re.compile(r"ptrace set fp regs failed|ptrace\(PTRACE_SETREGSET\)|get_fp_registers.*failed"),
     "this UML cannot give its processes the CPU's register state (the host's XSAVE area, larger "
     "with AVX-512 and AMX, is bigger than this UML handles; Debian 12's 6.1 and Debian 13's 6.12 "
     "crash this way on Intel CPUs with AMX)"),
    (re.compile(r"Too few physical memory|Failed to allocate \d+ bytes"),
     "this UML cannot set up its memory on this machine"),
    (re.compile(r"version `GLIBC_[0-9.]+' not found|error while loading shared libraries"),
     "this UML binary needs a newer C library than this machine has"),
]


# UML places its memory after its own binary and counts the gap address-space randomization
# leaves there as memory too: the page tables for that gap come out of the guest's memory, a
# random 5 to 15 MB of 64 MB, and a guest left with too little fails at random ("Unable to
# mount root fs ... error -12"). Without randomization the guest has what ``mem=`` says.
FIXED_LAYOUT = ["setarch", "-R"]
_layout: list[str] | None = None


def fixed_layout(machine) -> list[str]:
    """:data:`FIXED_LAYOUT` where this machine lets a process turn randomization off; [] where
    it cannot (no setarch, or a container whose seccomp profile refuses the personality)."""
    global _layout
    if _layout is None:
        try:
            ok = machine.run(FIXED_LAYOUT + ["true"], check=False, timeout=10).returncode == 0
        except (OSError, MlnError):
            ok = False
        _layout = FIXED_LAYOUT if ok else []
    return _layout


def remedy() -> str:
    return (f"install a UML that runs here with 'bash {INSTALL_SCRIPT}' (it sets default_kernel "
            f"{INSTALLED_KERNEL} in /etc/mln/mln.conf), or name a working one with 'default_kernel PATH' "
            "in mln.conf or 'kernel PATH' in the host")


def cause(output: str) -> str | None:
    """The known cause of a crash whose console output is ``output`` (None if unknown)."""
    for rx, why in CAUSES:
        if rx.search(output):
            return why
    return None


def crash_lines(output: str) -> list[str]:
    """The lines of a console log that tell that (and how) the kernel died."""
    keep = re.compile(r"Kernel panic|ptrace .*failed|errno = |Attempted to kill init|segfault|Oops")
    return [line.strip() for line in output.splitlines() if keep.search(line)]


def _cpu_key(machine) -> str:
    model, flags = machine.cpu()
    return f"{model}|{flags}"


def cpu_name(machine=None) -> str:
    return _cpu_key(machine or local()).split("|", 1)[0] or "unknown CPU"


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mln", "uml-probe")


def _key(kernel: str, machine) -> str:
    import hashlib
    st = os.stat(kernel)
    ident = (f"{PROBE_REVISION}|{os.path.realpath(kernel)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|"
             f"{_cpu_key(machine)}")
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _query(kernel: str, flag: str, machine) -> str:
    try:
        with open(os.devnull, "rb") as null:
            p = machine.run([kernel, flag], check=False, stdin=null, text=True, errors="replace", timeout=20)
    except (OSError, MlnError):                   # cannot run, or no answer in time
        return ""
    return p.stdout + p.stderr


def drivers_of(help_text: str) -> list[str]:
    """The network drivers a UML's ``--help`` lists: "eth" (legacy) and/or "vec"."""
    found = []
    if re.search(r"^eth\[0-9\]\+=", help_text, re.M):
        found.append("eth")
    if re.search(r"^vec\[0-9\]\+:", help_text, re.M):
        found.append("vec")
    return found


def _probe_image(d: str, machine) -> str | None:
    """A tiny ext4 image whose init prints MARK and powers off (None without busybox-static)."""
    busybox = next((b for b in ("/bin/busybox", "/usr/bin/busybox") if _static(b)), None)
    if busybox is None:
        return None
    root = os.path.join(d, "root")
    for sub in ("bin", "dev", "proc", "sys"):
        os.makedirs(os.path.join(root, sub))
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(f"#!/bin/busybox sh\n/bin/busybox echo {MARK}\n/bin/busybox poweroff -f\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    img = os.path.join(d, "probe.ext4")
    r = machine.run(["mkfs.ext4", "-q", "-F", "-d", root, img, "8M"], check=False, text=True, timeout=None)
    return img if r.returncode == 0 else None


def _static(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head     # no dynamic loader named


def _boot(kernel: str, machine) -> dict:
    with tempfile.TemporaryDirectory(prefix="mln-uml-probe-") as d:
        img = _probe_image(d, machine)
        if img is None:
            return {"boots": None, "why": "cannot probe: no statically linked busybox "
                                          "(install busybox-static) or mkfs.ext4 failed"}
        argv = fixed_layout(machine) + [kernel, f"ubd0={img}", "root=/dev/ubda", "rw", "mem=64M", "init=/init", "umid=mln-probe",
                f"uml_dir={d}", "con=null", "con0=null,fd:1"]
        # output and errors into one file (its console is fd 1), in a process group of its own
        with open(os.devnull, "rb") as null, open(os.path.join(d, "console"), "w+b") as out:
            p = machine.popen(argv, stdin=null, stdout=out, stderr=out, start_new_session=True)
            try:
                end = time.monotonic() + PROBE_TIMEOUT
                while p.poll() is None and time.monotonic() < end:
                    time.sleep(0.05)
                timed_out = p.poll() is None
            finally:
                machine.signal_group(p.pid, signal.SIGKILL)     # UML's helper threads, if any are left
                p.wait()
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
    if MARK in text:
        return {"boots": True, "why": ""}
    why = cause(text) or ("it did not reach its init within "
                          f"{PROBE_TIMEOUT} s" if timed_out else "it stopped before its init ran")
    return {"boots": False, "why": why, "output": "\n".join(crash_lines(text) or text.splitlines()[-8:])}


def inspect(kernel: str, boot: bool = True, machine=None) -> dict:
    """``{"kernel", "version", "drivers", "boots" (True/False/None), "why", "output"}`` for the
    UML binary ``kernel`` on ``machine``; cached per binary and CPU. ``boot=False`` skips the
    probe boot unless its verdict is cached ("boots" is then None)."""
    import json
    if not (os.path.isfile(kernel) and os.access(kernel, os.X_OK)):
        return {"kernel": kernel, "version": "", "drivers": [], "boots": False,
                "why": "it does not exist or is not executable", "output": ""}
    machine = machine or local()
    cache = _cache_dir()
    path = os.path.join(cache, _key(kernel, machine) + ".json")
    try:
        with open(path) as f:
            found = json.load(f)
        if found.get("boots") is not None or not boot:
            return {**found, "kernel": kernel}
    except (OSError, ValueError):
        pass
    version = _query(kernel, "--version", machine).strip().splitlines()[-1:] or [""]
    info = {"kernel": kernel, "version": version[0], "drivers": drivers_of(_query(kernel, "--help", machine)),
            "boots": None, "why": "", "output": ""}
    if not boot:
        return info
    try:
        os.makedirs(cache, exist_ok=True)
        lock = open(path + ".lock", "w")
    except OSError:                               # no cache here: probe every time
        info.update(_boot(kernel, machine))
        return info
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one probe at a time per binary (parallel starts)
        try:
            with open(path) as f:
                return {**json.load(f), "kernel": kernel}
        except (OSError, ValueError):
            pass
        info.update(_boot(kernel, machine))
        if info["boots"] is not None:
            try:
                tmp = f"{path}.{os.getpid()}"
                with open(tmp, "w") as f:
                    json.dump(info, f)
                os.replace(tmp, path)
            except OSError:
                pass
    return info


def verdict(info: dict, machine=None) -> str:
    """One line for people: usable or not, and why."""
    name = f"{info['kernel']}" + (f" ({info['version']})" if info.get("version") else "")
    nets = {"eth": "legacy ethN", "vec": "vector vecN"}
    net = " + ".join(nets[d] for d in info.get("drivers", [])) or "none"
    if info.get("boots"):
        return f"{name} boots on this CPU; network drivers: {net}"
    if info.get("boots") is None:
        return f"{name}: {info.get('why') or 'not probed'}"
    return f"{name} cannot run on this machine ({cpu_name(machine)}): {info['why']}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m mln_backends.umlprobe KERNEL", file=sys.stderr)
        return 2
    info = inspect(argv[0])
    print(verdict(info))
    if info.get("output") and not info.get("boots"):
        print(info["output"])
    return 0 if info.get("boots") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
