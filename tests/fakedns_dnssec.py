"""A DNS server on loopback that plays a validating resolver (the AD bit) for DANE tests, and
the TLS pieces of a little Internet: certificates made at test time with ``cryptography`` (a
CA, leaves good, expired, for the wrong name, self-signed) and receiving SMTP servers that
answer STARTTLS with one of them (tests/fakemx.py's sinks otherwise).

``start_dnssec(records, insecure=..., servfail=...)``: replies carry AD (authenticated) for
every name except those in ``insecure``, and only to a query that asked for it (RFC 6840
section 5.7); names in ``servfail`` answer SERVFAIL. TLSA records are ``tlsa(usage, selector,
mtype, cert)`` (twisted.names has no TLSA type: an UnknownRecord of type 52).
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import defer, reactor, ssl
from twisted.names import dns, server

from tests import fakemx

TLSA = 52


class Servfail(Exception):
    """The zone's servers fail for this name (SERVFAIL)."""


class DNSSECZone(fakemx.ZoneResolver):
    def __init__(self, records: dict[tuple[str, int], list[Any]], servfail: set[str]) -> None:
        super().__init__(records)
        self.servfail = servfail

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        if name.decode().lower().rstrip(".") in self.servfail:
            self.queries.append((name.decode().lower(), type))
            return defer.fail(Servfail(name))
        return super()._lookup(name, cls, type, timeout)


class DNSSECFactory(server.DNSServerFactory):
    """Sets AD on answers for secure names when the query asked (and records that it did)."""

    def __init__(self, zone: DNSSECZone, insecure: set[str]) -> None:
        super().__init__(authorities=[zone])
        self.insecure = insecure
        self.asked: list[tuple[str, int, bool]] = []  # (name, type, asked for AD)

    def _responseFromMessage(self, message: Any, rCode: int = dns.OK, answers: Any = None,
                             authority: Any = None, additional: Any = None) -> Any:
        response = super()._responseFromMessage(message, rCode, answers, authority, additional)
        name = message.queries[0].name.name.decode().lower().rstrip(".") \
            if message.queries else ""
        if message.queries:
            self.asked.append((name, message.queries[0].type, bool(message.authenticData)))
        response.authenticData = int(bool(message.authenticData) and name not in self.insecure
                                     and rCode != dns.ESERVER)
        return response

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(Servfail):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


def start_dnssec(records: dict[tuple[str, int], list[Any]], insecure: set[str] | None = None,
                 servfail: set[str] | None = None) -> tuple[int, DNSSECFactory, list[Any]]:
    """(port, factory, listening ports) of the AD-setting DNS server on 127.0.0.1."""
    zone = DNSSECZone(records, servfail or set())
    factory = DNSSECFactory(zone, insecure or set())
    port, _, ports = fakemx.start_dns({})  # its ports (UDP and TCP), answering from ours:
    udp, tcp = ports
    udp.protocol.controller = factory
    tcp.factory = factory
    return port, factory, ports


# -- certificates --------------------------------------------------------------------------------


@dataclass
class Cert:
    cert: x509.Certificate
    key: Any
    chain: list[x509.Certificate] = field(default_factory=list)  # intermediates sent too

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server_options(self) -> ssl.CertificateOptions:
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.cert),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn: str, names: list[str], issuer: Cert | None = None, ca: bool = False,
              days: tuple[int, int] = (-1, 30)) -> Cert:
    """A certificate for ``names`` (subjectAltName) signed by ``issuer`` (None: self-signed),
    valid from now+days[0] to now+days[1] days; ``ca`` makes it a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) + 1)
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    return Cert(cert, key)


def tlsa(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> dns.UnknownRecord:
    """The TLSA record (RFC 6698 wire form) of ``cert``; mtype 1 = SHA-256, 2 = SHA-512."""
    if selector == 0:
        content = cert.public_bytes(serialization.Encoding.DER)
    else:
        content = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = {0: content, 1: hashlib.sha256(content).digest(),
            2: hashlib.sha512(content).digest()}[mtype]
    return dns.UnknownRecord(bytes([usage, selector, mtype]) + data)


# -- SMTP servers with a certificate of their own --------------------------------------------


class TLSSinkProtocol(fakemx.SinkProtocol):
    """fakemx's sink, STARTTLS with its factory's certificate; ``garbage`` answers the
    handshake with bytes that are not TLS (a broken TLS stack)."""

    def lineReceived(self, line: bytes) -> None:
        factory: TLSSinkFactory = self.factory  # type: ignore[assignment]
        if self.lines is None and line.upper() == b"STARTTLS" and not self.tls:
            self.sendLine(b"220 2.0.0 Ready to start TLS")
            if factory.garbage:
                self.transport.write(b"this is not TLS\r\n" * 8)
                self.transport.loseConnection()
                return
            self.transport.startTLS(factory.cert.server_options())
            self.tls = True
            return
        super().lineReceived(line)


class TLSSinkFactory(fakemx.SinkFactory):
    protocol = TLSSinkProtocol

    def __init__(self, behaviour: fakemx.Behaviour, cert: Cert | None,
                 garbage: bool = False) -> None:
        super().__init__(behaviour)
        self.cert = cert
        self.garbage = garbage


def start_tls_sinks(peers: dict[str, TLSSinkFactory], port: int) -> list[Any]:
    return [reactor.listenTCP(port, f, interface=address) for address, f in peers.items()]
