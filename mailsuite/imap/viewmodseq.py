"""The mod-sequences (RFC 7162) of one session's view of a mailbox: a base of
``mailbox.ImapMailboxView`` (``condstore`` is the protocol side)."""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter
from typing import Any

from mailsuite.store.interfaces import IMailbox, MessageInfo

_UID = attrgetter("uid")


class ModseqView:
    mailbox: IMailbox
    condstore: bool  # CONDSTORE is on: UID and MODSEQ in unsolicited FETCH

    def info(self, uid: int) -> MessageInfo:
        raise NotImplementedError

    def store_modseq(self, uid: int, old: Any) -> int:
        """The mod-sequence the store holds now for ``uid`` (``old``'s if it has none)."""
        messages = self.mailbox.messages
        i = bisect_left(messages, uid, key=_UID)
        found = messages[i] if i < len(messages) and messages[i].uid == uid else old
        return int(found.modseq)

    def _told(self, uid: int, flags: frozenset[str], old: Any) -> MessageInfo:
        """The message as told to the client now: these flags, the store's mod-sequence."""
        return MessageInfo(uid, flags, old.internal_date, old.size, self.store_modseq(uid, old))

    def modseq_item(self, uid: int) -> bytes:
        """`` MODSEQ (n)`` for a FETCH response once CONDSTORE is on, else nothing."""
        return b" MODSEQ (%d)" % self.info(uid).modseq if self.condstore else b""
