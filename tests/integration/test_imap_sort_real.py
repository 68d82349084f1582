"""SORT, THREAD and ESEARCH from the stdlib's imaplib against the IMAP server on a real TCP
port (127.0.0.1, port 0), over an mbox store in a temporary directory (its header reads go
through the store's threads)."""

from __future__ import annotations

import imaplib
import os
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.mbox import MboxStore
from mailsuite.threads import InPool
from tests.test_imap_server import make_config, make_portal

MAILS = [
    b"From: Amy <amy@x.org>\nSubject: plans\nDate: 2 Jan 2024 10:00 +0000\n"
    b"Message-ID: <a@x>\n\nfirst\n",
    b"From: bob@x.org\nSubject: Re: plans\nDate: 3 Jan 2024 10:00 +0000\n"
    b"Message-ID: <b@x>\nReferences: <a@x>\n\nsecond\n",
    b"From: Cy <cy@x.org>\nSubject: [team] budget\nDate: 1 Jan 2024 10:00 +0000\n"
    b"Message-ID: <c@x>\n\nthird\n",
]


class _Config:
    def __init__(self, root: str) -> None:
        self.root = root

    def inbox_path(self, account: Account) -> str:
        return os.path.join(self.root, "spool", account.name)

    def folder_root(self, account: Account) -> str:
        return os.path.join(self.root, "mail", account.name)


class MboxImapCase(unittest.TestCase):
    """The server on 127.0.0.1 port 0 over an mbox store in a temporary directory."""

    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(os.path.join(root, "spool"))
        os.makedirs(os.path.join(root, "mail", "boss"))
        self.store = MboxStore(_Config(root), InPool(reactor))
        portal, realm = make_portal(self.store)  # type: ignore[arg-type]
        realm.requestAvatar = self._avatar  # type: ignore[method-assign]
        self.factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _avatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        """The account as the user running the tests (the store checks the owner)."""
        avatar = ImapAccount(self.store, Account(avatar_id.decode(), os.getuid(), os.getgid(),
                                                 "/nonexistent"))
        return IImapAccount, avatar, avatar.logout


class ImaplibSortTests(MboxImapCase):
    def _client(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.partial = out
        with imaplib.IMAP4("127.0.0.1", port) as client:
            client.login("boss", "secret")
            out["append"] = [
                client.append("INBOX", None, imaplib.Time2Internaldate(1_700_000_000 + n),
                              mail)[0] for n, mail in enumerate(MAILS)]
            out["select"] = client.select("INBOX")
            out["caps"] = client.capabilities
            out["sort"] = client.sort("(DATE)", "UTF-8", "ALL")
            out["uid sort"] = client.uid("SORT", "(REVERSE SUBJECT)", "UTF-8", "ALL")
            out["thread"] = client.thread("REFERENCES", "UTF-8", "ALL")
            out["refs"] = client.uid("THREAD", "REFS", "UTF-8", "ALL")
            client.search(None, "RETURN", "(MIN MAX COUNT)", "ALL")
            out["esearch"] = client.response("ESEARCH")
            try:
                client.sort("(NOPE)", "UTF-8", "ALL")
            except imaplib.IMAP4.error as e:
                out["bad"] = str(e)
            out["after"] = client.uid("SORT", "(SIZE)", "UTF-8", "ALL")
        return out

    @defer.inlineCallbacks
    def test_imaplib_sort_thread_esearch(self):  # type: ignore[no-untyped-def]
        try:
            out = yield threads.deferToThread(self._client, self.port.getHost().port)
        except imaplib.IMAP4.error as e:
            out = {"error": str(e), **getattr(self, "partial", {})}
        self.assertNotIn("error", out, out)
        for cap in ("SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=REFS", "ESEARCH"):
            self.assertIn(cap, out["caps"])
        self.assertEqual(out["sort"], ("OK", [b"3 1 2"]))
        self.assertEqual(out["uid sort"], ("OK", [b"1 2 3"]))  # plans, plans, budget
        self.assertEqual(out["thread"], ("OK", [b"(3)(1 2)"]))
        self.assertEqual(out["refs"], ("OK", [b"(3)(1 2)"]))
        self.assertEqual(out["esearch"][0], "ESEARCH")
        self.assertRegex(out["esearch"][1][0], rb'^\(TAG "[A-Z]+\d+"\) MIN 1 MAX 3 COUNT 3$')
        self.assertIn("BAD", out["bad"])
        self.assertEqual(out["after"][0], "OK")
