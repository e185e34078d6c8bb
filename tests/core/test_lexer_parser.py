"""The lexer and parser: lines, blocks, positions, comments, escapes, includes (spec 2.1-2.5)."""
from __future__ import annotations

import os

import pytest

from mln_core.errors import MlnError, Pos
from mln_core.lang.parser import parse_file, parse_text, tokenize


def parse(text: str, name: str = "t.mln", cwd=None):
    return parse_text(text, name, cwd=str(cwd) if cwd else None)


def texts(block) -> list[str]:
    return [ln.text for ln in block.lines]


# ---------------------------------------------------------------------------------------
# positions
# ---------------------------------------------------------------------------------------

def test_every_line_and_block_keeps_file_line_and_column():
    doc = parse("global {\n  project p\n}\n"
                "host a {\n    memory 64M\n\tnetwork eth0 {\n      address dhcp\n    }\n}\n")
    assert doc.global_block.pos == Pos("t.mln", 1, 1)
    assert doc.global_block.line("project").pos == Pos("t.mln", 2, 3)
    host = doc.hosts()["a"]
    assert host.pos == Pos("t.mln", 4, 1)
    assert host.line("memory").pos == Pos("t.mln", 5, 5)
    eth0 = host.block("network", "eth0")
    assert eth0.pos == Pos("t.mln", 6, 2)
    assert eth0.line("address").pos == Pos("t.mln", 7, 7)


def test_positions_on_one_line_point_at_each_item():
    doc = parse("host a { memory 64M; network eth0 { address dhcp } }")
    host = doc.hosts()["a"]
    assert host.pos == Pos("t.mln", 1, 1)
    assert host.line("memory").pos == Pos("t.mln", 1, 10)
    eth0 = host.block("network", "eth0")
    assert eth0.pos == Pos("t.mln", 1, 22)
    assert eth0.line("address").pos == Pos("t.mln", 1, 37)


def test_positions_of_lines_after_a_comment_with_braces():
    doc = parse("# {{ not a block }}\nhost a {\n  xen # a; comment }\n  memory 1M\n}\n")
    host = doc.hosts()["a"]
    assert host.line("xen").pos == Pos("t.mln", 3, 3)
    assert host.line("memory").pos == Pos("t.mln", 4, 3)


def test_tokenize_reports_items_with_positions():
    items = tokenize("a b\n  c d; e {\n}", "f")
    assert items == [
        ("line", ["a", "b"], Pos("f", 1, 1)),
        ("line", ["c", "d"], Pos("f", 2, 3)),
        ("open", ["e"], Pos("f", 2, 8)),
        ("close", [], Pos("f", 3, 1)),
    ]


# ---------------------------------------------------------------------------------------
# lines and blocks
# ---------------------------------------------------------------------------------------

def test_semicolon_separates_lines():
    doc = parse("host a {\n memory 64M; xen;; term screen\n}\n")
    assert texts(doc.hosts()["a"]) == ["memory 64M", "xen", "term screen"]


def test_one_line_blocks():
    doc = parse("host a { memory 64M; network eth0 { address dhcp } }")
    host = doc.hosts()["a"]
    assert host.get("memory") == "64M"
    assert host.block("network", "eth0").get("address") == "dhcp"


def test_simple_network_example_on_single_lines():
    doc = parse("global { project simple_network }\nswitch lan { }\n"
                "host starfish { network eth0 { switch lan; address 10.0.0.1; netmask 255.255.255.0 } }\n")
    assert doc.global_block.get("project") == "simple_network"
    assert list(doc.switches()) == ["lan"]
    eth0 = doc.hosts()["starfish"].block("network", "eth0")
    assert texts(eth0) == ["switch lan", "address 10.0.0.1", "netmask 255.255.255.0"]


def test_brace_without_space_after_the_name():
    # the original made a block literally named "network" with no interface level
    doc = parse("host a {\n network eth0{\n  address dhcp\n }\n}\n")
    host = doc.hosts()["a"]
    assert list(host.named("network")) == ["eth0"]
    assert host.block("network", "eth0").get("address") == "dhcp"


def test_closing_braces_glued_to_text():
    doc = parse("host a {network eth0{address dhcp}}")
    assert doc.hosts()["a"].block("network", "eth0").get("address") == "dhcp"


def test_bare_keyword_has_value_1():
    doc = parse("host a {\n xen\n hvm\n}\n")
    host = doc.hosts()["a"]
    assert host.get("xen") == "1"
    assert host.get("hvm") == "1"
    assert host.get("lvm") is None


