"""What a third party's conftest.py adds for the conformance suite: its template.

Here it is mln's busybox test template (contrib/templates/build-test-template.sh builds it
once and caches it); a real backend would point at an image its hypervisor boots.
"""
import os
import subprocess
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parent.parent / "templates" / "build-test-template.sh"


@pytest.fixture(scope="session")
def busybox_template() -> Path:
    where = Path(os.environ.get("MLN_TEST_TEMPLATE_DIR", "/var/cache/mln/test-template"))
    if os.geteuid() != 0:
        pytest.skip("the guests need root")
    r = subprocess.run(["bash", str(BUILD), str(where)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return where
