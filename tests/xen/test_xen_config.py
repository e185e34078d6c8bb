"""The Xen backend's build: golden files of the examples, Xen's own parser, guest edits,
and the errors a user can make.

Golden files live in ``tests/xen/golden/<project>/``; regenerate them with
``python tests/xen/regen_golden.py`` and READ the diff: they are the expected behaviour.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mln_backends import xen, xen_config, xen_guest
from mln_backends.bridges import bridge_name

from . import xlucheck
from .conftest import (EXAMPLE_FILES, GOLDEN, OWN_FILES, PROJECT_OF, copy_case, generated, guest_file,
                       normalize, show, state)

REGEN = os.environ.get("MLN_XEN_REGEN") == "1"
CASES = [c for c in list(EXAMPLE_FILES) + list(OWN_FILES) if c != "san"]
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


def _lvm_ready() -> str | None:
    """Why the san example cannot be built here, or None."""
    from mln_backends import storage_lvm
    if not hasattr(storage_lvm, "mln_create_disk"):
        return "the lvm storage plugin (mln_backends/storage_lvm.py) has no mln_create_disk yet"
    try:
        from tests.lvm import conftest as lvm_conftest  # noqa: F401
    except ImportError as e:
        return f"the lvm test fixtures (tests/lvm/conftest.py) cannot be imported: {e}"
    if not hasattr(lvm_conftest, "test_vg"):
        return "tests/lvm/conftest.py has no test_vg fixture"
    return None


LVM_MISSING = _lvm_ready()
if LVM_MISSING is None:
    from tests.lvm.conftest import test_vg  # noqa: F401,E402  (fixture: a throw-away volume group)


def build_case(env, case: str, replace: dict[str, str] | None = None):
    path = copy_case(env, case, replace)
    r = env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    return path, PROJECT_OF.get(case, case)


def compare_golden(env, case: str, project: str, back: dict[str, str] | None = None) -> None:
    files = {name: normalize(env, text, back) for name, text in generated(env, project).items()}
    assert files, f"no Xen files were written for {case}"
    gdir = GOLDEN / project
    if REGEN:
        gdir.mkdir(parents=True, exist_ok=True)
        for old in gdir.iterdir():
            old.unlink()
        for name, text in files.items():
            (gdir / name).write_text(text)
        return
    assert gdir.is_dir(), f"no golden files for {project}: run python tests/xen/regen_golden.py"
    expected = {p.name: p.read_text() for p in sorted(gdir.iterdir())}
    assert sorted(files) == sorted(expected), "the set of generated files differs from the golden files"
    for name, text in files.items():
        assert text == expected[name], (f"{project}/{name} differs from its golden file; if the change is "
                                        "intended, run python tests/xen/regen_golden.py and read the diff")


# ---------------------------------------------------------------------------------------
# (1) golden files
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_golden(xen_plain, case):
    path, project = build_case(xen_plain, case)
    compare_golden(xen_plain, case, project)


def test_golden_san(request, xen_env):
    """san.mln: db1 on an LVM volume (phy:), web1 with filepath (file: outside the project)."""
    if LVM_MISSING:
        pytest.skip(LVM_MISSING)
    vg = request.getfixturevalue("test_vg")
    nfs = xen_env.root / "nfssan"
    nfs.mkdir()
    path, project = build_case(xen_env, "san", {"lvm_vg sanvg": f"lvm_vg {vg.name}",
                                                "/mln/nfssan": str(nfs)})
    compare_golden(xen_env, "san", project,
                   back={f"/dev/{vg.name}/": "/dev/sanvg/", "@ROOT@/nfssan": "/mln/nfssan"})
    cfgs = generated(xen_env, project)
    assert f"phy:/dev/{vg.name}/db1.sanfarm,xvda1,w" in cfgs["db1_xen.cfg"]
    assert f"file:{nfs}/web1.sanfarm,xvda1,w" in cfgs["web1_xen.cfg"]
    if xlucheck.available():
        check_with_libxlutil(xen_env, path, project)


def test_every_golden_file_is_a_case():
    projects = {PROJECT_OF.get(c, c) for c in list(EXAMPLE_FILES) + list(OWN_FILES)}
    assert {p.name for p in GOLDEN.iterdir()} <= projects
    for p in GOLDEN.rglob("*"):
        if p.is_file():
            assert "/tmp/" not in p.read_text(), p


# What the golden files must say (spec 7.1, 7.2 and the bugs of 2.10), checked
# independently of them.

def test_ldaptest_like_spec_7_1(xen_plain):
    build_case(xen_plain, "ldaptest")
    cfg = generated(xen_plain, "ldaptest")["ldapserver_xen.cfg"]
    images = xen_plain.projects / "ldaptest" / "images"
    assert 'name = "ldapserver.ldaptest"' in cfg
    assert 'type = "pv"' in cfg
    assert f'kernel = "{xen_plain.root}/xen/vmlinuz"' in cfg
    assert f'ramdisk = "{xen_plain.root}/xen/initrd.img"' in cfg
    assert "\nmemory = 256\n" in cfg
    assert f'disk = [ "file:{images}/ldapserver,xvda1,w" ]' in cfg
    assert 'root = "/dev/xvda1"' in cfg
    assert re.search(r'vif = \[ "bridge=lan\.ldaptest,mac=00:16:3e(:[0-9a-f]{2}){3}" \]', cfg)
    assert "vnc" not in cfg and "vfb" not in cfg       # bug 6: no VNC lines without VNC keywords
    image = xen_plain.projects / "ldaptest" / "images" / "ldapserver"
    assert guest_file(image, "/etc/fstab") == \
        "/dev/xvda1\t/\text4\tdefaults\t0\t1\nproc\t/proc\tproc\tdefaults\t0\t0\n"
    assert "hvc:2345:respawn:/sbin/getty 38400 hvc0" in guest_file(image, "/etc/inittab")
    assert guest_file(image, xen_guest.NET_RULES) is None    # eth0 only: the guest names it right
    # the switch with Xen hosts on it became a Linux bridge of the bridge plugin
    assert state(xen_plain, "ldaptest")["switches"]["lan"] == {"kind": "bridge", "bridge": "lan.ldaptest",
                                                               "for": "xen"}


def test_oscourse_hvm_like_spec_7_2(xen_plain):
    build_case(xen_plain, "oscourse-group07")
    files = generated(xen_plain, "oscourse-group07")
    assert sorted(files) == ["linux_xen.cfg", "windows_xen.hvm"]
    hvm = files["windows_xen.hvm"]
    assert 'type = "hvm"' in hvm
    assert not re.search(r"^(kernel|ramdisk|root|extra) =", hvm, re.M)
    assert "\nmemory = 512\n" in hvm
    assert ",hda,w" in hvm
    assert "\nvncdisplay = 7\n" in hvm and "\nvncunused = 0\n" in hvm
    assert 'vncpasswd = "$6$mlnsalt$' in hvm
    bridge = state(xen_plain, "oscourse-group07")["switches"]["lan"]["bridge"]
    assert len(bridge) <= 15 and bridge.startswith("lan")
    assert f'"type=ioemu,bridge={bridge},mac=' in hvm
    linux = files["linux_xen.cfg"]
    # eth0 has no switch: the default bridge; eth1 is on the project switch
    assert re.search(rf'vif = \[ "bridge=xenbr0,mac=[0-9a-f:]+",\n\s+"bridge={re.escape(bridge)},mac=', linux)


def test_own_features(xen_plain):
    build_case(xen_plain, "xenfeat")
    files = generated(xen_plain, "xenfeat")
    full = files["full_xen.cfg"]
    images = xen_plain.projects / "xenfeat" / "images"
    # root, swap, then every disk mount its own device (bug 7), the NFS mount no disk
    assert re.findall(r'"((?:file|phy):[^"]+)"', full) == [
        f"file:{images}/full,xvda1,w", f"file:{images}/swap_full,xvda2,w",
        "phy:/dev/vgdata/full-data,xvda3,w", "file:/srv/images/scratch.img,xvda4,w",
        "file:/srv/images/logs.img,xvda5,w"]
    # eth0 and eth2 both present, in order, no empty entry (bug 15)
    assert re.search(r'vif = \[ "bridge=lan\.xenfeat,mac=00:16:3e:12:34:56",\n'
                     r'\s+"bridge=xenbr1,mac=[0-9a-f:]+" \]', full)
    assert 'vfb = [ "vnc=1,vncdisplay=3,vncunused=0,vncpasswd=sesame,keymap=de" ]' in full
    assert 'extra = "console=hvc0 quiet loglevel=3"' in full
    assert "\nvcpus = 2\n" in full and '\ncpus = "0-1"\n' in full
    # xen_extra lines with "=" kept verbatim (bug 5), the superclass's first, at the end
    assert full.endswith('on_crash = "preserve"\non_reboot = "restart"\ncpu_weight = 512\n')
    kernelled = files["kernelled_xen.cfg"]
    assert f'kernel = "{xen_plain.root}/xen/own-vmlinuz"' in kernelled
    assert "ramdisk" not in kernelled          # mln.conf's ramdisk goes with mln.conf's kernel only
    assert "vfb" not in kernelled and "vnc" not in kernelled
    assert re.search(r'vif = \[ "bridge=lan\.xenfeat,[^"]+",\n\s+"bridge=dmz\.xenfeat,[^"]+",\n'
                     r'\s+"bridge=xenbr0,[^"]+" \]', kernelled)
    hvm = files["hvmbox_xen.hvm"]
    assert re.findall(r'"file:[^"]+"', hvm) == [
        f'"file:{images}/hvmbox,hda,w"', f'"file:{images}/swap_hvmbox,hdb,w"',
        '"file:/srv/images/data.img,hdc,w"']
    assert "\nvnc = 1\n" in hvm and "vncdisplay" not in hvm and "vncpasswd" not in hvm


# ---------------------------------------------------------------------------------------
# (2) Xen's own parser reads every generated file back
# ---------------------------------------------------------------------------------------

def check_with_libxlutil(env, path: Path, project: str) -> int:
    """Parse every generated file with libxlutil; compare what Xen reads with the model."""
    model = show(env, path)
    st = state(env, project)
    pdir = env.projects / project
    n = 0
    for host, h in model["hosts"].items():
        backend = st["hosts"][host]["backend"]
        cfg_path = pdir / backend["cfg"]
        with xlucheck.read_cfg(str(cfg_path)) as cfg:
            assert cfg.messages() == "", f"{cfg_path.name}: Xen's parser warned: {cfg.messages()}"
            assert cfg.string("name") == f"{host}.{project}"
            hvm = backend["type"] == "hvm"
            assert cfg.string("type") == ("hvm" if hvm else "pv")
            mem = h["memory"]
            assert cfg.long("memory") == int(mem[:-1]) * (1024 if mem.endswith("G") else 1), (host, mem)
            disks = cfg.disks()
            recorded = st["hosts"][host]["disk"]["path"]
            root = recorded if os.path.isabs(recorded) else str(pdir / recorded)
            assert disks[0]["target"] == root
            assert disks[0]["vdev"] == ("hda" if hvm else "xvda1")
            assert all(d["readwrite"] and d["format"] == "raw" for d in disks)
            assert len({d["vdev"] for d in disks}) == len(disks), "two disks share a device"
            if not hvm:
                assert cfg.string("kernel") and os.path.isfile(cfg.string("kernel"))
                assert cfg.string("root") == "/dev/xvda1"
            ifaces = h.get("interfaces", {})
            vifs = cfg.vifs()
            assert len(vifs) == len(ifaces)
            for name, vif in zip(sorted(ifaces, key=lambda n: int(n[3:])), vifs):
                i = ifaces[name]
                if i.get("switch"):
                    expected = st["switches"][i["switch"]]["bridge"]
                else:
                    expected = i.get("bridge", "xenbr0")
                assert vif["bridge"] == expected, (host, name)
                assert MAC.match(vif["mac"]), vif
                assert ("type" in vif) == hvm
        n += 1
    return n


@pytest.fixture
def libxlutil():
    if not xlucheck.available():
        pytest.skip("libxlutil.so.4.17 is not installed (apt-get install xen-utils-4.17)")


@pytest.mark.parametrize("case", CASES)
def test_xl_parser_reads_back(xen_plain, libxlutil, case):
    path, project = build_case(xen_plain, case)
    assert check_with_libxlutil(xen_plain, path, project) == len(generated(xen_plain, project))


def test_xl_parser_rejects_a_broken_file(tmp_path, libxlutil):
    """The check can fail: a broken file is rejected with Xen's own message."""
    bad = tmp_path / "broken_xen.cfg"
    bad.write_text('name = "x.y"\nmemory = 128\ndisk = [ "file:/a,xvda1,w" "file:/b,xvda2,w" ]\n')
    with pytest.raises(xlucheck.XenCfgError, match=r"broken_xen.cfg:3: config parsing error"):
        xlucheck.read_cfg(str(bad))
    # and what bug 5 of the original would have written (an unquoted value with a space)
    bad.write_text('name = "x.y"\non_crash = preserve now\n')
    with pytest.raises(xlucheck.XenCfgError, match="syntax error"):
        xlucheck.read_cfg(str(bad))


