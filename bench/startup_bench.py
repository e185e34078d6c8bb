#!/usr/bin/env python3
"""Start-up benchmark: how long ``mln --help`` and ``mln check`` of a two-host project take,
side by side with Python itself (``python3 -c pass``), whose start no command can beat.

Every command runs in a fresh process, bytecode cached (``PYTHONDONTWRITEBYTECODE`` is
unset for the runs, and a first, warming run of each command, not counted, writes the
cache) and with mln's cache of the installed plugins warm (its own, in the temporary
directory: see mln_core/plugin_cache.py), ``--repeat`` times (default 15); the median and
the best are shown, with the time above bare Python. The target: ``mln --help`` and
``mln check`` of a two-host project each at most 0.15 s.

    python bench/startup_bench.py
    python bench/startup_bench.py --repeat 30 --json out.json

Also prints which mln modules each command imported (a disabled or unused plugin's heavy
libraries should not be among them). Exit status 1 if a command failed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROJECT = """global { project startup }
switch lan { }
host a { network eth0 { switch lan; address 10.0.0.1; netmask 255.255.255.0 } }
host b { network eth0 { switch lan; address 10.0.0.2; netmask 255.255.255.0 } }
"""
HEAVY = ("ssl", "jinja2", "asyncio", "qemu.qmp", "fabric", "paramiko", "ruamel.yaml", "rich")


def timed(cases: list[tuple[str, list[str]]], env: dict, repeat: int) -> dict[str, list[float]]:
    """Each command ``repeat`` times, in rounds (one run of each command per round), so
    that a busy moment of the machine weighs on all of them alike."""
    for _, argv in cases:
        subprocess.run(argv, env=env, capture_output=True)      # warm the bytecode and plugin caches
    out: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeat):
        for name, argv in cases:
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True)
            out[name].append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode()[-500:]}")
    return out


def imported(args: list[str], env: dict) -> list[str]:
    code = ("import sys; from mln_core.cli import main; main(sys.argv[1:]); "
            "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    return [m for m in r.stderr.splitlines()
            if is_heavy(m) or m.split(".")[0] in ("mln_backends", "mln_plugins")]


def is_heavy(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HEAVY)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mln-startup-") as d:
        conf = os.path.join(d, "mln.conf")
        with open(conf, "w") as f:
            f.write(f"projects {d}/projects\ntemplates {d}/templates\nfiles {d}/files\n")
        path = os.path.join(d, "two.mln")
        with open(path, "w") as f:
            f.write(PROJECT)
        env = {**os.environ, "MLN_CONFIG": conf, "XDG_CACHE_HOME": os.path.join(d, "cache")}
        for var in ("MLN_DISABLE_PLUGINS", "MLN_TRACE_PLUGINS"):
            env.pop(var, None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)    # the warm run writes the bytecode cache
        mln = [sys.executable, "-m", "mln_core.cli"]
        cases = [("python3 -c pass", [sys.executable, "-c", "pass"]),
                 ("mln --help", mln + ["--help"]),
                 ("mln check (2 hosts)", mln + ["check", "-f", path])]
        rows = timed(cases, env, a.repeat)
        base = statistics.median(rows["python3 -c pass"])
        print(f"{'command':<22} {'median':>8} {'best':>8} {'above python':>13}")
        for name, ts in rows.items():
            med = statistics.median(ts)
            print(f"{name:<22} {med:8.3f} {min(ts):8.3f} {med - base:+13.3f}")
        print("\ntarget: mln --help and mln check (2 hosts) <= 0.150 s each (median)")
        for name, args in (("mln --help", ["--help"]), ("mln check (2 hosts)", ["check", "-f", path])):
            mods = imported(args, env)
            heavy = [m for m in mods if is_heavy(m)]
            ours = [m for m in mods if not is_heavy(m)]
            print(f"{name} imported {len(ours)} plugin and helper modules; heavy libraries: "
                  f"{', '.join(heavy) or 'none'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: {"median": statistics.median(v), "best": min(v), "runs": v} for k, v in rows.items()},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
