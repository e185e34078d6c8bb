"""Crash-safe commits (issue 11, item 5) and projects that cannot break one another (item 6),
from the user's side: ``mln`` killed (SIGKILL, through the seam's named steps) at every
step of ``build``, ``build -r`` and ``remove``; after each kill the next command leaves the
complete old project or the complete new one, never a mix, never none where there was one,
and nothing else behind. No guest is started: these are fast."""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.guests

PROJECT = """global {{ project {name} }}
switch lan {{ }}
host a {{
    uml
    template busybox.ext4
    memory {memory}
    filepath {shared}
    network eth0 {{ switch lan; address 10.0.0.1; netmask 255.255.255.0 }}
}}
host b {{
    uml
    template busybox.ext4
    memory {memory}
    network eth0 {{ switch lan; address 10.0.0.2; netmask 255.255.255.0 }}
}}
"""


def write(env, name: str, memory: str = "64M", file: str | None = None) -> Path:
    shared = env.root / "shared"
    shared.mkdir(exist_ok=True)
    return env.write(file or f"{name}-{memory}.mln", PROJECT.format(name=name, memory=memory, shared=shared))


def snapshot(env, name: str) -> dict:
    """What a user would compare: the saved file, version, every disk (by inode: which file
    it is), the projects directory and the shared directory, locks aside."""
    pdir, shared = env.projects / name, env.root / "shared"
    disks = {}
    if pdir.is_dir():
        disks = {f"images/{p.name}": p.stat().st_ino for p in (pdir / "images").iterdir()}
    disks.update({f"shared/{p.name}": p.stat().st_ino for p in shared.iterdir() if not p.name.startswith(".")})
    source = pdir / f"{name}.mln"
    return {"source": source.read_text() if source.exists() else None,
            "version": (pdir / "version").read_text() if (pdir / "version").exists() else None,
            "disks": disks,
            "projects dir": sorted(p.name for p in env.projects.iterdir() if not p.name.endswith(".lock")),
            "shared dir": sorted(p.name for p in shared.iterdir())}


def steps_of(env, *args: str, prefix: str) -> list[str]:
    """The named steps a complete run of ``mln ARGS`` goes through."""
    env.env["MLN_TRACE_COMMANDS"] = "1"
    try:
        r = env.mln(*args)
    finally:
        del env.env["MLN_TRACE_COMMANDS"]
    assert r.returncode == 0, r.output
    return re.findall(rf"^\$ mln-step '{re.escape(prefix)}: (.*)'$", r.stderr, re.M)


def killed(env, at: str, *args: str):
    env.env["MLN_FAULTS"] = at if "#" in at else f"kill@{at}#1"
    try:
        r = env.mln(*args)
    finally:
        del env.env["MLN_FAULTS"]
    assert r.returncode == -9, f"not killed at {at}: {r.output}"
    return r


def is_new(after: dict, before: dict, new_source: str) -> bool:
    """``after`` is the complete project built from ``new_source`` over ``before``."""
    return (after["source"] == new_source and after["version"] == f"{int(before['version']) + 1}\n"
            and set(after["disks"]) == set(before["disks"])
            and all(after["disks"][d] != before["disks"][d] for d in before["disks"])
            and after["projects dir"] == before["projects dir"] and after["shared dir"] == before["shared dir"])


