"""The ``lvm`` storage plugin, through ``mln build`` on a real (metadata-only) volume group.

This machine's kernel has no device-mapper, so the plugin makes volumes with
``lvcreate --driverloaded n -an -Zn`` and reaches their data through a loop device over
their extents. The tests read the result back independently: sizes from ``lvs``, files
with debugfs on the PV file at the volume's offset. Hosts use ``hypervisor uml``, whose
build step writes nothing that needs the volume (booting it would need activation).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mln_backends import storage_lvm

pytestmark = pytest.mark.root

M = 2**20
SAN_EXAMPLE = Path("/work/shared/examples/san.mln")


def project(vg: str, size: str = "100M", extra: str = "", name: str = "lvmt") -> str:
    return f"""
global {{ project {name} }}
host web {{
    hypervisor uml
    lvm
    lvm_vg {vg}
    size {size}
    {extra}
}}
host plain {{
    hypervisor uml
    size 80M
}}
"""


def state(mln_env, name: str) -> dict:
    return json.loads((mln_env.projects / name / "state.json").read_text())


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if "error" in ln.lower()]


def test_build_rebuild_remove(mln_env, test_vg):
    vg = test_vg
    f = mln_env.write("p.mln", project(vg.name))
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode == 0, r.output

    # the volume: right name and size, recorded as the host's disk
    assert vg.lvs() == {"web.lvmt": 100 * M}
    disk = state(mln_env, "lvmt")["hosts"]["web"]["disk"]
    assert disk["kind"] == "lvm" and disk["format"] == "raw"
    assert disk["path"] == f"/dev/{vg.name}/web.lvmt"
    assert disk["extra"]["vg"] == vg.name and disk["extra"]["lv"] == "web.lvmt"
    assert disk["extra"]["lv_uuid"] == vg.lv_uuid("web.lvmt")
    assert disk["extra"]["activation"] == ("device-mapper" if storage_lvm.have_device_mapper() else "none")
    # the file host beside it is still made by the file plugin
    assert state(mln_env, "lvmt")["hosts"]["plain"]["disk"]["kind"] == "file"

    # the template was copied in, grown to the volume and individualized
    assert vg.read("web.lvmt", "/etc/hostname") == "web\n"
    assert vg.fs_size("web.lvmt") == 100 * M
    assert vg.read("web.lvmt", "/bin/busybox").startswith("\x7fELF")     # from the template
    assert not vg.imitation_loops()

    # a rebuild that fails after web's new volume was made (its configure step refuses a
    # file from outside the files directory: a link to it, which check cannot see) leaves
    # the old volume as it was
    old_uuid = vg.lv_uuid("web.lvmt")
    (mln_env.root / "files").mkdir(exist_ok=True)
    (mln_env.root / "files" / "escape").symlink_to("/etc/passwd")
    f.write_text(project(vg.name, size="120M", extra="files { escape /etc/x }"))
    r = mln_env.mln("build", "-r", "-f", str(f))
    assert r.returncode != 0 and "host web" in r.stderr, r.output
    assert "web.lvmt+mln-new" in r.output                 # the new volume was made aside ...
    assert vg.lvs() == {"web.lvmt": 100 * M}               # ... and is gone; the old one is untouched
    assert vg.lv_uuid("web.lvmt") == old_uuid
    assert vg.read("web.lvmt", "/etc/hostname") == "web\n"
    assert state(mln_env, "lvmt")["hosts"]["web"]["disk"]["extra"]["lv_uuid"] == old_uuid

    # rebuild: the volume is replaced by a new one (new uuid, new size), made aside and
    # renamed into place once the old project's volume is removed
    f.write_text(project(vg.name, size="120M").replace("host web {", "host web {\n    memory 64M"))
    r = mln_env.mln("build", "-r", "-f", str(f))
    assert r.returncode == 0, r.output
    assert "replacing logical volume" in r.output
    assert vg.lvs() == {"web.lvmt": 120 * M}
    assert "final_lv" not in state(mln_env, "lvmt")["hosts"]["web"]["disk"]["extra"]
    assert vg.lv_uuid("web.lvmt") != old_uuid
    assert state(mln_env, "lvmt")["hosts"]["web"]["disk"]["extra"]["lv_uuid"] == vg.lv_uuid("web.lvmt")
    assert vg.fs_size("web.lvmt") == 120 * M
    assert vg.read("web.lvmt", "/etc/hostname") == "web\n"

    # remove: the volume goes with the project
    r = mln_env.mln("remove", "-f", "-p", "lvmt")
    assert r.returncode == 0, r.output
    assert vg.lvs() == {}
    assert not (mln_env.projects / "lvmt").exists()
    assert not vg.imitation_loops()


def test_missing_vg_is_one_clear_error(mln_env, test_vg):
    missing = test_vg.name + "x"
    f = mln_env.write("p.mln", project(missing))
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode != 0
    assert f"volume group '{missing}' does not exist" in r.output
    assert len(error_lines(r.output)) == 1, r.output
    assert "Traceback" not in r.output
    assert not (mln_env.projects / "lvmt").exists()
    assert [p for p in mln_env.projects.iterdir() if "lvmt" in p.name and not p.name.endswith(".lock")] == []
    assert test_vg.lvs() == {}


def test_too_little_space(mln_env, test_vg):
    vg = test_vg
    free = vg.free()
    f = mln_env.write("p.mln", project(vg.name, size="2G"))
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode != 0
    assert f"volume group {vg.name} has" in r.output and "free, but the disk needs 2G" in r.output, r.output
    assert len(error_lines(r.output)) == 1, r.output
    assert not (mln_env.projects / "lvmt").exists()
    assert vg.lvs() == {} and vg.free() == free


def test_space_runs_out_on_the_second_host(mln_env, test_vg):
    """The first volume fits, the second does not: the build fails and removes the first."""
    vg = test_vg
    text = f"""
