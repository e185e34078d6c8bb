"""``mln daemon`` on servers that are network namespaces (``NamespaceServers``): TLS,
client certificates of a site CA or a token, ``daemon_allow`` checked against the real
addresses of the peers, ``put`` only into the templates inbox, ``daemon_status``, a
project over two servers through the ``daemon`` transport, SIGTERM."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mln_core.daemon_ca import init_ca, issue
from tests.conftest import TEMPLATE_DIR

RAW = r'''
import hashlib, json, os, socket, ssl, sys
from mln_plugins.transport_daemon import DaemonTransport
from mln_core.config import Config
from mln_core.errors import MlnError
from mln_core.machine import local
from mln_core.servers import Server

address, ca, inbox, conf = sys.argv[1:5]
out = {}
# no certificate and no token: refused by the daemon itself
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection((address, 34001), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=address) as s:
    s.sendall(b'{"verb": "ping"}\n')
    out["bare"] = json.loads(s.makefile("rb").readline())
cfg = Config()
cfg.read(conf)
t = DaemonTransport(Server("sh1", "daemon", address), cfg, local())
data = os.urandom(300000)
with open("blob", "wb") as f:
    f.write(data)
for key, path in (("outside", "/tmp/evil"), ("dotdot", inbox + "/../evil"), ("deeper", inbox + "/x/evil"),
                  ("hidden", inbox + "/.evil")):
    try:
        t.put("blob", path)
        out[key] = "accepted"
    except MlnError as e:
        out[key] = str(e)
t.put("blob", inbox + "/good.img")
out["good"] = hashlib.sha256(open(os.path.join(inbox, "good.img"), "rb").read()).hexdigest() == \
    hashlib.sha256(data).hexdigest()
# a get (a host's disk packed for a move): the file back, checked; nothing outside the inbox
t.get(inbox + "/good.img", "fetched")
out["get"] = open("fetched", "rb").read() == data
for key, path in (("get_outside", "/etc/hostname"), ("get_dotdot", inbox + "/../mln.conf")):
    try:
        t.get(path, "fetched2")
        out[key] = "sent"
    except MlnError as e:
        out[key] = str(e)
# a wrong checksum: refused, nothing left in the inbox
import mln_plugins.transport_daemon as td
td.sha256_of = lambda p: "0" * 64
try:
    t.put("blob", inbox + "/bad.img")
    out["badsum"] = "accepted"
except MlnError as e:
    out["badsum"] = str(e)
print(json.dumps(out))
'''

SLOW_PUT = r'''
import hashlib, json, socket, ssl, sys
address, ca, cert, key, inbox = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
data = b"x" * 200000
with socket.create_connection((address, 34001), timeout=30) as raw, ctx.wrap_socket(raw, server_hostname=address) as s:
    f = s.makefile("rb")
    s.sendall(json.dumps({"put": inbox + "/slow.img", "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}).encode() + b"\n")
    assert json.loads(f.readline()) == {"ready": True}
    s.sendall(data[:1000])
    print("half", flush=True)
    sys.stdin.readline()
    s.sendall(data[1000:])
    print(f.readline().decode().strip(), flush=True)
'''


def _kit(tmp_path, names, allow: dict, extra: dict | None = None):
    from mln_core.nsservers import NamespaceServers, missing_tools
    if os.geteuid() != 0:
        pytest.skip("needs root (network, mount and UTS namespaces)")
    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    kit = NamespaceServers(tmp_path / "servers", names=names)
    pki = tmp_path / "pki"
    init_ca(str(pki))
    for n in names:
        issue(str(pki), n, addresses=[kit.address(n)])
    issue(str(pki), "admin", client=True)
    token = tmp_path / "token"
    token.write_text("a-good-token-of-the-site-0123456789\n")
    token.chmod(0o600)
    kit.pki, kit.token = pki, token
    kit.conf = {n: (f"daemon_cert {pki / n}.crt\ndaemon_key {pki / n}.key\ndaemon_ca {pki}/ca.crt\n"
                    f"daemon_token_file {token}\n" + "".join(f"daemon_allow {a}\n" for a in allow[n](kit))
                    + (extra or {}).get(n, lambda k: "")(kit)) for n in names}
    return kit


def _client_confs(kit) -> None:
    """The client's mln.conf names the servers' daemons, with the client certificate."""
    text = re.sub(r"^server (\S+) ssh ", r"server \1 daemon ", kit.client_conf.read_text(), flags=re.M)
    kit.client_conf.write_text(text + f"daemon_ca {kit.pki}/ca.crt\ndaemon_client_cert {kit.pki}/admin.crt\n"
                                      f"daemon_client_key {kit.pki}/admin.key\n")


def _other_conf(kit, name: str, lines: str) -> Path:
    """A client mln.conf without the client certificate, with ``lines``."""
    base = "".join(ln + "\n" for ln in kit.client_conf.read_text().splitlines()
                   if not ln.startswith(("daemon_client_", "daemon_token_file")))
    path = kit.client_dir / f"{name}.conf"
    path.write_text(base + lines)
    return path


def _wait_log(path: Path, text: str, timeout: float = 15, after: int = 0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = path.read_text(errors="replace") if path.exists() else ""
        if text in log[after:]:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{log[-2000:]}")


def _daemon(kit, name: str) -> subprocess.Popen:
    log = kit.dir(name) / "daemon.log"
    p = kit.spawn(name, [sys.executable, "-m", "mln_core.cli", "daemon"], log)
    _wait_log(log, "listening on")
    return p


def test_the_daemon_admits_only_allowed_and_authenticated_clients(tmp_path):
    # sh1 admits the client's address only: sh2's (.12) begins with it, which the original's
    # unanchored match let in; sh2 admits a network that holds the client and not sh1
    kit = _kit(tmp_path, ("sh1", "sh2"), allow={"sh1": lambda k: [k.address("client")],
                                                 "sh2": lambda k: [k.address("client").rsplit(".", 1)[0] + ".0/30"]},
               extra={"sh2": lambda k: f"server sh1 daemon {k.address('sh1')}\ndaemon_client_cert "
                                       f"{k.pki}/admin.crt\ndaemon_client_key {k.pki}/admin.key\n"})
    with kit:
        _client_confs(kit)
        sh1 = _daemon(kit, "sh1")
        pidfile, log2 = kit.dir("sh2") / "run" / "mlnd.pid", kit.dir("sh2") / "daemon.log"
        r = kit.mln("sh2", "daemon", "-D", str(pidfile), "--log", str(log2))
        assert r.returncode == 0, r.stderr
        _wait_log(log2, "listening on")
        pid2 = int(pidfile.read_text())
        log1 = kit.dir("sh1") / "daemon.log"
        client, a1, a2 = kit.address("client"), kit.address("sh1"), kit.address("sh2")

        r = kit.mln("client", "daemon_status")                       # a client certificate
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"^sh1 +0 +0 ", r.stdout, re.M) and re.search(r"^sh2 +0 +0 ", r.stdout, re.M), r.stdout
        assert "Total:" in r.stdout and "Not answering" not in r.stdout, r.stdout
        r = kit.mln("client", "daemon_status", "--format", "json")
        data = json.loads(r.stdout)
        assert sorted(s["server"] for s in data["servers"]) == ["sh1", "sh2"] and not data["not_answering"]
        assert all(s["cpus"] >= 1 and s["memory_total"] > 0 for s in data["servers"]), data
        r = kit.mln("client", "daemon_status", "-r")
        assert r.stdout.splitlines()[0] == "server,projects,vms,used,free,max", r.stdout
        assert {ln.split(",")[0] for ln in r.stdout.splitlines()[1:]} == {"sh1", "sh2"}
        assert "(certificate admin): capacity" in log1.read_text()

        # from sh2's address: refused by sh1's allow-list, with the address in sh1's log
        r = kit.mln("sh2", "daemon_status")
        assert r.returncode == 1
        assert f"sh1: refused: address {a2} is not in the daemon's daemon_allow" in r.stdout, r.stdout + r.stderr
        _wait_log(log1, f"refused {a2}: not in daemon_allow")
        # sh1's address is not in sh2's network
        r = kit.run("sh1", [sys.executable, "-c", f"import socket; socket.create_connection(('{a2}', 34001)).close()"])
        assert r.returncode == 0, r.stderr
        _wait_log(log2, f"refused {a1}: not in daemon_allow")

        # the token; a wrong token; a certificate of another CA; no certificate and no token
        good = _other_conf(kit, "token", f"daemon_token_file {kit.token}\n")
        r = kit.mln("client", "daemon_status", env={"MLN_CONFIG": str(good)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{client} (token): capacity" in log1.read_text()
        bad = kit.client_dir / "bad-token"
        bad.write_text("not-the-token-of-the-site-0123456\n")
        bad.chmod(0o600)
        r = kit.mln("client", "daemon_status", env={"MLN_CONFIG": str(_other_conf(
            kit, "bad", f"daemon_token_file {bad}\n"))})
        assert r.returncode == 1 and "sh1: refused: bad token" in r.stdout, r.stdout + r.stderr
        _wait_log(log1, f"refused {client}: bad token")
        init_ca(str(tmp_path / "other"))
        issue(str(tmp_path / "other"), "intruder", client=True)
        r = kit.mln("client", "daemon_status", env={"MLN_CONFIG": str(_other_conf(
            kit, "intruder", f"daemon_client_cert {tmp_path}/other/intruder.crt\n"
                             f"daemon_client_key {tmp_path}/other/intruder.key\n"))})
        assert r.returncode == 1 and "sh1: TLS failure" in r.stdout and "certificate" in r.stdout, r.stdout
        _wait_log(log1, f"refused {client}: TLS handshake failed")
        # a daemon whose certificate is not the one of its address: refused by the client
        wrong = _other_conf(kit, "wrong", f"server sh9 daemon {a1} tls_name={a2}\n")
        wrong.write_text(re.sub(r"^server sh[12] .*\n", "", wrong.read_text(), flags=re.M)
                         + f"daemon_client_cert {kit.pki}/admin.crt\ndaemon_client_key {kit.pki}/admin.key\n")
        r = kit.mln("client", "daemon_status", env={"MLN_CONFIG": str(wrong)})
        assert r.returncode == 1 and "sh9: TLS failure: the certificate of" in r.stdout, r.stdout

        inbox = kit.dir("sh1") / "templates" / ".incoming"
        script = kit.client_dir / "raw.py"
        script.write_text(RAW)
        r = kit.client_run([sys.executable, script, a1, f"{kit.pki}/ca.crt", inbox, kit.client_conf])
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["bare"] == {"ok": False, "error": "refused: no client certificate and no token"}, out
        _wait_log(log1, f"refused {client}: no client certificate and no token")
        for key in ("outside", "dotdot", "deeper"):
            assert "are taken only into" in out[key], out
        assert "hidden" in out and out["hidden"] != "accepted", out
        assert out["good"] is True and "SHA-256" in out["badsum"], out
        assert out["get"] is True and "files are sent only from" in out["get_outside"] and \
            "files are sent only from" in out["get_dotdot"], out
        assert sorted(p.name for p in inbox.iterdir()) == ["good.img"]
        assert not Path("/tmp/evil").exists() and not (inbox.parent / "evil").exists()

        # SIGTERM with a request running: no new connection, the request finishes, exit 0
        slow = kit.client_dir / "slow.py"
        slow.write_text(SLOW_PUT)
        p = subprocess.Popen(["ip", "netns", "exec", kit.netns("client"), sys.executable, str(slow), a1,
                              f"{kit.pki}/ca.crt", f"{kit.pki}/admin.crt", f"{kit.pki}/admin.key", str(inbox)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=kit.env_for_client())
        assert p.stdout.readline().strip() == "half"
        sh1.send_signal(signal.SIGTERM)
        _wait_log(log1, "stopping: waiting up to 60 s for 1 connection")
        r = kit.mln("client", "daemon_status")
        assert r.returncode == 1 and "sh1: connection refused by" in r.stdout, r.stdout
        assert sh1.poll() is None
        p.stdin.write("go\n")
        p.stdin.flush()
        assert json.loads(p.stdout.readline()) == {"ok": True, "result": {}}
        p.wait(10)
        assert sh1.wait(15) == 0
        assert (inbox / "slow.img").stat().st_size == 200000
        assert _wait_log(log1, "stopped")
        os.kill(pid2, signal.SIGTERM)                                # the detached one
        end = time.monotonic() + 15
        while (pidfile.exists() or Path(f"/proc/{pid2}").exists()) and time.monotonic() < end:
            time.sleep(0.05)
        assert not pidfile.exists() and not Path(f"/proc/{pid2}").exists()
        assert "stopped" in log2.read_text()


PROJECT = """global { project remote }
superclass node {
    uml
    template busybox.ext4
    memory 96M
    startup { echo "MLN-BOOTED $(hostname)" }
}
switch lan { }
host a { superclass node
    service_host sh1
    network eth0 { switch lan
        address 10.0.0.1
        netmask 255.255.255.0 } }
