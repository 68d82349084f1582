"""Certificates from a throw-away CA, and a fake ACME issuer, for the ACME tests."""

from __future__ import annotations

import datetime
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailsuite.acme import client

EPOCH = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str = "Test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(secrets.randbits(63) + 1)
            .not_valid_before(EPOCH - datetime.timedelta(days=30))
            .not_valid_after(EPOCH + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def ca_signed(names: list[str], days: float = 90, start: datetime.datetime = EPOCH,
              ip: str = "") -> tuple[bytes, bytes, bytes]:
    """(full chain PEM, key PEM, CA PEM) of a leaf for ``names`` valid ``days`` from ``start``,
    signed by a new CA (``ip``: an IP address SAN too)."""
    import ipaddress
    ca, ca_key = make_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    if ip:
        alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(secrets.randbits(63) + 1)
            .not_valid_before(start - datetime.timedelta(hours=1))
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    return cert.public_bytes(serialization.Encoding.PEM) + ca_pem, _pem_key(key), ca_pem


class FakeIssuer:
    """``issue`` for AcmeService: a certificate for the names valid ``days`` from ``now()``,
    or the exception in ``fail`` (then cleared); keeps the settings of every call."""

    def __init__(self, now, days: float = 90) -> None:
        self.now, self.days = now, days
        self.calls: list[client.Settings] = []
        self.fail: Exception | None = None

    def __call__(self, settings: client.Settings, tokens) -> client.Issued:
        self.calls.append(settings)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        chain, key, _ = ca_signed(list(settings.names), self.days, self.now())
        return client.Issued(chain, key)
