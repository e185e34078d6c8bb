"""Reaching a logical volume's data on a machine without device-mapper: a loop device over
the volume's extents.

Without the device-mapper driver LVM can change its metadata but cannot activate a
volume: there is no ``/dev/<vg>/<lv>``. The ``lvm`` storage plugin then creates the volume
in the metadata only (``lvcreate --driverloaded n -an -Zn``) and reaches its data through a
loop device over the volume's extents: for a single-segment linear volume whose PV is
itself a loop device over a file, the volume's bytes are the range
``loop offset + pe_start + first_extent * extent_size`` of length ``extents *
extent_size`` in that file, and ``losetup --offset --sizelimit`` makes a block device of
exactly that range. This imitates activation for mln's own work (copying the template,
resizing, individualizing: :class:`LoopView`) and for each run of the host
(:func:`attach`, released by :func:`detach`); other programs still need real activation
for ``/dev/<vg>/<lv>``.

Everything runs on a :class:`mln_core.machine.Machine` (the plugin passes ``ctx.on(host)``).
"""
from __future__ import annotations

import os
import re

from mln_core.errors import MlnError
from mln_core.machine import Machine

from .lvmcmd import lv_info, report, vg_info


def extent_range(machine: Machine, vg: str, lv: str) -> tuple[str, int, int]:
    """(backing file, byte offset, length) of a single-segment linear LV on a loop-device PV."""
    dm = False
    info = lv_info(machine, vg, lv, dm)
    if info is None:
        raise MlnError(f"logical volume {vg}/{lv} does not exist")
    why = ("this machine's kernel has no device-mapper, so LVM cannot activate it, and mln can "
           "only imitate activation for a single-segment linear volume on a PV that is a loop device "
           "over a file")
    segs = info["segments"]
    if len(segs) != 1 or segs[0]["segtype"] != "linear":
        kinds = ", ".join(s["segtype"] for s in segs)
        raise MlnError(f"cannot reach logical volume {vg}/{lv} ({len(segs)} segment(s): {kinds}): {why}")
    ranges = segs[0]["pe_ranges"].split()
    m = re.match(r"(.+):(\d+)-(\d+)\Z", ranges[0]) if len(ranges) == 1 else None
    if m is None:
        raise MlnError(f"cannot reach logical volume {vg}/{lv} (extents {segs[0]['pe_ranges']!r}): {why}")
    pv, first, last = m.group(1), int(m.group(2)), int(m.group(3))
    vgi = vg_info(machine, vg, dm)
    pvs = report(machine, "pvs", "pv_name,pe_start,vg_name", [], dm, f"physical volumes of {vg}") or []
    row = next((r for r in pvs if r.get("pv_name") == pv), None)
    if vgi is None or row is None:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: LVM does not report its PV {pv}")
    try:
        loop = machine.loop_device(pv)
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.filename == pv:
            raise MlnError(f"cannot reach logical volume {vg}/{lv}: its PV {pv}: {e.strerror}") from None
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: reading the state of loop device {pv}: "
                       f"{e}") from None
    if loop is None:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: its PV {pv} is not a loop device; {why}")
    backing, loop_offset, loop_limit = loop
    if backing.endswith(" (deleted)") or not os.path.exists(backing):
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: the file {backing} behind its PV {pv} "
                       "is gone")
    ext = vgi["extent_size"]
    start = int(row["pe_start"]) + first * ext
    length = (last - first + 1) * ext
    if loop_limit and start + length > loop_limit:
        raise MlnError(f"cannot reach logical volume {vg}/{lv}: its extents lie beyond the end of {pv}")
    return backing, loop_offset + start, length


def _losetup(machine: Machine, backing: str, offset: int, length: int, what: str) -> str:
    p = machine.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(length),
                     backing], what=what)
    return p.stdout.decode().strip()


class LoopView:
    """A loop device over a byte range of a file. It is set to detach itself when its last
    user closes it (autoclear) and this object holds it open until :meth:`release`, so it
    disappears also if mln is killed. ``note`` gets the reason if autoclear cannot be set."""

    def __init__(self, machine: Machine, backing: str, offset: int, length: int, note=None):
        self.device = _losetup(machine, backing, offset, length, f"making a loop device over {backing}")
        self._machine = machine
        self._fd: int | None = None
        try:
            self._fd = machine.hold_loop(self.device, offset, length, note)
        except OSError as e:
            machine.run(["losetup", "-d", self.device], check=False)
            raise MlnError(f"opening {self.device}: {e.strerror}") from None
        except ValueError:
            machine.run(["losetup", "-d", self.device], check=False)
            raise MlnError(f"{self.device} does not cover the expected range of {backing}") from None
        except BaseException:
            machine.run(["losetup", "-d", self.device], check=False)
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        # While we hold the device open, losetup -d only marks it for detaching; our
        # close then detaches it (and nobody can have re-used the number before that).
        self._machine.run(["losetup", "-d", self.device], check=False)
        os.close(self._fd)
        self._fd = None


def attach(machine: Machine, vg: str, lv: str) -> str:
    """A loop device over the volume's extents for a run of its host (kept until :func:`detach`)."""
    backing, offset, length = extent_range(machine, vg, lv)
    return _losetup(machine, backing, offset, length, f"making a loop device over {vg}/{lv}")


def detach(machine: Machine, path: str, vg: str, lv: str, what: str) -> None:
    """Release the loop device ``path`` made by :func:`attach`; only if it is still the one over
    this volume's extents (the number may have been reused since)."""
    try:
        backing, offset, _ = extent_range(machine, vg, lv)
    except MlnError:
        return
    try:
        loop = machine.loop_device(path)
    except (OSError, ValueError):
        return
    if loop is not None and loop[0] == backing and loop[1] == offset:
        machine.run(["losetup", "-d", path], what=what, check=False)
