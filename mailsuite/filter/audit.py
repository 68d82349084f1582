"""Audit rules over what people wrote (``[audit] rules``): a stage of the accept pipeline.

For each message the stage works out its direction (``outbound``: from our users, that is
authenticated SMTP, a client in mynetworks or local submission; ``inbound``: to one of our
domains from anyone else), and if a rule of that scope (or ``both``) is there, decodes the
message (mimetext.py) and runs the rules on its text (auditrules.py), in the thread pool: the
reactor never waits on a big message. Each hit is one maillog line::

    cleanup[pid]: audit: QUEUEID: rule=NAME action=HOLD from=<s> to=<r> part=2 match="..."

(``to``: the first recipient, as Postfix's header_checks lines; ``part``: the IMAP part
number, ``HEADER`` for the message's header; ``match``: the matched text, at most 40
characters). Then the strongest action wins: REJECT (550 5.7.1, nothing is delivered) over
HOLD (the message is kept in the hold queue) over BCC and WARN; every BCC of the hits adds its
compliance address as a blind copy (filter/bcc.add_copy: not a second time, not itself
copied or audited again; a held message keeps them for its release).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.internet import defer

from mailsuite.filter import mimetext
from mailsuite.filter.auditrules import STRENGTH, Hit, Rule, match, parse_rules
from mailsuite.filter.bcc import add_copy
from mailsuite.tablefile import TableFile
from mailsuite.mta.transaction import LMTP, PICKUP, Decision, Envelope, Hold, Message, Verdict
from mailsuite.net import Network, in_networks

MATCH_SHOWN = 40
LIMITS = mimetext.Limits()
REJECT_TEXT = "Message content rejected"


def direction(envelope: Envelope, mynetworks: list[Network],
              local_domains: Collection[str]) -> str | None:
    """``outbound``, ``inbound`` or None (neither: relayed for no user of ours). LMTP hands
    in mail for our mailboxes from the MTA in front: inbound."""
    if from_our_users(envelope, mynetworks):
        return "outbound"
    for r in envelope.recipients:
        if r.address.rpartition("@")[2].lower().rstrip(".") in local_domains:
            return "inbound"
    return None


def from_our_users(envelope: Envelope, mynetworks: list[Network]) -> bool:
    """Mail of our own users: authenticated SMTP, a client in mynetworks, local submission
    (the mail opendkim signs; LMTP's comes from the MTA in front, not from a user)."""
    c = envelope.client
    return c.door != LMTP and bool(
        c.user or c.door == PICKUP or in_networks(c.address, mynetworks))


def scan(rules: list[Rule], data: bytes, limits: mimetext.Limits = LIMITS
         ) -> list[Hit]:
    """The hits of ``rules`` on the decoded text of ``data`` (no rules: nothing decoded)."""
    if not rules:
        return []
    return match(rules, mimetext.extract(data, limits))


def decide(hits: list[Hit]) -> tuple[str | None, list[str]]:
    """The strongest action of the hits (None: no hit) and every BCC address among them."""
    if not hits:
        return None, []
    strongest = max((h.rule.action for h in hits), key=STRENGTH.__getitem__)
    return strongest, [h.rule.bcc for h in hits if h.rule.action == "BCC"]


def log_line(queue_id: str, hit: Hit, envelope: Envelope) -> str:
    rule = hit.rule
    action = f"BCC:{rule.bcc}" if rule.action == "BCC" else rule.action
    first = envelope.recipients[0].address if envelope.recipients else ""
    shown = " ".join(hit.match.split())[:MATCH_SHOWN].replace("\\", "\\\\").replace('"', '\\"')
    return (f"audit: {queue_id}: rule={rule.name} action={action} from=<{envelope.sender}>"
            f" to=<{first}> part={hit.part} match=\"{shown}\"")


class AuditStage:
    """The stage (see the module doc) over the rules file ``rules``."""

    def __init__(self, rules: TableFile[list[Rule]], maillog: Any, blocking: Any,
                 mynetworks: list[Network], local_domains: Collection[str],
                 limits: mimetext.Limits = LIMITS) -> None:
        self.rules = rules
        self.maillog = maillog
        self.blocking = blocking
        self.mynetworks = mynetworks
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.limits = limits

    @classmethod
    def from_config(cls, cfg: Any, maillog: Any, blocking: Any) -> AuditStage | None:
        """The stage of ``[audit] rules`` (None: not set); the file is read now (broken:
        TableError, unreadable: OSError)."""
        if not cfg.audit.rules:
            return None

        def warn(text: str) -> None:
            maillog.write_from_any_thread("cleanup", f"warning: {text}")

        rules = TableFile(cfg.audit.rules, parse_rules, warn)
        rules.load()
        mail = cfg.mail
        return cls(rules, maillog, blocking, mail.mynetworks, mail.mydestination)

    def __call__(self, message: Message) -> defer.Deferred[Decision | None] | None:
        way = direction(message.envelope, self.mynetworks, self.local_domains)
        if way is None:
            return None
        d = self.blocking(self._scan, way, message.data)
        return d.addCallback(self._apply, message)

    def _scan(self, way: str, data: bytes) -> list[Hit]:
        """(in the thread pool) The rules as the file is now, those of this direction, run."""
        rules = [r for r in self.rules.current() if r.scope in (way, "both")]
        return scan(rules, data, self.limits)

    def _apply(self, hits: list[Hit], message: Message) -> Decision | None:
        env = message.envelope
        for hit in hits:
            self.maillog.write("cleanup", log_line(env.queue_id, hit, env))
        action, copies = decide(hits)
        if action == "REJECT":
            return Verdict(550, "5.7.1", REJECT_TEXT)
        for address in copies:
            add_copy(message, address)
        if action == "HOLD":
            names = ", ".join(h.rule.name for h in hits if h.rule.action == "HOLD")
            return Hold(f"audit rule {names}")
        return None
