"""MTA-STS discovery over the network (RFC 8461 3.1, 3.3): the ``_mta-sts`` TXT look-up and the
HTTPS GET of ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``.

Both go through the configured resolver (``[mail] dns_resolver``, mailsuite.mta.dns.MXResolver):
the TXT record with its ``lookupText``, and the web server's name with its ``addresses`` — the
HTTP client (twisted.web.client.Agent) is given an endpoint factory that connects to the
addresses our resolver found, never getaddrinfo. The fetch follows 3.3:

- the certificate must chain to a trusted CA (the system's, plus ``smtp_tls_CAfile`` when set)
  and name ``mta-sts.DOMAIN`` (service_identity, through Twisted's optionsForClientTLS);
- only a ``200`` counts: a redirect (3xx) is not followed, any other status is a failure;
- the media type must be ``text/plain``; the body is at most 64 KB (MAX_POLICY_SIZE); the
  whole fetch has a time limit (FETCH_TIMEOUT); no HTTP cache is used (none exists here).

A failure is :class:`FetchError`, whose ``result_type`` is TLS-RPT's (RFC 8460 4.3):
``sts-webpki-invalid`` for a certificate problem, ``sts-policy-invalid`` for a bad policy,
``sts-policy-fetch-error`` for the rest.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot  # not exported by twisted.internet.ssl
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client, http_headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailsuite.mta.dns import MXResolver
from mailsuite.mta.dnsquery import DNSQuery, TemporaryDNSError
from mailsuite.mta.mtasts import MAX_POLICY_SIZE, PolicyError, StsPolicy, StsRecord, parse_policy
from mailsuite.mta.mtasts import parse_txt as parse_sts_txt

log = Logger()

#: the whole HTTPS fetch (connect, TLS, request, body) must end within this many seconds
FETCH_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: seconds a TXT look-up (_mta-sts, _smtp._tls) may take, retries included
TXT_TIMEOUT = 10.0
#: addresses of mta-sts.DOMAIN tried at most
ADDRESS_LIMIT = 4
WELL_KNOWN = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """No policy could be fetched: ``result_type`` (TLS-RPT's name) and a text for the log."""

    def __init__(self, result_type: str, text: str) -> None:
        super().__init__(text)
        self.result_type = result_type
        self.text = text


class TxtLookupError(Exception):
    """The TXT look-up failed for a reason that may pass (timeout, SERVFAIL)."""


@implementer(IOpenSSLTrustRoot)
class CATrust:
    """The CAs a policy server's certificate must chain to: the system's (OpenSSL's default
    paths), plus the PEM file ``cafile`` when given (``smtp_tls_CAfile``: a private CA)."""

    def __init__(self, cafile: str = "", system: bool = True) -> None:
        self.cafile = cafile
        self.system = system

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        if self.system:
            context.set_default_verify_paths()
        if self.cafile:
            context.load_verify_locations(self.cafile.encode())


@defer.inlineCallbacks
def lookup_txt(names: MXResolver, name: str) -> Any:
    """The TXT records of ``name`` (each one's strings joined, as a one-string list); [] when
    the name or the type does not exist; TxtLookupError when the answer may come later.
    Asked as the inbound checks ask (dnsquery: a time limit, CNAMEs followed)."""
    try:
        records = yield DNSQuery(names.resolver, names.reactor).txt(name, TXT_TIMEOUT)
    except TemporaryDNSError as e:
        raise TxtLookupError(f"TXT look-up of {name} failed: {e}") from None
    return [[record] for record in records]


@defer.inlineCallbacks
def sts_record(names: MXResolver, domain: str) -> Any:
    """The ``_mta-sts.DOMAIN`` record (StsRecord) or None; TxtLookupError on a DNS failure."""
    records = yield lookup_txt(names, f"_mta-sts.{domain}")
    result: StsRecord | None = parse_sts_txt(records)
    return result


@implementer(IStreamClientEndpoint)
class ResolvedTLSEndpoint:
    """TLS to ``host``:``port`` at the addresses ``names`` (our resolver) gives for it, tried in
    order; the certificate is checked against ``host`` and ``trust``."""

    def __init__(self, reactor: Any, names: MXResolver, host: str, port: int,
                 trust: IOpenSSLTrustRoot) -> None:
        self.reactor = reactor
        self.names = names
        self.host = host
        self.port = port
        self.trust = trust

    @defer.inlineCallbacks
    def connect(self, factory: IProtocolFactory) -> Any:
        try:
            addresses = yield self.names.addresses(self.host)
        except Exception as e:  # a DNS failure is a failed fetch
            raise FetchError("sts-policy-fetch-error",
                             f"no address for {self.host}: {type(e).__name__}") from None
        if not addresses:
            raise FetchError("sts-policy-fetch-error", f"{self.host} has no address")
        options = ssl.optionsForClientTLS(self.host, trustRoot=self.trust)
        last: BaseException | None = None
        for ip in addresses[:ADDRESS_LIMIT]:
            kind = endpoints.TCP6ClientEndpoint if ":" in ip else endpoints.TCP4ClientEndpoint
            tcp = kind(self.reactor, ip, self.port, timeout=CONNECT_TIMEOUT)
            try:
                return (yield endpoints.wrapClientTLS(options, tcp).connect(factory))
            except defer.CancelledError:
                raise
            except Exception as e:  # the next address
                last = e
        raise FetchError("sts-policy-fetch-error", f"cannot connect to {self.host}: {last}")


@implementer(IAgentEndpointFactory)
class ResolvedEndpoints:
    """Agent endpoints through our resolver (https only: a policy is never fetched in clear)."""

    def __init__(self, reactor: Any, names: MXResolver, trust: IOpenSSLTrustRoot,
                 port: int = 443) -> None:
        self.reactor = reactor
        self.names = names
        self.trust = trust
        self.port = port

    def endpointForURI(self, uri: Any) -> ResolvedTLSEndpoint:
        if uri.scheme != b"https":
            raise ValueError("MTA-STS policies are fetched over https only")
        host = uri.host.decode("ascii")
        return ResolvedTLSEndpoint(self.reactor, self.names, host, self.port, self.trust)


class _LimitedBody(protocol.Protocol):
    """Collects a response body of at most ``limit`` bytes; more aborts the connection."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.finished.called:
                self.finished.errback(FetchError(
                    "sts-policy-invalid", f"the policy is larger than {self.limit} bytes"))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(client.ResponseDone):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(FetchError(
                "sts-policy-fetch-error", f"the policy download was cut: {reason.value}"))


class PolicyFetcher:
    """``fetch(domain) -> Deferred[StsPolicy]`` (errback FetchError) over HTTPS."""

    def __init__(self, reactor: Any, names: MXResolver, cafile: str = "", port: int = 443,
                 system_ca: bool = True, timeout: float = FETCH_TIMEOUT) -> None:
        self.reactor = reactor
        self.timeout = timeout
        trust = CATrust(cafile, system_ca)
        pool = client.HTTPConnectionPool(reactor, persistent=False)
        self.agent = client.Agent.usingEndpointFactory(
            reactor, ResolvedEndpoints(reactor, names, trust, port), pool=pool)

    def fetch(self, domain: str) -> defer.Deferred[StsPolicy]:
        d = self._fetch(domain)
        expired: list[bool] = []  # cancelled by the time limit (the Agent's errors hide it)

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if expired and isinstance(result, Failure):
                return Failure(FetchError("sts-policy-fetch-error",
                                          f"fetching the policy of {domain} timed out"))
            return result

        d.addBoth(done)
        return d.addErrback(self._explain, domain)

    @defer.inlineCallbacks
    def _fetch(self, domain: str) -> Any:
        url = f"https://mta-sts.{domain}{WELL_KNOWN}".encode("ascii")
        headers = http_headers.Headers({b"User-Agent": [b"mailsuite MTA-STS"]})
        response = yield self.agent.request(b"GET", url, headers)
        if response.code != 200:
            response.deliverBody(_Discard())
            what = "a redirect (not followed, RFC 8461 3.3)" if 300 <= response.code < 400 else (
                "not 200")
            raise FetchError("sts-policy-fetch-error", f"HTTP status {response.code}: {what}")
        media = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if media.split(b";")[0].strip().lower() != b"text/plain":
            response.deliverBody(_Discard())
            raise FetchError("sts-policy-invalid",
                             f"Content-Type {media.decode('latin-1')!r} is not text/plain")
        if response.length is not client.UNKNOWN_LENGTH and response.length > MAX_POLICY_SIZE:
            response.deliverBody(_Discard())
            raise FetchError("sts-policy-invalid",
                             f"the policy is larger than {MAX_POLICY_SIZE} bytes")
        finished: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_LimitedBody(finished, MAX_POLICY_SIZE))
        body = yield finished
        try:
            return parse_policy(body, domain)
        except PolicyError as e:
            raise FetchError("sts-policy-invalid", f"invalid policy: {e}") from None

    @staticmethod
    def _explain(failure: Failure, domain: str) -> Failure:
        """Any failure as a FetchError naming what went wrong."""
        if failure.check(FetchError, defer.CancelledError):
            return failure
        reason = failure.value
        if failure.check(client.ResponseNeverReceived, client.RequestTransmissionFailed):
            reasons = getattr(reason, "reasons", [])
            for inner in reasons:
                if inner.check(SSL.Error, VerificationError):
                    return Failure(FetchError(
                        "sts-webpki-invalid", f"mta-sts.{domain}: certificate not valid: "
                        f"{_ssl_reason(inner.value)}"))
                if inner.check(FetchError):
                    return inner  # type: ignore[no-any-return]
            reason = reasons[0].value if reasons else reason
        if failure.check(SSL.Error, VerificationError):
            return Failure(FetchError("sts-webpki-invalid",
                                      f"mta-sts.{domain}: certificate not valid: "
                                      f"{_ssl_reason(reason)}"))
        return Failure(FetchError("sts-policy-fetch-error",
                                  f"fetching the policy of {domain} failed: {reason}"))


def _ssl_reason(e: BaseException) -> str:
    try:
        return "; ".join(str(part[2]) for part in e.args[0])
    except (IndexError, TypeError):
        return str(e)


class _Discard(protocol.Protocol):
    """Drops a body that is not read (a refused response): the connection is closed."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]
