"""A libvirtd on another machine (``libvirt_uri`` names one, as ``qemu+ssh://sh2/system``
does): the ``libvirt`` backend's disks, kernels, consoles and switches there. A helper
module of the backend, not a plugin; nothing of mln runs on that machine.

* Disks are made and individualized here as for a local libvirtd (the ``file`` storage's
  qcow2 overlay), then uploaded through libvirt's volume upload stream into a storage pool
  there: a ``dir`` pool, mln.conf ``libvirt_pool`` (default ``mln``), defined at
  ``libvirt_pool_path`` (default ``/var/lib/libvirt/images/mln``) and started when missing.
  The template goes once, as a qcow2 volume named by its SHA-256 (``mln-shared-<sha>.qcow2``,
  shared by every host of that template); the host's overlay, rebased onto that volume's
  path there (``qemu-img rebase -u``), as ``<domain>.<build>.qcow2``; a swap disk as
  ``<domain>.<build>.swap``; a bare-filesystem template's kernel and initrd as
  ``mln-shared-<sha>-kernel`` and ``-initrd``.
* The serial console is a pty there, logged by its virtlogd into the pool
  (``<domain>.console.log``; read it with ``virsh vol-download``).
* Project switches are libvirt networks there (:func:`network_names`): isolated (no
  forward mode, no address: no dnsmasq, no firewall rules), each on a bridge of its own,
  defined and started by ``mln start``, destroyed and undefined by ``mln stop`` and
  ``mln remove``.
* ``mln remove`` deletes the host's volumes; the shared ones go when no other volume is
  left in the pool (so a template another host still uses stays).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import threading
from urllib.parse import urlsplit

from mln_core.errors import MlnError

from . import libvirt_domain as dom_xml
from .runtime import digest

DEFAULT_POOL = "mln"
DEFAULT_POOL_PATH = "/var/lib/libvirt/images/mln"
SHARED = "mln-shared-"
NETWORK_KIND = "libvirt_network"
SWAP_HEAD = 1 << 20             # the bytes of a fresh swap disk that are not zeros (mkswap's header)

_lock = threading.Lock()          # one upload of a shared volume at a time
_sums: dict[tuple, str] = {}
_told: set[tuple] = set()          # pools whose other directory was reported


def owned(domain: str, disks_only: bool = False) -> re.Pattern:
    """The names of ``domain``'s own volumes: ``<domain>.<build>.qcow2`` and ``.swap`` (the
    build: 8 hex digits), and (not ``disks_only``) its console log and virtlogd's rotated
    ones (``<domain>.console.log``, ``.console.log.N``). Exact: a project name may hold dots."""
    logs = "" if disks_only else r"|console\.log(\.\d+)?"
    return re.compile(rf"^{re.escape(domain)}\.([0-9a-f]{{8}}\.(qcow2|swap){logs})$")


def is_remote(uri: str) -> bool:
    """``uri`` names a libvirtd on another machine (a host name, and not the unix transport)."""
    try:
        p = urlsplit(uri)
        host = p.hostname
    except ValueError:
        return False
    return bool(host) and p.scheme.partition("+")[2] != "unix"


def _fail(e, what: str, uri: str) -> MlnError:
    return MlnError(f"libvirt at {uri}: {what}: {dom_xml.message(e)}")


# -- the pool -------------------------------------------------------------------------------------

def pool(conn, ctx, uri: str, create: bool = True, name: str | None = None):
    """(pool, its directory there) of ``name`` (default mln.conf's ``libvirt_pool``), defined,
    built and started when missing (``create``; undefined again if that fails); (None, None)
    when it is missing and not ``create``."""
    lv = dom_xml.binding()
    name = name or (ctx.config.get("libvirt_pool") or DEFAULT_POOL).strip()
    path = (ctx.config.get("libvirt_pool_path") or DEFAULT_POOL_PATH).strip().rstrip("/") or "/"
    made = None
    try:
        try:
            p = conn.storagePoolLookupByName(name)
        except lv.libvirtError as e:
            if e.get_error_code() != lv.VIR_ERR_NO_STORAGE_POOL:
                raise
            if not create:
                return None, None
            with _lock:
                try:
                    p = conn.storagePoolLookupByName(name)
                except lv.libvirtError:
                    xml = (f"<pool type='dir'><name>{dom_xml._text(name)}</name>"
                           f"<target><path>{dom_xml._text(path)}</path></target></pool>")
                    p = made = conn.storagePoolDefineXML(xml, 0)
                    p.build(0)
                    ctx.log(f"+---> defined libvirt storage pool {name} ({path}) there")
        if not p.isActive():
            with _lock:
                if not p.isActive():
                    p.create(0)
        where = pool_path(p)
    except lv.libvirtError as e:
        if made is not None:            # not left defined half made: the next run defines it again
            with contextlib.suppress(lv.libvirtError):
                made.undefine()
        raise _fail(e, f"storage pool {name}", uri) from None
    if where is None:
        raise MlnError(f"libvirt at {uri}: storage pool {name} has no directory (mln needs a 'dir' pool)")
    if ctx.config.get("libvirt_pool_path") and where != path and (uri, name) not in _told:
        _told.add((uri, name))
        ctx.log(f"warning: libvirt storage pool {name} there exists already, at {where}, not at "
                f"libvirt_pool_path {path}; mln uses it where it is (undefine it there to have it moved)")
    return p, where


def pool_path(p) -> str | None:
    """The directory of a ``dir`` pool, from its XML."""
    import xml.etree.ElementTree as ET
    try:
        text = ET.fromstring(p.XMLDesc(0)).findtext("target/path")
    except ET.ParseError:
        return None
    return (text.strip().rstrip("/") or "/") if text and text.strip() else None


def _volume(lv, p, name: str):
    try:
        return p.storageVolLookupByName(name)
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def _refresh(lv, p) -> None:
    with contextlib.suppress(lv.libvirtError):       # busy (another upload): it knows its volumes
        p.refresh(0)


def upload(conn, p, name: str, path: str, length: int | None = None, capacity: int | None = None):
    """A new raw volume ``name`` of ``capacity`` bytes (default: the file's size) holding the
    first ``length`` bytes (default: all) of the file ``path``, sent through libvirt's stream."""
    lv = dom_xml.binding()
    size = os.path.getsize(path)
    length = size if length is None else min(length, size)
    capacity = max(capacity or size, 1)
    vol = p.createXML(f"<volume><name>{dom_xml._text(name)}</name><capacity unit='bytes'>"
                      f"{capacity}</capacity><allocation>0</allocation><target><format type='raw'/></target>"
                      "</volume>", 0)
    stream = None
    try:
        stream = conn.newStream(0)
        vol.upload(stream, 0, length, 0)
        with open(path, "rb") as f:
            left = [length]

            def chunk(_stream, n, fh):
                data = fh.read(min(n, left[0]))
                left[0] -= len(data)
                return data
            stream.sendAll(chunk, f)
        stream.finish()
    except BaseException:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
        with contextlib.suppress(lv.libvirtError):
            vol.delete(0)
        raise
    return vol


def _sha256(path: str) -> str:
    from mln_core.serve import sha256_of
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _sums:
        _sums[key] = sha256_of(path)
    return _sums[key]


def shared_volume(ctx, conn, p, ppath: str, src: str, kind: str, machine) -> str:
    """The path there of the shared volume of ``src`` (a template, kind "template": as qcow2;
    a kernel or initrd: as it is), uploaded if the pool lacks it."""
    lv = dom_xml.binding()
    sha = _sha256(src)
    name = f"{SHARED}{sha[:32]}.qcow2" if kind == "template" else f"{SHARED}{sha[:32]}-{kind}"
    marker = os.path.join(ctx.config.projects_dir, f".upload-{name}")     # an upload under way
    with _lock:
        if _volume(lv, p, name) is None:
            _refresh(lv, p)
        vol = _volume(lv, p, name)
        if vol is not None and os.path.exists(marker):
            pid = machine.read_pid(marker)
            if pid != os.getpid() and machine.alive(pid):
                raise MlnError(f"another mln (pid {pid}) is sending {kind} {os.path.basename(src)} there "
                               "now; try again when it is done")
            vol.delete(0)               # what an upload cut off (mln killed) left: sent again
            vol = None
        if vol is not None:
            return vol.path()
        ctx.log(f"+---> sending {kind} {os.path.basename(src)} ({os.path.getsize(src) // 2**20} MB) into "
                f"libvirt's pool there")
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write(f"{os.getpid()}\n")
        try:                            # (a failed upload deletes its volume; a killed one leaves both)
            with tempfile.TemporaryDirectory(prefix="mln-upload-") as tmp:
                if kind == "template" and not _is_qcow2(src):
                    conv = os.path.join(tmp, name)
                    machine.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, conv],
                                what=f"converting template {os.path.basename(src)}", timeout=None)
                    src = conv
                vol = upload(conn, p, name, src)
        finally:
            os.unlink(marker)
    return vol.path()


