"""BINARY (RFC 3516): FETCH BINARY[part]<o.n>, BINARY.PEEK, BINARY.SIZE, literal8 answers,
[UNKNOWN-CTE]; and literal8 APPEND read back through BINARY."""

from __future__ import annotations

import base64

from mailsuite.imap.binary import decoded
from mailsuite.imap.fetch import FetchRefused, Section, parse_fetch_items
from tests.test_imap_server import ImapTestCase

PAYLOAD = bytes(range(256))
MIXED = (
    b"From: a@example.org\nSubject: parts\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b1"\n\n'
    b"--b1\nContent-Type: text/plain\n\nplain text\n"
    b"--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    + base64.encodebytes(PAYLOAD)
    + b"--b1\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: Quoted-Printable\n\n"
    b"Caf=C3=A9 au lait, a soft=\nbreak\n"
    b"--b1\nContent-Type: application/x-thing\nContent-Transfer-Encoding: x-uuencode\n\n"
    b"begin 644 x\n"
    b"--b1--\n"
)


class BinaryFetchTests(ImapTestCase):
    def ready(self):  # type: ignore[no-untyped-def]
        self.deliver(MIXED)
        s = self.session()
        s.select()
        return s

    def test_capability(self) -> None:
        s = self.session()
        self.assertIn(b" BINARY", s.cmd(b"a CAPABILITY"))

    def test_base64_part_as_literal8(self) -> None:
        """The decoded bytes (every octet, NUL among them) in a literal8; BINARY.SIZE is their
        count; PEEK sets no \\Seen."""
        s = self.ready()
        out = s.cmd(b"a FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
        self.assertEqual(out, b"* 1 FETCH (BINARY[2] ~{256}\r\n" + PAYLOAD
                         + b" BINARY.SIZE[2] 256)\r\na OK FETCH completed.\r\n")
        self.assertEqual(self.box().messages[0].flags, set())

    def test_quoted_printable_part_and_partial(self) -> None:
        s = self.ready()
        text = "Café au lait, a softbreak".encode()
        out = s.cmd(b"a FETCH 1 (BINARY.PEEK[3] BINARY.PEEK[3]<1.4> BINARY.SIZE[3])")
        self.assertEqual(out, b"* 1 FETCH (BINARY[3] {%d}\r\n" % len(text) + text
                         + b" BINARY[3]<1> {4}\r\n" + text[1:5]
                         + b" BINARY.SIZE[3] %d)\r\na OK FETCH completed.\r\n" % len(text))
        out = s.cmd(b"b FETCH 1 BINARY.PEEK[3]<6>")  # the offset alone: to the end
        self.assertEqual(out, b"* 1 FETCH (BINARY[3]<6> {%d}\r\n" % (len(text) - 6)
                         + text[6:] + b")\r\nb OK FETCH completed.\r\n")
        self.assertIn(b"c BAD", s.cmd(b"c FETCH 1 BINARY.SIZE[3]<6>"))

    def test_binary_sets_seen(self) -> None:
        s = self.ready()
        out = s.cmd(b"a FETCH 1 BINARY[1]")
        self.assertIn(b"BINARY[1] {10}\r\nplain text ", out)  # the CRLF is the delimiter's
        self.assertIn(b"FLAGS (\\Seen)", out)

    def test_unknown_cte_is_no(self) -> None:
        """RFC 3516 4.2: an encoding the server cannot decode fails the FETCH, NO
        [UNKNOWN-CTE]; the session goes on."""
        s = self.ready()
        self.assertEqual(s.cmd(b"a FETCH 1 BINARY.PEEK[4]"),
                         b"a NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.\r\n")
        self.assertEqual(s.cmd(b"b FETCH 1 BINARY.SIZE[4]"),
                         b"b NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.\r\n")
        self.assertIn(b"c OK", s.cmd(b"c NOOP"))

    def test_whole_message_and_missing_part(self) -> None:
        s = self.ready()
        wire = MIXED.replace(b"\n", b"\r\n")
        out = s.cmd(b"a FETCH 1 (BINARY.PEEK[] BINARY.PEEK[9])")
        self.assertEqual(out, b"* 1 FETCH (BINARY[] {%d}\r\n" % len(wire) + wire
                         + b" BINARY[9] {0}\r\n)\r\na OK FETCH completed.\r\n")

    def test_bad_sections(self) -> None:
        s = self.ready()
        for bad in (b"BINARY[MIME]", b"BINARY[1.BOGUS]", b"BINARY[0]", b"BINARY.SIZE[1]<0.5>",
                    b"BINARY[1]<0.0>", b"BINARY[1..2]", b"BINARY[HEADER.FIELDS]"):
            self.assertTrue(s.cmd(b"a FETCH 1 " + bad).startswith(b"a BAD"), bad)

    def test_header_text_and_mime_sections_as_body(self) -> None:
        """As Dovecot (imaptest's fetch-binary-mime): BINARY with HEADER, HEADER.FIELDS, TEXT or
        MIME answers what BODY[] does for it (nothing to decode); a part is still decoded."""
        s = self.ready()
        for spec in (b"TEXT", b"HEADER", b"2.MIME", b"HEADER.FIELDS (SUBJECT)",
                     b"HEADER.FIELDS.NOT (FROM)"):
            body = s.cmd(b"a FETCH 1 (BODY.PEEK[" + spec + b"])")
            binary = s.cmd(b"b FETCH 1 (BINARY.PEEK[" + spec + b"] BINARY.SIZE[" + spec + b"])")
            data = body[body.index(b"}\r\n") + 3:body.rindex(b")\r\na OK")]
            label = b"BINARY[" + spec.upper() + b"]"
            self.assertEqual(binary, b"* 1 FETCH (" + label + b" {%d}\r\n" % len(data) + data
                             + b" BINARY.SIZE[" + spec.upper() + b"] %d)\r\n" % len(data)
                             + b"b OK FETCH completed.\r\n", spec)
        self.assertIn(b"Content-Transfer-Encoding: base64\r\n\r\n",
                      s.cmd(b"c FETCH 1 (BINARY.PEEK[2.MIME])"))
        self.assertIn(b"BINARY[2] ~{256}\r\n" + PAYLOAD, s.cmd(b"d FETCH 1 (BINARY.PEEK[2])"))
        self.assertEqual(self.box().messages[0].flags, set())

    def test_literal8_append_read_back(self) -> None:
        """RFC 3516 4.4: a message with a NUL sent as literal8 is kept and read back exactly
        with BINARY[] (BODY[] shows the NUL as 0x80, the outlook-no-nuls rule)."""
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"a APPEND INBOX ~{13}"), b"+ Ready for literal data\r\n")
        self.assertIn(b"a OK [APPENDUID", s.send(b"S: x\r\n\r\nx\0y\r\n\r\n"))
        s.cmd(b"s SELECT INBOX")
        out = s.cmd(b"b FETCH 1 (BINARY.PEEK[] BODY.PEEK[TEXT])")
        self.assertEqual(out, b"* 1 FETCH (BINARY[] ~{13}\r\nS: x\r\n\r\nx\0y\r\n"
                         b" BODY[TEXT] {5}\r\nx\x80y\r\n)\r\nb OK FETCH completed.\r\n")

    def test_decoded_directly(self) -> None:
        self.assertEqual(decoded(MIXED, Section([2])), PAYLOAD)
        self.assertEqual(decoded(b"Content-Transfer-Encoding: base64\n\nYWJj\n", Section([1])),
                         b"abc")
        with self.assertRaises(FetchRefused):
            decoded(b"Content-Transfer-Encoding: base64\n\nYWJjZ\n", Section([1]))
        self.assertEqual([i.name for i in parse_fetch_items(b"(UID BINARY[1] BODY[])")],
                         ["UID", "BINARY", "BODY[]"])
