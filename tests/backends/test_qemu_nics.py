"""A QEMU host's NICs carry the names of the project file, also with gaps (eth0, eth2).

The guest kernel names NICs in PCI order, so without a NIC for the missing eth1 the
guest would call the second NIC eth1 and eth2's address would land on no NIC. Host
``gap`` has eth0 on one switch and eth2 on another, which it shares with ``peer``; peer
pings gap's eth2 address, and gap's console shows that its eth2 is the NIC with the MAC
mln gave eth2 and carries eth2's address.
"""
from __future__ import annotations

import re

import pytest

from mln_backends.runtime import mac_address

pytestmark = pytest.mark.guests

PROJECT = r"""
global {
    project nics
}
switch front {
}
switch back {
}
superclass node {
    hypervisor qemu
    template busybox.ext4
    memory 96M
}
host gap {
    superclass node
    network eth0 {
        switch front
        address 10.0.1.1
        netmask 255.255.255.0
    }
    network eth2 {
        switch back
        address 10.0.2.1
        netmask 255.255.255.0
    }
    startup {
        echo "MLN-CHECK links $(ls /sys/class/net | xargs)"
        for n in eth0 eth1 eth2
        do
        echo "MLN-CHECK \$n $(cat /sys/class/net/\$n/address) $(ifconfig \$n | grep -o 'inet addr:[0-9.]*')."
        done
    }
}
host peer {
    superclass node
    network eth0 {
        switch back
        address 10.0.2.2
        netmask 255.255.255.0
    }
    startup {
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        do
        ping -c 1 -W 2 10.0.2.1 > /dev/null && break
        done
        ping -c 3 10.0.2.1 && echo "MLN-CHECK ping 10.0.2.1 ok"
    }
}
"""


def test_interfaces_with_a_gap_keep_their_names(mln_env):
    path = mln_env.write("nics.mln", PROJECT)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = mln_env.mln("start", "-p", "nics")
    assert r.returncode == 0, r.output

    # QEMU: a NIC per index, ethN in PCI slot 2 + N; the placeholder eth1 is on no network
    cmdline = (mln_env.projects / "nics" / "hosts" / "gap" / "cmdline").read_text()
    devices = re.findall(r"virtio-net-pci,\S+", cmdline)
    assert len(devices) == 3, cmdline
    assert [re.search(r"addr=(0x[0-9a-f]+)", d).group(1) for d in devices] == ["0x02", "0x03", "0x04"]
    assert "netdev=n0" in devices[0] and "netdev=" not in devices[1] and "netdev=n2" in devices[2]

    mac = {n: mac_address("52:54:00", "nics", "gap", n) for n in ("eth0", "eth1", "eth2")}
    peer = mln_env.wait_console("nics", "peer", r"MLN-CHECK ping 10\.0\.2\.1 ok")
    gap = mln_env.wait_console("nics", "gap", r"MLN-CHECK eth2 [^\n]*\.\r?\n").replace("\r", "")
    assert "MLN-CHECK links eth0 eth1 eth2 lo\n" in gap, gap[-2000:]
    assert f"MLN-CHECK eth0 {mac['eth0']} inet addr:10.0.1.1.\n" in gap
    assert f"MLN-CHECK eth1 {mac['eth1']} .\n" in gap           # there, but without an address
    assert f"MLN-CHECK eth2 {mac['eth2']} inet addr:10.0.2.1.\n" in gap
    assert "3 packets transmitted, 3 packets received" in peer

    r = mln_env.mln("stop", "-p", "nics", "-w", "30")
    assert r.returncode == 0, r.output
    assert "did not stop" not in r.stderr
