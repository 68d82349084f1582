"""Mail out: the SMTP client of the queue, Postfix's smtp(8).

:class:`Relay` ``.deliver(destination, envelope, recipients, data)`` delivers one message to the
recipients of one next hop (a domain's MX hosts, or ``relayhost``) and reports one
:class:`Outcome` per recipient. It tries the hosts in order until one takes the transaction:
connection failures, 4xx greetings and 4xx/5xx at HELO move on to the next host; once MAIL FROM
is answered the results are final for this attempt.

The session: EHLO (HELO if refused), STARTTLS as the destination's TLS policy says
(mailsuite.mta.tlspolicy: Postfix's ``smtp_tls_security_level`` and ``smtp_tls_policy_maps``,
certificate checks, DANE; MTA-STS and TLS-RPT by mailsuite.mta.stsroute), AUTH PLAIN with
the credentials of ``smtp_sasl_password_maps`` (only inside TLS, by default only verified TLS),
MAIL FROM with
SIZE, BODY, SMTPUTF8, RET and ENVID as the server supports them, RCPT TO with NOTIFY and ORCPT
when it speaks DSN, DATA with our own CRLF conversion and dot-stuffing (Twisted's client misses a
dot at a chunk boundary, TWISTED.md), QUIT.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsuite.config import ConfigError
from mailsuite.mta.address import xtext_encode
from mailsuite.mta.dns import MX_ADDRESS_LIMIT, DNSLookupError, MailHost
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.stsroute import Router
from mailsuite.mta.tlspolicy import HostTLS, TLSPolicy, TLSRefused, Verdict, sasl_refusal, starttls
from mailsuite.startup import describe_os_error

log = Logger()

CONNECT_TIMEOUT = 30  # Postfix smtp_connect_timeout
REPLY_TIMEOUT = 300  # smtp_helo_timeout, smtp_mail_timeout, ...
DATA_DONE_TIMEOUT = 600  # smtp_data_done_timeout


@dataclass
class Outcome:
    """What happened to one recipient: ``code`` 2xx sent, 4xx deferred, 5xx bounced."""

    code: int
    dsn: str
    text: str
    relay: str = "none"
    remote_dsn: bool = False  # the receiving server took DSN NOTIFY/ORCPT (no "relayed" notice)
    lock: str = ""  # a local mailbox's dotlock that deferred it: retried when it goes

    @property
    def status(self) -> str:
        return "sent" if self.code < 400 else "deferred" if self.code < 500 else "bounced"


def to_wire(data: bytes) -> bytes:
    """LF-ended message -> CRLF with every line that starts with '.' dot-stuffed, plus '.'."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [b"." + line if line[:1] == b"." else line for line in lines]
    return b"\r\n".join(out) + (b"\r\n" if out else b"") + b".\r\n"


_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s")


def reply_dsn(code: int, text: str) -> str:
    """The enhanced status code of a reply, or one made up from the basic code."""
    m = _ENHANCED.match(text)
    if m:
        return m.group(1)
    return f"{code // 100}.0.0"


class SessionFailed(Exception):
    """The session ended before MAIL FROM was answered: try the next host (or give up)."""

    def __init__(self, code: int, dsn: str, text: str, next_host: bool = True,
                 plaintext_retry: bool = False) -> None:
        super().__init__(text)
        self.code, self.dsn, self.text, self.next_host = code, dsn, text, next_host
        self.plaintext_retry = plaintext_retry  # the TLS handshake failed at level may


class ClientProtocol(protocol.Protocol):
    """Reads SMTP replies (multi-line aware); the session logic is in :func:`run_session`."""

    transport: Any

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._buffer = b""
        self._lines: list[str] = []
        self._waiting: defer.Deferred[tuple[int, str]] | None = None
        self._replies: list[tuple[int, str]] = []
        self._lost: Failure | None = None
        self.connected_d: defer.Deferred[None] = defer.Deferred()
        self._timer: Any = None

    def connectionMade(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)
        self.connected_d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit():
                self._lines.append(line)
                continue
            self._lines.append(line[4:])
            if line[3:4] != "-":
                reply = (int(line[:3]), "\n".join(self._lines))
                self._lines = []
                self._deliver(reply)
        if len(self._buffer) > 65536:
            self.transport.loseConnection()

    def _deliver(self, reply: tuple[int, str]) -> None:
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            self._cancel_timer()
            d.callback(reply)
        else:
            self._replies.append(reply)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def reply(self, timeout: float = REPLY_TIMEOUT) -> defer.Deferred[tuple[int, str]]:
        if self._replies:
            return defer.succeed(self._replies.pop(0))
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self._waiting = d
        self._timer = self.clock.callLater(timeout, self._timed_out)
        return d

    def _timed_out(self) -> None:
        self._timer = None
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(error.TimeoutError("timeout waiting for the server's reply"))
        self.transport.abortConnection()

    def send(self, line: str) -> None:
        self.transport.write(line.encode("utf-8") + b"\r\n")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = reason
        self._cancel_timer()
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(reason)


