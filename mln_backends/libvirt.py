"""Hypervisor backend ``libvirt`` (``hypervisor libvirt``): QEMU guests run by libvirtd.

* The connection is mln.conf's ``libvirt_uri``, default ``qemu:///system``
  (``qemu:///system?socket=/path/libvirt-sock`` for a libvirtd with its own socket). A URI
  that names another machine (``qemu+ssh://sh2/system``; the ``libvirt`` server transport
  sets one) makes the disks here and sends them into a storage pool there, and makes the
  project's switches libvirt networks there (``libvirt_remote``).
* Each host is a persistent domain ``<host>.<project>-<hash>`` (the hash is of the project
  directory), defined at ``mln start`` from the host model (see ``libvirt_domain``) and
  undefined by ``mln remove``. Domain type ``qemu`` (TCG), or ``kvm`` where KVM really works
  (``accel auto|kvm|tcg`` in the host, else mln.conf's ``qemu_accel``, as for the ``qemu``
  backend). ``hosts/<host>/libvirt.json`` records the URI and domain of the last start.
* The disk is the ``file`` storage's qcow2 overlay over the template (or an LVM volume);
  a bare-filesystem template boots its kernel directly, as with ``qemu``.
* NICs: a tap on the project switch's Linux bridge (``ethernet`` interface with
  ``managed='no'``: the ``bridge`` switch plugin makes the tap, libvirt opens it); a switch
  without a ``type`` that has libvirt hosts is made a bridge. ``bridge NAME`` in a network
  block puts the NIC on an existing bridge (libvirt makes that tap). libvirt has no VDE
  interface: ``mln check`` refuses libvirt hosts on vde switches and hubs.
* The serial console is the socket ``console.sock`` in the runtime directory (``mln
  console``), logged to ``hosts/<host>/console.log`` by virtlogd.
* ``mln stop``: an ACPI shutdown; the core destroys the domain when the wait is over.
  ``mln stop -S``: ``managedSave``; the next start resumes it.
* ``mln upgrade`` moving a running host to another server: libvirt's own peer-to-peer
  live migration (``libvirt_migrate``; mln.conf ``libvirt_migrate_uri`` on the server it
  goes to).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil

from mln_core import hookimpl
from mln_core.errors import MlnError, Problem

from . import bridges, libvirt_domain as dom_xml, libvirt_migrate, libvirt_remote as remote
from .runtime import runtime_dir

NAME = "libvirt"
STATE_FILE = "libvirt.json"


@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor(NAME, (NAME,), "QEMU guests run by libvirtd (mln.conf: libvirt_uri)",
                        disk_formats=("qcow2", "raw"), nic_kinds=())


def _mine(host) -> bool:
    return host.hypervisor == NAME


# -- check ---------------------------------------------------------------------------------------

def _pos(host, key: str):
    line = host.tree.line(key) if host.tree is not None else None
    return line.pos if line is not None else (host.tree.pos if host.tree is not None else f"host {host.name}")


@hookimpl
def mln_validate(project, ctx):
    out: list[Problem] = []
    for host in project.hosts.values():
        if not _mine(host):
            continue

        def err(msg, where, host=host):
            out.append(Problem("error", f"host {host.name}: {msg}", where))
        for i in host.interfaces:
            line = i.tree.line("switch") if i.tree is not None else None
            where = line.pos if line is not None else _pos(host, "network")
            if i.index > dom_xml.MAX_NIC_INDEX:
                err(f"{i.name}: libvirt hosts have interfaces eth0 to eth{dom_xml.MAX_NIC_INDEX} only", where)
            if i.switch and i.switch.startswith("/"):
                err(f"{i.name}: libvirt guests cannot join the vde socket {i.switch} (libvirt has no VDE "
                    "interface); use a project switch", where)
            elif i.switch and i.switch in project.switches:
                kind = project.switches[i.switch].explicit_kind()
                if kind not in (None, bridges.KIND):
                    err(f"{i.name}: switch '{i.switch}' is of type {kind}, but libvirt guests join Linux "
                        "bridges (libvirt has no VDE interface); remove its type line or write 'type bridge'",
                        where)
        tree = host.tree
        accel = tree.get("accel") if tree is not None else None
        if accel is not None and accel not in ("auto", "kvm", "tcg"):
            err(f"accel must be auto, kvm or tcg, not '{accel}'", _pos(host, "accel"))
        n = 1 + bool(host.swap) + len([m for m in host.mounts if m.fstype != "hostfs"])
        if n > dom_xml.MAX_DISKS:
            err(f"libvirt hosts have at most {dom_xml.MAX_DISKS} disks (root, swap and mounts), not {n}",
                _pos(host, "mount"))
        for m in host.mounts:
            if m.fstype == "hostfs":
                err(f"mount {m.mountpoint}: hostfs exists only for UML guests", _pos(host, "mount"))
            elif _remote(ctx):
                err(f"mount {m.mountpoint}: the disks of mounts are not sent to a remote libvirtd "
                    f"({dom_xml.uri(ctx)}) yet", _pos(host, "mount"))
    return out


def _remote(ctx) -> bool:
    config = getattr(ctx, "config", None)
    return config is not None and remote.is_remote(dom_xml.uri(ctx))


@hookimpl
def mln_runnable(host, ctx):
    if not _mine(host):
        return None
    try:
        dom_xml.connect(dom_xml.uri(ctx))
    except MlnError as e:
        return e.message
    return None


# -- switches: a plain switch with libvirt hosts on it is a Linux bridge ------------------------------

@hookimpl(tryfirst=True)
def mln_build_switch(switch, ctx):
    project = ctx.project
    if project is None or switch.explicit_kind() not in (None, bridges.KIND):
        return None
    if not any(h in project.hosts and _mine(project.hosts[h]) for h, _ in switch.members):
        return None
    if _remote(ctx):                    # a libvirt network there (libvirt_remote)
        if ctx.span(switch):
            raise MlnError("a switch of a remote libvirtd cannot be joined to other servers yet",
                           f"switch {switch.name}")
        network, bridge = remote.network_names(switch, ctx)
        return {"kind": remote.NETWORK_KIND, "network": network, "bridge": bridge, "uri": dom_xml.uri(ctx)}
    if switch.explicit_kind() is not None:
        return None
    return bridges.record(switch, **{"for": NAME})


def _network(switch, ctx) -> dict | None:
    st = ctx.switch_state(switch)
    return st if st.get("kind") == remote.NETWORK_KIND else None


@hookimpl
def mln_start_switch(switch, ctx):
    st = _network(switch, ctx)
    if st is None:
        return None
    remote.start_network(_uri(ctx, st.get("uri")), st["network"], st["bridge"])
    return True


@hookimpl
def mln_stop_switch(switch, ctx):
    st = _network(switch, ctx)
    if st is None:
        return None
    remote.stop_network(_uri(ctx, st.get("uri")), st["network"])
    return True


@hookimpl
def mln_switch_status(switch, ctx):
    st = _network(switch, ctx)
    if st is None:
        return None
    return "up" if remote.network_up(_uri(ctx, st.get("uri")), st["network"]) else "down"


@hookimpl
def mln_switch_attachment(switch, host, interface, ctx):
    st = _network(switch, ctx)
    if st is None:
        return None
    from mln_core.model import Attachment
    return Attachment("network", network=st["network"], bridge=st["bridge"])


@hookimpl
def mln_remove_switch(switch, ctx):
    st = _network(switch, ctx)
    if st is not None:
        remote.stop_network(_uri(ctx, st.get("uri")), st["network"])


# -- build ---------------------------------------------------------------------------------------

@hookimpl
def mln_guest_devices(host, ctx):
    if not _mine(host):
        return None
    first = "c" if host.swap else "b"
    disks = [m for m in host.mounts if m.fstype != "hostfs"]
    return {"root": dom_xml.root_device(host, ctx), "swap": "/dev/vdb",
            "extra": [f"/dev/vd{chr(ord(first) + n)}" for n in range(len(disks))], "console": "ttyS0"}


def _domain_type(host, ctx) -> str:
    want = host.tree.get("accel") if host.tree is not None else None
    want = want or ctx.config.get("qemu_accel") or "auto"
    if want not in ("auto", "kvm", "tcg"):
        raise MlnError(f"accel must be auto, kvm or tcg, not '{want}'")
    if want == "auto":
        want = "kvm" if dom_xml.kvm_usable(ctx.on(host)) else "tcg"
    return "kvm" if want == "kvm" else "qemu"


@hookimpl
def mln_build_host(host, disk, ctx):
    if not _mine(host):
        return None
    from . import imagefs, qemu_live
    dom_xml.binding()
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
    dom_xml.disks(host, ctx, disk)         # at most six
    extra = host.tree.get("extra") if host.tree is not None else None
    root = dom_xml.root_device(host, ctx)
    out = {
        "domain_type": None, "memory_mb": qemu_live.memory_mb(host), "vcpus": int(vcpus),
        "kernel": os.path.abspath(kernel) if kernel else None,
        "initrd": os.path.abspath(initrd) if initrd else None,
        "append": " ".join(x for x in (f"console=ttyS0 root={root} rw", extra) if x) if kernel else None,
    }
    if not _remote(ctx):
        out["domain_type"] = _domain_type(host, ctx)
        return out
    u = dom_xml.uri(ctx)                   # the disks go there now (libvirt_remote)
    kept = _remote_record(host, ctx)       # mln upgrade regenerating the configuration: the disk there stays
    want = host.tree.get("accel") if host.tree is not None else None
    want = want or ctx.config.get("qemu_accel") or "auto"
    out["domain_type"] = remote.domain_type(u, want)
    swap = ctx.path(disk.extra["swap"]) if disk.extra.get("swap") else None
    if kept is not None:                   # the same volume, reached by the URI of now
        out["remote"] = dict(kept, uri=u)
        return out
    name = dom_xml.domain_name(host, ctx, ctx.store.project_dir(host.project) if ctx.store else None)
    out["remote"] = remote.upload_host(host, ctx, u, ctx.path(disk.path), swap, template.path, out["kernel"],
                                       out["initrd"], name)
    out["remote"]["uri"] = u
    return out


@hookimpl(tryfirst=True)
def mln_copy_disk(host, disk, ctx):
    """A disk in a remote libvirtd's pool is not copied (the one built here is not the guest's
    any more): an error rather than a copy of the wrong disk."""
    rec = _remote_record(host, ctx) if _mine(host) else None
    if rec is not None:
        raise MlnError("its disk is a volume in the pool of a remote libvirtd, which mln cannot copy yet; "
                       "change the host so that its disk is made afresh, or rebuild it (mln build -r)")
    return None


# -- run -----------------------------------------------------------------------------------------

def _record_path(host, ctx) -> str:
    return ctx.path("hosts", host.name, STATE_FILE)


def _uri(ctx, stored: str | None) -> str:
    """The URI as mln.conf (a server line) says it now, not as a build or start stored it (a
    key rotated, another known_hosts, the projects directory moved); the stored one only when
    the configuration of now names no remote libvirtd and the stored one does."""
    u = dom_xml.uri(ctx)
    return stored if stored and remote.is_remote(stored) and not remote.is_remote(u) else u


def _where(host, ctx) -> tuple[str, str]:
    """(URI, domain name): the domain as the last start recorded it (at the URI of now), else
    as it would be now."""
    try:
        with open(_record_path(host, ctx)) as f:
            rec = json.load(f)
        if isinstance(rec, dict) and isinstance(rec.get("uri"), str) and isinstance(rec.get("domain"), str):
            return _uri(ctx, rec["uri"]), rec["domain"]
    except (OSError, ValueError):
        pass
    return dom_xml.uri(ctx), dom_xml.domain_name(host, ctx)


def _lookup(host, ctx, record: bool = True):
    """(libvirt module, connection, domain or None)."""
    lv = dom_xml.binding()
    u, name = _where(host, ctx) if record else (dom_xml.uri(ctx), dom_xml.domain_name(host, ctx))
    try:
        conn = dom_xml.connect(u)
    except MlnError as e:
        raise MlnError(e.message, e.where or f"host {host.name}") from None
    try:
        return lv, conn, conn.lookupByName(name)
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
            return lv, conn, None
        raise MlnError(f"libvirt at {u}: {dom_xml.message(e)}", f"host {host.name}") from None


def _runtime(host, ctx, create: bool = False) -> str:
    return runtime_dir(ctx, NAME, host.name, create=create)


def _console_socket(host, ctx) -> str:
    return os.path.join(_runtime(host, ctx), "console.sock")


@hookimpl
def mln_start_host(host, ctx):
    if not _mine(host):
        return None
    lv, conn, dom = _lookup(host, ctx, record=False)
    u, name = dom_xml.uri(ctx), dom_xml.domain_name(host, ctx)
    if dom is not None and dom.isActive():
        raise MlnError("is already running")
    saved = dom is not None and bool(dom.hasManagedSaveImage(0))
    log = ctx.path("hosts", host.name, "console.log")
    rec = _remote_record(host, ctx)
    try:
        if rec is not None:                 # its volumes there, the shared ones sent again if they went
            remote.ready(host, ctx, u, rec, ctx.on(host), name)
            rec = dict(rec, log=remote.console_log(rec, name))
            if not saved:
                remote.forget_log(ctx, u, rec, name)
        _runtime(host, ctx, create=True)    # libvirtd makes the console socket there, and hands it to QEMU
        xml = dom_xml.domain_xml(host, ctx, name, ctx.host_state(host).get("backend", {}),
                                 _console_socket(host, ctx), rec["log"] if rec else log,   # makes the taps
                                 uuid=dom.UUIDString() if dom is not None else None, remote=rec)
        with open(ctx.path("hosts", host.name, "domain.xml"), "w") as f:
            f.write(xml)
        with open(_record_path(host, ctx), "w") as f:      # before libvirt has anything of it
            json.dump({"uri": u, "domain": name}, f)
            f.write("\n")
        if not saved:                       # a cold start: the definition as the project says now
            with open(log, "w"):
                pass
            dom = conn.defineXML(xml)
        dom.create()                        # resumes the managed save image if there is one
    except lv.libvirtError as e:
        _undo_start(host, ctx)
        kept = "; its saved state is kept (libvirt's managed save image)" if saved else ""
        raise MlnError(f"libvirt did not start domain {name}: {dom_xml.message(e)}{kept}") from None
    except (MlnError, OSError):
        _undo_start(host, ctx)
        raise
    return True


def _remote_record(host, ctx) -> dict | None:
    """The host's volumes on a remote libvirtd, as its build recorded them (None: local)."""
    rec = (ctx.host_state(host).get("backend") or {}).get("remote")
    return rec if isinstance(rec, dict) and rec.get("disk") else None


