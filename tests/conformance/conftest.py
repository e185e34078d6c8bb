"""The conformance suite (``mln_core.conformance``) run against the built-in backends.

The scenarios run in ``mln_env`` (tests/conftest.py: the busybox test template registered,
leak checks, the machine-wide test lock) instead of the plugin's own environment, and use
the fixtures of the backends' own tests: the Xen templates, the LVM volume group.
"""
from __future__ import annotations

import pytest

from tests.lvm.conftest import test_vg  # noqa: F401  (the lvm storage's volume group)
from tests.xen.conftest import debian_image, xen_templates  # noqa: F401  (the Xen templates)


@pytest.fixture
def mln_conformance_env(mln_env):
    return mln_env
