"""A server that runs no mln, only a libvirtd (``server sh2 libvirt root@ADDRESS``): the manager
builds, starts, stops and removes the libvirt hosts placed there over ``qemu+ssh://``.

Server sh2 of the ``mln_servers`` kit runs a private virtlogd and libvirtd
(tests/libvirt/conftest.py's :class:`Libvirtd`) in its network namespace and a mount
namespace of its own; its socket is bind-mounted on /run/libvirt in the namespace of sh2's
sshd, so that libvirt's ssh transport finds it where ``qemu:///system`` has it (through
``virt-ssh-helper`` there). The client's mln.conf names the kit's key and known_hosts, so
host keys are checked. No mln runs on sh2: the client keeps sh2's part of the project in
``projects/.server-sh2`` and does everything there through the URI (disks sent into the
pool ``mln``, the switch a libvirt network)."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, TEMPLATE_DIR

from .conftest import Libvirtd, require_libvirt

pytestmark = [pytest.mark.root, pytest.mark.guests]


def _kit(tmp_path):
    from mln_core.nsservers import NamespaceServers, missing_tools
    if missing_tools():
        pytest.skip(f"mln_servers needs {', '.join(missing_tools())} (scripts/install-deps.sh)")
    kit = NamespaceServers(tmp_path / "servers", names=("sh2",))
    kit.__enter__()
    conf = kit.client_conf.read_text()
    kit.client_conf.write_text(conf.replace(f"server sh2 ssh {kit.address('sh2')}",
                                            f"server sh2 libvirt root@{kit.address('sh2')}"))
    return kit


def _project(kit, hypervisor: str = "libvirt", project: str = "lvremote") -> Path:
    text = QUICKSTART.read_text().replace("$hypervisor = uml", f"$hypervisor = {hypervisor}")
    text = text.replace("project quickstart", f"project {project}")
    text = text.replace("    template busybox.ext4\n", "    template busybox.ext4\n    service_host sh2\n", 1)
    path = kit.client_dir / f"{project}.mln"
    path.write_text(text)
    return path


@pytest.fixture
def lv_remote(tmp_path, test_template):
    """The kit with server sh2 and its libvirtd, the client's mln.conf naming sh2 by the
    libvirt transport: (kit, Libvirtd)."""
    require_libvirt()
    if not shutil.which("virt-ssh-helper"):
        pytest.skip("libvirt's virt-ssh-helper is not installed (libvirt-daemon)")
    root = Path(tempfile.mkdtemp(prefix="mln-libvirtd-"))
    os.chmod(root, 0o755)
    kit = d = None
    try:
        kit = _kit(tmp_path)
        d = Libvirtd(root, enter=["nsenter", "-t", str(kit.pid("sh2")), "-n", "-m", "-u", "--"],
                     host_uuid=str(uuid.uuid4()))
        d.prepare()
        d.start()
        r = kit.run("sh2", ["mount", "--bind", str(root / "sock"), "/run/libvirt"])    # (gone with sshd)
        assert r.returncode == 0, r.stderr
        r = kit.mln("client", "register_template", "-t", str(TEMPLATE_DIR / "busybox.ext4"),
                    "--kernel", str(TEMPLATE_DIR / "vmlinux"), "--initrd", str(TEMPLATE_DIR / "initrd.gz"))
        assert r.returncode == 0, r.stderr
        yield kit, d
    finally:
        if kit is not None and d is not None:          # whatever a failed test left
            kit.mln("client", "stop", "-p", "lvremote", "-H", timeout=120)
            kit.mln("client", "remove", "-f", "-p", "lvremote", timeout=120)
        if d is not None:
            d.clean_domains()
            d.stop()
        if kit is not None:
            kit.down()
        shutil.rmtree(root, ignore_errors=True)


def volumes(lv: Libvirtd) -> list[str]:
    """The volumes of the pool ``mln`` there."""
    lv.virsh("pool-refresh", "mln")
    return sorted(line.split()[0] for line in lv.virsh("-q", "vol-list", "mln").splitlines() if line.strip())


def console(kit, lv: Libvirtd, uri: str, domain: str) -> str:
    """The guest's console log, read through the remote libvirtd (its pool)."""
    with tempfile.NamedTemporaryFile() as f:
        r = kit.client_run(["virsh", "-q", "-c", uri, "pool-refresh", "mln"], timeout=60)
        r = kit.client_run(["virsh", "-q", "-c", uri, "vol-download", "--pool", "mln",
                            f"{domain}.console.log", f.name], timeout=60)
        return Path(f.name).read_text(errors="replace") if r.returncode == 0 else ""


