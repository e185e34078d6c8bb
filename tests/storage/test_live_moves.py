"""A running four-host QEMU project moves live from one namespace server to another with
one ``mln upgrade``: one guest's disk is on NFS (nfs-ganesha), one on an iSCSI LUN (tgtd),
two on neither (their disks are mirrored to the other server). Both storage servers run in
the client's namespace, which both servers reach. Each guest counts and pings the next
one all along, over their switch, which follows them; the counters go on where they were
(no guest starts again) and few pings are lost."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mln_core.nsservers import NamespaceServers
from tests.conftest import TEMPLATE_DIR

from .conftest import _need
from .servers import Net, start_iscsi, start_nfs, stop_daemons

pytestmark = pytest.mark.guests

NODE = r"""global { project lm }
superclass node {
    kvm
    template busybox.ext4
    memory 96M
    startup {
        echo MLN-BOOTED
        dd if=/dev/urandom of=/root/fill bs=64k count=48 2> /dev/null; sync
        ( i=0; l0=0; l1=0
          while true
          do
              i=\$((i+1))
              ping -c 1 -W 1 $peer0 > /dev/null || l0=\$((l0+1))
              ping -c 1 -W 1 $peer1 > /dev/null || l1=\$((l1+1))
              echo "MLN-COUNT \$i lost \$((l0+l1)) (lan \$l0, lan2 \$l1)"
              sleep 0.2
          done ) &
    }
}
switch lan { }
switch lan2 { type bridge }
"""


def host(name: str, n: int, server: str, peer: int, disk: str) -> str:
    nics = "".join(f"    network eth{k} {{ switch {sw}\n        address 10.0.{k}.{n}\n        netmask 255.255.255.0 }}\n"
                   for k, sw in enumerate(("lan", "lan2")))
    return f"host {name} {{ superclass node\n    service_host {server}\n    $peer0 = 10.0.0.{peer}\n    $peer1 = 10.0.1.{peer}\n{disk}{nics}}}\n"


@pytest.fixture
def kit(tmp_path, test_template):
    _need("ganesha.nfsd", "rpcbind", "tgtd", "tgtadm", "qemu-storage-daemon")
    with NamespaceServers(tmp_path / "servers", names=("sh1", "sh2")) as kit:
        net = Net(kit.netns("client"), kit.address("client"), "", tempfile.mkdtemp(prefix="mln-storage-"))
        iscsi = None
        try:
            kit.nfs = start_nfs(net)
            kit.iscsi = iscsi = start_iscsi(net, luns=1)
            r = kit.mln("client", "register_template", "-t", str(TEMPLATE_DIR / "busybox.ext4"),
                        "--kernel", str(TEMPLATE_DIR / "vmlinux"), "--initrd", str(TEMPLATE_DIR / "initrd.gz"))
            assert r.returncode == 0, r.stderr
            yield kit
        finally:
            for name in ("sh1", "sh2"):
                kit.mln(name, "stop", "-a", "-H")
            if iscsi is not None:
                iscsi.stop()
            stop_daemons(net, sweep=False)
            subprocess.run(["rm", "-rf", net.root])


WHERE = {h: "sh1" for h in "abcd"}
MOVED = {h: "sh2" for h in "abcd"}


def project(kit, where: dict[str, str]) -> str:
    disks = {"a": f"    nfs {kit.nfs.spec}\n", "b": f"    iscsi {kit.iscsi.url(1)}\n", "c": "", "d": ""}
    return NODE + "".join(host(h, n, where[h], n % 4 + 1, disks[h]) for n, h in enumerate("abcd", 1))


def log(kit, server: str, h: str) -> str:
    p = kit.dir(server) / "projects" / "lm" / "hosts" / h / "console.log"
    return p.read_text(errors="replace") if p.exists() else ""


def counts(text: str) -> list[tuple[int, int]]:
    return [(int(i), int(lost)) for i, lost in re.findall(r"MLN-COUNT (\d+) lost (\d+)", text)]


def wait_counting(kit, where: dict[str, str], above: dict[str, int], timeout: float = 120,
                  said: str = "") -> dict[str, tuple]:
    """Wait until each guest counted past ``above`` with its last ping answered; its last count
    (``said``: what the last command printed, shown if they do not)."""
    end = time.monotonic() + timeout
    while True:
        last = {h: (counts(log(kit, s, h)) or [(0, 0)])[-1] for h, s in where.items()}
        if all(last[h][0] > above.get(h, 0) for h in where) and \
                all(len(counts(log(kit, s, h))) > 1 and counts(log(kit, s, h))[-2][1] == last[h][1]
                    for h, s in where.items()):
            return last
        behind = [h for h, s in where.items() if last[h][0] <= above.get(h, 0) or len(counts(log(kit, s, h))) < 2
                  or counts(log(kit, s, h))[-2][1] != last[h][1]]
        assert time.monotonic() < end, "not counting on with its pings answered: " + "\n".join(
            f"{h} on {where[h]} (above {above.get(h, 0)}):\n{log(kit, where[h], h)[-600:]}" for h in behind) + \
            "\nstatus: " + kit.mln("client", "status", "-p", "lm").stdout + "\nthe last command said:\n" + said + \
            "".join(f"\n{s}: {kit.run(s, ['bridge', 'link']).stdout}{links(kit, s)}\n" + "\n".join(
                p for p in processes(kit, s) if "qemu" in p or "vde" in p) for s in ("sh1", "sh2"))
        time.sleep(0.3)


def processes(kit, server: str) -> list[str]:
    out = []
    pids = subprocess.run(["ip", "netns", "pids", kit.netns(server)], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


def qemus(kit, server: str) -> list[str]:
    return sorted(h for line in processes(kit, server) for h in "abcd" if "qemu-system" in line and f"{h}.lm" in line)


def links(kit, server: str) -> str:
    return kit.run(server, ["ip", "-o", "link"]).stdout


def test_a_running_project_moves_live_to_another_server_on_nfs_on_iscsi_and_without(kit):
    path = kit.client_dir / "lm.mln"
    path.write_text(project(kit, WHERE))
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "start", "-p", "lm")
    assert r.returncode == 0, r.stderr
    before = wait_counting(kit, WHERE, {h: 5 for h in WHERE})
    nfs_files = kit.nfs.files()
    assert nfs_files == ["a.lm.qcow2"], nfs_files
    path.write_text(project(kit, MOVED))
    r = kit.mln("client", "upgrade", "-s", "-f", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host a: moved from server sh1, live: its disk is on shared storage, its memory is sent" in r.stdout \
        and "host b: moved from server sh1, live: its disk is on shared storage" in r.stdout \
        and "host c: moved from server sh1, live: its disk is mirrored to the other server" in r.stdout, r.stdout
    assert "(its disk stays on shared storage)" in r.stdout, r.stdout
    for sw in ("lan", "lan2"):          # (the vde switch and the bridge)
        assert f"[sh1]     switch {sw}: it joins other servers than before (while it runs)" in r.stdout, r.stdout
    # the disk copy made impossible (sh2's projects directory is a 6 MB file system, and the
    # guests wrote 3 MB each): the upgrade fails cleanly, every guest runs on at sh1
    projects2 = kit.dir("sh2") / "projects"
    r = kit.run("sh2", ["mount", "-t", "tmpfs", "-o", "size=6m", "mln-test-full", str(projects2)])
    assert r.returncode == 0, r.stderr
    try:
        r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    finally:
        kit.run("sh2", ["umount", "-l", str(projects2)])
    assert r.returncode == 1 and "live migration failed, the guest runs on here" in r.stderr and \
        "it is as it was on all of them" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "lm", "--format", "json").stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {(h, "sh1", "up") for h in WHERE}, rows
    assert qemus(kit, "sh2") == [] and qemus(kit, "sh1") == list("abcd"), r.stderr
    before = wait_counting(kit, WHERE, {h: before[h][0] + 3 for h in WHERE})     # the same guests count on
    assert not [h for h in WHERE if log(kit, "sh1", h).count("MLN-BOOTED") != 1]
    # the move, all four at once (mln.conf migrate_at_once; two by default)
    conf = kit.client_conf.read_text()
    kit.client_conf.write_text(conf + "migrate_at_once 4\n")
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    kit.client_conf.write_text(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    began = [r.stderr.index(f"[sh2] +---> {h}: moving here from sh1 while it runs") for h in MOVED]
    assert max(began) < r.stderr.index("arrived from sh1"), r.stderr       # all began before one arrived
    for h, to in MOVED.items():
        assert re.search(rf"\[{to}\] \+---> {h}: moved live from {WHERE[h]} \(the guest paused \d+ ms\)",
                         r.stderr), r.stderr
    assert re.search(rf"\[client\] \+---> {len(MOVED)} hosts moved live in \d+\.\d s; guests paused \d+ to \d+ ms",
                     r.stderr), r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "lm", "--format", "json").stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {(h, s, "up") for h, s in MOVED.items()}
    assert qemus(kit, "sh1") == [] and qemus(kit, "sh2") == list("abcd"), (qemus(kit, "sh1"), qemus(kit, "sh2"))
    # nothing of the project is left on sh1; its switch on sh2 no longer spans
    assert not (kit.dir("sh1") / "projects" / "lm").exists()
    assert not [x for x in ("tap-", "vx-", "vt-", "vb-", "lan2.lm") if x in links(kit, "sh1")], links(kit, "sh1")
    assert not [p for p in processes(kit, "sh1") if "vde" in p], processes(kit, "sh1")
    assert "vx-" not in links(kit, "sh2"), links(kit, "sh2")
    # the same guests: they count on from where they were, without booting again
    after = wait_counting(kit, MOVED, {h: before[h][0] + 10 for h in MOVED}, said=r.stderr)
    for h, s in MOVED.items():
        text = log(kit, s, h)
        seen = counts(text)
        assert "MLN-BOOTED" not in text and seen[0][0] > before[h][0] - 5, (h, text[:800])
        assert all(b[0] == a[0] + 1 for a, b in zip(seen, seen[1:])), (h, text[-1500:])   # no count missed
        assert after[h][1] - before[h][1] <= 10, (h, before[h], after[h])    # few pings lost (of two peers)
    # the shared disks stay where they were (not deleted by the server the hosts left)
    assert kit.nfs.files() == ["a.lm.qcow2"], kit.nfs.files()
    assert kit.iscsi.head(1).strip(b"\0"), "the iSCSI LUN was wiped"
    # a failure injected on sh2 in the middle of c's move back (its disk mirrored, its memory
    # not yet sent; sh2 runs mln through a wrapper, the server line's mln=): all put back
    faulty = kit.dir("sh2") / "faulty-mln"
    faulty.write_text('#!/bin/sh\nMLN_FAULTS="fail@migrate: memory of c.lm" exec mln "$@"\n')
    faulty.chmod(0o755)
    conf = kit.client_conf.read_text()
    line = f"server sh2 ssh {kit.address('sh2')}\n"
    kit.client_conf.write_text(conf.replace(line, line.replace("\n", f" mln={faulty}\n")))
    path.write_text(project(kit, WHERE))
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    kit.client_conf.write_text(conf)
    assert r.returncode == 1 and "server sh2: live migration failed, the guest runs on here" in r.stderr \
        and "injected fault" in r.stderr and "it is as it was on all of them" in r.stderr, r.stderr
    for h in "ab":          # on shared storage they ran on sh1 as soon as they arrived: sent back live
        assert re.search(rf"\[sh2\] \+---> {h}: back from sh1 \(the guest paused \d+ ms\)", r.stderr), r.stderr
    assert qemus(kit, "sh1") == [] and qemus(kit, "sh2") == list("abcd")
    after = wait_counting(kit, MOVED, {h: after[h][0] + 3 for h in MOVED}, said=r.stderr)
    # mln upgrade killed (-9) at each step of the moves in turn, then run again: every guest runs
    # exactly once, on one server, and counts on
    where, last = MOVED, after
    for step in ("move a: sent", "move c: sent", "move c: received", "upgrade: decided"):
        # (a: shared, running there; c sent: mirrored, running there, its QEMU on the old server ended;
        # c received: complete there but paused; decided: after all moves, before any server heard the word)
        to = WHERE if where is MOVED else MOVED
        path.write_text(project(kit, to))
        r = kit.mln("client", "upgrade", "-r", "-f", str(path), env={"MLN_FAULTS": f"kill@{step}"})
        assert r.returncode != 0 and "UPGRADED on" not in r.stderr, (step, r.stderr)
        first = r.stderr
        r = kit.mln("client", "upgrade", "-r", "-f", str(path))
        assert r.returncode == 0, (step, r.stdout + r.stderr)
        if step.endswith(": sent"):     # it ran on its new server already: it came back before the put back
            h = step.split()[1].rstrip(":")
            assert re.search(rf"\[{where[h]}\] \+---> {h}: back from {to[h]}", r.stderr), r.stderr
        where = to
        rows = json.loads(kit.mln("client", "status", "-p", "lm", "--format", "json").stdout)
        assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
            {(h, s, "up") for h, s in where.items()}, (step, rows)
        gone = ({"sh1", "sh2"} - set(where.values())).pop()
        assert qemus(kit, gone) == [] and qemus(kit, where["a"]) == list("abcd"), step
        assert not (kit.dir(gone) / "projects" / "lm").exists(), step
        last = wait_counting(kit, where, {h: last[h][0] + 5 for h in where}, said=first + r.stderr)
        assert not [h for h, s in where.items() if "MLN-BOOTED" in log(kit, s, h)], step
    # a stopped host on shared storage moves cold: nothing is copied, its disk is the same file
    r = kit.mln("client", "stop", "-p", "lm", "-h", "a")
    assert r.returncode == 0, r.stderr
    disk = Path(kit.nfs.export) / "a.lm.qcow2"
    inode = disk.stat().st_ino
    to = dict(where, a=({"sh1", "sh2"} - {where["a"]}).pop())
    path.write_text(project(kit, to))
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0 and f"host a: moved from server {where['a']}, cold: it keeps its disk on shared " \
        "storage" in r.stdout and "disk arrived" not in r.stderr, r.stdout + r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "lm", "--format", "json").stdout)
    assert ("a", to["a"], "down") in {(x["name"], x["server"], x["state"]) for x in rows}, rows
    assert disk.stat().st_ino == inode and kit.nfs.files() == ["a.lm.qcow2"]
    r = kit.mln("client", "stop", "-p", "lm")
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "remove", "-f", "-p", "lm")
    assert r.returncode == 0, r.stderr
    assert kit.nfs.files() == [] and qemus(kit, "sh1") == qemus(kit, "sh2") == []
