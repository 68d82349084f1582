"""The header-field cache (mailsuite.store.headercache) and FETCH through it
(mailsuite.imap.fetchfields): right after every change of the mailbox, and byte-identical to
FETCH from the whole header."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.store.entrytable import EntryTable

from mailsuite.accounts import Account
from mailsuite.imap import fastkeys, fetch, fetchfields
from mailsuite.imap.fetch import fetch_plan, fetch_responses, render_section
from mailsuite.imap.message import split_message
from mailsuite.store import headercache
from mailsuite.store.headercache import CACHE_NAME, pick
from mailsuite.store.memory import MemoryStore
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase

FIELDS = [b"From", b"To", b"Subject", b"Message-ID"]
ITEMS = (b"(UID RFC822.SIZE FLAGS INTERNALDATE "
         b"BODY.PEEK[HEADER.FIELDS (From To Subject Message-ID)])")


def expected(message: bytes, names: list[bytes]) -> bytes:
    return pick(split_message(message)[0], frozenset(n.upper() for n in names))


class View:
    """What fetch_responses asks of a session's view."""

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox

    def is_expunged(self, uid: int) -> bool:
        return False

    def info(self, uid: int) -> Any:
        return next(m for m in self.mailbox.messages if m.uid == uid)

    def infos(self, uids: list[int]) -> Any:
        return list(map(self.info, uids))

    def is_recent(self, uid: int) -> bool:
        return uid == self.mailbox.messages[0].uid  # the first one is \Recent here

    def flags(self, uid: int) -> frozenset[str]:
        flags = frozenset(self.info(uid).flags)
        return flags | {"\\Recent"} if self.is_recent(uid) else flags


@defer.inlineCallbacks
def fetch_all(box: Any, items: bytes, cache: bool, view: Any = None) -> Any:
    out: list[bytes] = []
    targets = [(n + 1, m.uid) for n, m in enumerate(box.messages)]
    was, fetchfields.USE_CACHE = fetchfields.USE_CACHE, cache
    try:
        yield defer.ensureDeferred(fetch_responses(
            view or View(box), targets, fetch_plan(items, True), set(), out.append,
            lambda: False))
    finally:
        fetchfields.USE_CACHE = was
    return b"".join(out)


_LINE = st.one_of(
    st.sampled_from([b"From: a@b\n", b"to: x\r\n", b"Subject: s\n", b" folded\n", b"\tmore\n",
                     b"X-Other: o\n", b"SUBJECT:no space\n", b"garbage\n", b"From: \xe9\n",
                     b"Subject: lone\rcr\n", b"To: y\r\n", b": empty\n", b"Date: d"]),
    st.binary(max_size=20),
)
_NAMES = st.lists(st.sampled_from([b"FROM", b"TO", b"SUBJECT", b"X-OTHER", b"GARBAGE", b""]),
                  min_size=1, max_size=4)


class PickTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.lists(_LINE, max_size=8), st.sampled_from([b"\n", b"\r\n", b""]), _NAMES)
    @example([b"Subject: lone\rcr\n"], b"\n", [b"SUBJECT"])
    def test_fields_render_as_from_the_whole_header(self, lines, blank, names) -> None:
        """HEADER.FIELDS rendered from ``pick`` of a header is byte for byte what it is from
        the whole header, for any header bytes (folding, CRLF, lone CR, no blank line)."""
        header = b"".join(lines) + blank
        text = b" ".join(n or b"\"\"" for n in names)
        for item in fetch_plan(b"BODY.PEEK[HEADER.FIELDS (" + text + b")]", False).items:
            want = render_section(item, None, header)
            self.assertEqual(render_section(item, None, pick(header, frozenset(names))), want)
            narrower = pick(pick(header, frozenset([*names, b"X-MORE"])), frozenset(names))
            self.assertEqual(render_section(item, None, narrower), want)


class MemoryStoreTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_memory_store_header_fields(self) -> None:
        store = MemoryStore()
        account = Account("boss", os.getuid(), os.getgid(), self.mktemp())
        yield store.deliver(account, MSG1, "a@b")
        box = yield store.open(account)
        uid = box.messages[0].uid
        got = yield box.header_fields([uid, 999], [b"subject", b"From"])
        self.assertEqual(got, {uid: b"From: a@example.test\nSubject: one\n\n"})
        self.assertEqual((yield fetch_all(box, ITEMS, True)), (yield fetch_all(box, ITEMS, False)))
        box.close()


