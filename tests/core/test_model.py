"""The resolved model: sizes, addresses, names, switches, interfaces (spec 2.7, 2.8)."""
from __future__ import annotations

import pytest

from mln_core.errors import MlnError
from mln_core.model import format_size, parse_size
from mln_core.project import build_model, load_document, load_project

from .conftest import context


def load(write, text: str):
    """(project, problems) of ``text``; problems as 'line:col: severity: message'."""
    path = write(text)
    ctx = context()
    loaded = build_model(load_document(str(path), ctx), ctx)
    found = [f"{p.where.line}:{p.where.col}: {p.severity}: {p.message}"
             if hasattr(p.where, "line") else f"{p.where}: {p.severity}: {p.message}"
             for p in loaded.problems.items]
    return loaded.project, found


def errors(found):
    return [f for f in found if ": error: " in f]


@pytest.mark.parametrize("text, size", [
    ("1b", 512), ("3b", 1536),
    ("1K", 1024), ("2kB", 2000), ("2KB", 2000),
    ("128M", 128 * 2**20), ("5MB", 5 * 10**6),
    ("2G", 2 * 2**30), ("3GB", 3 * 10**9),
    ("4096", 4096), ("1.5G", 3 * 2**29),
])
def test_size_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12X", "12 M M", "-5M", "12m", "twelve", "1e3M", "5 kb"])
def test_bad_sizes(text):
    with pytest.raises(MlnError):
        parse_size(text)


def test_format_size():
    assert format_size(128 * 2**20) == "128M"
    assert format_size(2**30) == "1G"
    assert format_size(1536) == "1536"


def test_sizes_in_the_model(write):
    project, found = load(write, "global { project p }\nhost a {\n memory 64M\n size 2GB\n"
                                 " swap 1b\n free_space 10K\n}\n")
    assert errors(found) == []
    h = project.hosts["a"]
    assert (h.memory, h.size, h.swap, h.free_space) == (64 * 2**20, 2 * 10**9, 512, 10240)


def test_defaults_come_from_the_configuration(write, isolated_env):
    isolated_env.write_text("default_memory 48M\ndefault_size 1G\ndefault_template deb.ext4\n")
    project, _ = load(write, "global { project p }\nhost a {\n}\n")
    h = project.hosts["a"]
    assert (h.memory, h.size, h.template) == (48 * 2**20, 2**30, "deb.ext4")
    assert h.origins["memory"] == "default"


@pytest.mark.parametrize("line, message", [
    ("memory 12X", "bad memory '12X'"),
    ("size lots", "bad size 'lots'"),
    ("swap 1T2", "bad swap"),
    ("free_space -1M", "bad free_space"),
    ("boot_order 0", "boot_order must be a number from 1 to 99"),
    ("boot_order 100", "boot_order must be a number from 1 to 99"),
    ("boot_order first", "boot_order must be a number from 1 to 99"),
    ("nameserver 1.2.3", "bad nameserver"),
])
def test_bad_host_values_are_errors_at_their_line(write, line, message):
    _, found = load(write, f"global {{ project p }}\nhost a {{\n  xen\n  {line}\n}}\n")
    [err] = errors(found)
    assert err.startswith("4:3: error: ")
    assert message in err


@pytest.mark.parametrize("line, message", [
    ("address 10.0.0.300", "bad address '10.0.0.300'"),
    ("address auto", "only meaningful in an autoenum block"),
    ("netmask 255.0.255.0", "bad netmask '255.0.255.0'"),
    ("netmask 33", "bad netmask"),
    ("gateway foo", "bad gateway 'foo'"),
    ("broadcast 10.0.0", "bad broadcast"),
    ("mac 00:11", "bad MAC address '00:11'"),
    ("mac 00:11:22:33:44:gg", "bad MAC address"),
    ("switch nolan", "switch 'nolan' is not defined"),
])
def test_bad_network_values_are_errors_at_their_line(write, line, message):
    _, found = load(write, "global { project p }\nswitch lan {\n}\nhost a {\n"
                           f" network eth0 {{\n    {line}\n }}\n}}\n")
    [err] = errors(found)
    assert err.startswith("6:5: error: ")
    assert message in err


