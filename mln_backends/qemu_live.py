"""The devices of a QEMU guest and the changes a running one takes (``mln upgrade``): a
helper module of the ``qemu`` backend, not a plugin.

Every device has a fixed PCI slot, so that a device hot-plugged into a running guest, the
state ``mln stop -S`` saves and the next cold start all agree:

============  ==============================================================================
slot          device
============  ==============================================================================
0x00, 0x01    host bridge and ISA bridge (the i440fx machine's own)
0x02 + N      NIC ethN: virtio-net-pci ``nicN`` on netdev ``nN``, N up to 21 (placeholders
              without a netdev fill gaps, so that the guest names the NICs as the file does)
0x18 + K      disk K: the root disk, swap, then the mounts (virtio-blk-pci ``diskK``), at most 6
0x1e          virtio-balloon-pci ``balloon0``
0x1f          virtio-serial-pci with the port ``org.mln.channel`` (mln's channel: the
              guest's agent, see mln_plugins.guestconfig) on ``channel.sock`` in the runtime
              directory
============  ==============================================================================

Live changes (hooks ``mln_plan_live``/``mln_apply_live``):

* ``memory`` up to what the guest booted with: the balloon is set to the new size and mln
  waits until QEMU reports it (``query-balloon``). More than that needs a restart.
* ``interface_moved``: a NIC on a tap is moved with its tap, whose name depends only on
  host and interface: attaching the interface to the new switch puts the same tap on the
  new bridge. The guest sees nothing (same NIC, MAC and address).
* ``interface_added``: the NIC a cold start would have (same id, MAC and slot) is
  hot-plugged (``netdev_add`` + ``device_add``), and the guest is told its name and
  address on mln's channel (``ifup MAC NAME ADDRESS/PREFIX [GATEWAY]``); mln waits until
  the guest answers ``ok NAME``. Only the NIC after the last one the guest has: a gap
  would need a placeholder NIC in a slot below, which cannot be added afterwards.

What the guest then runs with, where it differs from a cold start, is in
``hosts/<host>/shape.json``: ``memory_mb`` (the RAM it booted with, behind the balloon),
``balloon_mb``, and ``nics`` (the hot-plugged ones). A resume from a saved state starts
QEMU with that RAM size (the balloon's size comes back with the saved state) and checks
that the project still has the hot-plugged NICs; a cold start deletes the file.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import time

from mln_core.errors import MlnError

from . import qemu_qmp, tun
from .runtime import mac_address, runtime_dir

MiB = 2**20
NIC_SLOT = 0x02
MAX_NIC_INDEX = 21             # eth21 in slot 0x17; the disks start at 0x18
DISK_SLOT = 0x18
MAX_DISKS = 6
BALLOON_SLOT = 0x1e
CHANNEL_SLOT = 0x1f
CHANNEL = "org.mln.channel"
BALLOON = f"virtio-balloon-pci,id=balloon0,addr=0x{BALLOON_SLOT:02x}"
BALLOON_TIMEOUT = 120.0        # for the guest to give the memory back
CHANNEL_TIMEOUT = 60.0         # for the guest to set up a hot-plugged NIC


# -- files and names -----------------------------------------------------------------------------

def paths(host, ctx, create: bool = False) -> tuple[str, str, str]:
    """(runtime directory, QMP socket, pid file) of a host."""
    d = runtime_dir(ctx, "qemu", host.name, create=create)
    return d, os.path.join(d, "qmp.sock"), os.path.join(ctx.path("hosts", host.name), "pid")


def channel_socket(runtime: str) -> str:
    return os.path.join(runtime, "channel.sock")


def chardev_path(path: str) -> str:
    return path.replace(",", ",,")     # QEMU option syntax: a literal comma is doubled


def memory_mb(host) -> int:
    return max(32, host.memory // MiB)


def _cmdline_path(host, ctx) -> str:
    return ctx.path("hosts", host.name, "cmdline")


def shape_path(host, ctx) -> str:
    return ctx.path("hosts", host.name, "shape.json")


def read_shape(host, ctx) -> dict:
    try:
        with open(shape_path(host, ctx)) as f:
            shape = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise MlnError(f"{shape_path(host, ctx)} cannot be read ({e}); it says how the running guest "
                       "differs from a cold start", f"host {host.name}") from None
    return shape if isinstance(shape, dict) else {}


def write_shape(host, ctx, shape: dict) -> None:
    path = shape_path(host, ctx)
    with open(path + ".new", "w") as f:
        json.dump(shape, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".new", path)


def drop_shape(host, ctx) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shape_path(host, ctx))


# -- the command line ----------------------------------------------------------------------------

def nic_mac(host, i, n: int) -> str:
    name = i.name if i is not None else f"eth{n}"
    return (i.mac if i is not None else None) or mac_address("52:54:00", host.project, host.name, name)


def nic_device(n: int, mac: str, netdev: bool) -> str:
    return f"virtio-net-pci,{f'netdev=n{n},' if netdev else ''}id=nic{n},mac={mac},addr=0x{NIC_SLOT + n:02x}"


def nic_args(host, ctx) -> list[str]:
    """One virtio NIC per index from eth0 to the highest interface, ethN in PCI slot 2 + N.

    Linux names NICs in PCI order, so a gap in the project file (eth0 and eth2) gets an
    unconnected placeholder NIC (eth1 in the guest) and eth2 lands on the right NIC. An
    interface that is connected to nothing gets a NIC without a network too."""
    if not host.interfaces:
        return []
    top = max(i.index for i in host.interfaces)
    if top > MAX_NIC_INDEX:
        raise MlnError(f"eth{top}: QEMU hosts have interfaces eth0 to eth{MAX_NIC_INDEX} only")
    by_index = {i.index: i for i in host.interfaces}
    argv = []
    for n in range(top + 1):
        i = by_index.get(n)
        netdev = netdev_spec(host, ctx, i, f"n{n}") if i is not None else None
        if netdev is not None:
            argv += ["-netdev", netdev]
        argv += ["-device", nic_device(n, nic_mac(host, i, n), netdev is not None)]
    return argv


def _slirp(i) -> str | None:
    return i.tree.get("slirp") if i.tree is not None else None


def netdev_spec(host, ctx, i, nid: str) -> str | None:
    """The -netdev for interface ``i``, or None if it is connected to nothing."""
    slirp = _slirp(i)
    if slirp is not None:
        netdev = f"user,id={nid}" + (",restrict=on" if slirp == "restrict" else "")
        return netdev + "".join(f",hostfwd={ln.value}" for ln in i.tree.lines if ln.words[0] == "hostfwd")
    if tun.name(i):
        return f"tap,id={nid},ifname={tun.up(ctx.on(host), host, i)},script=no,downscript=no"
    if i.switch and i.switch.startswith("/"):
        return f"vde,id={nid},sock={i.switch}"
    att = ctx.attachment(host, i) if i.switch else None
    if att is None:
        return None
    if att.kind == "vde":
        return f"vde,id={nid},sock={att.socket}"
    if att.kind == "tap":
        return f"tap,id={nid},ifname={att.tap},script=no,downscript=no"
    raise MlnError(f"{i.name}: QEMU cannot join a switch of kind {att.kind}")


def disk_args(host, ctx, disk) -> list[str]:
    """The root disk, swap and the mounts' disks, in their slots from 0x18 (the guest names
    them in this order: /dev/vda, /dev/vdb, ...)."""
    drives = [(disk.path, disk.format, ",cache=writeback")]
    if disk.extra.get("swap"):
        drives.append((ctx.path(disk.extra["swap"]), "raw", ""))
    drives += [(m.source, "raw", "") for m in host.mounts if m.fstype != "hostfs"]  # hostfs: UML's
    if len(drives) > MAX_DISKS:
        raise MlnError(f"QEMU hosts have at most {MAX_DISKS} disks (root, swap and mounts), "
                       f"not {len(drives)}")
    argv = []
    for k, (path, fmt, opts) in enumerate(drives):
        argv += ["-drive", f"file={path},format={fmt},if=none,id=drive{k}{opts}",
                 "-device", f"virtio-blk-pci,drive=drive{k},id=disk{k},addr=0x{DISK_SLOT + k:02x}"]
    return argv


def fixed_args(runtime: str) -> list[str]:
    """The balloon and mln's channel, on every QEMU guest."""
    return ["-device", BALLOON,
            "-device", f"virtio-serial-pci,id=mlnserial,addr=0x{CHANNEL_SLOT:02x}",
            "-chardev", f"socket,id=mlnch,path={chardev_path(channel_socket(runtime))},server=on,wait=off",
            "-device", f"virtserialport,bus=mlnserial.0,chardev=mlnch,name={CHANNEL}"]


