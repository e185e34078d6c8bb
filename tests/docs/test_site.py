"""The docs site (mkdocs.yml) builds in strict mode without one warning: no broken link or
anchor, no page outside the nav, no missing included file; and its hook reference,
generated at build time from mln_core/hookspecs.py, has every hook, grouped as
hookspecs.py groups them."""
import importlib.util
import inspect
import subprocess
import sys
import time
from pathlib import Path

from mln_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def _gen_hooks():
    spec = importlib.util.spec_from_file_location("gen_hooks", ROOT / "docs" / "gen_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hooks():
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("mln_")]


def test_the_site_builds_in_strict_mode_without_warnings(tmp_path):
    site = tmp_path / "site"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                        str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "WARNING" not in out and "ERROR" not in out, out
    assert took < 30, f"mkdocs build took {took:.1f} s"
    pages = {p.relative_to(site).parent.as_posix() for p in site.rglob("index.html")}
    for name in ("quickstart", "language", "commands", "servers", "plugins", "hooks", "security"):
        assert name in pages, f"no {name} page in the site: {sorted(pages)}"
    html = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "--8&lt;--" not in html and "--8<--" not in html, "a snippet was not included"
    hooks = (site / "hooks" / "index.html").read_text(encoding="utf-8")
    for name in _hooks():
        assert f'id="{name}"' in hooks, f"{name} is not in the generated hook reference"
    # the site shows the hook reference once: plugins.md's copy becomes a link to it
    plugins = (site / "plugins" / "index.html").read_text(encoding="utf-8")
    assert 'href="../hooks/"' in plugins and 'id="mln_create_disk' not in plugins


def test_the_hook_reference_follows_the_groups_of_hookspecs():
    gen = _gen_hooks()
    text = gen.hook_reference()
    source = inspect.getsource(hookspecs).splitlines()
    banners = [source[n][2:].strip() for n in range(1, len(source) - 1)
               if source[n].startswith("# ") and source[n - 1].startswith("# ---")
               and source[n + 1].startswith("# ---")]
    assert len(banners) >= 5
    headings = [line[3:].split(" {#")[0] for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["Conventions"] + banners
    order = [line.split("`")[1].split("(")[0] for line in text.splitlines() if line.startswith("### ")]
    assert sorted(order) == sorted(_hooks())
    lines = {n: getattr(hookspecs, n).__code__.co_firstlineno for n in order}
    assert order == sorted(order, key=lines.get), "hooks are not in the order of hookspecs.py"
    for name in _hooks():
        sig = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"### `{sig}` {{#{name}}}" in text
    assert ":class:`" not in text and ":mod:`" not in text
