"""A stored message's MIME anatomy, read from the raw bytes as stored (LF line ends, or CRLF
where another program wrote them): header and body, header fields, multipart parts.

FETCH sections, BODYSTRUCTURE and SEARCH BODY/TEXT all cut a message here, so the part a client
is told of (its size, its number) is the part it then fetches. The ``email`` package is used
only to read a ``Content-Type`` and its boundary.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

#: MIME nesting that BODYSTRUCTURE and SEARCH BODY/TEXT open; deeper parts are opaque (a message
#: bomb stays cheap, and nothing recurses once per level of a hostile message)
MAX_MIME_DEPTH = 20
_FOLD = re.compile(rb"\r?\n(?=[ \t])")  # RFC 5322 2.2.3: unfolding removes the line break only


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including the blank line, body)."""
    for blank in (b"\n", b"\r\n"):
        if raw.startswith(blank):
            return blank, raw[len(blank) :]
    end = raw.find(b"\n\n")
    cr_end = raw.find(b"\n\r\n", 0, len(raw) if end < 0 else end)
    if cr_end >= 0:
        return raw[: cr_end + 3], raw[cr_end + 3 :]
    if end < 0:
        return raw, b""
    return raw[: end + 2], raw[end + 2 :]


def header_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """``[(NAME, raw lines incl. continuations and LF)]`` in order, duplicates kept."""
    out: list[tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            out.append((line.split(b":", 1)[0].strip().upper(), line))
    return out


def header_value(header: bytes, name: bytes) -> bytes | None:
    """The unfolded value of the first field ``name``, raw bytes; None when absent."""
    for field_name, raw in header_fields(header):
        if field_name == name.upper():
            value = raw.split(b":", 1)[1] if b":" in raw else b""
            return _FOLD.sub(b"", value).strip()
    return None


def parse_mime_header(header: bytes) -> Message:
    """The header block parsed with folded lines joined first (RFC 5322 2.2.3: unfolding removes
    the line break only), so a folded quoted parameter such as ``boundary="foo<CRLF> bar"`` is
    ``foo bar``, not a value with a line break in it."""
    return BytesHeaderParser(policy=compat32).parsebytes(_FOLD.sub(b"", header))


def boundary_of(msg: Message) -> str | None:
    """The multipart boundary of a parsed header; None when it has none or one that is not
    7-bit (RFC 2046 5.1.1: an 8-bit one is lost in the header's decoding, an RFC 2231 one is
    decoded text: no delimiter line can be matched), so the multipart is shown as text."""
    boundary = msg.get_boundary()
    return boundary if boundary and boundary.isascii() else None


def content_type(header: bytes) -> tuple[str, str | None]:
    """(content type, multipart boundary or None) of an entity's header block."""
    msg = parse_mime_header(header)
    return msg.get_content_type(), boundary_of(msg)


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, each with its header, without the delimiter lines."""
    delim = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
    )
    parts: list[bytes] = []
    start: int | None = None
    for m in delim.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            break
        start = m.end()
    return parts


def locate(raw: bytes, path: list[int]) -> tuple[bytes, bytes] | None:
    """(MIME header, body) of the entity at part number ``path``; None if there is no such part."""
    header, body = split_message(raw)
    top = True
    for number in path:
        ctype, boundary = content_type(header)
        if ctype in ("message/rfc822", "message/global") and not top:  # (RFC 9051 7.5.2)
            header, body = split_message(body)
            ctype, boundary = content_type(header)
        top = False
        if ctype.startswith("multipart/") and boundary:
            parts = split_multipart(body, boundary)
            if number > len(parts):
                return None
            header, body = split_message(parts[number - 1])
        elif number != 1:
            return None
    return header, body
