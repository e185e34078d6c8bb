"""The connection and the domain XML of the ``libvirt`` backend: a helper module, not a plugin.

* The binding is libvirt's own (``import libvirt``, Debian package python3-libvirt). When
  mln runs on another Python than the system's (a virtualenv, pyenv) and the module is not
  importable, it is loaded from the system's ``/usr/lib/python3/dist-packages`` if its
  compiled part fits this Python's version.
* The connection URI is mln.conf's ``libvirt_uri``, else ``qemu:///system``
  (``qemu:///system?socket=/path/libvirt-sock`` reaches a libvirtd with its own socket).
  Connections are opened once per URI and process.
* The domain is built from the host model as the ``qemu`` backend builds its command line:
  virtio disks in PCI slots from 0x18 (root, swap, the mounts: /dev/vda, /dev/vdb...), NIC
  ``ethN`` a virtio-net in slot 2 + N (a gap or an interface on no network gets an
  unplugged placeholder NIC, so the guest names them as the project does), the serial
  console on a Unix socket in the runtime directory, logged to ``hosts/<host>/console.log``
  by virtlogd.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

from mln_core.errors import MlnError

from .runtime import digest, mac_address

DEFAULT_URI = "qemu:///system"
SYSTEM_SITE = "/usr/lib/python3/dist-packages"
NIC_SLOT = 0x02
MAX_NIC_INDEX = 21
DISK_SLOT = 0x18
MAX_DISKS = 6
BALLOON_SLOT = 0x1e

HINT = "libvirt_uri in mln.conf names another connection"
PART = "libvirt_server_part"        # (mln_plugins.transport_libvirt) the part of a server line's libvirtd

_conns: dict[str, object] = {}
_hints: dict[str, str] = {}         # URI -> what to check when it cannot be reached
_lock = threading.Lock()


class BindingMissing(MlnError):
    pass


def binding():
    """The ``libvirt`` module; BindingMissing (an MlnError) if it cannot be loaded."""
    try:
        import libvirt
    except ImportError:
        libvirt = _system_binding()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # no "libvirt: error" lines on stderr
    return libvirt


def _system_binding():
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    if not os.path.isfile(os.path.join(SYSTEM_SITE, "libvirt.py")) or \
            not any(n.startswith("libvirtmod.") and tag in n for n in _listdir(SYSTEM_SITE)):
        raise BindingMissing("the Python binding of libvirt is not installed for this Python "
                             f"({sys.executable}): install the Debian package python3-libvirt, or "
                             "'pip install libvirt-python'")
    sys.path.append(SYSTEM_SITE)
    try:
        import libvirt
    except ImportError as e:
        raise BindingMissing(f"the Python binding of libvirt in {SYSTEM_SITE} does not load: {e}") from None
    finally:
        sys.path.remove(SYSTEM_SITE)
    return libvirt


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def uri(ctx) -> str:
    u = (ctx.config.get("libvirt_uri") or DEFAULT_URI).strip()
    server = ctx.config.get(PART)
    if server:                      # the URI of a server line, not mln.conf's libvirt_uri
        _hints[u] = f"check the line of server {server} in mln.conf: its address, user, key and known_hosts"
    return u


def connect(u: str):
    """The (cached) connection to ``u``; MlnError saying why not."""
    lv = binding()
    with _lock:
        conn = _conns.get(u)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except lv.libvirtError:
                pass
        try:
            conn = lv.open(u)
        except lv.libvirtError as e:
            raise MlnError(f"cannot connect to libvirt at {u}: {message(e)} (is libvirtd running? "
                           f"{_hints.get(u, HINT)})") from None
        if not _conns:                     # closed before the interpreter tears libvirt's module down
            import atexit
            atexit.register(_close_all)
        _conns[u] = conn
        return conn


def _close_all() -> None:
    with _lock:
        for conn in _conns.values():
            try:
                conn.close()
            except Exception:
                pass
        _conns.clear()


def message(e) -> str:
    text = e.get_error_message() if hasattr(e, "get_error_message") else str(e)
    return " ".join((text or str(e)).split())


def domain_name(host, ctx, project_dir: str | None = None) -> str:
    """``<host>.<project>-<hash of the project directory>``: readable in ``virsh list``, and
    two projects of one name in two projects directories do not share a domain
    (``project_dir``: the one the project will have, during a build). On a remote libvirtd
    the hash is of this manager's id too (:func:`manager_id`)."""
    from .libvirt_remote import is_remote
    key = [os.path.realpath(project_dir or ctx.project_dir)]
    if is_remote(uri(ctx)):
        key.append(manager_id(ctx))
    return f"{host.fqname}-{digest(*key, n=6)}"


