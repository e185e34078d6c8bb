"""A running QEMU guest takes changes live (hooks ``mln_plan_live``/``mln_apply_live``).

One guest under test (``dut``) and a peer on each of two bridge switches. The project is
built and started with the CLI; then, as ``mln upgrade`` will, the test plans the changes
to a new project file with the old project bound, puts the new file and state in place,
binds the new project and applies the changes one by one:

(a) dut's eth0 moves from switch a to switch b (its tap goes to b's bridge) and then
    reaches peerb, which it could not before; same QEMU process, the guest's uptime goes on;
(b) dut gains eth1 on switch a by PCI hot-plug; the agent in the guest names it and sets
    its address; it pings peera there;
(c) dut's memory is lowered through the balloon: MemTotal in the guest drops, QEMU's
    ``query-balloon`` says the new size;
(d) ``mln stop -S`` and ``mln start`` resume all three: dut comes back with its boot RAM
    size behind the balloon, with eth1 and its address, without booting again.

Commands run in the guest through its serial console (the busybox shell on ttyS0).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import time
from types import SimpleNamespace

import pytest

from mln_backends import qemu_live, qemu_qmp
from mln_backends.runtime import runtime_dir
from mln_core.change import Change
from mln_core.errors import MlnError
from mln_core.config import load_config
from mln_core.context import Context
from mln_core.lifecycle import Engine
from mln_core.machine import Machine
from mln_core.model import Interface
from mln_core.plugins import make_plugin_manager
from mln_core.project import load_project
from mln_core.store import Store

HOSTS = r"""
global {
    project lv
}
switch a {
    type bridge
}
switch b {
    type bridge
}
superclass node {
    hypervisor qemu
    template busybox.ext4
    memory 96M
    startup {
        dmesg -n 1
        echo "MLN-CHECK booted"
    }
}
host peera {
    superclass node
    network eth0 {
        switch a
        address 10.0.2.2
        netmask 255.255.255.0
    }
}
host peerb {
    superclass node
    network eth0 {
        switch b
        address 10.0.1.2
        netmask 255.255.255.0
    }
}
"""

OLD = HOSTS + r"""
host dut {
    superclass node
    memory 160M
    network eth0 {
        switch a
        address 10.0.1.1
        netmask 255.255.255.0
    }
}
"""

NEW = HOSTS + r"""
host dut {
    superclass node
    memory 112M
    network eth0 {
        switch b
        address 10.0.1.1
        netmask 255.255.255.0
    }
    network eth1 {
        switch a
        address 10.0.2.1
        netmask 255.255.255.0
    }
}
"""

MOVED = Change("interface_moved", "eth0: switch a -> b", interface="eth0", old="a", new="b")
ADDED = Change("interface_added", "eth1 added", interface="eth1", new="a")
MEMORY = Change("memory", "memory 160M -> 112M", old="160", new="112")


class Console:
    """The busybox shell on a guest's serial console: ``run(command)`` types it and returns
    what it printed (from the console log) and its exit status."""

    def __init__(self, env, project: str, host: str):
        self.env, self.project, self.host, self.n = env, project, host, 0

    def _socket(self) -> str:
        where = SimpleNamespace(project_dir=str(self.env.projects / self.project))
        return os.path.join(runtime_dir(where, "qemu", self.host), "console.sock")

    def run(self, command: str, timeout: float = 60) -> tuple[str, int]:
        """(The commands are read-only: one whose typed line the serial port garbled is
        typed again.)"""
        try:
            return self._run(command, timeout / 2)
        except AssertionError:
            return self._run(command, timeout / 2)

    def _run(self, command: str, timeout: float) -> tuple[str, int]:
        self.n += 1
        tag = f"MLN-OUT-{self.n}"
        quoted = f'{tag[:5]}""{tag[5:]}'          # typed (and echoed) unlike what it prints
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self._socket())
            s.settimeout(0.2)
            start = len(self.env.console(self.project, self.host))
            s.sendall(b"\n")                        # activates the console; a prompt comes
            self._wait(s, lambda text: "# " in text[start:], 20)
            s.sendall(f"echo {quoted}-BEGIN; {command}; echo {quoted}-END $?\n".encode())
            text = self._wait(s, lambda text: re.search(rf"{tag}-END (\d+)", text), timeout)
        text = text.replace("\r", "")
        body = text[text.rindex(f"{tag}-BEGIN\n") + len(tag) + 7:]
        m = re.search(rf"{tag}-END (\d+)", body)
        return body[:m.start()], int(m.group(1))

    def _wait(self, s, done, timeout: float) -> str:
        """Wait until ``done(console log)``, reading what the console sends meanwhile (the
        guest stops writing to its console when nobody reads: every byte sent over the
        socket is a buffer of its own)."""
        end = time.monotonic() + timeout
        while True:
            text = self.env.console(self.project, self.host)
            if done(text):
                return text
            assert time.monotonic() < end, f"{self.host}: the console did not get there in {timeout} s:\n" \
                                           f"{text[-3000:]}"
            try:
                s.recv(65536)
            except TimeoutError:
                pass

    def uptime(self) -> float:
        out, rc = self.run("cat /proc/uptime")
        assert rc == 0, out
        return float(re.search(r"^(\d+\.\d+) ", out, re.M).group(1))

    def mem_total_kb(self) -> int:
        out, rc = self.run("grep MemTotal /proc/meminfo")
        assert rc == 0, out
        return int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))

    def ping(self, address: str, tries: int = 10) -> bool:
        out, rc = self.run(f"for i in $(seq {tries}); do ping -c 1 -W 2 {address} >/dev/null && break; done; "
                           f"ping -c 2 -W 2 {address}", timeout=30 + 5 * tries)
        return rc == 0 and "2 packets received" in out


def open_project(env):
    """A context and engine bound to the stored project, as a command has them."""
    ctx = Context(config=load_config(env={"MLN_CONFIG": str(env.config)}), pm=make_plugin_manager())
    engine = Engine(ctx)
    engine.open("lv")
    return ctx, engine


def commit_new_project(ctx, path) -> tuple:
    """What ``mln upgrade`` does before it applies live changes: the new project file and
    state in place (dut's configuration rebuilt for its new settings), the new project bound."""
    new = load_project(str(path), ctx).project
    pdir = ctx.project_dir
    state = copy.deepcopy(ctx.state)
    ctx.project, ctx.state = new, state
    dut = new.hosts["dut"]
    disk = ctx.disk(dut, attached=False)
    state["hosts"]["dut"]["backend"] = ctx.pm.hook.mln_build_host(host=dut, disk=disk, ctx=ctx)
    shutil.copyfile(path, Store(ctx.config.projects_dir).source_path("lv"))
    Store.write_state(pdir, state)
    return new


def banners(env) -> int:
    return len(re.findall(r"Linux version \d", env.console("lv", "dut")))


@pytest.mark.guests
def test_live_changes_of_a_running_qemu_guest(mln_env):
    path = mln_env.write("lv.mln", OLD)
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    r = mln_env.mln("start", "-p", "lv")
    assert r.returncode == 0, r.output
    for h in ("dut", "peera", "peerb"):
        mln_env.wait_console("lv", h, r"MLN-CHECK booted", timeout=120)
    hdir = mln_env.projects / "lv" / "hosts" / "dut"
    cmdline = (hdir / "cmdline").read_text()
    # the fixed PCI layout: NIC in 0x02, root disk in 0x18, balloon, mln's channel
    assert "virtio-net-pci,netdev=n0,id=nic0," in cmdline and "addr=0x02" in cmdline
    assert "virtio-blk-pci,drive=drive0,id=disk0,addr=0x18" in cmdline
    assert "virtio-balloon-pci,id=balloon0,addr=0x1e" in cmdline
    assert "name=org.mln.channel" in cmdline and "channel.sock" in cmdline
    dut = Console(mln_env, "lv", "dut")
    mln_env.wait_console("lv", "dut", r"mln-channel: listening on /dev/vport\d+p\d+")
    pid = int((hdir / "pid").read_text())
    up0 = dut.uptime()
    mem0 = dut.mem_total_kb()
    assert not dut.ping("10.0.1.2", tries=1), "dut reaches peerb on switch b before its eth0 moved there"

    # -- plan, with the stored (old) project bound ----------------------------------------------
    ctx, engine = open_project(mln_env)
    old = ctx.project.hosts["dut"]
    new_path = mln_env.write("lv-new.mln", NEW)
    new_project = load_project(str(new_path), ctx).project
    new = new_project.hosts["dut"]
    plan = {c.kind: ctx.pm.hook.mln_plan_live(host=new, old=old, change=c, ctx=ctx)
            for c in (MOVED, ADDED, MEMORY)}
    tap = re.search(r"ifname=(tap-[0-9a-f]+)", cmdline).group(1)
    assert plan == {"interface_moved": f"tap {tap} moved to bridge b.lv",
                    "interface_added": "hot-plugged in PCI slot 0x03",
                    "memory": "virtio-balloon to 112M"}, plan
    # what needs a restart: more memory than it booted with, an interface after a gap
    more = copy.copy(new)
    more.memory = 200 * 2**20
    assert ctx.pm.hook.mln_plan_live(host=more, old=old, change=MEMORY, ctx=ctx) is None
    gap = copy.copy(new)
    gap.interfaces = new.interfaces[:1] + [Interface("eth2", 2, switch="a", address="10.0.2.9",
                                                       netmask="255.255.255.0")]
    change = Change("interface_added", "eth2 added", interface="eth2", new="a")
    assert ctx.pm.hook.mln_plan_live(host=gap, old=old, change=change, ctx=ctx) is None

    # -- apply, with the new project in place and bound ------------------------------------------
    new_project = commit_new_project(ctx, new_path)
    new = new_project.hosts["dut"]
    machine = Machine(env={})

    # (a) eth0 moves to switch b with its tap, the guest runs on
    assert ctx.pm.hook.mln_apply_live(host=new, old=old, change=MOVED, ctx=ctx) is True
    assert os.path.realpath(f"/sys/class/net/{tap}/master").endswith("/b.lv")
    assert dut.ping("10.0.1.2"), "dut does not reach peerb after its eth0 moved to switch b"
    assert int((hdir / "pid").read_text()) == pid and machine.alive(pid)
    assert dut.uptime() > up0 and banners(mln_env) == 1

    # (b) eth1 hot-plugged on switch a: the guest's agent names it and sets its address
    assert ctx.pm.hook.mln_apply_live(host=new, old=old, change=ADDED, ctx=ctx) is True
    out, rc = dut.run("cat /sys/class/net/eth1/address; ifconfig eth1")
    mac = qemu_live.nic_mac(new, new.interfaces[1], 1)
    assert rc == 0 and mac in out and "inet addr:10.0.2.1 " in out and "Mask:255.255.255.0" in out, out
    assert f"mln-channel: ifup {mac} eth1 10.0.2.1/24" in mln_env.console("lv", "dut")
    assert dut.ping("10.0.2.2"), "dut does not reach peera through its hot-plugged eth1"
    shape = json.loads((hdir / "shape.json").read_text())
    assert shape["memory_mb"] == 160 and shape["nics"]["eth1"]["index"] == 1
    assert shape["nics"]["eth1"]["mac"] == mac

    # (c) memory lowered through the balloon
    assert ctx.pm.hook.mln_apply_live(host=new, old=old, change=MEMORY, ctx=ctx) is True
    qmp_sock = qemu_live.paths(new, ctx)[1]
    assert qemu_qmp.qmp(machine, qmp_sock, "query-balloon")["actual"] == 112 * 2**20
    mem1 = dut.mem_total_kb()
    assert mem0 - mem1 >= 40 * 1024, (mem0, mem1)        # 48M went into the balloon
    shape = json.loads((hdir / "shape.json").read_text())
    assert shape["memory_mb"] == 160 and shape["balloon_mb"] == 112
    assert int((hdir / "pid").read_text()) == pid and banners(mln_env) == 1
    up1 = dut.uptime()

    # (d) saved and resumed: the boot RAM size, the hot-plugged NIC, no new boot
    r = mln_env.mln("stop", "-p", "lv", "-S")
    assert r.returncode == 0, r.output
    assert "dut: saved" in r.stderr, r.stderr
    r = mln_env.mln("start", "-p", "lv")
    assert r.returncode == 0, r.output
    cmdline = (hdir / "cmdline").read_text()
    assert "-incoming defer" in cmdline and f" -m {qemu_live.ram_arg(160, 'tcg')} " in cmdline, cmdline
    assert "virtio-net-pci,netdev=n1,id=nic1," in cmdline and "addr=0x03" in cmdline
    assert not (hdir / "dut.ram").exists()
    assert qemu_qmp.qmp(machine, qmp_sock, "query-balloon")["actual"] == 112 * 2**20
    assert dut.uptime() > up1 and banners(mln_env) == 1
    assert dut.mem_total_kb() == mem1
    out, rc = dut.run("ifconfig eth1")
    assert rc == 0 and "inet addr:10.0.2.1 " in out, out
    assert dut.ping("10.0.2.2") and dut.ping("10.0.1.2")

    # a cold start runs the project's memory and forgets the shape
    assert mln_env.mln("stop", "-p", "lv", "-h", "dut", "-H").returncode == 0
    r = mln_env.mln("start", "-p", "lv", "-h", "dut")
    assert r.returncode == 0, r.output
    cmdline = (hdir / "cmdline").read_text()
    assert f" -m {qemu_live.ram_arg(112, 'tcg')} " in cmdline and "-incoming" not in cmdline and not (hdir / "shape.json").exists()
    # a live move's "left" (the guest runs on the new server: end what is left of it here)
    # never ends a guest that runs here
    from mln_core.move import left
    ctx, engine = open_project(mln_env)
    pid = int((hdir / "pid").read_text())
    assert left(engine, "lv", "dut") == {"ended": False}
    assert os.path.exists(f"/proc/{pid}") and engine.host_status(ctx.project.hosts["dut"]) == "up"
    r = mln_env.mln("stop", "-p", "lv", "-H")
    assert r.returncode == 0, r.output


# -- without a guest --------------------------------------------------------------------------------

def _host(*interfaces, memory=128, mounts=()):
    return SimpleNamespace(name="h", project="p", memory=memory * 2**20, interfaces=list(interfaces),
                           mounts=list(mounts))


def test_the_guest_is_told_what_a_cold_start_would_set():
    eth0 = Interface("eth0", 0, address="10.1.2.3", netmask="255.255.0.0", gateway="10.1.0.1")
    eth1 = Interface("eth1", 1, address="192.168.7.9", gateway="192.168.7.1")
    eth2 = Interface("eth2", 2, address="fd00::5")
    host = _host(eth0, eth1, eth2)
    assert qemu_live.ifup_line(host, eth0, "52:54:00:AB:CD:EF") == \
        "ifup 52:54:00:ab:cd:ef eth0 10.1.2.3/16 10.1.0.1"
    # no netmask: the address's class, as ifconfig; only the first gateway is the default route
    assert qemu_live.ifup_line(host, eth1, "52:54:00:00:00:01") == \
        "ifup 52:54:00:00:00:01 eth1 192.168.7.9/24"
    assert qemu_live.ifup_line(host, eth2, "52:54:00:00:00:02") == "ifup 52:54:00:00:00:02 eth2 fd00::5/64"


def test_fixed_pci_slots(tmp_path):
    disk = SimpleNamespace(path="/x/root.qcow2", format="qcow2", extra={"swap": "images/swap"})
    ctx = SimpleNamespace(path=lambda *p: os.path.join(str(tmp_path), *p))
    mount = SimpleNamespace(fstype="ext4", source="/x/data.img")
    argv = qemu_live.disk_args(_host(mounts=[mount]), ctx, disk)
    assert [a for a in argv if a.startswith("virtio-blk-pci")] == [
        "virtio-blk-pci,drive=drive0,id=disk0,addr=0x18", "virtio-blk-pci,drive=drive1,id=disk1,addr=0x19",
        "virtio-blk-pci,drive=drive2,id=disk2,addr=0x1a"]
    assert argv[1] == "file=/x/root.qcow2,format=qcow2,if=none,id=drive0,cache=writeback"
    with pytest.raises(MlnError, match="at most 6 disks"):
        qemu_live.disk_args(_host(mounts=[mount] * 5), ctx, disk)
    host = _host(Interface("eth22", 22))
    with pytest.raises(MlnError, match="eth0 to eth21 only"):
        qemu_live.nic_args(host, ctx)
    assert qemu_live.nic_device(21, "m", True) == "virtio-net-pci,netdev=n21,id=nic21,mac=m,addr=0x17"
    assert "virtio-balloon-pci,id=balloon0,addr=0x1e" in qemu_live.fixed_args(str(tmp_path))


def test_a_resume_needs_the_device_set_it_was_saved_with(tmp_path):
    ctx = SimpleNamespace(path=lambda *p: os.path.join(str(tmp_path), *p))
    hdir = tmp_path / "hosts" / "h"
    hdir.mkdir(parents=True)
    eth1 = Interface("eth1", 1, mac="52:54:00:00:00:11")
    host = _host(Interface("eth0", 0), eth1)
    assert qemu_live.resume_memory(host, ctx, 96, "h.ram") == 96            # nothing changed live
    (hdir / "shape.json").write_text(json.dumps({"memory_mb": 160, "nics": {
        "eth1": {"index": 1, "mac": "52:54:00:00:00:11", "netdev": None}}}))
    assert qemu_live.resume_memory(host, ctx, 96, "h.ram") == 160           # the RAM it booted with
    with pytest.raises(MlnError, match="has eth1 .* hot-plugged, which the project does not have"):
        qemu_live.resume_memory(_host(Interface("eth0", 0)), ctx, 96, "h.ram")
    # saved by an mln that put the devices elsewhere (no balloon): QEMU could not load it
    (hdir / "cmdline").write_text("qemu-system-x86_64 -m 96 -drive file=x,if=virtio\n")
    with pytest.raises(MlnError, match="another layout of the guest's devices"):
        qemu_live.resume_memory(host, ctx, 96, "h.ram")


def test_tcg_guests_get_ram_that_qemu_migrates_page_by_page(tmp_path):
    """QEMU before 9.0 loses writes of a TCG guest whose RAM is a multiple of 256 KiB while
    it migrates (guests crashed after live moves): TCG guests get 8 KiB more."""
    arg = qemu_live.ram_arg(96, "tcg")
    assert arg == "98312K" and (int(arg[:-1]) * 1024) % (256 * 1024) != 0
    assert qemu_live.ram_arg(96, "kvm") == "96"
    assert [qemu_live.ram_mb(v) for v in ("98312K", "96", "1G", "")] == [96, 96, None, None]
    # a state saved by an older mln (plain -m 96) is resumed with the RAM it was saved with
    ctx = SimpleNamespace(path=lambda *p: os.path.join(str(tmp_path), *p))
    host = _host(Interface("eth0", 0))
    assert qemu_live.saved_ram_arg(host, ctx) is None
    (tmp_path / "hosts" / "h").mkdir(parents=True)
    (tmp_path / "hosts" / "h" / "cmdline").write_text("qemu-system-x86_64 -name h -m 96 -smp 1\n")
    assert qemu_live.saved_ram_arg(host, ctx) == "96"


def test_a_guest_on_its_way_here_is_reported_once_it_arrived(tmp_path):
    """The status of a QEMU receiving a guest (a rerun after a killed upgrade looks while a
    move is still under way) is what it is once the guest arrived, not "inmigrate": two
    real QEMUs on loopback, the migration slowed down to take a second or more."""
    import subprocess
    from mln_backends import qemu_migrate
    machine = Machine(env={})
    socks = [str(tmp_path / f"{n}.qmp") for n in ("src", "dst")]
    port = machine.free_port("127.0.0.1")
    base = ["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-S"]
    procs = [subprocess.Popen(base + ["-qmp", f"unix:{socks[0]},server=on,wait=off"]),
             subprocess.Popen(base + ["-qmp", f"unix:{socks[1]},server=on,wait=off",
                                      "-incoming", f"tcp:127.0.0.1:{port}"])]
    try:
        end = time.monotonic() + 20
        while not all(os.path.exists(s) for s in socks):
            assert time.monotonic() < end and all(p.poll() is None for p in procs), "QEMU did not start"
            time.sleep(0.05)
        assert qemu_migrate.settled(machine, socks[1]) == "inmigrate"      # nothing on its way: at once
        # a target with other RAM than the guest's (an older mln's -m, a live memory change): refused
        with pytest.raises(MlnError, match="waits for a guest of 65544 KiB of RAM, and it has 65536 KiB here"):
            qemu_migrate.send(machine, socks[0], {"migration": f"tcp:127.0.0.1:{port}", "ram": 65544 * 1024}, "g",
                              shared=True)
        assert qemu_qmp.qmp(machine, socks[0], "query-migrate") == {}

        async def send(c):
            await c.execute("migrate-set-parameters", {"max-bandwidth": 100 * 1024})
            await c.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            end = time.monotonic() + 10
            while (status := (await c.execute("query-migrate")).get("status")) in ("none", "setup"):
                assert time.monotonic() < end, "the migration did not begin"
                await asyncio.sleep(0.01)
            assert status == "active", status
        import asyncio
        qemu_qmp.run(machine, socks[0], send)
        t0 = time.monotonic()
        assert qemu_migrate.settled(machine, socks[1]) == "prelaunch"    # (as the source was: -S)
        assert time.monotonic() - t0 > 0.3, "the migration was not under way"
        assert qemu_qmp.qmp(machine, socks[0], "query-migrate")["status"] == "completed"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_channel_skips_late_answers_and_reports_errors(tmp_path):
    import threading
    sock = str(tmp_path / "channel.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock)
    server.listen(1)
    got = []

    def guest(answers):
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(100))
            conn.sendall(answers)
            time.sleep(0.5)

    machine = Machine(env={})
    for answers, error in ((b"ok eth9\nok eth1\n", None),
                           (b"pong\nerror eth1 no interface has the MAC address x\n",
                            "the guest could not set up eth1: no interface has the MAC address x"),
                           (b"ok eth9\n", "the guest did not confirm eth1 on mln's channel in 0.3 s")):
        t = threading.Thread(target=guest, args=(answers,))
        t.start()
        try:
            if error is None:
                qemu_live.channel_request(machine, sock, "ifup m eth1 10.0.0.1/8", "eth1", 5)
            else:
                with pytest.raises(MlnError) as e:
                    qemu_live.channel_request(machine, sock, "ifup m eth1 10.0.0.1/8", "eth1", 0.3)
                assert str(e.value).startswith(error)
        finally:
            t.join()
        assert got.pop() == b"ifup m eth1 10.0.0.1/8\n"
    server.close()


def test_migration_settings_come_from_mln_conf_and_bad_ones_are_named():
    from mln_backends.qemu_migrate import tuning
    from mln_core.errors import MlnError
    assert tuning({}) == {"downtime-limit": 20, "max-bandwidth": 8192 * 2**20}
    assert tuning({"migrate_downtime_ms": "50", "migrate_bandwidth_mb": "100"}) == \
        {"downtime-limit": 50, "max-bandwidth": 100 * 2**20}
    for key, bad in (("migrate_downtime_ms", "fast"), ("migrate_bandwidth_mb", "-3")):
        with pytest.raises(MlnError, match=f"mln.conf {key} {bad}: give a whole number"):
            tuning({key: bad})
    from mln_core.move import at_once
    assert at_once({}) == 2 and at_once({"migrate_at_once": "5"}) == 5
    for bad in ("0", "two", "65"):
        with pytest.raises(MlnError, match=f"mln.conf migrate_at_once {bad}: give a whole number from 1 to 64"):
            at_once({"migrate_at_once": bad})


def test_a_qmp_connection_qemu_drops_is_tried_again(tmp_path):
    """A QMP connection that QEMU closed at once, or whose negotiation it answered with an
    error (seen right after a guest arrived by live migration), is tried again. A real
    QEMU, reached through a relay that closes or answers wrongly the first connections it
    gets (a fake of that moment only: it cannot be brought about at will)."""
    import subprocess
    import threading
    machine = Machine(env={})
    real, relay = str(tmp_path / "qmp.sock"), str(tmp_path / "relay.sock")
    qemu = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
                             "-S", "-qmp", f"unix:{real},server=on,wait=off"])
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(relay)
    server.listen(8)
    seen = {"connections": 0, "close": 0, "wrong": 0}

    def pipe(a, b):
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def closing_first_connections_fake():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen["connections"] += 1
            if seen["close"]:
                seen["close"] -= 1
                conn.close()
                continue
            if seen["wrong"]:               # a greeting, then an error for qmp_capabilities
                seen["wrong"] -= 1
                with conn:
                    conn.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
                                 b'"package": ""}, "capabilities": []}}\r\n')
                    conn.recv(4096)
                    conn.sendall(b'{"error": {"class": "GenericError", "desc": "not now"}}\r\n')
                continue
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(real)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=closing_first_connections_fake, daemon=True).start()
    try:
        end = time.monotonic() + 20
        while not os.path.exists(real):
            assert time.monotonic() < end and qemu.poll() is None, "QEMU did not start"
            time.sleep(0.05)
        seen["close"] = qemu_qmp.CLOSED_RETRIES - 1         # closed twice, then let through
        assert qemu_qmp.qmp(machine, relay, "query-status")["status"] == "prelaunch"
        assert seen == {"connections": qemu_qmp.CLOSED_RETRIES, "close": 0, "wrong": 0}
        seen.update(connections=0, close=1, wrong=1)       # closed, then answered wrongly, then through
        assert qemu_qmp.qmp(machine, relay, "query-status")["status"] == "prelaunch"
        assert seen == {"connections": 3, "close": 0, "wrong": 0}
        seen.update(connections=0, close=qemu_qmp.CLOSED_RETRIES)     # closed every time: a clear error
        with pytest.raises(Exception) as e:
            qemu_qmp.run(machine, relay, lambda c: c.execute("query-status"))
        assert seen["connections"] == qemu_qmp.CLOSED_RETRIES
        assert qemu_qmp.describe(e.value) == "ConnectError: Failed to establish session: EOFError"
        assert qemu_qmp.qmp(machine, relay, "query-status")["status"] == "prelaunch"   # (and it answers again)
    finally:
        server.close()
        qemu.kill()
        qemu.wait()


