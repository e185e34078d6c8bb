"""A project over several servers (network namespaces with sshd, ``mln_servers``): built
and started from a fourth namespace with one command, its guests (UML and QEMU) on one
switch that spans the servers, reached through the ``ssh`` transport."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE_DIR

pytestmark = pytest.mark.guests

PROJECT = """global {{ project spread }}
superclass node {{
    template busybox.ext4
    memory 96M
    startup {{
        [ -f /root/first ] || cat /proc/sys/kernel/random/uuid > /root/first
        echo MLN-CHECK-FIRST
        cat /root/first
        for peer in $peers
        do
            for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
            do
                ping -c 1 -W 1 \\$peer > /dev/null && break
            done
            ping -c 2 -s 1400 \\$peer > /dev/null && echo "MLN-CHECK ping \\$peer ok"
        done
    }}
}}
switch lan {{ }}
switch lan2 {{ type bridge }}
{hosts}"""


def host(name: str, n: int, hypervisor: str, server: str, peers: list[int], kernel: str = "") -> str:
    addrs = " ".join(f"10.0.{net}.{p}" for net in (0, 1) for p in peers)
    nics = "".join(f"    network eth{net} {{ switch {sw}\n        address 10.0.{net}.{n}\n"
                   f"        netmask 255.255.255.0 }}\n" for net, sw in ((0, "lan"), (1, "lan2")))
    return (f"host {name} {{ superclass node\n    {hypervisor}\n    service_host {server}\n"
            f"    $peers = {addrs}\n{kernel}{nics}}}\n")


def project(kernel_b: str = "") -> str:
    files = "    files {\n        motd.txt /etc/mln-motd\n    }\n"
    return PROJECT.format(hosts=host("a", 1, "uml", "sh1", [2, 3], files) + host("b", 2, "uml", "sh2", [1, 3], kernel_b)
                          + host("c", 3, "kvm", "sh3", [1, 2]))


WHERE = {"a": "sh1", "b": "sh2", "c": "sh3"}


@pytest.fixture
def kit(mln_servers, test_template):
    r = mln_servers.mln("client", "register_template", "-t", str(TEMPLATE_DIR / "busybox.ext4"),
                        "--kernel", str(TEMPLATE_DIR / "vmlinux"), "--initrd", str(TEMPLATE_DIR / "initrd.gz"))
    assert r.returncode == 0, r.stderr
    (mln_servers.client_dir / "files" / "motd.txt").write_text("from-the-client\n")   # the servers have none
    yield mln_servers
    for name in WHERE.values():        # whatever a failed test left running, before the kit goes
        mln_servers.mln(name, "stop", "-a", "-H")


def console(kit, host: str) -> str:
    p = kit.dir(WHERE[host]) / "projects" / "spread" / "hosts" / host / "console.log"
    return p.read_text(errors="replace") if p.exists() else ""


def wait_pings(kit, timeout: float = 150) -> None:
    end = time.monotonic() + timeout
    for h in WHERE:
        want = 4                                         # both others, on both switches
        while len(re.findall(r"MLN-CHECK ping \S+ ok", console(kit, h))) < want:
            assert time.monotonic() < end, f"{h} did not reach both others:\n{console(kit, h)[-1500:]}"
            time.sleep(0.5)


def processes(kit, server: str) -> list[str]:
    """The command lines of the processes in the server's network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", kit.netns(server)], capture_output=True, text=True).stdout
    out = []
    for pid in pids.split():
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def links(kit, server: str) -> str:
    return kit.run(server, ["ip", "-o", "link"]).stdout


