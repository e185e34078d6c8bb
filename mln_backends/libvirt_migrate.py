"""Live migration of ``libvirt`` guests between servers (``mln upgrade`` moving a running
host); a helper module of the ``libvirt`` backend, not a plugin.

libvirt's own live migration, peer to peer (the source's libvirtd talks to the target's),
with a storage copy of the top layer only (the servers' templates are the same):

* the target (:func:`incoming`, after its upgrade made the host's fresh overlay over the
  template and started its switches, so that its taps exist) writes the domain as it must be
  there (its disk, taps, console socket and log, its domain name) and answers the URI of its
  libvirtd for the source's libvirtd (mln.conf ``libvirt_migrate_uri``, default
  ``qemu+ssh://{address}/system``, ``{address}``: this server's address between the
  servers), the address for the migration data (``tcp://ADDRESS``) and that XML;
* the source (:func:`send`) calls ``virDomainMigrateToURI3`` with ``LIVE | PEER2PEER |
  PERSIST_DEST | NON_SHARED_INC | PAUSED``: libvirt copies the disk's top layer over NBD
  while the guest runs, then its memory; the guest waits paused there, and its definition
  stays here (inactive) until mln removes the host here once every server finished. If
  libvirt fails, the guest runs on here (libvirt resumes it; so does :func:`send`);
* the target lets the guest run once the manager settles the upgrade (:func:`arrived`).

On shared storage (a ``filepath`` directory that both servers list with ``san_path``) only
the memory travels: no ``NON_SHARED_INC``, and ``UNSAFE``, since libvirt cannot tell that
such a directory is shared (and refuses a disk with ``cache='writeback'`` it believes
local); mln's ``san_path`` says it is.
"""
from __future__ import annotations

import ipaddress
import re
import time

from mln_core.errors import MlnError

from . import libvirt_domain as dom_xml

DEFAULT_MIGRATE_URI = "qemu+ssh://{address}/system"
ROOT_DISK = "vda"


def can(host, shared: bool, ctx) -> str | None:
    """How the running host moves live, or None (a cold move): a host whose disk is on shared
    storage, or whose only disk is the qcow2 overlay of the ``file`` storage (not LVM, NFS
    or iSCSI; no swap, no extra disks)."""
    tree = host.tree
    if shared:
        return "live through libvirt: its disk is on shared storage, its memory is sent"
    if host.swap or any(m.fstype != "hostfs" for m in host.mounts) or \
            (tree is not None and any(tree.has(k) for k in ("lvm", "nfs", "iscsi"))):
        return None
    return "live through libvirt: its disk is copied, then its memory"


def target_uri(ctx, address: str) -> str:
    """The URI by which the source's libvirtd reaches this server's (``{address}`` replaced)."""
    try:
        address = str(ipaddress.IPv4Address(address))
    except ValueError:
        raise MlnError(f"not an IPv4 address to wait for the guest on: {address!r}") from None
    template = (ctx.config.get("libvirt_migrate_uri") or DEFAULT_MIGRATE_URI).strip()
    return template.replace("{address}", address)


def incoming(ctx, address: str, name: str, xml: str, shared: bool = False) -> dict:
    """On the target: what the source needs to send the guest (this server's libvirtd must
    answer, and have no running domain ``name``; an inactive one is a leftover: undefined)."""
    lv = dom_xml.binding()
    uri = target_uri(ctx, address)
    conn = dom_xml.connect(dom_xml.uri(ctx))
    try:
        dom = conn.lookupByName(name)
    except lv.libvirtError as e:
        if e.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
            raise MlnError(f"libvirt: {dom_xml.message(e)}") from None
        dom = None
    if dom is not None:
        if dom.isActive():
            raise MlnError(f"libvirt runs a domain {name} here already")
        try:
            dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except lv.libvirtError as e:
            raise MlnError(f"libvirt could not undefine the old domain {name}: {dom_xml.message(e)}") \
                from None
    return {"uri": uri, "migration": f"tcp://{ipaddress.IPv4Address(address)}", "domain": name, "xml": xml,
            "shared": shared}


