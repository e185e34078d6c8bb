"""``mln upgrade`` moving a running ``libvirt`` host to another server: libvirt's own live
migration (peer to peer, the disk's top layer copied), between two servers of the
``mln_servers`` kit (namespaces sh1 and sh2), each with a private virtlogd and libvirtd
(tests/libvirt/conftest.py's :class:`Libvirtd`) in its network namespace and a mount
namespace of its own (its own /run/libvirt, /var/lib/libvirt and host_uuid, else libvirt
refuses a migration "to the same host"), listening on TCP without authentication on the
server's address (tests only) for the other's libvirtd.

The guest counts on its console every 0.2 s; after the move the count goes on where it
was (never from 1 again, no boot), on sh2, and sh1 has neither its domain nor its disk.
A migration that libvirt refuses leaves the guest running on sh1 and nothing on sh2.
With the disk on shared storage (``filepath`` in a directory that both servers list with
``san_path``: bind-mounted in both servers only, so that the client does not see the disk
as another project's), only the memory travels and the disk stays where it is."""
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

from tests.conftest import TEMPLATE_DIR

from .conftest import Libvirtd, require_libvirt

pytestmark = [pytest.mark.root, pytest.mark.guests]

SERVERS = ("sh1", "sh2")
PROJECT = r"""global {
    project lvmove
}
switch lan {
}
superclass node {
    hypervisor libvirt
    template busybox.ext4
    memory 96M
    service_host sh1
    startup {
        i=0
        while [ ! -f /tmp/mln-stop ]
        do
        i=\$((\$i + 1))
        echo "MLN-COUNT \$i"
        sleep 0.2
        done &
    }
}
host g {
    superclass node
    network eth0 {
        switch lan
        address 10.0.0.1
        netmask 255.255.255.0
    }
}
host s {
    superclass node
    filepath SAN
    network eth0 {
        switch lan
        address 10.0.0.2
        netmask 255.255.255.0
    }
}
"""
MIGRATE_URI = "libvirt_migrate_uri qemu+tcp://{address}/system\n"


@pytest.fixture
def lv_servers(tmp_path, test_template):
    """The kit with servers sh1 and sh2, each with its libvirtd: (kit, {server: Libvirtd})."""
    require_libvirt()
    from mln_core.nsservers import NamespaceServers, missing_tools
    if missing_tools():
        pytest.skip(f"mln_servers needs {', '.join(missing_tools())} (scripts/install-deps.sh)")
    roots = {s: Path(tempfile.mkdtemp(prefix="mln-libvirtd-")) for s in SERVERS}
    san, real = tmp_path / "san", tmp_path / "san-real"
    san.mkdir()
    real.mkdir()
    conf = {s: f"libvirt_uri qemu:///system?socket={roots[s]}/sock/libvirt-sock\n{MIGRATE_URI}"
               f"san_path {san}\n" for s in SERVERS}
    kit = NamespaceServers(tmp_path / "servers", names=SERVERS, conf=conf)
    daemons: dict[str, Libvirtd] = {}
    try:
        kit.__enter__()
        for s in SERVERS:
            r = kit.run(s, ["mount", "--bind", str(real), str(san)])      # (gone with the namespace)
            assert r.returncode == 0, r.stderr
            os.chmod(roots[s], 0o755)
            enter = ["nsenter", "-t", str(kit.pid(s)), "-n", "-m", "-u", "--"]      # into the server
            d = daemons[s] = Libvirtd(roots[s], enter=enter, listen=kit.address(s),
                                      host_uuid=str(uuid.uuid4()))
            d.prepare()
            d.start()
        r = kit.mln("client", "register_template", "-t", str(TEMPLATE_DIR / "busybox.ext4"),
                    "--kernel", str(TEMPLATE_DIR / "vmlinux"), "--initrd", str(TEMPLATE_DIR / "initrd.gz"))
        assert r.returncode == 0, r.stderr
        yield kit, daemons
    finally:
        for s in SERVERS:
            if s in daemons:
                kit.mln(s, "stop", "-a", "-H")           # whatever a failed test left running
        for d in reversed(daemons.values()):        # the first one made /run/libvirt: it removes it
            d.clean_domains()
            d.stop()
        kit.down()
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)


def console(kit, server: str, host: str = "g") -> str:
    p = kit.dir(server) / "projects" / "lvmove" / "hosts" / host / "console.log"
    return p.read_text(errors="replace") if p.exists() else ""


def counts(text: str) -> list[int]:
    """The counter values of the complete lines of ``text``."""
    return [int(x) for x in re.findall(r"MLN-COUNT (\d+)\r?\n", text)]


def wait_count(kit, server: str, above: int, timeout: float = 120, host: str = "g") -> list[int]:
    end = time.monotonic() + timeout
    while not counts(console(kit, server, host)) or counts(console(kit, server, host))[-1] <= above:
        assert time.monotonic() < end, \
            f"the count of {host} on {server} did not pass {above}:\n{console(kit, server, host)[-1500:]}"
        time.sleep(0.2)
    return counts(console(kit, server, host))


