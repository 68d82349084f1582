"""The mod-sequences (RFC 7162) of one session's view of a mailbox: a base of
``mailbox.ImapMailboxView`` (``condstore`` is the protocol side)."""

from __future__ import annotations

from typing import Any

from mailsuite.imap.parser import ParseError
from mailsuite.store import entrytable as et
from mailsuite.store.interfaces import IMailbox, MessageInfo

MAX_MODSEQ = (1 << 63) - 1  # mod-sequence-value: 1*DIGIT, up to 2^63-1 (RFC 7162 7)


def modseq_value(raw: bytes, zero: bool = True) -> int:
    """A mod-sequence from the wire (``zero``: mod-sequence-valzer, 0 allowed)."""
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_MODSEQ or (not zero and not int(raw)):
        raise ParseError("invalid mod-sequence")
    return int(raw)


class ModseqView:
    mailbox: IMailbox
    condstore: bool  # CONDSTORE is on: UID and MODSEQ in unsolicited FETCH
    qresync: bool  # QRESYNC is on: VANISHED instead of EXPUNGE

    def info(self, uid: int) -> MessageInfo:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def _at(self, pos: int) -> Any:
        raise NotImplementedError

    def new_since(self, since: int) -> list[int]:
        """The UIDs at the end of the view whose mod-sequence is above ``since``: every message
        added after it (a delivery may have put one there before the store published it),
        in O(those messages)."""
        out: list[int] = []
        pos = self.count() - 1
        while pos >= 0 and self._at(pos).modseq > since:
            out.append(self._at(pos).uid)
            pos -= 1
        return out[::-1]

    def store_modseq(self, uid: int, old: Any) -> int:
        """The mod-sequence the store holds now for ``uid`` (``old``'s if it has none)."""
        messages = self.mailbox.messages
        i = et.position(messages, uid)
        found = messages[i] if i < len(messages) and et.uid_at(messages, i) == uid else old
        return int(found.modseq)

    def _told(self, uid: int, flags: frozenset[str], old: Any) -> MessageInfo:
        """The message as told to the client now: these flags, the store's mod-sequence (its
        save date kept: SAVEDATE)."""
        return MessageInfo(uid, flags, old.internal_date, old.size, self.store_modseq(uid, old),
                           getattr(old, "saved", 0))

    def modseq_item(self, uid: int) -> bytes:
        """`` MODSEQ (n)`` for a FETCH response once CONDSTORE is on, else nothing."""
        return b" MODSEQ (%d)" % self.info(uid).modseq if self.condstore else b""
