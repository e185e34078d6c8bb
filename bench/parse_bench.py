#!/usr/bin/env python3
"""Load-pipeline benchmark: how long and how much memory ``mln`` needs to read a project.

What is measured is exactly what every command does to read a project file::

    with no_gc(): build_model(load_document(path, ctx), ctx)    # as load_project and every command

that is: lexing and parsing, ``#include``, the post-parse plugins (autoenum), superclass
merging, variable resolution, keyword checking and validation, and the typed model.

Two shapes of generated project, at 1,000, 10,000 and 100,000 hosts:

* ``explicit``: every host written out; each inherits from ``node``, which inherits
  from ``base`` (both in an ``#include``d file); a global ``$net``; ``node`` has
  ``memory $[mem]M`` and every host defines ``$mem``; each host has a ``network eth0``
  block with an address (``$net.A.B.C``) and a ``users`` block;
* ``autoenum``: ``global { autoenum { superclass node; numhosts N; address auto;
  net 10.0.0.0/8; addresses_begin 10 } }`` with the same superclasses.

Every measurement runs in a fresh subprocess (the plugin manager and keyword registry
are made before the clock starts), so that peaks do not mix:

* timed runs (``--repeat``, default 3, 1 from 100k hosts; the best is shown): wall and
  CPU time, the split between ``load_document`` and ``build_model``, the time spent in
  the cyclic garbage collector (``gc.callbacks``) and the ``ru_maxrss`` growth;
* the same with ``gc.disable()`` (what the load would cost without the collector);
* one run under ``tracemalloc`` for the peak of Python allocations (not timed: the
  tracing slows the code down).

Growth is judged by the log-log slope of time against hosts (1.0 = linear). The target
is 10,000 hosts in at most 1 s.

    python bench/parse_bench.py                      # 1k, 10k, 100k; both shapes
    python bench/parse_bench.py --sizes 1000,10000   # quicker
    python bench/parse_bench.py --profile            # + cProfile of 10k explicit hosts
    python bench/parse_bench.py --json out.json      # also write the figures as JSON

Exit status 1 if a generated project did not load cleanly (errors, or a wrong host count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET_10K_S = 1.0
SHAPES = ("explicit", "autoenum")
HASH = "$6$mlnbench$DJxEmK7GSDm/FNPsx0D1zsz10EvrZYLU7lDaZ8hYXWEUkWXvqkbpzL7cfj1ARIaoQywHqdD8LdpNDahivXalB."


# ---------------------------------------------------------------------------------------
# project generation
# ---------------------------------------------------------------------------------------

def _superclasses() -> str:
    return f"""\
# included by the benchmark projects
superclass base {{
    hypervisor $hv
    template busybox.ext4
    size 256M
    network eth0 {{
        switch lan
        netmask 255.0.0.0
    }}
    startup {{
        echo "MLN-CHECK $hostname of $project up"
    }}
}}

