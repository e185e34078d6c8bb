"""``mln class``: copies of one lab from one table (mln_core.fanout, mln_core.cli_class),
without booting guests: tables, names, the checks that copies never collide, patterns,
the record and what ``status``/``list`` show. The builds here use a tiny ext4 template."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mln_core import classrecord, fanout
from mln_core.errors import MlnError

ROOT = Path(__file__).resolve().parents[2]
CLASSROOM = ROOT / "contrib" / "classroom"

LAB = """global {
    project lab
    $group = 1
    $public_ip = 192.0.2.1
}
switch lan$group {
}
host linux$group {
    template busybox.ext4
    memory 64M
    network eth0 {
        address $public_ip
        netmask 255.255.255.0
    }
    network eth1 {
        switch lan$group
        address 192.168.0.1
        netmask 255.255.255.0
    }
}
"""


@pytest.fixture
def dirs(tmp_path, isolated_env):
    """Projects, templates (busybox.ext4: a tiny ext4 image) and files directories; the
    UML kernel is /bin/true (never run: nothing boots here)."""
    for d in ("projects", "templates", "files"):
        (tmp_path / d).mkdir()
    with open(isolated_env, "a") as f:
        f.write("default_kernel /bin/true\n")
    tpl = tmp_path / "templates" / "busybox.ext4"
    if shutil.which("mkfs.ext4"):
        subprocess.run(["mkfs.ext4", "-q", "-F", str(tpl), "4M"], check=True, capture_output=True)
    else:
        tpl.write_bytes(b"")
    return tmp_path


@pytest.fixture
def cls(mln, dirs, monkeypatch):
    """``cls(*args)``: ``mln class ARGS`` with this test's directories, run in ``dirs``."""
    monkeypatch.chdir(dirs)

    def run(*args):
        return mln("-P", dirs / "projects", "-T", dirs / "templates", "-F", dirs / "files", "class", *args)
    return run


def can_build() -> bool:
    return bool(shutil.which("mkfs.ext4") and shutil.which("debugfs"))


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


# ---------------------------------------------------------------------------------------
# the documented example
# ---------------------------------------------------------------------------------------

def test_the_classroom_example_checks(cls):
    code, out, err = cls("check", "-f", CLASSROOM / "lab.mln", "-t", CLASSROOM / "groups.csv")
    assert code == 0, err
    assert "class oscourse, 20 copies, 0 errors" in err
    rows = out.splitlines()[1:]
    assert len(rows) == 20
    assert rows[0].split()[:3] == ["g01", "oscourse-g01", "alice"]
    assert rows[19].split()[:3] == ["g20", "oscourse-g20", "yvonne"]
    assert "linux7, desktop7" in rows[6] and "lan7" in rows[6]


def test_the_docs_show_the_example_files():
    doc = (ROOT / "docs" / "classes.md").read_text()
    for name in ("lab.mln", "groups.csv"):
        assert f'--8<-- "contrib/classroom/{name}"' in doc
    assert "## `mln class`" in (ROOT / "docs" / "commands.md").read_text()