def test_repeated_keyword_value_is_last_lines_keep_both():
    doc = parse("host a {\n memory 64M\n memory 128M\n}\n")
    host = doc.hosts()["a"]
    assert host.get("memory") == "128M"
    assert texts(host) == ["memory 64M", "memory 128M"]
    assert host.line("memory").pos.line == 3


def test_unknown_keywords_and_blocks_are_kept_for_plugins():
    doc = parse("host a {\n apache {\n  DocumentRoot /var/www\n }\n colour red\n}\n")
    host = doc.hosts()["a"]
    assert host.get("colour") == "red"
    assert host.block("apache").get("DocumentRoot") == "/var/www"


def test_paths_read_as_in_the_original():
    doc = parse("global { project p }\nhost web14 { network eth0 { address dhcp } }\n")
    assert doc.root.block("host", "web14", "network", "eth0").get("address") == "dhcp"
    assert doc.root.block("global").get("project") == "p"


# ---------------------------------------------------------------------------------------
# comments, escapes, white space, quotes
# ---------------------------------------------------------------------------------------

def test_comment_to_end_of_line():
    doc = parse("host a {  # the host\n memory 64M # in MB\n}\n")
    assert texts(doc.hosts()["a"]) == ["memory 64M"]


@pytest.mark.parametrize("comment", ["# x { y", "# a; b", "# close } here", "#}", "# {{{ ;;; }}}"])
def test_braces_and_semicolons_inside_a_comment_are_comment(comment):
    # the original created a line "y" from "# x { y" and closed blocks on "}"
    doc = parse(f"host a {{ {comment}\n memory 64M {comment}\n}}\n{comment}\n")
    host = doc.hosts()["a"]
    assert texts(host) == ["memory 64M"]
    assert host.blocks == {}
    assert list(doc.root.blocks) == ["host"]
    assert doc.root.lines == []


def test_backslash_escapes_a_semicolon():
    doc = parse("host a {\n startup {\n  echo a\\; b\n }\n}\n")
    assert texts(doc.hosts()["a"].block("startup")) == ["echo a; b"]


@pytest.mark.parametrize("escaped, literal", [("\\{", "{"), ("\\}", "}"), ("\\#", "#"),
                                              ("\\\\", "\\"), ("\\;", ";")])
def test_backslash_escapes_special_characters(escaped, literal):
    doc = parse(f"host a {{\n startup {{\n  echo x{escaped}y\n }}\n}}\n")
    assert texts(doc.hosts()["a"].block("startup")) == [f"echo x{literal}y"]


def test_backslash_at_the_end_of_a_line_continues_it():
    doc = parse("host a {\n startup {\n  echo a \\\n     b\\\n\\\n  c\n  d\n }\n}\n")
    startup = doc.hosts()["a"].block("startup")
    assert texts(startup) == ["echo a b c", "d"]
    assert startup.lines[0].pos == Pos("t.mln", 3, 3)
    assert startup.lines[1].pos == Pos("t.mln", 7, 3)


@pytest.mark.parametrize("text", ["global {\n project p\n a {\n  }\\\n}\n",
                                  "global {\n project p\n a {\\\n  b 1\n }\n}\n",
                                  "global {\n project p;\\\n}\n"])
def test_backslash_after_a_brace_or_semicolon_joins_nothing(text):
    doc = parse(text)
    assert doc.global_block.get("project") == "p"
    for block, _ in doc.root.walk():
        assert all(ln.words for ln in block.lines)


def test_a_line_after_a_continued_brace_has_its_own_position():
    doc = parse("host a {\\\n  memory 1M\n}\n")
    assert doc.hosts()["a"].line("memory").pos == Pos("t.mln", 2, 3)


def test_unicode_white_space_separates_words_with_or_without_backslashes():
    doc = parse("host a {\n startup {\n  x\u00a0y\n  x\u00a0y \\;\n }\n}\n")
    assert doc.hosts()["a"].block("startup").lines[0].words == ["x", "y"]
    assert doc.hosts()["a"].block("startup").lines[1].words == ["x", "y", ";"]


def test_white_space_collapses_and_quotes_are_kept():
    doc = parse('host a {\n startup {\n   echo   "a   b"\t\t\'c\'  \n }\n}\n')
    assert texts(doc.hosts()["a"].block("startup")) == ['echo "a b" \'c\'']


def test_windows_line_endings(tmp_path):
    (tmp_path / "part.mln").write_bytes(b"host b {\r\n memory 1M\r\n}\r\n")
    doc = parse("global {\r\n project p\r\n}\r\nhost a { xen; memory 64M }\r\n#include part.mln\r\n",
                cwd=tmp_path)
    assert doc.global_block.get("project") == "p"
    assert texts(doc.hosts()["a"]) == ["xen", "memory 64M"]
    assert doc.hosts()["b"].get("memory") == "1M"


