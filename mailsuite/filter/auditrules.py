"""The rules file of ``[audit] rules``: one rule a line, ``NAME /REGEX/FLAGS ACTION SCOPE``.

- NAME: letters, digits, ``_ . -``; each name once in the file (it names the rule in the log).
- ``/REGEX/FLAGS``: a Python regular expression between two delimiters (``/``, or any other
  punctuation character, as in Postfix's tables; a backslash escapes it inside). As in
  Postfix's regexp: and pcre: tables matching ignores case, and the flag ``i`` toggles that
  (``/Secret/i`` is case-sensitive); ``m`` (``^``/``$`` at each line), ``s`` (``.`` matches a
  line end) and ``x`` (verbose) are Python's. A pattern that matches the empty text is refused.
- ACTION: ``WARN`` (log only), ``HOLD`` (keep the message in the hold queue), ``REJECT``
  (550 5.7.1), ``BCC:address`` (a copy to a compliance mailbox).
- SCOPE: ``inbound`` (to our domains from outside), ``outbound`` (from our users), ``both``.

``#`` starts a comment line; blank lines are skipped. Every bad line is reported at once
(TableError, ``file:line: why``). ``match`` runs the rules over mimetext's pieces: each rule's
first match in the message, in the message's order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailsuite.filter.mimetext import Piece
from mailsuite.filter.needles import Needles
from mailsuite.tablefile import TableError

ACTIONS = ("WARN", "HOLD", "REJECT", "BCC")
SCOPES = ("inbound", "outbound", "both")
#: the strongest action of several hits wins (BCC and WARN: all of them apply)
STRENGTH = {"WARN": 0, "BCC": 0, "HOLD": 1, "REJECT": 2}

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_FLAGS = {"m": re.M, "s": re.S, "x": re.X}
_BCC = re.compile(r"[^\s<>()\[\],;:\"@]+@[^\s<>()\[\],;:\"@]+\Z")


@dataclass(frozen=True)
class Rule:
    name: str
    regex: re.Pattern[str]
    action: str  # one of ACTIONS
    scope: str  # one of SCOPES
    bcc: str = ""  # the address of BCC:address
    needles: Needles = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needles", Needles(self.regex))


@dataclass(frozen=True)
class Hit:
    rule: Rule
    part: str  # IMAP part number (or HEADER, 2.HEADER)
    match: str


def parse_rules(text: str, filename: str) -> list[Rule]:
    """The rules of a file (see the module doc); TableError lists every bad line."""
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rule = parse_rule(line)
            if rule.name in seen:
                raise ValueError(f"rule {rule.name} is already on line {seen[rule.name]}")
        except ValueError as e:
            errors.append(f"{filename}:{number}: {e}")
            continue
        seen[rule.name] = number
        rules.append(rule)
    if errors:
        raise TableError(errors)
    return rules


def parse_rule(line: str) -> Rule:
    """One rule line; ValueError says what is wrong with it."""
    name, _, rest = line.partition(" ") if " " in line else line.partition("\t")
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a rule name (letters, digits, _ . -)")
    rest = rest.strip()
    if not rest:
        raise ValueError("expected NAME /REGEX/FLAGS ACTION SCOPE")
    regex, rest = _pattern(rest)
    words = rest.split()
    if len(words) != 2:
        raise ValueError(f"expected ACTION SCOPE after the pattern, not {rest.strip()!r}")
    action, bcc = _action(words[0])
    scope = words[1].lower()
    if scope not in SCOPES:
        raise ValueError(f"scope {words[1]!r}: one of {', '.join(SCOPES)}")
    return Rule(name, regex, action, scope, bcc)


def _pattern(text: str) -> tuple[re.Pattern[str], str]:
    """The ``/REGEX/FLAGS`` at the start of ``text``, compiled, and the text after it."""
    delimiter = text[0]
    if delimiter.isalnum() or delimiter.isspace() or delimiter == "\\":
        raise ValueError(f"the pattern must start with a delimiter such as /, not {delimiter!r}")
    i = 1
    while i < len(text) and text[i] != delimiter:
        i += 2 if text[i] == "\\" else 1
    if i >= len(text):
        raise ValueError(f"the pattern has no closing {delimiter}")
    source = text[1:i]
    if delimiter != "/":
        source = source.replace("\\" + delimiter, delimiter)
    flags_end = i + 1
    while flags_end < len(text) and not text[flags_end].isspace():
        flags_end += 1
    flags = re.I
    for flag in text[i + 1:flags_end]:
        if flag == "i":
            flags ^= re.I
        elif flag in _FLAGS:
            flags |= _FLAGS[flag]
        else:
            raise ValueError(f"unknown flag {flag!r} (i, m, s, x)")
    try:
        regex = re.compile(source, flags)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"bad pattern {source!r}: {e}") from None
    if regex.search("") is not None:
        raise ValueError(f"the pattern {source!r} matches the empty text")
    return regex, text[flags_end:]


def _action(word: str) -> tuple[str, str]:
    kind, colon, address = word.partition(":")
    kind = kind.upper()
    if kind not in ACTIONS or bool(colon) != (kind == "BCC"):
        raise ValueError(f"action {word!r}: WARN, HOLD, REJECT or BCC:address")
    if kind == "BCC" and not _BCC.match(address):
        raise ValueError(f"BCC:{address}: not a mail address (user@domain)")
    return kind, address


def match(rules: list[Rule], pieces: Iterable[Piece]) -> list[Hit]:
    """Each rule's first match over ``pieces`` (in the pieces' order), in the rules' order.
    A rule's needles (needles.py) are looked for first: most texts contain none."""
    first: dict[int, Hit] = {}
    waiting = list(enumerate(rules))
    for piece in pieces:
        if not waiting:
            break
        still = []
        uppered: dict[int, str] = {}
        for i, rule in waiting:
            m = rule.regex.search(piece.text) \
                if rule.needles.may_match(piece.text, uppered) else None
            if m is None:
                still.append((i, rule))
            else:
                first[i] = Hit(rule, piece.part, m.group())
        waiting = still
    return [first[i] for i in sorted(first)]
