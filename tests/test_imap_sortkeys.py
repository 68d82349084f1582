"""Units of SORT and THREAD: RFC 5256 base subjects, i;unicode-casemap (RFC 5051), the
REFERENCES, REFS and ORDEREDSUBJECT trees (loops, missing parents, dummies, duplicate
Message-IDs) and the thread list format, ESEARCH formatting."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.imap.collation import casemap, contains
from mailsuite.imap.encode import number_set
from mailsuite.imap.esearch import esearch_response, parse_return
from mailsuite.imap.parser import ParseError
from mailsuite.imap.sortkeys import SortRecord, base_subject, make_record
from mailsuite.imap.thread import Node, format_threads, ordered_subject, references, refs
from mailsuite.imap.threadid import thread_roots


def record(uid: int, subject: str = "s", day: int = 1, mid: str = "", refs_: str = "",
           irt: str = "") -> tuple[int, SortRecord]:
    header = f"Subject: {subject}\nDate: {day} Jan 2024 10:00:00 +0000\n"
    if mid:
        header += f"Message-ID: <{mid}>\n"
    if refs_:
        header += f"References: {refs_}\n"
    if irt:
        header += f"In-Reply-To: {irt}\n"
    info = SimpleNamespace(uid=uid, size=10, internal_date=datetime(2024, 1, 1, tzinfo=UTC))
    return uid, make_record(uid, info, header.encode() + b"\n")


def by_seq(seq: int, rec: SortRecord) -> int:
    return seq


class BaseSubjectTests(unittest.TestCase):
    def test_rfc5256_steps(self) -> None:
        """Each step of RFC 5256 section 2.1: blanks collapsed (1), (fwd) trailers (2),
        re/fw/fwd leaders with blobs (3), a leading blob unless nothing would be left (4),
        repeated (5), [fwd: ...] (6) and back to step 2."""
        cases = {
            "hello": ("hello", False),
            "Re: hello": ("hello", True),
            "RE:hello": ("hello", True),
            "re: Re: RE : fw: FWD: x": ("x", True),
            "Fwd: x (fwd)": ("x", True),
            "x (FWD)  (fwd) ": ("x", True),
            "[PATCH 1/2] Re: [list] x": ("x", True),
            "Re [tag]: x": ("x", True),
            "[blob] x": ("x", False),
            "[only-a-blob]": ("[only-a-blob]", False),
            "[a][b] x": ("x", False),
            "[Fwd: Re: hi]": ("hi", True),
            "[fwd: [fwd: x (fwd)]]": ("x", True),
            "  spaced\t\tout  ": ("spaced out", False),
            "folded\r\n line": ("folded line", False),
            "Re:": ("", True),
            "": ("", False),
            "Reply: x": ("Reply: x", False),
            "Ref: x": ("Ref: x", False),
            "x Re: y": ("x Re: y", False),
        }
        for subject, wanted in cases.items():
            self.assertEqual(base_subject(subject), wanted, subject)

    def test_encoded_words_decoded_before_extraction(self) -> None:
        _, rec = record(1, "=?utf-8?q?Re=3A_Caf=C3=A9?=")
        self.assertEqual(rec.subject, casemap("Café"))
        self.assertTrue(rec.reply)


class CollationTests(unittest.TestCase):
    def test_unicode_casemap(self) -> None:
        """RFC 5051: titlecase then NFKD, so case and compatibility forms compare equal."""
        self.assertEqual(casemap("hello"), casemap("HeLLo"))
        self.assertEqual(casemap("café"), casemap("CAFÉ"))
        self.assertEqual(casemap("café"), casemap("cafe\u0301"))  # decomposed é
        # U+FB01 decomposes to "fi", whose characters are then titlecased in turn
        self.assertEqual(casemap("ﬁ"), "FI")
        self.assertEqual(casemap("ß"), "ß")  # no simple titlecase, no decomposition
        self.assertEqual(casemap("가"), "가")  # Hangul: not decomposed (not in UnicodeData)
        # dž: titlecase ǅ, which decomposes to D + ž, ž titlecased to Ž, decomposed to Z + caron
        self.assertEqual(casemap("ǆ"), "DZ\u030c")
        self.assertEqual(casemap("Ǆ"), casemap("ǅ"))
        self.assertEqual(casemap("①"), "1")  # <circle> compatibility decomposition
        self.assertEqual(casemap("Å"), "A\u030a")  # U+212B ANGSTROM SIGN: A + ring
        self.assertEqual(casemap("Ǆ"), casemap("ǆ"))  # titlecase digraph Ǆ -> ǅ
        self.assertEqual(casemap(b"\xff"), "\ufffd")
        self.assertLess(casemap("a"), casemap("B"))
        self.assertTrue(contains("Grüße aus Köln", "KÖLN"))
        self.assertTrue(contains("Re: ﬁle", "FILE"))
        self.assertFalse(contains("abc", "abd"))


class ThreadTests(unittest.TestCase):
    def test_format_of_rfc5256(self) -> None:
        """The example of RFC 5256 section 4: (2)(3 6 (4 23)(44 7 96))."""
        def node(n: int, *children: Node) -> Node:
            x = Node()
            x.msg, x.seq = SimpleNamespace(), n  # type: ignore[assignment]
            x.children = list(children)
            return x
        tree = [node(2), node(3, node(6, node(4, node(23)), node(44, node(7, node(96)))))]
        self.assertEqual(format_threads(tree, by_seq), b"(2)(3 6 (4 23)(44 7 96))")
        dummy = Node()
        dummy.children = [node(5), node(6)]
        self.assertEqual(format_threads([dummy], by_seq), b"((5)(6))")

    def test_references_chain_missing_parents_and_loops(self) -> None:
        found = [
            record(1, "a", 1, "a@x"),
            record(2, "Re: a", 3, "c@x", "<a@x> <b@x>"),  # b@x missing: a dummy between
            record(3, "Re: a", 2, "d@x", "<d@x>"),  # refers to itself
            record(4, "loop", 4, "e@x", "<f@x>"),
            record(5, "loop2", 5, "f@x", "<e@x>"),  # e -> f -> e would be a loop
        ]
        out = references(found, by_seq)
        # 2 under the dummy b@x under 1: the dummy goes, 2 moves up to 1; 3 (self-reference
        # ignored) joins 1 by subject as a reply; 4 is 5's child (f@x was its parent's dummy)
        # and 5's reference to 4 would close a loop, so it is left out
        self.assertEqual(out, b"(1 (3)(2))(5 4)")

    def test_last_reference_breaks_the_link_even_when_it_would_loop(self) -> None:
        """Step 1B: a link made by another message's References is broken "before
        linking", also when the new link is left out as a loop. 2's References put d@x
        under a@x; 4 (d@x) then makes c@x its child (1A) and names it its parent (1B): a
        loop, so 4 becomes a root with 2's and 3's threads under it, no longer under 1
        (as Dovecot threads it; seen comparing random mailboxes with Dovecot's answers)."""
        found = [
            record(1, "a", 1, "a@x"),
            record(2, "b", 2, "b@x", "<a@x> <d@x> <x@x>"),
            record(3, "c", 3, "c@x"),
            record(4, "d", 4, "d@x", "<y@x> <z@x> <d@x> <c@x>"),
        ]
        self.assertEqual(references(found, by_seq), b"(1)(4 (2)(3))")

    def test_dummy_root_with_several_children_kept(self) -> None:
        found = [record(1, "x", 2, "b@x", "<a@x>"), record(2, "y", 1, "c@x", "<a@x>")]
        self.assertEqual(references(found, by_seq), b"((2)(1))")
        self.assertEqual(refs(found, by_seq), b"((2)(1))")

    def test_duplicate_message_ids_and_in_reply_to(self) -> None:
        found = [record(1, "a", 1, "a@x"), record(2, "b", 2, "a@x"),
                 record(3, "c", 3, "z@x", irt="<a@x> <b@x>")]
        self.assertEqual(references(found, by_seq), b"(1 3)(2)")

    def test_references_replace_a_link_from_truncated_references(self) -> None:
        """Step 1 (B): a message's own last reference is its parent, whatever an earlier
        References said."""
        found = [record(1, "p", 1, "p@x"), record(2, "q", 2, "q@x"),
                 record(3, "r", 3, "r@x", "<p@x> <c@x>"),
                 record(4, "c", 4, "c@x", "<q@x>")]
        self.assertEqual(references(found, by_seq), b"(1)(2 4 3)")

    def test_subject_merging_rules(self) -> None:
        """Step 5: a reply under the non-reply; two non-replies under a new dummy."""
        found = [record(1, "Re: s", 1), record(2, "s", 2), record(3, "t", 3),
                 record(4, "t", 4)]
        self.assertEqual(references(found, by_seq), b"(2 1)((3)(4))")

    def test_refs_orders_threads_by_latest_message(self) -> None:
        found = [record(1, "a", 1, "a@x"), record(2, "b", 2, "b@x"),
                 record(3, "Re: a", 9, "c@x", "<a@x>"), record(4, "s", 5)]
        self.assertEqual(refs(found, by_seq), b"(2)(4)(1 3)")
        self.assertEqual(references(found, by_seq), b"(1 3)(2)(4)")
        # the same latest date: by the root's number, a dummy root's being 0 (Dovecot's order)
        found = [record(1, "a", 5, "a@x"), record(2, "b", 5, "b@x", "<gone@x>"),
                 record(3, "c", 5, "c@x", "<gone@x>")]
        self.assertEqual(refs(found, by_seq), b"((2)(3))(1)")
        # a dummy root shown as its only child keeps the dummy's 0 (Dovecot sorts the roots
        # before the single-child dummies give way, index-thread-finish.c)
        found = [record(1, "a", 5, "a@x"), record(2, "b", 5, "b@x", "<gone@x>")]
        self.assertEqual(refs(found, by_seq), b"(2)(1)")

    def test_ordered_subject(self) -> None:
        """RFC 5256 ORDEREDSUBJECT: by base subject and date, the first the parent of the
        rest, threads by the date of their first message."""
        found = [record(1, "b", 5), record(2, "Re: a", 3), record(3, "a", 4),
                 record(4, "b", 1), record(5, "c", 2)]
        self.assertEqual(ordered_subject(found, by_seq), b"(4 1)(5)(2 3)")
        found.append(record(6, "Fwd: b", 6))
        self.assertEqual(ordered_subject(found, by_seq), b"(4 (1)(6))(5)(2 3)")

    def test_wide_shapes_stay_linear(self) -> None:
        """20,000 replies to one missing message, and 10,000 subjects twice each without
        references: seconds, not the minutes a step quadratic in the number would take."""
        import time

        start = time.monotonic()
        found = [record(i, "x", 1, f"m{i}@x", irt="<gone@x>") for i in range(1, 20001)]
        out = references(found, by_seq)
        self.assertTrue(out.startswith(b"((1)(2)(3)"))
        found = [record(i, f"s{i % 10000}", 1, f"n{i}@x") for i in range(1, 20001)]
        out = references(found, by_seq)
        self.assertTrue(out.startswith(b"((1)(10001))((2)(10002))"), out[:40])
        self.assertLess(time.monotonic() - start, 60)

    def test_long_chain_needs_no_recursion(self) -> None:
        found = [record(1, "x", 1, "m0@x")]
        found += [record(i + 1, "x", 1, f"m{i}@x", f"<m{i - 1}@x>") for i in range(1, 5000)]
        out = references(found, by_seq)
        self.assertEqual(out, b"(" + b" ".join(b"%d" % i for i in range(1, 5001)) + b")")


    def test_trees_are_freed_without_the_collector(self) -> None:
        """Each algorithm and THREADID's map leave no node behind once answered (parents
        and children refer to each other: an uncut tree would wait for a full collection,
        100,000s of nodes, for memory the server still holds meanwhile)."""
        found = [record(1, "a", 1, "a@x"), record(2, "Re: a", 2, "b@x", "<a@x>"),
                 record(3, "b", 3, "c@x", "<gone@x> <a@x>"), record(4, "b", 4, "d@x"),
                 record(5, "c", 5, "e@x", irt="<gone2@x>"),
                 record(6, "c", 6, "f@x", irt="<gone2@x>"),
                 record(7, "d", 7, "g@x", "<a@x> <g1@x> <g2@x>"),  # dummies in a row
                 record(8, "e", 8, "h@x", "<g3@x> <g4@x> <g5@x>")]
        runs = [lambda: references(found, by_seq), lambda: refs(found, by_seq),
                lambda: ordered_subject(found, by_seq), lambda: thread_roots(found)]
        was = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for run in runs:
                self.assertTrue(run())
                self.assertEqual([o for o in gc.get_objects() if isinstance(o, Node)], [])
        finally:
            if was:
                gc.enable()


class EsearchTests(unittest.TestCase):
    def test_return_options(self) -> None:
        self.assertEqual(parse_return(b"RETURN () ALL"), ([b"ALL"], b"ALL"))
        self.assertEqual(parse_return(b"return (min Count) 1"), ([b"MIN", b"COUNT"], b"1"))
        self.assertEqual(parse_return(b"ALL"), (None, b"ALL"))
        self.assertEqual(parse_return(b"RETURN (PARTIAL 1:5) ALL"), ([b"PARTIAL 1:5"], b"ALL"))
        self.assertRaises(ParseError, parse_return, b"RETURN (PARTIAL 1:5 ALL) ALL")  # 5267 4.4
        self.assertRaises(ParseError, parse_return, b"RETURN (FUZZY) ALL")
        self.assertRaises(ParseError, parse_return, b"RETURN ALL")

    def test_response(self) -> None:
        self.assertEqual(number_set([1, 2, 3, 7, 5, 6]), b"1:3,7,5:6")
        self.assertEqual(esearch_response(b"A1", True, [b"MIN", b"MAX"], [7, 3800, 10]),
                         b'ESEARCH (TAG "A1") UID MIN 7 MAX 3800')
        self.assertEqual(esearch_response(b"A2", False, [b"MIN"], []), b'ESEARCH (TAG "A2")')
        self.assertEqual(esearch_response(b"A3", False, [b"COUNT", b"ALL"], []),
                         b'ESEARCH (TAG "A3") COUNT 0')
        self.assertEqual(esearch_response(b"A4", False, [b"ALL"], [11, 2, 10]),
                         b'ESEARCH (TAG "A4") ALL 2,10:11')


class AddressKeyTests(unittest.TestCase):
    def test_fast_path_agrees_with_the_parser(self) -> None:
        """The regular expression for the usual forms gives what the full parser gives."""
        from mailsuite.imap.sortkeys import _first_address, _parsed_first_address

        for value in ("Bob Sender <bob@example.org>", "bob@example.org",
                      '"Sender, Bob" <bob@x.org>, c@d', "  a@b , c@d", "Zed  Q. <z@x.y>",
                      "<bare@x.org>", "=?utf-8?q?=C3=89mile?= <e@x>", "o'neil@x.org"):
            self.assertEqual(_first_address(value), _parsed_first_address(value), value)
        # the parser's cases: comments, groups, quoted local parts
        # a group first: its marker, whose addr-mailbox is the group's name (as Dovecot)
        self.assertEqual(_first_address("team: a@b, c@d;"), ("team", "team"))
        self.assertEqual(_first_address("undisclosed-recipients:;"),
                         ("undisclosed-recipients", "undisclosed-recipients"))
        self.assertEqual(_first_address("a@b, team: c@d;"), ("a", "a@b"))
        self.assertEqual(_first_address("a@b (Real Name)"), ("a", "Real Name"))
        self.assertEqual(_first_address('"x y"@b'), ("x y", "x y@b"))


class SentDateTests(unittest.TestCase):
    def test_fast_path_agrees_with_the_email_package(self) -> None:
        """The regular expression for the usual Date form gives what parsedate_tz gives; the
        rest goes to parsedate_tz; no date, or none readable, is the internal date."""
        import calendar
        from email.utils import parsedate_tz

        from mailsuite.imap.sortkeys import sent_date

        for value in ("Mon, 14 Sep 2026 19:07:10 +0200", "1 Jan 2024 10:00 +0000",
                      "Tue,  2 Jan 2024 23:59:59 -0930 (XYZ)", "29 Feb 2024 00:00:00 +1400",
                      "Wed, 3 Jan 2024 10:00:00 GMT", "3 Jan 24 10:00 EST"):
            parsed = parsedate_tz(value)
            assert parsed is not None
            wanted = calendar.timegm(parsed[:6]) - (parsed[9] or 0)  # type: ignore[arg-type]
            self.assertEqual(sent_date(value, 7), wanted, value)
        for value in (None, "", "garbage", "1 Foo 2024 10:00:00 +0000"):
            self.assertEqual(sent_date(value, 7), 7, value)


class ThreadKeyTests(unittest.TestCase):
    def test_thread_completes_a_cached_record_without_address_keys(self) -> None:
        """A record made from the header cache's fields keeps them while DATE or SUBJECT is
        still to make, and lets them go once both are (``settle``); THREAD's keys come from
        the header read for Message-ID/References, no address key made from it; the
        address keys, made from the cached fields again (``_refill``), equal the full
        header's. A record made from a header alone gets every key at once."""
        from mailsuite.imap.sortkeys import (
            ALL_KEYS, DATE, FROM, IDS, SUBJECT, THREAD_KEYS, TO, _refill, complete,
            new_record)

        cached = (b"From: Zed <z@x.org>\nTo: amy@y.org\nSubject: Re: a\n"
                  b"Date: 2 Jan 2024 10:00 +0000\n")
        header = cached + b"Message-ID: <b@x>\nReferences: <a@x>\n\n"
        info = SimpleNamespace(uid=5, size=10, internal_date=datetime(2024, 1, 1, tzinfo=UTC))
        full = make_record(5, info, header)
        self.assertEqual((full.made, full.raw), (ALL_KEYS, None))
        can = DATE | SUBJECT | FROM | TO
        old = complete(new_record(info, cached, can), DATE)
        self.assertEqual((old.made, old.raw), (DATE, cached))
        complete(old, SUBJECT)
        self.assertEqual((old.made, old.can, old.raw), (DATE | SUBJECT, DATE | SUBJECT, None))
        rec = make_record(5, info, header, old, THREAD_KEYS)
        self.assertIs(rec, old)
        self.assertEqual((rec.made, rec.raw), (DATE | SUBJECT | IDS, None))
        self.assertEqual((rec.message_id, rec.references, rec.subject, rec.reply),
                         (full.message_id, full.references, full.subject, full.reply))
        self.assertEqual((rec.from_, rec.to), ("", ""))
        _refill([rec], {5: cached}, can, FROM | TO)
        self.assertEqual((rec.made, rec.raw), (DATE | SUBJECT | IDS | FROM | TO, None))
        self.assertEqual((rec.from_, rec.display_from, rec.to, rec.display_to),
                         (full.from_, full.display_from, full.to, full.display_to))
        bare = complete(new_record(info, b"Subject: a\n", SUBJECT), SUBJECT)
        bare.raw = None
        rec = make_record(5, info, header, bare, THREAD_KEYS)
        self.assertEqual((rec.made, rec.can, rec.raw), (THREAD_KEYS, THREAD_KEYS, None))


class _Box:
    """What ``records`` reads of a store mailbox: the headers of the UIDs asked for."""

    def __init__(self, count: int) -> None:
        self.headers = {uid: b"Subject: m%d\nDate: %d Jan 2024 10:00:00 +0000\n\n" % (
            uid, 1 + uid % 28) for uid in range(1, count + 1)}

    def read_headers(self, uids: list[int]) -> Any:
        return defer.succeed({uid: self.headers[uid] for uid in uids})


class _Rows:
    def __init__(self, box: _Box, gone: set[int]) -> None:
        self.mailbox, self.uid_validity, self.gone = box, 7, gone
        self.shown = [SimpleNamespace(uid=uid, size=10, date=1704103200)
                      for uid in sorted(box.headers)]

    def each_basic(self, when: Any) -> Any:
        return ((row.uid, when(row), row.size) for row in self.shown)

    def uids(self) -> list[int]:
        return [row.uid for row in self.shown]

    def is_expunged(self, uid: int) -> bool:
        return uid in self.gone


class NumberedTests(unittest.TestCase):
    """``records`` keeps the records of a view and their numbers, not 100,000 pairs: the
    pairs read back are the sequence numbers of the view, an expunged message skipped."""

    @defer.inlineCallbacks
    def test_pairs_numbered_as_the_view(self) -> None:
        from mailsuite.imap.sortkeys import DATE, Numbered, records

        box = _Box(6)
        whole = _Rows(box, set())
        found = yield defer.ensureDeferred(records(whole, DATE))
        self.assertIsInstance(found, Numbered)
        self.assertIsNone(found.seqs)  # 1 to n: no numbers kept
        self.assertEqual([(seq, rec.uid) for seq, rec in found], [(n, n) for n in range(1, 7)])
        self.assertEqual((len(found), found[0][0], found[-1][0], found[-1][1].uid), (6, 1, 6, 6))
        self.assertEqual([seq for seq, _ in found[1:3]], [2, 3])
        with self.assertRaises(IndexError):
            found[6]  # (the read is the test)
        again = yield defer.ensureDeferred(records(whole, DATE))
        self.assertIs(again, found)  # the same messages: the same list
        holed = _Rows(box, {3})
        found = yield defer.ensureDeferred(records(holed, DATE))
        self.assertEqual([(seq, rec.uid) for seq, rec in found],
                         [(1, 1), (2, 2), (4, 4), (5, 5), (6, 6)])
        self.assertEqual((found[2], found[-1][0], len(found)), ((4, found.recs[2]), 6, 5))
        self.assertEqual(list(found), list(zip([1, 2, 4, 5, 6], found.recs, strict=True)))
        self.assertEqual([rec.date for _, rec in found],
                         [1704103200 + 86400 * (uid % 28) for uid in (1, 2, 4, 5, 6)])
