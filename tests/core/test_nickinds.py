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
    assert any(e.startswith("nk.mln:23:9: error: host q eth1: qemu hosts cannot have a tun_iface interface")
               and "no backend provides it yet" in e for e in errors), errors
    assert "nk.mln:27:9: error: host q eth2: tun_address needs tun_iface" in errors
    assert "nk.mln:34:9: error: host v eth0: vmware hosts cannot have a slirp interface; hypervisors that can: " \
           "qemu, uml" in errors
    assert "nk.mln:40:9: error: host r eth0: UML's slirp takes no options ('restrict' is QEMU's); leave it out" \
           in errors
    # the slirp interfaces UML and QEMU provide are no error
    assert not [e for e in errors if "host u eth0" in e or "host q eth0" in e]


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