@dataclass
class SessionParams:
    """What one connection needs to know."""

    helo_name: str
    tls_level: str = "may"  # the level of mailsuite.mta.tlspolicy (tls.level when tls is set)
    credentials: tuple[str, str] | None = None
    tls: HostTLS | None = None


@dataclass
class Transaction:
    envelope: Envelope
    recipients: list[QueuedRecipient]
    data: bytes
    results: dict[int, Outcome] = field(default_factory=dict)
    started: bool = False  # MAIL FROM was sent: never retry this attempt at another host


def _ehlo_keywords(text: str) -> dict[str, str]:
    keywords = {}
    for line in text.split("\n")[1:]:
        word, _, arg = line.strip().partition(" ")
        keywords[word.upper()] = arg
    return keywords


@defer.inlineCallbacks
def run_session(client: ClientProtocol, params: SessionParams, tx: Transaction, relay: str) -> Any:
    """One SMTP session on a connected ``client``; fills ``tx.results`` or raises SessionFailed."""
    code, text = yield client.reply()
    if code != 220:
        raise SessionFailed(
            code, reply_dsn(code, text), f"host {relay} refused to talk to me: {code} {text}"
        )
    keywords = yield _hello(client, params)
    keywords, verdict = yield _starttls(client, params, keywords, relay)
    if params.credentials is not None and "AUTH" in keywords:
        yield _authenticate(client, params, verdict, relay)
    refused = _refused_before_mail(tx, keywords, relay)
    if refused is not None:
        for i, _ in enumerate(tx.recipients):
            tx.results[i] = Outcome(*refused, relay)
        client.send("QUIT")
        return tx
    dsn = "DSN" in keywords
    client.send(_mail_command(tx.envelope, len(tx.data), keywords, dsn))
    tx.started = True
    code, text = yield client.reply()
    if code >= 400:
        for i, _ in enumerate(tx.recipients):
            tx.results[i] = Outcome(
                code,
                reply_dsn(code, text),
                f"host {relay} said: {code} {text} (in reply to MAIL FROM command)",
                relay,
            )
        client.send("QUIT")
        return tx
    accepted = yield _recipients(client, tx, dsn, relay)
    if accepted:
        yield _send_data(client, tx, accepted, dsn, relay)
    client.send("QUIT")
    return tx


@defer.inlineCallbacks
def _starttls(client: ClientProtocol, params: SessionParams, keywords: dict[str, str],
              relay: str) -> Any:
    """STARTTLS as the host's TLS policy says (tlspolicy.starttls): the EHLO keywords and the
    certificate's tlspolicy.Verdict (None without TLS); SessionFailed when TLS is refused."""
    tls = params.tls or HostTLS(params.tls_level, [])
    try:
        return (yield starttls(client, tls, keywords, relay, lambda: _hello(client, params)))
    except TLSRefused as e:
        raise SessionFailed(e.code, e.dsn, e.text, plaintext_retry=e.plaintext_retry) from None


@defer.inlineCallbacks
def _authenticate(client: ClientProtocol, params: SessionParams, verdict: Verdict | None,
                  relay: str) -> Any:
    """AUTH PLAIN, only over TLS, and by default only over verified TLS (certificate trusted
    for the host's name, or DANE; ``smtp_sasl_tls_verified_only``); SessionFailed when that
    is not so or the server refuses."""
    refusal = sasl_refusal(verdict, params.tls is None or params.tls.sasl_verified_only, relay)
    if refusal:
        raise SessionFailed(450, "4.7.0", refusal)
    assert params.credentials is not None
    user, password = params.credentials
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
    client.send(f"AUTH PLAIN {token}")
    code, text = yield client.reply()
    if code != 235:
        raise SessionFailed(
            code,
            reply_dsn(code, text),
            f"SASL authentication failed; server {relay} said: {code} {text}",
            next_host=code < 500,
        )


