"""Moving from Dovecot without a resync (issue 9, items 16 and 17), against the real thing:
Debian's Dovecot is started on loopback, keeps its IMAP state in an mbox (flags, keywords, an
expunge, an APPEND), and answers POP3 UIDL; then mailsuite's store opens the same files with no
index of its own and must show the same UIDVALIDITY, UIDNEXT, UIDs and flags, and give the same
UIDLs byte for byte."""

from __future__ import annotations

import os
import re

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.pop3.mailbox import Pop3Mailbox
from mailsuite.store.mbox import MboxStore
from tests.integration.dovecot import Dovecot, skip_reason
from tests.test_store_mbox import FakeMailboxConfig

MESSAGES = b"".join(
    b"From sender%d@example.test  Tue Nov 28 06:0%d:02 2026\n"
    b"From: sender%d@example.test\nSubject: message %d\n\nbody %d\n\n" % (i, i, i, i, i)
    for i in range(1, 5)
)
_FETCH = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")


class DovecotMboxTests(unittest.TestCase):
    skip = skip_reason()

    def setUp(self) -> None:
        self.dovecot = Dovecot(self.mktemp())
        self.addCleanup(self.dovecot.stop)

    def dovecot_session(self) -> tuple[int, int, dict[int, set[str]], list[bytes]]:
        """Dovecot changes the mailbox; (UIDVALIDITY, UIDNEXT, {uid: flags}, UIDL lines)."""
        d = self.dovecot
        d.write_inbox(MESSAGES)
        d.start()
        client = d.imap()
        client.select("INBOX")
        client.uid("STORE", "1", "+FLAGS", r"(\Seen $Work Project)")
        client.uid("STORE", "2", "+FLAGS", r"(\Deleted)")
        client.expunge()
        client.uid("STORE", "3", "+FLAGS", r"(\Answered \Flagged)")
        client.append("INBOX", r"(\Seen Later)", None, b"Subject: appended\r\n\r\nhi\r\n")
        status = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")[1][0]
        fetched = client.uid("FETCH", "1:*", "(FLAGS)")[1]
        client.logout()
        uidls = d.pop3_uidls()
        d.stop()
        validity = int(re.search(rb"UIDVALIDITY (\d+)", status)[1])  # type: ignore[index]
        uid_next = int(re.search(rb"UIDNEXT (\d+)", status)[1])  # type: ignore[index]
        flags = {}
        for line in fetched:
            m = _FETCH.search(line)
            assert m is not None, line
            flags[int(m[1])] = set(m[2].decode().split()) - {"\\Recent"}
        return validity, uid_next, flags, uidls

    @defer.inlineCallbacks
    def test_state_and_uidls_carried_over(self):
        validity, uid_next, flags, uidls = self.dovecot_session()
        self.assertEqual(sorted(flags), [1, 3, 4, 5])  # Dovecot did what the test meant
        self.assertTrue(all(re.fullmatch(rb"\d+ [0-9a-f]{16}", u) for u in uidls), uidls)
        d = self.dovecot
        account = Account("boss", d.uid, d.gid, os.path.dirname(d.mail))
        store = MboxStore(FakeMailboxConfig(d.spool), threads.inline)
        box = yield store.open(account)
        try:
            self.assertEqual((box.uid_validity, box.uid_next), (validity, uid_next))
            self.assertEqual({m.uid: set(m.flags) for m in box.messages}, flags)
            pop = Pop3Mailbox(box, account, box.messages)
            mine = [b"%d %s" % (n + 1, pop.uidl(n).encode()) for n in range(len(box.messages))]
            self.assertEqual(mine, uidls)
        finally:
            box.close()
            yield store.settle()
