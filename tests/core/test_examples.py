"""The example projects: golden output of ``show`` and ``parse -H``, the facts the spec
states about them, and the writer's round trip."""
from __future__ import annotations

import json
import re

import pytest

from mln_core.lang.parser import parse_file, parse_text
from mln_core.lang.writer import write_tree

from . import regen_golden
from .conftest import EXAMPLES, GOLDEN, context

ALL = sorted(p.stem for p in EXAMPLES.glob("*.mln"))
PROJECTS = regen_golden.examples()


@pytest.fixture
def in_examples(monkeypatch):
    monkeypatch.chdir(EXAMPLES)


def test_every_example_has_golden_files():
    assert "oscourse" not in PROJECTS and len(PROJECTS) == len(ALL) - 1
    for example in PROJECTS:
        assert (GOLDEN / f"{example}.show.txt").is_file(), example
        assert (GOLDEN / f"{example}.parse-H.txt").is_file(), example


@pytest.mark.parametrize("example", PROJECTS)
def test_golden(in_examples, example):
    for name, text in regen_golden.render(example).items():
        expected = (GOLDEN / name).read_text()
        assert text == expected, f"{name} differs; if the change is intended, run " \
                                 "python tests/core/regen_golden.py and read the diff"


def test_golden_output_has_no_absolute_paths():
    for path in GOLDEN.iterdir():
        assert str(EXAMPLES) not in path.read_text()
        assert "/tmp/" not in path.read_text()


# ---------------------------------------------------------------------------------------
# what the spec says about the examples (independent of the golden files)
# ---------------------------------------------------------------------------------------

def show_json(mln, example: str, *extra: str) -> dict:
    code, out, err = mln("show", "--format", "json", *extra, "-f", f"{example}.mln")
    assert code == 0, err
    return json.loads(out)


def test_italy(mln, in_examples):
    data = show_json(mln, "italy")
    memory = {name: h["memory"] for name, h in data["hosts"].items()}
    assert memory == {"rome": "128M", "milan": "128M", "venice": "256M"}
    for name, h in data["hosts"].items():
        assert h["superclasses"] == ["basic"]
        assert h["service_host"] == "bigvmbox"
        assert h["interfaces"]["eth0"]["switch"] == "lan"
        assert h["interfaces"]["eth0"]["netmask"] == "255.255.255.0"
    assert data["switches"]["lan"]["members"] == ["rome.eth0", "milan.eth0", "venice.eth0"]


def test_italy_explain(mln, in_examples):
    data = show_json(mln, "italy", "--explain")
    assert data["hosts"]["venice"]["memory"]["from"] == "host venice (italy.mln:37:5)"
    assert data["hosts"]["rome"]["memory"]["from"] == "superclass basic (italy.mln:12:5)"
    assert data["hosts"]["rome"]["size"]["from"] == "default"


def test_oscourse_group07(mln, in_examples):
    data = show_json(mln, "oscourse-group07")
    linux, windows = data["hosts"]["linux"], data["hosts"]["windows"]
    pw = re.search(r"\$password = (\S+)", (EXAMPLES / "oscourse-group07.mln").read_text()).group(1)
    assert pw.startswith("$6$mlnsalt$")
    assert linux["root_passwd"] == windows["other"]["vncpasswd"] == "<secret>"    # show never prints one
    assert linux["interfaces"]["eth0"]["address"] == "192.0.2.107"
    assert windows["other"]["vncdisplay"] == "7"
    for path in ("/host/linux/root_passwd", "/host/windows/vncpasswd"):         # -S prints the value asked for
        assert mln("parse", "-f", "oscourse-group07.mln", "-S", path)[1] == pw + "\n"
    assert data["switches"]["lan"]["members"] == ["linux.eth1", "windows.eth0"]


def test_oscourse_fragment_has_no_errors(mln, in_examples):
    code, _, err = mln("check", "-f", "oscourse.mln")
    assert code == 0
    assert "oscourse.mln: 0 errors" in err


def test_vcluster(mln, in_examples):
    hosts = show_json(mln, "vcluster")["hosts"]
    assert list(hosts) == [f"node{i:02d}" for i in range(1, 37)]
    for i, (name, h) in enumerate(hosts.items(), 1):
        assert h["service_host"] == f"server{(i - 1) // 12 + 1}.example.org", name
        assert h["interfaces"]["eth0"] == {"address": f"10.0.0.{9 + i}", "netmask": "255.255.255.0",
                                           "gateway": "10.0.0.1"}
        assert (h["memory"], h["free_space"], h["hypervisor"]) == ("256M", "1000M", "xen")


def test_simple_network(mln, in_examples):
    data = show_json(mln, "simple_network")
    assert data["hosts"]["starfish"]["interfaces"]["eth0"]["address"] == "10.0.0.1"
    assert data["hosts"]["catfish"]["interfaces"]["eth0"]["address"] == "10.0.0.2"
    assert data["switches"]["lan"]["members"] == ["starfish.eth0", "catfish.eth0"]


# ---------------------------------------------------------------------------------------
# the writer: parse(write(tree)) == tree
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", ALL)
def test_round_trip(in_examples, example):
    doc = parse_file(f"{example}.mln")
    text = write_tree(doc.root)
    again = parse_text(text, "written.mln")
    assert again.root.structure() == doc.root.structure()
    assert write_tree(again.root) == text
    assert again.problems.items == [] or example == "oscourse"


@pytest.mark.parametrize("example", PROJECTS)
def test_round_trip_after_post_parse(in_examples, example):
    ctx = context()
    doc = parse_file(f"{example}.mln")
    ctx.pm.hook.mln_post_parse(doc=doc, ctx=ctx)
    again = parse_text(write_tree(doc.root), "written.mln")
    assert again.root.structure() == doc.root.structure()


@pytest.mark.parametrize("example", PROJECTS)
def test_parse_output_reads_back_to_the_same_model(mln, in_examples, tmp_path, example):
    code, out, _ = mln("parse", "-f", f"{example}.mln")
    assert code == 0
    (tmp_path / "written.mln").write_text(out)
    original = show_json(mln, example)
    code, again, err = mln("show", "--format", "json", "-f", tmp_path / "written.mln")
    assert code == 0, err
    assert json.loads(again) == original


@pytest.mark.parametrize("example", PROJECTS)
def test_yaml_and_json_agree(mln, in_examples, example):
    from ruamel.yaml import YAML
    for extra in ([], ["--explain"]):
        code, out, _ = mln("show", "--format", "yaml", *extra, "-f", f"{example}.mln")
        assert code == 0
        assert YAML(typ="safe").load(out) == show_json(mln, example, *extra)