def _refused_before_mail(tx: Transaction, keywords: dict[str, str],
                         relay: str) -> tuple[int, str, str] | None:
    """(code, dsn, text) for every recipient when the server cannot take this message at all
    (over its SIZE, or SMTPUTF8 needed and not offered), else None."""
    env, data = tx.envelope, tx.data
    if (
        "SIZE" in keywords
        and keywords["SIZE"].isdigit()
        and int(keywords["SIZE"])
        and len(data) > int(keywords["SIZE"])
    ):
        return (
            552,
            "5.3.4",
            f"message size {len(data)} exceeds size limit {keywords['SIZE']} of server {relay}",
        )
    needs_utf8 = env.smtputf8 and not all(
        x.isascii() for x in [env.sender, *[r.address for r in tx.recipients]])
    if needs_utf8 and "SMTPUTF8" not in keywords:
        return 550, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {relay}"
    return None


def _mail_command(env: Envelope, size: int, keywords: dict[str, str], dsn: bool) -> str:
    """MAIL FROM with the parameters the server offers (SIZE, BODY, SMTPUTF8, RET, ENVID)."""
    mail = f"MAIL FROM:<{env.sender}>"
    if "SIZE" in keywords:
        mail += f" SIZE={size}"
    if env.body and "8BITMIME" in keywords:
        mail += f" BODY={env.body}"
    if env.smtputf8 and "SMTPUTF8" in keywords:
        mail += " SMTPUTF8"
    if dsn and env.ret:
        mail += f" RET={env.ret}"
    if dsn and env.envid:
        mail += f" ENVID={xtext_encode(env.envid)}"
    return mail


@defer.inlineCallbacks
def _recipients(client: ClientProtocol, tx: Transaction, dsn: bool, relay: str) -> Any:
    """RCPT TO for each recipient (NOTIFY, ORCPT when DSN is offered); a refusal is its
    result. The indexes of the accepted ones."""
    accepted = []
    for i, r in enumerate(tx.recipients):
        rcpt = f"RCPT TO:<{r.address}>"
        if dsn and r.notify:
            rcpt += f" NOTIFY={','.join(r.notify)}"
        if dsn and r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            rcpt += f" ORCPT={kind};{xtext_encode(addr)}"
        client.send(rcpt)
        code, text = yield client.reply()
        if code >= 400:
            tx.results[i] = Outcome(
                code,
                reply_dsn(code, text),
                f"host {relay} said: {code} {text} (in reply to RCPT TO command)",
                relay,
            )
        else:
            accepted.append(i)
    return accepted


@defer.inlineCallbacks
def _send_data(client: ClientProtocol, tx: Transaction, accepted: list[int], dsn: bool,
               relay: str) -> Any:
    """DATA and the message; the reply is the result of each accepted recipient."""
    client.send("DATA")
    code, text = yield client.reply()
    if code != 354:
        for i in accepted:
            tx.results[i] = Outcome(
                code if code >= 400 else 451,
                reply_dsn(code, text),
                f"host {relay} said: {code} {text} (in reply to DATA command)",
                relay,
            )
        return
    client.transport.write(to_wire(tx.data))
    code, text = yield client.reply(DATA_DONE_TIMEOUT)
    for i in accepted:
        detail = f"{code} {text}".replace("\n", " ")
        if code < 400:
            tx.results[i] = Outcome(code, reply_dsn(code, text), detail, relay, remote_dsn=dsn)
        else:
            tx.results[i] = Outcome(
                code,
                reply_dsn(code, text),
                f"host {relay} said: {detail} (in reply to end of DATA command)",
                relay,
            )


@defer.inlineCallbacks
def _hello(client: ClientProtocol, params: SessionParams) -> Any:
    client.send(f"EHLO {params.helo_name}")
    code, text = yield client.reply()
    if code == 250:
        return _ehlo_keywords(text)
    client.send(f"HELO {params.helo_name}")
    code, text = yield client.reply()
    if code != 250:
        raise SessionFailed(code, reply_dsn(code, text), f"host refused HELO: {code} {text}")
    return {}


