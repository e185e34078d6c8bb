"""Hostile and absurd input: names that are paths, input without bounds, values no field
can hold. Each ends in one clear message (with file:line:col where there is a line) and
exit 1 — never in a file outside its directory, hours of work, all of the memory, or an
internal error (exit 70). Many inputs are generated (hypothesis).
"""
from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mln_core import limits
from mln_core.cli import main
from mln_core.errors import MlnError
from mln_core.guest import GuestFS
from mln_core.model import FileCopy
from mln_core.names import name_problem
from mln_core.store import Store
from mln_core.templates import TemplateRegistry

from .conftest import plugin_manager

SETTINGS = settings(max_examples=int(os.environ.get("MLN_FUZZ_EXAMPLES", 60)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
POSITIONED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): error: ", re.M)


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_clean_failure(code: int, err: str) -> None:
    """Exit 1 with an error message: no internal error, no traceback."""
    assert code == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "error: " in err, err


def check(path) -> tuple[int, str]:
    code, _, err = run("check", "-f", path)
    assert code in (0, 1) and "internal error" not in err and "Traceback" not in err, err
    return code, err


def project(body: str, globals_: str = "") -> str:
    return f"global {{\n project p\n{globals_}}}\n{body}"


# ---------------------------------------------------------------------------------------
# 1. names that are paths
# ---------------------------------------------------------------------------------------

PATH_PARTS = ["..", ".", "", "x", "victim", "a b", "~", "-", ".hidden", "é", "x" * 300, "\\", "p.q"]
path_like = st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=5).map("/".join).filter(bool)
word_path = path_like.filter(lambda t: not any(c.isspace() or c in "\\{};#$" for c in t))
any_name = st.one_of(path_like, st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t))


@SETTINGS
@given(any_name)
def test_an_accepted_name_is_one_short_component_of_its_directory(name):
    for kind in ("project", "host", "switch", "superclass", "template"):
        if name_problem(kind, name) is None:
            assert "/" not in name and name not in (".", "..") and not name.startswith(".")
            assert len(name.encode()) <= limits.MAX_NAME <= limits.MAX_COMPONENT
            base = "/srv/dir"
            assert os.path.dirname(os.path.normpath(os.path.join(base, name))) == base


@pytest.fixture
def victim(tmp_path):
    """A projects directory and, beside it, a directory ``victim`` that a project name with
    ``..`` would reach: with these, ``remove -f -p x/../../victim`` once deleted it."""
    projects = tmp_path / "projects"
    (projects / "x").mkdir(parents=True)
    (projects / ".x").mkdir()
    v = tmp_path / "victim"
    (v / "x").mkdir(parents=True)
    (v / "data").write_text("keep")
    (tmp_path / "victim.mln").write_text("global {\n project victim\n}\n")
    return projects, v


def test_remove_refuses_a_project_name_that_is_a_path(victim):
    projects, v = victim
    code, _, err = run("-P", projects, "remove", "-f", "-p", "x/../../victim")
    assert_clean_failure(code, err)
    assert err.count("error") == 1 and "bad project name 'x/../../victim'" in err
    assert (v / "data").read_text() == "keep"


@SETTINGS
@given(path_like, st.sampled_from([("remove", "-f"), ("status",), ("start",), ("stop", "-H"), ("list",)]))
def test_no_project_name_reaches_outside_the_projects_directory(victim, name, command):
    projects, v = victim
    args = [*command] + ([] if command == ("list",) else ["-p", name])
    code, _, err = run("-P", projects, *args)
    assert "internal error" not in err and "Traceback" not in err, err
    if command != ("list",):
        assert code == 1, err
        if name_problem("project", name):
            assert "bad project name" in err or "project name '" in err, err
    assert (v / "data").read_text() == "keep" and (v / "x").is_dir()
    assert sorted(os.listdir(projects.parent)) == ["projects", "victim", "victim.mln"]
    assert all(n in ("x", ".x") or n.endswith(".lock") for n in os.listdir(projects))   # a lock file at most


