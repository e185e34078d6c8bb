"""The house rules of the code: plugins never import one another, everything that touches
the machine goes through the seam, no module over 600 lines, disabled plugins are never
imported, and two plugins cannot own one name."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .test_plugins import imported_modules, site  # noqa: F401  (site: the fixture)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mln_core", "mln_backends", "mln_plugins")
PLUGIN_PACKAGES = ("mln_backends", "mln_plugins")


def _modules(packages) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


def _plugin_modules() -> set[str]:
    return {ep.value.split(":")[0] for ep in metadata.entry_points(group="mln.plugins")
            if ep.value.startswith(PLUGIN_PACKAGES)}


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    import ast
    found = set(imported_modules(path))
    package = name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            mod = f"{base}.{node.module}" if node.module else base
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_plugin_imports_another_plugin():
    plugins = _plugin_modules()
    assert {"mln_backends.uml", "mln_backends.qemu", "mln_plugins.guestconfig"} <= plugins
    bad = []
    for name, path in _modules(PLUGIN_PACKAGES).items():
        for other in _imports(name, path) & plugins:
            if other != name:
                bad.append(f"{name} imports the plugin {other}")
    assert not bad, "\n".join(bad)


def test_plugins_reach_the_machine_only_through_the_seam():
    pattern = re.compile(r"\bsubprocess\b|\bos\.kill(pg)?\b|/proc/|/sys/|\bsocket\.")
    bad = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
           for path in _modules(PLUGIN_PACKAGES).values()
           for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, "use ctx.on(host) (mln_core.machine.Machine) instead:\n" + "\n".join(bad)


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules(PACKAGES).values()
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_a_disabled_plugin_is_never_imported():
    code = ("import sys; from mln_core.cli import main; main(['plugins']); "
            "print(sorted(m for m in sys.modules if m.startswith(('mln_backends', 'mln_plugins'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"MLN_DISABLE_PLUGINS": "xen,apache", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "mln_backends.xen'" not in loaded and "mln_plugins.apache'" not in loaded, loaded
    assert "mln_backends.uml'" in loaded            # the others are


DUP_A = '''
from mln_core import hookimpl

@hookimpl
def mln_register_keywords(registry):
    registry.keyword("host", "colour", "the colour of the host's console")
'''


def test_two_plugins_cannot_declare_one_keyword(mln, write, site):  # noqa: F811
    site("dupplug", {"dup_a": DUP_A, "dup_b": DUP_A}, {"dupa": "dup_a", "dupb": "dup_b"})
    code, _, err = mln("check", "-f", write("global { project p }\nhost a {\n colour red\n}\n"))
    assert code == 1
    assert "plugin 'dupb' declares the host keyword 'colour', which plugin 'dupa' declares already" in err
    assert "Traceback" not in err
    # the core's keywords are taken too
    site("dupcore", {"dup_c": DUP_A.replace('"colour"', '"memory"')}, {"dupc": "dup_c"})
    code, _, err = mln("--no-plugin", "dupb", "check", "-f", write("global { project p }\nhost a { }\n"))
    assert code == 1 and "the core declares already" in err and "'memory'" in err
