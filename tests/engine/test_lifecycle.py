"""Lifecycle details: boot order, the global hook scripts, list/status over projects."""
from __future__ import annotations

import json
import os
import re

import pytest

HOOKS = ("beforeProjectStart", "beforeHostsStart", "afterHostsStart", "afterProjectStart",
         "beforeProjectStop", "beforeHostsStop", "afterHostsStop", "afterProjectStop")


def _project(env, name="order"):
    hooks = "\n".join(f"    {h} {{\n        echo {h} >> hooks.log\n    }}" for h in HOOKS)
    text = f"""global {{
    project {name}
{hooks}
}}
switch lan {{ }}
superclass node {{
    template busybox.ext4
    memory 64M
    network eth0 {{ switch lan; netmask 255.255.255.0 }}
}}
host late {{ superclass node; boot_order 50; network eth0 {{ address 10.0.0.3 }} }}
host first {{ superclass node; boot_order 1; network eth0 {{ address 10.0.0.1 }} }}
host middle {{ superclass node; boot_order 10; network eth0 {{ address 10.0.0.2 }} }}
"""
    return env.write(f"{name}.mln", text)


@pytest.mark.guests
def test_boot_order_and_hook_scripts(mln_env):
    path = _project(mln_env)
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "order")
    assert r.returncode == 0, r.output
    started = re.findall(r"\+---> (\w+): started", r.stderr)
    assert started == ["first", "middle", "late"]
    r = mln_env.mln("stop", "-p", "order")
    assert r.returncode == 0, r.output
    stopped = re.findall(r"\+---> (\w+): stopped", r.stderr)
    assert stopped == ["late", "middle", "first"]
    log = (mln_env.projects / "order" / "hooks.log").read_text().split()
    assert log == list(HOOKS)


def test_list_and_status_of_all_projects(mln_env):
    for name in ("p1", "p2"):
        assert mln_env.mln("build", "-f", str(mln_env.quickstart("uml", project=name))).returncode == 0
    r = mln_env.mln("list")
    assert r.stdout.splitlines() == [str(mln_env.projects / "p1"), str(mln_env.projects / "p2")]
    r = mln_env.mln("status")
    assert r.returncode == 0
    assert r.stdout.count(" down") == 6 and "p1 host alpha down" in r.stdout and "p2 switch lan down" in r.stdout
    rows = json.loads(mln_env.mln("status", "--format", "json").stdout)
    assert {x["project"] for x in rows} == {"p1", "p2"}
    # a missing project leaves no lock file behind
    assert mln_env.mln("status", "-p", "nope").returncode == 1
    assert not (mln_env.projects / ".nope.lock").exists()


def test_simulate_builds_nothing(mln_env):
    path = mln_env.quickstart("uml", project="sim")
    r = mln_env.mln("build", "-f", str(path), "-s")
    assert r.returncode == 0 and "project sim: 2 hosts (uml), 1 switch" in r.stderr
    assert not (mln_env.projects / "sim").exists()


def test_build_with_one_worker(mln_env):
    path = mln_env.quickstart("uml", project="serial")
    r = mln_env.mln("build", "-f", str(path), "-j", "1")
    assert r.returncode == 0, r.output
    # with one worker the hosts are built one after the other
    steps = re.findall(r"\+---> (alpha|beta): (create disk|built)", r.stderr)
    assert steps == [("alpha", "create disk"), ("alpha", "built"), ("beta", "create disk"), ("beta", "built")]


def test_qemu_uses_tcg_where_kvm_does_not_really_work(mln_env):
    from mln_backends.qemu import kvm_usable
    path = mln_env.quickstart("qemu", project="accel")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    state = json.loads((mln_env.projects / "accel" / "state.json").read_text())
    assert state["hosts"]["alpha"]["backend"]["accel"] == ("kvm" if kvm_usable() else "tcg")
    forced = path.read_text().replace("host beta {", "host beta {\n    accel tcg")
    path.write_text(forced.replace("project accel", "project accel2"))
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    state = json.loads((mln_env.projects / "accel2" / "state.json").read_text())
    assert state["hosts"]["beta"]["backend"]["accel"] == "tcg"
    bad = forced.replace("accel tcg", "accel warp").replace("project accel", "project accel3")
    path.write_text(bad)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1 and "accel must be auto, kvm or tcg, not 'warp'" in r.stderr


