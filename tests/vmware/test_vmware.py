"""The vmware backend: .vmx files (golden), VMDK disks that boot, vmnet switches, vmrun.

VMware cannot run on the test machine: the .vmx output is compared with golden files
(read against spec 7.3), the VMDK is opened with ``qemu-img info`` and booted under QEMU,
and every ``vmrun`` call goes to ``fake_vmrun.py`` (first on PATH as ``vmrun``), which
records its argv and answers ``list`` from a state file.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mln_backends.vmware import static_mac_ok
from mln_backends.vmware_vmx import vmx_escape

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"

TWOHOST = """\
global {
    project vmt
}

host web {
    vmware
    memory 192M
    size 96M
    vcpus 2
    network eth1 {
        address dhcp
    }
    network eth0 {
        switch lan
        address 10.0.0.1
        netmask 255.255.255.0
        mac 00:50:56:3F:00:01
    }
    startup {
        echo VMDK_BOOT_OK $(hostname)
        poweroff
    }
}

host db {
    vmware
    network eth0 {
        address dhcp
    }
    startup {
        echo VMDK_BOOT_OK $(hostname)
        poweroff
    }
}

switch lan {
    vmware
}
"""


class VM:
    """An ``mln_env`` set up for VMware: fake vmrun first on PATH, mapping file and
    vmnet device directory in the test's tmp directory."""

    def __init__(self, env, template_dir: Path):
        self.env = env
        self.template_dir = template_dir
        self.fake = env.root / "fake-vmrun"
        bindir = self.fake / "bin"
        bindir.mkdir(parents=True)
        vmrun = bindir / "vmrun"
        vmrun.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_vmrun.py"} "$@"\n')
        vmrun.chmod(0o755)
        self.mappings = env.root / "etc-mln-vmware" / "vnet_switch_mappings.dat"
        self.dev = env.root / "dev"
        self.dev.mkdir()
        self.conf(f"vmware_vnet_mappings {self.mappings}", f"vmware_dev_dir {self.dev}")
        env.env["PATH"] = f"{bindir}:{os.environ['PATH']}"
        env.env["FAKE_VMRUN_DIR"] = str(self.fake)

    def conf(self, *lines: str) -> None:
        with open(self.env.config, "a") as f:
            f.write("".join(line + "\n" for line in lines))

    def build(self, name: str, text: str, *extra: str):
        path = self.env.write(name, text)
        r = self.env.mln("build", "-f", str(path), *extra)
        assert r.returncode == 0, r.output
        return r

    def calls(self) -> list[list[str]]:
        p = self.fake / "calls.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def actions(self) -> list[list[str]]:
        """The calls that change something (not ``list``)."""
        return [c for c in self.calls() if "list" not in c]

    def clear_calls(self) -> None:
        (self.fake / "calls.jsonl").unlink(missing_ok=True)

    def mapping_lines(self) -> list[str]:
        return self.mappings.read_text().splitlines() if self.mappings.exists() else []

    def state(self, project: str) -> dict:
        return json.loads((self.env.projects / project / "state.json").read_text())

    def vmx(self, project: str, host: str) -> str:
        return (self.env.projects / project / f"{host}.vmx").read_text().replace(str(self.env.root), "<TMP>")


@pytest.fixture
def vm(mln_env, test_template):
    return VM(mln_env, test_template)


def _golden(case: str, host: str) -> str:
    return (GOLDEN / case / f"{host}.vmx").read_text()