def hosts(kit) -> set:
    r = kit.mln("client", "status", "-p", "lvmove", "--format", "json")
    return {(x["name"], x["server"], x["state"]) for x in json.loads(r.stdout) if x["kind"] == "host"}


def running(lv, server: str) -> dict[str, str]:
    """{host: domain} of the domains that run on ``server``'s libvirtd."""
    return {d.split(".")[0]: d for d in lv[server].running()}


def test_running_libvirt_guests_move_live_disk_copied_or_shared_and_keep_counting(lv_servers, tmp_path):
    """g's disk is a qcow2 overlay in sh1's project (its top layer is copied); s's is in a
    ``san_path`` directory both servers reach (only its memory travels)."""
    kit, lv = lv_servers
    san, real = tmp_path / "san", tmp_path / "san-real"
    text = PROJECT.replace("SAN", str(san))
    path = kit.client_dir / "lvmove.mln"
    path.write_text(text)
    r = kit.mln("client", "build", "-f", str(path))
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "start", "-p", "lvmove")
    assert r.returncode == 0, r.stderr
    names = running(lv, "sh1")
    assert sorted(names) == ["g", "s"] and lv["sh2"].domains() == []
    for h in names:
        wait_count(kit, "sh1", 5, host=h)
    disk = real / "s.lvmove.qcow2"
    assert disk.exists()
    path.write_text(text.replace("service_host sh1", "service_host sh2"))
    r = kit.mln("client", "upgrade", "-s", "-f", str(path))
    assert r.returncode == 0 and \
        "host g: moved from server sh1, live through libvirt: its disk is copied, then its memory" in r.stdout and \
        "host s: moved from server sh1, live through libvirt: its disk is on shared storage, its memory is sent" \
        in r.stdout, r.stdout + r.stderr

    # libvirt refuses (sh2's libvirtd is not where sh2 says): the guests run on at sh1, sh2 has nothing
    conf2 = kit.dir("sh2") / "etc" / "mln.conf"
    good = conf2.read_text()
    conf2.write_text(good.replace(MIGRATE_URI, MIGRATE_URI.replace("{address}", "{address}:1")))
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    conf2.write_text(good)
    assert r.returncode == 1 and "server sh1: live migration failed, the guest runs on here" in r.stderr \
        and "it is as it was on all of them" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert hosts(kit) == {("g", "sh1", "up"), ("s", "sh1", "up")}
    assert running(lv, "sh1") == names and lv["sh2"].domains() == []
    assert not (kit.dir("sh2") / "projects" / "lvmove" / "hosts" / "g").exists() and disk.exists()
    for h in names:
        seen = wait_count(kit, "sh1", counts(console(kit, "sh1", h))[-1] + 3, host=h)   # still counting there
        assert seen == list(range(1, len(seen) + 1)), (h, seen)

    # the move
    before = {h: counts(console(kit, "sh1", h))[-1] for h in names}
    r = kit.mln("client", "upgrade", "-r", "-f", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    for h in names:
        what = "memory" if h == "s" else "disk and memory"        # (s: on shared storage)
        assert re.search(rf"\[sh2\] \+---> {h}: its {what} arrived from sh1 in [\d.]+ s", r.stderr) and \
            re.search(rf"\[sh2\] \+---> {h}: moved live from sh1 \(the guest paused \d+ ms\)", r.stderr), r.stderr
    assert hosts(kit) == {("g", "sh2", "up"), ("s", "sh2", "up")}
    assert sorted(running(lv, "sh2")) == ["g", "s"] and lv["sh1"].domains() == []
    assert not (kit.dir("sh1") / "projects" / "lvmove").exists()        # g's disk is gone from sh1
    assert disk.exists()                                                 # s's stays where it was, shared
    for h in names:
        after = wait_count(kit, "sh2", before[h] + 10, host=h)
        assert after[0] > before[h] and after == list(range(after[0], after[-1] + 1)), (h, before[h], after)
        assert "Linux version" not in console(kit, "sh2", h)             # no boot: the same guest
    # g's console there (the counting stops first: mln console ends once the guest is quiet)
    r = kit.mln("client", "console", "-p", "lvmove", "-h", "g",
                input="\ntouch /tmp/mln-stop; echo MLN-$((6*7))\n", timeout=120)
    assert r.returncode == 0 and "MLN-42" in r.stdout, r.stdout + r.stderr

    r = kit.mln("client", "stop", "-p", "lvmove", "-H")
    assert r.returncode == 0, r.stderr
    r = kit.mln("client", "remove", "-f", "-p", "lvmove")
    assert r.returncode == 0, r.stderr
    assert lv["sh1"].domains() == [] and lv["sh2"].domains() == []
    for server in SERVERS:
        assert not (kit.dir(server) / "projects" / "lvmove").exists(), server
    assert list(real.iterdir()) == []