def test_disks_grow_to_size_and_swap(mln_env):
    text = mln_env.quickstart("uml", project="sizes").read_text().replace(
        "host beta {", "host beta {\n    size 300M\n    swap 32M")
    path = mln_env.write("sizes.mln", text)
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    images = mln_env.projects / "sizes" / "images"
    assert (images / "beta").stat().st_size == 300 * 2**20
    assert (images / "alpha").stat().st_size == 250 * 2**20      # the default size
    assert (images / "swap_beta").stat().st_size == 32 * 2**20
    assert (images / "swap_beta").read_bytes()[4086:4096] == b"SWAPSPACE2"
    import subprocess
    out = subprocess.run(["dumpe2fs", "-h", str(images / "beta")], capture_output=True, text=True).stdout
    blocks = int(re.search(r"Block count:\s+(\d+)", out).group(1))
    bsize = int(re.search(r"Block size:\s+(\d+)", out).group(1))
    assert blocks * bsize == 300 * 2**20


@pytest.mark.guests
def test_start_and_stop_all_projects(mln_env):
    for name in ("p1", "p2"):
        assert mln_env.mln("build", "-f", str(mln_env.quickstart("uml", project=name))).returncode == 0
    r = mln_env.mln("start", "-a")
    assert r.returncode == 0, r.output
    assert re.findall(r"\+---> project (\w+)", r.stderr) == ["p1", "p2"]
    r = mln_env.mln("status")
    assert r.returncode == 0 and r.stdout.count(" up") == 6, r.output
    # what runs already is left alone; a host that was stopped is started again
    r = mln_env.mln("start", "-a")
    assert r.returncode == 0 and r.stderr.count("every host is running already") == 2, r.output
    assert mln_env.mln("stop", "-p", "p2", "-h", "beta", "-H").returncode == 0
    r = mln_env.mln("start", "-a")
    assert r.returncode == 0, r.output
    assert re.findall(r"\+---> (\w+): started", r.stderr) == ["beta"]
    r = mln_env.mln("stop", "-a", "-H")
    assert r.returncode == 0, r.output
    assert len(re.findall(r"\+---> \w+: stopped", r.stderr)) == 4
    assert mln_env.mln("status", "-d").returncode == 0                 # nothing is up
    r = mln_env.mln("stop", "-a")
    assert r.returncode == 0 and r.stderr.count("nothing is running") == 2, r.output
    # -p or -a, exactly one; -h only with -p
    for args in (["start"], ["start", "-a", "-p", "p1"], ["stop", "-a", "-h", "alpha"]):
        r = mln_env.mln(*args)
        assert r.returncode == 2 and ("give -p PROJECT or -a" in r.stderr or "-h needs -p" in r.stderr), args


def test_relative_filepath_is_taken_from_the_project_files_directory(mln_env):
    lab = mln_env.root / "lab"
    (lab / "disks").mkdir(parents=True)
    path = lab / "rel.mln"
    path.write_text(mln_env.quickstart("uml", project="rel", node="filepath disks").read_text())
    r = mln_env.mln("build", "-f", str(path))            # run from another directory
    assert r.returncode == 0, r.output
    assert sorted(os.listdir(lab / "disks")) == [".mln-owner.alpha.rel", ".mln-owner.beta.rel",   # their owner
                                                 "alpha.rel", "beta.rel"]
    assert mln_env.mln("remove", "-f", "-p", "rel").returncode == 0
    assert os.listdir(lab / "disks") == []