def boot_vmdk(vmdk: Path, template_dir: Path, log: Path, timeout: float = 60) -> str:
    """Boot a VMDK under QEMU with the test template's kernel; return the serial log."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none",
            "-kernel", str(template_dir / "vmlinux"), "-initrd", str(template_dir / "initrd.gz"),
            "-append", "console=ttyS0 root=/dev/vda rw quiet",
            "-drive", f"file={vmdk},format=vmdk,if=virtio", "-serial", f"file:{log}", "-no-reboot"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        p.wait(timeout=timeout)          # the guest powers off at the end of its startup section
    except subprocess.TimeoutExpired:
        pass
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stderr.close()
    return log.read_text(errors="replace") if log.exists() else ""


def qemu_img_info(path: Path) -> dict:
    r = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def guest_file(vmdk: Path, tmp: Path, path: str) -> str:
    """Read a file inside a VMDK (converted to a raw copy, read with debugfs)."""
    raw = tmp / (vmdk.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(vmdk), str(raw)], check=True, capture_output=True)
    try:
        r = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True)
        return r.stdout
    finally:
        raw.unlink()


# -- pure functions --------------------------------------------------------------------------

def test_static_mac_range():
    assert static_mac_ok("00:50:56:00:00:00")
    assert static_mac_ok("00:50:56:3f:ff:ff")
    assert static_mac_ok("00:50:56:3F:FF:FF")
    assert not static_mac_ok("00:50:56:40:00:00")
    assert not static_mac_ok("00:0c:29:00:00:01")   # VMware's generated range is not for static ones
    assert not static_mac_ok("52:54:00:12:34:56")


def test_vmx_escape():
    assert vmx_escape("images/web.vmdk") == "images/web.vmdk"
    assert vmx_escape('a"b|c#d') == "a|22b|7Cc|23d"
    assert vmx_escape("x\ty") == "x|09y"


# -- check -----------------------------------------------------------------------------------

def test_check_reports_vmware_problems(mln_plain):
    path = mln_plain.write("bad.mln", """\
