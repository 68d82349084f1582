"""PREVIEW (RFC 8970): FETCH PREVIEW and PREVIEW (LAZY), the text of the first text part,
HTML reduced to its text, at most 200 characters; big messages worked on in a thread."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsuite.imap import preview as preview_module
from mailsuite.imap.preview import THREAD_MIN, format_preview, preview_text
from tests.test_imap_server import ImapTestCase

PLAIN = b"From: a@example.org\nSubject: hi\n\nPreview   text.\n\n-- \nsig\n"
HTML = (b"From: a@example.org\nSubject: html\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n'
        b"--b\nContent-Type: text/html; charset=iso-8859-1\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        b"<html><head><title>T</title><style>p {color: red}</style></head><body>"
        b"<p>Caf=E9 &amp; <b>cr=\n=E8me</b></p><script>alert(1)</script><p>bye</p></body></html>\n"
        b"--b\nContent-Type: text/plain\nContent-Disposition: attachment\n\nnot this\n--b--\n")
ATTACHED = (b'Content-Type: multipart/mixed; boundary="b"\n\n'
            b"--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0K\n--b--\n")


class ManualBlocking:
    """A store's ``blocking`` whose work runs when the test says."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((f, args, d))
        return d

    def run(self) -> None:
        while self.pending:
            f, args, d = self.pending.pop(0)
            d.callback(f(*args))


class PreviewTextTests(ImapTestCase):
    def test_plain(self) -> None:
        self.assertEqual(preview_text(PLAIN), "Preview text. -- sig")

    def test_html_part_decoded_and_stripped(self) -> None:
        self.assertEqual(preview_text(HTML), "Café & crème bye")

    def test_no_text_is_empty(self) -> None:
        self.assertEqual(preview_text(ATTACHED), "")
        self.assertEqual(format_preview(""), b'PREVIEW ""')
        self.assertEqual(format_preview(None), b"PREVIEW NIL")

    def test_controls_dropped(self) -> None:
        self.assertEqual(preview_text(b"Subject: x\n\nhi\0\x07 there\n"), "hi there")

    def test_charset_that_is_no_text_encoding(self) -> None:
        """A codec that is no text encoding (base64, zlib) or one that raises even with
        "replace" (idna) gives a UTF-8 preview, never an error."""
        for charset in (b"base64", b"zlib", b"rot13", b"idna", b"no-such"):
            raw = (b"Content-Type: text/plain; charset=" + charset + b"\n\nHello there\n")
            self.assertEqual(preview_text(raw), "Hello there", charset)

    def test_at_most_200_characters(self) -> None:
        text = preview_text(b"Subject: long\n\n" + "é".encode() * 5000 + b"\n")
        self.assertEqual(text, "é" * 200)

    def test_quoting(self) -> None:
        self.assertEqual(format_preview('say "hi"'), b'PREVIEW {8}\r\nsay "hi"')
        self.assertEqual(format_preview("é"), b"PREVIEW {2}\r\n\xc3\xa9")


class PreviewFetchTests(ImapTestCase):
    def test_rfc8970_example(self) -> None:
        """RFC 8970 5's exchange: CAPABILITY lists PREVIEW; FETCH PREVIEW answers the text;
        the preview sets no \\Seen."""
        self.deliver(b"Subject: x\n\nPreview text.\n")
        s = self.session()
        self.assertIn(b" PREVIEW", s.cmd(b"A1 CAPABILITY"))
        s.select()
        self.assertEqual(s.cmd(b"A2 FETCH 1 (PREVIEW)"),
                         b'* 1 FETCH (PREVIEW "Preview text.")\r\nA2 OK FETCH completed.\r\n')
        self.assertEqual(s.cmd(b"A3 FETCH 1 (PREVIEW (LAZY))"),
                         b'* 1 FETCH (PREVIEW "Preview text.")\r\nA3 OK FETCH completed.\r\n')
        self.assertEqual(self.box().messages[0].flags, set())

    def test_with_other_items_and_literal(self) -> None:
        self.deliver(HTML)
        s = self.session()
        s.select()
        text = "Café & crème bye".encode()
        self.assertEqual(s.cmd(b"a UID FETCH 1 (UID PREVIEW FLAGS)"),
                         b"* 1 FETCH (UID 1 PREVIEW {%d}\r\n" % len(text) + text
                         + b" FLAGS ())\r\na OK UID FETCH completed.\r\n")

    def test_bad_modifiers(self) -> None:
        self.deliver()
        s = self.session()
        s.select()
        for bad in (b"(PREVIEW (FUZZY))", b"(PREVIEW ())", b"PREVIEWS", b"(PREVIEW (LAZY)"):
            self.assertTrue(s.cmd(b"a FETCH 1 " + bad).startswith(b"a BAD"), bad)

    def big(self) -> bytes:
        return b"Subject: big\n\nBig one.\n" + b"x" * THREAD_MIN + b"\n"

    def test_big_message_in_a_thread_and_pipelined(self) -> None:
        """A big message's preview is worked out through the store's blocking: the FETCH and
        the NOOP behind it are answered, in order, once it is done."""
        self.deliver(self.big())
        self.store.blocking = ManualBlocking()  # type: ignore[attr-defined]
        s = self.session()
        s.select()
        self.assertEqual(s.send(b"a FETCH 1 PREVIEW\r\nb NOOP\r\n"), b"")
        self.assertEqual(len(self.store.blocking.pending), 1)  # type: ignore[attr-defined]
        self.store.blocking.run()  # type: ignore[attr-defined]
        self.assertEqual(s.take(), b'* 1 FETCH (PREVIEW "Big one. ' + b"x" * 191
                         + b'")\r\na OK FETCH completed.\r\nb OK NOOP completed.\r\n')

    def test_lazy_is_nil_until_worked_out(self) -> None:
        """RFC 8970 3.2: LAZY answers NIL for a preview not at hand, and has it made; the next
        FETCH gets it."""
        self.deliver(self.big())
        self.store.blocking = ManualBlocking()  # type: ignore[attr-defined]
        s = self.session()
        s.select()
        self.assertEqual(s.cmd(b"a FETCH 1 (PREVIEW (LAZY))"),
                         b"* 1 FETCH (PREVIEW NIL)\r\na OK FETCH completed.\r\n")
        self.store.blocking.run()  # type: ignore[attr-defined]
        self.assertIn(b'PREVIEW "Big one.', s.cmd(b"b FETCH 1 (PREVIEW (LAZY))"))
        self.assertIn(b'PREVIEW "Big one.', s.cmd(b"c FETCH 1 PREVIEW"))
        self.assertEqual(self.store.blocking.pending, [])  # type: ignore[attr-defined]

    def test_never_nil_without_lazy_when_the_memory_fills(self) -> None:
        """The remembered previews are emptied when full before one is added, never between
        a FETCH's working out and its answer (PREVIEW without LAZY is never NIL)."""
        self.patch(preview_module, "_CACHE_MAX", 3)
        for _ in range(7):
            self.deliver()
        s = self.session()
        s.select()
        out = s.cmd(b"a FETCH 1:7 PREVIEW")
        self.assertEqual(out.count(b"PREVIEW \""), 7, out)
        self.assertNotIn(b"NIL", out)
