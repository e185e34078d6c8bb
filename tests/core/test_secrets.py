"""Secrets, from the user's side: a clear-text password is never readable by another user
in what mln stores, and never printed (traces, show, parse, diff, upgrade plans); diff and
upgrade still tell a changed password from an unchanged one; a value taken as a crypt
hash that is no valid one is warned about at its place; and the saved copy of a project
is what was built (escapes, spaces, ``$``, CRLF, a byte order mark read back the same).
"""
from __future__ import annotations

import json
import mmap
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mln_core.lang.writer import write_tree
from mln_core.private import SECRET, Secrets, redact, redact_block, remember
from mln_core.project import load_project

from .conftest import context

ROOT_PW = "Root pw with spaces $and\\back"
BOB_PW = "b0b-Secret-42"

PROJECT = r"""global {
    project vault
}
switch lan {
}
host a {
    hypervisor uml
    template busybox.ext4
    root_passwd Root\ pw\ with\ spaces\ \$and\\back
    users {
        bob b0b-Secret-42
    }
    network eth0 {
        switch lan
        address 10.0.0.1
        netmask 255.255.255.0
    }
}
"""


def _escape(value: str) -> str:
    """``value`` as one word of a project file."""
    return "".join("\\" + c if c in "\\{};#$" or c.isspace() else c for c in value)


def _files(top: Path):
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            yield Path(dirpath) / f


def _holds(path: Path, text: str) -> bool:
    if path.stat().st_size == 0 or not path.is_file():
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(text.encode()) >= 0


def _assert_private(projects: Path, name: str) -> None:
    """The project directory 0700; every file in it readable by its owner only."""
    pdir = projects / name
    assert stat.S_IMODE(pdir.stat().st_mode) == 0o700
    for path in _files(pdir):
        if path.is_symlink() or not path.is_file():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}"


@pytest.fixture
def built(mln_env):
    env = mln_env
    env.project_names.add("vault")
    env.write("vault.mln", PROJECT)
    r = env.mln("build", "-f", "vault.mln", input="")
    assert r.returncode == 0, r.output
    return env


def test_the_saved_project_state_and_disks_are_private(built):
    _assert_private(built.projects, "vault")
    pdir = built.projects / "vault"
    for name in ("vault.mln", "state.json", "version", "images/a"):
        assert stat.S_IMODE((pdir / name).stat().st_mode) == 0o600, name
    # the clear text is only in the saved copy (0600, in the 0700 directory); never in the disk
    holding = {p.relative_to(pdir).as_posix() for p in _files(pdir)
               if _holds(p, ROOT_PW) or _holds(p, BOB_PW)}
    assert holding == {"vault.mln"}
    # ... and nowhere else under the projects directory (lock, staging left-overs)
    assert not [p for p in _files(built.projects) if p.parent != pdir and (_holds(p, ROOT_PW) or _holds(p, BOB_PW))]


def test_traces_never_print_a_secret(built):
    built.write("vault2.mln", PROJECT.replace("b0b-Secret-42", "n3w-Secret-43"))
    env = dict(built.env, MLN_TRACE_PLUGINS="1", MLN_TRACE_COMMANDS="1", MLN_DEBUG="1")
    import subprocess
    import sys
    for args in (["build", "-r", "-f", "vault.mln"], ["upgrade", "-s", "-f", "vault2.mln"],
                 ["upgrade", "-r", "-f", "vault2.mln"], ["show", "-f", "vault.mln"], ["check", "-f", "vault.mln"]):
        p = subprocess.run([sys.executable, "-m", "mln_core.cli", *args], capture_output=True, text=True,
                           env=env, cwd=built.root, input="")
        assert p.returncode == 0, p.stdout + p.stderr
        for pw in (ROOT_PW, BOB_PW, "n3w-Secret-43"):
            assert pw not in p.stdout + p.stderr, args
    _assert_private(built.projects, "vault")     # after an upgrade too
    assert "n3w-Secret-43" in (built.projects / "vault" / "vault.mln").read_text()


def test_an_older_project_is_made_private_by_an_upgrade(built):
    pdir = built.projects / "vault"
    os.chmod(pdir, 0o755)
    os.chmod(pdir / "vault.mln", 0o644)
    built.write("vault2.mln", PROJECT.replace("b0b-Secret-42", "n3w-Secret-43"))
    r = built.mln("upgrade", "-r", "-f", "vault2.mln")
    assert r.returncode == 0, r.output
    _assert_private(built.projects, "vault")


def test_an_older_project_is_made_private_by_any_command_on_it(built):
    pdir = built.projects / "vault"
    os.chmod(pdir, 0o755)
    os.chmod(pdir / "vault.mln", 0o644)
    r = built.mln("status", "-p", "vault")
    assert r.returncode == 1, r.output                    # down: 1, and no error
    _assert_private(built.projects, "vault")


