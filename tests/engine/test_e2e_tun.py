"""``tun_iface`` / ``tun_address`` on real guests (issue 13): a UML and a QEMU guest, each
linked to a tap of the managing host. mln runs inside a network namespace this test
creates, so the taps, their addresses and every packet stay inside it."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.guests

PROJECT = """
global {
    project tn
}
superclass common {
    template busybox.ext4
    memory 96M
}
host u {
    superclass common
    network eth0 {
        tun_iface mlntu0
        tun_address 10.77.0.1
        address 10.77.0.2
        netmask 255.255.255.0
    }
    startup {
        for i in 1 2 3 4 5 6 7 8 9 10
        do
        ping -c 1 -W 2 10.77.0.1 > /dev/null && break
        done
        ping -c 2 -W 2 10.77.0.1 > /dev/null && echo "MLN-CHECK tap reached"
    }
}
host q {
    superclass common
    hypervisor qemu
    network eth0 {
        tun_iface mlntq0
        tun_address 10.77.1.1
        address 10.77.1.2
    }
    startup {
        for i in 1 2 3 4 5 6 7 8 9 10
        do
        ping -c 1 -W 2 10.77.1.1 > /dev/null && break
        done
        ping -c 2 -W 2 10.77.1.1 > /dev/null && echo "MLN-CHECK tap reached"
    }
}
"""


@pytest.fixture
def netns():
    name = f"mlntun-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(ns: str, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "mln_core.cli", *args],
                          env=env.env, cwd=env.root, capture_output=True, text=True, timeout=300)


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True).stdout


def test_uml_and_qemu_guests_reach_their_taps_on_the_managing_host(mln_env, netns):
    path = mln_env.write("tn.mln", PROJECT)
    r = _in(netns, mln_env, "build", "-f", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _in(netns, mln_env, "start", "-p", "tn")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "inet 10.77.0.1/24" in _ip(netns, "addr", "show", "mlntu0")
        assert "inet 10.77.1.1 peer 10.77.1.2/32" in _ip(netns, "addr", "show", "mlntq0")
        assert "alias mln:tn/u" in _ip(netns, "link", "show", "mlntu0")
        for host in ("u", "q"):
            mln_env.wait_console("tn", host, r"MLN-CHECK tap reached", timeout=120)
        for guest in ("10.77.0.2", "10.77.1.2"):      # and the managing host reaches each guest
            ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "2", "-W", "3", guest],
                                  capture_output=True, text=True)
            assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        stop = _in(netns, mln_env, "stop", "-p", "tn", "-w", "20")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "mlntu0" not in _ip(netns, "link") and "mlntq0" not in _ip(netns, "link")   # gone with the guests
    r = _in(netns, mln_env, "remove", "-f", "-p", "tn")
    assert r.returncode == 0, r.stdout + r.stderr
    assert mln_env.processes() == []


def test_a_device_mln_did_not_make_is_not_taken(mln_env, netns):
    subprocess.run(["ip", "-n", netns, "link", "add", "mlntu0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.0.2.1/24", "dev", "mlntu0"], check=True)
    path = mln_env.write("tn.mln", PROJECT.split("host q {")[0])
    assert _in(netns, mln_env, "build", "-f", str(path)).returncode == 0
    r = _in(netns, mln_env, "start", "-p", "tn")
    try:
        assert r.returncode != 0
        assert "tun_iface mlntu0: a network device mlntu0 already exists on this machine and mln did not " \
               "make it; choose another name" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        shown = _ip(netns, "addr", "show", "mlntu0")
        assert "192.0.2.1/24" in shown and "10.77.0.1" not in shown     # untouched
        assert mln_env.processes() == []
    finally:
        _in(netns, mln_env, "stop", "-p", "tn", "-w", "5")
        r = _in(netns, mln_env, "remove", "-f", "-p", "tn")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mlntu0" in _ip(netns, "link")          # remove leaves the machine's own device alone
