"""The header-field cache of a mailbox (like Dovecot's ``dovecot.index.cache``): the header
fields clients fetch (``BODY.PEEK[HEADER.FIELDS (From To Subject ...)]``, as Thunderbird asks
for every message) kept beside the index, so a re-fetch reads a few hundred bytes per message
instead of parsing each header block out of the mbox again.

Fields are decided on demand: the cache holds one set of field names; a request that names a
field not in it is served from the mbox, and the cache starts again with the union of both
sets (so a field asked for once is cached for every message from then on).

File: ``mailsuite.hcache`` in the index directory::

    mailsuite-hcache 3 <uid_validity> <FIELD> <FIELD> ...\\n
    record*

A record is ``HCR1``, then CRC-32, uid and data length (little-endian 32 bits), the message's
sent date as SORT sees it (``fastkeys.cache_date``, signed 64 bits; ``UNKNOWN_DATE`` when the
fields hold no Date), its fingerprint (``mboxformat.fingerprint``, 24 characters), then the
data: ``pick`` of its header for the file's fields. The CRC covers everything after itself.
The date is worked out once, as the record is written (a first SORT by DATE of 100,000 cached
messages spent 0.3-0.45 s reading their Date fields). Records are only appended
(``O_APPEND``, one write per batch); a record is used only for the UID and fingerprint the
index gives now, so a message another program rewrote (a new fingerprint), an expunged one (its UID
never asked for again) or a new UIDVALIDITY never gets old data. A record cut short or damaged
(a crash, another writer) ends the load and the file is started again empty: never wrong data,
at worst a re-read of the mbox. A new field set or UIDVALIDITY replaces the file atomically.
The CRC is checked as the file is loaded: the map then holds only records checked then or
written here, nothing rewrites a record in place, and a file put in the place of the one
loaded (another inode, or another first line) is loaded again, so a look-up checks only that
a record is the one the map says (tag, UID, fingerprint): a quarter less time per look-up.
(This counts on O_APPEND writes being whole, as on a local file system: not on NFS shared by
several hosts, where index directories do not belong.)

All methods do file I/O: call them in a thread (``MboxMailbox.header_fields`` does).
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from mailsuite.imap.fastkeys import UNKNOWN_DATE, cache_date, dates_of
from mailsuite.imap.message import header_fields, split_message
from mailsuite.store import entrytable as et
from mailsuite.store.interfaces import StoreError
from mailsuite.store.safepath import Dir
from mailsuite.wire import complete

CACHE_NAME = "mailsuite.hcache"
MAGIC = b"mailsuite-hcache 3"  # 2: a lone CR keeps the whole block; 3: the date, CRC first
MAX_FIELDS = 64  # a client naming more fields than this is served from the mbox
MAX_RECORD = 64 * 1024  # fields bigger than this are not kept
DEAD_SLACK = 1024  # records of expunged messages kept beyond as many as there are messages
_REC = struct.Struct("<4sIIIq24s")
_TAG = b"HCR1"
_NAME = re.compile(rb"[!-9;-~]{1,100}\Z")  # a field name that can be a word of the first line
# reads stay below glibc's mmap threshold (128 KiB): a bigger buffer, once freed, raises it
# and the process keeps what it later frees in its heap (10 MB more after a 100k listing)
_SPAN = 64 * 1024  # records read in one pread at most (unless one is bigger)
_LOAD = 120 * 1024  # bytes read at a time when the file is walked (a record fits)
log = Logger()


def pick(header: bytes, names: frozenset[bytes]) -> bytes:
    """The header block ``header`` (as stored) cut down to its fields named ``names``
    (upper case), in order, then the blank line: a block FETCH reads (``split_message`` and
    ``header_fields``, as for the whole header) into exactly the same ``HEADER.FIELDS`` of
    ``names``. A header with a lone CR anywhere (a line break for ``splitlines``, not for
    the whole header's ``^``-anchored readers such as the SORT keys) is given whole: cut, a
    field after it could show or hide."""
    block = split_message(complete(header))[0]
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return block
    out = b"".join(raw for name, raw in header_fields(block) if name in names)
    return out + b"\n"


def cacheable(names: Iterable[bytes]) -> bool:
    return all(_NAME.match(n) for n in names)


class HeaderCache:
    """The cache file of one mailbox. ``index_dir(create)`` gives the index directory (None:
    there is none, nothing is cached); ``owner()`` who its files belong to (as root)."""

    def __init__(self, index_dir: Callable[[bool], Dir | None],
                 owner: Callable[[], tuple[int, int] | None]) -> None:
        self._dir = index_dir
        self._owner = owner
        self._lock = threading.Lock()
        self._head: bytes | None = None  # the first line of the file the map describes
        self._file = (0, 0)  # and its device and inode
        self.validity = 0
        self.fields: frozenset[bytes] = frozenset()
        self._uids = array("I")  # ascending; record of _uids[i] at _offs[i], _lens[i] bytes
        self._offs = array("Q")
        self._lens = array("I")
        self._told = False

    # -- reading -------------------------------------------------------------------------------

    def lookup(self, validity: int, entries: Sequence[Any], names: frozenset[bytes]
               ) -> tuple[dict[int, bytes], Sequence[Any]]:
        """({uid: pick of its header for ``names``} of the entries cached, entries not).
        A cache that cannot be read (its directory gone, refused) has nothing."""
        return self._locked(validity, entries, names, None)[1:]

    def lookup_whole(self, validity: int, entries: Sequence[Any], names: frozenset[bytes]
                     ) -> tuple[frozenset[bytes], dict[int, bytes], Sequence[Any], dict[int, int]]:
        """(the fields the file holds, {uid: its record's data, the pick for all of them},
        entries not cached, {uid: its record's date} of the found ones whose fields hold
        a Date) when the file holds every field of ``names``; else nothing (and every entry
        is missing). One pick less per message than ``lookup``."""
        dates: dict[int, int] = {}
        return (*self._locked(validity, entries, names, dates), dates)

    def _locked(self, validity: int, entries: Sequence[Any], names: frozenset[bytes],
                dates: dict[int, int] | None
                ) -> tuple[frozenset[bytes], dict[int, bytes], Sequence[Any]]:
        """``_lookup``'s answer. ``dates``: None for ``lookup`` (each record's pick for
        ``names``), else ``lookup_whole``'s (each record's whole data), filled with their dates."""
        try:
            with self._lock:
                d = self._dir(False)
                if d is None:
                    return frozenset(), {}, entries
                with d:
                    fd = self._open(d, create=False)
                    if fd is None:
                        return frozenset(), {}, entries
                    try:
                        return self._lookup(fd, validity, entries, names, dates)
                    finally:
                        os.close(fd)
        except (OSError, StoreError) as e:
            self._failed(e)
            return frozenset(), {}, entries

    def _failed(self, e: Exception) -> None:
        """Told once per mailbox: FETCH goes on without the cache."""
        if not self._told:
            self._told = True
            log.warn("header cache not used: {why}", why=e)

    def _lookup(self, fd: int, validity: int, entries: Sequence[Any], names: frozenset[bytes],
                dates: dict[int, int] | None
                ) -> tuple[frozenset[bytes], dict[int, bytes], Sequence[Any]]:
        self._sync(fd)
        if validity != self.validity or not names <= self.fields:
            return frozenset(), {}, entries
        # (by position in ``entries``: a table of them makes no entry but the missing ones)
        where: list[tuple[int, int, int]] = []
        missing: list[int] = []
        asked, fps, width = et.uids_of(entries), et.padded_fingerprints(entries), et.FP_WIDTH
        uids, offs, lens, count = self._uids, self._offs, self._lens, len(self._uids)
        i = 0
        for k, uid in enumerate(asked):  # mostly in UID order: the next slot is tried first
            if i >= count or uids[i] != uid:
                i = bisect_left(uids, uid)
            if i < count and uids[i] == uid:
                where.append((offs[i], lens[i], k))
                i += 1
            else:
                missing.append(k)
        found: dict[int, bytes] = {}
        where.sort(key=lambda pair: pair[0])
        whole = dates is not None or names == self.fields
        unknown = UNKNOWN_DATE
        size, unpack = _REC.size, _REC.unpack_from
        for span in _spans(where):
            start = span[0][0]
            buf = os.pread(fd, span[-1][0] + span[-1][1] - start, start)
            end = len(buf)
            for off, _, k in span:  # _record but for the CRC, written out: 100,000s of calls
                at = off - start
                data = None
                if at + size <= end:
                    tag, _crc, uid, length, date, fp = unpack(buf, at)
                    begin = at + size
                    if tag == _TAG and uid == asked[k] and begin + length <= end and \
                            fp == fps[k * width : (k + 1) * width]:  # (both NUL-padded)
                        data = buf[begin : begin + length]
                if data is None:
                    missing.append(k)
                else:
                    found[uid] = data if whole else pick(data, names)
                    if dates is not None and date != unknown:
                        dates[uid] = date
        return self.fields, found, et.subset(entries, sorted(missing))

    def _sync(self, fd: int) -> None:
        """The map made again if the file is not the one it describes (replaced by another
        process, or not loaded yet)."""
        head = _first_line(fd)
        st = os.fstat(fd)
        if head == self._head and (st.st_dev, st.st_ino) == self._file:
            return
        self._load(fd, head)

    def _load(self, fd: int, head: bytes | None) -> None:
        self._head, self.validity, self.fields = None, 0, frozenset()
        self._uids, self._offs, self._lens = array("I"), array("Q"), array("I")
        words = head.split(b" ") if head else []
        if len(words) < 3 or b" ".join(words[:2]) != MAGIC or not words[2].isdigit():
            return
        st = os.fstat(fd)
        pos, size = len(head) + 1, st.st_size  # type: ignore[arg-type]
        pairs: dict[int, tuple[int, int]] = {}
        while pos < size:
            buf = os.pread(fd, min(size - pos, _LOAD), pos)
            at = 0
            while at + _REC.size <= len(buf):
                tag, _crc, uid, length, _date, fp = _REC.unpack_from(buf, at)
                if tag != _TAG or length > MAX_RECORD:
                    return  # damaged: left unloaded, started again by the next add
                if at + _REC.size + length > len(buf):
                    break
                if _record(buf, at, uid, fp.decode("ascii", "replace")) is None:
                    return
                pairs[uid] = (pos + at, _REC.size + length)
                at += _REC.size + length
            if at == 0:
                return  # a record cut short at the end: a torn write
            pos += at
        self._head, self.validity = head, int(words[2])
        self._file = (st.st_dev, st.st_ino)
        self.fields = frozenset(words[3:])
        for uid in sorted(pairs):
            self._uids.append(uid)
            self._offs.append(pairs[uid][0])
            self._lens.append(pairs[uid][1])

    def _open(self, d: Dir, create: bool) -> int | None:
        try:
            fd, _ = d.open_file(CACHE_NAME, os.O_RDWR | os.O_APPEND, create, self._owner())
        except FileNotFoundError:
            return None
        return fd

    # -- writing -------------------------------------------------------------------------------

    def add(self, validity: int, items: list[tuple[int, str, bytes]], names: frozenset[bytes],
            live: int) -> dict[int, bytes]:
        """Cache ``items`` (uid, fingerprint, header block as stored), the cache's field set
        grown by ``names`` (started again for a new ``validity``, or when it holds more than
        ``live`` messages -- the mailbox's count -- and as many again of expunged ones);
        {uid: pick for ``names``}, also when nothing can be cached."""
        if cacheable(names):
            try:
                with self._lock:
                    d = self._dir(True)
                    if d is not None:
                        with d:
                            return self._add(d, validity, items, names, live)
            except (OSError, StoreError) as e:
                self._failed(e)
        return {uid: pick(h, names) for uid, _, h in items}

    def _add(self, d: Dir, validity: int, items: list[tuple[int, str, bytes]],
             names: frozenset[bytes], live: int) -> dict[int, bytes]:
        fd = self._open(d, create=True)
        assert fd is not None
        try:
            self._sync(fd)
            if self._head is None or validity != self.validity or not names <= self.fields \
                    or len(self._uids) > 2 * live + DEAD_SLACK:
                os.close(fd)
                fd = -1
                fd = self._start(d, validity, names)
            return self._append(fd, items, names)
        finally:
            if fd >= 0:
                os.close(fd)

    def _start(self, d: Dir, validity: int, names: frozenset[bytes]) -> int:
        """A new, empty file for the union of the fields (only ``names`` for a new validity,
        or past ``MAX_FIELDS``), put in place atomically; its descriptor."""
        fields = names | self.fields if validity == self.validity else names
        if len(fields) > MAX_FIELDS:
            fields = names
        head = b" ".join([MAGIC, b"%d" % validity, *sorted(fields)])
        d.write_file(CACHE_NAME, head + b"\n", self._owner())
        fd = self._open(d, create=True)
        assert fd is not None
        self._load(fd, head)
        return fd

    def _append(self, fd: int, items: list[tuple[int, str, bytes]], names: frozenset[bytes]
                ) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        chunks: list[bytes] = []
        placed: list[tuple[int, int, int]] = []
        size = 0
        whole = names == self.fields
        kept: list[tuple[int, str, bytes]] = []
        for uid, fp, header in items:
            data = pick(header, self.fields)
            out[uid] = data if whole else pick(data, names)
            if len(data) <= MAX_RECORD and len(fp) == 24 and fp.isascii():
                kept.append((uid, fp, data))
        for (uid, fp, data), date in zip(kept, _dates(self.fields, kept), strict=True):
            rec = _pack(uid, fp.encode(), data, date)
            placed.append((uid, size, len(rec)))
            chunks.append(rec)
            size += len(rec)
        if chunks:
            blob = b"".join(chunks)
            written = os.write(fd, blob)
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if written == len(blob):
                for uid, rel, length in placed:
                    self._place(uid, end - len(blob) + rel, length)
        return out

    def _place(self, uid: int, off: int, length: int) -> None:
        i = bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            self._offs[i], self._lens[i] = off, length
        elif i == len(self._uids):
            self._uids.append(uid)
            self._offs.append(off)
            self._lens.append(length)
        else:
            self._uids.insert(i, uid)
            self._offs.insert(i, off)
            self._lens.insert(i, length)


def _dates(fields: frozenset[bytes], kept: list[tuple[int, str, bytes]]) -> list[int]:
    """``cache_date`` of each record's data (UNKNOWN_DATE without a Date field among
    ``fields``): the usual form of all in one pass (``dates_of``), the others one by one."""
    if b"DATE" not in fields:
        return [UNKNOWN_DATE] * len(kept)
    usual = dates_of([data for _, _, data in kept])
    return [cache_date(data) if date is None else date
            for (_, _, data), date in zip(kept, usual, strict=True)]


def _pack(uid: int, fp: bytes, data: bytes, date: int) -> bytes:
    rest = _REC.pack(_TAG, 0, uid, len(data), date, fp)[8:] + data
    return _TAG + struct.pack("<I", zlib.crc32(rest)) + rest


def _record(buf: bytes, at: int, uid: int, fp: str) -> bytes | None:
    """The data of the record at ``buf[at:]`` if it is whole, undamaged and for this UID and
    fingerprint; None otherwise."""
    if at + _REC.size > len(buf):
        return None
    tag, crc, got_uid, length, _date, got_fp = _REC.unpack_from(buf, at)
    start = at + _REC.size
    if tag != _TAG or got_uid != uid or got_fp != fp.encode("ascii", "replace") or \
            start + length > len(buf):
        return None
    return buf[start : start + length] if zlib.crc32(buf[at + 8 : start + length]) == crc \
        else None


def _spans(where: list[tuple[int, int, Any]]) -> Iterable[list[tuple[int, int, Any]]]:
    """Sorted (offset, size, entry) in groups read by one pread each."""
    span: list[tuple[int, int, Any]] = []
    for pair in where:
        if span and pair[0] + pair[1] - span[0][0] > _SPAN:
            yield span
            span = []
        span.append(pair)
    if span:
        yield span


def _first_line(fd: int) -> bytes | None:
    head = os.pread(fd, 8192, 0)
    end = head.find(b"\n")
    return head[:end] if end > 0 else None
