"""The per-mailbox index: UIDs, flags and the parse of the mbox, kept beside the mailboxes.

Location (Dovecot-like): ``folder_root/.imap/INBOX/mailsuite.index``. Text, one line per message,
written atomically (temp file, fsync, rename, fsync of the directory)::

    mailsuite-mbox-index 4
    <uid_validity> <uid_next> <mbox size> <mbox mtime_ns> <mbox inode> <highest modseq> <generation>
    [X <uid> ...]
    [V <floor> <lo>:<hi>:<modseq> ...]
    <uid> <offset> <body_off> <hdr_end> <end> <size> <date> <fingerprint> <header_sig> <modseq>
        <saved> [flag ...]

``offset`` is the From line, ``body_off`` the first byte of the message, ``hdr_end`` the byte after
its header block, ``end`` the byte after the message (before the blank separator line); ``size``
the wire size (``mailsuite.wire``) of what clients are served; ``date`` the internal date (epoch
seconds), followed by its zone as ``+HHMM`` / ``-HHMM`` unless that is UTC (version 2; a
version 1 index has no zones: its dates stay in UTC, as they were shown); ``fingerprint``
identifies the message across rewrites by other programs (see ``mboxformat.fingerprint``);
``header_sig`` the state of its Status/X-Status/X-Keywords headers when last seen, so a change
made by mutt is noticed and wins; ``modseq`` the mod-sequence of its last change (RFC 7162,
``modseq``: version 3; an older index is read with every message at 1 and written whole at
its next change); ``saved`` when the message was saved into this mailbox (RFC 8514 SAVEDATE,
epoch seconds, 0 unknown: version 4; an older index is read with 0, see ``savedate``). Flags
are IMAP atoms (never contain spaces).

``X`` lists the messages expunged but still in the file (``Index.hidden``): an EXPUNGE is
made durable by this mark (a journal record) before it is answered, and the file is compacted
without them after; a crash in between leaves them hidden, and compacted at the next open.

``reconcile`` matches a fresh parse of the file against the old index; ``extend`` adds messages
parsed from the tail of a file that only grew.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from mailsuite.fsutil import atomic_write, fsync_parent, write_all
from mailsuite.store import modseq as ms
from mailsuite.store.entrytable import Entry, EntryTable
from mailsuite.store.matching import Candidates
from mailsuite.store.interfaces import Changes, StoreError, StoreRefused
from mailsuite.store.mboxformat import Parsed
from mailsuite.store.zones import local_offset

MAGIC = b"mailsuite-mbox-index 4"
#: older versions: 3 has no save dates, 2 and 1 no mod-sequences either
_VERSIONS = {b"mailsuite-mbox-index %d" % v: v for v in (1, 2, 3, 4)}
SYSTEM = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})


class CorruptIndex(StoreError):
    """The index file cannot be read back: it is rebuilt (with a new UIDVALIDITY)."""


_new_tuple = tuple.__new__
@dataclass(frozen=True)
class Stamp:
    """What the mbox looked like when the index was made: unchanged stamp = nothing to parse."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result | None) -> Stamp:
        return cls(0, 0, 0) if st is None else cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class Index:
    uid_validity: int
    uid_next: int = 1
    stamp: Stamp = Stamp(0, 0, 0)
    entries: EntryTable = field(default_factory=EntryTable)  # (a list given is made one)
    generation: int = 0  # which journal belongs to this index file (see Journal)
    hidden: frozenset[int] = frozenset()  # expunged, still in the file until its compaction
    #: (inode, UIDs removed) of a compaction cut short after its rename (journal only)
    compacted: tuple[int, frozenset[int]] | None = None
    highest_modseq: int = 1  # RFC 7162 HIGHESTMODSEQ (``modseq``)
    vanished: ms.Vanished = ms.EMPTY  # expunged UIDs with their mod-sequence
    legacy: bool = False  # read from an older version (``version``): written whole next
    version: int = 4  # of the file it was read from (its journal's records are of it too)

    def __post_init__(self) -> None:
        self.entries = EntryTable.of(self.entries)

    def copy(self, **changes: object) -> Index:
        new = replace(self, **changes)  # type: ignore[arg-type]
        if "entries" not in changes:
            new.entries = self.entries.copy()
        return new

    def grown(self, added: Sequence[Entry], stamp: Stamp) -> Index:
        """The index with ``added`` (UIDs from ``uid_next`` on) appended, in O(len(added)).

        The table of entries is extended in place and shared with the new index: a published
        table only ever grows at its end (holders of it keep their own length, see
        ``MboxMailbox.messages``). Call it last, once nothing can fail any more: ``self`` must
        not be used after it.
        """
        uid_next = added[-1].uid + 1 if added else self.uid_next
        highest = max(self.highest_modseq, added[-1].modseq) if added else self.highest_modseq
        new = replace(self, uid_next=uid_next, stamp=stamp, highest_modseq=highest,
                      compacted=None)
        self.entries.extend(added)
        return new


