"""The command line: parse, check, show, plugins, help, completion, global options, config,
and bad input (never a traceback)."""
from __future__ import annotations

import json
import os
import re

import pytest
from ruamel.yaml import YAML

import mln_core.cli as cli_module
from mln_core import __version__
from mln_core.config import load_config
from mln_core.errors import MlnError

from .conftest import EXAMPLES

PROJECT = """global {
    project demo
}
switch lan {
}
superclass base {
    memory 64M
    startup {
        echo base
    }
}
host one {
    superclass base
    network eth0 {
        switch lan
        address dhcp
    }
    startup {
        echo one; echo two
    }
}
"""

CHECK_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): (?P<msg>.+)$")


def problem_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if CHECK_LINE.match(ln)]


# ---------------------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------------------

def test_parse_prints_the_normalized_tree(mln, write):
    path = write("# comment\nglobal { project demo; $x = 1 }\n"
                 "host one {   memory    64M # note\n startup { echo a\\; b } }\n")
    code, out, err = mln("parse", "-f", path)
    assert code == 0, err
    assert out == ("global {\n\t$x = 1\n\tproject demo\n}\n"
                   "host one {\n\tmemory 64M\n\tstartup {\n\t\techo a\\; b\n\t}\n}\n")


def test_parse_without_query_does_not_run_post_parse_plugins(mln, write):
    path = write("global {\n project p\n autoenum {\n  numhosts 2\n }\n}\n")
    code, out, _ = mln("parse", "-f", path)
    assert code == 0
    assert "host node1" not in out


@pytest.mark.parametrize("query, expected", [
    ("/host/one/network/eth0/address", "dhcp"),
    ("/host/one/network/eth0", "1"),
    ("/host/one", "1"),
    ("/host/one/memory", "64M"),
    ("/global/project", "demo"),
    ("/switch/lan", "1"),
])
def test_parse_scalar(mln, write, query, expected):
    code, out, err = mln("parse", "-f", write(PROJECT), "-S", query)
    assert (code, out) == (0, expected + "\n"), err


@pytest.mark.parametrize("query", ["/host/one/nothing", "/host/two", "/host/one/network/eth1/address",
                                   "/global/nothing"])
def test_parse_scalar_missing_path(mln, write, query):
    code, out, err = mln("parse", "-f", write(PROJECT), "-S", query)
    assert code == 1
    assert out == ""
    assert err == f"mln: error: nothing at {query}\n"


def test_parse_array_superclass_lines_first(mln, write):
    code, out, _ = mln("parse", "-f", write(PROJECT), "-A", "/host/one/startup")
    assert (code, out) == (0, "echo base\necho one\necho two\n")


def test_parse_array_of_a_keyword(mln, write):
    path = write("global { project p }\nhost a {\n dns 1.1.1.1\n dns 8.8.8.8\n}\n")
    code, out, _ = mln("parse", "-f", path, "-A", "/host/a/dns")
    assert (code, out) == (0, "1.1.1.1\n8.8.8.8\n")


def test_parse_hash_prints_the_merged_subtree(mln, write):
    code, out, _ = mln("parse", "-f", write(PROJECT), "-H", "/host/one")
    assert code == 0
    assert out == ("memory 64M\nsuperclass base\n"      # the contents, as the original: no header
                   "startup {\n\techo base\n\techo one\n\techo two\n}\n"
                   "network eth0 {\n\tswitch lan\n\taddress dhcp\n}\n")


def test_parse_hash_of_a_sub_block(mln, write):
    code, out, _ = mln("parse", "-f", write(PROJECT), "-H", "/host/one/network/eth0")
    assert (code, out) == (0, "switch lan\naddress dhcp\n")


def test_parse_runs_post_parse_plugins_before_queries(mln, write):
    path = write("global {\n project p\n autoenum {\n  numhosts 2\n  address auto\n  net 10.1.2.0\n }\n}\n")
    code, out, _ = mln("parse", "-f", path, "-S", "/host/node2/network/eth0/address")
    assert (code, out) == (0, "10.1.2.2\n")