def manager_id(ctx) -> str:
    """A random id of this manager, made once (``<projects>/.manager-id``, mode 0600; for a
    ``libvirt`` server line ``<projects>/.server-<NAME>/.manager-id``): in the names of the
    domains and networks it makes on a remote libvirtd, so that two managers sharing that
    libvirtd (the same projects directory and project names) never take each other's."""
    import secrets
    path = os.path.join(ctx.config.projects_dir, ".manager-id")
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        text = f.read().strip()
        if text:
            return text
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    try:
        os.link(tmp, path)              # made once: a concurrent mln's stays
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()


def can_run(conn, virttype: str) -> bool:
    """libvirt can run x86_64 domains of ``virttype`` ("qemu": TCG, or "kvm")."""
    try:
        conn.getDomainCapabilities(None, "x86_64", None, virttype, 0)
        return True
    except Exception:
        return False


# -- what the guest sees (as with the qemu backend, which a plugin does not import) -------------

def kvm_usable(machine) -> bool:
    """KVM works for ordinary guests only with hardware virtualization behind /dev/kvm."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    flags = " " + machine.cpu()[1]
    return " vmx" in flags or " svm" in flags


def root_device(host, ctx) -> str:
    """/dev/vda, or the partition of a whole-disk raw template that mln individualizes."""
    from . import imagefs
    try:
        template = ctx.templates.resolve(host.template, f"host {host.name}")
        if imagefs.is_qcow2(template.path):
            return "/dev/vda"
        from .partitions import root_partition
        part = root_partition(template.path)
    except (MlnError, AttributeError, OSError, TypeError):     # no template (yet): the default
        return "/dev/vda"
    return f"/dev/vda{part.number}" if part else "/dev/vda"


# -- the XML -----------------------------------------------------------------------------------

def _text(value) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _a(value) -> str:
    """An attribute value, quoted (xml.sax.saxutils would import urllib.request and ssl)."""
    return "'" + _text(value).replace("'", "&apos;") + "'"


def _pci(slot: int) -> str:
    return f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>"


def disks(host, ctx, disk) -> list[tuple[str, str]]:
    """(path, format) of the root disk, swap and the mounts' disks, in the guest's order."""
    if "://" in disk.path:
        raise MlnError(f"its {disk.kind} disk {disk.path} is not a file or device of this machine, which is "
                       "all the libvirt backend attaches yet")
    out = [(disk.path, disk.format)]
    if disk.extra.get("swap"):
        out.append((ctx.path(disk.extra["swap"]), "raw"))
    out += [(m.source, "raw") for m in host.mounts if m.fstype != "hostfs"]
    if len(out) > MAX_DISKS:
        raise MlnError(f"libvirt hosts have at most {MAX_DISKS} disks (root, swap and mounts), "
                       f"not {len(out)}")
    return out


def nic_mac(host, i, n: int) -> str:
    name = i.name if i is not None else f"eth{n}"
    return (i.mac if i is not None else None) or mac_address("52:54:00", host.project, host.name, name)


def interfaces(host, ctx) -> list[str]:
    """The <interface> elements: ethN in PCI slot 2 + N; placeholders (user networking with
    the link down: no device on this machine) for gaps and interfaces on no network."""
    if not host.interfaces:
        return []
    top = max(i.index for i in host.interfaces)
    if top > MAX_NIC_INDEX:
        raise MlnError(f"eth{top}: libvirt hosts have interfaces eth0 to eth{MAX_NIC_INDEX} only")
    by_index = {i.index: i for i in host.interfaces}
    out = []
    for n in range(top + 1):
        i = by_index.get(n)
        source = _source(host, ctx, i) if i is not None else None
        if source is None:
            source = "<interface type='user'>", "<link state='down'/>"
        head, tail = source
        out.append(f"{head}<mac address={_a(nic_mac(host, i, n))}/><model type='virtio'/>{tail}"
                   f"<alias name='ua-nic{n}'/>{_pci(NIC_SLOT + n)}</interface>")
    return out


def _source(host, ctx, i) -> tuple[str, str] | None:
    if i.switch and i.switch.startswith("/"):
        raise MlnError(f"{i.name}: a libvirt guest cannot join the vde socket {i.switch}; "
                       "use a project switch")
    att = ctx.attachment(host, i) if i.switch else None
    if att is None and i.bridge:          # an existing bridge of this machine: libvirt makes the tap
        return "<interface type='bridge'>", f"<source bridge={_a(i.bridge)}/>"
    if att is None:
        return None
    if att.kind == "tap":                 # the switch plugin made the tap; libvirt only opens it
        return "<interface type='ethernet'>", f"<target dev={_a(att.tap)} managed='no'/>"
    if att.kind == "network":             # a libvirt network (a remote libvirtd's): libvirt makes the tap
        return "<interface type='network'>", f"<source network={_a(att.network)}/>"
    raise MlnError(f"{i.name}: libvirt guests cannot join a switch of kind {att.kind}; give switch "
                   f"'{i.switch}' 'type bridge'")


def domain_xml(host, ctx, name: str, b: dict, console_sock: str, console_log: str,
               uuid: str | None = None, remote: dict | None = None) -> str:
    """The domain of ``host``; ``b`` is what ``mln_build_host`` recorded; ``uuid``: the one
    of the domain it redefines; ``remote``: its volumes on a remote libvirtd
    (``libvirt_remote``: disk, swap, kernel, initrd; its console is a pty there, logged to
    ``console_log`` there)."""
    devs = []
    if remote is not None:
        found = [(remote["disk"], "qcow2")] + ([(remote["swap"], "raw")] if remote.get("swap") else [])
    else:
        found = disks(host, ctx, ctx.disk(host))
    for k, (path, fmt) in enumerate(found):
        cache = " cache='writeback'" if k == 0 else ""
        devs.append(f"<disk type='file' device='disk'><driver name='qemu' type={_a(fmt)}{cache}/>"
                    f"<source file={_a(path)}/><target dev='vd{chr(ord('a') + k)}' bus='virtio'/>"
                    f"{_pci(DISK_SLOT + k)}</disk>")
    devs += interfaces(host, ctx)
    source = "<serial type='pty'>" if remote is not None else \
        f"<serial type='unix'><source mode='bind' path={_a(console_sock)}/>"
    devs.append(f"{source}<log file={_a(console_log)} append='on'/><target port='0'/></serial>")
    kind = "pty" if remote is not None else "unix"
    devs.append(f"<console type={_a(kind)}><target type='serial' port='0'/></console>")
    devs.append(f"<memballoon model='virtio'>{_pci(BALLOON_SLOT)}</memballoon>")
    devs.append("<controller type='usb' model='none'/>")
    files = remote if remote is not None else b       # a remote libvirtd boots the kernel sent there
    if b.get("kernel"):
        boot = f"<kernel>{_text(files['kernel'])}</kernel>"
        if b.get("initrd"):
            boot += f"<initrd>{_text(files['initrd'])}</initrd>"
        boot += f"<cmdline>{_text(b['append'])}</cmdline>"
    else:
        boot = "<boot dev='hd'/>"
    mem = int(b.get("memory_mb", 128))
    nl = "\n    "
    return (f"<domain type={_a(b.get('domain_type', 'qemu'))}>\n  <name>{_text(name)}</name>\n"
            + (f"  <uuid>{_text(uuid)}</uuid>\n" if uuid else "") +
            f"  <title>{_text(f'mln project {host.project}, host {host.name}')}</title>\n"
            f"  <description>{_text(os.path.realpath(ctx.project_dir))}</description>\n"
            f"  <memory unit='MiB'>{mem}</memory>\n  <currentMemory unit='MiB'>{mem}</currentMemory>\n"
            f"  <vcpu>{int(b.get('vcpus', 1))}</vcpu>\n"
            f"  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>\n"
            "  <features><acpi/></features>\n"
            "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\n"
            f"  <devices>\n    {nl.join(devs)}\n  </devices>\n</domain>\n")
