"""Fixtures of the network storage tests: an NFS server (nfs-ganesha + rpcbind) and an iSCSI
target (tgtd) in a network namespace of their own (tests/storage/servers.py).

Request them after ``mln_env``: the veth pair is then made while the test holds the
machine's test lock and is gone before ``mln_env`` counts the network devices left.
"""
from __future__ import annotations

import os
import shutil

import pytest

from .servers import start_iscsi, start_nfs, storage_net


def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the NFS and iSCSI servers need root (network namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/install-deps.sh)")


@pytest.fixture
def nfs_server():
    """An NFSv3 export (a directory of this machine) served from a namespace of its own."""
    _need("ganesha.nfsd", "rpcbind", "qemu-storage-daemon")
    with storage_net() as net:
        yield start_nfs(net)


@pytest.fixture
def iscsi_target():
    """An iSCSI target with two blank 128 MiB LUNs, served from a namespace of its own."""
    _need("tgtd", "tgtadm", "qemu-storage-daemon")
    with storage_net() as net:
        t = start_iscsi(net)
        try:
            yield t
        finally:
            t.stop()
