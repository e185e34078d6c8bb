"""Guest individualization on real ext4 images (no guest is booted)."""
from __future__ import annotations

import os
import subprocess

import pytest

from mln_backends.imagefs import Ext4Image
from mln_core.config import Config
from mln_core.context import Context
from mln_core.errors import MlnError
from mln_core.guest import detect_family
from mln_core.plugins import make_plugin_manager
from mln_core.project import load_project
from mln_plugins import guestconfig

pytestmark = pytest.mark.skipif(subprocess.run(["which", "debugfs"], capture_output=True).returncode != 0,
                                reason="debugfs is needed")

PASSWD = "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/bash\n"
SHADOW = "root:*:19000:0:99999:7:::\nbob:$6$old$oldhash:19000:0:99999:7:::\n"
GROUP = "root:x:0:\nbob:x:1000:\n"


def make_image(tmp_path, family: str):
    root = tmp_path / "root"
    for d in ("etc/init.d", "root", "home", "bin", "etc/systemd/system"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/group").write_text(GROUP)
    if family == "debian":
        (root / "etc/network").mkdir()
        (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
        (root / "bin/bash").write_text("")
    elif family == "redhat":
        (root / "etc/sysconfig/network-scripts").mkdir(parents=True)
        (root / "etc/sysconfig/network").write_text("NETWORKING=yes\nHOSTNAME=template\n")
    else:
        (root / "bin/busybox").write_text("")
        (root / "etc/init.d/rcS").write_text("#!/bin/sh\nmount -a\n")
    img = tmp_path / f"{family}.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "16M"], check=True)
    return img


PROJECT = """
global { project t }
switch lan { }
host web {
    %(hv)s
    nameserver 10.0.0.53
    root_passwd %(pw)s
    users {
        alice $1$abc$alicehash
        bob newsecret
        carol $6$c$carolhash /srv/carol 2001
    }
    groups { admins { alice carol } }
    network eth0 { switch lan; address 10.0.0.5; netmask 255.255.255.0; gateway 10.0.0.1 }
    network eth1 { address dhcp; mac 52:54:00:aa:bb:cc }
    startup { echo hello from $hostname }
    files { motd /etc/motd 0640 }
    modules { 8021q }
}
host db { network eth0 { switch lan; address 10.0.0.6; netmask 255.255.255.0 } }
"""


@pytest.fixture
def ctx(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "motd").write_text("welcome\n")
    cfg = Config()
    cfg.values["files"] = str(files)
    return Context(config=cfg, pm=make_plugin_manager())


def configure(tmp_path, ctx, family, hv="uml", pw="s3cret-Pass", img=None):
    loaded = load_project("p.mln", ctx, text=PROJECT % {"hv": hv, "pw": pw})
    ctx.project = loaded.project
    img = img or make_image(tmp_path, family)
    with Ext4Image(str(img)) as g:
        g.family = detect_family(g)
        assert g.family == family
        guestconfig.mln_configure_image(host=loaded.project.hosts["web"], guest=g, ctx=ctx)
    return img


def stat(img, path) -> str:
    """debugfs's stat output for ``path`` (no pager)."""
    return subprocess.run(["debugfs", "-R", f'stat "{path}"', str(img)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "DEBUGFS_PAGER": "__none__"}).stdout


def read(img, path) -> str:
    with Ext4Image(str(img)) as g:
        return g.read_text(path)


def snapshot(img) -> dict:
    """Every file, directory and link in the image: content (or "dir"), mode and owner."""
    out = {}
    with Ext4Image(str(img)) as g:
        stack = ["/"]
        while stack:
            d = stack.pop()
            for name in g.listdir(d):
                p = d.rstrip("/") + "/" + name
                st = stat(img, p)
                meta = [ln.split("Generation")[0] for ln in st.splitlines() if ln.startswith("User:")]
                mode = [ln.split("Flags")[0] for ln in st.splitlines() if ln.startswith("Inode:")]
                if g.is_dir(p):
                    stack.append(p)
                    out[p] = ("dir", meta, [m.split("Type")[1] for m in mode])
                else:
                    out[p] = (g.read(p), meta, [m.split("Type")[1] for m in mode])
    return out


def test_debian_guest(tmp_path, ctx):
    img = configure(tmp_path, ctx, "debian")
    assert read(img, "/etc/hostname") == "web\n"
    assert read(img, "/etc/network/interfaces") == (
        "auto lo\niface lo inet loopback\n\n"
        "auto eth0\niface eth0 inet static\n    address 10.0.0.5\n    netmask 255.255.255.0\n"
        "    gateway 10.0.0.1\n\n"
        "auto eth1\niface eth1 inet dhcp\n    hwaddress ether 52:54:00:aa:bb:cc\n")
    assert read(img, "/etc/iftab") == "eth1 mac 52:54:00:aa:bb:cc\n"
    hosts = read(img, "/etc/hosts").splitlines()
    assert hosts[:3] == ["127.0.0.1\tlocalhost", "10.0.0.5\tweb", "10.0.0.6\tdb"]
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in hosts
    assert read(img, "/etc/fstab").splitlines()[0] == "/dev/ubda\t/\text4\tdefaults\t0\t1"
    assert read(img, "/etc/resolv.conf") == "nameserver 10.0.0.53\n"
    assert "8021q" in read(img, "/etc/modules")
    script = read(img, "/etc/init.d/mln-startup")
    assert script.startswith("#!/bin/bash") and script.rstrip().endswith("echo hello from web")
    with Ext4Image(str(img)) as g:
        assert g.exists("/etc/rc2.d/S99mln-startup")
        assert g.exists("/etc/systemd/system/multi-user.target.wants/mln-startup.service")


def test_qemu_guest_gets_virtio_devices_in_fstab(tmp_path, ctx):
    img = configure(tmp_path, ctx, "debian", hv="qemu")
    assert read(img, "/etc/fstab").splitlines()[0] == "/dev/vda\t/\text4\tdefaults\t0\t1"


def test_redhat_guest(tmp_path, ctx):
    img = configure(tmp_path, ctx, "redhat")
    assert read(img, "/etc/sysconfig/network-scripts/ifcfg-eth0") == (
        "DEVICE=eth0\nBOOTPROTO=none\nONBOOT=yes\nUSERCTL=no\nTYPE=Ethernet\n"
        "IPADDR=10.0.0.5\nNETMASK=255.255.255.0\n")
    assert "BOOTPROTO=dhcp" in read(img, "/etc/sysconfig/network-scripts/ifcfg-eth1")
    net = read(img, "/etc/sysconfig/network")
    assert net == "NETWORKING=yes\nHOSTNAME=web\nGATEWAY=10.0.0.1\n"


def test_busybox_guest(tmp_path, ctx):
    img = configure(tmp_path, ctx, "busybox")
    rcs = read(img, "/etc/init.d/rcS")
    assert rcs.startswith("#!/bin/sh\nmount -a\n")
    assert ("# >>> mln network >>>\nifconfig eth0 10.0.0.5 netmask 255.255.255.0 up\n"
            "ifconfig eth1 hw ether 52:54:00:aa:bb:cc\nudhcpc -b -q -i eth1\n"
            "route add default gw 10.0.0.1\n# <<< mln network <<<") in rcs
    assert "# >>> mln startup >>>\necho hello from web\n# <<< mln startup <<<" in rcs
    assert "modprobe 8021q" in rcs


def test_users_groups_and_passwords(tmp_path, ctx):
    img = configure(tmp_path, ctx, "debian")
    passwd = read(img, "/etc/passwd").splitlines()
    shadow = {ln.split(":")[0]: ln.split(":")[1] for ln in read(img, "/etc/shadow").splitlines()}
    group = read(img, "/etc/group")
    assert "alice:x:1001:1001::/home/alice:/bin/bash" in passwd
    assert "carol:x:2001:2001::/srv/carol:/bin/bash" in passwd
    assert passwd.count("bob:x:1000:1000::/home/bob:/bin/bash") == 1       # existing user kept
    assert shadow["alice"] == "$1$abc$alicehash"                            # a hash is used as is
    assert shadow["bob"].startswith("$6$") and shadow["bob"] != "$6$old$oldhash"  # the shadow entry changes
    assert "admins:x:" in group and group.rstrip().endswith("alice,carol")
    root_hash = shadow["root"]
    salt = root_hash.split("$")[2]
    expected = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=b"s3cret-Pass",
                              capture_output=True).stdout.decode().strip()
    assert root_hash == expected
    with Ext4Image(str(img)) as g:
        assert g.is_dir("/srv/carol") and g.is_dir("/home/alice")
    st = stat(img, "/srv/carol")
    assert "User:  2001" in st and "Group:  2001" in st


def test_cleartext_passwords_are_written_nowhere(tmp_path, ctx):
    img = configure(tmp_path, ctx, "debian", pw="UniqueClearText-7731")
    data = img.read_bytes()
    assert b"UniqueClearText-7731" not in data
    assert b"newsecret" not in data


def test_files_are_copied_with_mode_and_sources_must_stay_in_the_files_dir(tmp_path, ctx):
    img = configure(tmp_path, ctx, "debian")
    assert read(img, "/etc/motd") == "welcome\n"
    st = stat(img, "/etc/motd")
    assert "Mode:  0640" in st
    bad = PROJECT.replace("files { motd /etc/motd 0640 }", "files { ../../etc/passwd /etc/x }")
    with pytest.raises(MlnError, match=r"goes up with '\.\.'") as e:      # check refuses it, with where
        load_project("p.mln", ctx, text=bad % {"hv": "uml", "pw": "x"})
    assert str(e.value.where).startswith("p.mln:")
    loaded = load_project("p.mln", ctx, text=PROJECT % {"hv": "uml", "pw": "x"})
    ctx.project = loaded.project
    from mln_core.model import FileCopy
    loaded.project.hosts["web"].files = [FileCopy("../../etc/passwd", "/etc/x")]    # the plugin refuses it too
    (tmp_path / "b").mkdir()
    with Ext4Image(str(make_image(tmp_path / "b", "debian"))) as g:
        g.family = "debian"
        with pytest.raises(MlnError, match="outside the files directory"):
            guestconfig.mln_configure_image(host=loaded.project.hosts["web"], guest=g, ctx=ctx)


@pytest.mark.parametrize("family", ["debian", "redhat", "busybox"])
def test_configuring_twice_gives_the_same_image(tmp_path, ctx, family):
    img = configure(tmp_path, ctx, family)
    first = snapshot(img)
    configure(tmp_path, ctx, family, img=img)
    assert snapshot(img) == first


def test_set_section_is_idempotent_and_removable():
    from mln_core.guest import set_section
    text = "#!/bin/sh\nboot\n"
    once = set_section(text, "net", "ifconfig eth0 up")
    assert set_section(once, "net", "ifconfig eth0 up") == once
    assert set_section(once, "net", None) == text


def test_password_hash_runs_openssl_through_the_machine():
    from mln_core.machine import Machine
    machine = Machine(env={})
    machine.inject("fail@openssl passwd")
    with pytest.raises(MlnError, match=r"cannot hash a password \(openssl passwd\): .*injected fault"):
        guestconfig.password_hash("s3cret-Pass", "p/root", machine)
    hashed = guestconfig.password_hash("s3cret-Pass", "p/root", machine)      # the fault is used up
    assert hashed.startswith("$6$") and hashed == guestconfig.password_hash("s3cret-Pass", "p/root")
    assert guestconfig.password_hash("$1$abc$x", "p/root", machine) == "$1$abc$x"   # a hash stays as it is


def test_busybox_nic_renames_test_the_guest_interface(tmp_path):
    with Ext4Image(str(make_image(tmp_path, "busybox"))) as g:
        guestconfig._nic_renames(g, "busybox", {"vec0": "eth0"})
        rcs = g.read_text("/etc/init.d/rcS")
    assert "[ -e /sys/class/net/vec0 ] && ip link set dev vec0 name eth0\n" in rcs
