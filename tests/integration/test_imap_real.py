"""The IMAP server on a real TCP port (127.0.0.1, port 0): the stdlib's imaplib, raw sockets and
Twisted's own TCP transport (its write buffer and resumeProducing)."""

from __future__ import annotations

import imaplib
import re
import socket
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailsuite.imap.server import IMAPFactory, IMAPServer
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from tests.test_imap_server import BOSS, MESSAGE, make_config, make_portal


class _TrackedServer(IMAPServer):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.nodelay = self.transport.getTcpNoDelay()
        self.factory.queued = []  # what went through the transport's buffer, not to the socket
        write = self.transport.write

        def queued(data: bytes) -> None:
            self.factory.queued.append(data)
            write(data)

        self.transport.write = queued

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.lost.callback(None)


class ImaplibTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        portal, _ = make_portal(self.store)
        self.factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)
        self.factory.protocol = _TrackedServer
        self.factory.lost = defer.Deferred()
        self.factory.buildProtocol = self._build  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _build(self, addr: Any) -> IMAPServer:
        proto = _TrackedServer(self.factory.config, self.factory.portal, self.factory.maillog,
                               self.factory.clock)
        proto.factory = self.factory
        return proto

    def _client_session(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port) as client:
            out["login"] = client.login("boss", "secret")[0]
            out["select"] = client.select("INBOX")
            out["uids"] = client.uid("SEARCH", None, "ALL")
            out["fetch"] = client.uid("FETCH", "1", "(UID RFC822.SIZE BODY.PEEK[])")
            out["store"] = client.store("1", "+FLAGS", "(\\Seen)")
            out["unseen"] = client.search(None, "UNSEEN")
            out["logout"] = client.logout()[0]
        return out

    @defer.inlineCallbacks
    def test_imaplib_session(self):  # type: ignore[no-untyped-def]
        """imaplib logs in, selects, UID SEARCHes, fetches the exact bytes, stores, searches UNSEEN
        and logs out against the server on a real socket; TCP_NODELAY is set on the connection."""
        yield self.store.deliver(BOSS, MESSAGE, "bob@example.org")
        yield self.store.deliver(BOSS, b"Subject: two\n\nsecond\n", "bob@example.org")
        out = yield threads.deferToThread(self._client_session, self.port.getHost().port)
        yield self.factory.lost
        self.assertEqual(out["login"], "OK")
        self.assertEqual(out["select"], ("OK", [b"2"]))
        self.assertEqual(out["uids"], ("OK", [b"1 2"]))
        status, data = out["fetch"]
        wire = MESSAGE.replace(b"\n", b"\r\n")
        self.assertEqual(status, "OK")
        self.assertEqual(data[0][1], wire)
        self.assertIn(b"RFC822.SIZE %d" % len(wire), data[0][0])
        self.assertEqual(out["store"][0], "OK")
        self.assertEqual(out["unseen"], ("OK", [b"2"]))
        self.assertEqual(out["logout"], "BYE")
        self.assertTrue(self.factory.nodelay)


def _read_until_tagged(sock: socket.socket, tag: bytes, limit: float = 10.0) -> bytes:
    """Everything up to and including the line that starts with ``tag``."""
    sock.settimeout(limit)
    data = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n$", data):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return data


class PipelinedAnswersTests(ImaplibTests):
    """Answers made while received bytes are handled go to the socket at once, after them
    (not through the reactor's write buffer), and keep their order with the ones that do not:
    a big literal streamed through a producer, the answers pipelined behind it."""

    def _pipelined(self, port: int) -> dict[str, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            out = {"greeting": _read_until_tagged(sock, rb"\*")}
            sock.sendall(b"a LOGIN boss secret\r\nb SELECT INBOX\r\n")
            out["login"] = _read_until_tagged(sock, b"b")
            sock.sendall(b"c NOOP\r\n")
            out["noop"] = _read_until_tagged(sock, b"c")
            sock.sendall(b"x NOOP\r\nd UID FETCH 2 (BODY.PEEK[])\r\ne UID FETCH 1 (BODY.PEEK[])\r\n"
                         b"f UID FETCH 2 (RFC822.SIZE)\r\ng LOGOUT\r\n")
            out["rest"] = _read_until_tagged(sock, b"g")
        return out

    @defer.inlineCallbacks
    def test_pipelined_answers_in_order(self):  # type: ignore[no-untyped-def]
        big = b"Subject: big\n\n" + b"".join(b"line %06d of a big message\n" % i
                                              for i in range(12000))
        yield self.store.deliver(BOSS, MESSAGE, "bob@example.org")
        yield self.store.deliver(BOSS, big, "bob@example.org")
        out = yield threads.deferToThread(self._pipelined, self.port.getHost().port)
        yield self.factory.lost
        self.assertIn(b"a OK", out["login"])
        self.assertEqual(out["noop"], b"c OK NOOP completed.\r\n")
        rest = out["rest"]
        wire = big.replace(b"\n", b"\r\n")
        self.assertGreater(len(wire), 256 * 1024)  # streamed by a producer
        head = b"* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(wire)
        small = MESSAGE.replace(b"\n", b"\r\n")
        expected = (b"x OK NOOP completed.\r\n" + head + wire
                    + b")\r\nd OK UID FETCH completed.\r\n"
                    + b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(small) + small
                    + b")\r\ne OK UID FETCH completed.\r\n"
                    + b"* 2 FETCH (UID 2 RFC822.SIZE %d)\r\n" % len(wire)
                    + b"f OK UID FETCH completed.\r\n")
        self.assertEqual(rest[: len(expected)], expected)
        tail = rest[len(expected):]
        self.assertTrue(re.fullmatch(rb"\* BYE [^\r]*\r\ng OK [^\r]*\r\n", tail), tail)
        # the NOOP's answer went straight to the socket; the big literal through the transport
        self.assertNotIn(b"c OK NOOP completed.\r\n", b"".join(self.factory.queued))
        self.assertIn(wire[:1000], b"".join(self.factory.queued))


class RealSocketTests(unittest.TestCase):
    """The report's write over a real TCP connection (Twisted's own transport, its
    resumeProducing), to the server on 127.0.0.1."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        portal, _ = make_portal(self.store)
        factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _talk(self, port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            _read_until_tagged(sock, rb"\*")
            sock.sendall(b"l LOGIN boss secret\r\n")
            _read_until_tagged(sock, b"l")
            sock.sendall(b"a NOOP\r\nb APPEND INBOX {5+}\r\nhello\r\nc NOOP\r\nd LOGOUT\r\n")
            return _read_until_tagged(sock, b"d")

    @defer.inlineCallbacks
    def test_noop_append_noop_in_one_write(self):  # type: ignore[no-untyped-def]
        out = yield threads.deferToThread(self._talk, self.port.getHost().port)
        tags = [line.split(b" ")[0] for line in out.split(b"\r\n") if line[:1] not in (b"*", b"")]
        self.assertEqual(tags, [b"a", b"b", b"c", b"d"], out)
