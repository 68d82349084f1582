"""One connection to one milter: the packets on the wire (``MilterProtocol``: a reply awaited
under a time limit that SMFIR_PROGRESS starts again) and the conversation over it
(``MilterSession``: negotiation, then each event with its macros, skipped when the milter said
SMFIP_NO*, not waited for when it said SMFIP_NR_*). Every failure is a ``MilterError`` whose
text is Postfix's warning (``can't read SMFIC_BODYEOB reply packet header: Connection timed
out``); the stage turns it into milter_default_action.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.python.failure import Failure

from mailsuite.filter.milter import protocol as p
from mailsuite.milterconf import DEFAULT_MACROS, Endpoint

#: the replies that end an event (the others are modifications, or progress)
FINAL = frozenset((p.SMFIR_ACCEPT, p.SMFIR_CONTINUE, p.SMFIR_DISCARD, p.SMFIR_REJECT,
                   p.SMFIR_TEMPFAIL, p.SMFIR_REPLYCODE, p.SMFIR_SKIP, p.SMFIR_SHUTDOWN,
                   p.SMFIR_CONN_FAIL, p.SMFIC_OPTNEG))


class MilterError(Exception):
    """Talking to the milter failed; the text is Postfix's warning without ``milter NAME:``."""


@dataclass
class Reply:
    """A milter's answer to one event: the final code and its data, and the modification
    requests (code, data) that came before it (only at end of message)."""

    code: bytes
    data: bytes = b""
    edits: list[tuple[bytes, bytes]] = field(default_factory=list)


class MilterProtocol(protocol.Protocol):
    """The wire: ``send`` packets, ``expect`` the reply to an event within ``timeout``."""

    transport: Any

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.decoder = p.Decoder()
        self.waiting: defer.Deferred[Reply] | None = None
        self.event = b""
        self.reply = Reply(b"")
        self.timer: Any = None
        self.timeout = 0.0
        self.lost: str | None = None

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            raise MilterError(f"error writing command: {self.lost}")
        self.transport.write(data)

    def expect(self, event: bytes, timeout: float) -> defer.Deferred[Reply]:
        """The reply to ``event`` (just sent): modifications, then a final code."""
        name = p.COMMAND_NAMES.get(event, "(unknown MTA event)")
        if self.lost is not None:
            return defer.fail(MilterError(f"can't read {name} reply packet header: {self.lost}"))
        self.event, self.reply, self.timeout = event, Reply(b""), timeout
        self.waiting = defer.Deferred()
        self.timer = self.clock.callLater(timeout, self._timed_out)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        try:
            for code, body in self.decoder.feed(data):
                self._packet(code, body)
        except p.ProtocolError as e:
            self._fail(str(e))

    def _packet(self, code: bytes, data: bytes) -> None:
        if self.waiting is None:
            raise p.ProtocolError(f"unexpected filter response"
                                  f" {p.REPLY_NAMES.get(code, '(unknown filter reply)')}")
        if code == p.SMFIR_PROGRESS:
            self.timer.reset(self.timeout)
            return
        if code not in FINAL:
            self.reply.edits.append((code, data))
            return
        self.reply.code, self.reply.data = code, data
        self._done().callback(self.reply)

    def _done(self) -> defer.Deferred[Reply]:
        assert self.waiting is not None
        waiting, self.waiting = self.waiting, None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        return waiting

    def _fail(self, text: str) -> None:
        if self.waiting is not None:
            self._done().errback(MilterError(text))
        self.transport.abortConnection()

    def _timed_out(self) -> None:
        self.lost = "Connection timed out"
        name = p.COMMAND_NAMES.get(self.event, "(unknown MTA event)")
        self._fail(f"can't read {name} reply packet header: Connection timed out")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.lost is None:  # Postfix prints errno: 0 ("Success") at a clean EOF
            self.lost = "Success" if reason.check(error.ConnectionDone) else \
                "Connection reset by peer"
        if self.waiting is not None:
            name = p.COMMAND_NAMES.get(self.event, "(unknown MTA event)")
            self._done().errback(MilterError(f"can't read {name} reply packet header:"
                                             f" {self.lost}"))


#: the event each milter_*_macros key gives macros to
MACRO_KEYS = {
    p.SMFIC_CONNECT: "milter_connect_macros", p.SMFIC_HELO: "milter_helo_macros",
    p.SMFIC_MAIL: "milter_mail_macros", p.SMFIC_RCPT: "milter_rcpt_macros",
    p.SMFIC_DATA: "milter_data_macros", p.SMFIC_EOH: "milter_end_of_header_macros",
    p.SMFIC_BODYEOB: "milter_end_of_data_macros", p.SMFIC_UNKNOWN: "milter_unknown_command_macros",
}


