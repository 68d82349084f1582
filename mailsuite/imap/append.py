"""APPEND (RFC 3501 6.3.11), UIDPLUS APPENDUID (RFC 4315), MULTIAPPEND (RFC 3502), APPENDLIMIT
(RFC 7889) and literal8 messages (``~{n}``, RFC 3516 4.4).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``): the message
literals have been read whole by ``reader.CommandReader`` (each at most ``append_limit``, refused
with [TOOBIG] before it is read) before the command runs. Several messages in one APPEND go to
the store's ``append_messages``: all of them or none. A missing mailbox is ``NO [TRYCREATE]``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import (
    Cursor,
    ParseError,
    encode_mailbox,
    parse_date_time,
    parse_flag_list,
)
from mailsuite.imap.reader import append_limit
from mailsuite.imap.selected import uid_set
from mailsuite.imap.session import states
from mailsuite.store.interfaces import MailboxNotFound

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

Message = tuple[bytes, frozenset[str], datetime | None]


def parse_message(args: Cursor) -> Message:
    """``[flag-list SP] [date-time SP] literal`` (or literal8 ``~{n}``) of an APPEND."""
    flags: frozenset[str] = frozenset()
    when = None
    if args.peek() == b"(":
        flags = parse_flag_list(args.paren_list())
        args.sp()
    if args.peek() == b'"':
        when = parse_date_time(args.string())
        args.sp()
    if args.peek() == b"~":  # literal8: the message may hold NUL bytes
        args.pos += 1
        if args.peek() != b"{":
            raise ParseError("bad literal8")
    elif args.peek() != b"{":
        raise ParseError("the message must be a literal")
    return bytes(args.string()), flags, when


class AppendCommands(_Base):
    def own_capabilities(self) -> dict[bytes, Any]:
        if self.state == "unauth":
            return {b"MULTIAPPEND": None}
        return {b"MULTIAPPEND": None, b"APPENDLIMIT": [b"%d" % append_limit(self.config)]}

    @states("auth", "select")
    async def cmd_APPEND(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        messages: list[Message] = []
        while not args.at_end():  # RFC 3502: one or more messages
            args.sp()
            messages.append(parse_message(args))
        if not messages:
            raise ParseError("APPEND needs a message")
        if any(not data for data, _, _ in messages):
            self.sendNegativeResponse(tag, b"Can't save a zero byte message.")
            return
        try:
            validity, uids = await self.account.append(name, messages, self.recent)
        except MailboxNotFound:
            self.sendNegativeResponse(
                tag, b"[TRYCREATE] Mailbox doesn't exist: " + encode_mailbox(name)
            )
            return
        self.sendPositiveResponse(
            tag, b"[APPENDUID %d %s] Append completed." % (validity, uid_set(list(uids)))
        )
