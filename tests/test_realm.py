"""The one realm hands each protocol its avatar, and refuses what it must."""

from __future__ import annotations

from twisted.cred import checkers, error
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.mail import imap4, pop3, smtp
from twisted.trial import unittest
from zope.interface import providedBy
from zope.interface.verify import verifyObject

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.realm import MailRealm
from mailsuite.store.memory import MemoryStore

BOSS = Account("boss", 1000, 1000, "/home/boss")


class Accounts:
    def lookup(self, name: str) -> Account | None:
        return BOSS if name == "boss" else None


class Delivery:
    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def avatar(self, user: str | None) -> object:
        self.asked.append(user)
        return ("delivery avatar", user)


class RealmTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.delivery = Delivery()
        self.realm = MailRealm(self.store, Accounts(), self.delivery, threads.inline)

    def test_anonymous_smtp(self) -> None:
        """MX traffic (ANONYMOUS) gets the unauthenticated delivery avatar."""
        iface, avatar, logout = self.successResultOf(
            self.realm.requestAvatar(checkers.ANONYMOUS, None, smtp.IMessageDelivery))
        self.assertIs(iface, smtp.IMessageDelivery)
        self.assertEqual(avatar, ("delivery avatar", None))
        logout()

    def test_anonymous_refused_for_mailboxes(self) -> None:
        """ANONYMOUS never opens a mailbox."""
        self.failureResultOf(
            self.realm.requestAvatar(checkers.ANONYMOUS, None, IImapAccount),
            error.UnauthorizedLogin)

    def test_imap_account(self) -> None:
        """A checker's bytes avatarId becomes the account's IMAP avatar."""
        iface, avatar, logout = self.successResultOf(
            self.realm.requestAvatar(b"boss", None, IImapAccount))
        self.assertIs(iface, IImapAccount)
        self.assertIsInstance(avatar, ImapAccount)
        logout()

    def test_imap_avatar_provides_what_it_declares(self) -> None:
        """The IMAP avatar implements every interface it declares (IImapAccount, which the
        IMAP login asks for), and does not claim Twisted's imap4.IAccount, whose methods
        (select, listMailboxes...) nothing calls and it does not have."""
        _, avatar, logout = self.successResultOf(
            self.realm.requestAvatar(b"boss", None, IImapAccount))
        declared = list(providedBy(avatar))
        self.assertIn(IImapAccount, declared)
        for iface in declared:
            verifyObject(iface, avatar)
        self.assertFalse(imap4.IAccount.providedBy(avatar))
        logout()

    def test_realm_provides_irealm(self) -> None:
        """The realm verifies as the twisted.cred IRealm the portal calls."""
        verifyObject(IRealm, self.realm)

    def test_pop3_maildrop_opened_and_closed(self) -> None:
        """POP3 gets the INBOX snapshot, and its logout closes the mailbox again."""
        self.successResultOf(self.store.deliver(BOSS, b"Subject: x\n\nbody\n", "a@b"))
        iface, box, logout = self.successResultOf(
            self.realm.requestAvatar(b"boss", None, pop3.IMailbox))
        self.assertIs(iface, pop3.IMailbox)
        self.assertEqual(len(self.successResultOf(defer.maybeDeferred(box.listMessages))), 1)
        inbox = self.store._box(BOSS, "INBOX", create=False)
        self.assertEqual(inbox.users, 1)
        logout()
        self.assertEqual(inbox.users, 0)

    def test_authenticated_smtp(self) -> None:
        """An authenticated SMTP client gets a delivery avatar for its own name."""
        _, avatar, _ = self.successResultOf(
            self.realm.requestAvatar(b"boss", None, smtp.IMessageDelivery))
        self.assertEqual(avatar, ("delivery avatar", "boss"))

    def test_account_gone(self) -> None:
        """A name the checker accepted but that is no longer an account is refused."""
        self.failureResultOf(
            self.realm.requestAvatar(b"ghost", None, IImapAccount), error.UnauthorizedLogin)
