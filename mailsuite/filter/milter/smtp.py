"""The SMTP server's side of the milters (a mixin of mailsuite.smtp.server.SMTPServer): the
session's Conversation, opened at connect, asked at HELO/EHLO, MAIL and RCPT before the
server's 250 (a refusal is that command's reply, as Postfix's smtpd_milters give it; one at
CONNECT answers each HELO, MAIL and RCPT of the session), aborted
by RSET or a new HELO, handed to the pipeline's milter stage for the message, closed with the
connection. Each ``milters_*`` returns None when there are no milters: the server goes on at
once, without a Deferred.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from mailsuite.mta.transaction import Decision, Verdict


class SmtpMilters:
    factory: Any
    _reply: Callable[[int, str], None]
    _reply_lines: Callable[[int, list[str]], None]
    _milters: Any = None  # the session's Conversation

    _milters_denied: Decision | None = None  # the refusal at CONNECT

    def milters_connect(self, client: Any) -> defer.Deferred[None] | None:
        """Open the conversation; a refusal at CONNECT is kept and given to each HELO, MAIL
        and RCPT (Postfix greets, then answers those with it)."""
        make = getattr(self.factory, "milters", None)
        if make is None:
            return None
        self._milters = make(client)

        def decided(decision: Decision | None) -> None:
            self._milters_denied = decision  # a Verdict (the conversation keeps a Hold)

        return self._milters.open().addCallback(decided)

    def milters_helo(self, name: str) -> defer.Deferred[Decision | None] | None:
        if self._milters_denied is not None:
            return defer.succeed(self._milters_denied)
        return None if self._milters is None else self._milters.helo(name)

    def milters_mail(self, sender: str, queue_id: str | None) -> Any:
        if self._milters_denied is not None:
            return defer.succeed(self._milters_denied)
        if self._milters is None:
            return None
        state = self._milters.state  # {auth_authen}: the user is known by now
        state.client = dataclasses.replace(state.client, user=getattr(self, "auth_user", None))
        return self._milters.mail(sender, queue_id)

    def milters_rcpt(self, rcpt: Any) -> defer.Deferred[Decision | None] | None:
        if self._milters_denied is not None:
            return defer.succeed(self._milters_denied)
        return None if self._milters is None else self._milters.rcpt(rcpt)

    def milters_abort(self) -> None:
        if self._milters is not None:
            self._milters.abort()

    def milters_attach(self, queue_id: str) -> None:
        if self._milters is not None:
            self._milters.hand_over(queue_id)

    def milters_close(self) -> None:
        if self._milters is not None:
            conversation, self._milters = self._milters, None
            conversation.close()

    def milters_then(self, asked: defer.Deferred[Decision | None] | None,
                     go_on: Callable[..., Any], *args: Any) -> Any:
        """``go_on(*args)`` once the milters let the command through, else their reply."""
        if asked is None:
            return go_on(*args)

        def decided(decision: Decision | None) -> Any:
            if decision is None:
                return go_on(*args)
            self.milter_refused(decision)
            return None

        return asked.addCallback(decided)

    def milter_refused(self, decision: Decision) -> None:
        """A milter's refusal as the command's reply (a multi-line one whole)."""
        if isinstance(decision, Verdict):  # not a Discard: taken (Conversation.pending)
            self.reply_verdict(decision.code, decision.dsn, decision.text)

    def reply_verdict(self, code: int, dsn: str, text: str) -> None:
        """A refusal as the reply; a multi-line one (LF-separated ``text``) whole."""
        lines = f"{dsn} {text}".split("\n")
        if len(lines) > 1:
            self._reply_lines(code, lines)
        else:
            self._reply(code, lines[0])
