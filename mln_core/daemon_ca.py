"""``mln daemon_ca``: a site CA for the MLN daemon, and the certificates it signs.

``init DIR`` writes ``DIR/ca.crt`` and ``DIR/ca.key``; ``issue DIR NAME`` writes
``DIR/NAME.crt`` and ``DIR/NAME.key``: a server certificate (for the daemon; valid for
NAME and every ``--address``) or, with ``--client``, a client certificate (for the machine
the user types on). Keys are EC P-256, written with mode 0600. Uses the ``cryptography``
package (which paramiko, and so mln's ssh transport, needs already).
"""
from __future__ import annotations

import datetime
import ipaddress
import os

from .errors import MlnError
from .names import check_name


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise MlnError("mln daemon_ca needs the Python package 'cryptography' (pip install cryptography)") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: str, data: bytes, mode: int, force: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise MlnError(f"{path} exists already (not overwritten)") from None
    except OSError as e:
        raise MlnError(f"cannot write {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def _key_pem(key) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def init_ca(directory: str, days: int = 3650, name: str = "mln site CA") -> list[str]:
    """A new CA in ``directory``: ``ca.crt`` and ``ca.key`` (0600). Returns the paths."""
    x509, hashes, serialization, ec, _, NameOID = _crypto()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    paths = [os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")]
    _write(paths[0], _key_pem(key), 0o600)
    _write(paths[1], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def issue(directory: str, name: str, client: bool = False, addresses=(), days: int = 825) -> list[str]:
    """A certificate signed by the CA in ``directory``: ``NAME.crt`` and ``NAME.key`` (0600).
    A server certificate names NAME and ``addresses`` (DNS names or IP addresses); a client
    certificate (``client``) is good for client authentication only."""
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    check_name("template", name, "certificate name")          # one file name: no '/', no leading '.'
    try:
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(directory, "ca.crt"), "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        raise MlnError(f"no CA in {directory} ({e}); make one with: mln daemon_ca init {directory}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for a in dict.fromkeys([name, *addresses]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            names.append(x509.DNSName(a))
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5))
               .not_valid_after(_now() + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=True,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([EKU.CLIENT_AUTH if client else EKU.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if not client:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = [os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.crt")]
    _write(paths[0], _key_pem(key), 0o600)
    _write(paths[1], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths
