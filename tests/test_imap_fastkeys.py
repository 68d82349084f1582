"""SORT keys made from the header cache's fields (``sortkeys`` with ``fastkeys``' paths) are
the keys the whole header gives, as made before the cache path existed: tricky Date fields
(missing, bad, obsolete zones, two-digit years, folded, commented), encoded and Re:/Fwd:/[tag]
subjects, odd spellings and line ends (hypothesis); and over an mbox store, a SORT after the
header FETCH reads no header, THREAD then reads each once and keeps every key."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.imap import fastkeys, sortkeys
from mailsuite.imap.collation import casemap
from mailsuite.imap.sortkeys import (
    ALL_KEYS,
    DATE,
    FROM,
    SUBJECT,
    TO,
    SortRecord,
    base_subject,
    complete,
    decode_words,
    make_record,
    message_ids,
    sent_date,
    wanted_fields,
)
from mailsuite.store import headercache
from mailsuite.store.headercache import pick
from mailsuite.store.mbox import MboxStore
from mailsuite.threads import InPool
from tests.test_store_mbox import FakeMailboxConfig

CACHED = frozenset({b"FROM", b"TO", b"SUBJECT", b"DATE"})
ARRIVAL = 1_700_000_000
DATES = [
    "Sun, 01 Dec 2024 16:29:54 -0000", "1 Jan 2024 10:00:00 +0130", "Mon, 2 Feb 2004 3:04 -0800",
    "Tue, 3 Mar 99 10:00:00 EST", "3 Mar 49 10:00:00 UT", "3 Mar 2024 10:00:00 Z",
    "3 Mar 2024 10:00:00 GMT", "4 Apr 2024 10:00:00 A", "4 Apr 2024 10:00:00 m",
    "5 May 2024 10:00:00 +0000 (UTC)", "5 May 2024 10:00:00 +00001", "6 Foo 2024 10:00:00 +0000",
    "7 Jul 0000 10:00:00 +0000", "31 Feb 2024 99:99:99 +9999", "garbage", "", " ",
    "8 Aug 2024\n 10:00:00 +0200", "9 Sep 2024 10:00:00 +0200\n (folded comment)",
    "Fri, 10 Oct 2024 10:00:00 +0200\r", "1 Jan 1970 00:00:00 +0000", "\u0661 Jan 2024 10:00 +0000",
    "Thu, 13 Feb 1969 23:32:54 -0330", "10 Oct 2024 10:00:00 PDT",
]
SUBJECTS = [
    "hello", "Re: hello", "RE:hello", "re: Re: RE : fw: FWD: x", "Fwd: x (fwd)", "x (FWD)  (fwd) ",
    "[PATCH 1/2] Re: [list] x", "Re [tag]: x", "[blob] x", "[only]", "[Fwd: Re: hi]", "Re:",
    "  spaced\t\tout  ", "folded\n line", "=?utf-8?q?Re=3A_=C3=A9t=C3=A9?=", "=?bad?q?x?=",
    "Re: =?iso-8859-1?b?6XTp?= (fwd)", "Reply: x", "Fw : Re: x", "re:re:fwd:x", "\u00e9t\u00e9",
    "Re:  two", "(fwd)", "x\r", "x", "R", "Re:x", " ",
]
ADDRESSES = ["Eve <eve@example.net>", "bob@example.org", '"Doe, J" <j@x.org>', "group: a@b;",
             "=?utf-8?q?=C3=89mile?= <e@x>", "", "undisclosed-recipients:;", "<@route:a@b>"]
NAMES = {b"DATE": ["Date", "DATE", "date ", "Date\t"], b"SUBJECT": ["Subject", "SUBJECT"],
         b"FROM": ["From"], b"TO": ["To", "to"], b"CC": ["Cc"],
         b"MESSAGE-ID": ["Message-ID"], b"REFERENCES": ["References"]}
VALUES = {b"DATE": DATES, b"SUBJECT": SUBJECTS, b"FROM": ADDRESSES, b"TO": ADDRESSES,
          b"CC": ADDRESSES, b"MESSAGE-ID": ["<a@b>", "nope", ""],
          b"REFERENCES": ["<a@b> <c@d>", ""]}


@st.composite
def headers(draw: Any) -> bytes:
    """A header block: fields in any order and number (some twice, some not at all), other
    fields between, folded values, LF or CRLF line ends, sometimes junk lines."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([*NAMES, b"OTHER", b"JUNK"]))
        if kind == b"OTHER":
            lines.append(draw(st.sampled_from(["X-Date: 1 Jan 2000 00:00 +0000", "Received: by x",
                                               "Dated: no", "Subject-X: no"])))
        elif kind == b"JUNK":
            lines.append(draw(st.sampled_from([" continued", "no colon", "\tDate: 1 Jan 2000",
                                               "X-Junk: a\rSubject: aaa",  # a lone CR: not a
                                               "X-Junk: a\rDate: 1 Jan 2000 00:00 +0000",
                                               "X-Cr: x\r"])))  # line end for ^ readers
        else:
            name = draw(st.sampled_from(NAMES[kind]))
            lines.append(name + ":" + draw(st.sampled_from(["", " ", "  ", "\t"]))
                         + draw(st.sampled_from(VALUES[kind])))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return (end.join(lines) + end + end).encode("utf-8")


