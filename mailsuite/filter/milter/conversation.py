"""One client's conversation with the chain of milters: a connection to each, opened with the
client's (an SMTP session's, or one message's for LMTP and the pickup), and each event sent to
each milter in turn, the first refusal ending it, as Postfix's milters.c does. The message
itself goes to one milter after the other (DATA, headers, EOH, body, EOM), each on the message
as the milters before it left it (their changes applied at their EOM).

A milter that cannot be reached, times out, or breaks the protocol gets milter_default_action
(its own ``default_action`` first): accept (the conversation goes on without it), tempfail
(451), reject (550) or quarantine (held), with Postfix's warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from mailsuite.filter.milter import protocol as p
from mailsuite.filter.milter.edit import Editor, body_chunks, headers, reply_parts
from mailsuite.filter.milter.session import MilterError, MilterProtocol, MilterSession
from mailsuite.milterconf import Endpoint
from mailsuite.mta.accept import RemoteRecipient
from mailsuite.mta.transaction import PICKUP, Client, Decision, Discard, Hold, Message, Verdict

#: milter_default_action after a failure (milter8.c's milter8_comm_error)
DEFAULTS: dict[str, Decision | None] = {
    "accept": None,
    "tempfail": Verdict(451, "4.7.1", "Service unavailable - try again later"),
    "reject": Verdict(550, "5.5.0", "Service unavailable"),
    "quarantine": Hold("milter default action"),
}
_STAGE_NAMES = {p.SMFIC_CONNECT: "CONNECT", p.SMFIC_HELO: "HELO", p.SMFIC_MAIL: "MAIL",
                p.SMFIC_RCPT: "RCPT", p.SMFIC_DATA: "DATA"}


@dataclass
class State:
    """What the macros are made of, as the conversation goes on."""

    hostname: str
    client: Client
    helo: str | None = None
    queue_id: str | None = None
    sender: str | None = None
    rcpt: Any = None  # the Recipient of the RCPT event
    recipients: list[str] = field(default_factory=list)

    def pairs(self, names: str) -> list[tuple[str, str]]:
        out = []
        for name in names.replace(",", " ").split():
            value = self.value(name.strip("{}"))
            if value is not None:
                out.append((name, value))
        return out

    def value(self, name: str) -> str | None:
        c, sender = self.client, self.sender
        known: dict[str, str | None] = {
            "j": self.hostname, "daemon_name": self.hostname, "v": "mailsuite",
            "_": f"{c.name} [{c.address}]", "client_addr": c.address, "client_name": c.name,
            "client_ptr": c.name, "i": self.queue_id, "mail_addr": sender,
            "mail_host": sender.rpartition("@")[2] or None if sender else None,
            "mail_mailer": None if sender is None else "smtp" if sender else "local",
            "auth_authen": c.user,
        }
        if self.rcpt is not None:
            remote = isinstance(self.rcpt.route, RemoteRecipient)
            known.update({"rcpt_addr": self.rcpt.address,
                          "rcpt_host": self.rcpt.address.rpartition("@")[2] or None,
                          "rcpt_mailer": "smtp" if remote else "local"})
        return known.get(name)


class _Link:
    """One milter of the chain: its session (None once it is out of the conversation), and
    whether it accepted the current message (no more events until the next one)."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.session: MilterSession | None = None
        self.wire: MilterProtocol | None = None
        self.accepted = False


class _Failed(Exception):
    def __init__(self, link: _Link, error: Exception) -> None:
        self.link, self.error = link, error


