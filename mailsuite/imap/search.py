"""SEARCH: tokenising, parsing the search keys into a tree, evaluating it.

A parsed key is a tuple ``(NAME, *args)``; ``("AND", [keys])``, ``("NOT", key)``,
``("OR", a, b)``, ``("SEQ", ranges)``, ``("UID", ranges)``. ``needs(key)`` tells the server
whether headers or whole messages must be read before ``matches`` can answer.

Extensions add search keys with ``register_key`` (WITHIN's OLDER and YOUNGER: imap/within.py;
OBJECTID's EMAILID and THREADID, SAVEDATE's SAVED*): a parse of the arguments, a match, what the
match needs read, and a ``prepare`` run once before a search. CONDSTORE's MODSEQ, whose
arguments take an optional entry name, is parsed here (``_Parser.modseq``).
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from email import policy
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Any

from mailsuite.imap.addresses import parse_address_list
from mailsuite.imap.collation import contains
from mailsuite.imap.message import (
    MAX_MIME_DEPTH,
    content_type,
    header_fields,
    split_message,
    split_multipart,
)
from mailsuite.imap.parser import MAX_NESTING, Range, parse_sequence_set
from mailsuite.store.interfaces import UnknownUID

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}


class SearchSyntaxError(ValueError):
    """The search program cannot be parsed (the client gets BAD)."""


@dataclass(frozen=True)
class ExtraKey:
    """A search key of an extension: ``parse(parser)`` reads its arguments (``parser.next()``
    gives each ``Token``) and returns them as a tuple (the key is ``(NAME, *args)``);
    ``match(key, candidate)``; ``need`` is what ``needs`` answers for it; ``prepare(view,
    key)``, when set, is awaited before the search (what ``match`` looks up, worked out)."""

    parse: Any
    match: Any
    need: str = ""
    prepare: Any = None


EXTRA_KEYS: dict[str, ExtraKey] = {}


def register_key(name: str, key: ExtraKey) -> None:
    """Make ``name`` (upper case) a search key of SEARCH, SORT and THREAD."""
    EXTRA_KEYS[name] = key


@dataclass(frozen=True)
class Token:
    value: bytes
    quoted: bool = False


_TOKEN_RE = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\{(\d{1,12})\+?\}|([^\s()"]+))')


def tokenize(text: bytes) -> list[Token]:
    """Atoms, quoted strings (unescaped), literals (``{N}`` followed by N bytes, as the server
    assembles them: see ``mailsuite.imap.parser``) and parentheses."""
    tokens: list[Token] = []
    pos = 0
    text = text.strip(b" ")
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise SearchSyntaxError(f"cannot parse {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(4) is not None:
            end = pos + int(m.group(4))
            if end > len(text):
                raise SearchSyntaxError("literal cut short")
            tokens.append(Token(text[pos:end], quoted=True))
            pos = end
        elif m.group(1) or m.group(2):
            tokens.append(Token(m.group(1) or m.group(2)))
        elif m.group(3) is not None:
            tokens.append(Token(re.sub(rb"\\(.)", rb"\1", m.group(3)), quoted=True))
        else:
            tokens.append(Token(m.group(5)))
    return tokens


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_NO_ARG = {"ALL", "NEW", "OLD", "RECENT"} | set(_FLAG_KEYS)
_STRING_ARG = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "KEYWORD", "UNKEYWORD"}
_DATE_ARG = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
def _parse_date(token: Token) -> date:
    m = re.fullmatch(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})", token.value)
    if not m or m.group(2).upper().decode() not in _MONTHS:
        raise SearchSyntaxError(f"bad date {token.value!r}")
    try:
        return date(int(m.group(3)), _MONTHS[m.group(2).upper().decode()], int(m.group(1)))
    except ValueError as e:
        raise SearchSyntaxError(str(e)) from e


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def next(self) -> Token:
        if self.pos >= len(self.tokens):
            raise SearchSyntaxError("missing search key or argument")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def key(self, depth: int = 1) -> tuple[Any, ...]:
        """One search key; ``(...)``, NOT and OR each nest one level deeper, at most
        MAX_NESTING (so ``needs`` and ``matches``, which recurse too, stay within the stack)."""
        if depth > MAX_NESTING:
            raise SearchSyntaxError("search keys nested too deeply")
        token = self.next()
        if token.value == b"(" and not token.quoted:
            keys = []
            while self.pos < len(self.tokens) and self.tokens[self.pos].value != b")":
                keys.append(self.key(depth + 1))
            if self.pos >= len(self.tokens) or not keys:
                raise SearchSyntaxError("unbalanced or empty parenthesis")
            self.pos += 1
            return ("AND", keys)
        name = token.value.decode("ascii", "replace").upper()
        if token.quoted:
            raise SearchSyntaxError(f"unexpected string {token.value!r}")
        if name in _NO_ARG:
            return (name,)
        if name in _STRING_ARG:
            return (name, self.next().value)
        if name in _DATE_ARG:
            return (name, _parse_date(self.next()))
        if name == "HEADER":
            return (name, self.next().value.upper(), self.next().value)
        if name in ("LARGER", "SMALLER"):
            arg = self.next().value
            if not arg.isdigit():
                raise SearchSyntaxError(f"{name} needs a number")
            return (name, int(arg))
        if name == "MODSEQ":
            return self.modseq()
        if name in EXTRA_KEYS:
            return (name, *EXTRA_KEYS[name].parse(self))
        if name == "NOT":
            return ("NOT", self.key(depth + 1))
        if name == "OR":
            return ("OR", self.key(depth + 1), self.key(depth + 1))
        if name == "$" or (name == "UID" and self.tokens[self.pos:self.pos + 1] == [Token(b"$")]):
            self.pos += name == "UID"
            return ("$", None)  # RFC 5182: bound to the saved result (esearch.bind_saved)
        try:
            if name == "UID":
                return ("UID", parse_sequence_set(self.next().value))
            return ("SEQ", parse_sequence_set(token.value))
        except ValueError:
            raise SearchSyntaxError(f"unknown search key {name}") from None


    def modseq(self) -> tuple[Any, ...]:
        """``MODSEQ ["/flags/name" priv|shared|all] n`` (RFC 7162 3.1.5): one mod-sequence per
        message here, whatever the entry."""
        arg = self.next()
        if arg.quoted:
            kind = self.next().value.upper()
            if kind not in (b"PRIV", b"SHARED", b"ALL"):
                raise SearchSyntaxError("MODSEQ entry type is priv, shared or all")
            arg = self.next()
        if not arg.value.isdigit() or len(arg.value) > 19 or int(arg.value) >= 1 << 63:
            raise SearchSyntaxError("MODSEQ needs a mod-sequence")
        return ("MODSEQ", int(arg.value))


def parse_search(text: bytes) -> tuple[str | None, tuple[Any, ...]]:
    """``(charset or None, key tree)`` for the arguments of SEARCH."""
    tokens = tokenize(text)
    charset = None
    if len(tokens) >= 2 and tokens[0].value.upper() == b"CHARSET" and not tokens[0].quoted:
        charset = tokens[1].value.decode("ascii", "replace").upper()
        tokens = tokens[2:]
    parser = _Parser(tokens)
    keys = []
    while parser.pos < len(tokens):
        keys.append(parser.key())
    if not keys:
        raise SearchSyntaxError("missing search key")
    return charset, ("AND", keys)


async def prepare_keys(view: Any, key: tuple[Any, ...]) -> None:
    """Each extension key's ``prepare`` of the program awaited (once per key name)."""
    pending, done = [key], set()
    while pending:
        k = pending.pop()
        name = k[0]
        if name == "AND":
            pending.extend(k[1])
        elif name == "NOT":
            pending.append(k[1])
        elif name == "OR":
            pending.extend((k[1], k[2]))
        elif name in EXTRA_KEYS and EXTRA_KEYS[name].prepare is not None and name not in done:
            done.add(name)
            await EXTRA_KEYS[name].prepare(view, k)


