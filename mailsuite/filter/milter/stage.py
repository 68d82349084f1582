"""The milter Stage of the accept pipeline: each milter of the door's list (``smtpd_milters``
for SMTP, submission and LMTP, ``non_smtpd_milters`` for sendmail/pickup) in turn, each on the
message as the milters before it left it. One connection per message and milter: connect,
negotiate, CONNECT, HELO, MAIL, RCPT..., DATA, the headers, EOH, the body, EOM (the
modifications are applied then), QUIT.

A milter that cannot be reached, times out, or breaks the protocol gets milter_default_action
(its own ``default_action`` first): accept (the message goes on without it), tempfail (451),
reject (550) or quarantine (held), with Postfix's warning and wording.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsuite.filter.milter import protocol as p
from mailsuite.filter.milter.edit import Editor, body_chunks, headers, reply_parts
from mailsuite.filter.milter.session import MilterError, MilterSession, Settings, open_milter
from mailsuite.milterconf import Endpoint
from mailsuite.mta.accept import RemoteRecipient
from mailsuite.mta.transaction import PICKUP, Decision, Discard, Hold, Message, Verdict

#: milter_default_action after a failure (milter8.c's milter8_comm_error)
DEFAULTS: dict[str, Decision | None] = {
    "accept": None,
    "tempfail": Verdict(451, "4.7.1", "Service unavailable - try again later"),
    "reject": Verdict(550, "5.5.0", "Service unavailable"),
    "quarantine": Hold("milter default action"),
}
_STAGE_NAMES = {p.SMFIC_CONNECT: "CONNECT", p.SMFIC_HELO: "HELO", p.SMFIC_MAIL: "MAIL",
                p.SMFIC_RCPT: "RCPT", p.SMFIC_DATA: "DATA", p.SMFIC_HEADER: "END-OF-MESSAGE",
                p.SMFIC_EOH: "END-OF-MESSAGE", p.SMFIC_BODY: "END-OF-MESSAGE",
                p.SMFIC_BODYEOB: "END-OF-MESSAGE"}


class _Accepted(Exception):
    """SMFIR_ACCEPT before the end: this milter wants nothing more of this message."""


class _Decided(Exception):
    def __init__(self, decision: Decision) -> None:
        self.decision = decision


class MilterStage:
    """``smtpd`` / ``non_smtpd``: the milters (protocol.Endpoint) per door; ``default_action``
    is milter_default_action; ``hostname`` gives the j and {daemon_name} macros."""

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

    def __call__(self, message: Message) -> defer.Deferred[Decision | None] | None:
        milters = self.non_smtpd if message.envelope.client.door == PICKUP else self.smtpd
        return self._chain(message, milters) if milters else None

    @defer.inlineCallbacks
    def _chain(self, message: Message, milters: list[Endpoint]) -> Any:
        held: Hold | None = None
        for target in milters:
            decision = yield self._one(target, message)
            if isinstance(decision, Hold):
                held = held or decision
            elif decision is not None:
                return decision
        if held is not None:
            self._log(message, "milter-hold", "END-OF-MESSAGE", "milter triggers HOLD action")
        return held

    @defer.inlineCallbacks
    def _one(self, target: Endpoint, message: Message) -> Any:
        wire = None
        try:
            wire = yield self.open(self.reactor, target, self.settings)
            session = MilterSession(wire, self.settings)
            yield session.negotiate()
            return (yield self._converse(session, message))
        except _Accepted:
            return None
        except _Decided as decided:
            return decided.decision
        except (MilterError, p.ProtocolError) as e:
            text = str(e)
            warning = text if text.startswith("connect to") else f"milter {target.name}: {text}"
            self._program(message, f"warning: {warning}")
            decision = DEFAULTS[target.default_action or self.default_action]
            if isinstance(decision, Verdict):
                self._log(message, "milter-reject", "END-OF-MESSAGE",
                          f"{decision.code} {decision.dsn} {decision.text}")
            return decision
        finally:
            if wire is not None:
                session_quit(wire)

    @defer.inlineCallbacks
    def _converse(self, s: MilterSession, message: Message) -> Any:
        env, c = message.envelope, message.envelope.client
        macros = Macros(self.hostname, message)
        name = c.name if c.name != "unknown" else f"[{c.address}]"
        yield self._ask(s, message, p.SMFIC_CONNECT, p.connect_data(name, c.address, 0), macros)
        yield self._ask(s, message, p.SMFIC_HELO, p.strings(c.helo or c.name), macros)
        yield self._ask(s, message, p.SMFIC_MAIL, p.strings(f"<{env.sender}>"), macros)
        last = Verdict(550, "5.7.1", "Command rejected")
        for rcpt in list(env.recipients):
            macros.rcpt = rcpt
            refused = yield self._ask(s, message, p.SMFIC_RCPT, p.strings(f"<{rcpt.address}>"),
                                      macros, rcpt=True)
            if refused is not None:
                env.recipients.remove(rcpt)
                last = refused
        macros.rcpt = None
        if not env.recipients:
            raise _Decided(last)
        yield self._ask(s, message, p.SMFIC_DATA, b"", macros)
        yield self._content(s, message, macros)
        reply = yield self._ask(s, message, p.SMFIC_BODYEOB, b"", macros, final=True)
        editor = Editor(message, bool(s.flags & p.SMFIP_HDR_LEADSPC))
        editor.apply(reply.edits)
        if editor.quarantine is not None:
            return Hold(editor.quarantine)
        return None

    @defer.inlineCallbacks
    def _content(self, s: MilterSession, message: Message, macros: Macros) -> Any:
        timeout = self.settings.content_timeout
        lead = bool(s.flags & p.SMFIP_HDR_LEADSPC)
        for name, value in headers(message.data, lead):
            yield self._ask(s, message, p.SMFIC_HEADER, p.strings(name, value), None,
                            timeout=timeout)
        yield self._ask(s, message, p.SMFIC_EOH, b"", macros, timeout=timeout)
        for chunk in body_chunks(message.data):
            if not s.wants(p.SMFIC_BODY):
                break
            yield self._ask(s, message, p.SMFIC_BODY, chunk, None, timeout=timeout)

    @defer.inlineCallbacks
    def _ask(self, s: MilterSession, message: Message, event: bytes, data: bytes,
             macros: Macros | None, timeout: float | None = None, rcpt: bool = False,
             final: bool = False) -> Any:
        """One event and what its reply decides (raised: _Accepted, _Decided); at RCPT the
        refusal of that recipient is returned; at EOM the Reply itself."""
        pairs = macros.pairs(s.macros.get(event, "")) if macros is not None else []
        if final:
            timeout = self.settings.content_timeout
        reply = yield s.event(event, data, pairs, timeout)
        if reply is None or reply.code in (p.SMFIR_CONTINUE, p.SMFIR_SKIP):
            return reply if final else None
        where = _STAGE_NAMES[event]
        if reply.code == p.SMFIR_ACCEPT:
            if final:
                return reply
            raise _Accepted()
        if reply.code == p.SMFIR_DISCARD:
            if event in (p.SMFIC_CONNECT, p.SMFIC_HELO):
                self._program(message, "warning: milter: DISCARD action is not allowed for"
                                       " connect or helo")
                return None
            self._log(message, "milter-discard", where, "milter triggers DISCARD action")
            raise _Decided(Discard("milter"))
        verdict = _verdict(reply)
        self._log(message, "milter-reject", where, f"{verdict.code} {verdict.dsn} "
                  f"{verdict.text.splitlines()[0] if verdict.text else ''}".rstrip())
        if rcpt:
            return verdict
        raise _Decided(verdict)

    def _program(self, message: Message, text: str) -> None:
        door = message.envelope.client.door
        self.maillog.write("cleanup" if door == PICKUP else "smtpd", text)

    def _log(self, message: Message, what: str, where: str, text: str) -> None:
        env, c = message.envelope, message.envelope.client
        to = env.recipients[0].address if env.recipients else ""
        self._program(message, f"{env.queue_id}: {what}: {where} from {c.label}: {text};"
                               f" from=<{env.sender}> to=<{to}> proto={c.protocol}"
                               f" helo=<{c.helo or c.name}>")


def session_quit(wire: Any) -> None:
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


class Macros:
    """The values of Postfix's milter macros for one message (only those it knows are sent)."""

    def __init__(self, hostname: str, message: Message) -> None:
        self.hostname = hostname
        self.message = message
        self.rcpt: Any = None

    def pairs(self, names: str) -> list[tuple[str, str]]:
        out = []
        for name in names.replace(",", " ").split():
            value = self.value(name.strip("{}"))
            if value is not None:
                out.append((name, value))
        return out

    def value(self, name: str) -> str | None:
        env, c = self.message.envelope, self.message.envelope.client
        known: dict[str, str | None] = {
            "j": self.hostname, "daemon_name": self.hostname, "v": "mailsuite",
            "_": f"{c.name} [{c.address}]", "client_addr": c.address, "client_name": c.name,
            "client_ptr": c.name, "i": env.queue_id, "mail_addr": env.sender,
            "mail_host": env.sender.rpartition("@")[2] or None,
            "mail_mailer": "smtp" if env.sender else "local",
            "auth_authen": c.user,
        }
        if self.rcpt is not None:
            remote = isinstance(self.rcpt.route, RemoteRecipient)
            known.update({"rcpt_addr": self.rcpt.address,
                          "rcpt_host": self.rcpt.address.rpartition("@")[2] or None,
                          "rcpt_mailer": "smtp" if remote else "local"})
        return known.get(name)
