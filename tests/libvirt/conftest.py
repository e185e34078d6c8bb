"""A private libvirtd for the tests of the ``libvirt`` backend.

``libvirtd`` (session-scoped) starts ``virtlogd`` and ``libvirtd`` in a mount namespace of
their own (``unshare --mount``), with copies of /etc/libvirt and empty /run/libvirt,
/var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt bind-mounted over the real ones,
so that their domains, saved images and logs stay in a temporary directory. The socket
is in that directory too (``unix_sock_dir``): mln reaches it through ``libvirt_uri
qemu:///system?socket=...``. They run in this machine's network namespace, because the
taps that the bridge switches make for the guests must be where libvirtd opens them; no
libvirt network is defined or started, so libvirtd touches no interface or firewall.
QEMU runs as root without cgroups, namespaces or a security driver (the test's projects
are under /tmp/pytest-of-root, which only root may enter).

At the end every domain left is destroyed and undefined (and the test fails if there
was one), both daemons are ended by their pid files, and the directory is deleted; the
mounts go with the namespace.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
        "cache": "/var/cache/libvirt"}


class Libvirtd:
    """``enter``: the command that runs the daemons' ``unshare`` in another namespace (a
    server of the ``mln_servers`` kit: ``nsenter -t PID -n -m -u --``); ``listen``: an
    address on which libvirtd also listens on TCP without authentication (for peer-to-peer
    migrations: tests only); ``host_uuid``: its own, so that two of them on one machine
    are two hosts to libvirt."""

    def __init__(self, root: Path, enter: list[str] | None = None, listen: str | None = None,
                 host_uuid: str | None = None):
        self.root = root
        self.sock = root / "sock" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.sock}"
        self.made_run = False
        self.enter, self.listen, self.host_uuid = list(enter or []), listen, host_uuid

    def prepare(self) -> None:
        r = self.root
        shutil.copytree("/etc/libvirt", r / "etc", symlinks=True)
        for d in ("run", "lib", "log", "cache", "sock"):
            (r / d).mkdir(mode=0o755)
        for sub in ("lib/qemu", "log/qemu", "cache/qemu"):
            (r / sub).mkdir(parents=True)
        shutil.rmtree(r / "etc/qemu/networks", ignore_errors=True)    # no default network
        with open(r / "etc/libvirtd.conf", "a") as f:
            f.write(f'\nunix_sock_dir = "{r}/sock"\nunix_sock_rw_perms = "0700"\n'
                    f'log_outputs = "3:file:{r}/log/libvirtd.log"\n')
            if self.host_uuid:
                f.write(f'host_uuid = "{self.host_uuid}"\n')
            if self.listen:
                f.write(f'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\nlisten_addr = "{self.listen}"\n')
        with open(r / "etc/qemu.conf", "a") as f:
            f.write('\nuser = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
                    'security_driver = "none"\nnamespaces = [ ]\ncgroup_controllers = [ ]\n')

    def start(self) -> None:
        if not os.path.isdir("/run/libvirt"):
            os.mkdir("/run/libvirt", 0o755)          # a mount point; removed at the end
            self.made_run = True
        r = self.root
        binds = "; ".join(f"mount --bind {r / d} {target}" for d, target in DIRS.items())
        script = (f"set -e; mount --make-rprivate /; {binds}; "
                  f"virtlogd -d -p {r}/virtlogd.pid; libvirtd -d {'-l ' if self.listen else ''}"
                  f"-p {r}/libvirtd.pid")
        p = subprocess.run([*self.enter, "unshare", "--mount", "sh", "-c", script], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, f"libvirtd did not start: {p.stdout}{p.stderr}"
        end = time.monotonic() + 20
        while not self.sock.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert self.sock.exists(), f"no libvirt socket {self.sock}:\n{self.log()}"
        # libvirtd probes QEMU (some 4 s of TCG) before its first domain; let it do that
        # while the first test builds its project
        self.warm = subprocess.Popen(["virsh", "-c", self.uri, "domcapabilities", "--arch", "x86_64",
                                      "--virttype", "qemu"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def log(self) -> str:
        path = self.root / "log/libvirtd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def virsh(self, *args: str) -> str:
        p = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"virsh {' '.join(args)}: {p.stderr}"
        return p.stdout

    def domains(self) -> list[str]:
        """Every domain libvirtd knows, running or not, sorted."""
        return sorted(x for x in self.virsh("list", "--all", "--name").split() if x)

    def running(self) -> list[str]:
        """The running domains, sorted."""
        return sorted(x for x in self.virsh("list", "--name").split() if x)

    def saved_images(self) -> list[str]:
        save = self.root / "lib/qemu/save"
        return sorted(p.name for p in save.iterdir()) if save.is_dir() else []

    def clean_domains(self) -> list[str]:
        """Destroy and undefine every domain; the names of those there were."""
        left = self.domains() if self.sock.exists() else []
        for d in left:
            subprocess.run(["virsh", "-c", self.uri, "destroy", d], capture_output=True, timeout=60)
            subprocess.run(["virsh", "-c", self.uri, "undefine", "--managed-save", d], capture_output=True,
                           timeout=60)
        return left

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.root / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if getattr(self, "warm", None) is not None:
            try:
                self.warm.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.warm.kill()
                self.warm.wait()
        for name in ("libvirtd", "virtlogd"):
            pid = self._pid(name)
            if pid is None or not _is(pid, name):
                continue
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while _is(pid, name) and time.monotonic() < end:
                time.sleep(0.05)
            if _is(pid, name):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        others = [p for p in Path(tempfile.gettempdir()).glob("mln-libvirtd-*") if p != self.root]
        if self.made_run and not others:       # another test run's libvirtd may still use it
            try:
                os.rmdir("/run/libvirt")
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _is(pid: int, name: str) -> bool:
    """``pid`` is a live process of ``name`` (not a reused pid, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
    return comm == name and state != "Z"


def require_libvirt() -> None:
    """Skip the test unless root with libvirt's daemons, virsh and its Python binding."""
    if os.geteuid() != 0:
        pytest.skip("libvirtd tests need root")
    if not (shutil.which("libvirtd") and shutil.which("virtlogd") and shutil.which("virsh")):
        pytest.skip("libvirt is not installed (scripts/install-deps.sh)")
    from mln_backends import libvirt_domain
    try:
        libvirt_domain.binding()
    except Exception as e:
        pytest.skip(f"no libvirt binding: {e}")


@pytest.fixture(scope="session")
def libvirtd():
    """A private libvirtd (see the module's doc): its ``uri`` for mln.conf's libvirt_uri."""
    require_libvirt()
    d = Libvirtd(Path(tempfile.mkdtemp(prefix="mln-libvirtd-")))
    os.chmod(d.root, 0o755)
    try:
        d.prepare()
        d.start()
        yield d
        left = d.clean_domains()
        assert not left, f"domains left behind: {left}"
    finally:
        d.clean_domains()
        d.stop()


@pytest.fixture
def libvirt_env(mln_env, libvirtd):
    """``mln_env`` (tests/conftest.py) whose mln.conf points at the private libvirtd."""
    with open(mln_env.config, "a") as f:
        f.write(f"libvirt_uri {libvirtd.uri}\n")
    mln_env.libvirtd = libvirtd
    yield mln_env
    mln_env.cleanup()                 # mln stops and removes what a failed test left, first
    left = libvirtd.clean_domains()
    assert not left, f"domains left behind: {left}"
