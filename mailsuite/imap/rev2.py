"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: ``Rev2Commands``, its ENABLE hook and SELECT's part.

The server advertises both; a session is IMAP4rev1 until ``ENABLE IMAP4rev2`` (RFC 9051 6.3.1:
a client of a server with both uses IMAP4rev2 only once it has enabled it). ENABLE
takes it in the authenticated state only, as UTF8=ACCEPT (RFC 5161 3: ENABLE comes before any
SELECT; here, while a mailbox is selected it is refused, so not in ``* ENABLED``). What
changes once it is on (RFC 9051 appendix E):

- mailbox names are UTF-8 both ways (RFC 9051 5.1; ``utf8_names``, as UTF8=ACCEPT), quoted
  strings may hold UTF-8, and SEARCH CHARSET stays allowed (RFC 9051 6.4.4: US-ASCII and UTF-8;
  ``utf8.search_charset_refused`` refuses it only after ENABLE UTF8=ACCEPT);
- SELECT/EXAMINE send no ``* n RECENT`` and no ``OK [UNSEEN n]`` (both gone from RFC 9051
  6.3.2) and do send ``* LIST`` of the mailbox with its attributes (required there);
  ``OK [CLOSED]`` on a re-SELECT is sent to every session already (condstore.py);
- no ``\\Recent`` (RFC 9051 2.3.2: deprecated, absent from its responses): the view takes none
  (``NO_RECENT``: a rev2 session claims no message, so mail stays recent for an IMAP4rev1
  session), and sends no ``* n RECENT`` with new mail (``ImapMailboxView.rev2``);
- unsolicited ``FETCH`` responses carry the UID (RFC 9051 7.5.2), as under CONDSTORE;
- SEARCH and UID SEARCH without RETURN are ``RETURN (ALL)`` and answered with ESEARCH
  (RFC 9051 6.4.4; selected.py's SEARCH); SORT and THREAD are no part of RFC 9051 and stay;
- BODY and BODYSTRUCTURE show message/global as message/rfc822, with the envelope, body and
  lines of the message inside (RFC 9051 7.5.2; RFC 9755 6 notes that this differs between the
  two); part numbers go inside a message/global for every session (``message.locate``: a path
  IMAP4rev1's BODYSTRUCTURE never shows).

What RFC 9051 takes in already works the same for both (LIST-EXTENDED with ``\\NonExistent``
and children always, LIST-STATUS, STATUS SIZE and DELETED, ESEARCH, SEARCHRES, ENABLE, IDLE,
NAMESPACE, UNSELECT, UIDPLUS's APPENDUID/COPYUID, MOVE, SPECIAL-USE, BINARY, LITERAL+ (a
superset of LITERAL-), SASL-IR, RFC 5530's codes); LSUB, CHECK and STATUS RECENT are kept for
IMAP4rev1 clients and answer rev2 ones too.

A session with IMAP4rev2 on is never hibernated: ``hibernate.hibernatable`` keeps every session
with UTF-8 names awake, and the snapshot could not say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import encode_mailbox
from mailsuite.imap.recent import RecentTracker
from mailsuite.store.interfaces import MailboxEntry, StoreError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.mailbox import ImapMailboxView
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

IMAP4REV2 = b"IMAP4REV2"  # as ENABLE keeps names (upper case)


class _NoRecent(RecentTracker):
    """The tracker of an IMAP4rev2 session's views: no message is recent in them, and they
    claim none from the sessions that have ``\\Recent``."""

    def touch(self, store: Any, account: Any, mailbox: Any) -> None:
        return None

    def start_at(self, store: Any, account: Any, mailbox: Any, uid: int) -> None:
        return None

    def mark(self, store: Any, account: Any, mailbox: Any) -> int:
        return int(mailbox.uid_next)

    def claim(self, store: Any, account: Any, mailbox: Any, uids: Iterable[int],
              peek: bool = False) -> set[int]:
        return set()

    def unclaimed(self, store: Any, account: Any, mailbox: Any) -> int:
        return 0


NO_RECENT = _NoRecent()


def list_attributes(entry: MailboxEntry | None) -> bytes:
    """The attributes LIST without options gives a mailbox (listext.py's)."""
    if entry is None:
        return b"()"
    attrs = ["\\HasChildren" if entry.has_children else "\\HasNoChildren"]
    if entry.special_use:
        attrs.append(entry.special_use)
    return b"(" + " ".join(attrs).encode("ascii") + b")"


class SelectReplies:
    """What SELECT/EXAMINE say differently to IMAP4rev1 and IMAP4rev2 sessions: the recent
    tracker the view is opened with, and the untagged responses besides FLAGS, EXISTS and the
    UID ones (``lines``)."""

    def __init__(self, tracker: RecentTracker, rev2: bool,
                 entry: MailboxEntry | None = None) -> None:
        self.tracker = tracker
        self.rev2 = rev2
        self.entry = entry

    def lines(self, view: ImapMailboxView) -> list[bytes]:
        if not self.rev2:  # RFC 3501 6.3.1
            out = [b"%d RECENT" % view.recent_count()]
            unseen = view.first_unseen()
            if unseen is not None:
                out.append(b"OK [UNSEEN %d] First unseen." % unseen)
            return out
        view.rev2 = True  # no RECENT with new mail, UID in unsolicited FETCH
        # RFC 9051 6.3.2: the LIST response of the mailbox, its name as the server has it
        return [b'LIST %s "/" %s' % (list_attributes(self.entry), encode_mailbox(view.name, True))]


class Rev2Commands(_Base):
    """IMAP4rev2 for ``IMAPServer``: the capability, ENABLE IMAP4rev2, SELECT's replies."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"IMAP4rev2": None}

    def enable_IMAP4REV2(self) -> bool:
        if self.state != "auth":
            return False
        self.utf8_names = True
        return True

    async def select_replies(self, name: str) -> SelectReplies:
        """SELECT's hook (folders.py), before the mailbox is opened: for IMAP4rev2 the entry
        of the mailbox as LIST shows it (None if it is not listed, or the listing failed:
        the SELECT itself then tells what is wrong)."""
        if IMAP4REV2 not in self.enabled:
            return SelectReplies(self.recent, False)
        wanted = "INBOX" if name.upper() == "INBOX" else name
        try:
            entries = await self.account.list_mailboxes()
        except StoreError:
            entries = []
        entry = next((e for e in entries if e.name == wanted), None)
        return SelectReplies(NO_RECENT, True, entry)


__all__ = ["IMAP4REV2", "NO_RECENT", "Rev2Commands", "SelectReplies", "list_attributes"]