def _undo_start(host, ctx) -> None:
    for i in host.interfaces:
        with contextlib.suppress(Exception):     # cleanup must not hide the error being reported
            ctx.detach(host, i)
    shutil.rmtree(_runtime(host, ctx), ignore_errors=True)


STATES = {1: "up", 2: "up: blocked", 3: "up: paused", 4: "up: shutting down", 7: "up: suspended (guest PM)"}


@hookimpl
def mln_host_status(host, ctx):
    if not _mine(host):
        return None
    if not os.path.exists(_record_path(host, ctx)):
        return "down"                   # never started: libvirt has no domain of it
    lv, conn, dom = _lookup(host, ctx)
    if dom is None:
        return "down"
    try:
        state, reason = dom.state()
        if state == lv.VIR_DOMAIN_SHUTOFF:
            return "down: saved" if dom.hasManagedSaveImage(0) else "down"
        if state == lv.VIR_DOMAIN_CRASHED:
            return "down: crashed (libvirt says the guest crashed)"
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
            return "down"
        raise MlnError(f"libvirt: {dom_xml.message(e)}", f"host {host.name}") from None
    return STATES.get(state, f"up: state {state}")


@hookimpl
def mln_console(host, ctx):
    if not _mine(host):
        return None
    rec = _remote_record(host, ctx)
    if rec is not None:
        u, name = _where(host, ctx)
        raise MlnError(f"its console is on the libvirtd at {u}, which mln console reaches only through the "
                       f"libvirt server transport: virsh -c '{u}' console {name} (on a terminal)",
                       f"host {host.name}")
    sock = _console_socket(host, ctx)
    return {"socket": sock} if os.path.exists(sock) else None


