"""What people wrote in a message, as text: the audit rules (audit.py) match on this.

``extract(data)`` walks the MIME structure of a message (LF line ends, as the accept pipeline
keeps it) and gives its text as ``Piece``s, each labelled with the part it came from, numbered
as IMAP numbers parts (RFC 3501 section 6.4.5: ``HEADER``, ``1``, ``2.1``, ``2.HEADER`` for the
header of a message/rfc822 part 2):

- the header fields of the message and of each nested message, RFC 2047 encoded words decoded
  (any charset Python knows; 8-bit header bytes read as UTF-8, else GB18030);
- the file name of every part (Content-Disposition ``filename``, Content-Type ``name``; RFC 2231
  ``filename*=charset''%XX`` and its continuations, RFC 2047 words inside quotes);
- every ``text/*`` part, inline or attached, decoded from base64 or quoted-printable and from
  its charset (GB2312 and GBK read as GB18030, their superset, as mail clients do; a label
  that does not fit falls back to UTF-8, then to the label with replacement characters);
  HTML without its tags;
- nested message/rfc822 parts, the same way.

Nothing here raises on a broken message: a broken encoding gives replacement characters, a
missing boundary makes the rest one part. The work is bounded by ``Limits`` (see README.rst,
"Audit rules"): the decoded text of each part and of the whole message is capped, so are the
number of parts and the nesting depth; what is past a cap is not read. The input is never
copied: parts are ranges of the one buffer, only decoded text is new.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import html
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

HEADER_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """The caps of one ``extract``: decoded bytes per part and in all, parts, depth."""

    part_bytes: int = 1024 * 1024
    total_bytes: int = 8 * 1024 * 1024
    parts: int = 1000
    depth: int = 20


@dataclass(frozen=True)
class Piece:
    """Decoded text of one part: ``part`` (IMAP part number or ``[N.]HEADER``), ``kind``
    (``header``, ``name`` or ``text``) and the text."""

    part: str
    kind: str
    text: str


@dataclass
class _Walk:
    buf: bytes
    limits: Limits
    pieces: list[Piece] = field(default_factory=list)
    left: int = 0
    parts: int = 0

    def add(self, part: str, kind: str, text: str) -> None:
        if text and self.left > 0:
            text = text[: self.left]
            self.left -= len(text)
            self.pieces.append(Piece(part, kind, text))


def extract(data: bytes, limits: Limits = Limits()) -> list[Piece]:
    """The decoded text of ``data`` (see the module doc), in the order of the message."""
    walk = _Walk(data, limits, left=limits.total_bytes)
    _message(walk, 0, len(data), "", 0)
    return walk.pieces


# ---------------------------------------------------------------------------------------------
# Entities: a header and a body, as ranges of walk.buf.

def _split_entity(buf: bytes, start: int, end: int) -> tuple[list[tuple[str, str]], int]:
    """The header fields (name, raw value unfolded) of the entity at ``start``, and where its
    body starts."""
    if buf.startswith(b"\n", start, end):  # no header at all
        return [], start + 1
    blank = buf.find(b"\n\n", start, end)
    body = end if blank < 0 else blank + 2
    head_end = min(body, start + HEADER_BYTES)
    return _fields(_header_text(buf[start:head_end])), body


def _fields(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if line[:1] in (" ", "\t") and out:
            name, value = out[-1]
            out[-1] = (name, value + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            out.append((name.strip(), value.strip()))
    return out


def _header_text(raw: bytes) -> str:
    """Header bytes as text: ASCII, else UTF-8, else GB18030 (raw 8-bit Chinese headers)."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("gb18030", "replace")


def _get(fields: list[tuple[str, str]], name: str) -> str:
    for key, value in fields:
        if key.lower() == name:
            return value
    return ""


def _message(walk: _Walk, start: int, end: int, prefix: str, depth: int) -> None:
    """A message (the top one, or a message/rfc822 part ``prefix``): its header, its body."""
    fields, body = _split_entity(walk.buf, start, end)
    label = f"{prefix}.HEADER" if prefix else "HEADER"
    walk.add(label, "header", "\n".join(f"{k}: {decode_words(v)}" for k, v in fields))
    ctype, params = parse_content_type(_get(fields, "content-type"))
    number = f"{prefix}.1" if prefix else "1"
    if ctype.startswith("multipart/"):
        _multipart(walk, body, end, ctype, params, prefix, depth)
    else:
        _leaf(walk, fields, ctype, params, body, end, number, depth)


def _multipart(walk: _Walk, start: int, end: int, ctype: str, params: dict[str, str],
               prefix: str, depth: int) -> None:
    boundary = params.get("boundary", "").encode("utf-8", "replace")
    if not boundary or depth >= walk.limits.depth:
        return
    default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    for i, (s, e) in enumerate(split_parts(walk.buf, start, end, boundary), 1):
        if walk.parts >= walk.limits.parts or walk.left <= 0:
            return
        walk.parts += 1
        number = f"{prefix}.{i}" if prefix else str(i)
        fields, body = _split_entity(walk.buf, s, e)
        ctype_i, params_i = parse_content_type(_get(fields, "content-type"), default)
        if ctype_i.startswith("multipart/"):
            _multipart(walk, body, e, ctype_i, params_i, number, depth + 1)
        else:
            _leaf(walk, fields, ctype_i, params_i, body, e, number, depth + 1)


