"""SAVEDATE (RFC 8514) over StringTransport: the RFC's examples (4.2 FETCH SAVEDATE with a date
and with NIL, 4.3 SEARCH SAVEDON / SAVEDSINCE / SAVEDBEFORE / SAVEDATESUPPORTED) against a
MemoryStore with a clock, and against the mbox store on disk: COPY and MOVE give the copy the
time of the copy, a restart keeps the dates, a message another program appended is NIL."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import reactor
from twisted.trial import unittest
from zope.interface import implementer

from mailsuite import threads as store_threads
from mailsuite.accounts import Account
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.mbox import MboxStore
from mailsuite.store.memory import MemoryStore
from tests.test_imap_server import BOSS, MESSAGE, ImapTestCase, Session, make_config
from tests.test_store_mbox import FakeMailboxConfig, asctime

# 28-Dec-2014 10:00 UTC and the days around it (the RFC's examples use 28-Dec-2014)
DEC27, DEC28, DEC29 = 1419674400, 1419760800, 1419847200


def local_text(epoch: int) -> bytes:
    """The IMAP date-time of ``epoch`` in the server's zone, made with ``time`` (not the
    server's code)."""
    t = time.localtime(epoch)
    return (b'"%2d-' % t.tm_mday + time.strftime("%b-%Y %H:%M:%S %z", t).encode() + b'"')


class SaveDateMemoryTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.now = DEC27
        self.store = MemoryStore(now=lambda: datetime.fromtimestamp(self.now, UTC))
        from tests.test_imap_server import make_portal
        self.portal, self.realm = make_portal(self.store)
        self.factory = IMAPFactory(make_config(), self.portal, self.maillog, clock=self.clock)
        self.s = self.session()

    def fill(self) -> None:
        """Message 1 saved on 27 Dec, 2 and 3 on 28 Dec (3 APPENDed with an internal date of
        2001), 4 on 29 Dec."""
        self.deliver()
        self.now = DEC28
        self.deliver()
        self.s.login()
        self.assertIn(b"a OK", self.s.send(
            b'a APPEND INBOX "03-Feb-2001 04:05:06 +0000" {4+}\r\nhi\r\n\r\n'))
        self.now = DEC29
        self.deliver()
        self.s.cmd(b"s SELECT INBOX")

    def test_capability(self) -> None:
        self.assertIn(b" SAVEDATE", self.s.cmd(b"c CAPABILITY"))

    def test_rfc8514_fetch_example(self) -> None:
        """RFC 8514 4.2: ``FETCH n (SAVEDATE)`` answers the save date as a date-time (not the
        internal date: an APPEND of 2001 is saved on 28 Dec 2014); NIL where the store does
        not know it."""
        self.fill()
        out = self.s.cmd(b"A101 FETCH 3 (SAVEDATE INTERNALDATE)")
        self.assertIn(b"* 3 FETCH (SAVEDATE %s INTERNALDATE \" 3-Feb-2001 04:05:06 +0000\")\r\n"
                      % local_text(DEC28), out)
        self.assertIn(b"A101 OK", out)
        box = self.box()
        box.messages[3] = dataclasses.replace(box.messages[3], saved=0)  # as if never known
        out = self.s.cmd(b"A102 FETCH 4 (SAVEDATE)")
        self.assertIn(b"* 4 FETCH (SAVEDATE NIL)\r\nA102 OK", out)
        out = self.s.cmd(b"A103 UID FETCH 1:* (SAVEDATE)")
        self.assertEqual(len(re.findall(rb"\* \d FETCH \(UID \d SAVEDATE [\"N]", out)), 4, out)
        self.assertIn(b"UID 1", out)

    def test_kept_through_flag_changes(self) -> None:
        """A STORE (this session's) or a change by another session does not lose the save
        date the view shows (the view's rows rebuilt with the new flags keep it)."""
        self.fill()
        self.s.cmd(b"e ENABLE CONDSTORE")
        self.s.cmd(b"f STORE 3 +FLAGS (\\Seen)")
        other = self.session()
        other.login()
        other.cmd(b"o SELECT INBOX")
        other.cmd(b"p STORE 2 +FLAGS (\\Flagged)")
        out = self.s.cmd(b"g FETCH 2:3 (SAVEDATE)")
        self.assertIn(b"* 3 FETCH (SAVEDATE %s)" % local_text(DEC28), out)
        self.assertIn(b"* 2 FETCH (SAVEDATE %s)" % local_text(DEC28), out)
        self.assertIn(b"* SEARCH 2 3\r\n", self.s.cmd(b"h SEARCH SAVEDON 28-Dec-2014"))

    def test_rfc8514_search_examples(self) -> None:
        """RFC 8514 4.3: SAVEDON / SAVEDSINCE / SAVEDBEFORE compare the day of the save date
        (not of the internal date: message 3 is of 2001); SAVEDATESUPPORTED matches all."""
        self.fill()
        self.assertIn(b"* SEARCH 2 3\r\nA102 OK", self.s.cmd(b"A102 SEARCH SAVEDON 28-Dec-2014"))
        self.assertIn(b"* SEARCH 2 3 4\r\nA103 OK",
                      self.s.cmd(b"A103 SEARCH SAVEDSINCE 28-Dec-2014"))
        self.assertIn(b"* SEARCH 1\r\nA104 OK", self.s.cmd(b"A104 SEARCH SAVEDBEFORE 28-Dec-2014"))
        self.assertIn(b"* SEARCH 1 2 3 4\r\nA105 OK",
                      self.s.cmd(b"A105 SEARCH SAVEDATESUPPORTED"))
        self.assertIn(b"* SEARCH 3\r\n", self.s.cmd(b"A106 SEARCH BEFORE 28-Dec-2014 SAVEDON "
                                                   b"28-Dec-2014"))
        self.assertIn(b"* SEARCH 4\r\n", self.s.cmd(b"A107 UID SEARCH NOT SAVEDBEFORE 29-Dec-2014"))
        box = self.box()
        box.messages[2] = dataclasses.replace(box.messages[2], saved=0)
        # no save date: its internal date stands in (RFC 8514 4.3)
        self.assertIn(b"* SEARCH 3\r\n", self.s.cmd(b"A108 SEARCH SAVEDON 3-Feb-2001"))
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"A109 SEARCH SAVEDON 28-Dec-2014"))

    def test_bad_arguments(self) -> None:
        """A missing or malformed date is BAD; the session goes on."""
        self.fill()
        for line in (b"b1 SEARCH SAVEDON", b"b2 SEARCH SAVEDSINCE 32-Dec-2014",
                     b"b3 SEARCH SAVEDBEFORE yesterday", b"b4 FETCH 1 (SAVEDATE[])"):
            out = self.s.cmd(line)
            self.assertIn(line.split()[0] + b" BAD", out)
        self.assertIn(b"b5 OK", self.s.cmd(b"b5 NOOP"))

    def test_pipelined(self) -> None:
        """Commands sent in one write, then byte by byte, each answered in order."""
        self.fill()
        lines = b"p1 FETCH 1 (SAVEDATE)\r\np2 SEARCH SAVEDON 27-Dec-2014\r\n"
        whole = self.s.send(lines)
        one = b"".join(self.s.send(lines[i:i + 1]) for i in range(len(lines)))
        self.assertEqual(whole, one)
        self.assertIn(b"* SEARCH 1\r\np2 OK", whole)