def test_xl_parser_disk_specs(tmp_path, libxlutil):
    """xlu_disk_parse reads phy:/file: specs as the backend writes them; the last setting wins
    (which is why xen_extra lines come last)."""
    cfg = tmp_path / "t_xen.cfg"
    cfg.write_text('name = "t.p"\nmemory = 64\nmemory = 96\ndisk = [ "phy:/dev/vg/t.p,xvda1,w", '
                   '"file:/srv/a b/img,xvda3,w" ]\nesc = ' + xen_config.xl_quote('a "quoted" \\ value') + "\n")
    with xlucheck.read_cfg(str(cfg)) as c:
        assert c.long("memory") == 96
        assert [(d["target"], d["vdev"]) for d in c.disks()] == [("/dev/vg/t.p", "xvda1"),
                                                                 ("/srv/a b/img", "xvda3")]
        assert c.string("esc") == 'a "quoted" \\ value'


# ---------------------------------------------------------------------------------------
# the guest: fstab, console, interface names
# ---------------------------------------------------------------------------------------

def test_guest_edits_pv(xen_plain):
    build_case(xen_plain, "xenfeat")
    image = xen_plain.projects / "xenfeat" / "images" / "full"
    fstab = guest_file(image, "/etc/fstab")
    assert fstab.splitlines() == [
        "/dev/xvda1\t/\text4\tdefaults\t0\t1",
        "proc\t/proc\tproc\tdefaults\t0\t0",
        "/dev/xvda2\tnone\tswap\tsw\t0\t0",
        "/dev/xvda3\t/srv/data\text4\tdefaults\t0\t0",
        "/dev/xvda4\t/scratch\text3\tnoatime\t0\t0",
        "fileserver:/export/home\t/home\tnfs\trw,hard\t0\t0",
        "/dev/xvda5\t/var/log/archive\text4\tdefaults\t0\t0",
    ]
    inittab = guest_file(image, "/etc/inittab")
    assert "co:2345:respawn:/sbin/getty 38400 hvc0 linux" not in inittab     # replaced
    assert inittab.count("hvc0") == 1
    assert "# >>> mln xen-console >>>\nhvc:2345:respawn:/sbin/getty 38400 hvc0\n# <<< mln xen-console <<<\n" \
        in inittab
    assert "1:2345:respawn:/sbin/getty 38400 tty1" in inittab
    assert guest_file(image, "/etc/securetty") == \
        "console\ntty1\ntty2\n# >>> mln xen-console >>>\nhvc0\n# <<< mln xen-console <<<\n"
    rules = guest_file(image, xen_guest.NET_RULES)
    assert 'ATTR{address}=="00:16:3e:12:34:56", NAME="eth0"' in rules
    assert re.search(r'ATTR\{address\}=="00:16:3e:[0-9a-f:]{8}", NAME="eth2"', rules)
    rules = guest_file(xen_plain.projects / "xenfeat" / "images" / "kernelled", xen_guest.NET_RULES)
    assert [line.rsplit("NAME=", 1)[1] for line in rules.splitlines() if "NAME=" in line] == \
        ['"eth0"', '"eth1"', '"eth3"']


