"""The docs stay true: every hook is documented, and documented commands exist."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

from mln_core import hookspecs
from mln_core.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_every_hook_is_in_the_plugin_reference_with_its_signature():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("mln_")]
    assert len(hooks) >= 15
    for name in hooks:
        sig = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"### `{sig}`" in doc, f"{sig} is missing from docs/plugins.md"


def test_every_hook_spec_has_a_docstring():
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("mln_"):
            assert fn.__doc__ and len(fn.__doc__.split()) > 8, name


def test_generated_reference_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_hook_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_command_is_in_the_command_reference():
    doc = (ROOT / "docs" / "commands.md").read_text()
    for name in cli.commands:
        assert re.search(rf"^## `mln {re.escape(name)}\b", doc, re.M), f"mln {name} is not in docs/commands.md"
