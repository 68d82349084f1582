"""Per-user storage and message-count quotas over the mbox store, as Dovecot's quota plugin.

Rules (``[mailbox] quota_rule``, Dovecot's rule text): ``*:storage=1G`` and/or
``*:messages=10000``, several separated by spaces (``*:storage=1G *:messages=10000``) or joined
in one rule (``*:storage=1G:messages=10000``). As Dovecot: ``storage`` is in kilobytes unless
it has a ``B``/``k``/``M``/``G``/``T`` suffix, ``bytes=`` is in bytes, ``0`` is no limit. Only
the ``*`` (every folder) root exists: a per-folder rule (``Trash:storage=+100M``) is refused.

Per-user overrides (``[mailbox] quota_rule_file``): ``user:storage=2G`` or
``user:messages=500`` (or both, ``user:storage=2G:messages=500``) a line, ``#`` comments; a
user's line replaces what it names of the default (``user:storage=0``: no storage limit for
that user). A broken line is refused at start with the file and line named; the file is read
again when it changes (a stat at most once a second), a broken version then is logged and the
last good one kept.

Usage is counted over INBOX and every folder without reading every mailbox at each delivery:
``UsageBook`` keeps, per user, the (inode, size, mtime) of each mbox file with its message
count, in ``~/mail/.imap/.quota`` (written with the user's rights: the per-user agent under
privilege separation). A mailbox whose stat is unchanged costs a stat; one that only grew
(a delivery, an APPEND, Postfix or mutt appending) is counted from where it was; any other
change (an expunge's compaction, a rewrite by mutt) recounts that mailbox alone. Storage is the
mbox files' size on disk (what ``du`` shows, the mbox ``From`` lines included).
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.logger import Logger

from mailsuite.fsutil import atomic_write
from mailsuite.tablefile import TableError, TableFile, read_text
from mailsuite.store import folders
from mailsuite.store.interfaces import InvalidMailboxName, StoreRefused

log = Logger()

#: Dovecot's storage units (a bare number is kilobytes, as Dovecot reads ``storage=``)
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
#: the quota file is stat'ed at most this often (seconds)
RULE_FILE_CHECK = 1.0
#: the usage record beside the mailbox indexes (a level starting with "." is no folder name)
USAGE_FILE = ".quota"
#: bytes read at a time when counting the messages of an mbox file
CHUNK = 1 << 20
#: the tail of each counted file kept to recognise a file that only grew
TAIL = 64
#: directory entries looked at, at most, when listing a user's mbox files
MAX_FOLDERS = 100_000
#: Dovecot's quota_exceeded_message
EXCEEDED = "Quota exceeded (mailbox for user is full)"
#: Dovecot's quota_status_overquota
DEFAULT_REPLY = (552, "5.2.2", "Mailbox is full")


class QuotaExceeded(StoreRefused):
    """The message would take the user over a limit: IMAP ``NO [OVERQUOTA]`` (RFC 9208),
    SMTP/LMTP ``552 5.2.2`` (or 4.2.2, ``quota_status_overquota``)."""

    code = "OVERQUOTA"

    def __init__(self, text: str = EXCEEDED, reply: tuple[int, str, str] | None = None) -> None:
        super().__init__(text)
        #: the SMTP/LMTP reply (quota_status_overquota): code, DSN, text
        self.reply = reply or DEFAULT_REPLY


@dataclass(frozen=True)
class Limits:
    """A user's limits: bytes and messages, 0 (or None, not set) meaning no limit."""

    storage: int | None = None
    messages: int | None = None

    def over(self, other: Limits) -> Limits:
        """These limits with what ``other`` sets replacing them (a user's line over ``*``)."""
        return Limits(self.storage if other.storage is None else other.storage,
                      self.messages if other.messages is None else other.messages)

    @property
    def any(self) -> bool:
        return bool(self.storage or self.messages)


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Usage:
    storage: int = 0
    messages: int = 0


def _size(value: str, unit: str = "k") -> int:
    m = re.fullmatch(r"(\d+)\s*([bBkKmMgGtT]?)", value.strip())
    if not m:
        raise ValueError(f"{value.strip()!r} is not a size (like 1G, 500M or 1048576 kilobytes)")
    return int(m.group(1)) * _UNITS[(m.group(2) or unit).lower()]