def test_diff_and_upgrade_tell_changed_passwords_without_showing_them(built):
    r = built.mln("diff", "-p", "vault", "-f", "vault.mln")
    assert (r.returncode, r.stdout) == (0, "")
    r = built.mln("upgrade", "-s", "-f", "vault.mln")
    assert r.returncode == 0 and "rebuilt" not in r.stdout, r.output

    built.write("root.mln", PROJECT.replace(r"Root\ pw", r"Other\ pw"))
    r = built.mln("diff", "-p", "vault", "-f", "root.mln")
    assert r.returncode == 1 and r.stdout == f"host a (changed)\n  root_passwd: {SECRET} (changed)\n", r.output
    r = built.mln("diff", "-p", "vault", "-f", "root.mln", "--format", "json")
    entry = json.loads(r.stdout)["hosts"]["a"]["changes"][0]
    assert entry == {"path": "root_passwd", "what": "changed", "kind": "value", "old": SECRET, "new": SECRET,
                     "secret": True}
    r = built.mln("upgrade", "-s", "-f", "root.mln")
    assert "host a: root_passwd changed" in r.stdout and "Other" not in r.output and "Root" not in r.output

    built.write("bob.mln", PROJECT.replace("b0b-Secret-42", "b0b-Secret-43"))
    r = built.mln("diff", "-p", "vault", "-f", "bob.mln")
    assert r.returncode == 1
    assert r.stdout == (f"host a (changed)\n  users: changed\n    - bob {SECRET}\n    + bob {SECRET}\n")
    for cmd in (["upgrade", "-s", "-f", "bob.mln"], ["upgrade", "-s", "--format", "json", "-f", "bob.mln"]):
        r = built.mln(*cmd)
        assert r.returncode == 0 and "users changed" in r.stdout and "Secret" not in r.output, r.output


def test_show_and_parse_print_secret_for_secrets(mln, write):
    path = write(PROJECT.replace("hypervisor uml", "hypervisor uml\n    vncpasswd vnc-Secret"))
    outputs = [mln("show", "-f", path), mln("show", "-f", path, "--explain"),
               mln("show", "-f", path, "--format", "json"), mln("show", "-f", path, "--format", "yaml"),
               mln("parse", "-f", path), mln("parse", "-f", path, "-H", "/host/a"),
               mln("parse", "-f", path, "-H", "/host/a/users"), mln("parse", "-f", path, "-H", "/host")]
    for code, out, err in outputs:
        assert code == 0, err
        assert SECRET in out
        for pw in (ROOT_PW, BOB_PW, "vnc-Secret"):
            assert pw not in out + err
    # one value asked for by its path is printed: that is what -S is for
    assert mln("parse", "-f", path, "-S", "/host/a/root_passwd")[1] == ROOT_PW + "\n"


@pytest.mark.parametrize("value, where", [
    ("$6$short", "root_passwd"), ("$1$mypassword", "root_passwd"), ("$6$abc$def", "bob"),
    ("Password12345", "bob"),                  # 13 characters taken as a DES hash whose last one cannot be
])
def test_a_bad_crypt_hash_is_warned_about_at_its_place(mln, write, value, where):
    text = PROJECT.replace(r"Root\ pw\ with\ spaces\ \$and\\back", _escape(value) if where == "root_passwd"
                           else "x").replace("b0b-Secret-42", _escape(value) if where == "bob" else "y")
    path = write(text)
    code, out, err = mln("check", "-f", path)
    line = 9 if where == "root_passwd" else 11
    assert code == 0
    warnings = [ln for ln in err.splitlines() if "crypt hash" in ln]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:{line}:"), err
    assert value not in err


@pytest.mark.parametrize("value", ["$6$" + "a" * 8 + "$" + "b" * 86, "$1$abcdefgh$" + "c" * 22, "!", "*",
                                   "!$6$locked", "ab" + "c" * 10 + "w", "plain password", "p" * 13 + "x!"])
def test_valid_hashes_and_plain_passwords_are_not_warned_about(mln, write, value):
    path = write(PROJECT.replace(r"Root\ pw\ with\ spaces\ \$and\\back", _escape(value)))
    code, out, err = mln("check", "-f", path)
    assert code == 0 and "crypt hash" not in err, err


