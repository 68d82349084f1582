"""One IMAP session's view of a big shared mailbox: what SELECT and every later command cost.

Pins the fixes of the 100,000-message benchmark: a view shares the store's list of messages
(no copy per session), a refresh that finds nothing new is answered without a thread or a copy,
delivery into an open mailbox extends its list in place (O(new messages)), and the untagged
updates stay those RFC 3501 wants while the view is shared.
"""

from __future__ import annotations

from twisted.internet import defer

from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.recent import RecentTracker
from mailsuite.store import index as ix
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import ManualThreads, MboxTestCase


class SharedViewTests(MboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.recent = RecentTracker()  # \Recent, shared by the views as by a server's sessions

    @defer.inlineCallbacks
    def open_with(self, count: int):  # type: ignore[no-untyped-def]
        store = self.make_store()
        for _ in range(count):
            yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        return store, box

    @defer.inlineCallbacks
    def test_views_share_the_store_list(self):
        """SELECT copies nothing per message: two sessions' views are the store's own list,
        with their sequence numbers, UIDs and flags."""
        store, box = yield self.open_with(3)
        a = ImapMailboxView(box, False, self.account, store, self.recent)
        b = ImapMailboxView(box, True, self.account, store, self.recent)
        self.assertIs(a._base, box.messages)
        self.assertIs(b._base, box.messages)
        uids = [m.uid for m in box.messages]
        self.assertEqual((a.count(), a.uids()), (3, uids))
        self.assertEqual(a.resolve([(2, None)], False), [(2, uids[1]), (3, uids[2])])
        self.assertEqual(a.resolve([(uids[1], uids[1]), (1, 1)], True),
                         [(1, uids[0]), (2, uids[1])])
        self.assertEqual(a.first_unseen(), 1)
        a.close()
        b.close()

    @defer.inlineCallbacks
    def test_unchanged_refresh_needs_no_thread_and_no_copy(self):
        """Before every selected-state command the mailbox is refreshed: when the file is as
        known, a stat on the reactor answers it (no thread round trip) and the list of
        messages stays the same object (bench: 100,000 entries copied per FETCH)."""
        store, box = yield self.open_with(2)
        manual = ManualThreads()
        self.patch(store, "blocking", manual)
        messages = box.messages
        d = box.refresh()
        self.assertEqual(manual.pending, [])
        changes = self.successResultOf(d)
        self.assertFalse(changes)
        self.assertIs(box.messages, messages)
        self.external_append(MSG2)  # another program wrote: now a thread parses the tail
        d = box.refresh()
        self.assertEqual(len(manual.pending), 1)
        manual.run_all()
        self.assertEqual(len(self.successResultOf(d).added), 1)
        self.assertIs(box.messages, messages)  # appended in place, not copied
        self.assertEqual(len(box.messages), 3)
        box.close()

    @defer.inlineCallbacks
    def test_delivery_into_open_mailbox_appends_in_place(self):
        """Delivering into an open mailbox journals the new message and extends the shared
        list; the index is not written whole, and a view keeps showing what it told its
        client until its updates are taken."""
        store, box = yield self.open_with(2)
        view = ImapMailboxView(box, False, self.account, store, self.recent)
        messages = box.messages
        writes = []
        real = ix.write_index
        self.patch(ix, "write_index", lambda *a: writes.append(a[0]) or real(*a))
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield store.deliver_many(self.account, [(MSG2, "c@example.test")] * 2)
        self.assertEqual(writes, [])
        self.assertIs(box.messages, messages)
        self.assertEqual(len(messages), 5)
        self.assertEqual(view.count(), 2)  # not told yet
        self.assertEqual(view.take_updates(), [b"5 EXISTS", b"3 RECENT"])
        self.assertEqual(view.count(), 5)
        self.assertIs(view._base, box.messages)
        view.close()
        box.close()
        again = yield self.make_store().open(self.account)  # the journal has them
        self.assertEqual([m.uid for m in again.messages], [m.uid for m in messages])
        again.close()

    @defer.inlineCallbacks
    def test_updates_while_shared(self):
        """Another session's STORE and EXPUNGE and a delivery reach a view as FETCH FLAGS,
        EXISTS and (only where allowed) EXPUNGE with the right sequence numbers; then the view
        is the store's list again and agrees with it."""
        store, box = yield self.open_with(4)
        mine = ImapMailboxView(box, False, self.account, store, self.recent)
        other = ImapMailboxView(box, False, self.account, store, self.recent)
        uids = mine.uids()
        yield other.set_flags({uids[3]: frozenset({"\\Seen", "Work"}),
                               uids[1]: frozenset({"\\Deleted"})})
        yield other.expunge_deleted()
        yield store.deliver(self.account, MSG2, "b@example.test")
        after_fetch = mine.take_updates(allow_expunge=False)
        self.assertEqual(after_fetch, [
            b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Work)",
            b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Work \\*)]"
            b" Flags permitted.",
            b"5 EXISTS", b"1 RECENT", b"4 FETCH (FLAGS (\\Seen Work))",
        ])
        self.assertEqual(mine.count(), 5)
        self.assertTrue(mine.is_expunged(uids[1]))
        self.assertEqual(mine.take_updates(), [b"2 EXPUNGE"])
        self.assertIs(mine._base, box.messages)
        self.assertEqual(mine.uids(), [m.uid for m in box.messages])
        self.assertEqual(mine.flags(uids[3]), frozenset({"\\Seen", "Work"}))
        self.assertEqual(mine.keywords(), ["Work"])
        self.assertEqual(mine.first_unseen(), 1)
        updates = other.take_updates()
        self.assertTrue(updates[0].startswith(b"FLAGS ("))  # its own set_flags brought in Work
        self.assertEqual(updates[2:], [b"2 EXPUNGE", b"4 EXISTS", b"0 RECENT"])
        yield mine.set_flags({u: frozenset({"\\Seen"}) for u in mine.uids()[:3]})
        self.assertEqual(mine.first_unseen(), 4)
        mine.take_updates()
        self.assertEqual(mine.first_unseen(), 4)
        mine.close()
        other.close()

    @defer.inlineCallbacks
    def test_expunge_and_delivery_in_one_flush(self):
        """EXPUNGEs of several messages and new mail told in one go: positions count down as
        RFC 3501 wants, then EXISTS; the view takes the store's list without a copy."""
        store, box = yield self.open_with(5)
        view = ImapMailboxView(box, False, self.account, store, self.recent)
        uids = view.uids()
        yield box.expunge([uids[1], uids[3]])
        yield store.deliver(self.account, MSG2, "b@example.test")
        lines = view.take_updates()
        self.assertEqual(lines, [b"2 EXPUNGE", b"3 EXPUNGE", b"4 EXISTS", b"1 RECENT"])
        self.assertIs(view._base, box.messages)
        self.assertEqual(view.uids(), [uids[0], uids[2], uids[4], box.messages[-1].uid])
        view.close()
        box.close()


