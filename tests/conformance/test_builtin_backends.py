"""Every built-in hypervisor backend over every storage it supports passes the conformance
suite: uml (real guests) over file, qemu (real guests) over file and lvm, xen (fake xl) over file,
vmware (fake vmrun) over file, libvirt (real guests on a private libvirtd) over file.
See tests/conformance/builtins.py."""
from __future__ import annotations

import pytest

from mln_core.testing import conformance_tests

from tests.libvirt.conftest import libvirtd  # noqa: F401  (the libvirt backend's private libvirtd)

from .builtins import BACKENDS, STORAGES

pytestmark = [pytest.mark.guests, pytest.mark.root]

TestBuiltinBackends = conformance_tests(*BACKENDS, storages=STORAGES, name="TestBuiltinBackends")
