"""COMPRESS=DEFLATE (RFC 4978) through the real, privilege-separated server, driven with Python's
zlib on a raw socket: after STARTTLS on 143, on implicit TLS (993) and in clear, with compressed
commands pipelined behind the login and COMPRESS (they reach the user's agent, where the session
and its zlib streams live), and an IDLE that outlasts imap_hibernate_timeout (a compressed
session stays in its agent and its pushes arrive compressed)."""

from __future__ import annotations

import os
import socket
import ssl
import time
import zlib

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP, SERVICES, TLS_SERVICES, Site
from tests.integration.test_end_to_end import Clients, message
from tests.integration.test_privsep import descendants, status

SKIP = None if PRIVSEP else "needs root and the mail_owner user (setup-debian.sh test makes it)"
WAIT = 15.0
#: this helper's loopback ports (21600-21699)
PORTS = dict(zip(SERVICES + TLS_SERVICES, range(21610, 21620), strict=False))


class Zipped:
    """A client connection: bytes in clear until ``compress``, then raw deflate both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.out: zlib._Compress | None = None
        self.inp = zlib.decompressobj(-15)
        self.got = b""  # what was read and not yet expected (inflated once compressing)

    def z(self, data: bytes) -> bytes:
        assert self.out is not None
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def compress_now(self) -> None:
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)

    def send(self, data: bytes, raw: bool = False) -> None:
        self.sock.sendall(data if raw or self.out is None else self.z(data))

    def expect(self, marker: bytes, inflate: bool = True) -> bytes:
        """Read (bounded in time) until ``marker`` has been seen; what came up to its line end."""
        deadline = time.monotonic() + WAIT
        while marker not in self.got:
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} not in {self.got!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before {marker!r}: {self.got!r}")
            self.got += self.inp.decompress(chunk) if inflate and self.out else chunk
        end = self.got.index(b"\r\n", self.got.index(marker)) + 2
        head, self.got = self.got[:end], self.got[end:]
        return head

    def start_compressing(self, tag: bytes = b"z") -> None:
        """COMPRESS DEFLATE, its OK read in clear; every byte after it is inflated."""
        self.send(tag + b" COMPRESS DEFLATE\r\n")
        self.expect(tag + b" OK DEFLATE active")
        assert not self.got, self.got  # nothing may follow the OK in clear
        self.compress_now()

    def close(self) -> None:
        self.sock.close()


class CompressSiteTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self, tls=True, imap_options="imap_hibernate_timeout = 1s")
        self.site.ports = dict(PORTS)  # this helper's range, not a random one
        self.site.config = self.site._write("mail.ini", self.site.ini())
        self.site.start()
        self.c = Clients(self.site)
        self.c.send(message("one", "first"), ["boss@example.test"])
        deadline = time.monotonic() + WAIT
        while not os.path.exists(self.site.inbox("boss")) and time.monotonic() < deadline:
            time.sleep(0.05)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.site.cert)
        ctx.check_hostname = False
        return ctx

    def connect(self, port: str) -> Zipped:
        sock = socket.create_connection(("127.0.0.1", self.site.ports[port]), timeout=WAIT)
        if port == "imaps":
            sock = self.context().wrap_socket(sock)
        line = Zipped(sock)
        self.addCleanup(line.close)
        line.expect(b"* OK")
        return line

    def agents_of(self, user: str) -> list[int]:
        assert self.site.process is not None
        uid = self.site.uids[user]
        out = []
        for pid in descendants(self.site.process.pid):
            try:
                if int(status(pid)["Uid"].split()[0]) == uid:
                    out.append(pid)
            except (OSError, KeyError):
                continue
        return out

    def test_after_starttls_idle_stays_and_pushes(self) -> None:
        """STARTTLS, LOGIN, COMPRESS: SELECT and FETCH answered compressed inside TLS; an IDLE
        past imap_hibernate_timeout keeps its agent (not hibernated) and new mail is pushed as
        one inflatable block; DONE and LOGOUT end it."""
        line = self.connect("imap")
        line.send(b"a STARTTLS\r\n")
        line.expect(b"a OK")
        line.sock = self.context().wrap_socket(line.sock)
        line.send(b"b LOGIN boss secret\r\n")
        self.assertIn(b"COMPRESS=DEFLATE", line.expect(b"b OK"))
        line.start_compressing()
        line.send(b"c SELECT INBOX\r\n")
        self.assertIn(b"* 1 EXISTS", line.expect(b"c OK"))
        line.send(b"d FETCH 1 BODY.PEEK[TEXT]\r\n")
        self.assertIn(b"first", line.expect(b"d OK"))
        line.send(b"e IDLE\r\n")
        line.expect(b"+ idling")
        time.sleep(2.5)  # past imap_hibernate_timeout
        self.assertTrue(self.agents_of("boss"), "the compressed session left its agent")
        self.c.send(message("two", "second"), ["boss@example.test"])
        line.expect(b"* 2 EXISTS")
        line.send(b"DONE\r\n")
        line.expect(b"e OK")
        line.send(b"f LOGOUT\r\n")
        line.expect(b"f OK")

    def test_implicit_tls_pipelined(self) -> None:
        """On 993: LOGIN, COMPRESS and compressed commands in one write (the network process
        hands the session to the agent with those bytes pending; the agent inflates them)."""
        line = self.connect("imaps")
        line.compress_now()
        assert line.out is not None
        line.send(b"a LOGIN boss secret\r\nb COMPRESS DEFLATE\r\n"
                  + line.z(b"c SELECT INBOX\r\nd LOGOUT\r\n"), raw=True)
        line.out, saved = None, line.out  # the answers up to b's OK are in clear
        line.expect(b"b OK DEFLATE active")
        line.out = saved
        line.got = line.inp.decompress(line.got)
        self.assertIn(b"* 1 EXISTS", line.expect(b"c OK"))
        line.expect(b"d OK Logout completed.")

    def test_second_compress_and_plain(self) -> None:
        """In clear on 143: a second COMPRESS is ``NO [COMPRESSIONACTIVE]``, compressed."""
        line = self.connect("imap")
        line.send(b"a LOGIN boss secret\r\n")
        line.expect(b"a OK")
        line.start_compressing(b"b")
        line.send(b"c COMPRESS DEFLATE\r\n")
        self.assertIn(b"c NO [COMPRESSIONACTIVE]", line.expect(b"c NO"))
        line.send(b"d LOGOUT\r\n")
        line.expect(b"d OK")
