"""Outbound TLS policy, Postfix's ``smtp_tls_security_level`` and ``smtp_tls_policy_maps``.

One place decides how much TLS a destination gets: :meth:`TLSPolicy.destination` gives the
:class:`Policy` of a next hop (the ``smtp_tls_policy_maps`` entry, else the global level), and
:meth:`TLSPolicy.host` turns it into the :class:`HostTLS` of one MX host (DANE's TLSA records
looked up there). MTA-STS and TLS-RPT are joined to these by mailsuite.mta.stsroute (which
MX hosts, ``secure`` with the MX name under enforce; ``HostTLS.observe`` tells it each
session's TLS result).

The levels, with Postfix's meanings (TLS_README "Client-side TLS"):

- ``none``: no STARTTLS. ``may``: STARTTLS when offered, no certificate check; a failed handshake
  is retried in plaintext. ``encrypt``: TLS required, any certificate.
- ``verify``: TLS with a certificate trusted by the system CA store or ``smtp_tls_CAfile``, for
  a name of ``smtp_tls_verify_cert_match`` (default ``hostname``: the MX host from DNS).
- ``secure``: the same with ``smtp_tls_secure_cert_match`` (default ``nexthop, dot-nexthop``:
  the next-hop domain or a subdomain of it, not the insecure MX name).
- ``dane``: RFC 7672 when the MX and TLSA records are DNSSEC-authenticated (mailsuite.mta.dane),
  else ``may``; TLSA records present but none usable: ``encrypt``. ``dane-only``: DANE or defer.

With a mandatory level a peer without STARTTLS or with a certificate that fails is a temporary
failure of that host (4.7.4 / 4.7.5, as Postfix's "Server certificate not trusted" and "not
verified"); the next MX is tried. Each TLS session is logged as Postfix's smtp(8) does:
``Untrusted|Trusted|Verified TLS connection established to HOST[IP]:PORT: TLSv1.3 with cipher
NAME (256/256 bits)``.

The certificate is checked after the handshake (the handshake itself never fails on it, so
``may`` and ``encrypt`` deliver whatever it is): the chain with pyOpenSSL's X509Store, the names
with service_identity (RFC 6125), DANE with mailsuite.mta.dane.
"""

from __future__ import annotations

import ipaddress
import os
import ssl as stdlib_ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import defer, interfaces
from zope.interface import implementer

from mailsuite.config import ConfigError
from mailsuite.mta import dane
from mailsuite.mta.dane import name_matches
from mailsuite.mta.dns import TemporaryDNSError
from mailsuite.startup import StartupError, describe_os_error, unreadable_by

LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "verify", "secure")
MANDATORY = ("encrypt", "dane-only", "verify", "secure")
#: Postfix's tls_high_cipherlist / tls_medium_cipherlist, as far as OpenSSL 3 still has them
CIPHER_GRADES = {"high": "HIGH:!aNULL:!eNULL", "medium": "DEFAULT:!aNULL:!eNULL"}
_ATTRIBUTES = ("match", "ciphers")


@dataclass(frozen=True)
class Policy:
    """The TLS policy of one destination. ``match``: Postfix match strategies (``hostname``,
    ``nexthop``, ``dot-nexthop``) or names (``mx.example.com``; ``.example.com`` = any
    subdomain); empty = the level's default. ``source`` names where it came from (logs)."""

    level: str
    match: tuple[str, ...] = ()
    ciphers: str = ""
    source: str = "smtp_tls_security_level"


# -- smtp_tls_policy_maps ------------------------------------------------------------------------


def parse_match(text: str, separators: str = ", \t") -> tuple[str, ...]:
    words = [text]
    for sep in separators:
        words = [part for word in words for part in word.split(sep)]
    return tuple(w.lower() for w in words if w)