global {{ project lvmt }}
superclass onvg {{
    hypervisor uml
    lvm
    lvm_vg {vg.name}
}}
host a {{
    superclass onvg
    size 300M
}}
host b {{
    superclass onvg
    size 400M
}}
"""
    r = mln_env.mln("build", "-f", str(mln_env.write("p.mln", text)))
    assert r.returncode != 0
    assert f"volume group {vg.name} has" in r.output and "free, but the disk needs" in r.output, r.output
    assert len(error_lines(r.output)) == 1, r.output
    assert not (mln_env.projects / "lvmt").exists()
    assert vg.lvs() == {}


def test_failure_after_the_volume_was_made_removes_it(mln_env, test_vg):
    """A later build step fails (a missing files source): the volume made for it goes."""
    f = mln_env.write("p.mln", project(test_vg.name, extra="files { nosuchfile /etc/x }"))
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode != 0
    assert "nosuchfile" in r.output
    assert test_vg.lvs() == {}
    assert not (mln_env.projects / "lvmt").exists()


def test_conf_default_vg_with_dev_prefix_swap_and_lock(mln_env, test_vg):
    """``lvm_vg`` from mln.conf (``/dev/`` stripped), ``lvm lock``, free_space, swap."""
    lock_existed = os.path.exists(storage_lvm.LOCK_FILE)
    try:
        with open(mln_env.config, "a") as c:
            c.write(f"lvm_vg /dev/{test_vg.name}\n")
        text = """