def clean_flags(flags: frozenset[str] | set[str]) -> frozenset[str]:
    """Flags that can be stored: system flags and keyword atoms (no space, no control char).
    One shared frozenset per distinct combination, as ``_flags`` (an empty one is 216 bytes:
    20 MB over a new index of 100,000 messages)."""
    clean = frozenset(
        f
        for f in flags
        if f in SYSTEM or (f and not f.startswith("\\") and f.isprintable() and " " not in f)
    )
    found = _CLEAN_SETS.get(clean)
    if found is None:
        found = clean
        if len(_CLEAN_SETS) < 4096:
            _CLEAN_SETS[clean] = clean
    return found


_CLEAN_SETS: dict[frozenset[str], frozenset[str]] = {}


def entry_from(
    p: Parsed, uid: int, flags: frozenset[str], date: int, tz: int | None = None,
    modseq: int = 0, saved: int = 0,
) -> Entry:
    """``tz`` None: the server's local zone at ``date``."""
    return Entry(
        uid,
        p.offset,
        p.body_off,
        p.hdr_end,
        p.end,
        p.size,
        date,
        p.fingerprint,
        p.header_sig,
        flags,
        local_offset(date) if tz is None else tz,
        modseq,
        saved,
    )


def _new_entry(p: Parsed, uid: int, fallback_date: int, modseq: int = 1) -> Entry:
    """A message found in the file. Its save date (SAVEDATE) is its From line's date: the time
    it was written into the mbox (RFC 4155; mailsuite's deliveries and Postfix's local put it
    there); unknown (0) without one."""
    date = p.date if p.date is not None else fallback_date
    saved = int(p.date) if p.date is not None else 0
    return entry_from(p, uid, clean_flags(p.header_flags), date, None, modseq, saved)


def extend(
    old: Index, parsed: list[Parsed], stamp: Stamp, fallback_date: int
) -> tuple[EntryTable, Changes]:
    """The entries of messages appended to the file (old ones untouched), not yet added to
    ``old``: see ``Index.grown``."""
    added = EntryTable()  # (100,000 at a first open: no tuple kept for each)
    uid = old.uid_next
    modseq = old.highest_modseq + 1
    for p in parsed:
        added.append(_new_entry(p, uid, fallback_date, modseq))
        uid += 1
    return added, Changes(added=added.copy())


def reconcile(
    old: Index, parsed: Iterable[Parsed], stamp: Stamp, fallback_date: int
) -> tuple[Index, Changes]:
    """Match a full parse against the old index, in file order, by fingerprint.

    A message keeps its UID if an old entry with its fingerprint comes after the previous match;
    otherwise it gets a new UID, and so does every later message (UIDs must ascend in file
    order). Flags come from the old entry, unless another program changed the message's status
    headers since: then those headers win for the flags they express.
    """
    if old.compacted is not None and old.compacted[0] == stamp.ino:
        # the file a compaction renamed in before it could save its index: without what it
        # removed (else identical copies of a message would take each other's UIDs)
        gone = old.compacted[1]
        old = old.copy(entries=[e for e in old.entries if e.uid not in gone],
                       hidden=old.hidden - gone)
    candidates = Candidates(old.entries)
    new = old.copy(stamp=stamp, entries=[])
    changes = Changes(added=EntryTable())
    modseq = old.highest_modseq + 1
    last_uid = 0
    kept: set[int] = set()
    for p in parsed:
        was = candidates.take(p.fingerprint, last_uid)
        if was is not None:
            flags = was.flags
            if p.header_sig != was.header_sig:
                theirs = clean_flags(p.header_flags)
                keywords = theirs - SYSTEM or flags - SYSTEM
                flags = (theirs & SYSTEM) | keywords
            changed = flags != was.flags
            e = was if not changed and _where(was) == _where(p) else entry_from(
                p, was.uid, flags, was.date, was.tz, modseq if changed else was.modseq, was.saved)
            kept.add(was.uid)
            if changed:
                changes.flags[was.uid] = flags
        else:
            e = _new_entry(p, new.uid_next, fallback_date, modseq)
            new.uid_next += 1
            changes.added.append(e)
        last_uid = e.uid
        new.entries.append(e)
    changes.expunged = [e.uid for e in old.entries if e.uid not in kept]
    new.hidden, new.compacted = old.hidden & kept, None
    if changes:
        new.highest_modseq = modseq
        told = [u for u in changes.expunged if u not in old.hidden]  # hidden: recorded then
        if told:
            new.vanished = new.vanished.add(told, modseq)
    return new, changes


