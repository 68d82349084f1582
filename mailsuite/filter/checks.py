"""Postfix's built-in content checks (header_checks(5)): header_checks, mime_header_checks,
nested_header_checks and body_checks, as one Stage of the accept pipeline.

Each logical header (its folded lines kept, joined by their newlines, as cleanup(8) sees it)
and each body line is looked up in the tables of its class; the first table with a matching
rule gives the action (tables: mailsuite.filter.regexptable):

    header_checks          the message's own headers, except the MIME ones
    mime_header_checks     MIME headers (Content-Description, -Disposition, -ID,
                           -Transfer-Encoding, -Type, MIME-Version) anywhere, and every header
                           of a multipart body part
    nested_header_checks   the non-MIME headers of an attached message/rfc822 message
    body_checks            every other line: bodies, preambles, epilogues, boundary lines and
                           the empty line after each header block, the first
                           body_checks_size_limit bytes of each body segment; a line
                           longer than line_length_limit is looked at in pieces of that size

Actions, as Postfix's cleanup_act(): REJECT [text] (``550 5.7.1 message content rejected``,
or the text: a leading ``4.x.x`` defers with 451), DISCARD, HOLD (the first one; checks go on),
WARN, INFO, PREPEND text, REPLACE text, IGNORE, STRIP, REDIRECT user@domain (the last one
replaces every recipient), BCC user@domain, PASS, DUNNO and OK (the line stays as it is).
REJECT, DISCARD, REDIRECT and PASS end the checks for the message. FILTER is refused when the
table is read: mailsuite has no content_filter transports. Each action is logged as cleanup
logs it::

    QUEUEID: reject: header Subject: buy now from host[1.2.3.4]; from=<a@b> to=<c@d>
        proto=ESMTP helo=<x>: 5.7.1 message content rejected

The work runs in a thread (mailsuite.threads): a 10 MB body never holds the reactor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.filter.regexptable import TableError, TableFile
from mailsuite.mta.transaction import PICKUP, Decision, Discard, Hold, Message, Recipient, Verdict
from mailsuite.startup import StartupError, unreadable_by

log = Logger()

HEADER, MIME, NESTED, BODY = ("header_checks", "mime_header_checks", "nested_header_checks",
                              "body_checks")
MIME_HEADERS = frozenset(("content-description", "content-disposition", "content-id",
                          "content-transfer-encoding", "content-type", "mime-version"))
_NEEDS_TEXT = ("PREPEND", "REPLACE", "REDIRECT", "BCC")
_ACTIONS = frozenset(("REJECT", "WARN", "INFO", "PASS", "DISCARD", "HOLD", "IGNORE", "STRIP",
                      "DUNNO", "OK", *_NEEDS_TEXT))
_IS_HEADER = re.compile(r"[!-9;-~]+[ \t]*:")
_NESTING_LIMIT = 100  # Postfix's mime_nesting_limit


def _split_action(result: str) -> tuple[str, str]:
    """``ACTION optional text`` as (ACTION in capitals, text)."""
    parts = result.split(None, 1)
    return (parts[0].upper() if parts else ""), (parts[1].strip() if len(parts) > 1 else "")


def validate_action(text: str) -> str | None:
    """Why ``text`` is not a content-check action (None: it is one)."""
    word, rest = _split_action(text)
    if word == "FILTER":
        return "FILTER is not supported: mailsuite has no content_filter transports " \
            "(use a milter, smtpd_milters)"
    if word not in _ACTIONS:
        return f"unknown action {text.split()[0]!r}"
    if word in _NEEDS_TEXT and not rest:
        return f"{word} needs its text"
    if word in ("REDIRECT", "BCC") and "@" not in rest and "$" not in rest:
        return f"{word} needs user@domain"
    return None


@dataclass(frozen=True)
class Context:
    """What a log line says about the message (Postfix's cleanup_act_log)."""

    queue_id: str
    sender: str
    recipient: str | None
    origin: str
    proto: str | None
    helo: str | None

    @classmethod
    def of(cls, message: Message) -> Context:
        env = message.envelope
        c = env.client
        pickup = c.door == PICKUP
        proto = None if pickup else ("LMTP" if c.protocol.startswith("LMTP") else
                                     "ESMTP" if c.protocol.startswith("ESMTP") else "SMTP")
        first = env.recipients[0].address if env.recipients else None
        return cls(env.queue_id, env.sender, first, "local" if pickup else c.label, proto,
                   None if pickup else c.helo)

    def line(self, action: str, where: str, content: str, text: str) -> str:
        out = f"{self.queue_id}: {action}: {where} {content[:200]} from {self.origin};" \
            f" from=<{self.sender}>"
        if self.recipient is not None:
            out += f" to=<{self.recipient}>"
        if self.proto:
            out += f" proto={self.proto}"
        if self.helo is not None:
            out += f" helo=<{self.helo}>"
        return out + (f": {text}" if text else "")


@dataclass
class Tables:
    """The tables of each class (in the order of the key's value) and the limits."""

    by_class: dict[str, list[TableFile]]
    body_limit: int = 51200
    line_limit: int = 2048

    def lookup(self, where: str, text: str, notes: list[str]) -> str | None:
        for table_file in self.by_class.get(where, ()):
            table, refused = table_file.current()
            if refused:
                notes.append(refused)
            found = table.lookup(text)
            if found is not None:
                return found[0]
        return None


@dataclass
class Outcome:
    """What the scan found: the log lines, the edits of the message and its envelope."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # refused table changes
    edits: list[tuple[int, int, bytes]] = field(default_factory=list)
    reject: str | None = None
    discard: str | None = None
    hold: str | None = None
    redirect: str | None = None
    bcc: list[str] = field(default_factory=list)
    filtering: bool = True

    def decision(self) -> Decision | None:
        if self.reject is not None:
            dsn, _, text = self.reject.partition(" ")
            return Verdict(451 if dsn.startswith("4") else 550, dsn, text)
        if self.discard is not None:
            return Discard(self.discard)
        if self.hold is not None:
            return Hold(self.hold)
        return None


def _reason(text: str) -> str:
    """REJECT's text with its DSN code (Postfix's dsn_prepend("5.7.1", text))."""
    if not text:
        return "5.7.1 message content rejected"
    if re.match(r"[245]\.\d{1,3}\.\d{1,3}(\s|$)", text):
        return text if text[0] in "45" else "4" + text[1:]
    return f"5.7.1 {text}"


class _Act:
    """One matched action applied to one header or body piece at ``start:end`` of the data."""

    def __init__(self, out: Outcome, ctx: Context, map_class: str) -> None:
        self.out, self.ctx, self.map_class = out, ctx, map_class

    def __call__(self, result: str, where: str, content: str, start: int, end: int,
                 drop_end: int) -> None:
        """Act on the piece at ``start:end`` (``start:drop_end`` is what dropping it takes)."""
        word, text = _split_action(result)
        out, line = self.out, self.ctx.line
        if word == "REJECT":
            if text.startswith("2."):
                out.lines.append(f"warning: bad DSN action in {text} -- need 4.x.x or 5.x.x")
            out.reject = _reason(text)
            out.filtering = False
            out.lines.append(line("reject", where, content, out.reject))
        elif word in ("WARN", "INFO", "PASS", "STRIP"):
            out.lines.append(line("warning" if word == "WARN" else word.lower(), where,
                                  content, text))
            if word == "PASS":
                out.filtering = False
            elif word == "STRIP":
                out.edits.append((start, drop_end, b""))
        elif word == "DISCARD":
            out.lines.append(line("discard", where, content, text))
            out.discard = text or f"discarded by {self.map_class}"
            out.filtering = False
        elif word == "HOLD":
            if out.hold is None and out.discard is None:
                out.lines.append(line("hold", where, content, text))
                out.hold = text or f"{self.map_class}: {' '.join(content.split())[:100]}"
        elif word == "IGNORE":
            out.edits.append((start, drop_end, b""))
        elif word in ("PREPEND", "REPLACE"):
            self._edit(word, text, where, content, start, end)
        elif word in ("REDIRECT", "BCC"):
            self._address(word, text, where, content)

    def _edit(self, word: str, text: str, where: str, content: str, start: int,
              end: int) -> None:
        if not text or (where == "header" and not _IS_HEADER.match(text)):
            self.out.lines.append(
                f"warning: bad {word} header text \"{text}\" in {self.map_class} map -- "
                "need \"headername: headervalue\"")
            return
        self.out.lines.append(self.ctx.line(word.lower(), where, content, text))
        new = text.encode("utf-8", "surrogateescape")
        if word == "PREPEND":
            self.out.edits.append((start, start, new + b"\n"))
        else:
            self.out.edits.append((start, end, new + (b"\n" if where == "header" else b"")))

    def _address(self, word: str, text: str, where: str, content: str) -> None:
        if "@" not in text:
            kind = "target" if word == "REDIRECT" else "address"
            self.out.lines.append(f"warning: bad {word} {kind} \"{text}\" in "
                                  f"{self.map_class} map -- need user@domain")
            return
        self.out.lines.append(self.ctx.line(word.lower(), where, content, text))
        if word == "REDIRECT":
            self.out.redirect = text
            self.out.filtering = False
        else:
            self.out.bcc.append(text)


def _lines(data: bytes, pos: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each line from ``pos``: ``end`` before its newline."""
    n = len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        yield pos, (n if end < 0 else end)
        pos = n if end < 0 else end + 1