@hookimpl
def mln_save_host(host, ctx):
    if not _mine(host):
        return None
    lv, conn, dom = _lookup(host, ctx)
    if dom is None or not dom.isActive():
        raise MlnError("cannot save: its domain is not running", f"host {host.name}")
    try:
        dom.managedSave(0)
    except lv.libvirtError as e:
        raise MlnError(f"saving failed: {dom_xml.message(e)}; the host keeps running", f"host {host.name}") \
            from None
    return True


@hookimpl
def mln_stop_host(host, hard, ctx):
    if not _mine(host):
        return None
    lv, conn, dom = _lookup(host, ctx)
    if dom is None:
        return True
    try:
        if hard:
            dom.destroy()
        else:
            dom.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except lv.libvirtError as e:
        if dom.isActive():               # else it went down meanwhile: nothing to do
            if not hard:
                with contextlib.suppress(lv.libvirtError):
                    dom.destroy()
                return True
            raise MlnError(f"libvirt could not destroy domain {dom.name()}: {dom_xml.message(e)}",
                           f"host {host.name}") from None
    return True


@hookimpl
def mln_host_stopped(host, ctx):
    if _mine(host) and ctx.project_dir:
        shutil.rmtree(_runtime(host, ctx), ignore_errors=True)


@hookimpl
def mln_remove_host(host, ctx):
    if not _mine(host) or not ctx.project_dir:
        return
    rec = (ctx.host_state(host).get("backend") or {}).get("remote")
    rec = rec if isinstance(rec, dict) and rec.get("uri") else None
    if rec is not None:                 # mln upgrade -k: the guest's disk is the volume there
        remote.keep_disk(host, ctx, _uri(ctx, rec["uri"]), rec)
    if not os.path.exists(_record_path(host, ctx)):
        shutil.rmtree(_runtime(host, ctx), ignore_errors=True)
        if rec is not None:             # never started: only its volumes are there
            remote.delete_host(ctx, _uri(ctx, rec["uri"]), rec, dom_xml.domain_name(host, ctx))
        return                            # never started: libvirt has nothing of it
    lv, conn, dom = _lookup(host, ctx)
    if dom is not None:
        try:
            if dom.isActive():
                dom.destroy()
            flags = (lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                     | lv.VIR_DOMAIN_UNDEFINE_NVRAM)
            dom.undefineFlags(flags)
        except lv.libvirtError as e:
            if e.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                raise MlnError(f"libvirt could not undefine domain {dom.name()}: {dom_xml.message(e)}",
                               f"host {host.name}") from None
    if rec is not None:
        u, name = _where(host, ctx)
        remote.delete_host(ctx, u, rec, name)
    shutil.rmtree(_runtime(host, ctx), ignore_errors=True)
    for f in (_record_path(host, ctx), ctx.path("hosts", host.name, "domain.xml")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


# -- live migration between servers (mln upgrade, mln_backends.libvirt_migrate) ----------------------

@hookimpl
def mln_live_migration(host, shared, ctx):
    if not _mine(host) or _remote_record(host, ctx) is not None:      # a remote libvirtd's: moved cold
        return None
    return libvirt_migrate.can(host, shared, ctx)


@hookimpl
def mln_migrate_in(host, disk, address, ctx):
    """The domain as it must be here (made the taps), recorded as this server's."""
    if not _mine(host):
        return None
    u, name = dom_xml.uri(ctx), dom_xml.domain_name(host, ctx)
    log = ctx.path("hosts", host.name, "console.log")
    try:
        _runtime(host, ctx, create=True)
        xml = dom_xml.domain_xml(host, ctx, name, ctx.host_state(host).get("backend", {}),
                                 _console_socket(host, ctx), log)
        with open(ctx.path("hosts", host.name, "domain.xml"), "w") as f:
            f.write(xml)
        with open(_record_path(host, ctx), "w") as f:
            json.dump({"uri": u, "domain": name}, f)
            f.write("\n")
        with open(log, "w"):
            pass
        return libvirt_migrate.incoming(ctx, address, name, xml, bool((disk.extra or {}).get("shared")))
    except (MlnError, OSError):
        _undo_start(host, ctx)
        raise


@hookimpl
def mln_migrate_out(host, incoming, ctx):
    if not _mine(host):
        return None
    lv, conn, dom = _lookup(host, ctx)
    if dom is None or not dom.isActive():
        raise MlnError("cannot move it live: its domain is not running", f"host {host.name}")
    from mln_core.move import shared_disk
    shared = shared_disk(ctx.host_state(host).get("disk") or {}, ctx.config, ctx.project_dir) is not None
    return libvirt_migrate.send(ctx.on(host), dom, incoming, host.fqname, shared)


@hookimpl
def mln_migrate_done(host, ctx):
    if not _mine(host):
        return None
    lv, conn, dom = _lookup(host, ctx)
    if dom is not None:
        libvirt_migrate.arrived(lv, dom)
    return True


# -- mln doctor ------------------------------------------------------------------------------------

@hookimpl
def mln_doctor(ctx):
    u = dom_xml.uri(ctx)
    found = {"name": "libvirt", "ok": False, "hypervisor": NAME, "remedy": ""}
    try:
        conn = dom_xml.connect(u)
    except dom_xml.BindingMissing as e:
        return [dict(found, detail=e.message, remedy="apt-get install python3-libvirt")]
    except MlnError as e:
        return [dict(found, detail=e.message, remedy="apt-get install libvirt-daemon-system "
                     "libvirt-daemon-driver-qemu and start libvirtd, or set libvirt_uri in mln.conf")]
    v = conn.getLibVersion()
    if not dom_xml.can_run(conn, "qemu"):
        return [dict(found, detail=f"libvirt at {u} cannot run x86_64 QEMU domains",
                     remedy="apt-get install libvirt-daemon-driver-qemu qemu-system-x86")]
    accel = ("KVM" if dom_xml.kvm_usable(ctx.on()) and dom_xml.can_run(conn, "kvm") else
             "TCG only (no usable KVM: guests run emulated)")
    return [dict(found, ok=True, detail=f"libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000} at {u}; "
                 f"domain type: {accel}")]