def _where(e: Entry | Parsed) -> tuple[int, int, int, int, int, str]:
    """What a reparse may change in an entry beside its flags: an unchanged one is kept."""
    return e.offset, e.body_off, e.hdr_end, e.end, e.size, e.header_sig


def from_dovecot(
    parsed: list[Parsed],
    x_uids: list[int | None],
    validity: int,
    last_uid: int,
    stamp: Stamp,
    fallback_date: int,
) -> tuple[Index, Changes]:
    """The first index of an mbox Dovecot kept its state in (``X-IMAPbase`` gave ``validity``
    and ``last_uid``; ``x_uids`` the ``X-UID`` of each message): each message keeps its UID
    while they ascend and stay within ``last_uid``, as Dovecot reads them; one that has none, or
    one out of order, gets a new UID above every other, and so does each after it. Flags and
    keywords come from the Status / X-Status / X-Keywords headers."""
    entries = EntryTable()
    uid_next, last = last_uid + 1, 0  # (every message at mod-sequence 1)
    for p, given in zip(parsed, x_uids, strict=True):
        if given is not None and last < given <= last_uid:
            uid = given
        else:
            uid = max(uid_next, last + 1)
            uid_next = uid + 1
        entries.append(_new_entry(p, uid, fallback_date))
        last = uid
    index = Index(validity, max(uid_next, last + 1), stamp, entries)
    return index, Changes(added=list(entries))


