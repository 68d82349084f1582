"""What SORT (RFC 5256, RFC 5957) and THREAD order and link messages by, read once per message.

``base_subject`` is RFC 5256 section 2.1 step by step; ``sent_date`` is section 2.2 (the Date
field in UTC, else the internal date). ``SortRecord`` holds every key of one message, made from
its header block; ``records`` gives them for a view's messages, read with one ``read_headers``
call per chunk (the store reads in its threads) and kept per view, keyed by UID (a UID's
message never changes, so the cache needs no invalidation but a new UIDVALIDITY, and expunged
UIDs are dropped as the view loses them).
"""

from __future__ import annotations

import calendar
import contextlib
import email.errors
import re
import weakref
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import parsedate_tz
from typing import Any

from mailsuite.imap.addresses import parse_address_list
from mailsuite.imap.collation import casemap

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(r"(?:[ \t]|(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:)", re.I)
_LEADING_BLOB = re.compile(_BLOB)
_ENCODED_WORD = re.compile(r"=\?[^?]+\?[bBqQ]\?")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded (an undecodable one is kept as it is)."""
    if _ENCODED_WORD.search(value):
        with contextlib.suppress(ValueError, LookupError, email.errors.HeaderParseError):
            return str(make_header(decode_header(value)))
    return value


def _strip_leaders(text: str) -> tuple[str, bool]:
    """Steps 3 to 5: subj-leader and subj-blob prefixes off, until none is left."""
    reply = False
    while True:
        before = text
        m = _LEADER.match(text)
        while m:
            if m.group(0) not in (" ", "\t"):
                reply = True
            text = text[m.end():]
            m = _LEADER.match(text)
        blob = _LEADING_BLOB.match(text)
        if blob and text[blob.end():].strip(" \t"):
            text = text[blob.end():]
        if text == before:
            return text, reply


def base_subject(subject: str) -> tuple[str, bool]:
    """(the base subject, whether the message is a reply or forward) of a decoded Subject
    (RFC 5256 section 2.1; the casemap for comparing is applied by the caller)."""
    text = _WSP_RUN.sub(" ", subject)  # step 1: tabs, folding and runs of blanks are one space
    reply = False
    while True:
        while True:  # step 2: subj-trailer
            m = _TRAILER.search(text)
            if not m:
                break
            reply = reply or (m.group(0) != " " and m.group(0) != "\t")
            text = text[: m.start()]
        text, refwd = _strip_leaders(text)
        reply = reply or refwd
        # step 6: "[fwd:" ... "]" around everything: off, and again from step 2
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


_MSGID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str) -> list[str]:
    """The msg-ids of References or In-Reply-To, without their angle brackets."""
    return _MSGID.findall(value)


def _first_address(value: str | None) -> tuple[str, str]:
    """(addr-mailbox, display value: RFC 5957 display-name, else mailbox@host) of the first
    address of a list; a group name is no address."""
    if not value:
        return "", ""
    for addr in parse_address_list(value):
        if addr.group_marker or (addr.host is None and addr.mailbox is None):
            continue
        mailbox = addr.mailbox or ""
        spec = mailbox + ("@" + addr.host if addr.host else "")
        name = decode_words(addr.name).strip() if addr.name else ""
        return mailbox, name or spec
    return "", ""


def _when(info: Any) -> int:
    """The internal date in seconds since the epoch (a store index entry has it as ``date``)."""
    epoch = getattr(info, "date", None)
    if type(epoch) is int:
        return epoch
    return int(info.internal_date.timestamp())


_WANTED = {b"SUBJECT", b"FROM", b"TO", b"CC", b"DATE", b"MESSAGE-ID", b"REFERENCES",
           b"IN-REPLY-TO"}
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.M)


def wanted_fields(header: bytes) -> dict[bytes, str]:
    """The first value of each field sort and thread use, unfolded and decoded from UTF-8."""
    out: dict[bytes, str] = {}
    end = header.find(b"\n\n")
    end2 = header.find(b"\r\n\r\n")
    cut = min(x for x in (end, end2, len(header)) if x >= 0)
    for m in _FIELD.finditer(header, 0, cut + 1):
        name = m.group(1).upper()
        if name in _WANTED and name not in out:
            out[name] = m.group(2).decode("utf-8", "replace").replace("\r", "").replace(
                "\n", "").strip()
    return out


@dataclass(slots=True)
class SortRecord:
    """Every SORT and THREAD key of one message."""

    uid: int
    arrival: int
    size: int
    date: int  # sent date, seconds since the epoch, UTC
    subject: str  # the casemapped base subject
    reply: bool
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str  # "" when absent or invalid
    references: list[str]  # References' msg-ids, else In-Reply-To's first


def make_record(uid: int, info: Any, header: bytes) -> SortRecord:
    f = wanted_fields(header)
    arrival = _when(info)
    date = arrival
    parsed = parsedate_tz(f[b"DATE"]) if b"DATE" in f else None
    if parsed is not None:
        with contextlib.suppress(ValueError, OverflowError, TypeError):
            date = calendar.timegm(parsed[:6]) - (parsed[9] or 0)  # type: ignore[arg-type]
    subject, reply = base_subject(decode_words(f.get(b"SUBJECT", "")))
    from_, display_from = _first_address(f.get(b"FROM"))
    to, display_to = _first_address(f.get(b"TO"))
    cc, _ = _first_address(f.get(b"CC"))
    ids = message_ids(f.get(b"MESSAGE-ID", ""))
    refs = message_ids(f.get(b"REFERENCES", ""))
    if not refs:
        refs = message_ids(f.get(b"IN-REPLY-TO", ""))[:1]
    return SortRecord(uid, arrival, info.size, date, casemap(subject), reply, casemap(from_),
                      casemap(to), casemap(cc), casemap(display_from), casemap(display_to),
                      ids[0] if ids else "", refs)


_CHUNK = 2048
_caches: weakref.WeakKeyDictionary[Any, tuple[int, dict[int, SortRecord]]] = (
    weakref.WeakKeyDictionary())


async def records(view: Any) -> list[tuple[int, SortRecord]]:
    """``(sequence number, record)`` of each message of the view still present, in sequence
    order; the headers of messages not seen before are read in chunks."""
    validity = int(view.uid_validity)
    cached = _caches.get(view)
    if cached is None or cached[0] != validity:
        cached = (validity, {})
        _caches[view] = cached
    cache = cached[1]
    rows = [(seq, info) for seq, info in enumerate(view.rows(), 1)
            if not view.is_expunged(info.uid)]
    missing = [info for _, info in rows if info.uid not in cache]
    for start in range(0, len(missing), _CHUNK):
        chunk = missing[start:start + _CHUNK]
        headers = await view.mailbox.read_headers([info.uid for info in chunk])
        for info in chunk:
            header = headers.get(info.uid)
            if header is not None:
                cache[info.uid] = make_record(info.uid, info, header)
    live = {info.uid for _, info in rows}
    if len(cache) > len(live):
        for uid in [u for u in cache if u not in live]:
            del cache[uid]
    return [(seq, cache[info.uid]) for seq, info in rows if info.uid in cache]
