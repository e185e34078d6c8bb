"""The ``ssh`` transport when several threads of one command use it at once: one
connection attempt, whose failure is the answer of every thread that waited for it; the
requests sent at once to a server's one ``mln serve --many``, each answered with its own
answer; a server with an older mln named as such."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time

from mln_core.errors import MlnError
from mln_core.servers import Server
from mln_plugins import transport_ssh


def test_threads_waiting_for_a_connection_that_fails_get_its_error_not_a_second_wait(monkeypatch, tmp_path):
    """A server that accepts TCP connections and never says a word (a hung sshd): the first
    attempt fails after the timeout, and the threads that waited for it meanwhile fail with
    the same error at the same time, without an attempt of their own. A local listening
    socket (only loopback), not an sshd: nothing there answers on purpose."""
    monkeypatch.setattr(transport_ssh, "CONNECT_TIMEOUT", 1)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []

    def hung_sshd_fake():
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return
    threading.Thread(target=hung_sshd_fake, daemon=True).start()
    server = Server("sh9", "ssh", "127.0.0.1", port=silent.getsockname()[1])
    t = transport_ssh.SshTransport(server, {"ssh_known_hosts": str(tmp_path / "known_hosts")})
    errors: list = []

    def connect():
        try:
            t._connection()
        except MlnError as e:
            errors.append((time.monotonic(), str(e)))
    try:
        start = time.monotonic()
        threads = [threading.Thread(target=connect) for _ in range(3)]
        for th in threads:
            th.start()
            time.sleep(0.05)
        for th in threads:
            th.join(10)
        assert len(errors) == 3 and len({e for _, e in errors}) == 1, errors
        assert errors[0][1].startswith("ssh to 127.0.0.1:") or "cannot reach" in errors[0][1], errors
        assert max(when for when, _ in errors) - start < 1.8       # one timeout, not three in a row
        assert len(accepted) == 1                                  # one attempt
        # a later call (nobody was waiting): tries again
        connect()
        assert len(errors) == 4 and len(accepted) == 2
    finally:
        silent.close()
        for c in accepted:
            c.close()


ASK = r"""
import json, sys, threading
from mln_core.config import load_config
from mln_core.errors import MlnError
from mln_core.servers import configured
from mln_plugins.transport_ssh import SshTransport
config = load_config()
server = configured(config)[sys.argv[1]]
server.options.update(json.loads(sys.argv[2]))
t = SshTransport(server, config)
requests = json.loads(sys.argv[3])
answers = [None] * len(requests)
def ask(i):
    try:
        answers[i] = t.request(requests[i], lambda line: None)
    except MlnError as e:
        answers[i] = "error: " + str(e)
threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
for th in threads:
    th.start()
for th in threads:
    th.join(120)
t.close()
print(json.dumps(answers))
"""


def _ask(kit, server: str, requests: list, **options) -> list:
    r = kit.client_run([sys.executable, "-c", ASK, server, json.dumps(options), json.dumps(requests)], timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_requests_sent_at_once_to_one_server_each_get_their_own_answer(mln_servers):
    """Ten threads of one command ask the same server at once (over real ssh, to its one
    ``mln serve --many``): each gets the answer to its own request."""
    kit = mln_servers
    requests = [{"verb": f"nosuch{i}"} if i % 2 else {"verb": "ping"} for i in range(10)]
    answers = _ask(kit, "sh1", requests)
    for i, a in enumerate(answers):
        if i % 2:
            assert isinstance(a, str) and f"unknown request 'nosuch{i}'" in a, (i, a)
        else:
            assert a["server"] == "sh1" and a["version"], (i, a)


def test_a_server_with_an_older_mln_is_named_not_misread(mln_servers):
    """A server whose mln answers one request at a time, without the requests' ids (an
    older version, stood in for by a script): each request says so, none takes another's
    answer for its own."""
    kit = mln_servers
    old = kit.dir("sh1") / "older_mln_fake.sh"
    old.write_text("#!/bin/sh\n# stands in for an older mln: 'serve --many' answers in turn, without ids\n"
                   "while read -r line; do echo '{\"ok\": true, \"result\": {\"rows\": []}}'; done\n")
    old.chmod(0o755)
    answers = _ask(kit, "sh1", [{"verb": "status", "project": "p"}, {"verb": "need", "templates": []}],
                   mln=str(old))
    for a in answers:
        assert isinstance(a, str) and "older than this one's" in a, answers


AGAIN = r"""
import sys, time
from mln_core.config import load_config
from mln_core.servers import configured
from mln_plugins.transport_ssh import SshTransport
config = load_config()
t = SshTransport(configured(config)[sys.argv[1]], config)
print(t.request({"verb": "ping"}, print)["server"])
t._connection().run("pkill -f 'mln_core.cli serv[e] --many|mln serv[e] --many'", warn=True, hide=True)
time.sleep(1)
print(t.request({"verb": "ping"}, print)["server"])
t.close()
"""


def test_a_server_whose_mln_serve_ended_between_requests_gets_a_new_one(mln_servers):
    """The ``mln serve`` of this command on a server ends while no request waits (killed
    there): the next request starts another and is answered."""
    kit = mln_servers
    r = kit.client_run([sys.executable, "-c", AGAIN, "sh1"], timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["sh1", "sh1"], r.stdout + r.stderr