def parse_password_map(text: str) -> dict[str, tuple[str, str]]:
    """``smtp_sasl_password_maps`` lines ``[relay.example]:587  user:password`` -> dict."""
    table = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        user, sep, password = value.strip().partition(":")
        if sep:
            table[key.strip().lower()] = (user, password)
    return table


def load_password_map(cfg: Any) -> dict[str, tuple[str, str]]:
    """smtp_sasl_password_maps, read at start: a missing or unreadable file is a ConfigError
    naming file, section and key, before anything is bound."""
    path = cfg.mail.smtp_sasl_password_maps
    if not path:
        return {}
    try:
        with open(path) as f:
            return parse_password_map(f.read())
    except (OSError, UnicodeDecodeError) as e:
        reason = describe_os_error(e) if isinstance(e, OSError) else f"{path}: {e}"
        raise ConfigError([f"{cfg.path}: [mail] smtp_sasl_password_maps: {reason}"]) from None


class Relay:
    """Delivers to one next hop. ``connect(ip, port) -> Deferred[ClientProtocol]`` and
    ``resolver.hosts(domain)`` are injectable; ``port`` is 25 except in tests (``smtp_port``).
    ``mta_sts`` (MtaSts) and ``tls_reports`` (TLSReportStore): mailsuite.mta.stsroute."""

    def __init__(
        self,
        resolver: Any,
        helo_name: str,
        clock: Any,
        port: int = 25,
        relayhost: str = "",
        credentials: dict[str, tuple[str, str]] | None = None,
        tls_level: str = "may",
        connect: Callable[[str, int], defer.Deferred[ClientProtocol]] | None = None,
        tls: TLSPolicy | None = None,
        mta_sts: Any = None,
        tls_reports: Any = None,
    ) -> None:
        self.resolver = resolver
        self.helo_name = helo_name
        self.clock = clock
        self.port = port
        self.relayhost = relayhost
        self.credentials = credentials or {}
        self.tls = tls or TLSPolicy(tls_level)  # the policy engine: mailsuite.mta.tlspolicy
        self.connect = connect or self._tcp_connect
        self.mta_sts, self.tls_reports = mta_sts, tls_reports

    def next_hop(self, address: str) -> str:
        """The destination a recipient's mail goes to: relayhost, else the domain."""
        return self.relayhost or address.rpartition("@")[2].lower()

    def _tcp_connect(self, ip: str, port: int) -> defer.Deferred[ClientProtocol]:
        kind = endpoints.TCP6ClientEndpoint if ":" in ip else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.clock, ip, port, timeout=CONNECT_TIMEOUT)
        factory = protocol.Factory.forProtocol(lambda: ClientProtocol(self.clock))
        return endpoint.connect(factory)  # type: ignore[arg-type,return-value]

    def _destination(self, hop: str) -> tuple[str, int, bool]:
        """(host, port, look up MX?) for a next hop in Postfix syntax."""
        m = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+)(?::(\d+))?", hop)
        if not m:
            return hop, self.port, True
        host, port = m.group(1), int(m.group(2)) if m.group(2) else self.port
        if host.startswith("["):
            return host[1:-1], port, False
        return host, port, True

    @defer.inlineCallbacks
    def hosts(self, hop: str) -> Any:
        host, port, mx = self._destination(hop)
        if mx:
            found = yield self.resolver.hosts(host)
        else:
            addresses = yield self.resolver.addresses(host)
            if not addresses:
                raise DNSLookupError("4.4.3", f"no address for relayhost {host}")
            found = [MailHost(host, tuple(addresses))]
        return found, port

    def _credentials(self, hop: str, host: str, port: int) -> tuple[str, str] | None:
        for key in (hop.lower(), f"[{host}]:{port}".lower(), host.lower(), f"[{host}]".lower()):
            if key in self.credentials:
                return self.credentials[key]
        return None

    @defer.inlineCallbacks
    def deliver(
        self, hop: str, envelope: Envelope, recipients: list[QueuedRecipient], data: bytes
    ) -> Any:
        """Deferred list of Outcome, one per recipient, in order. Never errbacks."""
        try:  # may be a Deferred: an MTA-STS policy may need fetching first
            policy = yield defer.maybeDeferred(self.tls.destination, hop)
        except defer.CancelledError:
            raise
        except Exception as e:  # a policy source that failed: retry later
            log.failure("TLS policy lookup for {hop} failed", Failure(), hop=hop)
            return [Outcome(451, "4.7.5", f"TLS policy lookup for {hop} failed: {e}")
                    for _ in recipients]
        try:
            hosts, port = yield self.hosts(hop)
            mx_secure = yield self.tls.mx_secure(policy, self._destination(hop)[0])
        except DNSLookupError as e:
            code = 550 if e.dsn.startswith("5") else 450
            return [Outcome(code, e.dsn, e.text) for _ in recipients]
        except defer.CancelledError:
            raise
        except Exception as e:  # a resolver failure we did not foresee: retry later
            log.failure("MX lookup for {hop} failed", Failure(), hop=hop)
            return [Outcome(451, "4.4.3", f"MX lookup for {hop} failed: {e}") for _ in recipients]
        mx = self._destination(hop)[2] and hop != self.relayhost  # MTA-STS: the domain's MX
        route = yield Router(self.tls, self.mta_sts, self.tls_reports).route(
            policy, hop, hosts, port, mx_secure, mx)
        tried = 0
        last = Outcome(*(route.refusal or (451, "4.4.1", f"connect to {hop}: no host to try")))
        for mail_host in route.hosts:
            host_tls, refusal = yield route.host(mail_host)
            if host_tls is None:  # a TLSA look-up failed, or a policy refuses the host
                last = Outcome(*refusal)
                continue
            for ip in mail_host.addresses:
                if tried >= MX_ADDRESS_LIMIT:
                    break
                tried += 1
                relay = f"{mail_host.name}[{ip}]:{port}"
                done, last = yield self._attempt(ip, port, relay, host_tls, hop, mail_host.name,
                                                 Transaction(envelope, recipients, data), last)
                if done is not None:
                    return done
        return [_after_every_host(last) for _ in recipients]

    @defer.inlineCallbacks
    def _attempt(self, ip: str, port: int, relay: str, host_tls: HostTLS, hop: str, host: str,
                 tx: Transaction, last: Outcome) -> Any:
        """One address: (the outcomes, last) when this attempt decided the delivery, else
        (None, the outcome that sends us to the next address). A failed TLS handshake at
        ``may`` is tried again in plaintext, as Postfix does."""
        n = len(tx.recipients)
        for attempt in (host_tls, host_tls.plaintext()):
            try:
                client = yield self.connect(ip, port)
            except defer.CancelledError:
                raise
            except Exception as e:  # any failure is reported as a result
                return None, Outcome(451, "4.4.1", f"connect to {relay}: {_reason(e)}", relay)
            tx.results, tx.started = {}, False
            try:
                yield run_session(client, self._params(hop, host, port, attempt), tx, relay)
            except SessionFailed as e:
                code = e.code if e.code >= 400 else 451
                last = Outcome(code, e.dsn, e.text, relay)
                _quit(client)
                if e.plaintext_retry and attempt is host_tls:
                    host_tls.log(f"{e.text}; trying again without TLS")
                    continue
                return (None if e.next_host else [last] * n), last
            except defer.CancelledError:
                raise
            except Exception as e:  # any failure is reported as a result
                if tx.results and len(tx.results) == n:
                    return [tx.results[i] for i in range(n)], last
                last = Outcome(451, "4.4.2", f"lost connection with {relay}: {_reason(e)}", relay)
                _quit(client)
                if tx.started:  # the transaction had begun: never resend to another host now
                    return [tx.results.get(i, last) for i in range(n)], last
                return None, last
            client.transport.loseConnection()
            return [tx.results[i] for i in range(n)], last
        return None, last

    def _params(self, hop: str, host: str, port: int, tls: HostTLS) -> SessionParams:
        return SessionParams(self.helo_name, tls.level, self._credentials(hop, host, port), tls)


def _after_every_host(last: Outcome) -> Outcome:
    """The outcome when no host took the message: ``last`` when it was a permanent refusal,
    else the temporary failure it stands for."""
    if last.code >= 500 and last.dsn.startswith("5"):
        return last
    code = min(last.code, 499) if last.code >= 400 else 451
    return Outcome(code, "4" + last.dsn[1:], last.text, last.relay)


def _quit(client: ClientProtocol) -> None:
    if client.transport is not None and client._lost is None:
        client.transport.loseConnection()


def _reason(e: BaseException) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, (error.TimeoutError, defer.TimeoutError)):
        return "Connection timed out"
    if isinstance(e, error.ConnectionDone):
        return "Connection closed"
    return str(e) or type(e).__name__