class ExpungedView(View):
    def __init__(self, mailbox: Any, expunged: set[int]) -> None:
        super().__init__(mailbox)
        self.expunged = expunged

    def is_expunged(self, uid: int) -> bool:
        return uid in self.expunged


class ListingTests(unittest.TestCase):
    """The listing's chunk (the values a column at a time) against FETCH message by message."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        store = MemoryStore()
        account = Account("boss", os.getuid(), os.getgid(), self.mktemp())
        for n in range(6):
            yield store.deliver(account, MSG2 if n % 2 else MSG1, "a@b")
        self.box = yield store.open(account)
        yield self.box.change_flags([self.box.messages[2].uid], add=frozenset({"\\Seen", "$x"}))

    @defer.inlineCallbacks
    def test_any_order_of_items(self) -> Any:
        for items in (ITEMS, b"(BODY.PEEK[HEADER.FIELDS (Subject)] FLAGS)",
                      b"(INTERNALDATE BODY.PEEK[HEADER.FIELDS (To From)] RFC822.SIZE UID)",
                      b"(FLAGS UID)", b"(RFC822.SIZE)"):
            self.assertEqual((yield fetch_all(self.box, items, True)),
                             (yield fetch_all(self.box, items, False)), items)

    @defer.inlineCallbacks
    def test_a_chunk_it_cannot_answer_is_left_whole(self) -> Any:
        """An expunged message, a missing block or one with a CR or NUL: nothing written
        (``fetch`` answers that chunk message by message)."""
        uids = [m.uid for m in self.box.messages]
        chunk = list(enumerate(uids, 1))
        headers = yield self.box.header_fields(uids, [b"SUBJECT"])
        items = fetch_plan(b"(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])", True).items
        out: list[bytes] = []
        listing = fetchfields.Listing.of(items, out.append, lambda: False)
        assert listing is not None
        self.assertFalse(listing.chunk(ExpungedView(self.box, {uids[3]}), chunk, headers))
        view = View(self.box)
        for bad in (None, b"Subject: a\rb\n\n", b"Subject: a\0b\n\n"):
            changed = dict(headers)
            if bad is None:
                del changed[uids[4]]
            else:
                changed[uids[4]] = bad
            self.assertFalse(listing.chunk(view, chunk, changed))
        self.assertEqual(out, [])
        self.assertTrue(listing.chunk(view, chunk, headers))
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].count(b" FETCH ("), len(uids))
        self.assertIn(b"* 1 FETCH (UID %d FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {"
                      % uids[0], out[0])


class CacheCase(MboxTestCase):
    def cache_path(self) -> str:
        return os.path.join(os.path.dirname(self.index_path), CACHE_NAME)

    def no_mbox_reads(self, box: Any) -> None:
        """Header reads of the mbox fail from now on: what comes back came from the cache."""

        def refused(*args: Any) -> Any:
            raise AssertionError("read from the mbox")

        box._file.read_many = refused

    @defer.inlineCallbacks
    def check(self, box: Any, names: list[bytes] = FIELDS) -> Any:
        """header_fields of every message is its pick; FETCH identical with and without."""
        got = yield box.header_fields([m.uid for m in box.messages], names)
        for m in box.messages:
            raw = yield box.read(m.uid)
            self.assertEqual(got[m.uid], expected(raw, names))
        self.assertEqual(len(got), len(box.messages))
        return got


class CacheTests(CacheCase):
    @defer.inlineCallbacks
    def test_filled_then_served_from_the_cache(self) -> None:
        box = yield self.open_with(MSG1, MSG2)
        yield self.check(box)
        self.assertTrue(os.path.exists(self.cache_path()))
        without = yield fetch_all(box, ITEMS, False)
        self.no_mbox_reads(box)
        yield self.check(box)
        yield self.check(box, [b"subject"])  # fewer fields: from the cache too
        self.assertEqual((yield fetch_all(box, ITEMS, True)), without)
        self.assertIn(b"Subject: two", without)
        self.assertIn(b"FLAGS (\\Recent)", without)
        box.close()

    @defer.inlineCallbacks
    def test_many_missing_read_and_cached_in_batches(self) -> None:
        """A look-up of 700 uncached messages (a listing's chunk is 1,024) reads and caches
        them 256 at a time: each batch one write of the cache file, all of them cached."""
        box = yield self.open_with(*[MSG1.replace(b"one", b"n%d" % n) for n in range(700)])
        writes: list[int] = []
        add = box._hcache.add
        box._hcache.add = lambda validity, items, *a: writes.append(len(items)) or add(
            validity, items, *a)
        yield self.check(box, [b"Subject"])
        self.assertEqual(writes, [256, 256, 188])
        self.no_mbox_reads(box)
        got = yield self.check(box, [b"Subject"])
        self.assertIn(b"Subject: n699", got[box.messages[-1].uid])
        box.close()

    @defer.inlineCallbacks
    def test_a_new_field_is_cached_from_then_on(self) -> None:
        box = yield self.open_with(MSG1, MSG2)
        yield self.check(box, [b"From"])
        yield self.check(box, [b"Subject", b"To"])  # from the mbox, cache started again
        self.assertEqual(box._hcache.fields, {b"FROM", b"SUBJECT", b"TO"})
        self.no_mbox_reads(box)
        yield self.check(box, [b"From", b"Subject"])
        box.close()

    @defer.inlineCallbacks
    def test_append_and_expunge(self) -> None:
        box = yield self.open_with(MSG1, MSG2)
        yield self.check(box)
        yield box.append(MSG2.replace(b"two", b"three"))
        got = yield self.check(box)
        self.assertIn(b"Subject: three", got[box.messages[-1].uid])
        first = box.messages[0].uid
        yield box.expunge([first])
        yield box.settled()  # compacted: every offset in the file moved
        self.no_mbox_reads(box)
        got = yield self.check(box)
        self.assertNotIn(first, got)
        box.close()

    @defer.inlineCallbacks
    def test_external_append_and_rewrite(self) -> None:
        box = yield self.open_with(MSG1, MSG2)
        yield self.check(box)
        self.external_append(MSG1.replace(b"one", b"outside"))
        yield box.refresh()
        got = yield self.check(box)
        self.assertIn(b"Subject: outside", got[box.messages[-1].uid])
        # another program changes a Subject (the message gets a new UID) and adds Status
        # headers (UIDs kept): no old fields are served
        data = self.read_file().replace(b"Subject: two", b"Subject: changed")
        data = data.replace(b"Subject: one\n", b"Subject: one\nStatus: RO\n")
        os.unlink(self.path)
        self.write(data)
        yield box.refresh()
        got = yield self.check(box)
        self.assertIn(b"Subject: changed", got[box.messages[1].uid])
        box.close()

    @defer.inlineCallbacks
    def test_torn_or_damaged_file_is_rebuilt(self) -> None:
        box = yield self.open_with(MSG1, MSG2, MSG1 + b"3\n")
        yield self.check(box)
        size = os.path.getsize(self.cache_path())
        for damage in ("torn", "flipped", "garbage"):
            with open(self.cache_path(), "r+b") as f:
                if damage == "torn":
                    f.truncate(size - 5)
                elif damage == "flipped":
                    f.seek(size - 3)
                    f.write(b"X")
                else:
                    f.seek(0)
                    f.write(b"junk")
            box.close()
            box = yield self.make_store().open(self.account)
            yield self.check(box)  # right, from the mbox
            self.no_mbox_reads(box)
            yield self.check(box)  # and cached again
        box.close()

    @defer.inlineCallbacks
    def test_a_file_put_in_its_place_is_loaded_again(self) -> None:
        """Records are checked (CRC) as the file is loaded, not at each look-up: a file
        another process put in the place of the loaded one, with the same first line and a
        record damaged, is loaded again (its inode), so the damage is seen, never served."""
        box = yield self.open_with(MSG1, MSG2, MSG1 + b"3\n")
        yield self.check(box)
        with open(self.cache_path(), "rb") as f:
            data = bytearray(f.read())
        data[-3] ^= 0x20  # in the last record's data: its CRC no longer matches
        other = self.cache_path() + ".new"
        with open(other, "wb") as f:
            f.write(bytes(data))
        os.replace(other, self.cache_path())
        yield self.check(box)  # right, from the mbox, by the same open mailbox
        self.no_mbox_reads(box)
        yield self.check(box)  # and cached again
        box.close()

    @defer.inlineCallbacks
    def test_restart_and_new_uidvalidity(self) -> None:
        box = yield self.open_with(MSG1, MSG2)
        yield self.check(box)
        box.close()
        box = yield self.make_store().open(self.account)
        self.no_mbox_reads(box)
        yield self.check(box)
        box.close()
        os.unlink(self.index_path)  # a new UIDVALIDITY: the cache starts again
        box = yield self.make_store().open(self.account)
        yield self.check(box)
        self.assertEqual(box._hcache.validity, box.uid_validity)
        box.close()

    @defer.inlineCallbacks
    def test_listing_from_the_table_identical(self) -> None:
        """A session's view reads FLAGS, RFC822.SIZE and INTERNALDATE of a listing from a
        slice of the store's table (``ImapMailboxView.infos``), or message by message once
        it holds flags of its own: the same lines as the general path's either way."""
        box = yield self.open_with(MSG1, MSG2, MSG1)
        view = ImapMailboxView(box, False)
        uids = view.uids()
        yield box.change_flags([uids[1]], add=frozenset({"\\Seen", "$x"}))
        view.take_updates()
        self.assertIsInstance(view.infos(uids), EntryTable)
        items = b"(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (Subject)])"
        for told in (False, True):
            if told:  # flags of the view's own (not yet the store's): no slice
                view._over[uids[0]] = view.info(uids[0])._replace(flags=frozenset({"\\Draft"}))
                self.assertNotIsInstance(view.infos(uids), EntryTable)
            for what in (items, b"(UID FLAGS RFC822.SIZE INTERNALDATE)", b"FLAGS"):
                self.assertEqual((yield fetch_all(box, what, True, view)),
                                 (yield fetch_all(box, what, False, view)))
        self.assertIn(b"FLAGS (\\Draft)", (yield fetch_all(box, b"FLAGS", True, view)))
        view.close()

    @defer.inlineCallbacks
    def test_fetch_identical_with_and_without(self) -> None:
        messages = [MSG1, MSG2, b"Subject: a\r\n b\r\nFrom: c\r\n\r\nx\r\n",
                    b"From: only header", b"\nno header\n", b"Subject: lone\rcr\n\nz\n",
                    b"Subject: a \0 NUL\nX%d: per cent\n\nq\n"]
        box = yield self.open_with(*messages)
        self.patch(fetch, "_CHUNK", 2)  # chunks answered at once, others message by message
        for items in (ITEMS, b"BODY.PEEK[HEADER.FIELDS (Subject)]",
                      b"(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (Subject From)] UID)",
                      b"(BODY[HEADER.FIELDS (From)] BODY.PEEK[HEADER.FIELDS (To Subject)]<0.9>)",
                      b'(UID BODY.PEEK[HEADER.FIELDS ("X%d" Subject)])',
                      b'(UID BODY.PEEK[HEADER.FIELDS ("X\nY" Subject)])',  # a bare LF
                      b"(UID FLAGS RFC822.SIZE INTERNALDATE)", b"FLAGS"):  # (no header)
            without = yield fetch_all(box, items, False)
            self.assertEqual((yield fetch_all(box, items, True)), without)  # fills
            self.assertEqual((yield fetch_all(box, items, True)), without)  # from the cache
        box.close()

    @defer.inlineCallbacks
    def test_sent_dates_kept_in_the_records(self) -> None:
        """Each record keeps its message's sent date as SORT reads it (the arrival's mark
        without a Date field, none when the fields hold no Date), read back after a restart
        with the fields; a file of the older format (no dates) is started again."""
        dated = MSG1.replace(b"Subject: one\n", b"Subject: one\nDate: 1 Jan 2024 10:00 +0100\n")
        box = yield self.open_with(dated, MSG2, MSG1.replace(b"one", b"odd\nDate: someday"))
        uids = [m.uid for m in box.messages]
        names = [b"Subject", b"Date"]
        fields, data, dates = yield box.cached_header_fields(uids, names)
        self.assertEqual((data, dates), ({}, {}))  # nothing cached yet
        yield self.check(box, names)
        box.close()
        box = yield self.make_store().open(self.account)
        self.no_mbox_reads(box)
        fields, data, dates = yield box.cached_header_fields(uids, [b"DATE"])
        self.assertEqual(fields, {b"SUBJECT", b"DATE"})
        self.assertEqual(set(data), set(uids))
        self.assertEqual(dates, {uids[0]: 1704099600, uids[1]: fastkeys.NO_DATE,
                                 uids[2]: fastkeys.NO_DATE})
        box.close()
        with open(self.cache_path(), "r+b") as f:  # the older format: started again
            old = f.read().replace(headercache.MAGIC, b"mailsuite-hcache 2", 1)
            f.seek(0)
            f.write(old)
        box = yield self.make_store().open(self.account)
        self.assertEqual((yield box.cached_header_fields(uids, [b"DATE"]))[1], {})
        yield self.check(box, [b"Subject"])  # started again without Date: no dates
        fields, data, dates = yield box.cached_header_fields(uids, [b"SUBJECT"])
        self.assertEqual((fields, set(data), dates), ({b"SUBJECT"}, set(uids), {}))
        box.close()

    def test_uncacheable_names_are_served(self) -> None:
        self.assertFalse(headercache.cacheable([b"a b"]))
        self.assertTrue(headercache.cacheable([b"X-A"]))


class DateTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.integers(-2_000_000_000, 4_000_000_000), st.integers(-14 * 60, 14 * 60))
    def test_date_text_is_internal_date(self, date, minutes) -> None:
        """The quick INTERNALDATE is encode.internal_date of the datetime, to the byte."""
        from mailsuite.imap.encode import internal_date
        from mailsuite.store.index import Entry

        e = Entry(1, 0, 0, 0, 0, 0, date, "f" * 24, "", frozenset(), minutes * 60)
        self.assertEqual(fetchfields.date_text(e), internal_date(e.internal_date))


class SharedFlagSetsTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_a_first_parse_shares_flag_sets(self) -> None:
        """Messages parsed from the file share one frozenset per flag combination (an empty
        frozenset is 216 bytes: 20 MB over 100,000 messages)."""
        for n in range(3):
            self.external_append(MSG1 + b"%d\n" % n)
        self.external_append(MSG2.replace(b"\n\n", b"\nStatus: RO\n\n", 1))
        box = yield self.make_store().open(self.account)
        flags = [m.flags for m in box.messages]
        self.assertEqual(flags, [set(), set(), set(), {"\\Seen"}])
        self.assertIs(flags[0], flags[1])
        self.assertIs(flags[1], flags[2])
        box.close()


class CacheUpkeepTests(CacheCase):
    @defer.inlineCallbacks
    def test_records_of_expunged_messages_are_dropped(self) -> None:
        """The file starts again once it holds more expunged messages than live ones."""
        self.patch(headercache, "DEAD_SLACK", 0)
        box = yield self.open_with(*[MSG1 + b"%d\n" % n for n in range(6)])
        yield self.check(box)
        self.assertEqual(len(box._hcache._uids), 6)
        yield box.expunge([m.uid for m in box.messages[:5]])
        yield box.settled()
        yield box.append(MSG2)
        yield self.check(box)  # 7 records > 2 * 2 messages: started again
        self.assertEqual(list(box._hcache._uids), [box.messages[-1].uid])
        yield self.check(box)  # and filled again
        self.assertEqual(list(box._hcache._uids), [m.uid for m in box.messages])
        box.close()

    @defer.inlineCallbacks
    def test_a_cache_that_cannot_be_used_is_not_needed(self) -> None:
        box = yield self.open_with(MSG1, MSG2)

        def refused(create: bool) -> Any:
            raise OSError(13, "Permission denied")

        box._hcache._dir = refused
        yield self.check(box)
        yield self.check(box)
        self.assertFalse(os.path.exists(self.cache_path()))
        self.flushLoggedErrors()
        box.close()