def ram_arg(mb: int, accel: str) -> str:
    """QEMU's ``-m``; under TCG 8 KiB more than ``mb``. QEMU before 9.0 loses writes of a
    TCG guest to RAM that is a multiple of 256 KiB while it migrates (its faster sync of the
    dirty pages forgets the TLB: QEMU commit 03bfc2188f, "Fix migration dirty bitmap
    coherency with TCG memory access"), and guests crashed after a live move; other sizes
    take its page by page path, which keeps the TLB right."""
    return f"{mb * 1024 + 8}K" if accel == "tcg" else str(mb)


def ram_mb(value: str) -> int | None:
    """The MB of a ``-m`` value of :func:`ram_arg` (or of an older mln: plain MB)."""
    if value.isdigit():
        return int(value)
    return int(value[:-1]) // 1024 if value[-1:] == "K" and value[:-1].isdigit() else None


def saved_ram_arg(host, ctx) -> str | None:
    """The ``-m`` of the command line the guest last ran with (a saved state loads only
    into the same RAM size)."""
    try:
        with open(_cmdline_path(host, ctx)) as f:
            argv = shlex.split(f.read())
    except (OSError, ValueError):
        return None
    return next((v for flag, v in zip(argv, argv[1:]) if flag == "-m"), None)


def resume_memory(host, ctx, configured: int, saved: str) -> int:
    """The RAM size to resume ``host`` from ``saved`` with: the one it booted with if it was
    changed live. MlnError if the saved state cannot match the command line: saved by an
    mln with another device layout, or with a hot-plugged NIC the project lost since."""
    try:
        with open(_cmdline_path(host, ctx)) as f:
            before = f.read()
    except FileNotFoundError:
        before = None
    if before is not None and BALLOON not in before:
        raise MlnError(f"the saved state {saved} comes from an mln with another layout of the guest's "
                       "devices and cannot be loaded; delete it to boot the host afresh")
    shape = read_shape(host, ctx)
    by_name = {i.name: i for i in host.interfaces}
    for name, nic in sorted(shape.get("nics", {}).items()):
        i = by_name.get(name)
        if i is None or i.index != nic.get("index") or nic_mac(host, i, i.index) != nic.get("mac"):
            raise MlnError(f"the saved state {saved} has {name} (MAC {nic.get('mac')}) hot-plugged, which "
                           "the project does not have so any more; delete the file to boot the host afresh")
    return int(shape.get("memory_mb") or configured)


