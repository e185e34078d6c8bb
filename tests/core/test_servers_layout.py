"""Where the hosts and switches of a project run (mln_core.servers), without servers."""
from __future__ import annotations

import pytest

from mln_core.config import Config
from mln_core.errors import MlnError
from mln_core.servers import check_servers, configured, here, layout, part, vni


def config(*lines: str) -> Config:
    c = Config()
    for line in lines:
        key, value = line.split(None, 1)
        if key == "server":
            c.lists.setdefault(key, []).append(value)
        c.values[key] = value
    return c


def test_server_lines_are_read_with_user_port_and_options():
    servers = configured(config("server sh1 ssh 10.0.0.11", "server sh2 daemon admin@sh2.example.org:34001 x=1"))
    assert (servers["sh1"].transport, servers["sh1"].address, servers["sh1"].port) == ("ssh", "10.0.0.11", None)
    s2 = servers["sh2"]
    assert (s2.transport, s2.user, s2.address, s2.port, s2.options) == \
        ("daemon", "admin", "sh2.example.org", 34001, {"x": "1"})


@pytest.mark.parametrize("line, says", [("server sh1 ssh", "give NAME TRANSPORT ADDRESS"),
                                        ("server ../x ssh 1.2.3.4", "is not a server name"),
                                        ("server sh1 ssh 1.2.3.4:99999", "out of range"),
                                        ("server sh1 ssh 1.2.3.4 junk", "is not KEY=VALUE")])
def test_bad_server_lines_are_clear_errors(line, says):
    with pytest.raises(MlnError, match=says):
        configured(config(line))


def test_layout_parts_and_spans(mln_project):
    text = """global { project p }
switch lan { }
switch solo { }
host a { service_host sh1
  network eth0 { switch lan } }
host b { network eth0 { switch lan }
  network eth1 { switch solo } }
"""
    from mln_core.project import load_project
    p = mln_project(text)
    loaded = load_project(str(p.path), _ctx())
    project = loaded.project
    lay = layout(project, "me")
    assert lay.hosts == {"a": "sh1", "b": "me"}
    assert lay.switches == {"lan": ["sh1", "me"], "solo": ["me"]} and lay.spanning() == ["lan"]
    mine = part(project, {"here": "me", "default": "me"})
    assert sorted(mine.hosts) == ["b"] and sorted(mine.switches) == ["lan", "solo"]
    theirs = part(project, {"here": "sh1", "default": "me"})
    assert sorted(theirs.hosts) == ["a"] and sorted(theirs.switches) == ["lan"]
    placement = lay.placement("p", "sh1", {"sh1": "10.0.0.11", "me": "10.0.0.1"})
    assert placement["spans"] == {"lan": {"vni": vni("p", "lan"), "local": "10.0.0.11", "remotes": ["10.0.0.1"],
                                          "mtu": 1450}}
    with pytest.raises(MlnError, match="service host sh1 is not a server mln.conf knows"):
        check_servers(project, config("service_host me"))
    assert check_servers(project, config("service_host me", "server sh1 ssh 10.0.0.11")).servers == ["sh1", "me"]


def test_vnis_are_stable_in_range_and_differ_between_projects():
    assert vni("p", "lan") == vni("p", "lan")
    assert vni("p", "lan") != vni("q", "lan") and vni("p", "lan") != vni("p", "lan2")
    assert all(1 <= vni(f"p{i}", "s") <= 0xFFFFFF for i in range(2000))


def test_this_server_is_named_by_service_host():
    assert here(config()) == "localhost" and here(config("service_host sh9")) == "sh9"


def _ctx():
    from mln_core.context import Context
    from mln_core.plugins import make_plugin_manager
    return Context(config=Config(), pm=make_plugin_manager())


def test_two_projects_whose_switches_would_share_a_vni_are_refused(tmp_path):
    from mln_core.servers import vni_clash
    from mln_core.store import Store
    store = Store(str(tmp_path))
    for name, vnis in (("one", {"lan": 4242}), ("two", {"lan": 77})):
        d = tmp_path / name
        d.mkdir()
        (d / f"{name}.mln").write_text(f"global {{ project {name} }}\n")
        Store.write_state(str(d), {"hosts": {}, "switches": {s: {"span": {"vni": v}} for s, v in vnis.items()}})
    vni_clash(store, "three", {"wan": {"vni": 5}})                  # none shared: fine
    vni_clash(store, "one", {"lan": {"vni": 4242}})                  # its own: fine (a rebuild)
    with pytest.raises(MlnError, match="switch 'wan' of project 'three' would get VXLAN network 4242, which "
                                       "switch 'lan' of project 'one' has"):
        vni_clash(store, "three", {"wan": {"vni": 4242}})