def _leftovers(ctx, lv, p, host, domain: str, rec: dict | None = None) -> None:
    """Delete the volumes of ``domain`` that ``rec`` does not record (default: the project as
    it is, which keeps its own until it is replaced): what a build killed while it sent them
    left, or the disk an upgrade made anew replaced."""
    from mln_core.store import Store
    if rec is None:
        try:
            state = Store.read_state(ctx.store.project_dir(host.project))
        except (MlnError, OSError, AttributeError):
            state = {}
        rec = ((state.get("hosts") or {}).get(host.name) or {}).get("backend", {}).get("remote") or {}
    keep, mine = set(rec.get("volumes") or []), owned(domain, disks_only=True)
    _refresh(lv, p)
    for name in p.listVolumes():
        if mine.match(name) and name not in keep:
            with contextlib.suppress(lv.libvirtError):
                p.storageVolLookupByName(name).delete(0)


def _is_qcow2(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"QFI\xfb"


# -- a host's volumes ---------------------------------------------------------------------------

def upload_host(host, ctx, uri: str, disk_path: str, swap: str | None, template: str,
                kernel: str | None, initrd: str | None, domain: str) -> dict:
    """Send the host's disks (and the shared volumes they need) into the pool there; the
    record the backend keeps of them (``{"pool", "path", "volumes", "disk", "swap",
    "kernel", "initrd", "sources"}``)."""
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    machine = ctx.on(host)
    p, ppath = pool(conn, ctx, uri)
    base = f"{domain}.{secrets.token_hex(4)}"
    rec = {"pool": p.name(), "path": ppath, "volumes": [], "sources": {"template": template}}
    try:
        _leftovers(ctx, lv, p, host, domain)
        rec["template"] = shared_volume(ctx, conn, p, ppath, template, "template", machine)
        for kind, src in (("kernel", kernel), ("initrd", initrd)):
            if src:
                rec[kind] = shared_volume(ctx, conn, p, ppath, src, kind, machine)
                rec["sources"][kind] = src
        with tempfile.TemporaryDirectory(prefix="mln-upload-") as tmp:
            top = os.path.join(tmp, "disk.qcow2")
            shutil.copyfile(disk_path, top)
            machine.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", rec["template"], "-F", "qcow2",
                         top], what="rebasing its disk onto the template volume there")
            name = f"{base}.qcow2"
            rec["volumes"].append(name)
            rec["disk"] = upload(conn, p, name, top).path()
            machine.step(f"libvirt volume {name} sent")      # (where tests fail or kill mln)
        if swap:
            name = f"{base}.swap"
            rec["volumes"].append(name)
            rec["swap"] = upload(conn, p, name, swap, length=SWAP_HEAD).path()
    except lv.libvirtError as e:
        delete_host(ctx, uri, rec, None)
        raise _fail(e, f"sending the disk of host {host.name}", uri) from None
    except BaseException:
        with contextlib.suppress(Exception):
            delete_host(ctx, uri, rec, None)
        raise
    return rec


