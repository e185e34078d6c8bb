"""Several mln servers on one machine, for tests and demos: network namespaces with sshd.

    with NamespaceServers(tmp_path, names=("sh1", "sh2")) as kit:
        kit.ssh("sh2", "hostname").stdout          # 'sh2\\n', run from the client
        kit.mln("sh1", "version")                  # mln run inside server sh1
        kit.mln("client", "build", "-f", "p.mln")  # mln on the machine the user types on

The kit owns one /24 (``10.199.X.0/24``, X derived from the prefix) and these namespaces:

* ``<prefix>-c``, the *client* (the machine the user types on): a bridge ``br0`` with
  address ``.1``, one port per server;
* ``<prefix>-<name>`` per server: a network namespace with ``eth0`` (``.11``, ``.12``, ...)
  on that bridge, and sshd started there in its own mount and UTS namespace: hostname
  ``<name>``, ``root/<name>/etc`` mounted on ``/etc/mln`` (so mln there reads its own
  ``/etc/mln/mln.conf``: its own projects, templates and files under ``root/<name>/``,
  ``service_host <name>``), ``root/<name>/run`` on ``/run/mln`` and an empty
  ``/run/netns`` (a server neither sees the other namespaces nor holds them alive).

The client's ``root/client/mln.conf`` names every server (``server NAME ssh ADDRESS``),
its key (``ssh_identity``) and the servers' host keys (``ssh_known_hosts``). ``down()``
kills every process in the namespaces (guests too) and deletes them; ``root/kit.json``
lets ``python3 -m mln_core.nsservers down --dir DIR`` do it from another process.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

SSHD = "/usr/sbin/sshd"
TOOLS = ("ip", "unshare", "nsenter", "ssh-keygen")
CLIENT = "client"
_count = itertools.count(1)


def missing_tools() -> list[str]:
    """What the kit needs and this machine lacks ([] when it can run)."""
    return [t for t in TOOLS if not shutil.which(t)] + ([] if os.access(SSHD, os.X_OK) else [SSHD])


def machine_config() -> str:
    """This machine's ``default_kernel`` line (as mln_core.testing's, which needs pytest)."""
    from .config import SYSTEM_CONFIG, USER_CONFIG, Config
    cfg = Config()
    cfg.read(SYSTEM_CONFIG)
    cfg.read(os.path.expanduser(USER_CONFIG))
    return f"default_kernel {cfg.values['default_kernel']}\n" if "default_kernel" in cfg.values else ""


def _sh(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def _captured(kw: dict) -> dict:
    """subprocess.run's keywords: text output, captured unless the caller sends it elsewhere."""
    kw.setdefault("text", True)
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    return kw


def _pids_in(ns: str) -> list[int]:
    """The live processes in network namespace ``ns`` (what ``ip netns pids`` lists)."""
    try:
        st = os.stat(f"/run/netns/{ns}")
    except OSError:
        return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            s = os.stat(f"/proc/{pid}/ns/net")
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) and \
                    Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(pid))
    return found


