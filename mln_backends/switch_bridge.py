"""Switch plugin ``bridge``: a Linux bridge per switch, a tap device per attached NIC.

Chosen with ``type bridge`` in the switch (or ``default_switch bridge`` in mln.conf);
needs root. The bridge is named by the ``bridge`` keyword, else ``<switch>.<project>``
when that fits in 15 characters, else a shortened name with a hash (see
``runtime.ifname``). No address is put on the bridge: it joins the guests, nothing else.
"""
from __future__ import annotations

import os

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError
from mln_core.model import Attachment

from . import vxlan
from .runtime import digest, ifname


@hookimpl
def mln_register_keywords(registry):
    registry.keyword("switch", "bridge", "name of the Linux bridge (type bridge)")


def bridge_name(switch) -> str:
    explicit = switch.tree.get("bridge") if switch.tree is not None else None
    return explicit or ifname(f"{switch.name}.{switch.project}", "bridge", switch.project, switch.name)


def tap_name(host, interface) -> str:
    """Always hashed: a host name alone could collide with another project's."""
    return f"tap-{digest('tap', host.project, host.name, interface.name, n=10)}"


@hookimpl
def mln_build_switch(switch, ctx):
    if switch.kind(ctx.config.get("default_switch", "vde")) != "bridge":
        return None
    if os.geteuid() != 0:
        raise MlnError("bridge switches need root (or use type vde)", f"switch {switch.name}")
    return {"kind": "bridge", "bridge": bridge_name(switch)}


def _mine(switch, ctx) -> str | None:
    st = ctx.switch_state(switch)
    return st.get("bridge") if st.get("kind") == "bridge" else None


@hookimpl
def mln_start_switch(switch, ctx):
    br = _mine(switch, ctx)
    if br is None:
        return None
    m = ctx.on(switch)
    if not m.net_device_exists(br):
        m.run(["ip", "link", "add", br, "type", "bridge"], what=f"switch {switch.name}")
    m.run(["ip", "link", "set", br, "up"], what=f"switch {switch.name}")
    span = ctx.span(switch)
    if span:                                  # its hosts sit on several servers
        vxlan.join(m, switch, span, br)
    return True


@hookimpl
def mln_respan_switch(switch, old, new, apply, ctx):
    """A bridge takes or drops its VXLAN device, or changes the other servers, while it runs."""
    br = _mine(switch, ctx)
    if br is None:
        return None
    if apply:
        vxlan.respan(ctx.on(switch), switch, old, new, br)
    return True


@hookimpl
def mln_stop_switch(switch, ctx):
    br = _mine(switch, ctx)
    if br is None:
        return None
    m = ctx.on(switch)
    vxlan.leave(m, switch)
    if m.net_device_exists(br):
        m.run(["ip", "link", "del", br], what=f"switch {switch.name}")
    return True


@hookimpl
def mln_switch_status(switch, ctx):
    br = _mine(switch, ctx)
    if br is None:
        return None
    return "up" if ctx.on(switch).net_device_exists(br) else "down"


@hookimpl
def mln_switch_attachment(switch, host, interface, ctx):
    br = _mine(switch, ctx)
    if br is None:
        return None
    m = ctx.on(switch)
    tap = tap_name(host, interface)
    if not m.net_device_exists(tap):
        m.run(["ip", "tuntap", "add", tap, "mode", "tap"], what=f"host {host.name} {interface.name}")
    m.run(["ip", "link", "set", tap, "master", br, "up"], what=f"host {host.name} {interface.name}")
    return Attachment("tap", tap=tap, bridge=br)


@hookimpl
def mln_switch_detachment(switch, host, interface, ctx):
    if _mine(switch, ctx) is None:
        return
    m = ctx.on(switch)
    tap = tap_name(host, interface)
    if m.net_device_exists(tap):
        m.run(["ip", "link", "del", tap], what=f"host {host.name} {interface.name}", check=False)


@hookimpl
def mln_remove_switch(switch, ctx):
    br = _mine(switch, ctx)
    m = ctx.on(switch)
    if br and m.net_device_exists(br):
        m.run(["ip", "link", "del", br], what=f"switch {switch.name}", check=False)


@hookimpl
def mln_remove_host(host, ctx):
    m = ctx.on(host)
    for i in host.interfaces:
        tap = tap_name(host, i)
        if m.net_device_exists(tap) and ctx.project and i.switch in ctx.project.switches and \
                _mine(ctx.project.switches[i.switch], ctx):
            m.run(["ip", "link", "del", tap], what=f"host {host.name}", check=False)


@hookimpl
def mln_doctor(ctx):
    found = tool("ip", "bridge switches with a tap per NIC", "iproute2")
    if found["ok"] and not os.path.exists("/dev/net/tun"):
        found.update(ok=False, detail="no /dev/net/tun: tap devices cannot be made",
                     remedy="load the tun module (modprobe tun)")
    elif found["ok"] and os.geteuid() != 0:
        found.update(ok=False, detail="bridges and taps need root", remedy="run mln as root for bridge switches")
    return [found]
