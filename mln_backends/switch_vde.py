"""Switch plugin ``vde``: one ``vde_switch`` per project switch (the default kind).

Needs no root; UML (``ethN=vde,SOCKET``) and QEMU (``-netdev vde``) guests can share one
switch. ``type hub`` makes it a hub. The control socket lives in a short runtime
directory (see ``runtime``); ``mln stop`` ends the process and removes the directory.
"""
from __future__ import annotations

import os
import shutil
import time

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError
from mln_core.model import Attachment

from . import vxlan
from .runtime import runtime_dir

KINDS = ("vde", "hub")


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("switch", "type", "switch kind: vde (default), hub, or bridge")
    registry.keyword("switch", "hub", "make the switch a hub (same as 'type hub')")


def _paths(switch, ctx, create=False):
    d = runtime_dir(ctx, "sw", switch.name, create=create)
    return d, os.path.join(d, "ctl"), os.path.join(d, "pid")


@hookimpl
def mln_build_switch(switch, ctx):
    kind = switch.kind(ctx.config.get("default_switch", "vde"))
    if kind not in KINDS:
        return None
    if shutil.which("vde_switch") is None:
        raise MlnError("vde_switch is not installed (Debian package vde2)", f"switch {switch.name}")
    return {"kind": "vde", "hub": kind == "hub"}


def _mine(switch, ctx) -> bool:
    return ctx.switch_state(switch).get("kind") == "vde"


@hookimpl
def mln_start_switch(switch, ctx):
    if not _mine(switch, ctx):
        return None
    d, ctl, pidfile = _paths(switch, ctx, create=True)
    argv = ["vde_switch", "-s", ctl, "-d", "-p", pidfile, "-m", "0770"]
    if ctx.switch_state(switch).get("hub"):
        argv.append("-x")
    m = ctx.on(switch)
    span = ctx.span(switch)
    if span:            # its hosts sit on several servers: a tap on a bridge with the VXLAN device
        argv += ["-t", _span_devices(m, switch, span)]
    m.run(argv, what=f"switch {switch.name}")
    for _ in range(100):
        if m.alive(m.read_pid(pidfile)) and os.path.exists(os.path.join(ctl, "ctl")):
            return True
        time.sleep(0.02)
    raise MlnError("vde_switch did not come up", f"switch {switch.name}")


@hookimpl
def mln_respan_switch(switch, old, new, apply, ctx):
    """While it runs, a switch can change the servers it spans, or stop spanning (its tap
    stays until it stops); one that did not span gets its tap through ``vde_plug2tap``."""
    if not _mine(switch, ctx):
        return None
    if not apply:
        return True
    m = ctx.on(switch)
    d, ctl, _pidfile = _paths(switch, ctx)
    plug = _plug(m, d)
    if not old and new and vxlan.names(switch)["tap"] in (m.cmdline(m.read_pid(_pidfile)) or []):
        _span_devices(m, switch, new)       # started spanning (its own tap, -t), then it stopped
    elif not old and new:
        m.run(["vde_plug2tap", "-d", "-P", os.path.join(d, "plug.pid"), "-s", ctl,
               _span_devices(m, switch, new)], what=f"switch {switch.name}")
    elif plug and not new:                  # the tap came with vde_plug2tap: it goes with it
        m.kill_and_wait(plug)
        vxlan.leave(m, switch)
    else:
        vxlan.respan(m, switch, old, new, vxlan.names(switch)["bridge"])
    return True


def _plug(m, d: str) -> int | None:
    """The ``vde_plug2tap`` of a switch that came to span servers while it ran."""
    pid = m.read_pid(os.path.join(d, "plug.pid"))
    return pid if pid and any(w.endswith("vde_plug2tap") for w in m.cmdline(pid) or []) else None


def _span_devices(m, switch, span: dict) -> str:
    """The tap (returned) on a bridge with the VXLAN device of ``span``, made here."""
    dev, what = vxlan.names(switch), f"switch {switch.name}"
    if not m.net_device_exists(dev["bridge"]):
        m.run(["ip", "link", "add", dev["bridge"], "type", "bridge"], what=what)
    if not m.net_device_exists(dev["tap"]):
        m.run(["ip", "tuntap", "add", dev["tap"], "mode", "tap"], what=what)
    m.run(["ip", "link", "set", dev["tap"], "mtu", str(span["mtu"]), "master", dev["bridge"], "up"], what=what)
    m.run(["ip", "link", "set", dev["bridge"], "up"], what=what)
    vxlan.join(m, switch, span, dev["bridge"])
    return dev["tap"]


@hookimpl
def mln_stop_switch(switch, ctx):
    if not _mine(switch, ctx):
        return None
    m = ctx.on(switch)
    d, ctl, pidfile = _paths(switch, ctx)
    plug = _plug(m, d)                          # (it came to span servers while it ran)
    if plug:
        m.kill_and_wait(plug)
    m.kill_and_wait(m.read_pid(pidfile))
    shutil.rmtree(d, ignore_errors=True)
    vxlan.leave(m, switch)
    return True


@hookimpl
def mln_switch_status(switch, ctx):
    if not _mine(switch, ctx):
        return None
    m = ctx.on(switch)
    d, ctl, pidfile = _paths(switch, ctx)
    return "up" if _runs(m, m.read_pid(pidfile), ctl) else "down"


def _runs(machine, pid: int | None, ctl: str) -> bool:
    """The vde_switch of ``ctl`` runs as ``pid`` (also when its directory was removed under it,
    so that stop still ends it; a pid reused by another program does not count)."""
    if not machine.alive(pid):
        return False
    words = machine.cmdline(pid)
    return ctl in words if words is not None else os.path.exists(ctl)


@hookimpl
def mln_switch_attachment(switch, host, interface, ctx):
    if not _mine(switch, ctx):
        return None
    return Attachment("vde", socket=_paths(switch, ctx)[1])


@hookimpl
def mln_remove_switch(switch, ctx):
    if _mine(switch, ctx):
        shutil.rmtree(_paths(switch, ctx)[0], ignore_errors=True)


@hookimpl
def mln_doctor(ctx):
    return [tool("vde_switch", "vde switches (the default switch)", "vde2")]
