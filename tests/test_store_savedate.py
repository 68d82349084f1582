"""Save dates (RFC 8514) in the stores: set by delivery, APPEND, MULTIAPPEND, COPY and MOVE (an
append to the target) and RENAME of INBOX, kept through flag changes, expunge compaction,
rewrites by other programs and restarts; unknown (0) for what another program wrote and for
an index of version 3 (before save dates)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store.memory import MemoryStore
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase

T0 = 1_800_000_000


class SaveDateMixin:
    """Against both stores: ``make_store()``, ``self.account``, ``self.clock`` (a list)."""

    @defer.inlineCallbacks
    def test_delivery_append_and_copy_get_the_time_of_the_write(self):
        """A delivered message is saved when delivered; APPEND with an old internal date is
        saved now, not at that date; MULTIAPPEND likewise; a copy appended to another mailbox
        (COPY, MOVE) later gets the time of the copy, the original keeps its own."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        self.assertEqual(box.messages[0].saved, T0)
        self.clock[0] = T0 + 100
        old = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
        uid = yield box.append(MSG2, frozenset(), old)
        info = next(m for m in box.messages if m.uid == uid)
        self.assertEqual((info.saved, int(info.internal_date.timestamp())),
                         (T0 + 100, int(old.timestamp())))
        self.clock[0] = T0 + 200
        uids = yield box.append_messages([(MSG1, frozenset(), old), (MSG2, frozenset(), None)])
        self.assertEqual([m.saved for m in box.messages if m.uid in uids], [T0 + 200] * 2)
        yield store.create(self.account, "Other")
        other = yield store.open(self.account, "Other")
        self.clock[0] = T0 + 300
        data = yield box.read(box.messages[0].uid)
        yield other.append(data, frozenset(), box.messages[0].internal_date)  # as COPY does
        yield other.refresh()
        self.assertEqual(other.messages[0].saved, T0 + 300)
        self.assertEqual(box.messages[0].saved, T0)
        other.close()
        box.close()

    @defer.inlineCallbacks
    def test_flags_and_expunge_keep_it(self):
        """A flag change and the expunge of another message leave a message's save date."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        self.clock[0] = T0 + 50
        yield store.deliver(self.account, MSG2, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        first, second = (m.uid for m in box.messages)
        self.clock[0] = T0 + 500
        yield box.set_flags({second: frozenset({"\\Seen", "Work"})})
        yield box.expunge([first])
        yield store.settle()
        yield box.refresh()
        self.assertEqual([(m.uid, m.saved) for m in box.messages], [(second, T0 + 50)])
        box.close()

    @defer.inlineCallbacks
    def test_rename_inbox_saves_its_messages_anew(self):
        """RENAME INBOX puts INBOX's messages into a new mailbox: saved there at the rename."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        self.clock[0] = T0 + 1000
        yield store.rename(self.account, "INBOX", "Old")
        box = yield store.open(self.account, "Old")
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [T0 + 1000])
        box.close()


class MemorySaveDateTests(SaveDateMixin, unittest.TestCase):
    account = Account("boss", 1000, 1000, "/home/boss")

    def setUp(self) -> None:
        self.clock = [float(T0)]

    def make_store(self):
        self.store = MemoryStore(now=lambda: datetime.fromtimestamp(self.clock[0], UTC))
        return self.store


