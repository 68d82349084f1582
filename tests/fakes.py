"""The stand-ins several test modules share: accounts, a local delivery, the outbound queue,
transports that record TCP_NODELAY and STARTTLS, an SMTP realm, a counting libcrypt.

Each fake keeps only what the code under test calls, with the real object's method names and
signatures, and records what it was asked so that tests can check it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.trial import unittest
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.auth import libcrypt
from mailsuite.mta.accept import LookupFailed, UnknownRecipient
from mailsuite.mta.delivery import LocalDelivery


class FakeAccounts:
    """AccountDB / NssAccounts over the given accounts; records every name asked for.

    ``recipient(name)``: any of them (mail for system accounts is delivered);
    ``lookup(name)``: only one that may log in (uid >= ``first_valid_uid``).
    """

    def __init__(self, *accounts: Account, first_valid_uid: int = 1000) -> None:
        self.by_name = {a.name: a for a in accounts}
        self.first_valid_uid = first_valid_uid
        self.asked: list[str] = []

    def recipient(self, name: str) -> Account | None:
        self.asked.append(name)
        return self.by_name.get(name)

    def lookup(self, name: str) -> Account | None:
        account = self.recipient(name)
        if account is None or account.uid < self.first_valid_uid:
            return None
        return account


class FakeDelivery:
    """LocalDelivery as the doors use it (LMTP, the maildrop pickup).

    ``resolve(address)``: an address starting with "ghost" is unknown (5xx), "later" a failed
    look-up (4xx), "slow" waits for the test to fire ``resolving[address]``; any other resolves
    to its local part. Domain ``ex.test`` is local.
    ``deliver()``: each call is recorded in ``delivered``; it succeeds at once, or with
    ``hold=True`` returns a Deferred the test fires: ``held`` holds (data, sender, pairs, d).
    """

    queue: Any = None  # the outbound queue (a FakeQueue) where a test gives one

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.delivered: list[tuple[bytes, str, list[Any]]] = []
        self.held: list[tuple[bytes, str, list[Any], defer.Deferred[None]]] = []
        self.resolving: dict[str, defer.Deferred[list[str]]] = {}

    def now(self) -> float:
        return 0.0

    def is_local_domain(self, domain: str) -> bool:
        return domain == "ex.test"

    def resolve(self, address: str) -> defer.Deferred[list[str]]:
        if address.startswith("ghost"):
            return defer.fail(UnknownRecipient(address))
        if address.startswith("later"):
            return defer.fail(LookupFailed(address))
        if address.startswith("slow"):
            d: defer.Deferred[list[str]] = defer.Deferred()
            self.resolving[address] = d
            return d
        return defer.succeed([address.split("@")[0]])

    def deliver(self, data: bytes, sender: str, pairs: list[Any], queue_id: str,
                arrival: float | None = None) -> defer.Deferred[None]:
        self.delivered.append((data, sender, pairs))
        if not self.hold:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.held.append((data, sender, pairs, d))
        return d


class FakeQueue:
    """The outbound queue (mailsuite.mta.queue): enqueue, submit and bounce notices recorded;
    with ``fail=True`` a notice cannot be written (a full disk)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.enqueued: list[tuple[Any, bytes]] = []
        self.submitted: list[tuple[str, list[str], bytes]] = []
        self.notices: list[tuple[Any, str, list[Any]]] = []

    def enqueue(self, env: Any, data: bytes) -> defer.Deferred[Any]:
        self.enqueued.append((env, data))
        return defer.succeed(env)

    def submit(self, sender: str, addresses: list[str], data: bytes, **kw: Any) -> Any:
        """As the real one: the queued notice (its queue_id is always NOTICE1)."""
        self.submitted.append((sender, addresses, data))
        return defer.succeed(SimpleNamespace(queue_id="NOTICE1"))

    def notify(self, env: Any, data: bytes, kind: str, entries: list[Any],
               now: float) -> defer.Deferred[None]:
        if self.fail:
            return defer.fail(OSError(28, "No space left on device"))
        self.notices.append((env, kind, entries))
        return defer.succeed(None)


class NoDelayTransport(StringTransport):
    """A StringTransport that records setTcpNoDelay."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class TLSTransport(NoDelayTransport):
    """A StringTransport that records setTcpNoDelay and STARTTLS (the context it was given)."""

    tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context


@implementer(portal.IRealm)
class SmtpRealm:
    """The SMTP part of MailRealm: anonymous -> delivery.avatar(None), a user ->
    delivery.avatar(name); counts logouts."""

    def __init__(self, delivery: LocalDelivery) -> None:
        self.delivery = delivery
        self.logouts = 0

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        assert smtp.IMessageDelivery in interfaces
        name = None if avatar_id is checkers.ANONYMOUS else avatar_id.decode()

        def logout() -> None:
            self.logouts += 1

        return smtp.IMessageDelivery, self.delivery.avatar(name), logout


def count_hashes(case: unittest.TestCase) -> list[bytes]:
    """Record every libcrypt hash computed during the test ``case``: the list of settings
    (salts) ``libcrypt.crypt`` was called with, in order."""
    settings: list[bytes] = []
    real = libcrypt.crypt

    def counting(phrase: bytes, setting: bytes) -> Any:
        settings.append(setting)
        return real(phrase, setting)

    case.patch(libcrypt, "crypt", counting)
    return settings
