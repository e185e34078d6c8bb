"""Fixtures of the Xen backend tests: templates named like the examples', a kernel in
mln.conf, the example projects, and a fake ``xl`` on PATH.

Xen cannot run on the test machines. The tests check what can be checked without it: the
generated files (golden files, and Xen's own parser ``libxlutil``, see ``xlucheck``), the
guest edits, and the ``xl`` commands mln runs (against ``fake_xl``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mln_core.testing import machine_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLES = ROOT / "tests" / "core" / "examples"
GOLDEN = HERE / "golden"
FAKE_XL = HERE / "fake_xl.py"

#: the templates the example projects name; all made from one small Debian-like image
LINUX_TEMPLATES = ("ubuntu-client.ext3", "ubuntu-server.ext3", "debian-course.ext3", "centos-node.ext3")
WINDOWS_TEMPLATE = "winxp.img"

#: example -> the files it needs (the first is the project file)
EXAMPLE_FILES = {
    "ldaptest": ["ldaptest.mln"],
    "oscourse-group07": ["oscourse-group07.mln", "oscourse.mln"],
    "italy": ["italy.mln"],
    "vcluster": ["vcluster.mln", "servers.txt"],
    "san": ["san.mln"],
}
#: project files of this directory (not examples of the spec)
OWN_FILES = {"xenfeat": HERE / "xenfeatures.mln"}
#: project name of each case (the file name of san.mln differs from its project)
PROJECT_OF = {"san": "sanfarm"}

INITTAB = """\
# /etc/inittab: init(8) configuration (a Debian-like test template for the Xen tests).
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
l2:2:wait:/etc/init.d/rc 2
1:2345:respawn:/sbin/getty 38400 tty1
2:23:respawn:/sbin/getty 38400 tty2
co:2345:respawn:/sbin/getty 38400 hvc0 linux
"""


def make_debian_image(workdir: Path) -> Path:
    """A 16 MB ext4 image that mln detects as Debian (it has /etc/network/interfaces)."""
    root = workdir / "root"
    files = {
        "etc/network/interfaces": "auto lo\niface lo inet loopback\n",
        "etc/inittab": INITTAB,
        "etc/securetty": "console\ntty1\ntty2\n",
        "etc/hostname": "template\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\n",
        "etc/fstab": "/dev/sda1 / ext3 defaults 0 1\n",
        "sbin/getty": "#!/bin/sh\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "root").mkdir()
    image = workdir / "debian.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image), "16M"], check=True,
                   capture_output=True)
    return image


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory) -> Path:
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("e2fsprogs (mkfs.ext4, debugfs) is not installed")
    return make_debian_image(tmp_path_factory.mktemp("xen-template"))


@pytest.fixture(scope="session")
def xen_templates(tmp_path_factory, debian_image) -> Path:
    """A templates directory with the examples' templates, registered once per session
    (tests only read it)."""
    d = tmp_path_factory.mktemp("xen-templates")
    conf = d / "empty.conf"
    conf.write_text(machine_config())
    winxp = d / WINDOWS_TEMPLATE
    with open(winxp, "wb") as f:
        f.write(bytes(16 * 2**20))     # a whole-disk image mln cannot open: like a Windows disk
    registry = d / "templates"
    env = {**os.environ, "MLN_CONFIG": str(conf)}
    for name, source in [(n, debian_image) for n in LINUX_TEMPLATES] + [(WINDOWS_TEMPLATE, winxp)]:
        p = subprocess.run([sys.executable, "-m", "mln_core.cli", "-T", str(registry), "register_template",
                            "-t", str(source), "-n", name], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
    winxp.unlink()
    return registry


# the examples' service hosts, all of them this machine here (a build makes every host)
EXAMPLE_SERVERS = "".join(f"server {name} local\n" for name in
                          ("bigvmbox", "server1.example.org", "server2.example.org", "server3.example.org"))


def setup_xen(env, templates: Path) -> None:
    """The examples' templates (ubuntu-server.ext3 the default), a (dummy) dom0 kernel and
    ramdisk in mln.conf."""
    xen = env.root / "xen"
    xen.mkdir(exist_ok=True)
    (xen / "vmlinuz").write_bytes(b"not a kernel: Xen cannot run here\n")
    (xen / "initrd.img").write_bytes(b"not an initrd\n")
    (xen / "own-vmlinuz").write_bytes(b"a host's own kernel\n")
    with open(env.config, "a") as f:   # a later line of mln.conf wins
        f.write(f"templates {templates}\ndefault_template ubuntu-server.ext3\n"
                f"xen_kernel {xen / 'vmlinuz'}\nxen_ramdisk {xen / 'initrd.img'}\n"
                f"{EXAMPLE_SERVERS}")
    env.templates = templates


@pytest.fixture
def xen_plain(mln_plain, xen_templates):
    """An isolated mln set-up (no guests, no leak checks) ready to build Xen projects."""
    setup_xen(mln_plain, xen_templates)
    return mln_plain


@pytest.fixture
def xen_env(mln_env, xen_templates):
    """Like xen_plain, on mln_env: fails the test if bridges or processes are left."""
    setup_xen(mln_env, xen_templates)
    return mln_env


def copy_case(env, case: str, replace: dict[str, str] | None = None) -> Path:
    """Copy an example (with the files it includes) into the test directory; return the
    project file. ``replace`` changes text in the copies (paths that must be the test's)."""
    src = env.root / "src"
    src.mkdir(exist_ok=True)
    replace = dict(replace or {})
    if case in OWN_FILES:
        files = [OWN_FILES[case]]
        replace.setdefault("@KERNEL@", str(env.root / "xen" / "own-vmlinuz"))
    else:
        files = [EXAMPLES / name for name in EXAMPLE_FILES[case]]
    for path in files:
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        (src / path.name).write_text(text)
    return src / files[0].name


def generated(env, project: str) -> dict[str, str]:
    """{file name: text} of every Xen file mln wrote for ``project``."""
    pdir = env.projects / project
    return {p.name: p.read_text() for p in sorted(pdir.iterdir())
            if p.name.endswith(("_xen.cfg", "_xen.hvm"))}


def normalize(env, text: str, replace: dict[str, str] | None = None) -> str:
    """Test paths -> ``@PROJECTS@`` / ``@ROOT@``, so that golden files are stable."""
    text = text.replace(str(env.projects), "@PROJECTS@").replace(str(env.root), "@ROOT@")
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text


def state(env, project: str) -> dict:
    return json.loads((env.projects / project / "state.json").read_text())


def show(env, path: Path) -> dict:
    r = env.mln("show", "--format", "json", "-f", str(path))
    assert r.returncode == 0, r.output
    return json.loads(r.stdout)


def guest_file(image: Path, path: str) -> str | None:
    """A file of an ext image, read with debugfs (None if it does not exist)."""
    p = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True)
    if p.returncode != 0 or re.search(r"File not found|not found by ext2_lookup", p.stderr):
        return None
    return p.stdout


class FakeXl:
    """The fake ``xl`` (``fake_xl.py``) on PATH of ``env``: its call log and domain state."""

    def __init__(self, env):
        self.dir = env.root / "fake-xl"
        self.dir.mkdir()
        self.log = self.dir / "calls.jsonl"
        self.state_file = self.dir / "domains.json"
        wrapper = self.dir / "xl"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_XL} \"$@\"\n")
        wrapper.chmod(0o755)
        env.env["PATH"] = f"{self.dir}:{env.env.get('PATH', os.defpath)}"
        env.env["FAKE_XL_LOG"] = str(self.log)
        env.env["FAKE_XL_STATE"] = str(self.state_file)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def domains(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def set_domains(self, domains: dict) -> None:
        self.state_file.write_text(json.dumps(domains))


@pytest.fixture
def fake_xl(xen_env):
    return FakeXl(xen_env)