def test_parse_only_one_query(mln, write):
    code, _, err = mln("parse", "-f", write(PROJECT), "-S", "/host/one", "-A", "/host/one")
    assert code == 2
    assert "only one of -S, -A and -H" in err


# ---------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------

def test_check_clean_project(mln, write):
    path = write(PROJECT)
    code, out, err = mln("check", "-f", path)
    assert code == 0
    assert err == f"{path}: 0 errors, 0 warnings\n"


def test_check_prints_positions_and_exits_1_on_errors(mln, write):
    path = write("global { project p }\nhost a {\n memroy 64M\n memory 12X\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 1
    lines = problem_lines(err)
    assert lines == [
        f"{path}:3:2: warning: unknown keyword 'memroy' in host a (did you mean 'memory'?)",
        f"{path}:4:2: error: bad memory '12X': use a number with a unit such as 512M or 2G "
        "(units: b K kB KB M MB G GB)",
    ]
    assert err.splitlines()[-1] == f"{path}: 1 error, 1 warning"


def test_check_warnings_only_exits_0(mln, write):
    path = write("global { project p }\nhost a {\n  memroy 64M\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:3:3: warning: unknown keyword 'memroy' in host a (did you mean 'memory'?)" in err


def test_check_unknown_keyword_in_a_network_block(mln, write):
    path = write("global { project p }\nhost a {\n network eth0 {\n  adress dhcp\n }\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:4:3: warning: unknown keyword 'adress' in network eth0 (did you mean 'address'?)" in err


def test_check_says_once_which_keywords_have_no_effect(mln, write):
    """The original's console keywords are accepted, but a user is told they do nothing."""
    path = write("global { project p }\nsuperclass s {\n term screen\n}\nhost a {\n superclass s\n}\n"
                 "host b {\n term xterm\n color red\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert err.count("no effect") == 2
    assert (f"{path}:3:2: warning: 'term' has no effect in this version (and 1 more line): no terminal is "
            "opened at start: 'mln console' attaches to a guest's console") in err
    assert f"{path}:10:2: warning: 'color' has no effect in this version: " in err


def test_check_unknown_block_and_top_level_block(mln, write):
    path = write("global { project p }\nhost a {\n startpu {\n  x\n }\n}\nstuff {\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:3:2: warning: unknown block 'startpu' in host a (did you mean 'startup'?)" in err
    assert f"{path}:7:1: warning: unknown block 'stuff' at the top level" in err


def test_check_sorts_problems_by_position(mln, write):
    path = write("global { project p }\nhost b {\n memory 1X\n}\nhost a {\n memory 2X\n kernal x\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 1
    lines = [(int(m["line"]), int(m["col"])) for m in map(CHECK_LINE.match, problem_lines(err))]
    assert lines == sorted(lines) and len(lines) == 3


def test_check_fragment_only_checks_syntax(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    code, _, err = mln("check", "-f", "oscourse.mln")
    assert code == 0
    assert "no 'global' block" in err
    assert err.splitlines()[-1].startswith("oscourse.mln: 0 errors")


@pytest.mark.parametrize("example", ["italy", "ldaptest", "oscourse-group07", "san", "simple_network",
                                     "vcluster", "webhosting", "oscourse"])
def test_check_examples_have_no_errors(mln, monkeypatch, example):
    monkeypatch.chdir(EXAMPLES)
    code, _, err = mln("check", "-f", f"{example}.mln")
    assert code == 0, err
    assert f"{example}.mln: 0 errors" in err


# ---------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------

def test_show_text(mln, write):
    code, out, err = mln("show", "-f", write(PROJECT))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "project demo: 1 host, 1 switch"
    assert lines[1] == "switch lan: one.eth0"
    assert "host one" in lines
    assert re.search(r"^  memory +64M$", out, re.M)


def test_show_json(mln, write):
    code, out, _ = mln("show", "--format", "json", "-f", write(PROJECT))
    assert code == 0
    data = json.loads(out)
    assert data["project"] == "demo"
    one = data["hosts"]["one"]
    assert one["memory"] == "64M"
    assert one["superclasses"] == ["base"]
    assert one["interfaces"]["eth0"] == {"switch": "lan", "address": "dhcp"}
    assert one["startup"] == ["echo base", "echo one", "echo two"]
    assert data["switches"]["lan"]["members"] == ["one.eth0"]


def test_show_yaml_parses_and_equals_json(mln, write):
    path = write(PROJECT)
    code, out, _ = mln("show", "--format", "yaml", "-f", path)
    assert code == 0
    data = YAML(typ="safe").load(out)
    _, js, _ = mln("show", "--format", "json", "-f", path)
    assert data == json.loads(js)


def test_show_explain_json_and_yaml(mln, write):
    path = write(PROJECT)
    code, out, _ = mln("show", "--format", "yaml", "--explain", "-f", path)
    assert code == 0
    data = YAML(typ="safe").load(out)
    assert data["hosts"]["one"]["memory"] == {"value": "64M", "from": f"superclass base ({path}:7:5)"}


def test_show_stops_on_errors(mln, write):
    path = write("global { project p }\nhost a {\n memory 1X\n}\n")
    code, out, err = mln("show", "-f", path)
    assert code == 1
    assert out == ""
    assert f"mln: error: {path}:3:2: bad memory '1X'" in err


# ---------------------------------------------------------------------------------------
# plugins, version, help, completion
# ---------------------------------------------------------------------------------------

def test_plugins_lists_autoenum_with_its_hooks(mln):
    code, out, _ = mln("plugins")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("autoenum "))
    assert "mln_post_parse" in line and "mln_register_keywords" in line


def test_plugins_json(mln):
    code, out, _ = mln("plugins", "--format", "json")
    assert code == 0
    data = json.loads(out)
    auto = next(p for p in data["plugins"] if p["name"] == "autoenum")
    assert auto["module"] == "mln_plugins.autoenum"
    assert set(auto["hooks"]) >= {"mln_post_parse", "mln_register_keywords"}
    assert data["failed"] == []


def test_version(mln):
    code, out, _ = mln("--version")
    assert code == 0
    assert out == f"mln, version {__version__}\n"
    assert __version__ != "0+unknown"


def test_help(mln):
    code, out, _ = mln("help")
    assert code == 0
    assert out.startswith("Usage: mln ")
    for command in ("check", "parse", "show", "plugins", "help", "completion"):
        assert re.search(rf"^  {command} ", out, re.M), command


def test_help_command(mln):
    code, out, _ = mln("help", "check")
    assert code == 0
    assert out.startswith("Usage: mln check [OPTIONS]")
    assert "-f FILE" in out


def test_help_unknown_command(mln):
    code, _, err = mln("help", "frobnicate")
    assert code == 2
    assert "no such command 'frobnicate'" in err


def test_completion_bash(mln):
    code, out, _ = mln("completion", "bash")
    assert code == 0
    assert "_MLN_COMPLETE=bash_complete" in out
    assert "complete " in out and " mln" in out


def test_unknown_command_is_a_usage_error(mln):
    code, _, err = mln("frobnicate")
    assert code == 2
    assert "No such command" in err


# ---------------------------------------------------------------------------------------
# global options and configuration
# ---------------------------------------------------------------------------------------

@pytest.fixture
def seen_config(monkeypatch):
    """Records the configuration each command loads."""
    seen = []
    real = cli_module.load_config

    def spy(*args, **kw):
        cfg = real(*args, **kw)
        seen.append(cfg)
        return cfg
    monkeypatch.setattr(cli_module, "load_config", spy)
    return seen


@pytest.mark.parametrize("where", ["before", "after", "glued", "long"])
def test_global_options_before_and_after_the_subcommand(mln, write, tmp_path, seen_config, where):
    path = write(PROJECT)
    p, t, f = (str(tmp_path / d) for d in ("pp", "tt", "ff"))
    opts = {"before": ["-P", p, "-T", t, "-F", f],
            "after": ["-P", p, "-T", t, "-F", f],
            "glued": [f"-P{p}", f"-T{t}", f"-F{f}"],
            "long": [f"--projects={p}", "--templates", t, f"--files={f}"]}[where]
    argv = opts + ["check", "-f", path] if where == "before" else ["check", "-f", path] + opts
    code, _, err = mln(*argv)
    assert code == 0, err
    [cfg] = seen_config
    assert (cfg.projects_dir, cfg.templates_dir, cfg.files_dir) == (p, t, f)


def test_mln_config_file_is_read(mln, write, isolated_env, seen_config):
    isolated_env.write_text("# my settings\nprojects /srv/mln/projects\ndefault_memory 96M  # more\n")
    code, out, _ = mln("show", "--format", "json", "-f", write("global { project p }\nhost a {\n}\n"))
    assert code == 0
    assert json.loads(out)["hosts"]["a"]["memory"] == "96M"
    assert seen_config[0].projects_dir == "/srv/mln/projects"


def test_mln_config_keywords_match_exactly(tmp_path):
    conf = tmp_path / "mln.conf"
    conf.write_text("daemon_projects /srv/daemon\nprojects_extra /x\ndaemon_allow 10.0.*.*\n"
                    "daemon_allow 192.168.1.*\n")
    cfg = load_config(env={"MLN_CONFIG": str(conf)})
    assert cfg.get("daemon_projects") == "/srv/daemon"
    assert cfg.get("projects") == "~/mln/projects"
    assert cfg.getlist("daemon_allow") == ["10.0.*.*", "192.168.1.*"]


def test_mln_config_replaces_the_system_files(tmp_path, monkeypatch):
    monkeypatch.setattr("mln_core.config.SYSTEM_CONFIG", str(tmp_path / "system.conf"))
    (tmp_path / "system.conf").write_text("default_memory 1G\n")
    (tmp_path / "mine.conf").write_text("default_size 1G\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(env={}).get("default_memory") == "1G"
    cfg = load_config(env={"MLN_CONFIG": str(tmp_path / "mine.conf")})
    assert cfg.get("default_memory") == "128M"
    assert cfg.get("default_size") == "1G"


def test_mln_config_expands_environment_variables(tmp_path, monkeypatch):
    conf = tmp_path / "mln.conf"
    conf.write_text("files /opt/mln/files/$MLNUSER\n")
    monkeypatch.setenv("MLNUSER", "kyrre")
    assert load_config(env={"MLN_CONFIG": str(conf)}).get("files") == "/opt/mln/files/kyrre"


def test_bad_mln_config_is_an_error_with_a_position(mln, write, isolated_env):
    isolated_env.write_text("projects /x\ndefault_memory\n")
    code, _, err = mln("check", "-f", write(PROJECT))
    assert code == 1
    assert f"{isolated_env}:2:1" in err and "'default_memory' needs a value" in err


def test_mln_config_naming_a_missing_file(mln, write, monkeypatch, tmp_path):
    monkeypatch.setenv("MLN_CONFIG", str(tmp_path / "nope.conf"))
    code, _, err = mln("check", "-f", write(PROJECT))
    assert code == 1
    assert "nope.conf" in err and "Traceback" not in err


def test_mln_project_fixture(mln_project):
    p = mln_project("global { project t }\nhost a {\n memroy 1M\n}\n")
    r = p.run("check")
    assert r.exit_code == 0
    assert "did you mean 'memory'" in r.stderr
    r = p.run("parse", "-S", "/host/a/memroy")
    assert (r.exit_code, r.stdout) == (0, "1M\n")


# ---------------------------------------------------------------------------------------
# bad input: one clear message with a position, never a traceback
# ---------------------------------------------------------------------------------------

BAD = [
    # (name, content, exit code of check, expected text in the first problem line)
    ("unclosed", "global { project p }\nhost a {\n memory 1M\n", 1, ":2:1: error: 'host a' is never closed"),
    ("extra_close", "global { project p }\n}\n", 1, ":2:1: error: '}' without a matching '{'"),
    ("no_project", "global {\n}\nhost a {\n}\n", 1, ":1:1: error: the 'global' block has no 'project"),
    ("no_global", "host a {\n}\n", 0, "warning: no 'global' block"),
    ("outside", "memory 5\nglobal { project p }\n", 0, ":1:1: warning: 'memory' outside any block"),
    ("unknown_super", "global { project p }\nhost a {\n superclass x\n}\n", 1,
     ":3:2: error: unknown superclass 'x'"),
    ("cycle_super", "global { project p }\nsuperclass x {\n superclass x\n}\nhost a {\n superclass x\n}\n",
     1, "error: superclass cycle"),
    ("include_cycle", "global { project p }\n#include p.mln\n", 1, ":2:1: error: include cycle"),
    ("include_missing", "global { project p }\n#include nope.mln\n", 1,
     ":2:1: error: cannot open include file nope.mln"),
    ("long_line", "global { project p }\n" + "x" * 10_000_000 + "\n", 1, ":2:1: error: line is 10000000"),
    ("latin1", b"global { project p }\nhost a {\n memory \xff\n}\n", 1, ":3:9: error: the file is not UTF-8"),
    ("nul", b"global { project p }\nhost a {\x00 }\n", 1, ":2:9: error: the file contains a NUL byte"),
    ("brace_only", "{\n}\n", 1, ":1:1: error: '{' without a block name"),
    ("three_words", "host a b {\n}\n", 1, ":1:1: error: too many words before '{'"),
    ("bad_header", "global { project p }\nfoo bar {\n}\n", 1, ":2:1: error: unexpected 'foo bar {'"),
    ("empty", "", 0, "warning: no 'global' block"),
    ("deep", "global { project p }\n" + "a {\n" * 200 + "}\n" * 200, 1, "error: blocks nested more than"),
]


@pytest.mark.parametrize("name, content, code, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_check(mln, tmp_path, monkeypatch, name, content, code, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.mln").write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, out, err = mln("check", "-f", "p.mln")
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err
    first = problem_lines(err)[0] if problem_lines(err) else err.splitlines()[0]
    assert expected in first, err
    if code:
        assert first.startswith("p.mln:")


@pytest.mark.parametrize("name, content, code, expected", [b for b in BAD if b[2] == 1],
                         ids=[b[0] for b in BAD if b[2] == 1])
@pytest.mark.parametrize("command", [["show"], ["parse", "-S", "/host/a"]])
def test_bad_input_other_commands(mln, tmp_path, monkeypatch, name, content, code, expected, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.mln").write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, out, err = mln(*command, "-f", "p.mln")
    if name == "no_project" and command[0] == "parse":
        assert rc == 0, err     # a query needs no project name
        return
    assert rc == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith("mln: error: ") or problem_lines(err), err


def test_missing_file(mln, tmp_path):
    missing = tmp_path / "missing.mln"
    for command in ("check", "show", "parse"):
        code, _, err = mln(command, "-f", missing)
        assert code == 1
        assert f"no such project file: {missing}" in err


def test_directory_instead_of_a_file(mln, tmp_path):
    for command in ("check", "show", "parse"):
        code, _, err = mln(command, "-f", tmp_path)
        assert code != 0
        assert "is a directory" in err
        assert "Traceback" not in err


def test_directory_via_the_library_is_an_mln_error(tmp_path):
    from mln_core.lang.parser import parse_file
    with pytest.raises(MlnError) as e:
        parse_file(str(tmp_path))
    assert "is a directory" in e.value.message


def test_unreadable_file(mln, write):
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = write(PROJECT)
    path.chmod(0)
    code, _, err = mln("check", "-f", path)
    assert code == 1
    assert "cannot read" in err
