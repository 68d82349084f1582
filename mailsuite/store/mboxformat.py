"""The mbox file format, pure functions on bytes (no I/O): parse, From lines, status headers.

What Postfix local(8) writes, and what mutt, s-nail and Dovecot write too:

    From sender  Tue Nov 28 06:01:02 2026\\n      <- separator: at file start or after a blank line
    Header: value\\n ... \\n body\\n          <- the message; body lines "From " quoted ">From "
    \\n                                          <- one blank line after each message

- A separator is a line ``From `` that carries an asctime date, at the start of the file or
  after a blank line. ``Content-Length:`` is ignored (mutt and Dovecot do not trust it either).
- The last message may lack its blank line or even its final newline (a writer that crashed).
- Anything before the first separator (a damaged file) is kept byte for byte and not shown.
- Clients are served the stored bytes minus the headers mbox programs use for their own state
  (``Status``, ``X-Status``, ``X-Keywords``, ``X-UID``, ``X-IMAP``, ``X-IMAPbase``,
  ``Content-Length``), as Dovecot does, so a rewrite that updates ``Status:`` never changes the
  bytes or the size of a message a client has cached.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from mailsuite.fsutil import pread_all
from mailsuite.store.interfaces import StoreError
from mailsuite.wire import wire_size

Buffer = bytes

_MONTHS = {
    m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
}
_TIME = re.compile(rb"(\d{1,2}):(\d\d)(?::(\d\d))?$")
_ZONE = re.compile(rb"[+-]\d{4}$")

_STATE_HEADERS = rb"status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length"
# Patterns start with a literal newline (applied to b"\n" + header) so the regex engine can jump
# from line to line instead of trying every position: parsing a big mailbox runs them 100,000s
# of times. Each matches a header line without its final newline, with continuation lines.
_LINE = rb"[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*"
#: Headers hidden from clients (Dovecot's mbox_hide_headers).
_HIDDEN = re.compile(rb"\n(?:" + _STATE_HEADERS + rb")" + _LINE, re.IGNORECASE)
#: Also changed by mutt on rewrite: left out of the fingerprint too.
_LINES = re.compile(rb"\nlines" + _LINE, re.IGNORECASE)
_FLAG_HEADERS = re.compile(
    rb"\n(status|x-status|x-keywords)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.I
)
_REWRITTEN = re.compile(rb"\n(?:status|x-status|x-keywords)" + _LINE, re.IGNORECASE)

_X_STATUS = (("A", "\\Answered"), ("F", "\\Flagged"), ("T", "\\Draft"), ("D", "\\Deleted"))


@dataclass(frozen=True, slots=True)
class Parsed:
    """One message found in the file. Offsets are absolute file offsets; ``end`` excludes the
    blank separator line. Slots: a first parse holds one per message at once (100,000s)."""

    offset: int  # the From line
    body_off: int  # first byte after the From line: the message starts here
    hdr_end: int  # first byte after the header block (after its blank line)
    end: int
    date: int | None  # epoch seconds from the From line
    fingerprint: str
    size: int  # wire size of what clients are served (mailsuite.wire)
    header_flags: frozenset[str]  # from Status / X-Status / X-Keywords
    header_sig: str  # changes when another program changes those headers


@functools.lru_cache(maxsize=4096)
def _local_hour(ymdh: tuple[int, int, int, int]) -> int:
    """Epoch of the start of a local hour (mktime is slow; mail comes in bursts)."""
    return int(time.mktime((*ymdh, 0, 0, 0, 0, -1)))


def from_line_date(line: bytes) -> int | None:
    """The epoch of the asctime date in a ``From sender date`` line, or None if it has none.

    Accepts ``Tue Nov 28 06:01:02 2026``, with or without seconds, with an optional numeric zone
    before or after the year. Without a zone the date is local time (what Postfix and mutt write).
    """
    words = line.split()
    for i in range(len(words) - 3, 0, -1):
        month = _MONTHS.get(words[i][:3].capitalize())
        if month is None or not words[i + 1].isdigit():
            continue
        m = _TIME.match(words[i + 2])
        rest = words[i + 3 :]
        if m is None or not rest:
            continue
        zone = None
        if _ZONE.match(rest[0]) and len(rest) > 1:
            zone, rest = rest[0], rest[1:]
        if not (rest[0].isdigit() and len(rest[0]) in (2, 4)):
            continue
        if zone is None and len(rest) > 1 and _ZONE.match(rest[1]):
            zone = rest[1]
        year = int(rest[0])
        year += 1900 if year >= 70 and year < 100 else 2000 if year < 70 else 0
        fields = (year, month, int(words[i + 1]), int(m[1]), int(m[2]), int(m[3] or 0))
        try:
            if zone is None:
                return _local_hour(fields[:4]) + fields[4] * 60 + fields[5]
            off = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60
            return calendar.timegm((*fields, 0, 0, 0)) - (off if zone[:1] == b"+" else -off)
        except (OverflowError, ValueError):
            return None
    return None


def make_from_line(sender: str, when: int) -> bytes:
    """``From sender  asctime`` as Postfix writes it (two spaces; MAILER-DAEMON for <>)."""
    clean = "".join(c if c.isprintable() and not c.isspace() else "_" for c in sender)
    return b"From %s  %s\n" % (
        (clean or "MAILER-DAEMON").encode(),
        time.asctime(time.localtime(when)).encode(),
    )


def to_stored(data: bytes) -> bytes:
    """Message bytes as they go into the file: LF line ends, final newline, ``>From `` quoted."""
    data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    if data.startswith(b"From "):
        data = b">" + data
    return data.replace(b"\nFrom ", b"\n>From ")


def header_end(buf: Buffer, start: int, end: int) -> int:
    """End of the header block (just after its blank line) of the message at [start, end).

    The blank line is ``\n`` or, in a message another program stored with CRLF line ends,
    ``\r\n``: whichever comes first. The CRLF search is bounded by the LF one, so an LF
    message costs one short extra scan of its header. Never past ``end``: an empty message
    (two separators with only the blank line between) has an empty header.
    """
    first = buf[start : min(start + 2, end)]
    if first[:1] == b"\n":
        return start + 1
    if first == b"\r\n":
        return start + 2
    i = buf.find(b"\n\n", start, end)
    j = buf.find(b"\n\r\n", start, end if i < 0 else i)
    if j >= 0:
        return j + 3
    return end if i < 0 else i + 2


def fingerprint(header: bytes, body_len: int) -> str:
    """Identifies a message across rewrites by other programs (mutt changes Status: headers)."""
    return _fingerprint(served_header(header), body_len)


def _fingerprint(shown: bytes, body_len: int) -> str:
    if b"ines" in shown or b"INES" in shown:
        shown = _LINES.sub(b"", b"\n" + shown)[1:]
    h = hashlib.sha1(shown)
    h.update(b"\0%d" % body_len)
    return h.hexdigest()[:24]


def served_header(header: bytes) -> bytes:
    """The header block without the mbox state headers (what clients are shown)."""
    return _HIDDEN.sub(b"", b"\n" + header)[1:]


def header_flags(header: bytes) -> tuple[frozenset[str], str]:
    """Flags mutt/mailx/Dovecot recorded in the headers, and a signature of those headers."""
    flags: set[str] = set()
    raw = []
    for name, value in _FLAG_HEADERS.findall(b"\n" + header):
        name = name.lower()
        text = value.decode("ascii", "replace")
        raw.append(b"%s:%s" % (name, value.strip()))
        if name == b"status":
            if "R" in text:
                flags.add("\\Seen")
        elif name == b"x-status":
            flags.update(flag for letter, flag in _X_STATUS if letter in text)
        else:
            flags.update(k for k in re.split(r"[\s,]+", text) if k and not k.startswith("\\"))
    if not raw:
        return _NO_FLAGS, "00000000"  # one shared set: 100,000s of messages without any
    return frozenset(flags), format(zlib.crc32(b"\n".join(sorted(raw))), "08x")


_NO_FLAGS: frozenset[str] = frozenset()


_IMAPBASE = re.compile(rb"\nx-imapbase[ \t]*:[ \t]*(\d{1,10})[ \t]+(\d{1,10})([^\n]*)", re.I)
_X_UID = re.compile(rb"\nx-uid[ \t]*:[ \t]*(\d{1,10})[ \t]*(?:\n|$)", re.I)


def imap_base(header: bytes) -> tuple[int, int, list[str]] | None:
    """Dovecot's ``X-IMAPbase: <uidvalidity> <last uid> [keyword ...]`` (in the first message
    of an mbox it kept state in): (UIDVALIDITY, last UID given, keywords), or None."""
    m = _IMAPBASE.search(b"\n" + header)
    if m is None or not 0 < int(m[1]) <= 0xFFFFFFFF:
        return None
    keywords = m[3].decode("ascii", "replace").split()
    return int(m[1]), int(m[2]), [k for k in keywords if not k.startswith("\\")]


def x_uid(header: bytes) -> int | None:
    """The UID Dovecot gave a message (``X-UID: 42``), or None."""
    m = _X_UID.search(b"\n" + header)
    return int(m[1]) if m is not None and int(m[1]) > 0 else None


def status_headers(flags: frozenset[str]) -> bytes:
    """Status / X-Status / X-Keywords lines for these flags, as Dovecot writes them."""
    out = b"Status: RO\n" if "\\Seen" in flags else b"Status: O\n"
    x = "".join(letter for letter, flag in _X_STATUS if flag in flags)
    if x:
        out += b"X-Status: %s\n" % x.encode()
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    if keywords:
        out += b"X-Keywords: %s\n" % " ".join(keywords).encode()
    return out


def with_status(header: bytes, flags: frozenset[str]) -> bytes:
    """The header block with its Status / X-Status / X-Keywords replaced; the rest byte for byte."""
    kept = _REWRITTEN.sub(b"", b"\n" + header)[1:]
    if kept.endswith(b"\n\n"):
        return kept[:-1] + status_headers(flags) + b"\n"
    if kept.endswith(b"\n\r\n"):  # a CRLF message: its blank line stays as it was
        return kept[:-2] + status_headers(flags) + b"\r\n"
    if kept in (b"\n", b"\r\n"):
        return status_headers(flags) + kept
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    return kept + status_headers(flags)


def _next_separator(buf: Buffer, pos: int, stop: int) -> tuple[int, int, int | None] | None:
    """The first separator starting at or after ``pos`` (``pos`` is a line start)."""
    if pos == 0 and buf[0:5] == b"From ":
        found = separator_at(buf, 0, stop)
        if found:
            return (0, *found)
    search = max(pos - 2, 0)
    while True:
        i = buf.find(b"\n\nFrom ", search, stop)
        if i < 0:
            return None
        found = separator_at(buf, i + 2, stop)
        if found:
            return (i + 2, *found)
        search = i + 1


def separator_at(buf: Buffer, pos: int, stop: int) -> tuple[int, int | None] | None:
    """(end of the From line, date) if a valid separator line starts at ``pos``."""
    eol = buf.find(b"\n", pos, stop)
    if eol < 0:
        return None
    date = from_line_date(buf[pos:eol])
    return None if date is None else (eol + 1, date)


def parse(
    buf: bytes, start: int, stop: int, first_is_separator: bool = False, base: int = 0
) -> list[Parsed]:
    """The messages in ``buf[start:stop]``; offsets in the result are ``base`` + position.

    ``start`` is 0 (the start of the file: anything before the first separator is not a
    message) or the position of a From line (``first_is_separator``).
    """
    if first_is_separator:
        line = separator_at(buf, start, stop)
        sep = (start, *line) if line else None
    else:
        sep = _next_separator(buf, start, stop)
    out = []
    while sep is not None:
        offset, body_off, date = sep
        sep = _next_separator(buf, body_off, stop)
        if sep is not None:
            end = sep[0] - 1  # the blank line before the next From belongs to the separator
        else:
            end = stop - 1 if buf[max(stop - 2, body_off) : stop] == b"\n\n" else stop
        out.append(describe(buf, offset, body_off, end, date, base))
    return out


def served_size(shown: bytes, buf: Buffer, hdr_end: int, end: int) -> int:
    """``wire_size(shown + buf[hdr_end:end])`` without the copy: the wire size of a message
    served as its shown header block followed by its body.

    A non-empty body follows a header block that ends in a line end, so no CRLF straddles the
    two and the header needs no final line end of its own.
    """
    return wire_size(shown) + wire_size(buf, hdr_end, end)


def describe(
    buf: bytes, offset: int, body_off: int, end: int, date: int | None, base: int = 0
) -> Parsed:
    """The Parsed record of the message whose From line is at ``offset`` (positions in ``buf``)."""
    hdr_end = header_end(buf, body_off, end)
    header = buf[body_off:hdr_end]
    shown = served_header(header)
    body_len = end - hdr_end
    flags, sig = header_flags(header)
    return Parsed(
        base + offset,
        base + body_off,
        base + hdr_end,
        base + end,
        date,
        _fingerprint(shown, body_len),
        served_size(shown, buf, hdr_end, end),
        flags,
        sig,
    )


class Located(Protocol):
    """Where a message is in the file and what it is (``index.Entry``)."""

    @property
    def offset(self) -> int: ...
    @property
    def body_off(self) -> int: ...
    @property
    def hdr_end(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...


def verified(e: Located, buf: bytes | bytearray, headers_only: bool = False) -> bytes | None:
    """``buf``, read from the file at ``e.offset`` (through ``e.hdr_end`` or ``e.end``), as
    served -- or None unless it is still that message there (separator where the index says,
    same fingerprint): another program rewrote the file."""
    stop = e.hdr_end if headers_only else e.end
    body_off = e.body_off - e.offset  # the From line's length, as the index knows it
    # a From line as long as the index says (its date is not parsed again: the fingerprint
    # of the header below would not match another message's)
    if (
        len(buf) != stop - e.offset
        or not buf.startswith(b"From ")
        or buf.find(b"\n", 0, body_off) != body_off - 1
    ):
        return None
    header = bytes(buf[body_off : e.hdr_end - e.offset])
    if fingerprint(header, e.end - e.hdr_end) != e.fingerprint:
        return None
    return b"".join((served_header(header), memoryview(buf)[e.hdr_end - e.offset :]))


WINDOW = 8 << 20  # bytes read at a time when parsing (the peak memory of a first parse)


def parse_file(fd: int, start: int, stop: int, first_is_separator: bool) -> list[Parsed]:
    """Parse [start, stop) of the file a window at a time (memory stays bounded)."""
    return list(each_parsed(fd, start, stop, first_is_separator))


def each_parsed(fd: int, start: int, stop: int, first_is_separator: bool) -> Iterator[Parsed]:
    """``parse_file``'s messages as each window is parsed: a whole parse of 100,000 messages
    never holds them all (their records, ints and strings were slack the agent kept)."""
    window = WINDOW
    while start < stop:
        length = min(window, stop - start)
        buf = pread_all(fd, length, start, chunk=length)
        if len(buf) < length:
            raise StoreError("mailbox shrank while it was locked")
        found = parse(buf, 0, len(buf), first_is_separator, base=start)
        if start + length >= stop:
            yield from found
            return
        if len(found) < 2:
            window *= 2  # one message (or the junk before the first) larger than the window
            continue
        yield from found[:-1]  # the last one may be cut off by the window: parse it again
        start, first_is_separator = found[-1].offset, True
