"""Reading IMAP commands: literals anywhere (RFC 3501 4.3), LITERAL+ / LITERAL- (RFC 7888).

The server assembles one complete command before parsing it: each line that ends in ``{N}`` or
``{N+}`` is followed by N bytes of literal data, which are appended to the command buffer right
after the ``{N}`` marker (the CRLF after the marker is dropped). So a command is one ``bytes``
value in which a literal is ``{N}`` immediately followed by its N bytes; a ``Cursor`` reads the
RFC 3501 grammar from it (atoms, quoted strings, literals, lists, sequence sets), which lets any
argument of any command (LOGIN, SEARCH, APPEND, CREATE...) be a literal.

Also here: the values several commands share, parsed (sequence sets, flag lists, mailbox names,
APPEND's date-time).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from mailsuite.store.interfaces import SYSTEM_FLAGS

#: the hierarchy delimiter of mailbox names (LIST answers it, INBOX/child)
DELIMITER = "/"

#: ``{123}`` or ``{123+}`` at the end of a line: a literal follows.
LITERAL_AT_END = re.compile(rb"\{(\d{1,12})(\+?)\}\Z")

_ATOM_SPECIALS = b'(){ %*"\\]'
_ATOM_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
_ATOM_RE = re.compile(b"[" + re.escape(_ATOM_CHARS) + b"]+")
_ASTRING_RE = re.compile(b"[" + re.escape(_ATOM_CHARS + b"]") + b"]+")
_LIST_CHARS_RE = re.compile(b"[" + re.escape(_ATOM_CHARS + b"]%*") + b"]+")
_LITERAL_RE = re.compile(rb"\{(\d{1,12})\+?\}")
_QUOTED_RE = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"')
#: how deeply parenthesised lists and search keys (``NOT``, ``OR``, ``(...)``) may nest: deeper
#: input is BAD, never a RecursionError (no client needs more than a few levels)
MAX_NESTING = 100
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE_TIME_RE = re.compile(
    r"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)
_SEQSET_RE = re.compile(rb"[0-9:*,]+")
SAVED: list[Range] = []  # "$" (see Cursor.sequence_set): compared by identity, never changed
_SYSTEM = {f.upper(): f for f in SYSTEM_FLAGS}
_KEYWORD_RE = re.compile(rb"[^\x00-\x20()\{%*\"\\\]\x7f-\xff]+")


class ParseError(ValueError):
    """The command does not follow the grammar: the client gets a tagged BAD."""


class String(bytes):
    """A quoted string or literal (as opposed to an atom) in a parenthesised list."""


Item = bytes | String | list["Item"]
#: one range of a sequence set, ``None`` for ``*``
Range = tuple[int | None, int | None]


class Cursor:
    """Reads one assembled command (see the module docstring) from ``pos`` on."""

    utf8 = False  # ENABLE UTF8=ACCEPT (imap/utf8.py): mailbox names are UTF-8, not mUTF-7

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def sp(self) -> None:
        """One space between arguments (several are tolerated)."""
        if self.peek() != b" ":
            raise ParseError("missing argument" if self.at_end() else "expected a space")
        while self.peek() == b" ":
            self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == b" ":
            self.sp()
            return True
        return False

    def end(self) -> None:
        while self.peek() == b" ":
            self.pos += 1
        if not self.at_end():
            raise ParseError("too many arguments")

    def _match(self, regex: re.Pattern[bytes], what: str) -> bytes:
        m = regex.match(self.data, self.pos)
        if not m:
            raise ParseError(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def atom(self) -> bytes:
        return self._match(_ATOM_RE, "an atom")

    def sequence_set(self) -> list[Range]:
        """A sequence set (``1:4,7,9:*``) parsed by ``parse_sequence_set``; ``$`` (RFC 5182
        SEARCHRES) is the ``SAVED`` list, which the command resolves to the saved result."""
        if self.data[self.pos:self.pos + 1] == b"$" and self.data[self.pos + 1:self.pos + 2] in (
                b"", b" "):
            self.pos += 1
            return SAVED
        try:
            return parse_sequence_set(self._match(_SEQSET_RE, "a sequence set"))
        except ValueError as e:
            raise ParseError(str(e)) from None

    def flag(self) -> bytes:
        """``\\Seen`` or a keyword atom."""
        start = self.pos
        if self.peek() == b"\\":
            self.pos += 1
        try:
            return (
                self.data[start : start + 1] + self.atom()
                if self.data[start : start + 1] == b"\\"
                else self.atom()
            )
        except ParseError:
            self.pos = start
            raise

    def number(self) -> int:
        text = self.atom()
        if not text.isdigit():
            raise ParseError("expected a number")
        return int(text)

    def _string(self) -> String | None:
        if self.peek() == b'"':
            m = _QUOTED_RE.match(self.data, self.pos)
            if not m:
                raise ParseError("bad quoted string")
            self.pos = m.end()
            return String(re.sub(rb"\\(.)", rb"\1", m.group(1)))
        if self.peek() == b"{":
            m = _LITERAL_RE.match(self.data, self.pos)
            if not m:
                raise ParseError("bad literal")
            start = m.end()
            end = start + int(m.group(1))
            if end > len(self.data):
                raise ParseError("literal cut short")
            self.pos = end
            return String(self.data[start:end])
        return None

    def string(self) -> String:
        value = self._string()
        if value is None:
            raise ParseError("expected a string")
        return value

    def astring(self) -> bytes:
        value = self._string()
        return value if value is not None else self._match(_ASTRING_RE, "a string")

    def nstring(self) -> bytes | None:
        if self.data[self.pos : self.pos + 3].upper() == b"NIL" and not _ASTRING_RE.match(
            self.data, self.pos + 3
        ):
            self.pos += 3
            return None
        return self.string()

    def literal8(self, plain: bool = False, error: str = "expected a literal8") -> bytes:
        """The data of a literal8 ``~{n}`` (RFC 3516) at the cursor; with ``plain`` of a literal
        ``{n}`` too (APPEND's message, CATENATE's TEXT). ``error``: the message for neither."""
        if self.peek() == b"~":
            self.pos += 1
        elif not plain:
            raise ParseError(error)
        if self.peek() != b"{":
            raise ParseError(error)
        return bytes(self.string())

    def list_mailbox(self) -> bytes:
        """A LIST pattern: a string, or atom characters plus ``%`` and ``*``."""
        value = self._string()
        return value if value is not None else self._match(_LIST_CHARS_RE, "a mailbox pattern")

    def mailbox(self) -> str:
        return mailbox_name(self.astring(), self.utf8)

    def paren_list(self, depth: int = 1) -> list[Item]:
        """``(a "b" (c))`` -> ``[b"a", String(b"b"), [b"c"]]``; flags like ``\\Seen`` are atoms.
        Lists nested deeper than MAX_NESTING are a ParseError."""
        if self.peek() != b"(":
            raise ParseError("expected (")
        if depth > MAX_NESTING:
            raise ParseError("parentheses nested too deeply")
        self.pos += 1
        out: list[Item] = []
        while True:
            while self.peek() == b" ":
                self.pos += 1
            if self.at_end():
                raise ParseError("unbalanced parenthesis")
            if self.peek() == b")":
                self.pos += 1
                return out
            if self.peek() == b"(":
                out.append(self.paren_list(depth + 1))
                continue
            value: String | bytes | None = self._string()
            if value is None:
                value = self._match(re.compile(rb"\\?[^\s()\"{]+"), "a list item")
            out.append(value)

    def token(self) -> bytes:
        """The bytes up to the next space, as sent (for an argument with its own grammar, like a
        SASL initial response, whose errors its own parser reports)."""
        return self._match(re.compile(rb"[^ ]+"), "an argument")

    def rest(self) -> bytes:
        """Everything that is left (for parsers that read their own grammar)."""
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value


def mailbox_name(raw: bytes, utf8: bool = False) -> str:
    """A mailbox name from the wire (modified UTF-7; raw UTF-8 tolerated; ``utf8``: UTF-8 only,
    RFC 6855 3); INBOX in any case is INBOX, also as the first level of a hierarchical name."""
    try:
        name = raw.decode("utf-8" if utf8 else "imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        if utf8:
            raise ParseError("a mailbox name that is not UTF-8") from None
        name = raw.decode("utf-8", "replace")
    head, sep, tail = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        name = "INBOX" + sep + tail
    return name


def modified_utf7(name: str) -> bytes:
    """``name`` in modified UTF-7 (RFC 3501 5.1.3): printable ASCII as itself (``&`` as ``&-``),
    every other run of characters base64 of its UTF-16BE with ``,`` for ``/``. (Twisted's
    imap4-utf-7 codec passes TAB, CR and LF to Python's UTF-7, which drops them.)"""
    out, run = [], []
    for c in [*name, None]:
        if c is not None and not " " <= c <= "~":
            run.append(c)
            continue
        if run:
            data = base64.b64encode("".join(run).encode("utf-16-be"), b"+,").rstrip(b"=")
            out.append(b"&" + data + b"-")
            run = []
        if c is not None:
            out.append(b"&-" if c == "&" else c.encode("ascii"))
    return b"".join(out)


def encode_mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name for the wire: an atom when possible, else a quoted string; in modified
    UTF-7, or with ``utf8`` (RFC 6855 3) in UTF-8."""
    raw = name.encode("utf-8") if utf8 else modified_utf7(name)
    if raw and _ASTRING_RE.fullmatch(raw) and raw.upper() != b"NIL":
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def parse_date_time(text: bytes) -> datetime:
    """``14-Sep-2026 19:07:10 +0200`` (APPEND's date-time) -> an aware datetime."""
    m = _DATE_TIME_RE.match(text.decode("ascii", "replace"))
    month = m.group(2).capitalize() if m else ""
    if not m or month not in _MONTHS:
        raise ParseError("bad date-time")
    offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
    tz = timezone(-offset if m.group(7) == "-" else offset)
    try:
        return datetime(
            int(m.group(3)), _MONTHS.index(month) + 1, int(m.group(1)),
            int(m.group(4)), int(m.group(5)), int(m.group(6)), tzinfo=tz,
        )
    except ValueError as e:
        raise ParseError(f"bad date-time: {e}") from None


def parse_sequence_set(text: bytes) -> list[Range]:
    """``1:3,5,7:*`` -> ``[(1, 3), (5, 5), (7, None)]``; ``None`` stands for ``*``. A number
    that is not one (or 0) is a ValueError."""
    out: list[Range] = []

    def number(part: bytes) -> int | None:
        if part == b"*":
            return None
        if not part.isdigit() or int(part) == 0:
            raise ValueError(f"bad message number {part!r}")
        return int(part)

    for item in text.split(b","):
        lo, sep, hi = item.partition(b":")
        first = number(lo)
        out.append((first, number(hi) if sep else first))
    return out


def parse_flag_list(items: Iterable[Item]) -> frozenset[str]:
    """Flags from a parsed ``(\\Seen $Label)`` list: system flags in their canonical case,
    keywords as atoms; ``\\Recent`` is dropped (it cannot be set); anything else is BAD."""
    flags: set[str] = set()
    for item in items:
        if isinstance(item, (list, String)):
            raise ParseError("a flag must be an atom")
        text = item.decode("ascii", "replace")
        if text.startswith("\\"):
            if text.upper() == "\\RECENT":
                continue
            if text.upper() not in _SYSTEM:
                raise ParseError(f"invalid system flag {text}")
            flags.add(_SYSTEM[text.upper()])
        elif _KEYWORD_RE.fullmatch(item):
            flags.add(text)
        else:
            raise ParseError(f"invalid keyword {text}")
    return frozenset(flags)