def needs(key: tuple[Any, ...]) -> str:
    """'' (flags and sizes are enough), 'header' or 'body'."""
    name = key[0]
    if name in EXTRA_KEYS:
        return EXTRA_KEYS[name].need
    if name in ("BODY", "TEXT"):
        return "body"
    if name in ("BCC", "CC", "FROM", "SUBJECT", "TO", "HEADER",
                "SENTBEFORE", "SENTON", "SENTSINCE"):
        return "header"
    subkeys: list[tuple[Any, ...]] = []
    if name == "AND":
        subkeys = key[1]
    elif name == "NOT":
        subkeys = [key[1]]
    elif name == "OR":
        subkeys = [key[1], key[2]]
    found = {needs(k) for k in subkeys}
    return "body" if "body" in found else "header" if "header" in found else ""


@dataclass
class Candidate:
    """What ``matches`` knows of one message."""

    seq: int
    uid: int
    flags: frozenset[str]  # including \\Recent when recent in this session
    when: Any  # the message's info (``date``/``tz`` or ``internal_date``), or a datetime
    size: int
    max_seq: int
    max_uid: int
    header: bytes = b""
    raw: bytes = b""
    view: Any = None  # the session's ImapMailboxView (for EXTRA_KEYS)


def _decoded_values(header: bytes, name: bytes) -> list[str]:
    values = []
    for field_name, raw in header_fields(header):
        if field_name == name:
            value = raw.split(b":", 1)[1] if b":" in raw else b""
            text = re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()
            # undecodable encoded-words: match the raw text
            with contextlib.suppress(ValueError, LookupError, email.errors.HeaderParseError):
                text = str(make_header(decode_header(text)))
            values.append(text)
    return values


