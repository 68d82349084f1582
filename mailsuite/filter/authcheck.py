"""The inbound authentication checks (issue 13 item 2): SPF, DKIM, DMARC and ARC of mail that
strangers hand us on port 25, one ``Authentication-Results:`` header, and the policy.

Which mail: the SMTP door's, from a client that did not authenticate and is neither in
``mynetworks`` nor in ``[auth_checks] skip_addresses`` (policyd-spf's key and default:
loopback), so not submission, not local pickup, not LMTP from our own front end. The
Authentication-Results fields claiming our authserv-id are removed from all SMTP mail, the
unchecked too (a user's message must not carry a "pass" that looks like ours).

How (all DNS through one twisted.names resolver, ``[mail] dns_resolver``; nothing blocks the
reactor): SPF of HELO and MAIL FROM by pyspf (spfcheck.py) and DKIM + ARC by dkimpy
(dkimcheck.py) run at once, each in a thread of mailsuite.threads, their queries coming back
to the reactor (mailsuite.mta.dnsquery); then DMARC (dmarc.py) on the reactor. The fields of
Authentication-Results that claim our authserv-id are removed and ours goes on top
(authresults.py).

Policy (``[auth_checks]``, the knobs of policyd-spf and opendmarc):

- ``mail_from_reject`` / ``helo_reject`` (policyd-spf's Mail_From_reject / HELO_reject;
  default False): ``Fail`` refuses an SPF fail with ``550 5.7.23`` (RFC 7372), ``Softfail``
  also a softfail;
- ``reject_failures`` (opendmarc's RejectFailures; default yes): a DMARC fail whose policy is
  ``reject`` (after ``pct=``) is refused, ``550 5.7.1 rejected by DMARC policy for DOMAIN``;
  with it off such mail is treated as ``quarantine``;
- ``quarantine_to_junk`` (default yes): ``quarantine`` puts the message in the recipient's
  Junk folder by the store's own spam mark (``[mailbox] spam_header``, mailsuite.store.spam):
  the stage adds ``X-Spam: Yes, DMARC quarantine policy of DOMAIN`` (a ``spam_header`` of ''
  or no Junk folder: the message stays in the INBOX, its A-R header says the fail);
- a temperror accepts the message (as opendmarc and policyd-spf do by default);
- ``arc_key`` (``DOMAIN:SELECTOR:/path``; default none): a message taken for an address
  forwarded to another domain gets an ARC set of ours (arcseal.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.configschema import AuthChecksConfig, Config
from mailsuite.filter import arcseal, authresults, dkimcheck, spfcheck
from mailsuite.filter.dmarc import DMARCCheck, DMARCResult, from_domains, strictest
from mailsuite.mta.dns import MXResolver
from mailsuite.mta.dnsquery import DNSQuery, FromThread
from mailsuite.mta.transaction import LMTP, SMTP, Client, Message, Verdict
from mailsuite.net import in_networks
from mailsuite.startup import StartupError, describe_os_error

log = Logger()

#: a field dkimpy has work with (DKIM-Signature, the ARC-Seal of a set)
_SIGNED = re.compile(rb"^(?:dkim-signature|arc-seal)[ \t]*:", re.IGNORECASE | re.MULTILINE)
_HAS_AR = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE | re.MULTILINE)
_SPF_REFUSED = {"fail": ("fail",), "softfail": ("fail", "softfail"), "false": ()}


class AuthCheckStage:
    """The Stage. ``query`` asks DNS on the reactor; ``lookup`` is its bridge for the threads
    (``blocking`` runs the blocking checks); ``random`` draws for DMARC ``pct=``."""

    def __init__(self, settings: AuthChecksConfig, authserv_id: str, mynetworks: list[Any],
                 query: DNSQuery, blocking: Any, maillog: Any, spam_header: str = "",
                 lookup: FromThread | None = None,
                 random: Callable[[], float] = random.random,
                 arc_key: arcseal.SealingKey | None = None) -> None:
        self.settings = settings
        self.authserv_id = authserv_id
        self.mynetworks = mynetworks
        self.query = query
        self.lookup = lookup or FromThread(query)
        self.blocking = blocking
        self.maillog = maillog
        self.spam_header = spam_header
        self.arc_key = arc_key
        self.dmarc = DMARCCheck(query, min(settings.dns_timeout, 10.0), random)

    @classmethod
    def from_config(cls, cfg: Config, reactor: Any, maillog: Any,
                    blocking: Any) -> AuthCheckStage | None:
        """The stage ``cfg`` turns on (``[auth_checks] enabled``), else None."""
        if not cfg.auth_checks.enabled:
            return None
        names = MXResolver(cfg.mail.dns_resolver, reactor=reactor)
        query = _LazyQuery(names, reactor)
        spam = cfg.mailbox.spam_header if cfg.mailbox.junk else ""
        key = None
        if cfg.auth_checks.arc_key:
            try:
                key = arcseal.load(cfg.auth_checks.arc_key)
            except OSError as e:
                raise StartupError(f"[auth_checks] arc_key: {describe_os_error(e)}") from None
            except ValueError as e:
                raise StartupError(f"[auth_checks] arc_key: {e}") from None
        else:
            key = arcseal.from_dkim(cfg)
        return cls(cfg.auth_checks, cfg.mail.authserv_id or cfg.mail.myhostname,
                   [*cfg.mail.mynetworks, *cfg.auth_checks.skip_addresses], query, blocking,
                   maillog, spam, arc_key=key)

    def checked(self, client: Client) -> bool:
        """Mail from a stranger on the SMTP door (not authenticated, not in mynetworks or
        skip_addresses)."""
        return client.door == SMTP and client.user is None \
            and not in_networks(client.address, self.mynetworks)

    def __call__(self, message: Message) -> defer.Deferred[Any] | None:
        if not self.checked(message.envelope.client):
            if message.envelope.client.door != LMTP and _HAS_AR.search(
                    message.data, 0, _header_end(message.data)):
                # not checked, but no sender's "pass" may claim to be ours (RFC 8601 5): not
                # over SMTP, nor from a local user's sendmail (LMTP: our own MTA's header)
                message.data, _ = authresults.remove_ours(message.data, self.authserv_id)
            return None
        d = self._check(message)
        d.addErrback(self._failed, message)
        return d

    @defer.inlineCallbacks
    def _check(self, message: Message) -> Any:
        env, client = message.envelope, message.envelope.client
        spf_d = self._spf_now_or_later(client.address, env.sender, client.helo or "")
        if _SIGNED.search(message.data, 0, _header_end(message.data)):
            dkim_d = self.blocking(self._dkim, message.data)
        else:  # the usual unsigned message: no thread to find no signature
            dkim_d = defer.succeed(([], dkimcheck.ARCResult("none")))
        (mailfrom, helo), (sigs, arc) = yield defer.gatherResults([spf_d, dkim_d],
                                                                  consumeErrors=True)
        dmarc = yield self._dmarc(message.data, mailfrom, sigs)
        value = authresults.header_value(self.authserv_id, mailfrom, helo, sigs, dmarc, arc)
        message.data, _ = authresults.remove_ours(message.data, self.authserv_id)
        message.add_header(authresults.NAME, value)
        self.maillog.write("authcheck", f"{env.queue_id}: {value}")
        verdict = self._decide(message, mailfrom, helo, dmarc)
        if verdict is None and self.arc_key is not None and arcseal.forwarded(env):
            when = int(env.arrival) if env.arrival is not None else None
            fields = yield self.blocking(arcseal.seal, message.data, self.arc_key,
                                         self.authserv_id, when)
            message.data = fields + message.data
            self.maillog.write("authcheck", f"{env.queue_id}: ARC-sealed as"
                               f" d={self.arc_key.domain} s={self.arc_key.selector}")
        return verdict

    def _spf_now_or_later(self, ip: str, sender: str, helo: str) -> defer.Deferred[Any]:
        """``_spf`` at once on the reactor when every answer it needs is kept (pyspf's work
        alone, no DNS wait: a sender seen within its records' TTL), else in a thread."""
        if self.query.cache is not None:
            probe = _CachedOnly(self.query)
            try:
                result = self._spf(ip, sender, helo, probe)
            except _NotCached:
                result = None
            if result is not None and not probe.missed:  # pyspf swallows errors of exp=
                return defer.succeed(result)
        return self.blocking(self._spf, ip, sender, helo)  # type: ignore[no-any-return]

    def _spf(self, ip: str, sender: str, helo: str,
             lookup: spfcheck.Lookup | None = None) -> tuple[Any, Any]:
        """(MAIL FROM result, HELO result or None); blocking. For the null sender MAIL FROM
        is postmaster@HELO (RFC 7208 2.4): the HELO check is that one."""
        timeout, me, lookup = self.settings.dns_timeout, self.authserv_id, lookup or self.lookup
        helo_result = spfcheck.check_helo(lookup, ip, helo, me, timeout)
        if not sender:
            mailfrom = helo_result or spfcheck.SPFResult("none", f"postmaster@{helo}")
        else:
            mailfrom = spfcheck.check(lookup, ip, sender, helo, me, timeout)
        return mailfrom, helo_result

    def _dkim(self, data: bytes) -> tuple[list[Any], Any]:
        """(a result per DKIM signature, the ARC chain's result); blocking."""
        return dkimcheck.verify_all(data, self.lookup), dkimcheck.arc_verify(data, self.lookup)

    @defer.inlineCallbacks
    def _dmarc(self, data: bytes, mailfrom: Any, sigs: list[Any]) -> Any:
        """The DMARC result of the From: domain; of several (RFC 7489 6.6.1), the strictest."""
        domains = from_domains(data)
        if not domains:
            return DMARCResult("none", "", reason="no From: domain")
        passed = [s.domain for s in sigs if s.result == "pass"]
        spf_domain = None
        if mailfrom.result == "pass":
            spf_domain = mailfrom.identity.rpartition("@")[2]
        results = yield defer.gatherResults(
            [self.dmarc.evaluate(d, passed, spf_domain) for d in domains], consumeErrors=True)
        return strictest(results)

    def _decide(self, message: Message, mailfrom: Any, helo: Any,
                dmarc: DMARCResult) -> Verdict | None:
        s = self.settings
        for result, setting, what in ((helo, s.helo_reject, "helo"),
                                      (mailfrom, s.mail_from_reject, "mfrom")):
            if result is not None and result.result in _SPF_REFUSED[setting]:
                text = (f"Message rejected due to: SPF {result.result} - not authorized"
                        f" (identity={what}; id={result.identity})")
                return self._refuse(message, Verdict(550, "5.7.23", text))
        if dmarc.result != "fail" or dmarc.disposition == "none":
            return None
        if dmarc.disposition == "reject" and s.reject_failures:
            verdict = Verdict(550, "5.7.1", f"rejected by DMARC policy for {dmarc.domain}")
            return self._refuse(message, verdict)
        if s.quarantine_to_junk and self.spam_header:
            message.add_header(self.spam_header,
                               f"Yes, DMARC {dmarc.disposition} policy of {dmarc.domain}")
        return None

    def _refuse(self, message: Message, verdict: Verdict) -> Verdict:
        env = message.envelope
        self.maillog.write("authcheck", f"{env.queue_id}: reject: END-OF-MESSAGE from"
                           f" {env.client.label}: {verdict.code} {verdict.dsn} {verdict.text};"
                           f" from=<{env.sender}> proto=ESMTP helo=<{env.client.helo or ''}>")
        return verdict

    def _failed(self, failure: Any, message: Message) -> None:
        """A check that broke (a bug, not DNS: that is a temperror) lets the mail through
        unmarked, logged: a filter's fault must not lose mail."""
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        if failure.check(defer.CancelledError):
            return failure  # type: ignore[no-any-return]
        log.failure("inbound authentication checks of {queue_id}", failure,
                    queue_id=message.envelope.queue_id)
        # unchecked, yet a forged field claiming to be ours must not pass (RFC 8601 5)
        message.data, _ = authresults.remove_ours(message.data, self.authserv_id)
        self.maillog.write("authcheck", f"{message.envelope.queue_id}: warning: checks failed:"
                           f" {failure.getErrorMessage()}; message accepted unchecked")
        return None


class _NotCached(Exception):
    """A question whose answer is not kept (the check goes to a thread)."""


class _CachedOnly:
    """A lookup for pyspf that answers from DNSQuery's kept answers only."""

    def __init__(self, query: DNSQuery) -> None:
        self.query = query
        self.missed = False

    def __call__(self, name: str, qtype: str, timeout: float = 10.0) -> list[Any]:
        kept = self.query.cached(name, qtype)
        if kept is None:
            self.missed = True
            raise _NotCached(name)
        return kept


def _header_end(data: bytes) -> int:
    end = data.find(b"\n\n")
    return len(data) if end < 0 else end + 1


class _LazyQuery(DNSQuery):
    """A DNSQuery whose resolver is MXResolver's, made at the first query (a resolv.conf
    resolver starts a re-read timer)."""

    def __init__(self, names: MXResolver, reactor: Any) -> None:
        super().__init__(None, reactor, cache=True)
        self.names = names

    @property  # type: ignore[override]
    def resolver(self) -> Any:
        return self.names.resolver

    @resolver.setter
    def resolver(self, value: Any) -> None:
        pass