def parse_policy_line(value: str) -> Policy:
    """``secure match=.example.com:example.com ciphers=high`` -> Policy; ValueError if bad."""
    words = value.split()
    level = words[0].lower()
    if level not in LEVELS:
        raise ValueError(f"unknown TLS security level {words[0]!r} (not one of"
                         f" {', '.join(LEVELS)})")
    attrs: dict[str, str] = {}
    for word in words[1:]:
        name, sep, arg = word.partition("=")
        if not sep or name.lower() not in _ATTRIBUTES:
            raise ValueError(f"unsupported attribute {word!r} (mailsuite knows"
                             f" {', '.join(a + '=' for a in _ATTRIBUTES)})")
        attrs[name.lower()] = arg
    match = parse_match(attrs.get("match", ""), ":")
    if match and level not in ("verify", "secure"):
        raise ValueError(f"match= applies to the verify and secure levels, not {level}")
    if "match" in attrs and not match:
        raise ValueError("match= names nothing")
    ciphers = attrs.get("ciphers", "").lower()
    if ciphers and ciphers not in CIPHER_GRADES:
        raise ValueError(f"ciphers={ciphers} is not one of {', '.join(CIPHER_GRADES)}")
    return Policy(level, match, ciphers, "smtp_tls_policy_maps")


def parse_policy_table(text: str, path: str) -> dict[str, Policy]:
    """A policy table (``destination  level [attr=value ...]``, ``#`` comments, a line that
    starts with white space continues the previous one) -> {key: Policy}; ValueError naming
    every bad ``file:line``."""
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
        else:
            entries.append((number, line.strip()))
    table: dict[str, Policy] = {}
    errors = []
    for number, line in entries:
        key, _, value = line.replace("\t", " ").partition(" ")
        try:
            if not value.strip():
                raise ValueError(f"no security level for {key!r}")
            policy = parse_policy_line(value)
            table[key.lower()] = replace(policy, source=f"smtp_tls_policy_maps {path}:{number}")
        except ValueError as e:
            errors.append(f"{path}:{number}: {e}")
    if errors:
        raise ValueError("; ".join(errors))
    return table


def read_policy_table(path: str) -> dict[str, Policy]:
    """The table at ``path`` (read at start: blocking); OSError or ValueError naming file:line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text") from None
    return parse_policy_table(text, path)


def table_keys(hop: str) -> list[str]:
    """The keys Postfix looks up for a next hop: itself verbatim (``[host]:port`` too), then
    for a domain its parent domains as ``.parent`` (``a.b.example`` -> ``.b.example``,
    ``.example``)."""
    hop = hop.lower().rstrip(".")
    keys = [hop]
    if hop.startswith("["):
        return keys
    labels = hop.split(".")
    keys.extend("." + ".".join(labels[i:]) for i in range(1, len(labels)))
    return keys


def nexthop_domain(hop: str) -> str:
    """``[mail.example.net]:587`` -> ``mail.example.net``; ``example.com`` -> itself."""
    host = hop.lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif ":" in host:
        host = host.partition(":")[0]
    return host.rstrip(".")


# -- the certificate check -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the certificate check found: ``trust`` Untrusted | Trusted (chain) | Verified
    (chain and name, or a DANE match); ``ok`` whether the level accepts it; ``problem``."""

    trust: str
    ok: bool
    problem: str = ""
    failure: str = ""  # the delivery status text when not ok
    result: str = ""  # what a verifying level would call it: RFC 8460's result type, '' = good


def trust_store(cafile: str = "") -> crypto.X509Store:
    """The system CA store (Debian's bundle; OpenSSL's default paths) plus ``cafile``.
    Blocking (reads files): at start."""
    store = crypto.X509Store()
    paths = stdlib_ssl.get_default_verify_paths()
    system = paths.cafile or paths.openssl_cafile
    if system and os.path.exists(system):
        store.load_locations(system)
    elif paths.capath and os.path.isdir(paths.capath):
        store.load_locations(None, paths.capath)
    if cafile:
        store.load_locations(cafile)
    return store


def chain_problem(store: crypto.X509Store, chain: list[x509.Certificate]) -> str | None:
    """None when the server's ``chain`` (leaf first) verifies to a trusted CA, else why not
    (OpenSSL's words: "certificate has expired", "self-signed certificate", ...)."""
    ctx = crypto.X509StoreContext(store, crypto.X509.from_cryptography(chain[0]),
                                  [crypto.X509.from_cryptography(c) for c in chain[1:]])
    try:
        ctx.verify_certificate()
    except crypto.X509StoreContextError as e:
        return str(e)
    return None


@implementer(interfaces.IOpenSSLClientConnectionCreator)
class ClientConnection:
    """One client TLS connection (SNI = the MX host); keeps it for the check after the
    handshake."""

    def __init__(self, context: SSL.Context, server_name: str) -> None:
        self.context = context
        self.server_name = server_name
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        try:
            ipaddress.ip_address(self.server_name)
        except ValueError:
            if self.server_name:
                conn.set_tlsext_host_name(self.server_name.encode("idna"))
        conn.set_connect_state()
        self.connection = conn
        return conn