def _address_texts(header: bytes, name: bytes) -> list[str]:
    """The decoded field values, and each address in them as ``Name <mailbox@host>`` with
    comments removed, so ``<user (c)@ (c) example.org>`` is found by ``user@example.org``."""
    values = _decoded_values(header, name)
    return values + [a.search_text() for v in values for a in parse_address_list(v)]


def _contains(haystack: str, needle: bytes) -> bool:
    return contains(haystack, needle)  # i;unicode-casemap (RFC 5051)


def _text_parts(raw: bytes) -> list[bytes]:
    """The text/* entities of a message, found as BODYSTRUCTURE finds parts: multiparts and
    message/rfc822 opened, at most MAX_MIME_DEPTH deep, without recursion (the email package's
    own walk recurses once per level, and anyone can mail a message nested a thousand deep)."""
    found: list[bytes] = []
    stack = [(raw, 0)]
    while stack:
        entity, depth = stack.pop()
        header, body = split_message(entity)
        ctype, boundary = content_type(header)
        if ctype.startswith("multipart/") and boundary:
            if depth < MAX_MIME_DEPTH:
                stack.extend((p, depth + 1) for p in reversed(split_multipart(body, boundary)))
        elif ctype == "message/rfc822":
            if depth < MAX_MIME_DEPTH:
                stack.append((body, depth + 1))
        elif ctype.startswith("text/"):
            found.append(entity)
    return found


def _body_text(raw: bytes) -> str:
    _, body = split_message(raw)
    texts = [body.decode("utf-8", "replace")]
    for entity in _text_parts(raw):
        try:  # one part, not a multipart: the email package does not recurse here
            part = email.message_from_bytes(entity, policy=policy.default)
            texts.append(str(part.get_content()))
        except (ValueError, LookupError, TypeError, AttributeError, KeyError):
            pass  # a broken part or charset: the raw body is still searched
    return "\n".join(texts)


def _in_ranges(value: int, ranges: list[Range], top: int) -> bool:
    for lo, hi in ranges:
        a, b = top if lo is None else lo, top if hi is None else hi
        if min(a, b) <= value <= max(a, b):
            return True
    return False


def _sent_date(c: Candidate) -> date | None:
    values = _decoded_values(c.header, b"DATE")
    try:
        return parsedate_to_datetime(values[0]).date() if values else None
    except (TypeError, ValueError):
        return None


_EPOCH_DAY = date(1970, 1, 1).toordinal()


def _internal_day(when: Any) -> int:
    """The day (since 1970-01-01) of the internal date in its own zone (RFC 3501: time and zone
    disregarded). A store index entry has it as integers: no datetime per message."""
    epoch = getattr(when, "date", None)
    if type(epoch) is int:
        return (epoch + when.tz) // 86400  # type: ignore[no-any-return]
    if not isinstance(when, datetime):
        when = when.internal_date
    return when.toordinal() - _EPOCH_DAY


def _compare_date(name: str, day: Any, wanted: Any) -> bool:
    if day is None:
        return False
    if name.endswith("BEFORE"):
        return day < wanted
    if name.endswith("ON"):
        return day == wanted
    return day >= wanted


