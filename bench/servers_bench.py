"""Building and starting a project over three servers, against the same three parts built
and started by hand on each server at the same time (issue 9's target: mln's overhead at
most 1.2x).

    python3 bench/servers_bench.py [--hosts 20] [--rounds 1]

Three servers are network namespaces with sshd on this machine (mln_core.nsservers): they
share its cores, so both sides do the same parallel work. Each server gets HOSTS UML hosts
on a switch of its own. *mln*: ``mln build`` then ``mln start`` of the whole project from
the client (the templates are on the servers already: both sides start from the same
place). *by hand*: on each server at once, ``mln build`` and ``mln start`` of its part as
a project of its own (what an administrator without service hosts would run there). The
guests are stopped (-H) and removed between rounds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mln_core.nsservers import NamespaceServers  # noqa: E402

TEMPLATE = Path("/var/cache/mln/test-template")
SERVERS = ("sh1", "sh2", "sh3")


def hosts(server: str, n: int, service: bool) -> str:
    out = []
    for i in range(1, n + 1):
        sh = f"    service_host {server}\n" if service else ""
        out.append(f"host {server}h{i} {{\n    uml\n    template busybox.ext4\n    memory 48M\n{sh}"
                   f"    network eth0 {{ switch {server}lan\n        address 10.{SERVERS.index(server) + 1}.0.{i}\n"
                   f"        netmask 255.255.0.0 }}\n}}\n")
    sw = f"switch {server}lan {{ }}\n"
    return sw + "".join(out)


def ok(r, what):
    if r.returncode != 0:
        raise SystemExit(f"{what} failed:\n{r.stderr[-2000:]}")


def timed(work) -> float:
    t = time.monotonic()
    work()
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=20, help="hosts per server (default 20)")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mln-bench-") as tmp, NamespaceServers(Path(tmp) / "kit") as kit:
        for where in ("client",) + SERVERS:           # every side has the template already
            ok(kit.mln(where, "register_template", "-t", str(TEMPLATE / "busybox.ext4")), "register_template")
        whole = kit.client_dir / "whole.mln"
        whole.write_text("global { project whole }\n" + "".join(hosts(s, a.hosts, True) for s in SERVERS))
        for s in SERVERS:
            (kit.dir(s) / "part.mln").write_text(f"global {{ project part }}\n{hosts(s, a.hosts, False)}")
        rows = []
        for _ in range(a.rounds):
            def by_mln():
                ok(kit.mln("client", "build", "-f", str(whole)), "mln build")
                ok(kit.mln("client", "start", "-p", "whole"), "mln start")

            def by_hand():
                def one(s):
                    ok(kit.mln(s, "build", "-f", str(kit.dir(s) / "part.mln")), f"build on {s}")
                    ok(kit.mln(s, "start", "-p", "part"), f"start on {s}")
                threads = [threading.Thread(target=one, args=(s,)) for s in SERVERS]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            t_mln = timed(by_mln)
            ok(kit.mln("client", "stop", "-H", "-p", "whole"), "stop")
            ok(kit.mln("client", "remove", "-f", "-p", "whole"), "remove")
            t_hand = timed(by_hand)
            for s in SERVERS:
                ok(kit.mln(s, "stop", "-H", "-p", "part"), "stop")
                ok(kit.mln(s, "remove", "-f", "-p", "part"), "remove")
            rows.append((t_mln, t_hand))
        n = 3 * a.hosts
        print(f"build + start of {n} UML hosts on 3 namespace servers ({a.hosts} each), {a.rounds} round(s)")
        print(f"{'round':>5} {'mln (one command)':>18} {'by hand (3 at once)':>20} {'ratio':>6}")
        for i, (m, h) in enumerate(rows, 1):
            print(f"{i:>5} {m:>17.2f}s {h:>19.2f}s {m / h:>6.2f}")
        best_m, best_h = min(r[0] for r in rows), min(r[1] for r in rows)
        print(f"{'best':>5} {best_m:>17.2f}s {best_h:>19.2f}s {best_m / best_h:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