def test_store_checks_every_name_that_becomes_a_path(tmp_path):
    store = Store(str(tmp_path / "projects"))
    for call in (store.project_dir, store.exists, store.require, store.lock, store.staging_dir,
                 store.source_path, store.version, store.clean_stale_builds):
        with pytest.raises(MlnError, match="bad project name"):
            call("../escape")


def test_a_projects_directory_that_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "projects"
    f.write_text("not a directory")
    for args in (("list",), ("status", "-p", "p"), ("remove", "-f", "-p", "p"), ("status",)):
        code, _, err = run("-P", f, *args)
        assert_clean_failure(code, err)
        assert "is not a directory" in err
    with pytest.raises(MlnError, match="is not a directory"):
        Store(str(f)).lock("p").__enter__()


@pytest.mark.parametrize("template", ["../../../etc/passwd", "/etc/passwd", "a/b.ext4", "..", ".hidden",
                                      "x" * 300])
def test_a_template_is_a_file_of_the_templates_directory(write, template):
    path = write(project(f"host a {{\n template {template}\n}}\n"))
    code, err = check(path)
    assert code == 1
    assert f"{path}:5:2: error: " in err and "template name" in err, err


def test_the_registry_refuses_template_names_that_are_paths(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "templates"))
    with pytest.raises(MlnError, match="bad template name"):
        reg.resolve("../../../etc/passwd", "host a")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "templates.list").write_text("ok ok.ext4 1MB - ''\nevil ../../etc/passwd 1MB - ''\n")
    with pytest.raises(MlnError, match=r"templates.list:2: the file of template 'evil' must be a file of the "
                                       r"templates directory, not '\.\./\.\./etc/passwd'"):
        reg.entries()


@pytest.mark.parametrize("args, message", [
    (("-n", "../evil"), "bad template name '../evil'"),
    (("-n", "/etc/evil"), "bad template name '/etc/evil'"),
    (("-n", "x" * 300), "is 300 characters long"),
])
def test_register_template_refuses_names_that_are_paths(tmp_path, args, message):
    image = tmp_path / "img.ext4"
    image.write_bytes(b"\0" * 1024)
    code, _, err = run("-T", tmp_path / "templates", "register_template", "-t", image, *args)
    assert_clean_failure(code, err)
    assert message in err
    assert not (tmp_path / "evil").exists() and not os.path.exists("/etc/evil")


def test_register_template_refuses_an_image_named_like_the_registry(tmp_path):
    image = tmp_path / "templates.list"
    image.write_bytes(b"\0" * 1024)
    code, _, err = run("-T", tmp_path / "templates", "register_template", "-t", image)
    assert_clean_failure(code, err)
    code, _, err = run("-T", tmp_path / "file", "register_template", "-t", image)
    assert_clean_failure(code, err)
    (tmp_path / "tfile").write_text("")
    code, _, err = run("-T", tmp_path / "tfile", "register_template", "-t", tmp_path / "templates.list", "-n", "t")
    assert_clean_failure(code, err)
    assert "is not a directory" in err


@SETTINGS
@given(word_path, word_path)
def test_files_sources_stay_in_the_files_directory_and_targets_are_guest_paths(tmp_path, source, target):
    path = tmp_path / "f.mln"
    path.write_text(project(f"host a {{\n files {{\n  {source} /{target}\n  ok {target} 0644\n }}\n}}\n"))
    code, err = check(path)
    parts = source.split("/")
    if source.startswith(("/", "~")) or ".." in parts:
        assert code == 1 and f"{path}:6:3: error: files source" in err, err
    if not target.startswith("/"):
        assert code == 1 and f"{path}:7:3: error: files destination" in err, err


@pytest.mark.parametrize("line, message", [
    ("motd /etc/motd 999", "files mode must be octal"),
    ("motd /etc/motd 77777", "files mode must be octal"),
    ("motd /etc/motd rw", "files mode must be octal"),
    ("motd etc/motd", "must be an absolute path in the guest"),
    ("/etc/shadow /x", "must be a path inside the files directory"),
    ("a/../../x /x", "goes up with '..'"),
    ("x" * 256 + " /x", "a file name is at most 255 bytes"),
])
def test_files_lines_are_checked_with_their_position(write, line, message):
    path = write(project(f"host a {{\n files {{\n  {line}\n }}\n}}\n"))
    code, err = check(path)
    assert code == 1 and f"{path}:6:3: error: " in err and message in err, err


