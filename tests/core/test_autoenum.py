"""The autoenum plugin: numbered hosts from a superclass (spec 5.4, Listing 6)."""
from __future__ import annotations

import json
import shutil

import pytest

from mln_core.project import build_model, load_document

from .conftest import EXAMPLES, context

SUPER = ("superclass node {\n xen\n memory 256M\n network eth0 {\n  netmask 255.255.255.0\n"
         "  gateway 10.0.0.1\n }\n}\n")


def project_of(write, text: str):
    ctx = context()
    loaded = build_model(load_document(str(write(text)), ctx), ctx)
    return loaded.project, loaded.problems


def auto(body: str, extra: str = SUPER, group: str = "autoenum") -> str:
    return f"global {{\n project p\n {group} {{\n{body}\n }}\n}}\n{extra}"


def addr(host) -> str | None:
    eth0 = host.interface("eth0")
    return eth0.address if eth0 else None


def test_vcluster_example(write, monkeypatch, tmp_path):
    for f in ("vcluster.mln", "servers.txt"):
        shutil.copy(EXAMPLES / f, tmp_path / f)
    monkeypatch.chdir(tmp_path)
    ctx = context()
    loaded = build_model(load_document("vcluster.mln", ctx), ctx)
    assert loaded.problems.errors == []
    hosts = loaded.project.hosts
    assert list(hosts) == [f"node{i:02d}" for i in range(1, 37)]
    servers = [h.service_host for h in hosts.values()]
    assert servers == ["server1.example.org"] * 12 + ["server2.example.org"] * 12 + \
        ["server3.example.org"] * 12
    assert [addr(h) for h in hosts.values()] == [f"10.0.0.{i}" for i in range(10, 46)]
    for h in hosts.values():
        assert h.superclasses == ["cluster-node"]
        assert h.hypervisor == "xen"
        assert h.memory == 256 * 2**20
        assert h.free_space == 1000 * 2**20
        assert (h.interfaces[0].netmask, h.interfaces[0].gateway) == ("255.255.255.0", "10.0.0.1")


def test_vcluster_through_parse_queries(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    assert mln("parse", "-f", "vcluster.mln", "-S", "/host/node01/network/eth0/address")[1] == "10.0.0.10\n"
    assert mln("parse", "-f", "vcluster.mln", "-S", "/host/node36/network/eth0/address")[1] == "10.0.0.45\n"
    assert mln("parse", "-f", "vcluster.mln", "-S", "/host/node13/service_host")[1] == \
        "server2.example.org\n"
    assert mln("parse", "-f", "vcluster.mln", "-S", "/host/node25/service_host")[1] == \
        "server3.example.org\n"
    assert mln("parse", "-f", "vcluster.mln", "-S", "/host/node25/memory")[1] == "256M\n"


def test_hostprefix_defaults_to_node_and_pads_to_the_width_of_numhosts(write):
    project, problems = project_of(write, auto("  numhosts 10"))
    assert problems.errors == []
    assert list(project.hosts) == [f"node{i:02d}" for i in range(1, 11)]


@pytest.mark.parametrize("n, first, last", [(9, "web1", "web9"), (100, "web001", "web100"),
                                            (1, "web1", "web1")])
def test_zero_padding(write, n, first, last):
    project, _ = project_of(write, auto(f"  numhosts {n}\n  hostprefix web"))
    names = list(project.hosts)
    assert (len(names), names[0], names[-1]) == (n, first, last)


def test_superclass_is_applied(write):
    project, problems = project_of(write, auto("  numhosts 2\n  superclass node"))
    assert problems.errors == []
    for h in project.hosts.values():
        assert h.superclasses == ["node"]
        assert h.memory == 256 * 2**20
        assert h.interfaces[0].gateway == "10.0.0.1"


def test_address_auto_with_net_and_addresses_begin(write):
    project, problems = project_of(write, auto("  numhosts 3\n  superclass node\n  address auto\n"
                                               "  net 10.0.0.0\n  addresses_begin 10"))
    assert problems.errors == []
    assert [addr(h) for h in project.hosts.values()] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]


def test_address_auto_default_begin_and_bigger_net(write):
    project, problems = project_of(write, auto("  numhosts 300\n  address auto\n  net 10.1.0.0/16"))
    assert problems.errors == []
    hosts = list(project.hosts.values())
    assert (addr(hosts[0]), addr(hosts[254]), addr(hosts[299])) == ("10.1.0.1", "10.1.0.255", "10.1.1.44")


def test_service_hosts_forms(write):
    project, problems = project_of(write, auto("  numhosts 6\n  service_hosts {\n   a 2\n   b\n"
                                               "   c all\n  }"))
    assert problems.errors == []
    assert [h.service_host for h in project.hosts.values()] == ["a", "a", "b", "c", "c", "c"]


def test_service_hosts_short_list_leaves_the_rest_with_a_warning(write):
    project, problems = project_of(write, auto("  numhosts 3\n  service_hosts {\n   a\n  }"))
    assert [h.service_host for h in project.hosts.values()] == ["a", None, None]
    assert any("places 1 of 3 hosts" in p.message for p in problems.warnings)


def test_service_hosts_through_include(write, tmp_path):
    (tmp_path / "servers.txt").write_text("s1 1\ns2 all")   # no final newline
    project, problems = project_of(write, auto("  numhosts 3\n  service_hosts {\n#include servers.txt\n  }"))
    assert problems.errors == []
    assert [h.service_host for h in project.hosts.values()] == ["s1", "s2", "s2"]


