"""The MTA-STS side of one delivery to a domain's MX hosts (RFC 8461 4, 5): the policy, the
hosts to try and those refused, the 4.7.5 deferral when enforce leaves none, and the TLS-RPT
recording of each session (RFC 8460). The SMTP client's join (mailsuite.mta.stsroute) makes
it: it looks at DANE host by host before enforce drops a host, keeps the destination's own
level in testing mode, and counts a testing-mode mismatch once per session.

Only for delivery to the recipient domain's MX hosts: not for a relayhost or ``[host]``
next hop (the policy is about the domain's MX, as Postfix's smtp_tls_policy_maps lookup by
next-hop domain with postfix-mta-sts-resolver).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailsuite.mta.mtasts import StsPolicy
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
