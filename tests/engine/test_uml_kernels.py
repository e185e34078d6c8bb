"""User-Mode Linux on every CPU: the distribution's UML and the newer one install-uml.sh
puts in place, a UML that cannot run here (a named fake that dies as Debian 12's UML does
on Intel CPUs with AMX), ``mln doctor``, and a guest that crashed.

Both real UMLs are tried on whatever CPU this is. The distribution's one boots on AMD CPUs
and on Intel CPUs without AMX; where its probe boot says it cannot run, its tests check
that mln refuses to start it with the cause instead (that is what a user gets there).
The newer one (7.x) has only the vector network driver: its NICs are ``vecN`` to the
kernel, and the guest renames them to the project's ``ethN``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from mln_backends import umlprobe
from mln_backends.runtime import mac_address

pytestmark = pytest.mark.guests

FAKE = str(Path(__file__).with_name("fake_uml_amx_crash.sh"))
SYSTEM = "/usr/bin/linux.uml"
KERNELS = {"system": SYSTEM, "installed": umlprobe.INSTALLED_KERNEL}


@pytest.fixture(params=sorted(KERNELS))
def uml(request, mln_env):
    """Each real UML in turn, set as default_kernel of the test's mln.conf."""
    kernel = KERNELS[request.param]
    if not os.access(kernel, os.X_OK):
        pytest.fail(f"{kernel} is missing: scripts/install-deps.sh installs it "
                    "(bash mln_backends/install-uml.sh --always)")
    _use_kernel(mln_env, kernel)
    return kernel


def _use_kernel(env, kernel: str) -> None:
    with open(env.config, "a") as f:          # a later line of mln.conf wins
        f.write(f"default_kernel {kernel}\n")


def _boots_here(kernel: str) -> bool:
    info = umlprobe.inspect(kernel)
    assert info["boots"] is not None, info     # the probe itself must work on this machine
    return info["boots"]


def _start_or_refusal(env, project: str, kernel: str) -> bool:
    """Start the project; True if it runs. A UML that cannot run here must be refused at
    once with the reason (and then nothing may be left running)."""
    t0 = time.monotonic()
    r = env.mln("start", "-p", project)
    if _boots_here(kernel):
        assert r.returncode == 0, r.output
        return True
    assert r.returncode == 1 and "cannot run on this machine" in r.stderr, r.output
    assert time.monotonic() - t0 < 30
    assert env.processes() == [], env.processes()
    return False


# -- the two real UMLs ------------------------------------------------------------------------

def test_quickstart_pings_with_each_uml(mln_env, uml):
    path = mln_env.quickstart("uml", project="qs")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    if not _start_or_refusal(mln_env, "qs", uml):
        return
    alpha = mln_env.wait_console("qs", "alpha", r"MLN-CHECK ping 10\.0\.0\.2 ok")
    beta = mln_env.wait_console("qs", "beta", r"MLN-CHECK ping 10\.0\.0\.1 ok")
    assert "MLN-CHECK address inet addr:10.0.0.1" in alpha and "MLN-CHECK hostname beta" in beta
    cmdline = (mln_env.projects / "qs" / "hosts" / "alpha" / "cmdline").read_text()
    assert cmdline.startswith(f"setarch -R {uml} ")     # its memory not cut by address-space randomization
    mac = mac_address("fe:fd:00", "qs", "alpha", "eth0")
    if "eth" in umlprobe.inspect(uml)["drivers"]:
        assert "eth0=vde," in cmdline and mac in cmdline
    else:
        assert "vec0:transport=vde,vnl=vde://" in cmdline and f"mac={mac}" in cmdline
    # the console still takes commands
    r = mln_env.mln("console", "-p", "qs", "-h", "alpha", "-w", "2", input="\nip -o link show eth0\n")
    assert mac in r.stdout, r.output
    assert mln_env.mln("stop", "-p", "qs").returncode == 0