def client_context(ciphers: str = "") -> SSL.Context:
    """The client context: no verification in the handshake (done after it, see the module
    doc), no compression; ``ciphers`` a grade of CIPHER_GRADES."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    if ciphers:
        ctx.set_cipher_list(CIPHER_GRADES[ciphers].encode("ascii"))
    return ctx


# -- one MX host ---------------------------------------------------------------------------------


@dataclass
class HostTLS:
    """The TLS of one connection: the effective level, the names a certificate must carry,
    DANE's TLSA records; ``check`` judges the server after the handshake."""

    level: str
    names: list[str]
    store: crypto.X509Store | None = None
    tlsa: tuple[dane.TLSARecord, ...] | None = None  # None: not DANE
    ciphers: str = ""
    source: str = "smtp_tls_security_level"
    sasl_verified_only: bool = True
    log: Callable[[str], None] = field(default=lambda text: None)
    contexts: dict[str, SSL.Context] = field(default_factory=dict)
    #: told each TLS step's result (TLS-RPT, mailsuite.mta.stsroute): (RFC 8460 result type
    #: or '' once the handshake is done, the server's chain, relay)
    observe: Callable[[str, list[x509.Certificate], str], None] | None = None

    @property
    def mandatory(self) -> bool:
        return self.level in MANDATORY or self.tlsa is not None

    def connection(self, server_name: str) -> ClientConnection:
        if self.ciphers not in self.contexts:
            self.contexts[self.ciphers] = client_context(self.ciphers)
        return ClientConnection(self.contexts[self.ciphers], server_name)

    def plaintext(self) -> HostTLS:
        """The same host without TLS (``may`` after a failed handshake)."""
        return replace(self, level="none", tlsa=None)

    def check(self, conn: SSL.Connection, relay: str) -> Verdict:
        """Judge the server of ``conn`` (after the handshake), log it, say if the level
        accepts it."""
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        verdict = self.judge(list(chain))
        cipher = (f"{conn.get_protocol_version_name()} with cipher {conn.get_cipher_name()}"
                  f" ({conn.get_cipher_bits()}/{conn.get_cipher_bits()} bits)")
        if verdict.problem and (self.level in ("verify", "secure") or self.tlsa is not None):
            self.log(f"certificate verification failed for {relay}: {verdict.problem}")
        self.log(f"{verdict.trust} TLS connection established to {relay}: {cipher}")
        return verdict

    def judge(self, chain: list[x509.Certificate]) -> Verdict:
        """The Verdict on a server's ``chain`` (leaf first) at this level, no logging."""
        if not chain:
            return Verdict("Anonymous", not self.mandatory or self.level == "encrypt",
                           "no server certificate", "Server certificate not trusted",
                           "certificate-not-trusted")
        if self.tlsa is not None and self.tlsa:
            result = dane.match_tlsa(chain, list(self.tlsa), self.names)
            if result.matched:
                return Verdict("Verified", True)
            return Verdict("Untrusted", False, result.detail, "Server certificate not trusted",
                           "tlsa-invalid")
        problem = chain_problem(self.store, chain) if self.store is not None else "no CA store"
        if problem is not None:
            ok = self.level not in ("verify", "secure")
            kind = "certificate-expired" if "expired" in problem else "certificate-not-trusted"
            return Verdict("Untrusted", ok, problem, "Server certificate not trusted", kind)
        if not name_matches(chain[0], self.names):
            ok = self.level not in ("verify", "secure")
            return Verdict("Trusted", ok, f"the certificate names none of"
                           f" {', '.join(self.names)}", "Server certificate not verified",
                           "certificate-host-mismatch")
        return Verdict("Verified", True)


# -- the session's STARTTLS ----------------------------------------------------------------------


class TLSRefused(Exception):
    """This host cannot have the mail at this level (mailsuite.mta.relay tries the next)."""

    def __init__(self, code: int, dsn: str, text: str, plaintext_retry: bool = False) -> None:
        super().__init__(text)
        self.code, self.dsn, self.text = code, dsn, text
        self.plaintext_retry = plaintext_retry  # the handshake failed at level may


