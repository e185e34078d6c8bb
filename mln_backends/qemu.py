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
* NIC ``ethN`` sits in PCI slot ``2 + N``, and every missing index below the highest gets
  an unconnected placeholder NIC, so the guest kernel (which names NICs in PCI order)
  calls them exactly as the project file does: a host with eth0 and eth2 has an eth2.
* The serial console is the socket ``console.sock`` in the runtime directory (``mln
  console`` attaches to it), and QEMU logs it to ``hosts/<host>/console.log``; status and
  shutdown use the QMP socket (``system_powerdown`` for a clean stop, ``quit`` for a hard one).
* ``mln stop -S`` saves a host: QMP ``stop`` (the disk is not written after that), then a
  migration into ``hosts/<host>/<host>.ram.part`` through a file descriptor passed over QMP
  (``fd:``, works on QEMU 7.2, which has no ``file:`` migration), renamed to ``<host>.ram``
  once synced, then ``quit``; if any step fails the part file goes and the guest runs on.
  The next start runs the same command line with ``-incoming defer``, loads that file
  (``migrate-incoming``), continues the guest and deletes the file right away (the guest
  writes its disk from then on); the console log is appended to, not truncated. A resume
  that fails before the guest ran keeps the file and says so.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError
from mln_core.machine import local

from . import imagefs
from .runtime import mac_address, runtime_dir, saved_state_path

NAME = "qemu"
QEMU = "qemu-system-x86_64"


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("qemu", "kvm"), "QEMU with KVM, or TCG where KVM does not work",
                        disk_formats=("qcow2", "raw"))
    registry.keyword("host", "accel", "QEMU accelerator: auto (default), kvm or tcg")
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