def test_three_servers_two_spanning_switches(kit):
    """A vde and a bridge switch, each spanning the three servers."""
    path = kit.client_dir / "spread.mln"
    path.write_text(project())
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 0, r.stderr
    for name in ("sh1", "sh2", "sh3"):                   # prefixed progress from every server
        assert f"[{name}]" in r.stderr, r.stderr
    # the templates arrived through the transport; each server holds only its own hosts
    for h, name in WHERE.items():
        assert (kit.dir(name) / "templates" / "busybox.ext4").exists()
        images = sorted(p.name.split(".")[0] for p in (kit.dir(name) / "projects" / "spread" / "images").iterdir())
        assert images == [h], (name, images)
    disk = kit.dir("sh1") / "projects" / "spread" / "images" / "a"     # files {} came through the transport
    motd = subprocess.run(["debugfs", "-R", "cat /etc/mln-motd", str(disk)], capture_output=True, text=True)
    assert motd.stdout == "from-the-client\n", motd
    r = kit.mln("client", "start", "-p", "spread")
    assert r.returncode == 0, r.stderr
    wait_pings(kit)                                      # every guest reaches every other, with 1400-byte pings
    r = kit.mln("client", "status", "-p", "spread", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {("a", "sh1", "up"), ("b", "sh2", "up"), ("c", "sh3", "up")}
    assert {(x["name"], x["server"]) for x in rows if x["kind"] == "switch"} == \
        {(sw, sh) for sw in ("lan", "lan2") for sh in ("sh1", "sh2", "sh3")}
    text = kit.mln("client", "status", "-p", "spread").stdout
    assert "spread host a up [sh1]" in text and "spread host c up [sh3]" in text, text
    # one host: only that one, on its server
    r = kit.mln("client", "stop", "-p", "spread", "-h", "a")
    assert r.returncode == 0, r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "spread", "--format", "json").stdout)
    assert {x["name"]: x["state"] for x in rows if x["kind"] == "host"} == {"a": "down", "b": "up", "c": "up"}
    r = kit.mln("client", "start", "-p", "spread", "-h", "a")
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "stop", "-p", "spread", "-h", "nosuch")
    assert r.returncode == 1 and "no host 'nosuch'" in r.stderr, r.stderr
    assert kit.mln("client", "status", "-p", "spread").returncode == 0       # all up again
    for name in WHERE.values():
        assert links(kit, name).count("vx-") == 2, links(kit, name)
    r = kit.mln("client", "console", "-p", "spread", "-h", "c", input="\necho MLN-CONSOLE-$((6*7)); hostname\n")
    assert r.returncode == 0 and "MLN-CONSOLE-42" in r.stdout and re.search(r"^c\s*$", r.stdout, re.M), \
        r.stdout + r.stderr                              # the console of a guest on sh3, from the client
    upgrade_spread_project(kit, path)
    # stop (one host after the other on each server, -s) and remove: nothing is left on any server
    r = kit.mln("client", "stop", "-p", "spread", "-s", "1")
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "remove", "-f", "-p", "spread")
    assert r.returncode == 0, r.stderr
    for name in WHERE.values():
        assert not (kit.dir(name) / "projects" / "spread").exists()
        left = links(kit, name)
        assert "vx-" not in left and "vt-" not in left and "vb-" not in left and "tap-" not in left, left
        ps = processes(kit, name)
        assert not [p for p in ps if "linux.uml" in p or "qemu-system" in p or "vde_switch" in p], ps
    assert not (kit.client_dir / "projects" / "spread").exists()