def test_guest_edits_are_idempotent():
    inittab = ("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n"
               "T0:23:respawn:/sbin/getty 38400 hvc0\n")
    once = xen_guest.xen_inittab(inittab, "/sbin/getty 38400 hvc0")
    assert xen_guest.xen_inittab(once, "/sbin/getty 38400 hvc0") == once
    assert "T0:" not in once and once.count("hvc0") == 1


def test_guest_edits_not_for_hvm(xen_plain, debian_image):
    """A Linux HVM guest gets no fstab (guestconfig) and no console edits (xen)."""
    path = _write(xen_plain, "global { project lh }\nhost a { hvm; template ubuntu-server.ext3 }\n")
    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    image = xen_plain.projects / "lh" / "images" / "a"
    for f in ("/etc/fstab", "/etc/inittab", "/etc/securetty"):
        assert guest_file(image, f) == guest_file(debian_image, f), f
    assert guest_file(image, "/etc/hostname") == "a\n"      # the rest of guestconfig happens


def test_guest_devices():
    from mln_core.model import Host, Mount
    from mln_core.lang.tree import Block
    tree = Block("host", "a")
    tree.add_line(["xen"])
    h = Host("a", "p", "xen", "t", 2**27, swap=2**20, tree=tree,
             mounts=[Mount("/dev/vg/x", "/x", "ext4"), Mount("srv:/e", "/e", "nfs"),
                     Mount("/i.img", "/i", "ext3")])
    assert xen.mln_guest_devices(h, None) == {"root": "/dev/xvda1", "swap": "/dev/xvda2",
                                              "extra": ["/dev/xvda3", "srv:/e", "/dev/xvda4"],
                                              "console": "hvc0"}
    tree.add_line(["hvm"])
    assert xen.mln_guest_devices(h, None)["root"] == "/dev/xvda"
    h.hypervisor = "uml"
    assert xen.mln_guest_devices(h, None) is None


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def _write(env, text: str) -> Path:
    return env.write("p.mln", text)


