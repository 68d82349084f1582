"""A cheap first look for the audit rules: the literal text a regular expression cannot match
without (``绝密|内部资料``: one of those two words; ``password\\s*[:=]``: ``password``).

Python's ``re`` searches a plain literal fast (a skip search in C), but an alternation, a
case-insensitive pattern or one that starts with a class is tried at every position: 5 to 10
ms per MB each. ``Needles`` finds the literals once (from the parsed pattern) and ``may_match``
says whether a text contains one of them (``str.find`` speed); only then does the full
pattern run. It is only a filter: when it cannot be sure (a pattern without a literal that
every match contains; case-insensitive letters outside ASCII) it says yes.

Case: a case-insensitive pattern's needles are upper-cased and looked for in the upper-cased
text. For ASCII letters that is exact but for two characters that ``re`` also takes as ASCII
letters and ``str.upper`` does not map to them (U+0130 İ for i, U+212A Kelvin sign for k):
a text with one of them is not filtered. Characters without case (CJK, kana, hangul, ASCII
digits and punctuation) are looked for as they are.
"""

from __future__ import annotations

import re
from re import _constants as c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any

_UNCASED = ((0x3000, 0x30FF), (0x3400, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
            (0xFF01, 0xFF20), (0x20000, 0x3134F))
_NOT_UPPERED = ("\u0130", "\u212a")


def _uncased(ch: str) -> bool:
    o = ord(ch)
    return (o < 128 and not ch.isalpha()) or any(lo <= o <= hi for lo, hi in _UNCASED)


class Needles:
    """The needles of one compiled pattern (see the module doc)."""

    def __init__(self, regex: re.Pattern[str]) -> None:
        self.words: tuple[str, ...] = ()
        self.upper = False  # look in the upper-cased text
        try:
            found = _required(_parser.parse(regex.pattern, regex.flags & ~re.I))
        except Exception:  # (a private parser: any surprise means no filter)
            found = None
        if not found:
            return
        if regex.flags & re.I or _scoped_flags(regex.pattern):
            if all(_uncased(ch) for word in found for ch in word):
                self.words = tuple(found)
            elif all(ch.isascii() or _uncased(ch) for word in found for ch in word):
                self.words, self.upper = tuple(w.upper() for w in found), True
        else:
            self.words = tuple(found)

    def may_match(self, text: str, uppered: dict[int, str]) -> bool:
        """Whether the pattern could match ``text`` (``uppered`` caches text.upper() for the
        rules that look at one text)."""
        if not self.words:
            return True
        if self.upper:
            if any(ch in text for ch in _NOT_UPPERED):
                return True
            key = id(text)
            if key not in uppered:
                uppered[key] = text.upper()
            text = uppered[key]
        return any(word in text for word in self.words)


def _scoped_flags(pattern: str) -> bool:
    return "(?" in pattern  # (?i:...) or (?i): then treat every literal as case-insensitive


def _required(items: Any) -> set[str] | None:
    """One set of literals, one of which every match of the sequence ``items`` contains
    (the best of the candidates: the longest shortest word), or None."""
    candidates: list[set[str]] = []
    run: list[str] = []
    for op, av in items:
        if op is c.LITERAL:
            run.append(chr(av))
            continue
        if run:
            candidates.append({"".join(run)})
            run = []
        inner = _inner(op, av)
        if inner:
            candidates.append(inner)
    if run:
        candidates.append({"".join(run)})
    if not candidates:
        return None
    return max(candidates, key=lambda s: (min(len(w) for w in s), -len(s)))


def _inner(op: Any, av: Any) -> set[str] | None:
    if op is c.SUBPATTERN:
        return _required(av[3])
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
        return _required(av[2])
    if op is c.ATOMIC_GROUP:
        return _required(av)
    if op is c.BRANCH:
        alternatives = [_required(branch) for branch in av[1]]
        if any(not a for a in alternatives):
            return None
        return set().union(*alternatives)  # type: ignore[arg-type]
    return None
