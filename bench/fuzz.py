#!/usr/bin/env python3
"""Fuzz ``mln check``, ``mln parse`` and ``mln show`` for as long as you like (not in CI).

    python3 bench/fuzz.py --minutes 60            # an hour, all CPUs
    python3 bench/fuzz.py --minutes 2 -j 4 --out /tmp/fuzz-findings

Inputs are made by hypothesis: the project files of ``examples/`` and ``tests/core/examples``
mutated (tokens of the language inserted, spans deleted, duplicated or swapped), and
projects put together from the language's pieces (blocks, superclasses, ``$variables``,
``#include`` of each other, huge numbers, odd characters). Each input is written to a file
in a scratch directory with its own ``mln.conf`` (nothing of the user's is read) and every
command runs on it in a subprocess of its own, under limits (address space 2 GB, CPU 60 s).

Reported (and the input saved to ``--out``), per command:

* an internal error: exit status 70, "internal error" or a Python traceback in the output;
* a run over 10 s (wall clock);
* a peak resident memory over 500 MB (``ru_maxrss`` of the child);
* death by a signal.

Any bad input must give one clear message and exit 1; those are not findings. The exit
status is 1 if anything was found.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["check"], ["parse"], ["show"], ["show", "--format", "json"], ["parse", "-S", "/global/project"])
TIME_LIMIT, MEMORY_LIMIT = 10.0, 500 * 1024 * 1024

SEEDS = [p.read_text(errors="replace") for d in ("examples", "tests/core/examples")
         for p in sorted((ROOT / d).glob("*.mln"))] or ["global { project p }\nhost a { }\n"]

TOKENS = ["{", "}", ";", "\n", " ", "\t", "#", "//", "/*", "*/", '"', "'", "\\", "$", "$x", "$[x]", "${x}",
          "$x = 1", "$y = $x$x$x$x", "#include inc.mln", "#include /dev/zero", "#include p.mln",
          "global", "project p", "host", "host h", "switch", "switch s", "superclass", "superclass c",
          "network eth0", "address 10.0.0.1", "netmask 255.255.255.0", "memory", "memory 64M",
          "memory 99999999999999T", "size 1024T", "vcpus 1025", "uid 4294967295", "mode 999",
          "template busybox.ext4", "template ../../etc/passwd", "filepath /tmp", "filepath \0",
          "autoenum { numhosts 100000; superclass c; address auto; net 10.0.0.0/8 }",
          "numhosts 99999999", "users { root x }", "files { a /b }", "startup { echo hi }",
          "lvm", "uml", "qemu", "xen", "vmware", "service_host s1", "boot_order -1",
          "²", "٣", "\u202e", "\ufeff", "é", "\x00", "\r", "x" * 300, "9" * 40, "-", "..", "/"]

PIECES = st.sampled_from(TOKENS) | st.text(min_size=0, max_size=20)


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 8))):
        if not text:
            text = draw(PIECES)
            continue
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 200)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "swap", "replace"]))
        if op == "insert":
            text = text[:i] + draw(PIECES) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] * draw(st.integers(1, 50)) + text[j:]
        elif op == "swap":
            k = draw(st.integers(0, len(text)))
            a, b = sorted((i, k))
            text = text[:a] + text[j:] + text[a:i] + text[b:] if j <= b else text
        else:
            text = text[:i] + draw(PIECES) + text[j:]
    return text


@st.composite
def assembled(draw) -> str:
    lines = ["global {", f" project {draw(st.sampled_from(['p', 'p.q', 'P-1', '', 'x' * 120]))}"]
    lines += draw(st.lists(PIECES, max_size=5))
    lines.append("}")
    for n in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["host", "switch", "superclass"]))
        lines.append(f"{kind} {draw(st.sampled_from(['a', 'b', 'c', 'n' + str(n), 'a b', '']))} {{")
        lines += draw(st.lists(PIECES, max_size=8))
        if draw(st.booleans()):
            lines += [" network eth0 {", *draw(st.lists(PIECES, max_size=4)), " }"]
        lines.append("}" if draw(st.integers(0, 9)) else "")
    return "\n".join(lines) + "\n"


INPUTS = mutated() | assembled()


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def run_one(work: Path, text: str, include: str) -> list[str]:
    """Run every command on ``text``; the findings."""
    d = Path(tempfile.mkdtemp(dir=work))
    try:
        (d / "p.mln").write_text(text, errors="surrogateescape")
        (d / "inc.mln").write_text(include, errors="surrogateescape")
        for sub in ("projects", "templates", "files"):
            (d / sub).mkdir()
        (d / "mln.conf").write_text(f"projects {d}/projects\ntemplates {d}/templates\nfiles {d}/files\n")
        env = {**os.environ, "MLN_CONFIG": str(d / "mln.conf")}
        env.pop("MLN_DEBUG", None)
        found = []
        for cmd in COMMANDS:
            args = [*cmd, "-f", "p.mln"] if len(cmd) == 1 or cmd[0] != "parse" else ["parse", "-f", "p.mln", *cmd[1:]]
            start = time.monotonic()
            p = subprocess.Popen([sys.executable, "-c", WRAPPER, *args], cwd=d, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, preexec_fn=_limits)
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            took = time.monotonic() - start
            rss = 0
            if b"\nFUZZ-RSS " in err:
                err, _, kb = err.rpartition(b"\nFUZZ-RSS ")
                rss = int(kb.strip()) * 1024 if kb.strip().isdigit() else 0
            what = " ".join(cmd)
            output = (out + err).decode("utf-8", "replace")
            if p.returncode == 70 or "internal error" in output or "Traceback" in output:
                found.append(f"{what}: internal error (exit {p.returncode}): {output.strip()[-300:]}")
            elif p.returncode is not None and p.returncode < 0:
                found.append(f"{what}: killed by signal {-p.returncode}")
            elif p.returncode not in (0, 1):
                found.append(f"{what}: exit {p.returncode}: {output.strip()[-300:]}")
            if took > TIME_LIMIT:
                found.append(f"{what}: took {took:.1f} s")
            if rss > MEMORY_LIMIT:
                found.append(f"{what}: {rss >> 20} MB resident")
        return found
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: mln's own entry point, then its peak resident memory (ru_maxrss, KB) on standard error
WRAPPER = ("import atexit, resource, sys\n"
           "atexit.register(lambda: sys.stderr.write('\\nFUZZ-RSS %d\\n' % "
           "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
           "from mln_core.cli import main\n"
           "sys.argv[0] = 'mln'\n"
           "sys.exit(main())\n")


class TimeUp(KeyboardInterrupt):
    """The time is over (a KeyboardInterrupt: hypothesis lets it through at once)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long to run (default 60)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="inputs run at once")
    ap.add_argument("--out", default=str(ROOT / "bench" / "fuzz-findings"), help="where failing inputs go")
    args = ap.parse_args()
    end = time.monotonic() + args.minutes * 60
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="mln-fuzz-"))
    pool = cf.ThreadPoolExecutor(args.jobs)
    pending: set[cf.Future] = set()
    stats = {"inputs": 0, "runs": 0, "findings": 0}

    def collect(done) -> None:
        for f in done:
            text, include = f.text
            found = f.result()
            stats["runs"] += len(COMMANDS)
            if found:
                stats["findings"] += len(found)
                out.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
                (out / f"{name}.mln").write_text(text, errors="surrogateescape")
                (out / f"{name}.inc.mln").write_text(include, errors="surrogateescape")
                for line in found:
                    print(f"FOUND {out / name}.mln: {line}", flush=True)

    @settings(max_examples=10 ** 9, deadline=None, database=None, phases=[Phase.generate], verbosity=Verbosity.quiet,
              suppress_health_check=list(HealthCheck))
    @given(INPUTS, mutated() | st.just(""))
    def fuzz(text, include):
        if time.monotonic() > end:
            raise TimeUp
        nonlocal pending
        while len(pending) >= 2 * args.jobs:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            collect(done)
        f = pool.submit(run_one, work, text, include)
        f.text = (text, include)
        pending.add(f)
        stats["inputs"] += 1
        if stats["inputs"] % 200 == 0:
            left = max(0, end - time.monotonic()) / 60
            print(f"... {stats['inputs']} inputs, {stats['findings']} findings, {left:.1f} min left", flush=True)

    start = time.monotonic()
    try:
        fuzz()
    except TimeUp:
        pass
    done, _ = cf.wait(pending)
    collect(done)
    pool.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(f"fuzz: {stats['inputs']} inputs, {stats['runs']} command runs in {(time.monotonic() - start) / 60:.1f} "
          f"min; {stats['findings']} findings" + (f" (inputs in {out})" if stats["findings"] else ""))
    return 1 if stats["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
