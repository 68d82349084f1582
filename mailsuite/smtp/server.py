"""SMTP in (port 25): the ESMTP server with local delivery, shaped like Postfix smtpd.

A subclass of Twisted's ``smtp.ESMTP`` that keeps its reply formatting and the
IMessageDelivery avatar contract, but does its own input handling to fix the defects listed in
TWISTED.md, with the reader the SMTP-family doors share (smtp/reader.py), and its own time
limits:

- ``smtpd_timeout`` is a deadline (mailsuite.deadline) for each command line and for DATA,
  which trickled bytes do not push back (``smtpd_per_request_deadline``, ``smtpd_min_data_rate``);
- on port 25 the front door (smtp/postscreen.py) tests the client before its greeting;
- pipelined commands are run strictly one after another: while a command waits on an async
  answer (portal login, recipient look-up, delivery) later input stays buffered, so replies come
  in order and MAIL+RCPT+DATA in one packet never race into 503s;
- DATA is read as a byte stream: long lines are kept (Postfix accepts them), the body never
  falls back into command mode, dots are unstuffed, CRLF becomes LF, the size is counted and
  data beyond ``message_size_limit`` discarded (552 after the final dot); only
  ``<CR><LF>.<CR><LF>`` ends the data (no SMTP smuggling);
- STARTTLS, AUTH PLAIN/LOGIN and the submission rules (587/465) are ``smtp/auth.py``'s; MAIL
  and RCPT (the envelope, checked by the avatar) are ``smtp/envelope.py``'s;
- after the final dot the message goes through the accept pipeline (mta/transaction.py: our
  Received: header, the stages, local delivery and the queue); ``250 ... queued as`` only once
  every copy is fsync'ed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite.config import Config
from mailsuite.deadline import Deadline
from mailsuite.filter.milter.smtp import SmtpMilters
from mailsuite.limits import Limits
from mailsuite.maillog import new_queue_id
from mailsuite.mta import address as addr
from mailsuite.mta.dns import MXResolver
from mailsuite.mta.quota import data_check
from mailsuite.mta.transaction import SMTP, Client, Envelope, Pipeline, Recipient
from mailsuite.net import host_of, write_now
from mailsuite.smtp.auth import SmtpAuth
from mailsuite.smtp.envelope import SmtpEnvelope, printable
from mailsuite.smtp.limits import SmtpLimits
from mailsuite.smtp.postscreen import FrontDoor, Screening
from mailsuite.smtp.reader import Body, CommandLoop, Reader, split_command
from mailsuite.smtp.restrictions import Outcome, Restrictions, request_of

log = Logger()

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)

COMMANDS = {
    b"HELO": "_cmd_helo",
    b"EHLO": "_cmd_ehlo",
    b"MAIL": "_cmd_mail",
    b"RCPT": "_cmd_rcpt",
    b"DATA": "_cmd_data",
    b"RSET": "_cmd_rset",
    b"NOOP": "_cmd_noop",
    b"QUIT": "_cmd_quit",
    b"VRFY": "_cmd_vrfy",
    b"HELP": "_cmd_help",
    b"AUTH": "_cmd_auth",
    b"STARTTLS": "_cmd_starttls",
}


def message_id(body: bytes) -> str:
    """The Message-ID header of a message (LF line ends), or '' if there is none."""
    end = body.find(b"\n\n")
    head = body if end < 0 else body[: end + 1]
    m = _MESSAGE_ID.search(head)
    if not m:
        return ""
    return b" ".join(m.group(1).split()).decode("ascii", "replace").strip("<>")


class SMTPServer(SmtpMilters, SmtpLimits, SmtpAuth, SmtpEnvelope, CommandLoop, smtp.ESMTP):
    """One SMTP session. ``factory`` gives config, portal, delivery, maillog, clock, and the
    service (smtp, submission, smtps) with its TLS; STARTTLS and AUTH are ``SmtpAuth``'s, the
    connection, rate and error limits ``SmtpLimits``'."""

    transport: Any
    _failure_text = "SMTP command failed"

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__()
        self.factory = factory
        self.host = factory.config.mail.myhostname
        self.size_limit: int = factory.config.mail.message_size_limit
        # smtpd_timeout: per command line and DATA (per read with smtpd_per_request_deadline=no)
        self._timeout: float = factory.config.mail.smtpd_timeout
        self._per_request: bool = factory.config.mail.smtpd_per_request_deadline
        self._min_rate: int = factory.config.mail.smtpd_min_data_rate
        self._deadline = Deadline(factory.clock, self.timeoutConnection)
        self.reader = Reader(factory.config.mail.line_length_limit)
        self._greeted = False
        self.client_ip = "unknown"
        self.client_name = "unknown"
        self._helo_name: str | None = None
        self._proto = "SMTP"
        self._avatar: Any = None
        self._logout: Callable[[], None] | None = None
        self._counts: dict[str, list[int]] = {}  # command -> [ok, total]
        self._command_name = ""
        self._quit = False  # QUIT, or a timeout: said in its own line, no "lost connection"
        self.secure = factory.implicit_tls
        self._screen: Screening | None = None  # port 25's pregreet test, while it runs
        self._reset_transaction()

    # --- plumbing -------------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._mail_params = addr.MailParams()
        self._recipients: list[Recipient] = []
        self._rcpt_attempts = 0
        self._queue_id: str | None = None
        self._arrival = 0.0
        self.milters_abort()
        self._instance = ""  # the policy service's instance attribute (set at MAIL)
        self._prepend: list[str] = []  # headers from PREPEND actions of the restrictions

    def _log(self, text: str) -> None:
        self.factory.maillog.write(self.factory.log_program, text)

    @property
    def client(self) -> str:
        return f"{self.client_name}[{self.client_ip}]"

    def _reply(self, code: int, text: str) -> None:
        if not _ENHANCED.match(text) and code != 354:
            text = f"{code // 100}.0.0 {text}"
        self._send(f"{code} {text}\r\n".encode("utf-8", "replace"))
        if self._command_name and code < 400 and code != 354:
            self._counts[self._command_name][0] += 1
        if code >= 400:
            self.limits_error()

    def _send(self, data: bytes) -> None:
        """Write a reply: straight to the socket of a plain TCP connection with nothing queued
        (``net.write_now``): Twisted's write() costs two epoll_ctl calls and a reactor turn per
        reply, about a sixth of the CPU of a small message on a busy MX."""
        write_now(self.transport, data)

    def _reply_lines(self, code: int, lines: list[str]) -> None:
        out = [f"{code}-{line}\r\n" for line in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
        self._send("".join(out).encode("ascii", "replace"))
        if self._command_name and code < 400:
            self._counts[self._command_name][0] += 1
        if code >= 400:  # a milter's multi-line refusal
            self.limits_error()

    def connectionMade(self) -> None:
        self._connected = True
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)
        self.client_ip = host_of(self.transport.getPeer())
        if not self.limits_connect():
            return
        self._deadline.start(self._timeout)
        self._busy = True  # input before the greeting waits, as Postfix's pre-greet buffer
        door = self.factory.front_door
        if door is not None:
            self._screen = door.begin(self.transport, self.client_ip, self.transport.getPeer().port)
        d = defer.maybeDeferred(self.factory.reverse_lookup, self.client_ip)
        d.addErrback(lambda _: "unknown")
        if self._screen is not None:  # greeted once the lookup and the test are both done
            screened = self._screen.done
            d.addCallback(lambda name: screened.addCallback(lambda _: name))
        d.addCallback(self._greet)
        d.addBoth(self._finished)

    def _greet(self, name: str) -> Any:
        if not self._connected or self.transport.disconnecting:
            return
        self.client_name = name
        self._greeted = True
        self._log(f"connect from {self.client}")
        client = Client(SMTP, self.client_ip, name, tls=self.secure)
        greeting = f"220 {self.factory.hostname} ESMTP mailsuite\r\n".encode()
        connected = self.milters_connect(client)
        if connected is None:
            self.transport.write(greeting)
            return None
        return connected.addCallback(lambda _: self.transport.write(greeting))

    def timeoutConnection(self) -> None:
        if self._busy:  # no time limit while we work (the timer stays armed: a busy MX
            self._deadline.start(self._timeout)  # would otherwise make one per message)
            return
        self.transport.write(
            f"421 4.4.2 {self.factory.hostname} Error: timeout exceeded\r\n".encode()
        )
        after = f" after {self._command_name.upper()}" if self._command_name else ""
        self._log(f"timeout{after} from {self.client}")
        self._quit = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._connected = False
        self._deadline.stop()
        self.milters_close()
        if self._screen is not None:
            self._screen.lost()
        self.limits_release()
        if self._greeted:
            if not self._quit and (self._in_data or self._busy):
                self._log(f"lost connection after {self._command_name.upper()} from {self.client}")
            stats = []
            for name, (ok, total) in self._counts.items():
                stats.append(f"{name}={ok}" if ok == total else f"{name}={ok}/{total}")
            ok = sum(c[0] for c in self._counts.values())
            total = sum(c[1] for c in self._counts.values())
            stats.append(f"commands={ok}" if ok == total else f"commands={ok}/{total}")
            self._log(f"disconnect from {self.client} {' '.join(stats)}")
        self._reset_transaction()
        self.reader.clear()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    # --- input ----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._per_request:
            self._deadline.start(self._timeout)  # Postfix's default: a time limit per read
        elif self._in_data and self._min_rate:
            self._deadline.extend(len(data) / self._min_rate, self._timeout)
        if self._screen is not None and self._screen.waiting:
            self._screen.pregreet(data)
        self.reader.buffer += data
        self._run()

    def _step(self) -> Any:
        if not self._in_data and b"\n" in self.reader.buffer:
            delay = self.limits_delay()  # smtpd_soft_error_limit reached: wait, then run it
            if delay is not None:
                return delay
        return super()._step()

    def _resumed(self) -> None:
        self._deadline.start(self._timeout)

    def _line_too_long(self) -> None:
        self._reply(500, "5.5.0 Error: line too long")

    def _command(self, line: bytes) -> Any:
        if self._per_request:  # a complete line: the next one has smtpd_timeout of its own
            self._deadline.start(self._timeout)
        if self._sasl is not None:
            return self.sasl_response(line) or True
        verb, arg = split_command(line)
        handler = COMMANDS.get(verb)
        self._command_name = verb.decode("ascii", "replace").lower() if handler else "unknown"
        self._counts.setdefault(self._command_name, [0, 0])[1] += 1
        if not verb:
            self._reply(500, "5.5.2 Error: bad syntax")
            return True
        if handler is None:
            self._reply(502, "5.5.2 Error: command not recognized")
            return True
        if not self.gate(verb):
            return True
        if verb == b"RCPT" and self._screen is not None and self._screen.refuse_rcpt(
                arg, self._sender, self._helo_name, self._reply):
            return True
        result = getattr(self, handler)(arg) or True
        self.limits_junk(verb)
        return result

    # --- session commands -----------------------------------------------------------------------

    def _cmd_helo(self, arg: bytes) -> Any:
        if not arg:
            self._reply(501, "5.5.4 Syntax: HELO hostname")
            return
        self._helo_name, self._proto = printable(arg.split()[0]), "SMTP"
        self._reset_transaction()
        return self.milters_then(self.milters_helo(self._helo_name), self._reply, 250,
                                 f"2.0.0 {self.factory.hostname}")

    def _cmd_ehlo(self, arg: bytes) -> Any:
        if not arg:
            self._reply(501, "5.5.4 Syntax: EHLO hostname")
            return
        self._helo_name, self._proto = printable(arg.split()[0]), "ESMTP"
        self._reset_transaction()
        size = f"SIZE {self.size_limit}" if self.size_limit else "SIZE"
        lines = [self.factory.hostname, "PIPELINING", size, "VRFY", *self.ehlo_extensions(),
                 "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        return self.milters_then(self.milters_helo(self._helo_name), self._reply_lines, 250,
                                 lines)

    def _cmd_rset(self, arg: bytes) -> None:
        if arg:
            self._reply(501, "5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        self._reply(250, "2.0.0 Ok")

    def _cmd_noop(self, arg: bytes) -> None:
        self._reply(250, "2.0.0 Ok")

    def _cmd_quit(self, arg: bytes) -> None:
        self._quit = True
        self.limits_release()  # the session is over (a TLS close may take longer)
        self._reply(221, "2.0.0 Bye")
        self.transport.loseConnection()

    def _cmd_vrfy(self, arg: bytes) -> None:
        if not arg:
            self._reply(501, "5.5.4 Syntax: VRFY address")
            return
        self._reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")

    def _cmd_help(self, arg: bytes) -> None:
        self._reply(214, "2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
                         " STARTTLS AUTH")

    # --- DATA ---------------------------------------------------------------------------------

    def _cmd_data(self, arg: bytes) -> Any:
        if arg:
            self._reply(501, "5.5.4 Syntax: DATA")
        elif self._sender is None:
            self._reply(503, "5.5.1 Error: need MAIL command")
        elif not self._recipients:
            if self._rcpt_attempts:
                self._reply(554, "5.5.1 Error: no valid recipients")
            else:
                self._reply(503, "5.5.1 Error: need RCPT command")
        elif self.factory.restrictions.data_checked:  # smtpd_data_restrictions
            outcome = self.factory.restrictions.check(("data",), request_of(self, "DATA"))
            if isinstance(outcome, defer.Deferred):
                return outcome.addCallback(self._data_checked).addErrback(
                    self._server_error, "DATA")
            return self._data_checked(outcome)
        else:
            self._start_data()
        return None

    def _data_checked(self, outcome: Outcome) -> None:
        self.log_restrictions(outcome, "DATA")
        if outcome.reply is None:
            self._prepend.extend(h for h in outcome.prepend if h not in self._prepend)
            self._start_data()
            return
        code, text = outcome.reply
        self._reply(code, text)
        self._log(f"{self._queue_id or 'NOQUEUE'}: reject: DATA from {self.client}: {code}"
                  f" {text}; from=<{self._sender}> proto={self._proto}"
                  f" helo=<{self._helo_name or ''}>")

    def _start_data(self) -> None:
        self._in_data = True
        self.reader.start_data(self.size_limit)
        self._reply(354, "End data with <CR><LF>.<CR><LF>")

    def _end_of_data(self, message: Body) -> Any:
        self._in_data = False
        queue_id = self._queue_id or new_queue_id()
        if message.too_big:
            self._log(
                f"{queue_id}: reject: message size {message.size} exceeds limit"
                f" {self.size_limit} from {self.client}"
            )
            self._reset_transaction()
            self._reply(552, "5.3.4 Error: message file too big")
            return True
        body = message.data
        if body[:1] not in (b"", b"\n") and not _HEADER_LINE.match(body):
            body = b"\n" + body  # no header block: keep the body out of our Received: header
        self._envelope = Envelope(
            queue_id, self._sender or "", self._recipients,
            Client(SMTP, self.client_ip, self.client_name, self._helo_name, self.auth_user,
                   tls=self.secure, protocol=self.with_protocol(self._proto)),
            self._mail_params, self._arrival)
        data = self.factory.pipeline.stamp(self._envelope, body)
        self.milters_attach(queue_id)
        if self._prepend:  # above our Received:, as Postfix's smtpd writes them
            data = "".join(f"{h}\n" for h in self._prepend).encode("utf-8", "replace") + data
        self.factory.maillog.write(  # Postfix's cleanup(8) writes it, not smtpd
            "cleanup", f"{queue_id}: message-id=<{message_id(body)}>")
        d = self._deliver(data, queue_id)
        d.addCallbacks(
            self._delivered,
            self._not_delivered,
            callbackArgs=(queue_id,),
            errbackArgs=(queue_id,),
        )
        return d

    def _deliver(self, data: bytes, queue_id: str) -> defer.Deferred[Any]:
        """The stamped message through the accept pipeline (mailsuite.mta.transaction): local
        copies straight into the mailboxes, everything else into the queue; fires once all of
        it is on disk (the 250 waits for that)."""
        return data_check(self.factory, self._envelope, len(data),  # quotas: mta/quota.py
                          lambda: self.factory.pipeline.deliver(self._envelope, data))

    def _delivered(self, results: Any, queue_id: str) -> None:
        self._reset_transaction()
        if not self._connected:
            return
        if results and not any(r.accepted for r in results):  # a stage's verdict
            self.reply_verdict(results[0].code, results[0].dsn, results[0].text)
        else:
            self.limits_delivered()
            self._reply(250, f"2.0.0 Ok: queued as {queue_id}")

    def _not_delivered(self, failure: Failure, queue_id: str) -> None:
        log.failure("delivery of {queue_id} failed", failure, queue_id=queue_id)
        self._reset_transaction()
        if self._connected:
            self._reply(451, "4.3.0 Error: queue file write error")


class SMTPFactory(protocol.ServerFactory):
    """Builds SMTPServer sessions for port 25, 587 or 465.

    ``portal`` gives anonymous clients their ``smtp.IMessageDelivery`` avatar (``None``: use
    ``delivery.avatar(None)`` directly, and no AUTH) and checks AUTH. ``clock`` (a reactor)
    drives timeouts and dates; ``reverse_lookup(ip) -> Deferred[str]`` names the client
    (``unknown`` if it has no name; tap.py binds ``reverse_lookup`` to its thread pool).
    ``service`` is ``smtp``, ``submission`` or ``smtps`` (see smtp/auth.py); ``server_tls`` (a
    mailsuite.tls.ServerTLS) enables STARTTLS; ``implicit_tls`` marks sessions that tap.py
    wraps in TLS from the first byte (465).
    """

    def __init__(
        self,
        config: Config,
        portal: Any,
        delivery: Any,
        maillog: Any,
        clock: Any,
        reverse_lookup: Callable[[str], defer.Deferred[str]],
        service: str = "smtp",
        server_tls: Any = None,
        implicit_tls: bool = False,
        policy: Any = None,
        pipeline: Pipeline | None = None,
        limits: Limits | None = None,
        front_door: bool = False,
        restrictions: Restrictions | None = None,
    ) -> None:
        """``policy``: a mailsuite.auth.policy.AuthPolicy applied to every AUTH, or None;
        ``pipeline``: the accept pipeline (None: one over ``delivery``, no stages); ``limits``:
        the server's mailsuite.limits.Limits (None: the factory's own); ``front_door``: screen
        every connection as postscreen (port 25, smtp/postscreen.py); ``restrictions``: the
        SMTP restriction lists shared by the doors (None: the factory's own, DNS through
        ``dns_resolver``)."""
        self.config = config
        self.hostname: str = config.mail.myhostname
        self.portal = portal
        self.delivery = delivery
        self.maillog = maillog
        self.clock = clock
        self.reverse_lookup = reverse_lookup
        self.service = service
        #: smtpd, or submission/smtpd and smtps/smtpd, as Debian's master.cf names them
        #: (-o syslog_name=postfix/submission): postfix/submission/smtpd[PID] in the maillog
        self.log_program = "smtpd" if service == "smtp" else f"{service}/smtpd"
        self.server_tls = server_tls
        self.implicit_tls = implicit_tls
        self.policy = policy
        self.pipeline = pipeline or Pipeline(delivery, maillog, self.hostname, clock.seconds)
        self.limits = limits or Limits(config.mail, maillog, clock)
        self.restrictions = restrictions or Restrictions(
            config.mail, delivery, clock, MXResolver(config.mail.dns_resolver, reactor=clock),
            lambda text: maillog.write("smtpd", text))
        self.front_door = FrontDoor(config.mail, self.hostname, maillog, clock,
                                    self.restrictions.blocklists) if front_door else None
        # the milters' Conversation factory (filter/milter/stage.py), None without milters
        self.milters = next((s.smtp_conversation() for s in self.pipeline.stages
                             if hasattr(s, "smtp_conversation")), None)

    def buildProtocol(self, addr: Any) -> SMTPServer:
        return SMTPServer(self)