def test_last_line_without_newline_is_kept():
    doc = parse("global { project p }\nhost a {\n xen\n}\nswitch lan {\n}\nstray")
    assert list(doc.switches()) == ["lan"]
    assert texts(doc.root) == ["stray"]


def test_last_keyword_line_without_newline_inside_a_block_file(tmp_path):
    (tmp_path / "lines.txt").write_text("server1 12\nserver2 all")
    doc = parse("global {\n project p\n autoenum {\n  service_hosts {\n#include lines.txt\n  }\n }\n}\n",
                cwd=tmp_path)
    assert texts(doc.global_block.block("autoenum", "service_hosts")) == ["server1 12", "server2 all"]


def test_include_as_very_last_line_without_newline(tmp_path):
    (tmp_path / "hosts.mln").write_text("host b {\n memory 1M\n}\n")
    main = tmp_path / "main.mln"
    main.write_text("global { project p }\n#include hosts.mln")
    doc = parse_file(str(main))
    assert list(doc.hosts()) == ["b"]


# ---------------------------------------------------------------------------------------
# redefinitions
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["host", "switch", "superclass"])
def test_redefinition_replaces_with_a_warning_naming_both_places(kind):
    doc = parse(f"{kind} x {{\n memory 1M\n}}\n\n{kind} x {{\n memory 2M\n}}\n")
    block = doc.root.named(kind)["x"]
    assert texts(block) == ["memory 2M"]          # replaced, not merged
    [warning] = doc.problems.warnings
    assert warning.where == Pos("t.mln", 5, 1)
    assert "t.mln:1:1" in warning.message
    assert "defined again" in warning.message


def test_second_global_replaces_the_first_with_a_warning():
    doc = parse("global {\n project one\n}\nglobal {\n $x = 1\n}\n")
    assert doc.global_block.get("project") is None
    [warning] = doc.problems.warnings
    assert warning.where == Pos("t.mln", 4, 1)
    assert "t.mln:1:1" in warning.message


def test_replaced_host_is_not_merged_with_the_first():
    doc = parse("host a {\n xen\n network eth0 { address dhcp }\n}\nhost a {\n memory 1M\n}\n")
    host = doc.hosts()["a"]
    assert host.get("xen") is None
    assert host.named("network") == {}


# ---------------------------------------------------------------------------------------
# syntax errors
# ---------------------------------------------------------------------------------------

def test_unclosed_block_names_its_opening():
    with pytest.raises(MlnError) as e:
        parse("global { project p }\nhost a {\n memory 1M\n")
    assert e.value.where == Pos("t.mln", 2, 1)
    assert "never closed" in e.value.message


def test_extra_closing_brace_names_its_position():
    with pytest.raises(MlnError) as e:
        parse("global { project p }\n  }\n")
    assert e.value.where == Pos("t.mln", 2, 3)


def test_network_needs_a_name():
    with pytest.raises(MlnError) as e:
        parse("host a {\n network {\n }\n}\n")
    assert e.value.where == Pos("t.mln", 2, 2)
    assert "network eth0" in e.value.message


def test_host_inside_a_host_is_an_error():
    with pytest.raises(MlnError) as e:
        parse("host a {\n host b {\n }\n}\n")
    assert e.value.where == Pos("t.mln", 2, 2)


@pytest.mark.parametrize("name", ["-bad", "a.b", "a/b", "a$", "ä"])
def test_bad_host_names_are_errors(name):
    with pytest.raises(MlnError) as e:
        parse(f"global {{ project p }}\nhost {name} {{\n}}\n")
    assert e.value.where.line == 2
    assert "host name" in e.value.message


def test_keyword_line_outside_any_block_is_a_warning():
    doc = parse("memory 5\nglobal { project p }\n")
    [warning] = doc.problems.warnings
    assert warning.where == Pos("t.mln", 1, 1)
    assert "outside any block" in warning.message


# ---------------------------------------------------------------------------------------
# #include
# ---------------------------------------------------------------------------------------

def test_include_at_top_level_keeps_positions_in_the_included_file(tmp_path):
    (tmp_path / "hosts.mln").write_text("\nhost b {\n  memory 1M\n}\n")
    (tmp_path / "main.mln").write_text("global { project p }\n#include hosts.mln\nhost c {\n}\n")
    doc = parse_file(str(tmp_path / "main.mln"), cwd=str(tmp_path))
    assert list(doc.hosts()) == ["b", "c"]
    assert doc.hosts()["b"].line("memory").pos == Pos("hosts.mln", 3, 3)
    assert doc.hosts()["c"].pos.file.endswith("main.mln")
    assert doc.files[1] == "hosts.mln"


