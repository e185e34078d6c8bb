"""The guest configuration of a slirp interface (no guest is booted): slirp's defaults
10.0.2.15/24 via 10.0.2.2 when the project gives no address, the project's address when it
does, DNS 10.0.2.3 after ``nameserver``, and no slirp address in /etc/hosts."""
from __future__ import annotations

import pytest

from mln_backends.imagefs import Ext4Image
from mln_core.guest import detect_family
from mln_core.project import load_project
from mln_plugins import guestconfig

from .test_guestconfig import ctx, make_image, pytestmark, read  # noqa: F401  (fixture, skip mark)

PROJECT = """
global { project t }
switch lan { }
host web {
    nameserver 10.0.0.53
    network eth0 { slirp }
    network eth1 { switch lan; address 10.0.0.5; netmask 255.255.255.0 }
    network eth2 { slirp; address 10.0.2.20; netmask 255.255.255.0 }
}
"""


@pytest.mark.parametrize("family", ["debian", "busybox"])
def test_slirp_interface_gets_an_address(tmp_path, ctx, family):  # noqa: F811
    loaded = load_project("p.mln", ctx, text=PROJECT)
    ctx.project = loaded.project
    img = make_image(tmp_path, family)
    with Ext4Image(str(img)) as g:
        g.family = detect_family(g)
        guestconfig.mln_configure_image(host=loaded.project.hosts["web"], guest=g, ctx=ctx)
    if family == "debian":
        net = read(img, "/etc/network/interfaces")
        assert ("auto eth0\niface eth0 inet static\n    address 10.0.2.15\n    netmask 255.255.255.0\n"
                "    gateway 10.0.2.2\n") in net
        assert "iface eth2 inet static\n    address 10.0.2.20\n    netmask 255.255.255.0\n" in net
        assert "manual" not in net
    else:
        rcs = read(img, "/etc/init.d/rcS")
        assert "ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up" in rcs
        assert "route add default gw 10.0.2.2" in rcs
    assert read(img, "/etc/resolv.conf") == "nameserver 10.0.0.53\nnameserver 10.0.2.3\n"
    hosts = read(img, "/etc/hosts")
    assert "10.0.0.5\tweb" in hosts and "10.0.2." not in hosts
    # the model keeps what the project says
    assert loaded.project.hosts["web"].interfaces[0].address is None