def ready(host, ctx, uri: str, rec: dict, machine, domain: str) -> None:
    """Before a start: the pool runs, the host's disk is there, and so are the shared volumes
    it needs (sent again if they went); volumes of the domain that its record does not name
    (an upgrade made its disk anew) go."""
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    p, ppath = pool(conn, ctx, uri, name=rec.get("pool"))        # where its build put them
    try:
        for name in rec.get("volumes", []):
            if _volume(lv, p, name) is None:
                _refresh(lv, p)
                if _volume(lv, p, name) is None:
                    raise MlnError(f"its volume {name} is gone from libvirt's pool {rec['pool']} at {uri}; "
                                   "build the project again (mln build -r)")
        for kind, src in (rec.get("sources") or {}).items():
            want = rec.get(kind)
            if want and _volume(lv, p, os.path.basename(want)) is None:
                if not os.path.isfile(src):
                    raise MlnError(f"its {kind} volume {want} is gone at {uri}, and so is {src} here")
                got = shared_volume(ctx, conn, p, ppath, src, kind, machine)
                if got != want:
                    raise MlnError(f"its {kind} {src} changed since the build; build the project again")
        _leftovers(ctx, lv, p, host, domain, rec)
    except lv.libvirtError as e:
        raise _fail(e, f"host {host.name}'s volumes", uri) from None


def console_log(rec: dict, domain: str) -> str:
    return f"{rec['path']}/{domain}.console.log"


def forget_log(ctx, uri: str, rec: dict, domain: str) -> None:
    """A cold start's console log starts empty: the old one goes."""
    lv = dom_xml.binding()
    p, _ = pool(dom_xml.connect(uri), ctx, uri, create=False, name=rec.get("pool"))
    if p is None:
        return
    _refresh(lv, p)
    logs = re.compile(rf"^{re.escape(domain)}\.console\.log(\.\d+)?$")
    for name in p.listVolumes():
        if logs.match(name):
            with contextlib.suppress(lv.libvirtError):
                p.storageVolLookupByName(name).delete(0)