class MemoryGuest(GuestFS):
    """A guest filesystem in a dict: path -> bytes, or None for a directory."""

    def __init__(self):
        self.files: dict[str, bytes | None] = {"/": None}

    def read(self, path):
        return self.files.get(path) or None

    def exists(self, path):
        return path in self.files

    def is_dir(self, path):
        return path in self.files and self.files[path] is None

    def listdir(self, path):
        return sorted(p.rsplit("/", 1)[1] for p in self.files if posixpath.dirname(p) == path and p != "/")

    def write(self, path, data, mode=0o644, uid=0, gid=0):
        assert path.startswith("/") and posixpath.dirname(path) in self.files
        self.files[path] = bytes(data)

    def mkdir(self, path, mode=0o755, uid=0, gid=0):
        self.files.setdefault(path, None)

    def symlink(self, target, path):
        self.files[path] = b"->" + target.encode()

    def remove(self, path):
        self.files.pop(path, None)

    def chmod(self, path, mode):
        pass

    def chown(self, path, uid, gid):
        pass


def test_links_in_a_files_source_bring_nothing_of_the_host_into_the_guest(tmp_path):
    from mln_plugins import guestconfig
    files = tmp_path / "files"
    tree = files / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    (files / "beside.txt").write_text("beside")
    (tree / "etc").symlink_to("/etc")                   # all of /etc
    (tree / "passwd").symlink_to("/etc/passwd")          # one host file
    (tree / "up").symlink_to("..")                      # the files directory, outside the source
    (tree / "beside").symlink_to("../beside.txt")       # a file outside the source
    (tree / "inner").symlink_to("a.txt")                # inside: copied
    (tree / "sub" / "loop").symlink_to("..")            # inside, but a loop
    os.mkfifo(tree / "fifo")                            # would block a copy
    warnings: list[str] = []
    ctx = SimpleNamespace(config=SimpleNamespace(files_dir=str(files)), log=warnings.append)
    host = SimpleNamespace(name="web", files=[FileCopy("tree", "/dst")])
    guest = MemoryGuest()
    guestconfig._files(host, guest, ctx)
    copied = {p: d for p, d in guest.files.items() if p.startswith("/dst/")}
    assert copied == {"/dst/a.txt": b"a", "/dst/inner": b"a", "/dst/sub": None, "/dst/sub/b.txt": b"b"}
    text = "\n".join(warnings)
    for name in ("etc", "passwd", "up", "beside", "loop", "fifo"):
        assert re.search(rf"warning: host web: files: skipping '[^']*/{name}'", text), text
    (files / "escape").symlink_to("/etc/passwd")        # the source itself leads out: refused
    with pytest.raises(MlnError, match="outside the files directory"):
        guestconfig._files(SimpleNamespace(name="web", files=[FileCopy("escape", "/x")]), guest, ctx)


def test_mln_conf_paths_are_checked_where_they_are_set(tmp_path, monkeypatch):
    conf = tmp_path / "mln.conf"
    conf.write_text(f"projects {tmp_path}/{'x' * 300}\n")
    monkeypatch.setenv("MLN_CONFIG", str(conf))
    code, _, err = run("list")
    assert_clean_failure(code, err)
    assert "a file name is at most 255 bytes" in err and f"{conf}:1" in err


def test_long_names_are_positioned_errors(write):
    for text, where in ((project("host " + "h" * 300 + " {\n}\n"), ":4:1: error: host name"),
                        ("global {\n project " + "p" * 256 + "\n}\n", ":2:2: error: project name"),
                        (project("switch " + "s" * 101 + " {\n}\n"), ":4:1: error: switch name")):
        path = write(text)
        code, err = check(path)
        assert code == 1 and f"{path}{where}" in err, err


# ---------------------------------------------------------------------------------------
# 3. bounded input
# ---------------------------------------------------------------------------------------