def test_missing_kernel(mln_plain, xen_templates):
    from .conftest import setup_xen
    setup_xen(mln_plain, xen_templates)
    conf = mln_plain.config.read_text()
    empty_boot = mln_plain.root / "empty-boot"      # no dom0 kernel whatever this machine's /boot holds
    empty_boot.mkdir()
    mln_plain.config.write_text("".join(line + "\n" for line in conf.splitlines()
                                        if not line.startswith(("xen_kernel", "xen_ramdisk")))
                                + f"xen_boot_dir {empty_boot}\n")
    path = _write(mln_plain, "global { project nok }\nhost a { xen; template ubuntu-server.ext3 }\n")
    r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode != 0
    assert "missing kernel" in r.output and "xen_kernel" in r.output and "host a" in r.output
    assert not (mln_plain.projects / "nok").exists()
    # a bootloader in xen_extra needs no kernel
    path = _write(mln_plain, 'global { project bl }\nhost a { xen; template ubuntu-server.ext3\n'
                             '  xen_extra { bootloader = "pygrub" } }\n')
    r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    cfg = (mln_plain.projects / "bl" / "a_xen.cfg").read_text()
    assert not re.search(r"^(kernel|ramdisk) =", cfg, re.M) and cfg.endswith('bootloader = "pygrub"\n')