def delete_host(ctx, uri: str, rec: dict, domain: str | None) -> None:
    """Delete the volumes ``rec`` names and (``domain``) every volume of the domain
    (:func:`owned`: disks of other builds, console logs); then the shared volumes, when no
    other volume is left in the pool."""
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    try:
        p = conn.storagePoolLookupByName(rec["pool"])
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_STORAGE_POOL:
            return
        raise _fail(e, f"storage pool {rec['pool']}", uri) from None
    try:
        if not p.isActive():
            p.create(0)
        _refresh(lv, p)
        names = list(rec.get("volumes", []))
        if domain:                      # every volume of the domain, its rotated console logs too
            mine = owned(domain)
            names += [n for n in p.listVolumes() if mine.match(n) and n not in names]
        for name in names:
            vol = _volume(lv, p, name)
            if vol is not None:
                vol.delete(0)
        left = p.listVolumes()
        if left and all(n.startswith(SHARED) for n in left):
            for n in left:
                with contextlib.suppress(lv.libvirtError):
                    p.storageVolLookupByName(n).delete(0)
    except lv.libvirtError as e:
        raise _fail(e, "deleting volumes", uri) from None


def keep_disk(host, ctx, uri: str, rec: dict) -> None:
    """``mln upgrade -k`` removing the host: the upgrade moved the disk built here into
    ``kept/<host>/`` (its file gone from where the state has it, the copy there), but the
    guest's disk is the volume there: downloaded over that copy, before the volume goes."""
    disk = ctx.host_state(host).get("disk") or {}
    if disk.get("kind") != "file" or not disk.get("path") or not rec.get("disk"):
        return
    src = disk["path"] if os.path.isabs(disk["path"]) else ctx.path(disk["path"])
    kept = ctx.path("kept", host.name, os.path.basename(src))
    if os.path.lexists(src) or not os.path.isfile(kept):
        return                          # not kept: the volume just goes
    try:
        download_disk(uri, rec, kept, ctx.on(host))
    except MlnError as e:
        raise MlnError(f"its disk could not be fetched from libvirt's pool {rec.get('pool')} at {uri} into "
                       f"{kept} ({e.message}); its domain and volumes are left there", f"host {host.name}") \
            from None
    ctx.log(f"+---> {host.name}: its disk there (volume {os.path.basename(rec['disk'])}) fetched into {kept}")


def download_disk(uri: str, rec: dict, dest: str, machine) -> None:
    """The host's disk volume there into ``dest`` (the copy built here, which it replaces),
    through libvirt's volume download stream; its backing file as that copy's (the template
    here, not the shared volume there)."""
    import json
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    out = machine.run(["qemu-img", "info", "-U", "--output=json", dest], what=f"reading {dest}").stdout
    info = json.loads(out.decode() if isinstance(out, bytes) else out)
    backing = info.get("backing-filename") or (rec.get("sources") or {}).get("template")
    fmt = info.get("backing-filename-format") or \
        ("qcow2" if backing and os.path.isfile(backing) and _is_qcow2(backing) else "raw")
    name, tmp = os.path.basename(rec["disk"]), f"{dest}.download"
    try:
        p = conn.storagePoolLookupByName(rec["pool"])
        _refresh(lv, p)
        vol, stream = p.storageVolLookupByName(name), conn.newStream(0)
        try:
            vol.download(stream, 0, 0, 0)
            with open(tmp, "wb") as f:
                stream.recvAll(lambda _stream, data, fh: fh.write(data), f)
            stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            raise
        if backing:
            machine.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", fmt, tmp],
                        what="giving the fetched disk its backing file here")
        os.replace(tmp, dest)
    except lv.libvirtError as e:
        raise _fail(e, f"fetching volume {name}", uri) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- switches: libvirt networks there ----------------------------------------------------------------

def network_names(switch, ctx) -> tuple[str, str]:
    """(network, bridge) of a project switch there: both named after the project directory
    and this manager's id too, so that two projects of one name do not share them."""
    key = os.path.realpath(ctx.store.project_dir(switch.project)) if ctx.store is not None else ""
    mid = dom_xml.manager_id(ctx)       # nor two managers' that share that libvirtd
    net = f"mln-{switch.name}.{switch.project}-{digest(key, mid, n=6)}"
    explicit = switch.tree.get("bridge") if switch.tree is not None else None
    return net, explicit or f"mlnb{digest(key, mid, switch.project, switch.name, n=11)}"