@implementer(IRealm)
class _Realm:
    def __init__(self, store: Any, account: Account) -> None:
        self.store, self.account = store, account

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, self.account)
        return IImapAccount, avatar, avatar.logout


class MboxServerCase(unittest.TestCase):
    """The server on the mbox store (files in a temp dir, file work inline)."""

    def setUp(self) -> None:
        root = self.mktemp()
        self.spool = os.path.join(root, "spool")
        home = os.path.join(root, "home", "boss")
        os.makedirs(self.spool)
        os.makedirs(home)
        self.account = Account("boss", os.getuid(), os.getgid(), home)
        self.now = DEC27
        self.start()

    def start(self) -> None:
        """A new store and server (a restart)."""
        self.store = MboxStore(FakeMailboxConfig(self.spool), store_threads.inline,
                               now=lambda: datetime.fromtimestamp(self.now, UTC))
        portal = Portal(_Realm(self.store, self.account),
                        [InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")])
        self.factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)

    def session(self) -> Session:
        s = Session(self.factory)
        s.login()
        return s



class SaveDateMboxTests(MboxServerCase):
    def test_copy_move_restart_and_external(self) -> None:
        """COPY and MOVE give the copy the time of the copy (UID FETCH SAVEDATE of the COPYUID
        UIDs), the original keeps its own; after a restart the dates are the same; a message
        another program appended to the mbox is saved at its From line's date (RFC 4155), and
        SAVEDATESUPPORTED matches it."""
        self.successResultOf(self.store.deliver(self.account, MESSAGE, "a@example.test"))
        s = self.session()
        s.cmd(b"c CREATE Other")
        s.cmd(b"s SELECT INBOX")
        self.now = DEC28
        self.assertIn(b"OK [COPYUID", s.cmd(b"k COPY 1 Other"))
        self.now = DEC29
        s.cmd(b"d APPEND INBOX {4+}\r\nhi\r\n\r\n")
        s.cmd(b"n NOOP")
        self.assertIn(b"OK [COPYUID", s.cmd(b"m MOVE 2 Other"))
        self.assertIn(b"* 1 FETCH (SAVEDATE %s)" % local_text(DEC27), s.cmd(b"f FETCH 1 SAVEDATE"))
        s.cmd(b"x SELECT Other")
        out = s.cmd(b"f FETCH 1:* (SAVEDATE)")
        self.assertIn(b"* 1 FETCH (SAVEDATE %s)" % local_text(DEC28), out)
        self.assertIn(b"* 2 FETCH (SAVEDATE %s)" % local_text(DEC29), out)
        s.cmd(b"z LOGOUT")
        with open(os.path.join(self.spool, "boss"), "ab") as f:
            f.write(b"From x@example.test  %s\nSubject: theirs\n\nbody\n\n"
                    % asctime(DEC29).encode())
        self.start()
        s = self.session()
        s.cmd(b"s SELECT Other")
        out = s.cmd(b"f FETCH 1:* (SAVEDATE)")
        self.assertIn(b"* 1 FETCH (SAVEDATE %s)" % local_text(DEC28), out)
        self.assertIn(b"* 2 FETCH (SAVEDATE %s)" % local_text(DEC29), out)
        s.cmd(b"i SELECT INBOX")
        out = s.cmd(b"f FETCH 1:* (SAVEDATE)")
        self.assertIn(b"* 1 FETCH (SAVEDATE %s)" % local_text(DEC27), out)
        self.assertIn(b"* 2 FETCH (SAVEDATE %s)" % local_text(DEC29), out)  # its From line's
        self.assertIn(b"* SEARCH 1 2\r\n", s.cmd(b"g SEARCH SAVEDATESUPPORTED"))
        self.assertIn(b"* SEARCH 1\r\n", s.cmd(b"h SEARCH SAVEDON 27-Dec-2014"))
        self.assertIn(b"* SEARCH 2\r\n", s.cmd(b"h SEARCH SAVEDON 29-Dec-2014"))
        s.cmd(b"z LOGOUT")
        self.successResultOf(self.store.settle())


assert BOSS  # (the memory tests' account)
