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
* Every device has a fixed PCI slot (see ``qemu_live``): NIC ``ethN`` sits in slot
  ``2 + N``, and every missing index below the highest gets an unconnected placeholder
  NIC, so the guest kernel (which names NICs in PCI order) calls them exactly as the
  project file does: a host with eth0 and eth2 has an eth2. The disks follow from slot
  0x18, then a virtio balloon and a virtio-serial port, ``org.mln.channel`` (socket
  ``channel.sock`` in the runtime directory), through which mln talks to an agent in the
  guest (written by the guestconfig plugin).
* ``mln upgrade`` changes a running guest (``mln_plan_live``/``mln_apply_live``, done in
  ``qemu_live``): memory lowered through the balloon, an interface moved to another
  bridge with its tap, an interface added by PCI hot-plug (the guest's agent names it and
  sets its address). ``hosts/<host>/shape.json`` keeps how the guest then differs from a
  cold start (the RAM it booted with, the NICs plugged in), for a resume.
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

from . import imagefs, qemu_live, qemu_migrate, qemu_qmp, tun
from .runtime import saved_state_path

NAME = "qemu"
QEMU = "qemu-system-x86_64"


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("qemu", "kvm"), "QEMU with KVM, or TCG where KVM does not work",
                        disk_formats=("qcow2", "raw"), nic_kinds=("slirp", "tun"))
    registry.keyword("host", "accel", "QEMU accelerator: auto (default), kvm or tcg")
    registry.keyword("network", "hostfwd", "with slirp: forward a host port, e.g. tcp:127.0.0.1:2222-:22")


def _mine(host) -> bool:
    return host.hypervisor == NAME


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    first = "c" if host.swap else "b"   # drives are numbered in order: root, swap, mounts
    disks = [m for m in host.mounts if m.fstype != "hostfs"]
    return {"root": _root_device(host, ctx), "swap": "/dev/vdb",
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
        "accel": _accel(host, ctx), "memory_mb": qemu_live.memory_mb(host), "vcpus": int(vcpus),
        "kernel": kernel, "initrd": initrd,
        "append": " ".join(x for x in (f"console=ttyS0 root={_root_device(host, ctx)} rw", extra) if x)
        if kernel else None,
    }


def _root_device(host, ctx) -> str:
    """/dev/vda, or the partition of a whole-disk raw template (MBR/GPT) that mln
    individualizes, e.g. /dev/vda1 (a qcow2 whole-disk template: /dev/vda; ``extra
    root=...`` says otherwise, the kernel taking the last root=)."""
    from .partitions import root_suffix
    return "/dev/vda" + root_suffix(host, ctx)


def _paths(host, ctx, create=False):
    return qemu_live.paths(host, ctx, create)


MAX_NIC_INDEX = qemu_live.MAX_NIC_INDEX     # ethN is in PCI slot 2 + N (see qemu_live)


def _console_socket(runtime: str) -> str:
    return os.path.join(runtime, "console.sock")


@hookimpl
def mln_console(host, ctx):
    if not _mine(host):
        return None
    sock = _console_socket(_paths(host, ctx)[0])
    return {"socket": sock} if os.path.exists(sock) else None


def command_line(host, ctx, resume: bool = False, memory_mb: int | None = None, paused: bool = False) -> list[str]:
    """The QEMU command line; ``resume``: wait for the saved state (``-incoming defer``) and
    append to the console log instead of starting it afresh; ``memory_mb``: the RAM size
    instead of the configured one (a resume of a guest whose memory was lowered live)."""
    b = ctx.host_state(host).get("backend", {})
    disk = ctx.disk(host)
    d, qmp_sock, pidfile = _paths(host, ctx)
    log = os.path.join(ctx.host_dir(host), "console.log")
    chardev = qemu_live.chardev_path
    argv = [QEMU, "-name", host.fqname, "-accel", b.get("accel", "tcg"),
            "-m", qemu_live.ram_arg(memory_mb or b.get("memory_mb", 128), b.get("accel", "tcg")),
            "-smp", str(b.get("vcpus", 1)), "-nodefaults", "-no-user-config", "-display", "none",
            "-daemonize", "-pidfile", pidfile, "-qmp", f"unix:{qmp_sock},server=on,wait=off",
            "-chardev", f"socket,id=serial0,path={chardev(_console_socket(d))},server=on,wait=off,"
                        f"logfile={chardev(log)},logappend={'on' if resume else 'off'}",
            "-serial", "chardev:serial0"]
    argv += qemu_live.disk_args(host, ctx, disk)
    if b.get("kernel"):
        argv += ["-kernel", b["kernel"]]
        if b.get("initrd"):
            argv += ["-initrd", b["initrd"]]
        argv += ["-append", b["append"]]
    argv += qemu_live.nic_args(host, ctx)
    argv += qemu_live.fixed_args(d)
    if resume:
        argv += ["-incoming", "defer"] + ["-S"] * paused
    return argv


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
    try:
        if resume:   # as it ran when saved: its RAM size, with the NICs hot-plugged since its boot
            configured = ctx.host_state(host).get("backend", {}).get("memory_mb", 128)
            mb = qemu_live.resume_memory(host, ctx, configured, saved)
            argv = command_line(host, ctx, resume=True, memory_mb=mb)
            was = qemu_live.saved_ram_arg(host, ctx)     # (as it was saved: by an older mln too)
            if was is not None and qemu_live.ram_mb(was) == mb:
                argv[argv.index("-m") + 1] = was
        else:
            qemu_live.drop_shape(host, ctx)      # a cold start: the guest is as the project says
            argv = command_line(host, ctx)
    except MlnError:
        _undo_start(host, ctx)
        raise
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


