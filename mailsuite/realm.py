"""The one realm: hands every protocol its avatar for an authenticated (or anonymous) user."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.cred import error, portal
from twisted.internet import defer
from twisted.mail import pop3, smtp
from zope.interface import Interface, implementer

from mailsuite.accounts import AccountLookup
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.pop3.mailbox import open_pop3_mailbox
from mailsuite.store.interfaces import IMailStore
from mailsuite.threads import Blocking

#: what a realm answers (twisted.cred.portal.IRealm): (interface, avatar, logout)
Avatar = tuple[type[Interface], object, Callable[[], None]]


def _noop() -> None:
    pass


@implementer(portal.IRealm)
class MailRealm:
    """Maps an avatarId (login name as bytes, or ANONYMOUS for MX traffic) to a protocol avatar:
    ``IImapAccount`` (IMAP), ``pop3.IMailbox`` (POP3), ``smtp.IMessageDelivery`` (SMTP).

    ``accounts.lookup(name)`` (blocking: it runs through ``blocking``, a mailsuite.threads
    helper) gives the Account of a login; ``delivery.avatar(user_or_None)`` the SMTP avatar.
    """

    def __init__(
        self, store: IMailStore, accounts: AccountLookup, delivery: LocalDelivery,
        blocking: Blocking,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.delivery = delivery
        self.blocking = blocking

    @defer.inlineCallbacks
    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> Generator[defer.Deferred[Any], Any, Avatar]:
        if isinstance(avatarId, tuple):  # checkers.ANONYMOUS
            if smtp.IMessageDelivery in interfaces:
                return (smtp.IMessageDelivery, self.delivery.avatar(None), _noop)
            raise error.UnauthorizedLogin("anonymous login is only for SMTP")
        name = avatarId.decode("utf-8")
        account = yield self.blocking(self.accounts.lookup, name)
        if account is None:
            raise error.UnauthorizedLogin("no such account")
        for iface in interfaces:
            if iface is IImapAccount:
                avatar = ImapAccount(self.store, account)
                return (iface, avatar, avatar.logout)
            if iface is pop3.IMailbox:
                box = yield open_pop3_mailbox(self.store, account)
                return (iface, box, box.logout)
            if iface is smtp.IMessageDelivery:
                return (iface, self.delivery.avatar(account.name), _noop)
        raise NotImplementedError(f"no avatar for {interfaces!r}")