def upgrade_spread_project(kit, path) -> None:
    """``mln upgrade`` from the client: one plan, shown by server; host d added on sh2
    starts there and reaches a on sh1; a UML host moves cold to another server."""
    # a part that fails on sh2: sh3, whose part was ready (host e built and started), puts it back
    path.write_text(project() + host("d", 4, "uml", "sh2", [1], "    kernel /nonexistent/linux.uml\n")
                    + host("e", 5, "uml", "sh3", [1]))
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 1, r.stderr
    assert "not upgraded on every server; it is as it was on all of them" in r.stderr and "server sh2" in r.stderr \
        and "/nonexistent/linux.uml" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "spread", "--format", "json").stdout)
    assert {(x["name"], x["state"]) for x in rows if x["kind"] == "host"} == {("a", "up"), ("b", "up"), ("c", "up")}
    assert not (kit.dir("sh3") / "projects" / "spread" / "hosts" / "e").exists()
    assert "host e" not in (kit.dir("sh3") / "projects" / "spread" / "spread.mln").read_text()
    assert not [p for p in processes(kit, "sh3") if "umid=e.spread" in p]
    path.write_text(project() + host("d", 4, "uml", "sh2", [1]))
    r = kit.mln("client", "upgrade", "-s", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert "[sh2] plan for project spread" in r.stdout and "[sh2]     host d" in r.stdout, r.stdout
    assert "[sh1] plan for project spread (version 1 -> 2): nothing changes" in r.stdout, r.stdout
    assert not (kit.dir("sh2") / "projects" / "spread" / "hosts" / "d").exists()     # -s changes nothing
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0, r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "spread", "--format", "json").stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {("a", "sh1", "up"), ("b", "sh2", "up"), ("c", "sh3", "up"), ("d", "sh2", "up")}
    log = kit.dir("sh2") / "projects" / "spread" / "hosts" / "d" / "console.log"
    end = time.monotonic() + 120
    while len(re.findall(r"MLN-CHECK ping \S+ ok", log.read_text(errors="replace") if log.exists() else "")) < 2:
        assert time.monotonic() < end, log.read_text(errors="replace")[-1500:]
        time.sleep(0.5)
    assert "service_host sh2" in (kit.dir("sh1") / "projects" / "spread" / "spread.mln").read_text()
    # a cold move: a goes from sh1 to sh3 (and sh1 leaves the project); what its guest wrote goes with it
    first = re.search(r"MLN-CHECK-FIRST\s+(\S+)", console(kit, "a")).group(1)
    path.write_text((project() + host("d", 4, "uml", "sh2", [1])).replace("service_host sh1", "service_host sh3", 1))
    r = kit.mln("client", "upgrade", "-s", "-f", str(path))
    assert r.returncode == 0 and "host a: moved from server sh1, cold: its disk is copied and it is started here" \
        in r.stdout, r.stdout + r.stderr
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0, r.stderr
    rows = json.loads(kit.mln("client", "status", "-p", "spread", "--format", "json").stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {("a", "sh3", "up"), ("b", "sh2", "up"), ("c", "sh3", "up"), ("d", "sh2", "up")}
    log = kit.dir("sh3") / "projects" / "spread" / "hosts" / "a" / "console.log"
    end = time.monotonic() + 120
    while not re.search(r"MLN-CHECK-FIRST\s+" + first, log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < end, log.read_text(errors="replace")[-1500:]
        time.sleep(0.5)
    assert not (kit.dir("sh1") / "projects" / "spread").exists()        # nothing of it is left there
    assert not [p for p in processes(kit, "sh1") if "linux.uml" in p or "vde_switch" in p]
    # (live moves, their failures and a killed mln upgrade: tests/storage/test_live_moves.py)


def test_all_or_nothing_an_unreachable_server_and_a_failed_part(kit):
    path = kit.client_dir / "spread.mln"
    path.write_text(project())

    def nothing_anywhere():
        for name in WHERE.values():
            assert not (kit.dir(name) / "projects" / "spread").exists(), name
        assert not (kit.client_dir / "projects" / "spread").exists()
    # a server that does not answer is named before anything is built
    kit.break_link("sh2")
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 1, r.stderr
    assert "server sh2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    nothing_anywhere()
    kit.mend_link("sh2")
    # a part that fails on one server: the parts built on the others are removed again
    path.write_text(project(kernel_b="    kernel /nonexistent/linux.uml\n"))
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 1, r.stderr
    assert "server sh2" in r.stderr and "/nonexistent/linux.uml" in r.stderr and "Traceback" not in r.stderr, r.stderr
    nothing_anywhere()
    # a server cut off in the middle of its build: named, the others keep nothing
    path.write_text(project())
    with open(kit.client_conf, "a") as f:
        f.write("remote_timeout 8\n")               # seconds of silence before a server counts as gone
    p = subprocess.Popen(["ip", "netns", "exec", kit.netns("client"), sys.executable, "-m", "mln_core.cli",
                          "build", "-f", str(path)], env=kit.env_for_client(), stderr=subprocess.PIPE, text=True)
    said = []
    for line in p.stderr:
        said.append(line)
        if line.startswith("[sh2] +---> project spread"):
            kit.break_link("sh2")
    assert p.wait(timeout=120) == 1, "".join(said)
    assert any("server sh2" in x and "stopped answering" in x for x in said), "".join(said)
    for name in ("sh1", "sh3"):
        assert not (kit.dir(name) / "projects" / "spread").exists(), name
    assert not (kit.client_dir / "projects" / "spread").exists()
    kit.mend_link("sh2")
    # back: the same command succeeds (what sh2 built meanwhile is replaced; the templates
    # are there already: not sent again)
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert "sending template" not in r.stderr, r.stderr
    r = kit.mln("client", "remove", "-f", "-p", "spread")
    assert r.returncode == 0, r.stderr
    nothing_anywhere()


def test_a_changed_host_key_is_refused_naming_the_server(kit):
    path = kit.client_dir / "spread.mln"
    path.write_text(project())
    kh = Path(kit.known_hosts)
    lines = kh.read_text().splitlines()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(kit.root / "other")],
                           capture_output=True)
    assert other.returncode == 0
    fake = (kit.root / "other.pub").read_text().split()[:2]
    kh.write_text("\n".join(f"{ln.split()[0]} {' '.join(fake)}" if ln.startswith(kit.address("sh3")) else ln
                            for ln in lines) + "\n")
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 1 and "server sh3" in r.stderr and "CHANGED" in r.stderr, r.stderr
    assert not (kit.dir("sh1") / "projects" / "spread").exists()