def kvm_usable(machine=None) -> bool:
    """KVM works for ordinary guests only with hardware virtualization behind /dev/kvm."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    flags = " " + (machine or local()).cpu()[1]
    return " vmx" in flags or " svm" in flags


def _accel(host, ctx) -> str:
    want = (host.tree.get("accel") if host.tree is not None else None) or ctx.config.get("qemu_accel") or "auto"
    if want not in ("auto", "kvm", "tcg"):
        raise MlnError(f"accel must be auto, kvm or tcg, not '{want}'")
    if want == "auto":
        return "kvm" if kvm_usable(ctx.on(host)) else "tcg"
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


MAX_NIC_INDEX = 29            # ethN is in PCI slot 2 + N; slots 0 and 1 are the host and ISA bridges


def _console_socket(runtime: str) -> str:
    return os.path.join(runtime, "console.sock")


@hookimpl
def mln_console(host, ctx):
    if not _mine(host):
        return None
    sock = _console_socket(_paths(host, ctx)[0])
    return {"socket": sock} if os.path.exists(sock) else None


def _chardev_path(path: str) -> str:
    return path.replace(",", ",,")     # QEMU option syntax: a literal comma is doubled


def command_line(host, ctx, resume: bool = False) -> list[str]:
    """The QEMU command line; ``resume``: wait for the saved state (``-incoming defer``) and
    append to the console log instead of starting it afresh."""
    b = ctx.host_state(host).get("backend", {})
    disk = ctx.disk(host)
    d, qmp, pidfile = _paths(host, ctx)
    log = os.path.join(ctx.host_dir(host), "console.log")
    argv = [QEMU, "-name", host.fqname, "-accel", b.get("accel", "tcg"), "-m", str(b.get("memory_mb", 128)),
            "-smp", str(b.get("vcpus", 1)), "-nodefaults", "-no-user-config", "-display", "none",
            "-daemonize", "-pidfile", pidfile, "-qmp", f"unix:{qmp},server=on,wait=off",
            "-chardev", f"socket,id=serial0,path={_chardev_path(_console_socket(d))},server=on,wait=off,"
                        f"logfile={_chardev_path(log)},logappend={'on' if resume else 'off'}",
            "-serial", "chardev:serial0",
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
    argv += _nics(host, ctx)
    if resume:
        argv += ["-incoming", "defer"]
    return argv


def _nics(host, ctx) -> list[str]:
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
        name = i.name if i is not None else f"eth{n}"
        mac = (i.mac if i is not None else None) or mac_address("52:54:00", host.project, host.name, name)
        nid = f"n{n}"
        netdev = _netdev(host, ctx, i, nid) if i is not None else None
        device = f"virtio-net-pci,id=nic{n},mac={mac},addr=0x{2 + n:02x}"
        if netdev is not None:
            argv += ["-netdev", netdev]
            device = f"virtio-net-pci,netdev={nid},id=nic{n},mac={mac},addr=0x{2 + n:02x}"
        argv += ["-device", device]
    return argv


def _netdev(host, ctx, i, nid: str) -> str | None:
    """The -netdev for interface ``i``, or None if it is connected to nothing."""
    slirp = i.tree.get("slirp") if i.tree is not None else None
    if slirp is not None:
        netdev = f"user,id={nid}" + (",restrict=on" if slirp == "restrict" else "")
        return netdev + "".join(f",hostfwd={ln.value}" for ln in i.tree.lines if ln.words[0] == "hostfwd")
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


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx, create=True)
    if m.alive(m.read_pid(pidfile)):
        raise MlnError("is already running")
    if os.path.exists(qmp_sock):
        os.unlink(qmp_sock)
    saved = saved_state_path(host, ctx)
    resume = os.path.exists(saved)
    argv = command_line(host, ctx, resume=resume)
    with open(os.path.join(ctx.host_dir(host), "cmdline"), "w") as f:
        f.write(shlex.join(argv) + "\n")
    r = m.run(argv, what="QEMU did not start", check=False, timeout=60, text=True)
    if r.returncode != 0:
        _undo_start(host, ctx)
        kept = f"; its saved state is kept in {saved}" if resume else ""
        raise MlnError(f"QEMU did not start: {(r.stderr or r.stdout).strip()}{kept}")
    if resume:
        _resume(host, ctx, saved)
    return True


def _undo_start(host, ctx) -> None:
    """After a failed start: end QEMU, detach the interfaces, remove the runtime files."""
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx)
    m.kill_and_wait(m.read_pid(pidfile), timeout=3)
    for i in host.interfaces:
        try:
            ctx.detach(host, i)
        except Exception:   # cleanup must not hide the error being reported
            pass
    mln_host_stopped(host, ctx)


# -- QMP ------------------------------------------------------------------------------------------

class QmpFailure(Exception):
    """A QMP exchange did not go as it must (the message says what happened)."""


async def _session(machine, sock: str, work, timeout: float = 5.0):
    """Connect to ``sock`` (through ``machine``), run ``await work(client)``, disconnect."""
    import asyncio      # here, not at the top: most commands never talk QMP
    from qemu.qmp import ConnectError, QMPClient
    client = QMPClient("mln")
    try:
        conn = machine.connect_unix(sock, timeout)
    except TimeoutError:
        raise
    except OSError as e:       # as the client says it when it connects by itself
        raise ConnectError("Failed to establish connection", e) from None
    try:
        await asyncio.wait_for(client.connect(conn), timeout)
        return await work(client)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout)
        except Exception:
            pass
        conn.close()


async def _qmp(machine, sock: str, command: str, timeout: float):
    import asyncio
    return await _session(machine, sock, lambda c: asyncio.wait_for(c.execute(command), timeout), timeout)


def qmp(machine, sock: str, command: str, timeout: float = 5.0):
    """Run one QMP command on ``sock``; None if QEMU does not answer."""
    import asyncio
    if not os.path.exists(sock):
        return None
    try:
        return asyncio.run(_qmp(machine, sock, command, timeout))
    except Exception:
        return None


def _describe(e: BaseException) -> str:
    import asyncio
    if isinstance(e, QmpFailure):
        return str(e)
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "QEMU did not answer on QMP in time"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# -- save and resume (mln stop -S / mln start) --------------------------------------------------------

SAVE_TIMEOUT = 300.0
RESUME_TIMEOUT = 300.0
FDNAME = "mln-state"


async def _save_to_fd(client, fd: int, timeout: float, finish=lambda: None) -> None:
    """Stop the guest, migrate it into ``fd``, wait until done, then ``finish()`` (sync and
    rename the file); the guest runs on if any of it fails."""
    import asyncio
    status = (await client.execute("query-status"))["status"]
    if status in ("inmigrate", "finish-migrate", "postmigrate", "save-vm", "restore-vm"):
        raise QmpFailure(f"QEMU is busy with a migration ({status})")
    await client.execute("stop")       # from here on the guest does not write its disk
    try:
        client.send_fd_scm(fd)
        await client.execute("getfd", {"fdname": FDNAME})
        # the default limit (32 MiB/s) only slows a stopped guest's save down
        await client.execute("migrate-set-parameters", {"max-bandwidth": 8 * 2**30})
        await client.execute("migrate", {"uri": f"fd:{FDNAME}"})
        end = time.monotonic() + timeout
        while True:
            info = await client.execute("query-migrate")
            state = info.get("status")
            if state == "completed":
                try:
                    finish()
                except OSError as e:
                    raise QmpFailure(f"writing the save file failed: {e.strerror or e}") from None
                return
            if state in ("failed", "cancelled"):
                raise QmpFailure(f"the migration into the save file {state}: "
                                 f"{info.get('error-desc', 'QEMU gave no reason')}")
            if time.monotonic() > end:
                await client.execute("migrate_cancel")
                for _ in range(100):      # let the cancel settle before the guest goes on
                    if (await client.execute("query-migrate")).get("status") not in \
                            ("setup", "active", "cancelling", "pre-switchover", "device"):
                        break
                    await asyncio.sleep(0.05)
                raise QmpFailure(f"the migration into the save file did not finish in {timeout:g} s")
            await asyncio.sleep(0.05)
    except BaseException:
        if status == "running":
            try:
                await client.execute("cont")
            except Exception:
                pass
        raise


def _wait_gone(machine, pid: int | None, timeout: float) -> None:
    end = time.monotonic() + timeout
    while machine.alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    machine.kill_and_wait(pid, timeout=3)


@hookimpl
def mln_save_host(host, ctx):
    import asyncio
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx)
    pid = m.read_pid(pidfile)
    where = f"host {host.name}"
    if not m.alive(pid) or not os.path.exists(qmp_sock):
        raise MlnError("cannot save: QEMU is not running", where)
    saved = saved_state_path(host, ctx)
    part = saved + ".part"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise MlnError(f"saving failed: cannot create {part}: {e.strerror}; the host keeps running",
                       where) from None

    def finish() -> None:        # once the migration is complete; the guest runs on if this fails
        os.fsync(fd)
        os.replace(part, saved)

    try:
        asyncio.run(_session(m, qmp_sock, lambda c: _save_to_fd(c, fd, SAVE_TIMEOUT, finish)))
    except Exception as e:
        raise MlnError(f"saving failed: {_describe(e)}; the host keeps running", where) from None
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)       # only there if the save failed
    # the guest is stopped and its state is in the file: end QEMU (it flushes the disk)
    qmp(m, qmp_sock, "quit", timeout=5)
    _wait_gone(m, pid, timeout=10)
    return True


async def _load_from_fd(client, fd: int, timeout: float, ran=lambda: None) -> None:
    """Load the saved state from ``fd`` and continue the guest; ``ran()`` right after a
    successful ``cont`` (the guest has run and writes its disk from then on)."""
    import asyncio
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": FDNAME})
    await client.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"})
    end = time.monotonic() + timeout
    while True:
        status = (await client.execute("query-status"))["status"]
        if status == "running":
            return
        if status in ("paused", "postmigrate", "prelaunch"):
            await client.execute("cont")       # it was saved stopped, so it arrives stopped
            ran()
        elif status != "inmigrate":
            raise QmpFailure(f"the guest is '{status}' after loading its saved state")
        if time.monotonic() > end:
            raise QmpFailure(f"loading the saved state did not finish in {timeout:g} s")
        await asyncio.sleep(0.05)


def _resume(host, ctx, saved: str) -> None:
    """Load ``saved`` into the QEMU just started with ``-incoming defer``; delete it as soon as
    the guest runs (its disk has moved on from the saved memory then). On failure QEMU is
    ended; the file is kept if the guest never ran."""
    import asyncio
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx)

    def ran() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(saved)

    fd = os.open(saved, os.O_RDONLY | os.O_CLOEXEC)
    try:
        asyncio.run(_session(m, qmp_sock, lambda c: _load_from_fd(c, fd, RESUME_TIMEOUT, ran)))
    except Exception as e:
        reason = _describe(e)
        kept = os.path.exists(saved)
        if kept and not m.alive(m.read_pid(pidfile)):
            reason = ("QEMU exited while loading it (the file is damaged, or was saved from another "
                      "build of this host)")
        _undo_start(host, ctx)
        after = (f"The file is kept; delete it to boot {host.name} afresh" if kept else
                 "The guest had already run on, so the file is deleted; the next start boots it afresh")
        raise MlnError(f"resuming from the saved state {saved} failed: {reason}. {after}") from None
    finally:
        os.close(fd)
    ran()


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx)
    if not m.alive(m.read_pid(pidfile)):
        return "down: saved" if os.path.exists(saved_state_path(host, ctx)) else "down"
    st = qmp(m, qmp_sock, "query-status", timeout=3)
    if st is None:
        return "up: not answering on QMP"
    return "up" if st.get("status") == "running" else f"up: {st.get('status')}"


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx)
    pid = m.read_pid(pidfile)
    if hard:
        if qmp(m, qmp_sock, "quit", timeout=3) is None or m.alive(pid):
            m.kill_and_wait(pid, timeout=3)
    elif qmp(m, qmp_sock, "system_powerdown", timeout=3) is None:
        m.kill_and_wait(pid)
    return True


@hookimpl
def mln_host_stopped(host, ctx):
    if _mine(host):
        m = ctx.on(host)
        d, qmp_sock, pidfile = _paths(host, ctx)
        shutil.rmtree(d, ignore_errors=True)
        if os.path.exists(pidfile) and not m.alive(m.read_pid(pidfile)):
            os.unlink(pidfile)


@hookimpl
def mln_remove_host(host, ctx):
    if _mine(host) and ctx.project_dir:
        mln_host_stopped(host, ctx)


@hookimpl
def mln_runnable(host, ctx):
    if _mine(host) and shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    return None


@hookimpl
def mln_doctor(ctx):
    found = tool(QEMU, "runs QEMU guests", "qemu-system-x86", hypervisor=NAME)
    if found["ok"]:
        found["detail"] += ("; accelerator: KVM" if kvm_usable(ctx.on()) else
                            "; accelerator: TCG only (no usable KVM: guests run emulated, slower)")
    return [found, tool("qemu-img", "qcow2 overlays and disk conversion", "qemu-utils")]