class NamespaceServers:
    """Servers ``names`` as namespaces with sshd, under ``root``; see the module's doc."""

    def __init__(self, root, names=("sh1", "sh2", "sh3"), prefix: str | None = None,
                 conf: str | dict[str, str] = ""):
        self.root, self.names = Path(root).resolve(), list(names)
        bad = [n for n in self.names if n in (CLIENT, "c") or not n.replace("-", "").isalnum() or len(n) > 15]
        if bad or not 0 < len(set(self.names)) == len(self.names) <= 200:
            raise ValueError(f"server names must be 1 to 200 distinct names of letters, digits and '-' "
                             f"(at most 15, not 'client'): {bad or self.names}")
        self.prefix = prefix or f"mk{os.getpid():x}{next(_count)}"      # short: unique in this process
        self.conf = conf                 # more mln.conf lines: for every server, or {name: lines}
        self.subnet = f"10.199.{1 + zlib.crc32(self.prefix.encode()) % 254}"
        self.client_dir = self.root / CLIENT
        self.client_conf = self.client_dir / "mln.conf"
        self.identity = self.client_dir / "id_ed25519"
        self.known_hosts = self.client_dir / "known_hosts"
        self.ssh_config = self.client_dir / "ssh_config"
        self.authorized_keys = self.client_dir / "authorized_keys"
        self._procs: list[subprocess.Popen] = []
        self._sshd: dict[str, subprocess.Popen] = {}
        self._mine = False               # down() touches the namespaces only once up() claimed them

    # -- names and addresses --------------------------------------------------------------

    def netns(self, name: str) -> str:
        """The network namespace of server ``name`` (or of ``'client'``)."""
        return f"{self.prefix}-c" if name == CLIENT else f"{self.prefix}-{self._known(name)}"

    def address(self, name: str) -> str:
        """The IPv4 address of server ``name`` (or of ``'client'``)."""
        return f"{self.subnet}.{1 if name == CLIENT else 11 + self.names.index(self._known(name))}"

    def dir(self, name: str) -> Path:
        return self.root / self._known(name)

    def _known(self, name: str) -> str:
        if name in self.names:
            return name
        raise KeyError(f"no server {name!r} in this kit ({', '.join(self.names)})")

    # -- up -------------------------------------------------------------------------------

    def __enter__(self) -> "NamespaceServers":
        with contextlib.ExitStack() as undo:
            undo.callback(self.down)                     # a failed up() leaves nothing behind
            self.up()
            undo.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, timeout: float = 15) -> "NamespaceServers":
        """Create the namespaces, files and keys, start every sshd and wait until each listens."""
        taken = [ns for ns in map(self.netns, [CLIENT] + self.names) if os.path.exists(f"/run/netns/{ns}")]
        if taken:
            raise RuntimeError(f"network namespaces {', '.join(taken)} exist already (another kit "
                               f"with prefix {self.prefix!r}? its down() removes them)")
        self._mine = True
        self.client_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "kit.json").write_text(json.dumps({"prefix": self.prefix, "names": self.names}) + "\n")
        for d in ("/etc/mln", "/run/mln", "/run/sshd"):      # mount points; nothing is written in them
            os.makedirs(d, mode=0o755, exist_ok=True)
        self._network()
        self._client_files()
        for name in self.names:
            self._server_files(name)
            self._start_sshd(name)
        for name in self.names:
            self._wait_sshd(name, time.monotonic() + timeout)
        return self

    def _network(self) -> None:
        c, br = self.netns(CLIENT), "br0"
        _sh("ip", "netns", "add", c)
        _sh("ip", "-n", c, "link", "set", "lo", "up")
        _sh("ip", "-n", c, "link", "add", br, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        _sh("ip", "-n", c, "addr", "add", f"{self.address(CLIENT)}/24", "dev", br)
        _sh("ip", "-n", c, "link", "set", br, "up")
        for name in self.names:
            ns = self.netns(name)
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", c, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "-n", c, "link", "set", name, "master", br, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def _mln_conf(self, d: Path, service_host: str, extra: str = "") -> str:
        for sub in ("projects", "templates", "files"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return (f"projects {d / 'projects'}\ntemplates {d / 'templates'}\nfiles {d / 'files'}\n"
                f"service_host {service_host}\n{extra}{machine_config()}")

    def _client_files(self) -> None:
        _keygen(self.identity, f"mln-kit-{self.prefix}")
        self.authorized_keys.write_text(Path(f"{self.identity}.pub").read_text())
        lines = [f"ssh_identity {self.identity}\n", f"ssh_known_hosts {self.known_hosts}\n"]
        lines += [f"server {n} ssh {self.address(n)}\n" for n in self.names]
        self.client_conf.write_text(self._mln_conf(self.client_dir, CLIENT, "".join(lines)))
        self.ssh_config.write_text("".join(
            f"Host {n}\n  HostName {self.address(n)}\n  User root\n  IdentityFile {self.identity}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  ConnectTimeout 3\n" for n in self.names))
        self.known_hosts.write_text("")

    def _server_files(self, name: str) -> None:
        d, addr = self.dir(name), self.address(name)
        for sub in ("etc", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        extra = self.conf.get(name, "") if isinstance(self.conf, dict) else self.conf
        extra = extra + "\n" if extra and not extra.endswith("\n") else extra
        (d / "etc" / "mln.conf").write_text(self._mln_conf(d, name, extra))
        key = d / "ssh_host_ed25519_key"
        _keygen(key, name)
        kind, blob = Path(f"{key}.pub").read_text().split()[:2]
        with open(self.known_hosts, "a") as f:
            f.write(f"{addr},{name} {kind} {blob}\n")
        path = ":".join(dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/sbin", "/usr/local/bin",
                                       "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
        (d / "sshd_config").write_text(
            f"ListenAddress {addr}\nPort 22\nHostKey {key}\nPidFile {d / 'sshd.pid'}\n"
            f"PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\n"
            f"Subsystem sftp internal-sftp\nSetEnv PATH={path}\nAcceptEnv LANG LC_* MLN_*\n")

    def _start_sshd(self, name: str) -> None:
        d = self.dir(name)
        q = {k: shlex.quote(str(d / k)) for k in ("etc", "run", "sshd_config", "sshd.log")}
        script = (f"hostname {shlex.quote(name)} && {{ umount -R -l /run/netns 2>/dev/null; "
                  f"mount -t tmpfs -o size=1m,mode=755 mln-netns /run/netns; }} && "
                  f"mount --bind {q['etc']} /etc/mln && mount --bind {q['run']} /run/mln && "
                  f"exec {SSHD} -D -f {q['sshd_config']} -E {q['sshd.log']}")
        (d / "sshd.pid").unlink(missing_ok=True)
        with open(d / "sshd.out", "ab") as out:
            p = subprocess.Popen(["ip", "netns", "exec", self.netns(name), "unshare", "--mount", "--uts",
                                  "--propagation", "private", "sh", "-c", script],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self._sshd[name] = p
        self._procs.append(p)

    def _wait_sshd(self, name: str, deadline: float) -> None:
        d, p = self.dir(name), self._sshd[name]
        while time.monotonic() < deadline:
            log = (d / "sshd.log").read_text(errors="replace") if (d / "sshd.log").exists() else ""
            if "Server listening on" in log and (d / "sshd.pid").exists():
                return
            if p.poll() is not None:
                break
            time.sleep(0.02)
        out = "".join((d / f).read_text(errors="replace") for f in ("sshd.out", "sshd.log")
                      if (d / f).exists())
        raise RuntimeError(f"sshd of server {name} did not start:\n{out[-2000:]}")

    # -- running things -------------------------------------------------------------------

    def pid(self, name: str) -> int:
        """The pid of server ``name``'s sshd (its namespaces are the server's)."""
        p = self._sshd.get(self._known(name))
        if p is not None and p.poll() is None:
            return p.pid
        try:
            return int((self.dir(name) / "sshd.pid").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"server {name} is not up") from None

    def server_env(self, env: dict | None = None) -> dict:
        """The environment of a process run on a server: ours with sys.executable's
        directory first on PATH and no MLN_CONFIG (mln there reads /etc/mln/mln.conf)."""
        e = {k: v for k, v in os.environ.items() if k != "MLN_CONFIG"}
        e["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {**e, **(env or {})}

    def env_for_client(self, env: dict | None = None) -> dict:
        """The environment of mln on the client: ``MLN_CONFIG`` names the client's mln.conf."""
        return {**self.server_env(), "MLN_CONFIG": str(self.client_conf), **(env or {})}

    def _enter(self, name: str, argv, cwd) -> list[str]:
        return ["nsenter", "-t", str(self.pid(name)), "-n", "-m", "-u", f"--wd={cwd or self.dir(name)}",
                "--", *map(str, argv)]

    def run(self, name: str, argv, env: dict | None = None, cwd=None, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` inside server ``name``'s namespaces (as sshd's children would, but
        directly); output is captured as text unless ``kw`` says otherwise."""
        return subprocess.run(self._enter(name, argv, cwd), env=self.server_env(env), **_captured(kw))

    def spawn(self, name: str, argv, log, env: dict | None = None, cwd=None) -> subprocess.Popen:
        """Start a long-running ``argv`` inside server ``name`` (a daemon), output to ``log``;
        :meth:`down` kills it with everything else in the server."""
        with open(log, "ab") as out:
            p = subprocess.Popen(self._enter(name, argv, cwd), env=self.server_env(env),
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self._procs.append(p)
        return p

    def client_run(self, argv, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` in the client's network namespace with ``MLN_CONFIG`` set to the client's conf."""
        kw.setdefault("cwd", self.client_dir)
        return subprocess.run(["ip", "netns", "exec", self.netns(CLIENT), *map(str, argv)],
                              env=self.env_for_client(env), **_captured(kw))

    def mln(self, where: str, *args: str, **kw) -> subprocess.CompletedProcess:
        """``mln ARGS`` on server ``where`` or on ``'client'``."""
        argv = [sys.executable, "-m", "mln_core.cli", *args]
        return self.client_run(argv, **kw) if where == CLIENT else self.run(where, argv, **kw)

    def ssh_argv(self, name: str, *command: str) -> list[str]:
        """``ssh`` to server ``name`` with the kit's key and known_hosts (to run in the client)."""
        return ["ssh", "-F", str(self.ssh_config), self._known(name), *command]

    def ssh(self, name: str, command: str, **kw) -> subprocess.CompletedProcess:
        """``command`` run over ssh on server ``name``, from the client."""
        return self.client_run(self.ssh_argv(name, command), **kw)

    def break_link(self, name: str) -> None:
        """Cut server ``name`` off (its port on the client's bridge goes down)."""
        _sh("ip", "-n", self.netns(CLIENT), "link", "set", self._known(name), "down")

    def mend_link(self, name: str) -> None:
        _sh("ip", "-n", self.netns(CLIENT), "link", "set", self._known(name), "up")

    # -- down -----------------------------------------------------------------------------

    def down(self, timeout: float = 5) -> None:
        """Kill every process in the kit's namespaces, wait for them, delete the namespaces
        (their veths, bridges, taps and VXLAN devices go with them). Safe to call again."""
        if not self._mine:
            return
        spaces = [self.netns(n) for n in self.names] + [self.netns(CLIENT)]
        for sig, wait in ((signal.SIGTERM, timeout / 2), (signal.SIGKILL, timeout / 2)):
            for pid in (pid for ns in spaces for pid in _pids_in(ns)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            end = time.monotonic() + wait
            while any(map(_pids_in, spaces)) and time.monotonic() < end:
                for p in self._procs:
                    p.poll()                             # reap our own children
                time.sleep(0.02)
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
        left = {ns: _pids_in(ns) for ns in spaces if _pids_in(ns)}
        for ns in spaces:
            if os.path.exists(f"/run/netns/{ns}"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if left:
            raise RuntimeError(f"processes survived SIGKILL in the kit's namespaces: {left}")

    @classmethod
    def load(cls, root) -> "NamespaceServers":
        """The kit that ``up`` left in ``root`` (from ``root/kit.json``)."""
        state = json.loads((Path(root) / "kit.json").read_text())
        kit = cls(root, state["names"], prefix=state["prefix"])
        kit._mine = True
        return kit

    def usage(self) -> str:
        """How to use the kit from a shell (what ``mln-servers up`` prints)."""
        c, n, ssh = self.netns(CLIENT), self.names[0], f"ssh -F {self.ssh_config}"
        return "\n".join(
            [f"client: namespace {c}, address {self.address(CLIENT)}, mln.conf {self.client_conf}"]
            + [f"server {s}: namespace {self.netns(s)}, address {self.address(s)}, "
               f"mln.conf {self.dir(s) / 'etc' / 'mln.conf'}" for s in self.names]
            + ["", "from the client:", f"  ip netns exec {c} env MLN_CONFIG={self.client_conf} mln ...",
               f"  ip netns exec {c} {ssh} {n} hostname", f"  ip netns exec {c} {ssh} {n} mln version",
               f"a shell on {n}: nsenter -t {self.pid(n)} -n -m -u bash",
               f"stop them: python3 -m mln_core.nsservers down --dir {self.root}"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mln-servers", description="Several mln servers on this machine "
                                 "as network namespaces with sshd (docs/servers.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up, down = sub.add_parser("up", help="bring the servers up"), sub.add_parser(
        "down", help="stop them and remove their namespaces (files in --dir stay)")
    for p in (up, down):
        p.add_argument("--dir", required=True, help="where their files are")
    up.add_argument("--servers", default="sh1,sh2,sh3", help="comma-separated names (default sh1,sh2,sh3)")
    up.add_argument("--prefix", default="mln", help="namespace names are PREFIX-c, PREFIX-NAME (default mln)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0 or missing_tools():
        print(f"mln-servers: needs root and {', '.join(TOOLS + (SSHD,))}; missing: "
              f"{', '.join(missing_tools()) or 'root'}", file=sys.stderr)
        return 1
    try:
        if a.cmd == "up":
            kit = NamespaceServers(a.dir, [n for n in a.servers.split(",") if n], prefix=a.prefix)
            print(kit.__enter__().usage())               # up; the servers stay after we exit
        else:
            NamespaceServers.load(a.dir).down()
            print("down")
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        print(f"mln-servers: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
