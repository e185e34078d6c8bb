"""Issue 13: a Xen PV guest without ``kernel`` or ``xen_kernel`` boots the dom0 kernel,
``<xen_boot_dir>/vmlinuz-$(uname -r)`` and its initrd, as the original did.

The tests cannot change ``uname -r``: their boot directory (mln.conf ``xen_boot_dir``) holds
files named after this machine's release. No guests are built here, only the files.
"""
from __future__ import annotations

import os
import re

import pytest

from mln_backends import xen_config
from mln_core.errors import MlnError

from .conftest import generated

RELEASE = os.uname().release

#: Listing 1 of the article (spec 3.1, ldaptest.mln): two Xen hosts and a switch, no kernel
LISTING_1 = """\
global {
    project ldaptest
}

host ldapclient {
    xen
    memory 128M
    template ubuntu-client.ext3
    network eth0 {
        switch lan
        address dhcp
    }
}

host ldapserver {
    xen
    memory 256M
    template ubuntu-server.ext3
    network eth0 {
        switch lan
        address 10.0.0.1
        netmask 255.255.255.0
    }
}

switch lan {
}
"""


def dom0_setup(env, files: dict[str, str]):
    """mln.conf without xen_kernel/xen_ramdisk and with ``xen_boot_dir`` a test directory
    holding ``files`` ({name: text}); returns that directory."""
    boot = env.root / "boot"
    boot.mkdir()
    for name, text in files.items():
        (boot / name).write_text(text)
    lines = [line for line in env.config.read_text().splitlines()
             if not line.startswith(("xen_kernel", "xen_ramdisk"))]
    env.config.write_text("".join(line + "\n" for line in lines) + f"xen_boot_dir {boot}\n")
    return boot


DEBIAN_DOM0 = {f"vmlinuz-{RELEASE}": "a dom0 kernel\n", f"initrd.img-{RELEASE}": "its initrd\n",
               "vmlinuz-0.0.1-old": "an older kernel\n", "initrd.img-0.0.1-old": "its initrd\n",
               f"config-{RELEASE}": "CONFIG_XEN=y\n"}


def test_listing_1_builds_with_the_dom0_kernel(xen_plain):
    boot = dom0_setup(xen_plain, DEBIAN_DOM0)
    path = xen_plain.write("ldaptest.mln", LISTING_1)
    r = xen_plain.mln("check", "-f", str(path))
    assert r.returncode == 0, r.output
    for host, line in (("ldapclient", 6), ("ldapserver", 16)):
        assert re.search(rf"ldaptest\.mln:{line}:\d+: info: host {host}: boots the dom0 kernel "
                         rf"{re.escape(str(boot / f'vmlinuz-{RELEASE}'))} with initrd "
                         rf"{re.escape(str(boot / f'initrd.img-{RELEASE}'))}", r.output), r.output
    assert "0 errors, 0 warnings" in r.output

    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    cfgs = generated(xen_plain, "ldaptest")
    assert sorted(cfgs) == ["ldapclient_xen.cfg", "ldapserver_xen.cfg"]
    for text in cfgs.values():
        assert re.findall(r"^(?:kernel|ramdisk) = .*$", text, re.M) == [
            f'kernel = "{boot}/vmlinuz-{RELEASE}"', f'ramdisk = "{boot}/initrd.img-{RELEASE}"']


def test_a_host_kernel_or_xen_kernel_still_wins(xen_plain):
    """The dom0 kernel is only the last default: check says nothing of it otherwise."""
    dom0_setup(xen_plain, DEBIAN_DOM0)
    own = xen_plain.root / "xen" / "own-vmlinuz"
    text = LISTING_1.replace("    memory 128M\n", f"    memory 128M\n    kernel {own}\n", 1)
    with open(xen_plain.config, "a") as f:
        f.write(f"xen_kernel {xen_plain.root / 'xen' / 'vmlinuz'}\n")
    path = xen_plain.write("ldaptest.mln", text)
    r = xen_plain.mln("check", "-f", str(path))
    assert r.returncode == 0 and "dom0 kernel" not in r.output, r.output
    assert xen_plain.mln("build", "-f", str(path)).returncode == 0
    cfgs = generated(xen_plain, "ldaptest")
    assert f'kernel = "{own}"\n' in cfgs["ldapclient_xen.cfg"] and "\nramdisk =" not in cfgs["ldapclient_xen.cfg"]
    assert f'kernel = "{xen_plain.root}/xen/vmlinuz"\n' in cfgs["ldapserver_xen.cfg"]


