"""``mln graph``: a project's network as DOT, Mermaid, SVG (Graphviz's dot) or JSON: every
host, switch and link, service hosts as clusters, names that cannot break the syntax,
and bad input as one clear error."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from mln_core.graph import address_text, to_dot, to_mermaid

from .conftest import EXAMPLES

VCLUSTER = EXAMPLES / "vcluster.mln"
NODES = [f"node{i:02d}" for i in range(1, 37)]
SERVERS = ["server1.example.org", "server2.example.org", "server3.example.org"]
SVG = "{http://www.w3.org/2000/svg}"

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed "
                                                                     "(apt-get install graphviz)")

MIXED = """global {
    project lab-1.b
}
switch lan {
}
switch dmz {
    service_host remote1
}
host web {
    memory 96M
    network eth0 {
        switch lan
        address 10.0.0.1
        netmask 255.255.255.0
    }
    network eth1 {
        switch dmz
        address dhcp
    }
}
host db {
    hypervisor qemu
    service_host remote1
    network eth0 {
        switch dmz
        address 192.168.1.2
        netmask 24
    }
    network eth1 {
        bridge xenbr0
    }
    network eth2 {
        switch /run/vde/outside.ctl
    }
    network eth3 {
    }
}
"""


def dot_check(text: str) -> str:
    """The SVG of ``dot -Tsvg``: fails the test if dot refuses the text."""
    r = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    return r.stdout


def svg_texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def clusters(dot: str) -> dict[str, list[str]]:
    """cluster label -> the node ids declared in it (the DOT text of to_dot)."""
    out = {}
    cluster = re.compile(r'^  subgraph "cluster_\d+" \{\n    label=<([^\n]*)>;[^\n]*\n(.*?)^  \}$',
                         re.M | re.S)
    for m in cluster.finditer(dot):
        out[m.group(1)] = re.findall(r'^    ("[^"]*") \[', m.group(2), re.M)
    return out


def one_error_line(code: int, out: str, err: str, expect_code: int = 1) -> str:
    assert code == expect_code and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mln: error: ") and "Traceback" not in err, err
    return lines[0]


# --- the golden example ---------------------------------------------------------------------

@needs_dot
def test_svg_of_vcluster_parses_and_names_every_host(mln, tmp_path):
    out = tmp_path / "vcluster.svg"
    code, stdout, err = mln("graph", "-f", VCLUSTER, "--format", "svg", "-o", out)
    assert (code, stdout) == (0, ""), err
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    texts = svg_texts(out.read_text())
    for name in NODES + SERVERS:
        assert name in texts, name
    assert "10.0.0.45/24" in texts and "project vcluster" in texts
    # to standard output without -o: the same picture
    code, stdout, _ = mln("graph", "-f", VCLUSTER, "--format", "svg")
    assert code == 0 and stdout == out.read_text()


@needs_dot
def test_dot_of_vcluster_passes_dot_and_has_a_cluster_per_service_host(mln):
    code, dot, err = mln("graph", "-f", VCLUSTER)          # dot is the default
    assert code == 0, err
    assert dot.startswith('graph "project:vcluster" {') and dot.rstrip().endswith("}")
    dot_check(dot)
    found = clusters(dot)
    assert list(found) == SERVERS
    for n, server in enumerate(SERVERS):
        hosts = [i for i in found[server] if i.startswith('"host:')]
        assert hosts == [f'"host:{h}"' for h in NODES[12 * n:12 * n + 12]]
    assert len(re.findall(r'^  "host:node\d\d" -- ', dot, re.M)) == 36     # one edge per interface
    assert 'label=<<B>node01</B><BR/>xen, 256M>' in dot
    assert '-- "none:node01%00eth0" [label=<eth0<BR/>10.0.0.10/24>];' in dot


def test_mermaid_of_vcluster_has_a_header_subgraphs_and_one_line_per_link(mln, tmp_path):
    code, text, err = mln("graph", "-f", VCLUSTER, "--format", "mermaid")
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0] == "graph LR"
    assert [ln.strip() for ln in lines if ln.strip().startswith("subgraph ")] == \
        [f'subgraph c{n}["{s}"]' for n, s in enumerate(SERVERS, 1)]
    assert sum(ln.strip() == "end" for ln in lines) == 3
    links = [ln for ln in lines if "---" in ln]
    assert len(links) == 36
    assert all(re.fullmatch(r'  h\d+ ---\|"eth0<br/>10\.0\.0\.\d+/24"\| n\d+', ln) for ln in links), links
    assert '    h1["node01<br/>xen, 256M"]' in lines
    if shutil.which("mmdc"):                              # mermaid-cli, when it is installed
        src = tmp_path / "v.mmd"
        src.write_text(text)
        r = subprocess.run(["mmdc", "-i", src, "-o", tmp_path / "v.svg"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        ET.parse(tmp_path / "v.svg")


def test_json_of_vcluster_lists_every_host_and_link(mln):
    code, text, err = mln("graph", "-f", VCLUSTER, "--format", "json")
    assert code == 0, err
    data = json.loads(text)
    assert data["project"] == "vcluster" and data["service_hosts"] == SERVERS
    assert [h["name"] for h in data["hosts"]] == NODES and data["switches"] == []
    assert data["hosts"][0] == {"name": "node01", "hypervisor": "xen", "memory": "256M",
                                "template": "centos-node.ext3", "service_host": SERVERS[0]}
    assert [(ln["host"], ln["interface"]) for ln in data["links"]] == [(h, "eth0") for h in NODES]
    assert data["links"][35] == {"host": "node36", "interface": "eth0", "switch": None, "bridge": None,
                                 "address": "10.0.0.45", "netmask": "255.255.255.0",
                                 "service_host": SERVERS[2]}


# --- switches, bridges, local and remote service hosts ------------------------------------------

def test_json_lists_switches_and_every_kind_of_link(mln, write):
    code, text, err = mln("graph", "-f", write(MIXED), "--format", "json")
    assert code == 0, err
    data = json.loads(text)
    assert data["project"] == "lab-1.b" and data["service_hosts"] == ["remote1"]
    assert data["switches"] == [
        {"name": "lan", "service_host": None, "members": ["web.eth0"]},
        {"name": "dmz", "service_host": "remote1", "members": ["web.eth1", "db.eth0"]}]
    assert [(h["name"], h["hypervisor"], h["memory"], h["service_host"]) for h in data["hosts"]] == \
        [("web", "uml", "96M", None), ("db", "qemu", "128M", "remote1")]
    keys = ("host", "interface", "switch", "bridge", "address", "service_host")
    assert [tuple(ln[k] for k in keys) for ln in data["links"]] == [
        ("web", "eth0", "lan", None, "10.0.0.1", None),
        ("web", "eth1", "dmz", None, "dhcp", None),
        ("db", "eth0", "dmz", None, "192.168.1.2", "remote1"),
        ("db", "eth1", None, "xenbr0", None, "remote1"),
        ("db", "eth2", "/run/vde/outside.ctl", None, None, "remote1"),
        ("db", "eth3", None, None, None, "remote1")]


@needs_dot
def test_service_hosts_become_clusters_and_none_is_the_local_server(mln, write):
    path = write(MIXED)
    code, dot, err = mln("graph", "-f", path)
    assert code == 0, err
    svg = dot_check(dot)
    assert clusters(dot) == {
        "local server": ['"host:web"', '"switch:lan"'],
        "remote1": ['"host:db"', '"switch:dmz"', '"bridge:remote1%00xenbr0"',
                    '"external:remote1%00/run/vde/outside.ctl"', '"none:db%00eth3"']}
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert "cluster_1" in titles and "cluster_2" in titles
    assert {"local server", "remote1", "bridge xenbr0", "/run/vde/outside.ctl", "dhcp",
            "10.0.0.1/24", "192.168.1.2/24"} <= set(svg_texts(svg))
    assert len(re.findall(r"^  \S+ -- \S+ \[", dot, re.M)) == 6
    code, text, _ = mln("graph", "-f", path, "--format", "mermaid")
    lines = text.splitlines()
    assert lines[0] == "graph LR" and len([ln for ln in lines if "---" in ln]) == 6
    assert '  subgraph c1["local server"]' in lines and '  subgraph c2["remote1"]' in lines
    assert '    s2{{"dmz"}}' in lines and '    b1[("bridge xenbr0")]' in lines
    assert '  h1 ---|"eth1<br/>dhcp"| s2' in lines and '  h2 ---|"eth3"| n1' in lines


def test_without_service_hosts_there_are_no_clusters(mln, write):
    code, dot, _ = mln("graph", "-f", write(MIXED.replace("    service_host remote1\n", "")))
    assert code == 0 and "subgraph" not in dot and clusters(dot) == {}
    assert '  "switch:dmz" [shape=hexagon' in dot and '  "host:web" [shape=box' in dot
    code, text, _ = mln("graph", "-f", write(MIXED.replace("    service_host remote1\n", "")),
                        "--format", "mermaid")
    assert code == 0 and "subgraph" not in text


# --- names that must not break the syntax ----------------------------------------------------------

ODD = ['a-b.c', 'we"ird', 'back\\', 'x\\"y', '<b>&amp;</b>', 'a{b};c', '# not a comment', 'p|q]r',
       'line\nbreak', 'ü-名前', '%00', 'end', ' ']


def odd_data() -> dict:
    hosts = [{"name": n, "hypervisor": "uml", "memory": "64M", "template": "t", "service_host": n}
             for n in ODD]
    switches = [{"name": f"sw {n}", "service_host": None, "members": []} for n in ODD]
    links = [{"host": n, "interface": "eth0", "switch": f"sw {n}", "bridge": None, "address": n,
              "netmask": None, "service_host": n} for n in ODD]
    links += [{"host": n, "interface": "eth1", "switch": None, "bridge": n, "address": None,
               "netmask": None, "service_host": n} for n in ODD]
    return {"project": 'p"\\{', "service_hosts": ODD, "hosts": hosts, "switches": switches, "links": links}


@needs_dot
def test_odd_names_are_quoted_safely_in_dot():
    dot = to_dot(odd_data())
    svg = dot_check(dot)
    texts = {t.strip() for t in svg_texts(svg)}
    for n in ODD:
        shown = n.replace("\n", "?")     # a control character in a label becomes '?'
        assert shown.strip() in texts, n
        assert f"sw {shown}".strip() in texts and f"bridge {shown}".strip() in texts
    # every node is its own (the ids never collide) and every link is drawn
    assert len(ET.fromstring(svg).findall(f".//{SVG}g[@class='node']")) == 3 * len(ODD)
    assert len(ET.fromstring(svg).findall(f".//{SVG}g[@class='edge']")) == 2 * len(ODD)
    assert len(ET.fromstring(svg).findall(f".//{SVG}g[@class='cluster']")) == len(ODD) + 1


def test_odd_names_are_quoted_safely_in_mermaid():
    text = to_mermaid(odd_data())
    lines = text.splitlines()
    assert lines[0] == "graph LR"
    assert len([ln for ln in lines if "---" in ln]) == 2 * len(ODD)
    assert sum(ln.strip() == "end" for ln in lines) == len(ODD) + 1
    for ln in lines[1:]:
        quoted = re.findall(r'"([^"]*)"', ln)
        assert quoted or ln.strip() in ("end",) or ln.strip().startswith("%%"), ln
        for q in quoted:   # inside quotes only safe characters, entity codes and our <br/>
            assert re.fullmatch(r"([A-Za-z0-9 .,:/_=+@()-]|#\d+;|<br/>)*", q), q
        assert ln.count('"') % 2 == 0
    assert '["#60;b#62;#38;amp#59;#60;/b#62;<br/>uml, 64M"]' in text and "#35; not a comment" in text


def test_address_labels():
    assert address_text("10.0.0.1", "255.255.255.0") == "10.0.0.1/24"
    assert address_text("dhcp", None) == "dhcp" and address_text(None, "255.0.0.0") is None
    assert address_text("10.0.0.1", None) == "10.0.0.1"
    assert address_text("fe80::1", "not-a-mask") == "fe80::1/not-a-mask"


# --- bad input -------------------------------------------------------------------------------

def test_bad_input_is_one_clear_error(mln, write, tmp_path):
    missing = tmp_path / "missing.mln"
    assert one_error_line(*mln("graph", "-f", missing)) == f"mln: error: no such project file: {missing}"
    line = one_error_line(*mln("-P", tmp_path / "projects", "graph", "-p", "nope"))
    assert line.startswith("mln: error: no project 'nope' in ")
    line = one_error_line(*mln("graph", "-f", VCLUSTER, "--format", "png"), expect_code=2)
    assert line == "mln: error: unknown format 'png': use dot, mermaid, svg, json"
    line = one_error_line(*mln("graph"), expect_code=2)
    assert line == "mln: error: give a project file (-f FILE) or a built project (-p PROJECT)"
    line = one_error_line(*mln("graph", "-f", VCLUSTER, "-p", "vcluster"), expect_code=2)
    assert line.endswith("not both")
    bad = write("global {\n    project p\n}\nhost a {\n    memory 12X\n}\n")
    line = one_error_line(*mln("graph", "-f", bad))
    assert line.startswith(f"mln: error: {bad}:5:") and "memory" in line
    line = one_error_line(*mln("graph", "-f", VCLUSTER, "-o", tmp_path / "no" / "dir" / "g.dot"))
    assert line.startswith("mln: error: cannot write ") and "g.dot" in line


def test_svg_without_graphviz_names_the_package(mln, monkeypatch):
    import mln_core.cli_graph as cli_graph
    monkeypatch.setattr(cli_graph.shutil, "which", lambda name: None)
    line = one_error_line(*mln("graph", "-f", VCLUSTER, "--format", "svg"))
    assert "Graphviz" in line and "apt-get install graphviz" in line


# --- a built project ------------------------------------------------------------------------------

def test_graph_of_a_built_project(mln_env):
    path = mln_env.quickstart(project="graphtest")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = mln_env.mln("graph", "-p", "graphtest", "--format", "json")
    assert r.returncode == 0, r.output
    data = json.loads(r.stdout)
    assert [h["name"] for h in data["hosts"]] == ["alpha", "beta"]
    assert all(h["hypervisor"] == "uml" and h["memory"] == "96M" for h in data["hosts"])
    assert [s["name"] for s in data["switches"]] == ["lan"]
    assert [(ln["host"], ln["interface"], ln["switch"], ln["address"]) for ln in data["links"]] == \
        [("alpha", "eth0", "lan", "10.0.0.1"), ("beta", "eth0", "lan", "10.0.0.2")]
    r = mln_env.mln("graph", "-p", "graphtest")
    assert r.returncode == 0 and '"host:alpha" -- "switch:lan"' in r.stdout
    if shutil.which("dot"):
        dot_check(r.stdout)
    r = mln_env.mln("graph", "-p", "nope")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("mln: error: no project 'nope' in ") and "graphtest" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert mln_env.mln("remove", "-f", "-p", "graphtest").returncode == 0


# --- the docs ---------------------------------------------------------------------------------------

def test_the_docs_example_is_what_mln_graph_prints(mln, write):
    doc = (EXAMPLES.parents[2] / "docs" / "commands.md").read_text()
    section = doc[doc.index("## `mln graph`"):]
    section = section[:section.index("\n## ", 1)]
    project = re.search(r"^```mln\n(.*?)^```$", section, re.M | re.S).group(1)
    shown = re.search(r"^\$ mln graph -f lab.mln --format mermaid\n(.*?)^\$ ", section, re.M | re.S).group(1)
    code, out, err = mln("graph", "-f", write(project, "lab.mln"), "--format", "mermaid")
    assert (code, out) == (0, shown), err
    picture = EXAMPLES.parents[2] / "docs" / "img" / "vcluster.svg"
    assert "](img/vcluster.svg)" in section
    texts = svg_texts(picture.read_text())
    assert all(name in texts for name in NODES + SERVERS)