# -- what the running QEMU has ---------------------------------------------------------------------

def _opts(spec: str) -> tuple[str, dict]:
    """``tap,id=n0,ifname=t`` -> ("tap", {"id": "n0", "ifname": "t"})."""
    kind, *rest = spec.split(",")
    return kind, dict(x.partition("=")[::2] for x in rest)


def running(host, ctx) -> dict | None:
    """What the running QEMU of ``host`` was started with and has got since: ``memory_mb``
    (RAM), ``nics`` (index -> -netdev text, None for a NIC on no network), ``balloon`` and
    ``channel`` (the devices are there). None if it does not run."""
    m = ctx.on(host)
    d, sock, pidfile = paths(host, ctx)
    if not m.alive(m.read_pid(pidfile)) or not os.path.exists(sock):
        return None
    try:
        with open(_cmdline_path(host, ctx)) as f:
            text = f.read()
    except OSError:
        return None
    argv = shlex.split(text)
    netdevs, nics, memory = {}, {}, None
    for flag, value in zip(argv, argv[1:]):
        if flag == "-m" and ram_mb(value) is not None:
            memory = ram_mb(value)
        elif flag == "-netdev":
            netdevs[_opts(value)[1].get("id")] = value
        elif flag == "-device" and value.startswith("virtio-net-pci,"):
            o = _opts(value)[1]
            if o.get("id", "").startswith("nic") and o["id"][3:].isdigit():
                nics[int(o["id"][3:])] = netdevs.get(o.get("netdev"))
    shape = read_shape(host, ctx)
    for nic in shape.get("nics", {}).values():
        nics[nic["index"]] = nic.get("netdev")
    return {"memory_mb": shape.get("memory_mb", memory), "nics": nics,
            "balloon": BALLOON in text, "channel": f"name={CHANNEL}" in text}


