"""LIST / LSUB mailbox patterns (RFC 3501 6.3.8) matched in time linear in the name.

``*`` matches any characters, ``%`` any characters but the hierarchy delimiter. A pattern is
never turned into a regex: a backtracking engine takes exponential time on ``*%*%*%...b`` (one
such LIST froze the whole server). The patterns of one command are compiled into one
bit-parallel automaton instead (Shift-And with wildcards): bit ``i`` of the state says "the first
``i`` tokens of a pattern match the characters read so far", so each character of a name costs a
few operations on one integer, whatever the wildcards. Runs of wildcards collapse first (``*%``
and ``%*`` are ``*``, ``%%`` is ``%``), so the automaton never has two wildcards in a row.

A pattern starting with ``INBOX`` in any case matches those five letters in any case: INBOX is
case-insensitive (RFC 3501 5.1).
"""

from __future__ import annotations

from collections.abc import Iterable

from mailsuite.imap.parser import DELIMITER

#: Tokens (after collapsing) over all patterns of one command: a match costs at most
#: len(name) operations on integers of this many bits. A mailbox name has at most 1000 bytes
#: (``store.folders.MAX_NAME``): one pattern of over 2001 tokens (1000 letters, a wildcard
#: around each) cannot match anything.
MAX_PATTERN_TOKENS = 8192


class PatternTooLong(ValueError):
    """The patterns of one command exceed ``MAX_PATTERN_TOKENS`` (the client gets NO [LIMIT])."""


def collapse(pattern: str, limit: int = MAX_PATTERN_TOKENS) -> str:
    """The pattern with every run of wildcards replaced by ``*`` (if it holds one) or ``%``;
    ``PatternTooLong`` as soon as that is longer than ``limit``."""
    out: list[str] = []
    for ch in pattern:
        if ch in "*%" and out and out[-1] in "*%":
            if ch == "*":
                out[-1] = "*"
            continue
        if len(out) >= limit:
            raise PatternTooLong("LIST patterns too long")
        out.append(ch)
    return "".join(out)


def full_pattern(ref: str, pattern: str) -> str:
    """The LIST reference and pattern as one pattern (a pattern from the root ignores ref)."""
    return ref + pattern if ref and not pattern.startswith(DELIMITER) else pattern


class ListMatcher:
    """Does a mailbox name match any of the patterns? ``match`` is O(len(name)) integer steps."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._literal: dict[str, int] = {}  # character -> bits of the tokens that are it
        self._star = self._percent = self._start = self._accept = 0
        bit = 0
        for pattern in patterns:
            if bit >= MAX_PATTERN_TOKENS:
                raise PatternTooLong("LIST patterns too long")
            bit = self._add(collapse(pattern, MAX_PATTERN_TOKENS - bit), bit)
        self._wild = self._star | self._percent
        self._start = self._close(self._start)

    def _add(self, pattern: str, bit: int) -> int:
        """Lay out one pattern from state ``bit``: token i is bit ``bit + i``, its accepting
        state the bit after its last token (no token there, so nothing leaves it)."""
        self._start |= 1 << bit
        fold = 5 if pattern[:5].upper() == "INBOX" else 0
        for i, ch in enumerate(pattern):
            mask = 1 << (bit + i)
            if ch == "*":
                self._star |= mask
            elif ch == "%":
                self._percent |= mask
            else:
                for variant in {ch, ch.upper(), ch.lower()} if i < fold else {ch}:
                    self._literal[variant] = self._literal.get(variant, 0) | mask
        end = bit + len(pattern)
        self._accept |= 1 << end
        return end + 1

    def _close(self, state: int) -> int:
        """Wildcards match the empty string: a state before one is also a state after it."""
        return state | (state & self._wild) << 1

    def match(self, name: str) -> bool:
        state = self._start
        literal, star, percent = self._literal, self._star, self._percent
        for ch in name:
            moved = (state & literal.get(ch, 0)) << 1 | state & star
            if ch != DELIMITER:
                moved |= state & percent
            state = self._close(moved)
            if not state:
                return False
        return bool(state & self._accept)


__all__ = ["MAX_PATTERN_TOKENS", "ListMatcher", "PatternTooLong", "collapse", "full_pattern"]
