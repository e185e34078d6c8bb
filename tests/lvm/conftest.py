"""A throw-away LVM volume group on a loop device over a sparse file, for the lvm tests.

Works without device-mapper (metadata only: ``--driverloaded n``). Everything made
here - the file, the loop device, the PV, the VG, LVM's metadata backups of the VG, and
any loop device left over the file - is removed at the end, also when the test fails.
"""
from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
NO_DM = ["--driverloaded", "n"]


def lvm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([argv[0], *NO_DM, *argv[1:]], capture_output=True, text=True, env=LVM_ENV,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr}")
    return p


def _report(*argv: str) -> list[dict]:
    p = lvm(*argv[:1], "--reportformat", "json", "--units", "b", "--nosuffix", *argv[1:])
    return next(iter(json.loads(p.stdout)["report"][0].values()))


def loops_over(path: Path) -> list[str]:
    """Loop devices whose backing file is ``path``."""
    out = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True).stdout
    devices = json.loads(out)["loopdevices"] if out.strip() else []
    real = os.path.realpath(path)
    return [d["name"] for d in devices if (d.get("back-file") or "").split(" (deleted)")[0] == real]


@dataclass
class VG:
    name: str
    file: Path
    loop: str

    def lvs(self) -> dict[str, int]:
        """{LV name: size in bytes}."""
        return {r["lv_name"]: int(r["lv_size"]) for r in _report("lvs", "-o", "lv_name,lv_size", self.name)}

    def lv_uuid(self, lv: str) -> str:
        rows = _report("lvs", "-o", "lv_name,lv_uuid", self.name)
        return next(r["lv_uuid"] for r in rows if r["lv_name"] == lv)

    def free(self) -> int:
        return int(_report("vgs", "-o", "vg_free", self.name)[0]["vg_free"])

    def lv_offset(self, lv: str) -> int:
        """Byte offset of a single-segment linear LV in the PV file (computed independently
        of the plugin, from the LVM reports)."""
        segs = [r for r in _report("lvs", "--segments", "-o", "lv_name,segtype,seg_pe_ranges", self.name)
                if r["lv_name"] == lv]
        assert len(segs) == 1 and segs[0]["segtype"] == "linear", segs
        m = re.match(r"(.+):(\d+)-(\d+)$", segs[0]["seg_pe_ranges"])
        assert m and m.group(1) == self.loop, segs
        extent = int(_report("vgs", "-o", "vg_extent_size", self.name)[0]["vg_extent_size"])
        pe_start = next(int(r["pe_start"]) for r in _report("pvs", "-o", "pv_name,pe_start")
                        if r["pv_name"] == self.loop)
        return pe_start + int(m.group(2)) * extent

    def debugfs(self, lv: str, request: str) -> str:
        """Run a read-only debugfs request on the LV's filesystem, reading the PV file at the
        LV's offset (e2fsprogs' ``file?offset=N``): no loop device, no activation."""
        p = subprocess.run(["debugfs", "-R", request, f"{self.file}?offset={self.lv_offset(lv)}"],
                           capture_output=True, text=True, errors="replace")
        assert p.returncode == 0, p.stderr
        return p.stdout

    def read(self, lv: str, path: str) -> str:
        return self.debugfs(lv, f"cat {path}")

    def fs_size(self, lv: str) -> int:
        out = self.debugfs(lv, "stats")
        count = int(re.search(r"Block count:\s+(\d+)", out).group(1))
        size = int(re.search(r"Block size:\s+(\d+)", out).group(1))
        return count * size

    def imitation_loops(self) -> list[str]:
        return [d for d in loops_over(self.file) if d != self.loop]


def _lvm_metadata_files(vg: str) -> list[str]:
    return glob.glob(f"/etc/lvm/archive/{vg}_*.vg") + glob.glob(f"/etc/lvm/backup/{vg}")


@pytest.fixture
def test_vg(tmp_path, mln_env):
    """A 600M volume group named mlnt<random> on a loop device; removed afterwards.

    Teardown order: the mln projects are removed first (so that ``mln remove`` still sees
    the VG), then it is checked that no LV and no imitation loop device is left, then the
    VG, PV, loop device, file and LVM's metadata backups are removed."""
    if os.geteuid() != 0:
        pytest.skip("LVM tests need root")
    if not (shutil.which("lvcreate") and shutil.which("losetup")):
        pytest.skip("lvm2 is not installed (scripts/install-deps.sh)")
    name = "mlnt" + secrets.token_hex(4)
    file = tmp_path / f"{name}.pv"
    loop = None
    created_vg = created_pv = False
    problems: list[str] = []
    try:
        with open(file, "wb") as f:
            f.truncate(600 * 2**20)
        loop = subprocess.run(["losetup", "--find", "--show", str(file)], capture_output=True, text=True,
                              check=True).stdout.strip()
        lvm("pvcreate", "-y", loop)
        created_pv = True
        lvm("vgcreate", name, loop)
        created_vg = True
        vg = VG(name, file, loop)
        yield vg
        mln_env.cleanup()
        left = vg.lvs()
        if left:
            problems.append(f"logical volumes left in {name}: {left}")
        deadline = time.monotonic() + 5
        while vg.imitation_loops() and time.monotonic() < deadline:
            time.sleep(0.1)
        if vg.imitation_loops():
            problems.append(f"loop devices left over {file}: {vg.imitation_loops()}")
    finally:
        for dev in [d for d in loops_over(file) if d != loop]:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        if created_vg:
            lvm("vgremove", "-f", "-y", name, check=False)
        if created_pv:
            lvm("pvremove", "-ff", "-y", loop, check=False)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        file.unlink(missing_ok=True)
        for f in _lvm_metadata_files(name):
            os.unlink(f)
    assert not problems, "; ".join(problems)