def timed_check(path, seconds=20.0) -> tuple[int, str]:
    start = time.monotonic()
    code, err = check(path)
    assert time.monotonic() - start < seconds, f"check took {time.monotonic() - start:.1f} s"
    return code, err


def test_a_variable_that_repeats_itself_is_found_at_once(write):
    path = write(project("host h {\n kernel $a\n}\n", " $a = x\n $a = $a$a$a$a\n"))
    code, err = timed_check(path, 10)
    assert code == 1 and f"{path}:7:2: error: variable $a refers to itself" in err, err


def test_ten_fold_nested_variables_stop_at_the_value_limit(write):
    defs = " $v0 = 0123456789\n" + "".join(f" $v{i} = {f'$v{i - 1}' * 10}\n" for i in range(1, 10))
    path = write(project("host h {\n startup {\n  echo $v9\n }\n}\n", defs))
    code, err = timed_check(path)
    assert code == 1 and f"{path}:16:3: error: $v6 is longer than 1,048,576 characters" in err, err


def test_many_uses_of_a_large_value_stop_at_the_project_limit(write):
    defs = " $k = " + "k" * 60000 + "\n $m = " + "$k" * 16 + "\n"          # 960,000 characters
    path = write(project("host h {\n startup {\n" + "  $m\n" * 300 + " }\n}\n", defs))
    code, err = timed_check(path, 60)
    assert code == 1 and "MB of text in all" in err, err


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 7), max_size=6), min_size=1, max_size=8),
       st.integers(1, 5000))
def test_generated_variable_graphs_expand_in_bounded_time(tmp_path, refs, width):
    """Any definitions (cycles, fan-out, deep chains) give a value within the limit or an
    error, quickly."""
    defs = "".join(f" $v{i} = {'w' * width}{''.join(f'$v{j % len(refs)}' for j in r)}\n"
                   for i, r in enumerate(refs))
    path = tmp_path / "vars.mln"
    path.write_text(project("host h {\n startup {\n  $v0 $[v0]\n }\n}\n", defs))
    code, err = timed_check(path, 20)
    if code == 0:
        code, out, err = run("show", "-f", path, "--format", "json")
        assert code == 0 and len(out) < 3 * limits.MAX_VALUE, err