def _date_field(e: Entry) -> bytes:
    if not e.tz:
        return b"%d" % e.date
    minutes = abs(e.tz) // 60
    return b"%d%s%02d%02d" % (e.date, b"-" if e.tz < 0 else b"+", minutes // 60, minutes % 60)


def entry_line(e: Entry) -> bytes:
    return b"%d %d %d %d %d %d %s %s %s %d %d %s" % (
        e.uid,
        e.offset,
        e.body_off,
        e.hdr_end,
        e.end,
        e.size,
        _date_field(e),
        e.fingerprint.encode(),
        e.header_sig.encode(),
        e.modseq,
        e.saved,
        " ".join(sorted(e.flags)).encode(),
    )


_SIGNS = (ord("+"), ord("-"))


_SIGS: dict[bytes, str] = {}


def _entry(w: list[bytes], version: int = 4) -> Entry:
    """An entry line's words, of that index ``version`` (below 3 no mod-sequences: all 1;
    below 4 no save dates: all unknown)."""
    sig = _SIGS.get(w[8])
    if sig is None:
        sig = w[8].decode()
        if len(_SIGS) < 4096:
            _SIGS[w[8]] = sig  # few distinct status-header states: one str each
    d = w[6]
    tz = 0
    if len(d) > 5 and d[-5] in _SIGNS:  # epoch+HHMM (a bare epoch is UTC)
        tz = int(d[-4:-2]) * 3600 + int(d[-2:]) * 60
        if d[-5] == _SIGNS[1]:
            tz = -tz
        d = d[:-5]
    date = int(d)
    return _new_tuple(
        Entry,
        (
            int(w[0]),
            int(w[1]),
            int(w[2]),
            int(w[3]),
            int(w[4]),
            int(w[5]),
            date,
            w[7].decode(),
            sig,
            _flags(w[9:] if version < 3 else w[10:] if version < 4 else w[11:]),
            tz,
            1 if version < 3 else int(w[9]),
            (date if w[10] == d else int(w[10])) if version >= 4 else 0,  # one int if equal
        ),
    )


_FLAG_SETS: dict[tuple[bytes, ...], frozenset[str]] = {}


def _flags(words: list[bytes]) -> frozenset[str]:
    """One shared frozenset per distinct flag combination (few in a mailbox: saves memory)."""
    key = tuple(words)
    found = _FLAG_SETS.get(key)
    if found is None:
        found = frozenset(f.decode() for f in words if f)
        if len(_FLAG_SETS) < 4096:
            _FLAG_SETS[key] = found
    return found


def dump(index: Index) -> bytes:
    return b"".join(dump_blocks(index))


def dump_blocks(index: Index, block: int = 2048) -> Iterator[bytes]:
    """The index file's bytes, ``block`` entry lines at a time (``write_index`` writes them as
    they come): the file of 100,000 messages is never whole in memory, nor its 100,000 lines
    (35 MB at the first open of such a mailbox, and at each of its compactions)."""
    s, entries = index.stamp, index.entries
    head = (index.uid_validity, index.uid_next, s.size, s.mtime_ns, s.ino, index.highest_modseq,
            index.generation)
    lines = [MAGIC, b"%d %d %d %d %d %d %d" % head]
    if index.hidden:
        lines.append(_hidden_line(index.hidden))
    if index.vanished.ranges or index.vanished.floor:
        lines.append(index.vanished.line())
    yield b"\n".join(lines) + b"\n"
    for i in range(0, len(entries), block):
        yield b"".join([entry_line(e) + b"\n" for e in entries[i : i + block]])


def load(data: bytes) -> Index:
    """Parse an index file; CorruptIndex if it is not one we wrote."""
    first = data.find(b"\n")
    second = data.find(b"\n", first + 1)
    version = _VERSIONS.get(data[:first], 0)
    if not version or not data.endswith(b"\n") or second < 0:
        raise CorruptIndex("not a mailsuite index (or cut short)")
    try:
        head = list(map(int, data[first + 1 : second].split()))
        if len(head) == 5:
            head.append(0)  # written before journals existed
        if version < 3:
            head.insert(5, 1)  # before mod-sequences: every message at 1
        validity, uid_next, size, mtime_ns, ino, highest, generation = head
        pos, hidden, vanished = second + 1, frozenset[int](), ms.EMPTY
        if data.startswith(b"X ", pos):
            end = data.index(b"\n", pos)
            hidden = frozenset(map(int, data[pos:end].split()[1:]))
            pos = end + 1
        if data.startswith(b"V ", pos):
            end = data.index(b"\n", pos)
            vanished = ms.Vanished.parse(data[pos:end])
            pos = end + 1
        entries = EntryTable()
        last = 0
        for line in _lines(data, pos):  # into the columns one by one: never 100,000 tuples
            e = _entry(line.split(b" "), version)
            if e.uid <= last or e.uid >= uid_next:
                raise ValueError("UIDs out of order")
            entries.append(e)
            last = e.uid
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise CorruptIndex(str(e)) from e
    return Index(validity, uid_next, Stamp(size, mtime_ns, ino), entries, generation, hidden,
                 highest_modseq=highest, vanished=vanished, legacy=version < 4, version=version)


def _lines(data: bytes, pos: int, block: int = 1 << 20) -> Iterator[bytes]:
    """The lines of ``data[pos:]`` (which ends with a line end), split a block at a time: an
    index of 100,000 messages is never 100,000 line objects at once (15 MB)."""
    while pos < len(data):
        cut = data.find(b"\n", min(pos + block, len(data) - 1))
        yield from data[pos:cut].split(b"\n")
        pos = cut + 1


def _hidden_line(uids: frozenset[int] | set[int]) -> bytes:
    return b"X " + b" ".join(b"%d" % uid for uid in sorted(uids))


# -- the journal: small changes appended beside the index instead of rewriting it ----------------
#
# ``mailsuite.index.log`` starts with ``mailsuite-index-log 1 <generation>`` and holds records:
#   F <uid> [flag ...]                          flags of a message changed
#   M <modseq> <uid> ...                        the new mod-sequence of messages changed
#   V <modseq> <uid> ...                        messages expunged at that modseq (VANISHED)
#   A <entry as in the index>                   a message added
#   S <uid_next> <size> <mtime_ns> <ino>        the file's new stamp and uid_next
#   X <uid> ...                                 messages expunged, to be compacted away
#   C <ino> <uid> ...                           a compaction renames its file (this inode,
#                                               without these messages) in now
# It belongs to the index whose generation it names; a new index (a new generation) makes it
# stale and it is removed. A record cut short by a crash (no final newline) is ignored: the
# operation that wrote it had not returned.

LOG_MAGIC = b"mailsuite-index-log 1"


def log_path(index_path: str) -> str:
    return index_path + ".log"


def apply_log(index: Index, data: bytes) -> Index:
    """``index`` with the records of its journal applied (stale journals are ignored)."""
    lines = data.split(b"\n")
    if lines[0] != LOG_MAGIC + b" %d" % index.generation:
        return index
    flags: dict[int, frozenset[str]] = {}
    modseqs: dict[int, int] = {}
    added: list[Entry] = []
    stamp, uid_next, hidden = index.stamp, index.uid_next, set(index.hidden)
    compacted, highest, vanished = None, index.highest_modseq, index.vanished
    try:
        for line in lines[1:-1]:  # the last piece has no newline: cut short or empty
            w = line.split(b" ")
            if w[0] == b"F":
                flags[int(w[1])] = _flags(w[2:])
            elif w[0] == b"A":
                added.append(_entry(w[1:], index.version))
                highest = max(highest, added[-1].modseq)
            elif w[0] == b"M":
                highest = max(highest, int(w[1]))
                modseqs.update(dict.fromkeys(map(int, w[2:]), int(w[1])))
            elif w[0] == b"V":
                highest = max(highest, int(w[1]))
                vanished = vanished.add(map(int, w[2:]), int(w[1]))
            elif w[0] == b"S":
                uid_next = int(w[1])
                stamp = Stamp(int(w[2]), int(w[3]), int(w[4]))
            elif w[0] == b"X":
                hidden.update(map(int, w[1:]))
            elif w[0] == b"C":
                compacted = (int(w[1]), frozenset(map(int, w[2:])))
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise CorruptIndex(f"journal: {err}") from err
    try:
        entries = index.entries + added
    except ValueError as err:  # (a fingerprint no entry can have)
        raise CorruptIndex(f"journal: {err}") from err
    if flags or modseqs:
        for i, entry in enumerate(entries):
            f = flags.get(entry.uid, entry.flags)
            m = modseqs.get(entry.uid, entry.modseq)
            if f is not entry.flags or m != entry.modseq:
                entries[i] = entry._replace(flags=f, modseq=m)
    return replace(index, entries=entries, stamp=stamp, uid_next=uid_next,
                   hidden=frozenset(hidden), compacted=compacted, highest_modseq=highest,
                   vanished=vanished)


def log_records(
    flags: dict[int, frozenset[str]] | None = None,
    added: Sequence[Entry] | None = None,
    index: Index | None = None,
    hidden: set[int] | None = None,
) -> bytes:
    out = [b"F %d %s" % (uid, " ".join(sorted(f)).encode()) for uid, f in (flags or {}).items()]
    if hidden:
        out.append(_hidden_line(hidden))
    out.extend(b"A " + entry_line(e) for e in added or [])
    if index is not None:
        s = index.stamp
        out.append(b"S %d %d %d %d" % (index.uid_next, s.size, s.mtime_ns, s.ino))
    return b"".join(line + b"\n" for line in out)


def compaction_record(ino: int, gone: set[int]) -> bytes:
    return b"C %d " % ino + b" ".join(b"%d" % uid for uid in sorted(gone)) + b"\n"


def append_log(
    path: str,
    index: Index,
    records: bytes,
    owner: tuple[int, int] | None,
    dir_fd: int | None = None,
) -> int:
    """Append ``records`` to the journal of ``index`` (made if missing), durably; its new size.
    With ``dir_fd`` (the index directory, walked by ``safepath``) ``path`` is a name in it."""
    fd = os.open(
        log_path(path),
        os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link to another's file
            raise StoreRefused(f"{log_path(path)}: not a regular file with one link: refused")
        head, size = LOG_MAGIC + b" %d\n" % index.generation, st.st_size
        if size and os.pread(fd, len(head), 0) != head:
            # another index's: a crash came between a new index's rename and this journal's
            # removal. Records added to it would be ignored at the next load: start it again.
            os.ftruncate(fd, 0)
            size = 0
        if size == 0:
            records = head + records
            if owner is not None:
                os.fchown(fd, *owner)
        write_all(fd, records)
        os.fdatasync(fd)
        return size + len(records)
    finally:
        os.close(fd)


def read_index(path: str, dir_fd: int | None = None) -> Index | None:
    """The index at ``path`` (a name in ``dir_fd`` if given); None if there is none yet.
    CorruptIndex if damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CorruptIndex(f"{path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        index = load(f.read())
    try:
        fd = os.open(log_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        index.generation = 0 if index.legacy else index.generation  # (as below)
        return index
    except OSError as e:
        raise CorruptIndex(f"{log_path(path)}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        index = apply_log(index, f.read())
    if index.legacy:  # journal records of this version from here on: a whole new index first
        index.generation = 0
    return index


def write_index(
    path: str, index: Index, owner: tuple[int, int] | None, dir_fd: int | None = None
) -> None:
    """Replace the index atomically and durably; ``owner`` (uid, gid) when running as root.
    With ``dir_fd`` (the index directory, walked by ``safepath``) ``path`` is a name in it."""
    index.generation = int.from_bytes(os.urandom(6), "big")  # any journal left is now stale
    index.legacy, index.version = False, 4  # written in this version

    def commit(_: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path(path), dir_fd=dir_fd)  # its records are in the new index (stale now)
        fsync_parent(path, dir_fd)  # the new index and the journal's removal

    atomic_write(path, dump_blocks(index), dir_fd=dir_fd, owner=owner, sync=commit)
