#!/usr/bin/env python3
"""Upgrade benchmark: changing one host of a running N-host project (default 60) against
building and starting that one host alone.

Side by side, in one run, each measured ``--repeat`` times (median shown):

(a) alone:    ``mln build -f one.mln && mln start -p one``: a project of just that host
              (same template, same switch kind, same startup block).
(b) add:      ``mln upgrade -r`` of the running N-host project with one host added (the
              new host built and started; the N others untouched).
(c) change:   ``mln upgrade -r`` of the running project with one host's startup block
              changed (a copy of its disk individualized again, the host stopped and
              started again; the others untouched). The stop is a clean guest shutdown,
              which (a) does not have to wait for.

Times end when ``mln`` returns (the guest is started, not yet booted). The target:
(b) <= 1.3 x (a). The run also checks that the other N hosts kept their processes.

Needs root, the test template (``contrib/templates/build-test-template.sh``), vde2 and
user-mode-linux. UML guests (64M each). Everything lives in ``--workdir`` (default
/tmp/mln-upgrade-bench, its own mln.conf); the projects are stopped and removed at the
end, also after an error.

    python bench/upgrade_bench.py              # N = 60, 3 repeats
    python bench/upgrade_bench.py -n 20 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HEAD = """global { project %s }
superclass node {
    uml
    template busybox.ext4
    memory 64M
    startup {
        echo "MLN-BENCH-UP $(hostname)"
    }
}
switch lan { }
"""


def host(n: int, extra: str = "") -> str:
    return (f"host h{n:03d} {{\n    superclass node\n{extra}    network eth0 {{\n        switch lan\n"
            f"        address 10.{n // 250}.{n % 250}.1\n        netmask 255.0.0.0\n    }}\n}}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=60, help="hosts in the running project (default 60)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/mln-upgrade-bench")
    ap.add_argument("--template-dir", default="/var/cache/mln/test-template")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("vde_switch"):
        print("upgrade_bench: needs root and vde2; not run")
        return 0
    tpl = os.path.join(a.template_dir, "busybox.ext4")
    if not os.path.exists(tpl):
        print(f"upgrade_bench: no test template in {a.template_dir} (contrib/templates/build-test-template.sh)")
        return 0
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    conf = os.path.join(a.workdir, "mln.conf")
    from mln_core.testing import machine_config
    with open(conf, "w") as f:
        f.write(f"projects {a.workdir}/projects\ntemplates {a.workdir}/templates\nfiles {a.workdir}/files\n"
                + machine_config())
    env = {**os.environ, "MLN_CONFIG": conf}

    def mln(*args: str, check: bool = True) -> float:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "mln_core.cli", *args], env=env, cwd=a.workdir,
                           capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if check and r.returncode != 0:
            raise SystemExit(f"mln {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return dt

    def write(name: str, text: str) -> str:
        path = os.path.join(a.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def pids(project: str) -> dict[str, str]:
        hdir = os.path.join(a.workdir, "projects", project, "hosts")
        out = {}
        for h in sorted(os.listdir(hdir)):
            p = os.path.join(hdir, h, "pid")
            if os.path.exists(p):
                out[h] = open(p).read().strip()
        return out

    n, big = a.n, "big"
    base = HEAD % big + "".join(host(i) for i in range(n))
    added = base + host(n)
    changed = base.replace(host(0), host(0, "    startup {\n        echo changed\n    }\n"))
    alone = HEAD % "one" + host(n)
    rows: dict[str, list[float]] = {"alone": [], "add": [], "change": []}
    try:
        mln("register_template", "-t", tpl, "-m", "bench")
        print(f"building and starting the {n}-host project ...", flush=True)
        mln("build", "-f", write("big.mln", base))
        mln("start", "-p", big)
        for _ in range(a.repeat):
            rows["alone"].append(mln("build", "-f", write("one.mln", alone), "-r") +
                                 mln("start", "-p", "one"))
            mln("stop", "-H", "-p", "one")
            before = pids(big)
            rows["add"].append(mln("upgrade", "-r", "-f", write("added.mln", added)))
            after = pids(big)
            assert all(after.get(h) == p for h, p in before.items()), "a host of the project was restarted"
            mln("upgrade", "-r", "-f", write("base.mln", base))          # back to N hosts
            before = pids(big)
            rows["change"].append(mln("upgrade", "-r", "-f", write("changed.mln", changed)))
            after = pids(big)
            assert all(after.get(h) == p for h, p in before.items() if h != "h000"), "another host restarted"
            mln("upgrade", "-r", "-f", write("base.mln", base))
    finally:
        for p in (big, "one"):
            mln("stop", "-H", "-p", p, check=False)
            mln("remove", "-f", "-p", p, check=False)
    alone_t = statistics.median(rows["alone"])
    print(f"\n{'what':<58} {'median s':>9} {'x alone':>8}")
    for key, what in (("alone", "build + start one host alone"),
                      ("add", f"upgrade of the running {n}-host project: one host added"),
                      ("change", f"upgrade of the running {n}-host project: one host changed")):
        med = statistics.median(rows[key])
        print(f"{what:<58} {med:9.2f} {med / alone_t:8.2f}")
    print("\ntarget: one host added to a running project <= 1.3 x building and starting it alone "
          "(the changed host also waits for its clean shutdown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