def wait_console(kit, lv, uri, domain, pattern: str, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while True:
        text = console(kit, lv, uri, domain)
        if re.search(pattern, text):
            return text
        assert time.monotonic() < end, f"{domain}: no {pattern!r} within {timeout} s:\n{text[-2000:]}"
        time.sleep(1)


def test_libvirt_hosts_on_a_server_without_mln(lv_remote):
    kit, lv = lv_remote
    path = _project(kit)
    part = kit.client_dir / "projects" / ".server-sh2" / "lvremote"
    # all or nothing: the second host's disk cannot be made ready for sh2, so the first one's
    # volumes go again (and with them the shared ones: nothing else is in the pool)
    r = kit.mln("client", "build", "-f", str(path), timeout=300, env={"MLN_FAULTS": "fail@rebase#2"})
    assert r.returncode == 1 and "server sh2:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "[sh2] +---> sending template busybox.ext4" in r.stderr, r.stderr
    assert volumes(lv) == [] and not part.exists() and lv.domains() == []
    # the part's mln killed in the middle (the manager carries it out in an 'mln serve' of its own):
    # the next build deletes the volume the killed one had sent
    r = kit.mln("client", "build", "-f", str(path), timeout=300, env={"MLN_FAULTS": "kill@.qcow2 sent"})
    assert r.returncode == 1 and "server sh2: 'mln serve' ended (killed by signal 9) before it answered" in r.stderr \
        and "Traceback" not in r.stderr, r.stderr
    assert len(volumes(lv)) >= 4, r.stderr           # (the other host's may be there too, half sent)

    r = kit.mln("client", "build", "-r", "-f", str(path), timeout=300)
    assert r.returncode == 0, r.stderr
    assert part.is_dir() and not (kit.dir("sh2") / "projects" / "lvremote").exists()
    vols = volumes(lv)
    assert len([v for v in vols if v.startswith("mln-shared-")]) == 3, vols       # template, kernel, initrd
    assert len([v for v in vols if v.startswith(("alpha.lvremote-", "beta.lvremote-"))]) == 2, vols
    assert lv.domains() == []

    r = kit.mln("client", "start", "-p", "lvremote", timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads((part / "hosts" / "alpha" / "libvirt.json").read_text())
    uri = rec["uri"]
    assert uri.startswith(f"qemu+ssh://root@{kit.address('sh2')}/system?"), uri
    r = kit.client_run(["virsh", "-c", uri, "list", "--name"], timeout=60)
    assert r.returncode == 0, r.stderr
    names = sorted(r.stdout.split())
    assert [n.split("-")[0] for n in names] == ["alpha.lvremote", "beta.lvremote"], names
    assert len(lv.virsh("net-list", "--name").split()) == 1
    alpha = wait_console(kit, lv, uri, names[0], r"MLN-CHECK ping 10\.0\.0\.2 ok")
    beta = wait_console(kit, lv, uri, names[1], r"MLN-CHECK ping 10\.0\.0\.1 ok")
    assert "MLN-CHECK hostname alpha" in alpha and "MLN-CHECK hostname beta" in beta
    r = kit.mln("client", "status", "-p", "lvremote")
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "lvremote host alpha up [sh2]", "lvremote host beta up [sh2]", "lvremote switch lan up [sh2]"], \
        r.stdout
    r = kit.mln("client", "console", "-p", "lvremote", "-h", "beta", input="\necho MLN-$((6*7)); hostname\n",
                timeout=60)
    text = r.stdout.replace("\r", "")
    assert r.returncode == 0 and "MLN-42\n" in text and "\nbeta\n" in text, r.stdout + r.stderr
    xml = lv.virsh("dumpxml", names[0])
    assert "<interface type='network'>" in xml and "/var/lib/libvirt/images/mln/" in xml, xml
    r = kit.mln("client", "daemon_status", timeout=60)
    assert r.returncode == 0 and "sh2" in r.stdout, r.stdout + r.stderr

    # stop -S: libvirt's managed save there; the next start resumes the guest
    r = kit.mln("client", "stop", "-p", "lvremote", "-h", "beta", "-S", timeout=120)
    assert r.returncode == 0 and lv.running() == names[:1] and lv.saved_images() != [], r.stderr
    r = kit.mln("client", "status", "-p", "lvremote")
    assert "lvremote host beta down (saved) [sh2]" in r.stdout, r.stdout
    r = kit.mln("client", "start", "-p", "lvremote", "-h", "beta", timeout=120)
    assert r.returncode == 0 and lv.running() == names and lv.saved_images() == [], r.stderr
    assert "MLN-CHECK ping 10.0.0.1 ok" in console(kit, lv, uri, names[1])     # not a new boot

    r = kit.mln("client", "stop", "-p", "lvremote", "-w", "30", timeout=120)
    assert r.returncode == 0 and "did not stop" not in r.stderr, r.stderr      # ACPI shutdown worked
    assert "mln-guest: shutting down" in console(kit, lv, uri, names[0])
    assert lv.running() == [] and lv.domains() == names
    assert lv.virsh("net-list", "--all", "--name").split() == []
    r = kit.mln("client", "status", "-p", "lvremote")
    assert r.returncode == 1 and "lvremote host alpha down [sh2]" in r.stdout, r.stdout

    lv.virsh("vol-create-as", "mln", f"{names[0]}.console.log.1", "1")      # as virtlogd rotates it
    r = kit.mln("client", "remove", "-f", "-p", "lvremote", timeout=120)
    assert r.returncode == 0, r.stderr
    assert lv.domains() == [] and volumes(lv) == []
    assert lv.virsh("net-list", "--all", "--name").split() == []
    assert not (kit.client_dir / "projects" / "lvremote").exists() and not part.exists()


def test_only_libvirt_hosts_on_a_libvirt_server(tmp_path, test_template):
    """A uml or qemu host placed on such a server: one clear error naming the host and the
    server line, from check and build, before anything is done."""
    if os.geteuid() != 0:
        pytest.skip("the namespace kit needs root")
    kit = _kit(tmp_path)
    try:
        for hv in ("uml", "qemu"):
            path = _project(kit, hv, project=f"bad{hv}")
            for cmd in ("check", "build"):
                r = kit.mln("client", cmd, "-f", str(path), timeout=120)
                err = r.stderr
                assert r.returncode != 0 and "Traceback" not in err, err
                want = f"host alpha: a {hv} host cannot run on server sh2 ('server sh2 libvirt root@"
                assert want in err, err
            assert not (kit.client_dir / "projects" / f"bad{hv}").exists()
        # a switch that would join the libvirt server to another one
        text = _project(kit, "libvirt", project="span").read_text()
        text = text.replace("host beta {\n", "host beta {\n    service_host client\n")
        path = kit.client_dir / "span.mln"
        path.write_text(text)
        r = kit.mln("client", "check", "-f", str(path), timeout=120)
        assert r.returncode != 0 and "switch lan: it would join servers" in r.stderr and \
            "server sh2 ('server sh2 libvirt root@" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        kit.down()