NICS = r"""
global {
    project nics
}
switch front {
}
switch back {
    type bridge
}
superclass node {
    hypervisor uml
    template busybox.ext4
    memory 64M
}
host gap {
    superclass node
    network eth0 {
        switch front
        address 10.0.1.1
        netmask 255.255.255.0
    }
    network eth2 {
        switch back
        address 10.0.2.1
        netmask 255.255.255.0
        mac fe:fd:00:00:02:01
    }
    startup {
        echo "MLN-CHECK links $(ls /sys/class/net | xargs)"
        echo "MLN-CHECK eth2 $(cat /sys/class/net/eth2/address) $(ifconfig eth2 | grep -o 'inet addr:[0-9.]*')"
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do ping -c 1 -W 2 10.0.1.2 > /dev/null && break; done
        ping -c 1 -W 2 10.0.1.2 > /dev/null && echo "MLN-CHECK front ok"
        i=0; while [ $i -lt 60 ] && ! ping -c 1 -W 2 10.0.2.3 > /dev/null; do i=$((i+1)); done
        ping -c 1 -W 2 10.0.2.3 > /dev/null && echo "MLN-CHECK back ok" || echo "MLN-CHECK back failed"
    }
}
host front_peer {
    superclass node
    network eth0 {
        switch front
        address 10.0.1.2
        netmask 255.255.255.0
    }
}
host back_peer {
    superclass node
    network eth0 {
        switch back
        address 10.0.2.3
        netmask 255.255.255.0
    }
}
"""


@pytest.mark.root
def test_eth0_and_eth2_on_a_vde_and_a_bridge_switch(mln_env, uml):
    """A UML guest with interfaces eth0 and eth2 (no eth1) on a vde and a bridge switch:
    each carries its name, MAC and address, and reaches its peer."""
    path = mln_env.write("nics.mln", NICS)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    if not _start_or_refusal(mln_env, "nics", uml):
        return
    log = mln_env.wait_console("nics", "gap", r"MLN-CHECK back (ok|failed)", timeout=200)
    peers = {h: mln_env.console("nics", h)[-1500:] for h in ("front_peer", "back_peer")}
    assert "MLN-CHECK back ok" in log, f"{log[-2000:]}\n--- the peers' consoles: {peers}"
    links = re.search(r"MLN-CHECK links (.*)", log).group(1).split()
    assert "eth0" in links and "eth2" in links and not any(n.startswith("vec") for n in links), links
    assert "MLN-CHECK eth2 fe:fd:00:00:02:01 inet addr:10.0.2.1" in log
    assert "MLN-CHECK front ok" in log
    assert mln_env.mln("stop", "-p", "nics").returncode == 0


def test_uml_and_qemu_guests_on_one_switch(mln_env, uml):
    text = mln_env.quickstart("uml", project="mix").read_text()
    text = text.replace("host beta {\n    superclass node", "host beta {\n    superclass node\n    hypervisor qemu")
    path = mln_env.write("mix.mln", text)
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    if not _start_or_refusal(mln_env, "mix", uml):
        return
    assert "MLN-CHECK ping 10.0.0.2 ok" in mln_env.wait_console("mix", "alpha", r"MLN-CHECK ping 10\.0\.0\.2 ok")
    assert "MLN-CHECK ping 10.0.0.1 ok" in mln_env.wait_console("mix", "beta", r"MLN-CHECK ping 10\.0\.0\.1 ok")
    assert mln_env.mln("stop", "-p", "mix").returncode == 0


def test_doctor_on_each_uml(mln_env, uml):
    r = mln_env.mln("doctor", "--format", "json")
    report = json.loads(r.stdout)
    [found] = [c for c in report["checks"] if c["name"] == "uml"]
    version = subprocess.run([uml, "--version"], capture_output=True, text=True).stdout.strip()
    assert uml in found["detail"] and version in found["detail"]
    if _boots_here(uml):
        assert found["ok"] and r.returncode == 0 and report["default_hypervisor_ok"], r.output
        assert "boots on this CPU" in found["detail"]
    else:
        assert not found["ok"] and r.returncode == 1
        assert "cannot run on this machine" in found["detail"] and "install-uml.sh" in found["remedy"]


# -- a UML that cannot run here (the named fake) ----------------------------------------------

def test_doctor_names_a_crashing_uml_as_unusable(mln_env):
    _use_kernel(mln_env, FAKE)
    r = mln_env.mln("doctor")
    assert r.returncode == 1, r.output
    line = next(x for x in r.stdout.splitlines() if re.match(r"uml\s+NO\s+uml\s", x))
    assert FAKE in line and "(6.1.176)" in line and "AMX" in line
    assert "ptrace set fp regs failed" in line
    assert "install-uml.sh" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("the default hypervisor 'uml' cannot run here: ")
    report = json.loads(mln_env.mln("doctor", "--format", "json").stdout)
    assert report["default_hypervisor_ok"] is False
    assert [c["ok"] for c in report["checks"] if c["hypervisor"] == "uml"] == [False]