def test_kernel_that_does_not_exist(xen_plain):
    path = _write(xen_plain, "global { project nok }\n"
                             "host a { xen; template ubuntu-server.ext3; kernel /nonexistent/vmlinuz }\n")
    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode != 0 and "missing kernel: /nonexistent/vmlinuz does not exist" in r.output


@pytest.mark.parametrize("text, message", [
    ("switch s { type vde }\nhost a { xen; network eth0 { switch s } }",
     "switch 's' is of type vde, but Xen guests join Linux bridges"),
    ("host a { xen; network eth0 { switch /tmp/sock } }", "cannot join the socket /tmp/sock"),
    ("host a { xen; vcpus two }", "vcpus must be a number of at least 1, not 'two'"),
    ("host a { xen; vncdisplay x }", "vncdisplay must be a number, not 'x'"),
    ("host a { xen; mount { /home/u /u hostfs } }", "hostfs exists only for UML guests"),
    ("host a { xen; mount { img/data.img /d ext4 } }", "must be an absolute path"),
    ("host a { xen; network eth0 { bridge a-very-long-bridge-name } }", "is not a network interface name"),
    ("host a { hvm; mount { /a /a ext4; /b /b ext4; /c /c ext4; /d /d ext4 } }",
     "an HVM guest takes at most 4 IDE disks"),
    ("host a { xen; vncpasswd a,b }", "cannot contain a comma"),
])
def test_check_reports(xen_plain, text, message):
    path = _write(xen_plain, "global { project bad }\n" + text + "\n")
    r = xen_plain.mln("check", "-f", str(path))
    assert message in r.output, r.output
    assert r.returncode != 0