class ViewRowsTests(MboxTestCase):
    open_with = SharedViewTests.open_with

    def setUp(self) -> None:
        super().setUp()
        self.recent = RecentTracker()

    @defer.inlineCallbacks
    def test_rows_are_what_the_session_knows(self):
        """rows() (SEARCH's one pass) gives, in sequence order, the messages of this view as it
        knows them: flags told to it, a message expunged elsewhere still there until its
        EXPUNGE is sent, new mail only once told (EXISTS) -- the same as info() per UID."""
        store, box = yield self.open_with(4)
        mine = ImapMailboxView(box, False, self.account, store, self.recent)
        other = ImapMailboxView(box, False, self.account, store, self.recent)
        uids = mine.uids()
        yield mine.set_flags({uids[0]: frozenset({"\\Flagged"})})
        yield other.set_flags({uids[2]: frozenset({"\\Deleted"})})
        yield other.expunge_deleted()
        yield store.deliver(self.account, MSG2, "b@example.test")
        self.assertEqual([m.uid for m in mine.rows()], uids)
        mine.take_updates(allow_expunge=False)  # EXISTS, FETCH FLAGS; the EXPUNGE waits
        rows = mine.rows()
        self.assertEqual(len(rows), 5)
        self.assertEqual(rows, [mine.info(u) for u in mine.uids()])
        self.assertEqual(rows[0].flags, {"\\Flagged"})
        self.assertEqual(rows[2].uid, uids[2])
        self.assertTrue(mine.is_expunged(uids[2]))
        mine.close()
        other.close()


class ColumnReadTests(MboxTestCase):
    """What a view reads from the store's columns (no entry made of each) is what its rows
    say: as the store, with flags of its own not yet the store's, after mail came, with an
    expunge pending."""

    def assert_columns_agree(self, view: ImapMailboxView) -> None:
        rows = view.rows()
        self.assertEqual(list(view.plain_rows()), [(m.uid, m.flags, m.size) for m in rows])
        self.assertEqual(list(view._flag_rows()), [(m.uid, m.flags) for m in rows])
        def when(m):  # type: ignore[no-untyped-def]
            return int(m.internal_date.timestamp())

        self.assertEqual(list(view.each_basic(when)), [(m.uid, when(m), m.size) for m in rows])
        self.assertEqual(list(view.infos(view.uids())), rows)

    @defer.inlineCallbacks
    def test_every_state(self):  # type: ignore[no-untyped-def]
        box = yield self.open_with(MSG1, MSG1, MSG1, MSG1)
        store = self.store
        view = ImapMailboxView(box, False, self.account, store, RecentTracker())
        self.assertIsInstance(view._base, ix.EntryTable)
        self.assert_columns_agree(view)
        uids = view.uids()
        yield view.set_flags({uids[1]: frozenset({"\\Flagged"})})  # told here: the view's own
        self.assertTrue(view._over)
        self.assert_columns_agree(view)
        yield store.deliver(self.account, MSG2, "a@example.test")
        yield box.refresh()
        view.take_updates()
        self.assertEqual(len(view.uids()), 5)
        self.assert_columns_agree(view)
        other = ImapMailboxView(box, False, self.account, store, RecentTracker())
        yield other.expunge([uids[2]])
        self.assertTrue(view.is_expunged(uids[2]))  # its EXPUNGE not yet sent here
        self.assert_columns_agree(view)
        other.close()
        view.take_updates()
        self.assert_columns_agree(view)
        view.close()