def test_a_kill_at_every_step_of_build_and_build_r(mln_env):
    env = mln_env
    old, new = write(env, "cs", "64M"), write(env, "cs", "72M")
    # a new project: killed at every step (and in the middle of its disk work), the next
    # command leaves no project and nothing of it, or the complete project
    steps = steps_of(env, "build", "-f", str(old), prefix="build cs")
    assert steps == ["stage", "outside file 1", "commit hosts", "move in"], steps
    built = snapshot(env, "cs")
    assert env.mln("remove", "-f", "-p", "cs").returncode == 0
    nothing = snapshot(env, "cs")
    assert nothing["projects dir"] == [] and nothing["shared dir"] == [], nothing
    for at in ["kill@debugfs -w#2"] + [f"mln-step 'build cs: {s}'" for s in steps]:
        killed(env, at, "build", "-f", str(old))
        st = env.mln("status", "-p", "cs")       # the next command on it puts things right
        assert "Traceback" not in st.output
        after = snapshot(env, "cs")
        if after["source"] is None:
            assert after == nothing, f"after a kill at {at}: {after}"
        else:
            assert "interrupted" in st.stderr, f"kill at {at}: {st.output}"
            assert {k: v for k, v in after.items() if k != "disks"} == \
                {k: v for k, v in built.items() if k != "disks"}, f"after a kill at {at}"
            assert set(after["disks"]) == set(built["disks"])
            assert env.mln("remove", "-f", "-p", "cs").returncode == 0
    # build -r: every step, killed; the old project or the new one, complete
    assert env.mln("build", "-f", str(old)).returncode == 0
    steps = steps_of(env, "build", "-r", "-f", str(new), prefix="build cs")
    assert steps == ["stage", "outside file 1", "remove replaced", "commit hosts", "set old aside", "move in",
                     "delete replaced"], steps
    assert env.mln("build", "-r", "-f", str(old)).returncode == 0
    new_source = None
    for at in ["kill@debugfs -w#2"] + [f"mln-step 'build cs: {s}'" for s in steps]:
        before = snapshot(env, "cs")
        killed(env, at, "build", "-r", "-f", str(new))
        st = env.mln("status", "-p", "cs")
        assert "Traceback" not in st.output and "down" in st.stdout, st.output
        after = snapshot(env, "cs")
        if after == before:
            continue                               # the complete old project
        if new_source is None:
            new_source = after["source"]
        assert "interrupted" in st.stderr and is_new(after, before, new_source), \
            f"after a kill at {at}:\nbefore {before}\nafter {after}\n{st.output}"
        assert "memory 72M" in after["source"]
        assert env.mln("build", "-r", "-f", str(old)).returncode == 0     # the old one again
    # the steps up to the outside files roll back, the later ones roll forward: both seen
    assert new_source is not None
    # a failure (not a kill) at a step: the old project, or the new one once the next command ran
    for s in ("outside file 1", "commit hosts"):
        before = snapshot(env, "cs")
        env.env["MLN_FAULTS"] = f"fail@mln-step 'build cs: {s}'#1"
        r = env.mln("build", "-r", "-f", str(new))
        del env.env["MLN_FAULTS"]
        assert r.returncode == 1 and "injected fault" in r.stderr and "Traceback" not in r.output, r.output
        env.mln("status", "-p", "cs")
        after = snapshot(env, "cs")
        assert after == before or is_new(after, before, new_source), f"after a failure at {s}"
    assert env.mln("remove", "-f", "-p", "cs").returncode == 0
    assert snapshot(env, "cs") == nothing


def test_a_kill_at_every_step_of_remove(mln_env):
    env = mln_env
    path = write(env, "rm")
    assert env.mln("build", "-f", str(path)).returncode == 0
    steps = steps_of(env, "remove", "-f", "-p", "rm", prefix="remove rm")
    assert steps == ["resources", "directory"], steps
    gone = snapshot(env, "rm")
    assert gone["projects dir"] == [] and gone["shared dir"] == [], gone
    assert not (env.projects / ".rm.lock").exists()
    for step in steps:
        assert env.mln("build", "-f", str(path)).returncode == 0
        killed(env, f"mln-step 'remove rm: {step}'", "remove", "-f", "-p", "rm")
        st = env.mln("status")                              # finishes the removal
        assert "removal was interrupted" in st.stderr and "Traceback" not in st.output, st.output
        assert snapshot(env, "rm") == gone, f"after a kill at {step}"
        r = env.mln("status", "-p", "rm")
        assert r.returncode == 1 and "no project 'rm'" in r.stderr


