"""SORT, THREAD, ESEARCH and ESORT over StringTransport against a MemoryStore: the RFC 5256,
RFC 4731 and RFC 5267 examples as transcripts, every sort key, the UID forms, bad input, the
per-view key cache after an expunge, pipelining."""

from __future__ import annotations

from tests.test_imap_server import ImapTestCase

#: (From, To, Cc, Subject, Date day of January 2024, size padding)
MAILS = [
    (b"Zed <zed@x.org>", b"bob@y.org", b"", b"Re: hello", 3, 5),
    (b"amy@x.org", b"\"Carl\" <carl@y.org>", b"dora@z.org", b"hello", 1, 50),
    (b"=?utf-8?q?=C3=89mile?= <bea@x.org>", b"al@y.org", b"cy@z.org", b"[list] other", 2, 1),
    (b"", b"", b"", b"Fwd: Hello", 2, 20),
]


def mail(sender: bytes, to: bytes, cc: bytes, subject: bytes, day: int, pad: int) -> bytes:
    out = b"Subject: " + subject + b"\nDate: %d Jan 2024 10:00:00 +0000\n" % day
    for name, value in ((b"From", sender), (b"To", to), (b"Cc", cc)):
        if value:
            out += name + b": " + value + b"\n"
    return out + b"\n" + b"x" * pad + b"\n"


class SortTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for m in MAILS:
            self.deliver(mail(*m))
        self.s = self.session()
        self.s.select()

    def sort(self, criteria: bytes) -> bytes:
        out = self.s.cmd(b"t SORT " + criteria)
        self.assertTrue(out.endswith(b"t OK SORT completed.\r\n"), out)
        return out.split(b"\r\n")[0]

    def test_every_key(self) -> None:
        """RFC 5256 section 3 keys, RFC 5957 DISPLAYFROM/DISPLAYTO; a message without the
        field sorts first (empty string); ties in mailbox order."""
        self.assertEqual(self.sort(b"(SUBJECT) UTF-8 ALL"), b"* SORT 1 2 4 3")
        self.assertEqual(self.sort(b"(DATE) UTF-8 ALL"), b"* SORT 2 3 4 1")
        self.assertEqual(self.sort(b"(REVERSE DATE) UTF-8 ALL"), b"* SORT 1 3 4 2")
        self.assertEqual(self.sort(b"(ARRIVAL) UTF-8 ALL"), b"* SORT 1 2 3 4")
        self.assertEqual(self.sort(b"(REVERSE ARRIVAL) UTF-8 ALL"), b"* SORT 1 2 3 4")
        self.assertEqual(self.sort(b"(SIZE) UTF-8 ALL"), b"* SORT 4 1 3 2")  # headers count
        self.assertEqual(self.sort(b"(FROM) UTF-8 ALL"), b"* SORT 4 2 3 1")
        self.assertEqual(self.sort(b"(TO) UTF-8 ALL"), b"* SORT 4 3 1 2")
        self.assertEqual(self.sort(b"(CC) UTF-8 ALL"), b"* SORT 1 4 3 2")
        # none, amy@x.org (no display name), Émile (decoded; É is E and U+0301), Zed
        self.assertEqual(self.sort(b"(DISPLAYFROM) UTF-8 ALL"), b"* SORT 4 2 3 1")
        self.assertEqual(self.sort(b"(DISPLAYTO) UTF-8 ALL"), b"* SORT 4 3 1 2")
        self.assertEqual(self.sort(b"(SUBJECT REVERSE DATE) UTF-8 ALL"), b"* SORT 1 4 2 3")
        self.assertEqual(self.sort(b"(subject) us-ascii 2:4"), b"* SORT 2 4 3")
        self.assertEqual(self.sort(b'(SUBJECT) "UTF-8" TEXT "not in mailbox"'), b"* SORT")

    def test_uid_sort_and_esort(self) -> None:
        """UID SORT gives UIDs; SORT RETURN (RFC 5267): ALL as a sequence-set in sort order,
        MIN/MAX the lowest and highest *sorted* message (the first and last of the order, as
        Dovecot answers; also what SAVE keeps of them), COUNT."""
        self.s.cmd(b"a STORE 1 +FLAGS (\\Deleted)")
        self.s.cmd(b"b EXPUNGE")
        self.assertIn(b"* SORT 2 3 4\r\n", self.s.cmd(b"c UID SORT (DATE) UTF-8 ALL"))
        self.assertIn(b"* SORT 1 3 2\r\n", self.s.cmd(b"d SORT (SUBJECT) UTF-8 ALL"))
        out = self.s.cmd(b"e UID SORT RETURN (ALL MIN MAX COUNT) (SUBJECT) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "e") UID MIN 2 MAX 3 COUNT 3 ALL 2,4,3\r\n', out)
        out = self.s.cmd(b"e2 SORT RETURN (MIN MAX ALL) (REVERSE DATE) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "e2") MIN 2 MAX 1 ALL 2:3,1\r\n', out)
        self.s.cmd(b"e3 UID SORT RETURN (SAVE MAX) (SUBJECT) UTF-8 ALL")
        self.assertIn(b"* SEARCH 3\r\n", self.s.cmd(b"e4 UID SEARCH $"))
        out = self.s.cmd(b"f SORT RETURN () (SUBJECT) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "f") ALL 1,3,2\r\n', out)
        out = self.s.cmd(b"g SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing")
        self.assertIn(b'* ESEARCH (TAG "g") COUNT 0\r\n', out)

    def test_bad_input(self) -> None:
        for line, reply in (
            (b"a SORT (FOO) UTF-8 ALL", b"a BAD"),
            (b"b SORT (REVERSE) UTF-8 ALL", b"b BAD"),
            (b"c SORT () UTF-8 ALL", b"c BAD"),
            (b"d SORT (DATE) UTF-8", b"d BAD"),
            (b"e SORT DATE UTF-8 ALL", b"e BAD"),
            (b"f SORT (DATE) KOI8-R ALL", b"f NO [BADCHARSET (UTF-8 US-ASCII)]"),
            (b"g SORT (DATE) UTF-8 BOGUS", b"g BAD"),
            (b"h THREAD FOO UTF-8 ALL", b"h BAD"),
            (b"i THREAD REFERENCES UTF-8", b"i BAD"),
            (b"j THREAD REFERENCES BIG5 ALL", b"j NO [BADCHARSET"),
            (b"k SORT RETURN (PARTIAL 1:2 ALL) (DATE) UTF-8 ALL", b"k BAD"),  # RFC 5267 4.4
            (b"l SEARCH RETURN (BOGUS) ALL", b"l BAD"),
            (b"m UID THREAD", b"m BAD"),
        ):
            self.assertTrue(self.s.cmd(line).startswith(reply), line)
        self.assertIn(b"* SORT 1 2 3 4", self.s.cmd(b"n SORT (ARRIVAL) UTF-8 ALL"))

    def test_not_before_select(self) -> None:
        s = self.session()
        s.login()
        self.assertTrue(s.cmd(b"a SORT (DATE) UTF-8 ALL").startswith(b"a BAD"))
        self.assertTrue(s.cmd(b"b THREAD REFS UTF-8 ALL").startswith(b"b BAD"))

    def test_keys_read_once_for_every_session(self) -> None:
        """The header fields are read once per message, whichever session sorts or threads
        first; a new message alone is read when it comes."""
        box = self.box()
        read = box.read_headers
        asked: list[list[int]] = []

        def counting(uids: list[int]) -> object:
            asked.append(list(uids))
            return read(uids)

        box.read_headers = counting
        self.s.cmd(b"a SORT (DATE) UTF-8 ALL")
        self.s.cmd(b"b THREAD REFERENCES UTF-8 ALL")
        other = self.session()
        other.select()
        self.assertIn(b"* SORT 2 3 4 1\r\n", other.cmd(b"c SORT (DATE) UTF-8 ALL"))
        self.assertEqual(asked, [[1, 2, 3, 4]])
        self.deliver(mail(b"x@y", b"", b"", b"new", 9, 1))
        self.assertIn(b"* 5 EXISTS", other.cmd(b"d NOOP"))
        self.assertIn(b"* SORT 2 3 4 1 5\r\n", other.cmd(b"e SORT (DATE) UTF-8 ALL"))
        self.assertEqual(asked, [[1, 2, 3, 4], [5]])

    def test_pipelined_with_a_literal(self) -> None:
        out = self.s.send(b"a SORT (DATE) UTF-8 SUBJECT {5+}\r\nhello\r\n"
                          b"b THREAD ORDEREDSUBJECT UTF-8 ALL\r\nc UID SORT (SIZE) UTF-8 ALL\r\n")
        self.assertEqual(out, b"* SORT 2 4 1\r\na OK SORT completed.\r\n"
                              b"* THREAD (2 (4)(1))(3)\r\nb OK THREAD completed.\r\n"
                              b"* SORT 4 1 3 2\r\nc OK UID SORT completed.\r\n")


class ThreadServerTests(ImapTestCase):
    def test_references_and_refs(self) -> None:
        mails = [
            b"Subject: a\nDate: 1 Jan 2024 10:00 +0000\nMessage-ID: <a@x>\n\n",
            b"Subject: Re: a\nDate: 5 Jan 2024 10:00 +0000\nMessage-ID: <b@x>\nReferences: <a@x>"
            b"\n\n",
            b"Subject: other\nDate: 2 Jan 2024 10:00 +0000\nMessage-ID: <c@x>\n"
            b"In-Reply-To: <missing@x>\n\n",
            b"Subject: Re: other\nDate: 3 Jan 2024 10:00 +0000\nMessage-ID: <d@x>\n"
            b"References: <missing@x>\n\n",
        ]
        for m in mails:
            self.deliver(m)
        s = self.session()
        s.select()
        self.assertIn(b"* THREAD (1 2)((3)(4))\r\n", s.cmd(b"a THREAD REFERENCES UTF-8 ALL"))
        self.assertIn(b"* THREAD ((3)(4))(1 2)\r\n", s.cmd(b"b THREAD REFS UTF-8 ALL"))
        self.assertIn(b"* THREAD ((3)(4))(1 2)\r\n", s.cmd(b"c UID THREAD REFS UTF-8 ALL"))
        self.assertIn(b"* THREAD (1 2)(3 4)\r\n", s.cmd(b"d THREAD ORDEREDSUBJECT UTF-8 ALL"))
        self.assertIn(b"* THREAD\r\nf OK", s.cmd(b'f THREAD REFERENCES UTF-8 TEXT "gewp"'))
        s.cmd(b"g STORE 1 +FLAGS (\\Deleted)")
        s.cmd(b"h EXPUNGE")
        # 2 alone now (its parent's dummy has one child), after the dummy of 3 and 4 by date
        self.assertIn(b"* THREAD ((2)(3))(1)\r\n", s.cmd(b"i THREAD REFERENCES UTF-8 ALL"))
        self.assertIn(b"* THREAD ((3)(4))(2)\r\n", s.cmd(b"j UID THREAD REFERENCES UTF-8 ALL"))


class EsearchTests(ImapTestCase):
    def test_rfc4731_examples(self) -> None:
        """RFC 4731 section 4's examples on a mailbox where 2, 10 and 11 are flagged, from
        Jones, after 1-Feb-1994; 4 is the first unseen."""
        for n in range(1, 12):
            sender = b"Jones" if n in (2, 10, 11) else b"Smith"
            self.deliver(b"From: " + sender + b" <x@y>\nSubject: %d\n\n" % n)
        s = self.session()
        s.select()
        s.cmd(b"a STORE 2,10:11 +FLAGS (\\Flagged)")
        s.cmd(b"b STORE 1:3 +FLAGS (\\Seen)")
        out = s.cmd(b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
        self.assertIn(b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\nA282 OK', out)
        out = s.cmd(b'A283 SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
        self.assertIn(b'* ESEARCH (TAG "A283") ALL 2,10:11\r\n', out)
        out = s.cmd(b"A284 SEARCH RETURN (MIN) UNSEEN")
        self.assertIn(b'* ESEARCH (TAG "A284") MIN 4\r\n', out)
        out = s.cmd(b"A285 UID SEARCH RETURN (MIN MAX) 1:5000")
        self.assertIn(b'* ESEARCH (TAG "A285") UID MIN 1 MAX 11\r\n', out)
        self.assertIn(b'* ESEARCH (TAG "A286") ALL 1:3\r\n', s.cmd(b"A286 SEARCH RETURN (ALL) 1:3"))
        out = s.cmd(b"A287 SEARCH RETURN (MIN) SUBJECT nothing")
        self.assertIn(b'* ESEARCH (TAG "A287")\r\nA287 OK', out)
        self.assertIn(b"* SEARCH 2 10 11\r\n", s.cmd(b"c SEARCH FLAGGED"))


class WithinTests(ImapTestCase):
    def test_older_and_younger(self) -> None:
        """RFC 5032: OLDER n / YOUNGER n against the internal date and the time now (one
        message of 2000, one dated 2100), in SEARCH, SORT and THREAD; a bad interval is BAD."""
        s = self.session()
        s.login()
        for date in (b"01-Jan-2000 00:00:00 +0000", b"01-Jan-2100 00:00:00 +0000"):
            self.assertTrue(s.cmd(b'a APPEND INBOX "%s" {9}' % date).startswith(b"+"))
            self.assertIn(b"a OK", s.cmd(b"Subject:x"))
        s.cmd(b"b SELECT INBOX")
        self.assertIn(b"* SEARCH 1\r\n", s.cmd(b"c SEARCH OLDER 3600"))
        self.assertIn(b"* SEARCH 2\r\n", s.cmd(b"d SEARCH YOUNGER 3600"))
        self.assertIn(b"* SEARCH 1 2\r\n", s.cmd(b"e SEARCH OR OLDER 60 YOUNGER 60"))
        self.assertIn(b"* SORT 2\r\n", s.cmd(b"f SORT (DATE) UTF-8 YOUNGER 1"))
        self.assertIn(b"* THREAD (1)\r\n", s.cmd(b"g THREAD REFS UTF-8 NOT YOUNGER 10"))
        for bad in (b"OLDER", b"OLDER 0", b"YOUNGER -5", b"OLDER x"):
            self.assertTrue(s.cmd(b"h SEARCH " + bad).startswith(b"h BAD"), bad)
        self.assertIn(b"WITHIN", s.cmd(b"i CAPABILITY"))


class SearchresTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for n in range(1, 7):
            sender = b"Jones" if n in (2, 4, 5) else b"Smith"
            self.deliver(b"From: " + sender + b" <x@y>\nSubject: %d\n\n" % n)
        self.s = self.session()
        self.s.select()
        self.s.cmd(b"a STORE 2,4:5 +FLAGS (\\Flagged)")

    def test_rfc5182_examples(self) -> None:
        """RFC 5182 section 2: SAVE alone answers no ESEARCH; FETCH $, UID SEARCH UID $,
        SAVE with MIN saves the minimum only; $ in STORE, COPY, SEARCH NOT $."""
        out = self.s.cmd(b'A282 SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
        self.assertEqual(out, b"A282 OK SEARCH completed.\r\n")
        out = self.s.cmd(b"A283 FETCH $ (UID FLAGS)")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n"
                              b"* 4 FETCH (UID 4 FLAGS (\\Flagged))\r\n"
                              b"* 5 FETCH (UID 5 FLAGS (\\Flagged))\r\n"
                              b"A283 OK FETCH completed.\r\n")
        self.assertIn(b"* SEARCH 4 5\r\n", self.s.cmd(b"A302 UID SEARCH UID $ UID 3:*"))
        self.assertIn(b"* SEARCH 1 3 6\r\n", self.s.cmd(b"b SEARCH NOT $"))
        self.assertIn(b"* SEARCH 2 4\r\n", self.s.cmd(b"c SEARCH $ OR SUBJECT 2 SUBJECT 4"))
        out = self.s.cmd(b"A284 SEARCH RETURN (SAVE MIN) FLAGGED")
        self.assertIn(b'* ESEARCH (TAG "A284") MIN 2\r\nA284 OK', out)
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"d SEARCH $"))
        self.s.cmd(b"e UID SEARCH RETURN (SAVE MIN MAX) FLAGGED")
        self.assertIn(b"* SEARCH 2 5\r\n", self.s.cmd(b"f UID SEARCH $"))
        out = self.s.cmd(b"g STORE $ +FLAGS (\\Seen)")
        self.assertIn(b"* 2 FETCH (FLAGS (\\Flagged \\Seen))", out)
        self.assertIn(b"* 5 FETCH (FLAGS (\\Flagged \\Seen))", out)
        self.assertIn(b"h OK [COPYUID", self.s.cmd(b"h UID COPY $ Trash"))
        self.assertIn(b"* STATUS Trash (MESSAGES 2)", self.s.cmd(b"i STATUS Trash (MESSAGES)"))

    def test_expunge_select_and_failure_empty_it(self) -> None:
        self.s.cmd(b"a SEARCH RETURN (SAVE) FLAGGED")
        self.s.cmd(b"b STORE 2 +FLAGS (\\Deleted)")
        self.s.cmd(b"c EXPUNGE")
        # 4 and 5 are now 3 and 4; the expunged one dropped out
        self.assertIn(b"* SEARCH 3 4\r\n", self.s.cmd(b"d SEARCH $"))
        self.assertIn(b"e OK", self.s.cmd(b"e UID MOVE $ Trash"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"f SEARCH $"))
        self.s.cmd(b"g SEARCH RETURN (SAVE) ALL")
        self.assertTrue(self.s.cmd(b"h SEARCH RETURN (SAVE) BOGUS").startswith(b"h BAD"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"i SEARCH $"))
        self.s.cmd(b"j SEARCH RETURN (SAVE) ALL")
        self.s.cmd(b"k SELECT INBOX")
        self.assertEqual(self.s.cmd(b"l FETCH $ FLAGS"), b"l OK FETCH completed.\r\n")

    def test_sort_save_and_dollar_in_sort_thread(self) -> None:
        out = self.s.cmd(b"a SORT RETURN (SAVE) (REVERSE SUBJECT) UTF-8 FLAGGED")
        self.assertEqual(out, b"a OK SORT completed.\r\n")
        self.assertIn(b"* SORT 5 4 2\r\n", self.s.cmd(b"b SORT (REVERSE SUBJECT) UTF-8 $"))
        self.assertIn(b"* THREAD (2)(4)(5)\r\n", self.s.cmd(b"c THREAD REFS UTF-8 $"))
        out = self.s.cmd(b"d UID SORT RETURN (SAVE MAX ALL) (SUBJECT) UTF-8 NOT $")
        self.assertIn(b'* ESEARCH (TAG "d") UID MAX 6 ALL 1,3,6\r\n', out)
        self.assertIn(b"* SEARCH 1 3 6\r\n", self.s.cmd(b"e SEARCH $"))
        self.assertTrue(self.s.cmd(b"f FETCH $,1 FLAGS").startswith(b"f BAD"))
        self.assertTrue(self.s.cmd(b"g SORT RETURN (SAVE) (NOPE) UTF-8 ALL").startswith(b"g BAD"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"h SEARCH $"))
        self.s.cmd(b"i SEARCH RETURN (SAVE) 1:2")
        self.assertIn(b"j NO [BADCHARSET", self.s.cmd(b"j SORT RETURN (SAVE) (DATE) X ALL"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"k SEARCH $"))
        self.s.cmd(b"l SEARCH RETURN (SAVE) 1:2")
        out = self.s.cmd(b"m SEARCH RETURN (SAVE) $ 2:6")  # refines the result saved before
        self.assertEqual(out, b"m OK SEARCH completed.\r\n")
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"n SEARCH $"))
        # RFC 5182 2.1: every failed SEARCH or SORT with SAVE empties it (BADCHARSET, BAD)
        self.assertIn(b"o NO [BADCHARSET", self.s.cmd(b"o SEARCH RETURN (SAVE) CHARSET X ALL"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"p SEARCH $"))
        self.s.cmd(b"q SEARCH RETURN (SAVE) 1:2")
        self.assertTrue(self.s.cmd(b"r SORT RETURN (SAVE) nonsense").startswith(b"r BAD"))
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"s SEARCH $"))
