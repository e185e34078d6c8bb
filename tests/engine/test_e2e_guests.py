"""End to end on real guests: build, start, check from inside, status, stop, remove."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

pytestmark = pytest.mark.guests



def disks(store) -> list[str]:
    """The disk files of a filepath directory (not the marks naming their projects)."""
    return sorted(p.name for p in store.iterdir() if not p.name.startswith(".mln-owner."))

def _check_quickstart_consoles(env, project):
    alpha = env.wait_console(project, "alpha", r"MLN-CHECK ping 10\.0\.0\.2 ok")
    beta = env.wait_console(project, "beta", r"MLN-CHECK ping 10\.0\.0\.1 ok")
    assert "MLN-CHECK hostname alpha" in alpha
    assert "MLN-CHECK hostname beta" in beta
    assert "MLN-CHECK address inet addr:10.0.0.1" in alpha
    assert "MLN-CHECK address inet addr:10.0.0.2" in beta
    assert "MLN-CHECK users root alice" in alpha      # the user exists in alpha only
    assert "MLN-CHECK users root\n" in beta.replace("\r", "")


@pytest.mark.parametrize("hypervisor", ["uml", "qemu"])
def test_quickstart_end_to_end(mln_env, hypervisor):
    path = mln_env.quickstart(hypervisor)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "PROJECT quickstart FINISHED" in r.stderr

    r = mln_env.mln("start", "-p", "quickstart")
    assert r.returncode == 0, r.output
    _check_quickstart_consoles(mln_env, "quickstart")

    r = mln_env.mln("status", "-p", "quickstart")
    assert r.returncode == 0, r.output
    assert r.stdout.splitlines() == ["quickstart host alpha up", "quickstart host beta up",
                                     "quickstart switch lan up"]
    r = mln_env.mln("status", "-p", "quickstart", "--format", "json")
    rows = json.loads(r.stdout)
    assert {(x["kind"], x["name"], x["state"]) for x in rows} == {
        ("host", "alpha", "up"), ("host", "beta", "up"), ("switch", "lan", "up")}
    assert {x["hypervisor"] for x in rows if x["kind"] == "host"} == {hypervisor}

    r = mln_env.mln("stop", "-p", "quickstart", "-w", "30")
    assert r.returncode == 0, r.output
    # the guests shut down cleanly (not destroyed): their init ran its shutdown actions
    assert "did not stop" not in r.stderr
    assert "mln-guest: shutting down" in mln_env.console("quickstart", "alpha")
    r = mln_env.mln("status", "-p", "quickstart")
    assert r.returncode == 1
    assert "quickstart host alpha down" in r.stdout

    r = mln_env.mln("remove", "-f", "-p", "quickstart")
    assert r.returncode == 0, r.output
    assert not (mln_env.projects / "quickstart").exists()
    assert mln_env.processes() == [] and mln_env.runtime_dirs() == []


def test_mixed_uml_and_qemu_on_one_vde_switch(mln_env):
    text = mln_env.quickstart("uml", project="mixed").read_text()
    text = text.replace("host beta {\n    superclass node", "host beta {\n    superclass node\n    hypervisor qemu")
    path = mln_env.write("mixed.mln", text)
    r = mln_env.mln("show", "-f", str(path), "--format", "json")
    hosts = json.loads(r.stdout)["hosts"]
    assert hosts["alpha"]["hypervisor"] == "uml" and hosts["beta"]["hypervisor"] == "qemu"
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "mixed")
    assert r.returncode == 0, r.output
    _check_quickstart_consoles(mln_env, "mixed")
    assert mln_env.mln("stop", "-p", "mixed").returncode == 0


@pytest.mark.root
def test_bridge_switch_with_taps(mln_env):
    before = set(os.listdir("/sys/class/net"))
    path = mln_env.quickstart("uml", project="br", switch_type="bridge")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "br")
    assert r.returncode == 0, r.output
    new = set(os.listdir("/sys/class/net")) - before
    assert "lan.br" in new                       # <switch>.<project> fits in 15 characters
    taps = [d for d in new if d.startswith("tap-")]
    assert len(taps) == 2
    for tap in taps:
        assert os.path.realpath(f"/sys/class/net/{tap}/master").endswith("/lan.br")
    _check_quickstart_consoles(mln_env, "br")
    assert mln_env.mln("stop", "-p", "br").returncode == 0
    assert set(os.listdir("/sys/class/net")) - before == set()


def test_start_and_stop_one_host_and_already_running(mln_env):
    path = mln_env.quickstart("uml", project="one")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "one", "-h", "beta")
    assert r.returncode == 0, r.output
    assert mln_env.mln("status", "-p", "one", "-h", "beta").returncode == 0
    r = mln_env.mln("status", "-p", "one", "-h", "alpha")
    assert r.returncode == 1 and r.stdout.strip() == "one host alpha down"
    r = mln_env.mln("start", "-p", "one", "-h", "beta")
    assert r.returncode == 1
    assert r.stderr.strip() == "mln: error: host 'beta' of project 'one' is already running"
    # -u: anything up -> 0; -d: nothing up -> 1
    assert mln_env.mln("status", "-p", "one", "-u").returncode == 0
    assert mln_env.mln("status", "-p", "one", "-d").returncode == 1
    # a project with a running host is not replaced or removed
    r = mln_env.mln("build", "-f", str(path), "-r")
    assert r.returncode == 1 and "running hosts (beta)" in r.stderr
    r = mln_env.mln("remove", "-f", "-p", "one")
    assert r.returncode == 1 and "stop it first" in r.stderr
    assert mln_env.mln("stop", "-p", "one", "-h", "beta", "-H").returncode == 0
    assert mln_env.mln("status", "-p", "one", "-h", "beta", "-d").returncode == 0
    # stopping one host leaves the switch up for the others; stopping the project ends it
    r = mln_env.mln("status", "-p", "one", "-d")
    assert r.returncode == 1            # the switch is still up
    assert r.stdout.splitlines() == ["one host alpha down", "one host beta down"]
    assert mln_env.mln("stop", "-p", "one").returncode == 0
    assert mln_env.mln("status", "-p", "one", "-d").returncode == 0


def test_kill_9_during_build_then_rebuild(mln_env, tmp_path):
    """A build killed while it makes disks leaves nothing running; build -r then works and
    also removes what the killed build staged outside the project directory (filepath)."""
    store = tmp_path / "shared-storage"
    store.mkdir()
    hosts = "\n".join(f"host h{i:02d} {{ superclass node; network eth0 {{ address 10.0.0.{i + 1} }} }}"
                      for i in range(24))
    text = ("global { project killme }\nswitch lan { }\n"
            f"superclass node {{ hypervisor qemu; template busybox.ext4; size 600M; filepath {store}\n"
            "  network eth0 { switch lan; netmask 255.255.255.0 } }\n" + hosts + "\n")
    path = mln_env.write("killme.mln", text)
    p = mln_env.popen("build", "-f", str(path), "-j", "2")
    staging = mln_env.projects / f".killme.build-{p.pid}"
    deadline = time.monotonic() + 60
    # kill it while a qemu-storage-daemon FUSE export (to grow a disk) is running
    while time.monotonic() < deadline and not [x for x in mln_env.processes() if "qemu-storage-daemon" in x]:
        time.sleep(0.01)
    assert (staging / "helpers").exists(), "the build did not get to the disk step"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [x for x in mln_env.processes() if "qemu-storage-daemon" in x], "nothing was left running"
    assert not (mln_env.projects / "killme").exists()
    assert [x.name for x in store.iterdir()] == [staging.name]      # the staged disks, nothing in place

    r = mln_env.mln("build", "-f", str(path), "-r")
    assert r.returncode == 0, r.output
    assert "removing what an interrupted build left" in r.stderr
    assert not staging.exists()
    assert sorted(x.name for x in mln_env.projects.iterdir() if x.name.startswith(".killme.build"))  == []
    assert mln_env.fuse_mounts() == []
    assert [x for x in mln_env.processes() if "qemu-storage-daemon" in x] == []
    assert disks(store) == [f"h{i:02d}.killme.qcow2" for i in range(24)]


def test_uml_copy_on_write_over_a_shared_base(mln_env):
    path = mln_env.quickstart("uml", project="cow", node="cow_filesystem shared")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    images = mln_env.projects / "cow" / "images"
    assert sorted(p.name for p in images.iterdir()) == ["alpha.cow", "beta.cow", "shared"]
    # each COW file holds only what makes its host itself
    assert all((images / f"{h}.cow").stat().st_blocks * 512 < 1024 * 1024 for h in ("alpha", "beta"))
    base_before = (images / "shared").read_bytes()
    r = mln_env.mln("start", "-p", "cow")
    assert r.returncode == 0, r.output
    cmdline = (mln_env.projects / "cow" / "hosts" / "alpha" / "cmdline").read_text()
    assert f"ubd0={images}/alpha.cow,{images}/shared" in cmdline
    _check_quickstart_consoles(mln_env, "cow")
    assert mln_env.mln("stop", "-p", "cow").returncode == 0
    assert (images / "shared").read_bytes() == base_before    # the guests wrote only to their COW files


def test_filepath_disks_survive_a_rebuild(mln_env, tmp_path):
    store = tmp_path / "shared-storage"
    store.mkdir()
    path = mln_env.quickstart("uml", project="fp", node=f"filepath {store}")
    text = path.read_text()
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    assert disks(store) == ["alpha.fp", "beta.fp"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.iterdir() if p.name in disks(store)}
    # a rebuild that fails (beta's kernel is missing) leaves the old disks alone and no
    # staging folder behind
    broken = mln_env.write("fp-broken.mln", text.replace("host beta {", "host beta {\n    kernel /nope"))
    r = mln_env.mln("build", "-f", str(broken), "-r")
    assert r.returncode != 0 and "host beta" in r.stderr, r.output
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.iterdir() if p.name in disks(store)} \
        == before
    r = mln_env.mln("build", "-f", str(path), "-r")
    assert r.returncode == 0, r.output
    assert disks(store) == ["alpha.fp", "beta.fp"]
    assert all((store / n).stat().st_ino != before[n][0] for n in disks(store))     # the new disks
    assert mln_env.mln("start", "-p", "fp").returncode == 0
    _check_quickstart_consoles(mln_env, "fp")
    assert mln_env.mln("stop", "-p", "fp").returncode == 0
    assert mln_env.mln("remove", "-f", "-p", "fp").returncode == 0
    assert list(store.iterdir()) == []


def test_simple_network_example_runs_with_the_defaults(mln_env):
    """The spec's smallest project: no hypervisor, template or size given."""
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "core" / "examples" / "simple_network.mln"
    path = mln_env.write("simple_network.mln", example.read_text())
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "2 hosts (uml), 1 switch" in r.stderr
    assert mln_env.mln("start", "-p", "simple_network").returncode == 0
    r = mln_env.mln("status", "-p", "simple_network")
    assert r.returncode == 0 and r.stdout.count(" up") == 3
    # the guests booted far enough for UML's mconsole to answer with their own names
    import subprocess
    from mln_backends.runtime import runtime_dir
    from types import SimpleNamespace
    for host in ("starfish", "catfish"):
        ctx = SimpleNamespace(project_dir=str(mln_env.projects / "simple_network"))
        sock = f"{runtime_dir(ctx, 'uml', host)}/{host}.simple_network/mconsole"
        out = ""
        for _ in range(60):
            out = subprocess.run(["uml_mconsole", sock, "version"], capture_output=True, text=True).stdout
            if out.startswith("OK") and f" {host} " in out:   # rcS has set the hostname
                break
            time.sleep(0.5)
        assert out.startswith("OK") and f" {host} " in out, out
    assert mln_env.mln("stop", "-p", "simple_network").returncode == 0