# -- live migration between servers (mln upgrade, mln_backends.qemu_migrate) ----------------------------

@hookimpl
def mln_live_migration(host, shared, ctx):
    return qemu_migrate.can(host, shared, ctx) if _mine(host) else None


@hookimpl
def mln_migrate_in(host, disk, address, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, qmp_sock, pidfile = _paths(host, ctx, create=True)
    pid = m.read_pid(pidfile)
    if m.alive(pid):                      # an empty shell (its guest went to another server), or
        status = (qmp(m, qmp_sock, "query-status", timeout=3) or {}).get("status")    # one still waiting
        waiting = status == "inmigrate" and \
            (qmp(m, qmp_sock, "query-migrate", timeout=3) or {}).get("status", "none") in ("none", "setup")
        if status != "postmigrate" and not waiting:
            raise MlnError("is already running")
        m.kill_and_wait(pid, timeout=3)
    shared = bool((disk.extra or {}).get("shared"))     # then it runs as soon as it arrived (no -S)
    argv = command_line(host, ctx, resume=True, paused=not shared)
    with open(os.path.join(ctx.host_dir(host), "cmdline"), "w") as f:
        f.write(shlex.join(argv) + "\n")
    r = m.run(argv, what="QEMU did not start", check=False, timeout=60, text=True)
    try:
        if r.returncode != 0:
            raise MlnError(f"QEMU did not start: {(r.stderr or r.stdout).strip()}")
        return qemu_migrate.incoming(m, qmp_sock, address, shared)
    except MlnError:
        _undo_start(host, ctx)
        raise


@hookimpl
def mln_migrate_out(host, incoming, ctx):
    if not _mine(host):
        return None
    return qemu_migrate.send(ctx.on(host), _paths(host, ctx)[1], incoming, host.fqname, _shared(host, ctx),
                             qemu_migrate.tuning(ctx.config))


def _shared(host, ctx) -> bool:
    from mln_core.move import shared_disk
    return shared_disk(ctx.host_state(host).get("disk") or {}, ctx.config, ctx.project_dir) is not None


@hookimpl
def mln_migrate_done(host, ctx):
    if not _mine(host):
        return None
    qemu_migrate.arrived(ctx.on(host), _paths(host, ctx)[1], _shared(host, ctx))
    return True


# -- live changes (mln upgrade) -------------------------------------------------------------------------

@hookimpl
def mln_plan_live(host, old, change, ctx):
    if not _mine(old) or not _mine(host):
        return None
    return qemu_live.plan(host, old, change, ctx)


@hookimpl
def mln_apply_live(host, old, change, ctx):
    if not _mine(old) or not _mine(host):
        return None
    return qemu_live.apply(host, old, change, ctx)


# -- QMP (qemu_qmp) ------------------------------------------------------------------------------------

QmpFailure = qemu_qmp.QmpFailure
qmp = qemu_qmp.qmp
_session = qemu_qmp.session
_describe = qemu_qmp.describe


# -- save and resume (mln stop -S / mln start) --------------------------------------------------------

SAVE_TIMEOUT = 300.0
RESUME_TIMEOUT = 300.0


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
        asyncio.run(_session(m, qmp_sock, lambda c: qemu_qmp.save_to_fd(c, fd, SAVE_TIMEOUT, finish)))
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
        asyncio.run(_session(m, qmp_sock, lambda c: qemu_qmp.load_from_fd(c, fd, RESUME_TIMEOUT, ran)))
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
    status = qemu_migrate.settled(m, qmp_sock)        # (a guest on its way here: once it arrived)
    if status is None:
        return "up: not answering on QMP"
    return "up" if status == "running" else f"up: {status}"


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
        tun.down(m, host)
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