superclass node {{
    superclass base
    memory $[mem]M
    $mem = 96
    users {{
        admin {HASH}
    }}
}}
"""


def _address(i: int) -> str:
    """The i-th (0-based) host's address below $net (10): 10.A.B.C with C in 1..250."""
    return f"$net.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def generate(directory: str, shape: str, n: int) -> str:
    """Write the project (and its include) into ``directory``; return the project path."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "classes.mln"), "w") as f:
        f.write(_superclasses())
    path = os.path.join(directory, f"{shape}-{n}.mln")
    width = len(str(n))
    with open(path, "w") as f:
        w = f.write
        w("global {\n    project bench\n    $net = 10\n    $hv = uml\n")
        if shape == "autoenum":
            w("    autoenum {\n        superclass node\n        numhosts %d\n        address auto\n"
              "        net 10.0.0.0/8\n        addresses_begin 10\n    }\n" % n)
        w("}\n\nswitch lan {\n}\n\n#include classes.mln\n\n")
        if shape == "explicit":
            chunk = []
            for i in range(n):
                chunk.append(
                    f"host h{i + 1:0{width}d} {{\n"
                    f"    superclass node\n"
                    f"    $mem = {64 + i % 4 * 32}\n"
                    f"    network eth0 {{\n"
                    f"        address {_address(i)}\n"
                    f"    }}\n"
                    f"    users {{\n"
                    f"        u{i % 100} {HASH}\n"
                    f"    }}\n"
                    f"}}\n")
                if len(chunk) >= 1000:
                    w("".join(chunk))
                    chunk.clear()
            w("".join(chunk))
    return path


# ---------------------------------------------------------------------------------------
# the measured work (runs in a worker subprocess)
# ---------------------------------------------------------------------------------------

def _context():
    from mln_core.config import load_config
    from mln_core.context import Context
    from mln_core.plugins import make_plugin_manager
    pm = make_plugin_manager()
    ctx = Context(config=load_config(), pm=pm)
    pm.keywords  # the registry is built once per process; not part of loading a project
    return ctx


def _load(path, ctx):
    from mln_core.project import build_model, load_document, no_gc
    with no_gc():   # as mln_core.project.load_project and the mln command do
        return build_model(load_document(path, ctx), ctx)


def _summary(loaded, n: int) -> dict:
    problems = loaded.problems
    errors = [str(p) for p in problems.items if getattr(p, "severity", "") == "error"]
    warnings = [str(p) for p in problems.items if getattr(p, "severity", "") != "error"]
    hosts = len(loaded.project.hosts) if loaded.project else 0
    sample = None
    if loaded.project and loaded.project.hosts:
        h = next(iter(loaded.project.hosts.values()))
        sample = {"name": h.name, "memory": h.memory, "address": h.interfaces[0].address if h.interfaces
                  else None, "users": [u.name for u in h.users], "superclasses": h.superclasses}
    return {"hosts": hosts, "expected": n, "errors": errors[:5], "n_errors": len(errors),
            "warnings": warnings[:5], "n_warnings": len(warnings), "sample": sample}


def _maxrss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker(mode: str, path: str, n: int, top: int) -> dict:
    ctx = _context()
    import gc
    gc.collect()
    if mode in ("time", "time-nogc"):
        from mln_core.project import build_model, load_document, no_gc
        gc_time = [0.0, 0]
        started = [0.0]

        def on_gc(phase, info):
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                gc_time[0] += time.perf_counter() - started[0]
                gc_time[1] += info["generation"] == 2

        if mode == "time-nogc":
            gc.disable()
        gc.callbacks.append(on_gc)
        rss0 = _maxrss_bytes()
        c0 = time.process_time()
        t0 = time.perf_counter()
        with no_gc():   # == _load(), in two steps to time them apart
            doc = load_document(path, ctx)
            t1 = time.perf_counter()
            loaded = build_model(doc, ctx)
            t2 = time.perf_counter()
        c2 = time.process_time()
        rss1 = _maxrss_bytes()
        gc.callbacks.remove(on_gc)
        out = {"seconds": t2 - t0, "cpu_seconds": c2 - c0, "parse_seconds": t1 - t0, "model_seconds": t2 - t1,
               "gc_seconds": gc_time[0], "gc_full": gc_time[1],
               "rss_before": rss0, "rss_after": rss1, "rss_delta": rss1 - rss0}
    elif mode == "mem":
        import tracemalloc
        tracemalloc.start()
        loaded = _load(path, ctx)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out = {"tm_peak": peak, "tm_current": current}
    elif mode in ("profile", "profile-nogc"):
        import cProfile
        if mode == "profile-nogc":
            gc.disable()
        import io
        import pstats
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        loaded = _load(path, ctx)
        prof.disable()
        dt = time.perf_counter() - t0
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("cumulative").print_stats(top)
        s2 = io.StringIO()
        pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(top)
        out = {"seconds_profiled": dt, "cumulative": s.getvalue(), "tottime": s2.getvalue()}
    else:
        raise SystemExit(f"unknown mode {mode}")
    out.update(_summary(loaded, n))
    return out


def run_worker(mode: str, path: str, n: int, env: dict, top: int = 15, timeout: float = 1800) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", mode, path, str(n), str(top)]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"worker {mode} {path} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------

def _mb(b: float) -> float:
    return b / 2**20


def linearity(rows: list[dict], shape: str) -> str:
    pts = sorted((r["size"], r["seconds"]) for r in rows if r["shape"] == shape)
    if len(pts) < 2:
        return f"{shape}: one size only, no growth figure"
    (n0, t0), (n1, t1) = pts[0], pts[-1]
    slope = math.log(t1 / t0) / math.log(n1 / n0)
    per0, per1 = t0 / n0 * 1e6, t1 / n1 * 1e6
    verdict = "linear" if slope <= 1.12 else ("slightly super-linear" if slope <= 1.3 else "SUPER-LINEAR")
    steps = []
    for (a, ta), (b, tb) in zip(pts, pts[1:]):
        steps.append(f"{a}->{b}: x{tb / ta:.1f} time for x{b / a:.0f} hosts")
    return (f"{shape}: log-log slope {slope:.2f} ({verdict}); {per0:.0f} -> {per1:.0f} us/host; "
            + "; ".join(steps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated host counts")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="explicit, autoenum or both")
    ap.add_argument("--profile", action="store_true", help="cProfile the 10k explicit case")
    ap.add_argument("--profile-size", type=int, default=10000)
    ap.add_argument("--profile-nogc", action="store_true", help="profile with the garbage collector off")
    ap.add_argument("--top", type=int, default=15, help="rows of profile output")
    ap.add_argument("--repeat", type=int, help="timed runs per case, best is shown (default 3; 1 from 100k)")
    ap.add_argument("--no-mem", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--no-nogc", action="store_true", help="skip the runs with the garbage collector off")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the files")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--worker", nargs=4, metavar=("MODE", "PATH", "N", "TOP"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        mode, path, n, top = a.worker
        print(json.dumps(worker(mode, path, int(n), int(top))))
        return 0

    sizes = [int(s.replace("_", "")) for s in a.sizes.split(",") if s.strip()]
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s}")
    tmp = a.keep or tempfile.mkdtemp(prefix="mln-parse-bench-")
    os.makedirs(tmp, exist_ok=True)
    conf = os.path.join(tmp, "mln.conf")
    with open(conf, "w") as f:
        f.write(f"projects {tmp}/projects\ntemplates {tmp}/templates\nfiles {tmp}/files\n")
    env = {**os.environ, "MLN_CONFIG": conf, "PYTHONHASHSEED": "0"}
    env.pop("MLN_TRACE_PLUGINS", None)
    rows = []
    failed = False
    try:
        print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"load average {_loadavg()}; files in {tmp}", flush=True)
        hdr = (f"{'hosts':>7} {'shape':<9} {'file MB':>7} {'seconds':>8} {'cpu s':>7} {'us/host':>8} "
               f"{'parse s':>7} {'model s':>7} {'gc s':>6} {'full gc':>7} {'no-gc s':>7} {'tm peak MB':>10} "
               f"{'rss +MB':>8}  check")
        print(hdr)
        print("-" * len(hdr), flush=True)
        for shape in shapes:
            for n in sizes:
                path = generate(os.path.join(tmp, "projects-src"), shape, n)
                fsize = os.path.getsize(path)
                reps = a.repeat if a.repeat is not None else (3 if n < 100000 else 1)
                runs = [run_worker("time", path, n, env) for _ in range(reps)]
                t = min(runs, key=lambda r: r["seconds"])
                nogc = None if a.no_nogc else min(
                    (run_worker("time-nogc", path, n, env) for _ in range(reps)), key=lambda r: r["seconds"])
                m = {} if a.no_mem else run_worker("mem", path, n, env)
                ok = t["hosts"] == n and t["n_errors"] == 0
                failed |= not ok
                check = "ok" if ok else f"FAILED: {t['hosts']} hosts, errors {t['errors']}"
                if t["n_warnings"]:
                    check += f" ({t['n_warnings']} warnings, e.g. {t['warnings'][0]})"
                row = {"size": n, "shape": shape, "file_bytes": fsize, "seconds": t["seconds"],
                       "cpu_seconds": t["cpu_seconds"], "all_seconds": [r["seconds"] for r in runs],
                       "us_per_host": t["seconds"] / n * 1e6, "parse_seconds": t["parse_seconds"],
                       "model_seconds": t["model_seconds"], "gc_seconds": t["gc_seconds"],
                       "gc_full": t["gc_full"], "nogc_seconds": nogc["seconds"] if nogc else None,
                       "tm_peak": m.get("tm_peak"), "rss_delta": t["rss_delta"], "rss_after": t["rss_after"],
                       "check": check, "sample": t["sample"]}
                rows.append(row)
                tm = f"{_mb(row['tm_peak']):10.1f}" if row["tm_peak"] is not None else f"{'-':>10}"
                ng = f"{row['nogc_seconds']:7.3f}" if nogc else f"{'-':>7}"
                print(f"{n:>7} {shape:<9} {_mb(fsize):7.1f} {row['seconds']:8.3f} {row['cpu_seconds']:7.3f} "
                      f"{row['us_per_host']:8.1f} "
                      f"{row['parse_seconds']:7.3f} {row['model_seconds']:7.3f} {row['gc_seconds']:6.2f} "
                      f"{row['gc_full']:7d} {ng} {tm} {_mb(row['rss_delta']):8.1f}  {check}", flush=True)
        print(f"# seconds: wall time, best of the runs (--repeat); cpu s: CPU time of that run; "
              f"parse = load_document (lex, parse, include, autoenum); "
              f"model = build_model;\n# gc s: time inside the cyclic garbage collector during the load "
              f"(full gc: generation-2 collections);\n# no-gc s: the same load with gc.disable(); "
              f"load average at the end: {_loadavg()}")
        print()
        for shape in shapes:
            print(linearity(rows, shape))
        tenk = [r for r in rows if r["size"] == 10000]
        for r in tenk:
            verdict = "meets" if r["seconds"] <= TARGET_10K_S else "MISSES"
            print(f"target: 10,000 {r['shape']} hosts in {r['seconds']:.3f} s {verdict} the "
                  f"{TARGET_10K_S:g} s target")
        if rows and rows[0]["sample"]:
            print(f"sample host: {rows[0]['sample']}")

        prof = None
        if a.profile:
            path = generate(os.path.join(tmp, "projects-src"), "explicit", a.profile_size)
            prof = run_worker("profile-nogc" if a.profile_nogc else "profile", path, a.profile_size, env,
                              top=a.top)
            gc_note = ("garbage collector off" if a.profile_nogc else
                       "garbage collector on: its pauses are charged to whatever function was allocating")
            print(f"\n# cProfile: {a.profile_size} explicit hosts ({prof['seconds_profiled']:.2f} s under "
                  f"the profiler; {gc_note}); top {a.top} by cumulative time")
            print(_trim_profile(prof["cumulative"]))
            print(f"# top {a.top} by own (total) time")
            print(_trim_profile(prof["tottime"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows,
                           "profile": prof}, f, indent=1)
    finally:
        if not a.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _trim_profile(text: str) -> str:
    """pstats output without its preamble, with paths shortened to the repository."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    out = []
    for ln in lines[start:]:
        if not ln.strip():
            continue
        out.append(ln.replace(ROOT + "/", "").replace(os.path.dirname(os.__file__) + "/", ""))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