class MboxSaveDateTests(SaveDateMixin, MboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock[0] = float(T0)

    @defer.inlineCallbacks
    def test_survives_restart_and_journal(self):
        """The save dates are in the index (version 4, after the modseq) and its journal: a
        new store (a restart) reads them back, for messages delivered while the mailbox was
        open (journal records) and after the index is written whole."""
        box = yield self.open_with(MSG1)
        self.clock[0] = T0 + 7
        uid = yield box.append(MSG2)
        box.close()
        with open(self.index_path, "rb") as f:
            self.assertTrue(f.read().startswith(b"mailsuite-mbox-index 4\n"))
        with open(self.index_path + ".log", "rb") as f:
            self.assertIn(b" %d %d \n" % (box.messages[-1].modseq, T0 + 7), f.read())
        box = yield self.make_store().open(self.account)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [T0, T0 + 7])
        self.assertEqual(box.messages[-1].uid, uid)
        ix.write_index(self.index_path, box._state, None)  # the whole index, no journal
        box.close()
        box = yield self.make_store().open(self.account)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [T0, T0 + 7])
        box.close()

    @defer.inlineCallbacks
    def test_delivery_to_a_closed_mailbox(self):
        """Mail delivered while no session has INBOX open (no index loaded, nothing more
        written than the message) gets its delivery time, the date of its From line, once the
        mailbox is opened, also after a restart."""
        box = yield self.open_with(MSG1)
        box.close()
        self.clock[0] = T0 + 60
        store = self.make_store()
        yield store.deliver(self.account, MSG2, "b@example.test")
        box = yield self.make_store().open(self.account)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [T0, T0 + 60])
        box.close()
        box = yield self.make_store().open(self.account)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [T0, T0 + 60])
        box.close()

    @defer.inlineCallbacks
    def test_delivery_before_the_first_open(self):
        """Mail delivered before the mailbox ever had an index (a new account) keeps its
        delivery time (its From line's), and the delivery wrote no index or journal."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        self.assertFalse(os.path.exists(self.index_path))
        self.assertFalse(os.path.exists(self.index_path + ".log"))
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.saved for m in box.messages], [T0])
        box.close()

    @defer.inlineCallbacks
    def test_other_programs_messages_have_their_from_line_date(self):
        """What another program appends, and the messages of an mbox indexed for the first
        time, are saved at the date of their From line (RFC 4155: when it was written there); a
        rewrite by another program (mutt changing a Status header) keeps the save dates
        known."""
        self.external_append(MSG1)
        box = yield self.open_with()
        yield box.refresh()
        first = box.messages[0].saved
        self.assertEqual(first, int(box.messages[0].internal_date.timestamp()))
        self.assertNotEqual(first, 0)
        self.external_append(MSG2)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages],
                         [first, int(box.messages[1].internal_date.timestamp())])
        uid = yield box.append(MSG1)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages][-1], T0)
        data = self.read_file()
        self.write(data.replace(b"Subject: one", b"Subject: one\nStatus: RO", 1), "wb")
        yield box.refresh()
        self.assertEqual([(m.uid, m.saved) for m in box.messages][-1], (uid, T0))
        box.close()

    @defer.inlineCallbacks
    def test_version_3_index_reads_as_unknown(self):
        """An index written before save dates (version 3: no field after the modseq) is read
        with every save date unknown, its journal's records too, and written as version 4."""
        box = yield self.open_with(MSG1, MSG2)
        box.close()
        state = box._state
        v3 = [ix.MAGIC.replace(b" 4", b" 3")]
        v3.append(ix.dump(state).split(b"\n")[1])
        for e in state.entries:
            words = ix.entry_line(e).split(b" ")
            v3.append(b" ".join(words[:10] + words[11:]))
        with open(self.index_path, "wb") as f:
            f.write(b"\n".join(v3) + b"\n")
        if os.path.exists(self.index_path + ".log"):
            os.unlink(self.index_path + ".log")
        box = yield self.make_store().open(self.account)
        yield box.refresh()
        self.assertEqual([m.saved for m in box.messages], [0, 0])
        self.assertEqual([m.uid for m in box.messages], [e.uid for e in state.entries])
        yield box.append(MSG1)
        self.assertEqual([m.saved for m in box.messages], [0, 0, T0])
        box.close()
        with open(self.index_path, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(ix.MAGIC + b"\n"), data)
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.saved for m in box.messages], [0, 0, T0])
        box.close()


class SaveDateFormatTests(unittest.TestCase):
    def test_entry_line_round_trip(self) -> None:
        """An entry line of version 4 carries ``saved`` after the modseq; version 3 lines are
        read with 0, version 2 ones with modseq 1 and 0."""
        e = ix.Entry(3, 0, 40, 80, 100, 90, T0, "fp", "-", frozenset({"\\Seen"}), 3600, 9, T0 + 5)
        line = ix.entry_line(e)
        self.assertEqual(line, b"3 0 40 80 100 90 %d+0100 fp - 9 %d \\Seen" % (T0, T0 + 5))
        self.assertEqual(ix._entry(line.split(b" ")), e)
        words = line.split(b" ")
        self.assertEqual(ix._entry(words[:10] + words[11:], 3), e._replace(saved=0))
        self.assertEqual(ix._entry(words[:9] + words[11:], 2), e._replace(saved=0, modseq=1))
        # a save date equal to the internal date (the usual case) is the same int: one
        # object less per message of a 100,000-message index
        same = ix._entry(ix.entry_line(e._replace(tz=0, saved=T0 + 10**9, date=T0 + 10**9)
                                       ).split(b" "))
        self.assertEqual(same.saved, T0 + 10**9)
        self.assertIs(same.saved, same.date)
