"""The keys a federation needs, made with ``cryptography`` (no openssl or
ssh-keygen on the way), every private key written 0600 (``state.write_private``).

- The coordinator's TLS: a CA of the federation's own and a server
  certificate for the names sites connect to. Sites get the CA's
  certificate (public) from the coordinator's admin, out of band, and trust
  nothing else.
- A site's node key: ECDSA on SECP384R1, the curve Flower's node
  authentication uses; its public half (OpenSSH format) is what the
  coordinator's admin registers for the site.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from ...state import write_private

DAYS = 825  # the longest server certificate browsers and most clients accept


def _private_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(folder: Path, name: str = "imaginghub federation CA") -> tuple[Path, Path]:
    """A new CA in ``folder`` (``ca.crt``, ``ca.key`` 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True)
            .sign(key, hashes.SHA384()))
    folder.mkdir(parents=True, exist_ok=True)
    from cryptography.hazmat.primitives import serialization

    write_private(folder / "ca.key", _private_pem(key).decode())
    (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / "ca.crt", folder / "ca.key"


def make_server_cert(folder: Path, names: list[str], *, stem: str = "server") -> tuple[Path, Path]:
    """A server certificate for ``names`` (host names or IP addresses),
    signed by the CA in ``folder``: ``STEM.crt``, ``STEM.key`` (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    alt = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    write_private(folder / f"{stem}.key", _private_pem(key).decode())
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def make_node_key(folder: Path, stem: str = "node") -> tuple[Path, Path]:
    """A site's node key: ``STEM.key`` (OpenSSH, as Flower reads it; 0600) and ``STEM.pub``
    (OpenSSH), the half the coordinator's admin registers."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / f"{stem}.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    (folder / f"{stem}.pub").write_bytes(pub + b"\n")
    return folder / f"{stem}.key", folder / f"{stem}.pub"
