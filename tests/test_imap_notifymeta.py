"""NOTIFY's METADATA events (RFC 5465 5.6, 5.7; RFC 5464 5 and 4.4.2) over StringTransport
against a MemoryStore: another session's SETMETADATA on a mailbox or the server gives the
unsolicited METADATA response of entry names to the sessions whose NOTIFY asks for it, at once
between commands, in IDLE, or after a running command's tagged reply; the filters decide
which mailboxes; the setter hears nothing; with METADATA off the events are [BADEVENT]."""

from __future__ import annotations

from mailsuite.imap.server import IMAPFactory
from tests.test_imap_metadata import MetadataTestCase, metadata_config
from tests.test_imap_server import Session


class NotifyMetadataTests(MetadataTestCase):
    def two(self) -> tuple[Session, Session]:
        a, b = self.logged_in(), self.logged_in()
        return a, b

    def test_mailbox_and_server_changes(self) -> None:
        """RFC 5464 4.4.2: entry names only, the mailbox as LIST gives it, ``""`` for the
        server; several entries in one response; a removal (NIL) is a change too."""
        a, b = self.two()
        b.cmd(b"c CREATE Work")
        self.assertEqual(a.cmd(b"n NOTIFY SET (personal (MailboxMetadataChange "
                               b"ServerMetadataChange))"), b"n OK NOTIFY completed.\r\n")
        self.assertEqual(b.cmd(b's SETMETADATA INBOX (/private/comment "hello")'),
                         b"s OK SETMETADATA completed.\r\n")
        self.assertEqual(a.take(), b"* METADATA INBOX /private/comment\r\n")
        b.cmd(b's SETMETADATA Work (/shared/comment "x" /private/vendor/a/b "y")')
        self.assertEqual(a.take(), b"* METADATA Work /shared/comment /private/vendor/a/b\r\n")
        b.cmd(b's SETMETADATA "" (/shared/comment "motd")')
        self.assertEqual(a.take(), b'* METADATA "" /shared/comment\r\n')
        b.cmd(b"s SETMETADATA INBOX (/private/comment NIL)")
        self.assertEqual(a.take(), b"* METADATA INBOX /private/comment\r\n")
        self.assertEqual(b.take(), b"")  # the setter has its tagged OK only
        self.assertIn(b"* METADATA INBOX (/private/comment NIL)",
                      a.cmd(b"g GETMETADATA INBOX /private/comment"))

    def test_filters_decide(self) -> None:
        """A mailbox outside the filters, a server change without ServerMetadataChange, a
        failed SETMETADATA: nothing; the selected mailbox follows the selected filter."""
        a, b = self.two()
        b.cmd(b"c CREATE Work")
        b.cmd(b"c CREATE Other")
        a.cmd(b"s SELECT INBOX")
        a.cmd(b"n NOTIFY SET (selected (MailboxMetadataChange)) "
              b"(mailboxes Work (MailboxMetadataChange))")
        b.cmd(b's SETMETADATA Other (/private/comment "x")')
        b.cmd(b's SETMETADATA "" (/private/comment "x")')
        b.cmd(b's SETMETADATA "" (/shared/admin "x")')  # NO [NOPERM]
        b.cmd(b's SETMETADATA Nowhere (/private/comment "x")')
        self.assertEqual(a.take(), b"")
        b.cmd(b's SETMETADATA INBOX (/private/comment "x")')
        self.assertEqual(a.take(), b"* METADATA INBOX /private/comment\r\n")
        b.cmd(b's SETMETADATA Work (/private/comment "x")')
        self.assertEqual(a.take(), b"* METADATA Work /private/comment\r\n")
        a.cmd(b"n NOTIFY SET (selected (MessageNew MessageExpunge)) "
              b"(mailboxes Work (MailboxMetadataChange))")
        b.cmd(b's SETMETADATA INBOX (/private/comment "y")')
        self.assertEqual(a.take(), b"")
        a.cmd(b"n NOTIFY SET (selected (ServerMetadataChange))")
        b.cmd(b's SETMETADATA "" (/private/comment "y")')
        self.assertEqual(a.take(), b'* METADATA "" /private/comment\r\n')

    def test_waits_for_running_command_and_comes_in_idle(self) -> None:
        """During a command the response waits for its tagged reply; in IDLE it comes at
        once."""
        a, b = self.two()
        a.cmd(b"n NOTIFY SET (personal (MailboxMetadataChange))")
        a.proto._in_flight = True  # a command of a's is running
        b.cmd(b's SETMETADATA INBOX (/private/comment "x")')
        self.assertEqual(a.take(), b"")
        a.proto._in_flight = False
        self.assertEqual(a.cmd(b"o NOOP"),
                         b"* METADATA INBOX /private/comment\r\no OK NOOP completed.\r\n")
        self.assertEqual(a.cmd(b"i IDLE"), b"+ idling\r\n")
        b.cmd(b's SETMETADATA INBOX (/private/comment "y")')
        self.assertEqual(a.take(), b"* METADATA INBOX /private/comment\r\n")
        self.assertIn(b"i OK", a.send(b"DONE\r\n"))

    def test_badevent(self) -> None:
        """AnnotationChange (RFC 5257 ANNOTATE is not offered) stays [BADEVENT]; with
        METADATA off the METADATA events are [BADEVENT] too; bad syntax is BAD."""
        a = self.logged_in()
        self.assertEqual(
            a.cmd(b"a NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange "
                  b"MailboxMetadataChange))"),
            b"a NO [BADEVENT (AnnotationChange)] Unsupported events.\r\n")
        self.assertIn(b"b BAD", a.cmd(b"b NOTIFY SET (personal (MailboxMetadataChange"))
        self.factory = IMAPFactory(metadata_config(False), self.portal, self.maillog,
                                   clock=self.clock)
        off = self.logged_in()
        self.assertEqual(
            off.cmd(b"c NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))"),
            b"c NO [BADEVENT (MailboxMetadataChange ServerMetadataChange)] "
            b"Unsupported events.\r\n")

    def test_split_anywhere(self) -> None:
        """The NOTIFY with a literal mailbox, cut at every byte, then the event."""
        line = (b"n NOTIFY SET (mailboxes {4+}\r\nWork (MailboxMetadataChange))\r\n"
                b"x NOOP\r\n")
        for cut in range(1, len(line)):
            a, b = self.two()
            b.cmd(b"c CREATE Work")
            out = a.send(line[:cut]) + a.send(line[cut:])
            self.assertTrue(out.endswith(b"n OK NOTIFY completed.\r\nx OK NOOP completed.\r\n"))
            b.cmd(b's SETMETADATA Work (/private/comment "x")')
            self.assertEqual(a.take(), b"* METADATA Work /private/comment\r\n")
            b.cmd(b"d DELETE Work")
            a.cmd(b"l LOGOUT")
            b.cmd(b"l LOGOUT")