def matches(key: tuple[Any, ...], c: Candidate) -> bool:
    name = key[0]
    if name == "AND":
        return all(matches(k, c) for k in key[1])
    if name == "NOT":
        return not matches(key[1], c)
    if name == "OR":
        return matches(key[1], c) or matches(key[2], c)
    if name == "ALL":
        return True
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return (flag in c.flags) == wanted
    if name == "RECENT":
        return "\\Recent" in c.flags
    if name == "NEW":
        return "\\Recent" in c.flags and "\\Seen" not in c.flags
    if name == "OLD":
        return "\\Recent" not in c.flags
    if name in ("KEYWORD", "UNKEYWORD"):
        present = key[1].decode("utf-8", "replace").casefold() in {f.casefold() for f in c.flags}
        return present == (name == "KEYWORD")
    if name == "SUBJECT":
        return any(_contains(v, key[1]) for v in _decoded_values(c.header, b"SUBJECT"))
    if name in ("BCC", "CC", "FROM", "TO"):
        return any(_contains(v, key[1]) for v in _address_texts(c.header, name.encode()))
    if name == "HEADER":
        return any(_contains(v, key[2]) for v in _decoded_values(c.header, key[1]))
    if name == "BODY":
        return _contains(_body_text(c.raw), key[1])
    if name == "TEXT":
        return _contains(split_message(c.raw)[0].decode("utf-8", "replace"), key[1]) or _contains(
            _body_text(c.raw), key[1]
        )
    if name in ("BEFORE", "ON", "SINCE"):
        return _compare_date(name, _internal_day(c.when), key[1].toordinal() - _EPOCH_DAY)
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _compare_date(name, _sent_date(c), key[1])
    if name == "LARGER":
        return c.size > key[1]
    if name == "SMALLER":
        return c.size < key[1]
    if name == "UID":
        return _in_ranges(c.uid, key[1], c.max_uid)
    if name == "MODSEQ":  # ``when`` is the message's info
        return int(getattr(c.when, "modseq", 0)) >= key[1]
    if name == "SEQ":
        return _in_ranges(c.seq, key[1], c.max_seq)
    if name == "$":
        return key[1] is not None and c.uid in key[1]
    if name in EXTRA_KEYS:
        return bool(EXTRA_KEYS[name].match(key, c))
    raise SearchSyntaxError(f"unknown search key {name}")


_RECENT = frozenset({"\\Recent"})
_CHUNK = 256  # messages whose headers are read in one store call


#: the keys that read no more than a message's UID, number, flags, size, header or body
_PLAIN = _NO_ARG | _STRING_ARG | {"HEADER", "LARGER", "SMALLER", "UID", "SEQ", "$", "SENTBEFORE",
                                  "SENTON", "SENTSINCE"}


def _plain(key: tuple[Any, ...]) -> bool:
    """``key`` needs no message info (no date, mod-sequence or save date, no extension)."""
    name = key[0]
    if name == "AND":
        return all(map(_plain, key[1]))
    if name == "NOT":
        return _plain(key[1])
    if name == "OR":
        return _plain(key[1]) and _plain(key[2])
    return name in _PLAIN and name not in EXTRA_KEYS


def _rows(view: Any, key: tuple[Any, ...]) -> Iterator[tuple[int, frozenset[str], Any, int]]:
    """(UID, flags, info, size) of each message of the view; the info None for a ``_plain``
    key, read from the store's columns (no entry made of each)."""
    if _plain(key):
        return ((uid, flags, None, size) for uid, flags, size in view.plain_rows())
    return ((info.uid, info.flags, info, info.size) for info in view.rows())


async def run_search(view: Any, key: tuple[Any, ...], uid: bool) -> list[int]:
    """Sequence numbers (or UIDs when ``uid``) of the view's messages that match ``key``.

    Only what the key needs is read: nothing, the headers (in batches) or whole messages.
    Messages already expunged by someone else (EXPUNGE still pending here) never match.
    """
    need = needs(key)
    await prepare_keys(view, key)
    rows = _rows(view, key)
    count, max_uid = view.count(), view._last_uid()
    found: list[int] = []
    for start in range(0, count, _CHUNK):
        chunk = [
            (seq, row)
            for seq, row in enumerate(islice(rows, _CHUNK), start + 1)
            if not view.is_expunged(row[0])
        ]
        headers = (
            await view.mailbox.read_headers([row[0] for _, row in chunk])
            if need == "header"
            else {}
        )
        for seq, (u, flags, info, size) in chunk:
            flags = flags | _RECENT if view.is_recent(u) else flags
            candidate = Candidate(seq, u, flags, info, size, count, max_uid, view=view)
            if need == "body":
                try:
                    candidate.raw = await view.mailbox.read(u)
                except UnknownUID:
                    continue
                candidate.header = split_message(candidate.raw)[0]
            elif need == "header":
                if u not in headers:
                    continue
                candidate.header = headers[u]
            if matches(key, candidate):
                found.append(u if uid else seq)
    return found
