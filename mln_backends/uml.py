"""Hypervisor backend ``uml``: User-Mode Linux guests (the default hypervisor).

The guest runs as ``<kernel> ubd0=<disk> root=/dev/ubda mem=<M> umid=<host>.<project>
uml_dir=<dir> <NICs> con=null con0=fd:3,fd:1 quiet`` with its console written to
``hosts/<host>/console.log`` (address-space randomization off, so that the guest's memory is
what ``memory`` says: :data:`mln_backends.umlprobe.FIXED_LAYOUT`) and read from the named pipe ``console.in`` in its runtime
directory (fd 3; ``mln console`` types into it). ``kernel`` in the host (or
``default_kernel`` in mln.conf) names the UML binary; default ``/usr/bin/linux.uml``.

NICs: a UML with the legacy drivers gets ``ethN=vde,<socket>,<mac>`` or
``ethN=tuntap,<tap>,<mac>``; one without them (Linux 6.16 and later) gets the vector
driver, ``vecN:transport=vde,vnl=vde://<socket>,mac=<mac>`` or
``vecN:transport=tap,ifname=<tap>,mac=<mac>``, and the guest renames ``vecN`` to
``ethN`` at boot (``nic_renames`` of ``mln_guest_devices``). A ``slirp`` interface uses
the same vde transport plugged into ``slirp://`` (``ethN=vde,slirp://,<mac>`` or
``vecN:transport=vde,vnl=slirp://,...``): libvdeplug loads Debian's libvdeplug-slirp,
and the NAT runs inside the UML process (see :mod:`mln_core.nickinds`). Which drivers a binary has,
and whether it boots on this CPU at all, :mod:`mln_backends.umlprobe` finds out once per
binary and CPU; a UML that cannot run here is refused at ``start`` with the cause and
the remedy, and named by ``mln check`` and ``mln doctor``.
Status and shutdown go through the mconsole socket (``uml_mconsole``): ``cad`` for a
clean shutdown, ``halt`` for a hard one. A guest that died on its own is "down:
crashed: ..." with the kernel's last words from its console.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time

from mln_core import hookimpl
from mln_core.doctor import tool
from mln_core.errors import MlnError
from mln_core.model import Attachment
from mln_core.nickinds import slirp as slirp_value

from .umlcow import write_cow
from . import tun
from .runtime import mac_address, runtime_dir

DEFAULT_KERNEL = "/usr/bin/linux.uml"
DEFAULT_MODULES = "/usr/lib/uml/modules"      # Debian's user-mode-linux: one directory per kernel version
NAME = "uml"


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, ("uml",), "User-Mode Linux (the default)", disk_formats=("raw",),
                        nic_kinds=("slirp", "tun"))
    registry.keyword("host", "nice", "UML: run the guest with this nice value")
    registry.keyword("host", "modules_dir", "UML: the kernel modules copied into the guest when it has "
                                            "modules {} (default: default_modules, else " + DEFAULT_MODULES + ")")


def _mine(host) -> bool:
    return host.hypervisor == NAME


@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    return {"root": "/dev/ubda", "swap": "/dev/ubdb",
            "extra": [f"/dev/ubd{chr(ord('c') + n)}" for n in range(len(host.mounts))],
            "console": "tty0",
            # the vector driver of newer UMLs names the NIC ethN "vecN"
            "nic_renames": {f"vec{i.name[3:]}": i.name for i in host.interfaces if _eth_number(i.name)}}


def _eth_number(name: str) -> bool:
    return name.startswith("eth") and name[3:].isdigit()


def _kernel_name(host, ctx) -> str:
    return host.kernel or ctx.config.get("default_kernel") or DEFAULT_KERNEL


def _kernel(host, ctx) -> str:
    kernel = _kernel_name(host, ctx)
    if not _executable(kernel):
        raise MlnError(_missing(kernel))
    return kernel


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _missing(kernel: str) -> str:
    return (f"missing kernel: the UML kernel {kernel} does not exist or is not executable (install the "
            "user-mode-linux package, or set 'kernel PATH' in the host or 'default_kernel PATH' in mln.conf)")


def _cannot_run(kernel: str, machine) -> str | None:
    """Why the UML binary ``kernel`` cannot run on ``machine`` (None if it can)."""
    if not _executable(kernel):
        return _missing(kernel)
    from . import umlprobe  # imported when used: mln check needs no probe
    info = umlprobe.inspect(kernel, machine=machine)
    if info["boots"] is False:
        return f"{umlprobe.verdict(info, machine)}; {umlprobe.remedy()}"
    return None


@hookimpl
def mln_runnable(host, ctx):
    if not _mine(host):
        return None
    built = ctx.host_state(host).get("backend", {}).get("kernel")   # (a built host: what start runs)
    return _cannot_run(built or _kernel_name(host, ctx), ctx.on(host)) or _no_slirp(host)


SLIRP_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/vdeplug", "/usr/lib/aarch64-linux-gnu/vdeplug",
                     "/usr/lib/vdeplug", "/usr/local/lib/vdeplug")


def _no_slirp(host) -> str | None:
    """Why ``host``'s slirp interfaces cannot work here (None if it has none, or they can)."""
    if not any(slirp_value(i) is not None for i in host.interfaces):
        return None
    if any(os.path.exists(os.path.join(d, "libvdeplug_slirp.so")) for d in SLIRP_PLUGIN_DIRS):
        return None
    return ("a slirp interface of a UML guest needs the slirp plugin of libvdeplug (libvdeplug_slirp.so): "
            "install the Debian package libvdeplug-slirp")


