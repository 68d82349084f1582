"""A message's wire form: the bytes POP3 RETR and IMAP BODY[] send for stored message bytes.

One definition for the whole server, so the size a store records (``MessageInfo.size``), the
sizes POP3 STAT/LIST and IMAP RFC822.SIZE announce and the bytes RETR / FETCH send always agree:

- every line ends in CRLF: a bare LF becomes CRLF, a CRLF already stored (a message another
  program wrote with CRLF line ends) stays as it is; nothing ever becomes ``\\r\\r\\n``;
- a non-empty message gets a final line end when it has none (a lone final CR becomes CRLF);
- every NUL byte is replaced by 0x80, Dovecot's ``outlook-no-nuls`` workaround (NULs hang
  Outlook, OUTLOOK.md item 21). Replacing keeps the length, so the size is known without reading.

``wire_size`` computes ``len(to_wire(data))`` (and ``crlf_size`` ``len(crlf(data))``) from counts
alone, also on a slice of a larger buffer (the mbox parser), without copying.
"""

from __future__ import annotations

_NO_NULS = bytes.maketrans(b"\0", b"\x80")


def complete(stored: bytes) -> bytes:
    """``stored`` with the final line end ``to_wire`` adds (LF; CRLF after a lone final CR)."""
    return stored + b"\n" if stored and not stored.endswith(b"\n") else stored


def crlf(data: bytes) -> bytes:
    """Line ends made CRLF and NULs replaced, no final line end added (for parts of a message)."""
    if b"\0" in data:
        data = data.translate(_NO_NULS)
    if b"\r" in data:  # (a memchr: most stored mail has none, and is converted in one pass)
        data = data.replace(b"\r\n", b"\n")
    return data.replace(b"\n", b"\r\n")


def to_wire(stored: bytes) -> bytes:
    """Stored message bytes -> the wire form (before POP3 dot-stuffing)."""
    return crlf(complete(stored))


def crlf_size(buf: bytes, start: int = 0, end: int | None = None) -> int:
    """``len(crlf(buf[start:end]))``, counted in place (no final line end added)."""
    end = len(buf) if end is None else min(end, len(buf))
    if end <= start:
        return 0
    return end - start + buf.count(b"\n", start, end) - buf.count(b"\r\n", start, end)


def wire_size(buf: bytes, start: int = 0, end: int | None = None) -> int:
    """``len(to_wire(buf[start:end]))``, counted in place."""
    end = len(buf) if end is None else min(end, len(buf))
    if end <= start:
        return 0
    last = buf[end - 1]
    return crlf_size(buf, start, end) + (0 if last == 0x0A else 1 if last == 0x0D else 2)
