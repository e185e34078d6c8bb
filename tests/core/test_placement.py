"""Placement of hosts that name several servers or ``any`` (mln_core.placement), on given
free-memory figures: the decisions a user reads in the build's output."""
from __future__ import annotations

import pytest

from mln_core.errors import MlnError
from mln_core.placement import candidates, flexible, place
from mln_core.project import load_project
from mln_core.servers import layout, part

from .test_servers_layout import _ctx, check_servers, config

TEXT = """global { project p }
switch lan { }
switch other { }
host a { service_host sh1
  memory 256M
  network eth0 { switch lan } }
host b { service_host any
  memory 512M
  network eth0 { switch lan } }
host c { service_host sh2 sh3
  memory 1024M
  network eth0 { switch other } }
host d { service_host sh2 sh3
  memory 1024M
  network eth0 { switch other } }
"""


def load(mln_project, text=TEXT):
    return load_project(str(mln_project(text).path), _ctx()).project


def test_which_hosts_are_placed():
    assert candidates("any") == ["any"] and candidates("sh2 sh3") == ["sh2", "sh3"]
    assert candidates("sh1") is None and candidates(None) is None


def test_a_group_goes_whole_to_its_switch_partners_or_the_most_free(mln_project):
    project = load(mln_project)
    assert flexible(project) == {"b": ["any"], "c": ["sh2", "sh3"], "d": ["sh2", "sh3"]}
    wanted = {"b": ["me", "sh1", "sh2", "sh3"], "c": ["sh2", "sh3"], "d": ["sh2", "sh3"]}
    chosen, said = place(project, wanted, {"a": "sh1"}, {"me": 4000, "sh1": 1000, "sh2": 3000, "sh3": 2500})
    # b shares lan with a (on sh1, which has room); c and d share 'other' and go together
    assert chosen == {"b": "sh1", "c": "sh2", "d": "sh2"}
    assert "host b on sh1 (with its switch partners)" in said and "hosts c, d on sh2 (3000 MB free)" in said
    # no room for the pair anywhere: split, biggest first, each where most is free
    chosen, said = place(project, wanted, {"a": "sh1"}, {"me": 4000, "sh1": 100, "sh2": 1500, "sh3": 1200})
    assert chosen["b"] == "me" and {chosen["c"], chosen["d"]} == {"sh2", "sh3"}
    # a rebuild keeps a host where it was while it may still run there
    chosen, said = place(project, wanted, {"a": "sh1"}, {"me": 9000, "sh1": 9000, "sh2": 9000, "sh3": 9000},
                         previous={"c": "sh3", "d": "sh3", "b": "elsewhere"})
    assert chosen["c"] == chosen["d"] == "sh3" and "host c stays on sh3" in said


def test_a_host_that_fits_nowhere_is_named_with_what_each_server_has(mln_project):
    project = load(mln_project)
    with pytest.raises(MlnError, match=r"host c needs 1024 MB of memory and no server it may run on has that "
                                       r"much free \(sh2 900 MB, sh3 1000 MB\)"):
        place(project, {"c": ["sh2", "sh3"]}, {}, {"sh2": 900, "sh3": 1000})
    with pytest.raises(MlnError, match=r"no server answered"):
        place(project, {"c": ["sh2", "sh3"]}, {}, {})


def test_placed_hosts_shape_the_layout_and_each_part(mln_project):
    project = load(mln_project)
    placed = {"a": "sh1", "b": "sh1", "c": "sh3", "d": "sh3"}
    lay = layout(project, "me", placed=placed)
    assert lay.hosts == placed and lay.switches == {"lan": ["sh1"], "other": ["sh3"]}
    placement = lay.placement("p", "sh3", {"sh1": "10.0.0.11", "sh3": "10.0.0.13"})
    assert placement["hosts"] == placed
    assert sorted(part(project, placement).hosts) == ["c", "d"]
    # not placed yet (check, show): a list counts as its first server, any as this one
    assert layout(project, "me").hosts == {"a": "sh1", "b": "me", "c": "sh2", "d": "sh2"}
    with pytest.raises(MlnError, match="service host sh2, sh3 is not a server mln.conf knows"):
        check_servers(project, config("service_host me", "server sh1 ssh 10.0.0.11"))
