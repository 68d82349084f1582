"""What the IMAP server asks of the avatar of a logged-in user.

Not Twisted's ``imap4.IAccount``: none of Twisted's IMAP command dispatch is used (see
``mailsuite.imap.server``), so nothing calls that interface's methods (``select``,
``listMailboxes``...). The command handlers call these instead; names are IMAP names decoded to
``str`` ('/' separator, INBOX upper case), errors are ``mailsuite.store.interfaces.StoreError``.
The login asks the portal for this interface; ``mailsuite.realm.MailRealm`` hands out
``mailsuite.imap.account.ImapAccount``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IImapAccount(Interface):
    """The IMAP avatar of one logged-in account."""

    store = Attribute("The IMailStore the account's mailboxes are in.")
    account = Attribute("The mailsuite.accounts.Account logged in.")

    def list_mailboxes():
        """Deferred[list[MailboxEntry]]: every mailbox of the account (LIST, LSUB)."""

    def create(name):
        """Deferred[None] (CREATE)."""

    def delete(name):
        """Deferred[None] (DELETE)."""

    def rename(old, new):
        """Deferred[None] (RENAME)."""

    def subscriptions():
        """Deferred[set[str]]: the subscribed names (LSUB, LIST (SUBSCRIBED))."""

    def subscribe(name):
        """Deferred[None] (SUBSCRIBE)."""

    def unsubscribe(name):
        """Deferred[None] (UNSUBSCRIBE)."""

    def status(name, recent):
        """Deferred[dict[str, int]]: MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN (STATUS);
        ``recent``: the RecentTracker the server's sessions share."""

    def append(name, messages, recent):
        """Deferred[(uid_validity, [uids])]: append each (data, flags, internal date or None)
        (APPEND, MULTIAPPEND); they are recent (``recent``) for the next session to see them."""

    def open_view(name, readonly, recent):
        """Deferred[ImapMailboxView]: the session's view of a mailbox (SELECT, EXAMINE);
        ``recent``: the RecentTracker the server's sessions share."""

    def close_view(view):
        """The session leaves a mailbox (CLOSE, UNSELECT, another SELECT)."""

    def logout():
        """Close every view this avatar opened (the portal's logout callable)."""
