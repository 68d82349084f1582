"""OBJECTID (RFC 8474) and CREATE-SPECIAL-USE (RFC 6154 3) over StringTransport against a
MemoryStore: the RFCs' example transcripts on this server."""

from __future__ import annotations

import re

from tests.test_imap_server import ImapTestCase


def mailbox_id(out: bytes) -> bytes:
    m = re.search(rb"\[MAILBOXID \(([A-Za-z0-9_-]+)\)\]", out)
    assert m is not None, out
    return m.group(1)


class ObjectIdTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()

    def test_rfc8474_mailboxid_example(self) -> None:
        """RFC 8474 4.1 example: CREATE answers the new MAILBOXID, an existing name is NO
        [ALREADYEXISTS], STATUS MAILBOXID gives the same id after RENAME, SELECT and EXAMINE
        send it, a folder made again under a deleted one's name gets a new one."""
        foo = mailbox_id(self.s.cmd(b"3 create foo"))
        bar = mailbox_id(self.s.cmd(b"4 create bar"))
        self.assertNotEqual(foo, bar)
        self.assertIn(b"5 NO [ALREADYEXISTS]", self.s.cmd(b"5 create foo"))
        self.assertIn(b"6 OK", self.s.cmd(b"6 rename foo renamed"))
        self.assertIn(b"* STATUS renamed (MAILBOXID (%s))\r\n7 OK" % foo,
                      self.s.cmd(b"7 status renamed (mailboxid)"))
        self.assertIn(b"* STATUS bar (MAILBOXID (%s))" % bar,
                      self.s.cmd(b"8 status bar (mailboxid)"))
        for line in (b"9 SELECT renamed", b"10 EXAMINE renamed"):
            out = self.s.cmd(line)
            self.assertIn(b"* OK [MAILBOXID (%s)] Ok\r\n" % foo, out)
            self.assertIn(line.split()[0] + b" OK [READ-", out)
        self.s.cmd(b"11 UNSELECT")
        self.s.cmd(b"12 DELETE bar")
        self.assertNotEqual(mailbox_id(self.s.cmd(b"13 CREATE bar")), bar)
        inbox = self.s.cmd(b'14 LIST "" INBOX RETURN (STATUS (MAILBOXID))')
        self.assertRegex(inbox, rb"\* STATUS INBOX \(MAILBOXID \(F[0-9a-f]+\)\)")

    def test_rfc8474_emailid_threadid_example(self) -> None:
        """RFC 8474 5.1 and 5.2 examples: EMAILID differs between messages, stays the same
        after MOVE to another mailbox and after a flag change; THREADID is the thread's
        (test_imap_threadid); SEARCH EMAILID finds the message, SEARCH THREADID of an unknown
        id nothing."""
        self.deliver()
        self.deliver(b"Subject: other\n\nanother body\n")
        self.s.cmd(b"a CREATE foo")
        self.s.cmd(b"b SELECT INBOX")
        out = self.s.cmd(b"27 FETCH 1:2 (EMAILID)")
        ids = re.findall(rb"\* (\d) FETCH \(EMAILID \((M[0-9a-f]+)\)\)", out)
        self.assertEqual([n for n, _ in ids], [b"1", b"2"])
        self.assertNotEqual(ids[0][1], ids[1][1])
        self.s.cmd(b"c STORE 2 +FLAGS (\\Flagged)")
        self.assertIn(b"EMAILID (%s)" % ids[1][1], self.s.cmd(b"d FETCH 2 (EMAILID)"))
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"e SEARCH EMAILID " + ids[1][1]))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"f SEARCH THREADID T1"))
        self.assertIn(b"28 OK", self.s.cmd(b"28 MOVE 2 foo"))
        self.s.cmd(b"29 SELECT foo")
        out = self.s.cmd(b"30 FETCH 1 (EMAILID THREADID UID)")
        self.assertRegex(out, rb"\* 1 FETCH \(EMAILID \(%s\) THREADID \(T[0-9a-f]+\) UID 1\)"
                         % ids[1][1])
        self.assertIn(b"* 1 FETCH (UID 1 EMAILID (%s))" % ids[1][1],
                      self.s.cmd(b"31 UID FETCH 1 EMAILID"))
        self.assertIn(b"32 BAD", self.s.cmd(b"32 SEARCH EMAILID"))


class CreateSpecialUseTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()

    def test_rfc6154_create_examples(self) -> None:
        """RFC 6154 3 and 5.3: CREATE with USE gives the folder the attribute (LIST and
        LIST (SPECIAL-USE) show it); an attribute the server cannot give (\\Flagged,
        \\Important, two at once) is NO [USEATTR] and nothing is created."""
        out = self.s.cmd(b'C1 CREATE MyDrafts (USE (\\Drafts))')
        self.assertRegex(out, rb"C1 OK \[MAILBOXID \(F[0-9a-f]+\)\]")
        self.assertIn(b'* LIST (\\HasNoChildren \\Drafts) "/" MyDrafts',
                      self.s.cmd(b'C2 LIST (SPECIAL-USE) "" "My*"'))
        for line in (b'C3 CREATE "Some M&AOk-l" (USE (\\Flagged))',
                     b'C4 CREATE "Important Messages" (USE (\\Important))',
                     b'C5 CREATE MySpecial (USE (\\Drafts \\Sent))'):
            self.assertIn(line[:2] + b" NO [USEATTR]", self.s.cmd(line))
        out = self.s.cmd(b'C6 LIST "" "*"')
        for absent in (b"Some", b"Important", b"MySpecial"):
            self.assertNotIn(absent, out)
        self.assertIn(b"C7 OK", self.s.cmd(b"C7 CREATE Plain (USE ())"))
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Plain', self.s.cmd(b'C8 LIST "" Plain'))

    def test_bad_parameters_and_literals(self) -> None:
        """An unknown CREATE parameter or a malformed USE is BAD; the name and USE may follow
        a literal, sent in any split of reads."""
        for line in (b"D1 CREATE X (FOO (\\Drafts))", b"D2 CREATE X (USE \\Drafts)",
                     b"D3 CREATE X (USE)", b"D4 CREATE X (USE ((\\Drafts)))"):
            self.assertIn(line[:2] + b" BAD", self.s.cmd(line))
        data = b"D5 CREATE {5+}\r\nSentX (USE (\\Sent))\r\nD6 LIST (SPECIAL-USE) \"\" SentX\r\n"
        out = b"".join(self.s.send(data[i : i + 1]) for i in range(len(data)))
        self.assertIn(b"D5 OK [MAILBOXID", out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Sent) "/" SentX', out)
