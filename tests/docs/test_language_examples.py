"""The language docs stay true: every complete example passes ``mln check``, and every
keyword mln knows is documented in docs/language.md."""
import functools
import re
from pathlib import Path

import pytest

from mln_core.cli import main
from mln_core.testing import machine_config
from mln_core.plugins import make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("language.md", "commands.md")
CONTEXTS = ("global", "host", "network", "switch", "global.autoenum")
_BLOCK = re.compile(r"^```mln[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _examples():
    out = []
    for name in DOCS:
        path = ROOT / "docs" / name
        text = path.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(m.group(1), id=f"{name}:{line}"))
    return out


EXAMPLES = _examples()


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("text", EXAMPLES)
def test_example_passes_mln_check(text, tmp_path, monkeypatch, capsys):
    conf = tmp_path / "mln.conf"
    conf.write_text(machine_config())
    monkeypatch.setenv("MLN_CONFIG", str(conf))
    monkeypatch.delenv("MLN_DISABLE_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "example.mln"
    project.write_text(text, encoding="utf-8")
    code = main(["check", "-f", str(project)])
    err = capsys.readouterr().err
    assert code == 0, f"mln check failed on this example:\n{text}\n{err}"
    assert " 0 errors" in err


@functools.lru_cache(maxsize=1)
def _registry():
    return make_plugin_manager(env={}).keywords


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_keyword_is_in_the_language_reference(context):
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    names = list(_registry().entries.get(context, {}))
    assert names, f"no keywords in context {context}"
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"keywords of '{context}' not in docs/language.md: {missing}"


def test_every_hypervisor_flag_is_in_the_language_reference():
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    for flag in _registry().hypervisor_flags():
        assert f"`{flag}`" in doc, flag
