"""PREVIEW (RFC 8970): ``FETCH PREVIEW`` and ``PREVIEW (LAZY)``.

The preview is the start of the first text part (text/plain or text/html, not an attachment;
a message without MIME is text/plain) with its transfer encoding and charset undone, HTML
reduced to its text (no tags, scripts, styles), whitespace runs made one space, cut to
``PREVIEW_CHARS`` characters: ``""`` when there is no text. Messages of ``THREAD_MIN`` bytes
or more are worked on through the store's ``blocking`` (a thread; the reactor keeps going);
previews are remembered per mailbox. With LAZY, a preview not remembered and not cheap is NIL
(RFC 8970 3.2: the client asks again without LAZY) and is worked out in the background.
"""

from __future__ import annotations

import codecs
import re
import weakref
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mailsuite.imap.binary import undo_cte
from mailsuite.imap.fetch import ITEM_PARSERS, FetchItem, FetchRefused, FetchSyntaxError, Piece
from mailsuite.imap.message import (
    MAX_MIME_DEPTH,
    parse_mime_header,
    split_message,
    split_multipart,
)
from mailsuite.threads import inline

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

PREVIEW_CHARS = 200  # RFC 8970 3.1: at most 256 characters; 200 as Dovecot
THREAD_MIN = 256 * 1024  # messages this big get their preview in a thread
_TEXT_MAX = 64 * 1024  # of a text part, what is looked at (enough for 200 characters)
_PREVIEW_RE = re.compile(rb"PREVIEW(?: \(([A-Za-z ]*)\))?(?=[ )]|\Z)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SAFE_QUOTED = re.compile(r'[\x20-\x7e]*\Z')
#: mailbox -> (uid_validity, {uid: preview}); forgotten with the mailbox object
_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, dict[int, str]]] = weakref.WeakKeyDictionary()
_CACHE_MAX = 10000  # previews kept per mailbox


class _Text(HTMLParser):
    """The text of an HTML document, without scripts, styles and the head's title."""

    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in ("br", "p", "div", "li", "tr", "td"):
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.out.append(data)


def _first_text(header: bytes, body: bytes, depth: int = 0) -> tuple[str, bytes, bytes] | None:
    """(subtype, header, body) of the first text/plain or text/html leaf, not an attachment."""
    msg = parse_mime_header(header)
    ctype = msg.get_content_type()
    boundary = msg.get_boundary()
    if ctype.startswith("multipart/") and boundary and boundary.isascii():
        if depth >= MAX_MIME_DEPTH:
            return None
        for part in split_multipart(body, boundary):
            found = _first_text(*split_message(part), depth + 1)
            if found is not None:
                return found
        return None
    disposition = (msg.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if ctype in ("text/plain", "text/html") and disposition != "attachment":
        return ctype[5:], header, body
    return None


def _charset(header: bytes) -> str:
    name = parse_mime_header(header).get_content_charset() or "utf-8"
    try:
        found = codecs.lookup(name)
    except LookupError:
        return "utf-8"
    # "base64", "zlib", "rot13"... are codecs but no text encodings (decode would raise)
    return found.name if getattr(found, "_is_text_encoding", True) else "utf-8"


def preview_text(raw: bytes) -> str:
    """The preview of the stored message ``raw`` (see the module's docstring)."""
    found = _first_text(*split_message(raw))
    if found is None:
        return ""
    subtype, header, body = found
    try:
        data = undo_cte(header, body[: _TEXT_MAX * 2])
    except FetchRefused:
        data = body[: _TEXT_MAX * 2]
    try:
        text = data[:_TEXT_MAX].decode(_charset(header), "replace")
    except (LookupError, UnicodeError):  # idna, punycode: errors even with "replace"
        text = data[:_TEXT_MAX].decode("utf-8", "replace")
    if subtype == "html":
        parser = _Text()
        parser.feed(text)
        parser.close()
        text = "".join(parser.out)
    text = _CONTROL.sub("", text)  # NULs and other controls are no text to show
    return " ".join(text.split())[:PREVIEW_CHARS]


def _remembered(view: Any) -> dict[int, str]:
    mailbox = view.mailbox
    validity = int(mailbox.uid_validity)
    kept = _CACHE.get(mailbox)
    if kept is None or kept[0] != validity:
        kept = (validity, {})
        _CACHE[mailbox] = kept
    return kept[1]


def format_preview(text: str | None) -> bytes:
    """``PREVIEW "..."`` (printable ASCII without quotes), a literal (UTF-8), or ``NIL``."""
    if text is None:
        return b"PREVIEW NIL"
    if _SAFE_QUOTED.match(text) and '"' not in text and "\\" not in text:
        return b'PREVIEW "' + text.encode("ascii") + b'"'
    data = text.encode("utf-8")
    return b"PREVIEW {%d}\r\n" % len(data) + data


def _blocking(view: Any) -> Any:
    return getattr(view.store, "blocking", None) or inline


async def _prepare(view: Any, uid: int, raw: bytes | None) -> None:
    """The preview worked out and remembered (in a thread for a big message)."""
    kept = _remembered(view)
    if uid in kept or raw is None:
        return
    text = preview_text(raw) if len(raw) < THREAD_MIN else await _blocking(view)(preview_text, raw)
    _keep(kept, uid, text)


def _keep(kept: dict[int, str], uid: int, text: str) -> None:
    """Remember a preview; the memory is emptied when full (before adding, never between a
    FETCH's prepare and its render, which would answer NIL without LAZY)."""
    if len(kept) >= _CACHE_MAX:
        kept.clear()
    kept[uid] = text


def _render(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
    return [format_preview(_remembered(view).get(uid))]


def _render_lazy(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
    """The preview if remembered or cheap; else NIL, and worked out for the next FETCH."""
    kept = _remembered(view)
    if uid not in kept and raw is not None:
        if len(raw) < THREAD_MIN:
            _keep(kept, uid, preview_text(raw))
        else:
            d = _blocking(view)(preview_text, raw)
            d.addCallback(lambda text: _keep(kept, uid, text))
            d.addErrback(lambda f: log.failure("preview of UID {uid}", f, uid=uid))
    return [format_preview(kept.get(uid))]


def parse_preview(text: bytes, pos: int) -> tuple[FetchItem, int] | None:
    """``PREVIEW`` or ``PREVIEW (LAZY)`` at ``pos`` (RFC 8970 6: modifiers in parentheses)."""
    m = _PREVIEW_RE.match(text, pos)
    if m is None:
        return None
    modifiers = m.group(1).upper().split() if m.group(1) is not None else []
    if (m.group(1) is not None and not modifiers) or any(x != b"LAZY" for x in modifiers):
        raise FetchSyntaxError("PREVIEW takes only the LAZY modifier")
    if modifiers:
        return FetchItem("PREVIEW", render=_render_lazy, wants="body"), m.end()
    return FetchItem("PREVIEW", render=_render, prepare=_prepare, wants="body"), m.end()


ITEM_PARSERS.append(parse_preview)


class PreviewCommands(_Base):
    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"PREVIEW": None}