def _iface(host, name: str | None):
    return next((i for i in host.interfaces if i.name == name), None)


def _switch_kind(ctx, name: str | None) -> str | None:
    """The kind of the project's switch ``name`` (as built, else as declared); None if the
    bound project has no such switch."""
    project = ctx.project
    sw = project.switches.get(name) if project is not None and name else None
    if sw is None:
        return None
    built = ctx.state.get("switches", {}).get(name, {}).get("kind")
    return built or sw.kind(ctx.config.get("default_switch", "vde"))


# -- plan ------------------------------------------------------------------------------------------

def plan(host, old, change, ctx) -> str | None:
    """How ``change`` can be applied to the running ``old``; None: a restart."""
    run = running(old, ctx)
    if run is None:
        return None
    if change.kind == "memory":
        if not run["balloon"] or not run["memory_mb"] or memory_mb(host) > run["memory_mb"]:
            return None
        return f"virtio-balloon to {memory_mb(host)}M"
    if change.kind == "interface_moved":
        return _plan_moved(host, old, change, ctx, run)
    if change.kind == "interface_added":
        i = _iface(host, change.interface)
        if i is None or _iface(old, i.name) is not None or _hotplug_problem(host, i, run, False):
            return None
        if _needs_guest(i) and not channel_alive(ctx.on(old), channel_socket(paths(old, ctx)[0])):
            return None     # no agent answers in the guest: it would not configure the NIC
        return f"hot-plugged in PCI slot 0x{NIC_SLOT + i.index:02x}"
    return None


def _plan_moved(host, old, change, ctx, run) -> str | None:
    i, o = _iface(host, change.interface), _iface(old, change.interface)
    if i is None or o is None or i.index != o.index or _slirp(i) is not None or tun.name(i) or tun.name(o):
        return None
    spec = run["nics"].get(i.index)
    kind, opts = _opts(spec) if spec else (None, {})
    if kind != "tap" or not i.switch or i.switch.startswith("/"):
        return None
    new_kind = _switch_kind(ctx, i.switch)
    if new_kind is None or new_kind != _switch_kind(ctx, o.switch):
        return None     # only a switch of the kind that gave this tap is known to give a tap too
    bridge = ctx.state.get("switches", {}).get(i.switch, {}).get("bridge")
    return f"tap {opts.get('ifname')} moved to " + (f"bridge {bridge}" if bridge else f"switch {i.switch}")


def _needs_guest(i) -> bool:
    return bool(i.address) and not i.dhcp


