"""Write the golden files of the Xen backend: ``python tests/xen/regen_golden.py``.

It runs the golden tests of ``test_xen_config.py`` with ``MLN_XEN_REGEN=1``, which makes
them write what the build generated into ``tests/xen/golden/<project>/`` instead of
comparing (same fixtures, so the same conditions as the tests: the examples of
``tests/core/examples`` and ``tests/xen/xenfeatures.mln`` built with small templates and a
dummy kernel; paths replaced by ``@PROJECTS@`` and ``@ROOT@``). The san example needs the
lvm plugin and root; without them its golden files are left as they are.

READ the diff before committing regenerated files (``git diff tests/xen/golden``): they
are the expected behaviour, checked by eye against spec 7.1/7.2 and the bug list 2.10.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    env = {**os.environ, "MLN_XEN_REGEN": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "test_xen_config.py"),
            "-k", "test_golden"]
    return subprocess.call(argv, env=env, cwd=HERE.parent.parent)


if __name__ == "__main__":
    sys.exit(main())
