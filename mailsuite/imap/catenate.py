"""CATENATE (RFC 4469) for APPEND, with URL-PARTIAL (RFC 5550).

``APPEND box CATENATE (TEXT {n} URL "/INBOX;UIDVALIDITY=9/;UID=3/;SECTION=1" ...)``: the message
is the parts in order, a TEXT literal as sent, a URL's message, section (as ``BODY[section]``)
or ``;PARTIAL=offset[.length]`` of it as a FETCH sends them. URLs are IMAP URLs (RFC 5092) to
the logged-in user's own mailboxes: ``imap://[user[;AUTH=..]@]host[:port]/box...``, an absolute
path ``/box...``, or ``;UID=...`` (relative to the selected mailbox). A URL that does not parse,
names another user, is of a URLAUTH kind, has a wrong UIDVALIDITY, a missing message or part is
``NO [BADURL url]``; a result over the APPENDLIMIT ``NO [TOOBIG]``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from mailsuite.imap.fetch import FetchSyntaxError, parse_fetch_items, section_bytes
from mailsuite.imap.message import locate
from mailsuite.imap.parser import Cursor, ParseError
from mailsuite.store.interfaces import StoreError, UnknownUID
from mailsuite.wire import complete, crlf, to_wire

#: at most this many parts in one CATENATE (the command's length bounds them too)
MAX_PARTS = 1000
_SERVER = re.compile(r"imap://(?:(?P<user>[^@;/]*)(?:;AUTH=[^@/]*)?@)?[^/@]+(?P<path>/.*)\Z",
                     re.IGNORECASE | re.DOTALL)
_TAIL = (r"/?;UID=(?P<uid>[1-9]\d{0,9})(?:/;SECTION=(?P<section>[^/;]+))?"
         r"(?:/;PARTIAL=(?P<offset>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?\Z")
_ABSOLUTE = re.compile(r"/(?P<box>[^;]+?)(?:;UIDVALIDITY=(?P<validity>[1-9]\d{0,9}))?" + _TAIL,
                       re.IGNORECASE | re.DOTALL)
_RELATIVE = re.compile(_TAIL, re.IGNORECASE | re.DOTALL)


class BadURL(Exception):
    """``NO [BADURL url]``."""

    def __init__(self, url: bytes) -> None:
        super().__init__(url)
        self.url = url


def parse_catenate(args: Cursor) -> list[tuple[bytes, bytes]]:
    """``SP "(" cat-part *(SP cat-part) ")"`` after CATENATE: [(b"TEXT", data) or
    (b"URL", url)]."""
    args.sp()
    if args.peek() != b"(":
        raise ParseError("CATENATE needs a list")
    args.pos += 1
    parts: list[tuple[bytes, bytes]] = []
    while True:
        kind = args.atom().upper()
        args.sp()
        if kind == b"TEXT":
            parts.append((kind, args.literal8(plain=True, error="TEXT needs a literal")))
        elif kind == b"URL":
            parts.append((kind, args.astring()))
        else:
            raise ParseError("a CATENATE part is TEXT or URL")
        if len(parts) > MAX_PARTS:
            raise ParseError("too many CATENATE parts")
        if args.peek() == b")":
            args.pos += 1
            return parts
        args.sp()


def parse_url(url: bytes, user: str, selected: str | None) -> dict[str, Any]:
    """The mailbox, uid, uidvalidity, section and partial of an IMAP URL; BadURL if it is
    not one to a message of ``user``'s (``selected``: the mailbox ``;UID=`` is relative to)."""
    text = url.decode("ascii", "replace")
    m = _SERVER.match(text)
    if m is not None:
        if m.group("user") is not None and unquote_to_bytes(m.group("user")).decode(
                "utf-8", "replace") != user:
            raise BadURL(url)
        text = m.group("path")
    found = _ABSOLUTE.match(text) if text.startswith("/") else _RELATIVE.match(text)
    if found is None or ";URLAUTH=" in text.upper() or ";EXPIRE=" in text.upper():
        raise BadURL(url)
    parts = found.groupdict()
    if "box" in parts:
        box = unquote_to_bytes(parts["box"]).decode("utf-8", "replace")
    elif selected is None:
        raise BadURL(url)
    else:
        box = selected
    section = None
    if parts["section"] is not None:
        try:
            item = parse_fetch_items(b"BODY.PEEK[" + unquote_to_bytes(parts["section"]) + b"]")
        except FetchSyntaxError:
            raise BadURL(url) from None
        if len(item) != 1 or item[0].section is None:
            raise BadURL(url)
        section = item[0].section
    offset = int(parts["offset"]) if parts["offset"] is not None else None
    length = int(parts["length"]) if parts["length"] is not None else None
    validity = parts.get("validity")
    return {"box": box, "uid": int(parts["uid"]), "section": section, "offset": offset,
            "length": length, "validity": int(validity) if validity else None}


async def _message(session: Any, ref: dict[str, Any], url: bytes) -> bytes:
    """The stored message a URL names, read from the selected view or its own mailbox."""
    view = getattr(session, "view", None)
    if view is not None and getattr(view, "name", None) == ref["box"]:
        mailbox, opened = view.mailbox, None
    else:
        try:
            opened = mailbox = await session.account.store.open(session.account.account,
                                                                ref["box"])
            await mailbox.refresh()
        except StoreError:
            raise BadURL(url) from None
    try:
        if ref["validity"] is not None and ref["validity"] != int(mailbox.uid_validity):
            raise BadURL(url)
        try:
            raw: bytes = await mailbox.read(ref["uid"])
        except (UnknownUID, StoreError):
            raise BadURL(url) from None
        return raw
    finally:
        if opened is not None:
            opened.close()


async def catenated(session: Any, parts: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
    """The message the parts make; None when it would be over ``limit`` bytes (TOOBIG);
    BadURL for a URL that does not resolve."""
    user = session.account.account.name
    view = getattr(session, "view", None)
    selected = getattr(view, "name", None) if view is not None else None
    out: list[bytes] = []
    size = 0
    for kind, value in parts:
        if kind == b"TEXT":
            data = value
        else:
            ref = parse_url(value, user, selected)
            raw = await _message(session, ref, value)
            if ref["section"] is None:
                data = to_wire(raw)
            else:
                if ref["section"].part and locate(complete(raw), ref["section"].part) is None:
                    raise BadURL(value)  # no such part: nothing to put in
                data = crlf(section_bytes(complete(raw), ref["section"]))
            if ref["offset"] is not None:
                end = None if ref["length"] is None else ref["offset"] + ref["length"]
                data = data[ref["offset"] : end]
        size += len(data)
        if size > limit:
            return None
        out.append(data)
    return b"".join(out)
