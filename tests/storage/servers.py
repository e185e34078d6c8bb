"""An NFS server (nfs-ganesha with rpcbind) and an iSCSI target (tgtd) for the storage tests.

Both run inside a network namespace made here (``mlnst<pid>``), reached from the root
namespace over a veth pair: the namespace's end has ``10.98.N.1/30``, the root end
``10.98.N.2/30`` (N from this process's id, so that two test runs on one machine do not
share a subnet). rpcbind and ganesha also get a private ``/run`` (a mount namespace), so
that rpcbind's socket file is not the machine's. :func:`storage_net` tears everything down
again (every process in the namespace, the namespace, the veth, the directories), also
when the test failed or the set-up broke half way.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Net:
    """The namespace, its address (``server``) and the root namespace's (``client``)."""

    ns: str
    server: str
    client: str
    root: str                                      # a temporary directory for the servers' files
    procs: list[subprocess.Popen] = field(default_factory=list)
    pidfiles: list[str] = field(default_factory=list)   # daemons started by a shell in ``shells``
    shells: list[subprocess.Popen] = field(default_factory=list)

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", self.ns, *argv, check=check)

    def pids(self) -> list[int]:
        r = _run("ip", "netns", "pids", self.ns, check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]


@contextlib.contextmanager
def storage_net():
    """A fresh namespace with a veth to the root namespace; everything in it goes at the end."""
    n = os.getpid()
    octet = n % 250
    ns, veth = f"mlnst{n}", f"mlnst{n}"[:12]
    net = Net(ns, f"10.98.{octet}.1", f"10.98.{octet}.2", tempfile.mkdtemp(prefix="mln-storage-"))
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        _run("ip", "link", "set", f"{veth}b", "netns", ns)
        _run("ip", "addr", "add", f"{net.client}/30", "dev", f"{veth}a")
        _run("ip", "link", "set", f"{veth}a", "up")
        net.exec("ip", "addr", "add", f"{net.server}/30", "dev", f"{veth}b")
        net.exec("ip", "link", "set", f"{veth}b", "up")
        net.exec("ip", "link", "set", "lo", "up")
        yield net
    finally:
        stop_daemons(net)
        _run("ip", "link", "del", f"{veth}a", check=False)
        _run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(net.root, ignore_errors=True)


def stop_daemons(net: Net, sweep: bool = True) -> None:
    """End the daemons started in ``net`` (``sweep``: and every other process in its namespace)."""
    for pidfile in net.pidfiles:              # daemons under a shell: the shell reaps them
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                pid = int(f.read().split()[0])
            if pid in net.pids():
                os.kill(pid, signal.SIGTERM)
    for p in net.procs:                       # ours, politely
        if p.poll() is None and p not in net.shells:
            p.terminate()
    end = time.monotonic() + 5
    for p in net.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, end - time.monotonic()))
    for pid in net.pids() if sweep else ():  # whatever else runs in our namespace
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for p in net.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.kill()
            p.wait(5)


# -- NFS: nfs-ganesha (VFS backend), NFSv3 with rpcbind -------------------------------------------

GANESHA_CONF = """
NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = {addr};
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryRoot = {root}/recovery;
}}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = {export};
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
"""

START_NFS = """
set -e
mount -t tmpfs -o mode=0755 mln-storage-run /run
mkdir -p /run/rpcbind
rpcbind -f -w &
echo $! > "$1/rpcbind.pid"
for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done
ganesha.nfsd -F -f "$1/ganesha.conf" -L "$1/ganesha.log" -p "$1/ganesha.pid" -N NIV_EVENT &
echo $! > "$1/ganesha.child"
wait
"""
# the shell stays the parent of both daemons and reaps them (an orphan would become a
# zombie where PID 1 does not reap): the teardown signals the daemons, not the shell


@dataclass
class Nfs:
    """An export ``export`` (a directory here) served as ``server:export``."""

    server: str
    export: str
    log: str

    @property
    def spec(self) -> str:
        return f"{self.server}:{self.export}"

    def files(self) -> list[str]:
        out = []
        for d, _, names in os.walk(self.export):
            out += [os.path.relpath(os.path.join(d, x), self.export) for x in names]
        return sorted(out)


def start_nfs(net: Net) -> Nfs:
    d = os.path.join(net.root, "nfs")
    export = os.path.join(d, "export")
    os.makedirs(os.path.join(d, "recovery"))
    os.makedirs(export)
    with open(os.path.join(d, "ganesha.conf"), "w") as f:
        f.write(GANESHA_CONF.format(addr=net.server, root=d, export=export))
    log = os.path.join(d, "ganesha.log")
    net.pidfiles += [os.path.join(d, "ganesha.child"), os.path.join(d, "rpcbind.pid")]
    p = subprocess.Popen(["ip", "netns", "exec", net.ns, "unshare", "-m", "--propagation", "private",
                          "sh", "-c", START_NFS, "sh", d], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, "start.err"), "w"))
    net.procs.append(p)
    net.shells.append(p)

    def up() -> bool:          # (it answers once ganesha has registered with rpcbind: try a client)
        if p.poll() is not None:
            raise RuntimeError(f"ganesha.nfsd exited: {_tail(log)} {_tail(os.path.join(d, 'start.err'))}")
        return net.exec("nfs-ls", f"nfs://{net.server}{export}", check=False).returncode == 0
    _wait(up, 30, "the NFS export to answer")
    return Nfs(net.server, export, log)


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-1500:]
    except OSError:
        return ""


# -- iSCSI: tgtd with one target and one LUN per file -----------------------------------------------

@dataclass
class Iscsi:
    """A target ``iqn`` on ``portal`` with LUNs 1..n, each a sparse file of ``size`` bytes."""

    net: Net
    port: int
    portal: str
    iqn: str
    luns: dict[int, str]

    def url(self, lun: int) -> str:
        return f"iscsi://{self.portal}/{self.iqn}/{lun}"

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.net.exec("tgtadm", "-C", str(self.port), "--lld", "iscsi", *args, check=check)

    def head(self, lun: int, n: int = 4096) -> bytes:
        with open(self.luns[lun], "rb") as f:
            return f.read(n)

    def stop(self) -> None:
        for lun in self.luns:
            self.tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun),
                        check=False)
        self.tgtadm("--op", "delete", "--mode", "target", "--tid", "1", check=False)
        self.net.exec("tgtadm", "-C", str(self.port), "--op", "delete", "--mode", "system", check=False)


def start_iscsi(net: Net, luns: int = 2, size: int = 128 << 20) -> Iscsi:
    d = os.path.join(net.root, "iscsi")
    os.makedirs(d)
    port = 2000 + os.getpid() % 20000
    p = subprocess.Popen(["ip", "netns", "exec", net.ns, "tgtd", "-f", "-C", str(port),
                          "--iscsi", f"portal={net.server}:3260"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "tgtd.log"), "w"))
    net.procs.append(p)
    t = Iscsi(net, port, net.server, "iqn.2026-12.test.mln:san", {})

    def up() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"tgtd exited: {_tail(os.path.join(d, 'tgtd.log'))}")
        return t.tgtadm("--op", "show", "--mode", "target", check=False).returncode == 0
    _wait(up, 20, "tgtd")
    t.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", t.iqn)
    for n in range(1, luns + 1):
        path = os.path.join(d, f"lun{n}.img")
        with open(path, "wb") as f:
            f.truncate(size)
        t.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(n), "-b", path)
        t.luns[n] = path
    t.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
    return t
