"""``mln diff``: per-host differences of effective trees (spec 6.6), switches too; exit
status 0 same, 1 different, 2 error; bad input is one clear message."""
from __future__ import annotations

import json

import pytest

from mln_core.diff import Entry, diff_blocks, project_diff, render_text
from mln_core.lang.parser import parse_text

OLD = """global {
    project demo
    $net = 10.0.0
}
switch lan {
}
switch lan2 {
}
superclass base {
    memory 64M
    startup {
        echo base
    }
}
host web {
    superclass base
    network eth0 {
        switch lan
        address $net.1
    }
}
host db {
    superclass base
    memory 256M
    network eth0 {
        switch lan
        address $net.2
    }
}
host plain {
    network eth0 {
        switch lan
        address 10.9.9.9
    }
}
"""


def change(text: str, *pairs: tuple[str, str]) -> str:
    for a, b in pairs:
        assert a in text, a
        text = text.replace(a, b, 1)
    return text


@pytest.fixture
def diff(mln, write):
    """``diff(new_text, *args, old=OLD)``: mln diff of two files -> (code, stdout, stderr)."""
    def run(new: str, *args: str, old: str = OLD):
        return mln("diff", *args, write(old, "old.mln"), write(new, "new.mln"))
    return run


def one_error(code, out, err, exit_code=2) -> str:
    assert code == exit_code, (code, out, err)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mln: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------
# what shows where
# ---------------------------------------------------------------------------------------

def test_same_file_no_output_exit_0(diff):
    assert diff(OLD) == (0, "", "")


def test_superclass_change_reaches_exactly_the_hosts_that_use_the_value(diff):
    code, out, err = diff(change(OLD, ("memory 64M", "memory 128M")))
    assert (code, err) == (1, "")
    assert out == "host web (changed)\n  memory: 64M -> 128M\n"     # db overrides memory, plain has no base


def test_superclass_line_block_reaches_every_host_that_inherits_it(diff):
    code, out, _ = diff(change(OLD, ("echo base\n", "echo base\n        echo more\n")))
    assert code == 1
    block = "  startup: changed\n      echo base\n    + echo more\n"
    assert out == f"host web (changed)\n{block}host db (changed)\n{block}"


def test_global_variable_shows_in_the_hosts_using_it_not_its_definition(diff):
    code, out, _ = diff(change(OLD, ("$net = 10.0.0", "$net = 10.0.1")), "--format", "json")
    assert code == 1
    d = json.loads(out)
    assert list(d["hosts"]) == ["web", "db"] and d["switches"] == {}
    assert d["hosts"]["web"]["changes"] == [{"path": "network eth0 / address", "what": "changed",
                                             "kind": "value", "old": "10.0.0.1", "new": "10.0.1.1"}]
    assert d["hosts"]["db"]["changes"][0]["new"] == "10.0.1.2"
    assert "net" not in json.dumps(d).replace("network", "")      # no variable definition anywhere


def test_a_host_variable_is_ignored_but_its_effect_shows(diff):
    old = OLD.replace("host plain {\n", "host plain {\n    $m = 96M\n    memory $m\n")
    assert diff(old.replace("$m = 96M", "$m = 96M\n    $unused = 1"), old=old) == (0, "", "")
    code, out, _ = diff(old.replace("$m = 96M", "$m = 97M"), old=old)
    assert out == "host plain (changed)\n  memory: 96M -> 97M\n"


def test_interface_moved_to_another_switch(diff):
    moved = change(OLD, ("switch lan\n        address 10.9", "switch lan2\n        address 10.9"))
    code, out, _ = diff(moved)
    assert (code, out) == (1, "host plain (changed)\n  network eth0 / switch: lan -> lan2\n")


def test_blocks_added_and_removed_whole(diff):
    new = change(OLD, ("address 10.9.9.9\n    }\n", "address 10.9.9.9\n    }\n    network eth1 {\n"
                       "        switch lan2\n        address 10.0.1.5\n    }\n    nameserver 10.0.0.53\n"),
                 ("    memory 256M\n", ""),
                 ("    memory 64M\n    startup {\n        echo base\n    }\n", "    memory 64M\n"))
    code, out, _ = diff(new)
    assert code == 1
    assert out == ("host web (changed)\n"
                   "  startup: removed\n"
                   "    echo base\n"
                   "host db (changed)\n"
                   "  memory: 256M -> 64M\n"            # its own line gone: the superclass's shows
                   "  startup: removed\n"
                   "    echo base\n"
                   "host plain (changed)\n"
                   "  nameserver: added 10.0.0.53\n"
                   "  network eth1: added\n"
                   "    switch lan2\n"
                   "    address 10.0.1.5\n")


def test_keyword_removed_shows_the_old_value(diff):
    old = OLD.replace("host plain {\n", "host plain {\n    nameserver 10.0.0.53\n")
    code, out, _ = diff(OLD, old=old)
    assert out == "host plain (changed)\n  nameserver: removed 10.0.0.53\n"


