"""``\\Recent`` (RFC 3501 2.3.2): which session each new message is recent in.

One ``RecentTracker`` is shared by every IMAP session of the server (the IMAP factories own
it; tap.py gives the ports 143 and 993 the same one), so a message is recent in exactly one
session, whichever port it came in on.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from mailsuite.accounts import Account
from mailsuite.store import entrytable as et
from mailsuite.store.interfaces import IMailbox, IMailStore



class RecentTracker:
    """``\\Recent`` as RFC 3501 defines it: a message is recent in the first session told of it.

    Per mailbox (account, name, UIDVALIDITY) the first UID no session has claimed yet is kept in
    memory (lost at a restart, when nothing is recent). ``touch`` starts tracking a mailbox, as
    APPEND, COPY, STATUS and SELECT do before they act, so mail they add is recent for the next
    session to see it; STATUS RECENT counts the unclaimed messages.
    """

    def __init__(self) -> None:
        self._marks: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int], int]] = (
            weakref.WeakKeyDictionary()
        )

    def _for(
        self, store: IMailStore, account: Account, mailbox: IMailbox
    ) -> tuple[dict[tuple[str, str, int], int], Any]:
        """The marks of one store (a tracker may serve several, as in tests)."""
        marks = self._marks.setdefault(store, {})
        return marks, (account.name, mailbox.name, int(mailbox.uid_validity))

    def touch(self, store: IMailStore, account: Account, mailbox: IMailbox) -> None:
        marks, key = self._for(store, account, mailbox)
        marks.setdefault(key, int(mailbox.uid_next))

    def start_at(self, store: IMailStore, account: Account, mailbox: IMailbox,
                 uid: int) -> None:
        """Track from ``uid`` if no session here has (a thawed hibernated session: the mail
        that came while it slept is recent for it, unless this process has told it already)."""
        marks, key = self._for(store, account, mailbox)
        marks.setdefault(key, max(1, min(uid, int(mailbox.uid_next))))

    def mark(self, store: IMailStore, account: Account, mailbox: IMailbox) -> int:
        """The first UID no session has claimed yet (tracking starts now if it had not)."""
        marks, key = self._for(store, account, mailbox)
        return marks.setdefault(key, int(mailbox.uid_next))

    def claim(
        self,
        store: IMailStore,
        account: Account,
        mailbox: IMailbox,
        uids: Iterable[int],
        peek: bool = False,
    ) -> set[int]:
        marks, key = self._for(store, account, mailbox)
        mark = marks.setdefault(key, int(mailbox.uid_next))
        mine = {u for u in uids if u >= mark}
        if mine and not peek:  # EXAMINE shows \\Recent without taking it (RFC 3501 6.3.2)
            marks[key] = max(mine) + 1
        return mine

    def unclaimed(self, store: IMailStore, account: Account, mailbox: IMailbox) -> int:
        marks, key = self._for(store, account, mailbox)
        mark = marks.get(key)
        if mark is None:
            return 0
        messages = mailbox.messages
        return len(messages) - et.position(messages, mark)