def _hotplug_problem(host, i, run, now: bool) -> str | None:
    """Why interface ``i`` of ``host`` cannot be hot-plugged into the running QEMU (``run``);
    ``now``: it must be possible at once (the NICs below it run), not only after the other
    interfaces of the same upgrade were added."""
    nics, n = run["nics"], i.index
    if n > MAX_NIC_INDEX:
        return f"QEMU hosts have interfaces eth0 to eth{MAX_NIC_INDEX} only"
    if n in nics:
        return f"PCI slot 0x{NIC_SLOT + n:02x} has a NIC already (a placeholder for a gap)"
    coming = set() if now else {x.index for x in host.interfaces}
    missing = [k for k in range(n) if k not in nics and k not in coming]
    if missing:
        return f"eth{missing[0]} would need a placeholder NIC in a slot below it"
    if _needs_guest(i) and not run["channel"]:
        return "its QEMU has no mln channel to tell the guest its address (started by an older mln)"
    if i.dhcp or _slirp(i) is not None:
        return "only static addresses on a switch can be set up live"
    return None


# -- apply -----------------------------------------------------------------------------------------

def apply(host, old, change, ctx) -> bool:
    """Apply ``change`` to the running guest, as :func:`plan` said; MlnError if it cannot."""
    run = running(old, ctx)
    if run is None:
        raise MlnError("is not running (or its QEMU started without mln)", f"host {host.name}")
    try:
        if change.kind == "memory":
            _apply_memory(host, ctx, run)
        elif change.kind == "interface_moved":
            _apply_moved(host, ctx, change, run)
        elif change.kind == "interface_added":
            _apply_added(host, ctx, change, run)
        else:
            raise MlnError(f"a {change.kind} change cannot be applied to a running QEMU guest")
    except MlnError as e:
        raise MlnError(f"{change.reason}: {e.message}", f"host {host.name}") from None
    return True


def _apply_memory(host, ctx, run) -> None:
    import asyncio
    if not run["balloon"]:
        raise MlnError("its QEMU has no balloon (started by an older mln): only a restart changes its memory")
    want = memory_mb(host)

    async def work(c):
        boot = (await c.execute("query-memory-size-summary"))["base-memory"] // MiB
        if want > boot:
            raise qemu_qmp.QmpFailure(f"{want}M is more than the {boot}M the guest booted with; only a "
                                      "restart gives it more")
        await c.execute("balloon", {"value": want * MiB})
        end = time.monotonic() + BALLOON_TIMEOUT
        while True:
            actual = (await c.execute("query-balloon"))["actual"]
            if actual == want * MiB:
                return boot
            if time.monotonic() > end:
                raise qemu_qmp.QmpFailure(
                    f"the guest's balloon did not get to {want}M in {BALLOON_TIMEOUT:g} s (it is at "
                    f"{actual // MiB}M; does the guest have the virtio_balloon driver?)")
            await asyncio.sleep(0.2)

    try:
        boot = qemu_qmp.run(ctx.on(host), paths(host, ctx)[1], work)
    except Exception as e:
        raise MlnError(qemu_qmp.describe(e)) from None
    shape = read_shape(host, ctx)
    shape.update(memory_mb=boot, balloon_mb=want)
    write_shape(host, ctx, shape)


def _apply_moved(host, ctx, change, run) -> None:
    i = _iface(host, change.interface)
    spec = run["nics"].get(i.index) if i is not None else None
    kind, opts = _opts(spec) if spec else (None, {})
    if kind != "tap":
        raise MlnError(f"{change.interface} is not on a tap: only a restart moves it")
    tap = opts.get("ifname")
    att = ctx.attachment(host, i)       # the same tap, put on the new switch's bridge
    if att is None or att.kind != "tap" or att.tap != tap:
        raise MlnError(f"switch {i.switch} does not take over the tap {tap}: only a restart moves "
                       f"{i.name}")
    master = ctx.on(host).net_device_master(tap)
    if att.bridge and master != att.bridge:
        raise MlnError(f"the tap {tap} is on {master}, not on {att.bridge}")