def test_leftovers_are_matched_exactly_and_temporary_files_stay_in_the_projects_dir(mln_env):
    env = mln_env
    path = write(env, "p")
    assert env.mln("build", "-f", str(path)).returncode == 0
    dead = "99999999"                      # above any pid_max: a process that is gone
    (env.projects / f".p.build-{dead}").mkdir()                 # a killed build of p
    (env.projects / f".p.build-1.build-{dead}").mkdir()         # ... of project 'p.build-1': not p's
    (env.projects / f".mln-tmp-{dead}").mkdir()                 # a killed command's temporary files
    # a kill in the middle of writing a disk: the command's temporary files are under the
    # projects directory (not /tmp), and the next command deletes them
    killed(env, "kill@debugfs -w#2", "build", "-r", "-f", str(path))
    tmps = [p.name for p in env.projects.iterdir() if p.name.startswith(".mln-tmp-")]
    assert len(tmps) == 1 and tmps != [f".mln-tmp-{dead}"], tmps      # the dead one's went at once
    (env.projects / f".mln-tmp-{dead}").mkdir()
    assert env.mln("status", "-p", "p").returncode == 1        # down
    left = sorted(p.name for p in env.projects.iterdir() if not p.name.endswith(".lock"))
    assert left == [f".p.build-1.build-{dead}", "p"], left
    (env.projects / f".p.build-1.build-{dead}").rmdir()


def test_two_projects_directories_sharing_a_filepath_are_refused(mln_env):
    env = mln_env
    path = write(env, "twin")
    assert env.mln("build", "-f", str(path)).returncode == 0
    disk = env.root / "shared" / "a.twin"
    ino = disk.stat().st_ino
    other = env.root / "other.conf"
    other.write_text(env.config.read_text().replace(str(env.projects), str(env.root / "projects2")))
    env.env["MLN_CONFIG"] = str(other)
    try:
        for cmd in ("check", "build"):
            r = env.mln(cmd, "-f", str(path))
            assert r.returncode == 1 and "Traceback" not in r.output, r.output
            assert f"{path}:7:" in r.stderr, r.stderr               # the filepath line
            assert f"of project twin ({env.root / 'projects2' / 'twin'})" in r.stderr, r.stderr
            assert f"already the disk of host a of project twin ({env.projects / 'twin'})" in r.stderr
    finally:
        env.env["MLN_CONFIG"] = str(env.config)
    assert disk.stat().st_ino == ino and not (env.root / "projects2" / "twin").exists()
    # a file at the place that belongs to no project is not taken over either
    stray = env.root / "shared" / "a.stray"
    stray.write_text("someone's data")
    r = env.mln("build", "-f", str(write(env, "stray")))
    assert r.returncode == 1 and "belongs to no project" in r.stderr and str(stray) in r.stderr, r.output
    assert stray.read_text() == "someone's data"
    stray.unlink()
    # the project's own disk is its own: build -r replaces it
    assert env.mln("build", "-r", "-f", str(path)).returncode == 0
    assert disk.stat().st_ino != ino


def test_one_broken_project_does_not_hide_the_others(mln_env):
    env = mln_env
    for name in ("ok", "busy", "broken"):
        assert env.mln("build", "-f", str(write(env, name))).returncode == 0
    (env.projects / "broken" / "broken.mln").write_text("host {\n")
    fd = os.open(env.projects / ".busy.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = env.mln("status")
    finally:
        os.close(fd)
    assert r.returncode == 1 and "Traceback" not in r.output, r.output
    lines = r.stdout.splitlines()
    assert "ok host a down" in lines and "ok switch lan down" in lines, r.stdout
    assert any(line.startswith("busy project busy busy (") for line in lines), r.stdout
    assert any(line.startswith("broken project broken unreadable (") and "broken.mln:1" in line
               for line in lines), r.stdout
    # a project whose saved file no longer reads is still removed, from its recorded state
    r = env.mln("remove", "-f", "-p", "broken")
    assert r.returncode == 0, r.output
    assert "cannot be read" in r.stderr and "removed" in r.stderr
    assert not (env.projects / "broken").exists() and not (env.root / "shared" / "a.broken").exists()
    assert env.mln("status").returncode == 0
