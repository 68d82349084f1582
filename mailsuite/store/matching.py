"""The old entries a fresh parse is matched against, by fingerprint (``index.reconcile``).

Almost every fingerprint is unique: one dict item each, and a queue (a deque is 760 bytes even
for one entry: 76 MB over 100,000 messages) only for the few that repeat.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class _Matched(Protocol):
    @property
    def uid(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...


Entry = TypeVar("Entry", bound=_Matched)  # index.Entry (not imported: index imports this)


class Candidates(Generic[Entry]):
    """Old entries by fingerprint, each taken at most once, in file order."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.single: dict[str, Entry] = {}
        self.multi: dict[str, deque[Entry]] = {}
        for e in entries:
            fp = e.fingerprint
            queue = self.multi.get(fp)
            if queue is not None:
                queue.append(e)
            elif fp in self.single:
                self.multi[fp] = deque((self.single.pop(fp), e))
            else:
                self.single[fp] = e

    def take(self, fingerprint: str, after: int) -> Entry | None:
        """The first old entry with this fingerprint whose UID is above ``after``; it and
        those of that fingerprint before it are not offered again."""
        e = self.single.pop(fingerprint, None)
        if e is not None:
            return e if e.uid > after else None
        queue = self.multi.get(fingerprint)
        while queue and queue[0].uid <= after:
            queue.popleft()
        return queue.popleft() if queue else None