@dataclass(frozen=True)
class Settings:
    """The milter_* keys that a session needs."""

    protocol: int = 6
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0
    #: event -> the names of the macros it gets (Postfix's defaults)
    macros: dict[bytes, str] = field(default_factory=lambda: {
        event: DEFAULT_MACROS[key] for event, key in MACRO_KEYS.items()})


def connect_error(failure: Failure) -> str:
    """The errno text of a failed connect, as Postfix's %m prints it."""
    value = failure.value
    os_error = getattr(value, "osError", None)
    if isinstance(os_error, int):
        return os.strerror(os_error)
    if failure.check(error.ConnectionRefusedError):
        return "Connection refused"
    if failure.check(error.TimeoutError, defer.TimeoutError):
        return "Connection timed out"
    if failure.check(error.ConnectError) and value.osError:
        return str(value.osError)
    return str(value) or value.__class__.__name__


def open_milter(reactor: Any, target: Endpoint,
                settings: Settings) -> defer.Deferred[MilterProtocol]:
    """Connect to ``target`` (milter_connect_timeout), without blocking the reactor."""
    if target.path:
        where: Any = endpoints.UNIXClientEndpoint(reactor, target.path,
                                                  timeout=settings.connect_timeout)
    else:
        where = endpoints.HostnameEndpoint(reactor, target.host, target.port,
                                           timeout=settings.connect_timeout)
    factory = protocol.Factory.forProtocol(lambda: MilterProtocol(reactor))
    d = where.connect(factory)

    def failed(failure: Failure) -> None:
        raise MilterError(f"connect to Milter service {target.name}: {connect_error(failure)}")

    return d.addErrback(failed)


class MilterSession:
    """The conversation with one milter over ``wire``: ``negotiate`` first, then ``event``s."""

    def __init__(self, wire: MilterProtocol, settings: Settings) -> None:
        self.wire = wire
        self.settings = settings
        self.actions = 0
        self.flags = 0
        self.macros = dict(settings.macros)
        self.skip: bytes | None = None  # the event type SMFIR_SKIP skips

    def negotiate(self) -> defer.Deferred[None]:
        version = self.settings.protocol
        offered = p.event_mask(version)
        self.wire.send(p.optneg(version, p.MY_ACTIONS, offered))
        d = self.wire.expect(p.SMFIC_OPTNEG, self.settings.command_timeout)

        def agreed(reply: Reply) -> None:
            if reply.code != p.SMFIC_OPTNEG or reply.edits:
                raise MilterError(f'unexpected reply "{reply.code.decode("latin-1")}" in'
                                  " initial handshake")
            try:
                theirs = p.parse_optneg(reply.data, version)
            except p.ProtocolError as e:
                raise MilterError(str(e)) from None
            # events of a protocol older than ours are not sent (as milter8.c does)
            self.flags = theirs.flags | (_no_send(offered) & ~p.event_mask(theirs.version))
            self.actions = theirs.actions
            self.macros.update(theirs.macros)

        return d.addCallback(agreed)

    def wants(self, event: bytes) -> bool:
        """Whether ``event`` is sent at all (not SMFIP_NO*, not skipped)."""
        off, _ = p.EVENT_FLAGS[event]
        return not (self.flags & off) and self.skip != event

    def event(self, event: bytes, data: bytes, macros: list[tuple[str, str]],
              timeout: float | None = None) -> defer.Deferred[Reply | None]:
        """Send ``event`` (its macros first, even when the event itself is not sent, as
        Postfix does); its Reply, or None when none is to be awaited."""
        if self.skip is not None and self.skip != event:
            self.skip = None
        if self.skip == event:
            return defer.succeed(None)
        if macros:
            self.wire.send(p.macro(event, macros))
        off, no_reply = p.EVENT_FLAGS[event]
        if self.flags & off:
            return defer.succeed(None)
        self.wire.send(p.packet(event, data))
        if self.flags & no_reply:
            return defer.succeed(None)
        d = self.wire.expect(event, timeout or self.settings.command_timeout)
        return d.addCallback(self._checked, event)

    def _checked(self, reply: Reply, event: bytes) -> Reply:
        for code, _ in reply.edits:
            needs = p.NEEDS_ACTION.get(code)
            if needs is None or event != p.SMFIC_BODYEOB:
                raise MilterError(f"unexpected filter response"
                                  f" {p.REPLY_NAMES.get(code, '(unknown filter reply)')}"
                                  f" after event {p.COMMAND_NAMES[event]}")
            if not self.actions & needs:
                raise MilterError(f"{p.REPLY_NAMES[code]} was not negotiated"
                                  f" (request mask 0x{self.actions:x})")
        if reply.code == p.SMFIR_SKIP:
            self.skip = event
        return reply


def _no_send(mask: int) -> int:
    """The SMFIP_NO* event bits of ``mask`` (Postfix's SMFIP_NOSEND_MASK part)."""
    return mask & (p.EVENT_MASKS[4])