def parse_limits(text: str) -> Limits:
    """``storage=1G:messages=100`` (the part of a rule after its root) as Limits."""
    limits = Limits()
    for item in text.split(":"):
        key, eq, value = item.strip().partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise ValueError(f"{item.strip()!r}: expected storage=SIZE, bytes=N or messages=N")
        if value.strip().startswith(("+", "-")) or value.strip().endswith("%"):
            raise ValueError(f"{item.strip()!r}: relative limits (+, -, %) are not supported")
        if key == "storage":
            limits = replace(limits, storage=_size(value))
        elif key == "bytes":
            limits = replace(limits, storage=_size(value, "b"))
        elif key == "messages":
            if not value.strip().isdigit():
                raise ValueError(f"{value.strip()!r} is not a whole number of messages")
            limits = replace(limits, messages=int(value))
        else:
            raise ValueError(f"{key!r}: unknown limit (storage, bytes or messages)")
    return limits


def parse_rules(value: str) -> Limits:
    """``[mailbox] quota_rule``: space-separated ``*:LIMITS`` rules; empty: no quota."""
    limits = Limits()
    for rule in value.split():
        root, colon, rest = rule.partition(":")
        if not colon:
            raise ValueError(f"{rule!r}: expected *:storage=SIZE or *:messages=N")
        if root != "*":
            raise ValueError(f"{rule!r}: only the * root (every folder) is supported,"
                             f" not {root!r}")
        limits = limits.over(parse_limits(rest))
    return limits


def parse_warning(value: str) -> int:
    """``[mailbox] quota_warning``: a percentage of a limit (1-100), 0 or empty: none."""
    text = value.strip().removesuffix("%").strip() or "0"
    if not text.isdigit() or int(text) > 100:
        raise ValueError(f"{value.strip()!r} is not a percentage (0-100; 0: no warning)")
    return int(text)


def parse_quota_status(value: str) -> tuple[int, str, str]:
    """``[mailbox] quota_status_overquota`` (Dovecot's key): the SMTP/LMTP reply to a
    recipient over quota, ``552 5.2.2 Mailbox is full`` or a temporary ``452 4.2.2 ...``
    (quotes around it, as Dovecot writes it, are allowed)."""
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    m = re.fullmatch(r"([45])\d\d ([45])\.\d{1,3}\.\d{1,3} (\S.*)", text)
    if not m or m.group(1) != m.group(2):
        raise ValueError(f"{value.strip()!r}: expected a reply like 552 5.2.2 Mailbox is full"
                         " or 452 4.2.2 Mailbox is full")
    code, dsn, rest = text.split(" ", 2)
    return int(code), dsn, rest


def parse_rule_file(text: str, path: str) -> dict[str, Limits]:
    """The per-user lines of ``quota_rule_file``; ValueError naming ``path:line``."""
    users: dict[str, Limits] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        user, colon, rest = line.partition(":")
        user = user.strip()
        try:
            if not colon or not user or any(c.isspace() for c in user):
                raise ValueError("expected user:storage=SIZE or user:messages=N")
            rest = rest.strip().removeprefix("*:")  # user:*:storage=... reads as well
            users[user] = users.get(user, Limits()).over(parse_limits(rest))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return users


def read_rule_file(path: str) -> dict[str, Limits]:
    """The file's rules (only a regular file, opened without blocking: tablefile.read_text);
    ValueError naming ``path:line``."""
    return _parse_rules(read_text(path), path)


def _parse_rules(text: str, path: str) -> dict[str, Limits]:
    try:
        return parse_rule_file(text, path)
    except TableError:
        raise
    except ValueError as e:
        raise TableError([str(e)]) from None


class RuleFile:
    """``quota_rule_file``, read again when it changes (looked at once a second: a
    tablefile.TableFile); a broken or missing version keeps the last good rules, logged."""

    def __init__(self, path: str, now: Callable[[], float]) -> None:
        self.table = TableFile(path, _parse_rules, lambda text: log.warn("quota_rule_file {text}",
                                                                         text=text),
                               clock=now, interval=RULE_FILE_CHECK)
        self._loaded = False

    def get(self) -> dict[str, Limits]:
        if not self._loaded:  # (check_at_start refused a broken file: read at the first look)
            self._loaded = True
            return self.table.load_or({})
        return self.table.current()


@dataclass
class _Counted:
    ino: int
    size: int
    mtime_ns: int
    messages: int
    tail: str  # hex of the file's last TAIL bytes when counted

    def row(self) -> list[Any]:
        return [self.ino, self.size, self.mtime_ns, self.messages, self.tail]


def count_messages(fd: int, start: int, size: int) -> int:
    """``From `` separators of an mbox from ``start`` (a message begins at 0 and after each
    blank line followed by ``From ``: body lines that start so are quoted as ``>From ``)."""
    found = 0
    if start == 0:
        found += os.pread(fd, 5, 0) == b"From "
        start = 1
    at, carry = start, b""
    while at < size:
        chunk = carry + os.pread(fd, min(CHUNK, size - at), at)
        if len(chunk) == len(carry):
            break  # the file shrank meanwhile: the next look recounts it
        at += len(chunk) - len(carry)
        found += chunk.count(b"\n\nFrom ")
        carry = chunk[-6:]
    return found


