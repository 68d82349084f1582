"""Mod-sequences (RFC 7162 CONDSTORE / QRESYNC) of the store: what was expunged, and when.

Every change of a mailbox (a message added, its flags changed, a message expunged) gets a
mod-sequence one above the mailbox's ``highest_modseq``; the messages one operation changes
share it. A message's own ``modseq`` is that of its last change; the expunged ones are kept as
``Vanished``: UID ranges with the mod-sequence of their expunge, the newest last, bounded
(``LIMIT`` ranges). Beyond it the oldest are forgotten and ``floor`` says the oldest
mod-sequence that can still be answered exactly: a client that asks about older changes is
told every UID that may have gone (QRESYNC falls back to its known UIDs).

In the index file (``index``) they are one line ``V <floor> <lo>:<hi>:<modseq> ...``; in its
journal ``M <modseq> <uid> ...`` (these messages changed at this mod-sequence) and
``V <modseq> <uid> ...`` (these were expunged at it).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

LIMIT = 20000  # expunged ranges remembered per mailbox


@dataclass(frozen=True)
class Vanished:
    """The expunged UIDs of a mailbox: (lo, hi, modseq) ranges, ascending modseq."""

    ranges: tuple[tuple[int, int, int], ...] = ()
    floor: int = 0  # changes at or below it may be forgotten

    def add(self, uids: Iterable[int], modseq: int) -> Vanished:
        """With ``uids`` expunged at ``modseq`` (above every one held)."""
        new = list(self.ranges)
        for lo, hi in runs(uids):
            if new and new[-1][2] == modseq and new[-1][1] + 1 == lo:
                new[-1] = (new[-1][0], hi, modseq)
            else:
                new.append((lo, hi, modseq))
        floor = self.floor
        if len(new) > LIMIT:
            cut = len(new) - LIMIT
            floor = max(floor, new[cut - 1][2])
            new = new[cut:]
        return Vanished(tuple(new), floor)

    def since(self, modseq: int) -> list[int] | None:
        """The UIDs expunged after ``modseq``, ascending; None if that is older than what is
        remembered (``floor``): then any UID not present may have gone."""
        if modseq < self.floor:
            return None
        keys = [r[2] for r in self.ranges]
        out: list[int] = []
        for lo, hi, _ in self.ranges[bisect_right(keys, modseq):]:
            out.extend(range(lo, hi + 1))
        return sorted(set(out))

    def line(self) -> bytes:
        return b"V %d" % self.floor + b"".join(b" %d:%d:%d" % r for r in self.ranges)

    @classmethod
    def parse(cls, line: bytes) -> Vanished:
        words = line.split()
        ranges = []
        for w in words[2:]:
            lo, hi, m = w.split(b":")
            ranges.append((int(lo), int(hi), int(m)))
        return cls(tuple(ranges), int(words[1]))


EMPTY = Vanished()


def runs(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted UIDs as (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for uid in sorted(set(uids)):
        if out and out[-1][1] + 1 == uid:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


def record(kind: bytes, modseq: int, uids: Iterable[int]) -> bytes:
    """A journal record: ``M`` (changed) or ``V`` (expunged) at ``modseq``."""
    return kind + b" %d" % modseq + b"".join(b" %d" % u for u in sorted(uids)) + b"\n"


class ChangeLog:
    """The UIDs changed (flags, added) at each mod-sequence since ``start``, in memory, so
    that "what changed since n" (QRESYNC's SELECT) needs no pass over the mailbox. Bounded:
    beyond ``KEEP`` UIDs the oldest go and ``start`` moves up."""

    KEEP = 100_000

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self._modseqs: list[int] = []
        self._uids: list[list[int]] = []
        self._count = 0

    def publish(self, modseq: int, uids: list[int], fresh: bool) -> None:
        """A state at ``modseq`` was published, changing ``uids`` (``fresh``: a new or
        reloaded state, whose earlier changes are not known here)."""
        if fresh:
            self.__init__(modseq)  # type: ignore[misc]
            return
        if not uids:
            return
        if self._modseqs and self._modseqs[-1] == modseq:
            self._uids[-1].extend(uids)
        else:
            self._modseqs.append(modseq)
            self._uids.append(list(uids))
        self._count += len(uids)
        while self._count > self.KEEP and len(self._modseqs) > 1:
            self.start = self._modseqs.pop(0)
            self._count -= len(self._uids.pop(0))

    def since(self, modseq: int) -> list[int] | None:
        """The UIDs (a superset, ascending) changed after ``modseq``; None when that is before
        what is kept."""
        if modseq < self.start:
            return None
        found: set[int] = set()
        for uids in self._uids[bisect_right(self._modseqs, modseq):]:
            found.update(uids)
        return sorted(found)
