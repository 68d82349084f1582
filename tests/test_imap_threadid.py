"""OBJECTID's THREADID (RFC 8474 5.2) over StringTransport against a MemoryStore: one id for
every message of a thread (REFERENCES' links), another for each other thread, SEARCH THREADID
finding the thread, the same ids in a new session, FETCH with THREADID beside the listing
items answered message by message, big mailboxes threaded off the reactor."""

from __future__ import annotations

import hashlib
import re

from mailsuite.imap import sortkeys, threadid
from mailsuite.imap.sortkeys import SortRecord
from tests.test_imap_server import ImapTestCase


def msg(mid: str | None, subject: str, refs: str = "", reply_to: str = "") -> bytes:
    head = b"From: ann@example.org\nSubject: %s\n" % subject.encode()
    if mid is not None:
        head += b"Message-ID: <%s>\n" % mid.encode()
    if refs:
        head += b"References: %s\n" % refs.encode()
    if reply_to:
        head += b"In-Reply-To: %s\n" % reply_to.encode()
    return head + b"\n" + subject.encode() + b" body\n"


def ids(out: bytes) -> dict[int, bytes]:
    found = dict(re.findall(rb"\* (\d+) FETCH \(THREADID \(([A-Za-z0-9_-]+)\)\)", out))
    return {int(k): v for k, v in found.items()}


def t_of(message_id: str) -> bytes:
    return b"T" + hashlib.sha256(message_id.encode()).hexdigest()[:24].encode()


class ThreadIdTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(msg("a@x", "root"))                             # 1
        self.deliver(msg("b@x", "Re: root", "<a@x>"))                 # 2
        self.deliver(msg("c@x", "other"))                            # 3
        self.deliver(msg("d@x", "Re: root", "<a@x> <b@x>"))           # 4
        self.deliver(msg("e@x", "Re: lost", "", "<gone@x>"))         # 5: root not here
        self.deliver(msg(None, "no id"))                             # 6
        self.deliver(msg("f@x", "Re: lost", "<gone@x>"))             # 7
        self.s = self.session()
        self.s.login()
        self.s.cmd(b"S SELECT INBOX")

    def test_rfc8474_threadid_example(self) -> None:
        """RFC 8474 5.2: messages of one thread share a THREADID, others differ; the id of a
        thread is made of its root's Message-ID (present or only referred to), of the root's
        EMAILID when it has none; SEARCH THREADID finds the thread, an unknown id nothing."""
        found = ids(self.s.cmd(b"1 FETCH 1:* (THREADID)"))
        self.assertEqual(sorted(found), [1, 2, 3, 4, 5, 6, 7])
        self.assertEqual(found[1], t_of("a@x"))
        self.assertEqual(found[1], found[2])
        self.assertEqual(found[1], found[4])
        self.assertEqual(found[5], t_of("gone@x"))
        self.assertEqual(found[5], found[7])
        self.assertEqual(found[3], t_of("c@x"))
        emailid = re.search(rb"EMAILID \((M[0-9a-f]+)\)", self.s.cmd(b"2 FETCH 6 (EMAILID)"))
        assert emailid is not None
        self.assertEqual(found[6], b"T" + emailid.group(1)[1:])
        self.assertEqual(len({found[1], found[3], found[5], found[6]}), 4)
        self.assertIn(b"* SEARCH 1 2 4\r\n3 OK", self.s.cmd(b"3 SEARCH THREADID " + found[1]))
        self.assertIn(b"* SEARCH 5 7\r\n", self.s.cmd(b"4 UID SEARCH THREADID " + found[5]))
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(
            b"5 SEARCH THREADID " + found[1] + b" SUBJECT re NOT UID 4"))
        self.assertIn(b"* SEARCH\r\n6 OK", self.s.cmd(b"6 SEARCH THREADID T1"))
        self.assertIn(b"7 BAD", self.s.cmd(b"7 SEARCH THREADID"))
        self.assertIn(b"* 2 FETCH (UID 2 THREADID (%s) EMAILID (M" % found[1],
                      self.s.cmd(b"8 FETCH 2 (UID THREADID EMAILID)"))
        self.assertIn(b"9 BAD", self.s.cmd(b"9 FETCH 1 (THREADIDX)"))

    def test_new_message_joins_and_new_session_agrees(self) -> None:
        """A reply arriving joins its thread's id (the session's map made again); a second
        session, and one after the root is expunged, give the same ids."""
        before = ids(self.s.cmd(b"1 FETCH 1:* (THREADID)"))
        self.deliver(msg("g@x", "Re: other", "<c@x>"))
        out = self.s.cmd(b"2 NOOP") + self.s.cmd(b"3 FETCH 8 (THREADID)")
        self.assertIn(b"* 8 FETCH (THREADID (%s))" % before[3], out)
        other = self.session()
        other.login()
        other.cmd(b"S SELECT INBOX")
        again = ids(other.cmd(b"4 FETCH 1:* (THREADID)"))
        self.assertEqual(again, {**before, 8: before[3]})
        other.cmd(b"5 STORE 1 +FLAGS (\\Deleted)")
        other.cmd(b"6 EXPUNGE")
        self.assertEqual(ids(other.cmd(b"7 FETCH 1:3 (THREADID)")),
                         {1: before[1], 2: before[3], 3: before[1]})

    def test_listing_fetch_falls_back(self) -> None:
        """THREADID beside the items of the listing fast path: answered, in order, the same
        as alone."""
        alone = ids(self.s.cmd(b"1 FETCH 1:* (THREADID)"))
        out = self.s.cmd(b"2 FETCH 1:2 (UID FLAGS THREADID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS () THREADID (%s) BODY[HEADER.FIELDS (SUBJECT)]"
                      % alone[1], out)
        self.assertIn(b"* 2 FETCH (UID 2 FLAGS () THREADID (%s) " % alone[2], out)

    def test_sort_and_thread_take_the_key(self) -> None:
        """SORT and THREAD search with THREADID too."""
        tid = ids(self.s.cmd(b"1 FETCH 1 (THREADID)"))[1]
        self.assertIn(b"* SORT 1 2 4\r\n", self.s.cmd(
            b"2 SORT (ARRIVAL) UTF-8 THREADID " + tid))
        self.assertIn(b"* THREAD (1 2 4)\r\n", self.s.cmd(
            b"3 THREAD REFERENCES UTF-8 THREADID " + tid))


class BigMailboxTests(ImapTestCase):
    def test_off_reactor_and_long_chain(self) -> None:
        """The map is made through sortkeys.off_reactor with the message count (a thread over
        OFF_REACTOR messages), once for a FETCH of every message; a References chain as long
        as the mailbox does not recurse."""
        calls: list[int] = []
        real = sortkeys.off_reactor

        async def spy(count, f, *args):  # type: ignore[no-untyped-def]
            calls.append(count)
            return await real(count, f, *args)

        self.patch(threadid, "off_reactor", spy)
        self.deliver(msg("m0@x", "chain"))
        for n in range(1, 5):
            self.deliver(msg(f"m{n}@x", "Re: chain", f"<m{n - 1}@x>"))
        s = self.session()
        s.login()
        s.cmd(b"S SELECT INBOX")
        found = ids(s.cmd(b"1 FETCH 1:* (THREADID)"))
        self.assertEqual(set(found.values()), {t_of("m0@x")})
        self.assertEqual(calls, [5])
        n = 5000
        chain = [(i + 1, SortRecord(i + 1, 0, 1, i, "s", True, "", "", "", "", "", f"c{i}@x",
                                     [f"c{j}@x" for j in range(max(0, i - 3), i)]))
                 for i in range(n)]
        roots = threadid.thread_roots(chain)
        self.assertEqual(set(roots.values()), {"c0@x"})
        self.assertEqual(len(roots), n)
