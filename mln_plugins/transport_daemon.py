"""The ``daemon`` transport: another server's ``mln daemon``, over TLS.

    server sh1 daemon 10.0.0.11            # port 34001
    server sh2 daemon sh2.example.org:34002 tls_name=sh2

The daemon's certificate is checked against the site CA (``daemon_ca`` in mln.conf, or
``ca=PATH`` on the server line) and against the server's address (or ``tls_name=NAME``).
The client authenticates with its certificate (``daemon_client_cert``,
``daemon_client_key``; ``cert=``, ``key=``) or with the token of ``daemon_token_file``
(``token_file=``; mode 0600). Each request is one connection; see :mod:`mln_core.daemon`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

from mln_core import hookimpl
from mln_core.errors import MlnError

if TYPE_CHECKING:
    import ssl

# ssl, mln_core.daemon and mln_core.serve are imported when a daemon server is used: every
# mln command imports this plugin, few talk to a daemon.

CONNECT_TIMEOUT = 10
SILENCE = 60                # seconds without a line (mln serve sends a heartbeat every 5 s)


@hookimpl
def mln_remote_transport(server, ctx):
    if server.transport != "daemon":
        return None
    return DaemonTransport(server, ctx.config, ctx.on())


def sha256_of(path: str) -> str:
    from mln_core.serve import sha256_of as digest
    return digest(path)


class DaemonTransport:
    def __init__(self, server, config, machine):
        from mln_core.daemon import DEFAULT_PORT
        opt = server.options
        self.machine = machine
        self.server = server
        self.port = server.port or DEFAULT_PORT
        self.where = (f"[{server.address}]" if ":" in server.address else server.address) + f":{self.port}"
        self.ca = opt.get("ca") or config.get("daemon_ca")
        self.cert = opt.get("cert") or config.get("daemon_client_cert")
        self.key = opt.get("key") or config.get("daemon_client_key")
        self.token_file = opt.get("token_file") or config.get("daemon_token_file")
        self.tls_name = opt.get("tls_name") or server.address
        self.timeout = float(opt.get("timeout") or CONNECT_TIMEOUT)
        self.silence = float(config.get("remote_timeout") or SILENCE)   # no line for this long: gone
        self._ctx = None
        self._token = None

    def _context(self) -> ssl.SSLContext:
        import ssl

        from mln_core.daemon import read_token
        if self._ctx is not None:
            return self._ctx
        if not self.ca:
            raise MlnError("the daemon transport needs daemon_ca in mln.conf (the site CA that signed the "
                           "daemon's certificate)")
        if not self.cert and not self.token_file:
            raise MlnError("the daemon transport needs daemon_client_cert and daemon_client_key, or "
                           "daemon_token_file, in mln.conf")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # checks the certificate and the name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(self.ca)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise MlnError(f"cannot load the CA {self.ca} or the client certificate {self.cert} "
                           f"(key {self.key}): {getattr(e, 'strerror', None) or e}") from None
        if self.token_file:
            self._token = read_token(self.token_file).decode()
        self._ctx = ctx
        return ctx

    def _connect(self):
        import ssl
        ctx = self._context()
        try:
            raw = self.machine.connect_tcp(self.server.address, self.port, timeout=self.timeout)
        except ConnectionRefusedError:
            raise MlnError(f"connection refused by {self.where} (is 'mln daemon' running there?)") from None
        except TimeoutError:
            raise MlnError(f"no answer from {self.where} within {self.timeout:g} s") from None
        except OSError as e:
            raise MlnError(f"cannot reach {self.where}: {e.strerror or e}") from None
        try:
            tls = ctx.wrap_socket(raw, server_hostname=self.tls_name)
        except ssl.SSLCertVerificationError as e:
            raw.close()
            raise MlnError(f"TLS failure: the certificate of {self.where} is not valid for '{self.tls_name}' "
                           f"signed by {self.ca}: {e.verify_message}") from None
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise MlnError(f"TLS failure with {self.where}: {getattr(e, 'reason', None) or e}") from None
        tls.settimeout(self.silence)     # a working server prints a heartbeat line every few seconds
        return tls

    def _message(self, obj: dict) -> dict:
        return dict(obj, token=self._token) if self._token else dict(obj)

    def _answers(self, tls, stream):
        """The daemon's JSON lines, with its errors as one clear message."""
        import ssl

        from mln_core.daemon import read_json
        while True:
            try:
                obj = read_json(stream)
            except ssl.SSLError as e:
                reason = getattr(e, "reason", None) or str(e)
                if "ALERT" in reason.upper():
                    raise MlnError(f"TLS failure: {self.where} refused this client's certificate "
                                   f"({reason})") from None
                raise MlnError(f"TLS failure with {self.where}: {reason}") from None
            except (OSError, ValueError) as e:
                raise self._broken(e) from None
            if obj is None:
                raise MlnError(f"{self.where} closed the connection without an answer")
            yield obj

    def _broken(self, e: Exception) -> MlnError:
        import ssl
        if isinstance(e, TimeoutError):
            return MlnError(f"{self.where} stopped answering (nothing for {self.silence:g} s)")
        if isinstance(e, (ssl.SSLEOFError, ConnectionResetError)):
            return MlnError(f"TLS failure: {self.where} closed the connection at once (does it refuse this "
                            "client's certificate? its log says why)")
        return MlnError(f"the connection to {self.where} broke: {e}")

    def request(self, request: dict, log) -> dict:
        from mln_core.daemon import send_json
        with self._connect() as tls, tls.makefile("rb") as stream:
            try:
                send_json(tls, self._message(request))
            except OSError:
                pass                    # what the daemon said instead (a TLS alert) is read below
            for obj in self._answers(tls, stream):
                if "log" in obj:
                    log(str(obj["log"]))
                elif "ok" in obj:
                    if obj["ok"]:
                        return obj.get("result") or {}
                    raise MlnError(str(obj.get("error", "failed")))
        raise MlnError(f"{self.where} closed the connection without an answer")   # pragma: no cover

    def put(self, local_path: str, remote_path: str) -> None:
        from mln_core.daemon import send_json
        size, digest = os.path.getsize(local_path), sha256_of(local_path)
        with self._connect() as tls, tls.makefile("rb") as stream:
            answers = self._answers(tls, stream)
            try:
                send_json(tls, self._message({"put": remote_path, "size": size, "sha256": digest}))
                first = next(answers)
                if not first.get("ready"):
                    raise MlnError(str(first.get("error", f"unexpected answer {json.dumps(first)[:200]}")))
                with open(local_path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        tls.sendall(block)
            except OSError as e:
                raise MlnError(f"sending {local_path} to {self.where} failed: {e}") from None
            last = next(answers)
            if not last.get("ok"):
                raise MlnError(str(last.get("error", "failed")))

    def get(self, remote_path: str, local_path: str) -> None:
        """Fetch a file of the server's inbox into ``local_path`` (checked by SHA-256)."""
        from mln_core.daemon import send_json
        with self._connect() as tls, tls.makefile("rb") as stream:
            answers = self._answers(tls, stream)
            send_json(tls, self._message({"get": remote_path}))
            first = next(answers)
            if not first.get("ready"):
                raise MlnError(str(first.get("error", f"unexpected answer {json.dumps(first)[:200]}")))
            size, h = int(first["size"]), hashlib.sha256()
            try:
                with open(os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    while size:
                        block = stream.read(min(size, 1 << 20))
                        if not block:
                            raise MlnError(f"{self.where} stopped sending {remote_path}")
                        h.update(block)
                        f.write(block)
                        size -= len(block)
            except OSError as e:
                raise self._broken(e) from None
            if h.hexdigest() != first.get("sha256"):
                raise MlnError(f"{remote_path} from {self.where} arrived damaged (SHA-256 differs)")

    def close(self) -> None:
        pass
