"""The IMAP avatar of a logged-in account (``ImapAccount``): its folders, STATUS, APPEND and
the views it opens (``mailbox.ImapMailboxView``)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.recent import RecentTracker
from mailsuite.store import entrytable as et
from mailsuite.store.interfaces import IMailStore, MailboxEntry


def _sizes(messages: list[Any]) -> dict[str, int]:
    deleted = et.deleted_sizes(messages)
    return {"SIZE": sum(et.sizes_of(messages)), "DELETED": len(deleted),
            "DELETED-STORAGE": (sum(deleted) + 1023) // 1024}  # in KiB, as STORAGE


@implementer(IImapAccount)
class ImapAccount:
    """The IMAP avatar of one logged-in account: its store, its open views.

    Names are IMAP names decoded to ``str`` ('/' separator, INBOX upper case)."""

    def __init__(self, store: IMailStore, account: Account) -> None:
        self.store = store
        self.account = account
        self._views: list[ImapMailboxView] = []

    # -- folders -----------------------------------------------------------------------------
    def list_mailboxes(self) -> defer.Deferred[list[MailboxEntry]]:
        """Every mailbox (the store creates the special-use folders on first use)."""
        return self.store.list_mailboxes(self.account)

    def create(self, name: str) -> defer.Deferred[None]:
        return self.store.create(self.account, name)

    def delete(self, name: str) -> defer.Deferred[None]:
        return self.store.delete(self.account, name)

    def rename(self, old: str, new: str) -> defer.Deferred[None]:
        return self.store.rename(self.account, old, new)

    def subscriptions(self) -> defer.Deferred[set[str]]:
        return self.store.subscriptions(self.account)

    def subscribe(self, name: str) -> defer.Deferred[None]:
        return self.store.subscribe(self.account, name)

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        return self.store.unsubscribe(self.account, name)

    @defer.inlineCallbacks
    def status(self, name: str, recent: RecentTracker):  # type: ignore[no-untyped-def]
        """Deferred[dict]: MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN of a mailbox."""
        mailbox = yield self.store.open(self.account, name)
        try:
            yield mailbox.refresh()
            recent.touch(self.store, self.account, mailbox)
            messages = mailbox.messages
            return {
                "MESSAGES": len(messages),
                "RECENT": recent.unclaimed(self.store, self.account, mailbox),
                "UIDNEXT": int(mailbox.uid_next),
                "UIDVALIDITY": int(mailbox.uid_validity),
                "UNSEEN": int(mailbox.unseen_count()),
                "HIGHESTMODSEQ": int(mailbox.highest_modseq),
                **_sizes(messages),  # SIZE, DELETED, DELETED-STORAGE (imap/quota.py)
            }
        finally:
            mailbox.close()

    @defer.inlineCallbacks
    def append(  # type: ignore[no-untyped-def]
        self, name: str, messages: list[tuple[bytes, frozenset[str], Any]], recent: RecentTracker
    ):
        """Deferred[(uid_validity, [uids])]: append (data, flags, internal date or None) each;
        they are recent for the next session to see them."""
        mailbox = yield self.store.open(self.account, name)
        try:
            recent.touch(self.store, self.account, mailbox)
            uids = yield mailbox.append_messages(messages)  # all or none (MULTIAPPEND)
            return int(mailbox.uid_validity), uids
        finally:
            mailbox.close()

    # -- selecting ---------------------------------------------------------------------------
    @defer.inlineCallbacks
    def open_view(  # type: ignore[no-untyped-def]
        self, name: str, readonly: bool, recent: RecentTracker, recent_from: int = 0
    ):
        """Deferred[ImapMailboxView]; MailboxNotFound (or another StoreError) if it cannot.
        ``recent``: the tracker the server's sessions share (``recent_from``: the UIDNEXT a
        thawed session knew, RecentTracker.start_at)."""
        mailbox = yield self.store.open(self.account, name)
        try:
            yield mailbox.refresh()
        except BaseException:
            mailbox.close()
            raise
        if recent_from:
            recent.start_at(self.store, self.account, mailbox, recent_from)
        view = ImapMailboxView(mailbox, readonly, self.account, self.store, recent)
        self._views.append(view)
        return view

    def close_view(self, view: ImapMailboxView) -> None:
        view.close()
        if view in self._views:
            self._views.remove(view)

    def logout(self) -> None:
        """Close every mailbox this avatar opened."""
        for view in list(self._views):
            self.close_view(view)
