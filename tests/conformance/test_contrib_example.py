"""The third-party example in contrib/conformance-example/ works: run as a third party
runs it (pytest in a subprocess, with the example's own configuration)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "conformance-example"

pytestmark = [pytest.mark.guests, pytest.mark.root]


def test_the_contrib_example_passes(test_template):
    """Not in mln_env: the example takes the test lock itself (in its scenarios)."""
    # the example's scenarios are the ones uml over file passes in test_builtin_backends.py:
    # that its conftest and module collect all three and that one passes is what is new here
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "-k",
                        "test_lifecycle", "."], cwd=EXAMPLE, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    passed = sorted(line.split("::")[-1] for line in p.stdout.splitlines() if line.startswith("PASSED"))
    assert passed == ["test_lifecycle[uml-file]"], p.stdout[-3000:]
    assert "1 passed, 2 deselected" in p.stdout, p.stdout[-3000:]
