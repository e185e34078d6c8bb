"""The ``libvirt`` server transport without a libvirtd: the URI it derives from mln.conf, the
configuration of the part it carries out, and what counts as a remote libvirt URI. (With a
libvirtd on a namespace server: tests/libvirt/test_remote.py.)"""
from __future__ import annotations

import os
import stat

from mln_backends.libvirt_remote import is_remote
from mln_core.config import Config
from mln_core.servers import configured
from mln_plugins.transport_libvirt import default_uri, part_config


def config(*lines: str) -> Config:
    c = Config()
    for line in lines:
        key, value = line.split(None, 1)
        if key == "server":
            c.lists.setdefault(key, []).append(value)
        c.values[key] = value
    return c


def test_the_default_uri_is_qemu_ssh_with_the_key_and_host_keys_of_mln_conf(tmp_path):
    known = tmp_path / "known hosts"
    c = config("server sh2 libvirt root@10.0.0.12", "server sh3 libvirt [fe80::1]:2222",
               "ssh_identity /keys/id_ed25519", f"ssh_known_hosts {known}")
    servers = configured(c)
    u = default_uri(servers["sh2"], c, str(tmp_path))
    wrapper = tmp_path / "ssh"
    assert u == (f"qemu+ssh://root@10.0.0.12/system?no_tty=1&keyfile=/keys/id_ed25519&command={wrapper}")
    text = wrapper.read_text()
    assert f"""'UserKnownHostsFile="{known}"'""" in text and "StrictHostKeyChecking=yes" in text
    assert "GlobalKnownHostsFile=/dev/null" in text and text.rstrip().endswith('"$@"')
    assert stat.S_IMODE(os.stat(wrapper).st_mode) == 0o700
    assert default_uri(servers["sh3"], c, str(tmp_path)).startswith("qemu+ssh://[fe80::1]:2222/system?")
    # no known_hosts named: ssh checks ~/.ssh/known_hosts itself; never no_verify
    plain = config("server sh2 libvirt sh2.example.org")
    u = default_uri(configured(plain)["sh2"], plain, str(tmp_path / "none"))
    assert u == "qemu+ssh://sh2.example.org/system?no_tty=1" and "no_verify" not in u


def test_the_part_has_its_own_projects_the_managers_templates_and_the_servers_libvirtd(tmp_path):
    c = config(f"projects {tmp_path}/p", f"templates {tmp_path}/t", "service_host manager",
               "server sh2 libvirt root@10.0.0.12 pool=vms pool_path=/srv/vms", "san_path /san")
    c.lists["san_path"] = ["/san"]
    s = configured(c)["sh2"]
    part = part_config(c, s, f"{tmp_path}/p/.server-sh2", "qemu+ssh://x/system")
    assert part.projects_dir == f"{tmp_path}/p/.server-sh2" and part.templates_dir == f"{tmp_path}/t"
    assert part.get("service_host") == "sh2" and part.get("libvirt_uri") == "qemu+ssh://x/system"
    assert (part.get("libvirt_pool"), part.get("libvirt_pool_path")) == ("vms", "/srv/vms")
    assert part.getlist("server") == [] and part.get("server") is None and part.getlist("san_path") == ["/san"]


def test_remote_uris():
    assert is_remote("qemu+ssh://root@sh2/system") and is_remote("qemu://sh2.example.org/system")
    assert is_remote("qemu+libssh2://sh2/system?known_hosts=/x")
    assert not is_remote("qemu:///system") and not is_remote("qemu:///system?socket=/tmp/x/libvirt-sock")
    assert not is_remote("qemu+unix:///system") and not is_remote("not a uri")
