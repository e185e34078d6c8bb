"""Superclasses: chains, override, recursive merge, line-block union, provenance (spec 2.4)."""
from __future__ import annotations

import json

import pytest

from mln_core.errors import MlnError, Pos
from mln_core.lang.parser import parse_text
from mln_core.merge import Resolved

CHAIN = """global {
    project chain
}
superclass base {
    xen
    memory 64M
    template base.ext3
    term screen
    network eth0 {
        switch lan
        netmask 255.255.255.0
        gateway 10.0.0.1
    }
    startup {
        echo base
        echo shared
    }
    users {
        alice $1$a$a
    }
}
superclass mid {
    superclass base
    memory 128M
    template mid.ext3
    startup {
        echo mid
        echo shared
    }
}
superclass top {
    superclass mid
    memory 256M
    network eth0 {
        gateway 10.0.0.254
    }
    users {
        bob $1$b$b
    }
}
switch lan {
}
host leaf {
    superclass top
    network eth0 {
        address 10.0.0.5
    }
    startup {
        echo leaf
    }
}
host plain {
    superclass mid
    template own.ext3
}
"""


def at(needle: str) -> str:
    """``line:col`` of the first ``needle`` in CHAIN."""
    i = CHAIN.index(needle)
    line = CHAIN.count("\n", 0, i) + 1
    return f"{line}:{i - CHAIN.rfind(chr(10), 0, i)}"


@pytest.fixture
def r():
    return Resolved(parse_text(CHAIN, "chain.mln"))


def test_chain_of_depth_three(r):
    assert [b.name for b in r.chain("host", "leaf")] == ["leaf", "top", "mid", "base"]


def test_scalar_nearest_definition_wins(r):
    leaf = r.effective("host", "leaf")
    assert leaf.get("memory") == "256M"        # top
    assert leaf.get("template") == "mid.ext3"  # mid
    assert leaf.get("term") == "screen"        # base
    assert leaf.get("xen") == "1"              # base
    plain = r.effective("host", "plain")
    assert plain.get("template") == "own.ext3"  # the host itself
    assert plain.get("memory") == "128M"


def test_overridden_scalar_appears_once(r):
    leaf = r.effective("host", "leaf")
    assert [ln.text for ln in leaf.lines if ln.keyword == "memory"] == ["memory 256M"]


def test_network_blocks_merge_recursively(r):
    eth0 = r.effective("host", "leaf").block("network", "eth0")
    assert eth0.get("switch") == "lan"
    assert eth0.get("netmask") == "255.255.255.0"
    assert eth0.get("gateway") == "10.0.0.254"
    assert eth0.get("address") == "10.0.0.5"


def test_line_blocks_are_the_union_superclass_lines_first(r):
    leaf = r.effective("host", "leaf")
    assert leaf.block("startup").line_texts() == ["echo base", "echo shared", "echo mid", "echo leaf"]
    assert leaf.block("users").line_texts() == ["alice $1$a$a", "bob $1$b$b"]


def test_superclass_itself_is_resolved(r):
    top = r.merged("superclass", "top")
    assert top.get("memory") == "256M"
    assert top.get("term") == "screen"


def test_provenance_of_effective_values(r):
    leaf = r.effective("host", "leaf")
    assert leaf.line("memory").origin == "superclass top"
    assert leaf.line("term").origin == "superclass base"
    assert str(leaf.line("term").pos) == f"chain.mln:{at('term screen')}"
    eth0 = leaf.block("network", "eth0")
    assert eth0.line("address").origin == "host leaf"
    assert eth0.line("netmask").origin == "superclass base"


def test_parse_H_prints_the_merged_host(mln, write):
    path = write(CHAIN)
    code, out, err = mln("parse", "-f", path, "-H", "/host/leaf")
    assert code == 0, err
    assert not out.startswith("host leaf {")           # the contents only, as the original
    assert "memory 256M\n" in out.splitlines(keepends=True)
    assert "memory 128M" not in out
    assert "\tgateway 10.0.0.254\n" in out
    assert "\techo base\n\techo shared\n\techo mid\n\techo leaf\n" in out


def test_parse_A_lists_superclass_lines_first(mln, write):
    path = write(CHAIN)
    code, out, _ = mln("parse", "-f", path, "-A", "/host/leaf/startup")
    assert code == 0
    assert out == "echo base\necho shared\necho mid\necho leaf\n"


