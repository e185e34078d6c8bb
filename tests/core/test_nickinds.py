"""Interface kinds a backend cannot provide (issue 13): ``check`` names each one with its
position instead of the interface being dropped at start; UML and QEMU provide slirp."""
from __future__ import annotations

import json

PROJECT = """global {
    project nk
}
switch lan {
}
host u {
    template busybox.ext4
    network eth0 {
        slirp
    }
    network eth1 {
        switch lan
        slirp
    }
}
host q {
    hypervisor qemu
    template busybox.ext4
    network eth0 {
        slirp restrict
    }
    network eth1 {
        tun_iface tap7
        tun_address 10.9.0.1
    }
    network eth2 {
        tun_address 10.9.0.1
    }
}
host v {
    vmware
    template busybox.ext4
    network eth0 {
        slirp
    }
    network eth1 {
        tun_iface tap8
    }
}
host r {
    template busybox.ext4
    network eth0 {
        slirp restrict
    }
}
"""


def _errors(env, text: str) -> list[str]:
    path = env.write("nk.mln", text)
    r = env.mln("check", "-f", str(path))
    return [line.replace(str(path), "nk.mln") for line in r.stderr.splitlines() + r.stdout.splitlines()
            if ": error: " in line]


def test_check_names_interface_kinds_a_backend_cannot_provide(mln_plain):
    errors = _errors(mln_plain, PROJECT)
    assert "nk.mln:13:9: error: host u eth1: slirp and switch exclude each other (an interface is on one " \
           "network)" in errors
    assert "nk.mln:37:9: error: host v eth1: vmware hosts cannot have a tun_iface interface (a tap on the " \
           "managing host); hypervisors that can: qemu, uml" in errors
    assert "nk.mln:27:9: error: host q eth2: tun_address needs tun_iface" in errors
    assert "nk.mln:34:9: error: host v eth0: vmware hosts cannot have a slirp interface; hypervisors that can: " \
           "qemu, uml" in errors
    assert "nk.mln:43:9: error: host r eth0: UML's slirp takes no options ('restrict' is QEMU's); leave it out" \
           in errors
    # the slirp and tun interfaces UML and QEMU provide are no error
    assert not [e for e in errors if "host u eth0" in e or "host q eth0" in e or "host q eth1" in e]


def test_check_holds_tun_interfaces_to_device_names_and_addresses(mln_plain):
    errors = _errors(mln_plain, """global {
    project tn
}
host a {
    template busybox.ext4
    network eth0 {
        tun_iface bad/name
    }
    network eth1 {
        tun_iface mlt0
        tun_address 10.7.0.300
    }
}
host b {
    hypervisor qemu
    template busybox.ext4
    network eth0 {
        tun_iface mlt0
        address 10.7.1.2
        tun_address 10.7.1.2
    }
    network eth1 {
        tun_iface averyveryverylongname
    }
}
""")
    assert errors == [
        "nk.mln:7:9: error: host a eth0: tun_iface 'bad/name' is not a network device name (up to 15 letters, "
        "digits, '_', '.' or '-')",
        "nk.mln:11:9: error: host a eth1: tun_address '10.7.0.300' is not an IPv4 address",
        "nk.mln:18:9: error: host b eth0: tun_iface mlt0 is also a eth1's (a tap serves one interface)",
        "nk.mln:20:9: error: host b eth0: tun_address 10.7.1.2 is the guest's own address; give the tap (the "
        "managing host's end) another one",
        "nk.mln:23:9: error: host b eth1: tun_iface 'averyveryverylongname' is not a network device name (up "
        "to 15 letters, digits, '_', '.' or '-')"], errors


def test_slirp_on_uml_and_qemu_checks_clean(mln_plain):
    text = """global {
    project ok
}
host u {
    template busybox.ext4
    network eth0 {
        slirp
    }
}
host q {
    hypervisor qemu
    template busybox.ext4
    network eth0 {
        slirp
        address 10.0.2.15
    }
}
"""
    assert _errors(mln_plain, text) == []
    path = mln_plain.write("ok.mln", text)
    r = mln_plain.mln("check", "-f", str(path))
    assert "also used by" not in r.output       # each guest has a slirp of its own
    r = mln_plain.mln("show", "-f", str(path), "--format", "json")
    assert json.loads(r.stdout)["hosts"]["u"]["hypervisor"] == "uml"
