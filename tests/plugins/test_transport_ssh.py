"""The ``ssh`` transport's connection when several threads of one command need it at once
(the moves' ``mln serve`` sessions are started in the background while requests go on):
one attempt, and its failure is the answer of every thread that waited for it."""
from __future__ import annotations

import socket
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
