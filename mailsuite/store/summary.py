"""What SELECT shows of a whole mailbox (its keywords, unseen count and first unseen message)
kept from each ``Changes`` instead of a pass over its messages each time (``MboxMailbox``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailsuite.store import entrytable as et
from mailsuite.store.interfaces import SYSTEM_FLAGS, Changes


class Summary:
    """What SELECT shows of a whole mailbox without a pass over its messages each time: the
    keywords in use and the first unseen message, kept up to date from each Changes."""

    def __init__(self) -> None:
        self.keywords: set[str] = set()
        self._seen_below = 0  # every message with a lower UID has \\Seen
        self.unseen = 0  # messages without \\Seen (STATUS UNSEEN)

    def count(self, old: Sequence[Any], messages: Sequence[Any], changes: Changes) -> None:
        """Keep ``unseen`` from the entries before (``old``) and the changes, in O(changes),
        or one pass when the change is about as big as the mailbox (a rebuild)."""
        if 4 * (len(changes.expunged) + len(changes.flags)) > len(messages) + 16:
            self.unseen = _unseen(messages)
            return
        delta = sum(1 for m in changes.added if "\\Seen" not in m.flags)
        uids, flag_sets = et.uids_of(old), et.flag_sets(old)
        for uid in changes.expunged:
            i = et.position(old, uid)
            if i < len(old) and uids[i] == uid and "\\Seen" not in flag_sets[i]:
                delta -= 1
        for uid, flags in changes.flags.items():
            i = et.position(old, uid)
            was = "\\Seen" not in flag_sets[i] if i < len(old) and uids[i] == uid else False
            delta += ("\\Seen" not in flags) - was
        self.unseen = max(0, self.unseen + delta)

    def update(self, messages: Sequence[Any], changes: Changes, fresh: bool) -> None:
        if fresh:  # a new or reloaded state: one pass over the distinct flag sets
            self.keywords = set()
            self._seen_below = 0
            for flags in {id(flags): flags for flags in et.flag_sets(messages)}.values():
                self.keywords.update(f for f in flags if f not in SYSTEM_FLAGS)
            self.unseen = _unseen(messages)
            return
        for m in changes.added:
            if m.flags:
                self.keywords.update(f for f in m.flags if f not in SYSTEM_FLAGS)
        for uid, flags in changes.flags.items():
            self.keywords.update(f for f in flags if f not in SYSTEM_FLAGS)
            if "\\Seen" not in flags and uid < self._seen_below:
                self._seen_below = uid

    def first_unseen(self, messages: Sequence[Any]) -> int | None:
        """Scans only from the last answer on: messages seen since are passed once."""
        start = et.position(messages, self._seen_below)
        uids, flag_sets = et.uids_of(messages), et.flag_sets(messages)
        for i in range(start, len(messages)):
            if "\\Seen" not in flag_sets[i]:
                self._seen_below = uids[i]
                return int(uids[i])
        self._seen_below = uids[-1] + 1 if messages else 0
        return None


def _unseen(messages: Sequence[Any]) -> int:
    return sum(1 for flags in et.flag_sets(messages) if "\\Seen" not in flags)