PLACED = """global { project placed }
superclass node { template busybox.ext4
    memory 96M }
switch lan { }
switch other { }
host a { superclass node
    service_host sh1
    network eth0 { switch lan
        address 10.0.0.1
        netmask 255.255.255.0 } }
host b { superclass node
    service_host any
    network eth0 { switch lan
        address 10.0.0.2
        netmask 255.255.255.0 } }
host c { superclass node
    service_host sh2 sh3
    network eth0 { switch other
        address 10.0.1.3
        netmask 255.255.255.0 } }
"""


def test_hosts_naming_several_servers_or_any_are_placed_at_build(kit):
    path = kit.client_dir / "placed.mln"
    # a host no server it may run on has room for: named, with what each has; nothing built
    path.write_text(PLACED.replace("service_host sh2 sh3\n", "service_host sh2 sh3\n    memory 900000M\n", 1))
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 1, r.stderr
    assert re.search(r"host c needs 900000 MB of memory and no server it may run on has that much free "
                     r"\(sh2 \d+ MB, sh3 \d+ MB\)", r.stderr), r.stderr
    for name in ("sh1", "sh2", "sh3"):
        assert not (kit.dir(name) / "projects" / "placed").exists(), name
    # b goes with its switch partner a; c to whichever of sh2 and sh3 has more memory free
    path.write_text(PLACED)
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert "+---> placing host b on sh1 (with its switch partners)" in r.stderr, r.stderr
    where = re.search(r"\+---> placing host c on (sh2|sh3) \(\d+ MB free\)", r.stderr)
    assert where, r.stderr
    r = kit.mln("client", "status", "-p", "placed", "--format", "json")
    assert r.returncode == 1, r.stderr            # built, not started
    assert {x["name"]: x["server"] for x in json.loads(r.stdout) if x["kind"] == "host"} == \
        {"a": "sh1", "b": "sh1", "c": where.group(1)}
    assert (kit.dir(where.group(1)) / "projects" / "placed" / "images" / "c").exists()
    # a rebuild keeps them where they are
    r = kit.mln("client", "build", "-r", "-f", str(path))
    assert r.returncode == 0 and f"placing host c stays on {where.group(1)}" in r.stderr, r.stderr
    upgrade_joins_and_leaves(kit, path, where.group(1))
    r = kit.mln("client", "remove", "-f", "-p", "placed")
    assert r.returncode == 0, r.stderr
    for name in ("sh1", "sh2", "sh3"):
        assert not (kit.dir(name) / "projects" / "placed").exists(), name
        left = links(kit, name)
        assert "vx-" not in left and "vt-" not in left and "vb-" not in left, left


def upgrade_joins_and_leaves(kit, path, c_on: str) -> None:
    """An upgrade brings a server into the project (host d, on switch lan, which then spans
    sh1 and it) and one that takes c's server out of it."""
    d_on = ({"sh2", "sh3"} - {c_on}).pop()
    d = (f"host d {{ superclass node\n    service_host {d_on}\n    network eth0 {{ switch lan\n"
         "        address 10.0.0.4\n        netmask 255.255.255.0 }\n"
         "    startup {\n        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20\n        do\n"
         "            ping -c 1 -W 1 10.0.0.1 > /dev/null && echo MLN-CHECK reached a && break\n"
         "        done\n    }\n}\n")
    path.write_text(PLACED + d)
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert f"[{d_on}] plan for project placed (version 0 -> 1)" in r.stdout, r.stdout
    assert "switch lan: it joins other servers than before" in r.stdout, r.stdout
    r = kit.mln("client", "start", "-p", "placed")
    assert r.returncode == 0, r.stderr
    log = kit.dir(d_on) / "projects" / "placed" / "hosts" / "d" / "console.log"
    end = time.monotonic() + 120
    while "MLN-CHECK reached a" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < end, log.read_text(errors="replace")[-1500:]
        time.sleep(0.5)
    path.write_text(PLACED.split("host c {")[0] + d)           # c goes: its server leaves the project
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert not (kit.dir(c_on) / "projects" / "placed").exists()
    rows = json.loads(kit.mln("client", "status", "-p", "placed", "--format", "json").stdout)
    assert {(x["name"], x["server"], x["state"]) for x in rows if x["kind"] == "host"} == \
        {("a", "sh1", "up"), ("b", "sh1", "up"), ("d", d_on, "up")}
    r = kit.mln("client", "stop", "-p", "placed")
    assert r.returncode == 0, r.stderr
