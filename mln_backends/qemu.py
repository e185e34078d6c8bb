"""Hypervisor backend ``qemu`` (keywords ``qemu`` or ``kvm``): QEMU guests.

* KVM when it really works here, else TCG: ``auto`` (the default) uses KVM only when
  ``/dev/kvm`` is usable and the CPU has hardware virtualization (vmx/svm); ``accel
  kvm|tcg`` in the host or ``qemu_accel`` in mln.conf overrides it.
* The disk is a qcow2 overlay on virtio; NICs are virtio-net on the switch (vde socket
  or tap); ``memory``, ``vcpus`` and ``mac`` are honoured. ``slirp`` in a network block
  gives user-mode NAT instead (``slirp restrict`` cuts the guest off from the outside;
  ``hostfwd tcp:127.0.0.1:2222-:22`` forwards a host port to it).
* A template that is a bare filesystem boots its kernel directly: ``kernel``/``ramdisk``
  in the host, else the kernel and initrd registered with the template
  (``mln register_template --kernel K --initrd I``), else ``qemu_kernel``/``qemu_initrd``
  in mln.conf. A whole-disk template boots through its own boot loader.
* The serial console goes to ``hosts/<host>/console.log``; status and shutdown use the
  QMP socket (``system_powerdown`` for a clean stop, ``quit`` for a hard one).
"""
from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess

from mln_core import hookimpl
from mln_core.errors import MlnError
from mln_core.lifecycle import disk_of

from . import imagefs
from .runtime import alive, kill_and_wait, mac_address, read_pid, runtime_dir

NAME = "qemu"
QEMU = "qemu-system-x86_64"


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("qemu", "kvm"), "QEMU with KVM, or TCG where KVM does not work",
                        disk_formats=("qcow2", "raw"))
    registry.keyword("host", "vcpus", "number of virtual CPUs")
    registry.keyword("host", "accel", "QEMU accelerator: auto (default), kvm or tcg")
    registry.keyword("host", "extra", "extra kernel command line arguments")
    registry.keyword("network", "slirp", "user-mode networking (NAT) instead of a switch; 'slirp restrict' "
                                         "isolates the guest")
    registry.keyword("network", "hostfwd", "with slirp: forward a host port, e.g. tcp:127.0.0.1:2222-:22")


def _mine(host) -> bool:
    return host.hypervisor == NAME


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    first = "c" if host.swap else "b"   # drives are numbered in order: root, swap, mounts
    disks = [m for m in host.mounts if m.fstype != "hostfs"]
    return {"root": "/dev/vda", "swap": "/dev/vdb",
            "extra": [f"/dev/vd{chr(ord(first) + n)}" for n in range(len(disks))],
            "console": "ttyS0"}


