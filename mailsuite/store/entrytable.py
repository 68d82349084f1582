"""The entries of an index kept as columns (as ``dovecot.index`` keeps fixed-size records).

An ``EntryTable`` is a sequence of ``index.Entry`` whose fields live in one array per field
(the UIDs, offsets, sizes, dates, zones, mod-sequences and save dates), the fingerprints in one
byte string of ``FP_WIDTH`` bytes each, and the status-header signatures and flag sets (few
distinct ones, shared) in lists. An entry is made when it is read and dropped when its reader
is done. Kept as tuples, 100,000 entries were about 490 bytes each (the tuple, eight int
objects, the fingerprint's str): 47 MB of the agent of a 100,000-message INBOX, and as much
again churned by each compaction. As columns they are 110 bytes each, in a few large blocks
that go back to the system when freed.

Reading one entry costs about a microsecond more than a list's item, a whole pass about 35 ms
per 100,000, and entries made by the 100,000 and held while long-lived objects are made leave
their pages behind: the hot paths read the columns (``position``, ``uids_of``, ``flag_sets``,
``sizes_of``... below, which answer alike for a list of MessageInfos, as the memory store's).
``copy`` shares the columns until either table changes one.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, MutableSequence, Sequence
from datetime import datetime
from itertools import repeat
from operator import attrgetter, index
from typing import Any, NamedTuple, cast, overload

from mailsuite.store.zones import zone


class Entry(NamedTuple):
    """One message of the index (``index``'s docstring says what each field is). A tuple
    that is also the store's ``MessageInfo`` (``uid``, ``flags``, ``size``,
    ``internal_date``): a mailbox's ``messages`` is its table of them (``EntryTable``)."""

    uid: int
    offset: int
    body_off: int
    hdr_end: int
    end: int
    size: int
    date: int
    fingerprint: str
    header_sig: str
    flags: frozenset[str]
    tz: int = 0  # the internal date's zone: seconds east of UTC
    modseq: int = 0  # of its last change (RFC 7162; ``modseq``)
    saved: int = 0  # when saved into this mailbox (RFC 8514; epoch seconds), 0: unknown

    @property
    def internal_date(self) -> datetime:
        return datetime.fromtimestamp(self.date, zone(self.tz))

    def info(self) -> Entry:
        return self


#: the bytes of a fingerprint (``mboxformat.fingerprint``: 24 hex digits); a shorter one is
#: padded with NULs, one that does not fit is refused (ValueError: a damaged index)
FP_WIDTH = 24
_PAD = b"\0"
_new = tuple.__new__
#: the array type of each numeric field, in ``Entry``'s order (fingerprint, header_sig and
#: flags, fields 7 to 9, are not arrays)
_NUMERIC = (("uid", "I"), ("offset", "q"), ("body_off", "q"), ("hdr_end", "q"), ("end", "q"),
            ("size", "q"), ("date", "q"), ("tz", "i"), ("modseq", "q"), ("saved", "q"))
#: the columns, in the order ``_columns`` gives them
_COLUMNS = (*(name for name, _ in _NUMERIC), "fps", "sigs", "flags")
#: ... and in the order they grow: ``saved`` last (see ``__len__``)
_GROWN = (*(name for name in _COLUMNS if name != "saved"), "saved")
#: the columns of one item per entry (all but the fingerprints), as ``_values`` gives them
_ITEMS = (*(name for name, _ in _NUMERIC), "sigs", "flags")


def _values(e: Entry) -> tuple[Any, ...]:
    """What ``e`` puts in each of ``_ITEMS``."""
    return (e.uid, e.offset, e.body_off, e.hdr_end, e.end, e.size, e.date, e.tz, e.modseq,
            e.saved, e.header_sig, e.flags)


def _fp_bytes(fp: str) -> bytes:
    raw = fp.encode("ascii")  # (UnicodeEncodeError is a ValueError)
    if len(raw) > FP_WIDTH or _PAD in raw:
        raise ValueError(f"fingerprint {fp!r}: not one of at most {FP_WIDTH} characters")
    return raw if len(raw) == FP_WIDTH else raw.ljust(FP_WIDTH, _PAD)