def test_check_knows_the_keywords(xen_plain):
    path = _write(xen_plain, "global { project kw }\nhost a { xen; vcpus 2; cpus 1; vncdisplay 1; "
                             "vncpassword x; vnckeymap de; extra quiet; xen_extra { a = b }\n"
                             "  network eth0 { bridge xenbr0 } }\nhost b { hvm; vncpasswd y }\n")
    r = xen_plain.mln("check", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "unknown" not in r.output


def test_switch_with_type_bridge_is_left_to_the_bridge_plugin(xen_plain):
    path = _write(xen_plain, "global { project tb }\nswitch s { type bridge; bridge br-mln-t }\n"
                             "host a { xen; template ubuntu-server.ext3; network eth0 { switch s } }\n")
    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert state(xen_plain, "tb")["switches"]["s"] == {"kind": "bridge", "bridge": "br-mln-t"}
    assert '"bridge=br-mln-t,' in (xen_plain.projects / "tb" / "a_xen.cfg").read_text()


def test_switch_without_xen_hosts_is_not_taken(xen_plain):
    path = _write(xen_plain, "global { project nx }\nswitch s { }\nswitch t { }\n"
                             "host a { xen; template ubuntu-server.ext3; network eth0 { switch t } }\n"
                             "host b { uml; template ubuntu-server.ext3; network eth0 { switch s }\n"
                             "  network eth1 { switch t } }\n")
    r = xen_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    switches = state(xen_plain, "nx")["switches"]
    assert switches["s"]["kind"] == "vde"          # the default kind: no Xen host on it
    assert switches["t"] == {"kind": "bridge", "bridge": "t.nx", "for": "xen"}   # UML joins it with a tap


def test_bridge_names_of_switches():
    from mln_core.model import Switch
    long = Switch("lan", "oscourse-group07")
    assert bridge_name(long) != bridge_name(Switch("lan", "oscourse-group08"))
    assert all(len(bridge_name(s)) <= 15 for s in (long, Switch("lan", "x")))


def test_bridge_records():
    """The record xen gives a plain switch is the bridge record of the shared helper module."""
    from mln_backends import bridges
    from mln_core.model import Switch
    s = Switch("lan", "p")
    assert bridges.record(s, **{"for": "xen"}) == {"kind": "bridge", "bridge": "lan.p", "for": "xen"}
    assert bridges.bridge_of(bridges.record(s)) == "lan.p"
    assert bridges.bridge_of({"kind": "vde", "bridge": "x"}) is None and bridges.bridge_of({}) is None