def count_file(path: str, known: _Counted | None) -> _Counted | None:
    """The count of one mbox file, from ``known`` when it is still right or only grew."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # no such file yet (an empty folder), or not ours to read
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None  # a FIFO or device where a mailbox should be: not counted
        if known is not None and (known.ino, known.size, known.mtime_ns) == (
                st.st_ino, st.st_size, st.st_mtime_ns):
            return known
        grew = (known is not None and known.ino == st.st_ino and st.st_size > known.size >= 7
                and os.pread(fd, len(known.tail) // 2, known.size - len(known.tail) // 2).hex()
                == known.tail)
        if grew and known is not None:
            messages = known.messages + count_messages(fd, max(0, known.size - 6), st.st_size)
        else:
            messages = count_messages(fd, 0, st.st_size)
        tail = os.pread(fd, min(TAIL, st.st_size), max(0, st.st_size - TAIL)).hex()
        return _Counted(st.st_ino, st.st_size, st.st_mtime_ns, messages, tail)
    finally:
        os.close(fd)


def mbox_files(root: str, inbox: str) -> list[str]:
    """Blocking: INBOX and every folder's mbox file under ``root`` (``~/mail``) as
    mboxtree lays them out: a folder is a file, or a directory with its mail in
    ``MESSAGES_FILE``. Read-only (no recovery of a crashed conversion: the store's LIST does
    that under its folder lock); symlinks and names that are no folder are left out."""
    out = [inbox]
    if os.path.islink(root):
        return out
    todo, seen = [(root, 0)], 0
    while todo and seen < MAX_FOLDERS:
        directory, depth = todo.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if depth and entry.name == folders.MESSAGES_FILE:
                if entry.is_file(follow_symlinks=False):
                    out.append(entry.path)
                continue
            level = folders.from_disk_level(entry.name)
            try:
                if level is None:
                    continue
                folders.check_level(level, level)
            except InvalidMailboxName:
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < folders.MAX_DEPTH:
                    todo.append((entry.path, depth + 1))
            elif entry.is_file(follow_symlinks=False) and not (
                    depth == 0 and level.upper() == folders.INBOX):
                out.append(entry.path)
    return out


class UsageBook:
    """The usage of each user, kept in memory and in ``control/.quota`` (see the module doc).
    Blocking: called in the store's threads; one user's record is changed under a lock."""

    def __init__(self) -> None:
        self._locks_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def _lock(self, user: str) -> threading.Lock:
        """One user's lock (a recount of one user's big mailbox holds up no other user)."""
        with self._locks_lock:
            return self._locks.setdefault(user, threading.Lock())

    def usage(self, user: str, control: str, paths: list[str], uid: int) -> Usage:
        with self._lock(user):
            record = self._records.get(user)
            if record is None:
                record = self._records[user] = _read_record(control)
            files: dict[str, list[Any]] = record.setdefault("files", {})
            changed = set(files) != set(paths)
            kept: dict[str, list[Any]] = {}
            total = Usage()
            for path in paths:
                row = files.get(path)
                known = _Counted(*row) if isinstance(row, list) and len(row) == 5 else None
                counted = count_file(path, known)
                if counted is None:
                    continue
                if counted is not known:
                    changed = True
                kept[path] = counted.row()
                total = Usage(total.storage + counted.size, total.messages + counted.messages)
            record["files"] = kept
            if changed:
                _write_record(control, record, uid)
            return total

    def warned(self, user: str, control: str, uid: int, now_over: bool | None = None) -> bool:
        """Whether the warning was sent (and not reset by usage dropping below since); with
        ``now_over``, record it so."""
        with self._lock(user):
            record = self._records.get(user)
            if record is None:
                record = self._records[user] = _read_record(control)
            if now_over is not None and bool(record.get("warned")) != now_over:
                record["warned"] = now_over
                _write_record(control, record, uid)
            return bool(record.get("warned"))


def _read_record(control: str) -> dict[str, Any]:
    """The record as last written (no symlink, no FIFO followed); {} when there is none or it
    is damaged: everything is counted again."""
    try:
        fd = os.open(os.path.join(control, USAGE_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = json.loads(os.pread(fd, 4 * 1024 * 1024, 0))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def _write_record(control: str, record: dict[str, Any], uid: int) -> None:
    """The record, written only by its user (the agent under privilege separation): another
    uid (a server running as root) keeps it in memory only, writing nothing into a tree the
    user controls (it is counted again after a restart)."""
    if os.geteuid() != uid:
        return
    try:
        os.makedirs(control, 0o700, exist_ok=True)
        atomic_write(os.path.join(control, USAGE_FILE), json.dumps(record).encode(), sync=None)
    except OSError as e:
        log.warn("quota usage record in {dir}: {why}", dir=control, why=e.strerror)


class Quota:
    """The quota of every account of a store: the rules, the usage book, the warning.

    ``paths(account)`` (blocking) lists the account's mbox files (INBOX first), ``control(
    account)`` the directory of its usage record. Everything here but ``from_config`` blocks:
    the store calls it in its threads."""

    def __init__(self, default: Limits, rule_file: RuleFile | None, warning: int,
                 paths: Callable[[Any], list[str]], control: Callable[[Any], str]) -> None:
        self.default, self.rule_file, self.warning = default, rule_file, warning
        self.paths, self.control = paths, control
        self.book = UsageBook()
        self.reply = DEFAULT_REPLY

    @classmethod
    def from_config(cls, mailbox: Any, paths: Callable[[Any], list[str]],
                    control: Callable[[Any], str], now: Callable[[], float]) -> Quota | None:
        """The quota of ``[mailbox]`` (None when neither quota_rule nor quota_rule_file is
        set)."""
        default: Limits = getattr(mailbox, "quota_rule", Limits())
        path: str = getattr(mailbox, "quota_rule_file", "")
        if not default.any and not path:
            return None
        rule_file = None
        if path:  # read at the first look (check_at_start has refused a broken one)
            rule_file = RuleFile(path, now)
        quota = cls(default, rule_file, getattr(mailbox, "quota_warning", 0), paths, control)
        quota.reply = getattr(mailbox, "quota_status_overquota", DEFAULT_REPLY)
        return quota

    def limits(self, user: str) -> Limits:
        users = self.rule_file.get() if self.rule_file is not None else {}
        mine = self.default.over(users.get(user, Limits()))
        return Limits(mine.storage or 0, mine.messages or 0)

    def report(self, account: Any) -> tuple[Usage, Limits]:
        """(usage, limits) of ``account``: GETQUOTA, the network process's RCPT check."""
        limits = self.limits(account.name)
        if not limits.any:
            return Usage(), limits
        book = self.book.usage(account.name, self.control(account), self.paths(account),
                               account.uid)
        return book, limits

    def admit(self, account: Any, size: int, count: int = 1) -> None:
        """QuotaExceeded if ``count`` messages of ``size`` bytes would go over a limit."""
        usage, limits = self.report(account)
        if over(usage, limits, size, count):
            raise QuotaExceeded(EXCEEDED, self.reply)

    def warn_due(self, account: Any) -> bool:
        """After a write: whether usage has just crossed quota_warning percent of a limit
        (once: not again until it has dropped below)."""
        if not self.warning:
            return False
        usage, limits = self.report(account)
        high = any(limit and used * 100 >= limit * self.warning for used, limit in (
            (usage.storage, limits.storage), (usage.messages, limits.messages)))
        control = self.control(account)
        if high == self.book.warned(account.name, control, account.uid):
            return False
        self.book.warned(account.name, control, account.uid, high)
        return high

    def guarded(self, account: Any, work: Callable[..., Any], size: int,
                count: int) -> Callable[..., Any]:
        """``work`` (a blocking write of ``count`` messages, ``size`` bytes) admitted first."""

        def run(*args: Any) -> Any:
            self.admit(account, size, count)
            return work(*args)

        return run