_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]*)"|([^\s;]+))', re.IGNORECASE)
_CTYPE = re.compile(r"\s*([!-~]+?)\s*/\s*([!-~]+?)\s*(?:;|$)")


class Scan:
    """One message through the tables (Postfix's mime_state + cleanup callbacks): headers of
    the message, of each part and of each attached message, then the body lines."""

    def __init__(self, tables: Tables, ctx: Context, data: bytes) -> None:
        self.tables, self.ctx, self.data = tables, ctx, data
        self.out = Outcome()
        self.boundaries: list[bytes] = []
        self.segment = 0  # bytes of the current body segment seen so far

    def run(self) -> Outcome:
        data, pos = self.data, 0
        header_class = "primary"
        while pos < len(data) and self.out.filtering:
            pos, ctype = self._headers(pos, header_class)
            header_class = self._after_headers(ctype)
            if data[pos:pos + 1] == b"\n" and self.out.filtering:
                # the empty line after a header block is body_checks' (mime_state does so),
                # also before the headers of an attached message
                if self.tables.by_class.get(BODY):
                    self._body_line(pos, pos, pos + 1)
                pos, self.segment = pos + 1, 1
            if header_class == "body":
                pos, header_class = self._body(pos)
        return self.out

    def _headers(self, pos: int, header_class: str) -> tuple[int, bytes]:
        """Check the header block at ``pos``; where it ends (its empty line, or the first line
        that is no header) and its Content-Type value."""
        data, start, ctype = self.data, None, b""
        for line_start, line_end in _lines(data, pos):
            if start is not None and data[line_start:line_start + 1] in (b" ", b"\t"):
                continue
            if start is not None:
                ctype = self._header(start, line_start, header_class) or ctype
                if not self.out.filtering:
                    return len(data), b""
            if line_start == line_end:
                return line_start, ctype
            if not _IS_HEADER.match(data[line_start:line_end].decode("latin-1")):
                return line_start, ctype  # not a header: the body starts here
            start = line_start
        if start is not None:
            ctype = self._header(start, len(data), header_class) or ctype
        return len(data), ctype

    def _header(self, start: int, end: int, header_class: str) -> bytes | None:
        """Check the logical header at ``start:end`` (its last newline included); its value
        when it is a Content-Type."""
        raw = self.data[start:end]
        text = raw.removesuffix(b"\n").decode("utf-8", "surrogateescape")
        name = text.split(":", 1)[0].strip().lower()
        where = MIME if name in MIME_HEADERS or header_class == "part" else \
            NESTED if header_class == "nested" else HEADER
        result = self.tables.lookup(where, text, self.out.warnings)
        if result is not None:
            before = len(self.out.edits)
            _Act(self.out, self.ctx, where)(result, "header", text, start, end, end)
            for edit in self.out.edits[before:]:
                if edit[0] == start and edit[1] == end:  # replaced or dropped
                    text = edit[2].decode("utf-8", "surrogateescape")
                    name = text.split(":", 1)[0].strip().lower()
        if name == "content-type":
            return text.split(":", 1)[1].encode("utf-8", "surrogateescape") or b" "
        return None

    def _after_headers(self, ctype: bytes) -> str:
        """What follows a header block: ``body`` or the headers of an attached message."""
        self.segment = 0
        value = ctype.decode("utf-8", "surrogateescape")
        m = _CTYPE.match(value)
        kind = (m.group(1).lower(), m.group(2).lower()) if m else ("text", "plain")
        if kind == ("message", "rfc822"):
            return "nested"
        if kind[0] == "multipart" and len(self.boundaries) < _NESTING_LIMIT:
            b = _BOUNDARY.search(value)
            if b:
                self.boundaries.append((b.group(1) or b.group(2) or "").encode(
                    "utf-8", "surrogateescape"))
        return "body"

    def _body(self, pos: int) -> tuple[int, str]:
        """Body lines from ``pos`` up to a part's headers: (where they start, ``part``), or the
        end of the message."""
        data = self.data
        tables, limit = self.tables, self.tables.body_limit
        check = bool(tables.by_class.get(BODY))
        while pos < len(data) and self.out.filtering:
            if not check or (limit and self.segment >= limit):
                if not self.boundaries:
                    return len(data), "body"
                j = data.find(b"\n--", pos - 1)  # only a boundary matters now
                if j < 0:
                    return len(data), "body"
                pos = j + 1
            end = data.find(b"\n", pos)
            nxt = len(data) if end < 0 else end + 1
            end = len(data) if end < 0 else end
            part = self._boundary(data[pos:end]) if data[pos:pos + 2] == b"--" else None
            if check and (not limit or self.segment < limit):
                self._body_line(pos, end, nxt)
            self.segment += nxt - pos
            pos = nxt
            if part == "open":
                return pos, "part"
            if part == "close":
                self.segment = 0
        return pos, "body"

    def _boundary(self, line: bytes) -> str | None:
        for depth in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[depth]
            if line[2:2 + len(b)] == b:
                closing = line[2 + len(b):2 + len(b) + 2] == b"--"
                del self.boundaries[depth + (0 if closing else 1):]
                return "close" if closing else "open"
        return None

    def _body_line(self, start: int, end: int, nxt: int) -> None:
        size = self.tables.line_limit
        for piece in range(start, max(end, start + 1), size):
            piece_end = min(piece + size, end)
            text = self.data[piece:piece_end].decode("utf-8", "surrogateescape")
            result = self.tables.lookup(BODY, text, self.out.warnings)
            if result is not None:
                whole = piece == start and piece_end == end
                _Act(self.out, self.ctx, BODY)(result, "body", text, piece, piece_end,
                                               nxt if whole else piece_end)
                if not self.out.filtering:
                    return