global {
    project bad
}
host a {
    vmware
    network eth0 {
        switch plain
        mac 00:50:56:40:00:01
    }
}
host b {
    qemu
    network eth0 {
        switch vm
    }
}
switch plain {
}
switch vm {
    vmware
}
""")
    r = mln_plain.mln("check", "-f", str(path))
    assert r.returncode != 0
    assert ("mac 00:50:56:40:00:01 cannot be a VMware static MAC; use one in "
            "00:50:56:00:00:00-00:50:56:3f:ff:ff") in r.stderr
    assert ("host 'a' eth0: switch 'plain' is not a VMware switch; "
            "write 'vmware' in 'switch plain { }'") in r.stderr
    assert "host 'b' eth0: a qemu host cannot join VMware switch 'vm'" in r.stderr
    assert "unknown keyword" not in r.stderr


def test_vmware_keywords_are_known(mln_plain):
    path = mln_plain.write("ok.mln", "global {\n    project ok\n}\nhost a {\n    vmware\n    vcpus 2\n"
                                     "    network eth0 {\n        switch s\n    }\n}\n"
                                     "switch s {\n    vmware\n}\n")
    r = mln_plain.mln("check", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "unknown" not in r.stderr and "without a backend" not in r.stderr


# -- build: .vmx, VMDK, boot -----------------------------------------------------------------

@pytest.mark.guests
def test_two_host_project_vmx_vmdk_and_boot(vm, tmp_path):
    r = vm.build("vmt.mln", TWOHOST)
    assert "PROJECT vmt FINISHED" in r.stderr
    pdir = vm.env.projects / "vmt"
    for host in ("web", "db"):
        assert vm.vmx("vmt", host) == _golden("twohost", host), host
        assert os.stat(pdir / f"{host}.vmx").st_mode & 0o111      # as Workstation writes them
    assert vm.mapping_lines() == ["vmnet10 lan.vmt"]

    # the raw copy the guest was individualized in is gone; the VMDK is the recorded disk
    assert sorted(os.listdir(pdir / "images")) == ["db.vmdk", "web.vmdk"]
    st = vm.state("vmt")
    assert st["switches"]["lan"] == {"kind": "vmware", "vmnet": "vmnet10"}
    for host, size in (("web", 96 * 2**20), ("db", 250 * 2**20)):
        disk = st["hosts"][host]["disk"]
        assert (disk["path"], disk["format"], disk["kind"], disk["size"]) == \
            (f"images/{host}.vmdk", "vmdk", "file", size)
        assert st["hosts"][host]["backend"]["vmx"] == f"{host}.vmx"
        info = qemu_img_info(pdir / "images" / f"{host}.vmdk")
        assert info["format"] == "vmdk"
        assert info["virtual-size"] == size
        assert info["format-specific"]["data"]["create-type"] == "monolithicSparse"
        assert len(info["format-specific"]["data"]["extents"]) == 1
    assert st["hosts"]["web"]["backend"]["vnets"] == {"eth0": "vmnet10"}

    # the VMDKs boot (under QEMU, with the template's kernel), individualized
    for host in ("web", "db"):
        log = boot_vmdk(pdir / "images" / f"{host}.vmdk", vm.template_dir, tmp_path / f"{host}.serial")
        assert f"VMDK_BOOT_OK {host}" in log, log[-3000:]


@pytest.mark.guests
def test_ldaptest_vmware_variant(vm):
    # the listing's templates: the busybox test template under their names
    for name in ("ubuntu-client.ext3", "ubuntu-server.ext3"):
        (vm.env.templates / name).symlink_to(vm.template_dir / "busybox.ext4")
    r = vm.build("ldaptest.mln", (HERE / "ldaptest-vmware.mln").read_text())
    assert "2 hosts (vmware), 1 switch" in r.stderr
    for host in ("ldapclient", "ldapserver"):
        assert vm.vmx("ldaptest", host) == _golden("ldaptest", host), host
        info = qemu_img_info(vm.env.projects / "ldaptest" / "images" / f"{host}.vmdk")
        assert info["format"] == "vmdk"
    assert vm.mapping_lines() == ["vmnet10 lan.ldaptest"]


@pytest.mark.guests
def test_swap_and_filepath_disks(vm, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    vm.build("sw.mln", f"""\
global {{
    project sw
}}
host h {{
    vmware
    swap 16M
    filepath {shared}
}}
""")
    pdir = vm.env.projects / "sw"
    assert sorted(os.listdir(shared)) == [".mln-owner.h.sw.vmdk", "h.sw.vmdk"]   # the disk and its owner
    assert sorted(os.listdir(pdir / "images")) == ["swap_h.vmdk"]
    text = vm.vmx("sw", "h")
    assert 'scsi0:0.fileName = "<TMP>/shared/h.sw.vmdk"' in text
    assert 'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "images/swap_h.vmdk"\n' in text
    disk = vm.state("sw")["hosts"]["h"]["disk"]
    assert disk["path"] == str(shared / "h.sw.vmdk") and disk["extra"]["swap"] == "images/swap_h.vmdk"
    assert qemu_img_info(pdir / "images" / "swap_h.vmdk")["format"] == "vmdk"
    fstab = guest_file(shared / "h.sw.vmdk", tmp_path, "/etc/fstab")
    assert "/dev/sda\t/\text4" in fstab and "/dev/sdb\tnone\tswap" in fstab
    # replacing the project keeps the new disk (the old project's cleanup must not take it)
    r = vm.env.mln("build", "-r", "-f", str(vm.env.root / "sw.mln"))
    assert r.returncode == 0, r.output
    assert sorted(os.listdir(shared)) == [".mln-owner.h.sw.vmdk", "h.sw.vmdk"]   # the disk and its owner
    assert qemu_img_info(shared / "h.sw.vmdk")["format"] == "vmdk"
    r = vm.env.mln("remove", "-f", "-p", "sw")
    assert r.returncode == 0, r.output
    assert os.listdir(shared) == []


@pytest.mark.guests
def test_bad_static_mac_stops_the_build(vm):
    path = vm.env.write("m.mln", TWOHOST.replace("00:50:56:3F:00:01", "00:50:56:40:00:01"))
    r = vm.env.mln("build", "-f", str(path))
    assert r.returncode == 1
    assert "mac 00:50:56:40:00:01 cannot be a VMware static MAC" in r.stderr
    assert not (vm.env.projects / "vmt").exists()


# -- vmnet allocation ------------------------------------------------------------------------

def _one_switch(project: str, extra_host: str = "") -> str:
    return (f"global {{\n    project {project}\n}}\nhost a {{\n    vmware\n{extra_host}"
            "    network eth0 {\n        switch lan\n    }\n}\nswitch lan {\n    vmware\n}\n")


@pytest.mark.guests
def test_vmnet_allocation_release_and_rebuild(vm):
    vm.build("a.mln", _one_switch("pa"))
    vm.build("b.mln", _one_switch("pb"))
    assert vm.mapping_lines() == ["vmnet10 lan.pa", "vmnet11 lan.pb"]
    assert 'ethernet0.vnet = "vmnet11"' in vm.vmx("pb", "a")

    # replacing a project: the new build takes a new vmnet, the old one is released after
    vm.build("a.mln", _one_switch("pa"), "-r")
    assert vm.mapping_lines() == ["vmnet11 lan.pb", "vmnet12 lan.pa"]
    assert 'ethernet0.vnet = "vmnet12"' in vm.vmx("pa", "a")
    assert vm.state("pa")["switches"]["lan"]["vmnet"] == "vmnet12"

    # a build that fails after its switches were made releases its vmnet again
    path = vm.env.write("c.mln", _one_switch("pc", "    mount {\n        /srv/data.img /data ext4\n    }\n"))
    r = vm.env.mln("build", "-f", str(path))
    assert r.returncode == 1 and "VMware attaches only VMDK disks" in r.stderr
    assert vm.mapping_lines() == ["vmnet11 lan.pb", "vmnet12 lan.pa"]
    vm.build("c.mln", _one_switch("pc"))
    assert vm.mapping_lines() == ["vmnet11 lan.pb", "vmnet12 lan.pa", "vmnet10 lan.pc"]
    assert vm.state("pc")["switches"]["lan"]["vmnet"] == "vmnet10"

    for project in ("pb", "pa", "pc"):
        r = vm.env.mln("remove", "-f", "-p", project)
        assert r.returncode == 0, r.output
    assert vm.mapping_lines() == []


# -- start / stop / status through vmrun -----------------------------------------------------

@pytest.mark.guests
def test_start_status_stop_through_vmrun(vm):
    vm.build("vmt.mln", TWOHOST)
    pdir = vm.env.projects / "vmt"
    web, db = str(pdir / "web.vmx"), str(pdir / "db.vmx")
    dev = vm.dev / "vmnet10"
    vm.clear_calls()

    r = vm.env.mln("start", "-p", "vmt")
    assert r.returncode == 0, r.output
    assert sorted(vm.actions()) == sorted([["-T", "ws", "start", web, "nogui"],
                                           ["-T", "ws", "start", db, "nogui"]])
    assert ["-T", "ws", "list"] in vm.calls()                   # "already running?" asked through vmrun
    st = os.stat(dev)                                           # the switch's vmnet device
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (119, 10)

    r = vm.env.mln("status", "-p", "vmt")
    assert r.returncode == 0, r.output
    assert r.stdout.splitlines() == ["vmt host web up", "vmt host db up", "vmt switch lan up"]

    vm.clear_calls()
    r = vm.env.mln("stop", "-p", "vmt")
    assert r.returncode == 0, r.output
    assert sorted(vm.actions()) == sorted([["-T", "ws", "stop", web, "soft"],
                                           ["-T", "ws", "stop", db, "soft"]])
    assert not dev.exists()                                     # start made it, stop removed it
    r = vm.env.mln("status", "-p", "vmt")
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["vmt host web down", "vmt host db down", "vmt switch lan down"]

    # one host, hard stop
    assert vm.env.mln("start", "-p", "vmt", "-h", "web").returncode == 0
    assert dev.exists()
    vm.clear_calls()
    r = vm.env.mln("stop", "-p", "vmt", "-h", "web", "-H")
    assert r.returncode == 0, r.output
    assert vm.actions() == [["-T", "ws", "stop", web, "hard"]]
    r = vm.env.mln("stop", "-p", "vmt")
    assert r.returncode == 0, r.output
    assert not dev.exists()


@pytest.mark.guests
def test_soft_stop_without_tools_falls_back_to_hard(vm):
    vm.build("vmt.mln", TWOHOST)
    db = str(vm.env.projects / "vmt" / "db.vmx")
    assert vm.env.mln("start", "-p", "vmt", "-h", "db").returncode == 0
    vm.clear_calls()
    vm.env.env["FAKE_VMRUN_NO_TOOLS"] = "1"
    r = vm.env.mln("stop", "-p", "vmt", "-h", "db")
    assert r.returncode == 0, r.output
    assert vm.actions() == [["-T", "ws", "stop", db, "soft"], ["-T", "ws", "stop", db, "hard"]]
    assert "db: soft stop failed (Error: The VMware Tools are not running" in r.stderr
    assert "did not stop" not in r.stderr
    assert vm.env.mln("status", "-p", "vmt", "-h", "db").stdout.strip() == "vmt host db down"


@pytest.mark.guests
def test_stop_save_suspends_and_start_resumes(vm):
    """``stop -S`` runs ``vmrun suspend``; the suspended VM (``checkpoint.vmState`` in its
    .vmx) is "down (saved)"; ``vmrun start`` resumes it and its .vmss goes away."""
    vm.build("vmt.mln", TWOHOST)
    pdir = vm.env.projects / "vmt"
    web, db = str(pdir / "web.vmx"), str(pdir / "db.vmx")
    assert vm.env.mln("start", "-p", "vmt").returncode == 0
    vm.clear_calls()
    r = vm.env.mln("stop", "-p", "vmt", "-S")
    assert r.returncode == 0, r.output
    assert sorted(vm.actions()) == sorted([["-T", "ws", "suspend", web], ["-T", "ws", "suspend", db]])
    assert "web: saved; 'mln start' resumes it" in r.stderr and "warning" not in r.stderr
    assert sorted((vm.fake / "suspended").read_text().split()) == sorted([web, db])
    assert (pdir / "web.vmss").exists() and 'checkpoint.vmState = "web.vmss"' in vm.vmx("vmt", "web")
    assert not (vm.dev / "vmnet10").exists()                    # the switch stopped as usual
    r = vm.env.mln("status", "-p", "vmt")
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["vmt host web down (saved)", "vmt host db down (saved)",
                                     "vmt switch lan down"]
    assert vm.env.mln("status", "-p", "vmt", "-d").returncode == 0

    vm.clear_calls()
    r = vm.env.mln("start", "-p", "vmt", "-h", "web")
    assert r.returncode == 0, r.output
    assert vm.actions() == [["-T", "ws", "start", web, "nogui"]]
    assert not (pdir / "web.vmss").exists() and (pdir / "db.vmss").exists()
    assert (vm.fake / "suspended").read_text().split() == [db]
    r = vm.env.mln("status", "-p", "vmt")
    assert r.stdout.splitlines()[:2] == ["vmt host web up", "vmt host db down (saved)"]
    assert vm.env.mln("start", "-p", "vmt").returncode == 0
    assert not (pdir / "db.vmss").exists()
    assert vm.env.mln("status", "-p", "vmt").returncode == 0
    assert vm.env.mln("stop", "-p", "vmt").returncode == 0


@pytest.mark.guests
def test_vmware_type_and_errors(vm):
    vm.conf("vmware_type player")
    vm.build("vmt.mln", TWOHOST)
    web = str(vm.env.projects / "vmt" / "web.vmx")
    vm.clear_calls()
    r = vm.env.mln("start", "-p", "vmt", "-h", "web")
    assert r.returncode == 0, r.output
    assert vm.actions() == [["-T", "player", "start", web, "nogui"]]
    assert all(c[:2] == ["-T", "player"] for c in vm.calls())
    assert vm.env.mln("stop", "-p", "vmt", "-H").returncode == 0

    # a host whose .vmx is gone, and an unsupported vmrun type, are clear errors
    os.unlink(web)
    r = vm.env.mln("start", "-p", "vmt", "-h", "web")
    assert r.returncode == 1
    assert "web.vmx is missing; build the project again" in r.stderr
    vm.conf("vmware_type esx")
    r = vm.env.mln("status", "-p", "vmt")
    assert r.returncode == 1 and "vmware_type in mln.conf must be one of ws, player, fusion" in r.stderr
    vm.env.config.write_text(vm.env.config.read_text().replace("vmware_type esx\n", ""))