def test_good_network_values(write):
    project, found = load(write, "global { project p }\nswitch lan {\n}\nhost a {\n network eth0 {\n"
                                 "  switch lan\n  address 10.0.0.2\n  netmask 24\n"
                                 "  mac 0:16:3E:a:b:c\n  gateway 10.0.0.1\n }\n"
                                 " network eth1 {\n  address dhcp\n }\n}\n")
    assert errors(found) == []
    eth0, eth1 = project.hosts["a"].interfaces
    assert (eth0.switch, eth0.address, eth0.netmask, eth0.prefixlen) == \
        ("lan", "10.0.0.2", "255.255.255.0", 24)
    assert eth0.mac == "00:16:3e:0a:0b:0c"
    assert eth1.dhcp and eth1.address == "dhcp"


def test_switch_referenced_but_not_defined_names_the_known_ones(write):
    _, found = load(write, "global { project p }\nswitch lan {\n}\nswitch dmz {\n}\n"
                           "host a {\n network eth0 {\n  switch lna\n }\n}\n")
    [err] = errors(found)
    assert err.startswith("8:3: error: ")
    assert "'lna'" in err and "dmz, lan" in err


def test_switch_defined_in_a_superclass_network_block(write):
    project, found = load(write, "global { project p }\nswitch lan {\n}\n"
                                 "superclass s {\n network eth0 {\n  switch lan\n }\n}\n"
                                 "host a {\n superclass s\n network eth0 {\n  address dhcp\n }\n}\n")
    assert errors(found) == []
    assert project.switches["lan"].members == [("a", "eth0")]


def test_interfaces_sorted_by_index_without_gaps_lost(write):
    project, found = load(write, "global { project p }\nhost a {\n"
                                 " network eth10 {\n  address dhcp\n }\n"
                                 " network eth2 {\n  address dhcp\n }\n"
                                 " network eth0 {\n  address dhcp\n }\n}\n")
    assert errors(found) == []
    assert [(i.name, i.index) for i in project.hosts["a"].interfaces] == \
        [("eth0", 0), ("eth2", 2), ("eth10", 10)]


def test_host_without_eth0(write):
    project, _ = load(write, "global { project p }\nhost a {\n network eth1 {\n  address dhcp\n }\n}\n")
    assert [i.name for i in project.hosts["a"].interfaces] == ["eth1"]


def test_bad_interface_name_is_an_error(write):
    _, found = load(write, "global { project p }\nhost a {\n network wlan0 {\n  address dhcp\n }\n}\n")
    [err] = errors(found)
    assert err.startswith("3:2: error: ") and "wlan0" in err


@pytest.mark.parametrize("name", ["web-1", "Node07", "7up"])
def test_good_host_names(write, name):
    project, found = load(write, f"global {{ project p }}\nhost {name} {{\n}}\n")
    assert errors(found) == []
    assert list(project.hosts) == [name]
    assert project.hosts[name].fqname == f"{name}.p"