# ---------------------------------------------------------------------------------------
# build, list, status, remove (no guest boots)
# ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not can_build(), reason="needs mkfs.ext4 and debugfs")
def test_build_list_status_rebuild_remove(cls, mln, dirs):
    (dirs / "lab.mln").write_text(LAB)
    (dirs / "t.csv").write_text("copy,group,owner,public_ip\n"
                                "a,1,alice,192.0.2.11\nb,2,bob,192.0.2.12\nc,3,,192.0.2.13\n")
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv", "-j", "1")
    assert code == 0, err
    assert [ln for ln in err.splitlines() if ln.startswith("+---> project lab-")
            and "(copy" in ln] == ["+---> project lab-a (copy a, alice)", "+---> project lab-b (copy b, bob)",
                                   "+---> project lab-c (copy c)"]
    projects = dirs / "projects"
    # each copy is an ordinary project whose stored file is that copy, self-contained
    stored = (projects / "lab-b" / "lab-b.mln").read_text()
    assert "host linux2 {" in stored and "$public_ip = 192.0.2.12" in stored and "#include" not in stored
    code, out, err = mln("-P", projects, "show", "-f", projects / "lab-b" / "lab-b.mln", "--format", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert list(shown["hosts"]) == ["linux2"] and "lan2" in shown["switches"]
    code, out, err = mln("-P", projects, "status", "-p", "lab-b")
    assert out.splitlines() == ["lab-b host linux2 down", "lab-b switch lan2 down"]
    # the record: owners shown by list and status
    record = json.loads((projects / ".classes" / "lab.json").read_text())
    assert [(c["copy"], c["project"], c["owner"]) for c in record["copies"]] == [
        ("a", "lab-a", "alice"), ("b", "lab-b", "bob"), ("c", "lab-c", None)]
    code, out, err = cls("list")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["lab", "3"]
    code, out, err = cls("list", "lab", "--format", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert [(d["copy"], d["owner"], d["version"]) for d in listed] == [("a", "alice", 1), ("b", "bob", 1),
                                                                      ("c", None, 1)]
    assert listed[0]["variables"]["public_ip"] == "192.0.2.11"
    code, out, err = cls("status", "lab", "--format", "json")
    assert code == 1                              # not every copy is up
    rows = json.loads(out)
    assert [(r["copy"], r["owner"], r["state"], r["hosts"]) for r in rows] == [
        ("a", "alice", "down", {"linux1": "down"}), ("b", "bob", "down", {"linux2": "down"}),
        ("c", None, "down", {"linux3": "down"})]
    code, out, err = cls("status", "lab", "b")
    assert out.splitlines()[1].split() == ["b", "lab-b", "bob", "down", "0/1"]
    code, out, err = mln("-P", projects, "list", "--format", "json")      # the plain listing says it too
    assert code == 0, err
    assert [(d["project"], d.get("class"), d.get("copy"), d.get("owner")) for d in json.loads(out)] == [
        ("lab-a", "lab", "a", "alice"), ("lab-b", "lab", "b", "bob"), ("lab-c", "lab", "c", None)]
    # built copies are not built again without -r; with a pattern, only that copy
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv")
    assert code == 1 and "project 'lab-a' was built before: add -r" in err and "nothing was built" in err
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv", "-r", "-q", "[bc]")
    assert code == 0, err
    assert [(projects / p / "version").read_text().strip() for p in ("lab-a", "lab-b", "lab-c")] == ["1", "2", "2"]
    # remove asks for -f without a terminal; then removes the copies and the class
    code, out, err = cls("remove", "lab")
    assert code == 1 and "add -f to confirm" in err
    code, out, err = cls("remove", "lab", "a", "-f", "-q")
    assert code == 0, err
    assert not (projects / "lab-a").exists() and (projects / "lab-b").exists()
    code, out, err = cls("list", "lab")
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["b", "c"]
    code, out, err = cls("remove", "lab", "-f", "-j", "2")
    assert code == 0, err
    assert "+---> project lab-b (copy b, bob)" in err and "class lab removed" in err
    assert sorted(p.name for p in projects.iterdir()) == []


@pytest.mark.skipif(not can_build(), reason="needs mkfs.ext4 and debugfs")
def test_a_failing_copy_does_not_stop_the_others(cls, dirs):
    (dirs / "lab.mln").write_text(LAB.replace("    memory 64M\n", "    memory 64M\n    files {\n        $src /etc/motd\n    }\n"))
    (dirs / "files" / "motd").write_text("welcome\n")
    (dirs / "t.csv").write_text("copy,group,src,public_ip\na,1,motd,192.0.2.1\nb,2,missing,192.0.2.2\n"
                                "c,3,motd,192.0.2.3\n")
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv", "-q")
    assert code == 1
    assert err.strip().splitlines()[-1] == "mln: error: build failed for 1 of 3 copies: b", err
    assert "missing" in err
    assert (dirs / "projects" / "lab-a").is_dir() and (dirs / "projects" / "lab-c").is_dir()
    assert not (dirs / "projects" / "lab-b").exists()
    code, out, err = cls("status", "lab")
    assert [ln.split()[3] for ln in out.splitlines()[1:]] == ["down", "not", "down"]
    assert cls("remove", "lab", "-f")[0] == 0


# ---------------------------------------------------------------------------------------
# bad tables: one message naming the file and line, exit 1, nothing built
# ---------------------------------------------------------------------------------------

BAD_TABLES = [
    ("dup_id", "copy,group\na,1\nb,2\na,3\n", "t.csv:4:1: copy id 'a' twice: also on line 2"),
    ("short_row", "copy,group,owner\na,1\n", "t.csv:2:1: 2 values, but the header has 3 columns"),
    ("long_row", "copy,group\na,1,x\n", "t.csv:2:1: 3 values, but the header has 2 columns"),
    ("bad_column", "copy,first name\na,1\n", "t.csv:1:1: bad column name 'first name'"),
    ("dup_column", "copy,group,group\na,1,2\n", "t.csv:1:1: column 'group' twice in the header"),
    ("empty", "\n# nothing\n\n", "the table t.csv is empty"),
    ("header_only", "copy,group\n", "t.csv:1:1: the table has a header line but no copies"),
    ("bad_id", "copy,group\n\n\nx y,1\n", "t.csv:4:1: bad copy id 'x y'"),
    ("empty_id", "copy,group\n,1\n", "t.csv:2:1: the copy id (column 'copy') is empty"),
    ("bad_project", "copy,project\na,../x\n", "t.csv:2:1: copy a: bad project name '../x'"),
    ("not_utf8", b"copy,owner\na,\xff\n", "t.csv:2:1: the table is not UTF-8 text"),
    ("quote", 'copy,owner\na,"open\n', "t.csv:2:1: bad CSV"),
]


@pytest.mark.parametrize("name, content, expected", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
@pytest.mark.parametrize("verb", ["check", "build"])
def test_bad_tables(cls, dirs, name, content, expected, verb):
    (dirs / "lab.mln").write_text(LAB)
    path = dirs / "t.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = cls(verb, "-f", "lab.mln", "-t", "t.csv")
    assert code == 1
    no_traceback(err)
    assert err.splitlines()[0] == f"mln: error: {expected}" or err.startswith(f"mln: error: {expected}"), err
    assert list((dirs / "projects").iterdir()) == []


def test_missing_files(cls, dirs):
    (dirs / "lab.mln").write_text(LAB)
    code, out, err = cls("check", "-f", "lab.mln", "-t", "nope.csv")
    assert (code, err) == (1, "mln: error: no such table file: nope.csv\n")
    code, out, err = cls("check", "-f", "nolab.mln", "-t", "nope.csv")
    assert (code, err) == (1, "mln: error: no such project file: nolab.mln\n")
    code, out, err = cls("check", "-f", "lab.mln")
    assert code == 1 and "no table of copies: give one with -t TABLE.csv" in err
    code, out, err = cls("check", "-f", "lab.mln", "-t", ".")
    assert code == 1 and "is a directory" in err
    code, out, err = cls("status", "nosuch")
    assert (code, err) == (1, f"mln: error: no class 'nosuch' in {dirs / 'projects'} (classes: there are none)\n")


def test_semicolons_and_comments_in_a_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff# exported\ncopy; group ; owner\n\ng1;1;Ada Lovelace\n# g2;2;later\ng3; 3 ;  \n")
    table = fanout.read_table(str(path))
    assert table.columns == ["copy", "group", "owner"]
    copies = fanout.copies_of(table, "c", False)
    assert [(c.id, c.pos.line, c.project, c.owner, c.variables) for c in copies] == [
        ("g1", 4, "c-g1", "Ada Lovelace", {"copy": "g1", "group": "1", "owner": "Ada Lovelace"}),
        ("g3", 6, "c-g3", None, {"copy": "g3", "group": "3"})]


# ---------------------------------------------------------------------------------------
# check: copies that would collide are refused before anything is built
# ---------------------------------------------------------------------------------------

def _check(cls, dirs, lab: str, table: str, *extra):
    (dirs / "lab.mln").write_text(lab)
    (dirs / "t.csv").write_text(table)
    code, out, err = cls("check", "-f", "lab.mln", "-t", "t.csv", *extra)
    no_traceback(err)
    return code, out, err


def test_an_address_outside_the_copies_switches_must_differ(cls, dirs):
    code, out, err = _check(cls, dirs, LAB, "copy,group,public_ip\ng1,1,192.0.2.11\ng2,2,192.0.2.11\n"
                                            "g3,3,192.0.2.13\n")
    assert code == 1
    assert ("lab.mln:12:9: error: address 192.0.2.11: copy g1 (host linux1 eth0) and copy g2 (host linux2 eth0) "
            "would both have it") in err
    assert "192.168.0.1" not in err                 # on the copy's own switch: every copy may have it
    assert "1 error," in err
    # and build refuses the same table with the same message, building nothing
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv")
    assert code == 1 and "address 192.0.2.11: copy g1" in err and "nothing was built" in err
    assert list((dirs / "projects").iterdir()) == []


def test_an_explicit_mac_is_refused_naming_every_copy(cls, dirs):
    lab = LAB.replace("        switch lan$group\n", "        switch lan$group\n        mac 52:54:00:00:00:01\n")
    rows = "".join(f"g{i},{i},192.0.2.{i}\n" for i in range(1, 7))
    code, out, err = _check(cls, dirs, lab, "copy,group,public_ip\n" + rows)
    assert code == 1
    assert ("lab.mln:17:9: error: MAC address 52:54:00:00:00:01: copy g1 (host linux1 eth1), copy g2 (host linux2 "
            "eth1), copy g3 (host linux3 eth1) and 3 more copies would all have it") in err
    code, out, err = _check(cls, dirs, lab.replace("00:00:01", "00:00:0$group"), "copy,group,public_ip\n" + rows)
    assert code == 0, err                            # a variable makes them differ


def test_duplicate_and_foreign_project_names(cls, dirs):
    code, out, err = _check(cls, dirs, LAB, "copy,project,group,public_ip\na,same,1,192.0.2.1\n"
                                            "b,same,2,192.0.2.2\n")
    assert code == 1 and "t.csv:3:1: error: copies a and b would both be project 'same'" in err
    # a project of that name that is not a copy of this class
    (dirs / "projects" / "lab-b").mkdir()
    (dirs / "projects" / "lab-b" / "lab-b.mln").write_text("global { project lab-b }\n")
    code, out, err = _check(cls, dirs, LAB, "copy,group,public_ip\na,1,192.0.2.1\nb,2,192.0.2.2\n")
    assert code == 1
    assert "t.csv:3:1: error: project 'lab-b' exists and is not a copy of class lab" in err


def test_vnc_displays_bridges_and_forwarded_ports(cls, dirs):
    lab = LAB.replace("    memory 64M\n", "    memory 64M\n    vncdisplay $vnc\n") \
             .replace("switch lan$group {\n}", "switch lan$group {\n    type bridge\n    bridge br-class\n}")
    code, out, err = _check(cls, dirs, lab, "copy,group,public_ip,vnc\na,1,192.0.2.1,7\nb,2,192.0.2.2,7\n")
    assert code == 1
    assert "error: VNC display 7: copy a (host linux1) and copy b (host linux2) would both have it" in err
    assert "error: bridge br-class: copy a (switch lan1) and copy b (switch lan2) would both have it" in err


def test_a_lab_error_is_reported_once_for_all_copies(cls, dirs):
    code, out, err = _check(cls, dirs, LAB.replace("memory 64M", "memory 64X"),
                            "copy,group,public_ip\na,1,192.0.2.1\nb,2,192.0.2.2\nc,3,192.0.2.3\n")
    assert code == 1
    lines = [ln for ln in err.splitlines() if "bad memory" in ln]
    assert len(lines) == 1 and lines[0].startswith("lab.mln:10:5: error:") and "[copies a, b, c]" in lines[0]
    code, out, err = _check(cls, dirs, LAB, "copy,group,public_ip\na,1,192.0.2.1\nb,2,10.0.300.1\n")
    assert code == 1 and "error: bad address '10.0.300.1'" in err and "[copy b]" in err


def test_unknown_service_host_and_template(cls, dirs):
    code, out, err = _check(cls, dirs, LAB.replace("busybox.ext4", "other.ext4"),
                            "copy,group,public_ip,service_host\na,1,192.0.2.1,\nb,2,192.0.2.2,sh9\n")
    assert code == 1
    assert "service host sh9 is not a server mln.conf knows" in err and "[copy b]" in err
    assert "unknown template 'other.ext4'" in err and "[copy a]" in err


# ---------------------------------------------------------------------------------------
# the seed's pattern, the copies block, names
# ---------------------------------------------------------------------------------------

SEED_SHARED = """# the course network shared by all groups (no global block)
switch lan {
}
host linux {
    template busybox.ext4
    root_passwd $password
    network eth0 {
        address $public_ip
        netmask 255.255.255.0
    }
    network eth1 {
        switch lan
        address 192.168.0.1
        netmask 255.255.255.0
    }
}
"""


def test_the_seeds_shared_file_is_a_lab(cls, dirs):
    (dirs / "oscourse.mln").write_text(SEED_SHARED)
    (dirs / "groups.csv").write_text("group,public_ip,password\n07,192.0.2.107,s3cret\n08,192.0.2.108,0ther\n")
    code, out, err = cls("check", "-f", "oscourse.mln", "-t", "groups.csv")
    assert code == 1 and "has no 'project' line: give the class a name with --name NAME" in err
    code, out, err = cls("check", "-f", "oscourse.mln", "-t", "groups.csv", "--name", "oscourse")
    assert code == 0, err
    assert [ln.split()[:2] for ln in out.splitlines()[1:]] == [["07", "oscourse-07"], ["08", "oscourse-08"]]
    plan = fanout.plan(str(dirs / "oscourse.mln"), str(dirs / "groups.csv"), "oscourse")
    from .conftest import context
    loaded = fanout.load_copy(context(), plan.lab, plan.copies[1], plan.named_by_lab)
    assert loaded.project.name == "oscourse-08"
    assert loaded.project.hosts["linux"].interfaces[0].address == "192.0.2.108"
    assert "$password = 0ther" in plan.copies[1].text and "project oscourse-08" in plan.copies[1].text


@pytest.mark.skipif(not can_build(), reason="needs mkfs.ext4 and debugfs")
def test_a_copies_block_and_a_project_line_with_variables(cls, dirs):
    lab = ("global {\n    project course-$group\n    $group = 1\n}\nswitch lan { }\n"
           "host h$group { template busybox.ext4; network eth0 { switch lan; address 10.0.$group.1 } }\n"
           "copies {\n    copy group owner    password\n    a    1     alice    pw1\n    b    2     bob\\ smith pw2\n}\n")
    (dirs / "lab.mln").write_text(lab)
    code, out, err = cls("check", "-f", "lab.mln")
    assert code == 1 and "names its project 'course-$group' with variables: give the class a name" in err
    code, out, err = cls("build", "-f", "lab.mln", "--name", "course", "-q")
    assert code == 0, err
    stored = (dirs / "projects" / "course-2" / "course-2.mln").read_text()
    assert "host h2 {" in stored and "copies" not in stored and "$owner = bob smith" in stored
    code, out, err = cls("list", "course")
    assert out.splitlines()[2].split()[:3] == ["b", "course-2", "bob"]
    assert "password=<secret>" in out and "pw2" not in out
    assert cls("remove", "course", "-f", "-q")[0] == 0


def test_patterns_select_copies():
    record = {"class": "c", "copies": [{"copy": f"g{i:02d}", "project": f"c-g{i:02d}"} for i in range(1, 13)]}
    ids = lambda *p: [c["copy"] for c in classrecord.select(record, p)]    # noqa: E731
    assert ids() == [f"g{i:02d}" for i in range(1, 13)]
    assert ids("g0[1-3]", "g12") == ["g01", "g02", "g03", "g12"]
    assert ids("g1*", "g10") == ["g10", "g11", "g12"]
    assert ids("c-g05") == ["g05"]
    with pytest.raises(MlnError, match=r"no copy of class c matches 'x\*' \(copies: g01, g02, .* \.\.\.\)"):
        classrecord.select(record, ["x*"])


def test_derived_macs_are_the_backends():
    from mln_backends.runtime import mac_address
    assert fanout.derived_mac("uml", "p", "h", "eth0") == mac_address("fe:fd:00", "p", "h", "eth0")
    assert fanout.derived_mac("qemu", "p", "h", "eth1") == mac_address("52:54:00", "p", "h", "eth1")


def test_help(mln):
    code, out, err = mln("help", "class")
    assert code == 0 and "reset" in out and "status" in out
    code, out, err = mln("class", "reset", "--help")
    assert code == 0 and "started again if they ran" in out


def test_a_lab_may_leave_names_to_the_table_and_dollars_stay_dollars(cls, dirs):
    (dirs / "lab.mln").write_text("global { project nodef }\nswitch lan$group { }\n"
                                  "host h$group { template busybox.ext4; startup { echo costs $price }\n"
                                  "    network eth0 { switch lan$group } }\n")
    (dirs / "t.csv").write_text("copy,group,price\na,1,\\$5\nb,2,$6$salt$hash\n")
    code, out, err = cls("check", "-f", "lab.mln", "-t", "t.csv")
    assert code == 0, err
    assert [ln.split()[3:] for ln in out.splitlines()[1:]] == [["h1", "lan1"], ["h2", "lan2"]]
    from .conftest import context
    plan = fanout.plan(str(dirs / "lab.mln"), str(dirs / "t.csv"))
    startups = [fanout.load_copy(context(), plan.path, c, False).project.hosts[c.hosts[0]].startup
                for c in plan.copies]
    assert startups == [["echo costs $5"], ["echo costs $6$salt$hash"]]


def test_a_service_host_column_places_the_copys_hosts(cls, dirs, isolated_env):
    with open(isolated_env, "a") as f:
        f.write("server here1 local\n")
    lab = LAB.replace("switch lan$group {\n}", "switch lan$group {\n}\nhost other$group {\n    service_host here1\n"
                                               "    template busybox.ext4\n}")
    code, out, err = _check(cls, dirs, lab, "copy,group,public_ip,service_host\na,1,192.0.2.1,\n"
                                            "b,2,192.0.2.2,here1\n")
    assert code == 0, err
    plan = fanout.plan(str(dirs / "lab.mln"), str(dirs / "t.csv"))
    from .conftest import context
    texts = []
    for c in plan.copies:
        fanout.load_copy(context(), plan.path, c, False)
        texts.append(c.text)
    assert "service_host" not in texts[0].split("host linux1 {")[1]
    assert "service_host here1" in texts[1].split("host linux2 {")[1]


def test_vxlan_networks_of_switches_over_servers(cls, dirs, isolated_env, monkeypatch):
    """Identifiers are hashes of project and switch names: a clash is made here."""
    with open(isolated_env, "a") as f:
        f.write("server sh1 ssh 10.0.0.11\n")
    monkeypatch.setattr("mln_core.servers.vni", lambda project, switch: 4242)
    lab = LAB.replace("switch lan$group {\n}", "switch lan$group {\n}\nhost far$group {\n    service_host sh1\n"
                                               "    network eth0 {\n        switch lan$group\n    }\n}")
    code, out, err = _check(cls, dirs, lab, "copy,group,public_ip\na,1,192.0.2.1\nb,2,192.0.2.2\n")
    assert code == 1
    assert "error: VXLAN network 4242: copy a (switch lan1) and copy b (switch lan2) would both" in err, err
    (dirs / "projects" / "other").mkdir()
    (dirs / "projects" / "other" / "other.mln").write_text("global { project other }\n")
    (dirs / "projects" / "other" / "state.json").write_text(json.dumps(
        {"hosts": {}, "switches": {"net": {"span": {"vni": 4242}}}}))
    code, out, err = _check(cls, dirs, lab, "copy,group,public_ip\na,1,192.0.2.1\n")
    assert code == 1
    assert "VXLAN network 4242: copy a (switch lan1) would have the one of switch net of project other" in err


@pytest.mark.skipif(not can_build(), reason="needs mkfs.ext4 and debugfs")
def test_a_variable_used_in_a_secret_is_never_listed(cls, dirs):
    """Whatever its column is called: used as root_passwd (or a users password), it is a secret."""
    hashed = "$6$salt$" + "x" * 20
    (dirs / "lab.mln").write_text(LAB.replace("    memory 64M\n", "    memory 64M\n    root_passwd $rootpw\n"))
    (dirs / "t.csv").write_text(f"copy,group,rootpw,public_ip\na,1,\\{hashed},192.0.2.11\n")
    code, out, err = cls("build", "-f", "lab.mln", "-t", "t.csv", "-j", "1", "-q")
    assert code == 0, err
    for args in (("list", "lab"), ("list", "lab", "--format", "json")):
        code, out, err = cls(*args)
        assert code == 0 and "salt" not in out and "xxxx" not in out, out
    listed = json.loads(cls("list", "lab", "--format", "json")[1])
    assert listed[0]["variables"]["rootpw"] == "<secret>" and listed[0]["variables"]["public_ip"] == "192.0.2.11"
    assert cls("remove", "lab", "-f")[0] == 0
