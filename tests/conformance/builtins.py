"""The built-in backends and storages, described for the conformance suite.

uml, qemu and libvirt (on a private libvirtd) boot real guests (the busybox test template
``mln_env`` registers); xen and vmware cannot run here and are driven through the fakes
their own tests use (``FakeXl``
of tests/xen/conftest.py with the templates of ``xen_templates``; ``VM`` of
tests/vmware/test_vmware.py, the fake ``vmrun``). ``lvm`` is a volume group on a loop
device (``test_vg`` of tests/lvm/conftest.py).
"""
from __future__ import annotations

import os

from mln_core.testing import FILE, Backend, Storage, image_files

#: the busybox template's console once it has booted (``::askfirst:-/bin/sh``)
PROMPT = r"Please press Enter to activate this console"


def guest_process(env, project: str, host: str) -> bool:
    """A UML or QEMU process of the host runs (``umid=<host>.<project>`` / ``-name <host>.<project>``)."""
    return any(f"{host}.{project} " in p + " " for p in env.processes())


# -- xen: the fake xl -------------------------------------------------------------------------

def setup_xen(env, request) -> None:
    from tests.xen.conftest import FakeXl, setup_xen
    setup_xen(env, request.getfixturevalue("xen_templates"))
    env.fake_xl = FakeXl(env)


def xen_running(env, project: str, host: str) -> bool:
    return f"{host}.{project}" in env.fake_xl.domains()


def xen_leftovers(env) -> list:
    return [f"domain {d}" for d in env.fake_xl.domains()]


# -- vmware: the fake vmrun ---------------------------------------------------------------------

def setup_vmware(env, request) -> None:
    from tests.vmware.test_vmware import VM
    env.vmware = VM(env, request.getfixturevalue("test_template"))


def _vmrun_list(env, name: str) -> list[str]:
    path = env.vmware.fake / name
    return path.read_text().split() if path.exists() else []


def vmware_running(env, project: str, host: str) -> bool:
    return str(env.projects / project / f"{host}.vmx") in _vmrun_list(env, "running")


def vmware_leftovers(env) -> list:
    vm = env.vmware
    return ([f"running {x}" for x in _vmrun_list(env, "running")] + [f"suspended {x}" for x in
            _vmrun_list(env, "suspended")] + [f"vnet mapping {x}" for x in vm.mapping_lines()]
            + [f"device {x}" for x in sorted(os.listdir(vm.dev))])


# -- libvirt: a private libvirtd (``libvirtd`` of tests/libvirt/conftest.py) ------------------------

def setup_libvirt(env, request) -> None:
    env.libvirtd = request.getfixturevalue("libvirtd")
    with open(env.config, "a") as f:
        f.write(f"libvirt_uri {env.libvirtd.uri}\n")


def libvirt_running(env, project: str, host: str) -> bool:
    """``virsh list`` shows the host's domain (``<host>.<project>-<hash>``) running."""
    return any(d.startswith(f"{host}.{project}-") for d in env.libvirtd.running())


def libvirt_leftovers(env) -> list:
    lv = env.libvirtd
    return [f"domain {d}" for d in lv.domains()] + [f"managed save image {x}" for x in lv.saved_images()]


# -- lvm: a volume group on a loop device --------------------------------------------------------

def lvm_disks(env, project: str, vg) -> dict:
    """The project's logical volumes (by UUID: a rebuilt one is new) and its image files."""
    lvs = {f"{vg.name}/{lv}": (vg.lv_uuid(lv), size) for lv, size in vg.lvs().items()
           if lv.endswith(f".{project}")}
    return {**lvs, **image_files(env, project)}


LVM = Storage(
    "lvm", fixture="test_vg",
    host_lines=lambda vg: f"lvm\nlvm_vg {vg.name}",
    disks=lvm_disks,
    in_use=lambda env, vg: [f"loop device {d}" for d in vg.imitation_loops()],
    leftovers=lambda env, vg: [f"logical volume {lv}" for lv in vg.lvs()],
    fail_at="lvcreate#2",              # the second host's volume cannot be made
)

# -- nfs and iscsi: nfs-ganesha and tgtd in a namespace (tests/storage/conftest.py) ----------------
# Not in STORAGES: tests/storage/test_conformance_network.py runs the lifecycle scenario on
# qemu over each of them (the whole suite over them would cost a minute more of CI).

def nfs_disks(env, project: str, nfs) -> dict:
    """The project's disk files on the export (by inode: a rebuilt one is new) and its image files."""
    out = {}
    for name in nfs.files():
        if name.endswith(f".{project}.qcow2") or f".{project}+mln-new" in name:
            st = os.stat(os.path.join(nfs.export, name))
            out[f"nfs:{name}"] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return {**out, **image_files(env, project)}


NFS = Storage(
    "nfs", fixture="nfs_server",
    host_lines=lambda nfs: f"nfs {nfs.spec}",
    disks=nfs_disks,
    leftovers=lambda env, nfs: [f"file {x} on the export" for x in nfs.files()],
)


def iscsi_disks(env, project: str, target) -> dict:
    """LUN 1 while it holds a filesystem (by its UUID: a rebuild writes a new one)."""
    from mln_backends.netdisk import ext_uuid
    fs = ext_uuid(target.head(1, 65536))
    return {**({"iscsi:lun1": (fs,)} if fs else {}), **image_files(env, project)}


ISCSI = Storage(
    "iscsi", fixture="iscsi_target",
    host_lines=lambda t: f"iscsi {t.url(1)}",
    disks=iscsi_disks,
    leftovers=lambda env, t: ["LUN 1 is not blank"] if t.head(1, 1 << 20).strip(b"\0") else [],
)

# lvm: tests/lvm boots guests from their volumes; the suite runs each backend over file
# storage only (the whole CI run has a 30-minute budget); add "lvm" to storages to run it over LVM
UML = Backend("uml", storages=("file",), boot_log=PROMPT, running=guest_process)
QEMU = Backend("qemu", storages=("file",), can_save=True, boot_log=PROMPT, running=guest_process)
# xen runs through a named fake (xl cannot run here); its phy: disk lines are checked in tests/xen
XEN = Backend("xen", storages=("file",), template="ubuntu-server.ext3", can_save=True, console=False,
              running=xen_running, leftovers=xen_leftovers, setup=setup_xen)
VMWARE = Backend("vmware", storages=("file",), switch_lines="vmware", can_save=True, console=False,
                 running=vmware_running, leftovers=vmware_leftovers, setup=setup_vmware,
                 fail_at="qemu-img convert#2")          # the second host's VMDK cannot be made

# libvirt's QEMU runs the same guests as qemu: over file only (lvm would repeat qemu's checks)
LIBVIRT = Backend("libvirt", storages=("file",), can_save=True, boot_log=PROMPT, running=libvirt_running,
                  leftovers=libvirt_leftovers, setup=setup_libvirt)

BACKENDS = (UML, QEMU, XEN, VMWARE, LIBVIRT)
STORAGES = (FILE, LVM)