def test_unknown_superclass_is_an_error_with_position():
    doc = parse_text("global { project p }\nhost a {\n    superclass nope\n}\n", "t.mln")
    r = Resolved(doc)
    with pytest.raises(MlnError) as e:
        r.effective("host", "a")
    assert e.value.where == Pos("t.mln", 3, 5)
    assert "nope" in e.value.message


def test_superclass_cycle_is_an_error_with_position():
    doc = parse_text("global { project p }\n"
                     "superclass a {\n superclass b\n}\n"
                     "superclass b {\n superclass c\n}\n"
                     "superclass c {\n superclass a\n}\n"
                     "host h {\n superclass a\n}\n", "t.mln")
    with pytest.raises(MlnError) as e:
        Resolved(doc).effective("host", "h")
    assert "cycle" in e.value.message
    assert e.value.where.file == "t.mln"
    assert e.value.where.line in (3, 6, 9)


def test_superclass_naming_itself_is_a_cycle():
    doc = parse_text("global { project p }\nsuperclass a {\n superclass a\n}\n", "t.mln")
    with pytest.raises(MlnError) as e:
        Resolved(doc).merged("superclass", "a")
    assert e.value.where == Pos("t.mln", 3, 2)


@pytest.mark.parametrize("text, line", [
    ("global { project p }\nhost a {\n superclass nope\n}\n", 3),
    ("global { project p }\nsuperclass x {\n superclass y\n}\nsuperclass y {\n superclass x\n}\n", None),
])
def test_check_reports_superclass_errors(mln, write, text, line):
    path = write(text)
    code, out, err = mln("check", "-f", path)
    assert code == 1
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert errors
    assert all(ln.startswith(f"{path}:") for ln in errors)
    if line:
        assert errors[0].startswith(f"{path}:{line}:")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# show --explain
# ---------------------------------------------------------------------------------------

def test_show_explain_names_host_superclass_or_default(mln, write):
    path = write(CHAIN, "chain.mln")
    code, out, err = mln("show", "--explain", "--format", "json", "-f", path)
    assert code == 0, err
    leaf = json.loads(out)["hosts"]["leaf"]
    assert leaf["memory"] == {"value": "256M",
                              "from": f"superclass top ({path}:{at('memory 256M')})"}
    assert leaf["template"] == {"value": "mid.ext3",
                                "from": f"superclass mid ({path}:{at('template mid')})"}
    assert leaf["hypervisor"] == {"value": "xen", "from": f"superclass base ({path}:{at('xen')})"}
    assert leaf["size"] == {"value": "250M", "from": "default"}
    assert leaf["boot_order"]["from"] == "default"
    eth0 = leaf["interfaces"]["eth0"]
    assert eth0["address"] == {"value": "10.0.0.5",
                               "from": f"host leaf ({path}:{at('address 10.0.0.5')})"}
    assert eth0["gateway"]["from"] == f"superclass top ({path}:{at('gateway 10.0.0.254')})"
    plain = json.loads(out)["hosts"]["plain"]
    assert plain["template"] == {"value": "own.ext3",
                                 "from": f"host plain ({path}:{at('template own')})"}


def test_show_explain_text(mln, write):
    path = write(CHAIN, "chain.mln")
    code, out, _ = mln("show", "--explain", "-f", path)
    assert code == 0
    lines = out.splitlines()
    mem = next(ln for ln in lines[lines.index("host leaf"):] if ln.strip().startswith("memory"))
    assert mem.split() == ["memory", "256M", "#", "superclass", "top", f"({path}:{at('memory 256M')})"]
    size = next(ln for ln in lines[lines.index("host leaf"):] if ln.strip().startswith("size"))
    assert size.split() == ["size", "250M", "#", "default"]


def test_show_explain_uses_config_defaults(mln, write, isolated_env):
    isolated_env.write_text("default_memory 48M\n")
    path = write("global { project p }\nhost a {\n}\n")
    code, out, _ = mln("show", "--explain", "--format", "json", "-f", path)
    assert code == 0
    assert json.loads(out)["hosts"]["a"]["memory"] == {"value": "48M", "from": "default"}
