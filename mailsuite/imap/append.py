"""APPEND (RFC 3501 6.3.11), UIDPLUS APPENDUID (RFC 4315), MULTIAPPEND (RFC 3502), APPENDLIMIT
(RFC 7889), literal8 messages (``~{n}``, RFC 3516 4.4) and CATENATE (RFC 4469, ``catenate.py``).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``): the message
literals have been read whole by ``reader.CommandReader`` (each at most ``append_limit``, refused
with [TOOBIG] before it is read) before the command runs. Several messages in one APPEND go to
the store's ``append_messages``: all of them or none. A missing mailbox is ``NO [TRYCREATE]``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailsuite.imap.catenate import BadURL, catenated, parse_catenate
from mailsuite.imap.parser import (
    Cursor,
    ParseError,
    encode_mailbox,
    parse_date_time,
    parse_flag_list,
)
from mailsuite.imap.reader import append_limit
from mailsuite.imap.encode import number_set
from mailsuite.imap.session import states
from mailsuite.imap.status import STATUS_ITEMS
from mailsuite.imap.utf8 import utf8_message
from mailsuite.store.interfaces import MailboxNotFound

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

Message = tuple[bytes, frozenset[str], datetime | None]
#: RFC 7889 5: STATUS APPENDLIMIT (also in LIST RETURN (STATUS)): one limit for every mailbox
STATUS_ITEMS["APPENDLIMIT"] = lambda facts: b"%d" % append_limit(facts.session.config)
#: a message as parsed: its data, or the parts of its CATENATE
Parsed = tuple[bytes | list[tuple[bytes, bytes]], frozenset[str], datetime | None]


def parse_message(args: Cursor) -> Parsed:
    """``[flag-list SP] [date-time SP] literal`` (or literal8 ``~{n}``, or ``CATENATE (...)``)
    of an APPEND."""
    flags: frozenset[str] = frozenset()
    when = None
    if args.peek() == b"(":
        flags = parse_flag_list(args.paren_list())
        args.sp()
    if args.peek() == b'"':
        when = parse_date_time(args.string())
        args.sp()
    if args.peek() in (b"U", b"u"):
        return utf8_message(args), flags, when  # RFC 6855 4: UTF8 (~{n}...)
    if args.peek() not in (b"~", b"{"):
        if args.atom().upper() != b"CATENATE":
            raise ParseError("the message must be a literal or CATENATE")
        return parse_catenate(args), flags, when
    # a literal or literal8 (~{n}: the message may hold NUL bytes)
    return args.literal8(plain=True, error="bad literal8"), flags, when


class AppendCommands(_Base):
    def own_capabilities(self) -> dict[bytes, Any]:
        if self.state == "unauth":
            return {b"MULTIAPPEND": None}
        return {b"MULTIAPPEND": None, b"APPENDLIMIT": [b"%d" % append_limit(self.config)],
                b"CATENATE": None, b"URL-PARTIAL": None}

    @states("auth", "select")
    async def cmd_APPEND(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        parsed: list[Parsed] = []
        while not args.at_end():  # RFC 3502: one or more messages
            args.sp()
            parsed.append(parse_message(args))
        if not parsed:
            raise ParseError("APPEND needs a message")
        messages = await self._catenated(tag, parsed)
        if messages is None:
            return
        if any(not data for data, _, _ in messages):
            self.sendNegativeResponse(tag, b"Can't save a zero byte message.")
            return
        try:
            validity, uids = await self.account.append(name, messages, self.recent)
        except MailboxNotFound:
            self.sendNegativeResponse(
                tag,
                b"[TRYCREATE] Mailbox doesn't exist: " + encode_mailbox(name, self.utf8_names),
            )
            return
        self.sendPositiveResponse(
            tag, b"[APPENDUID %d %s] Append completed." % (validity, number_set(list(uids)))
        )

    async def _catenated(self, tag: bytes, parsed: list[Parsed]) -> list[Message] | None:
        """The messages with their CATENATE parts put together; None when refused (answered
        NO [BADURL url] or NO [TOOBIG])."""
        out: list[Message] = []
        for data, flags, when in parsed:
            if isinstance(data, list):
                try:
                    whole = await catenated(self, data, append_limit(self.config))
                except BadURL as e:
                    url = re.sub(rb"[^\x20-\x5c\x5e-\x7e]", b"", e.url)  # RFC 4469 url-resp-text
                    self.sendNegativeResponse(tag, b"[BADURL " + url + b"] Bad URL.")
                    return None
                if whole is None:
                    self.sendNegativeResponse(tag, b"[TOOBIG] Message too big.")
                    return None
                data = whole
            out.append((data, flags, when))
        return out