@hookimpl
def mln_validate(project, ctx):
    """UML's slirp (libvdeplug-slirp) takes no options: QEMU's 'slirp restrict' and hostfwd are
    refused."""
    from mln_core.errors import Problem
    found = []
    for h in project.hosts.values():
        if not _mine(h):
            continue
        for i in h.interfaces:
            value = slirp_value(i)
            if value is None:
                continue
            if value.startswith("/"):      # the original's slirp helper binary
                found.append(Problem("warning", f"host {h.name} {i.name}: the slirp helper {value} is not "
                                     "used (UML's slirp is libvdeplug-slirp)", i.tree.line("slirp").pos))
                value = "1"
            for key in ("slirp", "hostfwd"):
                line = i.tree.line(key)
                if line is not None and (key == "hostfwd" or value not in ("1", "yes")):
                    found.append(Problem("error", f"host {h.name} {i.name}: UML's slirp takes no options "
                                         f"('{line.value}' is QEMU's); leave it out", line.pos))
    return found


@hookimpl
def mln_doctor(ctx):
    kernel = ctx.config.get("default_kernel") or DEFAULT_KERNEL
    m = ctx.on()
    from . import umlprobe  # imported when used: mln check needs no probe
    info = umlprobe.inspect(kernel, machine=m)
    ok = bool(info["boots"])
    said = "" if ok or not info["output"] else f" [{' | '.join(info['output'].splitlines())}]"
    found = [{"name": "uml", "hypervisor": NAME, "ok": ok, "detail": umlprobe.verdict(info, m) + said,
              "remedy": "" if ok else umlprobe.remedy()}]
    if ok and not info["drivers"]:
        found[0].update(ok=False, detail=f"{umlprobe.verdict(info, m)}: it has no network driver mln can use",
                        remedy="use a UML built with the vector (or legacy) network driver")
    return found + [tool("uml_mconsole", "clean shutdown of UML guests", "uml-utilities")]


@hookimpl
def mln_configure_image(host, guest, ctx):
    """A UML guest with ``modules {}`` gets the UML kernel's modules: every version
    directory of ``modules_dir`` (or ``default_modules``) is copied to /lib/modules/."""
    if not _mine(host) or not host.modules:
        return
    named = (host.tree.get("modules_dir") if host.tree is not None else None) or ctx.config.get("default_modules")
    beside = os.path.join(os.path.dirname(os.path.realpath(_kernel_name(host, ctx))), "modules")
    src = named or (beside if os.path.isdir(beside) else DEFAULT_MODULES)   # an installed UML's own
    versions = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d))) \
        if os.path.isdir(src) else []
    if not versions:
        why = (f"modules: no UML kernel modules in {src} (one directory per kernel version is expected; "
               "install the user-mode-linux package, or set modules_dir in the host or default_modules in "
               "mln.conf)")
        if named:
            raise MlnError(why)
        ctx.log(f"warning: host {host.name}: {why}; the guest gets none")   # its kernel may need none
        return
    for v in versions:
        size = guest.copy_tree(os.path.join(src, v), f"/lib/modules/{v}")
        ctx.debug(f"host {host.name}: copied {size} bytes of modules to /lib/modules/{v}")