def info(uid: int = 1) -> Any:
    return SimpleNamespace(uid=uid, size=10, date=ARRIVAL,
                           internal_date=datetime.fromtimestamp(ARRIVAL, UTC))


def reference(header: bytes) -> dict[str, Any]:
    """The keys as make_record made them before the header cache was used (the general
    functions on ``wanted_fields``' values)."""
    f = wanted_fields(header)
    subject, reply = base_subject(decode_words(f.get(b"SUBJECT", "")))
    from_, display_from = sortkeys._first_address(f.get(b"FROM"))
    to, display_to = sortkeys._first_address(f.get(b"TO"))
    refs = message_ids(f.get(b"REFERENCES", "")) or message_ids(f.get(b"IN-REPLY-TO", ""))[:1]
    ids = message_ids(f.get(b"MESSAGE-ID", ""))
    return {"date": sent_date(f.get(b"DATE"), ARRIVAL), "subject": casemap(subject),
            "reply": reply, "from_": casemap(from_), "display_from": casemap(display_from),
            "to": casemap(to), "display_to": casemap(display_to),
            "cc": casemap(sortkeys._first_address(f.get(b"CC"))[0]),
            "message_id": ids[0] if ids else "", "references": refs}


CACHE_KEYS = ("date", "subject", "reply", "from_", "display_from", "to", "display_to")


def keys_of(rec: SortRecord, names: tuple[str, ...]) -> dict[str, Any]:
    """The keys ``names`` of ``rec`` (the references as a list: none may be a shared ())."""
    return {name: list(v) if name == "references" else v
            for name in names for v in (getattr(rec, name),)}


class CachePathTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(headers())
    def test_cache_path_equals_full_path(self, header: bytes) -> None:
        """Keys made from the cache's pick of the header, one group at a time as SORT asks
        for them (the pick read again for the address keys), equal the old make_record's
        from the whole header; so do make_record's now and the one-pass dates of many
        messages."""
        want = reference(header)
        self.assertEqual(keys_of(make_record(1, info(), header), tuple(want)), want)
        cached = pick(header, CACHED)
        can = sortkeys.groups_in(CACHED)
        rec = sortkeys.new_record(info(), cached, can)
        for group in (DATE, SUBJECT):
            complete(rec, group)
        self.assertIsNone(rec.raw)  # let go once DATE and SUBJECT are made (``settle``)
        for group in (FROM, TO):  # the cached fields again, as ``records`` reads them
            sortkeys._refill([rec], {1: cached}, can, group)
        self.assertIsNone(rec.raw)
        self.assertEqual(keys_of(rec, CACHE_KEYS), {k: want[k] for k in CACHE_KEYS})
        alone = sortkeys.new_record(info(), cached, can)
        sortkeys._complete_all([alone], SUBJECT)  # the subjects' own loop
        self.assertEqual((alone.subject, alone.reply), (want["subject"], want["reply"]))
        made = sortkeys._cached_records([info(), info(2)], {1: cached, 2: cached}, can, DATE,
                                        {})
        self.assertEqual([r.date for r in made], [want["date"]] * 2)
        # the dates the header cache writes into its records (one pass, then one by one)
        stored = headercache._dates(CACHED, [(1, "f" * 24, cached), (2, "f" * 24, cached)])
        self.assertEqual(stored, [fastkeys.cache_date(cached)] * 2)
        made = sortkeys._cached_records([info(), info(2)], {1: cached, 2: cached}, can, DATE,
                                        dict(zip((1, 2), stored, strict=True)))
        self.assertEqual([r.date for r in made], [want["date"]] * 2)
        self.assertEqual(keys_of(make_record(1, info(), header, rec), tuple(want)), want)

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.sampled_from("Re:Fwd [](x) \t\r\né"), max_size=20)
           | st.sampled_from(SUBJECTS))
    def test_plain_base_agrees_with_base_subject(self, text: str) -> None:
        found = fastkeys.plain_base(text)
        if found is not None:
            self.assertEqual(found, base_subject(text))

    def test_fast_paths_taken(self) -> None:
        """The usual forms are read by the fast paths (not left to the general code)."""
        raw = b"From: a@b\nSubject: Re: Re: hi\nDate: Sun, 01 Dec 2024 16:29:54 -0000\n\n"
        self.assertEqual(fastkeys.dates_of([raw, raw]), [1733070594, 1733070594])
        self.assertEqual(fastkeys.date_of(raw, 0), 1733070594)
        self.assertEqual(fastkeys.plain_base("Re: Re: hi"), ("hi", True))
        self.assertEqual(fastkeys.field_value(raw, b"SUBJECT"), "Re: Re: hi")
        self.assertEqual(fastkeys.dates_of([b"Date: 1 Jan 2024 EST\n\n", b"X: y\n\n"]),
                         [None, None])
        self.assertEqual(fastkeys.date_of(b"X: y\n\n", 5), 5)


