"""The several-servers kit (mln_core.nsservers, fixture ``mln_servers``): namespaces with
sshd, each its own hostname, address, /etc/mln and /run/mln; reached over ssh and Fabric
from the client; host keys checked; links cut and mended; nothing left after down()."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mln_core.nsservers import NamespaceServers, missing_tools

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or bool(missing_tools()),
                                reason="needs root, ip, unshare, nsenter, ssh-keygen and /usr/sbin/sshd")

SSH = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=3"]

FABRIC = r"""
import sys, fabric, paramiko
key, known_hosts = sys.argv[1:3]
for host in sys.argv[3:]:
    c = fabric.Connection(host, user="root", connect_timeout=5,
                          connect_kwargs={"key_filename": key, "look_for_keys": False, "allow_agent": False})
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.client.load_host_keys(known_hosts)
    try:
        print(c.run("hostname", hide=True).stdout.strip())
    except paramiko.BadHostKeyException:
        print("bad host key")
    finally:
        c.close()
"""


def ssh(kit, name, command, *opts):
    return kit.client_run([*SSH, *opts, "-i", kit.identity, "-o", f"UserKnownHostsFile={kit.known_hosts}",
                           f"root@{kit.address(name)}", command], timeout=30)


def fabric_hostnames(kit, *names):
    """``hostname`` run through Fabric on each server, with paramiko's RejectPolicy and the
    kit's known_hosts: one line per server, its name or 'bad host key'."""
    return kit.client_run([sys.executable, "-c", FABRIC, kit.identity, kit.known_hosts,
                           *map(kit.address, names)], timeout=30)


def alive(pid) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_each_server_is_reached_over_ssh_and_fabric_with_its_own_name(mln_servers):
    kit = mln_servers
    assert len({kit.address(n) for n in kit.names}) == 3
    for name in kit.names:
        r = ssh(kit, name, "hostname")
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r.stderr
    r = fabric_hostnames(kit, *kit.names)
    assert (r.returncode, r.stdout) == (0, "sh1\nsh2\nsh3\n"), r.stderr
    r = kit.ssh("sh3", "python3 -m mln_core.cli version")            # the client's ssh_config
    assert r.returncode == 0 and "mln" in r.stdout, r.stderr
    conf = kit.client_conf.read_text()
    for name in kit.names:
        assert f"server {name} ssh {kit.address(name)}\n" in conf
    assert f"ssh_identity {kit.identity}\n" in conf and f"ssh_known_hosts {kit.known_hosts}\n" in conf
    r = kit.mln("client", "version")
    assert r.returncode == 0, r.stderr


def test_each_server_has_its_own_mln_conf_and_run_dir(mln_servers):
    kit = mln_servers
    host_etc = {p.name: p.read_bytes() for p in Path("/etc/mln").iterdir() if p.is_file()}
    r = ssh(kit, "sh2", "cat /etc/mln/mln.conf; hostname")
    assert r.returncode == 0, r.stderr
    assert "service_host sh2\n" in r.stdout and f"projects {kit.dir('sh2') / 'projects'}\n" in r.stdout
    assert r.stdout.endswith("sh2\n")
    where = "from mln_core.config import load_config; print(load_config().projects_dir)"
    for name in kit.names:                 # mln on a server finds its projects through its /etc/mln
        r = kit.run(name, [sys.executable, "-c", where])
        assert r.stdout == f"{kit.dir(name) / 'projects'}\n", r.stderr
    r = kit.run("sh2", ["sh", "-c", "echo sh2 > /run/mln/mark; cat /run/mln/mark"])
    assert r.stdout == "sh2\n", r.stderr
    assert (kit.dir("sh2") / "run" / "mark").exists()
    assert kit.run("sh1", ["ls", "-A", "/run/mln"]).stdout == ""
    assert kit.run("sh1", ["ls", "-A", "/run/netns"]).stdout == ""
    assert not os.path.exists("/run/mln/mark")
    # this machine's own /etc/mln (install-uml may have written its default_kernel there) is
    # as it was, and none of the servers' settings are in it
    assert {p.name: p.read_bytes() for p in Path("/etc/mln").iterdir() if p.is_file()} == host_etc
    assert not [n for n, text in host_etc.items() if b"service_host" in text or str(kit.root).encode() in text]


def test_a_changed_host_key_is_refused(mln_servers, tmp_path):
    kit = mln_servers
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "other"], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    lines = kit.known_hosts.read_text().splitlines()
    kit.known_hosts.write_text("".join(
        f"{ln.split()[0]} {' '.join(other)}\n" if ln.startswith(f"{kit.address('sh1')},") else f"{ln}\n"
        for ln in lines))
    r = ssh(kit, "sh1", "hostname")
    assert r.returncode == 255 and "sh1" not in r.stdout
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr or "verification failed" in r.stderr, r.stderr
    r = fabric_hostnames(kit, "sh1", "sh2")
    assert (r.returncode, r.stdout) == (0, "bad host key\nsh2\n"), r.stderr


def test_a_broken_link_makes_a_server_unreachable_until_mended(mln_servers):
    kit = mln_servers
    assert ssh(kit, "sh1", "true").returncode == 0
    kit.break_link("sh1")
    t = time.monotonic()
    r = ssh(kit, "sh1", "hostname", "-o", "ConnectTimeout=2")
    assert r.returncode == 255 and "timed out" in r.stderr and time.monotonic() - t < 6, r.stderr
    assert ssh(kit, "sh2", "hostname").stdout == "sh2\n"
    kit.mend_link("sh1")
    r = ssh(kit, "sh1", "hostname")
    assert (r.returncode, r.stdout) == (0, "sh1\n"), r.stderr


def _traces(root, prefix) -> list[str]:
    ns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
          if n.startswith(f"{prefix}-")]
    mounts = [ln for ln in open("/proc/mounts") if str(root) in ln or f"/run/netns/{prefix}-" in ln]
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    procs = [ln for ln in ps if str(root) in ln and " Z" not in ln]
    return ns + mounts + procs


def test_down_leaves_nothing_and_is_idempotent(tmp_path):
    kit = NamespaceServers(tmp_path / "k", names=("a1", "a2"))
    try:
        kit.up()
        assert _traces(kit.root, kit.prefix)                 # netns, sshd: up
        guest = kit.spawn("a1", ["sleep", "300"], tmp_path / "guest.log")
        shell = kit.run("a2", ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"])
        assert shell.stdout.strip().isdigit(), shell.stderr
        with pytest.raises(RuntimeError, match="exist already"):      # and leaves the other kit alone
            with NamespaceServers(tmp_path / "k2", names=("a1",), prefix=kit.prefix):
                pass
        assert kit.run("a1", ["hostname"]).stdout == "a1\n"
    finally:
        kit.down()
    assert guest.poll() is not None
    assert not alive(shell.stdout.strip())
    assert _traces(kit.root, kit.prefix) == []
    kit.down()
    NamespaceServers.load(kit.root).down()


def test_the_demo_script_brings_servers_up_and_down(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "servers", "mln-servers")
    d, prefix = tmp_path / "demo", f"md{os.getpid():x}"
    try:
        r = subprocess.run([script, "up", "--dir", d, "--servers", "x1", "--prefix", prefix],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"ip netns exec {prefix}-c env MLN_CONFIG={d}/client/mln.conf mln" in r.stdout
        kit = NamespaceServers.load(d)
        assert kit.ssh("x1", "hostname").stdout == "x1\n"
    finally:
        r = subprocess.run([script, "down", "--dir", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _traces(d, prefix) == []