def test_plugins_declare_their_secret_keywords():
    from mln_core.keywords import KeywordRegistry, core_keywords
    from mln_core.lang.parser import parse_text
    reg = KeywordRegistry()
    core_keywords(reg)
    reg.current_plugin = "vaultplugin"
    reg.keyword("host", "api_token", "a token", secret=True)
    reg.block("host", "keys", "lines", "name key", secret_word=1)
    with pytest.raises(ValueError):
        reg.block("host", "other", "free", secret_word=1)
    doc = parse_text("host a {\n api_token t0ken\n memory 64M\n keys {\n  k1 s3cret\n }\n}\n")
    host = doc.hosts()["a"]
    secrets = Secrets(reg)
    assert sorted(secrets.values(host, "host")) == ["s3cret", "t0ken"]
    text = write_tree(redact_block(doc.root, "/", secrets))
    assert "t0ken" not in text and "s3cret" not in text and "memory 64M" in text
    assert f"api_token {SECRET}" in text and f"k1 {SECRET}" in text
    assert write_tree(doc.root).count("t0ken") == 1          # the document itself is untouched


def test_redact_replaces_every_remembered_value_in_one_pass():
    remember("hunter2 x")
    remember("hunter")
    assert redact("a hunter2 x b hunter c") == f"a {SECRET} b {SECRET} c"
    remember(SECRET)
    assert redact(SECRET) == SECRET


# ---------------------------------------------------------------------------------------
# the saved copy is what was built
# ---------------------------------------------------------------------------------------

def _round_trip(text: str):
    """Load ``text``, write it as the saved copy is written, load that again: both loads."""
    ctx = context()
    first = load_project(None, ctx, text=text)
    saved = write_tree(first.doc.root)
    second = load_project(None, ctx, text=saved)
    return first, second, saved


def _same(first, second) -> None:
    assert set(first.project.hosts) == set(second.project.hosts)
    for name in first.project.hosts:
        assert first.resolved.effective("host", name).structure() == \
            second.resolved.effective("host", name).structure(), name
        a, b = first.project.hosts[name], second.project.hosts[name]
        assert a.root_passwd == b.root_passwd
        assert [vars(u) for u in a.users] == [vars(u) for u in b.users]
        assert a.startup == b.startup


#: what a password may hold: anything but a line end and NUL (the lexer's own refusals)
PASSWORDS = st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)),
                    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(root=PASSWORDS, user=PASSWORDS, auto=PASSWORDS, crlf=st.booleans(), bom=st.booleans())
def test_any_password_reads_back_the_same_from_the_saved_copy(root, user, auto, crlf, bom):
    text = (f"global {{\n project rt\n autoenum {{\n  numhosts 2\n  autouser {_escape(auto)}\n }}\n}}\n"
            f"host a {{\n root_passwd {_escape(root)}\n users {{\n  bob {_escape(user)} /home/bob\n }}\n"
            f" startup {{\n  echo {_escape(user)} \\\n   and $hostname\n }}\n}}\n")
    if crlf:
        text = text.replace("\n", "\r\n")
    if bom:
        text = "\ufeff" + text
    first, second, saved = _round_trip(text)
    host = first.project.hosts["a"]
    assert host.root_passwd == root
    assert [(u.name, u.password, u.home) for u in host.users] == [("bob", user, "/home/bob")]
    assert [(u.name, u.password) for u in first.project.hosts["node1"].users] == [("node1", auto)]
    _same(first, second)
    # and once more: the saved copy of the saved copy is the same text
    assert write_tree(second.doc.root) == saved


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)),
                        min_size=1, max_size=12), min_size=1, max_size=4),
       st.sampled_from(["", "$v", "\\$v", "$[v]x", "$hostname"]))
def test_lines_with_escapes_and_variables_read_back_the_same(words, var):
    line = " ".join(_escape(w) for w in words) + (" " + var if var else "")
    text = (f"global {{\n project rt\n $v = one\\ two three\n}}\nhost a {{\n $w = {_escape(words[0])}\n"
            f" startup {{\n  {line}\n  $w {line}\n }}\n users {{\n  u{_escape(words[-1])}x {line}\n }}\n}}\n")
    try:
        first, second, saved = _round_trip(text)
    except Exception as e:                 # a bad user name is an error of the file, the same both ways
        from mln_core.errors import MlnError
        assert isinstance(e, MlnError) and e.where is not None
        return
    _same(first, second)


def test_a_byte_order_mark_and_crlf_keep_positions(mln, write):
    path = write(b"\xef\xbb\xbfglobal {\r\n project p\r\n}\r\nhost a {\r\n memory lots\r\n}\r\n")
    code, out, err = mln("check", "-f", path)
    assert code == 1 and f"{path}:5:2: error:" in err, err
    path = write(b"\xef\xbb\xbfglobal { project p }\r\nhost a {\r\n startup {\r\n  echo a \\\r\n  b\r\n }\r\n}\r\n")
    code, out, err = mln("parse", "-f", path, "-A", "/host/a/startup")
    assert (code, out) == (0, "echo a b\n"), err
