"""The plugin manager: discovery through entry points, failures, controls, order."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

import mln_core
from mln_core.plugins import make_plugin_manager

from .conftest import EXAMPLES

COLOUR_PLUGIN = '''
from mln_core import hookimpl

@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "colour", "the colour of the host's console")
'''

ORDER_PLUGIN = '''
from mln_core import hookimpl

@hookimpl
def mln_post_parse(doc, ctx):
    if doc.global_block is not None:
        doc.global_block.add_line(["order", {name!r}])
'''

COLOUR_PROJECT = "global { project p }\nhost a {\n colour red\n}\n"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path where tests install fake distributions with mln plugins."""
    root = tmp_path / "site"
    root.mkdir()
    # mln remembers the entry points (mln_core.plugin_cache) in $XDG_CACHE_HOME/mln: give the
    # test its own, and put the directory on sys.path only once the distribution is complete
    # (importlib.metadata caches a directory's listing by its modification time).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    created: list[str] = []

    def install(dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0"):
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            "[mln.plugins]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
        (info / "top_level.txt").write_text("".join(f"{m}\n" for m in modules))
        for module, source in modules.items():
            (root / f"{module}.py").write_text(source)
            created.append(module)
        monkeypatch.syspath_prepend(str(root))

    yield install
    for module in created:
        sys.modules.pop(module, None)


# ---------------------------------------------------------------------------------------
# the core stands alone
# ---------------------------------------------------------------------------------------

def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in \
                ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return found


def test_core_imports_nothing_from_backends_or_plugins():
    core = Path(mln_core.__file__).parent
    files = sorted(core.rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(core)): sorted(m for m in imported_modules(f)
                                                  if m.split(".")[0] in ("mln_backends", "mln_plugins"))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_import_scanner_finds_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import mln_plugins.autoenum\nfrom mln_backends import x\n"
                 "def f():\n    importlib.import_module('mln_plugins.y')\n")
    assert imported_modules(f) == {"mln_plugins.autoenum", "mln_backends", "mln_plugins.y"}


# ---------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------

def test_third_party_plugin_is_found(mln, write, site):
    path = write(COLOUR_PROJECT)
    code, _, err = mln("check", "-f", path)
    assert "unknown keyword 'colour'" in err            # nobody knows it yet

    site("fakeplug", {"fakeplug_mod": COLOUR_PLUGIN}, {"fakeplug": "fakeplug_mod"})
    code, out, _ = mln("plugins")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("fakeplug "))
    assert line.split() == ["fakeplug", "fakeplug", "1.0", "mln_register_keywords"]
    assert any(ln.startswith("autoenum ") for ln in out.splitlines())
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert "colour" not in err
    assert err.endswith("0 errors, 0 warnings\n")


def test_plugins_json_reports_the_distribution(mln, site):
    site("fakeplug", {"fakeplug_mod": COLOUR_PLUGIN}, {"fakeplug": "fakeplug_mod"})
    data = json.loads(mln("plugins", "--format", "json")[1])
    fake = next(p for p in data["plugins"] if p["name"] == "fakeplug")
    assert fake == {"name": "fakeplug", "module": "fakeplug_mod", "distribution": "fakeplug",
                    "version": "1.0", "hooks": ["mln_register_keywords"]}


def test_plugin_that_fails_to_import_is_reported_and_the_others_load(mln, site, monkeypatch):
    site("brokenplug", {"brokenplug_mod": "import no_such_module_for_mln_tests\n",
                        "colourplug_mod": COLOUR_PLUGIN},
         {"broken": "brokenplug_mod", "colour": "colourplug_mod"})
    code, out, err = mln("plugins")
    assert code == 0
    assert "mln: warning: plugin 'broken' not loaded: cannot import brokenplug_mod: " \
           "ModuleNotFoundError: No module named 'no_such_module_for_mln_tests'" in err
    lines = out.splitlines()
    assert any(ln.startswith("broken ") and "(failed)" in ln and "no_such_module_for_mln_tests" in ln
               for ln in lines)
    assert any(ln.startswith("colour ") and "mln_register_keywords" in ln for ln in lines)
    assert any(ln.startswith("autoenum ") for ln in lines)
    monkeypatch.chdir(EXAMPLES)
    code, out, err = mln("show", "--format", "json", "-f", "vcluster.mln")
    assert code == 0
    assert len(json.loads(out)["hosts"]) == 36


def test_plugin_raising_an_error_on_import_is_reported(mln, site):
    site("badplug", {"badplug_mod": "raise RuntimeError('half-installed')\n"}, {"bad": "badplug_mod"})
    code, out, err = mln("plugins")
    assert code == 0
    assert "plugin 'bad' not loaded" in err and "RuntimeError: half-installed" in err