def test_hosts_added_and_removed_and_switches(diff):
    new = change(OLD, ("host db {", "host db2 {"),
                 ("switch lan2 {\n}", "switch lan2 {\n    hub\n}\nswitch lan3 {\n}"),
                 ("switch lan {\n}\n", ""), *[("switch lan\n", "switch lan3\n")] * 3)
    code, out, err = diff(new)
    assert (code, err) == (1, "")
    assert out == ("host web (changed)\n"
                   "  network eth0 / switch: lan -> lan3\n"
                   "host db2 (added)\n"
                   "  superclass: added base\n"
                   "  memory: added 256M\n"
                   "  startup: added\n"
                   "    echo base\n"
                   "  network eth0: added\n"
                   "    switch lan3\n"
                   "    address 10.0.0.2\n"
                   "host plain (changed)\n"
                   "  network eth0 / switch: lan -> lan3\n"
                   "host db (removed)\n"
                   "switch lan2 (changed)\n"
                   "  hub: added\n"
                   "switch lan3 (added)\n"
                   "switch lan (removed)\n")


def test_line_blocks_compare_as_a_whole_list(diff):
    old = OLD.replace("host plain {\n", "host plain {\n    users {\n        alice x\n        bob y\n    }\n"
                      "    groups {\n        admin {\n            alice\n        }\n    }\n")
    new = old.replace("        bob y\n", "        bob z\n        carol w\n").replace("            alice\n",
                                                                                    "            alice bob\n")
    code, out, _ = diff(new, old=old)
    assert out == ("host plain (changed)\n"
                   "  users: changed\n"          # passwords compared, never shown
                   "      alice <secret>\n"
                   "    - bob <secret>\n"
                   "    + bob <secret>\n"
                   "    + carol <secret>\n"
                   "  groups: changed\n"
                   "      admin {\n"
                   "    -   alice\n"
                   "    +   alice bob\n"
                   "      }\n")
    # a plugin's line block (sshkey) too
    def sshkey(pub):
        return new.replace("host plain {\n", f"host plain {{\n    sshkey {{\n        root {pub}\n    }}\n")
    code, out, _ = diff(sshkey("a.pub"), old=sshkey("b.pub"))
    assert out == "host plain (changed)\n  sshkey: changed\n    - root b.pub\n    + root a.pub\n"


def test_a_nested_keyword_block_is_compared_key_by_key(diff):
    old = OLD.replace("host plain {\n",
                      "host plain {\n    apache {\n        port 80\n        docroot /a\n    }\n")
    code, out, _ = diff(old.replace("port 80", "port 8080"), old=old)
    assert out == "host plain (changed)\n  apache / port: 80 -> 8080\n"


def test_two_files_of_different_projects(diff):
    code, out, err = diff(change(OLD, ("project demo", "project other")), "--format", "json")
    assert (code, err) == (1, "")
    d = json.loads(out)
    assert d["project"] == {"old": "demo", "new": "other"} and d["differ"] is True
    assert d["hosts"] == {} and d["switches"] == {}
    assert diff(change(OLD, ("project demo", "project other")))[1] == "project demo -> other\n"


def test_json_shape(diff):
    code, out, _ = diff(change(OLD, ("memory 64M", "memory 128M"), ("host plain {", "host plain2 {")),
                        "--format", "json")
    assert code == 1
    d = json.loads(out)
    assert set(d) == {"project", "differ", "hosts", "switches"}
    assert d["hosts"]["web"] == {"status": "changed", "changes": [
        {"path": "memory", "what": "changed", "kind": "value", "old": "64M", "new": "128M"}]}
    assert d["hosts"]["plain2"]["status"] == "added"
    assert d["hosts"]["plain2"]["changes"] == [{"path": "network eth0", "what": "added", "kind": "block",
                                                "old": None, "new": "switch lan\naddress 10.9.9.9"}]
    assert d["hosts"]["plain"]["status"] == "removed"
    assert [c["what"] for c in d["hosts"]["plain"]["changes"]] == ["removed"]
    assert list(d["hosts"]) == ["web", "plain2", "plain"]
    code, out, _ = diff(OLD, "--format", "json")
    assert code == 0
    assert json.loads(out) == {"project": {"old": "demo", "new": "demo"}, "differ": False,
                               "hosts": {}, "switches": {}}


# ---------------------------------------------------------------------------------------
# the functions themselves
# ---------------------------------------------------------------------------------------

def _host(text: str, name: str):
    return parse_text(text, "t.mln").root.named("host")[name]


