"""What MTA-STS changes in one delivery to a domain's MX hosts (RFC 8461 4, 5), for the SMTP
client (mailsuite.mta.relay) to apply in a few lines:

    decision = yield sts_decision(mta_sts, reports, domain, hosts)   # after the MX look-up
    if not decision.hosts:                    # enforce, and no MX host matches the policy
        return [Outcome(*decision.no_host) for _ in recipients]
    for host in decision.hosts:
        need = decision.requirement(host.name)  # None: the destination's own TLS level
        ...                                     # need.level "secure" (enforce) or "may"
        decision.record(host.name, ip, result_type)   # '' success, else RFC 8460's name

Only for delivery to the recipient domain's MX hosts: not for a relayhost or ``[host]``
next hop (the policy is about the domain's MX, as Postfix's smtp_tls_policy_maps lookup by
next-hop domain with postfix-mta-sts-resolver). DANE, when its TLSA records are authenticated,
takes precedence over MTA-STS (RFC 8461 2): the caller decides that before asking here.

The SMTP client's join (mailsuite.mta.stsroute) uses :class:`StsDecision` (the recording and
the 4.7.5 text) but filters and chooses levels itself: it must look at DANE host by host
before enforce drops a host, keeps the destination's own level in testing mode (not ``may``),
and counts a testing-mode mismatch once per session rather than per decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from mailsuite.mta.mtasts import StsPolicy, TLSRequirement, filter_hosts, tls_requirement
from mailsuite.mta.tlsrpt import TLSResult


@dataclass
class StsDecision:
    """The policy of one delivery, the MX hosts to try, and the TLS-RPT recording."""

    domain: str
    policy: StsPolicy | None
    hosts: list[Any]
    refused: list[Any] = field(default_factory=list)
    store: Any = None  # mailsuite.mta.tlsrpt.TLSReportStore, or None: nothing recorded

    @property
    def active(self) -> bool:
        return self.policy is not None and self.policy.mode != "none"

    @property
    def no_host(self) -> tuple[int, str, str]:
        """(code, dsn, text) of the Outcome when enforce leaves no host: deferred (4.7.5), as
        Postfix defers mail whose TLS policy no MX host can meet."""
        names = ", ".join(str(getattr(h, "name", h)) for h in self.refused) or "none"
        return (450, "4.7.5", f"MTA-STS policy of {self.domain} (enforce): no MX host matches"
                f" its mx patterns (MX hosts: {names})")

    def requirement(self, mx_host: str) -> TLSRequirement | None:
        return tls_requirement(self.policy, mx_host)

    def record(self, mx_host: str, receiving_ip: str = "", result_type: str = "",
               sending_ip: str = "") -> None:
        """Count one session for TLS-RPT: under the policy when one is active, else as
        no-policy-found (successes and failures alike)."""
        if self.store is None:
            return
        fields: dict[str, Any] = {"result_type": result_type, "receiving_mx_hostname": mx_host,
                                  "receiving_ip": receiving_ip, "sending_mta_ip": sending_ip}
        if self.active:
            result = TLSResult.for_sts(self.policy, **fields)
        else:
            result = TLSResult("no-policy-found", **fields)
        self.store.record(self.domain, result)


@defer.inlineCallbacks
def sts_decision(mta_sts: Any, store: Any, domain: str, hosts: Sequence[Any]) -> Any:
    """The StsDecision for mail to ``domain`` whose MX look-up gave ``hosts`` (MailHost
    objects). ``mta_sts``: mailsuite.mta.mtastscache.MtaSts, or None (MTA-STS off); ``store``:
    the TLS-RPT store or None. The MX hosts matching no pattern are counted as
    ``validation-failure`` sessions (enforce: they are not tried; testing: they are)."""
    policy = None if mta_sts is None else (yield mta_sts.policy_for(domain))
    usable, refused = filter_hosts(policy, hosts)
    decision = StsDecision(domain.rstrip(".").lower(), policy, usable, refused, store)
    for host in refused:
        decision.record(str(getattr(host, "name", host)), result_type="validation-failure")
    return decision