@defer.inlineCallbacks
def starttls(client: Any, tls: HostTLS, keywords: dict[str, str], relay: str,
             hello: Callable[[], defer.Deferred[dict[str, str]]]) -> Any:
    """STARTTLS on an SMTP ``client`` (mailsuite.mta.relay.ClientProtocol) when offered and
    not ``none``, required by the mandatory levels; ``hello()`` says EHLO again after it. The
    EHLO keywords and the Verdict (None without TLS); TLSRefused when this host will not do."""
    mandatory = tls.mandatory
    observe = tls.observe or (lambda result, chain, relay: None)
    if "STARTTLS" not in keywords or tls.level == "none":
        if tls.level != "none":
            observe("starttls-not-supported", [], relay)
        if mandatory:
            raise TLSRefused(450, "4.7.4", f"TLS is required, but was not offered by host {relay}")
        return keywords, None
    client.send("STARTTLS")
    code, text = yield client.reply()
    if code != 220:
        observe("starttls-not-supported", [], relay)
        if mandatory:
            raise TLSRefused(
                code, "4.7.5", f"TLS is required, but host {relay} refused STARTTLS: {code} {text}")
        return keywords, None
    creator = tls.connection(relay.partition("[")[0])
    client.transport.startTLS(creator)
    try:
        keywords = yield hello()
    except defer.CancelledError:
        raise
    except Exception as e:  # the connection failed inside the handshake (SSL.Error, lost)
        conn = creator.connection
        if isinstance(e, SSL.Error) or conn is None or conn.get_cipher_name() is None:
            observe("validation-failure", [], relay)  # RFC 8460 has no handshake-failure
            raise TLSRefused(450, "4.7.5", f"Cannot start TLS: handshake failure with {relay}",
                             plaintext_retry=not mandatory) from None
        raise  # a refused EHLO, a lost connection after the handshake: the session's own
    assert creator.connection is not None  # made by the handshake
    verdict = tls.check(creator.connection, relay)
    observe("", list(creator.connection.get_peer_cert_chain(as_cryptography=True) or []), relay)
    if not verdict.ok:
        raise TLSRefused(450, "4.7.5", verdict.failure)
    return keywords, verdict


def sasl_refusal(verdict: Verdict | None, verified_only: bool, relay: str) -> str:
    """Why the relayhost password must not be sent on this connection ('' = it may): never
    without TLS; with ``smtp_sasl_tls_verified_only`` only over a Verified connection."""
    if verdict is None:
        return f"not sending the password to {relay} without TLS"
    if verdict.trust != "Verified" and verified_only:
        return (f"not sending the password to {relay} over an unverified TLS connection"
                f" ({verdict.trust}: {verdict.problem}); see smtp_sasl_tls_verified_only")
    return ""


# -- the policy engine ---------------------------------------------------------------------------


