"""UTF8=ACCEPT (RFC 6855): ``Utf8Commands``, its ENABLE hook for ``IMAPServer``, and the APPEND
``UTF8 (~{n})`` form.

After ``ENABLE UTF8=ACCEPT`` (in the authenticated state only, RFC 6855 3; refused, so not in
``* ENABLED``, while a mailbox is selected):

- mailbox names are UTF-8 both ways instead of modified UTF-7 (``utf8_names``: the command
  cursor's ``utf8`` reads them, ``parser.encode_mailbox(name, utf8)`` writes them): a name that
  is not UTF-8 is BAD, and ``&`` is just a character;
- quoted strings may hold UTF-8 (the parser takes any byte but CR, LF, ``"`` and ``\\`` in
  them, before and after);
- SEARCH with a CHARSET is BAD (RFC 6855 3: the client must not label what is UTF-8 already).

``APPEND mailbox [flags] [date] UTF8 (~{n}<message>)`` takes a message that may have UTF-8
headers (RFC 6855 4); ``Cursor.literal8`` reads the ``~{n}`` (the command reader has read the data:
it keeps the ``~`` in front of the ``{n}`` it assembles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor, ParseError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

UTF8_ACCEPT = b"UTF8=ACCEPT"


def utf8_message(args: Cursor) -> bytes:
    """APPEND's ``UTF8 (~{n}...)`` (RFC 6855 4): the message."""
    if args.atom().upper() != b"UTF8":
        raise ParseError("expected the message or UTF8")
    args.sp()
    if args.peek() != b"(":
        raise ParseError("expected (")
    args.pos += 1
    data = args.literal8()
    if args.peek() != b")":
        raise ParseError("expected )")
    args.pos += 1
    return data


class Utf8Commands(_Base):
    """UTF8=ACCEPT for ``IMAPServer``: ``utf8_names`` once enabled."""

    utf8_names = False

    def own_capabilities(self) -> dict[bytes, Any]:
        return {} if self.state == "unauth" else {UTF8_ACCEPT: None}

    def enable_UTF8_ACCEPT(self) -> bool:
        if self.state != "auth":
            return False
        self.utf8_names = True
        return True

    def search_charset_refused(self, tag: bytes, charset: str | None) -> bool:
        """SEARCH CHARSET after UTF8=ACCEPT: BAD (RFC 6855 3), unless IMAP4rev2 is on too
        (RFC 9051 6.4.4 allows it; rev2.py)."""
        if charset is None or self.enabled & {UTF8_ACCEPT, b"IMAP4REV2"} != {UTF8_ACCEPT}:
            return False
        self.sendBadResponse(tag, b"SEARCH CHARSET is not allowed after ENABLE UTF8=ACCEPT.")
        return True
