"""One set of behaviour tests that every IMailStore must pass (memory and mbox alike).

A test case mixes in ``StoreConformanceMixin`` and provides:
- ``make_store()`` -> the store under test (fresh, empty);
- ``account`` -> an Account the store can serve;
- ``external_append(data)`` -> append to the account's INBOX the way another program would
  (Postfix local, mutt), behind the store's back.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet import defer
from zope.interface.verify import verifyObject

from mailsuite.store.interfaces import IMailbox, IMailStore, MailboxNotFound, UnknownUID
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
        when = datetime(2026, 9, 14, 17, 7, 10, tzinfo=timezone.utc)
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