def test_check_warns_that_the_hosts_cannot_run_here(mln_env):
    _use_kernel(mln_env, FAKE)
    path = mln_env.quickstart("uml", project="chk")
    r = mln_env.mln("check", "-f", str(path))
    assert r.returncode == 0, r.output                 # a warning: the file itself is right
    [warning] = [x for x in r.stderr.splitlines() if "cannot run on this machine" in x]
    assert ": warning: hosts alpha, beta: " in warning and "AMX" in warning and "install-uml.sh" in warning
    assert warning.startswith(f"{path}:")              # file:line:column of the first host
    assert r.stderr.rstrip().endswith("0 errors, 1 warning")


def test_start_with_a_crashing_uml_fails_at_once_and_leaves_nothing(mln_env):
    _use_kernel(mln_env, FAKE)
    path = mln_env.quickstart("uml", project="amx")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    t0 = time.monotonic()
    r = mln_env.mln("start", "-p", "amx")
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1, r.output
    errors = [x for x in r.stderr.splitlines() if x.startswith("mln: error:")]
    assert len(errors) == 1 and "cannot run on this machine" in errors[0] and "AMX" in errors[0], r.stderr
    assert "install-uml.sh" in errors[0] and "Traceback" not in r.output
    assert "started" not in r.stderr
    r = mln_env.mln("status", "-p", "amx")
    assert r.returncode == 1
    assert not any(" up" in x for x in r.stdout.splitlines()), r.stdout    # no host, and no switch, left up
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []
    # one host alone: the same
    r = mln_env.mln("start", "-p", "amx", "-h", "beta")
    assert r.returncode == 1 and "cannot run on this machine" in r.stderr
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []
    # a QEMU host on the same switch: refused before it or the switch starts
    text = mln_env.quickstart("uml", project="amix").read_text()
    path = mln_env.write("amix.mln", text.replace("host beta {\n    superclass node",
                                                  "host beta {\n    superclass node\n    hypervisor qemu"))
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "amix")
    assert r.returncode == 1 and "host alpha: " in r.stderr and "cannot run on this machine" in r.stderr, r.output
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []


def test_status_says_a_guest_crashed_and_why(mln_env):
    """A real crash (sysrq c through the mconsole) of a running guest."""
    path = mln_env.quickstart("uml", project="boom")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "boom", "-h", "alpha")
    if r.returncode != 0:       # this machine's default UML cannot run here: said so, nothing else to see
        assert "cannot run on this machine" in r.stderr, r.output
        return
    mln_env.wait_console("boom", "alpha", r"MLN-CHECK hostname alpha")
    [sock] = [str(p) for d in mln_env.runtime_dirs() for p in Path(d).glob("alpha.*/mconsole")]
    try:    # the guest dies under it, so uml_mconsole gets no answer
        subprocess.run(["uml_mconsole", sock, "sysrq", "c"], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=5)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + 30
    while time.monotonic() < end:
        r = mln_env.mln("status", "-p", "boom", "-h", "alpha")
        if "crashed" in r.stdout:
            break
        time.sleep(0.5)
    assert r.stdout.strip() == "boom host alpha down (crashed: Kernel panic - not syncing: sysrq triggered crash)"
    rows = json.loads(mln_env.mln("status", "-p", "boom", "--format", "json").stdout)
    assert [x["detail"] for x in rows if x["name"] == "alpha"] == ["crashed: Kernel panic - not syncing: "
                                                                    "sysrq triggered crash"]
    r = mln_env.mln("stop", "-p", "boom")            # cleans up what the crashed run left
    assert r.returncode == 0 and "alpha: had crashed" in r.stderr, r.output
    assert mln_env.runtime_dirs() == [] and mln_env.processes() == []
    assert mln_env.mln("status", "-p", "boom", "-h", "alpha").stdout.strip() == "boom host alpha down"
    # it starts again, and a later clean run is not taken for a crash
    assert mln_env.mln("start", "-p", "boom", "-h", "alpha").returncode == 0
    mln_env.wait_console("boom", "alpha", r"(?s)sysrq triggered crash.*MLN-CHECK hostname alpha")
    assert mln_env.mln("status", "-p", "boom", "-h", "alpha").stdout.strip() == "boom host alpha up"
    assert mln_env.mln("stop", "-p", "boom", "-H").returncode == 0     # (its startup still pings beta)