def test_include_inside_a_block(tmp_path):
    (tmp_path / "servers.txt").write_text("server1 12\nserver2 12\nserver3 all\n")
    doc = parse("global {\n project p\n autoenum {\n  service_hosts {\n#include servers.txt\n  }\n"
                "  numhosts 3\n }\n}\n", cwd=tmp_path)
    auto = doc.global_block.block("autoenum")
    assert texts(auto.block("service_hosts")) == ["server1 12", "server2 12", "server3 all"]
    assert auto.get("numhosts") == "3"     # the including file continues after the include


def test_include_inside_a_host_block(tmp_path):
    (tmp_path / "net.inc").write_text("network eth0 {\n address dhcp\n}\n")
    doc = parse("host a {\n#include net.inc\n memory 1M\n}\n", cwd=tmp_path)
    host = doc.hosts()["a"]
    assert host.block("network", "eth0").get("address") == "dhcp"
    assert host.get("memory") == "1M"


def test_nested_includes(tmp_path):
    (tmp_path / "a.mln").write_text("#include b.mln\nhost a {\n}\n")
    (tmp_path / "b.mln").write_text("#include c.mln\nhost b {\n}\n")
    (tmp_path / "c.mln").write_text("host c {\n}\n")
    doc = parse("global { project p }\n#include a.mln\n", cwd=tmp_path)
    assert list(doc.hosts()) == ["c", "b", "a"]


def test_include_is_relative_to_the_including_file_first(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "part.mln").write_text("host from_sub {\n}\n")
    (tmp_path / "part.mln").write_text("host from_cwd {\n}\n")
    (sub / "main.mln").write_text("global { project p }\n#include part.mln\n")
    monkeypatch.chdir(tmp_path)
    doc = parse_file("sub/main.mln")
    assert list(doc.hosts()) == ["from_sub"]


def test_include_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "part.mln").write_text("host from_cwd {\n}\n")
    (sub / "main.mln").write_text("global { project p }\n#include other/part.mln\n")
    monkeypatch.chdir(tmp_path)
    doc = parse_file("sub/main.mln")
    assert list(doc.hosts()) == ["from_cwd"]


def test_include_with_an_absolute_path(tmp_path):
    part = tmp_path / "elsewhere" / "part.mln"
    part.parent.mkdir()
    part.write_text("host abs {\n}\n")
    doc = parse(f"global {{ project p }}\n#include {part}\n", cwd=tmp_path / "..")
    assert list(doc.hosts()) == ["abs"]


def test_include_cycle_is_an_error_naming_the_include_line(tmp_path, monkeypatch):
    (tmp_path / "one.mln").write_text("global { project p }\n#include two.mln\n")
    (tmp_path / "two.mln").write_text("host x {\n}\n   #include one.mln\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlnError) as e:
        parse_file("one.mln")
    assert e.value.where == Pos("two.mln", 3, 4)
    assert "cycle" in e.value.message


def test_file_including_itself_is_a_cycle(tmp_path, monkeypatch):
    (tmp_path / "self.mln").write_text("global { project p }\n#include self.mln\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlnError) as e:
        parse_file("self.mln")
    assert e.value.where == Pos("self.mln", 2, 1)


def test_missing_include_file_is_an_error_naming_the_include_line(tmp_path, monkeypatch):
    (tmp_path / "main.mln").write_text("global { project p }\nhost a {\n  #include nope.mln\n}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlnError) as e:
        parse_file("main.mln")
    assert e.value.where == Pos("main.mln", 3, 3)
    assert "nope.mln" in e.value.message


def test_include_of_a_directory_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "adir").mkdir()
    (tmp_path / "main.mln").write_text("global { project p }\n#include adir\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlnError) as e:
        parse_file("main.mln")
    assert e.value.where == Pos("main.mln", 2, 1)


def test_hash_include_needs_a_space_to_be_an_include(tmp_path):
    doc = parse("global { project p }\n#included is just a comment\n", cwd=tmp_path)
    assert doc.root.lines == []
    assert doc.files == ["t.mln"]


def test_parse_file_reads_relative_to_its_own_directory(tmp_path):
    (tmp_path / "part.mln").write_text("host b {\n}\n")
    (tmp_path / "main.mln").write_text("global { project p }\n#include part.mln\n")
    cwd = os.getcwd()
    doc = parse_file(str(tmp_path / "main.mln"))
    assert os.getcwd() == cwd
    assert list(doc.hosts()) == ["b"]
