"""The conformance suite's lifecycle scenario (build, status, start, console, stop -S and
resume, stop, remove, nothing left) on QEMU over the ``nfs`` and ``iscsi`` storages
(``NFS`` and ``ISCSI`` of tests/conformance/builtins.py, with the servers of
tests/storage/conftest.py). Only the lifecycle: the rebuild and kill scenarios over these
storages would cost CI a minute more (tests/storage/test_network_storage.py rebuilds)."""
from __future__ import annotations

import pytest

from mln_core.conformance import scenario_lifecycle
from tests.conformance.builtins import ISCSI, NFS, QEMU

pytestmark = [pytest.mark.guests, pytest.mark.root]


@pytest.fixture
def mln_conformance_env(mln_env):
    return mln_env


@pytest.mark.parametrize("mln_conformance_case", [pytest.param((QEMU, NFS), id="qemu-nfs"),
                                                  pytest.param((QEMU, ISCSI), id="qemu-iscsi")],
                         indirect=True)
def test_lifecycle(mln_conformance_case):
    scenario_lifecycle(mln_conformance_case)
