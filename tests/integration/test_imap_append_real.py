"""Issue 15's content extensions (MULTIAPPEND, APPENDLIMIT, CATENATE, BINARY, PREVIEW) against
the server on a real TCP port (127.0.0.1, port 0), with the stdlib's imaplib and a raw socket."""

from __future__ import annotations

import imaplib
import socket
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial import unittest

from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from tests.configs import real_config
from tests.integration.test_imap_real import _read_until_tagged
from tests.test_imap_server import BOSS, make_portal

LIMIT = 5000


class ImaplibAppendTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        portal, _ = make_portal(self.store)
        config = real_config(auth={"disable_plaintext_auth": True},
                             mail={"message_size_limit": LIMIT})
        self.factory = IMAPFactory(config, portal, MailLog(None, "mail"), reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _imaplib(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port, timeout=10) as client:
            client.login("boss", "secret")
            out["caps"] = client.capability()[1][0].split()
            out["ok"] = client.append("INBOX", "(\\Seen)", None, b"Subject: a\r\n\r\nbody\r\n")
            out["big"] = client.append("INBOX", None, None, b"x" * (LIMIT + 1))
            out["code"] = client.response("TOOBIG")
            out["noop"] = client.noop()[0]
            client.logout()
        return out

    def _multiappend(self, port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            _read_until_tagged(sock, rb"\*")
            sock.sendall(b"a LOGIN boss secret\r\nb APPEND INBOX {3+}\r\none ~{4+}\r\nt\0wo"
                         b" (\\Flagged) {5+}\r\nthree\r\n")
            out = _read_until_tagged(sock, b"b")
            sock.sendall(b"c LOGOUT\r\n")
            _read_until_tagged(sock, b"c")
        return out

    async def test_imaplib_append_and_appendlimit(self) -> None:
        """imaplib sees MULTIAPPEND and APPENDLIMIT=5000; its APPEND is APPENDUID; one over the
        limit is NO [TOOBIG] before it sends the message (it waits for a continuation)."""
        out = await threads.deferToThread(self._imaplib, self.port.getHost().port)
        self.assertIn(b"MULTIAPPEND", out["caps"])
        self.assertIn(b"APPENDLIMIT=5000", out["caps"])
        self.assertEqual(out["ok"][0], "OK")
        self.assertIn(b"[APPENDUID ", out["ok"][1][0])
        self.assertEqual(out["big"][0], "NO")
        self.assertIn(b"[TOOBIG]", out["big"][1][0])
        self.assertEqual(out["noop"], "OK")
        box = self.store._box(BOSS, "INBOX", create=False)
        self.assertEqual(len(box.messages), 1)

    async def test_multiappend_over_a_socket(self) -> None:
        out = await threads.deferToThread(self._multiappend, self.port.getHost().port)
        self.assertRegex(out, rb"b OK \[APPENDUID \d+ 1:3\] Append completed.\r\n$")
        box = self.store._box(BOSS, "INBOX", create=False)
        self.assertEqual([m.flags for m in box.messages], [set(), set(), {"\\Flagged"}])
        self.assertEqual(box._bodies[2], b"t\0wo\n")


    def _content(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port, timeout=10) as client:
            client.login("boss", "secret")
            client.select("INBOX")
            out["fetch"] = client.fetch("1", "(BINARY.PEEK[1] BINARY.SIZE[1] PREVIEW)")
            typ, _ = client._simple_command(  # type: ignore[attr-defined]
                "APPEND", "INBOX", 'CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER" URL'
                ' "/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=0.4")')
            out["catenate"] = typ, client.response("APPENDUID")
            client.logout()
        return out

    async def test_imaplib_binary_preview_catenate(self) -> None:
        """imaplib reads the literal8 of BINARY (its literal pattern takes ``~{n}``) and the
        PREVIEW; a CATENATE APPEND from URLs to the same mailbox is appended."""
        message = b"Subject: b\nContent-Transfer-Encoding: base64\n\naGkAdGhlcmU=\n"
        await self.store.deliver(BOSS, message, "bob@example.org")
        out = await threads.deferToThread(self._content, self.port.getHost().port)
        status, data = out["fetch"]
        self.assertEqual(status, "OK")
        self.assertIn(b"BINARY[1] ~{8}", data[0][0])
        self.assertEqual(data[0][1], b"hi\0there")
        self.assertIn(b'BINARY.SIZE[1] 8 PREVIEW "hithere"', data[1])
        self.assertEqual(out["catenate"][0], "OK")
        box = self.store._box(BOSS, "INBOX", create=False)
        self.assertEqual(box._bodies[2], b"Subject: b\nContent-Transfer-Encoding: base64\n\naGkA\n")
