"""The vmnets of VMware switches: the mapping file and the device nodes.

Not a plugin: the ``vmware`` backend imports it. A VMware switch gets the first
vmnet10..vmnet99 free in the mapping file (``vmware_vnet_mappings``, default
``/etc/mln/vmware/vnet_switch_mappings.dat``), recorded there as ``vmnetNN
<switch>.<project>``; releasing it deletes that line. VMs attached to the same vmnet device
are switched by the vmnet kernel module, which needs only the device node
``/dev/vmnetNN`` (char 119, NN; ``vmware_dev_dir`` overrides /dev).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re

from mln_core.errors import MlnError

DEFAULT_MAPPINGS = "/etc/mln/vmware/vnet_switch_mappings.dat"
VMNET_FIRST, VMNET_LAST = 10, 99
VMNET_MAJOR = 119
_VMNET_LINE = re.compile(r"\s*(vmnet(\d+))\s+(\S+)\s*\Z")


# -- the mapping file ------------------------------------------------------------------------

def mappings_path(ctx) -> str:
    return ctx.config.get("vmware_vnet_mappings") or DEFAULT_MAPPINGS


@contextlib.contextmanager
def _mappings(ctx):
    """The mapping file's lines, locked (flock on its directory) and written back on exit."""
    path = mappings_path(ctx)
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise MlnError(f"cannot create {d} for the vmnet mapping file: {e.strerror}") from None
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        before = list(lines)
        yield lines
        if lines != before:
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in lines))
            os.replace(tmp, path)
    finally:
        os.close(fd)


def _entries(lines):
    for n, line in enumerate(lines):
        m = _VMNET_LINE.match(line)
        if m:
            yield n, m.group(1), int(m.group(2)), m.group(3)


def _held_by_stored_project(switch, vmnet: str, ctx) -> bool:
    """Does the project as it is stored (not the build in progress) use ``vmnet``?"""
    store = ctx.store
    if store is None or not store.exists(switch.project):
        return False
    from mln_core.store import Store
    state = Store.read_state(store.project_dir(switch.project))
    return state.get("switches", {}).get(switch.name, {}).get("vmnet") == vmnet


def allocate_vmnet(switch, ctx) -> str:
    """The first free vmnet10..vmnet99, recorded as ``vmnetNN <switch>.<project>``.

    A line for this switch that the stored project does not use is left over from a build
    that failed: it is taken again. A line the stored project uses stays its own until the
    replacing build has succeeded (then ``mln_remove_switch`` of the old project deletes it),
    so a rebuild gets another vmnet."""
    name = f"{switch.name}.{switch.project}"
    with _mappings(ctx) as lines:
        taken = set()
        for _, vmnet, num, owner in _entries(lines):
            if owner == name and not _held_by_stored_project(switch, vmnet, ctx):
                return vmnet
            taken.add(num)
        for num in range(VMNET_FIRST, VMNET_LAST + 1):
            if num not in taken:
                vmnet = f"vmnet{num}"
                lines.append(f"{vmnet} {name}")
                return vmnet
    raise MlnError(f"no free vmnet left (vmnet{VMNET_FIRST}..vmnet{VMNET_LAST} are all in "
                   f"{mappings_path(ctx)})", f"switch {switch.name}")


def release_vmnet(switch, vmnet: str, ctx) -> None:
    name = f"{switch.name}.{switch.project}"
    with _mappings(ctx) as lines:
        for n, v, _, owner in reversed(list(_entries(lines))):
            if v == vmnet and owner == name:
                del lines[n]


# -- the device node -------------------------------------------------------------------------

def device(ctx, vmnet: str) -> str:
    return os.path.join(ctx.config.get("vmware_dev_dir") or "/dev", vmnet)


def marker(switch, ctx) -> str:
    """The file that says a switch is started (and whether its start made the device node)."""
    return os.path.join(ctx.path("switches", switch.name), "vmnet.json")


def make_device(switch, vmnet: str, ctx) -> None:
    """Start: make the device node when it is missing, and note whether it was made."""
    dev = device(ctx, vmnet)
    made = False
    if not os.path.exists(dev):
        ctx.on(switch).run(["mknod", "-m", "600", dev, "c", str(VMNET_MAJOR), vmnet[len("vmnet"):]],
                           what=f"switch {switch.name}: making {dev}")
        made = True
    with open(os.path.join(ctx.switch_dir(switch), "vmnet.json"), "w") as f:
        json.dump({"vmnet": vmnet, "device": dev, "made": made}, f)


def remove_device(switch, ctx) -> None:
    """Stop: delete the device node again if the start made it."""
    path = marker(switch, ctx)
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return
    if info.get("made"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info["device"])
    os.unlink(path)


def is_up(switch, vmnet: str, ctx) -> bool:
    return os.path.exists(marker(switch, ctx)) and os.path.exists(device(ctx, vmnet))
