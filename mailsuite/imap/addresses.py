"""RFC 5322 address lists as IMAP sees them (RFC 3501 7.4.2 ENVELOPE, 6.4.4 SEARCH FROM/TO/...).

``parse_address_list`` turns a header value into ``Address`` entries in order. A group
(``name: a@b, c@d;``) becomes a start marker (``mailbox`` = the group name, ``host`` None),
its members, then an end marker (everything None), as RFC 3501 wants them in an ENVELOPE.
Comments are dropped from addresses (``<user (x)@ (y) domain>`` is ``user@domain``); the last
comment of a bare addr-spec is its display name (``user@domain (Real Name)``), as mail readers
show it. A source route (``<@route:user@domain>``) is kept as ``route`` (the ENVELOPE's adl).
Malformed input never raises: what cannot be read as an address is given as a bare mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass

_SPECIALS = '<>@:;,'


@dataclass(frozen=True)
class Address:
    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None

    group_marker: bool = False  # the start (mailbox = group name) or end of a group

    def search_text(self) -> str:
        """What SEARCH FROM/TO/CC/BCC matches against besides the raw header:
        ``Name <mailbox@host>`` with comments removed (groups: the group name)."""
        addr = self.mailbox or ""
        if self.host:
            addr += "@" + self.host
        if self.name:
            return f"{self.name} <{addr}>"
        return addr


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) with kinds: 'atom', 'quoted', 'comment', 'literal' ([...]) and specials."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == '"':
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            out.append(("quoted", "".join(buf)))
            i += 1
        elif ch == "(":
            depth, i, buf = 1, i + 1, []
            while i < n and depth:
                if text[i] == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                if depth:
                    buf.append(text[i])
                i += 1
            out.append(("comment", "".join(buf).strip()))
        elif ch == "[":
            end = text.find("]", i)
            end = n if end < 0 else end + 1
            out.append(("literal", text[i:end]))
            i = end
        elif ch in _SPECIALS or ch == ")":  # a ")" without its "(" is a special too: as an
            out.append((ch, ch))  # atom it was empty, read again and again without an end
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIALS + '"()[':
                i += 1
            out.append(("atom", text[start:i]))
    return out


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.comments: list[str] = []

    def peek(self) -> str | None:
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] == "comment":
            self.comments.append(self.tokens[self.pos][1])
            self.pos += 1
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        self.peek()
        _, text = self.tokens[self.pos]
        self.pos += 1
        return text

    def words(self, stop: str) -> list[str]:
        """Atoms, quoted strings and literals (and any other special not in ``stop``)."""
        out = []
        while (kind := self.peek()) is not None and kind not in stop:
            out.append(self.take())
        return out


def _mailbox(r: _Reader) -> Address | None:
    """One mailbox (name-addr or addr-spec) up to ',' ';' or the end."""
    r.comments = []
    phrase = r.words("<@,;:")
    kind = r.peek()
    if kind == "<":
        r.take()
        route = None
        if r.peek() == "@":
            route_words = r.words(":>")
            if r.peek() == ":":
                r.take()
                route = "".join(route_words)
        local = r.words("@>,;")
        host = None
        if r.peek() == "@":
            r.take()
            host = "".join(r.words(">,;"))
        if r.peek() == ">":
            r.take()
        r.words(",;")  # junk after '>'
        name = " ".join(phrase) if phrase else None
        return Address(name, route, "".join(local) or None, host)
    if kind == "@":
        r.take()
        host = "".join(r.words(",;"))
        name = r.comments[-1] if r.comments else None
        return Address(name or None, None, "".join(phrase) or None, host)
    if not phrase:
        return None
    name = r.comments[-1] if r.comments else None
    return Address(name or None, None, "".join(phrase), None)


def parse_address_list(value: str) -> list[Address]:
    r = _Reader(_tokens(value))
    out: list[Address] = []
    while r.peek() is not None:
        if r.peek() in (",", ";", ">"):
            r.take()
            continue
        start = r.pos
        phrase = r.words("<@,;:")
        if r.peek() == ":" and phrase:
            r.take()
            out.append(Address(None, None, " ".join(phrase), None, group_marker=True))
            while r.peek() not in (None, ";"):
                if r.peek() == ",":
                    r.take()
                    continue
                member = _mailbox(r)
                if member is None and r.peek() not in (None, ";", ","):
                    r.take()  # a stray special: skip it
                elif member is not None:
                    out.append(member)
            if r.peek() == ";":
                r.take()
            out.append(Address(None, None, None, None, group_marker=True))
            continue
        r.pos = start
        mailbox = _mailbox(r)
        if mailbox is not None:
            out.append(mailbox)
        elif r.peek() not in (None, ",", ";"):
            r.take()  # a stray special
    return out
