"""The daemon's allow-list (``daemon_allow``: anchored patterns, addresses, CIDR), its
token files and the site CA's files."""
from __future__ import annotations

import os
import ssl
import stat

import pytest

from mln_core.config import Config
from mln_core.daemon import AllowList, read_token, settings
from mln_core.errors import MlnError


@pytest.mark.parametrize("entry, address, admitted", [
    ("1.2.3.4", "1.2.3.4", True),
    ("1.2.3.4", "11.2.3.45", False),          # the original matched unanchored: both got in
    ("1.2.3.4", "1.2.3.40", False),
    ("1.2.3.4", "21.2.3.4", False),
    ("10.0.0.*", "10.0.0.7", True),
    ("10.0.0.*", "10.0.0.255", True),
    ("10.0.0.*", "10.0.0.", False),           # '*' is one run of digits, not nothing
    ("10.0.0.*", "10.0.0.7.1", False),
    ("10.0.0.*", "110.0.0.7", False),
    ("10.0.0.*", "10.0.1.7", False),
    ("10.0.0.*", "10a0b0c7", False),           # '.' is a dot, not any character
    ("192.168.*.1", "192.168.33.1", True),
    ("192.168.*.1", "192.168.33.11", False),
    ("10.0.0.1*", "10.0.0.15", True),
    ("10.0.0.1*", "10.0.0.1", False),
    ("10.0.0.0/24", "10.0.0.7", True),
    ("10.0.0.0/24", "10.0.1.7", False),
    ("10.0.0.0/24", "::ffff:10.0.0.7", True),  # an IPv4 peer on an IPv6 socket
    ("10.0.0.7", "::ffff:10.0.0.7", True),
    ("fd00::/64", "fd00::5", True),
    ("fd00::/64", "fd01::5", False),
    ("fd00::/64", "10.0.0.7", False),
    ("10.0.0.0/24", "not an address", False),
])
def test_one_entry(entry, address, admitted):
    assert AllowList([entry]).admits(address) is admitted


def test_no_entry_admits_nobody():
    assert not AllowList([]).admits("127.0.0.1")


def test_any_entry_admits():
    allow = AllowList(["10.0.0.0/24", "192.168.1.*", "172.16.0.9"])
    assert [allow.admits(a) for a in ("10.0.0.3", "192.168.1.40", "172.16.0.9", "172.16.0.90")] == \
        [True, True, True, False]


@pytest.mark.parametrize("entry", ["10.0.0", "10.*", "host.example.org", "10.0.0.0/33", "10.0.0.?",
                                   "10.0.0.[0-9]", "10.0.0.*|.*", ""])
def test_a_bad_entry_is_an_error_naming_it(entry):
    with pytest.raises(MlnError, match="daemon_allow"):
        AllowList([entry])


def test_a_token_file_must_be_private(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret-s3cret-s3cret\n")
    os.chmod(path, 0o644)
    with pytest.raises(MlnError, match="chmod 600"):
        read_token(str(path))
    os.chmod(path, 0o600)
    assert read_token(str(path)) == b"s3cret-s3cret-s3cret"
    path.write_text("short\n")
    with pytest.raises(MlnError, match="fewer than 16"):
        read_token(str(path))


def _config(tmp_path, lines: str) -> Config:
    conf = tmp_path / "mln.conf"
    conf.write_text(f"templates {tmp_path / 'templates'}\n" + lines)
    cfg = Config()
    cfg.read(str(conf))
    return cfg


def test_the_daemon_needs_a_certificate_an_authentication_and_an_allow_list(tmp_path):
    from mln_core.daemon_ca import init_ca, issue
    pki = tmp_path / "pki"
    init_ca(str(pki))
    issue(str(pki), "sh1", addresses=["10.0.0.11"])
    issue(str(pki), "admin", client=True)
    for name in ("ca.key", "sh1.key", "admin.key"):
        assert stat.S_IMODE(os.stat(pki / name).st_mode) == 0o600, name
    with pytest.raises(MlnError, match="exists already"):
        issue(str(pki), "sh1")
    cert = f"daemon_cert {pki / 'sh1.crt'}\ndaemon_key {pki / 'sh1.key'}\n"
    with pytest.raises(MlnError, match="daemon_cert and daemon_key"):
        settings(_config(tmp_path, "daemon_allow 10.0.0.0/24\n"), None, None)
    with pytest.raises(MlnError, match="daemon_ca .* or daemon_token_file"):
        settings(_config(tmp_path, cert + "daemon_allow 10.0.0.0/24\n"), None, None)
    with pytest.raises(MlnError, match="admit nobody"):
        settings(_config(tmp_path, cert + f"daemon_ca {pki / 'ca.crt'}\n"), None, None)
    s = settings(_config(tmp_path, cert + f"daemon_ca {pki / 'ca.crt'}\ndaemon_allow 10.0.0.0/24\n"
                         "daemon_allow 10.1.0.*\n"), None, None)
    assert (s.port, s.listen, s.allow.entries) == (34001, "0.0.0.0", ["10.0.0.0/24", "10.1.0.*"])
    # the certificates verify against the CA: the daemon's for its address, the client's for clients
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    info = ssl._ssl._test_decode_cert(str(pki / "sh1.crt"))
    assert ("IP Address", "10.0.0.11") in info["subjectAltName"] and ("DNS", "sh1") in info["subjectAltName"]
