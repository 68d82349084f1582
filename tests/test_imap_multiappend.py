"""APPEND's extensions of issue 15 part 4: MULTIAPPEND (RFC 3502, all or none, APPENDUID with a
uid-set), literal8 messages (``~{n}``, RFC 3516 4.4), APPENDLIMIT (RFC 7889: [TOOBIG] before the
literal is read) and LITERAL- (RFC 7888, [imap] imap_literal_minus)."""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import defer

from mailsuite.configtypes import ImapConfig
from mailsuite.imap.reader import MAX_LITERAL, append_limit
from mailsuite.imap.server import IMAPFactory
from mailsuite.store import mboxfile
from tests.configs import real_config
from tests.store_conformance import MSG1, MSG2
from tests.test_imap_server import ImapTestCase, Session, make_config
from tests.test_store_mbox import MboxTestCase

#: RFC 3502 6's example (its two messages), as the client sends it after each continuation.
MSG_A = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
         b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
         b"Subject: afternoon meeting\r\n"
         b"To: mooch@owatagu.example.net\r\n"
         b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
         b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
MSG_B = (b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
         b"From: Joe Mooch <mooch@OWaTaGu.example.net>\r\n"
         b"Subject: Re: afternoon meeting\r\n"
         b"To: foobar@blurdybloop.example.com\r\n"
         b"Message-Id: <a0434793874930@OWaTaGu.example.net>\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
         b"3:30 is fine with me.\r\n")
RFC_3502 = [
    b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(MSG_A),
    MSG_A + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n' % len(MSG_B),
    MSG_B + b"\r\n",
]


def config(**imap: Any) -> Any:
    return real_config(auth={"disable_plaintext_auth": True}, imap=imap)


