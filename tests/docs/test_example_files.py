"""Every example in the tutorial is a file: the project files the docs pages show are
included from files (``--8<-- "PATH"``, pymdownx.snippets) and every such file passes
``mln check`` without an error or a warning. (Inline examples in language.md and
commands.md are checked by test_language_examples.py.)"""
import re
from pathlib import Path

import pytest

from mln_core.cli import main
from mln_core.testing import machine_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# the tutorial pages: every ```mln block in them is a file included with --8<--
TUTORIALS = ("quickstart.md", "classes.md", "servers.md", "migration.md")
# the servers the examples over several servers name, as the mln.conf of the machine
# the user types on would
SERVERS = "".join(f"server sh{n} ssh 10.0.0.{10 + n}\n" for n in (1, 2, 3))
_SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"[ \t]*$', re.M)
_MLN_BLOCK = re.compile(r"^```mln[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _included() -> dict[str, list[str]]:
    """{included file: [the pages that include it]}"""
    out: dict[str, list[str]] = {}
    for page in sorted(DOCS.glob("*.md")):
        for m in _SNIPPET.finditer(page.read_text(encoding="utf-8")):
            out.setdefault(m.group(1), []).append(page.name)
    return out


INCLUDED = _included()
PROJECT_FILES = sorted(p for p in INCLUDED if p.endswith(".mln"))


def test_the_tutorial_shows_its_projects_from_files():
    assert "contrib/quickstart/quickstart.mln" in INCLUDED
    assert "docs/examples/spread.mln" in INCLUDED
    assert "docs/examples/move.mln" in INCLUDED


def test_every_included_file_exists():
    for path, pages in INCLUDED.items():
        assert (ROOT / path).is_file(), f"{path}, included by {pages}, does not exist"


def test_every_example_file_is_shown_in_the_docs():
    for p in sorted((DOCS / "examples").iterdir()):
        rel = p.relative_to(ROOT).as_posix()
        assert rel in INCLUDED, f"{rel} is included in no page of docs/"


@pytest.mark.parametrize("page", [p for p in TUTORIALS if (DOCS / p).exists()])
def test_tutorial_examples_are_files(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for m in _MLN_BLOCK.finditer(text):
        body = m.group(1).strip()
        line = text.count("\n", 0, m.start()) + 1
        assert _SNIPPET.fullmatch(body), (
            f"docs/{page}:{line}: a project example written into the page; make it a file "
            f"(docs/examples/) and include it with --8<-- \"PATH\"")


@pytest.mark.parametrize("path", PROJECT_FILES)
def test_example_file_passes_mln_check(path, tmp_path, monkeypatch, capsys):
    conf = tmp_path / "mln.conf"
    conf.write_text(machine_config() + SERVERS)
    monkeypatch.setenv("MLN_CONFIG", str(conf))
    monkeypatch.delenv("MLN_DISABLE_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["check", "-f", str(ROOT / path)])
    err = capsys.readouterr().err
    assert code == 0, f"mln check failed on {path}:\n{err}"
    assert " 0 errors, 0 warnings" in err, f"{path}:\n{err}"