def _checked(to) -> dict:
    ok = isinstance(to, dict) and all(isinstance(to.get(k), str)
                                      for k in ("uri", "migration", "domain", "xml"))
    if not ok or not re.fullmatch(r"tcp://\d{1,3}(\.\d{1,3}){3}(:\d{1,5})?", to["migration"]) or \
            not re.fullmatch(r"[A-Za-z0-9._+-]+", to["domain"]) or not to["xml"].startswith("<domain ") or \
            to["xml"].count("</name>") != 1 or "<uuid>" in to["xml"] or \
            not re.fullmatch(r"qemu(\+[a-z]+)?://[^\s/]*/system(\?\S*)?", to["uri"]):
        raise MlnError(f"not a place to send a guest to: {str(to)[:200]!r}")
    return to


def send(m, dom, to, name: str, shared: bool = False) -> dict:
    """On the source (``dom`` running here): migrate it to ``to`` (what
    :func:`incoming` answered); ``shared``: its disk is on shared storage (as this server
    says). The guest keeps running here if anything fails."""
    lv = dom_xml.binding()
    to = _checked(to)
    if bool(to.get("shared")) != shared:
        raise MlnError(f"its disk is {'' if shared else 'not '}on shared storage here, and it is"
                       f"{' not' if shared else ''} on the other server")
    start = time.monotonic()
    try:
        # the source's name and UUID (libvirt checks both); the domain takes its name there
        xml = re.sub(r"<name>[^<]*</name>", lambda _: f"<name>{dom.name()}</name>\n"
                     f"  <uuid>{dom.UUIDString()}</uuid>", to["xml"], count=1)
        params = {lv.VIR_MIGRATE_PARAM_URI: to["migration"], lv.VIR_MIGRATE_PARAM_DEST_XML: xml,
                  lv.VIR_MIGRATE_PARAM_DEST_NAME: to["domain"]}
        flags = (lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER | lv.VIR_MIGRATE_PERSIST_DEST
                 | lv.VIR_MIGRATE_PAUSED | lv.VIR_MIGRATE_ABORT_ON_ERROR)
        if shared:
            flags |= lv.VIR_MIGRATE_UNSAFE
        else:                             # the top layer only: the template is the same there
            flags |= lv.VIR_MIGRATE_NON_SHARED_INC
            params[lv.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [ROOT_DISK]
        m.step(f"migrate: memory of {name}")          # where MLN_FAULTS can break a migration
        dom.migrateToURI3(to["uri"], params, flags)
    except (lv.libvirtError, MlnError) as e:
        _resume(lv, dom)
        why = dom_xml.message(e) if isinstance(e, lv.libvirtError) else e.message
        raise MlnError(f"live migration failed, the guest runs on here: {why}") from None
    total = int((time.monotonic() - start) * 1000)
    return {"downtime_ms": _downtime(lv, dom, total), "total_ms": total}


def _resume(lv, dom) -> None:
    try:
        if dom.isActive() and dom.state()[0] == lv.VIR_DOMAIN_PAUSED:
            dom.resume()
    except lv.libvirtError:
        pass


def _downtime(lv, dom, total: int) -> int:
    """The guest's pause as libvirt measured it (the completed job of the domain, whose
    definition stays here); the whole migration's time if libvirt does not say."""
    try:
        stats = dom.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return int(stats["downtime"])
    except (lv.libvirtError, KeyError, TypeError, ValueError):
        return total


def arrived(lv, dom) -> None:
    """On the target, once the manager settled: the guest (paused since it arrived) runs;
    also on the source after a move that did not happen."""
    try:
        if dom.isActive() and dom.state()[0] == lv.VIR_DOMAIN_PAUSED:
            dom.resume()
    except lv.libvirtError as e:
        raise MlnError(f"the guest arrived but does not run: {dom_xml.message(e)}") from None