def test_numhosts_beyond_the_limit_is_refused_before_any_host_is_made(write):
    path = write("global {\n project p\n autoenum {\n  numhosts 1000000\n }\n}\n")
    code, err = timed_check(path, 10)
    assert code == 1 and f"{path}:4:3: error: autoenum: numhosts 1000000 would make more than 100,000" in err
    path = write("global {\n project p\n autoenum {\n  numhosts 99999999999999999999999999999\n }\n}\n")
    code, err = timed_check(path, 10)
    assert code == 1 and f"{path}:4:3: error: autoenum: numhosts" in err


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_no_project_file(device):
    code, _, err = run("check", "-f", device)
    assert code == 1 and f"{device}: error: '{device}' is not a regular file" in err, err


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "p.mln"
    os.mkfifo(fifo)
    for command in ("check", "show", "parse"):
        r = subprocess.run([sys.executable, "-m", "mln_core.cli", command, "-f", str(fifo)], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "is not a regular file" in r.stderr, r.stderr


def test_project_text_over_the_limit_is_refused_before_it_is_read(tmp_path, write, monkeypatch):
    big = tmp_path / "big.mln"
    with open(big, "wb") as f:                  # sparse: nothing of it is read
        f.truncate(limits.MAX_PROJECT_TEXT + 1)
    code, err = timed_check(big, 10)
    assert code == 1 and f"{big}:1:1: error: the project text is more than 64 MB" in err, err
    import mln_core.lang.parser as parser                # the limit counts every included file too
    monkeypatch.setattr(parser, "MAX_PROJECT_TEXT", 2000)
    (tmp_path / "part.txt").write_text("# a comment\n" * 100)
    path = write("global {\n project p\n}\n#include part.txt\n#include part.txt\n")
    code, err = timed_check(path, 30)
    assert code == 1 and re.search(rf"{re.escape(str(path))}:5:1: error: the project text is more than 0 MB "
                                   r"\(with '[^']*part.txt'\)", err), err
    monkeypatch.setattr(parser, "MAX_PROJECT_TEXT", 4000)     # a file within the limit is read whole
    path = write("# padding\n" * 300 + "global {\n project p\n}\nhost a {\n}\n", "whole.mln")
    code, err = timed_check(path)
    assert code == 0, err


def test_a_superclass_chain_over_the_limit_is_a_positioned_error(write):
    text = project("".join(f"superclass s{i} {{\n superclass s{i + 1}\n}}\n" for i in range(1200))
                   + "superclass s1200 {\n}\nhost h {\n superclass s0\n}\n")
    path = write(text)
    code, err = timed_check(path, 30)
    assert code == 1 and "superclass chain longer than 100" in err and POSITIONED.search(err), err
    code, _, err = run("show", "-f", path)
    assert_clean_failure(code, err)
    ok = project("".join(f"superclass s{i} {{\n superclass s{i + 1}\n}}\n" for i in range(99))
                 + "superclass s99 {\n memory 64M\n}\nhost h {\n superclass s0\n}\n")
    code, err = timed_check(write(ok, "ok.mln"))
    assert code == 0, err


def test_variables_nested_too_deep_are_a_positioned_error(write):
    defs = "".join(f" $v{i} = $v{i + 1}\n" for i in range(40)) + " $v40 = end\n"
    path = write(project("host h {\n kernel $v0\n}\n", defs))
    code, err = check(path)
    assert code == 1 and "variables nested more than 16 deep" in err and POSITIONED.search(err), err


# ---------------------------------------------------------------------------------------
# 4. no internal errors
# ---------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-10, 10**30).map(str),
    st.sampled_from(["²", "٣", "١٠", "߃", "৪", "0x10", "1e5", "9" * 400, "1.5", "", "00000000000000000001"]),
    st.from_regex(r"[0-9]{1,40}(\.[0-9]{1,5})?(b|K|kB|M|MB|G|GB|T|TB)?", fullmatch=True),
    st.text(st.characters(whitelist_categories=("Nd", "No")), min_size=1, max_size=4),
)
NUMBER_LINES = [
    "host a {{\n memory {n}\n}}\n", "host a {{\n size {n}\n}}\n", "host a {{\n free_space {n}\n}}\n",
    "host a {{\n swap {n}\n}}\n", "host a {{\n vcpus {n}\n}}\n", "host a {{\n boot_order {n}\n}}\n",
    "host a {{\n users {{\n  bob x /home/bob {n}\n }}\n}}\n", "host a {{\n files {{\n  f /f {n}\n }}\n}}\n",
    "host a {{\n xen\n vcpus {n}\n vncdisplay {n}\n}}\n", "host a {{\n vmware\n vcpus {n}\n}}\n",
    "host a {{\n network eth0 {{\n  netmask {n}\n }}\n}}\n",
]


@SETTINGS
@given(NUMBERS, st.sampled_from(NUMBER_LINES), st.sampled_from(["", "autoenum"]))
def test_numbers_no_field_can_hold_are_positioned_errors(tmp_path, number, template, where):
    globals_ = f" autoenum {{\n  numhosts {number}\n  address auto\n  net 10.0.0.0/8\n  " \
               f"addresses_begin {number}\n  service_hosts {{\n   s1 {number}\n  }}\n }}\n" if where else ""
    path = tmp_path / "n.mln"
    path.write_text(project(template.format(n=number), globals_))
    code, err = check(path)
    if code == 1:
        assert POSITIONED.search(err), err
    for argv in (["show", "-f", path], ["parse", "-f", path, "-H", "/host/a"], ["build", "-s", "-f", path]):
        c, _, e = run(*argv)
        assert c in (0, 1) and "internal error" not in e, e
        if code == 0 and argv[0] != "parse":
            assert c == 0, e            # what check accepts, the model builds


# generated projects: every keyword of every installed plugin, with good and bad values

