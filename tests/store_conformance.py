"""One set of behaviour tests that every IMailStore must pass (memory and mbox alike).

A test case mixes in ``StoreConformanceMixin`` and provides:
- ``make_store()`` -> the store under test (fresh, empty);
- ``account`` -> an Account the store can serve;
- ``external_append(data)`` -> append to the account's INBOX the way another program would
  (Postfix local, mutt), behind the store's back.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailsuite.store.interfaces import (
    IMailbox,
    IMailStore,
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    UnknownUID,
)
from mailsuite.wire import to_wire

MSG1 = b"From: a@example.test\nTo: boss@example.test\nSubject: one\n\nbody one\n"
MSG2 = b"From: b@example.test\nTo: boss@example.test\nSubject: two\n\nbody two\nFrom here\n"


class StoreConformanceMixin:
    @defer.inlineCallbacks
    def test_interfaces(self):
        """The store and its mailboxes provide the interfaces the protocols are written to."""
        store = self.make_store()
        verifyObject(IMailStore, store)
        box = yield store.open(self.account)
        verifyObject(IMailbox, box)
        box.close()

    @defer.inlineCallbacks
    def test_inbox_created_empty(self):
        """Opening INBOX the first time gives an empty mailbox with UIDs starting at 1."""
        box = yield self.make_store().open(self.account, "INBOX")
        self.assertEqual(box.messages, [])
        self.assertGreaterEqual(box.uid_next, 1)
        self.assertGreater(box.uid_validity, 0)
        box.close()

    @defer.inlineCallbacks
    def test_open_unknown(self):
        """Opening a mailbox that does not exist fails with MailboxNotFound."""
        store = self.make_store()
        with self.assertRaises(MailboxNotFound):
            yield store.open(self.account, "NoSuchFolder")

    @defer.inlineCallbacks
    def test_deliver_then_read(self):
        """A delivered message reads back byte for byte; its size is the wire size."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        self.assertEqual(len(box.messages), 1)
        info = box.messages[0]
        data = yield box.read(info.uid)
        self.assertEqual(data, MSG1)
        self.assertEqual(info.size, len(MSG1) + MSG1.count(b"\n"))
        self.assertEqual(info.size, len(to_wire(data)))
        self.assertEqual(info.flags, frozenset())
        self.assertIsNotNone(info.internal_date.tzinfo)
        box.close()

    @defer.inlineCallbacks
    def test_from_line_in_body_survives(self):
        """A body line starting with 'From ' does not split the message."""
        store = self.make_store()
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        self.assertEqual(len(box.messages), 2)
        first = yield box.read(box.messages[0].uid)
        self.assertTrue(first.startswith(MSG2[:40]))
        self.assertIn(b"From here\n", first.replace(b">From here", b"From here"))
        box.close()

    @defer.inlineCallbacks
    def test_crlf_input_stored_as_lf(self):
        """CRLF input is stored with LF line ends."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1.replace(b"\n", b"\r\n"), "")
        box = yield store.open(self.account)
        yield box.refresh()
        data = yield box.read(box.messages[0].uid)
        self.assertEqual(data, MSG1)
        box.close()

    @defer.inlineCallbacks
    def test_delivery_reaches_open_listeners(self):
        """A delivery while the mailbox is open is told to its listeners as added."""
        store = self.make_store()
        box = yield store.open(self.account)
        seen = []
        box.add_listener(seen.append)
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield box.refresh()
        added = [m.uid for c in seen for m in c.added]
        self.assertEqual(added, [box.messages[0].uid])
        box.close()

    @defer.inlineCallbacks
    def test_external_append_gets_new_uid(self):
        """Mail written by another program gets a new, higher UID; UIDVALIDITY stays."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        validity, first = box.uid_validity, box.messages[0].uid
        yield self.external_append(MSG2)
        changes = yield box.refresh()
        self.assertEqual(len(changes.added), 1)
        self.assertGreater(changes.added[0].uid, first)
        self.assertEqual(box.uid_validity, validity)
        self.assertEqual([m.uid for m in box.messages], [first, changes.added[0].uid])
        box.close()

    @defer.inlineCallbacks
    def test_flags_persist(self):
        """Flags set on a message are there when the mailbox is opened again."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        uid = box.messages[0].uid
        yield box.set_flags({uid: frozenset({"\\Seen", "\\Flagged", "Work"})})
        self.assertEqual(box.messages[0].flags, {"\\Seen", "\\Flagged", "Work"})
        box.close()
        box = yield store.open(self.account)
        yield box.refresh()
        self.assertEqual(box.messages[0].flags, {"\\Seen", "\\Flagged", "Work"})
        box.close()

    @defer.inlineCallbacks
    def test_change_flags_applies_to_current_flags(self):
        """change_flags adds/removes relative to the flags stored now, so two callers working
        from the same stale copy both take effect (RFC 3501 STORE +FLAGS/-FLAGS); it returns
        the resulting flags of every UID present, leaves unknown UIDs out, tells listeners,
        and the result persists."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "b@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        one, two = [m.uid for m in box.messages]
        yield box.set_flags({one: frozenset({"\\Seen"})})
        heard = []
        box.add_listener(heard.append)
        got = yield box.change_flags([one], add=frozenset({"\\Draft"}))
        self.assertEqual(got, {one: {"\\Seen", "\\Draft"}})
        got = yield box.change_flags([one, two + 100], remove=frozenset({"\\Seen"}))
        self.assertEqual(got, {one: {"\\Draft"}})
        got = yield box.change_flags([one, two], replace=frozenset({"Work", "\\Flagged"}))
        self.assertEqual(got, {one: {"Work", "\\Flagged"}, two: {"Work", "\\Flagged"}})
        got = yield box.change_flags([two], add=frozenset({"Work"}))  # no change: not told
        self.assertEqual(got, {two: {"Work", "\\Flagged"}})
        told = {}
        for c in heard:
            told.update(c.flags)
        self.assertEqual(told, {one: {"Work", "\\Flagged"}, two: {"Work", "\\Flagged"}})
        self.assertEqual(len(heard), 3)
        box.close()
        box = yield store.open(self.account)
        yield box.refresh()
        self.assertEqual([m.flags for m in box.messages], [{"Work", "\\Flagged"}] * 2)
        box.close()

    @defer.inlineCallbacks
    def test_expunge_keeps_others_and_uids(self):
        """Expunge removes exactly the UIDs named; the rest keep their UIDs; UIDs are not reused."""
        store = self.make_store()
        for i in range(3):
            yield store.deliver(self.account, MSG1 + b"%d\n" % i, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        uids = [m.uid for m in box.messages]
        removed = yield box.expunge([uids[1]])
        self.assertEqual(removed, [uids[1]])
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        with self.assertRaises(UnknownUID):
            yield box.read(uids[1])
        third = yield box.read(uids[2])
        self.assertTrue(third.endswith(b"2\n"))
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield box.refresh()
        self.assertGreater(box.messages[-1].uid, uids[2])
        box.close()

    @defer.inlineCallbacks
    def test_append_with_flags_and_date(self):
        """append stores flags and the given internal date and returns the new UID."""
        store = self.make_store()
        box = yield store.open(self.account)
        when = datetime(2026, 9, 14, 17, 7, 10, tzinfo=UTC)
        uid = yield box.append(MSG1, frozenset({"\\Seen"}), when)
        self.assertEqual(box.messages[-1].uid, uid)
        self.assertEqual(box.messages[-1].flags, {"\\Seen"})
        self.assertEqual(box.messages[-1].internal_date, when)
        box.close()

    @defer.inlineCallbacks
    def test_read_headers(self):
        """read_headers gives each header block through the blank line, skipping gone UIDs."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        uid = box.messages[0].uid
        headers = yield box.read_headers([uid, uid + 100])
        self.assertEqual(headers, {uid: MSG1[: MSG1.index(b"\n\n") + 2]})
        box.close()

    @defer.inlineCallbacks
    def test_listeners_hear_flags_and_expunge(self):
        """set_flags and expunge made through the mailbox are told to its listeners; a removed
        listener hears nothing more."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        uid = box.messages[0].uid
        seen = []
        box.add_listener(seen.append)
        yield box.set_flags({uid: frozenset({"\\Deleted"})})
        yield box.expunge([uid])
        self.assertEqual(
            [(c.flags, c.expunged) for c in seen], [({uid: {"\\Deleted"}}, []), ({}, [uid])]
        )
        box.remove_listener(seen.append)
        yield box.append(MSG2)
        self.assertEqual(len(seen), 2)
        box.close()

    @defer.inlineCallbacks
    def test_append_messages_all_at_once(self):
        """append_messages (MULTIAPPEND) adds every message with its own flags and date, in
        order, and tells the listeners of all of them."""
        box = yield self.make_store().open(self.account)
        heard = []
        box.add_listener(heard.append)
        one = datetime(2026, 9, 14, 17, 7, 10, tzinfo=UTC)
        two = datetime(2026, 9, 15, 8, 0, 0, tzinfo=UTC)
        before = box.highest_modseq
        uids = yield box.append_messages(
            [(MSG1, frozenset({"\\Seen"}), one), (MSG2, frozenset({"$Work"}), two)])
        # one change: one modseq for all (RFC 7162 3.1.1: it is above the previous highest)
        self.assertEqual([m.modseq for m in box.messages], [box.highest_modseq] * 2)
        self.assertGreater(box.highest_modseq, before)
        self.assertEqual([m.uid for m in box.messages], uids)
        self.assertEqual(uids[1], uids[0] + 1)
        self.assertEqual([m.flags for m in box.messages], [{"\\Seen"}, {"$Work"}])
        self.assertEqual([m.internal_date for m in box.messages], [one, two])
        self.assertEqual(sorted(m.uid for c in heard for m in c.added), uids)
        data = yield box.read(uids[1])
        self.assertEqual(data.replace(b">From here", b"From here"), MSG2)
        box.close()

    @defer.inlineCallbacks
    def test_append_advances_uid_next(self):
        """After append, uid_next is above the new UID; UIDs of later appends keep increasing."""
        box = yield self.make_store().open(self.account)
        first = yield box.append(MSG1)
        self.assertGreater(box.uid_next, first)
        second = yield box.append(MSG2)
        self.assertGreater(second, first)
        self.assertEqual([m.uid for m in box.messages], [first, second])
        box.close()

    @defer.inlineCallbacks
    def test_set_flags_ignores_unknown_uids(self):
        """set_flags with a UID that is not in the mailbox changes nothing and does not fail."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        uid = box.messages[0].uid
        yield box.set_flags({uid + 100: frozenset({"\\Seen"})})
        self.assertEqual(box.messages[0].flags, frozenset())
        box.close()

    @defer.inlineCallbacks
    def test_deliver_many_closed_inbox(self):
        """deliver_many to an INBOX nobody has open: every message lands, in order, with
        consecutive UIDs, byte for byte (CRLF stored as LF)."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver_many(
            self.account, [(MSG2.replace(b"\n", b"\r\n"), "b@example.test"), (MSG1, "")]
        )
        box = yield store.open(self.account)
        yield box.refresh()
        uids = [m.uid for m in box.messages]
        self.assertEqual(len(uids), 3)
        self.assertEqual(uids[2] - uids[1], 1)
        self.assertGreater(uids[1], uids[0])
        second = yield box.read(uids[1])
        third = yield box.read(uids[2])
        self.assertEqual(second.replace(b">From here", b"From here"), MSG2)
        self.assertEqual(third, MSG1)
        self.assertEqual([m.size for m in box.messages[1:]], [len(to_wire(second)),
                                                             len(to_wire(third))])
        box.close()

    @defer.inlineCallbacks
    def test_deliver_many_open_inbox(self):
        """deliver_many with the INBOX open: its listeners hear of the whole batch in one
        change, in order; the messages are shown at once; uid_next is past them."""
        store = self.make_store()
        box = yield store.open(self.account)
        heard = []
        box.add_listener(heard.append)
        yield store.deliver_many(self.account, [(MSG1, "a@example.test"), (MSG2, "")])
        yield box.refresh()
        uids = [m.uid for m in box.messages]
        self.assertEqual(len(uids), 2)
        self.assertEqual([[m.uid for m in c.added] for c in heard if c.added], [uids])
        self.assertGreater(box.uid_next, uids[1])
        first = yield box.read(uids[0])
        self.assertEqual(first, MSG1)
        box.close()

    @defer.inlineCallbacks
    def test_settle(self):
        """settle fires once the work queued so far (an expunge's compaction too) is done, with
        nothing opened; the mailbox reads the same afterwards."""
        store = self.make_store()
        yield store.settle()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "b@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        yield box.expunge([box.messages[0].uid])
        result = yield store.settle()
        self.assertIsNone(result)
        yield box.refresh()
        self.assertEqual(len(box.messages), 1)
        data = yield box.read(box.messages[0].uid)
        self.assertEqual(data.replace(b">From here", b"From here"), MSG2)
        box.close()

    @defer.inlineCallbacks
    def test_summaries(self):
        """keywords, unseen_count and first_unseen follow deliveries, appends, flag changes and
        expunges (SELECT's FLAGS and UNSEEN, STATUS UNSEEN)."""
        store = self.make_store()
        box = yield store.open(self.account)
        self.assertEqual((box.keywords(), box.unseen_count(), box.first_unseen()),
                         (set(), 0, None))
        one = yield box.append(MSG1, frozenset({"\\Seen", "Work"}))
        yield store.deliver_many(self.account, [(MSG2, ""), (MSG1, "")])
        yield box.refresh()
        _, two, three = [m.uid for m in box.messages]
        self.assertEqual(box.keywords(), {"Work"})
        self.assertEqual((box.unseen_count(), box.first_unseen()), (2, two))
        yield box.change_flags([two], add=frozenset({"\\Seen", "$Label1"}))
        self.assertEqual(box.keywords(), {"Work", "$Label1"})
        self.assertEqual((box.unseen_count(), box.first_unseen()), (1, three))
        yield box.change_flags([one], remove=frozenset({"\\Seen"}))
        self.assertEqual((box.unseen_count(), box.first_unseen()), (2, one))
        yield box.expunge([one, three])
        self.assertEqual((box.unseen_count(), box.first_unseen()), (0, None))
        box.close()

    @defer.inlineCallbacks
    def test_size_is_wire_size_of_what_is_read(self):
        """For messages with CRLF and bare LF line ends, NUL bytes, a lone CR and no final
        newline, delivered, appended or written by another program: size == len(to_wire(read)),
        before and after a flag change and an expunge rewrote the mailbox."""
        odd = [
            b"Subject: crlf\r\nX: \0\r\n\r\nbody\0one\r\nbare\nlast\r\n",
            b"Subject: cr\r\n\r\nends in a lone CR\r",
            b"Subject: short\n\nno final newline\0",
        ]
        store = self.make_store()
        yield store.deliver(self.account, odd[0], "a@example.test")
        yield self.external_append(odd[1])
        box = yield store.open(self.account)
        yield box.refresh()
        yield box.append(odd[2])
        yield box.append(MSG1)

        @defer.inlineCallbacks
        def check(count):
            self.assertEqual(len(box.messages), count)
            for info in box.messages:
                data = yield box.read(info.uid)
                self.assertEqual(info.size, len(to_wire(data)), data)

        yield check(4)
        yield box.set_flags({m.uid: frozenset({"\\Seen"}) for m in box.messages})
        yield box.expunge([box.messages[-1].uid])
        yield box.refresh()
        yield check(3)
        box.close()