def test_diff_blocks_order_new_first_then_removed():
    old = _host("host a {\n x 1\n y 2\n network eth0 {\n  switch s\n }\n startup {\n  echo\n }\n}\n", "a")
    new = _host("host a {\n z 3\n y 4\n network eth1 {\n }\n}\n", "a")
    assert diff_blocks(old, new) == [
        Entry("z", "added", None, "3"), Entry("y", "changed", "2", "4"),
        Entry("network eth1", "added", None, "", "block"), Entry("x", "removed", "1", None),
        Entry("network eth0", "removed", "switch s", None, "block"),
        Entry("startup", "removed", "echo", None, "lines")]
    assert diff_blocks(old, old) == [] and diff_blocks(None, None) == []
    assert [e.what for e in diff_blocks(None, new)] == ["added"] * 3


def test_project_diff_against_nothing_adds_everything():
    from .conftest import context
    from mln_core.project import load_project
    new = load_project("t.mln", context(), text=OLD).project
    d = project_diff(None, new)
    assert [x["status"] for x in d["hosts"].values()] == ["added"] * 3
    assert list(d["switches"]) == ["lan", "lan2"]
    assert render_text(d).startswith("host web (added)\n  memory: added 64M\n")


# ---------------------------------------------------------------------------------------
# bad input: one line, exit status 2
# ---------------------------------------------------------------------------------------

def test_bad_file_names_file_and_line(diff):
    msg = one_error(*diff(change(OLD, ("memory 256M", "memory 12X"))))
    assert msg.startswith("mln: error: ") and "new.mln:24:5: bad memory '12X'" in msg


def test_missing_and_unreadable_files(mln, write, tmp_path):
    a = write(OLD, "a.mln")
    nope = tmp_path / "nope.mln"
    assert f"no such project file: {nope}" in one_error(*mln("diff", a, nope))
    assert "is a directory" in one_error(*mln("diff", tmp_path, a))
    bad = write(b"global { project \xff }\n", "bin.mln")
    assert "bin.mln:1:18: the file is not UTF-8 text" in one_error(*mln("diff", a, bad))
    frag = write("host x {\n}\n", "frag.mln")
    assert f"{frag}: no project name found" in one_error(*mln("diff", frag, a))


@pytest.mark.parametrize("args", [[], ["a.mln"], ["a.mln", "b.mln", "c.mln"], ["-f", "a.mln"],
                                  ["-p", "demo"], ["-p", "demo", "a.mln"],
                                  ["-p", "demo", "-f", "a.mln", "b.mln"],
                                  ["--format", "xml", "a.mln", "b.mln"]])
def test_usage_errors_exit_2(mln, args):
    code, out, err = mln("diff", *args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "Error: " in err


def test_missing_project(mln, write, tmp_path):
    msg = one_error(*mln("-P", tmp_path / "projects", "diff", "-p", "nope", "-f", write(OLD)))
    assert "no project 'nope' in " in msg and "(projects: there are none)" in msg


def test_help_is_documented(mln):
    code, out, _ = mln("diff", "--help")
    assert code == 0 and "mln diff OLD.mln NEW.mln" in out and "-p PROJECT -f NEW.mln" in out


# ---------------------------------------------------------------------------------------
# a built project against a file (mln as the user runs it, in a subprocess)
# ---------------------------------------------------------------------------------------

BUILT = """global {
    project difftest
    autoenum {
        superclass node
        numhosts 2
        address auto
        net 10.0.5.0
    }
}
switch lan {
}
superclass node {
    template busybox.ext4
    memory 64M
    network eth0 {
        switch lan
    }
}
host solo {
    template busybox.ext4
    network eth0 {
        switch lan
        address 10.0.6.1
    }
}
"""


def test_stored_project_against_a_file(mln_env):
    path = mln_env.write("difftest.mln", BUILT)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = mln_env.mln("diff", "-p", "difftest", "-f", str(path))
    assert (r.returncode, r.stdout) == (0, ""), r.output
    new = mln_env.write("new.mln", change(BUILT, ("memory 64M", "memory 96M"), ("numhosts 2", "numhosts 1"),
                                          ("address 10.0.6.1", "address 10.0.6.2")))
    r = mln_env.mln("diff", "-p", "difftest", "-f", str(new))
    assert r.returncode == 1, r.output
    assert r.stdout == ("host solo (changed)\n"                  # autoenum's hosts come after the file's
                        "  network eth0 / address: 10.0.6.1 -> 10.0.6.2\n"
                        "host node1 (changed)\n"
                        "  memory: 64M -> 96M\n"
                        "host node2 (removed)\n")
    r = mln_env.mln("diff", "--format", "json", "-p", "difftest", "-f", str(new))
    assert r.returncode == 1 and json.loads(r.stdout)["hosts"]["node2"]["status"] == "removed"
    r = mln_env.mln("diff", "-p", "nope", "-f", str(new))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("mln: error: no project 'nope' in ") and "difftest" in r.stderr
    nope = mln_env.root / "nope.mln"
    r = mln_env.mln("diff", "-p", "difftest", "-f", str(nope))
    assert (r.returncode, r.stderr.strip()) == (2, f"mln: error: no such project file: {nope}")
    assert mln_env.mln("remove", "-f", "-p", "difftest").returncode == 0