def test_autouser(write):
    project, problems = project_of(write, auto("  numhosts 2\n  autouser $1$salt$hash"))
    assert problems.errors == []
    for name, h in project.hosts.items():
        assert [(u.name, u.password) for u in h.users] == [(name, "$1$salt$hash")]


def test_all_groups_autoenum0_to_autoenum5(write):
    groups = "".join(f" autoenum{i} {{\n  numhosts 1\n  hostprefix g{i}x\n }}\n" for i in range(6))
    project, problems = project_of(write, "global {\n project p\n autoenum {\n  numhosts 1\n }\n"
                                          + groups + "}\n")
    assert problems.errors == []
    assert sorted(project.hosts) == ["g0x1", "g1x1", "g2x1", "g3x1", "g4x1", "g5x1", "node1"]


def test_explicit_host_with_a_generated_name_keeps_its_own_settings(write):
    text = auto("  numhosts 3\n  superclass node\n  address auto\n  net 10.0.0.0\n"
                "  addresses_begin 10\n  service_hosts {\n   big all\n  }") + \
        "superclass special {\n memory 1G\n}\n" \
        "host node2 {\n superclass special\n service_host small\n network eth0 {\n  address 10.9.9.9\n }\n}\n"
    project, problems = project_of(write, text)
    assert problems.errors == []
    h = project.hosts["node2"]
    assert (h.superclasses, h.memory, h.service_host, addr(h)) == \
        (["special"], 2**30, "small", "10.9.9.9")
    h1 = project.hosts["node1"]
    assert (h1.superclasses, h1.service_host, addr(h1)) == (["node"], "big", "10.0.0.10")
    assert addr(project.hosts["node3"]) == "10.0.0.12"


def test_global_variables_in_autoenum_values(write):
    project, problems = project_of(write, "global {\n project p\n $n = 2\n $pre = web\n"
                                          " autoenum {\n  numhosts $n\n  hostprefix $pre\n }\n}\n")
    assert problems.errors == []
    assert list(project.hosts) == ["web1", "web2"]


def test_generated_hosts_appear_in_show(mln, write):
    path = write(auto("  numhosts 2\n  superclass node\n  address auto\n  net 10.0.0.0"))
    code, out, err = mln("show", "--format", "json", "-f", path)
    assert code == 0, err
    data = json.loads(out)
    assert list(data["hosts"]) == ["node1", "node2"]
    assert data["hosts"]["node2"]["interfaces"]["eth0"]["address"] == "10.0.0.2"


@pytest.mark.parametrize("body, line, message", [
    ("  numhosts many", 4, "numhosts must be a whole number"),
    ("  numhosts 0", 4, "numhosts must be a whole number"),
    ("  numhosts 3\n  superclass nope", 5, "unknown superclass 'nope'"),
    ("  numhosts 246\n  address auto\n  net 10.0.0.0\n  addresses_begin 10", 7, "do not fit"),
    ("  numhosts 255\n  address auto\n  net 10.0.0.0", 6, "do not fit"),
    ("  numhosts 2\n  address auto\n  net 10.0.0", 6, "bad net"),
    ("  numhosts 2\n  address static\n  net 10.0.0.0", 5, "only address mode is 'auto'"),
    ("  numhosts 2\n  address auto\n  net 10.0.0.0\n  addresses_begin ten", 7, "addresses_begin"),
    ("  numhosts 2\n  service_hosts {\n   a lots\n  }", 6, "must be a number or 'all'"),
    ("  numhosts 2\n  service_hosts {\n   a 1 2\n  }", 6, "a service_hosts line is"),
    ("  numhosts 2\n  hostprefix ../x", 5, "bad hostprefix '../x'"),
    ("  numhosts 2\n  hostprefix -x", 5, "bad hostprefix '-x'"),
])
def test_errors_have_positions_through_check(mln, write, body, line, message):
    path = write(auto(body))
    code, out, err = mln("check", "-f", path)
    assert code == 1, err
    errs = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errs) == 1, err
    assert errs[0].startswith(f"{path}:{line}:")
    assert message in errs[0]


def test_the_last_address_that_fits_is_accepted(write):
    project, problems = project_of(write, auto("  numhosts 245\n  address auto\n  net 10.0.0.0\n"
                                               "  addresses_begin 10"))
    assert problems.errors == []
    assert addr(list(project.hosts.values())[-1]) == "10.0.0.254"


def test_missing_numhosts_is_an_error(mln, write):
    path = write(auto("  hostprefix x"))
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert f"{path}:3:2: error: autoenum: 'numhosts N' is missing" in err


def test_unknown_autoenum_keyword_gets_a_suggestion(mln, write):
    path = write(auto("  numhosts 1\n  hostprefx x"))
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:5:3: warning: unknown keyword 'hostprefx'" in err
    assert "did you mean 'hostprefix'" in err


def test_undefined_variable_in_autoenum_is_reported_once_at_its_line(mln, write):
    path = write(auto("  numhosts 2\n  superclass $nothing"))
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert err.count(f"{path}:5:3: warning: variable $nothing is not defined") == 1, err
    assert f"{path}:5:3: error: autoenum: unknown superclass '$nothing'" in err