class FolderConformanceMixin:
    """Folder behaviour of IMailStore. The test case provides ``make_store(specials=None)``
    (``specials``: {name: special-use flag}, None for the default Sent/Drafts/Trash/Junk) and
    ``account``."""

    @defer.inlineCallbacks
    def names(self, store):
        entries = yield store.list_mailboxes(self.account)
        return [e.name for e in entries]

    @defer.inlineCallbacks
    def test_first_list_makes_special_folders(self):
        """The first LIST of an account shows INBOX first, then Drafts, Junk, Sent, Trash with
        their special-use flags, all subscribed."""
        store = self.make_store()
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.special_use, e.has_children) for e in entries],
            [
                ("INBOX", None, False),
                ("Drafts", "\\Drafts", False),
                ("Junk", "\\Junk", False),
                ("Sent", "\\Sent", False),
                ("Trash", "\\Trash", False),
            ],
        )
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"Sent", "Drafts", "Trash", "Junk"})
        for name in ("Sent", "Drafts", "Trash", "Junk"):
            box = yield store.open(self.account, name)
            self.assertEqual(box.messages, [])
            box.close()

    @defer.inlineCallbacks
    def test_special_folder_names_configurable(self):
        """Special-use names come from the configuration (Outlook's names here)."""
        store = self.make_store(
            specials={"Sent Items": "\\Sent", "Deleted Items": "\\Trash", "Junk E-mail": "\\Junk"}
        )
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.special_use) for e in entries],
            [
                ("INBOX", None),
                ("Deleted Items", "\\Trash"),
                ("Junk E-mail", "\\Junk"),
                ("Sent Items", "\\Sent"),
            ],
        )

    @defer.inlineCallbacks
    def test_special_folders_made_once(self):
        """A special-use folder the user deleted is not made again by a later LIST."""
        store = self.make_store()
        yield store.list_mailboxes(self.account)
        yield store.delete(self.account, "Junk")
        names = yield self.names(store)
        self.assertNotIn("Junk", names)

    @defer.inlineCallbacks
    def test_create_open_append_every_folder(self):
        """A created folder opens empty, takes appends, and keeps them across opens."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        box = yield store.open(self.account, "Work")
        self.assertEqual(box.name, "Work")
        self.assertEqual(box.messages, [])
        uid = yield box.append(MSG1, frozenset({"\\Seen"}))
        box.close()
        box = yield store.open(self.account, "Work")
        yield box.refresh()
        self.assertEqual([(m.uid, m.flags) for m in box.messages], [(uid, {"\\Seen"})])
        data = yield box.read(uid)
        self.assertEqual(data, MSG1)
        box.close()
        inbox = yield store.open(self.account, "INBOX")
        self.assertEqual(inbox.messages, [])
        inbox.close()

    @defer.inlineCallbacks
    def test_create_makes_parents_all_selectable(self):
        """CREATE a/b/c makes a and a/b too; each is selectable and takes mail; LIST shows
        which have children."""
        store = self.make_store(specials={})
        yield store.create(self.account, "a/b/c")
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.has_children) for e in entries],
            [("INBOX", False), ("a", True), ("a/b", True), ("a/b/c", False)],
        )
        for name in ("a", "a/b", "a/b/c"):
            box = yield store.open(self.account, name)
            uid = yield box.append(MSG1 + name.encode() + b"\n")
            data = yield box.read(uid)
            self.assertTrue(data.endswith(name.encode() + b"\n"))
            box.close()

    @defer.inlineCallbacks
    def test_children_under_folder_with_mail(self):
        """A folder that already holds mail (and INBOX) can get children and keeps its mail,
        UIDs and flags, and stays selectable."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work")
        box = yield store.open(self.account, "Work")
        uid = yield box.append(MSG1, frozenset({"\\Flagged"}))
        validity = box.uid_validity
        box.close()
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield store.create(self.account, "Work/2024")
        yield store.create(self.account, "INBOX/Sub")
        box = yield store.open(self.account, "Work")
        yield box.refresh()
        self.assertEqual([(m.uid, m.flags) for m in box.messages], [(uid, {"\\Flagged"})])
        self.assertEqual(box.uid_validity, validity)
        yield box.append(MSG2)
        box.close()
        inbox = yield store.open(self.account, "inbox")
        yield inbox.refresh()
        self.assertEqual(len(inbox.messages), 1)
        inbox.close()
        sub = yield store.open(self.account, "INBOX/Sub")
        yield sub.append(MSG1)
        sub.close()
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.has_children) for e in entries],
            [("INBOX", True), ("INBOX/Sub", False), ("Work", True), ("Work/2024", False)],
        )

    @defer.inlineCallbacks
    def test_create_existing(self):
        """CREATE of an existing name (INBOX in any case too) fails with MailboxExists."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work")
        for name in ("Work", "INBOX", "inbox"):
            with self.assertRaises(MailboxExists):
                yield store.create(self.account, name)

    @defer.inlineCallbacks
    def test_invalid_names(self):
        """Names with empty levels, '.'-levels, '..', control characters, reserved levels or
        that are too long are refused by every folder operation."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Ok")
        bad = [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            ".hidden",
            "Ok/.imap",
            "a\x01b",
            "a\nb",
            "a\x7fb",
            "x" * 300,
            "/".join(["d"] * 60),
            "Ok/mBoX-MeSsAgEs",
            "Ok.lock",
        ]
        for name in bad:
            with self.assertRaises(InvalidMailboxName, msg=repr(name)):
                yield store.create(self.account, name)
            with self.assertRaises(InvalidMailboxName, msg=repr(name)):
                yield store.rename(self.account, "Ok", name)
            with self.assertRaises(InvalidMailboxName, msg=repr(name)):
                yield store.subscribe(self.account, name)
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX", "Ok"])

    @defer.inlineCallbacks
    def test_non_ascii_names(self):
        """Non-ASCII names (and '&') round-trip through create, list, open and rename."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Entwürfe")
        yield store.create(self.account, "R&D/日本")
        box = yield store.open(self.account, "R&D/日本")
        yield box.append(MSG1)
        box.close()
        yield store.rename(self.account, "Entwürfe", "Brouillons é")
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX", "Brouillons é", "R&D", "R&D/日本"])

    @defer.inlineCallbacks
    def test_delete(self):
        """DELETE removes the folder and its mail; open sessions see every message expunged;
        the name can be made again, empty."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Old")
        box = yield store.open(self.account, "Old")
        uid = yield box.append(MSG1)
        seen = []
        box.add_listener(seen.append)
        yield store.delete(self.account, "Old")
        self.assertEqual([u for c in seen for u in c.expunged], [uid])
        box.close()
        with self.assertRaises(MailboxNotFound):
            yield store.open(self.account, "Old")
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX"])
        yield store.create(self.account, "Old")
        box = yield store.open(self.account, "Old")
        yield box.refresh()
        self.assertEqual(box.messages, [])
        box.close()

    @defer.inlineCallbacks
    def test_delete_refused(self):
        """DELETE of INBOX, of a folder with children, or of a missing one fails."""
        store = self.make_store(specials={})
        yield store.create(self.account, "a/b")
        with self.assertRaises(InvalidMailboxName):
            yield store.delete(self.account, "inbox")
        with self.assertRaises(MailboxHasChildren):
            yield store.delete(self.account, "a")
        with self.assertRaises(MailboxNotFound):
            yield store.delete(self.account, "nope")
        yield store.delete(self.account, "a/b")
        yield store.delete(self.account, "a")
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX"])

    @defer.inlineCallbacks
    def test_rename_with_children(self):
        """RENAME moves a folder with its mail, flags and children (and their subscriptions);
        missing parents of the new name are made."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work/2024")
        for name in ("Work", "Work/2024"):
            box = yield store.open(self.account, name)
            yield box.append(MSG1 + name.encode() + b"\n", frozenset({"\\Seen", "Kw"}))
            box.close()
        yield store.subscribe(self.account, "Work/2024")
        yield store.rename(self.account, "Work", "Archive/Job")
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX", "Archive", "Archive/Job", "Archive/Job/2024"])
        for name in ("Job", "Job/2024"):
            box = yield store.open(self.account, "Archive/" + name)
            yield box.refresh()
            self.assertEqual([m.flags for m in box.messages], [{"\\Seen", "Kw"}])
            data = yield box.read(box.messages[0].uid)
            self.assertTrue(data.endswith(b"Work" + name[3:].encode() + b"\n"))
            box.close()
        with self.assertRaises(MailboxNotFound):
            yield store.open(self.account, "Work")
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"Archive/Job/2024"})

    @defer.inlineCallbacks
    def test_rename_refused(self):
        """RENAME from a missing name, onto an existing one, to INBOX or into its own child
        fails and changes nothing."""
        store = self.make_store(specials={})
        yield store.create(self.account, "a")
        yield store.create(self.account, "b")
        with self.assertRaises(MailboxNotFound):
            yield store.rename(self.account, "nope", "c")
        with self.assertRaises(MailboxExists):
            yield store.rename(self.account, "a", "b")
        with self.assertRaises((InvalidMailboxName, MailboxExists)):
            yield store.rename(self.account, "a", "INBOX")
        with self.assertRaises(InvalidMailboxName):
            yield store.rename(self.account, "a", "a/sub")
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX", "a", "b"])

    @defer.inlineCallbacks
    def test_rename_inbox(self):
        """RENAME INBOX moves its messages (flags, dates) into the new folder and leaves INBOX
        empty; INBOX's children stay where they are; new mail still reaches INBOX."""
        store = self.make_store(specials={})
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield store.create(self.account, "INBOX/Sub")
        inbox = yield store.open(self.account)
        yield inbox.refresh()
        yield inbox.set_flags({inbox.messages[0].uid: frozenset({"\\Seen"})})
        dates = [m.internal_date for m in inbox.messages]
        seen = []
        inbox.add_listener(seen.append)
        yield store.rename(self.account, "INBOX", "Old Inbox")
        yield inbox.refresh()
        self.assertEqual(inbox.messages, [])
        self.assertEqual(len([u for c in seen for u in c.expunged]), 2)
        inbox.close()
        box = yield store.open(self.account, "Old Inbox")
        yield box.refresh()
        self.assertEqual([m.flags for m in box.messages], [{"\\Seen"}, set()])
        self.assertEqual([m.internal_date for m in box.messages], dates)
        data = yield box.read(box.messages[1].uid)
        self.assertEqual(data.replace(b">From here", b"From here"), MSG2)
        box.close()
        names = yield self.names(store)
        self.assertEqual(names, ["INBOX", "INBOX/Sub", "Old Inbox"])
        yield store.deliver(self.account, MSG1, "a@example.test")
        inbox = yield store.open(self.account)
        yield inbox.refresh()
        self.assertEqual(len(inbox.messages), 1)
        inbox.close()

    @defer.inlineCallbacks
    def test_subscriptions(self):
        """SUBSCRIBE/UNSUBSCRIBE keep a set of names that need not exist; INBOX in any case is
        INBOX; DELETE leaves subscriptions alone (RFC 3501 6.3.6)."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work")
        yield store.subscribe(self.account, "Work")
        yield store.subscribe(self.account, "inbox")
        yield store.subscribe(self.account, "Not/There")
        yield store.subscribe(self.account, "Work")
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"INBOX", "Work", "Not/There"})
        yield store.unsubscribe(self.account, "Not/There")
        yield store.unsubscribe(self.account, "never")
        yield store.delete(self.account, "Work")
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"INBOX", "Work"})