global { project lvmc }
host db {
    hypervisor uml
    lvm lock
    free_space 10M
    swap 16M
}
"""
        r = mln_env.mln("build", "-f", str(mln_env.write("c.mln", text)))
        assert r.returncode == 0, r.output
        template = os.path.getsize(mln_env.templates / "busybox.ext4")
        size = -(-(template + 10 * M) // (4 * M)) * 4 * M       # rounded up to 4M extents
        assert test_vg.lvs() == {"db.lvmc": size}
        assert test_vg.fs_size("db.lvmc") == size
        assert test_vg.read("db.lvmc", "/etc/hostname") == "db\n"
        disk = state(mln_env, "lvmc")["hosts"]["db"]["disk"]
        assert disk["extra"]["swap"] == "images/swap_db"
        assert (mln_env.projects / "lvmc" / "images" / "swap_db").stat().st_size == 16 * M
        r = mln_env.mln("remove", "-f", "-p", "lvmc")
        assert r.returncode == 0, r.output
        assert test_vg.lvs() == {}
    finally:
        if not lock_existed and os.path.exists(storage_lvm.LOCK_FILE):
            os.unlink(storage_lvm.LOCK_FILE)


def _drop_block(text: str, header: str) -> str:
    """Remove the top-level block that starts with ``header`` (braces counted)."""
    start = text.index(header)
    depth, i = 0, text.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            return text[:start] + text[i:]


@pytest.mark.skipif(not SAN_EXAMPLE.exists(), reason="the shared examples are not here")
def test_san_example_db1(mln_env, test_vg):
    """The db1 host of examples/san.mln: a superclass with lvm and lvm_vg (the test VG
    instead of sanvg), built with uml instead of xen; web1 (filepath on NFS) left out."""
    text = SAN_EXAMPLE.read_text()
    text = _drop_block(text, "superclass onnfs")
    text = _drop_block(text, "host web1")
    text = text.replace("lvm_vg sanvg", f"lvm_vg {test_vg.name}")
    text = re.sub(r"^(\s*)xen\s*$", r"\1hypervisor uml", text, flags=re.M)
    assert "lvm\n" in text and f"lvm_vg {test_vg.name}" in text
    with open(mln_env.config, "a") as f:
        f.write("server bigvmbox local\n")       # the example's service host: this machine
    r = mln_env.mln("build", "-f", str(mln_env.write("san.mln", text)))
    assert r.returncode == 0, r.output
    size = 252 * M                          # default_size 250M, rounded up to 4M extents
    assert test_vg.lvs() == {"db1.sanfarm": size}
    disk = state(mln_env, "sanfarm")["hosts"]["db1"]["disk"]
    assert disk["path"] == f"/dev/{test_vg.name}/db1.sanfarm"
    assert test_vg.read("db1.sanfarm", "/etc/hostname") == "db1\n"
    net = test_vg.read("db1.sanfarm", "/etc/network/interfaces") + \
        test_vg.read("db1.sanfarm", "/etc/init.d/rcS")
    assert "10.0.1.1" in net
    r = mln_env.mln("remove", "-f", "-p", "sanfarm")
    assert r.returncode == 0, r.output
    assert test_vg.lvs() == {}


def test_snapshot_needs_device_mapper(mln_env, test_vg):
    if storage_lvm.have_device_mapper():
        pytest.skip("this machine has device-mapper")
    f = mln_env.write("p.mln", project(test_vg.name, extra="lvm_snapshot"))
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode != 0
    assert "lvm_snapshot" in r.output and "device-mapper" in r.output, r.output
    assert len(error_lines(r.output)) == 1, r.output
    assert test_vg.lvs() == {}
    assert not (mln_env.projects / "lvmt").exists()


def test_check_knows_the_keywords_and_refuses_own_options(mln_plain):
    ok = mln_plain.write("ok.mln", project("somevg", extra="lvm_snapshot"))
    r = mln_plain.mln("check", "-f", str(ok))
    assert r.returncode == 0, r.output
    assert "unknown keyword" not in r.output
    bad = mln_plain.write("bad.mln", project("somevg").replace("    lvm\n", "    lvm -L 5G\n"))
    r = mln_plain.mln("check", "-f", str(bad))
    assert r.returncode != 0
    assert "option -L is set by mln" in r.output, r.output
    bad = mln_plain.write("bad2.mln", project("somevg").replace("    lvm\n", "    lvm please\n"))
    r = mln_plain.mln("check", "-f", str(bad))
    assert r.returncode != 0 and "lvcreate options" in r.output, r.output


@pytest.mark.guests
def test_an_lvm_host_boots_from_its_volume_and_writes_to_it(mln_env, test_vg):
    """Without device-mapper the guest gets a loop device over its volume's extents for the
    run; what it writes lands in the volume, and stop releases the loop device."""
    vg = test_vg
    f = mln_env.write("lvboot.mln", f"""global {{
    project lvboot
}}
host web {{
    hypervisor uml
    template busybox.ext4
    memory 96M
    lvm
    lvm_vg {vg.name}
    size 100M
}}
""")
    r = mln_env.mln("build", "-f", str(f))
    assert r.returncode == 0, r.output
    r = mln_env.mln("start", "-p", "lvboot")
    assert r.returncode == 0, r.output
    mln_env.wait_console("lvboot", "web", "Please press Enter to activate this console")
    if not storage_lvm.have_device_mapper():
        assert len(vg.imitation_loops()) == 1                    # the guest's disk for this run
    r = mln_env.mln("console", "-p", "lvboot", "-h", "web", input="\necho written-by-$(hostname) > /root/mark; sync\n")
    assert r.returncode == 0, r.output
    r = mln_env.mln("stop", "-p", "lvboot")
    assert r.returncode == 0, r.output
    assert not vg.imitation_loops()
    assert vg.read("web.lvboot", "/root/mark") == "written-by-web\n"
    assert not (mln_env.projects / "lvboot" / "hosts" / "web" / "attached-disk").exists()
