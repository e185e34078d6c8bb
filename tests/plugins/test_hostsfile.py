"""The hostsfile plugin: /etc/hosts lists the hosts reachable through the switches."""
from __future__ import annotations

from mln_core.project import load_project
from mln_plugins import hostsfile

from .helpers import configure, debian_image, needs_debugfs, read, snapshot

# lan: a, gw, e (dhcp)      dmz: gw, b      back: b, c      iso: d (nobody else)
PROJECT = """
global {
    project net
    hostsfile
}
switch lan { }
switch dmz { }
switch back { }
switch iso { }
superclass node { memory 64M }
host a { superclass node; network eth0 { switch lan; address 10.0.0.10; netmask 255.255.255.0 } }
host e { superclass node; network eth0 { switch lan; address dhcp } }
host gw {
    superclass node
    network eth0 { switch lan; address 10.0.0.1; netmask 255.255.255.0 }
    network eth1 { switch dmz; address 10.1.0.1; netmask 255.255.255.0 }
}
host b {
    superclass node
    network eth0 { switch dmz; address 10.1.0.10; netmask 255.255.255.0 }
    network eth1 { switch back; address 10.2.0.1; netmask 255.255.255.0 }
}
host c { superclass node; network eth0 { switch back; address 10.2.0.10; netmask 255.255.255.0 } }
host d { superclass node; network eth0 { switch iso; address 10.9.0.1; netmask 255.255.255.0 } }
host f {
    superclass node
    hostsfile no
    network eth0 { switch lan; address 10.0.0.20; netmask 255.255.255.0 }
}
"""
IPV6 = ["", "::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]
HEADER = "# /etc/hosts written by mln (hostsfile): the hosts reachable through this host's switches"


def test_reachable_is_breadth_first_through_multi_homed_hosts(ctx):
    p = load_project("p.mln", ctx, text=PROJECT).project
    assert hostsfile.reachable(p.hosts["a"], p) == [
        ("10.0.0.1", "gw"), ("10.0.0.20", "f"), ("10.1.0.10", "b"), ("10.2.0.10", "c")]
    # from the dmz, the gateway is listed with its dmz address; the lan is behind it
    assert hostsfile.reachable(p.hosts["b"], p) == [
        ("10.1.0.1", "gw"), ("10.2.0.10", "c"), ("10.0.0.10", "a"), ("10.0.0.20", "f")]
    assert hostsfile.reachable(p.hosts["d"], p) == []
    assert hostsfile.enabled(p.hosts["a"], p) and not hostsfile.enabled(p.hosts["f"], p)


@needs_debugfs
def test_etc_hosts_of_a_gateway_a_lan_node_and_a_dmz_node(tmp_path, ctx):
    expected = {
        "a": ["127.0.0.1\tlocalhost", "10.0.0.10\ta", "10.0.0.1\tgw", "10.0.0.20\tf", "10.1.0.10\tb",
              "10.2.0.10\tc"],
        "gw": ["127.0.0.1\tlocalhost", "10.0.0.1\tgw", "10.1.0.1\tgw", "10.0.0.10\ta", "10.0.0.20\tf",
               "10.1.0.10\tb", "10.2.0.10\tc"],
        "b": ["127.0.0.1\tlocalhost", "10.1.0.10\tb", "10.2.0.1\tb", "10.1.0.1\tgw", "10.2.0.10\tc",
              "10.0.0.10\ta", "10.0.0.20\tf"],
        "e": ["127.0.0.1\tlocalhost e", "10.0.0.10\ta", "10.0.0.1\tgw", "10.0.0.20\tf", "10.1.0.10\tb",
              "10.2.0.10\tc"],
        "d": ["127.0.0.1\tlocalhost", "10.9.0.1\td"],
    }
    for name, lines in expected.items():
        (tmp_path / name).mkdir()
        img = debian_image(tmp_path / name, apache=None)
        configure(ctx, PROJECT, img, hosts=[name])      # guestconfig first, then hostsfile
        assert read(img, "/etc/hosts").splitlines() == [HEADER, *lines, *IPV6], name
        once = snapshot(img)
        configure(ctx, PROJECT, img, hosts=[name])
        assert snapshot(img) == once, name


@needs_debugfs
def test_without_hostsfile_guestconfig_lists_every_static_address(tmp_path, ctx):
    img = debian_image(tmp_path, apache=None)
    configure(ctx, PROJECT, img, hosts=["f"])           # 'hostsfile no' in f
    hosts = read(img, "/etc/hosts").splitlines()
    assert HEADER not in hosts
    assert "10.9.0.1\td" in hosts and "10.0.0.1\tgw" in hosts and "10.1.0.1\tgw" in hosts


def test_the_keywords_are_declared(mln_plain):
    path = mln_plain.write("p.mln", PROJECT)
    r = mln_plain.mln("check", "-f", str(path))
    assert "unknown" not in r.output, r.output
