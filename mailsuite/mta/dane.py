"""DANE for SMTP (RFC 7672): DNSSEC-authenticated look-ups and TLSA matching.

:class:`SecureLookup` asks the configured resolver (``[mail] dns_resolver``, else
``/etc/resolv.conf``) and keeps what twisted.names' ``lookupX`` methods drop: the header of the
answer, whose AD bit says the (trusted, local) validating resolver checked the DNSSEC
signatures, as Postfix's ``smtp_dns_support_level = dnssec`` trusts it. The queries carry the
AD bit themselves (RFC 6840 section 5.7: a validating resolver sets AD in a reply only to a
query that asked with AD or DO). twisted.names has no way to set a query flag, hence the small
protocol subclasses below; and no TLSA record type (it decodes one as ``UnknownRecord``), hence
:func:`parse_tlsa`.

:func:`match_tlsa` is the certificate check of RFC 7672 section 3.1: DANE-EE(3) records match
the server's own certificate or public key, whatever its names and dates (section 3.1.1);
DANE-TA(2) records match a certificate of the chain the server sent, which must then sign the
server's certificate (dates checked) for one of the reference names (section 3.2.2); PKIX-TA(0)
and PKIX-EE(1) are not used for SMTP (section 3.1.3) and are skipped. No kept library does this
(pyOpenSSL has no SSL_dane_* bindings), so it is written here with ``cryptography``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import defer, error
from twisted.names import client, dns

from mailsuite.mta.dns import TemporaryDNSError, parse_resolver

TLSA = 52  # RFC 6698; twisted.names has no constant for it
DANE_TA, DANE_EE = 2, 3
_TIMEOUTS = (1, 3, 11)


# -- look-ups with the AD bit --------------------------------------------------------------------


class _ADDatagram(dns.DNSDatagramProtocol):
    def writeMessage(self, message: dns.Message, address: Any) -> None:
        message.authenticData = 1
        super().writeMessage(message, address)


class _ADStream(dns.DNSProtocol):
    def writeMessage(self, message: dns.Message) -> None:
        message.authenticData = 1
        super().writeMessage(message)


class _ADClientFactory(client.DNSClientFactory):
    def buildProtocol(self, addr: Any) -> _ADStream:
        p = _ADStream(self.controller)
        p.factory = self
        return p


class _ADResolver(client.Resolver):
    """A twisted.names resolver whose queries, over UDP and TCP, ask for the AD bit."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.factory = _ADClientFactory(self, self.timeout)  # type: ignore[assignment]

    def _connectedProtocol(self, interface: str = "") -> _ADDatagram:
        proto = _ADDatagram(self, reactor=self._reactor)
        for attempt in range(100):  # a random source port (as Twisted's), bounded
            try:
                self._reactor.listenUDP(dns.randomSource(), proto, interface=interface)
                return proto
            except error.CannotListenError:
                if attempt == 99:
                    raise
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Answer:
    """The records of one type at a name, and whether the resolver authenticated them."""

    records: tuple[Any, ...]
    secure: bool
    exists: bool = True  # False: NXDOMAIN


class SecureLookup:
    """DNS queries that report the AD bit (see the module doc). ``resolver`` for tests."""

    def __init__(self, dns_resolver: str = "", reactor: Any = None, resolver: Any = None) -> None:
        self._server = parse_resolver(dns_resolver)
        self._reactor = reactor
        self._resolver = resolver

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            if self._server is not None:
                self._resolver = _ADResolver(servers=[self._server], reactor=self._reactor,
                                             timeout=_TIMEOUTS)
            else:
                self._resolver = _ADResolver(resolv="/etc/resolv.conf", reactor=self._reactor)
        return self._resolver

    @defer.inlineCallbacks
    def query(self, name: str, rtype: int) -> Any:
        """Deferred Answer for (name, type); TemporaryDNSError for SERVFAIL, timeouts..."""
        wire = name.rstrip(".").encode("idna") if not name.isascii() else \
            name.rstrip(".").encode()
        try:
            message = yield self.resolver.queryUDP([dns.Query(wire, rtype, dns.IN)])
            if message.trunc:
                message = yield self.resolver.queryTCP(message.queries)
        except defer.CancelledError:
            raise
        except Exception as e:  # timeouts, unreachable server: ask again later
            raise TemporaryDNSError(
                "4.7.5", f"DNS lookup of {name} type={_type_name(rtype)} failed:"
                f" {type(e).__name__}") from None
        secure = bool(message.authenticData)
        if message.rCode == dns.ENAME:
            return Answer((), secure, exists=False)
        if message.rCode != dns.OK:
            raise TemporaryDNSError(
                "4.7.5", f"DNS lookup of {name} type={_type_name(rtype)} failed:"
                f" rcode {message.rCode}")
        records = tuple(a.payload for a in message.answers if a.type == rtype)
        return Answer(records, secure)


def _type_name(rtype: int) -> str:
    return "TLSA" if rtype == TLSA else dns.QUERY_TYPES.get(rtype, str(rtype))


# -- TLSA records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}..."


def parse_tlsa(payload: Any) -> TLSARecord | None:
    """A TLSA record from twisted.names' UnknownRecord (``data``: RFC 6698 wire form)."""
    raw = getattr(payload, "data", b"")
    if len(raw) < 4:
        return None
    return TLSARecord(raw[0], raw[1], raw[2], bytes(raw[3:]))


