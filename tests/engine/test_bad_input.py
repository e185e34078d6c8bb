"""Bad input to the engine: one clear message, a non-zero exit, nothing half-done."""
from __future__ import annotations

import fcntl
import os
import subprocess

import pytest


def _nothing_built(env, project):
    assert not (env.projects / project).exists()
    assert [p.name for p in env.projects.iterdir() if p.name.startswith(f".{project}.build")] == []


def _one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("mln: ")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_unknown_template_lists_the_registered_ones(mln_env):
    path = mln_env.write("p.mln", "global { project badtpl }\nhost a { template nosuch.ext4 }\n")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1
    msg = _one_error_line(r)
    assert "host a" in msg and "unknown template 'nosuch.ext4'" in msg and "busybox.ext4" in msg
    _nothing_built(mln_env, "badtpl")


def test_missing_uml_kernel(mln_env):
    path = mln_env.write("p.mln", "global { project nokernel }\nhost a { kernel /nonexistent/linux }\n")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1
    msg = _one_error_line(r)
    assert "host a" in msg and "missing kernel" in msg and "/nonexistent/linux" in msg
    _nothing_built(mln_env, "nokernel")


def test_missing_qemu_kernel_for_a_bare_filesystem_template(mln_env, test_template):
    bare = mln_env.root / "nokernel.ext4"
    subprocess.run(["cp", "--sparse=always", str(test_template / "busybox.ext4"), str(bare)], check=True)
    r = mln_env.mln("register_template", "-t", str(bare))
    assert r.returncode == 0, r.output
    path = mln_env.write("p.mln", "global { project noqk }\nhost a { qemu; template nokernel.ext4 }\n")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1
    assert "missing kernel" in _one_error_line(r)
    _nothing_built(mln_env, "noqk")


def test_switch_referenced_but_not_defined(mln_env):
    path = mln_env.write("p.mln", "global { project nosw }\nswitch lan { }\n"
                                  "host a {\n  network eth0 {\n    switch lna\n  }\n}\n")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1
    msg = _one_error_line(r)
    assert f"{path}:5:5:" in msg and "switch 'lna' is not defined" in msg and "lan" in msg
    _nothing_built(mln_env, "nosw")


def test_project_that_does_not_exist(mln_plain):
    for cmd in (["start", "-p", "nope"], ["stop", "-p", "nope"], ["status", "-p", "nope"],
                ["remove", "-f", "-p", "nope"]):
        r = mln_plain.mln(*cmd)
        assert r.returncode == 1, cmd
        assert "no project 'nope'" in _one_error_line(r)


def test_unknown_host_in_project(mln_env):
    path = mln_env.quickstart("uml", project="uh")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "uh", "-h", "gamma")
    assert r.returncode == 1
    assert "has no host 'gamma' (hosts: alpha, beta)" in _one_error_line(r)


def test_existing_project_is_not_replaced_without_r(mln_env):
    path = mln_env.quickstart("uml", project="twice")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    stamp = mln_env.projects / "twice" / "images" / "alpha"
    before = stamp.stat().st_mtime_ns
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1 and "use -r to replace it" in r.stderr
    assert stamp.stat().st_mtime_ns == before
    assert (mln_env.projects / "twice" / "version").read_text().strip() == "1"
    r = mln_env.mln("build", "-f", str(path), "-r")
    assert r.returncode == 0, r.output
    assert (mln_env.projects / "twice" / "version").read_text().strip() == "2"


def test_failed_build_leaves_the_old_project_untouched(mln_env):
    path = mln_env.quickstart("uml", project="keep")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    saved = (mln_env.projects / "keep" / "keep.mln").read_text()
    broken = mln_env.write("keep2.mln", path.read_text().replace("host beta {", "host beta {\n    kernel /nope"))
    r = mln_env.mln("build", "-f", str(broken), "-r")
    assert r.returncode == 1
    assert "host beta" in _one_error_line(r) and "missing kernel" in r.stderr
    assert (mln_env.projects / "keep" / "keep.mln").read_text() == saved
    assert mln_env.mln("status", "-p", "keep").stdout.count("down") == 3


def test_busy_project_lock(mln_env):
    path = mln_env.quickstart("uml", project="busy")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    fd = os.open(mln_env.projects / ".busy.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"pid 4242\n", 0)
        r = mln_env.mln("start", "-p", "busy")
        assert r.returncode == 1
        assert "project 'busy' is busy: another mln command (pid 4242)" in _one_error_line(r)
    finally:
        os.close(fd)
    assert mln_env.mln("status", "-p", "busy", "-d").returncode == 0


def test_before_project_start_failure_aborts_start(mln_env):
    text = mln_env.quickstart("uml", project="hooks").read_text().replace(
        "project hooks", "project hooks\n    beforeProjectStart {\n        echo refused > refused.txt\n"
                         "        exit 3\n    }")
    path = mln_env.write("hooks.mln", text)
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-p", "hooks")
    assert r.returncode == 1
    assert "beforeProjectStart script failed (exit 3)" in _one_error_line(r)
    assert (mln_env.projects / "hooks" / "refused.txt").read_text() == "refused\n"
    r = mln_env.mln("status", "-p", "hooks")
    assert r.stdout.count(" down") == 3


@pytest.mark.parametrize("args,needle", [
    (["build"], "Missing option '-f'"),
    (["start"], "give -p PROJECT or -a (all projects)"),
    (["remove"], "Missing option '-p'"),
    (["status", "-h", "a"], "-h needs -p PROJECT"),
    (["stop", "-p", "x", "-w", "soon"], "'soon' is not a number of seconds"),
])
def test_wrong_options_are_usage_errors(mln_plain, args, needle):
    r = mln_plain.mln(*args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_rebuild_over_an_unreadable_stored_project(mln_env):
    """A stored project that no longer reads (edited by hand, say) can still be replaced."""
    path = mln_env.quickstart("uml", project="broken")
    assert mln_env.mln("build", "-f", str(path)).returncode == 0
    (mln_env.projects / "broken" / "broken.mln").write_text("host {\n")
    r = mln_env.mln("status", "-p", "broken")
    assert r.returncode == 1 and "'host' needs a name" in r.stderr
    r = mln_env.mln("build", "-f", str(path), "-r")
    assert r.returncode == 0, r.output
    assert mln_env.mln("status", "-p", "broken").stdout.count(" down") == 3