class _View:
    def __init__(self, box: Any) -> None:
        self.mailbox, self.uid_validity = box, box.uid_validity

    def each_basic(self, when: Any) -> Any:
        return ((m.uid, when(m), m.size) for m in self.mailbox.messages)

    def uids(self) -> list[int]:
        return [m.uid for m in self.mailbox.messages]

    def is_expunged(self, uid: int) -> bool:
        return False


class MboxCacheTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_sort_from_the_cache_then_thread_reads_once(self) -> None:
        """After a FETCH of the four fields, DATE, SUBJECT and then the address keys come
        from the cache (no header read; the cached fields let go after SUBJECT and read
        again for FROM and TO); THREAD reads each header once, and every key equals the
        whole header's."""
        root = self.mktemp()
        os.makedirs(os.path.join(root, "spool"))
        heads = [b"From: U%d <u%d@x>\nTo: t@x\nSubject: %sthing %d\nDate: %s\n"
                 b"Message-ID: <m%d@x>\nReferences: <m%d@x>\n" % (
                     n, n, [b"", b"Re: ", b"[l] Fwd: "][n % 3], n % 4,
                     DATES[n % len(DATES)].encode(), n, n - 1) for n in range(1, 40)]
        with open(os.path.join(root, "spool", "boss"), "wb") as f:
            for h in heads:
                f.write(b"From x@y Sun Dec  1 16:29:54 2024\n" + h + b"\nbody\n\n")
        store = MboxStore(FakeMailboxConfig(os.path.join(root, "spool")), InPool(reactor))
        box = yield store.open(Account("boss", os.getuid(), os.getgid(), root))
        self.addCleanup(box.close)
        uids = [m.uid for m in box.messages]
        yield box.header_fields(uids, list(CACHED))
        read, asked = box.read_headers, []

        def counting(some: list[int]) -> Any:
            asked.append(list(some))
            return read(some)

        box.read_headers = counting
        view = _View(box)
        found = yield defer.ensureDeferred(sortkeys.records(view, DATE))
        self.assertTrue(all(rec.raw is not None for _, rec in found))  # kept for SUBJECT
        found = yield defer.ensureDeferred(sortkeys.records(view, SUBJECT))
        self.assertTrue(all(rec.raw is None for _, rec in found))  # let go (``settle``)
        found = yield defer.ensureDeferred(sortkeys.records(view, FROM | TO))
        self.assertEqual(asked, [])  # the address keys from the cache again
        whole = yield read(uids)
        entries = {m.uid: m for m in box.messages}
        for _, rec in found:
            want = keys_of(make_record(rec.uid, entries[rec.uid], whole[rec.uid]), CACHE_KEYS)
            self.assertEqual(keys_of(rec, CACHE_KEYS), want)
        found = yield defer.ensureDeferred(sortkeys.records(view, ALL_KEYS))
        found = yield defer.ensureDeferred(sortkeys.records(view, ALL_KEYS))
        self.assertEqual(sorted(u for some in asked for u in some), uids)
        names = (*CACHE_KEYS, "cc", "message_id", "references")
        for _, rec in found:
            self.assertEqual(rec.made, ALL_KEYS)
            self.assertEqual(keys_of(rec, names), keys_of(
                make_record(rec.uid, entries[rec.uid], whole[rec.uid]), names))