def test_host_ramdisk_with_the_dom0_kernel(xen_plain):
    boot = dom0_setup(xen_plain, {f"vmlinuz-{RELEASE}": "k\n"})
    rd = xen_plain.root / "xen" / "initrd.img"
    path = xen_plain.write("p.mln", f"global {{ project rd }}\nhost a {{ xen; template ubuntu-server.ext3; "
                                    f"ramdisk {rd} }}\nhost b {{ xen; template ubuntu-server.ext3 }}\n")
    r = xen_plain.mln("check", "-f", str(path))
    assert f"host a: boots the dom0 kernel {boot}/vmlinuz-{RELEASE} with initrd {rd} (the host's" in r.output
    assert f"host b: boots the dom0 kernel {boot}/vmlinuz-{RELEASE} with no initrd" in r.output
    assert xen_plain.mln("build", "-f", str(path)).returncode == 0
    cfgs = generated(xen_plain, "rd")
    assert f'\nramdisk = "{rd}"\n' in cfgs["a_xen.cfg"] and "\nramdisk =" not in cfgs["b_xen.cfg"]


@pytest.mark.parametrize("others", [{}, {"vmlinuz-0.0.1-old": "k\n", "vmlinuz-0.0.2-new": "k\n"}])
def test_without_a_dom0_kernel_check_warns_and_build_fails(xen_plain, others):
    """The file is right; this machine is no dom0 (yet): check warns, a build here refuses."""
    boot = dom0_setup(xen_plain, {f"initrd.img-{RELEASE}": "an initrd without its kernel\n", **others})
    path = xen_plain.write("ldaptest.mln", LISTING_1)
    wanted = f"no dom0 kernel {boot}/vmlinuz-{RELEASE}"
    r = xen_plain.mln("check", "-f", str(path))
    assert r.returncode == 0 and "0 errors, 2 warnings" in r.output, r.output
    for host, line in (("ldapclient", 6), ("ldapserver", 16)):
        assert re.search(rf"ldaptest\.mln:{line}:\d+: warning: host {host}: missing kernel: .*"
                         rf"{re.escape(wanted)}.*a build on this machine refuses it", r.output), r.output
    if others:
        assert f"{boot} has vmlinuz-0.0.1-old, vmlinuz-0.0.2-new, but not that of the running kernel" in r.output
    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode != 0
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if "error" in line]
    assert len(errors) == 1, r.output
    assert re.search(r"host ldap(client|server)\b", errors[0]) and wanted in errors[0] and "xen_kernel" in errors[0]
    assert not (xen_plain.projects / "ldaptest").exists()


@pytest.mark.parametrize("initrd", ["initrd.img-{r}", "initrd-{r}.img", "initramfs-{r}.img", None])
def test_initrd_names(tmp_path, initrd):
    (tmp_path / "vmlinuz-6.1.0-xen").write_text("k")
    (tmp_path / "initrd.img-6.1.0-other").write_text("not this one")
    if initrd:
        (tmp_path / initrd.format(r="6.1.0-xen")).write_text("i")
    kernel, ramdisk = xen_config.dom0_kernel(str(tmp_path), "6.1.0-xen")
    assert kernel == str(tmp_path / "vmlinuz-6.1.0-xen")
    assert ramdisk == (str(tmp_path / initrd.format(r="6.1.0-xen")) if initrd else None)


def test_no_boot_dir(tmp_path):
    with pytest.raises(MlnError, match=r"no dom0 kernel .*/nonexistent/vmlinuz-1\.0; set one"):
        xen_config.dom0_kernel(str(tmp_path / "nonexistent"), "1.0")
