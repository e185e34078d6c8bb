"""The ``nfs`` and ``iscsi`` storage plugins with real servers: a QEMU guest built on an NFS
export (nfs-ganesha) and one on an iSCSI LUN (tgtd) boot and show their individualized
hostnames; ``mln remove`` deletes the disk from the export and clears the LUN (which stays
in the target); a rebuild replaces the disk on the export; bad input is one line naming the
host; ``mln_core.sanpath`` says which disks are on shared storage.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from mln_core.model import Disk
from mln_core.sanpath import is_on_san, why_not_on_san

GUEST = """
global {{
    project {project}
}}
host {host} {{
    hypervisor qemu
    template busybox.ext4
    memory 96M
    {storage}
    startup {{
        echo "MLN-CHECK hostname $(hostname)"
    }}
}}
"""

BOOTED = r"MLN-CHECK hostname {host}\b"


def build_start_check(env, project: str, host: str, storage: str) -> None:
    path = env.write(f"{project}.mln", GUEST.format(project=project, host=host, storage=storage))
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = env.mln("start", "-p", project)
    assert r.returncode == 0, r.output
    env.wait_console(project, host, BOOTED.format(host=host), timeout=60)
    r = env.mln("stop", "-p", project, "-H")
    assert r.returncode == 0, r.output


@pytest.mark.guests
@pytest.mark.root
def test_nfs_guest_boots_and_remove_deletes_its_disk(mln_env, nfs_server):
    build_start_check(mln_env, "nfsp", "onnfs", f"nfs {nfs_server.spec}")
    cmdline = (mln_env.projects / "nfsp" / "hosts" / "onnfs" / "cmdline").read_text()
    assert f"file=nfs://{nfs_server.server}{nfs_server.export}/onnfs.nfsp.qcow2," in cmdline
    assert nfs_server.files() == ["onnfs.nfsp.qcow2"]

    # a rebuild makes the new disk aside and renames it once the old one is gone
    r = mln_env.mln("build", "-r", "-f", str(mln_env.root / "nfsp.mln"))
    assert r.returncode == 0, r.output
    assert "onnfs.nfsp+mln-new.qcow2 until the build succeeds" in r.output
    assert nfs_server.files() == ["onnfs.nfsp.qcow2"]

    # export, remove, import: the disk comes back on the export
    archive = str(mln_env.root / "nfsp.tar")
    r = mln_env.mln("export", "-p", "nfsp", "-o", archive)
    assert r.returncode == 0, r.output
    r = mln_env.mln("remove", "-f", "-p", "nfsp")
    assert r.returncode == 0, r.output
    assert nfs_server.files() == []
    r = mln_env.mln("import", "-i", archive)
    assert r.returncode == 0, r.output
    assert nfs_server.files() == ["onnfs.nfsp.qcow2"]

    r = mln_env.mln("remove", "-f", "-p", "nfsp")
    assert r.returncode == 0, r.output
    assert nfs_server.files() == []


@pytest.mark.guests
@pytest.mark.root
def test_iscsi_guest_boots_and_remove_clears_its_lun(mln_env, iscsi_target):
    t = iscsi_target
    build_start_check(mln_env, "scsip", "onlun",
                      f"iscsi {t.portal}\n    iscsi_target {t.iqn}\n    iscsi_lun 1")
    cmdline = (mln_env.projects / "scsip" / "hosts" / "onlun" / "cmdline").read_text()
    assert f"file={t.url(1)},format=raw," in cmdline
    sb = t.head(1, 2048)[1024:]
    assert sb[56:58] == b"\x53\xef"                              # an ext filesystem on LUN 1,
    blocks, log_bs = int.from_bytes(sb[4:8], "little"), int.from_bytes(sb[24:28], "little")
    assert blocks * (1024 << log_bs) == 128 << 20                # grown to the whole LUN
    assert not t.head(2).strip(b"\0")                            # LUN 2 untouched

    # another project may not take a LUN that holds someone's data
    other = mln_env.write("other.mln", GUEST.format(project="other", host="thief",
                                                    storage=f"iscsi {t.url(1)}"))
    r = mln_env.mln("build", "-f", str(other))
    assert r.returncode != 0
    assert "thief" in r.output and "is not blank" in r.output and "Traceback" not in r.output
    assert t.head(1, 2048)[1080:1082] == b"\x53\xef"

    # a rebuild writes the LUN again (it holds this project's disk); the old project's
    # removal leaves the new disk alone
    r = mln_env.mln("build", "-r", "-f", str(mln_env.root / "scsip.mln"))
    assert r.returncode == 0, r.output
    assert t.head(1, 2048)[1080:1082] == b"\x53\xef"

    # export, remove, import: the disk comes back on the LUN
    archive = str(mln_env.root / "scsip.tar")
    r = mln_env.mln("export", "-p", "scsip", "-o", archive)
    assert r.returncode == 0, r.output
    r = mln_env.mln("remove", "-f", "-p", "scsip")
    assert r.returncode == 0, r.output
    assert not t.head(1, 1 << 20).strip(b"\0")                   # blank again
    shown = t.tgtadm("--op", "show", "--mode", "target").stdout
    assert "LUN: 1" in shown                                     # and still in the target
    r = mln_env.mln("import", "-i", archive)
    assert r.returncode == 0, r.output
    assert t.head(1, 2048)[1080:1082] == b"\x53\xef"
    r = mln_env.mln("remove", "-f", "-p", "scsip")
    assert r.returncode == 0, r.output
    assert not t.head(1, 1 << 20).strip(b"\0")


@pytest.mark.root
def test_nfs_build_killed_then_built_again(mln_env, nfs_server):
    """A build killed after it wrote the disk leaves only the temporary file, which the next
    build deletes; a file of the final name that no build made is never overwritten."""
    path = mln_env.write("kp.mln", GUEST.format(project="kp", host="k1", storage=f"nfs {nfs_server.spec}"))
    env = dict(mln_env.env)
    mln_env.env["MLN_FAULTS"] = "kill@qemu-storage-daemon"        # while it individualizes
    try:
        r = mln_env.mln("build", "-f", str(path))
    finally:
        mln_env.env.clear()
        mln_env.env.update(env)
    assert r.returncode == -9, r.output
    assert nfs_server.files() == ["k1.kp+mln-new.qcow2"]
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "left by an interrupted build" in r.output
    assert nfs_server.files() == ["k1.kp.qcow2"]
    r = mln_env.mln("remove", "-f", "-p", "kp")
    assert r.returncode == 0, r.output

    (Path(nfs_server.export) / "k1.kp.qcow2").write_bytes(b"someone's file")
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 1 and "exists already and is no disk of project kp" in r.output, r.output
    assert "host k1" in r.output and "Traceback" not in r.output
    assert (Path(nfs_server.export) / "k1.kp.qcow2").read_bytes() == b"someone's file"
    assert nfs_server.files() == ["k1.kp.qcow2"]


BAD = [
    ("hypervisor uml\n    nfs 10.1.2.3:/srv/mln", "nfs disks can only be used by QEMU hosts"),
    ("hypervisor uml\n    iscsi iscsi://10.1.2.3/iqn.2026-01.org.example:vms/3",
     "iscsi disks can only be used by QEMU hosts"),
    ("hypervisor qemu\n    nfs srv/mln", "give the NFS directory as SERVER:/export"),
    ("hypervisor qemu\n    nfs", "needs an 'nfs SERVER:/export' line in mln.conf"),
    ("hypervisor qemu\n    nfs 10.1.2.3:/srv/../etc", "without empty, . or .. parts"),
    ("hypervisor qemu\n    iscsi 10.1.2.3\n    iscsi_lun 1", "it lacks a target (iscsi_target IQN)"),
    ("hypervisor qemu\n    iscsi iscsi://10.1.2.3/notaniqn/1", "is not an iSCSI name"),
    ("hypervisor qemu\n    iscsi iscsi://10.1.2.3/iqn.2026-01.org.example:vms/x", "is not a LUN number"),
    ("hypervisor qemu\n    nfs 10.1.2.3:/srv\n    lvm", "both choose where the disk is"),
]

BAD_PROJECT = """
global {{
    project bad
}}
host badhost {{
    template busybox.ext4
    {lines}
}}
"""


@pytest.mark.parametrize("lines,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_naming_the_host(mln_plain, lines, message):
    path = mln_plain.write("bad.mln", BAD_PROJECT.format(lines=lines))
    r = mln_plain.mln("check", "-f", str(path))
    assert r.returncode != 0, r.output
    errors = [x for x in r.output.splitlines() if "error" in x]
    assert any("host badhost" in x and message in x and "bad.mln:" in x for x in errors), r.output
    assert "Traceback" not in r.output


def test_is_on_san():
    entries = ["sanvg", "/dev/othervg", "/mln/nfssan"]
    assert is_on_san(Disk("nfs://s/e/x.qcow2", "qcow2", "nfs", extra={"shared": True}), [])
    assert is_on_san({"path": "iscsi://p/iqn.2026-01.a:b/1", "kind": "iscsi", "extra": {"shared": True}}, [])
    assert is_on_san(Disk("/dev/sanvg/a.p", kind="lvm", extra={"vg": "sanvg"}), entries)
    assert is_on_san(Disk("/dev/othervg/a.p", kind="lvm", extra={}), entries)
    assert not is_on_san(Disk("/dev/mln-images/a.p", kind="lvm", extra={"vg": "mln-images"}), entries)
    assert is_on_san(Disk("/mln/nfssan/a.p"), entries)
    assert not is_on_san(Disk("/mln/nfssan2/a.p"), entries)
    assert not is_on_san(Disk("images/a"), entries)
    assert is_on_san(Disk("images/a"), entries, project_dir="/mln/nfssan/projects/p")
    assert "not listed with san_path" in why_not_on_san(Disk("/dev/v/a", kind="lvm", extra={"vg": "v"}), [])
    assert why_not_on_san(Disk("/mln/nfssan/a.p"), entries) is None
