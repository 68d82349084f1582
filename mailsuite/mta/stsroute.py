"""Which MX hosts one delivery tries and the TLS of each: the TLS policy engine
(mailsuite.mta.tlspolicy), DANE, MTA-STS (mailsuite.mta.mtastscache) and TLS-RPT
(mailsuite.mta.tlsrpt) joined, for mailsuite.mta.relay.

What decides, first match wins (the order Postfix gives with ``smtp_tls_policy_maps =
hash:tls_policy, socketmap:...:postfix-mta-sts-resolver``: every table is asked for the
next-hop domain itself before any is asked for a parent ``.domain``, and the resolver answers
no ``.domain`` key):

1. a relayhost or ``[host]`` next hop: the TLS policy alone, no MTA-STS, nothing recorded;
2. an ``smtp_tls_policy_maps`` entry for the domain itself: that entry, no MTA-STS;
3. DANE, host by host, when the level is ``dane``/``dane-only``, the MX answer is
   DNSSEC-authenticated and the host has usable authenticated TLSA records (RFC 8461 2: an
   MTA-STS result never overrides DANE's);
4. the domain's MTA-STS policy (mode enforce or testing);
5. a parent-domain ``.domain`` entry of the table, else ``smtp_tls_security_level``.

MTA-STS enforce (RFC 8461 4, 5): an MX host that matches no ``mx`` pattern (4.1: ``*.`` is
one label exactly; checked by mailsuite.mta.mtasts, not turned into Postfix's any-depth
``.domain``) is not tried, and none left defers the mail (450 4.7.5); a host that matches is
tried at level ``secure`` with its own name as the one name its certificate must carry
(service_identity's RFC 6125 matching; the chain against the system CAs plus
``smtp_tls_CAfile``). Testing: the destination's own level decides the delivery (as
postfix-mta-sts-resolver answers nothing for testing), the certificate is judged as enforce
would, and a failure is logged ("delivering anyway") and reported.

TLS-RPT (RFC 8460), with a store: each session's TLS step is counted for the recipient domain
under policy type ``sts`` (the policy's lines and mx patterns), ``tlsa`` (the TLSA records) or
``no-policy-found`` (there a session that got TLS at all is a success); an MX host refused by
enforce counts as a ``validation-failure``, a TLSA look-up that failed as ``dnssec-invalid``,
``dane-only`` without TLSA records as ``dane-required``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from twisted.internet import defer

from mailsuite.mta.dns import DNSLookupError
from mailsuite.mta.mtasts import filter_hosts
from mailsuite.mta.stsdelivery import StsDecision
from mailsuite.mta.tlspolicy import (
    DaneUnavailable, HostTLS, Policy, TLSPolicy, nexthop_domain, table_keys)
from mailsuite.mta.tlsrpt import TLSResult

Refusal = tuple[int, str, str]  # (code, dsn, text) of relay.Outcome


class Router:
    """Makes the :class:`Route` of each delivery. ``mta_sts``: MtaSts or None (off);
    ``store``: the TLS-RPT TLSReportStore or None (``smtp_tlsrpt_enable = no``)."""

    def __init__(self, tls: TLSPolicy, mta_sts: Any = None, store: Any = None) -> None:
        self.tls = tls
        self.mta_sts = mta_sts
        self.store = store

    def static_entry(self, hop: str) -> bool:
        """Whether smtp_tls_policy_maps has an entry for the next-hop domain itself."""
        return table_keys(hop)[0] in self.tls.table

    @defer.inlineCallbacks
    def route(self, policy: Policy, hop: str, hosts: Sequence[Any], port: int,
              mx_secure: bool, mx: bool) -> Any:
        """The Route for ``hop`` whose MX look-up gave ``hosts`` (``mx``: False for a
        relayhost or ``[host]``). Never errbacks (MtaSts.policy_for never does)."""
        domain = nexthop_domain(hop)
        found = None
        if mx and self.mta_sts is not None and not self.static_entry(hop):
            found = yield self.mta_sts.policy_for(domain)
        route = Route(self, policy, hop, domain, port, mx_secure, mx, list(hosts),
                      StsDecision(domain, found, list(hosts), [], self.store))
        sts = route.sts
        if sts.active and sts.policy is not None and sts.policy.mode == "enforce" \
                and not route.dane_possible:
            usable, refused = filter_hosts(sts.policy, hosts)
            for host in refused:
                route.refuse(host.name)
            route.hosts, sts.refused = usable, refused
            if not usable:
                route.refusal = sts.no_host
        return route


@dataclass
class Route:
    """The hosts to try (``hosts``; ``refusal`` when none is left) and, by :meth:`host`, the
    HostTLS of each."""

    router: Router
    base: Policy  # the TLS policy's own answer for the hop
    hop: str
    domain: str
    port: int
    mx_secure: bool
    mx: bool
    hosts: list[Any]
    sts: StsDecision  # policy None or mode none: MTA-STS says nothing
    refusal: Refusal | None = None

    @property
    def dane_possible(self) -> bool:
        return (self.base.level in ("dane", "dane-only") and self.mx_secure
                and self.router.tls.lookup is not None)

    def log(self, text: str) -> None:
        self.router.tls.log(text)

    def _patterns(self) -> str:
        return ", ".join(self.sts.policy.mx) if self.sts.policy is not None else ""

    def refuse(self, name: str) -> Refusal:
        """Enforce: MX host ``name`` matches no pattern: not tried, logged, reported."""
        self.log(f"MTA-STS policy of {self.domain} (enforce): not trying MX host {name}: it"
                 f" matches no mx pattern ({self._patterns()})")
        self.sts.record(name, result_type="validation-failure")
        return (450, "4.7.5", f"MTA-STS policy of {self.domain} (enforce): MX host {name}"
                f" matches no mx pattern")

    @defer.inlineCallbacks
    def host(self, mail_host: Any) -> Any:
        """(HostTLS, None) for MX host ``mail_host``, or (None, refusal) when it is not to
        be tried (a TLSA look-up failed, dane-only without DANE, enforce and no match)."""
        name = mail_host.name
        try:
            tls = yield self.router.tls.host(self.base, self.hop, name, self.port,
                                             self.mx_secure)
        except (DNSLookupError, DaneUnavailable) as e:
            text = e.text if isinstance(e, DNSLookupError) else str(e)
            kind = "dnssec-invalid" if isinstance(e, DNSLookupError) else "dane-required"
            self._record(TLSResult("tlsa", result_type=kind, receiving_mx_hostname=name))
            return None, (450, "4.7.5", f"TLSA lookup for {name}: {text}")
        if not self.mx:
            return tls, None
        policy = self.sts.policy
        if tls.tlsa is not None:  # usable authenticated TLSA records: DANE decides
            return self._observed(tls, "tlsa", name), None
        if not self.sts.active or policy is None:
            return self._observed(tls, "none", name), None
        if not policy.matches(name):
            if policy.mode == "enforce":  # only when DANE was possible: see Router.route
                return None, self.refuse(name)
            self.log(f"MTA-STS policy of {self.domain} (testing): MX host {name} matches no"
                     f" mx pattern ({self._patterns()}); trying it anyway")
            return self._observed(tls, "nomatch", name), None
        if policy.mode == "enforce":
            tls = replace(tls, level="secure", names=[name.lower().rstrip(".")], tlsa=None,
                          source=f"MTA-STS policy of {self.domain} (enforce)")
        return self._observed(tls, "sts", name), None

    def _record(self, result: TLSResult) -> None:
        if self.router.store is not None and self.mx:
            self.router.store.record(self.domain, result)

    def _observed(self, tls: HostTLS, kind: str, name: str) -> HostTLS:
        """``tls`` with an observer that judges and counts the session's TLS step."""
        judge = HostTLS("secure", [name.lower().rstrip(".")], self.router.tls.store)

        def observe(result: str, chain: list[x509.Certificate], relay: str) -> None:
            ip = relay.partition("[")[2].partition("]")[0]
            problem = {"starttls-not-supported": "no STARTTLS",
                       "validation-failure": "TLS handshake failed"}.get(result, "")
            if kind == "nomatch":
                result = "validation-failure"
            elif kind == "tlsa" and not result:
                verdict = tls.judge(chain)
                result, problem = verdict.result, verdict.problem
            elif kind == "sts" and not result:
                verdict = judge.judge(chain)
                result, problem = verdict.result, verdict.problem
            if kind == "sts" and result and self.sts.policy is not None \
                    and self.sts.policy.mode == "testing":
                self.log(f"MTA-STS policy of {self.domain} (testing): {relay} fails it"
                         f" ({result}{': ' + problem if problem else ''}); delivering anyway")
            if kind == "tlsa":
                records = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex().upper()}"
                                for r in tls.tlsa or ())
                self._record(TLSResult("tlsa", records, (), result,
                                       receiving_mx_hostname=name, receiving_ip=ip))
            elif self.router.store is not None:
                self.sts.record(name, ip, result)

        return replace(tls, observe=observe)