class TLSPolicy:
    """Decides the TLS of each destination and host (see the module doc)."""

    def __init__(
        self,
        level: str = "may",
        table: dict[str, Policy] | None = None,
        verify_match: tuple[str, ...] = ("hostname",),
        secure_match: tuple[str, ...] = ("nexthop", "dot-nexthop"),
        store: crypto.X509Store | None = None,
        lookup: dane.SecureLookup | None = None,
        log: Callable[[str], None] = lambda text: None,
        sasl_verified_only: bool = True,
    ) -> None:
        self.level = level
        self.table = table or {}
        self.verify_match = verify_match
        self.secure_match = secure_match
        self.store = store
        self.lookup = lookup
        self.log = log
        self.sasl_verified_only = sasl_verified_only
        self.contexts: dict[str, SSL.Context] = {}

    def destination(self, hop: str) -> Policy:
        """The Policy of a next hop: the first smtp_tls_policy_maps entry of its keys, else
        smtp_tls_security_level. (The one place a per-destination policy is decided; the
        relay also accepts a Deferred Policy from here, for a source that must fetch.)"""
        for key in table_keys(hop):
            if key in self.table:
                return self.table[key]
        return Policy(self.level)

    def names(self, policy: Policy, hop: str, host: str) -> list[str]:
        """The names a certificate must carry for ``policy`` at MX ``host`` of ``hop``."""
        domain = nexthop_domain(hop)
        if policy.match:
            strategies = policy.match
        elif policy.level == "secure":
            strategies = self.secure_match
        else:
            strategies = self.verify_match
        expand = {"hostname": host.lower().rstrip("."), "nexthop": domain,
                  "dot-nexthop": "." + domain}
        return list(dict.fromkeys(expand.get(s, s) for s in strategies))

    @defer.inlineCallbacks
    def host(self, policy: Policy, hop: str, host: str, port: int,
             mx_secure: bool = False) -> Any:
        """Deferred HostTLS for MX ``host``; with a DANE level, TLSA look-ups when the MX
        answer was authenticated (``mx_secure``; always for a ``[host]`` next hop).
        Errbacks TemporaryDNSError (TLSA look-up failed: defer) or dane.DaneUnavailable."""
        tls = HostTLS(policy.level, self.names(policy, hop, host), self.store,
                      ciphers=policy.ciphers, source=policy.source,
                      sasl_verified_only=self.sasl_verified_only, log=self.log,
                      contexts=self.contexts)
        if policy.level not in ("dane", "dane-only"):
            return tls
        found = dane.HostDane(False)
        if self.lookup is not None and (mx_secure or hop.startswith("[")):
            found = yield dane.host_tlsa(self.lookup, host, port)
        if not found.applies:
            if policy.level == "dane-only":
                raise DaneUnavailable(f"no DNSSEC-validated TLSA records for {host}")
            return replace(tls, level="may")
        domain = nexthop_domain(hop)
        names = list(dict.fromkeys([host.lower().rstrip("."), domain]))
        if not found.records:  # TLSA records, none usable: mandatory unauthenticated TLS
            return replace(tls, level="encrypt", names=names)
        return replace(tls, level="dane", names=names, tlsa=found.records)

    @defer.inlineCallbacks
    def mx_secure(self, policy: Policy, domain: str) -> Any:
        """Whether the MX answer of ``domain`` is DNSSEC-authenticated (only asked for a DANE
        level); a failed look-up counts as insecure (the MX look-up itself decides)."""
        if policy.level not in ("dane", "dane-only") or self.lookup is None:
            return False
        try:
            answer = yield self.lookup.query(domain, 15)  # MX
        except TemporaryDNSError:
            return False
        return answer.secure


class DaneUnavailable(Exception):
    """``dane-only`` and DANE does not apply to the host."""


def from_config(cfg: Any, reactor: Any, log: Callable[[str], None]) -> TLSPolicy:
    """The TLSPolicy of ``[mail]``: smtp_tls_policy_maps and smtp_tls_CAfile are read now
    (blocking: at start); a broken table line or CA file is a ConfigError naming it."""
    mail = cfg.mail
    table: dict[str, Policy] = {}
    errors = []
    if mail.smtp_tls_policy_maps:
        try:
            table = read_policy_table(mail.smtp_tls_policy_maps)
        except OSError as e:
            errors.append(f"{cfg.path}: [mail] smtp_tls_policy_maps: {describe_os_error(e)}")
        except ValueError as e:
            errors.append(f"{cfg.path}: [mail] smtp_tls_policy_maps: {e}")
    try:
        if mail.smtp_tls_CAfile:
            open(mail.smtp_tls_CAfile, "rb").close()  # OpenSSL's reason for a missing file: none
        store = trust_store(mail.smtp_tls_CAfile)
    except OSError as e:
        errors.append(f"{cfg.path}: [mail] smtp_tls_CAfile: {describe_os_error(e)}")
    except crypto.Error as e:
        errors.append(f"{cfg.path}: [mail] smtp_tls_CAfile: {mail.smtp_tls_CAfile}:"
                      f" not a usable PEM CA file ({e})")
    if errors:
        raise ConfigError(errors)
    return TLSPolicy(
        mail.smtp_tls_security_level, table, mail.smtp_tls_verify_cert_match,
        mail.smtp_tls_secure_cert_match, store,
        dane.SecureLookup(mail.dns_resolver, reactor=reactor), log,
        mail.smtp_sasl_tls_verified_only)


def check_readable(cfg: Any, owner: tuple[int, int]) -> None:
    """StartupError when the network process (``owner``: mail_owner's uid, gid) could not read
    smtp_tls_policy_maps or smtp_tls_CAfile (a privilege-separated server reads them there)."""
    named = {getattr(cfg.mail, key): key for key in ("smtp_tls_CAfile", "smtp_tls_policy_maps")
             if getattr(cfg.mail, key)}
    for path, why in unreadable_by(list(named), *owner).items():
        raise StartupError(f"[mail] {named[path]}: {path}: {why} (read by mail_owner)")