host b { superclass node
    service_host sh2
    network eth0 { switch lan
        address 10.0.0.2
        netmask 255.255.255.0 } }
"""


@pytest.mark.guests
def test_a_project_over_two_daemons(tmp_path, test_template):
    kit = _kit(tmp_path, ("sh1", "sh2"), allow={n: lambda k: [k.address("client")] for n in ("sh1", "sh2")})
    with kit:
        _client_confs(kit)
        _daemon(kit, "sh1")
        # sh2's build waits in the middle (at its staging step), so that its daemon is stopped there
        log2 = kit.dir("sh2") / "daemon.log"
        sh2 = kit.spawn("sh2", [sys.executable, "-m", "mln_core.cli", "daemon"], log2,
                        env={"MLN_FAULTS": "pause@build remote: stage"})
        _wait_log(log2, "listening on")
        r = kit.mln("client", "register_template", "-t", str(TEMPLATE_DIR / "busybox.ext4"),
                    "--kernel", str(TEMPLATE_DIR / "vmlinux"), "--initrd", str(TEMPLATE_DIR / "initrd.gz"))
        assert r.returncode == 0, r.stderr
        path = kit.client_dir / "remote.mln"
        path.write_text(PROJECT)
        try:
            # SIGTERM to a daemon in the middle of a build: the build fails naming the server,
            # no server keeps anything of it, and once the daemon is back the same command works
            p = subprocess.Popen(["ip", "netns", "exec", kit.netns("client"), sys.executable, "-m", "mln_core.cli",
                                  "build", "-f", str(path)], env=kit.env_for_client(), stderr=subprocess.PIPE,
                                 text=True)
            said = []
            for line in p.stderr:
                said.append(line)
                if line.startswith("[sh2] +---> project remote"):
                    _wait_log(log2, "MLN_FAULTS: pausing at")
                    sh2.send_signal(signal.SIGTERM)
            assert p.wait(timeout=60) == 1, "".join(said)
            assert any("server sh2" in x and "stopping" in x for x in said), "".join(said)
            assert "Traceback" not in "".join(said)
            assert sh2.wait(30) == 0 and "interrupting a build" in log2.read_text()
            for n in ("sh1", "sh2"):
                assert not (kit.dir(n) / "projects" / "remote").exists(), n
                assert not [x for x in (kit.dir(n) / "projects").iterdir()         # no staging left
                            if "remote" in x.name and x.name != ".remote.lock"], n
            assert not (kit.client_dir / "projects" / "remote").exists()
            start = log2.stat().st_size
            kit.spawn("sh2", [sys.executable, "-m", "mln_core.cli", "daemon"], log2)
            _wait_log(log2, "listening on", after=start)

            r = kit.mln("client", "build", "-f", str(path))
            assert r.returncode == 0, r.stderr
            assert "[sh1]" in r.stderr and "[sh2]" in r.stderr
            assert "sending template" in r.stderr + "".join(said), r.stderr
            for n in ("sh1", "sh2"):
                assert (kit.dir(n) / "templates" / "busybox.ext4").exists()
                assert not list((kit.dir(n) / "templates" / ".incoming").iterdir())
            r = kit.mln("client", "start", "-p", "remote")
            assert r.returncode == 0, r.stderr
            for h, n in (("a", "sh1"), ("b", "sh2")):
                log = kit.dir(n) / "projects" / "remote" / "hosts" / h / "console.log"
                _wait_log(log, f"MLN-BOOTED {h}", timeout=90)
            r = kit.mln("client", "status", "-p", "remote", "--format", "json")
            assert r.returncode == 0, r.stderr
            assert {(x["name"], x["server"], x["state"]) for x in json.loads(r.stdout) if x["kind"] == "host"} \
                == {("a", "sh1", "up"), ("b", "sh2", "up")}
            r = kit.mln("client", "daemon_status", "--format", "json")
            assert r.returncode == 0, r.stderr
            assert {(s["server"], s["projects"], s["vms"]) for s in json.loads(r.stdout)["servers"]} == \
                {("sh1", 1, 1), ("sh2", 1, 1)}
            r = kit.mln("client", "stop", "-p", "remote")
            assert r.returncode == 0, r.stderr
            r = kit.mln("client", "remove", "-f", "-p", "remote")
            assert r.returncode == 0, r.stderr
            for n in ("sh1", "sh2"):
                assert not (kit.dir(n) / "projects" / "remote").exists()
                assert "(certificate admin): remove remote" in (kit.dir(n) / "daemon.log").read_text()
        finally:
            for n in ("sh1", "sh2"):
                kit.mln(n, "stop", "-a", "-H")
