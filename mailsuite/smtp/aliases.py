"""The alias_maps files (``/etc/aliases``): parsing, re-reading on change, validation.

The syntax is aliases(5) as Postfix reads it::

    # comment
    postmaster: root
    team:   boss, alice,
            bob                      # a line starting with whitespace continues the entry
    "sales dept": \\boss             # quoted name; \\user stops expansion
    prog:   "|/usr/bin/procmail -a x", /var/log/mail.copy, :include:/etc/mail/list
    owner-team: boss                 # delivery errors of "team" go to owner-team

Names are case-insensitive. This module only reads and checks the tables; what a name expands
to (recursion, ``:include:``, ``~/.forward``, privileges) is ``mailsuite.smtp.forward``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()

#: Postfix's expansion_size_limit: more final recipients than this is a configuration error.
EXPANSION_SIZE_LIMIT = 1000
#: How deep aliases may refer to aliases.
MAX_DEPTH = 100


class AliasError(Exception):
    """Base of the errors of this module."""


class AliasParseError(AliasError):
    """One or more syntax errors in alias files; each message names the file and the line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class AliasLookupError(AliasError):
    """The alias table cannot be used right now (unreadable or broken file, expansion too big)."""


@dataclass(frozen=True)
class Target:
    """One right-hand-side item of an alias, as written, with where it came from."""

    text: str
    filename: str
    lineno: int

    @property
    def kind(self) -> str:
        """``user`` (``\\name``), ``name`` (maybe another alias), ``address`` (has ``@``),
        ``program`` (``|cmd``), ``file`` (``/path``) or ``include`` (``:include:/path``)."""
        t = self.text
        if t.startswith("|"):
            return "program"
        if t.lower().startswith(":include:"):
            return "include"
        if t.startswith("/"):
            return "file"
        if t.startswith("\\"):
            return "user"
        if "@" in t:
            return "address"
        return "name"

    def __str__(self) -> str:
        return self.text


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def _logical_lines(text: str, filename: str, errors: list[str]) -> Iterator[tuple[int, str]]:
    """(first line number, joined text) of each entry; comments and blank lines dropped."""
    start, parts = 0, list[str]()
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not parts:
                errors.append(f"{filename}, line {lineno}: continuation line without an entry")
                continue
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = lineno, [stripped]
    if parts:
        yield start, " ".join(parts)


def parse_aliases(text: str, filename: str) -> dict[str, list[Target]]:
    """Parse one aliases file. Raises AliasParseError listing every bad line (file, line N).

    A name given twice keeps its first entry (with a warning), as postalias does.
    """
    errors: list[str] = []
    table: dict[str, list[Target]] = {}
    for lineno, entry in _logical_lines(text, filename, errors):
        where = f"{filename}, line {lineno}"
        pieces = _split_outside_quotes(entry, ":")
        # The name ends at the first colon outside quotes; ':include:' lives on the right side.
        name, value = _unquote(pieces[0]).lower(), ":".join(pieces[1:])
        if len(pieces) < 2:
            errors.append(f"{where}: need name: value, got {entry!r}")
            continue
        quoted_name = pieces[0].strip().startswith('"')
        if not name or (not quoted_name and any(c in name for c in " \t")):
            errors.append(f"{where}: bad alias name {pieces[0].strip()!r}")
            continue
        targets = []
        for item in _split_outside_quotes(value, ","):
            item = _unquote(item)
            if item:
                targets.append(Target(item, filename, lineno))
        if not targets:
            errors.append(f"{where}: alias {name!r} has no targets")
            continue
        if name in table:
            log.warn("{where}: duplicate entry {name!r} ignored", where=where, name=name)
            continue
        table[name] = targets
    if errors:
        raise AliasParseError(errors)
    return table


def parse_list(text: str, filename: str) -> list[Target]:
    """The items of a ``~/.forward`` or ``:include:`` file: comma- or newline-separated targets,
    ``#`` comment lines skipped, quotes as in aliases (``"|cmd with spaces"``)."""
    targets = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("#"):
            continue
        for item in _split_outside_quotes(line, ","):
            item = _unquote(item)
            if item:
                targets.append(Target(item, filename, lineno))
    return targets


def classify(text: str) -> str:
    """The kind of a target text; see ``Target.kind``."""
    return Target(text, "", 0).kind


Stamp = tuple[int, int, int] | None


class AliasMap:
    """The merged tables of all ``alias_maps`` files, re-read when a file's mtime or size changes.

    Blocking (it stats and reads files): call ``expand``/``check`` through ``threads.blocking``.
    Thread-safe. A missing file counts as empty (with a warning), as Postfix does for an unbuilt
    map; an unreadable or broken file makes every lookup fail with AliasLookupError (the SMTP
    server then answers 451 4.3.0, so no mail is lost) until the file is fixed.
    """

    def __init__(self, paths: list[str], local_domains: Collection[str] = ()) -> None:
        self.paths = list(paths)
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self._lock = threading.Lock()
        self._stamps: list[Stamp] | None = None
        self._table: dict[str, list[Target]] = {}
        self._owners: dict[str, int] = {}
        self._error: AliasError | None = None

    @staticmethod
    def _stamp(path: str) -> Stamp:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        table: dict[str, list[Target]] = {}
        owners: dict[str, int] = {}
        errors: list[str] = []
        for path in self.paths:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    owners[path] = os.fstat(f.fileno()).st_uid
                    text = f.read()
            except FileNotFoundError:
                log.warn("alias map {path} does not exist; treated as empty", path=path)
                continue
            except OSError as e:
                errors.append(f"{path}: cannot read: {e.strerror}")
                continue
            try:
                for name, targets in parse_aliases(text, path).items():
                    table.setdefault(name, targets)
            except AliasParseError as e:
                errors.extend(e.errors)
        if errors:
            for message in errors:
                log.error("alias map error: {message}", message=message)
            self._error = AliasParseError(errors)
        else:
            self._error = None
            self._table = table
            self._owners = owners
            if "postmaster" not in table:
                log.warn("{text}", text=postmaster_warning(self.paths))

    def _refresh(self) -> None:
        stamps = [self._stamp(p) for p in self.paths]
        if stamps != self._stamps:
            self._stamps = stamps
            self._load()

    def check(self) -> None:
        """Read the files now; raise AliasParseError if any is broken (for start-up checks)."""
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise self._error

    def snapshot(self) -> tuple[dict[str, list[Target]], dict[str, int]]:
        """The current table and the owner uid of each file read, re-read if a file changed.

        Raises AliasLookupError while a file is broken or unreadable.
        """
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise AliasLookupError(str(self._error))
            return self._table, self._owners


def postmaster_warning(paths: list[str]) -> str:
    return (
        f"{', '.join(paths)}: no postmaster alias; RFC 5321 requires postmaster to reach a"
        " person: add a line like \"postmaster: root\""
    )


def validate(paths: list[str]) -> tuple[dict[str, list[Target]], list[str], list[str]]:
    """Read every alias file as newaliases does: (merged table, errors, warnings).

    Errors carry the file and line; a missing file is a warning (an empty map), as is a table
    without ``postmaster``.
    """
    table: dict[str, list[Target]] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            warnings.append(f"{path}: does not exist; treated as empty")
            continue
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror}")
            continue
        try:
            for name, targets in parse_aliases(text, path).items():
                table.setdefault(name, targets)
        except AliasParseError as e:
            errors.extend(e.errors)
    if not errors and "postmaster" not in table:
        warnings.append(postmaster_warning(paths))
    return table, errors, warnings