def split_parts(buf: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of the body parts between ``--boundary`` lines (RFC 2046 5.1.1;
    a missing close delimiter ends the last part at ``end``)."""
    marker = b"--" + boundary
    part_start = -1
    at = start if buf.startswith(marker, start, end) else _next_marker(buf, start, end, marker)
    while at >= 0:
        after = at + len(marker)
        if after + 1 > end or buf[after:after + 1] not in b"\n\r\t -":
            at = _next_marker(buf, after, end, marker)  # --boundaryXYZ: another boundary
            continue
        if part_start >= 0:
            yield part_start, max(part_start, at - 1)  # (the LF before the delimiter)
        if buf.startswith(b"--", after, end):
            return
        line_end = buf.find(b"\n", after, end)
        if line_end < 0:
            return
        part_start = line_end + 1
        at = _next_marker(buf, line_end, end, marker)
    if part_start >= 0:
        yield part_start, end


def _next_marker(buf: bytes, start: int, end: int, marker: bytes) -> int:
    at = buf.find(b"\n" + marker, start, end)
    return at + 1 if at >= 0 else -1


def _leaf(walk: _Walk, fields: list[tuple[str, str]], ctype: str, params: dict[str, str],
          start: int, end: int, number: str, depth: int) -> None:
    name = _file_name(fields, params)
    if name:
        walk.add(number, "name", name)
    if ctype.startswith("text/"):
        raw, truncated = _transfer_decoded(walk, fields, start, end)
        text = decode_text(raw, params.get("charset", ""), final=not truncated)
        if ctype == "text/html":
            text = html_text(text)
        walk.add(number, "text", text)
    elif ctype in ("message/rfc822", "message/global") and depth < walk.limits.depth:
        cte = _get(fields, "content-transfer-encoding").lower()
        if cte in ("base64", "quoted-printable"):  # not allowed, but sent: read it
            raw, _ = _transfer_decoded(walk, fields, start, end)
            inner = _Walk(raw.replace(b"\r\n", b"\n"), walk.limits, walk.pieces, walk.left,
                          walk.parts)
            _message(inner, 0, len(inner.buf), number, depth + 1)
            walk.left, walk.parts = inner.left, inner.parts
        else:
            _message(walk, start, end, number, depth + 1)


def _transfer_decoded(walk: _Walk, fields: list[tuple[str, str]], start: int,
                      end: int) -> tuple[bytes, bool]:
    """The body bytes of a part, base64 or quoted-printable undone, at most the part's cap
    (and what is left of the message's); whether that cut it."""
    cap = min(walk.limits.part_bytes, walk.left)
    cte = _get(fields, "content-transfer-encoding").lower()
    if cte == "base64":
        raw_end = min(end, start + cap * 4 // 3 + cap // 38 + 8)  # + the line ends
        out = b64decode(walk.buf[start:raw_end])
    elif cte == "quoted-printable":
        raw_end = min(end, start + cap * 3 + 8)
        out = binascii.a2b_qp(walk.buf[start:raw_end])
    else:
        raw_end = min(end, start + cap)
        out = walk.buf[start:raw_end]
    truncated = raw_end < end or len(out) > cap
    return out[:cap], truncated


_NOT_BASE64 = bytes(set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                           b"0123456789+/"))


def b64decode(data: bytes) -> bytes:
    """Base64 as mail readers take it: other characters skipped, missing padding added."""
    data = data.translate(None, _NOT_BASE64)
    cut = len(data) % 4
    if cut == 1:
        data = data[:-1]
    elif cut:
        data += b"=" * (4 - cut)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:  # pragma: no cover (the input is clean by now)
        return b""


# ---------------------------------------------------------------------------------------------
# Charsets.

#: labels whose real use is a larger charset (what mail clients decode them as)
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "x-gbk": "gb18030",
    "euc-cn": "gb18030", "x-euc-cn": "gb18030", "csgb2312": "gb18030", "gb_2312-80": "gb18030",
    "chinese": "gb18030", "big5": "cp950", "x-big5": "cp950", "csbig5": "cp950",
    "cn-big5": "cp950", "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "shift_jis": "cp932",
    "x-sjis": "cp932", "iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "cp1252",
    "ascii": "cp1252", "windows-874": "cp874", "tis-620": "cp874",
}
#: labels that decode anything: valid UTF-8 under them is UTF-8 mislabelled
_NEVER_FAIL = {"cp1252", "latin-1", "iso8859-1"}


@functools.lru_cache(maxsize=256)
def codec_for(label: str) -> str | None:
    """The Python codec that reads text labelled ``label`` (None: unknown, or not a text
    codec: ``zlib`` or ``base64`` as a charset must not run)."""
    name = label.strip().strip('"').lower().partition("*")[0]
    name = _SUPERSETS.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_text(data: bytes, charset: str, final: bool = True) -> str:
    """``data`` as text: the label's codec, else UTF-8, else the label with replacement
    characters (no label, or an unknown one: UTF-8, else GB18030). ``final`` False: the data
    was cut, a character cut in two at the end is dropped."""
    if data.isascii():
        return data.decode("ascii")
    codec = codec_for(charset) if charset else None
    tries = [codec or "utf-8"]
    if codec in _NEVER_FAIL:
        tries.insert(0, "utf-8")
    elif codec != "utf-8" and codec is not None:
        tries.append("utf-8")
    for name in tries:
        try:
            return codecs.getincrementaldecoder(name)("strict").decode(data, final)
        except (UnicodeError, LookupError):
            continue
    return data.decode(codec or "gb18030", "replace")


# ---------------------------------------------------------------------------------------------
# RFC 2047 encoded words, RFC 2045/2231 parameters.

_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]*")


