"""Postfix's ``regexp:`` and ``pcre:`` lookup tables (regexp_table(5), pcre_table(5)) on
Python's re, for the content checks (mailsuite.filter.checks).

The syntax is Postfix's: one rule per logical line (a line starting with whitespace continues
the one before it; empty lines and lines whose first non-blank is ``#`` are skipped)::

    /pattern/flags result text         the first rule that matches gives its result
    !/pattern/ result                  matches when the pattern does not
    /pattern1/!/pattern2/ result       (regexp: only) pattern1 matches and pattern2 does not
    if /pattern/                       the rules up to the matching endif are tried only
    ...                                when the pattern matches (if !/pattern/: when not)
    endif

Any non-alphanumeric character delimits a pattern. Matching is case-insensitive unless the
``i`` flag toggles it. ``$1``, ``${1}``, ``$(1)`` in the result are the pattern's groups,
``$$`` is a ``$``. Flags: regexp: ``i`` ``m`` (REG_NEWLINE: ``.`` stops and ``^``/``$`` match
at line ends) ``x`` (POSIX basic syntax instead of extended); pcre: ``i`` ``m`` ``s`` ``x``
``A`` (anchored) ``E`` (dollar end-only: our subjects never end in a newline, so it changes
nothing) ``X`` (PCRE_EXTRA: Python rejects unknown escapes anyway). ``U`` (ungreedy) has no
Python counterpart and is refused.

A POSIX pattern is translated to Python's syntax (bracket expressions with ``[:class:]``, the
backslash literal inside brackets, GNU's ``\\<`` ``\\>`` ``\\``` ``\\'``, an escaped ordinary
character is that character); a PCRE pattern is given to re as it is. Where Postfix skips a
bad rule with a warning, a table here is refused as a whole (``TableError``, ``FILE:LINE:
message``): a skipped REJECT rule is a hole nobody sees.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

class TableError(Exception):
    """A table that cannot be used; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negated: bool
    anchored: bool = False

    def find(self, text: str) -> re.Match[str] | None:
        return self.regex.match(text) if self.anchored else self.regex.search(text)

    def holds(self, text: str) -> bool:
        return (self.find(text) is not None) != self.negated


@dataclass(frozen=True)
class Rule:
    """``/first/`` (``!/second/``) ``result``: ``result`` is a list of text and group numbers."""

    line: int
    first: _Pattern
    second: _Pattern | None
    result: tuple[str | int, ...]

    def expand(self, match: re.Match[str] | None) -> str:
        if match is None:  # a negated pattern: its result has no $number (checked)
            return "".join(str(p) for p in self.result)
        return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in self.result)


@dataclass(frozen=True)
class _If:
    line: int
    pattern: _Pattern
    endif: int  # index of the matching endif in Table.rules


@dataclass(frozen=True)
class _Endif:
    line: int


@dataclass(frozen=True)
class Table:
    """One parsed table: ``lookup`` gives the first matching rule's result and its line."""

    kind: str
    path: str
    rules: tuple[Rule | _If | _Endif, ...]

    def lookup(self, text: str) -> tuple[str, int] | None:
        rules, i = self.rules, 0
        while i < len(rules):
            rule = rules[i]
            if isinstance(rule, Rule):
                m = rule.first.find(text)
                if (m is not None) != rule.first.negated and (
                        rule.second is None or rule.second.holds(text)):
                    return rule.expand(m), rule.line
            elif isinstance(rule, _If) and not rule.pattern.holds(text):
                i = rule.endif
            i += 1
        return None


#: checks a rule's result text at load time: None when good, else why not
Validate = Callable[[str], "str | None"]


def parse_table(text: str, kind: str, path: str, validate: Validate | None = None) -> Table:
    """The table in ``text`` (a file's contents); TableError names the first bad line."""
    rules: list[Rule | _If | _Endif] = []
    open_ifs: list[tuple[int, int]] = []  # (index in rules, line) of each if not yet closed
    for number, line in logical_lines(text, path):
        rule = _parse_line(line, number, kind, path, validate)
        if isinstance(rule, _If):
            open_ifs.append((len(rules), number))
        elif isinstance(rule, _Endif):
            if not open_ifs:
                raise TableError(path, number, "endif without a matching if")
            index, if_line = open_ifs.pop()
            opened = rules[index]
            assert isinstance(opened, _If)
            rules[index] = _If(if_line, opened.pattern, len(rules))
        rules.append(rule)
    if open_ifs:
        raise TableError(path, open_ifs[-1][1], "if without a matching endif")
    return Table(kind, path, tuple(rules))


