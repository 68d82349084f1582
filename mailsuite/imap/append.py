"""APPEND (RFC 3501 6.3.11, UIDPLUS APPENDUID of RFC 4315).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``): the message
literal has been read whole by ``reader.CommandReader`` (at most message_size_limit) before the
command runs; a missing mailbox is ``NO [TRYCREATE]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsuite.imap.parser import (
    Cursor,
    ParseError,
    encode_mailbox,
    parse_date_time,
    parse_flag_list,
)
from mailsuite.imap.session import states
from mailsuite.imap.utf8 import utf8_message
from mailsuite.store.interfaces import MailboxNotFound

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object


class AppendCommands(_Base):
    @states("auth", "select")
    async def cmd_APPEND(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        args.sp()
        flags: frozenset[str] = frozenset()
        when = None
        if args.peek() == b"(":
            flags = parse_flag_list(args.paren_list())
            args.sp()
        if args.peek() == b'"':
            when = parse_date_time(args.string())
            args.sp()
        if args.peek() in (b"U", b"u"):
            data = utf8_message(args)  # RFC 6855 4: UTF8 (~{n}...)
        elif args.peek() != b"{":
            raise ParseError("the message must be a literal")
        else:
            data = args.string()
        args.end()
        if not data:
            self.sendNegativeResponse(tag, b"Can't save a zero byte message.")
            return
        try:
            message = (bytes(data), flags, when)
            validity, uids = await self.account.append(name, [message], self.recent)
        except MailboxNotFound:
            self.sendNegativeResponse(
                tag, b"[TRYCREATE] Mailbox doesn't exist: " + encode_mailbox(name, self.utf8_names)
            )
            return
        self.sendPositiveResponse(tag, b"[APPENDUID %d %d] Append completed." % (validity, uids[0]))
