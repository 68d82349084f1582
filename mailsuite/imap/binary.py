"""BINARY (RFC 3516): ``FETCH BINARY[part]<o.n>``, ``BINARY.PEEK``, ``BINARY.SIZE[part]``.

A part's content with its Content-Transfer-Encoding undone (base64, quoted-printable; 7bit,
8bit and binary as they are, line ends CRLF); the whole message (``BINARY[]``) and parts
without one as they are. The data goes in a ``~{n}`` literal8 when it holds a NUL, else in a
plain literal (RFC 3516 4.2). An encoding the server does not know ends the FETCH with
``NO [UNKNOWN-CTE]``. RFC 3516's section is part numbers only; as Dovecot (and imaptest's
fetch-binary-mime), the other section specs of BODY[] are taken too (HEADER, HEADER.FIELDS
[.NOT], TEXT, MIME): nothing to decode there, their bytes are BODY[]'s. APPEND's literal8
messages are ``append.py``'s. The items are FETCH attributes through ``fetch.ITEM_PARSERS``;
``BinaryCommands`` advertises BINARY.
"""

from __future__ import annotations

import binascii
import re
from typing import TYPE_CHECKING, Any

from mailsuite.imap.fetch import (
    ITEM_PARSERS,
    FetchItem,
    FetchRefused,
    FetchSyntaxError,
    Piece,
    Section,
    parse_partial,
    parse_section,
    section_bytes,
)
from mailsuite.imap.message import header_value, locate
from mailsuite.wire import complete

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

_BINARY_RE = re.compile(rb"(BINARY\.PEEK|BINARY\.SIZE|BINARY)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?",
                        re.IGNORECASE)
_IDENTITY = {b"", b"7BIT", b"8BIT", b"BINARY"}


def _crlf(data: bytes) -> bytes:
    """Line ends CRLF; every other byte (a NUL too) as it is: BINARY sends the bytes."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def decoded(raw: bytes, section: Section) -> bytes:
    """The content of ``section`` of ``raw`` (stored form): a part's with its transfer
    encoding undone (FetchRefused ``[UNKNOWN-CTE]`` for one it does not know), a header, MIME
    or TEXT section's as BODY[] has it (line ends CRLF)."""
    raw = complete(raw)
    if section.spec:
        return _crlf(section_bytes(raw, section))
    if not section.part:
        return _crlf(raw)
    located = locate(raw, section.part)
    if located is None:
        return b""
    return undo_cte(*located)


def undo_cte(header: bytes, body: bytes) -> bytes:
    """``body`` with the Content-Transfer-Encoding of ``header`` undone (line ends CRLF);
    FetchRefused ``[UNKNOWN-CTE]`` for one it does not know."""
    cte = (header_value(header, b"Content-Transfer-Encoding") or b"").strip().upper()
    if cte in _IDENTITY:
        return _crlf(body)
    if cte == b"BASE64":
        try:
            return binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==")
        except binascii.Error:
            raise FetchRefused(b"[UNKNOWN-CTE] Invalid base64 content.") from None
    if cte == b"QUOTED-PRINTABLE":
        return binascii.a2b_qp(_crlf(body))
    raise FetchRefused(b"[UNKNOWN-CTE] Unknown Content-Transfer-Encoding.")


def _render(section: Section, partial: tuple[int, int] | None) -> Any:
    def render(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
        assert raw is not None
        data = decoded(raw, section)
        label = b"BINARY[" + section.label() + b"]"
        if partial is not None:
            data = data[partial[0] : partial[0] + partial[1]]
            label += b"<%d>" % partial[0]
        literal = b" ~{%d}\r\n" if b"\0" in data else b" {%d}\r\n"
        return [label + literal % len(data), data]

    return render


def _render_size(section: Section) -> Any:
    def render(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
        assert raw is not None
        return [b"BINARY.SIZE[" + section.label() + b"] %d" % len(decoded(raw, section))]

    return render


def parse_binary(text: bytes, pos: int) -> tuple[FetchItem, int] | None:
    """``BINARY[1.2]<0.100>``, ``BINARY.PEEK[...]`` or ``BINARY.SIZE[...]`` at ``pos``."""
    m = _BINARY_RE.match(text, pos)
    if m is None:
        return None
    kind = m.group(1).upper()
    try:
        section = parse_section(m.group(2))
    except FetchSyntaxError:
        raise FetchSyntaxError("bad BINARY section") from None
    if kind == b"BINARY.SIZE":
        if m.group(3) is not None:
            raise FetchSyntaxError("BINARY.SIZE takes no partial")
        return FetchItem("BINARY.SIZE", render=_render_size(section), wants="body"), m.end()
    partial = parse_partial(m.group(3), m.group(4))
    item = FetchItem("BINARY", partial=partial, peek=kind == b"BINARY.PEEK",
                     render=_render(section, partial), wants="body", seen=kind == b"BINARY")
    return item, m.end()


ITEM_PARSERS.append(parse_binary)


class BinaryCommands(_Base):
    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"BINARY": None}