def _apply_added(host, ctx, change, run) -> None:
    i = _iface(host, change.interface)
    if i is None:
        raise MlnError(f"the host has no {change.interface}")
    why = _hotplug_problem(host, i, run, True)
    if why:
        raise MlnError(f"{i.name} cannot be hot-plugged: {why}")
    n, nid = i.index, f"n{i.index}"
    spec = netdev_spec(host, ctx, i, nid)        # attaches it: a tap is made, on its bridge
    args = None
    if spec is not None:
        kind, opts = _opts(spec)
        if kind not in ("tap", "vde"):
            raise MlnError(f"a {kind} network cannot be hot-plugged")
        args = {"type": kind, **opts}
    mac = nic_mac(host, i, n)
    device = {"driver": "virtio-net-pci", "id": f"nic{n}", "mac": mac, "addr": f"0x{NIC_SLOT + n:02x}"}
    if args:
        device["netdev"] = nid

    async def work(c):
        if args:
            await c.execute("netdev_add", args)
        try:
            await c.execute("device_add", device)
        except BaseException:
            if args:
                with contextlib.suppress(Exception):
                    await c.execute("netdev_del", {"id": nid})
            raise

    d, sock, _ = paths(host, ctx)
    try:
        qemu_qmp.run(ctx.on(host), sock, work)
    except Exception as e:
        raise MlnError(f"hot-plugging {i.name}: {qemu_qmp.describe(e)}") from None
    shape = read_shape(host, ctx)
    shape.setdefault("memory_mb", run["memory_mb"])
    shape.setdefault("nics", {})[i.name] = {"index": n, "mac": mac, "netdev": spec}
    write_shape(host, ctx, shape)
    if _needs_guest(i):
        channel_request(ctx.on(host), channel_socket(d), ifup_line(host, i, mac), i.name, CHANNEL_TIMEOUT)


def ifup_line(host, i, mac: str) -> str:
    """``ifup MAC NAME ADDRESS/PREFIX [GATEWAY]``: what a cold start's network set-up does for
    ``i`` (no netmask: the address's class, as ifconfig; the gateway of the first interface
    that has one)."""
    addr = ipaddress.ip_address(i.address)
    if i.netmask:
        prefix = i.prefixlen
    elif addr.version == 6:
        prefix = 64
    else:
        first = int(addr) >> 24
        prefix = 8 if first < 128 else 16 if first < 192 else 24
    gateway = next((x.gateway for x in host.interfaces if x.gateway and _needs_guest(x)), None)
    line = f"ifup {mac.lower()} {i.name} {i.address}/{prefix}"
    return line + (f" {gateway}" if gateway and gateway == i.gateway else "")


# -- mln's channel ---------------------------------------------------------------------------------

def _lines(conn, end: float):
    """The lines the guest writes on ``conn`` until ``end`` (monotonic time)."""
    buf = b""
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        conn.settimeout(left)
        try:
            data = conn.recv(4096)
        except TimeoutError:
            return
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield line.decode("utf-8", "replace").strip()


def channel_request(machine, sock: str, line: str, name: str, timeout: float) -> None:
    """Send ``line`` to the guest's agent and wait for ``ok NAME`` (MlnError on ``error NAME
    WHY``, or when nothing comes in ``timeout`` seconds). Other lines (an answer to an
    earlier request that came too late) are skipped."""
    end = time.monotonic() + timeout
    try:
        conn = machine.connect_unix(sock, 5)
    except OSError as e:
        raise MlnError(f"cannot reach the guest on mln's channel {sock}: {e.strerror or e}") from None
    try:
        conn.sendall(line.encode() + b"\n")
        for answer in _lines(conn, end):
            words = answer.split()
            if words[:2] == ["ok", name]:
                return
            if words[:2] == ["error", name]:
                raise MlnError(f"the guest could not set up {name}: {' '.join(words[2:])}")
    finally:
        conn.close()
    raise MlnError(f"the guest did not confirm {name} on mln's channel in {timeout:g} s (does its "
                   "image have mln's channel agent? it comes with the individualization)")


def channel_alive(machine, sock: str, timeout: float = 5.0) -> bool:
    """True if the guest's agent answers ``ping`` on mln's channel."""
    try:
        conn = machine.connect_unix(sock, timeout)
    except OSError:
        return False
    try:
        conn.sendall(b"ping\n")
        return any(line == "pong" for line in _lines(conn, time.monotonic() + timeout))
    except OSError:
        return False
    finally:
        conn.close()
