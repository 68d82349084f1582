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
to (recursion, ``:include:``, ``~/.forward``, privileges) is ``mailsuite.mta.forward``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterator
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
    table, errors, warnings = parse_partly(text, filename)
    for warning in warnings:
        log.warn("{text}", text=warning)
    if errors:
        raise AliasParseError(errors)
    return table


def parse_partly(text: str, filename: str) -> tuple[dict[str, list[Target]], list[str], list[str]]:
    """(table of the good entries, errors, warnings) of one aliases file: a bad line is left
    out of the table (as postalias skips it) and named in the errors (file, line N)."""
    errors: list[str] = []
    warnings: list[str] = []
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
            warnings.append(f"{where}: duplicate entry {name!r} ignored")
            continue
        table[name] = targets
    return table, errors, warnings


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


def read_file(path: str) -> tuple[dict[str, list[Target]], list[str], list[str], int]:
    """One alias file, parsed as ``parse_partly`` does, and the uid that owns it (its |command
    and /file targets run with that user's privileges). OSError when it cannot be read
    (FileNotFoundError when it does not exist). The daemon's map and newaliases both read
    alias files here."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        owner = os.fstat(f.fileno()).st_uid
        text = f.read()
    return (*parse_partly(text, path), owner)


def classify(text: str) -> str:
    """The kind of a target text; see ``Target.kind``."""
    return Target(text, "", 0).kind


Stamp = tuple[int, int, int, int] | None


@dataclass
class _FileTable:
    """What one alias file last gave: its stamp, its entries and its owner (None: missing)."""

    stamp: Stamp
    table: dict[str, list[Target]]
    owner: int | None


class AliasMap:
    """The merged tables of all ``alias_maps`` files, re-read when a file's mtime or size changes.

    Blocking (it stats and reads files): call ``snapshot`` through a ``threads.Blocking``.
    Thread-safe. As Postfix with newaliases, where the running server uses the last table
    built: an edit that breaks a file (bad lines, or unreadable) leaves the file's last good
    table in force until the file is fixed, and each problem (file, line) goes to ``warn``
    (the maillog), once per edit. A file that is broken at the first read (no table built
    yet) gives its good lines, the bad ones are left out with a warning, as postalias builds
    a table. A missing file counts as empty (with a warning), as Postfix does for an unbuilt
    map; a file that cannot be read at the first read makes every lookup fail with
    AliasLookupError (the SMTP server then answers 451 4.3.0, so no mail is lost) until it
    can be read.
    """

    def __init__(self, paths: list[str], local_domains: Collection[str] = (),
                 warn: Callable[[str], None] | None = None) -> None:
        self.paths = list(paths)
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self._warn = warn or (lambda text: log.warn("{text}", text=text))
        self._lock = threading.Lock()
        self._stamps: list[Stamp] | None = None
        self._files: dict[str, _FileTable] = {}  # the last good table of each file
        self._table: dict[str, list[Target]] = {}
        self._owners: dict[str, int] = {}
        self._error: AliasLookupError | None = None

    @staticmethod
    def _stamp(path: str) -> Stamp:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)  # ctime: a chmod too

    def _load(self, stamps: list[Stamp]) -> None:
        unusable: list[str] = []
        for path, stamp in zip(self.paths, stamps, strict=True):
            known = self._files.get(path)
            if known is None or known.stamp != stamp:
                self._read(path, stamp, known, unusable)
        table: dict[str, list[Target]] = {}
        owners: dict[str, int] = {}
        for path in self.paths:
            known = self._files.get(path)
            if known is not None:
                for name, targets in known.table.items():
                    table.setdefault(name, targets)
                if known.owner is not None:
                    owners[path] = known.owner
        self._table, self._owners = table, owners
        self._error = AliasLookupError("; ".join(unusable)) if unusable else None
        if not unusable and "postmaster" not in table:
            self._warn(postmaster_warning(self.paths))

    def _read(self, path: str, stamp: Stamp, known: _FileTable | None,
              unusable: list[str]) -> None:
        """Read one file into ``_files`` (or keep what it gave before); its problems go to
        ``warn``, and into ``unusable`` when lookups cannot go on without it."""
        try:
            table, errors, warnings, owner = read_file(path)
        except FileNotFoundError:
            self._warn(f"{path}: does not exist; treated as empty")
            self._files[path] = _FileTable(stamp, {}, None)
            return
        except OSError as e:
            if known is not None:
                self._warn(f"{path}: cannot read: {e.strerror}; the table read before stays in"
                           " force until it can be read")
            else:
                self._warn(f"{path}: cannot read: {e.strerror}; local mail is deferred until"
                           " it can be read")
                unusable.append(f"{path}: cannot read: {e.strerror}")
            return
        for message in warnings + errors:
            self._warn(message)
        if errors and known is not None:
            self._warn(f"{path}: {_lines(errors)}; the table read before stays in force until"
                       " the file is fixed (newaliases lists the problems)")
            known.stamp = stamp  # warn once per edit, not at every lookup
            return
        if errors:
            self._warn(f"{path}: {_lines(errors)} left out, the other entries are in force"
                       " (newaliases lists the problems)")
        self._files[path] = _FileTable(stamp, table, owner)

    def _refresh(self) -> None:
        stamps = [self._stamp(p) for p in self.paths]
        if stamps != self._stamps or self._error is not None:  # unreadable: try each time
            self._stamps = stamps
            self._load(stamps)

    def snapshot(self) -> tuple[dict[str, list[Target]], dict[str, int]]:
        """The current table and the owner uid of each file read, re-read if a file changed.

        Raises AliasLookupError while a file that was never read cannot be read.
        """
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise self._error
            return self._table, self._owners


def _lines(errors: list[str]) -> str:
    return "1 bad line" if len(errors) == 1 else f"{len(errors)} bad lines"


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
            file_table, file_errors, file_warnings, _ = read_file(path)
        except FileNotFoundError:
            warnings.append(f"{path}: does not exist; treated as empty")
            continue
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror}")
            continue
        for name, targets in file_table.items():
            table.setdefault(name, targets)
        errors.extend(file_errors)
        warnings.extend(file_warnings)
    if not errors and "postmaster" not in table:
        warnings.append(postmaster_warning(paths))
    return table, errors, warnings