class Conversation:
    """The chain ``milters`` for ``client``; ``stage`` gives settings, reactor, log."""

    def __init__(self, stage: Any, milters: list[Endpoint], client: Client) -> None:
        self.stage = stage
        self.links = [_Link(t) for t in milters]
        self.state = State(stage.hostname, client)
        self.program = "cleanup" if client.door == PICKUP else "smtpd"
        #: a DISCARD at MAIL/RCPT: the message is taken, then discarded
        self.pending: Decision | None = None
        #: the quarantine default action of a milter that failed: every message is held
        self.always: Hold | None = None

    def hand_over(self, queue_id: str) -> None:
        """Go on with the message ``queue_id`` in the pipeline's milter stage."""
        self.stage.attach(queue_id, self)
        self.handed_over = queue_id

    handed_over: str | None = None

    def _take_back(self) -> None:
        """The message did not reach the stage (an earlier stage decided): forget it."""
        if self.handed_over is not None:
            self.stage.attached.pop(self.handed_over, None)
            self.handed_over = None

    # --- the events -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(self) -> Any:
        """Connect to every milter and tell it of the client: the first decision, or None."""
        for link in self.links:
            try:
                link.wire = yield self.stage.open(self.stage.reactor, link.target,
                                                  self.stage.settings)
                link.session = MilterSession(link.wire, self.stage.settings)
                yield link.session.negotiate()
            except (MilterError, p.ProtocolError) as e:
                decision = self._failed(link, e)
                if decision is not None:
                    return decision
        c = self.state.client
        name = c.name if c.name != "unknown" else f"[{c.address}]"
        return (yield self._event(p.SMFIC_CONNECT, p.connect_data(name, c.address, 0)))

    def helo(self, name: str) -> defer.Deferred[Decision | None]:
        self.state.helo = name
        return self._event(p.SMFIC_HELO, p.strings(name))

    def mail(self, sender: str, queue_id: str | None = None) -> defer.Deferred[Decision | None]:
        self.state.sender, self.state.queue_id = sender, queue_id
        for link in self.links:
            link.accepted = False
        return self._event(p.SMFIC_MAIL, p.strings(f"<{sender}>"))

    def rcpt(self, rcpt: Any) -> defer.Deferred[Decision | None]:
        """RCPT for one Recipient: a refusal is that recipient's alone."""
        self.state.rcpt = rcpt
        d = self._event(p.SMFIC_RCPT, p.strings(f"<{rcpt.address}>"))

        def done(decision: Decision | None) -> Decision | None:
            self.state.rcpt = None
            if decision is None:
                self.state.recipients.append(rcpt.address)
            return decision

        return d.addCallback(done)

    def abort(self) -> None:
        """SMFIC_ABORT: the transaction is over without a message (RSET, a new HELO)."""
        self._take_back()
        if self.state.sender is None:
            return
        self.state.sender, self.state.recipients, self.pending = None, [], None
        for link in self.links:
            if link.session is not None and link.wire is not None and link.wire.lost is None:
                link.wire.send(p.packet(p.SMFIC_ABORT))

    def close(self) -> None:
        self._take_back()
        for link in self.links:
            if link.wire is not None:
                _quit(link.wire)
            link.session = link.wire = None

    @defer.inlineCallbacks
    def _event(self, event: bytes, data: bytes) -> Any:
        names = self.stage.settings.macros.get(event, "")
        for link in self.links:
            if link.session is None or link.accepted:
                continue
            try:
                reply = yield link.session.event(event, data, self.state.pairs(names))
                decision = self._judge(link, event, reply)
            except (MilterError, p.ProtocolError) as e:
                decision = self._failed(link, e)
            if isinstance(decision, Discard):  # at MAIL/RCPT: taken, then discarded
                self.pending = self.pending or decision
            elif decision is not None:
                return decision
        return None

    # --- the message ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def content(self, message: Message) -> Any:
        """DATA to EOM, one milter after the other, each one's changes applied at its EOM:
        a Verdict or Discard ends it; a quarantine goes on (Hold at the end, as Postfix)."""
        self.state.queue_id, self.handed_over = message.envelope.queue_id, None
        pending, self.pending = self.pending, None
        if pending is not None:
            return pending
        held: Hold | None = None
        for link in self.links:
            if link.session is None or link.accepted:
                continue
            try:
                decision = yield self._one(link, message)
            except (MilterError, p.ProtocolError) as e:
                decision = self._failed(link, e, message)
            if isinstance(decision, Hold):
                held = held or decision
            elif decision is not None:
                return decision
        for link in self.links:
            link.accepted = False
        self.state.sender, self.state.recipients = None, []
        held = held or self.always
        if held is not None:
            self._log("milter-hold", "END-OF-MESSAGE", "milter triggers HOLD action", message)
        return held

    @defer.inlineCallbacks
    def _one(self, link: _Link, message: Message) -> Any:
        s = link.session
        assert s is not None
        content_timeout = self.stage.settings.content_timeout
        steps: list[tuple[bytes, bytes, list[tuple[str, str]]]] = [
            (p.SMFIC_DATA, b"", self._macros(p.SMFIC_DATA))]
        lead = bool(s.flags & p.SMFIP_HDR_LEADSPC)
        steps += [(p.SMFIC_HEADER, p.strings(n, v), []) for n, v in headers(message.data, lead)]
        steps.append((p.SMFIC_EOH, b"", self._macros(p.SMFIC_EOH)))
        for event, data, pairs in steps:
            timeout = None if event == p.SMFIC_DATA else content_timeout
            decision = self._judge(link, event, (yield s.event(event, data, pairs, timeout)),
                                   message)
            if decision is not None or link.accepted:
                return decision
        for chunk in body_chunks(message.data):
            if not s.wants(p.SMFIC_BODY):
                break
            reply = yield s.event(p.SMFIC_BODY, chunk, [], content_timeout)
            decision = self._judge(link, p.SMFIC_BODY, reply, message)
            if decision is not None or link.accepted:
                return decision
        reply = yield s.event(p.SMFIC_BODYEOB, b"", self._macros(p.SMFIC_BODYEOB),
                              content_timeout)
        editor = Editor(message, lead)
        editor.apply(reply.edits)
        decision = self._judge(link, p.SMFIC_BODYEOB, reply, message)
        if decision is None and editor.quarantine is not None:
            return Hold(editor.quarantine)
        return decision

    def _macros(self, event: bytes) -> list[tuple[str, str]]:
        return self.state.pairs(self.stage.settings.macros.get(event, ""))

    # --- replies ----------------------------------------------------------------------------

    def _judge(self, link: _Link, event: bytes, reply: Any,
               message: Message | None = None) -> Decision | None:
        """What a reply decides: None goes on (SMFIR_ACCEPT: this milter is done with the
        message, or the connection at CONNECT/HELO)."""
        if reply is None or reply.code in (p.SMFIR_CONTINUE, p.SMFIR_SKIP):
            return None
        where = _STAGE_NAMES.get(event, "END-OF-MESSAGE")
        if reply.code == p.SMFIR_ACCEPT:
            if event in (p.SMFIC_CONNECT, p.SMFIC_HELO):
                _quit(link.wire)
                link.session = None
            link.accepted = True
            return None
        if reply.code == p.SMFIR_DISCARD:
            if event in (p.SMFIC_CONNECT, p.SMFIC_HELO):
                self._warn(link, "DISCARD action is not allowed for connect or helo")
                return None
            self._log("milter-discard", where, "milter triggers DISCARD action", message)
            return Discard("milter")
        verdict = _verdict(reply)
        first = verdict.text.split("\n")[0]
        self._log("milter-reject", where, f"{verdict.code} {verdict.dsn} {first}".rstrip(),
                  message)
        return verdict

    def _failed(self, link: _Link, error: Exception,
                message: Message | None = None) -> Decision | None:
        text = str(error)
        if text.startswith("connect to"):
            self.stage.maillog.write(self.program, f"warning: {text}")
        else:
            self._warn(link, text)
        if link.wire is not None:
            link.wire.transport.abortConnection()
        link.session = link.wire = None
        decision = DEFAULTS[link.target.default_action or self.stage.default_action]
        if isinstance(decision, Hold):  # the session goes on; its messages are held
            self.always = decision
            return None
        if isinstance(decision, Verdict):
            self._log("milter-reject", "END-OF-MESSAGE" if message else "CONNECT",
                      f"{decision.code} {decision.dsn} {decision.text}", message)
        return decision

    def _warn(self, link: _Link, text: str) -> None:
        self.stage.maillog.write(self.program, f"warning: milter {link.target.name}: {text}")

    def _log(self, what: str, where: str, text: str, message: Message | None) -> None:
        s = self.state
        if message is not None:
            env = message.envelope
            queue_id, sender = env.queue_id, env.sender
            to = env.recipients[0].address if env.recipients else ""
        else:
            queue_id, sender = s.queue_id or "NOQUEUE", s.sender or ""
            to = s.rcpt.address if s.rcpt is not None else ""
        c = s.client
        parts = [f"from=<{sender}>"] if s.sender is not None or message else []
        parts += [f"to=<{to}>"] if to else []
        parts += [f"proto={c.protocol}", f"helo=<{s.helo or c.helo or c.name}>"]
        self.stage.maillog.write(self.program, f"{queue_id}: {what}: {where} from {c.label}:"
                                               f" {text}; {' '.join(parts)}")


def _quit(wire: Any) -> None:
    if wire is None:
        return
    try:
        if wire.lost is None:
            wire.send(p.packet(p.SMFIC_QUIT))
        wire.transport.loseConnection()
    except MilterError:
        pass


def _verdict(reply: Any) -> Verdict:
    if reply.code == p.SMFIR_REPLYCODE:
        text = p.check_replycode(p.split_strings(reply.data)[0])
        code, dsn, rest = reply_parts(text)
        return Verdict(code, dsn, rest)
    if reply.code == p.SMFIR_TEMPFAIL:
        return Verdict(451, "4.7.1", "Service unavailable - try again later")
    if reply.code == p.SMFIR_SHUTDOWN:
        return Verdict(421, "4.7.0", "Service unavailable - closing connection")
    if reply.code == p.SMFIR_REJECT:
        return Verdict(550, "5.7.1", "Command rejected")
    raise MilterError(f"unexpected filter response"
                      f" {p.REPLY_NAMES.get(reply.code, '(unknown filter reply)')}")
