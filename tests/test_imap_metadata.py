"""METADATA (RFC 5464): the RFC's GETMETADATA / SETMETADATA examples as transcripts, the limits'
response codes, bad input, the [imap] imap_metadata switch, every cut of a SETMETADATA with a
literal into reads, and the mbox store's entries: durable, gone with DELETE, moved with RENAME."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.imap.metadata import entry_name, select
from mailsuite.imap.parser import ParseError
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store import metadata as store_metadata
from mailsuite.store.metadata import MAX_ENTRIES, MAX_VALUE, MboxMetadata
from tests.configs import real_config
from tests.test_imap_server import ImapTestCase, Session, make_portal
from tests.test_store_mbox import MboxTestCase


def metadata_config(on: bool = True) -> Any:
    return real_config(auth={"disable_plaintext_auth": False}, imap={"imap_metadata": on})


class MetadataTestCase(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.factory = IMAPFactory(metadata_config(), self.portal, self.maillog, clock=self.clock)

    def logged_in(self) -> Session:
        s = self.session()
        s.login()
        return s


class RfcExampleTests(MetadataTestCase):
    def test_set_with_literal_then_nil(self) -> None:
        """RFC 5464 4.3's examples: a value sent as a literal across two lines (continuation,
        then the closing parenthesis: the RFC's {33} counts the value up to "lines."), read
        back; NIL removes it."""
        s = self.logged_in()
        self.assertEqual(s.cmd(b"a SETMETADATA INBOX (/private/comment {33}"),
                         b"+ Ready for literal data\r\n")
        self.assertEqual(s.send(b"My new comment across\r\ntwo lines.)\r\n"),
                         b"a OK SETMETADATA completed.\r\n")
        self.assertEqual(
            s.cmd(b"b GETMETADATA INBOX /private/comment"),
            b"* METADATA INBOX (/private/comment {33}\r\nMy new comment across\r\ntwo lines.)\r\n"
            b"b OK GETMETADATA completed.\r\n")
        self.assertEqual(s.cmd(b"c SETMETADATA INBOX (/private/comment NIL)"),
                         b"c OK SETMETADATA completed.\r\n")
        self.assertEqual(s.cmd(b"d GETMETADATA INBOX /private/comment"),
                         b"* METADATA INBOX (/private/comment NIL)\r\n"
                         b"d OK GETMETADATA completed.\r\n")

    def test_value_as_literal8(self) -> None:
        """RFC 5464 ``value = nstring / literal8``: ``~{n+}`` (here with a NUL) is one value;
        a ``~`` with no literal after it is BAD and the session goes on."""
        s = self.logged_in()
        self.assertEqual(s.cmd(b"a SETMETADATA INBOX (/private/comment ~{3+}\r\na\x00b)"),
                         b"a OK SETMETADATA completed.\r\n")
        self.assertIn(b"(/private/comment ~{3}\r\na\x00b)",
                      s.cmd(b"b GETMETADATA INBOX /private/comment"))
        self.assertTrue(s.cmd(b"c SETMETADATA INBOX (/private/comment ~)").startswith(b"c BAD"))
        self.assertIn(b"d OK", s.cmd(b"d NOOP"))

    def test_server_comment(self) -> None:
        """RFC 5464 4.2's and 4.3's server examples: ``""`` names the server."""
        s = self.logged_in()
        self.assertEqual(s.cmd(b'a SETMETADATA "" (/shared/comment "Shared comment")'),
                         b"a OK SETMETADATA completed.\r\n")
        self.assertEqual(s.cmd(b'b GETMETADATA "" /shared/comment'),
                         b'* METADATA "" (/shared/comment "Shared comment")\r\n'
                         b"b OK GETMETADATA completed.\r\n")
        # the server's entries are not INBOX's
        self.assertIn(b"(/shared/comment NIL)", s.cmd(b"c GETMETADATA INBOX /shared/comment"))

    def test_maxsize_longentries(self) -> None:
        """RFC 5464 4.2.1: MAXSIZE leaves longer values out and the OK says the longest."""
        s = self.logged_in()
        s.cmd(b'a SETMETADATA INBOX (/private/comment "My own comment" /shared/comment {2199+}')
        s.send(b"x" * 2199 + b")\r\n")
        self.assertEqual(
            s.cmd(b'b GETMETADATA (MAXSIZE 1024) "INBOX" (/shared/comment /private/comment)'),
            b'* METADATA INBOX (/private/comment "My own comment")\r\n'
            b"b OK [METADATA LONGENTRIES 2199] GETMETADATA completed.\r\n")

    def test_depth(self) -> None:
        """RFC 5464 4.2.2: DEPTH 1 lists the children that have values (not the entry asked
        for, which has none), DEPTH infinity every descendant."""
        s = self.logged_in()
        self.assertIn(b"a OK", s.cmd(
            b'a SETMETADATA INBOX (/private/filters/values/small "SMALLER THAN 4 KB"'
            b' /private/filters/values/big "BIGGER THAN 16 KB"'
            b' /private/filters/values/big/deeper "deep")'))
        self.assertEqual(
            s.cmd(b'b GETMETADATA (DEPTH 1) "INBOX" (/private/filters/values)'),
            b'* METADATA INBOX (/private/filters/values/big "BIGGER THAN 16 KB"'
            b' /private/filters/values/small "SMALLER THAN 4 KB")\r\n'
            b"b OK GETMETADATA completed.\r\n")
        out = s.cmd(b"c GETMETADATA (DEPTH infinity) INBOX /private")
        self.assertIn(b'/private/filters/values/big/deeper "deep"', out)
        self.assertIn(b"/private/filters/values/small", out)

    def test_limits(self) -> None:
        """A value past MAX_VALUE is ``NO [METADATA MAXSIZE n]``; more than MAX_ENTRIES entries
        ``NO [METADATA TOOMANY]``; nothing of a refused command is stored."""
        s = self.logged_in()
        big = b"y" * (MAX_VALUE + 1)
        out = s.send(b"a SETMETADATA INBOX (/private/a \"1\" /private/big {%d+}\r\n" % len(big)
                     + big + b")\r\n")
        self.assertEqual(out, b"a NO [METADATA MAXSIZE %d] Value too long.\r\n" % MAX_VALUE)
        self.assertIn(b"(/private/a NIL)", s.cmd(b"b GETMETADATA INBOX /private/a"))
        many = b" ".join(b'/private/e%d "v"' % i for i in range(MAX_ENTRIES + 1))
        self.assertEqual(s.cmd(b"c SETMETADATA INBOX (" + many + b")"),
                         b"c NO [METADATA TOOMANY] Too many entries.\r\n")
        self.assertIn(b"(/private/e0 NIL)", s.cmd(b"d GETMETADATA INBOX /private/e0"))

    def test_bad_input(self) -> None:
        """Bad entry names, options and values are BAD; a missing mailbox NO [NONEXISTENT]; the
        server's /shared/admin is read-only; the session goes on."""
        s = self.logged_in()
        for line in (b"a GETMETADATA INBOX /other/x", b"a GETMETADATA INBOX /private/*",
                     b"a GETMETADATA INBOX /private//x", b"a GETMETADATA INBOX /private/x/",
                     b"a GETMETADATA (DEPTH 2) INBOX /private/x",
                     b"a GETMETADATA (MAXSIZE) INBOX /private/x", b"a GETMETADATA INBOX ()",
                     b'a SETMETADATA INBOX (/private "x")', b"a SETMETADATA INBOX (/private/x)",
                     b"a SETMETADATA INBOX (/private/x (1))", b"a SETMETADATA INBOX ()",
                     b"a GETMETADATA INBOX"):
            self.assertTrue(s.cmd(line).startswith(b"a BAD"), line)
        self.assertTrue(s.cmd(b"b GETMETADATA Nope /private/x").startswith(b"b NO [NONEXISTENT]"))
        self.assertTrue(s.cmd(b'c SETMETADATA Nope (/private/x "1")').startswith(
            b"c NO [NONEXISTENT]"))
        self.assertTrue(s.cmd(b'd SETMETADATA "" (/shared/admin "mailto:x@y")').startswith(
            b"d NO [NOPERM]"))
        self.assertEqual(s.cmd(b"e NOOP"), b"e OK NOOP completed.\r\n")

    def test_case_insensitive_names(self) -> None:
        s = self.logged_in()
        s.cmd(b'a SETMETADATA INBOX (/Private/Comment "c")')
        self.assertIn(b'(/private/comment "c")', s.cmd(b"b GETMETADATA INBOX /PRIVATE/COMMENT"))

    def test_delete_and_rename(self) -> None:
        """A mailbox's entries go with DELETE (a new mailbox of that name has none) and move
        with RENAME, children's too."""
        s = self.logged_in()
        s.cmd(b"a CREATE Work/Sub")
        s.cmd(b'b SETMETADATA Work/Sub (/private/comment "sub")')
        s.cmd(b"c RENAME Work Play")
        self.assertIn(b'(/private/comment "sub")',
                      s.cmd(b"d GETMETADATA Play/Sub /private/comment"))
        s.cmd(b"e DELETE Play/Sub")
        s.cmd(b"f CREATE Play/Sub")
        self.assertIn(b"(/private/comment NIL)", s.cmd(b"g GETMETADATA Play/Sub /private/comment"))

    def test_every_cut(self) -> None:
        """A pipelined SETMETADATA with a LITERAL+ value and a GETMETADATA, cut at every byte
        into two reads: the same answers."""
        data = (b'a SETMETADATA INBOX (/shared/x {5+}\r\nab\r\nc /private/y "q")\r\n'
                b"b GETMETADATA INBOX (/shared/x /private/y)\r\n")
        expected = (b'* METADATA INBOX (/shared/x {5}\r\nab\r\nc /private/y "q")\r\n')
        for i in range(1, len(data)):
            self.store.metadata.clear()
            s = self.logged_in()
            out = s.send(data[:i]) + s.send(data[i:])
            self.assertEqual(out, b"a OK SETMETADATA completed.\r\n" + expected
                             + b"b OK GETMETADATA completed.\r\n", i)
            s.cmd(b"z LOGOUT")  # (mail_max_userip_connections)