@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    if disk.format != "raw":
        raise MlnError(f"UML boots raw disks, not {disk.format}")
    data = {"kernel": _kernel(host, ctx), "memory_mb": max(16, host.memory // 2**20)}
    base = disk.extra.get("cow_base")
    if base:
        # the individualized copy becomes a COW file over the shared base; the header
        # names the base where it will be once the build is renamed into place
        final_base = os.path.join(ctx.store.project_dir(host.project), base)
        cow_rel = os.path.join("images", f"{host.name}.cow")
        raw = ctx.path(disk.path)
        stored = write_cow(raw, ctx.path(base), ctx.path(cow_rel), backing_name=final_base)
        os.unlink(raw)
        ctx.debug(f"host {host.name}: {stored} sectors in its COW file over {base}")
        data["cow"] = cow_rel
    return data


def _paths(host, ctx, create=False):
    d = runtime_dir(ctx, "uml", host.name, create=create)
    umid = host.fqname
    return d, umid, os.path.join(d, umid, "mconsole")


def backend_kernel(host, ctx) -> str:
    """The UML binary the host was built with (its build recorded it)."""
    return ctx.host_state(host).get("backend", {}).get("kernel") or _kernel(host, ctx)


def command_line(host, ctx) -> list[str]:
    """The UML command line for ``host`` (switches must be up: it attaches the NICs)."""
    backend = ctx.host_state(host).get("backend", {})
    disk = ctx.disk(host)
    d, umid, _ = _paths(host, ctx)
    kernel = backend_kernel(host, ctx)
    if backend.get("cow"):
        argv = [kernel, f"ubd0={ctx.path(backend['cow'])},{ctx.path(disk.extra['cow_base'])}"]
    else:
        argv = [kernel, f"ubd0={disk.path}"]
    if disk.extra.get("swap"):
        argv.append(f"ubd1={ctx.path(disk.extra['swap'])}")
    for n, m in enumerate(host.mounts):
        if m.fstype != "hostfs":
            argv.append(f"ubd{n + 2}={m.source}")
    argv += ["root=/dev/ubda", "rw", f"mem={backend.get('memory_mb', host.memory // 2**20)}M",
             f"umid={umid}", f"uml_dir={d}", "con=null", "con0=fd:3,fd:1", "quiet"]
    from . import umlprobe  # imported when used: mln check needs no probe
    drivers = umlprobe.inspect(kernel, boot=False, machine=ctx.on(host))["drivers"]
    for i in host.interfaces:
        mac = i.mac or mac_address("fe:fd:00", host.project, host.name, i.name)
        if slirp_value(i) is not None:
            why = _no_slirp(host)
            if why:
                raise MlnError(f"{i.name}: {why}")
            argv.append(_nic(i.name, Attachment("slirp"), mac, drivers, kernel))
            continue
        if tun.name(i):
            argv.append(_nic(i.name, Attachment("tap", tap=tun.up(ctx.on(host), host, i)), mac, drivers, kernel))
            continue
        if i.switch and i.switch.startswith("/"):
            att = Attachment("vde", socket=i.switch)
        else:
            att = ctx.attachment(host, i) if i.switch else None
        if att is None:
            continue
        if att.kind not in ("vde", "tap"):
            raise MlnError(f"{i.name}: UML cannot join a switch of kind {att.kind}")
        argv.append(_nic(i.name, att, mac, drivers, kernel))
    return argv


def _nic(name: str, att: Attachment, mac: str, drivers: list[str], kernel: str) -> str:
    """The UML argument that plugs NIC ``name`` into ``att`` with the driver the binary has."""
    if "eth" in drivers:
        if att.kind == "slirp":
            return f"{name}=vde,slirp://,{mac}"
        if att.kind == "vde":
            return f"{name}=vde,{att.socket},{mac}"
        return f"{name}=tuntap,{att.tap},{mac}"
    if "vec" in drivers:
        if not _eth_number(name):
            raise MlnError(f"{name}: the UML {kernel} has only the vector network driver, which numbers "
                           "interfaces: name it ethN")
        if att.kind in ("vde", "slirp"):
            vnl = "slirp://" if att.kind == "slirp" else f"vde://{att.socket}"
            return f"vec{name[3:]}:transport=vde,vnl={vnl},mac={mac}"
        return f"vec{name[3:]}:transport=tap,ifname={att.tap},mac={mac}"
    raise MlnError(f"{name}: the UML {kernel} has no network driver mln knows (neither ethN= nor vecN:)")


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    why = _cannot_run(backend_kernel(host, ctx), m)
    if why:
        raise MlnError(why)
    hdir = ctx.host_dir(host)
    d, umid, sock = _paths(host, ctx, create=True)
    if os.path.exists(sock) or m.alive(m.read_pid(os.path.join(hdir, "pid"))):
        if _mconsole(m, sock, "version") is not None:
            raise MlnError("is already running")
        _cleanup(host, ctx)
    from . import umlprobe      # imported when used: mln check needs no probe
    try:
        argv = umlprobe.fixed_layout(m) + command_line(host, ctx)
    except MlnError:
        _undo_start(host, ctx)          # the taps command_line made for tun_iface go again
        raise
    nice = host.tree.get("nice") if host.tree is not None else None
    if nice:
        argv = ["nice", "-n", nice] + argv
    log = os.path.join(hdir, "console.log")
    with open(os.path.join(hdir, "console.start"), "w") as f:     # where this run's output begins
        f.write(f"{os.path.getsize(log) if os.path.exists(log) else 0}\n")
    with open(os.path.join(hdir, "cmdline"), "w") as f:
        f.write(shlex.join(argv) + "\n")
    # The console reads keystrokes from a named pipe (mln console writes them; opened
    # read-write, so the guest never sees end-of-file) and writes to the log.
    fifo = _console_input(host, ctx)
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    # Start it detached, so the guest is not our child; its fd 3 is the pipe.
    pid = m.start_detached(argv, stdin="/dev/null", stdout=log, append=True, fds={3: fifo})
    with open(os.path.join(hdir, "pid"), "w") as f:
        f.write(f"{pid}\n")
    # a guest that cannot start (bad disk, kernel) dies within moments; do not wait for
    # the boot itself (status tells when it runs)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        if not m.alive(pid):
            crash = _crash(m, hdir)
            _undo_start(host, ctx)
            raise MlnError(f"UML exited at once{': ' + crash if crash else ''}; the end of {log}:\n{_tail(log)}")
        time.sleep(0.05)
    return True


def _undo_start(host, ctx) -> None:
    """After a failed start: detach the interfaces and remove the runtime files (the pid
    file stays, so that status tells how the guest died)."""
    for i in host.interfaces:
        try:
            ctx.detach(host, i)
        except Exception:   # cleanup must not hide the error being reported
            pass
    try:
        tun.down(ctx.on(host), host)
    except Exception:       # the same
        pass
    shutil.rmtree(_paths(host, ctx)[0], ignore_errors=True)


def _console_input(host, ctx) -> str:
    return os.path.join(_paths(host, ctx)[0], "console.in")


@hookimpl
def mln_console(host, ctx):
    if not _mine(host):
        return None
    fifo = _console_input(host, ctx)
    return {"input": fifo, "log": ctx.path("hosts", host.name, "console.log")} if os.path.exists(fifo) else None


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except FileNotFoundError:
        return "(no console output)"


def _mconsole(machine, sock: str, command: str, timeout: float = 5) -> str | None:
    if not os.path.exists(sock):
        return None
    try:       # its error output is not used
        r = machine.run(["uml_mconsole", sock, command], check=False, text=True, timeout=timeout)
    except (OSError, MlnError):       # not installed, or no answer in time
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.startswith("OK") else None


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    pid = m.read_pid(os.path.join(ctx.path("hosts", host.name), "pid"))
    if m.alive(pid):
        return "up"
    if pid is not None:          # it ran and nobody stopped it: did it crash?
        crash = _crash(m, ctx.path("hosts", host.name))
        if crash:
            return f"down: crashed: {crash}"
    return "down"


def _crash(machine, hdir: str) -> str | None:
    """How the guest's kernel died in its last run, from its console (None if it did not)."""
    log = os.path.join(hdir, "console.log")
    begin = machine.read_pid(os.path.join(hdir, "console.start")) or 0     # a number, like a pid file
    try:
        with open(log, "rb") as f:
            f.seek(max(begin, os.path.getsize(log) - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    from . import umlprobe  # imported when used: mln check needs no probe
    lines = umlprobe.crash_lines(text)
    if not any("Kernel panic" in line for line in lines):
        return None
    why = umlprobe.cause(text)
    panic = next(line for line in reversed(lines) if "Kernel panic" in line)
    said = "; ".join(dict.fromkeys([x for x in lines if "Kernel panic" not in x][-2:] + [panic]))
    return f"{said}" + (f" ({why}; {umlprobe.remedy()})" if why else "")


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    m = ctx.on(host)
    d, umid, sock = _paths(host, ctx)
    pidfile = os.path.join(ctx.path("hosts", host.name), "pid")
    if hard:
        if _mconsole(m, sock, "halt") is None or m.alive(m.read_pid(pidfile)):
            m.kill_and_wait(m.read_pid(pidfile), timeout=3)
        _cleanup(host, ctx)
    elif _mconsole(m, sock, "cad") is None:
        m.kill_and_wait(m.read_pid(pidfile))
        _cleanup(host, ctx)
    return True


@hookimpl
def mln_host_stopped(host, ctx):
    if _mine(host):
        _cleanup(host, ctx)


def _cleanup(host, ctx) -> None:
    d, umid, sock = _paths(host, ctx)
    tun.down(ctx.on(host), host)
    shutil.rmtree(d, ignore_errors=True)
    try:
        os.unlink(os.path.join(ctx.path("hosts", host.name), "pid"))
    except FileNotFoundError:
        pass


@hookimpl
def mln_remove_host(host, ctx):
    if _mine(host) and ctx.project_dir:
        _cleanup(host, ctx)