def kvm_usable() -> bool:
    """KVM works for ordinary guests only with hardware virtualization behind /dev/kvm."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def _accel(host, ctx) -> str:
    want = (host.tree.get("accel") if host.tree is not None else None) or ctx.config.get("qemu_accel") or "auto"
    if want not in ("auto", "kvm", "tcg"):
        raise MlnError(f"accel must be auto, kvm or tcg, not '{want}'")
    if want == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return want


@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    if shutil.which(QEMU) is None:
        raise MlnError(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    template = ctx.templates.resolve(host.template, f"host {host.name}")
    kernel = host.kernel or template.kernel or ctx.config.get("qemu_kernel")
    initrd = host.ramdisk or (template.initrd if not host.kernel else None) or ctx.config.get("qemu_initrd")
    if kernel is None and imagefs.is_ext_filesystem(template.path):
        raise MlnError(f"missing kernel: template {template.name} is a bare filesystem, so the guest needs a "
                       "kernel to boot; register the template with --kernel/--initrd, or set 'kernel PATH'")
    for path, what in ((kernel, "kernel"), (initrd, "initrd")):
        if path is not None and not os.path.isfile(path):
            raise MlnError(f"missing {what}: {path} does not exist")
    vcpus = host.tree.get("vcpus", "1") if host.tree is not None else "1"
    if not vcpus.isdigit() or int(vcpus) < 1:
        raise MlnError(f"vcpus must be a number of at least 1, not '{vcpus}'")
    extra = host.tree.get("extra") if host.tree is not None else None
    return {
        "accel": _accel(host, ctx), "memory_mb": max(32, host.memory // 2**20), "vcpus": int(vcpus),
        "kernel": kernel, "initrd": initrd,
        "append": " ".join(x for x in ("console=ttyS0 root=/dev/vda rw", extra) if x) if kernel else None,
    }


def _paths(host, ctx, create=False):
    d = runtime_dir(ctx, "qemu", host.name, create=create)
    return d, os.path.join(d, "qmp.sock"), os.path.join(ctx.path("hosts", host.name), "pid")


def command_line(host, ctx) -> list[str]:
    b = ctx.host_state(host).get("backend", {})
    disk = disk_of(ctx, host)
    d, qmp, pidfile = _paths(host, ctx)
    log = os.path.join(ctx.host_dir(host), "console.log")
    argv = [QEMU, "-name", host.fqname, "-accel", b.get("accel", "tcg"), "-m", str(b.get("memory_mb", 128)),
            "-smp", str(b.get("vcpus", 1)), "-nodefaults", "-no-user-config", "-display", "none",
            "-daemonize", "-pidfile", pidfile, "-qmp", f"unix:{qmp},server=on,wait=off",
            "-serial", f"file:{log}",
            "-drive", f"file={disk.path},format={disk.format},if=virtio,cache=writeback"]
    if disk.extra.get("swap"):
        argv += ["-drive", f"file={ctx.path(disk.extra['swap'])},format=raw,if=virtio"]
    for m in host.mounts:
        if m.fstype != "hostfs":   # hostfs is UML's way to share a host directory
            argv += ["-drive", f"file={m.source},format=raw,if=virtio"]
    if b.get("kernel"):
        argv += ["-kernel", b["kernel"]]
        if b.get("initrd"):
            argv += ["-initrd", b["initrd"]]
        argv += ["-append", b["append"]]
    for i in host.interfaces:
        mac = i.mac or mac_address("52:54:00", host.project, host.name, i.name)
        nid = f"n{i.index}"
        slirp = i.tree.get("slirp") if i.tree is not None else None
        if slirp is not None:
            netdev = f"user,id={nid}" + (",restrict=on" if slirp == "restrict" else "")
            netdev += "".join(f",hostfwd={ln.value}" for ln in i.tree.lines if ln.words[0] == "hostfwd")
        elif i.switch and i.switch.startswith("/"):
            netdev = f"vde,id={nid},sock={i.switch}"
        else:
            att = ctx.attachment(host, i) if i.switch else None
            if att is None:
                continue
            if att["kind"] == "vde":
                netdev = f"vde,id={nid},sock={att['socket']}"
            elif att["kind"] == "tap":
                netdev = f"tap,id={nid},ifname={att['tap']},script=no,downscript=no"
            else:
                raise MlnError(f"{i.name}: QEMU cannot join a switch of kind {att['kind']}")
        argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={nid},mac={mac}"]
    return argv


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    d, qmp, pidfile = _paths(host, ctx, create=True)
    if alive(read_pid(pidfile)):
        raise MlnError("is already running")
    if os.path.exists(qmp):
        os.unlink(qmp)
    argv = command_line(host, ctx)
    with open(os.path.join(ctx.host_dir(host), "cmdline"), "w") as f:
        f.write(shlex.join(argv) + "\n")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise MlnError(f"QEMU did not start: {(r.stderr or r.stdout).strip()}")
    return True


async def _qmp(sock: str, command: str, timeout: float):
    from qemu.qmp import QMPClient
    client = QMPClient("mln")
    try:
        await asyncio.wait_for(client.connect(sock), timeout)
        return await asyncio.wait_for(client.execute(command), timeout)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout)
        except Exception:
            pass


def qmp(sock: str, command: str, timeout: float = 5.0):
    """Run one QMP command on ``sock``; None if QEMU does not answer."""
    if not os.path.exists(sock):
        return None
    try:
        return asyncio.run(_qmp(sock, command, timeout))
    except Exception:
        return None


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    d, qmp_sock, pidfile = _paths(host, ctx)
    if not alive(read_pid(pidfile)):
        return "down"
    st = qmp(qmp_sock, "query-status", timeout=3)
    if st is None:
        return "up: not answering on QMP"
    return "up" if st.get("status") == "running" else f"up: {st.get('status')}"


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    d, qmp_sock, pidfile = _paths(host, ctx)
    pid = read_pid(pidfile)
    if hard:
        if qmp(qmp_sock, "quit", timeout=3) is None or alive(pid):
            kill_and_wait(pid, timeout=3)
    elif qmp(qmp_sock, "system_powerdown", timeout=3) is None:
        kill_and_wait(pid)
    return True


@hookimpl
def mln_host_stopped(host, ctx):
    if _mine(host):
        d, qmp_sock, pidfile = _paths(host, ctx)
        shutil.rmtree(d, ignore_errors=True)
        if os.path.exists(pidfile) and not alive(read_pid(pidfile)):
            os.unlink(pidfile)


@hookimpl
def mln_remove_host(host, ctx):
    if _mine(host) and ctx.project_dir:
        mln_host_stopped(host, ctx)