def apply_edits(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` with each ``(start, end, new)`` region replaced (regions do not overlap;
    insertions at one place keep their order)."""
    parts, pos = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1] != e[0])):
        if start < pos:  # a second edit of a region already edited
            continue
        parts += [data[pos:start], new]
        pos = end
    parts.append(data[pos:])
    return b"".join(parts)


class ContentChecks:
    """The Stage: scans in a thread, then logs, edits the message and decides."""

    def __init__(self, tables: Tables, maillog: Any, blocking: Any) -> None:
        self.tables, self.maillog, self.blocking = tables, maillog, blocking

    def __call__(self, message: Message) -> defer.Deferred[Decision | None]:
        scan = Scan(self.tables, Context.of(message), message.data)
        return self.blocking(scan.run).addCallback(self._apply, message)

    def _apply(self, out: Outcome, message: Message) -> Decision | None:
        for warning in out.warnings:
            log.warn("content checks: {why}", why=warning)
            self.maillog.write("cleanup", f"warning: {warning}")
        for line in out.lines:
            self.maillog.write("cleanup", line)
        if out.edits:
            message.data = apply_edits(message.data, out.edits)
        env = message.envelope
        if out.redirect is not None:
            env.recipients[:] = [Recipient(out.redirect)]
        env.recipients.extend(Recipient(a) for a in out.bcc)
        return out.decision()


KEYS = ((HEADER, "header_checks"), (MIME, "mime_header_checks"),
        (NESTED, "nested_header_checks"), (BODY, "body_checks"))


def from_config(mail: Any, maillog: Any, blocking: Any) -> ContentChecks | None:
    """The stage for [mail]'s *_checks keys (None when all are empty); a table that cannot be
    read is a start-up error ``[mail] KEY: FILE:LINE: message``."""
    by_class = _open_tables(mail)
    if not by_class:
        return None
    return ContentChecks(Tables(by_class, mail.body_checks_size_limit,
                                mail.line_length_limit), maillog, blocking)


def _open_tables(mail: Any) -> dict[str, list[TableFile]]:
    by_class: dict[str, list[TableFile]] = {}
    opened: dict[tuple[str, str], TableFile] = {}  # one TableFile for a table named twice
    for where, key in KEYS:
        for kind, path in getattr(mail, key):
            try:
                if (kind, path) not in opened:
                    opened[kind, path] = TableFile(kind, path, validate_action)
            except TableError as e:
                raise StartupError(f"[mail] {key}: {e}") from None
            except OSError as e:
                raise StartupError(f"[mail] {key}: {path}: {e.strerror}") from None
            by_class.setdefault(where, []).append(opened[kind, path])
    return by_class


def check_at_start(mail: Any, owner: tuple[int, int]) -> None:
    """In the root master, before the network process starts (privilege separation): every
    table parses, and ``owner`` (mail_owner, whose network process reads the tables from then
    on) may read it; else a StartupError, as from_config."""
    by_class = _open_tables(mail)
    paths: dict[str, str] = {}  # each table and the first key naming it
    for where, key in KEYS:
        for table_file in by_class.get(where, ()):
            paths.setdefault(table_file.path, key)
    for path, why in unreadable_by(list(paths), *owner).items():
        raise StartupError(f"[mail] {paths[path]}: {path}: {why} (the tables are read by "
                           "mail_owner)")