def logical_lines(text: str, path: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each logical line, as Postfix's readllines."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not out:
                raise TableError(path, number, "a line starting with whitespace continues "
                                 "nothing (do not indent the rules between if and endif)")
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            out.append((number, line))
    return out


def _parse_line(line: str, number: int, kind: str, path: str,
                validate: Validate | None) -> Rule | _If | _Endif:
    word = re.match(r"[A-Za-z0-9]*", line).group().lower()  # type: ignore[union-attr]
    if not word:
        return _parse_rule(line, number, kind, path, validate)
    if word == "if":
        pattern, rest = _pattern(line[2:], number, kind, path)
        if rest.strip():
            raise TableError(path, number, f"text after the if pattern: {rest.strip()!r}")
        return _If(number, pattern, -1)
    if word == "endif":
        if line[5:].strip():
            raise TableError(path, number, "text after endif")
        return _Endif(number)
    raise TableError(path, number, f"not a rule: {line[:40]!r} (a rule starts with a "
                     "/pattern/, or is if or endif)")


def _parse_rule(line: str, number: int, kind: str, path: str,
                validate: Validate | None) -> Rule:
    first, rest = _pattern(line, number, kind, path)
    second = None
    if kind == "regexp" and rest.startswith("!"):
        second, rest = _pattern(rest, number, kind, path)
    if rest[:1] not in ("", " ", "\t"):
        raise TableError(path, number, f"no space after the pattern: {rest[:20]!r}")
    text = rest.strip()
    if not text:
        raise TableError(path, number, "no result after the pattern")
    result = _substitutions(text, number, path)
    groups = [p for p in result if isinstance(p, int)]
    if groups and first.negated:
        raise TableError(path, number, "$number in the result of a negated pattern")
    if groups and max(groups) > first.regex.groups:
        raise TableError(path, number, f"${max(groups)} but the pattern has "
                         f"{first.regex.groups} group(s)")
    problem = validate(text) if validate is not None else None
    if problem:
        raise TableError(path, number, problem)
    return Rule(number, first, second, tuple(result))


def _substitutions(text: str, number: int, path: str) -> list[str | int]:
    """The result text as literal parts and group numbers (Postfix's mac_parse)."""
    parts: list[str | int] = []
    pos = 0
    for m in re.finditer(r"\$(?:\$|\{([^}]*)\}|\(([^)]*)\)|(\w+))", text):
        parts.append(text[pos:m.start()])
        pos = m.end()
        name = m.group(1) if m.group(1) is not None else m.group(2) \
            if m.group(2) is not None else m.group(3)
        if name is None:  # $$
            parts.append("$")
        elif not name.isdigit() or not name.isascii() or int(name) < 1:
            raise TableError(path, number, f"${name}: a substitution is a group number "
                             "($1, ${1}); write $$ for a $")
        else:
            parts.append(int(name))
    parts.append(text[pos:])
    if re.search(r"\$[{(]", text[pos:]):
        raise TableError(path, number, "unclosed ${ or $( in the result")
    return [p for p in parts if p != ""]


def _pattern(text: str, number: int, kind: str, path: str) -> tuple[_Pattern, str]:
    """One ``!/regex/flags`` at the start of ``text``, and the text after it."""
    m = re.match(r"[\s!]*", text)
    assert m is not None
    negated = m.group().count("!") % 2 == 1
    pos = m.end()
    if pos >= len(text):
        raise TableError(path, number, "no pattern")
    delimiter, start, pos = text[pos], pos + 1, pos + 1
    while pos < len(text) and text[pos] != delimiter:
        pos += 2 if text[pos] == "\\" else 1
    if pos >= len(text):
        raise TableError(path, number, f"no closing {delimiter!r} after the pattern")
    source, pos = text[start:pos], pos + 1
    stop = re.compile(r"[\s!]" if kind == "regexp" else r"\s")
    flags_end = pos
    while flags_end < len(text) and not stop.match(text[flags_end]):
        flags_end += 1
    flags = text[pos:flags_end]
    return _compile(source, flags, negated, number, kind, path), text[flags_end:]


_REGEXP_FLAGS, _PCRE_FLAGS = "imx", "imsxAEUX"


def _compile(source: str, flags: str, negated: bool, number: int, kind: str,
             path: str) -> _Pattern:
    allowed = _REGEXP_FLAGS if kind == "regexp" else _PCRE_FLAGS
    on = {c: False for c in allowed}
    on["i"] = True  # case-insensitive unless toggled
    on["x"] = kind == "regexp"  # regexp: extended syntax unless toggled
    for flag in flags:
        if flag not in allowed:
            raise TableError(path, number, f"unknown {kind} flag {flag!r} (known: {allowed})")
        on[flag] = not on[flag]
    if on.get("U"):
        raise TableError(path, number, "flag U (PCRE_UNGREEDY) is not supported: write "
                         "the lazy quantifiers (*? +?) instead")
    re_flags = re.IGNORECASE if on["i"] else 0
    if kind == "regexp":
        pattern = posix_to_python(source, extended=on["x"], where=(path, number))
        re_flags |= re.MULTILINE if on["m"] else re.DOTALL
    else:
        pattern = source
        re_flags |= (re.MULTILINE if on["m"] else 0) | (re.DOTALL if on["s"] else 0) | (
            re.VERBOSE if on["x"] else 0)
    try:
        regex = re.compile(pattern, re_flags)
    except (re.error, OverflowError, RecursionError) as e:
        raise TableError(path, number, f"bad pattern /{source}/: {e}") from None
    return _Pattern(regex, negated, anchored=bool(on.get("A")))


_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "xdigit": "0-9A-Fa-f",
    "cntrl": "\\x00-\\x1f\\x7f", "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e",
    "punct": "".join("\\" + c for c in string.punctuation),
}
_GNU_ESCAPES = {"<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z",
                "w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B"}
