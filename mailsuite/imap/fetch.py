"""FETCH: parsing the attribute list, and rendering items from the raw stored bytes.

Message bytes are served exactly as stored, in their wire form (``mailsuite.wire``: CRLF line
ends, a final line end, NUL bytes sent as 0x80): no header is rebuilt, so duplicate ``Received:``
lines and raw 8-bit headers reach the client unchanged. Sections are cut from the message with
its final line end (``wire.complete``) and converted with ``wire.crlf``, so BODY[] and RFC822 are
exactly ``to_wire`` of the message, RFC822.SIZE (the store's size) is always their length, and
BODY[HEADER] + BODY[TEXT] == BODY[]. Parts are found by ``message`` (as BODYSTRUCTURE finds
them), the data is formatted by ``encode``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsuite.imap import fetchfields
from mailsuite.imap.bodystructure import body_structure
from mailsuite.imap.encode import envelope, format_flags, internal_date
from mailsuite.imap.message import header_fields, locate, split_message
from mailsuite.store.interfaces import UnknownUID
from mailsuite.wire import complete, crlf, crlf_size


class FetchSyntaxError(ValueError):
    """The FETCH attribute list cannot be parsed (the client gets BAD)."""


class FetchRefused(Exception):
    """An item cannot be answered (BINARY of an unknown encoding): the FETCH ends with
    ``NO`` + ``reply`` (``[UNKNOWN-CTE] ...``)."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass
class Section:
    """``BODY[part.TEXT]``: ``part`` is a list of numbers, ``spec`` '', HEADER, TEXT, MIME,
    HEADER.FIELDS or HEADER.FIELDS.NOT, ``fields`` the upper-cased field names."""

    part: list[int] = field(default_factory=list)
    spec: str = ""
    fields: list[bytes] = field(default_factory=list)

    def label(self) -> bytes:
        text = ".".join(str(n) for n in self.part)
        if self.spec:
            text = f"{text}.{self.spec}" if text else self.spec
        out = text.encode("ascii")
        if self.fields:
            out += b" (" + b" ".join(self.fields) + b")"
        return out

    def needs_body(self) -> bool:
        return bool(self.part) or self.spec in ("", "TEXT")