UML_MODULES = """
global { project mods }
host m {
    hypervisor uml
    template busybox.ext4
    memory 96M
    SIZE
    modules {
        dummy
    }
    startup {
        echo "MLN-CHECK dummy loaded: $(lsmod | grep -c '^dummy ')"
        ip link show dummy0 > /dev/null && echo "MLN-CHECK dummy0 exists"
    }
}
"""


@pytest.mark.skipif(not os.path.isdir("/usr/lib/uml/modules"), reason="needs Debian's user-mode-linux modules")
def test_uml_modules_are_copied_into_the_guest_and_loaded(mln_env):
    """modules {} on a UML host: the UML kernel's modules go to /lib/modules/ and the
    guest loads the named ones at boot."""
    small = mln_env.write("small.mln", UML_MODULES.replace("SIZE", "size 40M"))
    r = mln_env.mln("build", "-f", str(small))
    assert r.returncode == 1
    assert "host m: configure image:" in r.stderr and "the filesystem is full" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 12 and len(r.stderr) < 3000     # one line, not thousands
    assert not (mln_env.projects / "mods").exists()

    path = mln_env.write("mods.mln", UML_MODULES.replace("SIZE", "size 250M"))
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert mln_env.mln("start", "-p", "mods").returncode == 0
    out = mln_env.wait_console("mods", "m", r"MLN-CHECK dummy0 exists")
    assert "MLN-CHECK dummy loaded: 1" in out