def _network(lv, conn, name: str):
    try:
        return conn.networkLookupByName(name)
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_NETWORK:
            return None
        raise


def start_network(uri: str, name: str, bridge: str) -> None:
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    try:
        net = _network(lv, conn, name)
        if net is None:
            net = conn.networkDefineXML(f"<network><name>{dom_xml._text(name)}</name>"
                                        f"<bridge name={dom_xml._a(bridge)} stp='off' delay='0'/></network>")
        if not net.isActive():
            net.create()
    except lv.libvirtError as e:
        raise _fail(e, f"network {name}", uri) from None


def stop_network(uri: str, name: str) -> None:
    """Destroy and undefine the network (gone already: nothing to do)."""
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    try:
        net = _network(lv, conn, name)
        if net is None:
            return
        if net.isActive():
            net.destroy()
        net.undefine()
    except lv.libvirtError as e:
        if e.get_error_code() != lv.VIR_ERR_NO_NETWORK:
            raise _fail(e, f"network {name}", uri) from None


def network_up(uri: str, name: str) -> bool:
    lv = dom_xml.binding()
    try:
        net = _network(lv, dom_xml.connect(uri), name)
        return net is not None and bool(net.isActive())
    except lv.libvirtError as e:
        raise _fail(e, f"network {name}", uri) from None


# -- what the machine there has ---------------------------------------------------------------------

def domain_type(uri: str, want: str) -> str:
    """``kvm`` where that machine has hardware virtualization and libvirt runs KVM there, else
    ``qemu`` (TCG), for ``accel auto``; as asked otherwise."""
    if want != "auto":
        return "kvm" if want == "kvm" else "qemu"
    conn = dom_xml.connect(uri)
    try:
        caps = conn.getCapabilities()
    except Exception:
        return "qemu"
    host = caps.split("</host>", 1)[0]
    hw = re.search(r"<feature name='(vmx|svm)'/>", host) is not None
    return "kvm" if hw and dom_xml.can_run(conn, "kvm") else "qemu"


def node(uri: str, ctx) -> dict:
    """Memory (MB), CPUs and the pool's free disk (MB) of that machine, as libvirt says."""
    lv = dom_xml.binding()
    conn = dom_xml.connect(uri)
    try:
        info = conn.getInfo()
        mem = conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        total = mem.get("total", info[1] * 1024) // 1024
        free = (mem.get("free", 0) + mem.get("buffers", 0) + mem.get("cached", 0)) // 1024
        out = {"memory_total": total, "memory_free": free, "memory_used": total - free, "cpus": info[2]}
        out["disk_free"] = None         # a pool missing or not running: not known (not the manager's)
        with contextlib.suppress(lv.libvirtError):
            p = conn.storagePoolLookupByName((ctx.config.get("libvirt_pool") or DEFAULT_POOL).strip())
            if p.isActive():
                out["disk_free"] = p.info()[3] // 2**20
        return out
    except lv.libvirtError as e:
        raise _fail(e, "node information", uri) from None


# -- the console, through libvirt's stream ------------------------------------------------------------

class StreamConsole:
    """The serial console of a domain there, through ``virDomainOpenConsole``: what
    :mod:`mln_core.console` attaches to (``fd`` to wait on and ``read``, ``send``; ``wfd``
    only says that input can be sent: the stream takes it at once)."""

    def __init__(self, uri: str, domain: str):
        lv = self.lv = dom_xml.binding()
        conn = dom_xml.connect(uri)
        try:
            dom = conn.lookupByName(domain)
            self.stream = conn.newStream(0)
            dom.openConsole(None, self.stream, 0)
        except lv.libvirtError as e:
            raise _fail(e, f"the console of domain {domain}", uri) from None
        self.fd, self._out = os.pipe()
        self._never, self.wfd = os.pipe()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            while True:
                data = self.stream.recv(65536)
                if not isinstance(data, bytes) or not data:
                    break
                os.write(self._out, data)
        except Exception:           # the stream ended (the guest stopped, the link broke)
            pass
        finally:
            os.close(self._out)

    def read(self) -> bytes:
        from mln_core.console import Closed
        data = os.read(self.fd, 65536)
        if not data:
            raise Closed
        return data

    def send(self, data) -> None:
        from mln_core.console import Closed
        data = bytes(data)
        try:
            while data:
                n = self.stream.send(data)
                if n < 0:
                    raise Closed
                data = data[n:]
        except self.lv.libvirtError:
            raise Closed from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.abort()
        for fd in (self.fd, self._never, self.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
