"""FETCH BODY and BODYSTRUCTURE (RFC 3501 7.4.2), computed from the raw stored bytes.

Part boundaries are found the same way as for ``BODY[1.2]`` sections (``message.locate``), so
the sizes given here are the lengths of the sections a client then fetches: octets in the wire
form (CRLF line ends), lines counted as the body's line ends.
"""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value

from mailsuite.imap.encode import envelope, nstring
from mailsuite.imap.message import (
    MAX_MIME_DEPTH, boundary_of, parse_mime_header, split_message, split_multipart,
)
from mailsuite.wire import complete, crlf_size


def _q(value: str | None) -> bytes:
    return nstring(value.encode("utf-8", "surrogateescape")) if value is not None else b"NIL"


def _params(msg: Message, header: str, skip_first: bool = True) -> bytes:
    params = msg.get_params(header=header, unquote=True) or []
    pairs = params[1:] if skip_first else params
    out = []
    for key, value in pairs:
        if not key:
            continue
        text = collapse_rfc2231_value(value) if value is not None else ""
        out.append(_q(key.lower()) + b" " + _q(str(text)))
    return b"(" + b" ".join(out) + b")" if out else b"NIL"


def _disposition(msg: Message) -> bytes:
    value = msg.get("Content-Disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip()
    return b"(" + _q(kind) + b" " + _params(msg, "content-disposition") + b")"


def _language(msg: Message) -> bytes:
    value = msg.get("Content-Language")
    if value is None:
        return b"NIL"
    langs = [v.strip() for v in str(value).split(",") if v.strip()]
    if len(langs) == 1:
        return _q(langs[0])
    return b"(" + b" ".join(_q(v) for v in langs) + b")" if langs else b"NIL"


def _header_str(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _entity(header: bytes, body: bytes, extended: bool, default: str, depth: int,
            rev2: bool = False) -> bytes:
    msg = parse_mime_header(header)
    if msg.get("Content-Type") is None or "/" not in msg.get_content_type():
        ctype = default
    else:
        ctype = msg.get_content_type()
    main, _, sub = ctype.partition("/")
    boundary = boundary_of(msg)
    if main == "multipart" and boundary and depth < MAX_MIME_DEPTH:
        parts = split_multipart(body, boundary) or [b"\n"]
        child_default = "message/rfc822" if sub == "digest" else "text/plain"
        children = [
            _entity(*split_message(p), extended, child_default, depth + 1, rev2) for p in parts
        ]
        out = b"".join(children) + b" " + _q(sub.upper())
        if extended:
            out += b" " + b" ".join(
                (_params(msg, "content-type"), _disposition(msg), _language(msg),
                 _q(_header_str(msg, "Content-Location")))
            )
        return b"(" + out + b")"
    if main == "multipart":
        main, sub = "text", "plain"  # a multipart without a boundary is shown as text
    params = _params(msg, "content-type") if msg.get("Content-Type") else b"NIL"
    if main == "text" and params == b"NIL":
        params = b'("charset" "us-ascii")'
    encoding = (_header_str(msg, "Content-Transfer-Encoding") or "7BIT").upper()
    fields = [
        _q(main.upper()), _q(sub.upper()), params,
        _q(_header_str(msg, "Content-ID")), _q(_header_str(msg, "Content-Description")),
        _q(encoding), b"%d" % crlf_size(body),
    ]
    # RFC 9051 7.5.2: message/global as message/rfc822 (IMAP4rev2 only, RFC 9755 6)
    if main == "message" and (sub == "rfc822" or (rev2 and sub == "global")) \
            and depth < MAX_MIME_DEPTH:
        inner_header, inner_body = split_message(body)
        fields.append(envelope(inner_header))
        fields.append(_entity(inner_header, inner_body, extended, "text/plain", depth + 1, rev2))
        fields.append(b"%d" % _lines(body))
    elif main == "text":
        fields.append(b"%d" % _lines(body))
    if extended:
        fields += [
            _q(_header_str(msg, "Content-MD5")), _disposition(msg), _language(msg),
            _q(_header_str(msg, "Content-Location")),
        ]
    return b"(" + b" ".join(fields) + b")"


def body_structure(raw: bytes, extended: bool, rev2: bool = False) -> bytes:
    """The BODYSTRUCTURE (``extended``) or BODY value of a stored message."""
    header, body = split_message(complete(raw))
    return _entity(header, body, extended, "text/plain", 0, rev2)