def over(usage: Usage, limits: Limits, size: int, count: int = 1) -> bool:
    """Whether ``count`` more messages of ``size`` bytes go past a limit (Dovecot: usage plus
    the new message over the limit is refused)."""
    return bool((limits.storage and usage.storage + size > limits.storage)
                or (limits.messages and usage.messages + count > limits.messages))


def warning_message(account: Any, usage: Usage, limits: Limits, percent: int,
                    hostname: str, date: str) -> bytes:
    """The one-time warning put into INBOX (Dovecot runs quota-warning.sh to send one)."""
    def part(used: int, limit: int, what: str) -> str:
        return f"  {what}: {used} of {limit} ({used * 100 // limit}%)\n" if limit else ""

    text = (f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\n"
            f"To: {account.name}\nSubject: Your mailbox is {percent}% full\n"
            f"Date: {date}\nAuto-Submitted: auto-generated\n"
            "Content-Type: text/plain; charset=us-ascii\n\n"
            f"Your mailbox on {hostname} has used more than {percent}% of its quota:\n\n"
            + part(usage.storage // 1024, (limits.storage or 0) // 1024, "storage (KiB)")
            + part(usage.messages, limits.messages or 0, "messages")
            + "\nWhen it is full, new mail is refused. Please delete old messages (and empty"
            " the Trash folder).\n")
    return text.encode("ascii", "replace")