class SwitchTests(ImapTestCase):
    def test_off_by_default(self) -> None:
        """Dovecot's default, imap_metadata = no: not advertised, the commands unknown."""
        self.assertFalse(self.factory.config.imap.imap_metadata)
        s = self.session()
        s.login()
        self.assertNotIn(b"METADATA", s.cmd(b"a CAPABILITY"))
        self.assertTrue(s.cmd(b"b GETMETADATA INBOX /private/x").startswith(b"b BAD"))

    def test_on_after_login(self) -> None:
        portal, _ = make_portal(self.store)
        factory = IMAPFactory(metadata_config(), portal, MailLog(None, "m"), clock=Clock())
        s = Session(factory)
        self.assertNotIn(b"METADATA", s.cmd(b"a CAPABILITY"))
        self.assertIn(b" METADATA", s.cmd(b"b LOGIN boss secret"))


class PieceTests(unittest.TestCase):
    def test_entry_names(self) -> None:
        self.assertEqual(entry_name(b"/Shared/Vendor/x.y", True), "/shared/vendor/x.y")
        self.assertEqual(entry_name(b"/private", False), "/private")
        for bad in (b"/private", b"/shared/", b"private/x", b"/private/a%b", b"/private/\xc3\xa9"):
            with self.assertRaises(ParseError):
                entry_name(bad, True)

    def test_select(self) -> None:
        entries = {"/private/a": b"1", "/private/a/b": b"22", "/private/a/b/c": b"333"}
        self.assertEqual(select(entries, ["/private/a"], 0, None), ([("/private/a", b"1")], 0))
        self.assertEqual(select(entries, ["/private/a"], 1, 1), ([("/private/a", b"1")], 2))
        self.assertEqual(len(select(entries, ["/private/a", "/private/a/b"], -1, None)[0]), 3)


class MboxMetadataTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_durable_deleted_and_moved(self):  # type: ignore[no-untyped-def]
        """Entries are in a file beside the index (written whole: no temp file left), read by
        a new store; DELETE removes them, RENAME moves them with the index; the server's
        entries are apart from INBOX's."""
        store = self.make_store()
        meta = MboxMetadata(store)
        yield store.create(self.account, "Work")
        yield meta.set(self.account, "Work", {"/private/comment": b"w\r\n\0"})
        yield meta.set(self.account, None, {"/shared/comment": b"server"})
        path = os.path.join(self.account.home, "mail", ".imap", "Work", store_metadata.FILE)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(os.listdir(os.path.dirname(path)), [store_metadata.FILE])
        again = MboxMetadata(self.make_store())
        self.assertEqual((yield again.get(self.account, "Work")), {"/private/comment": b"w\r\n\0"})
        self.assertEqual((yield again.get(self.account, None)), {"/shared/comment": b"server"})
        self.assertEqual((yield again.get(self.account, "INBOX")), {})
        yield self.store.rename(self.account, "Work", "Play")
        self.assertEqual((yield again.get(self.account, "Play")), {"/private/comment": b"w\r\n\0"})
        yield self.store.delete(self.account, "Play")
        yield self.store.create(self.account, "Play")
        self.assertEqual((yield again.get(self.account, "Play")), {})

    def test_bad_file(self) -> None:
        with self.assertRaises(store_metadata.StoreError):
            store_metadata.decode(b"{not json")
        self.assertEqual(store_metadata.decode(store_metadata.encode({"/a": b"\xff"})),
                         {"/a": b"\xff"})