def test_plugin_with_an_unknown_hook_is_reported_and_left_out(mln, write, site):
    source = COLOUR_PLUGIN + "\n@hookimpl\ndef mln_nonsense(host):\n    return 1\n"
    site("oddplug", {"oddplug_mod": source}, {"odd": "oddplug_mod"})
    code, out, err = mln("plugins")
    assert code == 0
    assert "plugin 'odd' not loaded" in err and "mln_nonsense" in err
    odd = [ln for ln in out.splitlines() if ln.startswith("odd ")]
    assert len(odd) == 1 and "(failed)" in odd[0]
    # left out entirely: its keywords are not declared either
    code, _, err = mln("check", "-f", write(COLOUR_PROJECT))
    assert "unknown keyword 'colour'" in err


def test_plugin_manager_api_reports_failures(site):
    source = "from mln_core import hookimpl\n@hookimpl\ndef mln_nonsense():\n    pass\n"
    site("oddplug", {"oddplug_mod": source}, {"odd": "oddplug_mod"})
    pm = make_plugin_manager(env={})
    assert "odd" not in pm.plugin_names()
    assert [name for name, _ in pm.failures] == ["odd"]
    assert "autoenum" in pm.plugin_names()


# ---------------------------------------------------------------------------------------
# controls
# ---------------------------------------------------------------------------------------

def test_mln_disable_plugins(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.setenv("MLN_DISABLE_PLUGINS", "autoenum")
    code, out, err = mln("show", "--format", "json", "-f", "vcluster.mln")
    assert code == 0
    assert json.loads(out)["hosts"] == {}
    assert "unknown block 'autoenum' in global" in err
    code, out, _ = mln("plugins")
    assert "autoenum       (disabled)" in out
    assert not any(ln.startswith("autoenum ") and "mln_post_parse" in ln for ln in out.splitlines())


SHOW = ["show", "--format", "json", "-f", "vcluster.mln"]


@pytest.mark.parametrize("argv", [["--no-plugin", "autoenum"] + SHOW,
                                  SHOW + ["--no-plugin", "autoenum"],
                                  SHOW + ["--no-plugin=autoenum"]])
def test_no_plugin_option(mln, monkeypatch, argv):
    monkeypatch.chdir(EXAMPLES)
    code, out, err = mln(*argv)
    assert code == 0, err
    assert json.loads(out)["hosts"] == {}


def test_without_the_option_vcluster_has_hosts(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    code, out, _ = mln("show", "--format", "json", "-f", "vcluster.mln")
    assert len(json.loads(out)["hosts"]) == 36


def test_disabling_an_unknown_plugin_is_harmless(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.setenv("MLN_DISABLE_PLUGINS", "nosuchplugin, ,")
    code, out, _ = mln("show", "--format", "json", "-f", "vcluster.mln")
    assert code == 0 and len(json.loads(out)["hosts"]) == 36


def test_trace_plugins_prints_hook_calls(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.setenv("MLN_TRACE_PLUGINS", "1")
    code, out, err = mln("parse", "-f", "vcluster.mln", "-S", "/host/node01/service_host")
    assert (code, out) == (0, "server1.example.org\n")
    assert "mln_post_parse" in err
    assert "finish mln_post_parse" in err


def test_no_trace_by_default(mln, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    code, _, err = mln("parse", "-f", "vcluster.mln", "-S", "/host/node01/service_host")
    assert code == 0 and err == ""


# ---------------------------------------------------------------------------------------
# order
# ---------------------------------------------------------------------------------------

def test_hooks_run_in_alphabetical_order_of_plugin_name(mln, write, site):
    names = ["zeta", "alpha", "mid", "beta"]
    site("orderplugs", {f"order_{n}": ORDER_PLUGIN.format(name=n) for n in names},
         {n: f"order_{n}" for n in names})
    path = write("global {\n project p\n}\n")
    for _ in range(3):
        code, out, err = mln("parse", "-f", path, "-A", "/global/order")
        assert code == 0, err
        assert out == "alpha\nbeta\nmid\nzeta\n"


def test_plugin_names_are_sorted(site):
    site("orderplugs", {"order_b": ORDER_PLUGIN.format(name="b"), "order_a": ORDER_PLUGIN.format(name="a")},
         {"b": "order_b", "a": "order_a"})
    pm = make_plugin_manager(env={})
    names = pm.plugin_names()
    assert names == sorted(names) and {"a", "b", "autoenum"} <= set(names)