def decode_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded. Adjacent words are joined (the
    white space between them dropped), and adjacent words of one charset are decoded
    together, so a character split across two words (clients do that) comes out whole."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[bytes] = []
    charset = ""
    pos = 0
    for m in _WORD.finditer(value):
        between = value[pos:m.start()]
        if not pending or not _BETWEEN_WORDS.fullmatch(between) or \
                m.group(1).lower() != charset:
            if pending:
                out.append(decode_text(b"".join(pending), charset))
                pending = []
            if pos and _BETWEEN_WORDS.fullmatch(between):
                between = ""  # white space between two encoded words is not text
            out.append(between)
            charset = m.group(1).lower()
        text = m.group(3).encode("ascii", "replace")
        pending.append(b64decode(text) if m.group(2) in "bB"
                       else binascii.a2b_qp(text, header=True))
        pos = m.end()
    if pending:
        out.append(decode_text(b"".join(pending), charset))
    out.append(value[pos:])
    return "".join(out)


_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')


def parse_content_type(value: str, default: str = "text/plain") -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case; ``default`` when missing or broken) and the parameters,
    RFC 2231 continuations and charsets undone."""
    kind, _, _ = value.partition(";")
    kind = kind.strip().lower()
    if "/" not in kind:
        kind = default
    return kind, parse_params(value)


def parse_params(value: str) -> dict[str, str]:
    """The ``; name=value`` parameters of a Content-Type or Content-Disposition value."""
    plain: dict[str, str] = {}
    pieces: dict[str, dict[int, tuple[bool, str]]] = {}
    for m in _PARAM.finditer(value):
        key, text = m.group(1).lower(), m.group(2).strip()
        if text.startswith('"'):
            text = re.sub(r"\\(.)", r"\1", text[1:-1] if text.endswith('"') else text[1:])
        extended = key.endswith("*")
        key = key.rstrip("*")
        name, star, index = key.partition("*")
        if star and index.isdigit() and len(index) < 4:
            pieces.setdefault(name, {})[int(index)] = (extended, text)
        elif extended:
            pieces.setdefault(name, {})[0] = (True, text)
        else:
            plain.setdefault(key, text)
    for name, parts in pieces.items():
        plain[name] = _rfc2231(parts)
    return plain


def _rfc2231(parts: dict[int, tuple[bool, str]]) -> str:
    """The value of RFC 2231 segments: the first (if extended) may start ``charset'lang'``."""
    charset = ""
    raw = []
    for n, i in enumerate(sorted(parts)):
        extended, text = parts[i]
        if extended and n == 0 and text.count("'") >= 2:
            charset, _lang, text = text.split("'", 2)
        raw.append(urllib.parse.unquote_to_bytes(text) if extended else text.encode("utf-8"))
    return decode_text(b"".join(raw), charset)


def _file_name(fields: list[tuple[str, str]], params: dict[str, str]) -> str:
    name = parse_params(_get(fields, "content-disposition")).get("filename") or \
        params.get("name", "")
    return decode_words(name) if name else ""


_BLOCK_TAG = re.compile(r"<(?:br|/p|/div|/td|/tr|/li|/h\d)\b[^<>]*>", re.I)
_TAG = re.compile(r"<[^<>]*>")  # (not [^>]: "<<<<..." would be quadratic)
_HIDDEN = re.compile(r"<(style|script)\b", re.I)
_CLOSE = {name: re.compile(f"</{name}", re.I) for name in ("style", "script")}


def html_text(text: str) -> str:
    """What a reader of HTML sees: tags, styles and scripts gone (a line end for the end of a
    block), entities decoded."""
    if "<" in text:
        text = _TAG.sub("", _BLOCK_TAG.sub("\n", _without_hidden(text)))
    return html.unescape(text) if "&" in text else text


def _without_hidden(text: str) -> str:
    """``text`` without its <style> and <script> elements (one pass: an unclosed one ends
    the text)."""
    out = []
    pos = 0
    for m in _HIDDEN.finditer(text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.start()])
        close = _CLOSE[m.group(1).lower()].search(text, m.end())
        if close is None:
            return "".join(out)
        pos = close.start()
    out.append(text[pos:])
    return "".join(out)