class MultiAppendTests(ImapTestCase):
    def saved(self) -> Any:
        return self.store._box(self.realm_account(), "saved-messages", create=False)

    def realm_account(self) -> Any:
        from tests.test_imap_server import BOSS

        return BOSS

    def ready(self) -> Session:
        s = self.session()
        s.login()
        self.assertIn(b"c OK", s.cmd(b"c CREATE saved-messages"))
        return s

    def test_rfc3502_example(self) -> None:
        """RFC 3502 6: a continuation for each literal, both messages in, APPENDUID 1:2."""
        s = self.ready()
        self.assertEqual(s.send(RFC_3502[0]), b"+ Ready for literal data\r\n")
        self.assertEqual(s.send(RFC_3502[1]), b"+ Ready for literal data\r\n")
        out = s.send(RFC_3502[2])
        self.assertRegex(out, rb"^A003 OK \[APPENDUID \d+ 1:2\] Append completed.\r\n$")
        box = self.saved()
        self.assertEqual([m.flags for m in box.messages], [{"\\Seen"}, {"\\Seen"}])
        self.assertEqual(str(box.messages[1].internal_date), "1994-02-07 22:43:04-08:00")
        self.assertEqual(box._bodies[2], MSG_B.replace(b"\r\n", b"\n"))

    def test_every_split_of_a_multiappend(self) -> None:
        """The whole command (LITERAL+, literal8, a pipelined NOOP) cut at every byte: the same
        answers each time."""
        command = (b"a APPEND saved-messages {%d+}\r\n" % len(MSG_A) + MSG_A
                   + b" (\\Flagged) ~{7+}\r\nx\0y\r\n\r\n\r\nb NOOP\r\n")
        expected = None
        for cut in range(1, len(command)):
            self.setUp()
            s = self.ready()
            out = s.send(command[:cut]) + s.send(command[cut:])
            out = out.replace(b"* 2 EXISTS\r\n", b"")
            if expected is None:
                expected = out
                self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1:2\] Append completed.\r\n"
                                      rb"b OK NOOP completed.\r\n$")
            self.assertEqual(out, expected, cut)
            self.assertEqual(self.saved()._bodies[2], b"x\0y\n\n")

    def test_many_messages_past_the_line_limit(self) -> None:
        """MULTIAPPEND's literals do not eat into imap_max_line_length (64k): two messages of
        31500 bytes leave a long flag list after them its whole limit."""
        s = self.ready()
        body = b"Subject: m\r\n\r\n" + b"y" * (31500 - 15)
        flags = b"(" + b" ".join(b"$kw%03d" % n for n in range(120)) + b")"
        command = b"a APPEND saved-messages"
        for _ in range(3):
            command += b" " + flags + b" {%d+}\r\n" % len(body) + body
        out = s.send(command + b"\r\n")
        self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1:3\] Append completed.\r\n$")
        self.assertEqual(len(self.saved().messages), 3)
        self.assertEqual(len(self.saved().messages[2].flags), 120)

    def test_every_split_of_the_rfc3502_example(self) -> None:
        """The synchronizing literals of RFC 3502's example, with a NOOP behind, in two reads
        cut at every byte: two continuations, the same answer, the same messages."""
        command = b"".join(RFC_3502) + b"b NOOP\r\n"
        for cut in range(1, len(command)):
            self.setUp()
            s = self.ready()
            out = s.send(command[:cut]) + s.send(command[cut:])
            self.assertRegex(out, rb"^\+ Ready for literal data\r\n\+ Ready for literal data\r\n"
                                  rb"A003 OK \[APPENDUID \d+ 1:2\] Append completed.\r\n"
                                  rb"b OK NOOP completed.\r\n$", cut)
            self.assertEqual(self.saved()._bodies[1], MSG_A.replace(b"\r\n", b"\n"), cut)

    def test_one_empty_message_appends_none(self) -> None:
        s = self.ready()
        out = s.send(b"a APPEND saved-messages {5+}\r\nhello {0+}\r\n\r\n")
        self.assertEqual(out, b"a NO Can't save a zero byte message.\r\n")
        self.assertEqual(self.saved().messages, [])

    def test_a_bad_message_in_the_middle_appends_none(self) -> None:
        """A syntax error after the first message: BAD, nothing appended, the session goes on."""
        s = self.ready()
        out = s.send(b"a APPEND saved-messages {5+}\r\nhello (\\Seen {5+}\r\nworld\r\n")
        self.assertTrue(out.startswith(b"a BAD"), out)
        self.assertEqual(self.saved().messages, [])
        self.assertIn(b"b OK", s.cmd(b"b NOOP"))

    def test_too_big_second_message_appends_none(self) -> None:
        """APPENDLIMIT: the second literal over the limit is NO [TOOBIG] with no continuation;
        the first is not kept."""
        s = self.ready()
        s.send(b"a APPEND saved-messages {5}\r\n")
        out = s.send(b"hello {%d}\r\n" % (10240000 + 1))
        self.assertEqual(out, b"a NO [TOOBIG] Literal too big.\r\n")
        self.assertEqual(self.saved().messages, [])
        self.assertEqual(s.proto._parts, [])
        self.assertIn(b"b OK", s.cmd(b"b NOOP"))

    def test_non_synchronizing_literal_over_the_limit_closes(self) -> None:
        """RFC 7888 4 / RFC 7889: the data follows anyway; BAD [TOOBIG] and the connection ends
        without reading it."""
        s = self.ready()
        out = s.send(b"a APPEND saved-messages {%d+}\r\n" % (10240000 + 1) + b"x" * 1000)
        self.assertEqual(out, b"a BAD [TOOBIG] Literal too big.\r\n* BYE Literal too big.\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_missing_mailbox_is_trycreate(self) -> None:
        s = self.session()
        s.login()
        out = s.send(b"a APPEND nowhere {1+}\r\nx {1+}\r\ny\r\n")
        self.assertEqual(out, b"a NO [TRYCREATE] Mailbox doesn't exist: nowhere\r\n")

    def test_literal8_needs_a_literal(self) -> None:
        s = self.ready()
        self.assertTrue(s.cmd(b'a APPEND saved-messages ~"x"').startswith(b"a BAD"))

    def test_appendlimit_follows_message_size_limit(self) -> None:
        self.assertEqual(append_limit(real_config(mail={"message_size_limit": 5000})), 5000)
        self.assertEqual(append_limit(real_config(mail={"message_size_limit": 0})), MAX_LITERAL)
        self.factory = IMAPFactory(real_config(auth={"disable_plaintext_auth": True},
                                               mail={"message_size_limit": 5000}),
                                   self.portal, self.maillog, clock=self.clock)
        s = self.ready()
        self.assertIn(b" APPENDLIMIT=5000", s.cmd(b"b CAPABILITY"))
        self.assertEqual(s.cmd(b"a APPEND saved-messages {5001}"),
                         b"a NO [TOOBIG] Literal too big.\r\n")
        self.assertEqual(s.cmd(b"a APPEND saved-messages {5000}"), b"+ Ready for literal data\r\n")

    def test_status_appendlimit(self) -> None:
        """RFC 7889 5: STATUS APPENDLIMIT and LIST-STATUS give the limit of the mailbox."""
        s = self.ready()
        self.assertEqual(s.cmd(b"a STATUS INBOX (APPENDLIMIT MESSAGES)"),
                         b"* STATUS INBOX (APPENDLIMIT 10240000 MESSAGES 0)\r\n"
                         b"a OK Status completed.\r\n")
        self.assertIn(b"* STATUS INBOX (APPENDLIMIT 10240000)\r\n",
                      s.cmd(b'b LIST "" INBOX RETURN (STATUS (APPENDLIMIT))'))


class LiteralMinusTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.factory = IMAPFactory(config(imap_literal_minus=True), self.portal, self.maillog,
                                   clock=self.clock)

    def test_advertised_instead_of_literal_plus(self) -> None:
        s = self.session()
        caps = s.cmd(b"a CAPABILITY")
        self.assertIn(b" LITERAL- ", caps)
        self.assertNotIn(b"LITERAL+", caps)
        self.assertIn(b" LITERAL+ ", Session(IMAPFactory(make_config(), self.portal, self.maillog,
                                                         clock=self.clock)).cmd(b"a CAPABILITY"))

    def test_4096_bytes_taken(self) -> None:
        s = self.session()
        s.login()
        out = s.send(b"a APPEND INBOX {4096+}\r\n" + b"x" * 4096 + b"\r\n")
        self.assertIn(b"a OK [APPENDUID", out)

    def test_over_4096_is_bad_toobig(self) -> None:
        """RFC 7888 5: a LITERAL- non-synchronizing literal over 4096 bytes is BAD [TOOBIG];
        the data follows, so the connection ends; a synchronizing one of that size is fine."""
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"a APPEND INBOX {4097}"), b"+ Ready for literal data\r\n")
        self.assertIn(b"a OK", s.send(b"x" * 4097 + b"\r\n"))
        out = s.send(b"b APPEND INBOX {4097+}\r\n" + b"x" * 100)
        self.assertEqual(out, b"b BAD [TOOBIG] Literal too big.\r\n* BYE Literal too big.\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_config_key(self) -> None:
        self.assertFalse(ImapConfig().imap_literal_minus)
        self.assertTrue(config(imap_literal_minus=True).imap.imap_literal_minus)


class MboxAtomicAppendTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_failed_write_leaves_the_mailbox_as_it_was(self):  # type: ignore[no-untyped-def]
        """A write that fails part way (disk full) is cut off: the file, the messages and the
        next UID are as before, and the next append goes on from there."""
        box = yield self.open_with(MSG1)
        with open(self.path, "rb") as f:
            before = f.read()
        real = mboxfile.write_all

        def half(fd: int, data: bytes) -> None:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        mboxfile.write_all = half  # type: ignore[assignment]
        try:
            yield self.assertFailure(
                box.append_messages([(MSG1, frozenset(), None), (MSG2, frozenset(), None)]),
                OSError)
        finally:
            mboxfile.write_all = real  # type: ignore[assignment]
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(len(box.messages), 1)
        uids = yield box.append_messages([(MSG1, frozenset(), None)])
        self.assertEqual(uids, [2])
        self.assertEqual((yield box.read(2)), MSG1)
        box.close()
