"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and STATUS (status.py: the item registry,
STATUS=SIZE of RFC 8438) over StringTransport against a MemoryStore; the transcripts follow the
RFCs' examples on this server's folders."""

from __future__ import annotations

import re

from mailsuite.imap import status
from mailsuite.wire import to_wire
from tests.test_imap_server import BOSS, MESSAGE, ImapTestCase


class ListExtendedTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()
        self.s.cmd(b'a LIST "" "*"')  # the special-use folders are made at the first LIST

    def lines(self, out: bytes) -> list[bytes]:
        return [line for line in out.split(b"\r\n") if line.startswith(b"* ")]

    def test_several_patterns(self) -> None:
        """RFC 5258 5 example 10 style: ``LIST "" ("INBOX" "Dr*")`` lists what either matches,
        once each, in list order."""
        out = self.s.cmd(b'b LIST "" ("INBOX" "Dr*" "Dra%")')
        self.assertEqual(self.lines(out), [b'* LIST (\\HasNoChildren) "/" INBOX',
                                           b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts'])
        self.assertIn(b"b OK List completed.", out)

    def test_subscribed_selection_lists_nonexistent(self) -> None:
        """RFC 5258 5 example 3: LIST (SUBSCRIBED) lists subscribed names, a subscribed name that
        is no mailbox with \\NonExistent, and never an unsubscribed mailbox."""
        for line in (b"b CREATE Fruit/Banana", b"c CREATE Fruit/Apple", b"d CREATE Vegetable",
                     b"e SUBSCRIBE Fruit/Banana", b"f SUBSCRIBE Fruit/Peach",
                     b"g SUBSCRIBE Vegetable"):
            self.assertIn(b" OK", self.s.cmd(line))
        out = self.s.cmd(b'h LIST (SUBSCRIBED) "" "*"')
        lines = self.lines(out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana', lines)
        self.assertIn(b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach', lines)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Vegetable', lines)
        self.assertNotIn(b"Fruit/Apple", out)
        self.assertNotIn(b'"/" Fruit\r\n', out)
        out = self.s.cmd(b'i LIST "" "Fruit/*" RETURN (SUBSCRIBED)')
        self.assertEqual(self.lines(out), [
            b'* LIST (\\HasNoChildren) "/" Fruit/Apple',
            b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana'])

    def test_recursivematch_childinfo(self) -> None:
        """RFC 5258 5 example 9: with RECURSIVEMATCH a matching parent with a subscribed
        descendant the pattern does not match is listed with CHILDINFO, also when it is no
        mailbox or not subscribed itself; with "*" the descendants are listed instead;
        without RECURSIVEMATCH the parent is not."""
        for line in (b"b CREATE Foo/Bar", b"c SUBSCRIBE Foo/Bar", b"d CREATE Baz/Qux",
                     b"e SUBSCRIBE Baz", b"f SUBSCRIBE Eps/Mu"):
            self.assertIn(b" OK", self.s.cmd(line))
        out = self.s.cmd(b'g LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)')
        lines = self.lines(out)
        self.assertIn(b'* LIST (\\HasChildren) "/" Foo ("CHILDINFO" ("SUBSCRIBED"))', lines)
        self.assertIn(b'* LIST (\\HasChildren \\Subscribed) "/" Baz', lines)
        self.assertIn(b'* LIST (\\NonExistent) "/" Eps ("CHILDINFO" ("SUBSCRIBED"))', lines)
        self.assertNotIn(b"Foo/Bar", out)
        out = self.s.cmd(b'h LIST (SUBSCRIBED) "" "%"')
        self.assertNotIn(b'"/" Foo', out)
        self.assertNotIn(b'"/" Eps', out)
        out = self.s.cmd(b'h2 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')
        self.assertNotIn(b"CHILDINFO", out)  # every subscribed descendant is listed itself
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "/" Foo/Bar', out)
        self.assertNotIn(b'"/" Foo\r\n', out)
        out = self.s.cmd(b'i LIST (REMOTE SUBSCRIBED) "" "Foo/%"')
        self.assertEqual(self.lines(out), [b'* LIST (\\HasNoChildren \\Subscribed) "/" Foo/Bar'])

    def test_special_use_selection_recursive(self) -> None:
        """RFC 6154 5.1 with RFC 5258's RECURSIVEMATCH: a parent of a special-use folder."""
        del self.store.specials["Sent"]  # the [mailbox] keys name Old/Sent instead
        self.store.specials["Old/Sent"] = "\\Sent"
        self.assertIn(b" OK", self.s.cmd(b"b RENAME Sent Old/Sent"))
        out = self.s.cmd(b'c LIST (SPECIAL-USE RECURSIVEMATCH) "" "%"')
        self.assertIn(b'* LIST (\\HasChildren) "/" Old ("CHILDINFO" ("SPECIAL-USE"))', out)
        self.assertEqual(len(re.findall(rb"\* LIST", out)), 4)  # Old, Drafts, Trash, Junk

    def test_level_that_is_no_mailbox(self) -> None:
        """RFC 5258 3 and 5819: a level that is no mailbox, holding one "%" does not reach, is
        \\NonExistent \\HasChildren (no STATUS for it); with "*" only its child is listed."""
        self.store._new_box(BOSS, "Orphan/Child")  # as a folder made by another program
        out = self.s.cmd(b'b LIST "" "O%" RETURN (STATUS (MESSAGES))')
        self.assertEqual(self.lines(out), [b'* LIST (\\NonExistent \\HasChildren) "/" Orphan'])
        out = self.s.cmd(b'c LIST "" "O*"')
        self.assertEqual(self.lines(out), [b'* LIST (\\HasNoChildren) "/" Orphan/Child'])

    def test_bad_options(self) -> None:
        """RFC 5258 3: unknown selection or return options and RECURSIVEMATCH alone are BAD,
        so is an unknown LIST-STATUS item; the session goes on."""
        for line in (b'b LIST (BOGUS) "" "*"', b'c LIST (RECURSIVEMATCH) "" "*"',
                     b'd LIST (REMOTE RECURSIVEMATCH) "" "*"', b'e LIST "" "*" RETURN (BOGUS)',
                     b'f LIST "" "*" RETURN (STATUS (BOGUS))', b'g LIST "" "*" RETURN (STATUS)',
                     b'h LIST "" "*" RETURN (STATUS ())', b'i LIST "" "*" FOO (CHILDREN)'):
            out = self.s.cmd(line)
            self.assertTrue(out.startswith(line[:2] + b"BAD"), (line, out))
        self.assertIn(b"j OK", self.s.cmd(b'j LIST "" ""'))

    def test_list_status(self) -> None:
        """RFC 5819 example: each selectable mailbox's LIST line is followed by its STATUS, a
        \\NonExistent one has none."""
        self.deliver()
        self.deliver()
        self.successResultOf(self.box().set_flags({1: frozenset({"\\Seen"})}))
        self.s.cmd(b"b SUBSCRIBE Nowhere")
        out = self.s.cmd(b'c LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
        lines = self.lines(out)
        i = lines.index(b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX')
        self.assertEqual(lines[i + 1], b"* STATUS INBOX (MESSAGES 2 UNSEEN 1)")
        j = lines.index(b'* LIST (\\NonExistent \\Subscribed) "/" Nowhere')
        self.assertFalse(lines[j + 1 :] and lines[j + 1].startswith(b"* STATUS Nowhere"))
        self.assertNotIn(b"STATUS Nowhere", out)
        self.assertEqual(len(re.findall(rb"\* STATUS", out)), len(lines) // 2)
        self.assertIn(b"c OK", out)


class StatusTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()

    def test_size(self) -> None:
        """RFC 8438: STATUS SIZE is the sum of the messages' RFC822.SIZE (with no quota)."""
        self.deliver()
        self.deliver(b"Subject: x\n\nshort\n")
        out = self.s.cmd(b"a STATUS INBOX (SIZE MESSAGES)")
        size = len(to_wire(MESSAGE)) + len(to_wire(b"Subject: x\n\nshort\n"))
        self.assertIn(b"* STATUS INBOX (SIZE %d MESSAGES 2)\r\n" % size, out)

    def test_an_item_is_one_entry_of_the_registry(self) -> None:
        """An extension's item (status.STATUS_ITEMS) is answered by STATUS and by LIST-STATUS;
        before it is added the same item is BAD."""
        self.assertIn(b"a BAD", self.s.cmd(b"a STATUS INBOX (XTEST)"))
        status.STATUS_ITEMS["XTEST"] = lambda facts: b"%d" % (len(facts.name) * 10)
        self.addCleanup(status.STATUS_ITEMS.pop, "XTEST")
        self.assertIn(b"* STATUS INBOX (XTEST 50 MESSAGES 0)",
                      self.s.cmd(b"b STATUS INBOX (XTEST MESSAGES)"))
        self.assertIn(b"* STATUS INBOX (XTEST 50)",
                      self.s.cmd(b'c LIST "" INBOX RETURN (STATUS (XTEST))'))

    def test_missing_mailbox_and_bad_items(self) -> None:
        """A missing mailbox is NO [NONEXISTENT]; no items, a nested list, or a missing list
        are BAD."""
        self.assertIn(b"a NO [NONEXISTENT]", self.s.cmd(b"a STATUS Nowhere (MESSAGES)"))
        for line in (b"b STATUS INBOX ()", b"c STATUS INBOX ((MESSAGES))", b"d STATUS INBOX"):
            self.assertIn(line[:2] + b"BAD", self.s.cmd(line))
        self.assertIn(b"e OK", self.s.cmd(b"e STATUS INBOX (MESSAGES)"))
