"""FETCH of header fields through the store's header cache (``IMailbox.header_fields``).

A FETCH whose only header items are ``BODY[HEADER.FIELDS (...)]`` of the message itself (what
Thunderbird and most clients send to list a mailbox) asks the store for just those fields: the
block it gets back is rendered by ``fetch`` exactly as the whole header would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from mailsuite.imap.encode import format_flags, internal_date
from mailsuite.store import entrytable as et

#: off: every header item reads the whole header (tests compare both ways)
USE_CACHE = True


def field_names(items: Any) -> list[bytes] | None:
    """The field names a FETCH's header items ask for when they are all top-level
    ``HEADER.FIELDS`` (no part, no ``.NOT``, no ENVELOPE or whole header); else None."""
    names: dict[bytes, None] = {}
    for item in items:
        if not item.needs_header():
            continue
        section = item.section
        if item.name != "BODY[]" or section is None or section.part or \
                section.spec != "HEADER.FIELDS":
            return None
        names.update(dict.fromkeys(section.fields))
    return list(names) or None


def read_headers(mailbox: Any, uids: list[int], items: Any) -> Any:
    """Deferred[{uid: header block}] for rendering ``items``: the header cut down to the
    fields asked for when the items allow it, else the whole header."""
    names = field_names(items) if USE_CACHE else None
    if names is None:
        return mailbox.read_headers(uids)
    return mailbox.header_fields(uids, names)


_PLAIN = ("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE")
_MONTHS = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec"]
_RECENT = frozenset({"\\Recent"})
_DAYS: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (day, zone): the text around the time


class Listing:
    """The listing FETCH (UID, FLAGS, RFC822.SIZE, INTERNALDATE and at most one whole
    ``HEADER.FIELDS``, its blocks from ``header_fields``) answered a chunk of messages at a
    time: one look-up per message instead of one per item, one write per chunk, the line
    ends of the chunk made CRLF in one pass. Each line is the one ``fetch._response`` makes
    (tests compare them)."""

    def __init__(self, kinds: tuple[str, ...], label: bytes, write: Callable[[bytes], None],
                 lost: Callable[[], bool]) -> None:
        self.write, self.lost = write, lost
        self.flag_text: dict[frozenset[str], bytes] = {}
        self.info = any(kind in _INFO for kind in kinds)
        parts = [_TEMPLATE.get(kind, (_BLOCK, label.replace(b"%", b"%%") + b"{%d}\n%s"))
                 for kind in kinds]
        self.codes = tuple(code for code, _ in parts)
        self.template = b"* %d FETCH (" + b" ".join(text for _, text in parts) + b")\n"

    @classmethod
    def of(cls, items: Sequence[Any], write: Callable[[bytes], None],
           lost: Callable[[], bool]) -> Listing | None:
        """For these FETCH items, or None when they are not a listing."""
        if not USE_CACHE or any(i.name not in _PLAIN and i.name != "BODY[]" for i in items):
            return None
        sections = [i for i in items if i.name == "BODY[]"]
        if len(sections) > 1 or (sections and field_names(items) is None):
            return None
        label = b""
        if sections:
            if sections[0].partial is not None:
                return None
            label = b"BODY[" + sections[0].section.label() + b"] "
            if b"\n" in label or b"\r" in label or b"\0" in label:
                return None  # (a bare LF in a quoted field name): line ends are the chunk's
        return cls(tuple(i.name for i in items), label, write, lost)

    def chunk(self, view: Any, chunk: list[tuple[int, int]], headers: dict[int, bytes]) -> bool:
        """Write the responses of a chunk of targets (seq, uid) in one piece when each is a
        plain one (none expunged, all in ``headers``, no CR or NUL in a block); False: nothing
        written, ``fetch`` answers the chunk message by message. The values are made a column
        (an item) at a time and the template filled in by rows: no call per message."""
        uids = [uid for _, uid in chunk]
        blocks: list[Any] = list(map(headers.get, uids)) if _BLOCK in self.codes else []
        if None in blocks or any(map(view.is_expunged, uids)):  # (blocks: bytes from here)
            return False
        columns: list[Sequence[Any]] = [[seq for seq, _ in chunk]]
        infos = view.infos(uids) if self.info else []  # (a slice of the store's table)
        for kind in self.codes:
            if kind == _UID:
                columns.append(uids)
            elif kind == _BLOCK:
                columns += ([len(b) + b.count(b"\n") for b in blocks], blocks)
            elif kind == _FLAGS:
                flags = self.flags
                columns.append([flags(view, uid, info)
                                for uid, info in zip(uids, et.flag_sets(infos), strict=True)])
            elif kind == _SIZE:
                columns.append(et.sizes_of(infos))
            else:
                columns.append(list(map(date_text, infos)))
        template = self.template
        out = b"".join([template % row for row in zip(*columns, strict=True)])
        # (the template has no CR or NUL: found, they are a block's)
        if b"\r" in out or b"\0" in out or self.lost():
            return False
        self.write(out.replace(b"\n", b"\r\n"))  # wire.crlf of it all at once
        return True

    def flags(self, view: Any, uid: int, flags: frozenset[str]) -> bytes:
        flags = flags | _RECENT if view.is_recent(uid) else flags
        text = self.flag_text.get(flags)
        if text is None:
            text = self.flag_text[flags] = format_flags(flags)
        return text


_UID, _FLAGS, _SIZE, _DATE, _BLOCK = range(5)
#: each item's code and its part of the template (a BODY[...] label goes in as it is)
_TEMPLATE = {"UID": (_UID, b"UID %d"), "FLAGS": (_FLAGS, b"FLAGS %s"),
             "RFC822.SIZE": (_SIZE, b"RFC822.SIZE %d"), "INTERNALDATE": (_DATE, b"INTERNALDATE %s")}


_INFO = ("FLAGS", "RFC822.SIZE", "INTERNALDATE")


def date_text(info: Any) -> bytes:
    """``encode.internal_date(info.internal_date)``, from the index's epoch and zone (``date``,
    ``tz``) without a datetime when the store gives them."""
    date, tz = getattr(info, "date", None), getattr(info, "tz", None)
    if type(date) is not int or type(tz) is not int:
        return internal_date(info.internal_date)
    day, seconds = divmod(date + tz, 86400)
    ends = _DAYS.get((day, tz))
    if ends is None:
        t = time.gmtime(day * 86400)
        minutes = tz // 60
        ends = (b'"%2d-%s-%04d ' % (t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year),
                b' %s%02d%02d"' % (b"-" if minutes < 0 else b"+", abs(minutes) // 60,
                                   abs(minutes) % 60))
        if len(_DAYS) > 8192:
            _DAYS.clear()
        _DAYS[day, tz] = ends
    hours, rest = divmod(seconds, 3600)
    return b"%s%02d:%02d:%02d%s" % (ends[0], hours, rest // 60, rest % 60, ends[1])