def tlsa_data(cert: x509.Certificate, selector: int, mtype: int) -> bytes | None:
    """What a TLSA record of (selector, matching type) holds for ``cert``; None if unknown."""
    if selector == 0:
        content = cert.public_bytes(serialization.Encoding.DER)
    elif selector == 1:
        content = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        return None
    if mtype == 0:
        return content
    if mtype == 1:
        return hashlib.sha256(content).digest()
    if mtype == 2:
        return hashlib.sha512(content).digest()
    return None


def usable(records: list[TLSARecord]) -> list[TLSARecord]:
    """The records SMTP uses: DANE-TA and DANE-EE with a known selector and matching type
    (RFC 7672 section 3.1.3; RFC 6698 section 4.1: unknown parameters are unusable)."""
    return [r for r in records
            if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1) and r.mtype in (0, 1, 2)]


@dataclass(frozen=True)
class DaneResult:
    matched: bool
    detail: str  # what matched, or why nothing did (for the log)


def match_tlsa(chain: list[x509.Certificate], records: list[TLSARecord],
               names: list[str]) -> DaneResult:
    """Whether the server's ``chain`` (its certificate first) satisfies one of ``records``;
    ``names`` are the reference identifiers a DANE-TA match must carry."""
    if not chain:
        return DaneResult(False, "no server certificate")
    leaf = chain[0]
    for r in records:
        if r.usage == DANE_EE and tlsa_data(leaf, r.selector, r.mtype) == r.data:
            return DaneResult(True, f"DANE-EE TLSA {r} matched the server certificate")
    why = "no TLSA record matched the certificate chain"
    for r in records:
        if r.usage != DANE_TA:
            continue
        for depth, cert in enumerate(chain):
            if tlsa_data(cert, r.selector, r.mtype) != r.data:
                continue
            problem = _signed_by(leaf, chain[1:], cert, names)
            if problem is None:
                return DaneResult(True, f"DANE-TA TLSA {r} matched the certificate at depth"
                                        f" {depth}")
            why = f"DANE-TA TLSA {r} matched at depth {depth}, but {problem}"
    return DaneResult(False, why)


def _signed_by(leaf: x509.Certificate, intermediates: list[x509.Certificate],
               anchor: x509.Certificate, names: list[str]) -> str | None:
    """None when ``leaf`` chains to ``anchor`` (a trust anchor, self-signed or not: OpenSSL's
    partial-chain mode) with valid dates and carries one of ``names``; else why not."""
    if leaf == anchor:
        problem = None
    else:
        store = crypto.X509Store()
        store.add_cert(crypto.X509.from_cryptography(anchor))
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        ctx = crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(c) for c in intermediates])
        try:
            ctx.verify_certificate()
            problem = None
        except crypto.X509StoreContextError as e:
            problem = f"the chain does not verify: {e}"
    if problem is None and not name_matches(leaf, names):
        problem = f"the certificate names none of {', '.join(names)}"
    return problem


def name_matches(cert: x509.Certificate, patterns: list[str]) -> bool:
    """Whether ``cert`` carries a name of ``patterns``: an exact name (RFC 6125 rules, with
    wildcards, through service_identity) or ``.domain`` = any name below it, as Postfix."""
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import extract_patterns, verify_certificate_hostname

    for pattern in patterns:
        if pattern.startswith("."):
            try:
                found = extract_patterns(cert)
            except CertificateError:
                return False
            for p in found:
                raw = getattr(p, "pattern", b"")
                text = raw.decode("ascii", "replace").lower() if isinstance(raw, bytes) else ""
                if text.startswith("*."):  # a wildcard stands for names below its base
                    text = text[1:]
                if text.endswith(pattern) or text == pattern:
                    return True
            continue
        try:
            verify_certificate_hostname(cert, pattern)
            return True
        except (VerificationError, CertificateError):
            continue
    return False



# -- what DANE says for one MX host --------------------------------------------------------------


@dataclass(frozen=True)
class HostDane:
    """What DANE says for one MX host: ``applies`` False means plain opportunistic TLS
    (insecure DNS or no TLSA records); ``records`` empty while ``applies``: TLSA records exist
    but none is usable, so TLS is mandatory without authentication (RFC 7672 section 2.2)."""

    applies: bool
    records: tuple[TLSARecord, ...] = ()


@defer.inlineCallbacks
def host_tlsa(lookup: SecureLookup, host: str, port: int) -> Any:
    """HostDane for ``host`` (``_PORT._tcp.HOST``): DANE applies when its address records and
    its TLSA records are DNSSEC-authenticated. TemporaryDNSError when a look-up fails
    (SERVFAIL on a signed zone: the mail is deferred, RFC 7672 section 2.2.1)."""
    address = yield lookup.query(host, dns.A)
    if not address.secure:
        return HostDane(False)
    answer = yield lookup.query(f"_{port}._tcp.{host}", TLSA)
    records = [r for r in (parse_tlsa(p) for p in answer.records) if r is not None]
    if not answer.secure or not records:
        return HostDane(False)
    return HostDane(True, tuple(usable(records)))