@dataclass
class FetchItem:
    """One requested item. ``name`` is UID, FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE,
    BODY[] (``section`` set), RFC822, RFC822.HEADER or RFC822.TEXT."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False
    #: an extension's item (``ITEM_PARSERS``): its pieces from (view, uid, raw, header),
    #: after ``prepare(view, uid, raw)`` (slow work, in a thread) when set; ``wants`` "body" or
    #: "header" (what it reads of the message), ``seen``: it sets \Seen
    render: Callable[[Any, int, bytes | None, bytes], list[Piece]] | None = None
    prepare: Callable[[Any, int, bytes | None], Awaitable[None]] | None = None
    wants: str = ""
    seen: bool = False

    def sets_seen(self) -> bool:
        return self.seen or (self.name in ("BODY[]", "RFC822", "RFC822.TEXT") and not self.peek)

    def needs_body(self) -> bool:
        if self.render is not None:
            return self.wants == "body"
        if self.name == "BODY[]":
            assert self.section is not None
            return self.section.needs_body()
        return self.name in ("RFC822", "RFC822.TEXT", "BODY", "BODYSTRUCTURE")

    def needs_header(self) -> bool:
        return self.wants == "header" or self.name in ("ENVELOPE", "RFC822.HEADER", "BODY[]")


_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = {
    "UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "RFC822", "RFC822.HEADER",
    "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "MODSEQ",
}
_BODY_RE = re.compile(rb"(BODY\.PEEK|BODY)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?", re.IGNORECASE)
#: the length of a partial given as ``<offset>`` alone: to the end (RFC 3501 and 9051 want
#: ``<offset.length>``; Dovecot takes the offset alone, and imaptest's fetch-binary-mime-base64
#: asks ``BINARY.PEEK[5]<15>``)
TO_END = 1 << 62


def parse_partial(offset: bytes | None, length: bytes | None) -> tuple[int, int] | None:
    """``<offset.length>`` (or ``<offset>``: to the end) as (offset, length); None without."""
    if offset is None:
        return None
    if length is None:
        return int(offset), TO_END
    if int(length) == 0:
        raise FetchSyntaxError("partial length must be positive")
    return int(offset), int(length)


_ATOM_RE = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_RE = re.compile(
    rb"((?:\d+\.)*\d+)?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?\s*(?:\((.*)\))?\Z",
    re.IGNORECASE | re.DOTALL,
)
# A quoted name runs to its closing quote or the end (group 2 tells which): an unclosed quote is
# read once, not again from every quote inside it (quadratic: 13 s for a 64 KB command line).
_FIELD_RE = re.compile(rb'"((?:[^"\\]|\\.)*)("?)|([^\s()"]+)')


def _unliteral(text: bytes) -> bytes:
    """Field names sent as literals (``{4}From``, assembled by the server) as plain atoms."""
    return re.sub(rb"\{(\d{1,6})\+?\}", lambda m: b"", text) if b"{" in text else text


def parse_section(text: bytes) -> Section:
    m = _SECTION_RE.match(text.strip())
    if not m:
        raise FetchSyntaxError(f"bad section {text!r}")
    part = [int(n) for n in m.group(1).split(b".")] if m.group(1) else []
    if any(n < 1 for n in part):
        raise FetchSyntaxError("part numbers start at 1")
    spec = (m.group(2) or b"").decode("ascii").upper()
    if spec == "MIME" and not part:
        raise FetchSyntaxError("MIME needs a part number")
    fields: list[bytes] = []
    if spec.startswith("HEADER.FIELDS"):
        if m.group(3) is None:
            raise FetchSyntaxError("HEADER.FIELDS needs a list")
        found = _FIELD_RE.findall(_unliteral(m.group(3)))
        if any(not (closed or a) for _, closed, a in found):
            raise FetchSyntaxError("unclosed quote in a field list")
        fields = [(q or a).upper() for q, _, a in found]
        if not fields:
            raise FetchSyntaxError("empty field list")
    elif m.group(3) is not None:
        raise FetchSyntaxError(f"bad section {text!r}")
    return Section(part, spec, fields)


#: the FETCH attributes of extensions (binary.py, preview.py, threadid.py; plain atoms through
#: ``register_atom``: objectid.py's EMAILID, savedate.py's SAVEDATE), each a parser
#: ``(text, pos) -> (FetchItem with render set, end) | None`` tried first at every item
ITEM_PARSERS: list[Callable[[bytes, int], tuple[FetchItem, int] | None]] = []


def register_atom(name: str, fn: Callable[[Any, int], bytes]) -> None:
    """A FETCH item that is one atom (any case) answered by ``fn(view, uid)`` with no message
    read (EMAILID, SAVEDATE): its parser in ``ITEM_PARSERS``."""
    pattern = re.compile(re.escape(name.encode("ascii")) + rb"(?![A-Za-z0-9.])", re.IGNORECASE)

    def render(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
        return [fn(view, uid)]

    def parse(text: bytes, pos: int) -> tuple[FetchItem, int] | None:
        m = pattern.match(text, pos)
        return None if m is None else (FetchItem(name, render=render), m.end())

    ITEM_PARSERS.append(parse)


def _extension_item(text: bytes, pos: int) -> tuple[FetchItem, int] | None:
    for parser in ITEM_PARSERS:
        found = parser(text, pos)
        if found is not None:
            return found
    return None


def parse_fetch_items(text: bytes) -> list[FetchItem]:
    """Parse ``(UID BODY.PEEK[HEADER.FIELDS (From)]<0.100>)``, a macro, or a single item.

    RFC822.PEEK (Outlook, any case) is read as ``BODY.PEEK[]`` answered with the RFC822 label.
    """
    text = text.strip()
    if text.upper() in (b"ALL", b"FAST", b"FULL"):
        return [FetchItem(n) for n in _MACROS[text.upper().decode()]]
    if not text:
        raise FetchSyntaxError("missing items")
    if text.startswith(b"("):
        if not text.endswith(b")"):
            raise FetchSyntaxError("unbalanced parenthesis")
        text = text[1:-1].strip()
        if not text:  # "(" fetch-att *(SP fetch-att) ")": one at least (RFC 3501, 9051)
            raise FetchSyntaxError("no items in the list")
    items: list[FetchItem] = []
    pos = 0
    while pos < len(text):
        extra = _extension_item(text, pos)
        if extra is not None:
            items.append(extra[0])
            pos = extra[1]
            if pos < len(text) and text[pos : pos + 1] != b" ":
                raise FetchSyntaxError(f"unexpected {text[pos:pos + 20]!r}")
            while text[pos : pos + 1] == b" ":
                pos += 1
            continue
        m = _BODY_RE.match(text, pos)
        if m:
            peek = m.group(1).upper() == b"BODY.PEEK"
            partial = parse_partial(m.group(3), m.group(4))
            items.append(FetchItem("BODY[]", parse_section(m.group(2)), partial, peek))
        else:
            m = _ATOM_RE.match(text, pos)
            if not m:
                raise FetchSyntaxError(f"unexpected {text[pos:pos + 20]!r}")
            name = m.group(0).decode("ascii").upper()
            if name == "RFC822.PEEK":
                items.append(FetchItem("RFC822", peek=True))
            elif name in _SIMPLE:
                items.append(FetchItem(name))
            else:
                raise FetchSyntaxError(f"{name} is not supported")
        pos = m.end()
        if pos < len(text) and text[pos : pos + 1] != b" ":
            raise FetchSyntaxError(f"unexpected {text[pos:pos + 20]!r}")
        while text[pos : pos + 1] == b" ":
            pos += 1
    return items


@dataclass(frozen=True)
class FetchPlan:
    """A parsed FETCH item list with what it asks of the store, worked out once per distinct
    list (clients send the same list over and over): shared, never changed."""

    items: tuple[FetchItem, ...]
    need_body: bool
    need_header: bool
    has_flags: bool
    sets_seen: bool


@functools.lru_cache(maxsize=256)
def fetch_plan(text: bytes, uid: bool) -> FetchPlan:
    """``parse_fetch_items(text)``, with UID first for ``UID FETCH`` when not asked for."""
    items = parse_fetch_items(text)
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))
    return FetchPlan(
        tuple(items),
        any(i.needs_body() for i in items),
        any(i.needs_header() for i in items),
        any(i.name == "FLAGS" for i in items),
        any(i.sets_seen() for i in items),
    )


def section_bytes(raw: bytes, section: Section) -> bytes:
    """The bytes (LF form) of ``section`` of the message ``raw``."""
    if not section.part:
        header, body = split_message(raw)
        entity_header, inner = header, raw
    else:
        located = locate(raw, section.part)
        if located is None:
            return b""
        entity_header, inner = located
        if section.spec == "MIME":
            return entity_header
        if section.spec == "":
            return inner
        header, body = split_message(inner)
    if section.spec == "":
        return raw
    if section.spec == "TEXT":
        return body
    if section.spec == "HEADER":
        return header
    wanted = set(section.fields)
    keep = section.spec == "HEADER.FIELDS"
    chosen = [raw_field for name, raw_field in header_fields(header) if (name in wanted) == keep]
    return b"".join(chosen) + b"\n"


class WireSlice:
    """``crlf(data[start:end])`` without making it: a body literal written in chunks."""

    __slots__ = ("data", "end", "size", "start")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end
        self.size = crlf_size(data, start, end)

    def chunks(self, chunk: int = 65536) -> Iterator[bytes]:
        pos = self.start
        while pos < self.end:
            stop = min(pos + chunk, self.end)
            if self.data[stop - 1 : stop] == b"\r" and stop < self.end:
                stop += 1  # never split a stored CRLF: each chunk is converted on its own
            yield crlf(self.data[pos:stop])
            pos = stop


Piece = bytes | WireSlice


def _literal_pieces(label: bytes, data: bytes | WireSlice) -> list[Piece]:
    size = data.size if isinstance(data, WireSlice) else len(data)
    return [label + b" {%d}\r\n" % size, data]


def _whole_literal(label: bytes, raw: bytes, start: int) -> list[Piece]:
    """``raw[start:]`` as a literal: converted now when small (one pass; its length is the
    size), else a ``WireSlice`` streamed later."""
    if len(raw) - start < STREAM_MIN // 2:
        return _literal_pieces(label, crlf(raw[start:] if start else raw))
    return _literal_pieces(label, WireSlice(raw, start, len(raw)))


def render_section(item: FetchItem, raw: bytes | None, header: bytes) -> list[Piece]:
    """``BODY[...]<o> {n}\\r\\n...`` or ``RFC822... {n}...`` for one message (``raw`` and
    ``header`` as stored; the whole message's ``RFC822`` / ``BODY[]`` is ``wire.to_wire(raw)``).
    Whole-message and TEXT literals are converted at once when small, else come as a
    ``WireSlice`` (streamed, not copied)."""
    raw = complete(raw) if raw is not None else None
    if item.name == "RFC822":
        assert raw is not None
        return _whole_literal(b"RFC822", raw, 0)
    header = split_message(complete(header))[0]  # a store may not know CRLF blank lines
    if item.name == "RFC822.HEADER":
        return _literal_pieces(b"RFC822.HEADER", crlf(header))
    if item.name == "RFC822.TEXT":
        assert raw is not None
        start = len(split_message(raw)[0])
        return _whole_literal(b"RFC822.TEXT", raw, start)
    assert item.section is not None
    label = b"BODY[" + item.section.label() + b"]"
    section = item.section
    if (
        item.partial is None
        and raw is not None
        and not section.part
        and section.spec in ("", "TEXT")
    ):
        start = 0 if section.spec == "" else len(split_message(raw)[0])
        return _whole_literal(label, raw, start)
    data = crlf(section_bytes(raw if raw is not None else header, section))
    if item.partial is not None:
        start, length = item.partial
        data = data[start : start + length]
        label += b"<%d>" % start
    return _literal_pieces(label, data)


# -- one FETCH over a session's view --------------------------------------------------------------
_CHUNK = 256  # messages whose headers are read in one store call
_LISTING = 1024  # ... for a listing: 1,024 look-ups in the header cache per trip to a thread
STREAM_MIN = 256 * 1024  # responses at least this big are streamed through a producer


def _fetch_item(
    view: Any, uid: int, item: FetchItem, raw: bytes | None, header: bytes
) -> list[Piece]:
    if item.render is not None:
        return item.render(view, uid, raw, header)
    info = view.info(uid)
    if item.name == "UID":
        return [b"UID %d" % uid]
    if item.name == "FLAGS":
        return [b"FLAGS " + format_flags(view.flags(uid))]
    if item.name == "INTERNALDATE":
        return [b"INTERNALDATE " + internal_date(info.internal_date)]
    if item.name == "RFC822.SIZE":
        return [b"RFC822.SIZE %d" % info.size]
    if item.name == "MODSEQ":  # RFC 7162 (condstore.py)
        return [b"MODSEQ (%d)" % info.modseq]
    if item.name == "ENVELOPE":
        return [b"ENVELOPE " + envelope(header)]
    if item.name in ("BODY", "BODYSTRUCTURE"):
        assert raw is not None
        return [item.name.encode() + b" " + body_structure(raw, item.name == "BODYSTRUCTURE",
                                                           view.rev2)]  # imap/rev2.py
    return render_section(item, raw, header)


async def fetch_responses(
    view: Any,
    targets: list[tuple[int, int]],
    plan: FetchPlan,
    seen_now: set[int],
    write: Callable[[bytes], None],
    lost: Callable[[], bool],
    stream: Callable[[list[Piece]], Awaitable[None]] | None = None,
) -> bool:
    """Write one ``* n FETCH (...)`` per target as it is read; True if some message was gone.

    Messages whose \\Seen this FETCH set (``seen_now``) get FLAGS even when not asked for.
    A response of ``STREAM_MIN`` bytes or more goes to ``stream`` (a producer writing it as the
    connection drains), so a big BODY[] is never one string in memory nor one transport write.
    """
    items, need_body, need_header = plan.items, plan.need_body, plan.need_header
    with_flags = (*items, FetchItem("FLAGS"))  # for messages this FETCH set \Seen on
    missing = False
    quick = fetchfields.Listing.of(items, write, lost) if not need_body else None
    step = _LISTING if quick else _CHUNK
    for start in range(0, len(targets), step):
        chunk = targets[start : start + step]
        headers: dict[int, bytes] = {}
        if need_header and not need_body:
            headers = await fetchfields.read_headers(
                view.mailbox, [u for _, u in chunk if not view.is_expunged(u)], items
            )
        if quick and not seen_now and quick.chunk(view, chunk, headers):
            continue
        for seq, uid in chunk:
            raw = None
            if view.is_expunged(uid) and (need_body or need_header):
                # gone from the store, its EXPUNGE not yet sent here: the content cannot be read
                # any more, but what the session holds (UID, FLAGS, INTERNALDATE, RFC822.SIZE)
                # is still answered, as RFC 3501 lets a server do until the EXPUNGE is reported
                missing = True
                continue
            if need_body:
                try:
                    raw = await view.mailbox.read(uid)
                except UnknownUID:
                    missing = True
                    continue
            elif need_header and uid not in headers:
                missing = True
                continue
            header = split_message(raw)[0] if raw is not None else headers.get(uid, b"")
            if lost():
                return missing
            wanted = with_flags if uid in seen_now and not plan.has_flags else items
            for item in wanted:
                if item.prepare is not None:
                    await item.prepare(view, uid, raw)
            await _send(_response(view, seq, uid, wanted, raw, header), write, stream)
    return missing


async def _send(
    pieces: list[Piece],
    write: Callable[[bytes], None],
    stream: Callable[[list[Piece]], Awaitable[None]] | None,
) -> None:
    """One FETCH response: written at once, or streamed when it is ``STREAM_MIN`` or more."""
    size = sum(p.size if isinstance(p, WireSlice) else len(p) for p in pieces)
    if stream is not None and size >= STREAM_MIN:
        await stream(pieces)
    else:
        write(b"".join(
            p if isinstance(p, bytes) else crlf(p.data[p.start : p.end]) for p in pieces))


def _response(
    view: Any, seq: int, uid: int, wanted: Sequence[FetchItem], raw: bytes | None, header: bytes
) -> list[Piece]:
    """The pieces of one ``* n FETCH (...)`` line (slices of the stored message, unconverted)."""
    pieces: list[Piece] = [b"* %d FETCH (" % seq]
    for n, item in enumerate(wanted):
        if n:
            pieces.append(b" ")
        pieces += _fetch_item(view, uid, item, raw, header)
    pieces.append(b")\r\n")
    return pieces