class EntryTable(MutableSequence[Entry]):
    """A sequence of entries in columns; grows at its end (``append``, ``extend``), an entry
    replaced in place (``table[i] = entry``), or copied (``copy``, a slice, ``+``)."""

    __slots__ = (*_COLUMNS, "_shared")

    uid: array[int]
    offset: array[int]
    body_off: array[int]
    hdr_end: array[int]
    end: array[int]
    size: array[int]
    date: array[int]
    tz: array[int]
    modseq: array[int]
    saved: array[int]

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        for name, code in _NUMERIC:
            setattr(self, name, array(code))
        self.fps = bytearray()
        self.sigs: list[str] = []
        self.flags: list[frozenset[str]] = []
        #: the columns this table holds with another (``copy``): copied before a change
        self._shared: set[str] = set()
        self.extend(entries)

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> EntryTable:
        """``entries`` itself if it is a table, else a table of them."""
        return entries if isinstance(entries, EntryTable) else cls(entries)

    def _columns(self) -> tuple[Any, ...]:
        """Every column, in ``_COLUMNS`` order."""
        return (self.uid, self.offset, self.body_off, self.hdr_end, self.end, self.size,
                self.date, self.tz, self.modseq, self.saved, self.fps, self.sigs, self.flags)

    @classmethod
    def _made(cls, columns: Iterable[Any], shared: Iterable[str] = ()) -> EntryTable:
        new = cls.__new__(cls)
        for name, column in zip(_COLUMNS, columns, strict=True):
            setattr(new, name, column)
        new._shared = set(shared)
        return new

    def _own(self, *names: str) -> None:
        """The columns ``names`` (all if none) this table's alone: a shared one is copied."""
        for name in names or _COLUMNS:
            if name in self._shared:
                setattr(self, name, getattr(self, name)[:])
                self._shared.discard(name)

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        # the column written last: a table that grows in a worker thread (``Index.grown``)
        # while the reactor's thread reads it is never seen with half an entry
        return len(self.saved)

    @overload
    def __getitem__(self, i: int) -> Entry: ...

    @overload
    def __getitem__(self, i: slice) -> EntryTable: ...

    def __getitem__(self, i: int | slice) -> Entry | EntryTable:
        if type(i) is int:  # (first: a view reads entries one by one, 100,000s of times)
            n = len(self.saved)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError("EntryTable index out of range")
            fp = self.fps[i * FP_WIDTH : (i + 1) * FP_WIDTH]
            return _new(Entry, (
                self.uid[i], self.offset[i], self.body_off[i], self.hdr_end[i], self.end[i],
                self.size[i], self.date[i], (fp.rstrip(_PAD) if fp[-1] == 0 else fp).decode(),
                self.sigs[i], self.flags[i], self.tz[i], self.modseq[i], self.saved[i]))
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return EntryTable([self[k] for k in range(start, stop, step)])
            stop = max(start, stop)
            cut = slice(start, stop)
            return self._made((*(c[cut] for c in self._columns()[:10]),
                               self.fps[start * FP_WIDTH : stop * FP_WIDTH],
                               self.sigs[cut], self.flags[cut]))
        return self[index(i)]  # (an int-like: numpy's, a bool)

    def __iter__(self) -> Iterator[Entry]:
        """The entries, made as they are read (about 0.35 microseconds each)."""
        n = len(self)
        text = self.fps[: n * FP_WIDTH].decode("ascii")
        fps: Iterable[str] = map(text.__getitem__,
                                 map(slice, range(0, n * FP_WIDTH, FP_WIDTH),
                                     range(FP_WIDTH, (n + 1) * FP_WIDTH, FP_WIDTH)))
        if _PAD in self.fps:
            fps = (fp.rstrip("\0") for fp in fps)
        return map(_new, repeat(Entry), zip(
            self.uid, self.offset, self.body_off, self.hdr_end, self.end, self.size, self.date,
            fps, self.sigs, self.flags, self.tz, self.modseq, self.saved, strict=False))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryTable):
            return self._columns() == other._columns()
        if isinstance(other, list):
            return len(other) == len(self) and all(map(tuple.__eq__, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (mutable, as a list)

    def __repr__(self) -> str:
        return f"EntryTable({list(self)!r})"

    def position(self, uid: int, lo: int = 0, hi: int | None = None) -> int:
        """Where an entry of ``uid`` is or would go (UIDs ascend): ``bisect_left`` of the UIDs."""
        return bisect_left(self.uid, uid, lo, len(self) if hi is None else hi)

    # -- changing -----------------------------------------------------------------------------
    def append(self, e: Entry) -> None:
        fp = _fp_bytes(e.fingerprint)  # first: a refused entry leaves the table as it was
        if self._shared:
            self._own()
        self.uid.append(e[0])
        self.offset.append(e[1])
        self.body_off.append(e[2])
        self.hdr_end.append(e[3])
        self.end.append(e[4])
        self.size.append(e[5])
        self.date.append(e[6])
        self.fps += fp
        self.sigs.append(e[8])
        self.flags.append(e[9])
        self.tz.append(e[10])
        self.modseq.append(e[11])
        self.saved.append(e[12])

    def extend(self, entries: Iterable[Entry]) -> None:
        if isinstance(entries, EntryTable):
            self._own()
            for name in _GROWN:
                getattr(self, name).extend(getattr(entries, name))
            return
        for e in entries:
            self.append(e)

    @overload
    def __setitem__(self, i: int, e: Entry) -> None: ...

    @overload
    def __setitem__(self, i: slice, e: Iterable[Entry]) -> None: ...

    def __setitem__(self, i: int | slice, e: Entry | Iterable[Entry]) -> None:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("EntryTable: only a slice of step 1 can be replaced")
            new = self[:start] + EntryTable.of(e) + self[max(start, stop):]  # type: ignore[arg-type]
            for name, column in zip(_COLUMNS, new._columns(), strict=True):
                setattr(self, name, column)
            self._shared = set()  # (new's own: the slices it was made of are gone)
            return
        e = cast(Entry, e)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("EntryTable index out of range")
        # only the columns that change are written (and copied first if shared): a flag
        # change to a copy of 100,000 entries copies their flags and mod-sequences alone
        fp, at = _fp_bytes(e.fingerprint), slice(i * FP_WIDTH, (i + 1) * FP_WIDTH)
        if self.fps[at] != fp:
            self._own("fps")
            self.fps[at] = fp
        for name, value in zip(_ITEMS, _values(e), strict=True):
            now = getattr(self, name)[i]
            if now is not value and now != value:
                self._own(name)
                getattr(self, name)[i] = value

    def insert(self, i: int, e: Entry) -> None:
        n = len(self)
        i = min(n, max(0, i + n if i < 0 else i))
        fp = _fp_bytes(e.fingerprint)
        self._own()
        self.fps[i * FP_WIDTH : i * FP_WIDTH] = fp
        for name, value in zip(_ITEMS, _values(e), strict=True):
            getattr(self, name).insert(i, value)

    def __delitem__(self, i: int | slice) -> None:
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                for k in sorted(range(start, stop, step), reverse=True):
                    del self[k]
                return
        else:
            start = i + n if i < 0 else i
            if not 0 <= start < n:
                raise IndexError("EntryTable index out of range")
            stop = start + 1
        stop = max(start, stop)
        self._own()
        for name in _ITEMS:
            del getattr(self, name)[start:stop]
        del self.fps[start * FP_WIDTH : stop * FP_WIDTH]

    def copy(self) -> EntryTable:
        """A table of the same entries, in O(1): the columns are shared until one of the two
        changes one (then that one copies it first)."""
        self._shared = set(_COLUMNS)
        return self._made(self._columns(), _COLUMNS)

    def __add__(self, other: Iterable[Entry]) -> EntryTable:
        new = self.copy()
        new.extend(other)
        return new

    def without(self, uids: Collection[int]) -> EntryTable:
        """A copy without the entries of ``uids``: a few deleted from a copy (its columns
        copied once), many left out as the rest is taken."""
        column, n = self.uid, len(self)
        at = sorted(k for k in map(self.position, uids) if k < n and column[k] in uids)
        if len(at) > 64:
            gone = set(at)
            return self.take([k for k in range(n) if k not in gone])
        new = self.copy()
        for k in reversed(at):
            del new[k]
        return new

    def take(self, positions: Iterable[int]) -> EntryTable:
        """A table of the entries at ``positions``, in that order."""
        at = list(positions)
        fps = self.fps
        return self._made((
            *(array(c.typecode, map(c.__getitem__, at)) for c in self._columns()[:10]),
            bytearray(b"".join([fps[k * FP_WIDTH : (k + 1) * FP_WIDTH] for k in at])),
            list(map(self.sigs.__getitem__, at)), list(map(self.flags.__getitem__, at))))

    def shifted(self, d: int) -> EntryTable:
        """A copy, every message ``d`` bytes further in the file (its four offsets moved)."""
        new = self.copy()
        if d:
            for name in ("offset", "body_off", "hdr_end", "end"):
                setattr(new, name, array("q", [x + d for x in getattr(self, name)]))
                new._shared.discard(name)
        return new


_UID = attrgetter("uid")


def position(entries: Sequence[Any], uid: int, lo: int = 0, hi: int | None = None) -> int:
    """``bisect_left`` of ``uid`` among the UIDs of ``entries`` (a table's own, or any
    sequence of MessageInfos in UID order) from ``lo`` to ``hi``."""
    hi = len(entries) if hi is None else hi
    if isinstance(entries, EntryTable):
        return bisect_left(entries.uid, uid, lo, hi)
    return bisect_left(entries, uid, lo, hi, key=_UID)


def uids_of(entries: Sequence[Any]) -> Sequence[int]:
    """The UIDs of ``entries``, in order, without making an entry of a table."""
    return entries.uid if isinstance(entries, EntryTable) else [m.uid for m in entries]


def sizes_of(entries: Sequence[Any]) -> Sequence[int]:
    """The sizes of ``entries``, in order, without making an entry of a table."""
    return entries.size if isinstance(entries, EntryTable) else [m.size for m in entries]


def deleted_sizes(entries: Sequence[Any]) -> list[int]:
    """The sizes of those of ``entries`` flagged ``\\Deleted`` (STATUS DELETED, RFC 9208)."""
    return [size for size, flags in zip(sizes_of(entries), flag_sets(entries), strict=True)
            if "\\Deleted" in flags]


def padded_fingerprints(entries: Sequence[Any]) -> bytes:
    """The fingerprints of ``entries``, ``FP_WIDTH`` bytes each (a shorter one NUL-padded, as
    a ``struct`` field of that width holds it), without making an entry of a table."""
    if isinstance(entries, EntryTable):
        return bytes(entries.fps)
    return b"".join([e.fingerprint.encode("ascii", "replace")[:FP_WIDTH].ljust(FP_WIDTH, _PAD)
                     for e in entries])


def subset(entries: Sequence[Any], positions: list[int]) -> Sequence[Any]:
    """The entries at ``positions`` (ascending): ``entries`` itself when that is all of
    them, a table of them from a table."""
    if len(positions) == len(entries):
        return entries
    if isinstance(entries, EntryTable):
        return entries.take(positions)
    return [entries[k] for k in positions]


def uids_between(entries: Sequence[Any], lo: int, hi: int) -> list[int]:
    """The UIDs of ``entries[lo:hi]``, without making an entry of a table."""
    if isinstance(entries, EntryTable):
        return entries.uid[lo:min(hi, len(entries))].tolist()
    return [m.uid for m in entries[lo:hi]]


def uid_at(entries: Sequence[Any], i: int) -> int:
    """``entries[i].uid``, without making an entry of a table."""
    if type(entries) is EntryTable:
        if not 0 <= i < len(entries):
            raise IndexError("EntryTable index out of range")
        return entries.uid[i]
    return int(entries[i].uid)


def flag_sets(entries: Sequence[Any]) -> Sequence[frozenset[str]]:
    """The flags of ``entries``, in order, without making an entry of a table."""
    return entries.flags if isinstance(entries, EntryTable) else [m.flags for m in entries]
