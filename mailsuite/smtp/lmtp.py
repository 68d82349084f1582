"""LMTP (RFC 2033) into local delivery, so another MTA (Postfix's ``mailbox_transport =
lmtp:unix:/run/mailsuite/lmtp``) can hand mail to mailsuite.

LHLO instead of EHLO; after the final ``.`` one reply per accepted recipient, in RCPT order,
each telling whether that recipient's copy is on disk (``250 2.0.0``), must be retried
(``451 4.x``) or failed for good (``550 5.x``). Recipients are resolved exactly as SMTP RCPT
resolves them (``LocalDelivery.resolve``: aliases, ~/.forward, |command, /file) and handed to
the accept pipeline (mailsuite.mta.transaction), which delivers each recipient on its own, so
each reply is that recipient's own result.
Input is read with the reader the SMTP-family doors share (smtp/reader.py, as SMTP reads it:
long body lines kept, a command line over 64 KB refused with 500 and the connection closed),
and commands are handled strictly in order (PIPELINING): lines that arrive while a look-up or
the delivery is running wait for it.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.mail import smtp

from mailsuite.config import Config
from mailsuite.limits import Limits
from mailsuite.maillog import new_queue_id
from mailsuite.mta.quota import per_recipient
from mailsuite.mta.transaction import LMTP, Client, Envelope, Pipeline, Recipient
from mailsuite.smtp.reader import Body, CommandLoop, Reader, split_command

log = Logger()

_PATH = re.compile(r"^(?:FROM|TO):\s*<([^<>]*)>(?:\s+(.*))?$", re.IGNORECASE)


LINE_LIMIT = 65536  # a command line longer than this: 500 and the connection closed


class LMTPServer(CommandLoop, protocol.Protocol):
    transport: ITransport  # set by makeConnection before connectionMade
    _failure_text = "LMTP command failed"

    def __init__(self, factory: LMTPFactory) -> None:
        self.factory = factory
        self.delivery = factory.delivery
        self.hostname = factory.hostname
        self.helo: str | None = None
        self.reader = Reader(LINE_LIMIT)
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[tuple[str, list[Any]]] = []
        self._in_data = False

    # -- plumbing -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self.client_ip = getattr(self.transport.getPeer(), "host", None) or "127.0.0.1"
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        limits = self.factory.limits  # default_process_limit sessions at once, as smtpd's
        self._entered = limits is None or limits.enter("lmtp", self.factory.process_limit)
        if not self._entered:
            limits.warn(("process_limit", "lmtp"), "master",
                        'warning: service "lmtp" has reached its process limit'
                        f' "{self.factory.process_limit}"')
            self.reply(421, "4.3.2 All server ports are busy")
            self.transport.loseConnection()
            return
        self.reply(220, f"{self.hostname} LMTP mailsuite")

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._connected = False
        self.reader.clear()
        if self._entered and self.factory.limits is not None:
            self._entered = False
            self.factory.limits.sessions.remove("lmtp")

    def reply(self, code: int, text: str) -> None:
        lines = text.split("\n")
        out = [f"{code}-{line}\r\n" for line in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
        self.transport.write("".join(out).encode("utf-8", "replace"))

    def _line_too_long(self) -> None:
        self.reply(500, "5.5.2 Error: line too long")
        self.transport.loseConnection()

    # -- commands -------------------------------------------------------------------------

    def _command(self, line: bytes) -> defer.Deferred[None] | None:
        verb, arg = (w.decode("utf-8", "surrogateescape") for w in split_command(line))
        handler = getattr(self, f"do_{verb}", None) if verb.isalpha() else None
        if handler is None:
            self.reply(500, "5.5.2 Error: command not recognized")
            return None
        result: defer.Deferred[None] | None = handler(arg)
        return result

    def do_LHLO(self, arg: str) -> None:
        if not arg:
            self.reply(501, "5.5.4 Syntax: LHLO hostname")
            return
        self.helo = arg
        self._reset()
        limit = self.factory.size_limit
        self.reply(250, "\n".join([self.hostname, "PIPELINING", f"SIZE {limit}" if limit else
                                   "SIZE", "ENHANCEDSTATUSCODES", "8BITMIME"]))

    def do_HELO(self, arg: str) -> None:
        self.reply(500, "5.5.1 Error: this is LMTP: use LHLO")

    do_EHLO = do_HELO

    def do_MAIL(self, arg: str) -> None:
        if self.helo is None:
            self.reply(503, "5.5.1 Error: send LHLO first")
            return
        if self.sender is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        m = _PATH.match(arg)
        if not m or not arg.upper().startswith("FROM"):
            self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        for param in (m.group(2) or "").split():
            key, _, value = param.partition("=")
            if key.upper() == "SIZE" and value.isdigit() and self.factory.size_limit and \
                    int(value) > self.factory.size_limit:
                self.reply(552, "5.3.4 Message size exceeds fixed limit")
                return
        self.sender = m.group(1)
        self.reply(250, "2.1.0 Ok")

    def do_RCPT(self, arg: str) -> defer.Deferred[None] | None:
        if self.sender is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return None
        m = _PATH.match(arg)
        if not m or not arg.upper().startswith("TO") or not m.group(1):
            self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return None
        address = m.group(1)
        d = self.delivery.resolve(address)

        def accepted(found: list[Any]) -> None:
            self.recipients.append((address, found))
            self.reply(250, "2.1.5 Ok")

        def refused(failure: Any) -> None:
            if failure.check(smtp.SMTPServerError):
                e = failure.value
                self.reply(e.code, e.resp if isinstance(e.resp, str) else e.resp.decode())
            else:
                log.failure("LMTP recipient look-up for {address}", failure, address=address)
                self.reply(451, f"4.3.0 <{address}>: Temporary lookup failure")

        d.addCallbacks(accepted, refused)
        return d

    def do_DATA(self, arg: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
        elif not self.recipients:
            self.reply(503, "5.5.1 Error: no valid recipients")
        else:
            self._in_data = True
            self.reader.start_data(self.factory.size_limit)
            self.reply(354, "End data with <CR><LF>.<CR><LF>")

    def do_RSET(self, arg: str) -> None:
        self._reset()
        self.reply(250, "2.0.0 Ok")

    def do_NOOP(self, arg: str) -> None:
        self.reply(250, "2.0.0 Ok")

    def do_VRFY(self, arg: str) -> None:
        self.reply(252, "2.0.0 Send some mail, I'll try my best")

    def do_QUIT(self, arg: str) -> None:
        self.reply(221, "2.0.0 Bye")
        self.transport.loseConnection()

    # -- DATA -----------------------------------------------------------------------------

    def _end_of_data(self, body: Body) -> defer.Deferred[None] | bool:
        self._in_data = False
        if body.too_big:
            for _ in self.recipients:
                self.reply(552, "5.3.4 Message size exceeds fixed limit")
            self._reset()
            return True
        return self._deliver(body.data or b"\n")

    @defer.inlineCallbacks
    def _deliver(self, data: bytes) -> Any:
        queue_id = new_queue_id()
        recipients, self.recipients = self.recipients, []
        self.factory.maillog.write(
            "lmtp", f"{queue_id}: client={self.factory.client_name(self.client_ip)}")
        client = Client(LMTP, self.client_ip, "localhost", self.helo, protocol="LMTP")
        envelope = Envelope(queue_id, self.sender or "",
                            [Recipient(address, route=found) for address, found in recipients],
                            client)
        store = getattr(self.factory.delivery, "store", None)  # quotas: mta/quota.py
        over = yield per_recipient(store, [f for _, f in recipients], len(data),
                                   self.factory.quota_reply)
        envelope.recipients = [r for r, o in zip(envelope.recipients, over, strict=True) if not o]
        taken = iter((yield self.factory.pipeline.receive(envelope, data))
                     if envelope.recipients else [])
        results = [o or next(taken) for o in over]
        for (address, _), result in zip(recipients, results, strict=False):
            if result.accepted:
                self.reply(250, f"2.0.0 <{address}> Ok: delivered as {queue_id}")
            else:
                text = result.text.partition("\n")[0]  # one line per recipient
                self.reply(result.code, f"{result.dsn} <{address}>: {text}")
        self._reset()


class LMTPFactory(protocol.ServerFactory):
    """Builds LMTP sessions over ``delivery`` (a LocalDelivery); TCP or unix socket."""

    def __init__(self, config: Config, delivery: Any, maillog: Any,
                 pipeline: Pipeline | None = None, limits: Limits | None = None) -> None:
        """``pipeline``: the accept pipeline (None: one over ``delivery``, no stages);
        ``limits``: the server's mailsuite.limits.Limits (None: no session limit)."""
        self.limits = limits
        self.process_limit = config.mail.default_process_limit
        self.hostname: str = config.mail.myhostname
        self.size_limit: int = config.mail.message_size_limit
        self.quota_reply = config.mailbox.quota_status_overquota  # mta/quota.py
        self.delivery = delivery
        self.maillog = maillog
        self.pipeline = pipeline or Pipeline(delivery, maillog, self.hostname, delivery.now)

    @staticmethod
    def client_name(ip: str) -> str:
        return f"localhost[{ip}]"

    def buildProtocol(self, addr: Any) -> LMTPServer:
        return LMTPServer(self)