_BASIC_OPERATORS = {"(": "(", ")": ")", "{": "{", "}": "}", "|": "|", "+": "+", "?": "?"}


def posix_to_python(source: str, extended: bool, where: tuple[str, int]) -> str:
    """A POSIX (glibc) regular expression, extended or basic, in Python's syntax."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\" and i + 1 < n:
            d = source[i + 1]
            if not extended and d in _BASIC_OPERATORS:
                out.append(_BASIC_OPERATORS[d])
            elif d in _GNU_ESCAPES:
                out.append(_GNU_ESCAPES[d])
            elif d.isdigit() and d != "0":
                out.append("\\" + d)  # a back-reference
            else:
                out.append(re.escape(d))
            i += 2
        elif c == "[":
            text, i = _bracket(source, i, where)
            out.append(text)
        elif not extended and (c in "(){}|+?" or (c == "*" and _basic_start(out))):
            out.append("\\" + c)
            i += 1
        else:
            out.append("\\\\" if c == "\\" else c)
            i += 1
    return "".join(out)


def _basic_start(out: list[str]) -> bool:
    """In a basic RE a ``*`` at the start (or after ``\\(`` or ``^``) is a literal."""
    return not out or out[-1] in ("(", "^", "|")


def _bracket(source: str, start: int, where: tuple[str, int]) -> tuple[str, int]:
    """The POSIX bracket expression at ``start`` in Python's syntax, and the index after it."""
    i = start + 1
    out = ["["]
    if source[i:i + 1] == "^":
        out.append("^")
        i += 1
    first = True
    while i < len(source):
        c = source[i]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), i + 1
        first = False
        if c == "[" and source[i + 1:i + 2] in (":", "=", "."):
            kind = source[i + 1]
            end = source.find(kind + "]", i + 2)
            if end < 0:
                raise TableError(*where, f"unclosed [{kind} in a bracket expression")
            name = source[i + 2:end]
            if kind == ":":
                if name not in _CLASSES:
                    raise TableError(*where, f"unknown character class [:{name}:]")
                out.append(_CLASSES[name])
            else:
                out.append(re.escape(name))
            i = end + 2
            continue
        out.append("\\" + c if c in "\\[]&~|^" else c)
        i += 1
    raise TableError(*where, "unclosed [ in the pattern")


class TableFile:
    """One ``kind:path`` table, re-read when the file changes (its inode, size or mtime; looked
    at at most once a second, from any thread). The first read raises TableError or OSError;
    a later change that does not parse is refused and the previous version stays in use."""

    def __init__(self, kind: str, path: str, validate: Validate | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kind, self.path, self.validate, self.clock = kind, path, validate, clock
        self._lock = threading.Lock()
        self._seen: object = _signature(os.stat(path))
        self.table = self._read()
        self._checked = clock()

    def _read(self) -> Table:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO does not hang us
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.path)
            text = f.read().decode("utf-8", "surrogateescape")
        return parse_table(text, self.kind, self.path, self.validate)

    def current(self) -> tuple[Table, str | None]:
        """The table to use, and why a change was not taken (said once per change)."""
        with self._lock:
            now = self.clock()
            if now - self._checked < 1.0:
                return self.table, None
            self._checked = now
            try:
                seen: object = _signature(os.stat(self.path))
            except OSError as e:
                seen = ("unreadable", e.errno)
                why = f"{self.path}: {e.strerror}"
            if seen == self._seen:
                return self.table, None
            self._seen = seen
            if isinstance(seen, tuple) and seen[0] == "unreadable":
                return self.table, f"{why}: the previous version stays in use"
            try:
                self.table = self._read()
            except TableError as e:
                return self.table, f"{e}: the table is refused, the previous version " \
                    "stays in use"
            except OSError as e:
                return self.table, f"{self.path}: {e.strerror}: the previous version " \
                    "stays in use"
            return self.table, None


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
