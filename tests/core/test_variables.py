"""Variables: definitions, uses, scopes, built-ins, escapes, crypt hashes (spec 2.6)."""
from __future__ import annotations

from mln_core.errors import Pos
from mln_core.lang.parser import parse_text
from mln_core.merge import Resolved

from .conftest import context


def resolved(text: str):
    doc = parse_text(text, "t.mln")
    return doc, Resolved(doc)


def host(text: str, name: str):
    doc, r = resolved(text)
    return doc, r.effective("host", name)


def warnings(doc) -> list[str]:
    return [f"{p.where}: {p.message}" for p in doc.problems.warnings]


def test_definition_and_both_use_forms():
    doc, h = host("global {\n project p\n $mem = 64\n}\n"
                  "host a {\n memory $[mem]M\n kernel /boot/$mem\n}\n", "a")
    assert h.get("memory") == "64M"
    assert h.get("kernel") == "/boot/64"
    assert doc.problems.items == []


def test_definitions_are_not_lines():
    doc, _ = resolved("global {\n project p\n $mem = 64\n}\n")
    g = doc.global_block
    assert [ln.text for ln in g.lines] == ["project p"]
    assert g.vars["mem"].value == "64"
    assert g.vars["mem"].pos == Pos("t.mln", 3, 2)


def test_variable_value_keeps_all_words():
    _, h = host("global {\n project p\n $cmd = echo   hello world\n}\n"
                "host a {\n startup {\n  $cmd\n }\n}\n", "a")
    assert h.block("startup").line_texts() == ["echo hello world"]


def test_variable_in_a_host_name():
    doc, _ = resolved("global {\n project p\n $group = 07\n}\nhost linux$group {\n}\n")
    assert list(doc.hosts()) == ["linux07"]


def test_variable_in_switch_definition_and_reference_match(mln, write):
    # the original resolved the reference (lan07) but not the switch name (lan$group)
    path = write("global {\n project p\n $group = 07\n}\nswitch lan$group {\n}\n"
                 "host a {\n network eth0 {\n  switch lan$group\n  address dhcp\n }\n}\n")
    code, out, err = mln("show", "-f", path)
    assert code == 0, err
    assert "switch lan07: a.eth0" in out
    code, out, err = mln("check", "-f", path)
    assert code == 0, err
    assert err.endswith(": 0 errors, 0 warnings\n"), err


def test_variable_in_a_superclass_name():
    doc, h = resolved("global {\n project p\n $kind = web\n}\n"
                      "superclass base$kind {\n memory 96M\n}\n"
                      "host a {\n superclass base$kind\n}\n")
    assert list(doc.superclasses()) == ["baseweb"]
    assert h.effective("host", "a").get("memory") == "96M"


def test_superclass_line_takes_the_hosts_own_variable():
    text = ("global {\n project p\n $mem = 32\n}\n"
            "superclass basic {\n memory $[mem]M\n}\n"
            "host own {\n superclass basic\n $mem = 512\n}\n"
            "host global_only {\n superclass basic\n}\n")
    _, r = resolved(text)
    assert r.effective("host", "own").get("memory") == "512M"
    assert r.effective("host", "global_only").get("memory") == "32M"


def test_resolution_order_innermost_block_host_superclass_chain_global():
    text = ("global {\n project p\n $a = global\n $b = global\n $c = global\n $d = global\n"
            " $e = global\n}\n"
            "superclass top {\n $a = top\n $b = top\n $c = top\n $d = top\n}\n"
            "superclass mid {\n superclass top\n $a = mid\n $b = mid\n $c = mid\n}\n"
            "host h {\n superclass mid\n $a = host\n $b = host\n"
            " network eth0 {\n  $a = block\n  address dhcp\n  mac $a $b $c $d $e\n }\n}\n")
    _, h = host(text, "h")
    assert h.block("network", "eth0").get("mac") == "block host mid top global"


def test_nearest_superclass_variable_wins():
    text = ("global {\n project p\n}\n"
            "superclass base {\n $colour = red\n color $colour\n}\n"
            "superclass mid {\n superclass base\n $colour = blue\n}\n"
            "host a {\n superclass mid\n}\nhost b {\n superclass base\n}\n")
    _, r = resolved(text)
    assert r.effective("host", "a").get("color") == "blue"
    assert r.effective("host", "b").get("color") == "red"


def test_variables_referring_to_variables():
    _, h = host("global {\n project p\n $net = 10.0.$[group]\n $group = 7\n}\n"
                "host a {\n network eth0 {\n  address $[net].1\n }\n}\n", "a")
    assert h.block("network", "eth0").get("address") == "10.0.7.1"


def test_self_reference_is_an_error_not_a_hang():
    doc, h = host("global {\n project p\n $a = x$a\n}\nhost h {\n kernel $a\n}\n", "h")
    assert doc.problems.errors
    assert "refers to itself" in doc.problems.errors[0].message


