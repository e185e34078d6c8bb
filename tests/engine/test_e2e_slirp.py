"""Slirp interfaces on real guests (issue 13): a UML guest (each UML driver: the
distribution's UML with the legacy ``ethN=vde,slirp://`` transport, the newer one with
the vector ``vecN:transport=vde,vnl=slirp://``) and a QEMU guest (``-netdev user``) with
``slirp`` and no address get slirp's 10.0.2.15/24 and reach 10.0.2.2, the gateway inside
the slirp of their own hypervisor process: no packet leaves this machine."""
from __future__ import annotations

import os

import pytest

from mln_backends import umlprobe

pytestmark = pytest.mark.guests

KERNELS = {"legacy": "/usr/bin/linux.uml", "vector": umlprobe.INSTALLED_KERNEL}

PROJECT = """
global {{
    project sl
}}
host guest {{
    hypervisor {hypervisor}
    {kernel}
    template busybox.ext4
    memory 96M
    network eth0 {{
        slirp
    }}
    startup {{
        echo "MLN-CHECK address $(ifconfig eth0 | grep -o 'inet addr:[0-9.]*')"
        for i in 1 2 3 4 5 6 7 8 9 10
        do
        ping -c 1 -W 2 10.0.2.2 > /dev/null && break
        done
        ping -c 2 -W 2 10.0.2.2 > /dev/null && echo "MLN-CHECK slirp gateway ok"
        echo "MLN-CHECK resolv $(grep nameserver /etc/resolv.conf | xargs)"
    }}
}}
"""


def _run(env, hypervisor: str, kernel: str = "") -> str:
    """Build, start, wait for the checks, stop and remove; the guest's command line."""
    path = env.write("sl.mln", PROJECT.format(hypervisor=hypervisor, kernel=f"kernel {kernel}" if kernel else ""))
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = env.mln("start", "-p", "sl")
    assert r.returncode == 0, r.output
    cmdline = (env.projects / "sl" / "hosts" / "guest" / "cmdline").read_text()
    try:
        text = env.wait_console("sl", "guest", r"MLN-CHECK resolv", timeout=90)
    finally:
        env.mln("stop", "-p", "sl", "-w", "20")
    r = env.mln("remove", "-f", "-p", "sl")
    assert r.returncode == 0, r.output
    assert env.processes() == [] and env.runtime_dirs() == []
    assert "MLN-CHECK address inet addr:10.0.2.15" in text
    assert "MLN-CHECK slirp gateway ok" in text, text[-3000:]
    assert "MLN-CHECK resolv nameserver 10.0.2.3" in text
    return cmdline


@pytest.mark.parametrize("driver", sorted(KERNELS))
def test_uml_guest_on_slirp_reaches_its_gateway(mln_env, driver):
    kernel = KERNELS[driver]
    if not os.access(kernel, os.X_OK):
        pytest.fail(f"{kernel} is missing: scripts/install-deps.sh installs it")
    info = umlprobe.inspect(kernel)
    if not info["boots"]:       # (Debian's UML on an Intel CPU with AMX): refused at once, nothing left
        path = mln_env.write("sl.mln", PROJECT.format(hypervisor="uml", kernel=f"kernel {kernel}"))
        assert mln_env.mln("build", "-f", str(path)).returncode == 0
        r = mln_env.mln("start", "-p", "sl")
        assert r.returncode == 1 and "cannot run on this machine" in r.stderr and "Traceback" not in r.output, \
            r.output
        assert mln_env.processes() == [] and mln_env.runtime_dirs() == []
        assert mln_env.mln("remove", "-f", "-p", "sl").returncode == 0
        return
    if driver == "legacy" and "eth" not in info["drivers"]:
        pytest.skip(f"{kernel} has no legacy network driver")
    cmdline = _run(mln_env, "uml", kernel)
    want = "eth0=vde,slirp://," if driver == "legacy" else "vec0:transport=vde,vnl=slirp://,"
    assert want in cmdline


def test_qemu_guest_on_slirp_reaches_its_gateway(mln_env):
    _run(mln_env, "qemu")