@pytest.mark.parametrize("name", ["web.1", "-web", "a:b", "we*b"])
def test_bad_host_names_through_check(mln, write, name):
    path = write(f"global {{ project p }}\nhost {name} {{\n}}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert f"{path}:2:1: error: bad host name" in err


def test_bad_host_name_from_a_variable(mln, write):
    path = write("global {\n project p\n $n = a.b\n}\nhost x$n {\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert f"{path}:5:1: error: bad host name 'xa.b'" in err


def test_bad_switch_name(mln, write):
    path = write("global { project p }\nswitch la/n {\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert f"{path}:2:1: error: bad switch name" in err


def test_bad_project_name(write):
    _, found = load(write, "global {\n project a/b\n}\n")
    [err] = errors(found)
    assert err.startswith("2:2: error: bad project name")


def test_hypervisor_flags(write, isolated_env):
    project, found = load(write, "global { project p }\nhost x {\n xen\n}\nhost h {\n xen\n hvm\n}\n"
                                 "host k {\n kvm\n}\nhost d {\n}\nhost n {\n hypervisor qemu\n}\n"
                                 "host two {\n xen\n kvm\n}\n")
    hv = {n: h.hypervisor for n, h in project.hosts.items()}
    assert hv == {"x": "xen", "h": "xen", "k": "qemu", "d": "uml", "n": "qemu", "two": "qemu"}
    [err] = errors(found)
    assert "more than one hypervisor" in err


def test_unknown_hypervisor_is_an_error_at_its_line(write):
    _, found = load(write, "global { project p }\nhost a {\n  hypervisor qmeu\n}\n")
    [err] = errors(found)
    assert err.startswith("3:3: error: unknown hypervisor 'qmeu' (known: ")
    assert "qemu" in err and "uml" in err


def test_users_groups_files_mounts(write):
    project, found = load(write, "global { project p }\nhost a {\n"
                                 " users {\n  bob $1$x$y /home/bob 1001\n  carol pw\n }\n"
                                 " groups {\n  admins {\n   bob carol\n  }\n }\n"
                                 " files {\n  src /etc/dst 644\n }\n"
                                 " mount {\n  /dev/sdb /data ext4 noatime,ro\n }\n"
                                 " startup {\n  echo hi\n }\n}\n")
    assert errors(found) == []
    h = project.hosts["a"]
    assert [(u.name, u.password, u.home, u.uid) for u in h.users] == \
        [("bob", "$1$x$y", "/home/bob", 1001), ("carol", "pw", None, None)]
    assert h.groups == {"admins": ["bob", "carol"]}
    assert [(f.source, f.destination, f.mode) for f in h.files] == [("src", "/etc/dst", "644")]
    assert [(m.source, m.mountpoint, m.fstype, m.options) for m in h.mounts] == \
        [("/dev/sdb", "/data", "ext4", "noatime,ro")]
    assert h.startup == ["echo hi"]


@pytest.mark.parametrize("block, line, message", [
    ("users", "bob $1$x$y /home/bob uid", "uid must be a number"),
    ("users", "Bad!User pw", "bad user name"),
    ("files", "onlysource", "source destination"),
    ("mount", "/dev/sdb /data", "source mountpoint fstype"),
])
def test_bad_block_lines_are_errors_at_their_line(write, block, line, message):
    _, found = load(write, f"global {{ project p }}\nhost a {{\n {block} {{\n   {line}\n }}\n}}\n")
    [err] = errors(found)
    assert err.startswith("4:4: error: ")
    assert message in err


def test_root_password_alias(write):
    project, _ = load(write, "global { project p }\nhost a {\n root_password $6$s$h\n}\n")
    assert project.hosts["a"].root_passwd == "$6$s$h"


def test_duplicate_address_is_a_warning(write):
    _, found = load(write, "global { project p }\nhost a {\n network eth0 {\n  address 10.0.0.1\n }\n}\n"
                           "host b {\n network eth0 {\n  address 10.0.0.1\n }\n}\n")
    assert errors(found) == []
    assert any(f.startswith("9:3: warning: address 10.0.0.1 of b eth0") for f in found)


def test_boot_sequence_orders_by_boot_order_then_file_order(write):
    project, _ = load(write, "global { project p }\nhost late {\n boot_order 50\n}\nhost a {\n}\n"
                             "host early {\n boot_order 1\n}\nhost b {\n}\n")
    assert [h.name for h in project.boot_sequence()] == ["early", "late", "a", "b"]


def test_global_without_project_is_an_error(write):
    _, found = load(write, "global {\n $x = 1\n}\nhost a {\n}\n")
    assert errors(found) == ["1:1: error: the 'global' block has no 'project NAME' line"]


def test_missing_global_is_an_error_for_a_project(write):
    path = write("host a {\n}\n")
    with pytest.raises(MlnError) as e:
        load_project(str(path), context())
    assert "no project name" in e.value.message


def test_load_project_raises_the_first_error_with_its_position(write):
    path = write("global { project p }\nhost a {\n memory 1X\n size 2Y\n}\n")
    with pytest.raises(MlnError) as e:
        load_project(str(path), context())
    assert (e.value.where.line, e.value.where.col) == (3, 2)