@pytest.mark.parametrize("shared, which", [(False, 0), (False, 1), (True, 1)],
                         ids=["the disk's port", "the migration's port (the disk exported already)", "shared"])
def test_a_port_taken_before_qemu_listens_on_it_is_chosen_again(tmp_path, shared, which):
    """The target's ports for the disk (NBD) and the migration are chosen free, and another
    process may take one before QEMU listens on it (two guests of a project are started
    at the same time): QEMU's bind then fails, and other ports are chosen. A real QEMU
    waiting for a guest; the port chooser hands out ports this test listens on."""
    import subprocess
    from mln_backends import qemu_migrate
    machine = Machine(env={})
    disk, sock = tmp_path / "disk.qcow2", str(tmp_path / "qmp.sock")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    qemu = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{sock},server=on,wait=off", "-incoming", "defer",
                             "-drive", f"file={disk},format=qcow2,if=none,id=drive0",
                             "-device", "virtio-blk-pci,drive=drive0"])
    taken = [socket.socket(), socket.socket()]
    for t in taken:
        t.bind(("127.0.0.1", 0))
        t.listen(1)
    ports = [t.getsockname()[1] for t in taken]
    chosen, all_taken = [], False

    def free_port_handing_out_taken_ones_fake(address):
        # the first try: the port that is taken is the disk's (0) or the migration's (1);
        # once ``all_taken``, every port
        if all_taken or len(chosen) == which:
            chosen.append(ports[len(chosen) % 2])
        else:
            chosen.append(Machine.free_port(address))
        return chosen[-1]
    machine.free_port = free_port_handing_out_taken_ones_fake
    try:
        end = time.monotonic() + 20
        while not os.path.exists(sock):
            assert time.monotonic() < end and qemu.poll() is None, "QEMU did not start"
            time.sleep(0.05)
        # every port it is given is taken: a clear error, after a few tries (and it waits for nothing)
        all_taken = True
        with pytest.raises(MlnError, match="waiting for the guest: .*Address already in use"):
            qemu_migrate.incoming(machine, sock, "127.0.0.1", shared=shared)
        assert len(chosen) == 2 * qemu_migrate.PORT_TRIES
        assert "socket-address" not in qemu_qmp.qmp(machine, sock, "query-migrate")
        chosen.clear()
        all_taken = False
        where = qemu_migrate.incoming(machine, sock, "127.0.0.1", shared=shared)
        assert len(chosen) == 4 and len(set(chosen) & set(ports)) == 1      # two ports, then two others
        listens = qemu_qmp.qmp(machine, sock, "query-migrate")["socket-address"]
        assert [a["port"] for a in listens] == [where["migration"].rsplit(":", 1)[1]]
        assert int(listens[0]["port"]) == chosen[3]
        if not shared:              # and the disk is exported there (an NBD server answers)
            assert where["disk"] == f"nbd://127.0.0.1:{chosen[2]}/drive0"
            with socket.create_connection(("127.0.0.1", chosen[2]), timeout=5) as c:
                assert c.recv(8) == b"NBDMAGIC"
            if which == 1:          # the export of the first try ended
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", chosen[0]), timeout=5)
    finally:
        for t in taken:
            t.close()
        qemu.kill()
        qemu.wait()
