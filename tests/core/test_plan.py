"""The upgrade plan without guests: which change is which, and which host lands in which
part of the plan (running hosts are simulated by their status)."""
from __future__ import annotations

import pytest

from mln_core.errors import MlnError
from mln_core.model import Project
from mln_core.plan import make_plan
from mln_core.project import load_project

from .conftest import context

BASE = """global { project p }
superclass node { uml
 template busybox.ext4
 memory 64M
 startup { echo hi } }
switch lan { }
switch lan2 { }
host a { superclass node
 network eth0 { switch lan
 address 10.0.0.1
 netmask 255.255.255.0 } }
host b { superclass node
 network eth0 { switch lan
 address 10.0.0.2
 netmask 255.255.255.0 } }
"""


def load(text: str):
    return load_project(None, context(), text=text).project


def plan(old: str, new: str, up=("a", "b"), live=frozenset(), version=3):
    o = load(old)
    status = {h: ("up" if h in up else "down") for h in o.hosts}
    return make_plan(o, load(new), status, version, context(), set(live))


def part(p, name):
    return next(h.action for h in p.hosts if h.name == name)


def kinds(p, name):
    return [c.kind for c in p.host(name).changes]


def test_nothing_changed_is_an_empty_plan():
    p = plan(BASE, BASE)
    assert p.empty and [h.action for h in p.hosts] == ["untouched", "untouched"]
    assert "nothing changes" in p.render_text()


@pytest.mark.parametrize("edit, kind, action", [
    (("host b { superclass node\n", "host b { superclass node\n memory 96M\n"), "memory", "restarted"),
    (("host b { superclass node\n", "host b { superclass node\n template other.ext4\n"), "template", "rebuilt"),
    (("host b { superclass node\n", "host b { superclass node\n size 300M\n"), "disk_grown", "rebuilt"),
    (("host b { superclass node\n", "host b { superclass node\n root_passwd x\n"), "configuration", "rebuilt"),
    (("address 10.0.0.2", "address 10.0.0.3"), "interface_changed", "rebuilt"),
    (("switch lan\n address 10.0.0.2", "switch lan2\n address 10.0.0.2"), "interface_moved", "restarted"),
])
def test_each_kind_of_change_of_a_running_uml_host(edit, kind, action):
    p = plan(BASE, BASE.replace(*edit))
    assert kinds(p, "b") == [kind]
    assert part(p, "b") == action           # UML applies nothing live
    assert part(p, "a") == "untouched"
    hb = p.host("b")
    assert hb.restart and hb.start and hb.running


def test_a_stopped_host_is_rebuilt_not_restarted():
    p = plan(BASE, BASE.replace("host b { superclass node\n", "host b { superclass node\n memory 96M\n"), up=())
    hb = p.host("b")
    assert hb.action == "rebuilt" and not hb.restart and not hb.start and not hb.disk
    assert not p.running


def test_hosts_and_switches_added_and_removed():
    new = BASE.replace("switch lan2 { }\n", "switch lan3 { }\n").replace("host a {", "host z {")
    p = plan(BASE, new)
    assert part(p, "z") == "added" and p.host("z").start      # the project runs
    assert part(p, "a") == "removed" and p.host("a").running
    assert {s.name: s.action for s in p.switches} == {"lan": "untouched", "lan3": "added", "lan2": "removed"}
    j = p.as_json()
    assert [x.get("host") or x.get("switch") for x in j["added"]] == ["z", "lan3"]
    p = plan(BASE, new, up=())
    assert not p.host("z").start                               # nothing runs: built only


def test_a_superclass_change_reaches_only_the_hosts_that_take_it():
    new = BASE.replace(" memory 64M\n", " memory 80M\n").replace(
        "host a { superclass node\n", "host a { superclass node\n memory 64M\n")
    p = plan(BASE, new)
    assert kinds(p, "a") == [] and kinds(p, "b") == ["memory"]


def test_a_variable_change_reaches_its_hosts():
    old = BASE.replace("global { project p }", "global { project p\n $m = 64M }").replace(
        " memory 64M\n", " memory $m\n")
    p = plan(old, old.replace("$m = 64M", "$m = 72M"))
    assert kinds(p, "a") == ["memory"] and kinds(p, "b") == ["memory"]


def test_refusals_name_the_host():
    grown = BASE.replace("host b { superclass node\n", "host b { superclass node\n size 400M\n")
    with pytest.raises(MlnError) as e:
        plan(grown, grown.replace("size 400M", "size 300M"))
    assert "never shrinks" in str(e.value) and "host b" in str(e.value)
    # the plan of one server's part: a host here in both has no move (mln_core.remote_upgrade moves hosts)
    p = plan(BASE, BASE.replace("host b { superclass node\n", "host b { superclass node\n service_host far\n"))
    assert p.host("b").action == "untouched"
    with pytest.raises(MlnError) as e:
        plan(BASE, BASE.replace("project p", "project q"))
    assert "names project 'q'" in str(e.value)
    o = load(BASE)
    with pytest.raises(MlnError) as e:
        make_plan(o, load(BASE.replace("host b { superclass node\n", "host b { superclass node\n memory 96M\n")),
                  {"a": "up", "b": "down: saved"}, 1, context())
    assert "mln stop -S" in str(e.value) and "host b" in str(e.value)


def test_live_list_keeps_the_guest_running():
    new = BASE.replace("host b { superclass node\n", "host b { superclass node\n root_passwd x\n")
    p = plan(BASE, new, live={"b"})
    hb = p.host("b")
    assert hb.action == "reconfigured_live" and not hb.restart and not hb.disk
    assert any("-l" in r for r in hb.reasons)


def test_a_build_plan_adds_everything():
    new = load(BASE)
    p = make_plan(Project(name="p"), new, {}, 0, context())
    assert [h.action for h in p.hosts] == ["added", "added"] and not any(h.start for h in p.hosts)
    assert {s.action for s in p.switches} == {"added"}