def test_builtins_hostname_and_project():
    text = ("global {\n project demo\n}\n"
            "superclass s {\n startup {\n  echo $hostname of $project\n }\n}\n"
            "host a {\n superclass s\n}\nhost b {\n superclass s\n}\n")
    _, r = resolved(text)
    assert r.effective("host", "a").block("startup").line_texts() == ["echo a of demo"]
    assert r.effective("host", "b").block("startup").line_texts() == ["echo b of demo"]


def test_global_variable_using_a_builtin_is_resolved_per_host():
    _, r = resolved("global {\n project demo\n $home = /home/$hostname/$project\n}\n"
                    "host a {\n startup {\n  cd $home\n }\n}\nhost b {\n startup {\n  cd $home\n }\n}\n")
    assert r.effective("host", "a").block("startup").line_texts() == ["cd /home/a/demo"]
    assert r.effective("host", "b").block("startup").line_texts() == ["cd /home/b/demo"]


def test_escaped_dollar_is_a_literal_dollar():
    doc, h = host("global {\n project p\n $HOME = nope\n}\n"
                  "host a {\n startup {\n  echo \\$HOME costs \\$5\n }\n}\n", "a")
    assert h.block("startup").line_texts() == ["echo $HOME costs $5"]
    assert doc.problems.items == []


def test_undefined_variable_is_left_as_text():
    doc, h = host("global {\n project p\n}\nhost a {\n kernel /k/$nothing/x\n}\n", "a")
    assert h.get("kernel") == "/k/$nothing/x"
    [w] = doc.problems.warnings
    assert w.where == Pos("t.mln", 5, 2)
    assert "$nothing" in w.message


def test_check_reports_an_undefined_variable(mln, write):
    path = write("global {\n project p\n}\nhost a {\n kernel $nothing\n}\n")
    code, out, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:5:2: warning: variable $nothing is not defined" in err


def test_crypt_hash_survives_even_if_a_variable_named_salt_exists():
    hashes = ["$6$salt$hash", "$1$salt$abcdefghijk", "$5$rounds=5000$salt$hash"]
    for value in hashes:
        doc, h = host("global {\n project p\n $salt = BAD\n $hash = BAD\n $6 = BAD\n}\n"
                      f"host a {{\n root_passwd {value}\n users {{\n  bob {value}\n }}\n}}\n", "a")
        assert h.get("root_passwd") == value
        assert h.block("users").line_texts() == [f"bob {value}"]
        assert doc.problems.items == []


def test_crypt_hash_in_a_variable_survives():
    pw = "$6$mlnsalt$0KxqGJ0sN0YyL4m1mYw2o0cK3mS0zB1m"
    _, h = host(f"global {{\n project p\n $password = {pw}\n $mlnsalt = BAD\n}}\n"
                "host a {\n root_passwd $password\n}\n", "a")
    assert h.get("root_passwd") == pw


def test_top_level_variables_are_not_visible():
    doc, h = host("$mem = 64\nglobal {\n project p\n}\nhost a {\n memory $[mem]M\n}\n", "a")
    assert h.get("memory") == "$[mem]M"
    msgs = warnings(doc)
    assert any(m.startswith("t.mln:1:1:") and "outside any block" in m for m in msgs)
    assert any(m.startswith("t.mln:6:2:") and "$mem is not defined" in m for m in msgs)


def test_variables_of_another_host_are_not_visible():
    doc, h = host("global {\n project p\n}\nhost a {\n $x = 1\n}\nhost b {\n kernel $x\n}\n", "b")
    assert h.get("kernel") == "$x"


def test_global_variable_in_the_project_name():
    doc, r = resolved("global {\n $name = demo\n project $name\n}\n")
    assert r.project == "demo"


def test_bad_variable_name_is_an_error():
    import pytest
    from mln_core.errors import MlnError
    with pytest.raises(MlnError) as e:
        parse_text("global {\n $a-b = 1\n}\n", "t.mln")
    assert e.value.where == Pos("t.mln", 2, 2)


def test_model_sees_resolved_values(write):
    from mln_core.project import load_project
    path = write("global {\n project p\n $group = 7\n $mem = 96\n}\nswitch lan$group {\n}\n"
                 "host linux$group {\n memory $[mem]M\n network eth0 {\n  switch lan$group\n"
                 "  address 10.0.$[group].1\n }\n}\n")
    project = load_project(str(path), context()).project
    h = project.hosts["linux7"]
    assert h.memory == 96 * 2**20
    assert h.interfaces[0].switch == "lan7"
    assert h.interfaces[0].address == "10.0.7.1"
    assert project.switches["lan7"].members == [("linux7", "eth0")]