GOOD = {"memory": ["64M", "1.5G"], "size": ["1G"], "free_space": ["100M"], "swap": ["64M"],
        "template": ["busybox.ext4"], "boot_order": ["1", "50"], "vcpus": ["2"], "address": ["10.0.0.1", "dhcp"],
        "netmask": ["24"], "switch": ["lan"], "gateway": ["10.0.0.254"], "mac": ["00:11:22:33:44:55"],
        "superclass": ["s0"], "numhosts": ["3"], "net": ["10.1.0.0/16"], "addresses_begin": ["5"],
        "hostprefix": ["n"], "hypervisor": ["qemu", "uml"], "family": ["debian"], "filepath": ["/tmp"],
        "type": ["hub", "vde"]}
ODD = ["", "0", "-1", "²", "٣", "9" * 60, "1e5", "12X", "/etc/passwd", "../../x", "x" * 300, "é", "$x", "$[x]",
       "\\$", "all", "auto", "dhcp", "::1", "0644", "999", "/", ".", "..", "~", "a,b", "*", "!", "x:y", "lan"]
odd_word = st.one_of(st.sampled_from(ODD), st.text(st.characters(blacklist_categories=("Cs", "Z", "Cc"),
                                                                 blacklist_characters="{};#\\"),
                                                   min_size=1, max_size=6))


def keyword_table():
    return sorted((c, k, spec.block) for c, d in plugin_manager().keywords.entries.items() for k, spec in d.items())


@st.composite
def block_text(draw, context: str, depth: int = 0) -> str:
    table = [t for t in keyword_table() if t[0] == context]
    out = []
    for _ in range(draw(st.integers(0, 4)) if table else 0):
        _, kw, kind = draw(st.sampled_from(table))
        if kind is None:
            good = GOOD.get(kw)
            value = draw(st.one_of(*(2 * [st.sampled_from(good)] if good else []),
                                   st.lists(odd_word, max_size=3).map(" ".join)))
            out.append(f"{kw} {value}")
        elif kind == "keywords" and depth < 2:
            out.append(f"{kw} {{\n{draw(block_text(f'{context}.{kw}', depth + 1))}\n}}")
        else:
            lines = draw(st.lists(st.lists(odd_word, min_size=1, max_size=4).map(" ".join), max_size=3))
            out.append(f"{kw} {{\n" + "\n".join(lines) + "\n}")
    if context == "host" and draw(st.booleans()):
        out.append(f"network eth{draw(st.integers(0, 2))} {{\n{draw(block_text('network'))}\n}}")
    if draw(st.booleans()):
        out.append(f"$x = {draw(st.lists(odd_word, max_size=2).map(' '.join))}")
    return "\n".join(out)


@st.composite
def generated_projects(draw) -> str:
    parts = [f"global {{\nproject {draw(st.sampled_from(['p', 'p.q', 'x' * 120, 'a/b', '²']))}\n"
             f"{draw(block_text('global'))}\n}}"]
    parts += [f"switch lan{i} {{\n{draw(block_text('switch'))}\n}}" for i in range(draw(st.integers(0, 2)))]
    parts += [f"superclass s{i} {{\n{draw(block_text('host'))}\n}}" for i in range(draw(st.integers(0, 2)))]
    parts += [f"host h{i} {{\n{draw(block_text('host'))}\n}}" for i in range(draw(st.integers(1, 3)))]
    return "\n".join(parts) + "\n"


@SETTINGS
@given(generated_projects())
def test_generated_projects_end_in_success_or_positioned_errors(tmp_path, text):
    path = tmp_path / "g.mln"
    path.write_text(text)
    code, err = check(path)
    if code == 1:
        assert POSITIONED.search(err), err
    for argv in (["show", "-f", path, "--format", "yaml", "--explain"], ["parse", "-f", path],
                 ["parse", "-f", path, "-H", "/host/h0"], ["build", "-s", "-f", path]):
        c, _, e = run(*argv)
        assert c in (0, 1) and "internal error" not in e and "Traceback" not in e, (argv, e)
        if code == 0:
            assert c == 0, (argv, e)    # everything check accepts is read the same by the rest
