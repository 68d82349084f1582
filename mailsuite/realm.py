"""The one realm: hands every protocol its avatar for an authenticated (or anonymous) user."""

from __future__ import annotations

from typing import Any

from twisted.cred import checkers, error, portal
from twisted.internet import defer
from twisted.mail import imap4, pop3, smtp
from zope.interface import implementer

from mailsuite.imap.mailbox import ImapAccount
from mailsuite.pop3.mailbox import open_pop3_mailbox
from mailsuite.store.interfaces import IMailStore
from mailsuite.threads import Blocking


def _noop() -> None:
    pass


@implementer(portal.IRealm)
class MailRealm:
    """Maps an avatarId (login name as bytes, or ANONYMOUS for MX traffic) to a protocol avatar.

    ``accounts`` is an AccountDB (``lookup(name) -> Account | None``, blocking);
    ``delivery`` a LocalDelivery (``avatar(user_or_None)`` -> smtp.IMessageDelivery);
    ``blocking`` (mailsuite.threads) runs the lookups.
    """

    def __init__(self, store: IMailStore, accounts: Any, delivery: Any, blocking: Blocking) -> None:
        self.store = store
        self.accounts = accounts
        self.delivery = delivery
        self.blocking = blocking

    @defer.inlineCallbacks
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if avatarId is checkers.ANONYMOUS:
            if smtp.IMessageDelivery in interfaces:
                return (smtp.IMessageDelivery, self.delivery.avatar(None), _noop)
            raise error.UnauthorizedLogin("anonymous login is only for SMTP")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        account = yield self.blocking(self.accounts.lookup, name)
        if account is None:
            raise error.UnauthorizedLogin("no such account")
        for iface in interfaces:
            if iface is imap4.IAccount:
                avatar = ImapAccount(self.store, account)
                return (iface, avatar, avatar.logout)
            if iface is pop3.IMailbox:
                box = yield open_pop3_mailbox(self.store, account)
                return (iface, box, box.logout)
            if iface is smtp.IMessageDelivery:
                return (iface, self.delivery.avatar(account.name), _noop)
        raise NotImplementedError(f"no avatar for {interfaces!r}")
