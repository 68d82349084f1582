"""The milter Stage of the accept pipeline. ``smtpd_milters`` serve SMTP, submission and LMTP
(mailsuite's LMTP door takes mail in from outside, as smtpd does), ``non_smtpd_milters`` the
sendmail pickup.

An SMTP session holds its own Conversation from its connection on (``smtp_conversation``: the
milters answer CONNECT, HELO, MAIL and RCPT at those commands, as Postfix's smtpd_milters do)
and hands it over for its message (``attach``); the stage then sends the message part (DATA to
EOM) before the 250. For LMTP and the pickup the stage has the whole conversation for each
message (Postfix's cleanup does so for non_smtpd_milters): connection, the envelope events,
the message, QUIT.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsuite.filter.milter.conversation import Conversation
from mailsuite.filter.milter.session import Settings, open_milter
from mailsuite.milterconf import Endpoint
from mailsuite.mta.transaction import PICKUP, Client, Decision, Message


class MilterStage:
    """``smtpd`` / ``non_smtpd``: the milters per door; ``default_action`` is
    milter_default_action; ``hostname`` gives the j and {daemon_name} macros."""

    def __init__(self, smtpd: list[Endpoint], non_smtpd: list[Endpoint],
                 settings: Settings, default_action: str, reactor: Any, maillog: Any,
                 hostname: str) -> None:
        self.smtpd, self.non_smtpd = smtpd, non_smtpd
        self.settings = settings
        self.default_action = default_action
        self.reactor = reactor
        self.maillog = maillog
        self.hostname = hostname
        self.open = open_milter  # (reactor, Endpoint, Settings) -> Deferred[MilterProtocol]
        self.attached: dict[str, Conversation] = {}  # queue id -> an SMTP session's

    def smtp_conversation(self) -> Any:
        """For an SMTP session: a factory of its Conversation, or None without smtpd_milters."""
        if not self.smtpd:
            return None
        return lambda client: Conversation(self, self.smtpd, client)

    def attach(self, queue_id: str, conversation: Conversation) -> None:
        """The SMTP session's conversation goes on with the message ``queue_id``."""
        self.attached[queue_id] = conversation

    def __call__(self, message: Message) -> defer.Deferred[Decision | None] | None:
        env = message.envelope
        ongoing = self.attached.pop(env.queue_id, None)
        if ongoing is not None:
            return ongoing.content(message)
        milters = self.non_smtpd if env.client.door == PICKUP else self.smtpd
        return self._whole(message, milters) if milters else None

    @defer.inlineCallbacks
    def _whole(self, message: Message, milters: list[Endpoint]) -> Any:
        env = message.envelope
        c = env.client
        if c.door == PICKUP:  # as Postfix's cleanup tells non_smtpd_milters
            c = Client(c.door, "127.0.0.1", "localhost", "localhost", c.user, c.uid, c.tls,
                       c.protocol)
        conversation = Conversation(self, milters, c)
        try:
            decision = yield conversation.open()
            if decision is None:
                decision = yield conversation.helo(c.helo or c.name)
            if decision is None:
                decision = yield conversation.mail(env.sender, env.queue_id)
            if decision is not None:
                return decision
            last = None
            for rcpt in list(env.recipients):
                refused = yield conversation.rcpt(rcpt)
                if refused is not None:
                    env.recipients.remove(rcpt)
                    last = refused
            if not env.recipients:
                return last
            return (yield conversation.content(message))
        finally:
            conversation.close()
