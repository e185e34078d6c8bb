"""Running LVM for the ``lvm`` storage plugin: its commands, their JSON reports (volume
groups, logical volumes and their segments), activation, and whether the kernel has the
device-mapper driver that activation needs.

Every command runs on a :class:`mln_core.machine.Machine` (the plugin passes
``ctx.on(host)``); without device-mapper each gets ``--driverloaded n`` (LVM then changes
its metadata only).
"""
from __future__ import annotations

import json
import os
import shlex
import time

from mln_core.errors import MlnError
from mln_core.machine import Machine, local

# what LVM prints on stderr when the kernel has no device-mapper: not worth repeating
_NOISE = ("/dev/mapper/control", "device-mapper", "libdevmapper", "Activation disabled",
          "Required device-mapper target", "not zeroed", "leaked on lvm invocation")

_dm_cache: bool | None = None


def have_device_mapper(machine: Machine | None = None) -> bool:
    """True if the kernel's device-mapper driver is usable (so LVM can activate volumes)."""
    global _dm_cache
    if _dm_cache is None:
        machine = machine or local()
        ok = machine.device_exists("/dev/mapper/control")
        if ok:
            try:
                ok = machine.run(["dmsetup", "version"], check=False, timeout=30).returncode == 0
            except (OSError, MlnError):
                ok = False
        _dm_cache = ok
    return _dm_cache


def clean(err: bytes | str) -> str:
    """LVM's error output on one line, without the device-mapper noise."""
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(n in ln for n in _NOISE)]
    return "; ".join(kept or lines)


def lvm(machine: Machine, argv: list[str], what: str, dm: bool, check: bool = True):
    """Run an LVM command (with ``--driverloaded n`` when there is no device-mapper)."""
    argv = [argv[0]] + ([] if dm else ["--driverloaded", "n"]) + argv[1:]
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    try:
        p = machine.run(argv, what=what, check=False, input=b"", env=env)
    except MlnError as e:
        if "command not found" in e.message:
            raise MlnError(f"{what}: the LVM tools are not installed ({argv[0]} not found; "
                           "apt-get install lvm2)") from None
        raise
    if check and p.returncode != 0:
        raise MlnError(f"{what}: '{shlex.join(argv)}' failed (exit {p.returncode}): "
                       f"{clean(p.stderr or p.stdout or b'')}")
    return p


def report(machine: Machine, cmd: str, fields: str, target: list[str], dm: bool, what: str,
           segments: bool = False) -> list[dict] | None:
    """Rows of an LVM JSON report; None if the command failed (e.g. the VG does not exist)."""
    argv = [cmd, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields]
    if segments:
        argv.append("--segments")
    p = lvm(machine, argv + target, what, dm, check=False)
    if p.returncode != 0:
        return None
    try:
        rep = json.loads(p.stdout)["report"][0]
        return next(iter(rep.values()))
    except (ValueError, KeyError, IndexError, StopIteration):
        raise MlnError(f"{what}: cannot read the output of {cmd}: {p.stdout[:200]!r}") from None


def vg_info(machine: Machine, vg: str, dm: bool) -> dict | None:
    """{"free": bytes, "free_count": extents, "extent_size": bytes, "size": bytes} or None if absent."""
    rows = report(machine, "vgs", "vg_name,vg_size,vg_free,vg_free_count,vg_extent_size", [vg], dm,
                  f"volume group {vg}")
    row = next((r for r in rows or [] if r.get("vg_name") == vg), None)
    if row is None:
        return None
    return {"size": int(row["vg_size"]), "free": int(row["vg_free"]), "free_count": int(row["vg_free_count"]),
            "extent_size": int(row["vg_extent_size"])}


def lv_info(machine: Machine, vg: str, lv: str, dm: bool) -> dict | None:
    """{"uuid", "size", "segments": [{"segtype", "pe_ranges", "size_pe"}]} or None if absent."""
    rows = report(machine, "lvs", "lv_name,lv_uuid,lv_size,segtype,seg_size_pe,seg_pe_ranges", [vg], dm,
                  f"logical volume {vg}/{lv}", segments=True)
    rows = [r for r in rows or [] if r.get("lv_name") == lv]
    if not rows:
        return None
    return {"uuid": rows[0]["lv_uuid"], "size": int(rows[0]["lv_size"]),
            "segments": [{"segtype": r["segtype"], "pe_ranges": r["seg_pe_ranges"],
                          "size_pe": int(r["seg_size_pe"] or 0)} for r in rows]}


def lvremove(machine: Machine, vg: str, lv: str, dm: bool) -> None:
    lvm(machine, ["lvremove", "-f", "-y", f"{vg}/{lv}"], f"removing logical volume {vg}/{lv}", dm)


def activate(machine: Machine, vg: str, lv: str) -> str:
    """Activate ``vg/lv`` (device-mapper) and return its device node ``/dev/<vg>/<lv>``."""
    node = f"/dev/{vg}/{lv}"
    if not machine.device_exists(node):
        lvm(machine, ["lvchange", "-ay", f"{vg}/{lv}"], f"activating {vg}/{lv}", True)
        deadline = time.monotonic() + 10
        while not machine.device_exists(node) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not machine.device_exists(node):
            raise MlnError(f"logical volume {vg}/{lv} is active but {node} did not appear")
    return node
