"""The header-field cache seen by a real client: the stdlib's imaplib on 127.0.0.1 (port 0)
against the IMAP server over the mbox store, its file work in the reactor's thread pool."""

from __future__ import annotations

import imaplib
import os
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from zope.interface import implementer

from mailsuite import threads as mthreads
from mailsuite.accounts import Account
from mailsuite.imap import fetchfields
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.headercache import CACHE_NAME
from mailsuite.store.mbox import MboxStore
from tests.test_imap_server import make_config
from tests.test_store_mbox import FakeMailboxConfig

LIST = "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (From Subject Date)])"


@implementer(IRealm)
class Realm:
    def __init__(self, store: MboxStore, account: Account) -> None:
        self.store, self.account = store, account

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, self.account)
        return IImapAccount, avatar, avatar.logout


class RealClientTests(unittest.TestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        spool, home = os.path.join(root, "spool"), os.path.join(root, "home", "boss")
        os.makedirs(spool)
        os.makedirs(home)
        self.account = Account("boss", os.getuid(), os.getgid(), home)
        self.cache = os.path.join(home, "mail", ".imap", "INBOX", CACHE_NAME)
        self.store = MboxStore(FakeMailboxConfig(spool), mthreads.InPool(reactor))
        portal = Portal(Realm(self.store, self.account),
                        [InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")])
        factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _fetch_twice(self, port: int) -> list[Any]:
        with imaplib.IMAP4("127.0.0.1", port, timeout=20) as client:
            client.login("boss", "secret")
            client.select("INBOX")
            first = client.uid("FETCH", "1:*", LIST)
            second = client.uid("FETCH", "1:*", LIST)
            client.logout()
        return [first, second]

    @defer.inlineCallbacks
    def test_refetch_from_the_cache_is_the_same(self) -> None:
        """Thunderbird's listing FETCH twice (filling the cache, then from it): the same
        answer, and the same as FETCH without the cache; the cache file is beside the index."""
        for n in range(30):
            body = b"From: a%d@example.test\nSubject: message %d\nDate: Mon, 1 Dec 2026 10:00:00" \
                   b" +0100\nX-Other: x\n\nbody %d\n" % (n, n, n)
            yield self.store.deliver(self.account, body, "a@example.test")
        port = self.port.getHost().port
        first, second = yield threads.deferToThread(self._fetch_twice, port)
        self.assertEqual(first[0], "OK")
        self.assertEqual(first, second)
        self.assertTrue(os.path.exists(self.cache))
        self.assertEqual(len([x for x in first[1] if isinstance(x, tuple)]), 30)
        self.assertIn(b"Subject: message 29", first[1][-2][1])
        self.patch(fetchfields, "USE_CACHE", False)
        plain = yield threads.deferToThread(self._fetch_twice, port)
        self.assertEqual(plain[0], first)
        yield self.store.settle()
